"""Fit the model and its training to the hardware and a time budget: `make_plan`, and the plan it
returns (a config, a table with a reason per choice, JSON and YAML in the run folder).

Given the prepared data, the hardware and a wall-clock budget, `make_plan` chooses the model shape
(width, depth, heads, context), the batch (micro-batch, accumulation, global batch), the optimizer
and its schedule (learning rate, warm-up, decay, steps), dropout, precision, compilation and
evaluation, so that the run ends within the budget at the best expected validation loss. It runs
the phases of `phases` in order:

  provisional settings -> shape search -> precision at the shape -> micro-batch -> time split
  -> optimizer and dropout -> global batch -> schedule -> compiled step -> the config

How each choice is made is documented where it is made: the time split in `timesplit`, model
arithmetic in `arithmetic`, the quality rule in `scaling`, the shape search in `candidates`, and
each setting's rule in `choices`. The decision logic takes the step-time measurer and the hardware
as arguments, so it can be tested with fakes; `timer.LMStepTimer` is the real measurer. Decisions
that a small change in a measurement could have tipped are listed as close calls, with the
measurement that decided them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.auto import phases
from lmforge.auto.candidates import CONTEXTS, context_cap
from lmforge.auto.choices import SCHEDULE_WHY
from lmforge.auto.hardware import Hardware
from lmforge.auto.hysteresis import PreviousPlan, plan_inputs
from lmforge.auto.inputs import DataFacts, PlanOptions, StepMeasurer
from lmforge.auto.scaling import predicted_loss
from lmforge.config import Config, to_dict
from lmforge.durations import fmt_duration


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
    close_calls: list[dict] = field(default_factory=list)  # decisions a small change in a measurement could tip
    inputs: dict = field(default_factory=dict)  # what the plan was made for (see hysteresis)

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

        t = Table(title="measured shapes (lowest predicted loss first; * chosen)")
        for col in ("shape", "parameters", "tokens/s", "tokens in budget", "tokens/param", "predicted loss"):
            t.add_column(col, justify="right" if col != "shape" else "left")
        m = self.config.model
        for c in self.candidates:
            if c.get("measured"):
                chosen = (c["n_layer"], c["d_model"], c["context_len"]) == (m.n_layer, m.d_model, m.context_len)
                t.add_row(("* " if chosen else "") + c["name"], f"{c['params']:,}", f"{c['tokens_per_s']:,.0f}",
                          f"{c['tokens']:,.0f}", f"{c['tokens'] / c['params']:.1f}", f"{c['score']:.4f}")
        return t

    def close_call_lines(self) -> list[str]:
        """One line per close call: what was chosen over what, and the measurement that decided."""
        return [f"close call: {c['decision']}: chose {c['chose']} over {c['over']}; {c['measurement']}"
                for c in self.close_calls]

    def to_dict(self) -> dict:
        return {"budget_s": self.budget_s, "time": self.time, "estimates": self.estimates,
                "rows": [list(r) for r in self.rows], "candidates": self.candidates, "hardware": self.hardware,
                "final_reserve_s": self.final_reserve_s, "close_calls": self.close_calls, "inputs": self.inputs,
                "config": to_dict(self.config)}

    def save(self, run_dir: str | Path) -> Path:
        from lmforge.atomic import atomic_write_json
        from lmforge.config import save_config

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "plan.json", self.to_dict())
        save_config(self.config, run_dir / "plan.yaml")
        return run_dir / "plan.json"


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
    previous: PreviousPlan | None = None,
) -> Plan:
    """Choose the run's settings. `spent_s`: budget already used (start-up, data preparation).

    `fixed` names config fields ('model.d_model', 'optim.lr', ...) the user set; they are kept.
    `measure` times a training step; `lr_finder(cfg) -> (lr, reason)` is used when
    options.lr_method is 'find'. `set_threads(n)` (CPU) lets the planner compare a training step on
    all cores with one on a single core: when other programs keep the cores busy, threads that wait
    for each other can make a step several times slower than one thread alone. `previous`: an
    earlier plan for the same inputs (hysteresis.load_previous), whose decisions near a threshold
    are kept.
    """
    ctx, d = phases.begin(cfg, data, hw, budget_s, measure, spent_s=spent_s, fixed=fixed,
                          opt=options or PlanOptions(), clock=clock, set_threads=set_threads,
                          spent_detail=spent_detail, previous=previous)
    phases.provisional_settings(ctx, d)
    phases.search_shapes(ctx, d)
    phases.confirm_precision(ctx, d)
    phases.choose_micro_batch(ctx, d)
    phases.split_time(ctx, d)
    phases.regularise(ctx, d)
    phases.choose_global_batch(ctx, d)
    phases.choose_schedule(ctx, d, lr_finder)
    phases.confirm_compile(ctx, d)
    config = phases.fill_config(ctx, d)
    return Plan(config=config, rows=plan_rows(ctx, d), budget_s=budget_s, time=ctx.split.to_dict(),
                estimates=plan_estimates(ctx, d), candidates=[s.to_dict() for s in d.ranked],
                hardware=hw.to_dict(), final_reserve_s=ctx.split.final_reserve_s, close_calls=d.close_calls,
                inputs=plan_inputs(budget_s, hw.to_dict(), ctx.fixed, asdict(data)))


def plan_estimates(ctx: phases.PlanContext, d: phases.Draft) -> dict[str, Any]:
    tokens, block = d.tokens(ctx.split), d.best.block_params
    return {"params": d.best.params, "block_params": block, "tokens_per_s": round(d.tps_eff),
            "train_tokens": int(tokens), "steps": d.steps(ctx.split), "epochs": round(tokens / ctx.unique_tokens, 3),
            "tokens_per_param": round(tokens / max(1, block), 2),
            # The rule's loss for the tokens the run is planned to train on (the ranking's score was
            # for the expected speed before compilation was confirmed).
            "predicted_loss_rel": predicted_loss(block, tokens, ctx.unique_tokens, ctx.opt),
            "shape_decided_for_s": round(d.search.decision_s, 1),
            "measured_shapes": len(d.search.speeds.measured), "threads": d.threads, "micro_knee": d.knee}


def plan_rows(ctx: phases.PlanContext, d: phases.Draft) -> list[tuple[str, str, str]]:
    """The plan table: (setting, value, why) for every choice."""
    hw, data, split, cfg, c = ctx.hw, ctx.data, ctx.split, ctx.cfg, d.cand
    tokens, block, steps = d.tokens(split), d.best.block_params, d.steps(split)
    budget_line = ", ".join(f"{k.replace('_', ' ')} {v:.0f}s" for k, v in split.to_dict().items()
                            if k != "spent_before_planning" and v >= 0.5)
    fixed = ctx.is_fixed
    cap = context_cap(ctx.unique_tokens)
    context_why = "set by you" if fixed("model.context_len") else (
        "longest power of two whose attention costs at most an eighth of the weight FLOPs (on tiny "
        "Shakespeare at 100 s, 128 characters beat 64 and 256)"
        + (f" (capped at {cap} by the corpus size)" if c.context_len == cap and cap < CONTEXTS[-1] else ""))
    throughput_why = "measured (minimum of repeats)" + (
        f", x{d.compile_speedup:.1f} expected from compiling" if d.compile and d.speed_factor != 1.0
        else ", compiled" if d.compile else "")
    return [
        ("hardware", f"{hw.device}, {hw.cores} cores", hw.describe()),
        ("corpus", f"{data.train_tokens:,} tokens",
         f"{data.bytes_per_token:.2f} bytes per token, vocabulary {ctx.vocab:,}"),
        ("budget", fmt_duration(split.budget_s), budget_line),
        ("model", f"{c.n_layer} layers x {c.d_model}, {c.n_head} heads", model_reason(ctx, d)),
        ("parameters", f"{d.best.params:,}", f"{block:,} in the blocks; trained on ~{tokens:,.0f} tokens = "
                                             f"{tokens / max(1, block):.1f} tokens per block parameter"),
        ("context", f"{c.context_len} tokens", context_why),
        ("precision", d.precision, d.precision_why),
        *([("threads", str(d.threads), d.threads_why)] if d.threads_why else []),
        ("compile", "on" if d.compile else "off", d.compile_why),
        ("micro-batch", f"{d.micro} sequences", d.micro_why),
        ("global batch", f"{d.batch_tokens:,} tokens ({d.seqs} x {c.context_len}), accumulation {d.seqs // d.micro}",
         d.batch_why),
        ("throughput", f"{d.tps_eff:,.0f} tokens/s", throughput_why),
        ("steps", f"~{steps:,}", f"what fits in {split.train_s:.0f}s of training; the run stops at the time budget "
                                 f"(max_steps {cfg.train.max_steps:,} is only a cap) and fits the schedule to the "
                                 "steps done"),
        ("optimizer", d.optimizer, d.optimizer_why),
        ("learning rate", f"{d.lr:.2e} -> {d.min_lr:.2e}", d.lr_why),
        ("schedule", f"{d.schedule}, warm-up {d.warmup}", "set by you" if fixed("schedule.kind") else SCHEDULE_WHY),
        ("dropout", f"{d.dropout:g}", d.dropout_why),
        ("evaluation", f"every {cfg.eval.interval} steps, {cfg.eval.max_tokens:,} tokens",
         f"{split.n_evals} evaluations of ~{split.eval_s:.1f}s each: about {100 * ctx.opt.eval_fraction:.0f}% of the "
         f"training time; {split.eval_tokens_why}"),
        ("time budget", f"{cfg.train.time_budget_s:.0f}s of training",
         f"stops, evaluates and saves in time to end within {fmt_duration(split.budget_s)} overall"),
    ]


def model_reason(ctx: phases.PlanContext, d: phases.Draft) -> str:
    if {"model.d_model", "model.n_layer"} <= ctx.fixed:
        return "set by you"
    n_measured = sum(1 for s in d.ranked if s.measured)
    lowest = next((s for s in d.ranked if s.measured), d.best)
    runner = next((s for s in d.ranked if s.measured and s.cand != d.cand), None)
    how = (f"(Chinchilla's fit with the measured speed, repeats discounted; at least {ctx.opt.min_tokens_per_param:g} "
           f"tokens per block parameter where possible) among {len(d.ranked)} shapes, {n_measured} timed here")
    if lowest is d.best:
        text = f"lowest predicted loss {how}"
        if runner is not None:
            text += f"; runner-up {runner.cand.n_layer}L x {runner.cand.d_model}"
    else:
        gap = 100 * (d.best.score / lowest.score - 1)
        text = (f"predicted loss within {gap:.1f}% of the lowest ({lowest.cand.n_layer}L x {lowest.cand.d_model}) "
                f"{how}; " + ("kept from the earlier plan for the same inputs" if any(
                    "earlier plan" in c["measurement"] for c in d.close_calls if c["decision"] == "model")
                    else f"the cheapest shape of a near tie (the same cell of a {100 * ctx.opt.tie_fraction:g}% grid)"))
    return (text + f"; decided for {d.search.decision_s:.0f}s of training, the time rounded down to a ladder of 9% "
            "steps climbed from a few seconds (no rung takes a smaller shape than the one below: more time never "
            "gets a smaller model)")
