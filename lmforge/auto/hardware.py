"""What the machine offers: device, memory, cores, measured matmul throughput, bf16 and compile support.

`probe_hardware()` takes about a second on a CPU (a few timed matmuls); nothing here is cached
across processes, because other programs sharing the machine change the answer from run to run.
Timings are the minimum over a few repeats, so a core taken away for a moment does not count.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass

import torch

from lmforge.trainer.memory import available_ram


@dataclass
class Hardware:
    device: str  # "cpu" or "cuda"
    name: str
    cores: int  # CPU cores this process may use
    threads: int  # intra-op threads torch uses
    memory_bytes: int  # free device memory (GPU) or available RAM (CPU)
    fast_bf16: bool  # bf16 has hardware support that makes it faster than fp32 here
    fp32_tflops: float  # measured dense matmul throughput
    bf16_tflops: float
    compile_ok: bool  # torch.compile can run here (a compiler toolchain is present)
    compile_why: str
    probe_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def bf16_speedup(self) -> float:
        return self.bf16_tflops / max(self.fp32_tflops, 1e-12)

    def describe(self) -> str:
        mem = f"{self.memory_bytes / 2**30:.1f} GiB {'free' if self.device == 'cuda' else 'available'}"
        return (f"{self.name} ({self.device}, {self.cores} cores, {mem}); matmul {self.fp32_tflops:.2f} TFLOP/s fp32, "
                f"{self.bf16_tflops:.2f} bf16")


def usable_cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    # A container's CPU quota (cgroup v2) can be below the cores it sees.
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()[:2]
        if quota != "max":
            n = max(1, min(n, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def compile_support(device: str) -> tuple[bool, str]:
    """Whether torch.compile's default backend can generate code here (checked without compiling)."""
    if not hasattr(torch, "compile"):
        return False, "this PyTorch has no torch.compile"
    if device == "cuda":
        if importlib.util.find_spec("triton") is None:
            return False, "Triton is not installed"
        return True, "Triton is available"
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if not cxx or not shutil.which(cxx):
        return False, "no C++ compiler found (the CPU backend generates C++)"
    return True, f"C++ compiler {os.path.basename(cxx)} found"


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Dense n x n matmul throughput; the best of `repeats` timings after a warm-up."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    inner = 4 if device.type == "cpu" else 20

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / inner

    run()
    best = min(run() for _ in range(repeats))
    return 2 * n**3 / best / 1e12


def probe_hardware(device: str = "auto", measure: bool = True) -> Hardware:
    t0 = time.perf_counter()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        name = torch.cuda.get_device_name(dev)
        fast_bf16 = torch.cuda.is_bf16_supported()
        memory = int(free)
        size = 4096
    else:
        from lmforge.trainer.precision import cpu_has_fast_bf16

        torch.set_flush_denormal(True)
        name = cpu_name()
        fast_bf16 = cpu_has_fast_bf16()
        memory = available_ram()
        size = 1024
    fp32 = bf16 = 0.0
    if measure:
        fp32 = matmul_tflops(dev, torch.float32, size)
        bf16 = matmul_tflops(dev, torch.bfloat16, size) if (fast_bf16 or device == "cuda") else fp32 * 0.5
    ok, why = compile_support(device)
    return Hardware(device=device, name=name, cores=usable_cores(), threads=torch.get_num_threads(),
                    memory_bytes=memory, fast_bf16=fast_bf16, fp32_tflops=fp32, bf16_tflops=bf16,
                    compile_ok=ok, compile_why=why, probe_s=time.perf_counter() - t0)
