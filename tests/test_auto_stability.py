"""Stable plans: the same inputs give the same plan, and timing noise does not move it."""

import itertools
import json
import random

import pytest

from lmforge.auto.choices import global_batch
from lmforge.auto.hysteresis import PreviousPlan, load_previous, plan_inputs
from lmforge.auto.inputs import DataFacts, PlanOptions
from lmforge.auto.plan import make_plan
from lmforge.config import Config
from test_auto_planner import VOCAB, FakeTimer, fake_hw


class Perturbed(FakeTimer):
    """The fake machine with its step times scaled: by one factor (a machine a little faster or slower)
    or by a seeded factor per timed shape within +-spread (noise)."""

    def __init__(self, factor: float | None = None, seed: int = 0, spread: float = 0.05):
        super().__init__()
        self.factor, self.rng, self.noise, self.spread = factor, random.Random(seed), {}, spread

    def __call__(self, c, mb, precision, compiled=False, **run):
        t = super().__call__(c, mb, precision, compiled=compiled, **run)
        if self.factor is not None:
            return t * self.factor
        return t * self.noise.setdefault((c, mb, precision, compiled), 1 + self.rng.uniform(-self.spread, self.spread))


def fake_clock():
    ticks = itertools.count()
    return lambda: next(ticks) * 1e-6  # planning takes no time: every decision is the measurements'


def plan(budget, train_tokens, timer, previous=None, options=None):
    data = DataFacts(train_tokens=train_tokens, val_tokens=train_tokens // 10, vocab_size=VOCAB)
    return make_plan(Config(), data, fake_hw(), budget, timer, clock=fake_clock(), previous=previous,
                     options=options)


def decisions(p):
    c = p.config
    return (c.model.n_layer, c.model.d_model, c.model.n_head, c.model.context_len, c.optim.kind, c.model.dropout,
            c.runtime.precision, c.runtime.compile)


PERTURBATIONS = [{"factor": 0.95}, {"factor": 1.05}, {"seed": 0}, {"seed": 1}, {"seed": 2}]
SCENARIOS = list(itertools.product((120, 300, 600), (300_000, 10**9)))


def test_fixed_measurements_give_the_same_plan():
    for budget, tokens in SCENARIOS[:3]:
        a, b = plan(budget, tokens, FakeTimer()), plan(budget, tokens, FakeTimer())
        assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize("budget,tokens", SCENARIOS)
def test_five_percent_of_timing_noise_keeps_an_earlier_plan(budget, tokens):
    first = plan(budget, tokens, FakeTimer())
    earlier = PreviousPlan.from_dict(json.loads(json.dumps(first.to_dict())), "RUN/plan.json")
    for perturbation in PERTURBATIONS:
        again = plan(budget, tokens, Perturbed(**perturbation), previous=earlier)
        assert decisions(again) == decisions(first), (perturbation, again.close_calls)
        batch, first_batch = again.config.train.global_batch_tokens, first.config.train.global_batch_tokens
        assert abs(batch / first_batch - 1) <= 0.1, perturbation
        assert abs(again.estimates["steps"] / first.estimates["steps"] - 1) <= 0.1, perturbation


def test_without_memory_near_ties_go_to_the_cheaper_shape_and_are_reported():
    # Without an earlier plan the rule alone decides: near ties go to the cheaper shape, so a machine
    # measured 5% faster or slower still picks the same shape in these cases.
    for budget, tokens in SCENARIOS:
        first = decisions(plan(budget, tokens, FakeTimer()))
        for factor in (0.95, 1.05):
            assert decisions(plan(budget, tokens, Perturbed(factor)))[:5] == first[:5], (budget, tokens, factor)
    wide = plan(120, 10**6, FakeTimer(), options=PlanOptions(tie_fraction=0.5))
    narrow = plan(120, 10**6, FakeTimer(), options=PlanOptions(tie_fraction=0.0))
    assert wide.estimates["block_params"] < narrow.estimates["block_params"]
    calls = [c for c in wide.close_calls if c["decision"] == "model"] + [c for c in narrow.close_calls
                                                                          if c["decision"] == "model"]
    for c in calls:
        assert "predicted loss" in c["measurement"] and "tokens/s" in c["measurement"]
    lines = wide.close_call_lines()
    assert all(line.startswith("close call: ") for line in lines)


def test_an_earlier_plan_counts_only_for_the_same_inputs(tmp_path):
    p = plan(120, 300_000, FakeTimer())
    corpus = {"path": "c.txt", "bytes": 1000, "train_tokens": 300_000}
    p.inputs = plan_inputs(120, p.hardware, {"data.path"}, corpus)
    p.save(tmp_path)
    same = load_previous(tmp_path, plan_inputs(120, p.hardware, {"data.path"}, corpus))
    assert same is not None and same.shape.d_model == p.config.model.d_model and same.optimizer == p.config.optim.kind
    assert load_previous(tmp_path, plan_inputs(121, p.hardware, {"data.path"}, corpus)) is None
    assert load_previous(tmp_path, plan_inputs(120, p.hardware, {"data.path", "optim.lr"}, corpus)) is None
    assert load_previous(tmp_path, plan_inputs(120, p.hardware, {"data.path"}, {**corpus, "bytes": 999})) is None
    assert load_previous(tmp_path, plan_inputs(120, p.hardware, {"data.path"}, {"path": "c.txt", "bytes": 1000}))
    (tmp_path / "plan.json").write_text("{not json", encoding="utf-8")
    assert load_previous(tmp_path, plan_inputs(120, p.hardware, {"data.path"}, corpus)) is None


def test_a_kept_shape_is_reported_with_the_measurement():
    first = plan(300, 300_000, FakeTimer())
    # An earlier plan that chose the runner-up: within twice the tie band it is kept, and said so.
    runner = next(c for c in first.candidates if c["measured"] and (c["n_layer"], c["d_model"]) !=
                  (first.config.model.n_layer, first.config.model.d_model))
    d = first.to_dict()
    d["config"]["model"].update(n_layer=runner["n_layer"], d_model=runner["d_model"], n_head=runner["n_head"],
                                context_len=runner["context_len"])
    again = plan(300, 300_000, FakeTimer(), previous=PreviousPlan.from_dict(d, "RUN/plan.json"))
    floor = PlanOptions().min_tokens_per_param
    chosen = next(c for c in first.candidates if (c["n_layer"], c["d_model"]) ==
                  (first.config.model.n_layer, first.config.model.d_model))
    same_group = ((runner["tokens"] < floor * runner["block_params"])
                  == (chosen["tokens"] < floor * chosen["block_params"]))
    if same_group and runner["score"] <= first.candidates[0]["score"] * (1 + 2 * PlanOptions().tie_fraction):
        assert again.config.model.d_model == runner["d_model"]
        assert any("earlier plan" in c["measurement"] for c in again.close_calls)
    else:
        assert decisions(again)[:4] == decisions(first)[:4]


def test_the_machine_remembers_a_plan_for_a_new_run_folder(corpus, tmp_path, monkeypatch):
    # A plan is kept in the machine's plan memory under a key of its inputs, so the same command into
    # a new run folder plans with the earlier plan as memory; another budget is other inputs.
    from lmforge.auto import run as auto_run
    from lmforge.auto.hysteresis import memory_dir

    memory = tmp_path / "memory"
    monkeypatch.setenv("LMFORGE_PLAN_MEMORY", str(memory))
    seen, real = [], auto_run.make_plan

    def spy(*args, previous=None, **kw):
        seen.append(previous)
        return real(*args, previous=previous, **kw)

    monkeypatch.setattr(auto_run, "make_plan", spy)
    fixed = {"data.path", "tokenizer.kind"}

    def plan_into(name: str, budget_s: float):
        cfg = Config()
        cfg.data.path, cfg.tokenizer.kind, cfg.out = str(corpus), "char", str(tmp_path / name)
        return auto_run.plan_run(cfg, budget_s, fixed=fixed, progress=False)

    first = plan_into("a", 20)
    [memo] = memory.glob("*.json")
    assert json.loads(memo.read_text())["inputs"] == first.inputs
    plan_into("b", 20)
    plan_into("c", 25)
    m = first.config.model
    assert seen[0] is None and seen[1] is not None and seen[2] is None
    assert seen[1].source == str(memo) and (seen[1].shape.n_layer, seen[1].shape.d_model) == (m.n_layer, m.d_model)
    assert len(list(memory.glob("*.json"))) == 2
    monkeypatch.setenv("LMFORGE_PLAN_MEMORY", "off")
    assert memory_dir() is None
    monkeypatch.delenv("LMFORGE_PLAN_MEMORY")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert memory_dir() == tmp_path / "cache" / "lmforge" / "plans"


def test_a_batch_of_a_few_sequences_keeps_the_earlier_plans_size():
    # One micro-batch of about 8 sequences of 128 tokens: one sequence is 12.5% of the batch, so a
    # change of up to a third in the measured speed must not move it once a plan for the same inputs exists.
    opt, micro, T = PlanOptions(), 16, 128
    sizes = {}
    for tokens in (7.9 * 1000 * T, 8.1 * 1000 * T, 7.4 * 1000 * T, 5.5 * 1000 * T, 11.5 * 1000 * T):
        fresh = global_batch(tokens, 1000, micro, T, opt)[0]
        kept, _, why = global_batch(tokens, 1000, micro, T, opt, keep_seqs=8)
        sizes[tokens / (1000 * T)] = (fresh, kept)
        assert kept == 8 and (fresh == 8 or "kept from the earlier plan" in why)
    assert sizes[7.4] == (7, 8) and sizes[5.5] == (6, 8)  # rounded to the nearest without memory, kept with it
    # Far from the earlier size (here twice the wanted batch) the batch follows the measurement.
    assert global_batch(16 * 1000 * T, 1000, micro, T, opt, keep_seqs=8)[0] == 16
