"""How an ensemble's members are weighed: from out-of-fold predictions on the training set, or a split.

With out-of-fold stacking (AutoGluon's way), the training set is cut into k stratified folds; for
each fold every member is trained on the other k-1 folds and predicts the held-out one, so each
training text gets one prediction per member from a model that never saw its label. The weights
are then tuned on all n of these predictions instead of on a 10% split: five to ten times more
texts to tune on, so weights that swing less from one split to the next. The members finally
kept are trained as before; the fold models only serve to weigh them and are deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product

import numpy as np

# fit_predict(train_index, held_out_index) -> class probabilities of each member for held_out_index
FitPredict = Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]]


def combine(probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted average of class probabilities, renormalized per row."""
    p = sum(w * p for w, p in zip(weights, probas))
    return p / p.sum(axis=1, keepdims=True)


def tune_weights(probas: Sequence[np.ndarray], y: np.ndarray, steps: int = 10,
                 kinds: Sequence[str] | None = None) -> list[float]:
    """Weights on a grid over the simplex (steps of 1/steps), minimizing log-loss (ties: the first found).

    With `kinds`, members of the same kind (copies trained with other seeds) are averaged first and
    share their kind's weight equally: only one weight per kind is tuned, so extra seeds add no free
    parameter for a small validation part to over-fit.
    """
    if kinds is not None and len(set(kinds)) < len(kinds):
        order = list(dict.fromkeys(kinds))
        grouped = [np.mean([p for p, k in zip(probas, kinds) if k == kind], axis=0) for kind in order]
        by_kind = dict(zip(order, tune_weights(grouped, y, steps)))
        return [by_kind[k] / kinds.count(k) for k in kinds]
    k = len(probas)
    if k == 1:
        return [1.0]
    eps = 1e-12
    rows = np.arange(len(y))
    # Log-loss needs only each text's probability of its true class: precompute it per member.
    true_p = np.stack([np.asarray(p)[rows, y] for p in probas])  # (members, n)
    totals = np.stack([np.asarray(p).sum(axis=1) for p in probas])
    best, best_w = np.inf, [1.0 / k] * k
    for combo in product(range(steps + 1), repeat=k - 1):
        if sum(combo) > steps:
            continue
        w = np.array([c / steps for c in combo] + [(steps - sum(combo)) / steps])
        p_true = (w @ true_p) / np.maximum(w @ totals, eps)
        loss = float(-np.mean(np.log(np.clip(p_true, eps, 1.0))))
        if loss < best - 1e-9:
            best, best_w = loss, list(w)
    return [float(w) for w in best_w]


def out_of_fold(fit_predict: FitPredict, folds: Sequence[tuple[np.ndarray, np.ndarray]], n: int,
                n_classes: int, keep_going: Callable[[], bool] | None = None
                ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's out-of-fold class probabilities, and which of the n texts have one.

    `folds` are (train, held-out) index pairs whose held-out parts cover 0..n-1 exactly once;
    `fit_predict` trains on the first and predicts the second, so no prediction comes from a model
    that was given that text's label. `keep_going()` is asked before every fold (a run budget
    running out): when it says no, the texts of the folds not done have no prediction (NaN, and
    False in the mask).
    """
    out: list[np.ndarray] | None = None
    covered = np.zeros(n, dtype=bool)
    held = np.zeros(n, dtype=int)
    for _, te in folds:
        held[te] += 1
    if (held != 1).any():
        raise ValueError("the folds' held-out parts do not cover every text exactly once")
    for tr, te in folds:
        if np.intersect1d(tr, te).size:
            raise ValueError("a fold's training part overlaps its held-out part")
        if keep_going is not None and not keep_going():
            break
        preds = fit_predict(tr, te)
        if out is None:
            out = [np.full((n, n_classes), np.nan) for _ in preds]
        for o, p in zip(out, preds):
            o[te] = p
        covered[te] = True
    return out or [], covered
