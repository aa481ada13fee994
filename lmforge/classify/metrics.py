"""Classification metrics (all computed by scikit-learn), the confusion matrix as a table and a PNG,
and the mean and standard deviation of metrics over cross-validation folds."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Scalar metrics, in the order they are printed.
SCALAR_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1",
                  "weighted_precision", "weighted_recall", "roc_auc", "log_loss")


def check_threshold(threshold: float, n_classes: int, given: float | None) -> float:
    """The decision threshold, refused when --threshold is outside (0, 1) or given for more than two classes."""
    from lmforge.errors import ConfigError

    if given is not None:
        if not (math.isfinite(given) and 0.0 < given < 1.0):
            raise ConfigError(f"--threshold {given}: must be a probability between 0 and 1 (exclusive)")
        if n_classes != 2:
            raise ConfigError(f"--threshold applies to two-class runs only; this run has {n_classes} classes "
                              "(each text gets its most probable class)")
    return threshold


def predict_labels(proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class ids from probabilities; binary tasks pick class 1 when its probability reaches `threshold`."""
    if proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, names: Sequence, threshold: float = 0.5) -> dict:
    """Every standard metric for true class ids and predicted class probabilities (n, classes).

    roc_auc is binary AUC for two classes and macro one-vs-rest AUC for more; it is None when a
    class is missing from y_true (AUC is undefined then).
    """
    from sklearn.metrics import (accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support,
                                 roc_auc_score)

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True).clip(1e-300)  # float32 softmax rows drift from 1
    k = len(names)
    labels = list(range(k))
    pred = predict_labels(proba, threshold)
    out: dict = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, pred, labels=labels, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {str(names[i]): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                        "support": int(s[i])} for i in range(k)}
    present = np.unique(y_true)
    if len(present) == k:
        if k == 2:
            out["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            out["roc_auc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels))
    else:
        out["roc_auc"] = None
    out["log_loss"] = float(log_loss(y_true, proba, labels=labels))
    out["confusion_matrix"] = confusion_matrix(y_true, pred, labels=labels).tolist()
    out["labels"] = [n if isinstance(n, (int, str)) else str(n) for n in names]
    if k == 2:
        out["threshold"] = threshold
    return out


def confusion_table(cm: Sequence[Sequence[int]], names: Sequence) -> str:
    """The confusion matrix as aligned text: rows are true classes, columns predicted ones."""
    labels = [str(n) for n in names]
    width = max([len(x) for x in labels] + [len(str(v)) for row in cm for v in row] + [6])
    head = "true \\ pred".ljust(width + 2) + " ".join(x.rjust(width) for x in labels)
    lines = [head]
    for name, row in zip(labels, cm):
        lines.append(name.ljust(width + 2) + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def save_confusion_png(cm: Sequence[Sequence[int]], names: Sequence, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm)
    k = len(names)
    size = min(2.0 + 0.6 * k, 14)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), [str(n) for n in names], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), [str(n) for n in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    if k <= 20:
        hi = m.max() if m.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="white" if hi and m[i, j] > hi / 2 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def summarize_folds(fold_metrics: list[dict]) -> dict:
    """{metric: {'mean', 'std', 'values'}} over folds, for every scalar metric and per-class score.

    The standard deviation is the sample one (ddof=1), the usual choice for k-fold estimates.
    """
    out: dict = {}
    keys = [k for k in SCALAR_METRICS if all(m.get(k) is not None for m in fold_metrics)]
    for key in keys:
        vals = [float(m[key]) for m in fold_metrics]
        out[key] = _mean_std(vals)
    per_class: dict = {}
    for name in fold_metrics[0].get("per_class", {}):
        per_class[name] = {s: _mean_std([m["per_class"][name][s] for m in fold_metrics])
                           for s in ("precision", "recall", "f1")}
    out["per_class"] = per_class
    out["folds"] = len(fold_metrics)
    return out


def _mean_std(vals: list[float]) -> dict:
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std if math.isfinite(std) else 0.0, "values": [float(v) for v in arr]}


def format_metrics(m: dict) -> list[tuple[str, str]]:
    """Rows for a summary table."""
    rows = []
    for key in SCALAR_METRICS:
        v = m.get(key)
        if isinstance(v, dict):
            rows.append((key, f"{v['mean']:.4f} ± {v['std']:.4f}"))
        elif v is not None:
            rows.append((key, f"{v:.4f}"))
    if "n" in m:
        rows.append(("examples", f"{m['n']:,}"))
    return rows


def flat_metrics(m: dict | None, prefix: str) -> dict[str, float]:
    """Every scalar and per-class score as one flat mapping ('test_accuracy', 'test_f1_pos', ...), for trackers."""
    if not m:
        return {}
    out = {f"{prefix}_{k}": float(m[k]) for k in SCALAR_METRICS if isinstance(m.get(k), (int, float))}
    for name, scores in m.get("per_class", {}).items():
        for s in ("precision", "recall", "f1"):
            if isinstance(scores.get(s), (int, float)):
                out[f"{prefix}_{s}_{name}"] = float(scores[s])
    return out
