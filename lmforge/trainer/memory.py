"""How much memory a training process needs, by layout: the model state and the activations.

One model serves the run's choices (DDP or FSDP, activation checkpointing: `trainer.parallelize`)
and the planner's (`lmforge.auto.memory`). The figures are estimates for deciding, not promises:
the model state is counted exactly; activations use a per-token figure measured for this GPT.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import torch

# Bytes per parameter of the model state in training: fp32 weights, fp32 gradients and AdamW's
# two fp32 moments.
STATE_BYTES_PER_PARAM = 16
# Values of width d_model a transformer block keeps per token for its backward pass (attention
# inputs and outputs, the MLP's 8/3-wide hidden layer, norms, residuals): about 34.
BLOCK_VALUES_PER_TOKEN = 34
# The model state fits "comfortably" on a device when it takes at most this share of its memory,
# leaving the rest for activations, the allocator's slack and the data.
COMFORTABLE_SHARE = 0.4
# Activations are checkpointed when the state and the activations would take more than this share.
ACTIVATIONS_SHARE = 0.8


@dataclass
class MemoryEstimate:
    """Bytes one process needs: its share of the model state, and the activations of a micro-batch."""

    state: float
    activations: float

    @property
    def total(self) -> float:
        return self.state + self.activations


def state_bytes(n_params: int, shards: int = 1) -> float:
    """Weights, gradients and optimizer state of one process when `shards` processes split them."""
    return STATE_BYTES_PER_PARAM * n_params / max(1, shards)


def activation_bytes(n_layer: int, d_model: int, context_len: int, vocab_size: int, micro_batch: int,
                     checkpointing: bool = False, tensor_parallel: int = 1, bytes_per_value: int = 4) -> float:
    """Activations kept for the backward pass of one micro-batch.

    With checkpointing, a block keeps only its input, and one block at a time holds its full set
    while it is recomputed. Tensor parallelism splits the attention and MLP inner activations
    (about two thirds of a block's) between its processes. The output layer's logits are counted
    twice (logits and their gradient) in fp32: what a compiled step holds; the uncompiled step's
    chunked loss holds far less."""
    tokens = micro_batch * context_len
    per_block = BLOCK_VALUES_PER_TOKEN * d_model * tokens * bytes_per_value
    if tensor_parallel > 1:
        per_block = per_block / 3 + per_block * 2 / 3 / tensor_parallel
    blocks = (n_layer * d_model * tokens * bytes_per_value + per_block) if checkpointing else n_layer * per_block
    return blocks + 2 * 4 * tokens * vocab_size


def estimate(n_params: int, n_layer: int, d_model: int, context_len: int, vocab_size: int, micro_batch: int,
             shards: int = 1, checkpointing: bool = False, tensor_parallel: int = 1,
             bytes_per_value: int = 4) -> MemoryEstimate:
    """Memory of one process: the state split `shards` ways (FSDP: data x tensor processes; DDP: 1)."""
    return MemoryEstimate(state_bytes(n_params, shards),
                          activation_bytes(n_layer, d_model, context_len, vocab_size, micro_batch, checkpointing,
                                           tensor_parallel, bytes_per_value))


def available_ram() -> int:
    """Bytes this machine (or its container's memory limit) can still give."""
    avail = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if not avail:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 << 30
    try:  # a container's memory limit
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(avail, 0)


def _rlimit_room() -> int | None:
    """What a per-process limit (ulimit -d / -v) still allows this process, or None without one."""
    room = None
    for kind, field in ((resource.RLIMIT_DATA, "VmData:"), (resource.RLIMIT_AS, "VmSize:")):
        soft = resource.getrlimit(kind)[0]
        if soft == resource.RLIM_INFINITY:
            continue
        used = 0
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                used = next((int(line.split()[1]) * 1024 for line in f if line.startswith(field)), 0)
        except OSError:
            pass
        room = max(0, soft - used) if room is None else min(room, max(0, soft - used))
    return room


def device_memory(device: torch.device, local_processes: int = 1) -> int:
    """Memory one process may use: a GPU's total memory, or on a CPU the available RAM shared among
    this node's processes (and within a per-process limit, when one is set)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    share = available_ram() // max(1, local_processes)
    room = _rlimit_room()
    return share if room is None else min(share, room)
