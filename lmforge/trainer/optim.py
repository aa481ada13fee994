"""AdamW with decay/no-decay groups, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from lmforge.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """Weight decay on matrices only: decaying norms, biases and embeddings hurts and buys nothing."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel exists for CPU and CUDA in current PyTorch and saves a visible share of a
    # small model's step; fall back to foreach where it is unavailable.
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


def lr_at(step: int, cfg: TrainConfig, total_steps: int | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    total = total_steps or cfg.max_steps
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    # wsd: hold the peak, then decay linearly to min_lr over the last decay_fraction of the run.
    decay_steps = max(1, int(round(cfg.decay_fraction * total)))
    decay_start = total - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start) / decay_steps)
    return cfg.lr + progress * (cfg.min_lr - cfg.lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
