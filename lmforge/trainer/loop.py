"""The one training loop, shared by the language model and the classifiers.

A task supplies the model, deterministic batches and an evaluation; the loop owns the optimizer,
schedule, accumulation, precision, DDP, checkpoints, early stopping and logging. Batches are a
pure function of (step, micro-step, rank), so a resumed run sees exactly the data the
uninterrupted run would have seen, and N processes see the same global batch as one.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lmforge.config import EvalConfig, OptimConfig, ScheduleConfig, TrainConfig
from lmforge.errors import ConfigError, TrainingError
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.runtime import Runtime, all_reduce_mean, no_sync, wrap_model
from lmforge.trainer.optim import build_optimizer, lr_at, set_lr
from lmforge.console import fmt, make_progress
from lmforge.trainer.metrics import MetricsLog


class Task(Protocol):
    """What the loop needs from a task (LM pretraining, classification)."""

    model: torch.nn.Module
    examples_per_step: int  # global batch, in sequences / examples
    tokens_per_example: int  # for throughput figures

    def micro_batch(self, step: int, micro: int, micro_batch_size: int, rt: Runtime) -> Any:
        """Examples [rank's share][micro-th slice] of step's global batch, on rt.device."""

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Mean loss over the micro-batch."""

    def evaluate(self, model: torch.nn.Module, rt: Runtime) -> dict[str, float]:
        """Validation metrics; must contain 'val_loss'. Called on every rank (may all-reduce)."""


@dataclass
class FitResult:
    steps: int
    best_val_loss: float | None
    last_metrics: dict[str, float]
    tokens_per_s: float
    wall_s: float
    stopped_early: bool = False
    stop_reason: str = "max_steps"
    history: list[dict] = field(default_factory=list)
    micro_batch_size: int = 0  # per process, at the end (smaller than planned after an out-of-memory back-off)
    accumulation: int = 1
    oom_backoffs: int = 0


def plan_batches(examples_per_step: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(micro_batch_size, accumulation steps) for one process; the global batch is fixed."""
    if examples_per_step % world_size:
        raise ConfigError(
            f"the global batch of {examples_per_step} examples is not divisible by {world_size} processes; "
            "change train.global_batch_tokens"
        )
    per_rank = examples_per_step // world_size
    micro = micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"config field 'train.micro_batch_size': {micro} does not divide the per-process batch of "
            f"{per_rank} examples ({examples_per_step} global / {world_size} processes)"
        )
    return micro, per_rank // micro


def is_oom_error(exc: BaseException) -> bool:
    """True for an out-of-memory error from any device's allocator."""
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg or "failed to allocate" in msg
    return False


def backoff_micro_batch(micro_batch_size: int, per_rank: int) -> int:
    """The next smaller micro-batch after an out-of-memory error: half, or the largest divisor of the
    per-process batch below half; 0 when it cannot shrink further."""
    for size in range(micro_batch_size // 2, 0, -1):
        if per_rank % size == 0:
            return size
    return 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def fit(
    task: Task,
    cfg: TrainConfig,
    optim_cfg: OptimConfig,
    schedule_cfg: ScheduleConfig,
    eval_cfg: EvalConfig,
    rt: Runtime,
    run_dir: Path,
    compile_model: bool = False,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    on_best: Any = None,
    progress: bool = True,
    on_eval: Any = None,
) -> FitResult:
    """Train task.model in place. `on_best(model)` is called on rank 0 when validation improves.

    `on_eval(step, record)` is called on every rank after each evaluation, once the step's log line
    and checkpoint are written; an exception raised from it (e.g. optuna.TrialPruned) ends training
    and propagates, leaving the run folder consistent.

    An out-of-memory error in a micro-step (single process) halves the micro-batch, doubles the
    accumulation and redoes the step from its start: batches are a pure function of the step, so the
    global batch and the results stay the same.
    """
    run_dir = Path(run_dir)
    model = task.model
    micro_bs, accum = plan_batches(task.examples_per_step, cfg.micro_batch_size, rt.world_size)
    optimizer = build_optimizer(model, optim_cfg, rt.device.type)
    scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=rt.is_main)

    start_step, best_val, bad_evals, tokens_seen, elapsed_before = 0, math.inf, 0, 0, 0.0
    if resume:
        last = ckpt.latest_checkpoint(run_dir)
        if last is None:
            raise TrainingError(f"nothing to resume in {run_dir}: no complete checkpoint under {run_dir}/checkpoints")
        ckpt.load_weights(model, last / "model.safetensors")
        state = ckpt.load_train_state(last)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_step = int(state["step"])
        best_val = float(state["best_val"])
        bad_evals = int(state["bad_evals"])
        tokens_seen = int(state["tokens_seen"])
        elapsed_before = float(state["elapsed_s"])
        log.truncate_after(start_step)

    step_model = wrap_model(model, rt, compile_model)
    tokens_per_step = task.examples_per_step * task.tokens_per_example

    def save(step: int) -> None:
        if not rt.is_main:
            return
        state = {
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
            "step": torch.tensor(step),
            "best_val": torch.tensor(best_val, dtype=torch.float64),
            "bad_evals": torch.tensor(bad_evals),
            "tokens_seen": torch.tensor(tokens_seen),
            "elapsed_s": torch.tensor(elapsed_before + (time.perf_counter() - t0), dtype=torch.float64),
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        ckpt.save_checkpoint(run_dir, step, model.state_dict(), state, meta or {}, cfg.keep_checkpoints)

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), rt.autocast():
            metrics = task.evaluate(model, rt)
        model.train()
        return metrics

    save_every = cfg.save_interval or eval_cfg.interval
    history: list[dict] = []
    last_metrics: dict[str, float] = {}
    stop_reason = "max_steps"
    oom_backoffs = 0
    last_eval_s = 0.0
    step = start_step
    t0 = time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    tokens_per_s = 0.0
    model.train()
    bar = make_progress(progress and rt.is_main)
    with bar:
        task_id = bar.add_task("train", total=cfg.max_steps, completed=start_step, info="")
        sched_total = cfg.max_steps
        first: tuple[int, float] | None = None

        def micro_steps() -> torch.Tensor | float:
            loss_sum = 0.0
            for micro in range(accum):
                batch = task.micro_batch(step, micro, micro_bs, rt)
                with no_sync(step_model, skip=micro < accum - 1):
                    with rt.autocast():
                        loss = task.loss(step_model, batch) / accum
                    if scaler is not None:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                loss_sum += loss.detach()
            return loss_sum

        while step < cfg.max_steps:
            lr = lr_at(step, schedule_cfg, optim_cfg.lr, sched_total)
            set_lr(optimizer, lr)
            rng_at_step = _rng_state()
            while True:
                try:
                    loss_sum = micro_steps()
                    break
                except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled
                    if not is_oom_error(e):
                        raise
                    failed_with = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                # Outside the except block, so the failed step's tensors (held by the traceback) are freed.
                optimizer.zero_grad(set_to_none=True)
                if rt.device.type == "cuda":
                    torch.cuda.empty_cache()
                per_rank = micro_bs * accum
                smaller = backoff_micro_batch(micro_bs, per_rank)
                if rt.distributed or smaller == 0:
                    why = ("other processes cannot follow a back-off in a distributed run" if rt.distributed
                           else "the micro-batch is already 1")
                    raise TrainingError(
                        f"out of memory at step {step} with micro-batch {micro_bs} ({failed_with}); {why}. "
                        "Set a smaller train.micro_batch_size, a smaller model or a shorter model.context_len."
                    )
                if rt.is_main and progress:
                    bar.console.print(f"out of memory at step {step} with micro-batch {micro_bs}: retrying the "
                                      f"step with micro-batch {smaller} x {per_rank // smaller} accumulation")
                micro_bs, accum = smaller, per_rank // smaller
                oom_backoffs += 1
                _set_rng_state(rng_at_step)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip) if optim_cfg.grad_clip > 0
                else None
            )
            train_loss = float(loss_sum)
            if rt.distributed:
                train_loss = all_reduce_mean(train_loss, rt)
            if not math.isfinite(train_loss):
                last = ckpt.latest_checkpoint(run_dir)
                where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
                raise TrainingError(
                    f"loss became {train_loss} at step {step}; {where}. Lower optim.lr, raise schedule.warmup_steps, "
                    "or use runtime.precision fp32/bf16 instead of fp16."
                )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            window_tokens += tokens_per_step

            record: dict[str, Any] = {}
            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_t, 1e-9)
                window_t, window_tokens = now, 0
                record = {"step": step, "train_loss": train_loss, "lr": lr, "tokens": tokens_seen,
                          "tokens_per_s": tokens_per_s,
                          "elapsed_s": elapsed_before + now - t0}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
            elapsed = elapsed_before + time.perf_counter() - t0
            # The budget includes the final evaluation: stop when the time left is what the last
            # evaluation took.
            over_budget = cfg.time_budget_s > 0 and elapsed + last_eval_s >= cfg.time_budget_s
            if cfg.time_budget_s > 0:
                # Under a time budget the schedule decays over the steps that fit in it, so the run
                # ends annealed rather than cut off at a high learning rate.
                # The first step carries one-off costs (compilation), so the rate is measured after it.
                if first is None:
                    first = (step, elapsed)
                rate = (step - first[0]) / max(elapsed - first[1], 1e-9) if step > first[0] else 0.0
                left = cfg.time_budget_s - elapsed - last_eval_s
                reachable = step + max(0.0, left) * rate if rate else cfg.max_steps
                if rt.distributed:
                    # Ranks' clocks differ slightly; all must agree or DDP hangs or diverges.
                    over_budget = all_reduce_mean(float(over_budget), rt) > 0
                    reachable = all_reduce_mean(reachable, rt)
                sched_total = max(step + 1, min(cfg.max_steps, int(reachable)))
            last_step = step == cfg.max_steps or over_budget
            if step % eval_cfg.interval == 0 or last_step:
                t_eval = time.perf_counter()
                metrics = evaluate(step)
                last_eval_s = time.perf_counter() - t_eval
                last_metrics = metrics
                record.update({"step": step, "train_loss": train_loss, "tokens": tokens_seen,
                               "tokens_per_s": tokens_per_s, "elapsed_s": elapsed, **metrics})
                val = metrics["val_loss"]
                if val < best_val:
                    best_val, bad_evals = val, 0
                    if rt.is_main and on_best is not None:
                        on_best(model)
                else:
                    bad_evals += 1
                if eval_cfg.patience and bad_evals >= eval_cfg.patience:
                    stop_reason = f"early stop: no better validation loss in {bad_evals} evaluations"
                    last_step = True
                if rt.is_main and progress:
                    bpb = f"  bpb {fmt(metrics['val_bpb'])}" if "val_bpb" in metrics else ""
                    bar.console.print(f"step {step:>6}  train {fmt(train_loss)}  val {fmt(val)}{bpb}"
                                      f"  {tokens_per_s:,.0f} tok/s")
            if over_budget and stop_reason == "max_steps":
                stop_reason = f"time budget of {cfg.time_budget_s:.0f}s reached"
            if record:
                log.write(record)
                history.append(record)
            if step % save_every == 0 or last_step:
                save(step)
            if on_eval is not None and "val_loss" in record:
                on_eval(step, dict(record))
            bar.update(task_id, completed=step,
                       info=f"loss {train_loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s")
            if last_step:
                break
    wall = time.perf_counter() - t0
    ran = step - start_step
    return FitResult(
        steps=step,
        best_val_loss=None if math.isinf(best_val) else best_val,
        last_metrics=last_metrics,
        tokens_per_s=ran * tokens_per_step / max(wall, 1e-9),
        wall_s=elapsed_before + wall,
        stopped_early=stop_reason != "max_steps",
        stop_reason=stop_reason,
        history=history,
        micro_batch_size=micro_bs,
        accumulation=accum,
        oom_backoffs=oom_backoffs,
    )
