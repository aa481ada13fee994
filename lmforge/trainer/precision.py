"""The one precision decision: fp32, bf16 or fp16, measured where it is not obvious.

GPUs use bf16 where they have it (fp16 with loss scaling where not). On a CPU, bf16 pays only
where AMX has enough work (about width 256 and up, and not for every op), so 'auto' times a real
forward and backward pass of the run's model in both precisions and keeps bf16 only when it is
at least BF16_MIN_SPEEDUP times faster. The training run, the learning-rate range test and the
planner all decide through `choose_precision`, and every process of a run uses rank 0's answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from lmforge.trainer.runtime import Runtime

PRECISIONS = ("fp32", "bf16", "fp16")
BF16_MIN_SPEEDUP = 1.1


def cpu_has_fast_bf16() -> bool:
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return "amx_bf16" in flags or "avx512_bf16" in flags


def time_call(fn: Callable[[], None], repeats: int = 3) -> float:
    """Seconds per call of `fn`, after one warm-up call; the minimum, to shrug off noise."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def choose_precision(requested: str, device: torch.device, probe: Callable[[str], float] | None) -> tuple[str, str]:
    """Resolve 'auto' to a precision and say why. `probe(precision)` returns seconds per step."""
    if requested != "auto":
        return requested, "set in the config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "GPU supports bf16"
        return "fp16", "GPU lacks bf16; fp16 with loss scaling"
    if not cpu_has_fast_bf16():
        return "fp32", "CPU has no AMX/AVX512-BF16"
    if probe is None:
        return "bf16", "CPU has AMX/AVX512-BF16"
    fp32, bf16 = probe("fp32"), probe("bf16")
    speedup = fp32 / max(bf16, 1e-9)
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"measured a training step {speedup:.2f}x faster than fp32 on this CPU"
    return "fp32", f"bf16 measured only {speedup:.2f}x the speed of fp32 at this shape"


def step_probe(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor], batch: Any,
               rt: Runtime, repeats: int = 3) -> Callable[[str], float]:
    """A probe for `choose_precision`: times forward and backward of `batch` in a given precision.

    The model's weights and the random state are left as they were (the gradients are cleared)."""
    from lmforge.trainer.step import forward_backward

    def probe(precision: str) -> float:
        rng = torch.get_rng_state()
        probe_rt = Runtime(rt.rank, 1, rt.local_rank, rt.device, precision)

        def run() -> None:
            forward_backward(model, loss_fn, lambda _i: batch, 1, probe_rt)
            model.zero_grad(set_to_none=True)

        seconds = time_call(run, repeats)
        torch.set_rng_state(rng)
        return seconds

    return probe


def broadcast_choice(value: str, options: tuple[str, ...] | list[str], rt: Runtime) -> str:
    """Rank 0's choice, on every rank (processes that disagreed on precision would hang or diverge)."""
    if not rt.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([list(options).index(value)], device=rt.device)
    dist.broadcast(t, src=0)
    return options[int(t.item())]


def decide_precision(requested: str, rt: Runtime, probe: Callable[[str], float] | None) -> tuple[str, str]:
    """choose_precision on rank 0's measurement, agreed by every rank."""
    precision, why = choose_precision(requested, rt.device, probe)
    return broadcast_choice(precision, PRECISIONS, rt), why
