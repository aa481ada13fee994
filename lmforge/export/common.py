"""What every export reads from a run folder, and where it may write."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import Config, ModelConfig
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import ConfigError, DataError
from lmforge.export.arch import Link
from lmforge.trainer.safetensors_io import SafetensorsReader
from lmforge.export.quantized import QuantizedWeights
from lmforge.lm.model import read_quant_spec, read_run_config, read_shape
from lmforge.trainer.checkpoint import read_sharded_weights, run_weights_path

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
TORCH_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class ConsolidatedReader:
    """The reader interface of SafetensorsReader over whole weights in memory: those of a sharded
    checkpoint (a run that has not yet saved its best weights), consolidated from its shards."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]):
        self.path, self._tensors, self.metadata = path, tensors, {}
        self.entries = {name: {"shape": list(t.shape)} for name, t in tensors.items()}

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._tensors[name].dtype

    def read(self, name: str) -> torch.Tensor:
        return self._tensors[name].clone()


@dataclass
class Run:
    folder: Path
    config: Config
    model: ModelConfig  # resolved
    vocab_size: int
    tokenizer: Tokenizer
    weights: SafetensorsReader | QuantizedWeights | ConsolidatedReader

    def tensor(self, link: Link) -> torch.Tensor:
        """The lmforge tensor of a link; zeros for a bias the model does not have."""
        if link.lm in self.weights.entries:
            return self.weights.read(link.lm)
        if link.bias:
            return torch.zeros(link.shape, dtype=self.stored_dtype())
        raise DataError(f"{self.weights.path} lacks {link.lm}; the run folder is damaged")

    def stored_dtype(self) -> torch.dtype:
        return self.weights.dtype("embed.weight")

    def check_covered(self, links: list[Link]) -> None:
        """Every tensor of the run must land somewhere, or the export would silently drop it."""
        linked = {link.lm for link in links}
        left = [n for n in self.weights.names() if n not in linked]
        if left:
            raise ConfigError(f"{self.folder}: the export has no place for {', '.join(left[:3])}; this combination "
                              "of model options has no exact equivalent in the target architecture")


def open_run(folder: str | Path) -> Run:
    """A run folder to export; a quantized run's weights read under the float model's names."""
    folder = Path(folder)
    cfg = read_run_config(folder)
    model, vocab = read_shape(folder / "model.json")
    tok = Tokenizer.load(folder / "data" / "tokenizer.json")
    quant = read_quant_spec(folder)
    path = run_weights_path(folder)
    if path.is_dir():  # the shards of a sharded checkpoint (verified against their checksums)
        weights = ConsolidatedReader(path, read_sharded_weights(path.parent))
    else:
        weights = SafetensorsReader(path) if quant is None else QuantizedWeights(path, quant)
    return Run(folder, cfg, model, vocab, tok, weights)


def target_dtype(run: Run, dtype: str) -> torch.dtype:
    if dtype == "auto":
        return run.stored_dtype()
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Never write over files of someone else's: an existing, non-empty folder needs --overwrite."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} is not empty; choose a new folder, or pass --overwrite to replace the "
                          "files an export writes there (others stay)")


def check_out_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as model.gguf")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; choose another name, or pass --overwrite to replace it")


def dump_json(obj: object) -> str:
    """JSON as Transformers writes it (indent 2, UTF-8 kept), so export -> import -> export is byte-exact."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
