"""More time, a plan at least as good: the shape decision walks a ladder of training times, so on the
same measurements a longer budget never gets a smaller model or a higher predicted loss. And a
small change in the measured throughput does not change the chosen shape. Fake speeds, no timing."""

import functools
import json
import math

import pytest

from lmforge.auto.candidates import (LADDER_STEP, ShapeSearch, Speeds, candidate_shapes, ladder_below,
                                     ladder_floor)
from lmforge.auto.hysteresis import PreviousPlan
from lmforge.auto.inputs import PlanOptions
from lmforge.config import ModelConfig
from test_auto_planner import VOCAB, FakeTimer
from test_auto_stability import Perturbed, decisions, plan


def test_ladder_rounds_down_by_less_than_one_step():
    for t in (9.0, 30.0, 119.9, 120.0, 600.0, 3601.0):
        assert t / LADDER_STEP < ladder_floor(t) <= t
        rungs = ladder_below(ladder_floor(t))
        assert all(a < b for a, b in zip(rungs, rungs[1:])) and (not rungs or rungs[-1] < ladder_floor(t))
    assert ladder_floor(ladder_floor(200.0)) == pytest.approx(ladder_floor(200.0))


@functools.cache
def fake_speeds(factor: float = 1.0) -> Speeds:
    """Every candidate 'measured' on the fake CPU (its step time, times `factor`)."""
    timer, model = FakeTimer(), ModelConfig()
    speeds = Speeds(VOCAB, model, prior_flops=1e11)
    for c in candidate_shapes(model, set(), VOCAB, 1e9, 16 * 2**30, 4096):
        mb = max(1, 4096 // c.context_len)
        speeds.measured[c] = mb * c.context_len / (timer(c, mb, "bf16") * factor)
    return speeds


@functools.cache
def shapes(unique_tokens: float) -> tuple:
    return tuple(candidate_shapes(ModelConfig(), set(), VOCAB, unique_tokens, 16 * 2**30, 4096))


def choose(speeds: Speeds, unique_tokens: float, train_s: float, opt: PlanOptions | None = None):
    search = ShapeSearch(list(shapes(unique_tokens)), speeds, unique_tokens, train_s, 1.0, opt or PlanOptions())
    chosen, _, _ = search.pick(train_s)
    return chosen


@pytest.mark.parametrize("unique_tokens", [300_000, 1_000_000, 3_000_000, 10**9])
def test_more_time_never_gives_a_smaller_model_or_a_higher_predicted_loss(unique_tokens):
    speeds = fake_speeds()
    times = [30 * 1.13 ** k for k in range(30)]  # 30 s to about 16 minutes of training
    path = [choose(speeds, unique_tokens, t) for t in times]
    for t1, t2, a, b in zip(times, times[1:], path, path[1:]):
        assert b.block_params >= a.block_params, (t1, t2, a.cand, b.cand)
        assert b.score <= a.score * (1 + 1e-9), (t1, t2, a.cand, b.cand)
        if b.cand == a.cand:
            assert b.tokens >= a.tokens
    assert path[-1].block_params > path[0].block_params  # and more time does buy a larger model


def test_the_whole_plan_improves_with_the_budget_on_a_small_corpus():
    # Tiny Shakespeare's size: a longer budget plans at least the model, the tokens (with the same
    # model) and a predicted loss no worse than a shorter one.
    plans = [plan(b, 1_000_000, FakeTimer()) for b in (90, 120, 180, 300, 600, 1200)]
    for a, b in zip(plans, plans[1:]):
        assert b.estimates["block_params"] >= a.estimates["block_params"]
        assert b.estimates["predicted_loss_rel"] <= a.estimates["predicted_loss_rel"]
        if b.estimates["block_params"] == a.estimates["block_params"]:
            assert b.estimates["train_tokens"] >= a.estimates["train_tokens"]


def test_fixed_measurements_decide_the_same_shape_and_ten_percent_overall_rarely_moves_it():
    # Deterministic for fixed measurements; a machine 10% faster or slower is the same as 10% more or
    # less time, which changes the shape only where the ladder's choice changes within that range.
    speeds = fake_speeds()
    moved, cases = 0, 0
    for unique_tokens in (300_000, 1_000_000, 3_000_000, 10**9):
        for t in (60, 100, 150, 250, 400, 700, 1100):
            base = choose(speeds, unique_tokens, t).cand
            assert choose(fake_speeds.__wrapped__(), unique_tokens, t).cand == base  # measured afresh
            cases += 1
            moved += any(choose(fake_speeds(f), unique_tokens, t).cand != base for f in (0.9, 1.1))
    assert moved <= cases // 4, (moved, cases)


@pytest.mark.parametrize("budget,tokens", [(120, 1_000_000), (300, 1_000_000), (600, 300_000), (300, 10**9)])
def test_ten_percent_of_throughput_noise_keeps_an_earlier_plans_shape(budget, tokens):
    # With the earlier plan for the same inputs (the run folder's plan.json), +-10% of measured
    # throughput, overall or per timed shape, keeps the shape, context and optimizer.
    first = plan(budget, tokens, FakeTimer())
    earlier = PreviousPlan.from_dict(json.loads(json.dumps(first.to_dict())), "RUN/plan.json")
    for perturbation in ({"factor": 0.9}, {"factor": 1.1}, {"seed": 3, "spread": 0.1}, {"seed": 4, "spread": 0.1}):
        again = plan(budget, tokens, Perturbed(**perturbation), previous=earlier)
        assert decisions(again)[:5] == decisions(first)[:5], (perturbation, again.close_calls)


def test_a_close_call_on_the_shape_names_the_measured_speeds():
    # A shape at the edge of a cell of the tie grid is reported with the throughputs that decided it.
    opt = PlanOptions()
    seen = 0
    for unique_tokens in (300_000, 1_000_000, 10**9):
        for t in (60, 100, 150, 250, 400, 700):
            search = ShapeSearch(list(shapes(unique_tokens)), fake_speeds(), unique_tokens, t, 1.0, opt)
            chosen, ranked, contenders = search.pick(t)
            call = search.close_call(chosen, ranked, contenders)
            if call is not None:
                seen += 1
                assert call["chose"] == chosen.cand.short and "measured tokens/s" in call["measurement"]
                assert math.isfinite(call["value"])
    assert seen > 0
