"""Optimizers (AdamW, or Muon for hidden matrices plus AdamW) and the learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmforge.config import OptimConfig, ScheduleConfig


class OptimizerSet:
    """Several optimizers stepped as one: one state dict, one list of param groups for the schedule."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("optimizers")
        if saved is None or len(saved) != len(self.optimizers):
            raise ValueError("the checkpoint's optimizer state was saved with a different optim.kind")
        for opt, s in zip(self.optimizers, saved):
            opt.load_state_dict(s)


def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.AdamW:
    # The fused kernel exists for CPU and CUDA in current PyTorch and saves a visible share of a
    # small model's step; fall back to foreach where it is unavailable.
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


@dataclass
class LrGroup:
    """Parameters trained at `lr_scale` times the schedule's rate, and only once `start` (a share of
    the schedule's steps) has passed: ULMFiT's discriminative rates and gradual unfreezing."""

    params: list[torch.nn.Parameter]
    lr_scale: float = 1.0
    start: float = 0.0


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str,
                    lr_groups: list[LrGroup] | None = None):
    """Weight decay on matrices only: decaying norms, biases and embeddings hurts and buys nothing.

    With `optimizer: muon`, the hidden weight matrices (everything 2-D except embedding tables and
    the output layer, which Muon is not made for) get Muon; its learning rate is matched to AdamW's
    update size, so one `lr` and one schedule serve both. `lr_groups` give parts of the model their
    own rate multiplier and start (see LrGroup and set_lr); parameters in none of them take the
    schedule's rate from the first step.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    # Lookup tables and output layers (the LM's lm_head, a classifier's head) stay with AdamW.
    not_muon = embeddings | {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.EmbeddingBag)}
    not_muon |= {id(getattr(model, name).weight) for name in ("lm_head", "head")
                 if isinstance(getattr(model, name, None), torch.nn.Linear)}
    grouped = {id(p) for g in lr_groups or [] for p in g.params}
    rest = LrGroup([p for p in model.parameters() if id(p) not in grouped])
    adamw_groups, muon_groups = [], []
    for g in [rest, *(lr_groups or [])]:
        decay, no_decay, hidden = [], [], []
        for p in g.params:
            if not p.requires_grad:
                continue
            if p.ndim < 2 or id(p) in embeddings:
                no_decay.append(p)
            elif cfg.kind == "muon" and p.ndim == 2 and id(p) not in not_muon:
                hidden.append(p)
            else:
                decay.append(p)
        # Plain groups carry no extra keys, so the optimizer state of runs saved before lr groups existed loads.
        extra = {} if g is rest else {"lr_scale": g.lr_scale, "start": g.start}
        adamw_groups += [{"params": decay, "weight_decay": cfg.weight_decay, **extra},
                         {"params": no_decay, "weight_decay": 0.0, **extra}]
        if hidden:
            muon_groups.append({"params": hidden, **extra})
    adamw = _adamw(adamw_groups, cfg)
    if not muon_groups:
        return adamw
    from lmforge.trainer.muon import Muon

    muon = Muon(muon_groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                ns_dtype=torch.bfloat16 if device_type in ("cpu", "cuda") else torch.float32)
    return OptimizerSet([muon, adamw])


def lr_at(step: int, cfg: ScheduleConfig, peak_lr: float, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`, peaking at `peak_lr`."""
    total, lr, min_lr = total_steps, peak_lr, cfg.min_lr
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.kind == "constant":
        return lr
    if cfg.kind == "cosine":
        span = max(1, total - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    # wsd: hold the peak, then decay linearly to min_lr over the last decay_fraction of the run.
    decay_steps = max(1, int(round(cfg.decay_fraction * total)))
    decay_start = total - decay_steps
    if step < decay_start:
        return lr
    progress = min(1.0, (step - decay_start) / decay_steps)
    return lr + progress * (min_lr - lr)


def set_lr(optimizer, lr: float, step: int = 0, total_steps: int = 0) -> None:
    """The schedule's rate `lr` for optimizer step `step` of `total_steps`: times each group's
    lr_scale, and 0 for a group whose start has not come yet (marked frozen, see drop_frozen_grads).

    Gradual unfreezing is a rate of 0, not requires_grad switched off: the set of parameters that
    receive gradients then never changes during a run, which DDP's gradient buckets, a compiled
    model and the optimizer state saved in checkpoints all rely on, so a resumed run goes on exactly.
    """
    for group in optimizer.param_groups:
        frozen = step < group.get("start", 0.0) * total_steps
        group["frozen"] = frozen
        group["lr"] = 0.0 if frozen else lr * group.get("lr_scale", 1.0)


def drop_frozen_grads(optimizer) -> None:
    """Clear the gradients of frozen groups before clipping and stepping: they then neither move
    their weights (AdamW's decay and Muon's momentum step included) nor shrink the clipped gradient
    of the parts that train."""
    for group in optimizer.param_groups:
        if group.get("frozen"):
            for p in group["params"]:
                p.grad = None
