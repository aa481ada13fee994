"""The weights of a quantized run (`lmforge quantize`) as an exporter reads them.

A quantized run stores each quantized module's integers and scales (`X.qweight`, `X.scale`,
`X.zero`; an embedding's rows under `X.store.`) and says in quant.json which module is which.
`QuantizedWeights` shows them under the float model's names (`X.weight`), so the exporters' tensor
maps apply unchanged: `read` gives the values the quantized model computes with (dequantized, for
Hugging Face), and `ggml` gives the same values as GGUF blocks without re-quantizing them (only
the scales are rounded to f16, as GGUF stores them): int8
rows are Q8_0 (each block of 32 keeps the row's scale and the int8 values as they are) and int4
groups are Q4_1 (tinygemm's w = (q - 8) * scale + zero is Q4_1's w = q * d + m with d = scale,
m = zero - 8 * scale; a group of 64 or 128 is two or four blocks with the same d and m). Both are
row-wise, so the exporters' row splits and rotary row permutations apply to the blocks too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import DataError
from lmforge.trainer.safetensors_io import SafetensorsReader

# GGUF type of each quantized kind (llama.cpp's block formats).
GGML_KIND = {"int8_linear": "Q8_0", "int8_embedding": "Q8_0", "int4_linear": "Q4_1"}
QK = 32  # values per block in Q8_0 and Q4_1


@dataclass(frozen=True)
class _Entry:
    prefix: str  # where the integers lie: "X" or "X.store"
    kind: str
    shape: tuple[int, int]  # the float weight's (rows, inputs)


def q8_0_blocks(q: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    """int8 rows (N, K) with one scale per row as Q8_0 bytes (N, K/32 * 34): per block an f16 scale
    and the 32 int8 values."""
    N, K = q.shape
    d = np.repeat(scale.float().numpy().astype(np.float16)[:, None], K // QK, axis=1)  # (N, K/32)
    qs = q.numpy().astype(np.int8).reshape(N, K // QK, QK)
    out = np.empty((N, K // QK, 2 + QK), dtype=np.uint8)
    out[..., :2] = d[..., None].view(np.uint8)
    out[..., 2:] = qs.view(np.uint8)
    return out.reshape(N, -1)


def q4_1_blocks(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> np.ndarray:
    """4-bit values (N, K) in 0..15 with w = (q - 8) * scale + zero per group as Q4_1 bytes
    (N, K/32 * 20): per block f16 d and m, then 16 bytes holding value j in the low and value
    j + 16 in the high nibble of byte j."""
    N, K = q.shape
    per_group = K // scale.shape[1] // QK  # blocks in one group
    s = scale.float().repeat_interleave(per_group, dim=1)
    z = zero.float().repeat_interleave(per_group, dim=1)
    d = s.numpy().astype(np.float16)
    m = (z - 8.0 * s).numpy().astype(np.float16)
    v = q.numpy().astype(np.uint8).reshape(N, K // QK, QK)
    out = np.empty((N, K // QK, 4 + QK // 2), dtype=np.uint8)
    out[..., 0:2] = d[..., None].view(np.uint8)
    out[..., 2:4] = m[..., None].view(np.uint8)
    out[..., 4:] = v[..., :QK // 2] | (v[..., QK // 2:] << 4)
    return out.reshape(N, -1)


class QuantizedWeights:
    """A quantized run's weights file under the float model's tensor names (see the module doc)."""

    def __init__(self, path: str | Path, quant: dict):
        self.raw = SafetensorsReader(path)
        self.path, self.metadata = self.raw.path, self.raw.metadata
        self.method = str(quant.get("method"))
        self.quantized: dict[str, _Entry] = {}
        modules = quant.get("modules") or {}
        for name, spec in modules.items():
            kind = spec.get("kind")
            prefixes = [f"{name}.store"] + ([spec["store"]] if spec.get("store") else []) \
                if kind == "int8_embedding" else [name]
            prefix = next((p for p in prefixes if f"{p}.qweight" in self.raw.entries), None)
            if prefix is None:
                continue  # a tied output layer: its rows are stored once, under the embedding
            rows, cols = self.raw.shape(f"{prefix}.qweight")
            self.quantized[f"{name}.weight"] = _Entry(prefix, kind, (rows, cols * 2 if kind == "int4_linear" else cols))
        stored = {f"{e.prefix}.{part}" for e in self.quantized.values() for part in ("qweight", "scale", "zero")}
        self.entries: dict[str, dict] = {n: e for n, e in self.raw.entries.items() if n not in stored}
        for name, e in self.quantized.items():
            self.entries[name] = {"dtype": "F32", "shape": list(e.shape)}
        unknown = [n for n in self.raw.entries if n.endswith((".qweight", ".zero")) and n not in stored]
        if unknown:
            raise DataError(f"{self.path} holds {unknown[0]}, which its quant.json does not describe; the "
                            "quantized run is damaged: quantize the original run again")

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32 if name in self.quantized else self.raw.dtype(name)

    def _parts(self, e: _Entry) -> tuple[torch.Tensor, ...]:
        q = self.raw.read(f"{e.prefix}.qweight")
        scale = self.raw.read(f"{e.prefix}.scale")
        if e.kind != "int4_linear":
            return q, scale
        unpacked = torch.empty(q.shape[0], q.shape[1] * 2, dtype=torch.uint8)
        unpacked[:, 0::2], unpacked[:, 1::2] = q & 0xF, q >> 4
        return unpacked, scale, self.raw.read(f"{e.prefix}.zero")

    def read(self, name: str) -> torch.Tensor:
        """The tensor as the quantized model computes with it (float32 for a quantized weight)."""
        e = self.quantized.get(name)
        if e is None:
            return self.raw.read(name)
        parts = self._parts(e)
        if e.kind != "int4_linear":
            return parts[0].float() * parts[1].float()[:, None]
        q, scale, zero = parts
        N, K = q.shape
        g = q.float().view(N, scale.shape[1], -1)
        return ((g - 8.0) * scale.float()[..., None] + zero.float()[..., None]).view(N, K)

    def ggml_type(self, name: str) -> str | None:
        """The GGUF block type that holds `name` exactly, or None (not quantized, or rows that are not
        whole blocks of 32)."""
        e = self.quantized.get(name)
        if e is None or e.shape[1] % QK:
            return None
        return GGML_KIND[e.kind]

    def ggml(self, name: str) -> torch.Tensor:
        """`name` as GGUF blocks, one row of bytes per weight row (uint8, (rows, bytes))."""
        e = self.quantized[name]
        parts = self._parts(e)
        blocks = q4_1_blocks(*parts) if e.kind == "int4_linear" else q8_0_blocks(*parts)
        return torch.from_numpy(blocks)
