"""The planner's phases, in the order `make_plan` runs them.

Each phase reads what the earlier ones decided (a `Draft`) and the fixed inputs (a `PlanContext`),
measures what it must through the step-time measurer, and records its decision with the reason.
The rules themselves live in `choices`, `candidates` and `timesplit`; this module is the order and
the bookkeeping: which measurement feeds which rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lmforge.auto.arithmetic import Candidate, round_pow2_down, shape_config
from lmforge.auto.candidates import LOOP_EFFICIENCY, Scored, ShapeSearch, Speeds, candidate_shapes
from lmforge.auto.choices import (LIGHT_DROPOUT, compile_with_dropout_why, light_dropout_or_compile_why, compiled_speedup_verdict, dropout_for_passes,
                                  expected_compile, global_batch, optimizer_for_passes, plan_optimizer,
                                  precision_at_shape, provisional_precision, rule_lr, rule_lr_why, threads_verdict,
                                  warmup_steps)
from lmforge.auto.hardware import Hardware
from lmforge.auto.hysteresis import KEEP_BAND, PreviousPlan, sticky
from lmforge.auto.inputs import DataFacts, PlanOptions, StepMeasurer
from lmforge.auto.timesplit import TimeSplit, plan_evaluations, plan_final_reserve, start_split, training_guess
from lmforge.config import Config, from_dict, to_dict
from lmforge.errors import ConfigError


@dataclass
class PlanContext:
    """What a plan starts from: the config (a copy, filled in at the end), the corpus, the machine, the
    measurer, the fields the user fixed, the options and the clock."""

    cfg: Config
    data: DataFacts
    hw: Hardware
    measure: StepMeasurer
    fixed: frozenset[str]
    opt: PlanOptions
    clock: Callable[[], float]
    t_start: float
    split: TimeSplit
    set_threads: Callable[[int], None] | None = None
    previous: PreviousPlan | None = None  # an earlier plan for the same inputs (see hysteresis)

    @property
    def on_gpu(self) -> bool:
        return self.hw.device == "cuda"

    @property
    def vocab(self) -> int:
        return self.data.vocab_size

    @property
    def unique_tokens(self) -> float:
        return float(max(1, self.data.train_tokens))

    @property
    def measure_tokens(self) -> int:
        return self.opt.measure_tokens or (32768 if self.on_gpu else 4096)

    def base_micro(self, c: Candidate) -> int:
        """The micro-batch candidates are timed at."""
        return max(1, self.measure_tokens // c.context_len)

    def is_fixed(self, name: str) -> bool:
        return name in self.fixed

    def elapsed(self) -> float:
        return self.clock() - self.t_start

    def out_of_time(self) -> bool:
        return self.elapsed() > self.split.planning_cap_s

    def timed(self, c: Candidate, micro_batch: int, precision: str) -> float | None:
        """Seconds per step, or None when the shape does not fit in memory."""
        try:
            return self.measure(c, micro_batch, precision)
        except Exception as e:  # noqa: BLE001 - a shape that cannot run is just not a candidate
            from lmforge.trainer.step import is_oom_error

            if is_oom_error(e):
                return None
            raise


@dataclass
class Draft:
    """The decisions so far, each with its reason."""

    optimizer: str
    optimizer_why: str
    precision: str = "fp32"
    precision_why: str = ""
    compile: bool = False
    compile_why: str = ""
    compile_speedup: float = 1.0  # expected, before a compiled step is measured
    speed_factor: float = 1.0  # expected from compiling; 1 once measured
    threads: int = 1
    threads_why: str | None = None
    search: ShapeSearch | None = None
    best: Scored | None = None
    ranked: list[Scored] = field(default_factory=list)
    micro: int = 1
    micro_why: str = ""
    knee: int = 0  # the micro-batch at the knee of the throughput curve, before the global batch adjusts it
    tps: float = 0.0  # measured training tokens/s of the step at `micro`
    dropout: float = 0.0
    dropout_why: str = ""
    dropout_forgone: tuple[float, str] | None = None  # light dropout given up for a compile not yet measured
    seqs: int = 1  # sequences per optimizer step
    batch_why: str = ""
    lr: float = 0.0
    lr_why: str = ""
    min_lr: float = 0.0
    warmup: int = 0
    schedule: str = "wsd"
    close_calls: list[dict] = field(default_factory=list)

    @property
    def cand(self) -> Candidate:
        return self.best.cand

    @property
    def tps_eff(self) -> float:
        """Tokens/s the loop will reach: it does more than the timed step (batches, logging, the
        clock), and the machine is rarely as quiet as during the best of a few timings."""
        return self.tps * self.speed_factor * LOOP_EFFICIENCY

    @property
    def batch_tokens(self) -> int:
        return self.seqs * self.cand.context_len

    def tokens(self, split: TimeSplit) -> float:
        return self.tps_eff * split.train_s

    def steps(self, split: TimeSplit) -> int:
        return max(1, int(self.tokens(split) / self.batch_tokens))


def begin(cfg: Config, data: DataFacts, hw: Hardware, budget_s: float, measure: StepMeasurer, *, spent_s: float,
          fixed, opt: PlanOptions, clock: Callable[[], float] = time.perf_counter,
          set_threads: Callable[[int], None] | None = None, spent_detail: dict[str, float] | None = None,
          previous: PreviousPlan | None = None) -> tuple[PlanContext, Draft]:
    t_start = clock()
    split = start_split(budget_s, spent_s, opt, spent_detail)
    ctx = PlanContext(from_dict(Config, to_dict(cfg)), data, hw, measure, frozenset(fixed), opt, clock, t_start,
                      split, set_threads, previous)
    return ctx, Draft(*plan_optimizer(ctx.cfg, ctx.fixed, opt))


def provisional_settings(ctx: PlanContext, d: Draft) -> None:
    """The precision to time candidates in, and whether compiling is expected to pay."""
    d.precision, d.precision_why = provisional_precision(ctx.cfg, ctx.fixed, ctx.hw)
    cost = ctx.opt.compile_cost_s or (60.0 if ctx.on_gpu else 35.0)
    d.compile_speedup = ctx.opt.compile_speedup or (1.5 if ctx.on_gpu else 1.6)
    train_guess = training_guess(ctx.split, ctx.opt)
    d.compile, d.compile_why = expected_compile(ctx.cfg, ctx.fixed, ctx.hw, train_guess, cost, d.compile_speedup)
    if ctx.previous is not None and not ctx.is_fixed("runtime.compile") and ctx.hw.compile_ok:
        saved = train_guess * (1 - 1 / d.compile_speedup)
        d.compile, kept = sticky(d.compile, ctx.previous.compile, saved / (1.5 * cost))
        if kept:
            d.compile_why = f"as the earlier plan for the same inputs: {d.compile_why}"
    d.speed_factor = d.compile_speedup if d.compile else 1.0
    ctx.split.compile_s = cost if d.compile else 0.0


def search_shapes(ctx: PlanContext, d: Draft) -> None:
    """Time the best-ranked shapes (the first one also on one thread, see `check_threads`) and rank all."""
    hw = ctx.hw
    cands = candidate_shapes(ctx.cfg.model, ctx.fixed, ctx.vocab, ctx.unique_tokens, hw.memory_bytes,
                             ctx.measure_tokens)
    # Throughput before anything is measured: a share of the measured matmul peak.
    peak = (hw.bf16_tflops if d.precision in ("bf16", "fp16") else hw.fp32_tflops) or 0.1
    speeds = Speeds(ctx.vocab, ctx.cfg.model, peak * 1e12 * (0.3 if ctx.on_gpu else 0.2))
    train_s = max(1.0, training_guess(ctx.split, ctx.opt) - ctx.split.compile_s)
    d.search = ShapeSearch(cands, speeds, ctx.unique_tokens, train_s, d.speed_factor, ctx.opt)
    d.threads = hw.threads
    check = ctx.set_threads is not None and hw.device == "cpu" and hw.threads > 1

    def tokens_per_s(c: Candidate) -> float | None:
        mb = ctx.base_micro(c)
        seconds = check_threads(ctx, d, c, mb) if check and d.threads_why is None else ctx.timed(c, mb, d.precision)
        return mb * c.context_len / seconds if seconds and seconds > 0 else None

    keep = None
    if ctx.previous is not None and not {"model.d_model", "model.n_layer"} <= ctx.fixed:
        keep = ctx.previous.shape
    d.search.search(tokens_per_s, ctx.out_of_time, keep)
    d.best, d.ranked, contenders = d.search.pick(ctx.split.budget_s, keep)
    kept_from = ctx.previous.source if keep is not None and d.best.cand == keep else None
    close = d.search.close_call(d.best, d.ranked, contenders, kept_from)
    if close is not None:
        d.close_calls.append(close)


def check_threads(ctx: PlanContext, d: Draft, c: Candidate, mb: int) -> float | None:
    """Time a step on one thread and on all; keep one thread when other programs make threads stall."""
    ctx.set_threads(1)  # one thread first: it is the robust one when other programs share the cores
    one = ctx.timed(c, mb, d.precision)
    ctx.set_threads(ctx.hw.threads)
    seconds = ctx.timed(c, mb, d.precision)
    worst = getattr(ctx.measure, "worst_s", None) or seconds or 0.0
    use_one, d.threads_why = threads_verdict(one, seconds, worst, ctx.hw.threads)
    if use_one:
        d.threads = 1
        ctx.set_threads(1)
        return one
    return seconds


def confirm_precision(ctx: PlanContext, d: Draft) -> None:
    """On a CPU with bf16 support, time the chosen shape in the other precision too and decide on the
    measured ratio (trainer.precision's BF16_MIN_SPEEDUP), not on matmul speed."""
    measured = d.search.speeds.measured
    c = d.cand
    if (ctx.on_gpu or ctx.is_fixed("runtime.precision") or not ctx.hw.fast_bf16 or c not in measured
            or ctx.out_of_time()):
        return
    mb = ctx.base_micro(c)
    current = mb * c.context_len / measured[c]
    other = ctx.timed(c, mb, "fp32" if d.precision == "bf16" else "bf16")
    if other is None:
        return
    fp32_s, bf16_s = (other, current) if d.precision == "bf16" else (current, other)
    precision, d.precision_why, speedup = precision_at_shape(fp32_s, bf16_s, mb)
    if ctx.previous is not None:
        precision, kept = sticky(precision, ctx.previous.precision, threshold_ratio(speedup), band=0.1)
        if kept:
            d.precision_why += f"; kept {precision}, as the earlier plan for the same inputs"
    note_close_call(d, "precision", precision, "fp32" if precision == "bf16" else "bf16", speedup,
                    threshold_ratio(speedup), d.precision_why)
    if precision != d.precision:
        d.precision = precision
        measured[c] = mb * c.context_len / (fp32_s if precision == "fp32" else bf16_s)


def threshold_ratio(speedup: float) -> float:
    from lmforge.trainer.precision import BF16_MIN_SPEEDUP

    return speedup / BF16_MIN_SPEEDUP


def note_close_call(d: Draft, decision: str, chose: str, over: str, value: float, ratio_to_threshold: float,
                    measurement: str, within: float = 0.1) -> None:
    """Record a decision whose deciding measurement was within `within` of its threshold."""
    if abs(ratio_to_threshold - 1) <= within:
        d.close_calls.append({"decision": decision, "chose": chose, "over": over, "value": round(value, 4),
                              "measurement": measurement})


def choose_micro_batch(ctx: PlanContext, d: Draft) -> None:
    """The knee of the throughput curve (CPU) or the largest micro-batch that fits (GPU)."""
    from lmforge.auto.batch_size import find_micro_batch

    c, measured = d.cand, d.search.speeds.measured
    base_mb = ctx.base_micro(c)
    if ctx.is_fixed("train.micro_batch_size") and ctx.cfg.train.micro_batch_size:
        d.micro = d.knee = ctx.cfg.train.micro_batch_size
        d.micro_why = "set by you"
        d.tps = measured.get(c, d.best.tokens_per_s / d.speed_factor / LOOP_EFFICIENCY)
        return
    if c in measured and ctx.out_of_time():
        d.micro, d.knee, d.tps = base_mb, base_mb, measured[c]
        d.micro_why = (f"the size it was timed at ({base_mb * c.context_len:,} tokens); no planning time left to "
                       "try others")
        return
    cache = {base_mb: base_mb * c.context_len / measured[c]} if c in measured else {}

    def step_time(b: int) -> float:
        if b not in cache:
            cache[b] = ctx.measure(c, b, d.precision)
        return cache[b]

    # CPU: the curve around the timing size (half, same, double) is enough to place the knee and
    # keeps planning short; GPU: double until memory runs out.
    start = base_mb if ctx.on_gpu else max(1, base_mb // 2)
    max_mb = max(start, round_pow2_down(262144 // c.context_len)) if ctx.on_gpu else 2 * base_mb
    found = find_micro_batch(step_time, max_mb, ctx.hw.device, start=start,
                             max_seconds_per_try=max(0.5, 0.01 * ctx.split.budget_s))
    d.micro, d.micro_why = found.micro_batch_size, found.reason
    rates = {b: b / t for b, t in found.tried if t}
    knee = ctx.previous.micro_knee if ctx.previous is not None else 0
    if not ctx.on_gpu and knee in rates and knee != d.micro and rates[knee] >= (0.9 - KEEP_BAND) * max(rates.values()):
        # The knee (the smallest size within 90% of the best) moves with a few percent of noise.
        d.micro = knee
        d.micro_why += f"; kept {knee}, as the earlier plan for the same inputs ({rates[knee] / max(rates.values()):.0%})"
    d.knee = d.micro
    d.tps = d.micro * c.context_len / step_time(d.micro)


def split_time(ctx: PlanContext, d: Draft) -> None:
    """Planning is over but for a few timings: size the evaluations and the final reserve, and fit
    the training time into what is left."""
    split, c, cfg = ctx.split, d.cand, ctx.cfg
    split.planning_s = ctx.elapsed()
    # A forward pass is about a third of a training step.
    plan_evaluations(split, ctx.data.val_tokens, cfg.eval.max_tokens, ctx.is_fixed("eval.max_tokens"),
                     3 * d.tps_eff, c.context_len, ctx.opt)
    plan_final_reserve(split, c.n_layer, cfg.sample.num_samples, cfg.sample.max_new_tokens, ctx.on_gpu)
    split.refit(split.planning_s, split.compile_s)


def regularise(ctx: PlanContext, d: Draft) -> None:
    """Optimizer and dropout from the passes over the corpus an uncompiled run would make; a CPU run
    with dropout is not compiled."""
    split = ctx.split
    passes = d.tps * LOOP_EFFICIENCY * (split.train_s + split.compile_s) / ctx.unique_tokens
    before = d.optimizer
    d.optimizer, d.optimizer_why = optimizer_for_passes(d.optimizer, d.optimizer_why, passes, ctx.fixed, ctx.opt)
    if before == "muon" and not ctx.is_fixed("optim.kind") and ctx.previous is not None:
        d.optimizer, kept = sticky(d.optimizer, ctx.previous.optimizer, passes / ctx.opt.muon_max_epochs)
        if kept:
            d.optimizer_why = (f"{passes:.1f} passes over the corpus, near the limit of {ctx.opt.muon_max_epochs:g} "
                               f"for Muon: kept {d.optimizer}, as the earlier plan for the same inputs")
    if before == "muon" and not ctx.is_fixed("optim.kind"):
        note_close_call(d, "optimizer", d.optimizer, "muon" if d.optimizer == "adamw" else "adamw", passes,
                        passes / ctx.opt.muon_max_epochs,
                        f"{passes:.1f} passes over the corpus (AdamW above {ctx.opt.muon_max_epochs:g}), from the "
                        f"measured {d.tps:,.0f} tokens/s")
    if ctx.is_fixed("model.dropout"):
        d.dropout, d.dropout_why = ctx.cfg.model.dropout, "set by you"
    else:
        d.dropout, d.dropout_why = dropout_for_passes(passes)
        near = {dropout_for_passes(passes * f)[0] for f in (1 - KEEP_BAND, 1 + KEEP_BAND)}
        for other in sorted(near - {d.dropout}):
            d.close_calls.append({"decision": "dropout", "chose": f"{d.dropout:g}", "over": f"{other:g}",
                                  "value": round(passes, 2),
                                  "measurement": f"{passes:.1f} passes over the corpus, within {100 * KEEP_BAND:.0f}% "
                                                 f"of a boundary of the dropout rule (from the measured "
                                                 f"{d.tps:,.0f} tokens/s)"})
        if ctx.previous is not None and ctx.previous.dropout in near and ctx.previous.dropout != d.dropout:
            d.dropout = ctx.previous.dropout
            d.dropout_why = (f"{passes:.1f} passes over the corpus, near a boundary of the dropout rule: kept "
                             f"{d.dropout:g}, as the earlier plan for the same inputs")
    if d.compile and d.dropout > 0 and not ctx.on_gpu and not ctx.is_fixed("runtime.compile"):
        light = d.dropout <= LIGHT_DROPOUT and not ctx.is_fixed("model.dropout")
        if light and passes * d.compile_speedup <= ctx.opt.compile_over_dropout_max_passes:
            d.dropout_forgone = (d.dropout, d.dropout_why)
            d.dropout, d.dropout_why = 0.0, light_dropout_or_compile_why(passes, d.compile_speedup)
        else:
            d.compile, d.speed_factor, d.compile_why = False, 1.0, compile_with_dropout_why(d.dropout)
            if light:
                d.compile_why = (f"{passes * d.compile_speedup:.0f} passes over the corpus if compiled: the extra "
                                 f"tokens would be repeats, worth less than light dropout; {d.compile_why}")
            split.refit(split.planning_s, 0.0)


def choose_global_batch(ctx: PlanContext, d: Draft) -> None:
    """About the target number of optimizer steps; the micro-batch the batch needs is timed again."""
    c, T = d.cand, d.cand.context_len
    micro_before = d.micro
    if ctx.is_fixed("train.global_batch_tokens"):
        batch_tokens = ctx.cfg.train.global_batch_tokens
        if batch_tokens % T:
            raise ConfigError(f"train.global_batch_tokens={batch_tokens} is not a multiple of the context {T}")
        d.seqs, d.batch_why = batch_tokens // T, "set by you"
        while d.seqs % d.micro:
            d.micro -= 1
    else:
        target = ctx.opt.target_steps_muon if d.optimizer == "muon" else ctx.opt.target_steps
        keep = ctx.previous.accumulation if ctx.previous is not None else 0
        same_context = ctx.previous is not None and ctx.previous.shape.context_len == T
        keep_seqs = ctx.previous.sequences if same_context else 0
        d.seqs, d.micro, d.batch_why = global_batch(d.tokens(ctx.split), target, d.micro, T, ctx.opt, ctx.on_gpu,
                                                    keep, keep_seqs)
    if d.micro != micro_before and not (ctx.is_fixed("train.micro_batch_size") and ctx.cfg.train.micro_batch_size):
        # A micro-batch below the knee runs slower per token (small matrices): time the one the run
        # will use, or the plan promises steps the run cannot make (tiny Shakespeare, 2 minutes:
        # 2015 planned, 1341 made, before this).
        t_micro = ctx.timed(c, d.micro, d.precision)
        if t_micro:
            d.tps = d.micro * T / t_micro
            d.micro_why += f"; the global batch needs {d.micro}, timed at {d.tps:,.0f} tokens/s"


def choose_schedule(ctx: PlanContext, d: Draft, lr_finder: Callable[[Config], tuple[float, str]] | None) -> None:
    """Learning rate (the width/batch rule or the range test), warm-up, schedule and final rate."""
    cfg, steps = ctx.cfg, d.steps(ctx.split)
    if ctx.is_fixed("optim.lr"):
        d.lr, d.lr_why = cfg.optim.lr, "set by you"
    elif ctx.opt.lr_method == "find" and lr_finder is not None:
        d.lr, d.lr_why = lr_finder(apply_shape(from_dict(Config, to_dict(cfg)), d))
    else:
        d.lr, d.lr_why = rule_lr(d.cand.d_model, d.batch_tokens, d.optimizer), rule_lr_why(d.optimizer)
    d.warmup = cfg.schedule.warmup_steps if ctx.is_fixed("schedule.warmup_steps") else warmup_steps(steps)
    d.schedule = cfg.schedule.kind if ctx.is_fixed("schedule.kind") else "wsd"
    d.min_lr = min(cfg.schedule.min_lr if ctx.is_fixed("schedule.min_lr") else d.lr / 20, d.lr)


def confirm_compile(ctx: PlanContext, d: Draft) -> None:
    """Time the compiled step the run will take (shape, micro-batch, optimizer, dropout) and keep
    compiling only if it measured fast enough. The compile is paid here, once: the run's own compile
    of the same graph hits the cache, so from here on the throughput is measured, not expected."""
    if not d.compile or ctx.is_fixed("runtime.compile"):
        return
    c = d.cand
    try:
        t_c = ctx.measure(c, d.micro, d.precision, compiled=True, optimizer=d.optimizer, dropout=d.dropout)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: train without it
        t_c, d.compile_why = None, f"compiling failed during planning ({type(e).__name__}); not used"
    if t_c is not None:
        cost = float(getattr(ctx.measure, "last_compile_s", 0.0) or 0.0)
        eager_s = d.micro * c.context_len / d.tps
        ok, d.compile_why = compiled_speedup_verdict(eager_s / t_c, cost, ctx.opt)
        if ctx.previous is not None:
            ok, kept = sticky(ok, ctx.previous.compile, eager_s / t_c / ctx.opt.compile_min_speedup, band=0.1)
            if kept:
                d.compile_why += f"; kept {'on' if ok else 'off'}, as the earlier plan for the same inputs"
        note_close_call(d, "compile", "on" if ok else "off", "off" if ok else "on", eager_s / t_c,
                        eager_s / t_c / ctx.opt.compile_min_speedup, d.compile_why, within=0.05)
        if ok:
            d.tps = d.micro * c.context_len / t_c
        else:
            t_c = None
    d.compile, d.speed_factor = t_c is not None, 1.0
    ctx.split.refit(ctx.elapsed(), min(ctx.split.compile_s, 3.0) if d.compile else 0.0)
    if not d.compile and d.dropout_forgone is not None:
        # The light dropout was given up for compiling's extra tokens, which did not come (tiny
        # Shakespeare, 10 minutes: 9.4 passes trained with neither).
        d.dropout, why = d.dropout_forgone
        d.dropout_why = f"{why}; kept, as compiling was measured not worth it"


def apply_shape(cfg: Config, d: Draft) -> Config:
    """The shape, batch and precision decided so far, written into `cfg`."""
    cfg.model = shape_config(cfg.model, d.cand)
    cfg.train.micro_batch_size = d.micro
    cfg.train.global_batch_tokens = d.batch_tokens
    cfg.runtime.precision = d.precision
    return cfg


def fill_config(ctx: PlanContext, d: Draft) -> Config:
    """Every decision written into the plan's config."""
    cfg, split = ctx.cfg, ctx.split
    steps = d.steps(split)
    apply_shape(cfg, d)
    cfg.model.dropout = d.dropout
    cfg.optim.lr, cfg.optim.kind = d.lr, d.optimizer
    sc = cfg.schedule
    sc.min_lr, sc.warmup_steps, sc.kind = d.min_lr, d.warmup, d.schedule
    if d.schedule == "wsd" and not ctx.is_fixed("schedule.decay_fraction"):
        sc.decay_fraction = 0.25
    if d.schedule == "wsd" and not ctx.is_fixed("schedule.decay_on_plateau"):
        # A plan that overestimates what repeated data is worth overfits at the peak rate; decaying
        # when validation stalls ends it annealed near its best (tiny Shakespeare, 20 minutes, 17
        # passes: best 2.207 bits per byte at 47% of the run, 2.281 at its end).
        sc.decay_on_plateau = 2
    tr, ev = cfg.train, cfg.eval
    # Only a cap: the clock ends the run (a machine faster than measured must not end it early).
    tr.max_steps = tr.max_steps if ctx.is_fixed("train.max_steps") else max(20 * steps, 100_000)
    cfg.runtime.compile = "on" if d.compile else "off"
    tr.time_budget_s = round(split.fit_budget_s, 1)
    tr.save_interval = 0
    if not ctx.is_fixed("eval.interval"):
        ev.interval = max(1, steps // split.n_evals) if split.n_evals > 1 else tr.max_steps
    ev.max_tokens = int(split.eval_tokens)
    if ctx.on_gpu and not ctx.is_fixed("runtime.device"):
        cfg.runtime.device = "cuda"
    cfg.validate()
    return cfg
