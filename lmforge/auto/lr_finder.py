"""Learning-rate range test: train briefly while the learning rate grows exponentially, watch the loss.

The loss first barely moves (the rate is too small), then falls, then flattens and blows up (too
large). The suggested learning rate is where the smoothed loss falls fastest per unit of
log(learning rate): large enough to learn quickly, well below where training becomes unstable.

Works on any task of the training loop (`lmforge.trainer.loop.Task`); the model's weights are
restored afterwards, so the test can run before the real training of the same model.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.config import OptimConfig
from lmforge.trainer.runtime import Runtime, wrap_model
from lmforge.trainer.optim import build_optimizer, set_lr


@dataclass
class LRFinderResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    suggestion_index: int
    stop_reason: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def plot(self, path: str | Path, title: str = "learning-rate range test") -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, linewidth=1.6, label="smoothed loss")
        i = self.suggestion_index
        ax.axvline(self.suggestion, color="tab:red", linestyle="--", linewidth=1.0)
        ax.plot([self.suggestion], [self.smoothed[i]], "o", color="tab:red", markersize=8,
                label=f"suggested lr {self.suggestion:.2e}")
        ax.set_xscale("log")
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), self.smoothed[0] if math.isfinite(self.smoothed[0]) else max(finite)
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(path)
        return path


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (online: used to notice divergence as it happens)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def centred_average(values: list[float], window: int) -> list[float]:
    """Moving average over a centred window (shrinking at the ends): smooths without lagging."""
    y = np.asarray(values, dtype=np.float64)
    half = max(0, window // 2)
    out = []
    for i in range(len(y)):
        seg = y[max(0, i - half): i + half + 1]
        seg = seg[np.isfinite(seg)]
        out.append(float(seg.mean()) if len(seg) else float("nan"))
    return out


def _window(n: int) -> int:
    return max(5, n // 10) | 1


def local_slopes(x: np.ndarray, y: np.ndarray, window: int) -> np.ndarray:
    """Least-squares slope of y against x over a centred window at each point."""
    n = len(x)
    half = max(1, window // 2)
    slopes = np.full(n, np.nan)
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        if hi - lo < 3:
            continue
        xs, ys = x[lo:hi], y[lo:hi]
        xm = xs - xs.mean()
        denom = float((xm * xm).sum())
        if denom > 0:
            slopes[i] = float((xm * (ys - ys.mean())).sum()) / denom
    return slopes


def suggest_lr(lrs: list[float], losses: list[float]) -> tuple[float, int]:
    """The learning rate where the loss falls fastest against log(lr), looking only before its minimum.

    The slope at each point is a least-squares fit over a centred window of the raw losses, so the
    estimate is smoothed without the lag of a running average.
    """
    raw = np.asarray(losses, dtype=np.float64)
    x = np.log10(np.asarray(lrs, dtype=np.float64))
    finite = np.isfinite(raw)
    if finite.sum() < 4:
        return lrs[0], 0
    window = _window(len(x))
    y = np.asarray(centred_average(list(raw), window))
    end = int(np.nanargmin(np.where(np.isfinite(y), y, np.inf))) + 1
    ok = np.isfinite(raw[:end])
    slopes = np.full(end, np.nan)
    if ok.sum() >= 3:
        idx = np.flatnonzero(ok)
        slopes[idx] = local_slopes(x[:end][ok], raw[:end][ok], window)
    # Edge windows are one-sided; skip the first half-window.
    skip = min(window // 2, max(0, end - 3))
    slopes[:skip] = np.nan
    if not np.isfinite(slopes).any() or np.nanmin(slopes) >= 0:
        i = max(0, end - 1)
        # No descent seen: a tenth of the learning rate at the lowest loss is a cautious choice.
        target = lrs[i] / 10
        j = int(np.argmin(np.abs(x - math.log10(target))))
        return lrs[j], j
    i = int(np.nanargmin(slopes))
    return float(lrs[i]), i


def lr_range_test(
    task,
    cfg: OptimConfig,
    rt: Runtime,
    *,
    lr_min: float = 1e-5,
    lr_max: float = 1.0,
    steps: int = 100,
    beta: float = 0.9,
    diverge_factor: float = 4.0,
    micro_batch_size: int | None = None,
    restore: bool = True,
) -> LRFinderResult:
    """Run the range test on `task` (its model is trained and, with `restore`, put back afterwards)."""
    from lmforge.trainer.step import forward_backward, optimizer_step, plan_batches

    model = task.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if restore else None
    rng = torch.get_rng_state()
    micro, accum = plan_batches(task.examples_per_step, micro_batch_size or 0, rt.world_size)
    optimizer = build_optimizer(model, cfg, rt.device.type)
    step_model = wrap_model(model, rt, compile_model=False)
    lrs: list[float] = []
    losses: list[float] = []
    best, avg = math.inf, 0.0
    stop = f"reached lr_max {lr_max:g}"
    t0 = time.perf_counter()
    ratio = lr_max / lr_min
    model.train()
    try:
        for step in range(steps):
            lr = lr_min * ratio ** (step / max(1, steps - 1))
            set_lr(optimizer, lr)
            total = float(forward_backward(step_model, task.loss, lambda m: task.micro_batch(step, m, micro, rt), accum,
                                           rt))
            if math.isfinite(total):  # a non-finite loss ends the test; its update is never applied
                optimizer_step(model, optimizer, cfg.grad_clip)
            lrs.append(lr)
            losses.append(total)
            if not math.isfinite(total):
                stop = f"loss became {total} at lr {lr:.2e}"
                losses[-1] = float("nan")
                break
            avg = beta * avg + (1 - beta) * total
            sm = avg / (1 - beta ** len(losses))
            best = min(best, sm)
            if step > 5 and sm > diverge_factor * best:
                stop = f"loss diverged (over {diverge_factor:g}x its best) at lr {lr:.2e}"
                break
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        torch.set_rng_state(rng)
        optimizer.zero_grad(set_to_none=True)
    smoothed = centred_average(losses, _window(len(losses))) if losses else []
    suggestion, index = suggest_lr(lrs, losses) if lrs else (lr_min, 0)
    return LRFinderResult(lrs=lrs, losses=losses, smoothed=smoothed, suggestion=suggestion, suggestion_index=index,
                          stop_reason=stop, seconds=time.perf_counter() - t0)


# --- language models --------------------------------------------------------------------------


def check_lr_find_options(steps: int, lr_min: float, lr_max: float) -> None:
    """lr-find's own options, checked before any folder is made; errors name the option."""
    from lmforge.config import check_option, is_int, is_number

    check_option(is_int(steps) and 2 <= steps <= 100_000, "--steps", steps, "must be an integer in [2, 100000]")
    check_option(is_number(lr_min) and lr_min > 0, "--lr-min", lr_min, "must be a finite number > 0")
    check_option(is_number(lr_max) and lr_max > lr_min, "--lr-max", lr_max,
                 f"must be a finite number above --lr-min {lr_min}")


def find_lr(cfg, *, steps: int = 100, lr_min: float = 1e-5, lr_max: float = 1.0, progress: bool = True,
            save: bool = True) -> LRFinderResult:
    """Range test of the language model `cfg` describes, on its data; saves lr_find.png/json in cfg.out."""
    from lmforge.data.prepare import prepare
    from lmforge.lm.model import build_model
    from lmforge.lm.task import LMTask, token_byte_lengths
    from lmforge.atomic import atomic_write_json
    from lmforge.trainer.loop import seed_everything
    from lmforge.trainer.precision import decide_precision, step_probe
    from lmforge.trainer.runtime import init_runtime
    from lmforge.console import console

    check_lr_find_options(steps, lr_min, lr_max)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare(cfg, quiet=not progress)
    rt = init_runtime(cfg.runtime.device, cfg.runtime.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.tokenizer.vocab_size, cfg.seed).to(rt.device)
    examples = max(1, cfg.train.global_batch_tokens // cfg.model.context_len)
    task = LMTask(model, data.train, data.val, token_byte_lengths(data.tokenizer), examples, cfg.seed,
                  cfg.eval.max_tokens)
    micro = cfg.train.micro_batch_size or examples // rt.world_size
    probe = step_probe(model, task.loss, task.micro_batch(0, 0, micro, rt), rt)
    rt.precision, _ = decide_precision(cfg.runtime.precision, rt, probe)
    result = lr_range_test(task, cfg.optim, rt, lr_min=lr_min, lr_max=lr_max, steps=steps,
                           micro_batch_size=cfg.train.micro_batch_size or None, restore=False)
    if save:
        result.plot(run_dir / "lr_find.png", title=f"{run_dir.name}: learning-rate range test")
        atomic_write_json(run_dir / "lr_find.json", result.to_dict())
    if progress:
        console.print(f"lr-find: {len(result.lrs)} steps in {result.seconds:.1f}s ({result.stop_reason}); "
                      f"suggested learning rate [bold]{result.suggestion:.2e}[/bold]"
                      + (f"; curve in {run_dir / 'lr_find.png'}" if save else ""))
    return result
