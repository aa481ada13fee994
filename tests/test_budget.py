"""fit_to_budget: how many steps the schedule spans under a time budget, and when the run stops."""

from __future__ import annotations

import pytest

from lmforge.trainer.budget import fit_to_budget


def test_without_a_budget_the_schedule_spans_max_steps_and_time_never_stops_the_run():
    for elapsed in (0.0, 10.0, 1e9):
        assert fit_to_budget(50, elapsed, (1, 0.5), budget_s=0.0, reserve_s=5.0, max_steps=1000) == (1000, False)


def test_before_the_rate_is_measured_the_schedule_spans_max_steps():
    # No first step yet, or no step or time since it: no rate to extrapolate from.
    assert fit_to_budget(0, 0.0, None, budget_s=60.0, reserve_s=1.0, max_steps=1000) == (1000, False)
    assert fit_to_budget(1, 2.0, (1, 2.0), budget_s=60.0, reserve_s=1.0, max_steps=1000) == (1000, False)
    assert fit_to_budget(3, 2.0, (1, 2.0), budget_s=60.0, reserve_s=1.0, max_steps=1000) == (1000, False)
    # ... but a budget already spent stops the run even then.
    assert fit_to_budget(1, 61.0, None, budget_s=60.0, reserve_s=0.0, max_steps=1000) == (1000, True)


def test_the_rate_since_the_first_step_sets_the_schedule_length():
    # First step done at 1.0 s; 10 more steps in 1.0 s: 10 steps/s. 60 s budget, 1 s kept for the
    # final evaluation: 57 s left at 11 steps -> 11 + 570.
    assert fit_to_budget(11, 2.0, (1, 1.0), budget_s=60.0, reserve_s=1.0, max_steps=10_000) == (581, False)
    # The one-off cost of the first step (here 1 s) is not in the rate: a later, steadier estimate
    # moves the length only by what the rate does.
    assert fit_to_budget(21, 3.0, (1, 1.0), budget_s=60.0, reserve_s=1.0, max_steps=10_000) == (581, False)
    # Half the speed: half the steps that still fit.
    assert fit_to_budget(11, 3.0, (1, 1.0), budget_s=60.0, reserve_s=1.0, max_steps=10_000) == (11 + 280, False)


def test_stops_when_only_the_reserve_is_left():
    assert fit_to_budget(100, 54.9, (1, 1.0), budget_s=60.0, reserve_s=5.0, max_steps=10_000)[1] is False
    total, stop = fit_to_budget(100, 55.0, (1, 1.0), budget_s=60.0, reserve_s=5.0, max_steps=10_000)
    assert stop and total == 101
    assert fit_to_budget(100, 70.0, (1, 1.0), budget_s=60.0, reserve_s=5.0, max_steps=10_000) == (101, True)


def test_never_shrinks_below_the_next_step():
    # A slow rate (1 step in 10 s) with 1 s left would fit no further step.
    assert fit_to_budget(5, 58.0, (4, 48.0), budget_s=60.0, reserve_s=1.0, max_steps=1000) == (6, False)


def test_capped_at_max_steps():
    assert fit_to_budget(11, 2.0, (1, 1.0), budget_s=3600.0, reserve_s=0.0, max_steps=200) == (200, False)


@pytest.mark.parametrize("step", [2, 10, 50, 99])
def test_the_schedule_always_spans_past_the_current_step(step):
    total, _ = fit_to_budget(step, step * 0.5, (1, 0.5), budget_s=30.0, reserve_s=2.0, max_steps=100)
    assert step + 1 <= total <= 100
