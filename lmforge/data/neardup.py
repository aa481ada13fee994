"""Near-duplicate detection: MinHash signatures (datasketch) and LSH banding over signatures on disk.

Signatures are computed per document in the cleaning workers and stored per shard. datasketch's
in-memory MinHashLSH index would grow with the corpus (tens of Python objects per document), so the
banding runs band by band over numpy arrays instead: one 8-byte hash per document and band, sorted;
documents sharing a bucket are candidates, and a candidate pair counts only when the signatures
agree on at least `threshold` of their positions (the MinHash estimate of the Jaccard similarity).
The bands and rows per band are datasketch's optimum for the threshold.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from lmforge.data.quality import words

SCHEME = "affine32"  # datasketch's 32-bit permutations: signatures fit uint32


def shingles(text: str, size: int) -> list[bytes]:
    """Overlapping runs of `size` words (each CJK character a word); a shorter text is one shingle."""
    word_list = words(text)
    if len(word_list) <= size:
        return [" ".join(word_list).encode("utf-8", "surrogatepass")]
    return [" ".join(word_list[i : i + size]).encode("utf-8", "surrogatepass")
            for i in range(len(word_list) - size + 1)]


@lru_cache(maxsize=4)
def _permutations(num_perm: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=1, hashfunc=zlib.crc32, scheme=SCHEME).permutations


def signature(text: str, num_perm: int, shingle_words: int) -> np.ndarray:
    """MinHash signature (uint32, num_perm values); the fixed seed makes it the same in every process."""
    from datasketch import MinHash

    # crc32 is a C builtin: datasketch calls the hash function once per shingle, and sha1 through
    # Python costs twice as much for no better estimate at these sizes. Drawing the permutations once
    # (not per document) more than halves the time per document.
    m = MinHash(num_perm=num_perm, seed=1, hashfunc=zlib.crc32, permutations=_permutations(num_perm), scheme=SCHEME)
    m.update_batch(shingles(text, shingle_words))
    return m.hashvalues.astype(np.uint32)


def bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's LSH picks for this threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def band_hashes(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One 64-bit hash per signature row for band `band` (a bucket key; collisions are re-checked)."""
    part = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
    h = np.full(len(sigs), 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(part.shape[1]):
            h = (h ^ part[:, j]) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    return h


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)


def near_duplicates(
    num_docs: int,
    alive: np.ndarray,
    read_sigs: Callable[[], "list[np.ndarray]"],
    gather: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    num_perm: int,
) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Documents to remove (bool mask over all documents) and the verified pairs (kept, removed, similarity).

    alive: documents still in play (exact duplicates already out). read_sigs() yields the signature
    arrays shard by shard in document order; gather(indices) returns the signatures of those documents.
    In each group of near-duplicates the document that came first is kept.
    """
    b, r = bands_rows(threshold, num_perm)
    parent = np.arange(num_docs, dtype=np.int64)
    pairs: list[tuple[int, int, float]] = []
    alive_idx = np.flatnonzero(alive)
    for band in range(b):
        h = np.empty(num_docs, dtype=np.uint64)
        start = 0
        for sigs in read_sigs():
            h[start : start + len(sigs)] = band_hashes(np.asarray(sigs), band, r)
            start += len(sigs)
        h = h[alive_idx]
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        same = np.flatnonzero(sorted_h[1:] == sorted_h[:-1]) + 1
        if not len(same):
            continue
        # Pair each document with the first of its bucket (the earliest: the sort is stable).
        run_start = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]])
        first_of = run_start[np.searchsorted(run_start, same, side="right") - 1]
        a_idx, b_idx = alive_idx[order[first_of]], alive_idx[order[same]]
        sims = (gather(a_idx) == gather(b_idx)).mean(axis=1)
        for a, c, sim in zip(a_idx.tolist(), b_idx.tolist(), sims.tolist()):
            if sim < threshold:
                continue
            ra, rc = _find(parent, a), _find(parent, c)
            if ra != rc:
                parent[max(ra, rc)] = min(ra, rc)
                pairs.append((a, c, sim))
    roots = np.array([_find(parent, i) for i in alive_idx.tolist()], dtype=np.int64) if len(pairs) else alive_idx
    removed = np.zeros(num_docs, dtype=bool)
    removed[alive_idx[roots != alive_idx]] = True
    return removed, pairs
