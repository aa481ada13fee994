"""Linear text classifiers with scikit-learn: logistic regression over n-gram features.

Two feature schemes: 'nb' scales binary n-gram indicators by naive-Bayes log-count ratios
(Wang & Manning's NBSVM idea, here with logistic regression; one-vs-rest for more than two
classes) and 'tfidf' uses sublinear TF-IDF. The regularization strength C is picked by stratified
cross-validation on the training data when not given. A trained model is saved as arrays
(safetensors) plus JSON, never as a pickle, so loading a run folder cannot execute code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lmforge.classify.config import LinearConfig
from lmforge.classify.text import NgramIndex, UnitIds, normalize, split_chars, split_words

NB_GRID = (0.03, 0.1, 0.3, 1.0)
TFIDF_GRID = (1.0, 4.0, 16.0, 64.0)


class NgramFeaturizer:
    """Texts to a sparse (texts x n-grams) count matrix: word n-grams and optional character n-grams."""

    def __init__(self, language: str, lowercase: bool, strip_html: bool, word_n: int, char_n: int, min_df: int):
        self.language, self.lowercase, self.strip_html = language, lowercase, strip_html
        self.word_n, self.char_n, self.min_df = word_n, char_n, min_df
        self.word_units: UnitIds | None = None
        self.char_units: UnitIds | None = None
        self.word_index: NgramIndex | None = None
        self.char_index: NgramIndex | None = None

    def _split(self, texts: Sequence[str]):
        norm = [normalize(t, self.lowercase, self.strip_html) for t in texts]
        words = [split_words(t, self.language) for t in norm] if self.word_n else None
        chars = [split_chars(t) for t in norm] if self.char_n else None
        return words, chars

    def fit_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        words, chars = self._split(texts)
        if words is not None:
            self.word_units = UnitIds.build(words)
            ids = [self.word_units.encode(w) for w in words]
            self.word_index = NgramIndex.fit(ids, self.word_n, self.min_df)
        if chars is not None:
            self.char_units = UnitIds.build(chars)
            ids = [self.char_units.encode(c) for c in chars]
            self.char_index = NgramIndex.fit(ids, self.char_n, self.min_df)
        return self._counts(words, chars)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self._counts(*self._split(texts))

    def _counts(self, words, chars) -> sp.csr_matrix:
        parts = []
        if words is not None:
            parts.append(self.word_index.counts([self.word_units.encode(w) for w in words]))
        if chars is not None:
            parts.append(self.char_index.counts([self.char_units.encode(c) for c in chars]))
        return sp.hstack(parts, format="csr") if len(parts) > 1 else parts[0]

    @property
    def n_features(self) -> int:
        return (len(self.word_index) if self.word_index else 0) + (len(self.char_index) if self.char_index else 0)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"language": self.language, "lowercase": self.lowercase, "strip_html": self.strip_html,
                "word_n": self.word_n, "char_n": self.char_n, "min_df": self.min_df,
                "word_units": self.word_units.units if self.word_units else None,
                "char_units": self.char_units.units if self.char_units else None}
        arrays = {}
        if self.word_index is not None:
            arrays["word_keys"] = self.word_index.keys
        if self.char_index is not None:
            arrays["char_keys"] = self.char_index.keys
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> NgramFeaturizer:
        f = cls(meta["language"], meta["lowercase"], meta["strip_html"], meta["word_n"], meta["char_n"], meta["min_df"])
        if meta["word_units"] is not None:
            f.word_units = UnitIds(meta["word_units"])
            f.word_index = NgramIndex(arrays["word_keys"], meta["word_n"])
        if meta["char_units"] is not None:
            f.char_units = UnitIds(meta["char_units"])
            f.char_index = NgramIndex(arrays["char_keys"], meta["char_n"])
        return f


def nb_ratios(binary: sp.csr_matrix, y: np.ndarray, n_classes: int, alpha: float = 1.0) -> np.ndarray:
    """(classes', features) log-count ratios: one row for a binary task (class 1 vs 0), else one per class vs rest."""
    rows = [1] if n_classes == 2 else range(n_classes)
    out = []
    for c in rows:
        pos = alpha + np.asarray(binary[y == c].sum(axis=0)).ravel()
        neg = alpha + np.asarray(binary[y != c].sum(axis=0)).ravel()
        out.append(np.log(pos / pos.sum()) - np.log(neg / neg.sum()))
    return np.asarray(out)


def _lr(C: float, class_weight: dict | None, seed: int):
    from sklearn.linear_model import LogisticRegression

    # No warm start: lbfgs resumed from the solution for a smaller C stops at once (its gradient test
    # passes), silently giving every larger C the same model.
    return LogisticRegression(C=C, max_iter=1000, class_weight=class_weight, random_state=seed % 2**32)


def _softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class LinearTextModel:
    """Fit/predict over raw texts; holds the featurizer and the learned weights."""

    def __init__(self, cfg: LinearConfig, language: str, lowercase: bool, strip_html: bool, n_classes: int):
        self.cfg = cfg
        self.n_classes = n_classes
        char_n = cfg.char_ngrams
        self.featurizer = NgramFeaturizer(language, lowercase, strip_html, cfg.ngrams, char_n, cfg.min_df)
        self.coef: np.ndarray | None = None  # (classes', features)
        self.intercept: np.ndarray | None = None
        self.scale: np.ndarray | None = None  # nb: (classes', features) ratios; tfidf: (1, features) idf
        self.C: float = cfg.C
        self.cv_scores: dict[float, float] = {}

    # -- features --
    def _tfidf(self, counts: sp.csr_matrix, idf: np.ndarray | None):
        from sklearn.feature_extraction.text import TfidfTransformer

        tf = TfidfTransformer(sublinear_tf=True)
        if idf is None:
            tf.fit(counts)
        else:
            tf.fit(sp.csr_matrix((1, counts.shape[1])))  # sets the shapes; the saved idf replaces the fitted one
            tf.idf_ = idf
        return tf.transform(counts), tf.idf_

    def _fit_weights(self, counts: sp.csr_matrix, y: np.ndarray, C: float, class_weight, seed: int):
        """(models, scale) for one C on these counts."""
        if self.cfg.features == "nb":
            binary = counts.copy()
            binary.data[:] = 1.0
            ratios = nb_ratios(binary, y, self.n_classes)
            models = []
            for row, r in enumerate(ratios):
                target = y if self.n_classes == 2 else (y == row).astype(np.int64)
                m = _lr(C, class_weight if self.n_classes == 2 else None, seed)
                m.fit(binary @ sp.diags(r), target)
                models.append(m)
            return models, ratios
        X, idf = self._tfidf(counts, None)
        m = _lr(C, class_weight, seed)
        m.fit(X, y)
        return [m], idf[None, :]

    def _proba(self, counts: sp.csr_matrix, models, scale: np.ndarray) -> np.ndarray:
        coef, intercept = self._weights(models)
        return self._link(self._scores(counts, coef, intercept, scale))

    def _weights(self, models) -> tuple[np.ndarray, np.ndarray]:
        """(coef (classes', features), intercept (classes',)) of fitted scikit-learn models."""
        coef = np.concatenate([m.coef_ for m in models], axis=0)
        intercept = np.concatenate([m.intercept_ for m in models])
        return coef, intercept

    def _scores(self, counts: sp.csr_matrix, coef: np.ndarray, intercept: np.ndarray, scale: np.ndarray):
        """Decision values (texts, classes'): NB-scaled binary features or TF-IDF, times the weights."""
        if self.cfg.features == "nb":
            binary = counts.copy()
            binary.data[:] = 1.0
            return np.stack([binary @ (scale[i] * coef[i]) for i in range(len(coef))], axis=1) + intercept
        X, _ = self._tfidf(counts, scale[0])
        return np.asarray(X @ coef.T) + intercept

    def _link(self, z: np.ndarray) -> np.ndarray:
        if self.n_classes == 2:
            p1 = 1.0 / (1.0 + np.exp(-z[:, -1]))
            return np.stack([1 - p1, p1], axis=1)
        if self.cfg.features == "nb":  # one-vs-rest sigmoids, renormalized
            p = 1.0 / (1.0 + np.exp(-z))
            return p / p.sum(axis=1, keepdims=True).clip(1e-12)
        return _softmax_rows(z)

    def fit(self, texts: Sequence[str], y: np.ndarray, class_weight: np.ndarray | None = None, seed: int = 0,
            log=None, search_until: float | None = None) -> LinearTextModel:
        """`search_until` (a time.perf_counter() value, under a run budget): stop trying values of C
        then, keeping the best of those tried (at least one)."""
        t0 = time.perf_counter()
        counts = self.featurizer.fit_transform(texts)
        cw = {i: float(w) for i, w in enumerate(class_weight)} if class_weight is not None else None
        if not self.cfg.C:
            self.C = self._pick_C(counts, y, cw, seed, search_until)
        models, scale = self._fit_weights(counts, y, self.C, cw, seed)
        self.coef, self.intercept = self._weights(models)
        self.scale = scale
        if log:
            log(f"linear ({self.cfg.features}): {counts.shape[1]:,} n-gram features, C={self.C:g}, "
                f"{time.perf_counter() - t0:.1f}s")
        return self

    def _pick_C(self, counts: sp.csr_matrix, y: np.ndarray, cw, seed: int, until: float | None = None) -> float:
        from sklearn.metrics import accuracy_score
        from sklearn.model_selection import StratifiedKFold

        grid = NB_GRID if self.cfg.features == "nb" else TFIDF_GRID
        k = min(self.cfg.cv_folds, int(np.bincount(y)[np.bincount(y) > 0].min()))
        if k < 2:
            return grid[1]
        splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32).split(np.zeros(len(y)), y))
        # One C at a time over all folds, the grid's middle first, so a deadline leaves whole scores.
        order = sorted(range(len(grid)), key=lambda i: abs(i - (len(grid) - 1) / 2))
        scores = np.full(len(grid), -np.inf)
        for i in order:
            if until is not None and np.isfinite(scores).any() and time.perf_counter() >= until:
                break
            scores[i] = 0.0
            for tr, va in splits:
                models, scale = self._fit_weights(counts[tr], y[tr], grid[i], cw, seed)
                p = self._proba(counts[va], models, scale)
                scores[i] += accuracy_score(y[va], p.argmax(1)) / k
        self.cv_scores = {C: float(s) for C, s in zip(grid, scores) if np.isfinite(s)}
        return float(grid[int(np.argmax(scores))])  # ties go to the smaller C

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        counts = self.featurizer.transform(texts)
        return self._link(self._scores(counts, self.coef, self.intercept, self.scale))

    # -- persistence --
    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        from lmforge.atomic import atomic_write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta, arrays = self.featurizer.state()
        arrays.update({"coef": self.coef.astype(np.float64), "intercept": self.intercept.astype(np.float64),
                       "scale": self.scale.astype(np.float64)})
        tmp = folder / ".linear.safetensors.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        tmp.replace(folder / "linear.safetensors")
        from dataclasses import asdict

        atomic_write_json(folder / "linear.json", {"config": asdict(self.cfg), "n_classes": self.n_classes,
                                                    "C": self.C, "cv_scores": {str(k): v for k, v in self.cv_scores.items()},
                                                    "featurizer": meta})

    @classmethod
    def load(cls, folder: Path) -> LinearTextModel:
        from safetensors.numpy import load_file

        folder = Path(folder)
        info = json.loads((folder / "linear.json").read_text(encoding="utf-8"))
        arrays = load_file(str(folder / "linear.safetensors"))
        fz = info["featurizer"]
        model = cls(LinearConfig(**info["config"]), fz["language"], fz["lowercase"], fz["strip_html"], info["n_classes"])
        model.featurizer = NgramFeaturizer.from_state(fz, arrays)
        model.coef, model.intercept, model.scale = arrays["coef"], arrays["intercept"], arrays["scale"]
        model.C = info["C"]
        return model
