"""Decoder-only transformer: RMSNorm, rotary positions, QK-norm, SwiGLU, optional GQA and tied embeddings.

GPT-2's choices (LayerNorm, learned positions, GELU MLP, no QK-norm) are options, so nanoGPT's
settings can be reproduced as they are and compared against. Biases (GPT-2, Qwen2), a head width
other than d_model / n_head and separate query and key norm gains (Qwen3) are options too, so
checkpoints of those families can be imported and run with the same numbers.

Plain single-device PyTorch. Distributed wrapping and compilation are applied from outside
(`lmforge.trainer.runtime`), never here.
"""

from __future__ import annotations

import dataclasses
import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.models.chunked_loss import linear_cross_entropy


# What a model.json written before a field existed meant by its absence.
LEGACY_SHAPE_DEFAULTS = {"qk_norm": False, "norm": "rms", "position": "rope", "mlp": "swiglu"}


def rope_tables(head_dim: int, context_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    t = torch.arange(context_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hd/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (..., T, [heads,] hd) with cos/sin broadcastable to it; rotate the two halves of each
    # head (the "non-interleaved" layout, cheaper on CPU than strided even/odd pairs).
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int, eps: float, bias: bool = False) -> nn.Module:
    # LayerNorm without bias by default, as nanoGPT builds GPT-2; with bias for GPT-2 checkpoints.
    return RMSNorm(dim, eps) if kind == "rms" else nn.LayerNorm(dim, eps=eps, bias=bias)


class Dropout(nn.Module):
    """Dropout whose CPU mask costs a quarter of `nn.Dropout`'s.

    PyTorch draws a CPU dropout mask with one generator call per element (about 1 ms for 200k
    elements here, 10% of a small model's step with dropout 0.05). Here each 64-bit draw gives
    eight mask bytes, each compared with round(p * 256): the probability is rounded to a
    multiple of 1/256 (0.05 becomes 0.051). Other devices use the standard kernel.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = min(255, max(1, round(p * 256)))
        self.scale = 256 / (256 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        draws = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = (draws.view(torch.uint8)[:n] >= self.threshold).view(x.shape)
        return x * keep.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.threshold}/256 on CPU, {self.p} elsewhere"


class KVCache:
    """Keys and values of past positions for incremental decoding, one slot per layer."""

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def crop(self, max_len: int) -> None:
        for i in range(len(self.k)):
            if self.k[i] is not None:
                self.k[i] = self.k[i][:, :, -max_len:]
                self.v[i] = self.v[i][:, :, -max_len:]


class SlotKVCache:
    """Keys and values of several sequences of different lengths in preallocated slots, so that they
    decode together in one forward (continuous batching) while each keeps its own positions.

    The caller picks which slots the next forward feeds with `select(rows)` (its batch rows, in
    order), runs the model with this cache, then calls `commit(new_tokens)` to extend each row by
    its real (unpadded) new tokens. Positions past a row's length hold stale or padding values that
    the attention mask hides until a later write replaces them.
    """

    def __init__(self, n_layer: int, slots: int, n_kv_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.k = torch.zeros(n_layer, slots, n_kv_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)  # (slots,) valid positions
        self.max_len = max_len
        self.rows = torch.zeros(0, dtype=torch.long, device=device)
        self._pos: torch.Tensor | None = None  # (b, T) positions of the current forward's tokens

    def select(self, rows: list[int]) -> None:
        self.rows = torch.tensor(rows, dtype=torch.long, device=self.k.device)
        self._pos = None

    def reset(self, slot: int) -> None:
        self.lengths[slot] = 0

    def positions(self, T: int) -> torch.Tensor:
        """(b, T) positions of the selected rows' next T tokens."""
        self._pos = self.lengths[self.rows][:, None] + torch.arange(T, device=self.k.device)[None, :]
        return self._pos

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (b, nkv, T, hd). Rows and positions index dims 0 and 2 of the layer's (slots, nkv, L, hd).
        pos = self._pos
        rows = self.rows[:, None].expand_as(pos)
        self.k[layer][rows, :, pos] = k.transpose(1, 2)
        self.v[layer][rows, :, pos] = v.transpose(1, 2)
        span = int(pos.max()) + 1
        return self.k[layer, self.rows, :, :span], self.v[layer, self.rows, :, :span]

    def mask(self) -> torch.Tensor:
        """(b, 1, T, span) True where a query may attend: keys at or before its own position."""
        pos = self._pos
        keys = torch.arange(int(pos.max()) + 1, device=pos.device)
        return (keys[None, None, :] <= pos[:, :, None])[:, None]

    def commit(self, new_tokens: list[int] | torch.Tensor) -> None:
        self.lengths[self.rows] += torch.as_tensor(new_tokens, dtype=torch.long, device=self.k.device)


class Attention(nn.Module):
    def __init__(self, s: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = s.n_head, s.n_kv_head, s.head_dim
        # One fused projection for q, k and v: one matmul instead of three matters on CPU,
        # where small steps are bound by per-op overhead.
        self.qkv = nn.Linear(s.d_model, (s.n_head + 2 * s.n_kv_head) * self.head_dim, bias=s.bias or s.qkv_bias)
        self.proj = nn.Linear(s.n_head * self.head_dim, s.d_model, bias=s.bias)
        # One gain vector serves queries and keys alike: attention sees only their product.
        # Imported Qwen3 checkpoints carry one for each (q_norm, k_norm).
        self.qk_norm = RMSNorm(self.head_dim, s.norm_eps) if s.qk_norm and s.qk_norm_shared else None
        self.q_norm = RMSNorm(self.head_dim, s.norm_eps) if s.qk_norm and not s.qk_norm_shared else None
        self.k_norm = RMSNorm(self.head_dim, s.norm_eps) if s.qk_norm and not s.qk_norm_shared else None

    def forward(self, x, cos, sin, cache: KVCache | None = None):
        B, T, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x)
        cpu_bf16 = x.device.type == "cpu" and qkv.dtype == torch.bfloat16
        if cpu_bf16:
            # PyTorch's CPU flash-attention backward is several times slower in bf16 than in
            # fp32 (measured 4.4 ms against 0.65 ms per call at T=64), while the projections
            # around it gain 4-5x from AMX; so attention runs in fp32 on CPU. Casting once here,
            # before the norm and the rotation, also keeps those elementwise ops in contiguous
            # fp32, which is faster on CPU than strided bf16.
            qkv = qkv.float()
        qkv = qkv.view(B, T, nh + 2 * nkv, hd)
        # q and k are normalized and rotated as one tensor: half the elementwise ops, which
        # dominate the step of a small model on CPU.
        qk = qkv[:, :, : nh + nkv]  # (B, T, nh + nkv, hd)
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        elif self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :nh]), self.k_norm(qk[:, :, nh:])), dim=2)
        if cos is not None:
            # cos/sin: (T, hd/2), or (B, T, hd/2) when each row has its own positions.
            qk = apply_rope(qk, cos.unsqueeze(-2), sin.unsqueeze(-2))
        q, k = qk.split([nh, nkv], dim=2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hd), (B, nkv, T, hd)
        v = qkv[:, :, nh + nkv :].transpose(1, 2)  # (B, nkv, T, hd)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        if nkv != nh:
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        mask = cache.mask() if isinstance(cache, SlotKVCache) else None
        if cpu_bf16:
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q, k, v, T, mask)
        else:
            y = self._attend(q, k, v, T, mask)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)  # (B, T, C)
        return self.proj(y)

    def _attend(self, q, k, v, T: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        # With a cache and T > 1 (prompt prefill on top of an existing cache) a plain causal mask
        # would be misaligned, so the offset mask is built explicitly.
        Tk = k.shape[2]
        if mask is not None:  # rows of different lengths (SlotKVCache)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if Tk == T:
            # No dropout on the attention probabilities (only on the residual branches): on CPU it
            # sends SDPA to its unfused path, measured 4.4x slower for forward and backward
            # (B=7, T=256, 4 heads of 32), which cost short runs about 40% of their steps.
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y


class SwiGLU(nn.Module):
    def __init__(self, s: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(s.d_model, 2 * s.d_ff, bias=s.bias)
        self.down = nn.Linear(s.d_ff, s.d_model, bias=s.bias)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GeluMLP(nn.Module):
    def __init__(self, s: ModelConfig):
        super().__init__()
        self.up = nn.Linear(s.d_model, s.d_ff, bias=s.bias)
        self.down = nn.Linear(s.d_ff, s.d_model, bias=s.bias)
        self.approximate = "tanh" if s.mlp == "gelu_tanh" else "none"

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, s: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(s.norm, s.d_model, s.norm_eps, s.bias)
        self.attn = Attention(s, layer)
        self.mlp_norm = make_norm(s.norm, s.d_model, s.norm_eps, s.bias)
        self.mlp = SwiGLU(s) if s.mlp == "swiglu" else GeluMLP(s)
        self.drop = Dropout(s.dropout) if s.dropout > 0 else nn.Identity()

    def forward(self, x, cos, sin, cache=None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache))
        x = x + self.drop(self.mlp(self.mlp_norm(x)))
        return x


class GPT(nn.Module):
    """`cfg` is the model's section of the config; its 'choose for me' zeros are resolved here."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        cfg.validate()
        s = self.cfg = cfg.resolved()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, s.d_model)
        self.pos_embed = nn.Embedding(s.context_len, s.d_model) if s.position == "learned" else None
        self.drop = Dropout(s.dropout) if s.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(s, i) for i in range(s.n_layer))
        self.norm = make_norm(s.norm, s.d_model, s.norm_eps, s.bias)
        self.lm_head = nn.Linear(s.d_model, vocab_size, bias=False)
        if s.tied_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(s.head_dim, s.context_len, s.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    def shape_dict(self) -> dict:
        """The resolved model section and the vocabulary size: what a run saves as model.json."""
        return {"vocab_size": self.vocab_size, **dataclasses.asdict(self.cfg)}

    @classmethod
    def from_shape_dict(cls, shape: dict) -> GPT:
        """The inverse of shape_dict(). Fields missing from a file written before they existed take
        the value those runs trained with (no QK-norm, RMSNorm, rotary positions, SwiGLU)."""
        shape = dict(shape)
        vocab_size = int(shape.pop("vocab_size"))
        for key, value in LEGACY_SHAPE_DEFAULTS.items():
            shape.setdefault(key, value)
        return cls(ModelConfig(**shape), vocab_size)

    def init_weights(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 0.02
        # Residual output projections are scaled down with depth so the residual stream's
        # variance does not grow with the number of layers (GPT-2's scheme).
        resid_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                with torch.no_grad():
                    p.zero_()
            if p.ndim < 2:
                continue
            s = resid_std if name.endswith(("proj.weight", "down.weight")) else std
            with torch.no_grad():
                p.normal_(0.0, s, generator=gen)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.cfg.tied_embeddings:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, context_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6 per weight plus attention scores."""
        s = self.cfg
        T = context_len or s.context_len
        n = self.num_params(non_embedding=False) - self.embed.weight.numel() * (0 if s.tied_embeddings else 1)
        if self.pos_embed is not None:
            n -= self.pos_embed.weight.numel()  # a lookup, no matmul
        # Causal attention: QK^T and AV, each 2*T*d per token forward, halved by the mask, x3 for backward.
        attn = 6 * s.n_layer * s.n_head * s.head_dim * T
        return 6 * n + attn

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ):
        """idx: (B, T) token ids. Returns logits (B, T, V), or the mean loss when targets are given."""
        B, T = idx.shape
        if isinstance(cache, SlotKVCache):
            start = cache.positions(T)  # (B, T): each row continues its own sequence
            end = int(start.max()) + 1
        else:
            start = cache.length if cache is not None else 0
            end = start + T
        if end > self.cfg.context_len:
            raise ValueError(f"sequence of {end} tokens exceeds context_len {self.cfg.context_len}")
        x, cos, sin = self._embed(idx, start)  # x: (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, cache)
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        if torch.compiler.is_compiling():
            # Compiled, the plain expression is fused by the compiler and needs no chunking.
            logits = self.lm_head(x)
            return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalized hidden states (B, T, C); used by classification heads."""
        x, cos, sin = self._embed(idx, 0)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def _embed(self, idx: torch.Tensor, start: int | torch.Tensor):
        """Token (and learned position) embeddings for positions start.., and the rotary tables.
        `start` may be a (B, T) tensor of each token's position instead."""
        T = idx.shape[1]
        x = self.embed(idx)
        if self.pos_embed is not None:
            positions = start if isinstance(start, torch.Tensor) else torch.arange(start, start + T, device=idx.device)
            x = x + self.pos_embed(positions)
            cos = sin = None
        elif isinstance(start, torch.Tensor):
            cos, sin = self.rope_cos[start], self.rope_sin[start]
        else:
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        return self.drop(x), cos, sin
