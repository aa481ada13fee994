"""The report's plots (matplotlib, PNG bytes): training curves, confusion matrix, ROC, calibration, comparisons."""

from __future__ import annotations

import numpy as np

from lmforge.report import svg
from lmforge.report.document import figure_png


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(records: list[dict]) -> list[str]:
    """SVG charts of the loss (train and validation), learning rate, throughput and gradient norm by step."""
    def series(key):
        return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r]

    charts = [svg.line_chart([(label, series(key)) for key, label in lines if series(key)], title,
                             markers={"validation"})
              for title, lines in (("loss", (("train_loss", "train"), ("val_loss", "validation"))),
                                   ("learning rate", (("lr", "lr"),)),
                                   ("tokens per second", (("tokens_per_s", "throughput"),)),
                                   ("gradient norm", (("grad_norm", "grad norm"),)))]
    return [c for c in charts if c]


def confusion(cm: list[list[int]], names: list[str], title: str) -> str:
    return svg.grid(cm, names, title)


def roc_and_calibration(y: np.ndarray, proba: np.ndarray, names: list[str]) -> list[str]:
    """ROC curve per class (one-vs-rest; the second class only for two) and a reliability diagram of the
    top-class confidence, as SVG charts."""
    from sklearn.metrics import auc, roc_curve

    roc = []
    for c in ([1] if len(names) == 2 else range(len(names))):
        if (y == c).any() and (y != c).any():
            fpr, tpr, _ = roc_curve(y == c, proba[:, c])
            roc.append((f"{names[c]} (AUC {auc(fpr, tpr):.3f})", list(zip(fpr.tolist(), tpr.tolist()))))
    conf, correct = proba.max(1), proba.argmax(1) == y
    edges = np.linspace(0, 1, 11)
    bins = [(conf > lo) & (conf <= hi) for lo, hi in zip(edges[:-1], edges[1:])]
    reliability = [(float(conf[b].mean()), float(correct[b].mean())) for b in bins if b.any()]
    return [c for c in (
        svg.line_chart(roc, "ROC", xlabel="false positive rate", diagonal=True, limits=(0, 1, 0, 1)),
        svg.line_chart([("accuracy by confidence", reliability)], "calibration (diagonal: calibrated)",
                       xlabel="confidence of the predicted class", diagonal=True, markers={"accuracy by confidence"},
                       limits=(0, 1, 0, 1))) if c]


def overlay(curves: dict[str, dict[str, list[tuple[int, float]]]], title: str, software: str | None = None) -> bytes:
    """One plot of several runs: validation loss solid, training loss faint, one colour per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        if c.get("train"):
            ax.plot(*zip(*c["train"]), color=color, alpha=0.35, linewidth=1.0)
        if c.get("val"):
            ax.plot(*zip(*c["val"]), "o-", color=color, markersize=3, linewidth=1.5, label=name)
        elif c.get("train"):
            ax.plot([], [], color=color, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (validation solid, training faint)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig, software)
