"""The dashboard's jobs without a browser: Stop ends a run even when Ctrl-C does not reach it."""

import os
import signal
import sys
import time

from lmforge.cli import main
from lmforge.serve import jobs


def _started(j: jobs.Jobs, name: str, code: str) -> jobs.Job:
    job = j._start(name, [sys.executable, "-c", code])
    deadline = time.time() + 30
    while "ready" not in job.tail().splitlines()[1:] and time.time() < deadline:  # line 1: the command
        time.sleep(0.05)  # until it has printed: its Ctrl-C handling is set up
    assert "ready" in job.tail().splitlines()[1:]
    return job


def test_stop_is_ctrl_c_then_sigterm_for_a_run_that_ignores_it(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "STOP_GRACE_S", 0.5)
    j = jobs.Jobs(tmp_path)
    # A process started with SIGINT ignored (as by a shell's `cmd &`) keeps it ignored.
    stubborn = _started(j, "stubborn", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                       "print('ready', flush=True); time.sleep(60)")
    # This one takes Ctrl-C whatever it inherited (as lmforge's commands do when the dashboard starts them).
    polite = _started(j, "polite", "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
                                   "print('ready', flush=True); time.sleep(60)")
    t0 = time.time()
    j.stop("stubborn")
    j.stop("polite")
    assert polite.proc.wait(10) != 0 and stubborn.proc.wait(10) != 0
    assert time.time() - t0 < 10
    assert stubborn.state() == polite.state() == "stopped"
    assert "KeyboardInterrupt" in polite.tail() and "SIGTERM" not in polite.tail()  # Ctrl-C was enough
    assert "still running 0.5s after Stop (Ctrl-C); sent SIGTERM" in stubborn.tail()


def test_a_command_the_dashboard_starts_takes_ctrl_c_back(monkeypatch):
    """Started from a shell with `lmforge ui &`, the dashboard and the runs it starts inherit an ignored
    SIGINT; the runs are told (LMFORGE_CTRL_C=1) to handle it again, so Stop's Ctrl-C ends them cleanly."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert main(["no-such-command"]) == 2  # without the variable: left as inherited
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        monkeypatch.setenv("LMFORGE_CTRL_C", "1")
        assert main(["no-such-command"]) == 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert "LMFORGE_CTRL_C" not in os.environ  # not passed on to what the command starts
    finally:
        signal.signal(signal.SIGINT, previous)
