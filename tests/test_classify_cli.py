"""The classify command: train with no options, eval --json, predict reproducing eval, folds, resume, presets."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from classify_synth import chinese_records, sentiment_records, tiny_overrides, write_csv, write_jsonl
from lmforge.classify.config import ClassifyConfig
from lmforge.classify.run import train_classifier
from lmforge.cli import main
from lmforge.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "classify").glob("*.yaml"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"train": write_jsonl(root / "train.jsonl", sentiment_records(300, seed=0)),
            "test": write_jsonl(root / "test.jsonl", sentiment_records(100, seed=1)),
            "root": root}


def test_train_with_no_options_then_eval_and_predict_agree(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["classify", "train", "--data", str(data["train"]), "--test", str(data["test"]),
               "--text-field", "text", "--label-field", "label", "--out", str(run), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["members"] == ["linear", "fasttext", "bilstm"]  # the default for small English data
    assert result["test"]["accuracy"] >= 0.95
    for name in ("config.yaml", "labels.json", "ensemble.json", "metrics.json", "confusion_test.png",
                 "linear/linear.safetensors", "fasttext/model.safetensors", "fasttext/metrics.jsonl"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["kind"] == "ensemble" and saved["text"]["vectors"] == "train"
    assert saved["text"]["language"] == "en"

    assert main(["classify", "eval", str(run), "--data", str(data["test"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "roc_auc", "n"):
        assert key in metrics
    assert metrics["n"] == 100
    assert metrics["accuracy"] == pytest.approx(result["test"]["accuracy"])

    out = tmp_path / "pred.jsonl"
    assert main(["classify", "predict", str(run), "--input", str(data["test"]), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    truth = [json.loads(line)["label"] for line in data["test"].read_text().splitlines()]
    assert len(rows) == 100 and set(rows[0]) == {"row", "label", "p_neg", "p_pos"}
    assert [r["row"] for r in rows] == list(range(1, 101))  # joinable back to the input
    pred = [r["label"] for r in rows]
    y = [t == "pos" for t in truth]
    assert accuracy_score(truth, pred) == pytest.approx(metrics["accuracy"])
    assert f1_score(truth, pred, average="macro") == pytest.approx(metrics["macro_f1"])
    assert roc_auc_score(y, [r["p_pos"] for r in rows]) == pytest.approx(metrics["roc_auc"])

    csv_out = tmp_path / "pred.csv"
    assert main(["classify", "predict", str(run), "--input", str(data["test"]), "--output", str(csv_out)]) == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "row,label,p_neg,p_pos" and len(lines) == 101
    assert [ln.split(",")[1] for ln in lines[1:]] == pred

    # The decision threshold moves binary decisions.
    assert main(["classify", "eval", str(run), "--data", str(data["test"]), "--json", "--threshold", "0.99"]) == 0
    strict = json.loads(capsys.readouterr().out)
    assert strict["per_class"]["pos"]["recall"] <= metrics["per_class"]["pos"]["recall"]


def test_auto_plan_depends_on_language_and_size():
    from lmforge.classify.run import resolve_auto

    small = resolve_auto(ClassifyConfig(), ["a short english review"] * 100)
    assert small.model.member_kinds() == ["linear", "fasttext", "bilstm"] and small.model.linear.features == "nb"
    big = resolve_auto(ClassifyConfig(), ["word " * 1000] * 2000)  # 6M words x epochs: BiLSTM too slow
    assert big.model.member_kinds() == ["linear", "fasttext"] and big.text.vectors is None
    zh = resolve_auto(ClassifyConfig(), ["这家酒店的服务非常好，房间也很干净。"] * 50)
    assert zh.text.language == "zh" and zh.text.tokenizer == "word"
    assert zh.model.linear.features == "tfidf" and zh.model.linear.char_ngrams == 3


def test_bad_input_is_a_clear_cli_error(data, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "good", "label": "pos"}, {"txt": "bad", "label": "neg"}])
    rc = main(["classify", "train", "--data", str(bad), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "bad.jsonl:2: no field 'text'" in capsys.readouterr().err


def test_csv_input_and_k_fold_cross_validation(data, tmp_path):
    recs = sentiment_records(150, seed=4)
    train = write_csv(tmp_path / "train.csv", [{"review": r["text"], "stars": 5 if r["label"] == "pos" else 1}
                                               for r in recs])
    cfg = load_config(None, {"data.path": str(train), "data.text_field": "review", "data.label_field": "stars",
                             "model.kind": "linear", "eval.folds": "3", **tiny_overrides(tmp_path / "cv")},
                      cls=ClassifyConfig)
    result = train_classifier(cfg, progress=False)
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["folds"] == 3 and len(cv["fold_metrics"]) == 3
    for key in ("accuracy", "macro_f1", "roc_auc", "weighted_f1"):
        assert set(cv[key]) == {"mean", "std", "values"}
        assert cv[key]["mean"] == pytest.approx(np.mean(cv[key]["values"]))
    assert cv["accuracy"]["mean"] >= 0.9
    assert result.cv["folds"] == 3
    assert json.loads((tmp_path / "cv" / "labels.json").read_text())["labels"] == [1, 5]


def test_resume_continues_to_the_same_weights(data, tmp_path):
    over = tiny_overrides(tmp_path / "a", **{"model.kind": "bilstm", "train.epochs": 4, "eval.interval": 3,
                                              "train.keep_checkpoints": 20})
    base = {"data.path": str(data["train"]), **over}
    train_classifier(load_config(None, base, cls=ClassifyConfig), progress=False)
    ckpts = sorted((tmp_path / "a" / "bilstm" / "checkpoints").glob("step_*"))
    final = load_file(str(ckpts[-1] / "model.safetensors"))
    # Simulate a kill after an early checkpoint: drop the later ones and resume.
    for later in ckpts[2:]:
        import shutil

        shutil.rmtree(later)
    train_classifier(resume=tmp_path / "a", progress=False)
    resumed = load_file(str(sorted((tmp_path / "a" / "bilstm" / "checkpoints").glob("step_*"))[-1]
                            / "model.safetensors"))
    for k in final:
        assert np.allclose(final[k].numpy(), resumed[k].numpy(), atol=1e-6), k


def test_cli_help_lists_classifier_options():
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "classify", "train", "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert "--model.bilstm.hidden_dim" in out and "--data.class_weights" in out and "--folds" in out
    assert "--train.global_batch_tokens" not in out


def test_classifier_config_has_only_fields_that_apply():
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'train.global_batch_tokens'"):
        load_config(None, {"train.global_batch_tokens": "4096"}, cls=ClassifyConfig)
    cfg = load_config(None, {"optim.kind": "muon"}, cls=ClassifyConfig)
    assert cfg.optim.lr == 0.0  # a section given in part keeps the classifier's own defaults


def test_there_are_presets_for_imdb_and_chinese():
    names = {p.name for p in PRESETS}
    assert {"imdb-bilstm.yaml", "imdb-best.yaml", "imdb-fasttext.yaml", "sst2-best.yaml", "chinese-sentiment.yaml"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_validate_and_learn(preset, tmp_path):
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# lmforge classify train --config configs/classify/"), first
    cfg = load_config(preset, cls=ClassifyConfig)
    if "gpt" in cfg.model.member_kinds():
        pytest.skip("needs a pretrained GPT run folder")
    records = chinese_records if cfg.text.language == "zh" else sentiment_records
    train = write_jsonl(tmp_path / "train.jsonl", records(300, seed=0))
    test = write_jsonl(tmp_path / "test.jsonl", records(200, seed=1))
    # The preset's models and settings on easy tiny data, in small batches so that its learning
    # rates have steps enough (about 170) to learn it.
    over = {"data.path": str(train), "out": str(tmp_path / "run"), "train.epochs": "10", "train.batch_size": "16",
            "data.valid_path": "", "data.test_path": str(test), "eval.folds": "0", "train.time_budget_s": "0",
            "model.linear.min_df": "1", "text.min_freq": "1", "model.stacking": "split"}
    if cfg.text.vectors:  # a preset's vectors file is made from the real data: use the tiny data's own
        over.update({"text.vectors": "train", "text.vectors_dim": "16"})
    result = train_classifier(load_config(preset, over, cls=ClassifyConfig), progress=False)
    # Chance is 0.5 (balanced classes). Measured: 0.96 to 1.0, each member 0.89 to 1.0.
    assert result.test["accuracy"] >= 0.9, result.test
    for member, metrics in result.test.get("members", {}).items():
        assert metrics["accuracy"] >= 0.75, (member, metrics)


def test_vectors_command_then_training_with_them(data, tmp_path, capsys):
    vec = tmp_path / "vec.txt"
    assert main(["classify", "vectors", "--data", str(data["train"]), "--out", str(vec), "--dim", "16",
                 "--min-count", "2"]) == 0
    header = vec.read_text().splitlines()[0].split()
    assert int(header[1]) == 16 and int(header[0]) > 10
    from lmforge.classify.vectors import train_word_vectors

    wv = train_word_vectors([json.loads(x)["text"] for x in data["train"].read_text().splitlines()], dim=16,
                            min_count=2)
    assert wv.matrix.shape[1] == 16 and np.allclose(np.linalg.norm(wv.matrix, axis=1), 1, atol=1e-4)
    for vectors in (str(vec), "train"):
        over = tiny_overrides(tmp_path / f"run_{len(vectors)}", **{"model.kind": "bilstm", "text.vectors": vectors,
                                                                    "text.vectors_dim": 16})
        cfg = load_config(None, {"data.path": str(data["train"]), "data.test_path": str(data["test"]), **over},
                          cls=ClassifyConfig)
        result = train_classifier(cfg, progress=False)
        assert result.test["accuracy"] >= 0.95
        assert result.member_facts["bilstm"]["vectors_found"] > 10


def test_two_process_ddp_matches_one_process(data, tmp_path):
    """The classifier trains through the same DDP path as the LM: 2 processes give 1 process's weights."""
    import os
    import socket

    def args(out: Path) -> list[str]:
        over = tiny_overrides(out, **{"model.kind": "bilstm", "train.epochs": 2, "model.bilstm.dropout": 0.0,
                                      "eval.interval": 0})
        return ["classify", "train", "--data", str(data["train"]), "--test", str(data["test"]),
                *[a for k, v in over.items() for a in (f"--{k}", v)]]

    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "lmforge.cli", *args(tmp_path / "one")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          "--master_addr=127.0.0.1", "-m", "lmforge.cli", *args(tmp_path / "two")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    a = load_file(str(tmp_path / "one" / "bilstm" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "bilstm" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-5, rtol=1e-4), k
    ma = json.loads((tmp_path / "one" / "metrics.json").read_text())["test"]
    mb = json.loads((tmp_path / "two" / "metrics.json").read_text())["test"]
    assert ma["accuracy"] == mb["accuracy"] and ma["log_loss"] == pytest.approx(mb["log_loss"], abs=1e-5)
