"""How the model is spread over the processes: DDP or FSDP2, tensor parallelism, activation checkpointing.

All of it is applied here, outside the model (models/ stays plain single-device PyTorch), with
PyTorch's own stack: `fully_shard` (FSDP2), DTensor's `parallelize_module`, `torch.distributed.checkpoint`.

- `choose_layout` decides: DDP while the model state (weights, gradients, optimizer) fits
  comfortably on one device, FSDP otherwise; activation checkpointing when the activations would
  not fit; and says why, for the run header.
- `build_model` builds the model for the layout. A sharded model is built on the meta device, its
  fused projections (q|k|v, gate|up) held as separate parts, tensor-parallel, checkpointed and
  sharded, and only then materialised: each process draws the very values the unsharded model
  would have (the same random draws, one whole tensor at a time) and keeps its shard, so the whole
  model never exists in one process and FSDP matches one process from step 0.
- `sharded_state` is what a sharded checkpoint stores, keyed alike for every layout (fused
  projections as their parts), so a checkpoint saved on N processes resumes on M, sharded or not.
- `whole_weights` gathers the whole weights one tensor at a time (the best weights are written as
  they are gathered, so no process holds the whole model); `full_state` gathers them all at once
  (samples); `clip_grad_norm` clips gradients that are DTensors on several meshes.

Tensor parallelism (Megatron-style, no sequence parallelism): the attention's q, k and v parts and
the MLP's gate and up parts are split by output rows (each process keeps whole heads, and gate
and up rows that belong together), the output projections by input columns, so each block needs
one all-reduce forward and one backward. Embeddings, norms and the output layer are replicated
between tensor-parallel peers and sharded by FSDP over the data dimension.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.trainer import memory
from lmforge.trainer.safetensors_io import WholeWeights
from lmforge.trainer.runtime import Runtime, is_dtensor

# The fused projections of a GPT block and the order of their parts (rows of the fused weight).
FUSED = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
_PART_KEY = re.compile(r"^(.*\.(?:qkv|gate_up))\.(\w+)\.(weight|bias)$")


@dataclass
class Layout:
    """How this run spreads the model over its processes."""

    mode: str = "single"  # "single" (one process), "ddp" or "fsdp"
    tensor_parallel: int = 1
    checkpointing: bool = False
    why: str = ""
    checkpointing_why: str = ""
    param_dtype: torch.dtype | None = None  # FSDP's compute dtype for parameters (bf16 on GPUs)

    @property
    def sharded(self) -> bool:
        """Checkpoints are sharded (DCP), resumable on any number of processes."""
        return self.mode == "fsdp"

    def describe(self) -> str:
        tp = f" x tensor parallel {self.tensor_parallel}" if self.tensor_parallel > 1 else ""
        return f"{self.mode}{tp} ({self.why})"


# --- deciding --------------------------------------------------------------------------------------


def check_tensor_parallel(tp: int, cfg: ModelConfig, rt: Runtime) -> int:
    """Validate train.tensor_parallel against the model and the processes; record it on `rt`."""
    s = cfg.resolved()
    if tp > 1:
        if rt.world_size % tp:
            raise ConfigError(f"config field 'train.tensor_parallel': {tp} does not divide the {rt.world_size} "
                              "processes; start a multiple of it (torchrun --nproc-per-node), or, resuming on fewer "
                              "processes, pass a smaller --train.tensor_parallel")
        if s.n_kv_head % tp:
            raise ConfigError(f"config field 'train.tensor_parallel': {tp} does not divide model.n_kv_head="
                              f"{s.n_kv_head}; each process must hold whole heads")
        if s.d_ff % tp:
            raise ConfigError(f"config field 'train.tensor_parallel': {tp} does not divide the MLP width {s.d_ff}")
    rt.tp_size = tp
    return tp


def _choose_mode(requested: str, tp: int, n_params: int, rt: Runtime, device_bytes: int) -> tuple[str, str]:
    if rt.world_size == 1:
        if requested == "fsdp":
            return "fsdp", "one process trains unsharded; checkpoints are sharded, to resume on more"
        return "single", "one process"
    if tp > 1:
        if requested == "ddp":
            raise ConfigError("config field 'train.parallel': ddp cannot be combined with train.tensor_parallel > 1; "
                              "tensor parallelism composes with fsdp (or auto)")
        return "fsdp", "tensor parallelism composes with FSDP over the data dimension"
    if requested != "auto":
        return requested, "set in the config"
    state, limit = memory.state_bytes(n_params), memory.COMFORTABLE_SHARE * device_bytes
    gib = 2.0**30
    if state <= limit:
        return "ddp", (f"weights, gradients and optimizer state ({state / gib:.2f} GiB) fit comfortably in one "
                       f"device's {device_bytes / gib:.1f} GiB")
    return "fsdp", (f"weights, gradients and optimizer state ({state / gib:.2f} GiB) exceed "
                    f"{memory.COMFORTABLE_SHARE:.0%} of one device's {device_bytes / gib:.1f} GiB; sharded "
                    f"{rt.world_size} ways: {state / rt.world_size / gib:.2f} GiB per process")


def choose_layout(parallel: str, tensor_parallel: int, checkpointing: str, cfg: ModelConfig, vocab_size: int,
                  n_params: int, micro_batch: int, optimizer: str, rt: Runtime,
                  device_bytes: int | None = None) -> Layout:
    """The layout for the run's settings (train.parallel, tensor_parallel, activation_checkpointing)."""
    import os

    tp = check_tensor_parallel(tensor_parallel, cfg, rt)
    if device_bytes is None:
        device_bytes = memory.device_memory(rt.device, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    mode, why = _choose_mode(parallel, tp, n_params, rt, device_bytes)
    if mode == "fsdp" and optimizer != "adamw":
        raise ConfigError(f"config field 'optim.kind': {optimizer} needs whole weight matrices and cannot train a "
                          "sharded model (train.parallel fsdp or tensor parallelism); use adamw, or train.parallel ddp")
    s = cfg.resolved()
    shards = rt.world_size if mode == "fsdp" and rt.world_size > 1 else 1
    need = memory.estimate(n_params, s.n_layer, s.d_model, s.context_len, vocab_size, micro_batch, shards,
                           tensor_parallel=tp)
    gib = 2.0**30
    if checkpointing != "auto":
        ckpt_on, ckpt_why = checkpointing == "blocks", "set in the config"
    elif need.total > memory.ACTIVATIONS_SHARE * device_bytes:
        less = memory.estimate(n_params, s.n_layer, s.d_model, s.context_len, vocab_size, micro_batch, shards,
                               checkpointing=True, tensor_parallel=tp)
        ckpt_on, ckpt_why = True, (f"estimated {need.total / gib:.2f} GiB per process without it, "
                                   f"{less.total / gib:.2f} GiB with it, of {device_bytes / gib:.1f} GiB")
    else:
        ckpt_on, ckpt_why = False, f"estimated {need.total / gib:.2f} GiB per process of {device_bytes / gib:.1f} GiB"
    return Layout(mode, tp, ckpt_on, why, ckpt_why)


# --- building --------------------------------------------------------------------------------------


class SplitLinear(nn.Module):
    """A fused projection held as its parts, one Linear each, side by side in the output as in the
    fused layer. Each part can then be split between tensor-parallel processes on its own."""

    def __init__(self, in_features: int, parts: tuple[tuple[str, int], ...], bias: bool = False):
        super().__init__()
        self.names = [name for name, _ in parts]
        for name, rows in parts:
            setattr(self, name, nn.Linear(in_features, rows, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.names], dim=-1)


def fused_parts(cfg: ModelConfig) -> dict[str, tuple[tuple[str, int], ...]]:
    """{name of a fused projection: ((part, rows), ...)} for a GPT of this shape."""
    s = cfg.resolved()
    hd = s.head_dim
    out: dict[str, tuple[tuple[str, int], ...]] = {}
    for i in range(s.n_layer):
        out[f"blocks.{i}.attn.qkv"] = (("q", s.n_head * hd), ("k", s.n_kv_head * hd), ("v", s.n_kv_head * hd))
        if s.mlp == "swiglu":
            out[f"blocks.{i}.mlp.gate_up"] = (("gate", s.d_ff), ("up", s.d_ff))
    return out


def _split_fused(model: nn.Module) -> None:
    for name, parts in fused_parts(model.cfg).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        fused = getattr(parent, child)
        with torch.device("meta"):
            setattr(parent, child, SplitLinear(fused.in_features, parts, bias=fused.bias is not None))


def _tensor_parallel(model: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from lmforge.models.gpt import GeluMLP, SwiGLU

    tp = tp_mesh.size()
    # The query/key norm's gain acts on each process's own heads, so each process holds only its
    # heads' part of the gain's gradient: the parts are summed after the backward pass.
    model.tp_partial_grads = ([f"blocks.{i}.attn.{norm}.weight" for i, b in enumerate(model.blocks)
                               for norm in ("qk_norm", "q_norm", "k_norm") if getattr(b.attn, norm, None) is not None],
                              tp_mesh.get_group())
    for block in model.blocks:
        plan = {f"attn.qkv.{p}": ColwiseParallel() for p in FUSED["qkv"]}
        plan["attn.proj"] = RowwiseParallel()
        if isinstance(block.mlp, SwiGLU):
            plan.update({f"mlp.gate_up.{p}": ColwiseParallel() for p in FUSED["gate_up"]})
        elif isinstance(block.mlp, GeluMLP):
            plan["mlp.up"] = ColwiseParallel()
        plan["mlp.down"] = RowwiseParallel()
        parallelize_module(block, tp_mesh, plan)
        # The attention sees only this process's heads (its q, k and v parts' outputs).
        block.attn.n_head //= tp
        block.attn.n_kv_head //= tp


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing: each block keeps its input and recomputes the rest in the backward
    pass. The block's forward is wrapped in place, so parameter names (and checkpoints) stay as they are."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed


def _shard(model: nn.Module, dp_mesh, param_dtype: torch.dtype | None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mesh": dp_mesh, **({"mp_policy": mp} if mp else {})}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    # The root's parameters (embeddings, final norm, the tied output layer) are needed again at the
    # start of the backward pass, right after the forward: keeping them saves a second gather.
    fully_shard(model, reshard_after_forward=False, **kwargs)


@dataclass
class _Initial:
    """The values the unsharded model's constructor and init_weights give, drawable tensor by tensor."""

    order: list[tuple[str, torch.Size]]  # parameters in the unsharded model's order
    vectors: dict[str, torch.Tensor]  # constructor values of the vectors (norm gains)
    rng: torch.Tensor  # the random state init_weights starts its draws from
    init_std: Callable[[str], float]

    def value(self, name: str, shape: torch.Size) -> torch.Tensor:
        if name.endswith(".bias"):  # init_weights zeroes every bias
            return torch.zeros(shape)
        if len(shape) < 2:
            return self.vectors[name]
        return torch.empty(shape).normal_(0.0, self.init_std(name))


def _initial_values(model: nn.Module) -> _Initial:
    """Call right after building on the meta device (where nothing drew random numbers): replay the
    random draws each layer's constructor made in the unsharded model, on a throwaway twin of that
    one layer, so the random state reaches where init_weights started drawing."""
    vectors = {}
    for mod_name, module in model.named_modules():
        if not hasattr(module, "reset_parameters") or next(module.parameters(recurse=False), None) is None:
            continue
        twin = copy.deepcopy(module).to_empty(device="cpu")
        twin.reset_parameters()
        for p_name, p in twin.named_parameters(recurse=False):
            if p.ndim < 2:
                vectors[f"{mod_name}.{p_name}" if mod_name else p_name] = p.detach()
    order = [(name, p.shape) for name, p in model.named_parameters()]
    return _Initial(order, vectors, torch.get_rng_state(), model.init_std)


def _write(param: torch.Tensor, full: torch.Tensor) -> None:
    """Put this process's shard of `full` (the whole tensor) into `param`."""
    with torch.no_grad():
        if is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            mine = distribute_tensor(full.to(param.device), param.device_mesh, param.placements,
                                     src_data_rank=None).to_local()
            param.to_local().copy_(mine)
        else:
            param.copy_(full)


def _materialise(model: nn.Module, initial: _Initial, device: torch.device) -> None:
    model.to_empty(device=device)
    params = dict(model.named_parameters())
    parts = fused_parts(model.cfg)
    torch.set_rng_state(initial.rng)
    for name, shape in initial.order:
        full = initial.value(name, shape)
        fused, _, kind = name.rpartition(".")
        if fused in parts:
            row = 0
            for part, rows in parts[fused]:
                _write(params[f"{fused}.{part}.{kind}"], full[row:row + rows])
                row += rows
        else:
            _write(params[name], full)
    model.reset_buffers()


def _return_gather_buffers(model: nn.Module) -> None:
    """On a CPU, have glibc give FSDP's per-block buffers back to the system when they are freed.

    FSDP allocates and frees a block's whole parameters and gradients at every block of every
    step. glibc serves such sizes from its heap once one was freed (its mmap threshold adapts
    upward) and keeps the freed memory, fragmented, so a process's resident memory grew towards
    what an unsharded model needs (measured: 1.7 GB against 0.8 GB live, 12 x 768). A fixed
    threshold has allocations from 256 KB up mapped directly and unmapped when freed. Measured on
    two processes, 12 x 768, peak RSS per process: 1,303 MB with a threshold of half a block's
    weights (14 MB), 1,174 MB at 1 MB, 1,072 MB at 256 KB, for about a sixth more CPU time (page
    faults; a busy machine). FSDP on a CPU is chosen for memory, so memory wins; the activations of
    small models stay under the threshold."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 << 10)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def load_whole_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path) -> None:
    """Whole weights keyed as the unsharded model's (a run's model.safetensors) into a sharded model:
    each process keeps its shard of each tensor. A tied output layer may be absent."""
    from lmforge.errors import TrainingError

    params = dict(model.named_parameters())
    given = split_state(tensors, fused_parts(model.cfg))
    tied = _aliases(model)
    missing = [n for n in params if n not in given]
    unexpected = [n for n in given if n not in params and n not in tied]
    if missing or unexpected:
        raise TrainingError(f"weights in {path} do not match its model.json (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    for name, full in given.items():
        if name in params:
            _write(params[name], full.to(params[name].dtype))


def make_mesh(rt: Runtime, tensor_parallel: int):
    """The data x tensor device mesh: ranks r*tp .. r*tp+tp-1 form one tensor-parallel group."""
    from torch.distributed.device_mesh import init_device_mesh

    dp = rt.world_size // tensor_parallel
    return init_device_mesh(rt.device.type, (dp, tensor_parallel), mesh_dim_names=("dp", "tp"))


def build_model(make: Callable[[], nn.Module], layout: Layout, rt: Runtime) -> nn.Module:
    """The model for the layout. `make()` builds the unsharded model (seeding the random state itself):
    on the CPU and then moved to the device, or, sharded, on the meta device (see the module doc)."""
    if not (layout.sharded and rt.distributed):
        model = make().to(rt.device)
        if layout.checkpointing:
            checkpoint_blocks(model)
        return model
    with torch.device("meta"):
        model = make()
    if rt.device.type == "cpu":
        _return_gather_buffers(model)
    initial = _initial_values(model)
    mesh = make_mesh(rt, layout.tensor_parallel)
    _split_fused(model)
    if layout.tensor_parallel > 1:
        _tensor_parallel(model, mesh["tp"])
    if layout.checkpointing:
        checkpoint_blocks(model)
    _shard(model, mesh["dp"], layout.param_dtype)
    _materialise(model, initial, rt.device)
    return model


def count_parameters(make: Callable[[], nn.Module]) -> int:
    """Parameters of the model `make()` builds, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in make().parameters())


def is_sharded(model: nn.Module) -> bool:
    return any(is_dtensor(p) for p in model.parameters())


# --- state: whole weights, checkpoints, gradients --------------------------------------------------


def fuse_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights keyed by parts ('...qkv.q.weight') back to the unsharded model's keys ('...qkv.weight')."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = _PART_KEY.match(key)
        if m is None:
            out[key] = t
        else:
            groups.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = t
    for (fused, kind), parts in groups.items():
        order = FUSED[fused.rsplit(".", 1)[1]]
        out[f"{fused}.{kind}"] = torch.cat([parts[p] for p in order if p in parts], dim=0)
    return out


def split_state(state: dict, parts: dict[str, tuple[tuple[str, int], ...]]) -> dict:
    """The inverse of fuse_state, as views: an entry of a fused projection becomes one per part (row
    slices sharing the fused tensor's storage; what is loaded into them lands in it). Works on
    weights and on an optimizer's per-parameter state (whose scalars, such as 'step', are shared)."""
    out = {}
    for key, value in state.items():
        fused, _, kind = key.rpartition(".")
        if fused not in parts:
            out[key] = value
            continue
        row = 0
        for part, rows in parts[fused]:
            if isinstance(value, dict):
                out[f"{fused}.{part}.{kind}"] = {k: v[row:row + rows] if torch.is_tensor(v) and v.ndim else v
                                                 for k, v in value.items()}
            else:
                out[f"{fused}.{part}.{kind}"] = value[row:row + rows]
            row += rows
    return out


def _alias_of(model: nn.Module) -> dict[str, str]:
    """{name of a parameter that repeats another (a tied output layer): that other's name}; saved once."""
    seen: dict[int, str] = {}
    repeats = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            repeats[name] = seen[id(p)]
        seen.setdefault(id(p), name)
    return repeats


def _aliases(model: nn.Module) -> set[str]:
    return set(_alias_of(model))


def whole_weights(model: nn.Module) -> WholeWeights:
    """The whole weights, keyed as the unsharded model's, gathered one tensor at a time when read.
    For a sharded model every process must read them all (each tensor is an all-gather); only rank
    0 keeps what it reads, so writing them holds one whole tensor, never the whole model."""
    if not is_sharded(model):
        return WholeWeights.of(model.state_dict())
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    shards = get_model_state_dict(model)  # DTensors: nothing is gathered yet
    repeats = _aliases(model)
    sources: dict[str, list[str]] = {}  # a fused projection's key: its parts' keys, in order
    for key in shards:
        if key in repeats:
            continue
        m = _PART_KEY.match(key)
        sources.setdefault(key if m is None else f"{m.group(1)}.{m.group(3)}", []).append(key)
    for fused, keys in sources.items():
        if len(keys) > 1:
            order = FUSED[fused.rsplit(".", 2)[1]]
            keys.sort(key=lambda k: order.index(_PART_KEY.match(k).group(2)))
    names = sorted(sources)

    def spec_of(name: str) -> tuple[str, torch.dtype, tuple[int, ...]]:
        parts = [shards[k] for k in sources[name]]
        return name, parts[0].dtype, (sum(p.shape[0] for p in parts), *parts[0].shape[1:])

    def produce():
        for name in names:
            parts = [(p.full_tensor() if is_dtensor(p) else p).to("cpu") for p in (shards[k] for k in sources[name])]
            yield name, parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    return WholeWeights([spec_of(n) for n in names], produce)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights, keyed as the unsharded model's. For a sharded model every process must
    call it (it gathers); rank 0 gets the weights on the CPU, the others an empty dict."""
    if not is_sharded(model):
        return model.state_dict()
    import torch.distributed as dist

    keep = dist.get_rank() == 0
    return {name: t for name, t in whole_weights(model) if keep}


def sharded_state(model: nn.Module, optimizer) -> tuple[dict, Callable[[], None]]:
    """What a sharded checkpoint holds, as DCP writes and reads it: {'model': weights, 'optim': the
    optimizer's per-parameter state}, keyed by parameter name with fused projections as their parts
    whatever the layout. And a function that applies the state to model and optimizer once DCP has
    loaded into it."""
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    weights = get_model_state_dict(model)
    optim = get_optimizer_state_dict(model, optimizer)
    aliases = _alias_of(model)
    once = {k: v for k, v in weights.items() if k not in aliases}  # a tied output layer is the embedding
    if is_sharded(model):
        state = {"model": once, "optim": {"state": optim["state"]}}
    else:
        parts = fused_parts(model.cfg)
        state = {"model": split_state(once, parts), "optim": {"state": split_state(optim["state"], parts)}}

    def apply() -> None:
        for repeat, first in aliases.items():
            weights[repeat] = weights[first]  # what DCP loaded
        set_model_state_dict(model, weights)
        set_optimizer_state_dict(model, optimizer, optim)

    return state, apply


def sum_partial_grads(model: nn.Module) -> None:
    """Complete the gradients that tensor-parallel peers each hold a part of (see _tensor_parallel).
    Called once per optimizer step, after the backward passes of all micro-batches."""
    names, group = getattr(model, "tp_partial_grads", ((), None))
    if not names:
        return
    import torch.distributed as dist

    params = dict(model.named_parameters())
    for name in names:
        grad = params[name].grad
        if grad is not None:
            dist.all_reduce(grad.to_local() if is_dtensor(grad) else grad, group=group)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_, also for DTensor gradients on several meshes (FSDP with tensor
    parallelism: replicated parameters live on the data mesh, split ones on the 2-D mesh)."""
    params = [p for p in parameters if p.grad is not None]
    if not any(is_dtensor(p.grad) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        key = (p.grad.device_mesh, p.grad.placements) if is_dtensor(p.grad) else ()
        groups.setdefault(key, []).append(p.grad)
    total_sq = torch.zeros((), dtype=torch.float32, device=params[0].grad.device)
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads)
        norm = norm.full_tensor() if is_dtensor(norm) else norm
        total_sq += norm.float() ** 2
    total = total_sq.sqrt()
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        with torch.no_grad():
            for p in params:
                p.grad.mul_(coef)
    return total
