"""Model arithmetic of a candidate shape: parameters, training FLOPs per token and memory.

The counts come from the model itself, built on the meta device (no memory, no real
initialisation), so they are right for every architecture option: SwiGLU or GELU MLP, rotary or
learned positions, grouped-query attention, tied or untied embeddings, a fixed MLP width. A
formula written for one architecture would rank GPT-2-style shapes wrongly.

The planner asks for the counts of dozens of shapes, many times. The blocks of a GPT are identical,
so a model of one block and one of two give the cost of a block and of everything else exactly;
any depth follows from those two (about 5 ms per width instead of 20 ms per shape), and they are
cached per architecture, width, heads and context. Tests check the result against full models.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lmforge.config import ModelConfig


@dataclass(frozen=True)
class Candidate:
    n_layer: int
    d_model: int
    n_head: int
    context_len: int

    @property
    def name(self) -> str:
        return f"{self.n_layer}L x {self.d_model} ({self.n_head} heads), context {self.context_len}"

    @property
    def short(self) -> str:
        return f"{self.n_layer}L x {self.d_model}, context {self.context_len}"


def shape_config(base: ModelConfig, c: Candidate, dropout: float | None = None) -> ModelConfig:
    """The run's model section at a candidate's sizes.

    The architecture options of `base` are kept; grouped-query attention too, when its key/value
    heads divide the candidate's heads (else plain multi-head attention, as the run would get)."""
    kv = base.n_kv_head if base.n_kv_head and c.n_head % base.n_kv_head == 0 else 0
    return dataclasses.replace(base, n_layer=c.n_layer, d_model=c.d_model, n_head=c.n_head, n_kv_head=kv,
                               context_len=c.context_len, dropout=base.dropout if dropout is None else dropout)


@dataclass(frozen=True)
class ShapeCounts:
    params: int
    """Every parameter of the model (a tied embedding counted once)."""
    block_params: int
    """Parameters in the transformer blocks: the N of the scaling rule (embeddings, positions, the
    output layer and the final norm excluded, as Kaplan et al. count)."""
    flops_per_token: float
    """Training FLOPs per token (forward and backward) at the candidate's context."""
    weight_flops_per_token: float
    """The part of it spent on weights, which does not grow with the context."""


@dataclass(frozen=True)
class _Parts:
    """Counts of a model of one block (`rest` + `block`) and their growth per extra block."""

    rest_params: int
    block_params: int
    rest_weight_flops: float
    block_weight_flops: float
    rest_attn_flops: float  # per token of context (none, for this GPT; kept should that change)
    block_attn_flops: float


_PARTS: dict[tuple, _Parts] = {}


def _measure(cfg: ModelConfig, vocab: int) -> tuple[int, int, float, float]:
    """(parameters, block parameters, weight FLOPs per token, attention FLOPs per context token)."""
    import torch

    from lmforge.models.gpt import GPT

    with torch.device("meta"):
        model = GPT(cfg, vocab)
    params = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for p in model.blocks.parameters())
    T = cfg.context_len
    # The model's own FLOP count is linear in the context: two contexts separate the parts.
    at_t, at_2t = model.flops_per_token(T), model.flops_per_token(2 * T)
    attn = (at_2t - at_t) / T
    return params, blocks, at_t - attn * T, attn


def _parts(cfg: ModelConfig, vocab: int) -> _Parts:
    key = (dataclasses.astuple(dataclasses.replace(cfg, n_layer=1, dropout=0.0)), vocab)
    if key not in _PARTS:
        p1, b1, w1, a1 = _measure(dataclasses.replace(cfg, n_layer=1, dropout=0.0), vocab)
        p2, b2, w2, a2 = _measure(dataclasses.replace(cfg, n_layer=2, dropout=0.0), vocab)
        _PARTS[key] = _Parts(rest_params=p1 - (p2 - p1), block_params=b1, rest_weight_flops=w1 - (w2 - w1),
                             block_weight_flops=w2 - w1, rest_attn_flops=a1 - (a2 - a1), block_attn_flops=a2 - a1)
    return _PARTS[key]


def shape_counts(c: Candidate, vocab: int, base: ModelConfig | None = None) -> ShapeCounts:
    """Parameters and FLOPs of the GPT the run would build for `c` (architecture options from `base`)."""
    cfg = shape_config(base or ModelConfig(), c)
    p = _parts(cfg, vocab)
    L = c.n_layer
    weight_flops = p.rest_weight_flops + L * p.block_weight_flops
    return ShapeCounts(params=p.rest_params + L * p.block_params, block_params=L * p.block_params,
                       flops_per_token=weight_flops + (p.rest_attn_flops + L * p.block_attn_flops) * c.context_len,
                       weight_flops_per_token=weight_flops)


def flops_per_token(c: Candidate, vocab: int, base: ModelConfig | None = None) -> float:
    """Training FLOPs per token of the shape: 6 per weight used (the output layer included) plus attention."""
    return shape_counts(c, vocab, base).flops_per_token


def activation_bytes(c: Candidate, micro_batch: int) -> float:
    # Roughly what a block keeps for the backward pass per token (fp32): ~34 values of width d.
    return micro_batch * c.context_len * c.n_layer * c.d_model * 34 * 4


def memory_needed(c: Candidate, vocab: int, micro_batch: int, base: ModelConfig | None = None) -> float:
    """Bytes a training step needs: weights, gradients and two Adam moments in fp32 (from the real
    parameter count), plus activations and the logits."""
    params = shape_counts(c, vocab, base).params
    return 16 * params + activation_bytes(c, micro_batch) + 3 * 4 * micro_batch * c.context_len * vocab


def round_pow2_down(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))
