"""Metrics agree with scikit-learn; folds are disjoint and stratified; imbalance options do what they say."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from classify_synth import one_thread  # noqa: F401  (autouse fixture)
from lmforge.classify.data import (balanced_class_weights, bucketed_batches, kfold_splits, oversample_indices,
                                   stratified_split)
from lmforge.classify.task import ClassifyTask
from lmforge.classify.metrics import (classification_metrics, confusion_table, predict_labels,
                                         save_confusion_png, summarize_folds)
from lmforge.trainer.runtime import Runtime

CPU = Runtime(0, 1, 0, torch.device("cpu"), "fp32")


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.6 * y + 0.4 * rng.random(200), 0, 1)
    proba = np.stack([1 - p1, p1], 1)
    m = classification_metrics(y, proba, ["neg", "pos"])
    pred = (p1 >= 0.5).astype(int)
    assert m["n"] == 200
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_precision"] == pytest.approx(skm.precision_score(y, pred, average="weighted"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert m["per_class"]["pos"]["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["per_class"]["neg"]["support"] == int((y == 0).sum())
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_multiclass_metrics_match_sklearn_and_threshold_only_binary():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 2.0 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba, [0, 1, 2], threshold=0.9)
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert "threshold" not in m
    # AUC is undefined when a class is missing from the truth.
    assert classification_metrics(np.zeros(5, int), proba[:5], [0, 1, 2])["roc_auc"] is None


def test_threshold_moves_binary_decisions():
    proba = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    assert predict_labels(proba, 0.5).tolist() == [0, 1, 1]
    assert predict_labels(proba, 0.25).tolist() == [1, 1, 1]
    assert predict_labels(proba, 0.7).tolist() == [0, 0, 1]
    m = classification_metrics(np.array([0, 0, 1]), proba, ["a", "b"], threshold=0.7)
    assert m["accuracy"] == 1.0 and m["threshold"] == 0.7


def test_confusion_table_and_png(tmp_path):
    cm = [[5, 1], [2, 7]]
    text = confusion_table(cm, ["neg", "pos"])
    assert "neg" in text and "7" in text.splitlines()[2]
    png = save_confusion_png(cm, ["neg", "pos"], tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fold_summary_mean_and_sample_std():
    folds = [{"accuracy": a, "macro_f1": a - 0.1, "per_class": {"x": {"precision": a, "recall": a, "f1": a}}}
             for a in (0.8, 0.9, 1.0)]
    s = summarize_folds(folds)
    assert s["accuracy"]["mean"] == pytest.approx(0.9)
    assert s["accuracy"]["std"] == pytest.approx(np.std([0.8, 0.9, 1.0], ddof=1))
    assert s["per_class"]["x"]["f1"]["mean"] == pytest.approx(0.9)
    assert s["folds"] == 3


def test_kfold_splits_are_disjoint_cover_all_and_stratified():
    y = np.array([0] * 60 + [1] * 30 + [2] * 15)
    splits = kfold_splits(y, 5, seed=3)
    tests = [te for _, te in splits]
    assert sum(len(t) for t in tests) == len(y)
    assert len(np.unique(np.concatenate(tests))) == len(y)
    for tr, te in splits:
        assert not set(tr) & set(te)
        assert np.bincount(y[te], minlength=3).tolist() == [12, 6, 3]  # each class split evenly
    tr, va = stratified_split(y, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == len(y)
    assert np.bincount(y[va]).tolist() == [12, 6, 3]


def test_class_weights_reweight_the_loss():
    y = np.array([0] * 90 + [1] * 10)
    w = balanced_class_weights(y, 2)
    assert w.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])

    class Fixed(torch.nn.Module):
        def forward(self, ids, lengths):
            return torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    seqs = [np.array([1, 2]), np.array([3]), np.array([4, 5, 6])]
    labels = np.array([0, 1, 1])
    batch = (None, None, torch.tensor(labels))
    logits = Fixed()(None, None)
    plain = ClassifyTask(Fixed(), seqs, labels, seqs, labels, 3, 0)
    weighted = ClassifyTask(Fixed(), seqs, labels, seqs, labels, 3, 0, class_weights=np.array([1.0, 5.0]))
    assert plain.loss(Fixed(), batch).item() == pytest.approx(F.cross_entropy(logits, batch[2]).item())
    per = F.cross_entropy(logits, batch[2], reduction="none")
    expected = (per * torch.tensor([1.0, 5.0, 5.0])).sum() / 11.0
    assert weighted.loss(Fixed(), batch).item() == pytest.approx(expected.item())
    # Errors on the up-weighted class now cost more than before.
    assert weighted.loss(Fixed(), batch).item() > plain.loss(Fixed(), batch).item()


def test_oversampling_balances_classes():
    y = np.array([0] * 50 + [1] * 5 + [2] * 20)
    idx = oversample_indices(y, seed=0)
    assert np.bincount(y[idx]).tolist() == [50, 50, 50]
    assert set(range(len(y))) <= set(idx.tolist())  # every original example is kept


def test_bucketed_batches_cover_the_epoch_with_fixed_size_and_are_seeded():
    lengths = np.random.default_rng(0).integers(1, 100, 103)
    a = bucketed_batches(lengths, 8, np.random.default_rng([1, 0]), pool_batches=4)
    b = bucketed_batches(lengths, 8, np.random.default_rng([1, 0]), pool_batches=4)
    assert all(len(x) == 8 for x in a)
    assert set(np.concatenate(a).tolist()) == set(range(103))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    # Within a batch lengths are close: far less spread than random batches.
    spread = np.mean([lengths[x].max() - lengths[x].min() for x in a])
    assert spread < 40
