"""Neural text classifiers. Each maps (ids (B, T), lengths (B,)) to class logits (B, C).

Batches are right-padded with id 0; `lengths` holds each text's true length, and every model
masks padding itself. Plain single-device PyTorch: DDP, compilation and precision come from the
trainer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from lmforge.models.gpt import GPT


def length_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) True at real tokens."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over time of x (B, T, D) at mask (B, T) positions."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(1)


def reverse_within_length(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) gather index that reverses each sequence's first `length` steps and keeps padding in place.

    Reversal is its own inverse, so the same index maps a reversed output back.
    """
    t = torch.arange(T, device=lengths.device)[None, :]
    L = lengths[:, None]
    return torch.where(t < L, L - 1 - t, t)


class BiLSTMClassifier(nn.Module):
    """Embedding -> stacked bidirectional LSTM -> pooled features -> dropout -> linear.

    The backward direction runs over each text reversed within its own length, so it starts at the
    true last token instead of at padding (what a padded nn.LSTM(bidirectional=True) would do), and
    both directions' final states are read at the true end. This gives PackedSequence's semantics
    without its CPU backward pass, which is pathologically slow (pytorch issue 149194).
    """

    def __init__(self, vocab_size: int, n_classes: int, embed_dim: int = 128, hidden_dim: int = 128,
                 layers: int = 1, dropout: float = 0.5, pooling: str = "last_max"):
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.fwd = nn.ModuleList()
        self.bwd = nn.ModuleList()
        width = embed_dim
        for _ in range(layers):
            self.fwd.append(nn.LSTM(width, hidden_dim, batch_first=True))
            self.bwd.append(nn.LSTM(width, hidden_dim, batch_first=True))
            width = 2 * hidden_dim
        self.drop = nn.Dropout(dropout)
        feat = 2 * hidden_dim * (2 if pooling == "last_max" else 1)
        self.head = nn.Linear(feat, n_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        lengths = lengths.clamp_min(1)
        rev = reverse_within_length(lengths, T)
        x = self.drop(self.embed(ids))  # (B, T, E)
        for i, (f, b) in enumerate(zip(self.fwd, self.bwd)):
            out_f, _ = f(x)  # (B, T, H): position t has read tokens 0..t
            x_rev = x.gather(1, rev.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            out_b_rev, _ = b(x_rev)  # position t has read tokens len-1 down to len-1-t
            out_b = out_b_rev.gather(1, rev.unsqueeze(-1).expand(-1, -1, out_b_rev.shape[-1]))
            x = torch.cat([out_f, out_b], dim=-1)  # (B, T, 2H), aligned with the input
            if i < len(self.fwd) - 1:
                x = self.drop(x)
        feats = []
        if self.pooling in ("last", "last_max"):
            rows = torch.arange(B, device=ids.device)
            # Forward state after the last real token; backward state after reading back to token 0.
            feats.append(torch.cat([out_f[rows, lengths - 1], out_b_rev[rows, lengths - 1]], dim=-1))
        mask = length_mask(lengths, T)
        if self.pooling in ("max", "last_max"):
            feats.append(masked_max(x, mask))
        if self.pooling == "mean":
            feats.append(masked_mean(x, mask))
        return self.head(self.drop(torch.cat(feats, dim=-1)))


class NgramBagClassifier(nn.Module):
    """fastText-style: the mean of the text's word n-gram embeddings, then a linear layer.

    Input ids are n-gram feature ids + 1 (0 is padding, left out of the mean).
    """

    def __init__(self, n_features: int, n_classes: int, embed_dim: int = 32, dropout: float = 0.0):
        super().__init__()
        self.bag = nn.EmbeddingBag(n_features + 1, embed_dim, mode="mean", padding_idx=0)
        nn.init.uniform_(self.bag.weight, -1.0 / embed_dim, 1.0 / embed_dim)
        with torch.no_grad():
            self.bag.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, n_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.bag(ids)))


class TransformerClassifier(nn.Module):
    """A small pre-norm transformer encoder with learned positions and masked pooling."""

    def __init__(self, vocab_size: int, n_classes: int, max_len: int, d_model: int = 128, n_layer: int = 2,
                 n_head: int = 4, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embed.weight, 0, 0.02)
        nn.init.normal_(self.pos.weight, 0, 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_head, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layer, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : self.pos.num_embeddings]  # batches may be padded past the longest position
        B, T = ids.shape
        lengths = lengths.clamp_min(1)
        mask = length_mask(lengths, T)
        x = self.embed(ids) + self.pos(torch.arange(T, device=ids.device))[None]
        h = self.encoder(self.drop(x), src_key_padding_mask=~mask)
        if self.pooling == "cls":
            pooled = h[:, 0]
        elif self.pooling == "max":
            pooled = masked_max(h, mask)
        else:
            pooled = masked_mean(h, mask)
        return self.head(self.drop(pooled))


class GPTClassifier(nn.Module):
    """An lmforge GPT's final hidden states, pooled (masked mean or last real token), then a linear head."""

    def __init__(self, gpt: GPT, n_classes: int, pooling: str = "mean", dropout: float = 0.1, freeze: bool = False):
        super().__init__()
        self.gpt = gpt
        self.pooling = pooling
        # The language-model head plays no part here; without a gradient it would also break DDP.
        if not gpt.cfg.tied_embeddings:
            gpt.lm_head.weight.requires_grad_(False)
        if freeze:
            gpt.requires_grad_(False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.cfg.d_model, n_classes)
        nn.init.normal_(self.head.weight, 0, 0.02)
        nn.init.zeros_(self.head.bias)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from the top down: the head with the final norm, each block from the last to
        the first, then the embeddings (with the tied output layer): the order in which ULMFiT's
        gradual unfreezing lets them train, each at a lower rate than the one above."""
        g = self.gpt
        top = [*self.head.parameters(), *g.norm.parameters()]
        blocks = [list(b.parameters()) for b in reversed(g.blocks)]
        bottom = [*g.embed.parameters(), *(g.pos_embed.parameters() if g.pos_embed is not None else [])]
        return [top, *blocks, bottom]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : self.gpt.cfg.context_len]  # batches may be padded past the context
        B, T = ids.shape
        lengths = lengths.clamp_min(1)
        h = self.gpt.hidden_states(ids)  # causal: padding on the right never reaches real tokens
        if self.pooling == "last":
            pooled = h[torch.arange(B, device=ids.device), lengths - 1]
        else:
            pooled = masked_mean(h, length_mask(lengths, T))
        return self.head(self.drop(pooled.float()))


def build_classifier(spec: dict[str, Any]) -> nn.Module:
    """A model from its spec (kind + constructor arguments), as saved in a run's model.json."""
    kind = spec["kind"]
    args = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "bilstm":
        return BiLSTMClassifier(**args)
    if kind == "fasttext":
        return NgramBagClassifier(**args)
    if kind == "transformer":
        return TransformerClassifier(**args)
    if kind == "gpt":
        return GPTClassifier(GPT.from_shape_dict(args.pop("gpt_shape")), **args)
    raise ValueError(f"unknown classifier kind {kind!r}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_embedding(model: nn.Module, vectors: torch.Tensor) -> None:
    """Copy pretrained word vectors into the model's token embedding."""
    emb = model.embed  # BiLSTM and transformer both name it `embed`
    if emb.weight.shape != vectors.shape:
        raise ValueError(f"vectors of shape {tuple(vectors.shape)} do not fit embedding {tuple(emb.weight.shape)}")
    with torch.no_grad():
        emb.weight.copy_(vectors)
        # Keep the vectors' scale comparable to a fresh init so the LSTM is not saturated.
        std = float(vectors[2:].std()) if len(vectors) > 2 else 1.0
        if math.isfinite(std) and std > 1.0:
            emb.weight.div_(std)
        emb.weight[0].zero_()
