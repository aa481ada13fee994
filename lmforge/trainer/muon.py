"""Muon for many small matrices: momentum, then Newton-Schulz orthogonalization, batched by shape.

`torch.optim.Muon` orthogonalizes one matrix at a time. The small models a CPU trains in minutes
are bound by per-operation overhead, so here every group of same-shaped matrices is stacked and
orthogonalized together with fused `baddbmm` steps: 11.1 ms against 18.9 ms per step for a
4-layer, 128-wide model (AdamW: 0.9 ms), 7.9 against 10.0 ms at 2 layers.
The update rule is torch's: Nesterov momentum, five quintic Newton-Schulz iterations,
decoupled weight decay, and the update scaled to AdamW's RMS (0.2 * sqrt(max(rows, cols))),
so one learning rate and schedule can drive both optimizers (Muon still does best at about 2.5x
AdamW's rate; see `lmforge.auto.choices.rule_lr`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately U V^T for each matrix of G (n, rows, cols), by quintic Newton-Schulz iterations."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = X.mT  # iterate on the smaller Gram matrix
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral norm at most 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A in one call
        X = torch.baddbmm(X, B, X, beta=a)  # a*X + B@X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters; same-shaped ones are orthogonalized in one batched call."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D weight matrices only, got shape {tuple(p.shape)}")
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            by_shape: dict[tuple, list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape[(tuple(p.shape), p.device, p.dtype)].append(p)
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for (shape, _, _), params in by_shape.items():
                grads = torch.stack([p.grad for p in params])
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                # Momentum as an average (as torch.optim.Muon keeps it), then the Nesterov look-ahead.
                torch._foreach_lerp_(bufs, list(grads.unbind(0)), 1.0 - mu)
                update = torch.lerp(grads, torch.stack(bufs), mu)
                ortho = orthogonalize(update, group["ns_steps"], self.ns_dtype)
                scale = 0.2 * math.sqrt(max(shape))
                if wd:
                    torch._foreach_mul_(params, 1.0 - lr * wd)
                torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-lr * scale)
        return loss
