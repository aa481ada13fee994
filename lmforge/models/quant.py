"""Weight quantization of a trained model: int8 and int4 modules, their plain storage, and rebuilding them.

The stored form is kernel-independent plain tensors, so a quantized run is a safetensors file like
any other (no pickles): int8 weights with one fp32 scale per output row; int4 weights as two
4-bit values per byte with a bf16 scale and offset per group of `group_size` inputs. At load the
modules are rebuilt from `quant.json`'s spec and packed for the kernel this machine has.

Kernels, measured on this project's 2-core AVX-512 CPU (benchmarks/compress.py prints them):
- int8: PyTorch's dynamic quantization kernel (quantized::linear_dynamic, fbgemm/x86: activations
  quantized per call, int8 x int8 products), 5-10x faster than an fp32 nn.Linear at decode shapes
  of a 768-wide model. torchao's int8 weight-only path casts the whole weight to float at every call
  on CPU (slower than fp32) and its dynamic int8 path was slower still, so they are not used.
  Where the quantized engine is missing (future PyTorch, other devices), int8 falls back to
  aten._weight_int8pack_mm with bf16 activations on CPU, or a dequantized matmul elsewhere.
- int4: PyTorch's tinygemm CPU kernel (aten._weight_int4pack_mm_for_cpu, asymmetric per-group
  int4, bf16 activations): what torchao's CPU int4 layout calls. With fp32 activations it is
  20-50x slower, so activations are cast to bf16 around it.
Small matrices (a few hundred wide) are bound by per-call overhead, not by reading weights: there
int8 is slower than fp32 (20 us against 8 us for 384 x 128), which the tools measure and report.

Embedding tables are quantized to int8 per row (looked up and scaled); a tied output layer shares
that storage, so it is int8 under both methods (as llama.cpp keeps its output layer at higher
precision), and a Linear whose shape the int4 kernel cannot take (rows not a multiple of 16, inputs
not a multiple of the group) stays int8. Plain single-device code; no torch.distributed.

For export (GGUF): int4 in groups of 32 is exactly GGUF's Q4_1 (w = q * d + m with d = scale and
m = zero - 8 * scale, q in 0..15); int8 per row becomes Q8_0 (blocks of 32, one scale each) by
re-scaling each block of the int8 values. `Int8Linear.qweight/scale` and
`Int4Linear.unpacked()/scale/zero` are the plain values an exporter reads.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128)
FORMAT_VERSION = 1

# Module types whose Linear children are read directly by fused kernels (MultiheadAttention reads
# out_proj.weight; the encoder layer's fast path reads every weight), so they stay in float.
_OPAQUE = (nn.MultiheadAttention, nn.TransformerEncoderLayer)


def _quiet_quantized_tensors():
    # PyTorch warns that quantized tensor types are deprecated; they are only a transient wrapper
    # here (the stored form is plain int8), and the int8 path falls back when they go away.
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    return ctx


def int8_kernel_available(device: torch.device | str = "cpu") -> str:
    """The int8 kernel a Linear on `device` runs: 'dynamic', 'int8pack' or 'dequant'."""
    return _int8_kernel(torch.device(device).type)


@functools.cache
def _int8_kernel(device_type: str) -> str:
    if device_type != "cpu":
        return "dequant"
    engines = torch.backends.quantized.supported_engines
    if hasattr(torch.ops.quantized, "linear_dynamic") and ("x86" in engines or "fbgemm" in engines):
        return "dynamic"
    return "int8pack" if hasattr(torch.ops.aten, "_weight_int8pack_mm") else "dequant"


KERNEL_NAMES = {
    "dynamic": "quantized::linear_dynamic (PyTorch dynamic int8, fbgemm/x86)",
    "int8pack": "aten._weight_int8pack_mm (int8 weight-only, bf16 activations)",
    "dequant": "dequantized matmul (no int8 kernel on this device)",
    "int4pack": "aten._weight_int4pack_mm_for_cpu (tinygemm int4, bf16 activations)",
    "int4_dequant": "dequantized matmul (no int4 kernel on this device)",
    "int8_rows": "int8 rows looked up and scaled",
}


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q (N, K) int8, scale (N,) fp32) with w ~ q * scale[:, None]."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4_groups(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per-group int4 in tinygemm's convention: w ~ (q - 8) * scale + zero.

    Returns (two 4-bit values per byte (N, K/2) uint8, scale (N, K/G) bf16, zero (N, K/G) bf16)."""
    w = w.detach().float()
    N, K = w.shape
    g = w.view(N, K // group_size, group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15.0).clamp_min(1e-6).to(torch.bfloat16)
    zero = (lo + scale.float() * 8.0).to(torch.bfloat16)
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((g - (z - 8.0 * s)) / s).clamp_(0, 15).to(torch.uint8).view(N, K)
    return q[:, 0::2] | (q[:, 1::2] << 4), scale, zero


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    N, half = packed.shape
    q = torch.empty(N, half * 2, dtype=torch.uint8, device=packed.device)
    q[:, 0::2], q[:, 1::2] = packed & 0xF, packed >> 4
    return q


class Int8Linear(nn.Module):
    """A Linear with int8 weights (one scale per output row); bias kept in fp32."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None
        self.register_load_state_dict_post_hook(lambda module, _: module.repack())

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8Linear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        m.set_weight(lin.weight)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        return m

    def set_weight(self, w: torch.Tensor) -> None:
        q, s = quantize_int8_rows(w)
        self.qweight.copy_(q)
        self.scale.copy_(s)
        self.repack()

    @property
    def kernel(self) -> str:
        return int8_kernel_available(self.qweight.device)

    def repack(self) -> None:
        self._packed = None

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def _pack(self):
        ctx = _quiet_quantized_tensors()
        try:
            zeros = torch.zeros(self.out_features, dtype=torch.long)
            qt = torch._make_per_channel_quantized_tensor(self.qweight, self.scale.double(), zeros, 0)
            return torch.ops.quantized.linear_prepack(qt, None)
        finally:
            ctx.__exit__(None, None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel
        if kernel == "dynamic":
            if self._packed is None:
                self._packed = self._pack()
            y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._packed, True)
        elif kernel == "int8pack":
            shape = x.shape
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous(),
                                                   self.qweight, self.scale.to(torch.bfloat16))
            y = y.view(*shape[:-1], self.out_features).float()
        else:
            y = F.linear(x.float(), self.dequantized())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per row, kernel {self.kernel}"


class Int4Linear(nn.Module):
    """A Linear with int4 weights, asymmetric per group of `group_size` inputs; bias in fp32."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.bfloat16))
        self.register_buffer("zero", torch.zeros(out_features, groups, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None
        self.register_load_state_dict_post_hook(lambda module, _: module.repack())

    @staticmethod
    def fits(lin: nn.Linear, group_size: int) -> bool:
        return lin.out_features % 16 == 0 and lin.in_features % group_size == 0

    @classmethod
    def from_linear(cls, lin: nn.Linear, group_size: int) -> Int4Linear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, group_size)
        q, s, z = quantize_int4_groups(lin.weight, group_size)
        m.qweight.copy_(q)
        m.scale.copy_(s)
        m.zero.copy_(z)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        return m

    @property
    def kernel(self) -> str:
        cpu = self.qweight.device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        return "int4pack" if cpu else "int4_dequant"

    def repack(self) -> None:
        self._packed = None

    def unpacked(self) -> torch.Tensor:
        """The 4-bit values (N, K) as uint8 in 0..15."""
        return _unpack_int4(self.qweight)

    def dequantized(self) -> torch.Tensor:
        N, K, G = self.out_features, self.in_features, self.group_size
        q = self.unpacked().float().view(N, K // G, G)
        return ((q - 8.0) * self.scale.float()[..., None] + self.zero.float()[..., None]).view(N, K)

    def _pack(self):
        q = _unpack_int4(self.qweight).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        scale_and_zero = torch.stack([self.scale, self.zero], dim=-1).transpose(0, 1).contiguous()
        return packed, scale_and_zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.kernel == "int4pack":
            if self._packed is None:
                self._packed = self._pack()
            packed, sz = self._packed
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous(),
                                                           packed, self.group_size, sz)
            y = y.view(*shape[:-1], self.out_features).float()
        else:
            y = F.linear(x.float(), self.dequantized())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int4 groups of {self.group_size}, "
                f"kernel {self.kernel}")


class Int8Embedding(nn.Module):
    """An embedding table (or EmbeddingBag in mean mode) stored as int8 rows with per-row scales.

    `store` holds the int8 rows; for a table tied to an output layer it is that layer's Int8Linear.
    """

    def __init__(self, store: Int8Linear, bag: bool = False, padding_idx: int | None = None):
        super().__init__()
        self.store, self.bag, self.padding_idx = store, bag, padding_idx

    @classmethod
    def from_embedding(cls, emb: nn.Embedding | nn.EmbeddingBag, store: Int8Linear | None = None) -> Int8Embedding:
        rows, dim = emb.weight.shape
        if store is None:
            store = Int8Linear(dim, rows, bias=False)
            store.set_weight(emb.weight)
        return cls(store, isinstance(emb, nn.EmbeddingBag), emb.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = self.store
        x = F.embedding(ids, s.qweight).float() * s.scale[ids][..., None]  # (..., D)
        if not self.bag:
            return x
        # EmbeddingBag(mode='mean', padding_idx): the mean over the non-padding ids of each row.
        keep = (ids != self.padding_idx) if self.padding_idx is not None else torch.ones_like(ids, dtype=torch.bool)
        w = keep.to(x.dtype)[..., None]
        return (x * w).sum(-2) / w.sum(-2).clamp_min(1.0)


def _modules_to_quantize(model: nn.Module) -> list[tuple[str, nn.Module]]:
    opaque = [name for name, m in model.named_modules() if isinstance(m, _OPAQUE)]
    found = []
    for name, m in model.named_modules():
        if any(name == o or name.startswith(o + ".") for o in opaque):
            continue
        if isinstance(m, (nn.Linear, nn.Embedding)) or (isinstance(m, nn.EmbeddingBag) and m.mode == "mean"):
            found.append((name, m))
    return found


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def plan_quantization(model: nn.Module, method: str, group_size: int) -> dict:
    """The spec quantize() applies and rebuild() repeats: {name: {kind, group_size?, store?}}.

    kinds: 'int8_linear', 'int4_linear', 'int8_embedding' (store: a tied Linear's name, or own rows).
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    mods = _modules_to_quantize(model)
    by_weight: dict[int, str] = {}
    for name, m in mods:
        if isinstance(m, nn.Linear):
            by_weight.setdefault(id(m.weight), name)
    spec: dict[str, dict] = {}
    tied_linears = set()
    for name, m in mods:
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            tied = by_weight.get(id(m.weight))
            spec[name] = {"kind": "int8_embedding", "bag": isinstance(m, nn.EmbeddingBag)}
            if tied is not None:
                spec[name]["store"] = tied
                tied_linears.add(tied)
    for name, m in mods:
        if not isinstance(m, nn.Linear):
            continue
        if method == "int4" and name not in tied_linears and Int4Linear.fits(m, group_size):
            spec[name] = {"kind": "int4_linear", "group_size": group_size}
        else:
            spec[name] = {"kind": "int8_linear"}
    return spec


def _apply(model: nn.Module, spec: dict, from_float: bool) -> nn.Module:
    """Replace the modules named in `spec`: quantizing their weights (from_float) or empty, to load into."""
    made: dict[str, nn.Module] = {}
    for name, entry in sorted(spec.items(), key=lambda kv: kv[1]["kind"] == "int8_embedding"):
        m = model.get_submodule(name)
        if entry["kind"] == "int8_linear":
            new = Int8Linear.from_linear(m) if from_float else Int8Linear(m.in_features, m.out_features,
                                                                          m.bias is not None)
        elif entry["kind"] == "int4_linear":
            g = int(entry["group_size"])
            new = Int4Linear.from_linear(m, g) if from_float else Int4Linear(m.in_features, m.out_features,
                                                                             m.bias is not None, g)
        elif entry["kind"] == "int8_embedding":
            store = made.get(entry["store"]) if "store" in entry else None
            if store is None and not from_float:
                store = Int8Linear(m.weight.shape[1], m.weight.shape[0], bias=False)
            new = Int8Embedding.from_embedding(m, store)
        else:
            raise ValueError(f"unknown quantized module kind {entry['kind']!r} for {name}")
        made[name] = new
    for name, new in made.items():
        _set_module(model, name, new)
    model.requires_grad_(False)
    return model


def quantize(model: nn.Module, method: str, group_size: int = 128) -> dict:
    """Quantize `model` in place; returns the spec to save as quant.json (see rebuild)."""
    spec = plan_quantization(model, method, group_size)
    _apply(model, spec, from_float=True)
    return {"format": FORMAT_VERSION, "method": method, "group_size": group_size, "modules": spec}


def rebuild(model: nn.Module, quant: dict) -> nn.Module:
    """Give a freshly built float model the quantized structure of `quant` (quant.json), ready to
    load the quantized run's weights into."""
    if int(quant.get("format", 0)) != FORMAT_VERSION or "modules" not in quant:
        raise ValueError(f"quant.json format {quant.get('format')!r} is not {FORMAT_VERSION}")
    return _apply(model, quant["modules"], from_float=False)


def kernels_used(model: nn.Module) -> dict[str, int]:
    """How many modules run each kernel (names from KERNEL_NAMES), for the report."""
    count: dict[str, int] = {}
    seen: set[int] = set()
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, Int8Embedding):
            k = "int8_rows"
        elif isinstance(m, (Int8Linear, Int4Linear)) and not name.endswith(".store") and id(m) not in seen:
            k = m.kernel  # an embedding's own rows (".store") are never multiplied
            seen.add(id(m))
        else:
            continue
        count[k] = count.get(k, 0) + 1
    return count


def count_weights(model: nn.Module) -> int:
    """Parameters of the model as trained (quantized weights counted as the values they stand for)."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():  # shared modules (a tied output layer) are visited once
        if isinstance(m, (Int8Linear, Int4Linear)):
            n += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    return n


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int4Linear, Int8Embedding)) for m in model.modules())
