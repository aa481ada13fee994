"""fit_to_budget: how many steps the schedule spans under a time budget, and when the run stops; and the
early decay that ends a run whose validation stalls at the peak rate."""

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


class _ScriptedValidation:
    """A tiny regression task whose validation losses are given: better until the third evaluation,
    then never better again (a run that starts to overfit at its peak rate)."""

    examples_per_step, tokens_per_example = 4, 1
    losses = [1.0, 0.9, 0.8, 0.85, 0.84, 0.86, 0.9, 0.95, 1.0, 1.1]

    def __init__(self, evaluations_done: int = 0):
        import torch

        torch.manual_seed(0)
        self.model, self.done = torch.nn.Linear(4, 1), evaluations_done

    def micro_batch(self, step, micro, micro_batch_size, rt):
        import torch

        g = torch.Generator().manual_seed(step * 100 + micro)
        return torch.randn(micro_batch_size, 4, generator=g)

    def loss(self, model, batch):
        return ((model(batch).squeeze(-1) - batch.sum(-1)) ** 2).mean()

    def evaluate(self, model, rt):
        self.done += 1
        return {"val_loss": self.losses[self.done - 1]}


def test_a_stalled_validation_at_the_peak_rate_starts_the_decay_and_a_resume_keeps_it(tmp_path):
    import json

    import torch

    from lmforge.config import EvalConfig, OptimConfig, ScheduleConfig, TrainConfig
    from lmforge.trainer.loop import fit
    from lmforge.trainer.optim import lr_at
    from lmforge.trainer.runtime import Runtime

    rt = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), precision="fp32")
    train = TrainConfig(max_steps=100, micro_batch_size=4, log_interval=1)
    sched = ScheduleConfig(kind="wsd", warmup_steps=0, min_lr=1e-4, decay_fraction=0.25, decay_on_plateau=2)
    optim, evals = OptimConfig(kind="adamw", lr=1e-2), EvalConfig(interval=5)

    def lrs(run_dir):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["lr"] for r in rows if "lr" in r]

    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole = fit(_ScriptedValidation(), train, optim, sched, evals, rt, tmp_path / "whole", progress=False)
    # Best at step 15, no better at 20 and 25: the decay starts at step 25 and takes a quarter of the
    # run it now is (33 steps: 25 at the peak, 8 decaying), not the 25 of 100 planned.
    assert whole.steps == 33 and "decayed early" in whole.stop_reason
    expected = [lr_at(step, sched, 1e-2, 33) for step in range(33)]
    assert lrs(tmp_path / "whole") == pytest.approx(expected)
    assert expected[24] == 1e-2 and expected[25] == 1e-2 and expected[32] < 2e-3

    class Interrupted(Exception):
        pass

    def stop_at_30(step, record):
        if step == 30:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit(_ScriptedValidation(), train, optim, sched, evals, rt, tmp_path / "cut", progress=False,
            on_eval=stop_at_30)
    resumed = fit(_ScriptedValidation(evaluations_done=6), train, optim, sched, evals, rt, tmp_path / "cut",
                  progress=False, resume=True)
    assert resumed.steps == 33 and lrs(tmp_path / "cut") == lrs(tmp_path / "whole")
    assert torch.equal(_weights(tmp_path / "cut"), _weights(tmp_path / "whole"))


def _weights(run_dir):
    from lmforge.trainer import checkpoint as ckpt

    latest = max((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return ckpt.load_verified(latest / "model.safetensors")["weight"]
