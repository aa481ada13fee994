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
from lmforge.models.gpt import GPT, LEGACY_SHAPE_DEFAULTS


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


def _shape_dict(path: Path) -> dict:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the run folder is incomplete (was training started?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); the run folder is damaged") from None
    if not isinstance(raw, dict) or "vocab_size" not in raw:
        raise DataError(f"{path} does not describe an lmforge model (no vocab_size)")
    return raw


def model_from_shape(path: Path) -> GPT:
    """An untrained GPT of the shape recorded in a run's model.json."""
    try:
        return GPT.from_shape_dict(_shape_dict(path))
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} does not describe a model this lmforge can build ({e})") from None


def read_shape(path: Path) -> tuple[ModelConfig, int]:
    """The model section and vocabulary size recorded in a run's model.json, without building the model."""
    shape = _shape_dict(path)
    vocab_size = int(shape.pop("vocab_size"))
    for key, value in LEGACY_SHAPE_DEFAULTS.items():
        shape.setdefault(key, value)
    try:
        cfg = ModelConfig(**shape)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise DataError(f"{path} does not describe a model this lmforge can build ({e})") from None
    return cfg.resolved(), vocab_size


def read_run_config(run_dir: Path):
    """The Config a run folder was made with (its config.yaml); one-line errors for a missing folder, a
    folder that is not a run, a damaged config, or a run of another kind."""
    from lmforge.config import Config, from_dict
    from lmforge.config import read_run_config as read_config_tree
    from lmforge.runs import guess_kind

    run_dir = Path(run_dir)
    kind = guess_kind(run_dir) if run_dir.is_dir() else None
    if kind not in (None, "lm"):
        raise DataError(f"{run_dir} holds an lmforge {kind} run, not a language model"
                        + ("; use `lmforge classify eval/predict` with it" if kind == "classify" else ""))
    return from_dict(Config, read_config_tree(run_dir, "lm"), source=str(run_dir / "config.yaml"))


def load_run_model(run_dir: Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """The trained model of a run folder, its tokenizer and config.

    The weights are the best-validation ones (model.safetensors), verified against their checksum;
    when they are missing or damaged, the newest intact checkpoint's (with a warning).
    """
    from lmforge.trainer.checkpoint import apply_weights, run_weights

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    tok = Tokenizer.load(run_dir / "data" / "tokenizer.json")
    model = model_from_shape(run_dir / "model.json")
    quant = read_quant_spec(run_dir)
    if quant is not None:
        rebuild_quantized(model, quant, run_dir / "quant.json")
    weights, tensors = run_weights(run_dir)
    apply_weights(model, tensors, weights)
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


def refuse_quantized(run_dir: str | Path, what: str) -> None:
    """ConfigError when the run is quantized: training (`what`) needs the float weights it came from."""
    quant = read_quant_spec(Path(run_dir))
    if quant is not None:
        from lmforge.errors import ConfigError

        raise ConfigError(f"{run_dir} is quantized ({quant.get('method')}); {what} needs float weights: use the run "
                          f"it was quantized from ({quant.get('source', 'the original run')}), then quantize again")


def rebuild_quantized(model: torch.nn.Module, quant: dict, source: Path) -> None:
    """Give a freshly built float model the quantized modules recorded in `source` (quant.json)."""
    from lmforge.models.quant import rebuild

    try:
        rebuild(model, quant)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source} does not match the model ({e}); re-run `lmforge quantize` on the original "
                        "run") from None


# Fields a training that starts from another model (`init`) may set for itself: neither changes a weight's
# shape (a learned position table is cropped to a shorter context).
INIT_FREE_FIELDS = ("context_len", "dropout")


def init_model_config(init_dir: str | Path, context_len: int = 0, dropout: float | None = None) -> ModelConfig:
    """The model section of a training that starts from the run in `init_dir`: its shape, with this
    training's context length and dropout when given."""
    import dataclasses

    init_cfg, _ = read_shape(Path(init_dir) / "model.json")
    changes: dict = {}
    if context_len:
        changes["context_len"] = context_len
    if dropout is not None:
        changes["dropout"] = dropout
    cfg = dataclasses.replace(init_cfg, **changes)
    check_init(cfg, init_dir)
    return cfg


def check_init(cfg: ModelConfig, init_dir: str | Path) -> int:
    """ConfigError unless `cfg` has the shape of the init model; returns its vocabulary size."""
    from lmforge.errors import ConfigError

    refuse_quantized(init_dir, "training from it (init)")
    init_cfg, vocab = read_shape(Path(init_dir) / "model.json")
    mine = cfg.resolved()
    for name in ModelConfig.__dataclass_fields__:
        if name not in INIT_FREE_FIELDS and getattr(mine, name) != getattr(init_cfg, name):
            raise ConfigError(f"config field 'model.{name}': {getattr(mine, name)!r} differs from the init model's "
                              f"{getattr(init_cfg, name)!r}; starting from {init_dir}, the model's shape is its "
                              "model.json (only model.context_len and model.dropout may differ)")
    if init_cfg.position == "learned" and mine.context_len > init_cfg.context_len:
        raise ConfigError(f"config field 'model.context_len': {mine.context_len} exceeds the init model's "
                          f"{init_cfg.context_len} learned positions")
    return vocab


def init_weights(cfg: ModelConfig, init_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The init run's verified weights for a model of shape `cfg` (a learned position table cropped
    to its context)."""
    from lmforge.trainer.checkpoint import run_weights

    path, tensors = run_weights(Path(init_dir))
    if cfg.resolved().position == "learned" and "pos_embed.weight" in tensors:
        tensors["pos_embed.weight"] = tensors["pos_embed.weight"][: cfg.context_len]
    return path, tensors


def apply_init_weights(model: GPT, tensors: dict[str, torch.Tensor], path: Path) -> None:
    from lmforge.errors import TrainingError

    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and model.cfg.tied_embeddings)]
    if missing or unexpected:
        raise TrainingError(f"weights in {path} do not match its model.json (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
