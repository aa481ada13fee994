"""Soak: a long training run SIGKILLed at random moments and resumed each time, against an uninterrupted twin.

    python benchmarks/soak.py [--duration 30m] [--kills 20] [--data FILE] [--out DIR] [--classify]

The same config is trained twice: once uninterrupted (the reference) and once killed with SIGKILL
`--kills` times (at random moments: during start-up and restore, in the middle of a crash-safe write
of a small file, at a random point of a training step, while a checkpoint is being written, and
while the finished run writes its results) and continued each time with `lmforge train --resume
RUN` (`lmforge classify train --resume RUN` with --classify). At the end it checks, and prints:
  * exactness: the final checkpoint (weights and optimizer state), the best-validation weights, the
    logged losses and the result of the killed run equal the reference's bit for bit;
  * memory: the peak resident set size of every resumed process while it trains (sampled from
    /proc after its first step) stays within 10% of the reference's, and later processes' peaks
    within 10% of earlier ones' (each process's whole-life peak from wait4 is printed too);
  * disk: once its data is prepared, the run folder never holds more than its retention allows
    (keep_checkpoints complete checkpoints, one more while the oldest is pruned, a partial one being
    written and one left by a kill), and ends with exactly keep_checkpoints checkpoints and no
    temporary files (the peak while data is prepared, working files included, is printed apart);
  * every resume succeeded (none refused, none needed --overwrite).
The run's length in steps is fitted to `--duration` (the killed run's wall time) from a short probe
of this machine's step and start-up times, or set with --steps; when start-ups alone would fill the
duration, the run is given enough steps for its kills and takes longer. Ends with one JSON line.

Runs use one CPU thread (--threads): the thread count changes the order of floating-point sums in
the CPU kernels, and lmforge's governor picks it from the machine's load, so two runs on a busy
machine could differ for a reason that has nothing to do with resuming.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmforge.durations import fmt_duration, parse_duration  # noqa: E402

RSS_TOLERANCE = 0.10
TMP_MARK = ".tmp"


# --- what is launched --------------------------------------------------------------------------


@dataclass
class Job:
    """One kind of run under test: how to start it fresh, how to resume it, where its checkpoints are."""

    kind: str  # "lm" or "classify"
    fresh_args: list[str]
    max_steps: int
    keep: int

    def command(self, run: Path, resume: bool) -> list[str]:
        base = [sys.executable, "-m", "lmforge.cli"] + (["classify"] if self.kind == "classify" else [])
        if resume:
            return base + ["train", "--resume", str(run)]
        return base + ["train", *self.fresh_args, "--out", str(run)]

    def checkpoint_roots(self, run: Path) -> list[Path]:
        if self.kind == "lm":
            return [run / "checkpoints"]
        return sorted(p for p in run.glob("*/checkpoints") if p.is_dir())

    def metrics_file(self, run: Path) -> Path | None:
        if self.kind == "lm":
            return run / "metrics.jsonl"
        found = sorted(run.glob("*/metrics.jsonl"))
        return found[0] if found else None

    def can_resume(self, run: Path) -> bool:
        """Whether the killed run got far enough to be a run folder (else its first command is repeated)."""
        return (run / "run.json").is_file() and (run / "config.yaml").is_file()


def lm_job(args: argparse.Namespace, max_steps: int) -> Job:
    fresh = ["--config", args.config, "--train.max_steps", str(max_steps),
             "--train.save_interval", str(args.save_interval), "--train.keep_checkpoints", str(args.keep),
             "--train.log_interval", "1", "--eval.interval", str(args.eval_interval),
             "--runtime.threads", str(args.threads), "--runtime.compile", "off", "--runtime.precision", "fp32",
             "--sample.num_samples", "1", "--sample.max_new_tokens", "40", "--seed", str(args.seed)]
    if args.data:
        fresh += ["--data", args.data]
    return Job("lm", fresh, max_steps, args.keep)


def write_classify_data(folder: Path, seed: int) -> Path:
    """A small two-class corpus in which the label is carried by a few words."""
    rng = random.Random(seed)
    pos = "good great fine lovely superb warm bright happy".split()
    neg = "bad poor awful dull grim cold dark sad".split()
    filler = "the film story cast plot music scene end was and a it of to in".split()
    lines = []
    for _ in range(600):
        label = rng.randrange(2)
        words = [rng.choice(filler) for _ in range(rng.randrange(6, 16))]
        for _ in range(rng.randrange(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(pos if label else neg))
        lines.append(json.dumps({"text": " ".join(words), "label": "pos" if label else "neg"}))
    path = folder / "classify.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def classify_job(args: argparse.Namespace, max_steps: int, out: Path) -> Job:
    data = args.data or str(write_classify_data(out, args.seed))
    fresh = ["--data", data, "--model.kind", "bilstm", "--train.epochs", "0", "--train.max_steps", str(max_steps),
             "--train.save_interval", str(args.save_interval), "--train.keep_checkpoints", str(args.keep),
             "--train.log_interval", "1", "--eval.interval", str(args.eval_interval),
             "--runtime.threads", str(args.threads), "--seed", str(args.seed)]
    return Job("classify", fresh, max_steps, args.keep)


# --- watching a process ------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass  # removed while walking (a checkpoint being pruned)
    return total


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of lmforge's crash-safe writes that outlived their write."""
    found = []
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            if name.startswith(".") or TMP_MARK in name:
                found.append(str(Path(dirpath, name).relative_to(folder)))
    return sorted(found)


class StepWatch:
    """The newest step this process has logged in metrics.jsonl (lines an earlier process left are
    not counted: they are cut back to the restored checkpoint when the run resumes)."""

    def __init__(self, job: Job, run: Path):
        self.job, self.run = job, run
        path = job.metrics_file(run)
        self.start = self._id(path) if path else None
        self.seen: tuple | None = None
        self.step = -1

    @staticmethod
    def _id(path: Path) -> tuple | None:
        try:
            st = path.stat()
            return st.st_ino, st.st_size
        except OSError:
            return None

    def poll(self) -> int:
        path = self.job.metrics_file(self.run)
        now = self._id(path) if path else None
        if now is None or now == self.seen:
            return self.step
        self.seen = now
        if self.start is not None and now[0] == self.start[0] and now[1] <= self.start[1]:
            return self.step  # still the killed process's file, not yet cut back
        try:
            with open(path, "rb") as f:
                f.seek(max(0, now[1] - 4096))
                tail = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return self.step
        for line in reversed(tail):
            try:
                self.step = int(json.loads(line)["step"])
                break
            except (ValueError, KeyError, TypeError):
                continue
        return self.step


def checkpoint_state(job: Job, run: Path) -> tuple[list[int], list[str]]:
    """(steps of the complete checkpoints, names of the temporary checkpoint folders)."""
    done, tmp = [], []
    for root in job.checkpoint_roots(run):
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith(".tmp_step_"):
                tmp.append(f"{root.parent.name}/{e.name}")
            elif e.name.startswith("step_") and os.path.isfile(os.path.join(e.path, "meta.json")):
                done.append(int(e.name.split("_")[1]))
    return sorted(done), sorted(tmp)


@dataclass
class Kill:
    """When to kill: 'startup' at_s after launch; 'step' once step `step` is logged, after `delay_s`;
    'save' while the first checkpoint write after step `step` is under way, `delay_s` into it;
    'finish' `delay_s` after the last step is logged (evaluation, samples, plot, report)."""

    how: str
    step: int = 0
    at_s: float = 0.0
    delay_s: float = 0.0


@dataclass
class Segment:
    command: str
    started_step: int
    plan: Kill | None
    killed: bool = False
    rc: int | None = None
    wall_s: float = 0.0
    last_step: int = -1
    landed: str = ""  # where a kill landed
    peak_rss_kb: int = 0  # wait4's ru_maxrss: the whole process
    train_rss_kb: int = 0  # highest sampled RSS while training (after its first step, before the last)
    first_step_s: float = 0.0  # from launch to its first logged step
    # (seconds since the soak began, RSS kB, bytes on disk, whether the run's data was ready: a
    # process that prepares it holds the preparation's working files for a while)
    samples: list = field(default_factory=list)
    log: str = ""


def run_segment(job: Job, run: Path, plan: Kill | None, log_path: Path, clock0: float, resume: bool) -> Segment:
    cmd = job.command(run, resume)
    done0, _ = checkpoint_state(job, run)
    seg = Segment(" ".join(cmd[2:]), done0[-1] if done0 else 0, plan)
    stale_tmp = set(checkpoint_state(job, run)[1])
    writes = {"before": set(temp_entries(job, run)), "seen": set()}
    watch = StepWatch(job, run)
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.perf_counter()
    fire_at: float | None = None
    next_sample = 0.0
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.perf_counter()
        step = watch.poll()
        if step > seg.started_step and not seg.first_step_s:
            seg.first_step_s = now - t0
        if now >= next_sample:
            rss = rss_kb(proc.pid)
            if rss is not None:
                ready = seg.started_step > 0 or seg.first_step_s > 0
                seg.samples.append((round(now - clock0, 2), rss, tree_bytes(run), ready))
                if 0 <= seg.started_step < step < job.max_steps:
                    seg.train_rss_kb = max(seg.train_rss_kb, rss)
            next_sample = now + 0.25
        if plan is not None and fire_at is None:
            fire_at = _trigger(plan, job, run, step, now - t0, stale_tmp, now, writes)
        if fire_at is not None and now >= fire_at:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, rusage = os.wait4(proc.pid, 0)
            seg.killed = True
            break
        armed = plan is not None and (plan.how == "write" or (plan.how == "save" and step >= plan.step))
        time.sleep(0.001 if armed or fire_at is not None else 0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    seg.rc = proc.returncode
    seg.wall_s = time.perf_counter() - t0
    seg.peak_rss_kb = rusage.ru_maxrss
    seg.last_step = max(watch.poll(), seg.started_step)
    if seg.killed:
        seg.landed = _landed(plan, job, run, stale_tmp, writes)
    seg.log = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    return seg


def temp_entries(job: Job, run: Path) -> list[str]:
    """The temporary files of crash-safe writes (.NAME.random) in the run folder and its member folders."""
    found = []
    for folder in [run] + [root.parent for root in job.checkpoint_roots(run) if root.parent != run]:
        try:
            found += [f"{folder.name}/{e.name}" for e in os.scandir(folder) if e.name.startswith(".")]
        except OSError:
            pass
    return found


def _trigger(plan: Kill, job: Job, run: Path, step: int, since_start: float, stale_tmp: set,
             now: float, writes: dict) -> float | None:
    """The moment to kill at, once the plan's condition holds; None until then."""
    if plan.how == "write":  # in the plan.step-th crash-safe write (run.json, metrics, results, best weights)
        writes["seen"].update(set(temp_entries(job, run)) - writes["before"])
        return now if len(writes["seen"]) >= plan.step else None
    if plan.how == "startup":
        return now + max(0.0, plan.at_s - since_start)
    if plan.how == "step" and step >= plan.step:
        return now + plan.delay_s
    if plan.how == "finish" and step >= job.max_steps:
        return now + plan.delay_s
    if plan.how == "save" and step >= plan.step and set(checkpoint_state(job, run)[1]) - stale_tmp:
        return now + plan.delay_s
    return None


def _landed(plan: Kill, job: Job, run: Path, stale_tmp: set, writes: dict) -> str:
    done, tmp = checkpoint_state(job, run)
    if plan.how == "write":
        return "write: temporary file left" if set(temp_entries(job, run)) - writes["before"] else "write: after it"
    if plan.how == "save":
        if set(tmp) - stale_tmp:
            return "save: checkpoint half written"
        if len(done) > job.keep * len(job.checkpoint_roots(run)):
            return "save: written, old one not yet pruned"
        return "save: just after it"
    return plan.how


# --- the soak ----------------------------------------------------------------------------------


def plan_kills(kills: int, max_steps: int, save_interval: int, startup_s: float, step_s: float,
               rng: random.Random) -> list[Kill]:
    """`kills` kills: some in start-up, some in crash-safe writes of small files, a third in checkpoint
    writes, one while the run finishes, the rest at random points of random steps, spread over the run
    in step order."""
    n_startup = max(1, round(kills * 0.15)) if kills >= 3 else 0
    n_write = max(1, round(kills * 0.1)) if kills >= 5 else 0
    n_finish = 1 if kills >= 2 else 0
    n_save = max(1, round(kills * 0.35))
    n_step = max(0, kills - n_startup - n_write - n_finish - n_save)
    n_save = kills - n_startup - n_write - n_finish - n_step
    moving = ["save"] * n_save + ["step"] * n_step
    rng.shuffle(moving)
    # Progress kills at increasing steps; a save kill waits for the next checkpoint after its step.
    last_save = (max_steps - 1) // save_interval * save_interval
    targets = sorted(rng.randint(1, max(1, last_save - 1)) for _ in moving)
    plan = [Kill(how, step=s, delay_s=rng.uniform(0, 0.02) if how == "save" else rng.uniform(0, step_s))
            for how, s in zip(moving, targets)]
    for _ in range(n_startup):  # a start-up kill costs no progress: put it anywhere
        plan.insert(rng.randrange(len(plan) + 1), Kill("startup", at_s=rng.uniform(0, startup_s)))
    for _ in range(n_write):  # nor does one in the first few writes of a process
        plan.insert(rng.randrange(len(plan) + 1), Kill("write", step=rng.randint(1, 4)))
    if n_finish:
        plan.append(Kill("finish", delay_s=rng.uniform(0, 2.0)))
    return plan


def timings(job: Job, run: Path, seg: Segment) -> tuple[float, float]:
    """(seconds from launch to the first step, seconds per step) of a finished run."""
    path = job.metrics_file(run)
    records = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path else []
    times = [r["elapsed_s"] for r in records if "elapsed_s" in r and "val_loss" not in r]
    step_s = max(1e-3, (times[-1] - times[0]) / max(1, len(times) - 1)) if len(times) > 1 else 0.1
    return max(0.5, seg.first_step_s or seg.wall_s / 2), step_s


def probe(job_for, out: Path) -> tuple[float, float]:
    """(seconds from launch to the first step, seconds per step) of a short run on this machine."""
    job = job_for(20)
    run = out / "probe"
    seg = run_segment(job, run, None, out / "probe.log", time.perf_counter(), resume=False)
    if seg.rc != 0:
        raise SystemExit(f"the probe run failed:\n{seg.log}")
    found = timings(job, run, seg)
    shutil.rmtree(run, ignore_errors=True)
    return found


def soak(job: Job, run: Path, plan: list[Kill], logs: Path, clock0: float) -> list[Segment]:
    segments: list[Segment] = []
    queue = list(plan) + [None]  # the last process runs to the end
    while queue:
        resume = job.can_resume(run)
        kill = queue[0]
        seg = run_segment(job, run, kill, logs / f"segment_{len(segments):03d}.log", clock0, resume)
        segments.append(seg)
        done, tmp = checkpoint_state(job, run)
        state = f"{len(done)} checkpoints, {len(tmp)} partial"
        if seg.killed:
            queue.pop(0)
            print(f"kill {len(segments):>3}  {kill.how:<7} after {seg.wall_s:6.1f}s at step {seg.last_step:>5} "
                  f"({seg.landed}); {state}", flush=True)
            continue
        if seg.rc != 0:
            print(f"process {len(segments)} ({seg.command}) failed with exit code {seg.rc}:\n{seg.log}", flush=True)
            break
        if kill is not None:
            print(f"the run finished before kill {len(segments)} ({kill.how}) could land: "
                  f"{len(queue) - 1} kills left undone", flush=True)
        break
    return segments


# --- comparing the two runs --------------------------------------------------------------------


def _tensors_equal(a, b, path: str, diffs: list[str]) -> None:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dtype != b.dtype or \
                a.shape != b.shape or not torch.equal(a, b):
            diffs.append(path)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                diffs.append(f"{path}.{k} (missing on one side)")
            else:
                _tensors_equal(a[k], b[k], f"{path}.{k}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{path}[{i}]", diffs)
    elif a != b:
        diffs.append(path)


LOGGED = ("step", "train_loss", "lr", "grad_norm", "tokens", "val_loss", "val_bpb", "val_acc", "val_f1")


def compare_runs(job: Job, ref: Path, soaked: Path) -> dict:
    """What differs between the two run folders' trained state (empty lists: identical)."""
    import torch
    from safetensors.torch import load_file

    diffs: list[str] = []
    pairs = list(zip(job.checkpoint_roots(ref), job.checkpoint_roots(soaked)))
    if not pairs or len(job.checkpoint_roots(ref)) != len(job.checkpoint_roots(soaked)):
        diffs.append("checkpoint folders")
    for a, b in pairs:
        last_a, last_b = max(a.glob("step_*")), max(b.glob("step_*"))
        if last_a.name != last_b.name:
            diffs.append(f"last checkpoint {last_a.name} vs {last_b.name}")
            continue
        _tensors_equal(load_file(str(last_a / "model.safetensors")), load_file(str(last_b / "model.safetensors")),
                       f"{a.parent.name}/weights", diffs)
        state_a = torch.load(last_a / "state.pt", map_location="cpu", weights_only=True)
        state_b = torch.load(last_b / "state.pt", map_location="cpu", weights_only=True)
        for s in (state_a, state_b):
            s.pop("elapsed_s", None)  # wall time: differs by design
        _tensors_equal(state_a, state_b, f"{a.parent.name}/state", diffs)
    for best_a in sorted(ref.glob("**/model.safetensors")):
        rel = best_a.relative_to(ref)
        if "checkpoints" in rel.parts:
            continue
        best_b = soaked / rel
        if not best_b.is_file():
            diffs.append(f"{rel} missing")
        else:
            _tensors_equal(load_file(str(best_a)), load_file(str(best_b)), str(rel), diffs)
    for log_a in sorted(ref.glob("**/metrics.jsonl")):
        rel = log_a.relative_to(ref)
        log_b = soaked / rel
        rec = [[{k: r.get(k) for k in LOGGED} for r in map(json.loads, p.read_text().splitlines())]
               if p.is_file() else [] for p in (log_a, log_b)]
        if rec[0] != rec[1]:
            diffs.append(f"{rel}: {len(rec[0])} vs {len(rec[1])} records, logged values differ")
    files_a = {str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file()}
    files_b = {str(p.relative_to(soaked)) for p in soaked.rglob("*") if p.is_file()}
    def compared(name: str) -> bool:  # TensorBoard writes one events file per process
        return "tb" not in Path(name).parts

    missing = sorted(f for f in files_a - files_b if compared(f))
    extra = sorted(f for f in files_b - files_a if compared(f))
    return {"differs": diffs, "missing_files": missing, "extra_files": extra}


def result_of(job: Job, run: Path) -> dict:
    name = "result.json" if job.kind == "lm" else "metrics.json"
    try:
        return json.loads((run / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


TIMED = ("per_s", "wall", "seconds", "elapsed", "time")


def timeless(tree):
    """A result without its timings (which differ between any two runs)."""
    if isinstance(tree, dict):
        return {k: timeless(v) for k, v in tree.items()
                if not (str(k).endswith("_s") or any(t in str(k) for t in TIMED))}
    if isinstance(tree, list):
        return [timeless(v) for v in tree]
    return tree


def checkpoint_bytes(job: Job, run: Path) -> int:
    sizes = [tree_bytes(p) for root in job.checkpoint_roots(run) for p in root.glob("step_*")]
    return max(sizes, default=0)


def reference(future) -> Segment:
    seg = future.result()
    if seg.rc != 0:
        raise SystemExit(f"the reference run failed:\n{seg.log}")
    if not getattr(future, "reported", False):
        future.reported = True
        print(f"reference: {seg.wall_s:.1f}s (first step after {seg.first_step_s:.1f}s), peak RSS "
              f"{seg.peak_rss_kb / 1024:.0f} MB (training {seg.train_rss_kb / 1024:.0f} MB)", flush=True)
    return seg


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", default="30m", help="wall time of the killed run, e.g. 30m, 4m, 90s")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs over the run")
    ap.add_argument("--steps", type=int, default=0, help="training steps (default: fitted to --duration)")
    ap.add_argument("--classify", action="store_true", help="soak a classifier run (a BiLSTM) instead")
    ap.add_argument("--config", default="configs/tiny.yaml", help="LM config (default: the tiny model)")
    ap.add_argument("--data", default="", help="training text (default: the built-in corpus; --classify: "
                                               "a synthetic labelled set)")
    ap.add_argument("--save-interval", type=int, default=10, help="steps between checkpoints")
    ap.add_argument("--keep", type=int, default=2, help="train.keep_checkpoints")
    ap.add_argument("--eval-interval", type=int, default=50, help="steps between evaluations")
    ap.add_argument("--threads", type=int, default=1, help="runtime.threads of both runs")
    ap.add_argument("--parallel", action="store_true",
                    help="train the uninterrupted reference at the same time as the killed run (faster on a "
                         "machine with cores to spare)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments and of the runs")
    ap.add_argument("--out", default="", help="folder for the two runs and the logs (default: a temporary one, "
                                              "removed at the end unless the soak fails)")
    return ap.parse_args(argv)


def choose_steps(args: argparse.Namespace, job_for, out: Path) -> tuple[int, tuple[float, float] | None]:
    """The run's steps (--steps, or fitted to --duration by a probe) and the probe's timings, if one ran."""
    if args.steps:
        return args.steps, None
    duration = parse_duration(args.duration)
    startup_s, step_s = probe(job_for, out)
    # Each kill costs a start-up and, on average, half the steps between checkpoints.
    lost_s = args.kills * (startup_s + step_s * args.save_interval / 2)
    steps = int((duration - startup_s - lost_s) / step_s)
    print(f"probe: start-up {startup_s:.1f}s, {step_s * 1000:.0f} ms/step", flush=True)
    floor = (args.kills + 2) * args.save_interval
    if steps < floor:
        print(f"note: {fmt_duration(duration)} leaves too little training time for {args.kills} kills on this "
              f"machine; training {floor} steps instead", flush=True)
        steps = floor
    # Not a multiple of the checkpoint interval: the final checkpoint is a save of its own.
    return steps // args.save_interval * args.save_interval + args.save_interval // 2, (startup_s, step_s)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parse_duration(args.duration)  # a bad --duration stops before anything runs
    rng = random.Random(args.seed)
    out = Path(args.out or tempfile.mkdtemp(prefix="lmforge-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    clock0 = time.perf_counter()

    def job_for(steps: int) -> Job:
        return classify_job(args, steps, out) if args.classify else lm_job(args, steps)

    steps, measured = choose_steps(args, job_for, out)
    job = job_for(steps)
    print(f"{job.kind} run of {steps} steps, checkpoint every {args.save_interval} steps (keep {args.keep})",
          flush=True)

    ref_run, soak_run = out / "reference", out / "killed"
    pool = ThreadPoolExecutor(1)
    ref_future = pool.submit(run_segment, job, ref_run, None, logs / "reference.log", clock0, False)
    if args.parallel:  # the kill plan's timings: the probe's, or a guess (start-up is seconds anyway)
        startup_s, step_s = measured or (3.0, 0.1)
    else:
        startup_s, step_s = timings(job, ref_run, reference(ref_future))

    plan = plan_kills(args.kills, steps, args.save_interval, startup_s, step_s, rng)
    t_soak = time.perf_counter()
    segments = soak(job, soak_run, plan, logs, clock0)
    soak_wall = time.perf_counter() - t_soak
    ref_seg = reference(ref_future)
    pool.shutdown()
    final = segments[-1]
    kills = [s for s in segments if s.killed]
    finished = not final.killed and final.rc == 0

    cmp = compare_runs(job, ref_run, soak_run) if finished else {"differs": ["the killed run did not finish"],
                                                                 "missing_files": [], "extra_files": []}
    same_result = finished and timeless(result_of(job, ref_run)) == timeless(result_of(job, soak_run))

    # Memory: the training peak of each process that trained, against the reference's.
    trained = [s for s in segments if s.train_rss_kb]
    ref_train = ref_seg.train_rss_kb or ref_seg.peak_rss_kb
    peaks = [s.train_rss_kb for s in trained]
    rss_ratio = max(peaks) / ref_train if peaks and ref_train else float("nan")
    first_half = peaks[: max(1, len(peaks) // 2)]
    growth = (statistics.median(peaks[len(peaks) // 2:]) / statistics.median(first_half)) if peaks else float("nan")
    rss_flat = bool(peaks) and rss_ratio <= 1 + RSS_TOLERANCE and growth <= 1 + RSS_TOLERANCE

    # Disk: everything but the checkpoints (as the reference ends), plus what retention allows.
    ckpt_b = checkpoint_bytes(job, ref_run)
    n_roots = max(1, len(job.checkpoint_roots(ref_run)))
    other_b = tree_bytes(ref_run) - ckpt_b * args.keep * n_roots
    bound = other_b + ckpt_b * n_roots * (args.keep + 3) + (1 << 20)
    disk_peak = max((b for s in segments for _, _, b, ready in s.samples if ready), default=0)
    prepare_peak = max((b for s in segments for _, _, b, ready in s.samples if not ready), default=0)
    left = leftovers(soak_run)
    done, tmp = checkpoint_state(job, soak_run)
    kept_ok = len(done) == args.keep * n_roots and not tmp
    refused = [s for s in segments if not s.killed and s.rc not in (0, None)]

    with open(out / "samples.csv", "w", encoding="utf-8") as f:  # RSS and disk use over time, per process
        f.write("process,seconds,rss_mb,run_folder_mb,data_ready\n")
        for name, seg_list in (("reference", [ref_seg]), ("killed", segments)):
            for i, seg in enumerate(seg_list):
                f.writelines(f"{name}-{i},{t},{r / 1024:.1f},{b / 1e6:.2f},{int(d)}\n" for t, r, b, d in seg.samples)

    landed: dict[str, int] = {}
    for s in kills:
        landed[s.landed] = landed.get(s.landed, 0) + 1
    print(f"\nkills: {len(kills)} of {args.kills} planned over {len(segments)} processes, soak wall "
          f"{fmt_duration(soak_wall)} (reference {fmt_duration(ref_seg.wall_s)})")
    for where, n in sorted(landed.items()):
        print(f"  {n:>3}  {where}")
    print(f"exact: final weights and optimizer state {'equal' if not cmp['differs'] else 'DIFFER'} "
          f"({', '.join(cmp['differs'][:5]) or 'bit for bit'}); result {'equal' if same_result else 'DIFFERS'}")
    if cmp["missing_files"] or cmp["extra_files"]:
        print(f"  files only in the reference: {cmp['missing_files'][:8]}; only in the killed run: "
              f"{cmp['extra_files'][:8]}")
    print(f"memory: training peak RSS per process {min(peaks, default=0) / 1024:.0f}-{max(peaks, default=0) / 1024:.0f}"
          f" MB vs reference {ref_train / 1024:.0f} MB (max/reference {rss_ratio:.3f}; later/earlier processes "
          f"{growth:.3f}): {'flat' if rss_flat else 'NOT FLAT'}")
    print(f"disk: peak {disk_peak / 1e6:.1f} MB, bound {bound / 1e6:.1f} MB (checkpoint {ckpt_b / 1e6:.2f} MB, "
          f"keep {args.keep}); at the end {len(done)} checkpoints, leftovers: {left or 'none'}; while "
          f"preparing data: {prepare_peak / 1e6:.1f} MB")
    ok = (finished and not cmp["differs"] and same_result and rss_flat and disk_peak <= bound and not left
          and kept_ok and not refused and not cmp["missing_files"] and len(kills) == args.kills)
    if ok and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    elif not ok:
        print(f"soak FAILED; run folders and logs kept in {out}")
    if args.out:
        print(f"RSS and disk use over time: {out / 'samples.csv'}")
    print(json.dumps({
        "ok": ok, "kind": job.kind, "steps": steps, "kills": len(kills), "kills_planned": args.kills,
        "kills_in_checkpoint_writes": sum(1 for s in kills if s.landed.startswith("save: checkpoint half")),
        "kills_by_moment": landed, "processes": len(segments), "soak_wall_s": round(soak_wall, 1),
        "reference_wall_s": round(ref_seg.wall_s, 1), "weights_equal": not cmp["differs"],
        "result_equal": bool(same_result), "differs": cmp["differs"][:10],
        "missing_files": cmp["missing_files"], "extra_files": cmp["extra_files"],
        "rss_train_peak_mb": [round(p / 1024, 1) for p in peaks],
        "rss_process_peak_mb": [round(s.peak_rss_kb / 1024, 1) for s in segments],
        "rss_reference_process_peak_mb": round(ref_seg.peak_rss_kb / 1024, 1), "rss_reference_mb": round(ref_train / 1024, 1),
        "rss_max_over_reference": round(rss_ratio, 3) if not math.isnan(rss_ratio) else None,
        "rss_later_over_earlier": round(growth, 3) if not math.isnan(growth) else None, "rss_flat": rss_flat,
        "disk_peak_mb": round(disk_peak / 1e6, 2), "disk_bound_mb": round(bound / 1e6, 2),
        "disk_prepare_peak_mb": round(prepare_peak / 1e6, 2),
        "final_checkpoints": len(done), "leftovers": left, "failed_processes": len(refused),
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
