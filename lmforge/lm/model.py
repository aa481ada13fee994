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
    from lmforge.errors import TrainingError
    from lmforge.trainer.step import is_oom_error

    torch.manual_seed(seed)
    try:
        return GPT(cfg, vocab_size)
    except (RuntimeError, MemoryError) as e:
        if not is_oom_error(e):
            raise
        params = cfg.block_params() + vocab_size * cfg.d_model
        raise TrainingError(f"the model (about {params:,} parameters, {4 * params / 2**30:.1f} GiB in fp32) does not "
                            "fit in memory; make it smaller (model.n_layer, model.d_model, model.context_len)") from None


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
    from lmforge.config import Config, from_dict, read_run_config
    from lmforge.trainer.checkpoint import latest_checkpoint, load_weights

    run_dir = Path(run_dir)
    cfg = from_dict(Config, read_run_config(run_dir, "lm"), source=str(run_dir / "config.yaml"))
    tok = Tokenizer.load(run_dir / "data" / "tokenizer.json")
    model = model_from_shape(run_dir / "model.json")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        last = latest_checkpoint(run_dir)
        if last is None:
            raise DataError(f"{run_dir} has no trained weights yet (no model.safetensors, no checkpoint)")
        weights = last / "model.safetensors"
    load_weights(model, weights)
    model.to(device).eval()
    return model, tok, {"config": cfg, "weights": str(weights)}
