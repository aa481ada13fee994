"""The thread governor: synthetic (wall, CPU) samples drive its decisions; then a real run on
cores that another program takes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmforge.config import EvalConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from lmforge.lm.model import build_model
from lmforge.lm.task import LMTask
from lmforge.trainer import loop
from lmforge.trainer.runtime import Runtime
from lmforge.trainer.threads import RETRY_WINDOWS, STALLED_SHARE, WINDOW, StepTimer, ThreadGovernor

ALL = 4


class Recorder:
    """What the governor asked for, in order."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)


def feed(gov: ThreadGovernor, step_s: float, share: float, steps: int) -> list[str]:
    """`steps` steps of `step_s` seconds each, using `share` CPU-seconds per second per thread."""
    messages = []
    for _ in range(steps):
        message = gov.observe(step_s, step_s * share * gov.current)
        if message:
            messages.append(message)
    return messages


def governor() -> tuple[ThreadGovernor, Recorder]:
    rec = Recorder()
    gov = ThreadGovernor(ALL, rec)
    assert feed(gov, 0.03, 0.95, 2) == []  # the first two steps carry one-off costs: ignored
    return gov, rec


def stall(gov: ThreadGovernor, rec: Recorder) -> None:
    """A window of stalled steps on all threads: the governor starts a trial on one."""
    assert feed(gov, 0.45, 0.2, WINDOW) == []
    assert rec.calls == [1] and gov.state == "trial" and gov.reference_s == pytest.approx(0.45)


def test_busy_threads_on_a_quiet_machine_are_left_alone():
    gov, rec = governor()
    assert feed(gov, 0.03, 0.95, 20 * WINDOW) == []
    assert feed(gov, 0.03, STALLED_SHARE + 0.05, 5 * WINDOW) == []
    assert rec.calls == [] and gov.current == ALL and gov.state == "watch"


def test_stalled_threads_switch_to_one_thread_when_one_measures_faster():
    gov, rec = governor()
    stall(gov, rec)
    # The step right after the change is skipped, then a window on one thread: 60 ms against 450.
    messages = feed(gov, 0.06, 0.95, 1 + WINDOW)
    assert rec.calls == [1] and gov.current == 1 and gov.state == "single"
    assert messages == [f"threads: {ALL} -> 1: a step took 450 ms on {ALL} threads and 60 ms on one: "
                        "another program is using the cores"]


def test_stalled_threads_are_kept_when_one_thread_is_not_faster():
    gov, rec = governor()
    stall(gov, rec)
    # One thread is no faster (0.42 s is within 10% of 0.45 s): back to all threads, silently.
    assert feed(gov, 0.42, 0.95, 1 + WINDOW) == []
    assert rec.calls == [1, ALL] and gov.current == ALL and gov.state == "watch"
    # It keeps watching: the next stalled window tries again.
    assert feed(gov, 0.45, 0.2, 1 + WINDOW) == []
    assert rec.calls == [1, ALL, 1] and gov.state == "trial"


def test_on_one_thread_it_retries_all_later_and_returns_when_faster():
    gov, rec = governor()
    stall(gov, rec)
    feed(gov, 0.06, 0.95, 1 + WINDOW)
    # Not before RETRY_WINDOWS windows on one thread.
    assert feed(gov, 0.06, 0.95, (RETRY_WINDOWS - 1) * WINDOW) == [] and rec.calls == [1]
    assert feed(gov, 0.06, 0.95, WINDOW) == []
    assert rec.calls == [1, ALL] and gov.state == "retry" and gov.reference_s == pytest.approx(0.06)
    # The other program has gone: 20 ms on all threads.
    messages = feed(gov, 0.02, 0.95, 1 + WINDOW)
    assert messages == [f"threads: 1 -> {ALL}: a step takes 20 ms on {ALL} threads against 60 ms on one: "
                        "the cores are free again"]
    assert gov.current == ALL and gov.state == "watch"


def test_retry_goes_back_to_one_thread_while_the_cores_are_still_taken():
    gov, rec = governor()
    stall(gov, rec)
    feed(gov, 0.06, 0.95, 1 + WINDOW + RETRY_WINDOWS * WINDOW)
    assert gov.state == "retry"
    assert feed(gov, 0.45, 0.2, 1 + WINDOW) == []  # still stalled on all threads
    assert rec.calls == [1, ALL, 1] and gov.current == 1 and gov.state == "single"
    # ... and retries again a while later.
    feed(gov, 0.06, 0.95, 1 + RETRY_WINDOWS * WINDOW)
    assert rec.calls == [1, ALL, 1, ALL]


def test_inactive_with_one_thread():
    rec = Recorder()
    gov = ThreadGovernor(1, rec)
    assert not gov.active
    assert feed(gov, 0.45, 0.05, 50 * WINDOW) == [] and rec.calls == []


def test_step_timer_counts_wall_and_cpu_seconds():
    with StepTimer() as t:
        x = 0
        for i in range(200_000):
            x += i
    assert t.wall_s > 0 and 0 < t.cpu_s <= t.wall_s * 1.5 + 0.01


# --- a real run on cores that another program takes --------------------------------------------

SPIN = "while True: pass"


class Switched(Exception):
    pass


def test_training_drops_to_one_thread_when_another_program_takes_the_cores(tmp_path, monkeypatch):
    """A run starts on a quiet machine; after a few steps busy programs take every core; the run's
    governor notices its threads stalling, tries one thread, finds it faster and keeps it."""
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("one core: nothing to share, the governor is off")
    decisions: list = []

    class Watched(ThreadGovernor):
        def __init__(self, threads, set_threads):
            super().__init__(threads, set_threads, window=4)  # half the default: a shorter test

        def _use(self, n):
            decisions.append(n)
            super()._use(n)

        def observe(self, wall_s, cpu_s):
            message = super().observe(wall_s, cpu_s)
            if message:
                decisions.append(message)
                if "-> 1" in message:
                    raise Switched(message)  # seen what was to be seen: end the run here
            return message

    monkeypatch.setattr(loop, "ThreadGovernor", Watched)
    rng = np.random.default_rng(0)
    tokens = type("Split", (), {"tokens": rng.integers(0, 64, 50_000).astype(np.uint16)})
    model = build_model(ModelConfig(n_layer=1, n_head=4, d_model=128, context_len=64), 64, seed=0)
    task = LMTask(model, tokens, tokens, np.ones(64), examples_per_step=8, seed=0, eval_max_tokens=256)
    rt = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), precision="fp32",
                 adapt_threads=True)
    busy: list[subprocess.Popen] = []

    def competitors_arrive(step, record):
        if not busy:
            busy.extend(subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(cores))

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cores)
    try:
        with pytest.raises(Switched):
            loop.fit(task, TrainConfig(max_steps=400, time_budget_s=90), OptimConfig(), ScheduleConfig(warmup_steps=5),
                     EvalConfig(interval=4, max_tokens=256), rt, tmp_path, progress=False,
                     on_eval=competitors_arrive)
    finally:
        for p in busy:
            p.kill()
            p.wait()
        torch.set_num_threads(threads_before)
    assert busy, "the competitors never started"
    assert decisions[0] == 1 and decisions[-1].startswith(f"threads: {cores} -> 1:"), decisions
