"""Labeled examples: reading and checking them, label maps, splits, imbalance, length buckets.

Every error names the file and line of the offending record and says what to do.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmforge.data.readers import ReadReport, iter_records
from lmforge.errors import DataError

_INTEGER = re.compile(r"[+-]?\d+")
# More classes than this, most of them with a single example, means the label field holds ids or
# free text rather than classes.
_MAX_SINGLETON_CLASSES = 20


@dataclass
class Labeled:
    """Texts with their raw labels and where each came from (for error messages)."""

    texts: list[str]
    labels: list  # raw values as read: str or int
    where: list[tuple[str, int]] = field(default_factory=list)  # (file, line)
    path: str = ""
    report: ReadReport | None = None  # the files read and left out
    ids: list = field(default_factory=list)  # the id field's value per record (None where absent), if asked for

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int]) -> Labeled:
        return Labeled([self.texts[i] for i in idx], [self.labels[i] for i in idx],
                       [self.where[i] for i in idx] if self.where else [], self.path, self.report,
                       [self.ids[i] for i in idx] if self.ids else [])


def _fields_hint(record: dict) -> str:
    names = list(record)[:20]
    return ", ".join(repr(n) for n in names)


def _label_value(value, source: str, line: int, label_field: str):
    """Labels are strings or integers; integral floats (1.0) and digit strings stay distinct from text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            raise DataError(f"{source}:{line}: field {label_field!r} is empty. Give every record a label, "
                            "or remove the record.")
        # csv/tsv give every cell as text: "1" and 1 must be the same label (and "+1" the same as 1).
        if _INTEGER.fullmatch(text):
            return int(text)
        return text
    raise DataError(f"{source}:{line}: field {label_field!r} is {value!r}; a label must be a string or an "
                    "integer. Fix or remove this record.")


def read_labeled(path: str | Path, text_field: str, label_field: str, need_labels: bool = True,
                 encoding: str = "auto", id_field: str | None = None) -> Labeled:
    """Every record of the files under `path`, checked: text present and non-empty, label present,
    and the labels written in one style (see `check_label_styles`). With `id_field`, each record's
    value of that field is kept too (None where it has none)."""
    texts: list[str] = []
    labels: list = []
    where: list[tuple[str, int]] = []
    ids: list = []
    records = iter_records(path, encoding)
    for record, source, line in records:
        if id_field is not None:
            ids.append(record.get(id_field))
        if text_field not in record:
            raise DataError(f"{source}:{line}: no field {text_field!r}. Fields present: {_fields_hint(record)}. "
                            "Use --text-field NAME to pick the text field.")
        text = record[text_field]
        if text is None or (isinstance(text, str) and not text.strip()):
            raise DataError(f"{source}:{line}: field {text_field!r} is empty. Remove this record or give it text.")
        if not isinstance(text, str):
            raise DataError(f"{source}:{line}: field {text_field!r} is {type(text).__name__}, expected text. "
                            "Fix this record or pick another field with --text-field.")
        if need_labels:
            if label_field not in record or record[label_field] is None:
                raise DataError(f"{source}:{line}: no field {label_field!r}. Fields present: "
                                f"{_fields_hint(record)}. Use --label-field NAME to pick the label field.")
            labels.append(_label_value(record[label_field], source, line, label_field))
        texts.append(text)
        where.append((source, line))
    if not texts:
        raise DataError(f"{path}: holds no records. Check the path and the file contents.")
    data = Labeled(texts, labels, where, str(path), records.report, ids)
    if need_labels:
        check_label_styles(data, label_field)
    return data


def check_label_styles(data: Labeled, label_field: str) -> None:
    """Labels written two ways would silently become different classes: numbers mixed with words
    ("1" and "positive" in one file), or words that differ only in case ("Positive", "positive")."""
    first: dict[str, int] = {}  # first record of each style ("number", "word")
    spelled: dict[str, tuple[str, int]] = {}  # case-folded word -> (spelling, first record)
    for i, label in enumerate(data.labels):
        style = "a word" if isinstance(label, str) else "a number"
        first.setdefault(style, i)
        if len(first) == 2:
            j = first["a number" if style == "a word" else "a word"]
            raise DataError(
                f"{_at(data, i)}: label {label!r} is {style}, but {_at(data, j)} has the label {data.labels[j]!r}: "
                f"field {label_field!r} mixes numbers and words, which would make them different classes. Write "
                "every label one way (for example map 1/0 to positive/negative), or pick another --label-field.")
        if isinstance(label, str):
            seen = spelled.setdefault(label.casefold(), (label, i))
            if seen[0] != label:
                raise DataError(
                    f"{_at(data, i)}: label {label!r} differs only in case from {seen[0]!r} at {_at(data, seen[1])}; "
                    "they would be two classes. Spell each label one way in every record.")


def _at(data: Labeled, i: int) -> str:
    source, line = data.where[i] if data.where else (data.path, 0)
    return f"{source}:{line}"


class LabelMap:
    """Class names (raw labels) to class ids 0..k-1, in sorted order (numbers before strings)."""

    def __init__(self, names: list):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_labels(cls, labels: Sequence, path: str) -> LabelMap:
        distinct = set(labels)
        names = sorted(distinct, key=lambda v: (isinstance(v, str), v))
        if len(names) < 2:
            only = names[0] if names else None
            raise DataError(f"{path}: every record has the label {only!r}; a classifier needs at least two "
                            "classes. Check --label-field, or add examples of the other classes.")
        counts = Counter(labels)
        singletons = sum(1 for n in counts.values() if n == 1)
        if len(names) > _MAX_SINGLETON_CLASSES and singletons > len(names) / 2:
            raise DataError(f"{path}: {len(names):,} different labels among {len(labels):,} records, {singletons:,} "
                            "of them used once: the label field looks like ids or free text, not classes. Check "
                            "--label-field, or give each class several examples.")
        return cls(names)

    def encode(self, data: Labeled) -> np.ndarray:
        out = np.empty(len(data), dtype=np.int64)
        for i, label in enumerate(data.labels):
            cls_id = self.index.get(label)
            if cls_id is None:
                source, line = data.where[i] if data.where else (data.path, 0)
                raise DataError(f"{source}:{line}: label {label!r} does not occur in the training data "
                                f"(classes: {', '.join(map(repr, self.names))}). Fix the label or add "
                                "training examples of that class.")
            out[i] = cls_id
        return out

    def save(self, path: Path) -> None:
        from lmforge.atomic import atomic_write_json

        atomic_write_json(path, {"labels": self.names})

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        try:
            names = json.loads(Path(path).read_text(encoding="utf-8"))["labels"]
        except FileNotFoundError:
            raise DataError(f"{path} is missing; the run folder is incomplete (was training started?)") from None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path} is unreadable ({type(e).__name__}: {e}); the run folder is damaged") from None
        if not isinstance(names, list) or len(names) < 2:
            raise DataError(f"{path} does not hold a list of at least two labels; the run folder is damaged")
        return cls(names)


def class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=n_classes)


def skew_message(y: np.ndarray, labels: LabelMap, ratio: float) -> str | None:
    """A warning when the most common class outnumbers the rarest by `ratio` or more."""
    counts = class_counts(y, len(labels))
    if counts.min() == 0:
        missing = [labels.names[i] for i in np.flatnonzero(counts == 0)]
        return f"no training examples of class(es) {missing}"
    if counts.max() / counts.min() < ratio:
        return None
    shares = ", ".join(f"{labels.names[i]!r} {c / counts.sum():.1%}" for i, c in enumerate(counts))
    return (f"the labels are skewed ({shares}); consider --data.class_weights true or --data.oversample true, "
            "and read macro F1 rather than accuracy")


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights n / (k * count_c) (scikit-learn's 'balanced' rule)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    w = np.ones(n_classes, dtype=np.float64)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    return w


def oversample_indices(y: np.ndarray, seed: int) -> np.ndarray:
    """Indices that repeat random examples of each smaller class until every class matches the largest."""
    rng = np.random.default_rng([seed, 7])
    counts = np.bincount(y)
    target = counts.max()
    out = [np.arange(len(y))]
    for c, n in enumerate(counts):
        if 0 < n < target:
            members = np.flatnonzero(y == c)
            out.append(rng.choice(members, size=target - n, replace=True))
    return np.concatenate(out)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), the held-out share taken per class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed % 2**32, stratify=stratify)
    return np.sort(tr), np.sort(va)


def kfold_splits(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, test) index pairs; the test parts are disjoint and cover everything."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    if counts[counts > 0].min() < k:
        raise DataError(f"cannot make {k} stratified folds: the rarest class has only {counts[counts > 0].min()} "
                        f"examples; lower --folds or add examples")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                     pool_batches: int = 50) -> list[np.ndarray]:
    """One epoch of batches of similar-length examples, in random order.

    A random permutation is cut into pools of `pool_batches` batches; each pool is sorted by length
    and cut into batches, so padding is small but batches still mix the data. Every batch has
    exactly `batch_size` examples (the last one is topped up from the start of the permutation),
    because the training loop's global batch is fixed.
    """
    n = len(lengths)
    perm = rng.permutation(n)
    n_batches = -(-n // batch_size)
    need = n_batches * batch_size
    if need > n:
        perm = np.concatenate([perm, perm[: need - n]] if need - n <= n else [np.resize(perm, need)])
    pool = pool_batches * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, need, pool):
        chunk = perm[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def label_distribution(y: np.ndarray, labels: LabelMap) -> dict[str, int]:
    counts = Counter(int(v) for v in y)
    return {str(labels.names[c]): counts.get(c, 0) for c in range(len(labels))}


def _plain(text: str) -> str:
    return " ".join(text.lower().split())


def contamination(train: Labeled, held: Labeled, n: int, role: str) -> dict:
    """Which records of a held-out file (test or validation) share a run of n words (each CJK character a
    word) with a training text, or equal one (case and spacing aside: short texts have no n-word run).

    The n-gram search is the language-model side's (lmforge.data.decontam); returns counts, the records'
    positions in `held` ("records") and up to three examples with file and line.
    """
    from lmforge.data.decontam import overlap

    found = set(overlap(train.texts, held.texts, n, sum(len(t) for t in held.texts))["contaminated"])
    seen = {_plain(t) for t in train.texts}
    exact = {i for i, t in enumerate(held.texts) if _plain(t) in seen}
    bad = sorted(found | exact)
    examples = [{"where": _at(held, i), "text": held.texts[i][:160]} for i in bad[:3]]
    return {"role": role, "file": held.path, "records": len(held), "contaminated": len(bad), "exact_copies": len(exact),
            "ngram_words": n, "examples": examples, "indices": bad}


def read_unlabeled(paths: Sequence[str], text_field: str, encoding: str = "auto") -> list[str]:
    """The texts of `--unlabeled` files: .txt/.md one text per non-blank line, else records with
    `text_field` (any format read_labeled reads; labels, if any, are ignored)."""
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if path.suffix.lower() in (".txt", ".md"):
            if not path.is_file():
                raise DataError(f"{p}: no such file (--unlabeled); give a .txt file or records with a "
                                f"{text_field!r} field")
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{p}: cannot be read as UTF-8 text ({type(e).__name__}); convert it to UTF-8") from None
            texts += [line.strip() for line in lines if line.strip()]
        else:
            texts += read_labeled(p, text_field, "", need_labels=False, encoding=encoding).texts
    if paths and not texts:
        raise DataError(f"{', '.join(paths)}: no texts found (--unlabeled)")
    return texts
