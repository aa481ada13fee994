"""Threads that stall when other programs share the cores, noticed and worked around during training.

PyTorch's OpenMP threads spin while they wait for each other. When another busy program takes one
of the cores, a step on all threads waits for the thread that lost its core: on this project's
2-core machine a small model's step went from 31 to 450 ms, while one thread ran it in about 60.
A process that gets its cores uses about `threads` CPU-seconds per second of a step (spinning
counts as use); one that loses them uses far less. So the governor watches that share and, when
it drops, times a window of steps on one thread and keeps whichever was faster. On one thread it
retries all of them now and then, so the cores come back when the other program is gone.

Changing the thread count changes the order of floating-point sums, so a run that adapted does not
reproduce bit for bit; a run on a quiet machine never adapts. `runtime.threads N` fixes the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW = 8  # steps per measurement
STALLED_SHARE = 0.6  # CPU-seconds per wall-second per thread below which threads are taken to stall
RETRY_WINDOWS = 25  # on one thread, try all of them again after this many windows


class ThreadGovernor:
    """Feed it each step's wall and CPU seconds; it changes the thread count and says why."""

    def __init__(self, threads: int, set_threads: Callable[[int], None], window: int = WINDOW):
        self.all = threads
        self.current = threads
        self.set_threads = set_threads
        self.window = window
        self.state = "watch"  # watch (all threads) | trial (one thread) | single | retry (all again)
        self.samples: list[tuple[float, float]] = []
        self.reference_s = 0.0  # mean step of the window before a trial
        self.windows_on_one = 0
        self.skip = 2  # the first steps carry one-off costs

    @property
    def active(self) -> bool:
        return self.all > 1

    def observe(self, wall_s: float, cpu_s: float) -> str | None:
        """Record a step; returns a message when the thread count changed."""
        if not self.active:
            return None
        if self.skip:
            self.skip -= 1
            return None
        self.samples.append((wall_s, cpu_s))
        if len(self.samples) < self.window:
            return None
        wall = sum(w for w, _ in self.samples)
        cpu = sum(c for _, c in self.samples)
        mean = wall / len(self.samples)
        self.samples = []
        return self._decide(mean, cpu / max(wall, 1e-9) / self.current)

    def _use(self, n: int) -> None:
        self.current = n
        self.set_threads(n)
        self.skip = 1  # a step right after the change may still pay for it

    def _decide(self, mean_s: float, share: float) -> str | None:
        if self.state == "watch":
            if share < STALLED_SHARE:
                self.state, self.reference_s = "trial", mean_s
                self._use(1)
            return None
        if self.state == "trial":
            if mean_s < 0.9 * self.reference_s:
                self.state, self.windows_on_one = "single", 0
                return (f"threads: {self.all} -> 1: a step took {1000 * self.reference_s:.0f} ms on {self.all} threads "
                        f"and {1000 * mean_s:.0f} ms on one: another program is using the cores")
            self.state = "watch"
            self._use(self.all)
            return None
        if self.state == "single":
            self.windows_on_one += 1
            if self.windows_on_one >= RETRY_WINDOWS:
                self.state, self.reference_s = "retry", mean_s
                self._use(self.all)
            return None
        # retry: all threads again after a while on one
        if mean_s < 0.9 * self.reference_s:
            self.state = "watch"
            return (f"threads: 1 -> {self.all}: a step takes {1000 * mean_s:.0f} ms on {self.all} threads against "
                    f"{1000 * self.reference_s:.0f} ms on one: the cores are free again")
        self.state, self.windows_on_one = "single", 0
        self._use(1)
        return None


class StepTimer:
    """Wall and CPU seconds of a block of code (a training step)."""

    def __enter__(self) -> StepTimer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self.wall0
        self.cpu_s = time.process_time() - self.cpu0
