"""Hyperparameter search: isolated trials, outputs, a pluggable task, and resuming a killed study."""

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna
import pytest
import torch
import yaml

from lmforge.auto.tune import TaskSpec, load_tune_spec, parse_space, register_task, tune
from lmforge.config import Config, from_dict, load_config
from lmforge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# --- a fake task: the hook a second task (the classifier) plugs into ---------------------------


@dataclass
class FakeModel:
    width: int = 8
    kind: Literal["a", "b"] = "a"

    def validate(self):
        if self.width > 1000:
            raise ConfigError("config field 'model.width': too wide")


@dataclass
class FakeOptim:
    lr: float = 0.1

    def validate(self):
        pass


@dataclass
class FakeTrain:
    time_budget_s: float = 0.0

    def validate(self):
        pass


@dataclass
class FakeConfig:
    out: str = "runs/fake"
    seed: int = 0
    model: FakeModel = field(default_factory=FakeModel)
    optim: FakeOptim = field(default_factory=FakeOptim)
    train: FakeTrain = field(default_factory=FakeTrain)

    def validate(self):
        self.model.validate()
        return self


CALLS = {"n": 0}


def fake_train(cfg, progress=False, on_eval=None):
    CALLS["n"] += 1
    if CALLS["n"] == 3:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
    final = (math.log10(cfg.optim.lr) + 2) ** 2 + (0.1 if cfg.model.kind == "b" else 0) + 1 / cfg.model.width
    for step in range(1, 6):
        if on_eval is not None:
            on_eval(step, {"step": step, "val_loss": final + 1.0 / step, "elapsed_s": float(step)})
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return {"val_loss": final, "steps": 5}


register_task("fake", lambda: TaskSpec("fake", FakeConfig, fake_train, "val_loss"))


def write(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_space_is_checked_against_the_config():
    params = parse_space({"optim.lr": {"low": 1e-4, "high": 1e-1, "log": True}, "model.n_layer": {"low": 2, "high": 6},
                          "model.d_model": [32, 64], "schedule.kind": ["cosine", "wsd"]}, Config)
    kinds = {p.name: p.kind for p in params}
    assert kinds == {"optim.lr": "float", "model.n_layer": "int", "model.d_model": "categorical",
                     "schedule.kind": "categorical"}
    with pytest.raises(ConfigError, match="Did you mean 'optim.lr'"):
        parse_space({"optim.lrr": {"low": 1, "high": 2}}, Config)
    with pytest.raises(ConfigError, match="below high"):
        parse_space({"optim.lr": {"low": 1, "high": 1}}, Config)
    with pytest.raises(ConfigError, match="list its choices"):
        parse_space({"schedule.kind": {"low": 1, "high": 2}}, Config)


def test_study_isolates_failed_trials_and_writes_results(tmp_path):
    CALLS["n"] = 0
    f = write(tmp_path / "tune.yaml", {
        "task": "fake",
        "search": {"optim.lr": {"low": 1e-4, "high": 1.0, "log": True}, "model.width": [4, 8, 16],
                   "model.kind": ["a", "b"]},
        "train": {"time_budget_s": 5},
    })
    spec = load_tune_spec(f)
    res = tune(spec, 8, out=tmp_path / "study", progress=False, seed=1)
    c = res.counts
    assert c["complete"] + c["pruned"] + c["failed"] == 8 and c["failed"] == 1
    failed = [t for t in res.trials if t["state"] == "failed"]
    assert failed[0]["number"] == 2 and failed[0]["error"].startswith("out of memory")
    best = min((t for t in res.trials if t["state"] == "complete"), key=lambda t: t["value"])
    assert res.best_trial == best["number"] and res.best_value == pytest.approx(best["value"])
    cfg = from_dict(FakeConfig, yaml.safe_load(res.best_config.read_text()))
    assert cfg.optim.lr == pytest.approx(res.best_params["optim.lr"]) and cfg.model.kind == res.best_params["model.kind"]
    assert cfg.train.time_budget_s == 5
    assert (tmp_path / "study" / "importance.png").stat().st_size > 5_000
    assert set(res.importance) == {"optim.lr", "model.width", "model.kind"}
    assert (tmp_path / "study" / "study.db").is_file() and (tmp_path / "study" / "trials.json").is_file()
    # running it again with the same target does nothing: the study is complete
    calls = CALLS["n"]
    again = tune(spec, 8, out=tmp_path / "study", progress=False, seed=1)
    assert CALLS["n"] == calls and again.best_trial == res.best_trial


def test_pruner_stops_trials_that_trail(tmp_path):
    """Intermediate losses are reported (by tenths of a time budget) and a clearly worse trial is pruned."""
    CALLS["n"] = 100  # no simulated failure
    f = write(tmp_path / "tune.yaml", {"task": "fake", "search": {"model.width": [4, 1000 - 1]},
                                       "train": {"time_budget_s": 5}})
    spec = load_tune_spec(f)
    study = tmp_path / "study"
    storage = f"sqlite:///{study / 'study.db'}"
    study.mkdir()
    s = optuna.create_study(study_name="lmforge", storage=storage)
    for w in (999, 999, 999, 4):  # three good trials first, then a bad one
        s.enqueue_trial({"model.width": w})
    res = tune(spec, 4, out=study, progress=False)
    states = {t["number"]: t["state"] for t in res.trials}
    assert states[3] == "pruned" and res.counts["complete"] == 3


def test_lm_trials_share_prepared_data_and_best_config_trains(corpus, tmp_path):
    f = write(tmp_path / "tune.yaml", {
        "search": {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}, "model.d_model": [32, 64]},
        "data": {"path": str(corpus)}, "tokenizer": {"kind": "char"},
        "model": {"n_layer": 1, "n_head": 2, "context_len": 32},
        "train": {"max_steps": 8, "global_batch_tokens": 256}, "runtime": {"precision": "fp32", "compile": "off"},
        "schedule": {"warmup_steps": 2},
        "eval": {"interval": 4, "max_tokens": 1024}, "sample": {"num_samples": 0},
    })
    res = tune(load_tune_spec(f), 3, out=tmp_path / "study", progress=False)
    assert res.counts["complete"] + res.counts["pruned"] == 3
    for t in res.trials:
        data = Path(t["run_dir"]) / "data" / "train.bin"
        assert data.stat().st_nlink > 1  # hard-linked from the shared cache, not prepared again
    assert all(0 < t["val_bpb"] < 10 for t in res.trials if t["state"] == "complete")
    cfg = load_config(res.best_config)
    assert cfg.optim.lr == pytest.approx(res.best_params["optim.lr"])


def _trials(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("select number, state from trials order by number").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_killed_study_resumes_without_repeating_finished_trials(corpus, tmp_path):
    f = write(tmp_path / "tune.yaml", {
        "search": {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}, "schedule.warmup_steps": {"low": 1, "high": 5}},
        "data": {"path": str(corpus)}, "tokenizer": {"kind": "char"},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "context_len": 32},
        "train": {"max_steps": 12, "global_batch_tokens": 256}, "runtime": {"precision": "fp32", "compile": "off"},
        "eval": {"interval": 6, "max_tokens": 1024}, "sample": {"num_samples": 0},
    })
    study = tmp_path / "study"
    cmd = [sys.executable, "-m", "lmforge.cli", "tune", str(f), "--trials", "4", "--out", str(study), "--pruner", "none"]
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    db = study / "study.db"
    deadline = time.time() + 240
    while time.time() < deadline:
        rows = _trials(db) if db.exists() else []
        running = [r[0] for r in rows if r[1] == "RUNNING"]
        # kill inside a trial: its parameters are drawn once its folder exists
        if sum(1 for r in rows if r[1] == "COMPLETE") >= 2 and running and \
                (study / f"trial_{running[0]:04d}").exists():
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = optuna.load_study(study_name="lmforge", storage=f"sqlite:///{db}").trials
    finished = [t for t in before if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) in (2, 3) and any(t.state == optuna.trial.TrialState.RUNNING for t in before), \
        "the study finished before it could be killed"
    stamps = {t.number: (Path(t.user_attrs["run_dir"]) / "result.json").stat().st_mtime_ns for t in finished}

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stdout + again.stderr
    after = optuna.load_study(study_name="lmforge", storage=f"sqlite:///{db}").trials
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    for t in finished:  # finished trials are kept as they were, not run again
        same = after[t.number]
        assert same.state == t.state and same.value == t.value and same.params == t.params
        assert (Path(t.user_attrs["run_dir"]) / "result.json").stat().st_mtime_ns == stamps[t.number]
    interrupted = [t for t in before if t.state == optuna.trial.TrialState.RUNNING]
    retried = [t for t in after if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert len(retried) == 1 and retried[0].params == interrupted[0].params
    assert after[interrupted[0].number].state == optuna.trial.TrialState.FAIL
    assert "re-running interrupted trial" in again.stdout + again.stderr


def test_classification_configs_are_tuned_alike(tmp_path):
    """The same study machinery on the text classifier: its config class, its validation log-loss."""
    pytest.importorskip("lmforge.classify.run")
    import json as _json

    from classify_synth import sentiment_records

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(_json.dumps(r) for r in sentiment_records(300, seed=1)) + "\n", encoding="utf-8")
    f = write(tmp_path / "tune.yaml", {
        "task": "classify",
        "search": {"model.linear.C": {"low": 0.01, "high": 10.0, "log": True}, "model.linear.ngrams": [1, 2]},
        "data": {"path": str(data)}, "model": {"kind": "linear"},
    })
    spec = load_tune_spec(f)
    assert spec.task == "classify"
    res = tune(spec, 3, out=tmp_path / "study", progress=False)
    assert res.counts["complete"] == 3
    assert all(0 < t["value"] < 1 and 0.5 <= t["val_accuracy"] <= 1 for t in res.trials)
    from lmforge.classify.config import ClassifyConfig

    best = from_dict(ClassifyConfig, yaml.safe_load(res.best_config.read_text()))
    assert best.model.linear.C == pytest.approx(res.best_params["model.linear.C"])
