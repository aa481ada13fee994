"""The run report card (HTML self-contained, Markdown with figure files) and `lmforge compare`."""

import base64
import html
import json
import random
import re

import numpy as np
import pytest

from classify_synth import sentiment_records, tiny_overrides, write_jsonl
from lmforge.classify.config import ClassifyConfig
from lmforge.classify.run import train_classifier
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.report.document import fmt_cell

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_self_contained(page: str) -> list:
    """Charts are inline SVG or base64 PNG; nothing is loaded from elsewhere."""
    assert not re.search(r"""(src|href)\s*=\s*['"](https?:|//)""", page), "the report must not load anything"
    assert "<script" not in page and "<link" not in page
    images = [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]
    assert all(img.startswith(PNG_MAGIC) for img in images)
    charts = images + re.findall(r"<svg .*?</svg>", page)
    assert charts
    return charts


def check_markdown(run):
    md = (run / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert figures
    for f in figures:
        data = (run / f).read_bytes()
        assert data.startswith(PNG_MAGIC) or (data.startswith(b"<svg") and data.endswith(b"</svg>")), f
    return md


def test_lm_report_has_data_plan_curves_metrics_samples_and_environment(trained_runs):
    run = trained_runs["lm"]
    page = (run / "report.html").read_text()  # written at the end of training
    check_self_contained(page)
    prep = json.loads((run / "data" / "prepare.json").read_text())["summary"]
    result = json.loads((run / "result.json").read_text())
    for title in ("Final metrics", "Data", "Configured against outcome", "Curves", "Samples", "Model",
                  "Timings (seconds)", "Hardware and software"):
        assert f"<h2>{title}" in page, title
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    pairs = dict(zip(cells[::2], cells[1::2]))
    assert pairs["duplicates removed"] == fmt_cell(prep["cleaning"]["removed_duplicate"])
    assert pairs["bytes per token"] == fmt_cell(prep["bytes_per_token"])
    assert pairs["validation loss (nats/token)"] == fmt_cell(result["val_loss"])
    assert pairs["bits per byte"] == fmt_cell(result["val_bpb"])
    assert html.escape(json.loads((run / "samples.json").read_text())[0]) in page
    md = check_markdown(run)
    assert "## Final metrics" in md and fmt_cell(result["val_loss"]) in md


def test_chat_report_shows_replies_before_and_after(trained_runs):
    run = trained_runs["chat"]
    page = (run / "report.html").read_text()
    check_self_contained(page)
    samples = json.loads((run / "samples.json").read_text())
    assert "assistant-token loss before fine-tuning" in page
    assert html.escape(samples[0]["after"]["reply"]) in page and "before fine-tuning:" in page


@pytest.fixture(scope="module")
def noisy_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    train = sentiment_records(240, seed=0, cues=1)
    test = sentiment_records(80, seed=1, cues=1)
    rng = random.Random(0)
    for r in test:  # a few wrong labels, so that the report has errors to list
        if rng.random() < 0.15:
            r["label"] = "pos" if r["label"] == "neg" else "neg"
    over = tiny_overrides(root / "run", **{"model.kind": "linear"})
    cfg = load_config(None, {"data.path": str(write_jsonl(root / "train.jsonl", train)),
                             "data.test_path": str(write_jsonl(root / "test.jsonl", test)), **over}, cls=ClassifyConfig)
    train_classifier(cfg, progress=False)
    return root / "run", test


def test_classifier_report_has_per_class_roc_calibration_and_confident_errors(noisy_classifier):
    run, test = noisy_classifier
    page = (run / "report.html").read_text()
    assert len(check_self_contained(page)) >= 3  # confusion, ROC, calibration
    for title in ("Final metrics", "Per class (test)", "Confusion, ROC and calibration", "Most confident errors (test)"):
        assert f"<h2>{title}" in page, title
    errors = json.loads((run / "errors_test.json").read_text())
    details = np.load(run / "eval_test.npz")
    y, proba = details["y"], details["proba"]
    wrong = np.flatnonzero(proba.argmax(1) != y)
    assert len(errors) == min(10, len(wrong)) > 0
    conf = [e["confidence"] for e in errors]
    assert conf == sorted(conf, reverse=True) and conf[0] == pytest.approx(proba[wrong].max(1).max(), rel=1e-6)
    for e in errors:
        assert test[e["index"]]["text"] == e["text"] and test[e["index"]]["label"] == e["true"] != e["predicted"]
    assert html.escape(errors[0]["text"][:300]) in page
    metrics = json.loads((run / "metrics.json").read_text())
    assert fmt_cell(metrics["test"]["accuracy"]) in page
    check_markdown(run)


def test_report_command_rewrites_and_rejects_other_folders(trained_runs, tmp_path, capsys):
    run = trained_runs["lm"]
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and str(run / "report.md") in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an lmforge run folder" in capsys.readouterr().err


def test_compare_prints_every_run_and_writes_one_plot(trained_runs, noisy_classifier, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    runs = [trained_runs["lm"], trained_runs["chat"], noisy_classifier[0]]
    assert main(["compare", *map(str, runs), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in result["rows"]] == ["lm", "chat", "run"]
    lm = json.loads((trained_runs["lm"] / "result.json").read_text())
    assert result["rows"][0]["val_loss"] == pytest.approx(lm["val_loss"])
    assert result["rows"][2]["accuracy"] == pytest.approx(
        json.loads((noisy_classifier[0] / "metrics.json").read_text())["test"]["accuracy"])
    assert result["plot"] == str(out) and out.read_bytes().startswith(PNG_MAGIC)
    assert main(["compare", str(trained_runs["lm"]), str(trained_runs["chat"]), "--out", str(out)]) == 0
    table = capsys.readouterr().err
    assert "lm" in table and "chat" in table and "loss curves" in table
