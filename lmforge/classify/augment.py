"""Offline text augmentation of training texts: word swaps, deletions, insertions, synonyms, character noise.

The methods are those of EDA (Wei & Zou, 2019), with synonyms taken from word vectors (nearest neighbours
by cosine) instead of WordNet, so that they work for any language lmforge has vectors for, and a
character-noise method for misspellings. Words are the units the classifier splits text into
(`text.split_words`: a regex for English, jieba for Chinese; characters with text.tokenizer char).

Every copy is a pure function of (seed, copy number, source text): a text gets the same copies
wherever it is augmented, and copies are made from the training part only, after any validation
split or fold was cut, so no copy of a held-out text is trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.classify.config import AugmentConfig
from lmforge.classify.text import normalize, read_vectors, split_chars, split_words
from lmforge.errors import ConfigError

# Neighbours kept per word; a synonym is drawn among those above min_similarity.
SYNONYMS_PER_WORD = 5
# Words of the vectors file (most frequent first in word2vec files) that may stand in as synonyms,
# besides the training texts' own words: enough for common words, small enough to search quickly.
MAX_SYNONYM_CANDIDATES = 20000
_LETTERS_MIN = 2  # noise alters words of at least this many characters (a 1-character word is only repeated)


@dataclass
class Units:
    """How a text becomes units and back: split like the classifier, joined with spaces or, for Chinese, with nothing."""

    language: str
    unit: str  # 'word', 'char' or 'bpe' (bpe texts are augmented word by word)
    lowercase: bool
    strip_html: bool

    def split(self, text: str) -> list[str]:
        text = normalize(text, self.lowercase, self.strip_html)
        return split_chars(text) if self.unit == "char" else split_words(text, self.language)

    def join(self, units: list[str]) -> str:
        return ("" if self.language == "zh" or self.unit == "char" else " ").join(units)


class Synonyms:
    """Nearest neighbours (cosine) of the words a corpus uses, among the words a vectors file holds."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def get(self, word: str) -> list[str]:
        return self.table.get(word, [])

    @classmethod
    def build(cls, words: list[str], matrix: np.ndarray, wanted: set[str], min_similarity: float) -> Synonyms:
        """`words`/`matrix`: the vectors read; `wanted`: the words that need synonyms."""
        if not words:
            return cls({})
        m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-9)
        rows = [i for i, w in enumerate(words) if w in wanted]
        table: dict[str, list[str]] = {}
        for start in range(0, len(rows), 1024):
            block = rows[start:start + 1024]
            sims = m[block] @ m.T
            sims[np.arange(len(block)), block] = -np.inf  # not its own synonym
            k = min(SYNONYMS_PER_WORD, len(words) - 1)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(block), 0), int)
            for r, i in enumerate(block):
                order = top[r][np.argsort(-sims[r, top[r]])]
                near = [words[j] for j in order if sims[r, j] >= min_similarity]
                if near:
                    table[words[i]] = near
        return cls(table)


def vectors_path(aug: AugmentConfig, text_vectors: str | None) -> str | None:
    """The vectors file synonyms come from: data.augment.vectors, else text.vectors when that is a file."""
    if aug.vectors:
        return aug.vectors
    return text_vectors if text_vectors and text_vectors != "train" else None


def check_vectors(aug: AugmentConfig, text_vectors: str | None) -> None:
    """'synonym' without vectors, or with a file that is not there, is refused before any training."""
    if "synonym" not in aug.method_list():
        return
    path = vectors_path(aug, text_vectors)
    if path is None:
        raise ConfigError("config field 'data.augment.vectors': method 'synonym' needs word vectors; give a file "
                          "written by `lmforge classify vectors` (or set text.vectors to one), or drop 'synonym'")
    if not Path(path).is_file():
        raise ConfigError(f"config field 'data.augment.vectors': {path} not found")


def load_synonyms(aug: AugmentConfig, text_vectors: str | None, docs: Sequence[list[str]]) -> Synonyms | None:
    """Synonyms of the words in `docs` from the vectors file (None when no file applies)."""
    path = vectors_path(aug, text_vectors)
    if path is None:
        return None
    wanted = {w for d in docs for w in d}
    words, matrix = read_vectors(path, lambda w, line: w in wanted or line <= MAX_SYNONYM_CANDIDATES,
                                 "data.augment.vectors")
    return Synonyms.build(words, matrix, wanted, aug.min_similarity)


# --- the methods: each takes a list of units and returns a new one ------------------------------


def _count(n_units: int, strength: float) -> int:
    return max(1, round(strength * n_units))


def swap(units: list[str], strength: float, rng: random.Random, synonyms: Synonyms | None = None) -> list[str]:
    out = list(units)
    if len(out) < 2:
        return out
    for _ in range(_count(len(out), strength)):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def delete(units: list[str], strength: float, rng: random.Random, synonyms: Synonyms | None = None) -> list[str]:
    if len(units) < 2:
        return list(units)
    drop = set(rng.sample(range(len(units)), min(len(units) - 1, _count(len(units), strength))))
    return [u for i, u in enumerate(units) if i not in drop]


def insert(units: list[str], strength: float, rng: random.Random, synonyms: Synonyms | None = None) -> list[str]:
    out = list(units)
    if not out:
        return out
    for _ in range(_count(len(units), strength)):
        word = rng.choice(units)
        near = synonyms.get(word) if synonyms is not None else []
        out.insert(rng.randrange(len(out) + 1), rng.choice(near) if near else word)
    return out


def synonym(units: list[str], strength: float, rng: random.Random, synonyms: Synonyms | None = None) -> list[str]:
    out = list(units)
    if synonyms is None:
        return out
    having = [i for i, u in enumerate(out) if synonyms.get(u)]
    for i in rng.sample(having, min(len(having), _count(len(units), strength))):
        out[i] = rng.choice(synonyms.get(out[i]))
    return out


def noise(units: list[str], strength: float, rng: random.Random, synonyms: Synonyms | None = None) -> list[str]:
    """Misspell words: drop, repeat or exchange neighbouring characters (a 1-character word is repeated)."""
    out = list(units)
    words = [i for i, u in enumerate(out) if any(c.isalnum() for c in u)]
    for i in rng.sample(words, min(len(words), _count(len(units), strength))):
        w = out[i]
        if len(w) < _LETTERS_MIN:
            out[i] = w + w
            continue
        k = rng.randrange(len(w) - 1)
        edit = rng.randrange(3)
        if edit == 0:
            out[i] = w[:k] + w[k + 1:]
        elif edit == 1:
            out[i] = w[:k + 1] + w[k] + w[k + 1:]
        else:
            out[i] = w[:k] + w[k + 1] + w[k] + w[k + 2:]
    return out


METHODS = {"swap": swap, "delete": delete, "insert": insert, "synonym": synonym, "noise": noise}


def augment_one(text: str, units: Units, methods: list[str], strength: float, seed: int, copy: int,
                synonyms: Synonyms | None = None, split: list[str] | None = None) -> str:
    """Copy number `copy` of `text`: one method (drawn with the copy's own generator) applied to its units."""
    # Seeding with a string hashes it with SHA-512: the same copy in every process and run.
    rng = random.Random(f"{seed}\x00{copy}\x00{text}")
    method = methods[rng.randrange(len(methods))]
    parts = units.split(text) if split is None else split
    return units.join(METHODS[method](parts, strength, rng, synonyms))


def augment_texts(texts: Sequence[str], y: np.ndarray, aug: AugmentConfig, units: Units, seed: int,
                  text_vectors: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels, source row of each) with `aug.copies` altered copies of every text appended after the
    originals; each copy keeps its source's label. With no methods, the texts as given."""
    methods = aug.method_list()
    y = np.asarray(y)
    if not methods:
        return list(texts), y, np.arange(len(texts))
    check_vectors(aug, text_vectors)
    seed = seed if aug.seed < 0 else aug.seed
    docs = [units.split(t) for t in texts]
    synonyms = load_synonyms(aug, text_vectors, docs) if {"synonym", "insert"} & set(methods) else None
    out, source = list(texts), list(range(len(texts)))
    for copy in range(aug.copies):
        for i, (text, parts) in enumerate(zip(texts, docs)):
            new = augment_one(text, units, methods, aug.strength, seed, copy, synonyms, parts)
            if new.strip():  # a text of nothing but deleted units would be an empty record
                out.append(new)
                source.append(i)
    source_arr = np.asarray(source, dtype=np.int64)
    return out, y[source_arr], source_arr
