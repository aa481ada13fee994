"""Fitting a run to a wall-clock budget: how many steps the learning-rate schedule should span.

Under a time budget the schedule decays over the steps that fit in it, so the run ends annealed
rather than cut off at a high learning rate. The rate is measured after the first step, which
carries one-off costs (compilation, allocator warm-up).
"""

from __future__ import annotations


def fit_to_budget(step: int, elapsed_s: float, first: tuple[int, float] | None, budget_s: float,
                  reserve_s: float, max_steps: int) -> tuple[int, bool]:
    """(steps the schedule should span, whether to stop now) after `step` steps and `elapsed_s` seconds.

    `first` is (step, elapsed) after the run's first step, the start of the measured rate;
    `reserve_s` is kept for what must still happen (the final evaluation). Without a budget
    (budget_s <= 0) the schedule spans max_steps and time never stops the run.
    """
    if budget_s <= 0:
        return max_steps, False
    left = budget_s - elapsed_s - reserve_s
    over = left <= 0
    if first is None or step <= first[0] or elapsed_s <= first[1]:
        return max_steps, over
    rate = (step - first[0]) / (elapsed_s - first[1])
    reachable = step + max(0.0, left) * rate
    return max(step + 1, min(max_steps, int(reachable))), over
