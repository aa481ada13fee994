"""Fit the model and its training to the hardware and a time budget.

Given the prepared data, the hardware and a wall-clock budget, `make_plan` chooses the model shape
(width, depth, heads, context), the batch (micro-batch, accumulation, global batch), the optimizer
schedule (learning rate, warm-up, decay, steps), dropout, precision, compilation and evaluation, so
that the run ends within the budget at the best expected validation loss. Every choice comes with
its reason, printed as a table and saved in the run folder.

How the choice is made:

* Time. The budget is split into what was already spent (start-up, data preparation), planning
  (probes and step timings, at most about 8%), compilation (when chosen), evaluations during
  training (about 5%), the final evaluation, save and samples, and the rest: training time.
* Speed is measured, not assumed: the real training step (forward, backward, optimizer) of
  candidate shapes is timed on this machine, the minimum of a few repeats so that noise from other
  programs does not count. Shapes not measured are estimated from the nearest measured one,
  scaled by FLOPs; the search measures the best-ranked shapes until the top ones are all measured.
* Quality is predicted with a compute-optimal scaling rule, Chinchilla's parametric fit
  (Hoffmann et al. 2022, approach 3): loss = E + 406.4/N^0.34 + 410.7/D^0.28 (N parameters, D
  training tokens). N counts the transformer blocks only, as Kaplan et al. do: with a large
  vocabulary the embedding would make a narrow model look big (BPE runs here agree). Its compute-optimal ratio of tokens to parameters grows slowly with compute
  (as compute^0.1): tens of tokens per parameter at large-model scale (the well-known "about 20"),
  about 8 for a CPU budget of minutes. Short runs on a 2-core CPU put the best ratio between about
  1 and 8, so the rule is only roughly right there (tiny Shakespeare, 100 s, characters: 2 layers
  x 128 at 8 tokens per parameter beat 4 x 128 at 2 and 3 x 64 at 25), and shapes below
  `min_tokens_per_param` rank after the rest. Because speed is measured, a small
  model that runs no faster than a larger one (common on CPUs, where small matrices waste the
  cores) is not chosen just for its size.
* The corpus caps the data: repeated tokens are worth less than fresh ones (the effective data
  saturates after about 15 passes, after Muennighoff et al. 2023), and parameters beyond what the
  unique tokens can feed saturate likewise. So many passes over a small corpus call for a smaller
  model, and the plan adds dropout.

The decision logic takes the step-time measurer and the hardware as arguments, so it can be tested
with fakes; `LMStepTimer` is the real measurer.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from lmforge.auto.hardware import Hardware
from lmforge.durations import fmt_duration
from lmforge.config import Config, ModelConfig, from_dict, to_dict
from lmforge.errors import ConfigError

# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    n_layer: int
    d_model: int
    n_head: int
    context_len: int

    @property
    def name(self) -> str:
        return f"{self.n_layer}L x {self.d_model} ({self.n_head} heads), context {self.context_len}"


@dataclass
class DataFacts:
    """What the planner needs to know about the prepared corpus."""

    train_tokens: int
    val_tokens: int
    vocab_size: int
    bytes_per_token: float = 1.0

    @classmethod
    def from_prepared(cls, data) -> DataFacts:
        s = data.summary
        return cls(train_tokens=int(s.get("train_tokens") or len(data.train)),
                   val_tokens=int(s.get("val_tokens") or len(data.val)),
                   vocab_size=int(data.tokenizer.vocab_size),
                   bytes_per_token=float(s.get("bytes_per_token") or 1.0))


class StepMeasurer(Protocol):
    def __call__(self, cand: Candidate, micro_batch: int, precision: str, **run: Any) -> float:
        """Seconds per training micro-step (forward, backward, optimizer) at this shape and size.

        `run` may carry the planned run's settings (compiled=True, optimizer=..., dropout=...): the
        planner then times the step the run will take. A compiled timing also records the one-off
        compile time as `last_compile_s`."""


@dataclass
class PlanOptions:
    law: tuple[float, float, float, float] = (406.4, 0.34, 410.7, 0.28)
    """Scaling rule A, alpha, B, beta of loss = E + A/N^alpha + B/D^beta (Chinchilla's approach-3 fit)."""
    repeat_saturation: float = 15.0
    """Passes over the corpus after which repeated data is nearly worthless (R_D* of Muennighoff et al.)."""
    param_saturation: float = 5.0
    """Same for parameters beyond what the unique data can feed (R_N*)."""
    planning_fraction: float = 0.08
    """Largest share of the budget spent on probes and step timings."""
    eval_fraction: float = 0.05
    """Share of the training time spent on evaluations during training."""
    max_measured: int = 8
    min_tokens_per_param: float = 5.0
    """Shapes that would train on fewer tokens per block parameter rank after all others (short runs)."""
    target_steps: int = 2000
    """Optimizer steps the batch size aims for with AdamW; fewer, larger steps waste tokens, more waste time."""
    target_steps_muon: int = 1000
    """Same with Muon, which keeps its sample efficiency at larger batches and costs more per step."""
    muon_max_epochs: float = 16.0
    """Above this many passes over the corpus the plan uses AdamW: Muon fits faster and so may overfit
    sooner. (Tiny Shakespeare, 8 passes, 2-minute auto runs: Muon 2.125, AdamW 2.137 bits per byte.)"""
    min_batch_tokens: int = 512
    """Smallest global batch the planner chooses (in tokens)."""
    measure_tokens: int = 0
    """Tokens per micro-step when timing candidates; 0: 4096 on CPU, 32768 on GPU."""
    compile_cost_s: float = 0.0
    """Expected one-off compile time; 0: 35 s on CPU (a first compile on 2 cores, measured 33 s for
    3 layers x 96; a cached one takes about 4 s), 60 s on GPU. When compiling is planned, the chosen
    step is compiled and timed during planning, and the plan uses what was measured."""
    compile_speedup: float = 0.0
    """Expected speed-up of a compiled step; 0: 1.6 on CPU, 1.5 on GPU (small CPU models are bound by
    per-operation overhead, which compiling fuses away: 1.8x measured at 2 layers x 128)."""
    compile_min_speedup: float = 1.15
    """A measured compiled step must be at least this much faster, or the plan does not compile."""
    optimizer: str = "muon"
    """Optimizer of the planned run: 'muon' (Muon for hidden matrices, AdamW for the rest) or 'adamw'."""
    lr_method: str = "rule"
    """'rule' (a width- and batch-scaled rule) or 'find' (the LR range test; see lr_finder)."""
    safety_fraction: float = 0.02
    """Share of the budget kept free for what is not estimated."""


@dataclass
class Plan:
    config: Config
    rows: list[tuple[str, str, str]]  # (setting, value, reason)
    budget_s: float
    time: dict[str, float]  # where the budget goes
    estimates: dict[str, Any]
    candidates: list[dict]
    hardware: dict
    final_reserve_s: float  # kept after training (which ends with its final evaluation) for the save and samples

    def table(self):
        from rich.table import Table

        t = Table(title=f"lmforge plan for a budget of {fmt_duration(self.budget_s)}", show_lines=False)
        t.add_column("setting", style="bold")
        t.add_column("value")
        t.add_column("why")
        for k, v, why in self.rows:
            t.add_row(k, v, why)
        return t

    def candidates_table(self):
        from rich.table import Table

        t = Table(title="measured shapes (best first)")
        for col in ("shape", "parameters", "tokens/s", "tokens in budget", "tokens/param", "predicted loss"):
            t.add_column(col, justify="right" if col != "shape" else "left")
        for c in self.candidates:
            if c.get("measured"):
                t.add_row(c["name"], f"{c['params']:,}", f"{c['tokens_per_s']:,.0f}", f"{c['tokens']:,.0f}",
                          f"{c['tokens'] / c['params']:.1f}", f"{c['score']:.4f}")
        return t

    def to_dict(self) -> dict:
        return {"budget_s": self.budget_s, "time": self.time, "estimates": self.estimates,
                "rows": [list(r) for r in self.rows], "candidates": self.candidates, "hardware": self.hardware,
                "final_reserve_s": self.final_reserve_s, "config": to_dict(self.config)}

    def save(self, run_dir: str | Path) -> Path:
        from lmforge.config import save_config
        from lmforge.atomic import atomic_write_json

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "plan.json", self.to_dict())
        save_config(self.config, run_dir / "plan.yaml")
        return run_dir / "plan.json"


# --- model arithmetic -------------------------------------------------------------------------

LOOP_EFFICIENCY = 0.85  # measured throughput of the training loop relative to the timed step
WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
DEPTHS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
CONTEXTS = (64, 128, 256, 512, 1024, 2048)


def _ff(d: int) -> int:
    from lmforge.config import swiglu_hidden

    return swiglu_hidden(d)


def block_params(c: Candidate) -> int:
    """Parameters in the transformer blocks (attention, MLP, norms), embeddings excluded."""
    d = c.d_model
    return c.n_layer * (4 * d * d + 3 * d * _ff(d) + 2 * d)


def total_params(c: Candidate, vocab: int, tied: bool = True) -> int:
    return block_params(c) + vocab * c.d_model * (1 if tied else 2) + c.d_model


def flops_per_token(c: Candidate, vocab: int) -> float:
    """Training FLOPs per token: 6 per weight used (including the output layer) plus attention."""
    return 6 * (block_params(c) + vocab * c.d_model) + 6 * c.n_layer * c.d_model * c.context_len


def head_count(d_model: int) -> int:
    head_dim = 32 if d_model <= 256 else 64
    return max(1, d_model // head_dim)


def default_context(d_model: int, n_layer: int, vocab: int, cap: int) -> int:
    """Longest power-of-two context whose attention costs at most an eighth of the weight FLOPs.

    A longer context lowers the loss (more to condition on) and costs little until attention,
    whose cost per token grows with the context, dominates the step.
    """
    c = Candidate(n_layer, d_model, head_count(d_model), 64)
    weights = 6 * (block_params(c) + vocab * d_model)
    best = CONTEXTS[0]
    for T in CONTEXTS:
        if T <= cap and 6 * n_layer * d_model * T <= 0.125 * weights:
            best = T
    return best


def activation_bytes(c: Candidate, micro_batch: int) -> float:
    # Roughly what a block keeps for the backward pass per token (fp32): ~34 values of width d.
    return micro_batch * c.context_len * c.n_layer * c.d_model * 34 * 4


def memory_needed(c: Candidate, vocab: int, micro_batch: int) -> float:
    # Weights, gradients and two Adam moments in fp32, plus activations and the logits.
    p = total_params(c, vocab)
    return 16 * p + activation_bytes(c, micro_batch) + 3 * 4 * micro_batch * c.context_len * vocab


# --- the quality rule -------------------------------------------------------------------------


def effective_data(tokens: float, unique: float, saturation: float) -> float:
    """Tokens seen, discounted for repetition: fresh tokens count fully, repeats less and less."""
    if unique <= 0 or tokens <= unique:
        return tokens
    repeats = tokens / unique - 1
    return unique * (1 + saturation * (1 - math.exp(-repeats / saturation)))


def optimal_params_for(tokens: float, opt: PlanOptions) -> float:
    """Parameters that are compute-optimal for `tokens` under the rule (where dL/dlogN = dL/dlogD)."""
    A, a, B, b = opt.law
    return (a * A / (b * B) * max(tokens, 1.0) ** b) ** (1 / a)


def predicted_loss(params: float, tokens: float, unique_tokens: float, opt: PlanOptions) -> float:
    """Reducible loss A/N^alpha + B/D^beta, with repeated data discounted; only its order matters.

    When the corpus is repeated (tokens > unique_tokens), parameters beyond the compute-optimal
    size for the unique tokens also count for less and less (Muennighoff et al.'s R_N*).
    """
    A, a, B, b = opt.law
    d_eff = effective_data(tokens, unique_tokens, opt.repeat_saturation)
    n_eff = params
    if 0 < unique_tokens < tokens:
        n_eff = effective_data(params, optimal_params_for(unique_tokens, opt), opt.param_saturation)
    return A * max(n_eff, 1.0) ** -a + B * max(d_eff, 1.0) ** -b


def rule_lr(d_model: int, batch_tokens: int, optimizer: str = "adamw") -> float:
    """Peak learning rate: about 1/width (muP-like), lowered gently for small batches.

    AdamW anchors: 1e-3 at width 384 with 16k-token batches (nanoGPT's character model); on tiny
    Shakespeare at 100 s (BPE), 1.5e-3 beat 7.5e-4 and 3e-3 at width 96 with 512-token batches,
    and 2e-3 beat 1e-3 at width 128 with 1024-token batches.
    Muon (update matched to AdamW's RMS) takes about 2.5x that: on Tang poems, 2 layers x 128,
    3072-token batches, 800 steps, 8e-3 and 4e-3 gave 2.556 and 2.560 bits per byte against 2.599
    at 2e-3, while AdamW at 4e-3 diverged to 2.766.
    """
    if optimizer == "muon":
        base = min(8e-3, 1.0 / d_model)
    else:
        base = min(3e-3, 0.4 / d_model)
    return base * min(1.0, (batch_tokens / 8192) ** 0.25)


def plan_optimizer(cfg: Config, fixed: set[str] | frozenset[str], opt: PlanOptions) -> tuple[str, str]:
    """The optimizer a planned run uses, and why."""
    if "optim.kind" in fixed:
        return cfg.optim.kind, "set by you"
    if opt.optimizer == "muon":
        return "muon", ("Muon for the hidden matrices, AdamW for embeddings and norms: in 2 minutes, lower loss than "
                        "AdamW (Tang poems: 2.523 against 2.571 bits per byte; tiny Shakespeare, 8 passes over the "
                        "corpus: 2.125 against 2.137)")
    return opt.optimizer, "set by the plan options"


# --- the planner ------------------------------------------------------------------------------


@dataclass
class _Scored:
    cand: Candidate
    params: int
    block_params: int
    flops: float
    tokens_per_s: float
    measured: bool
    tokens: float = 0.0
    score: float = math.inf


def _round_pow2_down(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def make_plan(
    cfg: Config,
    data: DataFacts,
    hw: Hardware,
    budget_s: float,
    measure: StepMeasurer,
    *,
    spent_s: float = 0.0,
    fixed: set[str] | frozenset[str] = frozenset(),
    options: PlanOptions | None = None,
    clock: Callable[[], float] = time.perf_counter,
    lr_finder: Callable[[Config], tuple[float, str]] | None = None,
    spent_detail: dict[str, float] | None = None,
    set_threads: Callable[[int], None] | None = None,
) -> Plan:
    """Choose the run's settings. `spent_s`: budget already used (start-up, data preparation).

    `fixed` names config fields ('model.d_model', 'optim.lr', ...) the user set; they are kept.
    `measure` times a training step; `lr_finder(cfg) -> (lr, reason)` is used when
    options.lr_method is 'find'. `set_threads(n)` (CPU) lets the planner compare a training step on
    all cores with one on a single core: when other programs keep the cores busy, threads that wait
    for each other can make a step several times slower than one thread alone.
    """
    opt = options or PlanOptions()
    t_start = clock()
    cfg = from_dict(Config, to_dict(cfg))  # a copy
    device = hw.device
    on_gpu = device == "cuda"
    vocab = data.vocab_size
    U = float(max(1, data.train_tokens))
    remaining = budget_s - spent_s
    if remaining <= 5:
        raise ConfigError(f"the time budget of {budget_s:.0f}s is used up before training can start "
                          f"({spent_s:.0f}s went to start-up and data preparation); give more time")
    planning_cap = max(1.0, opt.planning_fraction * budget_s - 0.5)
    safety = opt.safety_fraction * budget_s
    compile_cost = opt.compile_cost_s or (60.0 if on_gpu else 35.0)
    compile_speedup = opt.compile_speedup or (1.5 if on_gpu else 1.6)
    rows: list[tuple[str, str, str]] = []
    optimizer, optimizer_why = plan_optimizer(cfg, fixed, opt)

    def is_fixed(name: str) -> bool:
        return name in fixed

    # Training time before anything is measured; refined at the end.
    t_train_guess = max(1.0, remaining - planning_cap - safety) * (1 - opt.eval_fraction) * 0.97

    # Precision to time candidates in.
    if is_fixed("runtime.precision") and cfg.runtime.precision != "auto":
        precision = cfg.runtime.precision
        precision_why = "set by you"
    elif on_gpu:
        precision = "bf16" if hw.fast_bf16 else "fp16"
        precision_why = "GPU supports bf16" if hw.fast_bf16 else "GPU lacks bf16: fp16 with loss scaling"
    elif hw.fast_bf16 and hw.bf16_speedup >= 1.5:
        precision = "bf16"
        precision_why = f"matmuls measured {hw.bf16_speedup:.1f}x faster in bf16 than fp32"
    else:
        precision = "fp32"
        precision_why = ("CPU has no AMX/AVX512-BF16" if not hw.fast_bf16
                         else f"bf16 matmuls measured only {hw.bf16_speedup:.1f}x the speed of fp32")

    # Compilation: pays when the time it saves exceeds its one-off cost by a margin.
    if is_fixed("runtime.compile") and cfg.runtime.compile != "auto":
        compile_model = cfg.runtime.compile == "on"
        compile_why = "set by you"
    elif not hw.compile_ok:
        compile_model, compile_why = False, f"torch.compile unavailable: {hw.compile_why}"
    else:
        saved = t_train_guess * (1 - 1 / compile_speedup)
        compile_model = saved > 1.5 * compile_cost
        compile_why = (f"saves about {saved:.0f}s of {t_train_guess:.0f}s training (expected {compile_speedup:.1f}x "
                       f"faster steps) for a one-off cost of about {compile_cost:.0f}s")
        if not compile_model:
            compile_why = "not worth it: " + compile_why
    speed_factor = compile_speedup if compile_model else 1.0
    t_compile = compile_cost if compile_model else 0.0

    # Candidate shapes, restricted by what the user fixed.
    measure_tokens = opt.measure_tokens or (32768 if on_gpu else 4096)
    widths = [cfg.model.d_model] if is_fixed("model.d_model") else list(WIDTHS)
    cands: list[Candidate] = []
    ctx_cap = max(64, min(CONTEXTS[-1], _round_pow2_down(U / 16)))
    for d in widths:
        depths = [cfg.model.n_layer] if is_fixed("model.n_layer") else [L for L in DEPTHS if 16 <= d / L <= 128]
        for L in depths:
            h = cfg.model.n_head if is_fixed("model.n_head") else head_count(d)
            if d % h or (d // h) % 2:
                continue
            T = cfg.model.context_len if is_fixed("model.context_len") else default_context(d, L, vocab, ctx_cap)
            c = Candidate(L, d, h, T)
            mb = max(1, measure_tokens // T)
            if memory_needed(c, vocab, mb) > 0.6 * hw.memory_bytes:
                continue
            cands.append(c)
    if not cands:
        raise ConfigError("no model shape fits the fixed settings and this machine's memory; "
                          "unset some model.* options or give a smaller model")

    # Throughput prior before anything is measured: a share of the measured matmul peak.
    peak = (hw.bf16_tflops if precision in ("bf16", "fp16") else hw.fp32_tflops) or 0.1
    prior_flops = peak * 1e12 * (0.3 if on_gpu else 0.2)
    measured: dict[Candidate, float] = {}  # tokens/s
    failed: set[Candidate] = set()

    def tokens_per_s(c: Candidate) -> tuple[float, bool]:
        if c in measured:
            return measured[c], True
        if not measured:
            return prior_flops / flops_per_token(c, vocab), False

        # Nearest measured shape (log width, log depth, log context), scaled by FLOPs per token.
        def dist(m: Candidate) -> float:
            return (abs(math.log(m.d_model / c.d_model)) + abs(math.log(m.n_layer / c.n_layer))
                    + 0.5 * abs(math.log(m.context_len / c.context_len)))

        m = min(measured, key=dist)
        return measured[m] * flops_per_token(m, vocab) / flops_per_token(c, vocab), False

    t_train_for_rank = max(1.0, t_train_guess - t_compile)

    def rank() -> list[_Scored]:
        out = []
        for c in cands:
            if c in failed:
                continue
            tps, is_measured = tokens_per_s(c)
            tps *= speed_factor * LOOP_EFFICIENCY
            s = _Scored(c, total_params(c, vocab), block_params(c), flops_per_token(c, vocab), tps, is_measured)
            s.tokens = tps * t_train_for_rank
            # Fewer than a few dozen steps' worth of tokens is not a training run.
            s.score = predicted_loss(s.block_params, s.tokens, U, opt) if s.tokens >= 32 * c.context_len else math.inf
            out.append(s)
        # At CPU-minute scale the fit favours models too large for the tokens they get: Tang poems,
        # 2 minutes, 2L x 128 at about 6 tokens per block parameter reached 2.615 bits per byte
        # against 2.78-2.80 for 3-4 layers at 1.5-2.3. Shapes below the floor rank after the rest.
        out.sort(key=lambda s: (s.tokens < opt.min_tokens_per_param * s.block_params, s.score))
        return out

    def timed(c: Candidate, mb: int, prec: str) -> float | None:
        try:
            return measure(c, mb, prec)
        except Exception as e:  # noqa: BLE001 - a shape that cannot run is just not a candidate
            from lmforge.trainer.step import is_oom_error

            if is_oom_error(e):
                return None
            raise

    n_measure_calls = 0
    threads, threads_why = hw.threads, None
    while len(measured) < opt.max_measured:
        ranked = rank()
        todo = [s.cand for s in ranked[:3] if not s.measured and math.isfinite(s.score)]
        if not todo:
            break
        if measured and clock() - t_start > planning_cap:
            break
        c = todo[0]
        mb = max(1, measure_tokens // c.context_len)
        if threads_why is None and set_threads is not None and hw.device == "cpu" and hw.threads > 1:
            # One thread first: it is the robust one when other programs share the cores.
            set_threads(1)
            one = timed(c, mb, precision)
            set_threads(hw.threads)
            seconds = timed(c, mb, precision)
            # The slowest of the repeats tells whether other programs are taking cores away: threads
            # that wait for each other then stall (up to tens of times slower), one thread does not.
            worst = getattr(measure, "worst_s", None) or seconds
            if one is not None and (seconds is None or one < 0.85 * seconds or worst > 1.3 * one):
                threads = 1
                set_threads(1)
                if seconds is None:
                    threads_why = "all threads failed to run"
                elif one < 0.85 * seconds:
                    threads_why = (f"a training step measured {seconds / one:.1f}x faster on one thread than on "
                                   f"{hw.threads}: other programs are using the cores")
                else:
                    threads_why = (f"{hw.threads} threads were {one / seconds:.1f}x faster at best, but their slowest "
                                   f"step took {worst / one:.1f}x a one-thread step: other programs are using the "
                                   "cores, and there one thread is the robust choice")
                threads_why += " (applies to this process; set OMP_NUM_THREADS=1 for a later run)"
                seconds = one
            else:
                threads_why = "all cores: " + (f"one thread measured {seconds / one:.2f}x as fast" if one
                                               else "one thread failed")
        else:
            seconds = timed(c, mb, precision)
        n_measure_calls += 1
        if seconds is None or seconds <= 0:
            failed.add(c)
            continue
        measured[c] = mb * c.context_len / seconds
    ranked = [s for s in rank() if math.isfinite(s.score)]
    if not ranked:
        raise ConfigError(f"no model shape trains for a useful number of steps in {budget_s:.0f}s on this machine; "
                          "give more time")
    best = ranked[0]
    if not best.measured:  # planning time ran out before it was measured: take the best measured one
        measured_ranked = [s for s in ranked if s.measured]
        best = measured_ranked[0] if measured_ranked else best
    c = best.cand

    # Precision check on the chosen shape: bf16 must pay at this shape, not just in a matmul.
    over_cap = clock() - t_start > planning_cap
    if (not on_gpu and precision == "bf16" and not is_fixed("runtime.precision") and best.measured
            and not over_cap):
        mb = max(1, measure_tokens // c.context_len)
        t32 = timed(c, mb, "fp32")
        t16 = mb * c.context_len / measured[c]
        if t32 is not None:
            speedup = t32 / t16
            if speedup < 1.05:
                precision = "fp32"
                precision_why = f"measured a training step at this shape only {speedup:.2f}x faster in bf16"
                measured[c] = mb * c.context_len / t32
            else:
                precision_why = f"measured a training step at this shape {speedup:.2f}x faster than in fp32"

    # Micro-batch: the knee of the throughput curve (CPU) or the largest that fits (GPU).
    from lmforge.auto.batch_size import find_micro_batch

    if is_fixed("train.micro_batch_size") and cfg.train.micro_batch_size:
        micro = cfg.train.micro_batch_size
        micro_why = "set by you"
        tps = measured.get(c, best.tokens_per_s / speed_factor / LOOP_EFFICIENCY)
    elif c in measured and clock() - t_start > planning_cap:
        micro = max(1, measure_tokens // c.context_len)
        micro_why = f"the size it was timed at ({micro * c.context_len:,} tokens); no planning time left to try others"
        tps = measured[c]
    else:
        base_mb = max(1, measure_tokens // c.context_len)
        cache = {base_mb: base_mb * c.context_len / measured[c]} if c in measured else {}

        def step_time(b: int) -> float:
            if b not in cache:
                t = measure(c, b, precision)
                cache[b] = t
            return cache[b]

        # CPU: the curve around the timing size (half, same, double) is enough to place the knee and
        # keeps planning short; GPU: double until memory runs out.
        start = max(1, base_mb // 2) if not on_gpu else base_mb
        max_mb = max(start, _round_pow2_down(262144 // c.context_len)) if on_gpu else 2 * base_mb
        found = find_micro_batch(step_time, max_mb, device, start=start,
                                 max_seconds_per_try=max(0.5, 0.01 * budget_s))
        micro = found.micro_batch_size
        micro_why = found.reason
        tps = micro * c.context_len / step_time(micro)
    # The loop does more than the timed step (batches, logging, the clock) and the machine is
    # rarely as quiet as during the best of a few timings.
    tps_eff = tps * speed_factor * LOOP_EFFICIENCY

    planning_s = clock() - t_start

    # Evaluation: a few evaluations during training for about eval_fraction of the training time.
    T = c.context_len
    fwd_tps = 3 * tps_eff  # a forward pass is about a third of a training step
    user_eval_tokens = cfg.eval.max_tokens
    rough_train = max(1.0, remaining - planning_s - t_compile - safety)
    if is_fixed("eval.max_tokens"):
        eval_tokens = min(user_eval_tokens, data.val_tokens)
        eval_tokens_why = "set by you"
    else:
        cap = int(0.02 * rough_train * fwd_tps)
        eval_tokens = max(16 * T, min(data.val_tokens, user_eval_tokens, cap))
        eval_tokens_why = ("the whole validation split" if eval_tokens >= data.val_tokens
                           else "as many validation tokens as 2% of the training time allows")
    eval_s = eval_tokens / fwd_tps + 0.05
    # Including the final one; at least two, so the loop has timed an evaluation before it keeps time
    # for the final one.
    n_evals = int(min(10, max(2, opt.eval_fraction * rough_train / eval_s)))
    # Samples are generated after training only while time is left (see run.auto_train); this
    # keeps room for a short one, plus the plot, the result file and the process exit.
    decode_s = min(5.0, 0.01 * budget_s, (0.001 + 0.0004 * c.n_layer) * cfg.sample.num_samples * cfg.sample.max_new_tokens)
    final_reserve = decode_s + 2.0 + (0.5 if on_gpu else 0.0)
    t_evals = n_evals * eval_s  # the training budget ends with its final evaluation (the loop keeps time for it)

    def training_time(planning_s: float, t_compile: float) -> tuple[float, float]:
        """(the run's time budget, the part of it spent on training steps)."""
        fit_budget = remaining - planning_s - final_reserve - safety
        if fit_budget < 5:
            raise ConfigError(f"only {fit_budget:.0f}s would be left for training in a budget of {budget_s:.0f}s; "
                              "give more time")
        return fit_budget, max(1.0, fit_budget - t_compile - t_evals)

    fit_budget, t_train = training_time(planning_s, t_compile)
    tokens = tps_eff * t_train

    # Passes over the corpus an uncompiled run would make: they decide the optimizer and dropout.
    epochs_eager = tps * LOOP_EFFICIENCY * (t_train + t_compile) / U

    # Optimizer: Muon trains faster per step, but on a small corpus seen many times it overfits sooner.
    if optimizer == "muon" and not is_fixed("optim.kind") and epochs_eager > opt.muon_max_epochs:
        optimizer = "adamw"
        optimizer_why = (f"{epochs_eager:.0f} passes over the corpus: AdamW, which fits more slowly than Muon and "
                         f"so overfits later (Muon is used up to {opt.muon_max_epochs:g} passes)")
    target_steps = opt.target_steps_muon if optimizer == "muon" else opt.target_steps

    if is_fixed("model.dropout"):
        dropout, dropout_why = cfg.model.dropout, "set by you"
    elif epochs_eager <= 4:
        # Up to about 4 passes, repeated data is worth nearly as much as fresh (Muennighoff et al.).
        dropout, dropout_why = 0.0, f"{epochs_eager:.1f} passes over the corpus: no regularization needed"
    elif epochs_eager <= 16:
        # Tiny Shakespeare, 9 passes, 2 layers x 128, 1800 steps: dropout 0 / 0.05 / 0.1 / 0.2 gave
        # 2.141 / 2.117 / 2.148 / 2.197 bits per byte.
        dropout, dropout_why = 0.05, (f"{epochs_eager:.1f} passes over the corpus: light regularization (on tiny "
                                      "Shakespeare, 9 passes, 0.05 beat 0, 0.1 and 0.2)")
    elif epochs_eager <= 48:
        dropout, dropout_why = 0.1, f"{epochs_eager:.0f} passes over a small corpus: some overfitting to guard against"
    else:
        dropout, dropout_why = 0.2, f"{epochs_eager:.0f} passes over a small corpus: strong regularization"

    if compile_model and dropout > 0 and not on_gpu and not is_fixed("runtime.compile"):
        # Random masks are slow in compiled CPU code: on tiny Shakespeare (2 layers x 128, dropout
        # 0.1) a compiled step was only 1.16x as fast as an eager one, against 1.8x without dropout,
        # which did not repay 14 s of compiling.
        compile_model, speed_factor = False, 1.0
        compile_why = (f"not worth it with dropout {dropout:g} on a CPU: compiled random masks are slow "
                       "(measured 1.16x faster steps, against 1.8x without dropout)")
        t_compile = 0.0
        fit_budget, t_train = training_time(planning_s, t_compile)
        tps_eff = tps * LOOP_EFFICIENCY
        tokens = tps_eff * t_train

    # Global batch: about target_steps optimizer steps, at least one micro-batch per step.
    micro_tokens = micro * T
    if is_fixed("train.global_batch_tokens"):
        batch_tokens = cfg.train.global_batch_tokens
        batch_why = "set by you"
        if batch_tokens % T:
            raise ConfigError(f"train.global_batch_tokens={batch_tokens} is not a multiple of the context {T}")
        seqs = batch_tokens // T
        while seqs % micro:
            micro -= 1
    else:
        # Short runs learn more from many small steps than from few large ones (nanoGPT's baby
        # setting: 2000 steps of 768 tokens), even below the throughput knee: a micro-batch of a
        # quarter of the knee size still runs at about 80% of the speed.
        want = tokens / target_steps
        if want <= micro_tokens:
            seqs = max(opt.min_batch_tokens // T, 1, int(want // T))
            seqs = min(seqs, micro)
            micro = max(b for b in range(1, min(micro, seqs) + 1) if seqs % b == 0)
            batch_why = (f"about {target_steps} optimizer steps in the budget (many small steps beat few large "
                         f"ones in a short run), at least {opt.min_batch_tokens} tokens")
        else:
            seqs = micro * max(1, round(want / micro_tokens))
            batch_why = f"about {target_steps} optimizer steps in the budget"
    batch_tokens = seqs * T
    accum = seqs // micro
    if micro != micro_tokens // T and not (is_fixed("train.micro_batch_size") and cfg.train.micro_batch_size):
        # A micro-batch below the knee runs slower per token (small matrices): time the one the run
        # will use, or the plan promises steps the run cannot make (tiny Shakespeare, 2 minutes:
        # 2015 planned, 1341 made, before this).
        t_micro = timed(c, micro, precision)
        if t_micro:
            tps = micro * T / t_micro
            tps_eff = tps * speed_factor * LOOP_EFFICIENCY
            tokens = tps_eff * t_train
            micro_why += f"; the global batch needs {micro}, timed at {tps:,.0f} tokens/s"
    steps = max(1, int(tokens / batch_tokens))
    epochs = tokens / U

    # Schedule.
    if is_fixed("optim.lr"):
        lr, lr_why = cfg.optim.lr, "set by you"
    elif opt.lr_method == "find" and lr_finder is not None:
        probe_cfg = _apply_shape(from_dict(Config, to_dict(cfg)), c, micro, batch_tokens, precision)
        lr, lr_why = lr_finder(probe_cfg)
    else:
        lr = rule_lr(c.d_model, batch_tokens, optimizer)
        lr_why = (("about 1/width capped at 8e-3 (Muon)" if optimizer == "muon" else "about 0.4/width capped at 3e-3")
                  + ", times (batch/8192)^0.25 for batches below 8k tokens")
    warmup = cfg.schedule.warmup_steps if is_fixed("schedule.warmup_steps") else int(min(1000, max(10, 0.04 * steps)))
    schedule = cfg.schedule.kind if is_fixed("schedule.kind") else "wsd"
    min_lr = cfg.schedule.min_lr if is_fixed("schedule.min_lr") else lr / 20
    min_lr = min(min_lr, lr)
    # Compiling: time the compiled step the run will take (shape, micro-batch, optimizer, dropout).
    # The compile is paid here, once: the run's own compile of the same graph hits the cache.
    if compile_model and not is_fixed("runtime.compile"):
        try:
            t_c = measure(c, micro, precision, compiled=True, optimizer=optimizer, dropout=dropout)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: train without it
            t_c, compile_why = None, f"compiling failed during planning ({type(e).__name__}); not used"
        if t_c is not None:
            cost = float(getattr(measure, "last_compile_s", 0.0) or 0.0)
            speedup = (micro * T / tps) / t_c
            if speedup < opt.compile_min_speedup:
                t_c = None
                compile_why = (f"measured a compiled step only {speedup:.2f}x as fast as an eager one "
                               f"(compiling took {cost:.0f}s); not used")
            else:
                compile_why = f"measured a compiled step {speedup:.2f}x as fast as an eager one; compiling took {cost:.0f}s"
                tps = micro * T / t_c
        # From here on the throughput is measured, not expected; the compile was paid in planning
        # and the run's own compile re-traces from the cache.
        compile_model, speed_factor = t_c is not None, 1.0
        t_compile = min(t_compile, 3.0) if compile_model else 0.0
        tps_eff = tps * LOOP_EFFICIENCY
        planning_s = clock() - t_start
        fit_budget, t_train = training_time(planning_s, t_compile)
        tokens = tps_eff * t_train
        steps = max(1, int(tokens / batch_tokens))
        epochs = tokens / U

    # Fill in the config.
    m, tr, ev = cfg.model, cfg.train, cfg.eval
    _apply_shape(cfg, c, micro, batch_tokens, precision)
    m.dropout = dropout
    cfg.optim.lr, cfg.optim.kind = lr, optimizer
    sc = cfg.schedule
    sc.min_lr, sc.warmup_steps, sc.kind = min_lr, warmup, schedule
    if schedule == "wsd" and not is_fixed("schedule.decay_fraction"):
        sc.decay_fraction = 0.25
    # Only a cap: the clock ends the run (a machine faster than measured must not end it early).
    tr.max_steps = cfg.train.max_steps if is_fixed("train.max_steps") else max(20 * steps, 100_000)
    cfg.runtime.compile = "on" if compile_model else "off"
    tr.time_budget_s = round(fit_budget, 1)
    tr.save_interval = 0
    eval_interval = max(1, steps // n_evals) if n_evals > 1 else tr.max_steps
    ev.interval = ev.interval if is_fixed("eval.interval") else eval_interval
    ev.max_tokens = int(eval_tokens)
    if hw.device == "cuda" and not is_fixed("runtime.device"):
        cfg.runtime.device = "cuda"
    cfg.validate()

    params = total_params(c, vocab)
    time_split = {
        "spent_before_planning": round(spent_s, 2), **{k: round(v, 2) for k, v in (spent_detail or {}).items()},
        "planning": round(planning_s, 2), "compile": round(t_compile, 1), "evaluations": round(t_evals, 1),
        "training": round(t_train, 1), "save_and_samples": round(final_reserve, 1), "safety": round(safety, 1),
    }
    estimates = {"params": params, "block_params": block_params(c), "tokens_per_s": round(tps_eff),
                 "train_tokens": int(tokens), "steps": steps, "epochs": round(epochs, 3),
                 "tokens_per_param": round(tokens / max(1, block_params(c)), 2),
                 "predicted_loss_rel": best.score, "measured_shapes": len(measured), "threads": threads}
    budget_line = ", ".join(f"{k.replace('_', ' ')} {v:.0f}s" for k, v in time_split.items()
                            if k != "spent_before_planning" and v >= 0.5)
    rows += [
        ("hardware", f"{hw.device}, {hw.cores} cores", hw.describe()),
        ("corpus", f"{data.train_tokens:,} tokens", f"{data.bytes_per_token:.2f} bytes per token, vocabulary {vocab:,}"),
        ("budget", fmt_duration(budget_s), budget_line),
        ("model", f"{c.n_layer} layers x {c.d_model}, {c.n_head} heads",
         _model_reason(best, ranked, measured, opt, fixed)),
        ("parameters", f"{params:,}", f"{block_params(c):,} in the blocks; trained on ~{tokens:,.0f} tokens = "
                                      f"{tokens / max(1, block_params(c)):.1f} tokens per block parameter"),
        ("context", f"{T} tokens", "set by you" if is_fixed("model.context_len") else
         "longest power of two whose attention costs at most an eighth of the weight FLOPs (on tiny "
         "Shakespeare at 100 s, 128 characters beat 64 and 256)"
         + (f" (capped at {ctx_cap} by the corpus size)" if T == ctx_cap and ctx_cap < CONTEXTS[-1] else "")),
        ("precision", precision, precision_why),
        *([("threads", str(threads), threads_why)] if threads_why else []),
        ("compile", "on" if compile_model else "off", compile_why),
        ("micro-batch", f"{micro} sequences", micro_why),
        ("global batch", f"{batch_tokens:,} tokens ({seqs} x {T}), accumulation {accum}", batch_why),
        ("throughput", f"{tps_eff:,.0f} tokens/s", "measured (minimum of repeats)"
         + (f", x{compile_speedup:.1f} expected from compiling" if compile_model and speed_factor != 1.0
            else ", compiled" if compile_model else "")),
        ("steps", f"~{steps:,}", f"what fits in {t_train:.0f}s of training; the run stops at the time budget "
                                 f"(max_steps {tr.max_steps:,} is only a cap) and fits the schedule to the steps done"),
        ("optimizer", optimizer, optimizer_why),
        ("learning rate", f"{lr:.2e} -> {min_lr:.2e}", lr_why),
        ("schedule", f"{schedule}, warm-up {warmup}", "set by you" if is_fixed("schedule.kind") else
         "warm-up-stable-decay: the decay (last 25%) starts when the remaining time is known, so a "
         "mis-estimated step count costs nothing"),
        ("dropout", f"{dropout:g}", dropout_why),
        ("evaluation", f"every {ev.interval} steps, {ev.max_tokens:,} tokens",
         f"{n_evals} evaluations of ~{eval_s:.1f}s each: about {100 * opt.eval_fraction:.0f}% of the training time; "
         f"{eval_tokens_why}"),
        ("time budget", f"{tr.time_budget_s:.0f}s of training",
         f"stops, evaluates and saves in time to end within {fmt_duration(budget_s)} overall"),
    ]
    cand_dicts = [{"name": s.cand.name, **asdict(s.cand), "params": s.params, "block_params": s.block_params,
                   "tokens_per_s": round(s.tokens_per_s), "tokens": round(s.tokens), "measured": s.measured,
                   "score": s.score} for s in ranked]
    return Plan(config=cfg, rows=rows, budget_s=budget_s, time=time_split, estimates=estimates,
                candidates=cand_dicts, hardware=hw.to_dict(), final_reserve_s=final_reserve)


def _model_reason(best: _Scored, ranked: list[_Scored], measured: dict, opt: PlanOptions, fixed) -> str:
    if {"model.d_model", "model.n_layer"} <= set(fixed):
        return "set by you"
    n_measured = sum(1 for s in ranked if s.measured)
    runner = next((s for s in ranked[1:] if s.measured), None)
    text = (f"lowest predicted loss (Chinchilla's fit with the measured speed, repeats discounted; at least "
            f"{opt.min_tokens_per_param:g} tokens per block parameter where possible) among "
            f"{len(ranked)} shapes, {n_measured} timed here")
    if runner is not None:
        text += f"; runner-up {runner.cand.n_layer}L x {runner.cand.d_model}"
    return text


def _apply_shape(cfg: Config, c: Candidate, micro: int, batch_tokens: int, precision: str) -> Config:
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head = c.n_layer, c.d_model, c.n_head
    cfg.model.context_len = c.context_len
    if cfg.model.n_kv_head and c.n_head % cfg.model.n_kv_head:
        cfg.model.n_kv_head = 0
    cfg.train.micro_batch_size = micro
    cfg.train.global_batch_tokens = batch_tokens
    cfg.runtime.precision = precision
    return cfg


# --- tokenizer ---------------------------------------------------------------------------------


# Below this much compute (budget seconds x measured matmul TFLOP/s) a run trains small models, whose
# output layer dominates the step when the vocabulary is large. Measured on this project's 2-core CPU
# (about 1 TFLOP/s bf16) with 2-minute `--auto` runs, validation bits per byte: tiny Shakespeare BPE
# 512 / 1024 / 2048 / 4096: 2.181 / 2.157 / 2.161 / 2.212; Tang poems (Chinese) per-character
# tokens (about 7,000) 2.720 against BPE 2048 2.653 and BPE 4096 2.718.
SMALL_COMPUTE_TFLOP = 1000.0


def choose_tokenizer(sample: str, total_bytes: int, cjk_split: str,
                     compute_tflop: float | None = None) -> tuple[str, int, str]:
    """(kind, vocab_size, reason) for a corpus, from a sample of its text, its size and the compute
    the run will have (`compute_tflop`: budget x measured matmul throughput; None: unknown).

    Byte-level BPE packs several characters of English into a token, so the model reads more text
    per step. Chinese split per character gains nothing from it with a large vocabulary (the tokens
    are the characters), but a short run does better with a capped one: common characters stay one
    token, rare ones fall back to two or three byte tokens, and the output layer shrinks several
    times. Tiny corpora have too little text to learn merges from.
    """
    from lmforge.data.tokenizer import CJK_CLASS

    small = compute_tflop is not None and compute_tflop < SMALL_COMPUTE_TFLOP
    why_small = (f"; a short run (about {compute_tflop:,.0f} TFLOP of compute) trains a small model, whose output "
                 "layer a larger vocabulary would dominate") if small else ""
    if not sample:
        return "bpe", 4096, "default"
    cjk = len(re.findall(CJK_CLASS, sample)) / max(1, len(sample))
    if cjk > 0.3 and cjk_split == "char":
        if small and total_bytes >= 1_000_000:
            return "bpe", 2048, (f"{100 * cjk:.0f}% CJK characters: BPE split per character with 2048 tokens keeps "
                                 "common characters whole and spells rare ones in bytes" + why_small)
        return "char", 0, (f"{100 * cjk:.0f}% CJK characters: BPE (split per character) would give about one token "
                           "per character anyway, at the cost of training and slower encoding")
    if total_bytes < 100_000:
        return "char", 0, f"only {total_bytes / 1000:.0f} kB of text: too little to learn BPE merges from"
    vocab = 4096 if total_bytes >= 1_000_000 else max(512, 256 * round(total_bytes / 250 / 256))
    if small:
        vocab = min(vocab, 1024)
    return "bpe", vocab, (f"byte-level BPE packs several characters into a token, so each step reads more text; "
                          f"vocabulary {vocab} for {total_bytes / 1e6:.1f} MB" + why_small)


def sample_corpus(path: str | None, text_field: str, max_chars: int = 1_000_000,
                  encoding: str = "auto") -> tuple[str, int]:
    """The first `max_chars` characters of the corpus and the total size of its files in bytes."""
    from lmforge.data.readers import find_files, read_documents

    if path is None:
        return "", 0
    total = sum(f.stat().st_size for f in find_files(path))
    parts, n = [], 0
    for doc in read_documents(path, text_field=text_field, doc_split="file", encoding=encoding):
        parts.append(doc.text[: max_chars - n])
        n += len(parts[-1])
        if n >= max_chars:
            break
    return "".join(parts), total


# --- the real step-time measurer --------------------------------------------------------------


class LMStepTimer:
    """Times the real training step of a GPT shape: forward, backward, clipping and AdamW.

    The minimum over `repeats` timings after a warm-up; a shape's model is kept while its
    micro-batch sizes are tried. Slow steps are timed fewer times: repeats stop after about 3 x `slow_s`
    seconds, and a warm-up slower than 4 x `slow_s` is taken as the answer.
    """

    def __init__(self, vocab_size: int, device: str = "cpu", repeats: int = 3, slow_s: float = 0.5,
                 model: ModelConfig | None = None, seed: int = 0, optimizer: str = "adamw", grad_clip: float = 1.0):
        self.vocab = vocab_size
        self.grad_clip = grad_clip
        self.optimizer = optimizer
        self.device = device
        self.repeats = repeats
        self.slow_s = slow_s
        # The run's model config supplies the architecture choices (norm, positions, MLP, tying),
        # so the step timed is the step the run takes; each candidate sets the sizes.
        self.model = model or ModelConfig()
        self.seed = seed
        self._key: tuple | None = None
        self._model = None
        self._step_model = None
        self._opt = None
        self.calls: list[dict] = []
        self.last_compile_s = 0.0

    def _build(self, c: Candidate, optimizer: str, dropout: float, compiled: bool):
        import torch

        from lmforge.config import OptimConfig
        from lmforge.models.gpt import GPT
        from lmforge.trainer.runtime import Runtime, wrap_model
        from lmforge.trainer.optim import build_optimizer

        key = (c, optimizer, dropout, compiled)
        if self._key == key:
            return
        self._model = self._step_model = self._opt = None
        torch.manual_seed(self.seed)
        sizes = replace(self.model, n_layer=c.n_layer, n_head=c.n_head, n_kv_head=0, d_model=c.d_model, d_ff=0,
                        context_len=c.context_len, dropout=dropout)
        self._model = GPT(sizes, self.vocab).to(self.device)
        # Wrapped as the training loop wraps it, so a compiled graph here is the run's graph.
        self._step_model = wrap_model(self._model, Runtime(0, 1, 0, torch.device(self.device), "fp32"), compiled)
        self._opt = build_optimizer(self._model, OptimConfig(kind=optimizer), torch.device(self.device).type)
        self._key = key

    def __call__(self, c: Candidate, micro_batch: int, precision: str, *, compiled: bool = False,
                 optimizer: str | None = None, dropout: float = 0.0) -> float:
        import torch

        from lmforge.trainer.runtime import Runtime
        from lmforge.trainer.step import make_scaler, train_step

        self._build(c, optimizer or self.optimizer, dropout, compiled)
        model, step_model, opt = self._model, self._step_model, self._opt
        dev = torch.device(self.device)
        rt = Runtime(0, 1, 0, dev, precision)
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randint(0, self.vocab, (micro_batch, c.context_len), generator=g).to(dev)
        y = torch.randint(0, self.vocab, (micro_batch, c.context_len), generator=g).to(dev)
        scaler = make_scaler(precision)

        def step() -> None:
            # The run's own step (trainer.step), clipping as the run's optimizer section says.
            train_step(step_model, model, lambda m, batch: m(*batch), lambda _i: (x, y), 1, opt, rt,
                       self.grad_clip, scaler)

        def timed() -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        model.train()
        first = timed()  # warm-up: allocations, kernel selection, compilation
        if first > 4 * self.slow_s and not compiled:
            best = worst = first  # far too slow to matter: do not spend more time on it
        else:
            best = worst = timed()
            spent = best
            for _ in range(self.repeats - 1 + int(compiled)):  # a compiled step's first repeat may still warm up
                if spent > 3 * self.slow_s:
                    break
                t = timed()
                spent += t
                best, worst = min(best, t), max(worst, t)
        if compiled:
            self.last_compile_s = max(0.0, first - best)
        self.calls.append({"shape": c.name, "micro_batch": micro_batch, "precision": precision,
                           "compiled": compiled, "optimizer": optimizer or self.optimizer,
                           "seconds": best, "worst_s": worst, "first_s": first})
        self.worst_s = worst
        return best

    def release(self) -> None:
        self._model = self._step_model = self._opt = None
        self._key = None


# --- fields the user set ----------------------------------------------------------------------


def explicit_fields(config_path: str | Path | None, overrides: dict[str, Any]) -> set[str]:
    """Dotted names set in the YAML preset or on the command line: the planner leaves them alone."""
    import yaml

    names = set(overrides)
    if config_path:
        tree = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    names.add(f"{prefix}{k}")

        walk(tree, "")
    return names


def with_time_budget(cfg: Config, seconds: float) -> Config:
    cfg = from_dict(Config, to_dict(cfg))
    cfg.train.time_budget_s = round(max(1.0, seconds), 1)
    return cfg

