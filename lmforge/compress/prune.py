"""`lmforge prune RUN --keep 0.5 --out RUN_P [--recover 5m]`: structured pruning of a GPT.

Width (default): every layer keeps the same number of its most important attention heads (with
grouped-query attention, the same number of query heads in every key/value group, so n_kv_head
still divides n_head) and of its most important MLP channels, so the result is a plain GPT of a
smaller shape (n_head, d_ff; head_dim keeps the heads' width). Depth: the least important whole
layers go (n_layer). Importance is measured on training batches: `taylor` is |sum of activation x
gradient of the loss| (the first-order estimate of the loss change when the unit is removed);
`activation` is the mean |activation|. Layers are scored by the loss increase when each one alone
is skipped. The share kept is counted in non-embedding parameters.

Recovery trains the pruned weights through the normal training run (same loop, checkpoints,
resume with `lmforge train --resume RUN_P`), with the original run's settings and a time budget.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

from lmforge import runs
from lmforge.compress.report import claim_output, link_or_copy, lm_row, save_and_print
from lmforge.config import Config, ModelConfig, save_config
from lmforge.errors import ConfigError
from lmforge.lm.model import save_shape
from lmforge.models.gpt import GPT, Block

# Calibration: windows of training text the importance is measured on.
CALIBRATION_WINDOWS = 64


def _calibration(model: GPT, tokens: np.ndarray, windows: int, seed: int = 0):
    T = model.cfg.context_len
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - T - 1, size=windows)
    idx = starts[:, None] + np.arange(T + 1)[None]
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]


def unit_importance(model: GPT, tokens: np.ndarray, kind: str = "taylor", windows: int = CALIBRATION_WINDOWS,
                    batch: int = 16) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: importance of each query head (n_head,) and of each MLP channel (d_ff,)."""
    model = copy.deepcopy(model).float().train()
    for m in model.modules():  # deterministic scores: no dropout
        if hasattr(m, "p"):
            m.p = 0.0
    s = model.cfg
    heads = [torch.zeros(s.n_head, dtype=torch.float64) for _ in model.blocks]
    chans = [torch.zeros(s.d_ff, dtype=torch.float64) for _ in model.blocks]
    acts: dict = {}

    def keep_input(key):
        def hook(module, args):
            x = args[0]
            if kind == "taylor":
                x.retain_grad()
            acts[key] = x
        return hook

    handles = []
    for i, block in enumerate(model.blocks):
        handles.append(block.attn.proj.register_forward_pre_hook(keep_input(("attn", i))))
        handles.append(block.mlp.down.register_forward_pre_hook(keep_input(("mlp", i))))
    x_all, y_all = _calibration(model, tokens, windows)
    try:
        for lo in range(0, len(x_all), batch):
            x, y = x_all[lo:lo + batch], y_all[lo:lo + batch]
            model.zero_grad(set_to_none=True)
            if kind == "taylor":
                logits = model(x)
                torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).backward()
            else:
                with torch.no_grad():
                    model(x)
            for i in range(len(model.blocks)):
                a, m = acts[("attn", i)], acts[("mlp", i)]  # (B, T, nh*hd), (B, T, d_ff)
                sa = (a * a.grad).sum(dim=(0, 1)) if kind == "taylor" else a.abs().mean(dim=(0, 1))
                sm = (m * m.grad).sum(dim=(0, 1)) if kind == "taylor" else m.abs().mean(dim=(0, 1))
                heads[i] += sa.view(s.n_head, s.head_dim).sum(-1).abs().double().detach() if kind == "taylor" \
                    else sa.view(s.n_head, s.head_dim).mean(-1).double().detach()
                chans[i] += sm.abs().double().detach()
    finally:
        for h in handles:
            h.remove()
    return [h.float() for h in heads], [c.float() for c in chans]


@torch.no_grad()
def layer_importance(model: GPT, tokens: np.ndarray, windows: int = CALIBRATION_WINDOWS) -> list[float]:
    """Loss increase (nats per token) when each layer alone is skipped."""
    model = model.eval()
    x, y = _calibration(model, tokens, windows)

    def loss() -> float:
        logits = model(x)
        return float(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)))

    base = loss()
    blocks = model.blocks
    scores = []
    for i in range(len(blocks)):
        model.blocks = torch.nn.ModuleList([b for j, b in enumerate(blocks) if j != i])
        scores.append(loss() - base)
    model.blocks = blocks
    return scores


def non_embedding_params(cfg: ModelConfig) -> int:
    s = cfg.resolved()
    attn = s.d_model * (s.n_head + 2 * s.n_kv_head) * s.head_dim + s.n_head * s.head_dim * s.d_model
    mlp = s.d_model * s.d_ff * (3 if s.mlp == "swiglu" else 2)
    norms = 2 * s.d_model + (s.head_dim if s.qk_norm else 0)
    return s.n_layer * (attn + mlp + norms) + s.d_model


def pruned_shape(cfg: ModelConfig, keep: float, structure: str) -> ModelConfig:
    """The shape that keeps about `keep` of the non-embedding parameters (at least one unit of each kind)."""
    s = cfg.resolved()
    if structure == "depth":
        return dataclasses.replace(s, n_layer=max(1, round(s.n_layer * keep)))
    group = s.n_head // s.n_kv_head  # query heads per key/value head
    target = keep * non_embedding_params(s)
    best = None
    # Heads and channels shrink by the same share (searched over the head count, the coarser unit).
    # Grouped-query attention keeps its key/value heads and the same query heads in every group.
    counts = [(n, n) for n in range(1, s.n_head + 1)] if group == 1 else \
        [(k * s.n_kv_head, s.n_kv_head) for k in range(1, group + 1)]
    for nh, nkv in counts:
        for d_ff in {max(1, round(s.d_ff * nh / s.n_head)), max(1, round(s.d_ff * keep))}:
            c = dataclasses.replace(s, n_head=nh, n_kv_head=nkv, d_ff=d_ff)
            err = abs(non_embedding_params(c) - target)
            if best is None or err < best[0]:
                best = (err, c)
    err, c = best
    # Fill the remaining difference with MLP channels, whose count is fine-grained.
    per_channel = s.n_layer * s.d_model * (3 if s.mlp == "swiglu" else 2)
    d_ff = max(1, min(s.d_ff, c.d_ff + round((target - non_embedding_params(c)) / per_channel)))
    if 16 <= d_ff < s.d_ff:
        d_ff = max(16, 8 * round(d_ff / 8))  # kernels (and int4 groups) prefer multiples of 8
    return dataclasses.replace(c, d_ff=d_ff)


def _select_heads(score: torch.Tensor, s: ModelConfig, new: ModelConfig) -> list[int]:
    """Kept query heads, in order: the best per key/value group when grouped, else the best overall."""
    group = s.n_head // s.n_kv_head
    if group == 1:
        return sorted(torch.topk(score, new.n_head).indices.tolist())
    per_group = new.n_head // new.n_kv_head
    kept = []
    for g in range(s.n_kv_head):
        local = score[g * group:(g + 1) * group]
        kept += [g * group + int(i) for i in torch.topk(local, per_group).indices]
    return sorted(kept)


@torch.no_grad()
def _prune_block(block: Block, s: ModelConfig, new: ModelConfig, heads: list[int], chans: list[int]) -> Block:
    """A block of the new shape holding the kept rows and columns of `block`'s weights (biases of
    imported models included; norms and output biases are as wide as before)."""
    hd = s.head_dim
    a = block.attn
    # Plain multi-head attention: keys and values go with their query heads; grouped ones stay.
    kv_idx = list(range(s.n_kv_head)) if new.n_kv_head == s.n_kv_head else heads

    def kept_qkv(t: torch.Tensor) -> torch.Tensor:  # rows of the fused projection, per head
        t = t.view(s.n_head + 2 * s.n_kv_head, hd, *t.shape[1:])
        q, k, v = t[:s.n_head], t[s.n_head:s.n_head + s.n_kv_head], t[s.n_head + s.n_kv_head:]
        return torch.cat([q[heads], k[kv_idx], v[kv_idx]]).reshape(-1, *t.shape[2:])

    fresh = Block(new, a.layer)
    fresh.attn.qkv.weight.copy_(kept_qkv(a.qkv.weight))
    if a.qkv.bias is not None:
        fresh.attn.qkv.bias.copy_(kept_qkv(a.qkv.bias))
    fresh.attn.proj.weight.copy_(a.proj.weight.view(s.d_model, s.n_head, hd)[:, heads].reshape(s.d_model, -1))
    idx = torch.tensor(chans)
    if s.mlp == "swiglu":
        gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)
        fresh.mlp.gate_up.weight.copy_(torch.cat([gate[idx], up[idx]]))
        if block.mlp.gate_up.bias is not None:
            gate_b, up_b = block.mlp.gate_up.bias.chunk(2)
            fresh.mlp.gate_up.bias.copy_(torch.cat([gate_b[idx], up_b[idx]]))
    else:
        fresh.mlp.up.weight.copy_(block.mlp.up.weight[idx])
        if block.mlp.up.bias is not None:
            fresh.mlp.up.bias.copy_(block.mlp.up.bias[idx])
    fresh.mlp.down.weight.copy_(block.mlp.down.weight[:, idx])
    # Everything else keeps its shape: norms (per head or per stream) and the output biases.
    own = fresh.state_dict()
    for name, t in block.state_dict().items():
        if name in own and own[name].shape == t.shape and not name.startswith(("attn.qkv.", "attn.proj.weight", "mlp.")):
            own[name].copy_(t)
    for name in ("mlp.down.bias",):
        if name in own:
            own[name].copy_(block.state_dict()[name])
    return fresh


def prune_model(model: GPT, keep: float, tokens: np.ndarray, structure: str = "width",
                importance: str = "taylor") -> tuple[GPT, dict]:
    """A new GPT of the pruned shape carrying the kept weights, and what was removed."""
    if not 0 < keep <= 1:
        raise ConfigError(f"--keep {keep}: give the fraction of parameters to keep, in (0, 1]")
    s = model.cfg
    new_cfg = pruned_shape(s, keep, structure)
    pruned = copy.deepcopy(model)
    if structure == "depth":
        scores = layer_importance(copy.deepcopy(model), tokens)
        kept = sorted(np.argsort(scores)[::-1][:new_cfg.n_layer].tolist())
        pruned.blocks = torch.nn.ModuleList(pruned.blocks[i] for i in kept)
        for j, b in enumerate(pruned.blocks):
            b.attn.layer = j
        info = {"layers_kept": kept, "layer_scores": [round(x, 5) for x in scores]}
    else:
        head_scores, chan_scores = unit_importance(model, tokens, importance)
        info = {"heads_kept": [], "d_ff": new_cfg.d_ff, "n_head": new_cfg.n_head}
        for i, (hs, cs) in enumerate(zip(head_scores, chan_scores)):
            heads = _select_heads(hs, s, new_cfg)
            chans = sorted(torch.topk(cs, new_cfg.d_ff).indices.tolist())
            pruned.blocks[i] = _prune_block(pruned.blocks[i], s, new_cfg, heads, chans)
            info["heads_kept"].append(heads)
    pruned.cfg = new_cfg
    # The model now is exactly what GPT(new_cfg) builds: check by loading into a fresh one.
    plain = GPT(dataclasses.replace(new_cfg), model.vocab_size)
    plain.load_state_dict(pruned.state_dict())
    return plain.eval(), info


def prune_run(run: str | Path, keep: float, out: str | Path | None, recover_s: float = 0.0, structure: str = "width",
              importance: str = "taylor", eval_tokens: int = 65536, progress: bool = True,
              overwrite: bool = False) -> dict:
    """Prune the run's model into the new run folder `out`, optionally recover; returns the report."""
    from lmforge.data.tokens import TokenFile
    from lmforge.lm.model import load_run_model
    from lmforge.lm.task import token_byte_lengths
    from lmforge.trainer.checkpoint import save_weights

    run = Path(run)
    model, tok, info = load_run_model(run)
    if info["quant"] is not None:
        raise ConfigError(f"{run} is quantized; prune the run it was quantized from (and quantize afterwards)")
    cfg: Config = info["config"]
    train_tokens = TokenFile(run / "data" / "train.bin").tokens
    pruned, removed = prune_model(model, keep, train_tokens, structure, importance)
    out = claim_output(out, "lm", run, f"prune_{keep:g}", overwrite, progress)
    for name in ("tokenizer.json", "train.bin", "train.json", "val.bin", "val.json", "prepare.json"):
        if (run / "data" / name).is_file():
            link_or_copy(run / "data" / name, out / "data" / name)
    pcfg = copy.deepcopy(cfg)
    pcfg.out = str(out)
    pcfg.init = None  # the pruned weights start the recovery, not the original's init model
    pcfg.model = dataclasses.replace(pruned.cfg)
    val = TokenFile(run / "data" / "val.bin").tokens
    lengths = token_byte_lengths(tok)
    n_orig, n_new = model.num_params(non_embedding=False), pruned.num_params(non_embedding=False)
    rows = [lm_row("original", model, Path(info["weights"]), val, lengths, eval_tokens, n_orig)]
    save_weights(pruned.state_dict(), out / "model.safetensors")
    save_shape(pruned, out / "model.json")
    save_config(pcfg, out / "config.yaml")
    rows.append(lm_row(f"pruned {keep:g} ({structure})", pruned, out / "model.safetensors", val, lengths,
                       eval_tokens, n_new, speed=recover_s <= 0))
    facts = {"source": str(run), "keep": keep, "structure": structure, "importance": importance,
             "shape": f"{pruned.cfg.n_layer} layers, {pruned.cfg.n_head} heads ({pruned.cfg.n_kv_head} kv) of "
                      f"{pruned.cfg.head_dim}, d_ff {pruned.cfg.d_ff}",
             "non_embedding_kept": round(pruned.num_params() / max(1, model.num_params()), 4), **removed}
    if recover_s > 0:
        pruned = _recover(pcfg, pruned, recover_s, progress)
        facts["recover_s"] = recover_s
        rows.append(lm_row(f"pruned {keep:g} + recovery", pruned, out / "model.safetensors", val, lengths,
                           eval_tokens, n_new))
    else:
        runs.update_info(out, status="finished")
    return save_and_print(out, f"prune_{keep:g}", "lm", rows, facts, progress)


def _recover(cfg: Config, pruned: GPT, seconds: float, progress: bool) -> GPT:
    """Train the pruned weights for `seconds` with the run's settings (a short warm-up: they are trained)."""
    from lmforge.lm.model import load_run_model
    from lmforge.lm.pretrain import train

    cfg.train.time_budget_s = seconds
    cfg.schedule.warmup_steps = min(cfg.schedule.warmup_steps, max(1, cfg.train.max_steps // 50))
    cfg.sample.num_samples = 0
    cfg.train.max_steps = max(cfg.train.max_steps * 10, 100_000)  # the budget decides the length
    if cfg.runtime.compile == "auto":  # a first compile (about 35 s on 2 cores) needs a long budget
        cfg.runtime.compile = "on" if seconds >= 600 else "off"
    save_config(cfg, Path(cfg.out) / "config.yaml")
    train(cfg, progress=progress, claimed=True, init_state={k: v.clone() for k, v in pruned.state_dict().items()})
    model, _, _ = load_run_model(Path(cfg.out))
    return model

