"""The training step, written once: micro-batches and accumulation, the backward pass, clipping and
the optimizer (and loss-scaler) step.

The training loop, the learning-rate range test, the planner's step timer and the precision probe
all call these functions, so what is timed and tried is what trains. The global batch is fixed
by the run; `plan_batches` derives how one process splits its share into micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lmforge.errors import ConfigError
from lmforge.trainer.parallelize import clip_grad_norm, sum_partial_grads
from lmforge.trainer.runtime import Runtime, no_sync

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def plan_batches(examples_per_step: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation steps) for one process; the global batch is fixed.
    `world_size`: the processes that split the batch (tensor-parallel peers count once: rt.dp_size)."""
    if examples_per_step % world_size:
        raise ConfigError(
            f"the global batch of {examples_per_step} examples is not divisible by {world_size} processes; "
            "change the global batch (train.global_batch_tokens or train.batch_size)"
        )
    per_rank = examples_per_step // world_size
    micro = micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"config field 'train.micro_batch_size': {micro} does not divide the per-process batch of "
            f"{per_rank} examples ({examples_per_step} global / {world_size} processes)"
        )
    return micro, per_rank // micro


def backoff_micro_batch(micro_batch_size: int, per_rank: int) -> int:
    """The next smaller micro-batch after an out-of-memory error: half, or the largest divisor of the
    per-process batch below half; 0 when it cannot shrink further."""
    for size in range(micro_batch_size // 2, 0, -1):
        if per_rank % size == 0:
            return size
    return 0


def is_oom_error(exc: BaseException) -> bool:
    """True for an out-of-memory error from any device's allocator."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg
    return False


def make_scaler(precision: str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" else None


def forward_backward(step_model: torch.nn.Module, loss_fn: LossFn, micro_batch: Callable[[int], Any], accum: int,
                     rt: Runtime, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step's `accum` micro-batches; returns the mean loss.

    `micro_batch(i)` gives the i-th micro-batch. Under DDP the gradients are all-reduced once, with
    the last micro-batch, not after each.
    """
    total: torch.Tensor | None = None
    for i in range(accum):
        batch = micro_batch(i)
        with no_sync(step_model, skip=i < accum - 1):
            with rt.autocast():
                loss = loss_fn(step_model, batch) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        # Kept on the device: reading it here would wait for the GPU at every micro-batch.
        total = loss.detach() if total is None else total + loss.detach()
    return total


def optimizer_step(model: torch.nn.Module, optimizer, grad_clip: float,
                   scaler: torch.amp.GradScaler | None = None) -> float | None:
    """Clip the gradients (0: no clipping), step the optimizer, clear the gradients; returns the norm."""
    sum_partial_grads(model)
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = clip_grad_norm(model.parameters(), grad_clip) if grad_clip > 0 else None
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return None if norm is None else float(norm)


def train_step(step_model: torch.nn.Module, model: torch.nn.Module, loss_fn: LossFn,
               micro_batch: Callable[[int], Any], accum: int, optimizer, rt: Runtime, grad_clip: float,
               scaler: torch.amp.GradScaler | None = None) -> tuple[float, float | None]:
    """One whole optimizer step: (mean loss, gradient norm). The loop calls the two halves itself,
    so that it can stop at a non-finite loss before the optimizer applies it."""
    loss = forward_backward(step_model, loss_fn, micro_batch, accum, rt, scaler)
    return float(loss), optimizer_step(model, optimizer, grad_clip, scaler)
