"""Word vectors from unlabeled text: positive PMI of windowed co-occurrences, reduced by truncated SVD.

`lmforge classify vectors --data TEXTS --out vectors.txt` writes them in word2vec text format, so
`--text.vectors vectors.txt` can initialize a BiLSTM or transformer with them. This is how a
classifier profits from unlabeled text in its domain (for example IMDB's reviews for SST-2) when
no GloVe file is at hand, in about a minute of CPU for a few million words. Count-based vectors
of this kind (Levy, Goldberg & Dagan, 2015) are close to skip-gram ones on similarity tasks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lmforge.classify.text import detect_language, normalize, split_chars, split_words
from lmforge.errors import DataError


@dataclass
class WordVectors:
    words: list[str]
    matrix: np.ndarray  # (words, dim), rows L2-normalized

    def save(self, path: str | Path) -> Path:
        """word2vec text format: a 'count dim' header, then 'word v1 v2 ...' per line."""
        from lmforge.atomic import atomic_write_text

        lines = [f"{len(self.words)} {self.matrix.shape[1]}"]
        for w, row in zip(self.words, self.matrix):
            lines.append(w + " " + " ".join(f"{x:.5f}" for x in row))
        atomic_write_text(Path(path), "\n".join(lines) + "\n")
        return Path(path)

    def nearest(self, word: str, k: int = 5) -> list[str]:
        i = self.words.index(word)
        order = np.argsort(-(self.matrix @ self.matrix[i]))
        return [self.words[j] for j in order if j != i][:k]


def cooccurrences(docs: Sequence[np.ndarray], vocab_size: int, window: int, chunk_docs: int = 4000) -> sp.csr_matrix:
    """Symmetric counts of word pairs within `window` positions, weighted 1/distance (ids < 0 skipped)."""
    total = sp.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    rows, cols, vals = [], [], []

    def flush(total):
        if not rows:
            return total
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        m = sp.coo_matrix((v, (r, c)), shape=(vocab_size, vocab_size)).tocsr()
        rows.clear(), cols.clear(), vals.clear()
        return total + m + m.T

    for k, ids in enumerate(docs):
        for d in range(1, window + 1):
            if len(ids) <= d:
                break
            a, b = ids[:-d], ids[d:]
            keep = (a >= 0) & (b >= 0)
            rows.append(a[keep])
            cols.append(b[keep])
            vals.append(np.full(int(keep.sum()), 1.0 / d))
        if (k + 1) % chunk_docs == 0:
            total = flush(total)
    return flush(total)


def ppmi(counts: sp.csr_matrix, context_power: float = 0.75) -> sp.csr_matrix:
    """Positive pointwise mutual information, with the context distribution smoothed (power 0.75)."""
    c = counts.tocoo()
    word = np.asarray(counts.sum(axis=1)).ravel()
    ctx = np.asarray(counts.sum(axis=0)).ravel() ** context_power
    pmi = np.log(c.data * ctx.sum() / (word[c.row] * ctx[c.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=counts.shape)


def train_word_vectors(texts: Sequence[str], dim: int = 300, window: int = 5, min_count: int = 5,
                       max_words: int = 100000, language: str = "auto", unit: str = "word",
                       lowercase: bool = True, strip_html: bool = True, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> WordVectors:
    """Vectors for the words (or characters) seen at least min_count times in `texts`."""
    from sklearn.utils.extmath import randomized_svd

    t0 = time.perf_counter()
    if language == "auto":
        language = detect_language(texts)
    norm = (normalize(t, lowercase, strip_html) for t in texts)
    docs = [split_chars(t) if unit == "char" else split_words(t, language) for t in norm]
    counts = Counter(w for d in docs for w in d)
    words = [w for w, c in counts.most_common(max_words) if c >= min_count]
    if len(words) < 2:
        raise DataError(f"only {len(words)} distinct words occur {min_count}+ times; give more text or lower "
                        "--min-count")
    index = {w: i for i, w in enumerate(words)}
    ids = [np.fromiter((index.get(w, -1) for w in d), dtype=np.int64, count=len(d)) for d in docs]
    n_tokens = sum(len(d) for d in ids)
    pmi = ppmi(cooccurrences(ids, len(words), window))
    k = min(dim, len(words) - 1)
    # U * sqrt(S): the symmetric split of the singular values, better than U * S for similarity.
    u, s, _ = randomized_svd(pmi, k, n_iter=4, random_state=seed)
    matrix = (u * np.sqrt(s)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True).clip(1e-9)
    if log:
        log(f"word vectors: {len(words):,} words x {k} from {n_tokens:,} tokens "
            f"({pmi.nnz:,} positive PMI pairs) in {time.perf_counter() - t0:.1f}s")
    return WordVectors(words, matrix)


def check_vectors_options(paths: list, out: str | Path, dim: int = 300, window: int = 5, min_count: int = 5,
                          max_words: int = 100000, **_) -> None:
    """`lmforge classify vectors`'s options, checked before any text is read; errors name the option."""
    from lmforge.classify.config import MAX_DIM
    from lmforge.config import MAX_COUNT, check_option, is_int

    check_option(is_int(dim) and 2 <= dim <= MAX_DIM, "--dim", dim, f"must be an integer in [2, {MAX_DIM}]")
    check_option(is_int(window) and 1 <= window <= 1000, "--window", window, "must be an integer in [1, 1000]")
    check_option(is_int(min_count) and 1 <= min_count <= MAX_COUNT, "--min-count", min_count, "must be an integer >= 1")
    check_option(is_int(max_words) and 2 <= max_words <= 2**24, "--max-words", max_words,
                 "must be an integer in [2, 16777216]")
    out = Path(out)
    check_option(bool(str(out).strip()) and not out.is_dir(), "--out", out, "must name a file to write, not a folder")
    for path in paths:
        check_option(not (Path(path).exists() and out.exists() and out.resolve() == Path(path).resolve()), "--out", out,
                     "is one of the input files; write the vectors to a new file")


def vectors_from_file(data: str | Path | list, out: str | Path, text_field: str = "text", progress: bool = True,
                      overwrite: bool = False, **kwargs) -> WordVectors:
    """Read texts (plain text or records; one path or several), train vectors, write them to `out`
    in word2vec text format. `out` may not be one of the inputs, nor an existing file unless `overwrite`."""
    from lmforge.data.readers import find_files, read_texts
    from lmforge.console import console
    from lmforge.runs import check_output

    sources = list(data) if isinstance(data, (list, tuple)) else [data]
    check_output(out, [f for path in sources for f in find_files(path)], overwrite=overwrite, option="--out")

    def log(msg: str) -> None:
        if progress:
            console.print(msg, markup=False, highlight=False)

    check_vectors_options(sources, out, **kwargs)
    texts: list[str] = []
    for path in sources:
        texts.extend(read_texts(path, text_field))
    vectors = train_word_vectors(texts, log=log, **kwargs)
    vectors.save(out)
    log(f"wrote {out}")
    return vectors
