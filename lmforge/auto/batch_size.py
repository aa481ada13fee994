"""Batch-size finder: the micro-batch to train with on this device.

On a GPU the answer is the largest micro-batch that fits in memory: sizes are doubled until an
out-of-memory error, which is caught, and the last size that fitted is kept. On a CPU memory is
rarely the limit; throughput is. It rises with the micro-batch while the matrices are too small to
keep the cores busy and then flattens, so the finder takes the knee of that curve: the smallest
size within a few percent of the best throughput seen (larger sizes only cost optimizer steps).

During training, an out-of-memory error halves the micro-batch and doubles the accumulation
instead (see `lmforge.trainer.loop.fit`), so the global batch never changes.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmforge.trainer.step import is_oom_error


@dataclass
class BatchSizeResult:
    micro_batch_size: int
    seconds_per_example: float  # at the chosen size
    reason: str
    tried: list[tuple[int, float | None]] = field(default_factory=list)  # (size, seconds per step or None = OOM)


def find_micro_batch(
    time_step: Callable[[int], float],
    max_size: int,
    device: str = "cpu",
    start: int = 1,
    knee: float = 0.9,
    max_seconds_per_try: float = float("inf"),
) -> BatchSizeResult:
    """Try sizes start, 2*start, 4*start ... up to max_size.

    `time_step(size)` runs training micro-steps at that size and returns seconds per micro-step
    (raising the device's out-of-memory error when it does not fit). A try slower than
    `max_seconds_per_try` ends the search (the size above would be slower still).
    """
    tried: list[tuple[int, float | None]] = []
    size = max(1, start)
    oom_at: int | None = None
    while size <= max_size:
        try:
            seconds = time_step(size)
        except Exception as e:  # noqa: BLE001
            if not is_oom_error(e):
                raise
            seconds = None
        if seconds is None:
            tried.append((size, None))
            oom_at = size
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            break
        tried.append((size, seconds))
        if device == "cpu" and len(tried) >= 3:
            # Throughput flat over the last two doublings: larger sizes will not pay.
            rates = [b / s for b, s in tried[-3:] if s]
            if len(rates) == 3 and rates[2] < rates[1] * 1.05 and rates[1] < rates[0] * 1.05:
                break
        if seconds > max_seconds_per_try:
            break
        size *= 2
    fitted = [(b, s) for b, s in tried if s is not None]
    if not fitted:
        raise MemoryError(f"even a micro-batch of {tried[0][0]} does not fit in memory on {device}")
    if device == "cuda":
        b, s = fitted[-1]
        why = (f"largest power of two that fits: {oom_at} ran out of memory" if oom_at
               else f"largest size tried ({b}) fits in memory")
        return BatchSizeResult(b, s / b, why, tried)
    best = max(b / s for b, s in fitted)
    for b, s in fitted:
        if b / s >= knee * best:
            extra = f"; {oom_at} ran out of memory" if oom_at else ""
            why = (f"knee of the throughput curve: {b / s:,.0f} examples/s, {100 * (b / s) / best:.0f}% of the "
                   f"best measured ({', '.join(str(x) for x, _ in fitted)} tried){extra}")
            return BatchSizeResult(b, s / b, why, tried)
    raise AssertionError("unreachable")
