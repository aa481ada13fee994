"""Process group, device and precision: the one place that knows about torchrun, DDP and autocast.

Single-process runs go through the same code with world_size 1, so there is one code path.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            from lmforge.errors import ConfigError

            raise ConfigError("config field 'runtime.device': cuda was asked for but no CUDA device is available")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        # Denormal floats made long backward passes about 10x slower on this class of CPU.
        torch.set_flush_denormal(True)
        if world > 1:
            # Share the cores among the processes instead of oversubscribing them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank=rank, world_size=world, local_rank=local, device=dev, precision="fp32")


def shutdown(rt: Runtime, finished: bool = False) -> None:
    """Leave the process group. After a finished run, first wait for every rank: a rank that tore
    down its gloo threads while rank 0 was still saving was seen to abort at exit (SIGABRT)."""
    if rt.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


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


def time_step(step: Callable[[], None], repeats: int = 3) -> float:
    """Seconds per call of `step`, after one warm-up call; the minimum, to shrug off noise."""
    step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


def choose_precision(requested: str, device: torch.device, probe: Callable[[str], float] | None) -> tuple[str, str]:
    """Resolve 'auto' to a precision and say why.

    On CPU, bf16 pays only where AMX has enough work (about width 256 and up, and not for every
    op), so the decision is measured: `probe(precision)` times a real training micro-step.
    """
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
    if speedup >= 1.1:
        return "bf16", f"measured a training step {speedup:.2f}x faster than fp32 on this CPU"
    return "fp32", f"bf16 measured only {speedup:.2f}x the speed of fp32 at this shape"


def wrap_model(model: torch.nn.Module, rt: Runtime, compile_model: bool) -> torch.nn.Module:
    """Compile and/or wrap in DDP. Returns the module to call in the training step."""
    wrapped = model
    if compile_model:
        wrapped = torch.compile(wrapped)
    if rt.distributed:
        wrapped = DDP(wrapped, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    return wrapped


def all_reduce_mean(value: float, rt: Runtime) -> float:
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.item() / rt.world_size


def no_sync(module: torch.nn.Module, skip: bool):
    """Skip DDP's gradient all-reduce on all but the last accumulation micro-step."""
    if skip and isinstance(module, DDP):
        return module.no_sync()
    return contextlib.nullcontext()
