"""The datatrove engine: prepare's per-shard work run by datatrove's executors (local, Slurm, Ray).

lmforge keeps the parts that fix the output (cutting the input into shards in order, deduplication,
split, tokenizer, concatenation); datatrove runs the parts that scale with the corpus on as many
processes or machines as it is given. Each stage (cleaning a source's shards, the decontamination
scan, encoding) becomes one datatrove pipeline whose only step, `ShardTasks`, calls the same
lmforge function the local engine calls. The stage's tasks are files in the work folder, so every
node must see that folder (a shared file system); each datatrove task takes the task files whose
number is its rank modulo the number of tasks, and writes its results next to them.

Why files and not datatrove Documents flowing between steps: lmforge's clean step writes a shard's
survivors and fingerprints in one atomic step that resume and deduplication rely on; handing it a
whole shard keeps that unit, and with it byte-identical output for any engine, executor or task count.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_bytes
from lmforge.config import DataConfig
from lmforge.errors import ConfigError, DataError

STAGES_DIR = "datatrove"
LOGS_DIR = "datatrove-logs"
SLURM_POLL_S = 10.0


def check_available(data: DataConfig) -> None:
    """One-line errors, before any work, for an engine or executor this machine cannot run."""
    if data.engine != "datatrove":
        return
    if importlib.util.find_spec("datatrove") is None:
        raise ConfigError("config field 'data.engine': datatrove is not installed; install it with "
                          "pip install 'lmforge[datatrove]', or use --data.engine local")
    if data.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("config field 'data.executor': ray is not installed; install it with pip install ray "
                          "(and start or join a cluster), or use --data.executor local or slurm")
    if data.executor == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("config field 'data.executor': slurm needs the sbatch command, which is not on this "
                          "machine's PATH; run prepare on a Slurm login node, or use --data.executor local")


def _task_name(index: int) -> str:
    return f"task-{index:06d}"


try:  # an optional extra: without it only the local engine exists (check_available says so)
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    PipelineStep = object  # type: ignore[assignment,misc]


class ShardTasks(PipelineStep):
    """Runs this rank's lmforge shard tasks of one stage folder; yields no documents."""

    name = "lmforge shard tasks"
    type = "lmforge"

    def __init__(self, stage: Path, init: Callable[[Any], None], state: Any, watch_pid: int | None = None) -> None:
        super().__init__()
        self.stage, self.init, self.state, self.watch_pid = str(stage), init, state, watch_pid

    def run(self, data, rank: int = 0, world_size: int = 1):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tasks are the parallelism
        if self.watch_pid not in (None, os.getpid()):
            threading.Thread(target=_exit_without, args=(self.watch_pid,), daemon=True).start()
        self.init(self.state)
        folder = Path(self.stage)
        for task in sorted(folder.glob("task-*.pkl")):
            index = int(task.stem.split("-")[1])
            out = folder / f"{task.stem}.out"
            if index % world_size != rank or out.exists():
                continue
            with self.track_time("shard"):
                fn, args = pickle.loads(task.read_bytes())
                result = fn(*args)
            atomic_write_bytes(out, pickle.dumps(result))
            task.unlink()  # the shard's raw text is no longer needed on disk
            self.stat_update("shards")
        yield from ()


def _exit_without(pid: int) -> None:
    # A killed prepare (SIGKILL, out of memory) cannot stop the executor's workers, which would go on cleaning
    # shards nobody waits for, alongside the prepare that resumes.
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


class DatatroveRunner:
    """The local engine's Runner interface (`map(fn, tasks)`, results in task order) on datatrove executors."""

    def __init__(self, data: DataConfig, workers: int, state: Any, init: Callable[[Any], None], work: Path) -> None:
        self.data, self.workers, self.state, self.init = data, workers, state, init
        self.root = work / STAGES_DIR
        self.logs = Path(data.logging_dir) if data.logging_dir else work / LOGS_DIR
        self.stages = 0

    def __enter__(self) -> DatatroveRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def map(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[Any]:
        self.stages += 1
        name = f"{self.stages:02d}-{fn.__name__.strip('_')}"
        # A folder of this attempt's own: what a killed attempt left (its finished shards have their markers in
        # the work folder, so their tasks are not written again) is removed with the others at the end.
        stage = self.root / f"{name}.{os.getpid()}.{time.time_ns()}"
        stage.mkdir(parents=True)
        count = 0
        for index, args in enumerate(tasks):  # one shard at a time: memory stays bounded
            atomic_write_bytes(stage / f"{_task_name(index)}.pkl", pickle.dumps((fn, args)))
            count = index + 1
        if count:
            self._execute(stage, name, count)
        for index in range(count):
            out = stage / f"{_task_name(index)}.out"
            if not out.exists():
                raise DataError(f"datatrove task for {out.stem} of stage {name} left no result; see its log in "
                                f"{self.logs / name / 'logs'}")
            yield pickle.loads(out.read_bytes())
        shutil.rmtree(stage, ignore_errors=True)

    def _execute(self, stage: Path, name: str, count: int) -> None:
        data = self.data
        tasks = min(data.tasks or count, count)
        watch = os.getpid() if data.executor == "local" else None  # elsewhere the workers are on other machines
        pipeline = [ShardTasks(stage, self.init, self.state, watch)]
        logs = str(self.logs / name)
        # skip_completed off: a stage's task list differs between attempts (finished shards drop out), so
        # datatrove's completion markers of an earlier attempt must not skip ranks; lmforge's markers do that.
        if data.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            # spawn-like start: forking after HF tokenizers started threads can deadlock.
            executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(self.workers, tasks),
                                             logging_dir=logs, skip_completed=False, start_method="forkserver")
            with _console_to(Path(logs) / "console.log"), _children_die_with_us():
                executor.run()
        elif data.executor == "ray":
            import ray
            from datatrove.executor import RayPipelineExecutor

            if not ray.is_initialized():
                ray.init()  # the cluster RAY_ADDRESS names, else one on this machine

            # Concurrency is the cluster's, not this machine's core count, unless data.num_workers says otherwise.
            RayPipelineExecutor(pipeline, tasks=tasks, workers=data.num_workers or -1, logging_dir=logs,
                                skip_completed=False,
                                cpus_per_task=data.slurm_cpus_per_task,
                                mem_per_cpu_gb=data.slurm_mem_per_cpu_gb).run()
        else:
            self._slurm(pipeline, tasks, logs, name, stage, count)

    def _slurm(self, pipeline: list, tasks: int, logs: str, name: str, stage: Path, count: int) -> None:
        from datatrove.executor import SlurmPipelineExecutor

        data = self.data
        venv = Path(sys.prefix) / "bin" / "activate"
        executor = SlurmPipelineExecutor(
            pipeline, tasks=tasks, time=data.slurm_time, partition=data.slurm_partition,
            cpus_per_task=data.slurm_cpus_per_task, mem_per_cpu_gb=data.slurm_mem_per_cpu_gb,
            job_name=f"lmforge-{name}", logging_dir=logs, skip_completed=False,
            venv_path=str(venv) if sys.prefix != sys.base_prefix and venv.exists() else None, mail_type="NONE")
        executor.run()  # submits the job array and returns; this process waits for the results
        job = str(executor.job_id)
        while not all((stage / f"{_task_name(i)}.out").exists() for i in range(count)):
            time.sleep(SLURM_POLL_S)
            if not _slurm_job_alive(job) and not all((stage / f"{_task_name(i)}.out").exists()
                                                     for i in range(count)):
                raise DataError(f"Slurm job {job} (stage {name}) ended before every shard was done; see the logs "
                                f"in {logs}/logs and {logs}/slurm_logs, then re-run prepare to resume")


_forking = {"active": False, "hooked": False}


def _die_with_parent() -> None:
    if not _forking["active"]:
        return
    try:  # Linux: SIGTERM to this child when the process that forked it dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _children_die_with_us() -> Iterator[None]:
    """Processes forked meanwhile (datatrove's multiprocess Manager) end when a killed prepare does, instead
    of waiting forever for it; the pool workers, started by a forkserver, watch for that themselves."""
    if not _forking["hooked"]:
        os.register_at_fork(after_in_child=_die_with_parent)
        _forking["hooked"] = True
    _forking["active"] = True
    try:
        yield
    finally:
        _forking["active"] = False


@contextlib.contextmanager
def _console_to(path: Path) -> Iterator[None]:
    """Send what datatrove prints (a dozen lines per task, from this process and the workers it starts) to
    `path` instead of the terminal, where lmforge's own summary goes; its per-task logs stay in the log folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
            try:
                yield
            except Exception as exc:
                raise DataError(f"a datatrove task failed ({type(exc).__name__}: {exc}); see {path}") from exc
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _slurm_job_alive(job: str) -> bool:
    try:
        out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep waiting rather than abandon running work
    return out.returncode == 0 and bool(out.stdout.strip())
