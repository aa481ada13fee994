"""The one training loop, shared by the language model and the classifiers.

A task supplies the model, deterministic batches and an evaluation; the loop owns the optimizer,
schedule, precision, DDP, checkpoints, early stopping and logging, and calls the one training step
(`trainer.step`). Batches are a pure function of (step, micro-step, rank), so a resumed run sees
exactly the data the uninterrupted run would have seen, and N processes see the same global batch
as one.
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

from lmforge.config import EvalConfig, OptimConfig, ScheduleConfig
from lmforge.console import fmt, make_progress
from lmforge.errors import TrainingError
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.budget import fit_to_budget
from lmforge.trainer.metrics import MetricsLog
from lmforge.trainer.optim import build_optimizer, drop_frozen_grads, lr_at, set_lr
from lmforge.trainer.parallelize import Layout, is_sharded, sharded_state, whole_weights
from lmforge.trainer.runtime import Runtime, Watchdog, all_reduce_mean, on_main, wrap_model
from lmforge.trainer.step import (backoff_micro_batch, forward_backward, is_oom_error, make_scaler, optimizer_step,
                                  plan_batches)
from lmforge.trainer.threads import StepTimer, ThreadGovernor
from lmforge.trainer.tracking import make_tracker


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


class LoopSettings(Protocol):
    """The run-control part of a task's `train` section (the LM's and the classifier's both have it)."""

    max_steps: int
    micro_batch_size: int
    time_budget_s: float
    log_interval: int
    save_interval: int
    keep_checkpoints: int
    track: str  # 'tensorboard', 'mlflow' or 'none' (trainer.tracking)


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


@dataclass
class TrainState:
    """What a checkpoint restores besides weights and optimizer: where the run is."""

    step: int = 0
    best_val: float = math.inf
    bad_evals: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    decay_end: int = 0  # the step an early decay ends at (schedule.decay_on_plateau); 0: none began


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


class _Fit:
    """One call of `fit`: the run's moving parts, and the stages of a step as small methods."""

    def __init__(self, task: Task, cfg: LoopSettings, optim_cfg: OptimConfig, schedule_cfg: ScheduleConfig,
                 eval_cfg: EvalConfig, rt: Runtime, run_dir: Path, progress: bool, layout: Layout | None = None):
        self.task, self.cfg, self.optim_cfg, self.schedule_cfg, self.eval_cfg = task, cfg, optim_cfg, schedule_cfg, eval_cfg
        self.rt, self.run_dir, self.progress = rt, Path(run_dir), progress and rt.is_main
        self.layout = layout or Layout("ddp" if rt.distributed else "single")
        self.model = task.model
        self.micro_bs, self.accum = plan_batches(task.examples_per_step, cfg.micro_batch_size, rt.dp_size)
        # A task may give parts of its model their own rate and start (optim.LrGroup): the GPT classifier does.
        self.optimizer = build_optimizer(self.model, optim_cfg, rt.device.type,
                                         getattr(task, "lr_groups", None))
        self.scaler = make_scaler(rt.precision)
        tracker = make_tracker(cfg.track, self.run_dir) if rt.is_main else None
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=rt.is_main, tracker=tracker)
        self.state = TrainState()
        self.tokens_per_step = task.examples_per_step * task.tokens_per_example
        self.oom_backoffs = 0
        self.threads = ThreadGovernor(torch.get_num_threads() if rt.adapt_threads else 1, torch.set_num_threads)
        self.total_steps = cfg.max_steps  # the schedule's length; under a time budget, what fits
        self.first: tuple[int, float] | None = None  # (step, elapsed) after the first step
        self.last_eval_s = 0.0
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict] = []
        self.stop_reason = "max_steps"
        self.steps_here = 0  # steps taken by this call (not before a resume)
        self.tokens_per_s = 0.0
        self.t0 = time.perf_counter()
        self.window = (self.t0, 0)  # (time, tokens) at the start of the throughput window

    def restore(self, run_id: str | None = None) -> None:
        if self.rt.distributed:  # rank 0 picks the checkpoint (verifying it once); every process loads it
            path = on_main(lambda: ckpt.latest_intact(self.run_dir, run_id), self.rt)
            if path is not None:
                self._load(path)
            found = None if path is None else (path, ckpt.load_train_state(path))
        else:  # skips damaged ones, refuses other runs'
            found = ckpt.restore_latest(self.run_dir, self.model, run_id, load=self._load)
        if found is None:
            raise TrainingError(f"nothing to resume in {self.run_dir}: no intact checkpoint under "
                                f"{self.run_dir}/checkpoints")
        saved = found[1]
        if self.scaler is not None and "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        self.state = TrainState(step=int(saved["step"]), best_val=float(saved["best_val"]),
                                bad_evals=int(saved["bad_evals"]), tokens_seen=int(saved["tokens_seen"]),
                                elapsed_s=float(saved["elapsed_s"]), decay_end=int(saved.get("decay_end", 0)))
        if self.state.decay_end:  # the next step's rate already follows the early decay
            self.total_steps = min(self.total_steps, self.state.decay_end)
        self.log.truncate_after(self.state.step)

    def _load(self, path: Path) -> None:
        """Weights and optimizer state from checkpoint `path`, whichever layout saved it."""
        if ckpt.is_sharded(path):
            state, apply = sharded_state(self.model, self.optimizer)
            ckpt.load_sharded(path, state)
            apply()
            return
        if is_sharded(self.model):
            raise TrainingError(
                f"checkpoint {path} holds whole-model files (saved by a DDP or one-process run), which a sharded "
                "run does not read; resume it with --train.parallel ddp (or on one process), or from a sharded "
                "checkpoint (train.parallel fsdp saves them, on any number of processes).")
        ckpt.apply_weights(self.model, ckpt.load_verified(path / "model.safetensors"), path / "model.safetensors")
        self.optimizer.load_state_dict(ckpt.load_train_state(path)["optimizer"])

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self.t0

    def save(self, meta: dict) -> None:
        """A checkpoint: sharded (every process writes its shards) or whole files written by rank 0."""
        s = self.state
        saved = {"rng": _rng_state(), "step": torch.tensor(s.step),
                 "best_val": torch.tensor(s.best_val, dtype=torch.float64), "bad_evals": torch.tensor(s.bad_evals),
                 "tokens_seen": torch.tensor(s.tokens_seen), "decay_end": torch.tensor(s.decay_end),
                 "elapsed_s": torch.tensor(self.elapsed(), dtype=torch.float64)}
        if self.scaler is not None:
            saved["scaler"] = self.scaler.state_dict()
        if self.layout.sharded:
            state, _ = sharded_state(self.model, self.optimizer)
            ckpt.save_sharded_checkpoint(self.run_dir, s.step, state, saved, meta, self.cfg.keep_checkpoints, self.rt)
            return
        if not self.rt.is_main:
            return
        saved["optimizer"] = self.optimizer.state_dict()
        ckpt.save_checkpoint(self.run_dir, s.step, self.model.state_dict(), saved, meta, self.cfg.keep_checkpoints)

    def gradients(self, step_model: torch.nn.Module, bar) -> torch.Tensor:
        """Forward and backward of the step's micro-batches; an out-of-memory error (one process)
        halves the micro-batch, doubles the accumulation and redoes the step from its start."""
        rng_at_step = _rng_state()
        while True:
            step, mb = self.state.step, self.micro_bs
            try:
                return forward_backward(step_model, self.task.loss,
                                        lambda i: self.task.micro_batch(step, i, mb, self.rt), self.accum, self.rt,
                                        self.scaler)
            except Exception as e:  # noqa: BLE001 - only out-of-memory errors are handled
                if not is_oom_error(e):
                    raise
                failed_with = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            # Outside the except block, so the failed step's tensors (held by the traceback) are freed.
            self._back_off(failed_with, bar)
            _set_rng_state(rng_at_step)

    def _back_off(self, failed_with: str, bar) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.rt.device.type == "cuda":
            torch.cuda.empty_cache()
        per_rank = self.micro_bs * self.accum
        smaller = backoff_micro_batch(self.micro_bs, per_rank)
        if self.rt.distributed or smaller == 0:
            why = ("other processes cannot follow a back-off in a distributed run" if self.rt.distributed
                   else "the micro-batch is already 1")
            raise TrainingError(
                f"out of memory at step {self.state.step} with micro-batch {self.micro_bs} ({failed_with}); {why}. "
                "Set a smaller train.micro_batch_size, train.activation_checkpointing blocks (recomputes activations "
                "instead of keeping them), train.parallel fsdp with more processes (shards the model state), a "
                "smaller model or a shorter model.context_len.")
        if self.progress:
            bar.console.print(f"out of memory at step {self.state.step} with micro-batch {self.micro_bs}: retrying "
                              f"the step with micro-batch {smaller} x {per_rank // smaller} accumulation")
        self.micro_bs, self.accum = smaller, per_rank // smaller
        self.oom_backoffs += 1

    def check_finite(self, loss: float, what: str = "loss") -> None:
        if math.isfinite(loss):
            return
        last = ckpt.latest_checkpoint(self.run_dir)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        raise TrainingError(
            f"{what} became {loss} at step {self.state.step}; {where}. Lower optim.lr, raise "
            "schedule.warmup_steps, or use runtime.precision fp32/bf16 instead of fp16.")

    def keep_time(self) -> bool:
        """Refit the schedule to the steps that fit in the budget; True when the budget is reached."""
        elapsed = self.elapsed()
        if self.cfg.time_budget_s > 0 and self.first is None:
            self.first = (self.state.step, elapsed)
        total, over = fit_to_budget(self.state.step, elapsed, self.first, self.cfg.time_budget_s,
                                    self.last_eval_s, self.cfg.max_steps)
        if self.rt.distributed and self.cfg.time_budget_s > 0:
            # Ranks' clocks differ slightly; all must agree or DDP hangs or diverges.
            over = all_reduce_mean(float(over), self.rt) > 0
            total = max(self.state.step + 1, int(all_reduce_mean(float(total), self.rt)))
        if self.state.decay_end:  # an early decay fixed the schedule's end (the budget may still end it sooner)
            total = min(total, self.state.decay_end)
        self.total_steps = total
        return over

    def decay_now(self) -> int:
        """wsd with schedule.decay_on_plateau: when validation has not improved for that many evaluations
        while the rate is still at its peak, fix the schedule's end so that its decay starts at this
        step; the step it ends at, or 0. Every process sees the same (all-reduced) validation losses,
        so all decide alike."""
        sc, s = self.schedule_cfg, self.state
        if sc.kind != "wsd" or not sc.decay_on_plateau or s.decay_end or s.bad_evals < sc.decay_on_plateau:
            return 0
        decay_start = self.total_steps - max(1, int(round(sc.decay_fraction * self.total_steps)))
        if s.step >= decay_start:
            return 0
        end = s.step + 1
        while end - max(1, int(round(sc.decay_fraction * end))) < s.step:
            end += 1
        s.decay_end = self.total_steps = end
        return end

    def evaluate(self) -> dict[str, float]:
        t = time.perf_counter()
        self.model.eval()
        with torch.no_grad(), self.rt.autocast():
            metrics = self.task.evaluate(self.model, self.rt)
        self.model.train()
        self.last_eval_s = time.perf_counter() - t
        return metrics

    def record_eval(self, metrics: dict[str, float], on_best) -> bool:
        """Track the best validation loss; True when early stopping says stop."""
        s = self.state
        # The last optimizer step can break the weights after the last training loss was checked.
        self.check_finite(metrics["val_loss"], "validation loss")
        if metrics["val_loss"] < s.best_val:
            s.best_val, s.bad_evals = metrics["val_loss"], 0
            if on_best is not None:
                weights = whole_weights(self.model)
                if self.rt.is_main:
                    on_best(weights)  # written as gathered: one whole tensor at a time
                elif is_sharded(self.model):
                    weights.drain()  # every process takes part in each tensor's gather
        else:
            s.bad_evals += 1
        return bool(self.eval_cfg.patience) and s.bad_evals >= self.eval_cfg.patience

    def train_step(self, step_model: torch.nn.Module, bar) -> tuple[float, float, float | None]:
        """One optimizer step at the schedule's learning rate: (loss, learning rate, gradient norm)."""
        lr = lr_at(self.state.step, self.schedule_cfg, self.optim_cfg.lr, self.total_steps)
        set_lr(self.optimizer, lr, self.state.step, self.total_steps)
        with StepTimer() as timed:
            loss = float(self.gradients(step_model, bar))  # float() waits for the device: part of the step
        if self.rt.distributed:
            loss = all_reduce_mean(loss, self.rt)
        self.check_finite(loss)
        drop_frozen_grads(self.optimizer)
        grad_norm = optimizer_step(self.model, self.optimizer, self.optim_cfg.grad_clip, self.scaler)
        message = self.threads.observe(timed.wall_s, timed.cpu_s)
        if message and self.progress:
            bar.console.print(message)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        self.steps_here += 1
        return loss, lr, grad_norm

    def throughput(self) -> float:
        """Tokens per second since the last call (the last log line)."""
        now, done = time.perf_counter(), self.steps_here * self.tokens_per_step
        rate = (done - self.window[1]) / max(now - self.window[0], 1e-9)
        self.window = (now, done)
        return rate

    def after_step(self, loss: float, lr: float, grad_norm: float | None, hooks: dict, bar) -> bool:
        """Log, keep time, evaluate, save and report after a step; True when the run should end."""
        s, cfg = self.state, self.cfg
        record: dict[str, Any] = {}
        if s.step % cfg.log_interval == 0 or s.step == cfg.max_steps:
            self.tokens_per_s = self.throughput()
            record = {"step": s.step, "train_loss": loss, "lr": lr, "tokens": s.tokens_seen,
                      "tokens_per_s": self.tokens_per_s, "elapsed_s": self.elapsed()}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
        over_budget = self.keep_time()
        last = s.step == cfg.max_steps or over_budget or bool(s.decay_end and s.step >= s.decay_end)
        if s.step % self.eval_cfg.interval == 0 or last:
            metrics = self.last_metrics = self.evaluate()
            record.update({"step": s.step, "train_loss": loss, "tokens": s.tokens_seen,
                           "tokens_per_s": self.tokens_per_s, "elapsed_s": self.elapsed(), **metrics})
            if self.record_eval(metrics, hooks["on_best"]):
                self.stop_reason = f"early stop: no better validation loss in {s.bad_evals} evaluations"
                last = True
            elif (end := self.decay_now()) and self.progress:
                bar.console.print(f"no better validation loss in {s.bad_evals} evaluations at the peak rate: "
                                  f"decaying the learning rate now, ending at step {end}")
            if self.progress:
                bpb = f"  bpb {fmt(metrics['val_bpb'])}" if "val_bpb" in metrics else ""
                bar.console.print(f"step {s.step:>6}  train {fmt(loss)}  val {fmt(metrics['val_loss'])}{bpb}"
                                  f"  {self.tokens_per_s:,.0f} tok/s")
        if s.decay_end and s.step >= s.decay_end and self.stop_reason == "max_steps":
            self.stop_reason = (f"validation loss stopped improving at the peak rate: the learning rate decayed early "
                                f"and the run ended at step {s.decay_end}")
        if over_budget and self.stop_reason == "max_steps":
            self.stop_reason = f"time budget of {cfg.time_budget_s:.0f}s reached"
        if record:
            self.log.write(record)
            self.history.append(record)
        if s.step % (cfg.save_interval or self.eval_cfg.interval) == 0 or last:
            self.save(hooks["meta"])
        if hooks["on_eval"] is not None and "val_loss" in record:
            hooks["on_eval"](s.step, dict(record))
        # Under a time budget the bar's length (and so its ETA) is the steps that fit in it.
        bar.update(bar.task_ids[0], completed=s.step, total=self.total_steps,
                   info=f"loss {loss:.4f}  lr {lr:.2e}  {self.tokens_per_s:,.0f} tok/s")
        return last

    def result(self) -> FitResult:
        wall = time.perf_counter() - self.t0
        return FitResult(
            steps=self.state.step, best_val_loss=None if math.isinf(self.state.best_val) else self.state.best_val,
            last_metrics=self.last_metrics, tokens_per_s=self.steps_here * self.tokens_per_step / max(wall, 1e-9),
            wall_s=self.state.elapsed_s + wall, stopped_early=self.stop_reason != "max_steps",
            stop_reason=self.stop_reason, history=self.history, micro_batch_size=self.micro_bs,
            accumulation=self.accum, oom_backoffs=self.oom_backoffs)


def fit(
    task: Task,
    cfg: LoopSettings,
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
    layout: Layout | None = None,
) -> FitResult:
    """Train task.model in place. `on_best(weights)` is called on rank 0 with the whole weights
    (`WholeWeights`, to be read once: a sharded model gathers each tensor as it is read) when validation
    improves. `layout` is how the model is spread over the processes
    (trainer.parallelize; None: DDP or one process); a sharded layout saves sharded checkpoints.

    `on_eval(step, record)` is called on every rank after each evaluation, once the step's log line
    and checkpoint are written; an exception raised from it (e.g. optuna.TrialPruned) ends training
    and propagates, leaving the run folder consistent.
    """
    run = _Fit(task, cfg, optim_cfg, schedule_cfg, eval_cfg, rt, run_dir, progress, layout)
    if resume:
        run.restore((meta or {}).get("run_id"))
    elif run.log.path.exists():  # an attempt stopped before its first checkpoint: its lines are not this run's
        run.log.truncate_after(0)
    step_model = wrap_model(task.model, rt, compile_model)
    hooks = {"on_best": on_best, "on_eval": on_eval, "meta": meta or {}}
    run.t0 = time.perf_counter()
    run.window = (run.t0, 0)
    task.model.train()
    failed = True
    try:
        with make_progress(run.progress) as bar, Watchdog(rt) as watchdog:
            bar.add_task("train", total=cfg.max_steps, completed=run.state.step, info="")
            while run.state.step < cfg.max_steps:
                loss, lr, grad_norm = run.train_step(step_model, bar)
                if run.after_step(loss, lr, grad_norm, hooks, bar):
                    break
                watchdog.pet()
        failed = False
    finally:
        run.log.close(failed)
    return run.result()
