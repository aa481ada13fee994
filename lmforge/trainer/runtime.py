"""Process group, device and precision: the one place that knows about torchrun, DDP and autocast.

Single-process runs go through the same code with world_size 1, so there is one code path.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

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
    adapt_threads: bool = False  # CPU: drop to one thread when other programs make threads stall

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


def init_runtime(device: str = "auto", threads: int = 0) -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.

    `threads`: CPU threads per process; 0 shares the cores among the processes and lets the
    training loop drop to one thread when other programs make threads stall."""
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
        if threads:
            torch.set_num_threads(threads)
        elif world > 1:
            # Share the cores among the processes instead of oversubscribing them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank=rank, world_size=world, local_rank=local, device=dev, precision="fp32",
                   adapt_threads=dev.type == "cpu" and not threads)


def shutdown(rt: Runtime, finished: bool = False) -> None:
    """Leave the process group. After a finished run, first wait for every rank: a rank that tore
    down its gloo threads while rank 0 was still saving was seen to abort at exit (SIGABRT)."""
    if rt.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


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


def on_main(fn, rt: Runtime):
    """Run `fn()` on rank 0 and give every rank its result; an LmforgeError it raises is raised on
    every rank (so no rank waits forever for one that gave up)."""
    from lmforge.errors import LmforgeError

    if not rt.distributed:
        return fn()
    box: list = [None]
    if rt.is_main:
        try:
            box[0] = ("ok", fn())
        except LmforgeError as e:
            box[0] = ("error", type(e), str(e))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        raise box[0][1](box[0][2])
    return box[0][1]
