"""Building a GPT from the config, and the model of a run folder: its shape file and its weights.

`model.json` records the resolved model section plus the vocabulary size, so a run folder is
self-describing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.atomic import atomic_write_json
from lmforge.config import ModelConfig
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import DataError
from lmforge.models.gpt import GPT

def build_model(cfg: ModelConfig, vocab_size: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg, vocab_size)


def save_shape(model: GPT, path: Path) -> None:
    atomic_write_json(Path(path), model.shape_dict())


def model_from_shape(path: Path) -> GPT:
    """An untrained GPT of the shape recorded in a run's model.json."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the run folder is incomplete (was training started?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); the run folder is damaged") from None
    if not isinstance(raw, dict) or "vocab_size" not in raw:
        raise DataError(f"{path} does not describe an lmforge model (no vocab_size)")
    try:
        return GPT.from_shape_dict(raw)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} does not describe a model this lmforge can build ({e})") from None


def load_run_model(run_dir: Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """The trained model of a run folder (best validation weights), its tokenizer and config."""
    import yaml

    from lmforge.config import Config, from_dict
    from lmforge.trainer.checkpoint import latest_checkpoint, load_weights

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{run_dir} is not an lmforge run folder (no config.yaml); pass the folder given as --out")
    cfg = from_dict(Config, yaml.safe_load(cfg_path.read_text(encoding="utf-8")), source=str(cfg_path))
    tok = Tokenizer.load(run_dir / "data" / "tokenizer.json")
    model = model_from_shape(run_dir / "model.json")
    quant = read_quant_spec(run_dir)
    if quant is not None:
        rebuild_quantized(model, quant, run_dir / "quant.json")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        last = latest_checkpoint(run_dir)
        if last is None:
            raise DataError(f"{run_dir} has no trained weights yet (no model.safetensors, no checkpoint)")
        weights = last / "model.safetensors"
    load_weights(model, weights)
    model.to(device).eval()
    return model, tok, {"config": cfg, "weights": str(weights), "quant": quant}


def read_quant_spec(folder: Path) -> dict | None:
    """The quantization spec (quant.json) of a quantized run or classifier member; None if not quantized."""
    path = Path(folder) / "quant.json"
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); the quantized run is damaged") from None
    if not isinstance(spec, dict):
        raise DataError(f"{path} does not describe a quantization (expected a JSON object)")
    return spec


def rebuild_quantized(model: torch.nn.Module, quant: dict, source: Path) -> None:
    """Give a freshly built float model the quantized modules recorded in `source` (quant.json)."""
    from lmforge.models.quant import rebuild

    try:
        rebuild(model, quant)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source} does not match the model ({e}); re-run `lmforge quantize` on the original "
                        "run") from None
