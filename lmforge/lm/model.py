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
    """The trained model of a run folder, its tokenizer and config.

    The weights are the best-validation ones (model.safetensors), verified against their checksum;
    when they are missing or damaged, the newest intact checkpoint's (with a warning).
    """
    import yaml

    from lmforge.config import Config, from_dict
    from lmforge.runs import guess_kind
    from lmforge.trainer.checkpoint import apply_weights, run_weights

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    kind = guess_kind(run_dir) if run_dir.is_dir() else None
    if kind not in (None, "lm"):
        raise DataError(f"{run_dir} holds an lmforge {kind} run, not a language model"
                        + ("; use `lmforge classify eval/predict` with it" if kind == "classify" else ""))
    if not cfg_path.is_file():
        raise DataError(f"{run_dir} is not an lmforge run folder (no config.yaml); pass the folder given as --out")
    try:
        cfg = from_dict(Config, yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}, source=str(cfg_path))
    except yaml.YAMLError as e:
        raise DataError(f"{cfg_path} is damaged (not valid YAML: {str(e).splitlines()[0]})") from None
    tok = Tokenizer.load(run_dir / "data" / "tokenizer.json")
    model = model_from_shape(run_dir / "model.json")
    weights, tensors = run_weights(run_dir)
    apply_weights(model, tensors, weights)
    model.to(device).eval()
    return model, tok, {"config": cfg, "weights": str(weights)}
