"""`lmforge tune`: hyperparameter search with Optuna over any config field, for any task.

The search space is declared in YAML, beside (or apart from) the base config of every trial:

    task: lm                      # or 'classify'
    search:
      optim.lr: {low: 3.0e-4, high: 1.0e-2, log: true}
      model.n_layer: {low: 2, high: 6}          # an int field: integers
      model.d_model: [64, 128, 192]             # a list: one of these
    data: {path: input.txt}                     # the rest is the base config of every trial
    train: {time_budget_s: 120}

Each trial trains in its own folder (RUN/trial_0007) through the task's ordinary train function;
its validation metric after each evaluation is reported to the pruner, which stops trials that
trail the median of earlier ones (or with Hyperband's successive halving). A trial that fails, or
runs out of memory, is recorded as failed with its error, and the study goes on.

The study lives in SQLite in the run folder (RUN/study.db) unless --storage names another database,
so a killed study resumes where it stopped: finished trials are kept and not run again, and a
trial the kill interrupted is run again with the same parameters. With a shared database
(postgresql://...), several machines can run trials of one study at once.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import shutil
import socket
import time
import types as types_mod
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


from lmforge.config import from_dict, iter_fields, set_dotted, to_dict
from lmforge.errors import ConfigError, LmforgeError
from lmforge.runs import claim, claim_study

# --- tasks ------------------------------------------------------------------------------------


@dataclass
class TaskSpec:
    """How to train one kind of model for a trial.

    `train(cfg, progress=False, on_eval=callback)` returns a result carrying `metric` as an attribute
    (or key); `on_eval(step, record)` is optional in its signature (without it there is no pruning).
    """

    name: str
    config_cls: type
    train: Callable[..., Any]
    metric: str
    prepare_shared: Callable[[Any, Path], None] | None = None  # share prepared data between trials


_LOADERS: dict[str, Callable[[], TaskSpec]] = {}


def register_task(name: str, loader: Callable[[], TaskSpec]) -> None:
    """Make a task available to `tune` (loaded on first use, so importing it stays cheap)."""
    _LOADERS[name] = loader


def get_task(name: str) -> TaskSpec:
    if name not in _LOADERS:
        raise ConfigError(f"unknown task {name!r} for tune; known tasks: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name]()


def _share_lm_data(cfg, study_dir: Path) -> None:
    """Prepare the corpus once per distinct data/tokenizer setting and hard-link it into the trial."""
    from lmforge.data.prepare import prepare

    key = hashlib.sha1(json.dumps({"data": dataclasses.asdict(cfg.data), "tokenizer": dataclasses.asdict(cfg.tokenizer),
                                   "seed": cfg.seed}, sort_keys=True).encode()).hexdigest()[:12]
    cache = study_dir / "data_cache" / key
    if not (cache / "data" / "prepare.json").is_file():
        shared = from_dict(type(cfg), to_dict(cfg))
        shared.out = str(cache)
        prepare(shared, quiet=True)
    dst = Path(cfg.out) / "data"
    if dst.exists():
        return
    try:
        shutil.copytree(cache / "data", dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(cache / "data", dst)


def _lm_task() -> TaskSpec:
    from lmforge.config import Config
    from lmforge.lm.pretrain import train

    return TaskSpec("lm", Config, train, "val_bpb", _share_lm_data)


def _classify_task() -> TaskSpec:
    """The text classifier (lmforge.classify): its ClassifyConfig and train_classifier().

    The objective is the validation log-loss (cross-entropy) of the trained model or ensemble;
    accuracy and macro-F1 are recorded beside it.
    """
    try:
        from lmforge.classify.config import ClassifyConfig
        from lmforge.classify.run import train_classifier
    except ImportError as e:
        raise ConfigError(f"the classify task is not available: {e}") from None
    def train(cfg, progress: bool = False, on_eval=None) -> dict:
        result = train_classifier(cfg, progress=progress, on_eval=on_eval)
        valid = result.valid or {}
        return {"val_loss": valid.get("log_loss"), "val_accuracy": valid.get("accuracy"),
                "val_macro_f1": valid.get("macro_f1")}

    return TaskSpec("classify", ClassifyConfig, train, "val_loss")


register_task("lm", _lm_task)
register_task("classify", _classify_task)


# --- the search space -------------------------------------------------------------------------


@dataclass
class Param:
    name: str  # dotted config field
    kind: str  # "int", "float" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


def _field_types(cls: type) -> dict[str, Any]:
    return {name: tp for name, tp, _d, _doc in iter_fields(cls)}


def parse_space(space: dict, cls: type) -> list[Param]:
    if not isinstance(space, dict) or not space:
        raise ConfigError("the search space ('search:' in the tune file) must map config fields to ranges or lists")
    types = _field_types(cls)
    params = []
    for name, spec in space.items():
        if name not in types:
            try:
                set_dotted({}, name, None, cls)  # raises with a suggestion
            except ConfigError as e:
                raise ConfigError(f"search space: {str(e).replace(' on the command line', '')}") from None
        tp = types[name]
        if typing.get_origin(tp) in (typing.Union, types_mod.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"search space '{name}': the list of choices is empty")
            params.append(Param(name, "categorical", choices=list(spec)))
            continue
        if not isinstance(spec, dict):
            raise ConfigError(f"search space '{name}': give {{low: .., high: ..}} or a list of choices, not {spec!r}; "
                              "fixed values belong in the config part of the file")
        if "choices" in spec:
            params.append(Param(name, "categorical", choices=list(spec["choices"])))
            continue
        unknown = set(spec) - {"low", "high", "log", "step"}
        if unknown or "low" not in spec or "high" not in spec:
            raise ConfigError(f"search space '{name}': expected keys low, high (and optionally log, step); got {spec}")
        if tp not in (int, float):
            raise ConfigError(f"search space '{name}' is not a number field; list its choices instead")
        low, high = float(spec["low"]), float(spec["high"])
        if not low < high:
            raise ConfigError(f"search space '{name}': low {low:g} must be below high {high:g}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"search space '{name}': a log range needs low > 0")
        params.append(Param(name, "int" if tp is int else "float", low, high, log,
                            float(spec["step"]) if spec.get("step") is not None else None))
    return params


@dataclass
class TuneSpec:
    task: str
    base: dict  # config tree of every trial
    space: list[Param]
    source: str


def load_tune_spec(path: str | Path, space_path: str | Path | None = None, task: str | None = None,
                   overrides: dict[str, Any] | None = None) -> TuneSpec:
    """Read a tune file (a config with a `search:` section, or a plain config plus a separate space file)."""
    from lmforge.config import read_config_file

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tune file {p} not found")
    tree = read_config_file(p)
    space = tree.pop("search", None)
    file_task = tree.pop("task", None)
    if space_path is not None:
        sp = read_config_file(Path(space_path))
        if "search" in sp:
            file_task = file_task or sp.get("task")
            sp = sp["search"]
        space = sp
    if space is None:
        raise ConfigError(f"{p} has no 'search:' section and no --space file was given; declare what to search, "
                          "e.g. search: {{optim.lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}}}")
    task_name = task or file_task or "lm"
    spec = get_task(task_name)
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value, spec.config_cls)
    from_dict(spec.config_cls, copy.deepcopy(tree), source=str(p)).validate()  # the base must be valid
    return TuneSpec(task_name, tree, parse_space(space, spec.config_cls), str(p))


# --- running a study --------------------------------------------------------------------------


@dataclass
class TuneResult:
    study_dir: Path
    storage: str
    best_value: float | None
    best_params: dict
    best_trial: int | None
    best_config: Path | None
    importance: dict[str, float]
    counts: dict[str, int]
    trials: list[dict] = field(default_factory=list)


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - a dependency
        raise LmforgeError("lmforge tune needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _storage(url: str | None, study_dir: Path):
    optuna = _optuna()
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        # Heartbeats let any worker notice a trial whose process died on another machine.
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                             engine_kwargs={"connect_args": {"timeout": 60}}
                                             if url.startswith("sqlite:") else None)
        return storage, url
    if url.startswith("journal:"):
        path = url.split(":", 1)[1]
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path)), url
    raise ConfigError(f"storage {url!r}: use sqlite:///FILE, postgresql://..., mysql://... or journal:FILE")


def _pruner(kind: str, n_trials: int):
    optuna = _optuna()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {kind!r}: median, hyperband or none")


class _Reporter:
    """on_eval hook: reports the trial's validation metric and asks the pruner.

    Trials under a time budget run different numbers of steps, so their evaluations are compared
    at the same share of the budget (tenths); otherwise at the same step.
    """

    def __init__(self, trial, metric: str, budget_s: float):
        self.trial, self.metric, self.budget_s = trial, metric, budget_s
        self.last = -1

    def __call__(self, step: int, record: dict) -> None:
        import optuna

        value = record.get(self.metric, record.get("val_loss"))
        if value is None or not math.isfinite(value):
            return
        if self.budget_s > 0:
            pos = min(10, int(10 * record.get("elapsed_s", 0.0) / self.budget_s))
        else:
            pos = step
        if pos <= self.last or pos <= 0:
            return
        self.last = pos
        self.trial.report(float(value), pos)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at {'tenth' if self.budget_s else 'step'} {pos} "
                                     "trails the other trials")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    c = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.PRUNED:
            c["pruned"] += 1
        elif t.state == TrialState.FAIL:
            c["failed" if "error" in t.user_attrs else "interrupted"] += 1
        elif t.state == TrialState.RUNNING:
            c["running"] += 1
        elif t.state == TrialState.WAITING:
            c["waiting"] += 1
    return c


def _done(study) -> int:
    c = _counts(study)
    return c["complete"] + c["pruned"] + c["failed"]


def recover_interrupted(study) -> list[int]:
    """Trials a kill interrupted: mark those of dead local processes failed, and queue each such
    trial once more with the same parameters. Returns the numbers queued again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if (t.state == TrialState.RUNNING and t.user_attrs.get("host") == host
                and "pid" in t.user_attrs and not _pid_alive(int(t.user_attrs["pid"]))):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = []
    for t in trials:
        if t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            queued.append(t.number)
    return queued


def tune(
    spec: TuneSpec,
    n_trials: int,
    *,
    out: str | Path = "runs/tune",
    storage: str | None = None,
    study_name: str = "lmforge",
    time_s: float | None = None,
    trial_time_s: float | None = None,
    pruner: str = "median",
    seed: int = 0,
    progress: bool = True,
    on_trial: Callable[[Any], None] | None = None,
) -> TuneResult:
    """Run (or resume) the study until it holds `n_trials` finished trials or `time_s` has passed."""
    from lmforge.config import MAX_SEED, check_option, is_int

    check_option(is_int(n_trials) and 1 <= n_trials <= 1_000_000, "--trials", n_trials, "must be an integer >= 1")
    check_option(is_int(seed) and 0 <= seed <= MAX_SEED, "--seed", seed, f"must be an integer in [0, {MAX_SEED}]")
    from lmforge.console import console

    task = get_task(spec.task)
    study_dir = claim_study(out)  # new, empty, or this study's folder (a killed study resumes)
    study, url = _open_study(task, study_dir, storage, study_name, n_trials, pruner, seed, progress)
    deadline = time.time() + time_s if time_s else None
    objective = _Objective(spec, task, study_dir, deadline, trial_time_s, progress)
    while _done(study) < n_trials:
        if deadline is not None and time.time() >= deadline:
            if progress:
                console.print("tune: study time is up")
            break
        recover_interrupted(study)
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[lambda s, t: on_trial(t)] if on_trial else None)

    return _finish(study, spec, task, study_dir, url, seed, progress)


def _open_study(task: TaskSpec, study_dir: Path, storage: str | None, study_name: str, n_trials: int, pruner: str,
                seed: int, progress: bool):
    """The study (created, or loaded and its interrupted trials queued again) and its storage URL."""
    optuna = _optuna()
    from lmforge.console import console

    store, url = _storage(storage, study_dir)
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=study_name, storage=store).trials)
    except KeyError:
        pass
    # A resumed study gets a fresh random stream, or its first new trials would repeat the old ones.
    sampler = optuna.samplers.TPESampler(seed=seed + existing, n_startup_trials=min(10, max(2, n_trials // 3)),
                                         multivariate=True, constant_liar=True)
    study = optuna.create_study(study_name=study_name, storage=store, direction="minimize", sampler=sampler,
                                pruner=_pruner(pruner, n_trials), load_if_exists=True)
    if existing:
        requeued = recover_interrupted(study)
        if progress:
            c = _counts(study)
            console.print(f"tune: resuming study '{study_name}' in {url}: {c['complete']} complete, "
                          f"{c['pruned']} pruned, {c['failed']} failed"
                          + (f"; re-running interrupted trial(s) {requeued}" if requeued else ""))
    study.set_user_attr("task", task.name)
    study.set_user_attr("metric", task.metric)
    return study, url


@dataclass
class _Objective:
    """One trial: its config from the sampled parameters, a training run in its own folder, and the
    result recorded on the trial (or the error, so the study goes on)."""

    spec: TuneSpec
    task: TaskSpec
    study_dir: Path
    deadline: float | None
    trial_time_s: float | None
    progress: bool

    def __call__(self, trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = {p.name: p.suggest(trial) for p in self.spec.space}
        run_dir = self.study_dir / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            cfg, budget = self._config(params, run_dir)
        except ConfigError as e:
            trial.set_user_attr("error", f"invalid config: {e}")
            raise
        if run_dir.exists():  # a retried trial starts clean (the study owns its trial folders)
            shutil.rmtree(run_dir, ignore_errors=True)
        claim(run_dir, self.spec.task, quiet=True)  # a run folder of its own, before shared data is linked in
        if self.progress:
            from lmforge.console import console

            console.print(f"[bold]trial {trial.number}[/bold]: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        t0 = time.perf_counter()
        result = self._train(trial, cfg, budget, t0)
        return self._record(trial, result, budget, time.perf_counter() - t0)

    def _config(self, params: dict, run_dir: Path):
        """The trial's config and time budget: the study's base with the sampled values, capped by the
        trial time and what is left of the study's time."""
        cls = self.task.config_cls
        tree = copy.deepcopy(self.spec.base)
        for name, value in params.items():
            set_dotted(tree, name, value, cls)
        set_dotted(tree, "out", str(run_dir), cls)
        budget = 0.0
        if "train.time_budget_s" in _field_types(cls):
            budget = float((tree.get("train") or {}).get("time_budget_s") or 0.0)
            if self.trial_time_s:
                budget = self.trial_time_s
            if self.deadline is not None:
                left = max(1.0, self.deadline - time.time())
                budget = min(budget, left) if budget else left
            if budget:
                set_dotted(tree, "train.time_budget_s", budget, cls)
        return from_dict(cls, tree, source=self.spec.source).validate(), budget

    def _train(self, trial, cfg, budget: float, t0: float):
        """Train the trial; a pruned or failed trial is recorded (with its error) and re-raised."""
        import optuna

        from lmforge.console import console

        try:
            if self.task.prepare_shared is not None:
                self.task.prepare_shared(cfg, self.study_dir)
            kwargs: dict[str, Any] = {"progress": False}
            if "on_eval" in inspect.signature(self.task.train).parameters:
                kwargs["on_eval"] = _Reporter(trial, self.task.metric, budget)
            return self.task.train(cfg, **kwargs)
        except optuna.TrialPruned as e:
            trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
            if self.progress:
                console.print(f"  pruned after {time.perf_counter() - t0:.0f}s: {e}")
            raise
        except Exception as e:  # noqa: BLE001 - recorded; the study goes on
            from lmforge.trainer.step import is_oom_error

            oom = is_oom_error(e) or "out of memory" in str(e).lower()
            msg = f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", ("out of memory: " if oom else "") + msg[:2000])
            trial.set_user_attr("wall_s", round(time.perf_counter() - t0, 2))
            if self.progress:
                console.print(f"  [red]failed[/red] after {time.perf_counter() - t0:.0f}s: {msg[:300]}")
            _free_memory()
            raise

    def _record(self, trial, result, budget: float, wall: float) -> float:
        """The trial's metric, with the result's other figures as user attributes."""
        metric = self.task.metric
        value = _metric(result, metric)
        keys = ["val_loss", "val_bpb", "best_val_loss", "steps", "params", "stop_reason"]
        if isinstance(result, dict):
            keys += [k for k in result if k not in keys]
        for k in keys:
            v = _metric(result, k, default=None)
            if v is not None and (not isinstance(v, float) or math.isfinite(v)):
                trial.set_user_attr("model_params" if k == "params" else k, v)
        trial.set_user_attr("wall_s", round(wall, 2))
        if budget:
            trial.set_user_attr("budget_s", budget)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"no finite {metric} in the result")
            raise LmforgeError(f"trial {trial.number} produced no finite {metric}")
        if self.progress:
            from lmforge.console import console

            console.print(f"  {metric} {value:.4f} in {wall:.0f}s")
        return float(value)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _metric(result: Any, key: str, default: Any = math.nan) -> Any:
    if isinstance(result, dict):
        return result.get(key, default)
    return getattr(result, key, default)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _finish(study, spec: TuneSpec, task: TaskSpec, study_dir: Path, url: str, seed: int, progress: bool) -> TuneResult:
    from optuna.trial import TrialState

    from lmforge.config import save_config
    from lmforge.atomic import atomic_write_json
    from lmforge.console import console

    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
                 TrialState.WAITING: "waiting"}.get(t.state, "failed" if "error" in t.user_attrs else "interrupted")
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({**{k: v for k, v in t.user_attrs.items() if k not in ("host", "pid")},
                     "number": t.number, "state": state, "value": t.value,
                     "last_reported": t.intermediate_values[last] if last is not None else None,
                     "params": t.params})
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = min(complete, key=lambda t: t.value) if complete else None
    best_path = None
    if best is not None:
        tree = copy.deepcopy(spec.base)
        for k, v in best.params.items():
            set_dotted(tree, k, v, task.config_cls)
        set_dotted(tree, "out", str(study_dir / "best"), task.config_cls)
        best_cfg = from_dict(task.config_cls, tree).validate()
        best_path = study_dir / "best_config.yaml"
        save_config(best_cfg, best_path)
    importance: dict[str, float] = {}
    if len(complete) >= 2 and spec.space:
        try:
            import optuna

            importance = dict(optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)))
            _plot_importance(importance, study_dir / "importance.png", task.metric)
        except Exception as e:  # noqa: BLE001 - e.g. no parameter varied among completed trials
            if progress:
                console.print(f"tune: no parameter importance: {e}")
    counts = _counts(study)
    atomic_write_json(study_dir / "trials.json", {"storage": url, "metric": task.metric, "counts": counts,
                                                  "best_trial": best.number if best else None,
                                                  "importance": importance, "trials": rows})
    result = TuneResult(study_dir, url, best.value if best else None, dict(best.params) if best else {},
                        best.number if best else None, best_path, importance, counts, rows)
    if progress:
        print_results(result, task.metric, [p.name for p in spec.space])
    return result


def print_results(result: TuneResult, metric: str, names: list[str]) -> None:
    from rich.table import Table

    from lmforge.console import console

    t = Table(title=f"tune: {result.counts['complete']} complete, {result.counts['pruned']} pruned, "
                    f"{result.counts['failed']} failed")
    t.add_column("trial", justify="right")
    t.add_column("state")
    t.add_column(metric, justify="right")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("wall s", justify="right")
    order = sorted(result.trials, key=lambda r: (r["value"] is None, r["value"] if r["value"] is not None else 0))
    for r in order:
        value = r["value"] if r["value"] is not None else r.get("last_reported")
        shown = "-" if value is None else (f"{value:.4f}" if r["value"] is not None else f"({value:.4f})")
        state = r["state"] + (" *" if r["number"] == result.best_trial else "")
        t.add_row(str(r["number"]), state, shown, *[_fmt(r["params"].get(n, "-")) for n in names],
                  f"{r.get('wall_s', 0):.0f}")
    console.print(t)
    if result.best_config:
        console.print(f"best: trial {result.best_trial}, {metric} {result.best_value:.4f}; config in {result.best_config}")
    if result.importance:
        console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importance.items())
                      + f" (plot: {result.study_dir / 'importance.png'})")
    console.print(f"study: {result.storage} (run again to resume or extend it)")


def _plot_importance(importance: dict[str, float], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importance)[::-1]
    values = [importance[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)), dpi=110)
    ax.barh(names, values, color="tab:blue")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.2f}", va="center")
    ax.set_xlabel(f"importance for {metric} (fANOVA)")
    ax.set_xlim(0, max(values + [1e-9]) * 1.2)
    ax.set_title("hyperparameter importance")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
