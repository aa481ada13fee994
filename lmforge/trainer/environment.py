"""What matters for debugging a cluster run, gathered from this process: `lmforge env`.

Versions, devices, the distributed backends this PyTorch build has, the launcher's variables this
process sees (torchrun, Slurm) and the network settings the backends read. Run it on every node
(e.g. `srun lmforge env`) and compare.
"""

from __future__ import annotations

import os
import platform
import socket
import sys

import torch

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                    "TORCHELASTIC_MAX_RESTARTS")
NETWORK_PREFIXES = ("NCCL_", "GLOO_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_", "TP_SOCKET_IFNAME", "CUDA_VISIBLE_DEVICES",
                    "OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID", "SLURM_PROCID",
                    "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST")


def _address(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as e:
        return f"unresolved ({e.strerror or e})"


def _backends() -> dict[str, bool]:
    import torch.distributed as dist

    if not dist.is_available():
        return {"distributed": False}
    return {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available(),
            "ucc": getattr(dist, "is_ucc_available", lambda: False)()}


def _devices() -> list[str]:
    out = [f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
           f"({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} usable)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
                       f"{p.major}.{p.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        out.append("cuda: none visible" + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
                                            if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
    return out


def environment_report() -> dict:
    """Everything `lmforge env` prints, as one JSON-ready dict."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lmforge_version = version("lmforge")
    except PackageNotFoundError:
        lmforge_version = "unknown"
    nccl = None
    if torch.cuda.is_available() and hasattr(torch.cuda, "nccl"):
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except (RuntimeError, AttributeError):
            nccl = None
    host = socket.gethostname()
    master = os.environ.get("MASTER_ADDR")
    return {
        "host": host,
        "host_address": _address(host),
        "versions": {"lmforge": lmforge_version, "python": sys.version.split()[0], "torch": torch.__version__,
                     "cuda": torch.version.cuda, "nccl": nccl, "platform": platform.platform()},
        "devices": _devices(),
        "backends": _backends(),
        "launcher": {k: os.environ[k] for k in LAUNCH_VARIABLES if k in os.environ},
        "master_address": _address(master) if master else None,
        "network": {k: v for k, v in sorted(os.environ.items()) if k.startswith(NETWORK_PREFIXES)},
    }


def format_report(report: dict) -> str:
    lines = [f"host          {report['host']} ({report['host_address']})"]
    if report["host_address"].startswith("127."):
        lines.append("              (a loopback address: other nodes cannot reach this one by its name; give "
                     "--rdzv-endpoint / MASTER_ADDR a routable address)")
    lines += [f"{k:<14}{v}" for k, v in report["versions"].items() if v]
    lines += [f"device        {d}" for d in report["devices"]]
    lines.append("backends      " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["backends"].items()))
    if report["launcher"]:
        lines += [f"launcher      {k}={v}" for k, v in report["launcher"].items()]
        if report["master_address"]:
            lines.append(f"              MASTER_ADDR resolves to {report['master_address']}")
    else:
        lines.append("launcher      no torchrun variables (RANK, WORLD_SIZE, ...): one process")
    lines += [f"network       {k}={v}" for k, v in report["network"].items()]
    return "\n".join(lines)
