"""Self-training: which unlabeled texts join the training texts, and with which label.

A trained classifier's class probabilities on unlabeled texts are pseudo-labels. Only those it is
sure of are worth training on (probability of the predicted class >= a threshold), the most
confident first. Each class takes at most its share of the labeled texts: a classifier that leans
to one class is surest of that class, and unbounded it would feed its own bias back (on a 76%
positive set, nearly every confident text would be positive).
"""

from __future__ import annotations

import numpy as np


def select_pseudo(proba: np.ndarray, labeled_y: np.ndarray, n_classes: int, threshold: float,
                  max_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices into proba's rows, their predicted classes): rows whose top probability reaches
    `threshold`, at most `max_texts` in all, class c at most its share of `labeled_y` of them,
    the most confident first (ties by row order)."""
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    share = np.bincount(labeled_y, minlength=n_classes) / max(len(labeled_y), 1)
    taken = []
    for c in range(n_classes):
        rows = np.flatnonzero((pred == c) & (conf >= threshold))
        rows = rows[np.argsort(-conf[rows], kind="stable")]
        taken.append(rows[: int(round(share[c] * max_texts))])
    idx = np.sort(np.concatenate(taken)).astype(np.int64)
    return idx, pred[idx]


def held_out_texts(*texts: list[str]) -> set[str]:
    """Stripped texts of the validation and test parts: an unlabeled copy of one is never pseudo-labeled
    and trained on, so that weighing and scoring stay on texts no model learned from."""
    return {t.strip() for part in texts for t in part}
