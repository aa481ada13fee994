"""safetensors read and written one tensor at a time, so converting a checkpoint never holds it whole.

The `safetensors` package writes a file from a dict of every tensor, and its memory-mapped reads
leave the pages of a whole shard resident. Converting a model of several GB needs neither: the
header says where each tensor lies, so a reader seeks to it and a writer, told every name, dtype
and shape up front, writes the header first and then each tensor as it is produced.

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
then the tensor bytes (row-major, little-endian).
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from lmforge.atomic import file_mode, fsync_dir
from lmforge.errors import DataError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsReader:
    """Named tensors of one .safetensors file, read on demand (each read is a fresh copy)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100_000_000:
                    raise ValueError(f"header of {n} bytes")
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
            raise DataError(f"{self.path} is not a readable safetensors file ({e})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict] = header
        self._data_start = 8 + n
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise DataError(f"{self.path}: tensor {name} has dtype {e.get('dtype')!r}, which lmforge does not read")

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self.entries[name]["dtype"]]

    def read(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        begin, end = e["data_offsets"]
        buf = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if f.readinto(buf) != len(buf):
                raise DataError(f"{self.path} is truncated (tensor {name}); download or copy it again")
        dtype = DTYPES[e["dtype"]]
        if not buf:
            return torch.empty(e["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(e["shape"])


class CheckpointReader:
    """The tensors of a checkpoint: one file, or the shards an index file lists."""

    def __init__(self, files: list[Path]):
        self.readers = [SafetensorsReader(p) for p in files]
        self._where: dict[str, SafetensorsReader] = {}
        for r in self.readers:
            for name in r.names():
                self._where[name] = r

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._where[name].dtype(name)

    def read(self, name: str) -> torch.Tensor:
        return self._where[name].read(name)


class SafetensorsWriter:
    """Writes a .safetensors file tensor by tensor, in the order of `spec`, atomically.

    `spec` is [(name, dtype, shape)]; `write(name, tensor)` must follow that order. The file
    appears under its name only after `close()`; an exception leaves no partial file.
    """

    def __init__(self, path: str | Path, spec: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header: dict[str, dict] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        for name, dtype, shape in spec:
            size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        self._header = header
        raw = self._encoded_header()
        self._expected = [(name, dtype, tuple(shape)) for name, dtype, shape in spec]
        self._next = 0
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._file = os.fdopen(fd, "wb")
        self._file.write(struct.pack("<Q", len(raw)) + raw)

    def _encoded_header(self) -> bytes:
        raw = json.dumps(self._header, separators=(",", ":")).encode("utf-8")
        return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned

    def set_metadata(self, key: str, value: str) -> None:
        """Replace a metadata value known only once every tensor is written (a digest of them); the
        header is written first, so the new value must be as long as the placeholder it replaces."""
        before = len(self._encoded_header())
        self._header["__metadata__"][key] = value
        raw = self._encoded_header()
        if len(raw) != before:
            self.abort()
            raise ValueError(f"metadata {key}: the new value must be as long as its placeholder")
        end = self._file.tell()
        self._file.seek(8)
        self._file.write(raw)
        self._file.seek(end)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want_name, dtype, shape = self._expected[self._next]
        if name != want_name or tuple(tensor.shape) != shape:
            self.abort()
            raise ValueError(f"expected {want_name} {shape}, got {name} {tuple(tensor.shape)}")
        t = tensor.detach().to("cpu", dtype).contiguous()
        # A byte view of the storage: no second copy of a large tensor, and bf16 needs no numpy type.
        self._file.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._expected):
            self.abort()
            raise ValueError(f"{len(self._expected) - self._next} tensors were never written")
        self._file.flush()
        # mkstemp makes the file private to its owner; the finished file gets the mode any other would.
        os.chmod(self._tmp, file_mode())
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self._tmp).unlink(missing_ok=True)


@dataclass
class WholeWeights:
    """A model's whole weights produced one tensor at a time, in name order. A sharded model gathers
    each tensor from its shards only when it is read (`trainer.parallelize.whole_weights`), so saving
    its best weights never holds them all at once: every process must then read the whole sequence
    (each read is a collective), and only rank 0's tensors are kept."""

    spec: list[tuple[str, torch.dtype, tuple[int, ...]]]  # (name, dtype, shape), sorted by name
    produce: Callable[[], Iterator[tuple[str, torch.Tensor]]]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.produce()

    def drain(self) -> None:
        """Take part in every gather without keeping anything (the processes other than rank 0)."""
        for _ in self:
            pass

    @classmethod
    def of(cls, state_dict: Mapping[str, torch.Tensor]) -> WholeWeights:
        """Tensors already whole; a tied parameter (shared storage, which safetensors refuses) once."""
        seen: set[int] = set()
        tensors = {}
        for name, t in state_dict.items():
            if t.data_ptr() in seen and t.numel():
                continue
            seen.add(t.data_ptr())
            tensors[name] = t
        names = sorted(tensors)
        return cls([(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names],
                   lambda: ((n, tensors[n]) for n in names))


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a Transformers model folder: model.safetensors, or the shards its
    index lists."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{index} is unreadable ({e})") from None
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{index} lists shards that are missing: {', '.join(missing[:3])}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pth")):
        raise DataError(f"{folder} holds PyTorch pickle weights (.bin), which lmforge does not load (they can run "
                        "code); convert them with transformers: AutoModelForCausalLM.from_pretrained(dir)"
                        ".save_pretrained(dir) writes model.safetensors")
    raise DataError(f"{folder} has no model.safetensors (nor model.safetensors.index.json)")

