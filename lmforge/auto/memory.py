"""The planner's memory model: does a candidate shape train on this machine, and how.

The byte counts are the training loop's own (`lmforge.trainer.memory`): the model state (fp32
weights, gradients, AdamW moments) split across the processes when they shard it (FSDP, tensor
parallelism), and the activations of a micro-batch, far fewer with activation checkpointing. A
shape fits when, in the layout the run would choose (`trainer.parallelize.choose_layout` makes the
same decisions), it needs at most `FIT_SHARE` of one device's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.trainer import memory

# Share of a device's memory a plan may use: the rest is the allocator's slack, the data and
# whatever else runs there.
FIT_SHARE = 0.6


@dataclass
class MemoryFit:
    fits: bool
    bytes_per_process: float
    sharded: bool  # the model state is split across the processes (FSDP)
    checkpointing: bool  # activation checkpointing is needed (or was asked for)


def fit_memory(n_params: int, n_layer: int, d_model: int, context_len: int, vocab_size: int, micro_batch: int,
               device_bytes: float, processes: int = 1, tensor_parallel: int = 1, parallel: str = "auto",
               checkpointing: str = "auto") -> MemoryFit:
    """Whether a model of this shape trains within `device_bytes` per process, and in which layout:
    unsharded when the state fits comfortably (DDP), else sharded over `processes`; activation
    checkpointing only when needed (`checkpointing` 'auto') or as set ('none', 'blocks')."""
    sharded = processes > 1 and (parallel == "fsdp" or tensor_parallel > 1 or (
        parallel == "auto" and memory.state_bytes(n_params) > memory.COMFORTABLE_SHARE * device_bytes))
    shards = processes if sharded else 1

    def need(ckpt: bool) -> float:
        return memory.estimate(n_params, n_layer, d_model, context_len, vocab_size, micro_batch, shards, ckpt,
                               tensor_parallel).total

    limit = FIT_SHARE * device_bytes
    if checkpointing != "auto":
        ckpt = checkpointing == "blocks"
        return MemoryFit(need(ckpt) <= limit, need(ckpt), sharded, ckpt)
    if need(False) <= limit:
        return MemoryFit(True, need(False), sharded, False)
    return MemoryFit(need(True) <= limit, need(True), sharded, True)
