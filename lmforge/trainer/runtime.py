"""Process group, device and precision: the one place that knows about torchrun, DDP and autocast.

Single-process runs go through the same code with world_size 1, so there is one code path. How
the model is split across the processes (DDP, FSDP, tensor parallelism) is decided and applied in
`trainer.parallelize`; here only which process is which: with tensor parallelism of size tp, ranks
r*tp .. r*tp+tp-1 form data-parallel rank r and see the same batches.

No silent hangs: joining the process group and every collective operation wait at most
`timeout_s`, and the error that ends the wait names this process's rank, its host and the likely
cause (`describe_dist_failure`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def is_dtensor(t: object) -> bool:
    """A DTensor (a sharded or tensor-parallel parameter or gradient). Importing DTensor's module costs
    seconds at every start, which runs that shard nothing should not pay; before anything imported it,
    no DTensor exists."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    adapt_threads: bool = False  # CPU: drop to one thread when other programs make threads stall
    tp_size: int = 1  # processes that split each projection (tensor parallelism); set by parallelize
    timeout_s: float = 1800.0  # how long a process waits for the others

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Which share of each global batch this process takes (tensor-parallel peers take the same)."""
        return self.rank // self.tp_size

    @property
    def dp_size(self) -> int:
        """Shares the global batch is split into."""
        return self.world_size // self.tp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

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


def check_device(name: str, option: str = "--device") -> torch.device:
    """The torch device for a --device option (cpu, cuda, cuda:N, mps); a ConfigError, not a torch
    traceback, for a name that is not a device or a device this machine does not have."""
    from lmforge.config import check_option

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    check_option(device is not None and device.type in ("cpu", "cuda", "mps"), option, name,
                 "not a device; use cpu, cuda or cuda:N (or mps on a Mac)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check_option(count > 0, option, name, "no CUDA device is available on this machine; use --device cpu")
        check_option(device.index is None or device.index < count, option, name,
                     f"this machine has {count} CUDA device(s), numbered from 0")
    if device.type == "mps":
        check_option(torch.backends.mps.is_available(), option, name, "MPS is not available on this machine")
    return device


def init_runtime(device: str = "auto", threads: int = 0, timeout_s: float = 1800.0) -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.

    `threads`: CPU threads per process; 0 shares the cores among the processes and lets the
    training loop drop to one thread when other programs make threads stall. `timeout_s`: how long
    joining the group and each collective operation may wait for the other processes."""
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
        join_process_group(rank, world, "nccl" if dev.type == "cuda" else "gloo", timeout_s)
    return Runtime(rank=rank, world_size=world, local_rank=local, device=dev, precision="fp32",
                   adapt_threads=dev.type == "cpu" and not threads, timeout_s=timeout_s)


def join_process_group(rank: int, world: int, backend: str, timeout_s: float) -> None:
    """init_process_group with a deadline; a failure to join is one line naming rank, host and cause."""
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - the store and backends raise several types
        from lmforge.errors import TrainingError

        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise TrainingError(
            f"rank {rank} of {world} on {socket.gethostname()} could not join the process group at {where} "
            f"within {timeout_s:g} s ({_first_line(e)}). Likely cause: rank 0's node did not start or died, "
            "MASTER_ADDR/--rdzv-endpoint names an address this node cannot reach (firewall, wrong interface), "
            "or the nodes were given different --nnodes; see `lmforge env` on each node.") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[-1] if text else type(e).__name__)[:200].rstrip(".")


def is_dist_failure(e: BaseException) -> bool:
    """An error from a collective operation: a timeout, or a peer that went away."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(h in text for h in (
        "Timed out", "timed out", "Connection closed by peer", "Connection reset by peer", "NCCL", "Gloo",
        "gloo", "ProcessGroup"))


def describe_dist_failure(e: BaseException, rt: Runtime, doing: str = "training"):
    """The one-line TrainingError for a collective that failed or waited past the timeout."""
    from lmforge.errors import TrainingError

    timed_out = "timed out" in str(e).lower() or "timeout" in str(e).lower()
    what = (f"waited {rt.timeout_s:g} s (runtime.timeout_s) for the other processes" if timed_out
            else "lost contact with the other processes")
    return TrainingError(
        f"rank {rt.rank} of {rt.world_size} on {socket.gethostname()} {what} while {doing} "
        f"({_first_line(e)}). Likely cause: another rank crashed, was killed (out of memory?) or is stuck; "
        "read the other ranks' logs (logs/rank_N.log in the run folder) and their nodes' messages. A rank that "
        "is only slow (a large data preparation, a long compile) needs a larger runtime.timeout_s.")


def shutdown(rt: Runtime, finished: bool = False) -> None:
    """Leave the process group. After a finished run, first wait for every rank: a rank that tore
    down its gloo threads while rank 0 was still saving was seen to abort at exit (SIGABRT)."""
    if rt.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, rt: Runtime, compile_model: bool) -> torch.nn.Module:
    """Compile and/or wrap in DDP. Returns the module to call in the training step.

    A model sharded by `trainer.parallelize` (FSDP, tensor parallel) already does its own
    communication and was compiled block by block there; it is returned as it is."""
    if any(is_dtensor(p) for p in model.parameters()):
        if compile_model:
            for block in getattr(model, "blocks", ()):
                block.compile()  # in place: parameter names (and so checkpoints) stay as they are
        return model
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


class Watchdog:
    """Ends a distributed run whose steps stopped finishing, with a message instead of a silent hang.

    The backends time out a collective operation after runtime.timeout_s; this catches what they do
    not (a rank stuck outside a collective, a backend without its own watchdog). `pet()` after each
    step; when none came for timeout_s plus a minute, the process prints who and where it is and the
    likely cause, and exits (torchrun then stops the other processes). A no-op in one process."""

    GRACE_S = 60.0

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.last = time.monotonic()
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        if self.rt.distributed:
            self.thread = threading.Thread(target=self._watch, name="lmforge-watchdog", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()

    def pet(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        limit = self.rt.timeout_s + self.GRACE_S
        while not self.done.wait(min(10.0, limit / 4)):
            stalled = time.monotonic() - self.last
            if stalled > limit:
                print(f"lmforge: error: rank {self.rt.rank} of {self.rt.world_size} on {socket.gethostname()}: no "
                      f"training step finished in {stalled:.0f} s (runtime.timeout_s {self.rt.timeout_s:g} s); "
                      "stopping. Likely cause: another rank crashed or hangs (read its log: logs/rank_N.log in the "
                      "run folder), or a network problem between the nodes.", file=sys.__stderr__, flush=True)
                os._exit(3)


class _PrefixedLog:
    """A text stream that writes each line to a file, prefixed with the rank and the host."""

    def __init__(self, file, prefix: str):
        self.file, self.prefix, self.at_line_start = file, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.file.write(self.prefix)
            self.file.write(piece)
            self.at_line_start = piece.endswith("\n")
        self.file.flush()
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.file.fileno()


@contextlib.contextmanager
def rank_logs(rt: Runtime, run_dir: Path):
    """On ranks other than 0, send what the process prints (and the C++ libraries' messages) to
    logs/rank_N.log in the run folder, each Python line prefixed with rank and host, instead of
    interleaving it with rank 0's output. An error that ends the process is logged there and then
    reaches the terminal as usual."""
    if rt.rank == 0:
        yield
        return
    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"rank_{rt.rank}.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
    saved_fd = os.dup(2)
    old = sys.stdout, sys.stderr
    stream = _PrefixedLog(log, f"[rank {rt.rank} {socket.gethostname()}] ")
    sys.stdout = sys.stderr = stream
    os.dup2(log.fileno(), 2)
    try:
        yield
    except BaseException as e:
        stream.write(f"{type(e).__name__}: {e}\n")
        raise
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stdout, sys.stderr = old
        log.close()
