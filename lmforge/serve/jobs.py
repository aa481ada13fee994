"""Training runs the dashboard starts, stops and resumes: each an `lmforge` subprocess in its own
process group, its output in RUNS/.ui-logs/NAME.log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import ConfigError
from lmforge.report.runinfo import run_kind

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_FOLDER = ".ui-logs"
# Stop is Ctrl-C (runs take it back even when the dashboard was started with SIGINT ignored: see
# cli.main); a run still going this long after it gets SIGTERM, for a child that ignores Ctrl-C or
# is stuck where Python cannot raise it. Checkpoints are atomic: the kill leaves the last intact.
STOP_GRACE_S = 15.0


@dataclass
class LaunchForm:
    """What the launch form asks for."""

    name: str
    task: str  # "lm" or "classify"
    data: str = ""  # a path; empty for an LM: the embedded Shakespeare plays
    time: str = ""  # a duration such as 90s, 5m
    mode: str = "auto"  # "auto" or the path of a preset (YAML)


@dataclass
class Job:
    name: str
    command: list[str]
    proc: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.time)
    stop_requested: bool = False

    def state(self) -> str:
        """'running', 'finished', 'stopped' (by the dashboard) or 'failed (exit N)'."""
        rc = self.proc.poll()
        if rc is None:
            return "running"
        if rc == 0:
            return "finished"
        if self.stop_requested:
            return "stopped"
        return f"failed (exit {rc})"

    def tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n_chars:]
        except OSError:
            return ""


class Jobs:
    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)
        self.jobs: dict[str, Job] = {}

    def command_for(self, form: LaunchForm) -> list[str]:
        """The `lmforge` command line a launch form stands for (checked, so a mistake is a form error)."""
        from lmforge.durations import parse_duration

        if not NAME_RE.match(form.name):
            raise ConfigError("run name: use letters, digits, '.', '_' or '-' (up to 64), starting with a letter or digit")
        out = self.runs_dir / form.name
        if out.exists() or form.name in self.jobs:
            raise ConfigError(f"run name: {out} already exists; choose another name")
        if form.data and not Path(form.data).exists():
            raise ConfigError(f"data: {form.data} does not exist")
        if form.time:
            parse_duration(form.time)  # raises a ConfigError naming the problem
        if form.mode != "auto" and not Path(form.mode).is_file():
            raise ConfigError(f"preset: {form.mode} is not a file")
        cli = [sys.executable, "-m", "lmforge.cli"]
        if form.task == "classify":
            if not form.data:
                raise ConfigError("data: a classifier needs labeled data (a .jsonl/.csv file with text and label)")
            cmd = cli + ["classify", "train", "--data", form.data, "--out", str(out)]
            if form.mode != "auto":
                cmd += ["--config", form.mode]
            if form.time:  # planned for the budget, as `classify train --time` does
                parse_duration(form.time)  # a bad duration is refused here, before a job starts
                cmd += ["--time", form.time]
            return cmd
        if form.task != "lm":
            raise ConfigError(f"task: {form.task!r} is not lm or classify")
        cmd = cli + ["train", "--out", str(out)] + (["--data", form.data] if form.data else [])
        if form.mode == "auto":
            cmd += ["--auto"] + (["--time", form.time] if form.time else [])  # the CLI's default budget otherwise
        else:
            cmd += ["--config", form.mode] + (["--time", form.time] if form.time else [])
        return cmd

    def launch(self, form: LaunchForm) -> Job:
        return self._start(form.name, self.command_for(form))

    def resume(self, name: str) -> Job:
        run = self.runs_dir / name
        job = self.jobs.get(name)
        if job is not None and job.state() == "running":
            raise ConfigError(f"{name} is already running")
        kind = run_kind(run)
        cli = [sys.executable, "-m", "lmforge.cli"]
        if kind == "classify":
            cmd = cli + ["classify", "train", "--resume", str(run)]
        elif (run / "sft.yaml").is_file():
            cmd = cli + ["sft", "--resume", str(run)]
        elif kind == "lm":
            cmd = cli + ["train", "--resume", str(run)]
        else:
            raise ConfigError(f"{run} is not a run that can be resumed")
        return self._start(name, cmd)

    def stop(self, name: str) -> None:
        """Ctrl-C for the run's process group: training ends at once, its last checkpoint intact."""
        job = self.jobs.get(name)
        if job is None or job.proc.poll() is not None:
            raise ConfigError(f"{name} is not running from this dashboard")
        job.stop_requested = True
        os.killpg(job.proc.pid, signal.SIGINT)
        threading.Thread(target=self._terminate_late, args=(job, STOP_GRACE_S), daemon=True).start()

    @staticmethod
    def _terminate_late(job: Job, grace_s: float) -> None:
        try:
            job.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with open(job.log, "a", encoding="utf-8") as f:
                f.write(f"lmforge dashboard: still running {grace_s:g}s after Stop (Ctrl-C); sent SIGTERM\n")
            try:
                os.killpg(job.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _start(self, name: str, cmd: list[str]) -> Job:
        log = self.runs_dir / LOG_FOLDER / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, LMFORGE_NO_PROGRESS="1", PYTHONUNBUFFERED="1", LMFORGE_CTRL_C="1")  # see cli.main
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd[2:])}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        job = Job(name, cmd, proc, log)
        self.jobs[name] = job
        return job

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the runs still going (each keeps its last checkpoint) and wait for them."""
        running = [j for j in self.jobs.values() if j.proc.poll() is None]
        for j in running:
            j.stop_requested = True
            try:
                os.killpg(j.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout_s
        for j in running:
            try:
                j.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(j.proc.pid, signal.SIGKILL)
                j.proc.wait()
