"""lmforge's GPT with GPT-2's options against a reference GPT-2 written here from its definition.

The reference is the model nanoGPT trains (its default bias=False): token and learned position
embeddings; pre-norm blocks of causal self-attention (one fused input projection giving queries,
keys and values, in that order) and a 4x GELU MLP; LayerNorm without bias; a final LayerNorm; an
output projection tied to the token embedding. It is written plainly, attention included, so that
it shares no code with lmforge. The same weights go into both, and the logits and the loss must
agree to float32 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.models.gpt import GPT, KVCache


class RefLayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)  # biased variance, as LayerNorm defines it
        return (x - mean) / torch.sqrt(var + self.eps) * self.gain


class RefBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = RefLayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.ln_2 = RefLayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.mlp_proj = nn.Linear(4 * width, width, bias=False)

    def attention(self, x):
        B, T, C = x.shape
        hd = C // self.heads
        q, k, v = self.c_attn(x).split(C, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))  # (B, H, T, hd)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, T, T)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        out = (weights @ v).permute(0, 2, 1, 3).reshape(B, T, C)
        return self.c_proj(out)

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        h = self.c_fc(self.ln_2(x))
        gelu = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))  # the exact GELU, as nanoGPT's nn.GELU()
        return x + self.mlp_proj(gelu)


class RefGPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, heads: int, layers: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.h = nn.ModuleList(RefBlock(width, heads) for _ in range(layers))
        self.ln_f = RefLayerNorm(width)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied output projection
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


SHAPES = [  # (vocab, context, width, heads, layers)
    (67, 16, 32, 4, 2),
    (101, 24, 48, 3, 3),
]


def reference_to_lmforge_names(layers: int) -> dict[str, str]:
    """Reference parameter name -> lmforge's. Both fuse q, k and v as [q; k; v] rows, heads in order."""
    names = {"wte.weight": "embed.weight", "wpe.weight": "pos_embed.weight", "ln_f.gain": "norm.weight"}
    for i in range(layers):
        for theirs, mine in [("ln_1.gain", "attn_norm.weight"), ("c_attn.weight", "attn.qkv.weight"),
                             ("c_proj.weight", "attn.proj.weight"), ("ln_2.gain", "mlp_norm.weight"),
                             ("c_fc.weight", "mlp.up.weight"), ("mlp_proj.weight", "mlp.down.weight")]:
            names[f"h.{i}.{theirs}"] = f"blocks.{i}.{mine}"
    return names


def gpt2_pair(vocab: int, context: int, width: int, heads: int, layers: int, seed: int = 0):
    cfg = ModelConfig(n_layer=layers, n_head=heads, d_model=width, context_len=context, norm="layer",
                      position="learned", mlp="gelu", qk_norm=False, tied_embeddings=True, dropout=0.0)
    torch.manual_seed(seed)
    ours = GPT(cfg, vocab).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.ndim == 1:  # the norms' gains start at 1: make them differ, so a swapped one shows
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    ref = RefGPT(vocab, context, width, heads, layers).eval()
    mapping = reference_to_lmforge_names(layers)
    state = ours.state_dict()
    ref.load_state_dict({theirs: state[mine].clone() for theirs, mine in mapping.items()}, strict=True)
    # Every weight of lmforge's model has a counterpart (lm_head is the tied embedding).
    assert set(mapping.values()) | {"lm_head.weight"} == set(state)
    return ours, ref


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("batch,seq", [(1, 1), (2, 7), (3, None)])  # None: the whole context
def test_gpt2_options_match_reference_logits_and_loss(shape, batch, seq):
    vocab, context = shape[0], shape[1]
    seq = seq or context
    ours, ref = gpt2_pair(*shape)
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    idx = torch.randint(0, vocab, (batch, seq), generator=gen)
    targets = torch.randint(0, vocab, (batch, seq), generator=gen)
    with torch.no_grad():
        logits, ref_logits = ours(idx), ref(idx)
        loss = ours(idx, targets)
        _, ref_loss = ref(idx, targets)
    assert logits.shape == ref_logits.shape == (batch, seq, vocab)
    assert ref_logits.std() > 0.1  # not a degenerate comparison of near-zero numbers
    assert (logits - ref_logits).abs().max().item() < 1e-5
    assert abs(loss.item() - ref_loss.item()) < 1e-5


def test_gpt2_options_incremental_decoding_matches_reference():
    vocab, context = SHAPES[0][0], SHAPES[0][1]
    ours, ref = gpt2_pair(*SHAPES[0], seed=1)
    idx = torch.randint(0, vocab, (2, context), generator=torch.Generator().manual_seed(3))
    cache = KVCache(ours.cfg.n_layer)
    with torch.no_grad():
        prefix = ours(idx[:, :5], cache=cache)  # a prompt, then one token at a time from the cache
        steps = [ours(idx[:, t : t + 1], cache=cache) for t in range(5, context)]
        ref_logits = ref(idx)
    decoded = torch.cat([prefix, *steps], dim=1)
    assert (decoded - ref_logits).abs().max().item() < 1e-5


def test_gpt2_options_gradients_match_reference():
    # Training is what the parity is for: the gradients of the loss agree too.
    ours, ref = gpt2_pair(*SHAPES[0], seed=2)
    vocab, context = SHAPES[0][0], SHAPES[0][1]
    gen = torch.Generator().manual_seed(4)
    idx = torch.randint(0, vocab, (2, context), generator=gen)
    targets = torch.randint(0, vocab, (2, context), generator=gen)
    ours(idx, targets).backward()
    ref(idx, targets)[1].backward()
    ours_params = dict(ours.named_parameters())
    names = reference_to_lmforge_names(ours.cfg.n_layer)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(ours_params[names[name]].grad, p.grad, atol=1e-6, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")
