"""Tracking: the loop's records reach TensorBoard and MLflow, read back with those libraries' own readers."""

import json
import shutil
from pathlib import Path

import pytest

import lmforge
from classify_synth import sentiment_records, tiny_overrides, write_jsonl
from lmforge.classify.config import ClassifyConfig
from lmforge.classify.run import train_classifier
from lmforge.config import load_config
from test_train import small_cfg


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tb_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_every_logged_figure_and_resume_replaces_the_tail(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = small_cfg(corpus, run, **{"train.max_steps": 20, "eval.interval": 10, "train.keep_checkpoints": 5})
    lmforge.train(cfg, progress=False)
    logged = records(run)
    tb = tb_scalars(run / "tb")
    for tag in ("train_loss", "val_loss", "val_bpb", "lr", "tokens_per_s", "grad_norm"):
        assert tag in tb, tag
    for r in logged:
        for key in ("train_loss", "lr", "val_loss", "val_bpb"):
            if key in r:
                assert tb[key][r["step"]] == pytest.approx(r[key], rel=1e-6)
    assert sorted(tb["val_loss"]) == [10, 20]

    # Resume from step 10 after losing the last checkpoint: TensorBoard keeps one value per step,
    # the resumed run's (same data order and seed, so the same losses).
    shutil.rmtree(run / "checkpoints" / "step_0000020")
    lmforge.train(resume=run, progress=False)
    again = tb_scalars(run / "tb")
    assert sorted(again["train_loss"]) == list(range(1, 21))
    assert again["train_loss"][15] == pytest.approx(tb["train_loss"][15], rel=1e-4)


def test_mlflow_local_store_holds_the_run(corpus, tmp_path):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    cfg = small_cfg(corpus, run, **{"train.max_steps": 12, "eval.interval": 6, "train.track": "mlflow"})
    lmforge.train(cfg, progress=False)
    assert not (run / "tb").exists()
    saved = json.loads((run / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{(run / 'mlflow.db').resolve()}")
    mlrun = client.get_run(saved["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    logged = records(run)
    for key in ("train_loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_per_s"):
        history = {m.step: m.value for m in client.get_metric_history(saved["run_id"], key)}
        expected = {r["step"]: r[key] for r in logged if key in r}
        assert history.keys() == expected.keys(), key
        for step, value in expected.items():
            assert history[step] == pytest.approx(value, rel=1e-6)


def test_track_none_writes_no_tracking_files(corpus, tmp_path):
    run = tmp_path / "run"
    lmforge.train(small_cfg(corpus, run, **{"train.max_steps": 5, "train.track": "none"}), progress=False)
    assert not (run / "tb").exists() and not (run / "mlflow.db").exists()


def test_classifier_members_and_final_metrics_are_tracked(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_records(200, seed=0))
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_records(60, seed=1))
    over = tiny_overrides(tmp_path / "clf", **{"model.kind": "ensemble", "model.members": "linear,fasttext",
                                                "train.epochs": 2})
    cfg = load_config(None, {"data.path": str(data), "data.test_path": str(test), **over}, cls=ClassifyConfig)
    result = train_classifier(cfg, progress=False)
    member = tb_scalars(tmp_path / "clf" / "fasttext" / "tb")
    for tag in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr"):
        assert tag in member, tag
    final = tb_scalars(tmp_path / "clf" / "tb")
    assert final["test_accuracy"][0] == pytest.approx(result.test["accuracy"])
    assert final["valid_macro_f1"][0] == pytest.approx(result.valid["macro_f1"])
    assert final["test_f1_pos"][0] == pytest.approx(result.test["per_class"]["pos"]["f1"])
