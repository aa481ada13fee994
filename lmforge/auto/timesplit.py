"""How the budget is split: what was spent before planning, planning, compilation, evaluations,
training, and what is kept for the save, the samples and a safety margin.

The budget covers the whole command. What was spent before planning (start-up, data preparation)
is gone; planning (probes and step timings) may take at most `planning_fraction` of the budget;
compilation, when chosen, and the evaluations during training (about `eval_fraction` of the training
time) are part of the run's time budget; after training come the save and the samples (generated
only while time is left), and a small margin is kept for what is not estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.auto.inputs import PlanOptions
from lmforge.errors import ConfigError


@dataclass
class TimeSplit:
    budget_s: float
    spent_s: float  # before planning began
    planning_cap_s: float
    safety_s: float
    planning_s: float = 0.0
    compile_s: float = 0.0
    eval_tokens: int = 0
    eval_tokens_why: str = ""
    eval_s: float = 0.0  # one evaluation
    n_evals: int = 0  # including the final one
    final_reserve_s: float = 0.0  # the save and samples, after the training budget
    fit_budget_s: float = 0.0  # the run's time budget (compilation, steps and evaluations)
    train_s: float = 0.0  # the part of it spent on training steps
    spent_detail: dict[str, float] = field(default_factory=dict)

    @property
    def remaining_s(self) -> float:
        return self.budget_s - self.spent_s

    @property
    def evals_s(self) -> float:
        return self.n_evals * self.eval_s

    def refit(self, planning_s: float, compile_s: float) -> None:
        """The run's time budget and its training time, once planning took `planning_s`."""
        self.planning_s, self.compile_s = planning_s, compile_s
        fit_budget = self.remaining_s - planning_s - self.final_reserve_s - self.safety_s
        if fit_budget < 5:
            raise ConfigError(f"only {fit_budget:.0f}s would be left for training in a budget of "
                              f"{self.budget_s:.0f}s; give more time")
        self.fit_budget_s = fit_budget
        self.train_s = max(1.0, fit_budget - compile_s - self.evals_s)

    def to_dict(self) -> dict[str, float]:
        return {"spent_before_planning": round(self.spent_s, 2),
                **{k: round(v, 2) for k, v in self.spent_detail.items()},
                "planning": round(self.planning_s, 2), "compile": round(self.compile_s, 1),
                "evaluations": round(self.evals_s, 1), "training": round(self.train_s, 1),
                "save_and_samples": round(self.final_reserve_s, 1), "safety": round(self.safety_s, 1)}


def start_split(budget_s: float, spent_s: float, opt: PlanOptions,
                spent_detail: dict[str, float] | None = None) -> TimeSplit:
    if budget_s - spent_s <= 5:
        raise ConfigError(f"the time budget of {budget_s:.0f}s is used up before training can start "
                          f"({spent_s:.0f}s went to start-up and data preparation); give more time")
    return TimeSplit(budget_s=budget_s, spent_s=spent_s,
                     planning_cap_s=max(1.0, opt.planning_fraction * budget_s - 0.5),
                     safety_s=opt.safety_fraction * budget_s, spent_detail=dict(spent_detail or {}))


def training_guess(split: TimeSplit, opt: PlanOptions) -> float:
    """Training time before anything is measured (refined once planning is over)."""
    return max(1.0, split.remaining_s - split.planning_cap_s - split.safety_s) * (1 - opt.eval_fraction) * 0.97


def plan_evaluations(split: TimeSplit, val_tokens: int, max_tokens: int, max_tokens_fixed: bool,
                     forward_tokens_per_s: float, context_len: int, opt: PlanOptions) -> None:
    """A few evaluations during training for about `eval_fraction` of the training time, each on as
    many validation tokens as 2% of the training time allows (the whole split when it is small)."""
    rough_train = max(1.0, split.remaining_s - split.planning_s - split.compile_s - split.safety_s)
    if max_tokens_fixed:
        split.eval_tokens, split.eval_tokens_why = min(max_tokens, val_tokens), "set by you"
    else:
        cap = int(0.02 * rough_train * forward_tokens_per_s)
        split.eval_tokens = max(16 * context_len, min(val_tokens, max_tokens, cap))
        split.eval_tokens_why = ("the whole validation split" if split.eval_tokens >= val_tokens
                                 else "as many validation tokens as 2% of the training time allows")
    split.eval_s = split.eval_tokens / forward_tokens_per_s + 0.05
    # At least two, so the loop has timed an evaluation before it keeps time for the final one.
    split.n_evals = int(min(10, max(2, opt.eval_fraction * rough_train / split.eval_s)))


def plan_final_reserve(split: TimeSplit, n_layer: int, num_samples: int, max_new_tokens: int, on_gpu: bool) -> None:
    """Samples are generated after training only while time is left (see run.auto_train); this keeps
    room for a short one, plus the plot, the result file and the process exit."""
    decode_s = min(5.0, 0.01 * split.budget_s, (0.001 + 0.0004 * n_layer) * num_samples * max_new_tokens)
    split.final_reserve_s = decode_s + 2.0 + (0.5 if on_gpu else 0.0)
