"""Decontamination: which validation (or test) documents share a long word n-gram with the training data.

The n-grams of the held-out side are hashed into a sorted array (sampled by hash when that side is big, so
memory stays bounded: a long shared passage still shows up, since it contains many n-grams); the training
side is then streamed and looked up. Words are counted as everywhere in lmforge's filters (each CJK
character a word).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from lmforge.data.quality import words

# Hashes kept for the held-out side (16 bytes each with the document number, about 40 MB at most with the
# temporaries); above it the n-grams are sampled by hash.
MAX_HELD_OUT_NGRAMS = 1_000_000
EXAMPLE_CHARS = 160
EXAMPLE_SOURCE_CHARS = 2_000_000
_MIX = np.uint64(0x9E3779B97F4A7C15)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """A 64-bit hash of every run of n words of text (none when it has fewer)."""
    word_list = words(text)
    if len(word_list) < n:
        return np.zeros(0, dtype=np.uint64)
    w = np.array([zlib.crc32(x.encode("utf-8", "surrogatepass")) for x in word_list], dtype=np.uint64)
    count = len(w) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = (h ^ w[k : k + count]) * _MIX
            h ^= h >> np.uint64(31)
    return h


def _sampled(h: np.ndarray, rate: int) -> np.ndarray:
    return h if rate <= 1 else h[h % np.uint64(rate) == 0]


def overlap(train: Iterable[str], held_out: Iterable[str], n: int, held_out_chars: int) -> dict[str, Any]:
    """Which held-out documents share an n-word run with any training document (in one process).

    Returns held_out_documents, contaminated_documents, contaminated (their numbers, in order), the
    sampling rate used, and examples (up to two: the document's start and one shared n-gram).
    """
    held_out = list(held_out)
    rate = sampling_rate(held_out_chars)
    all_h, all_owner, held = held_out_index(held_out, n, rate)
    unique = np.unique(all_h)
    return result(all_h, all_owner, held, unique, found_in(unique, train, n, rate), len(held_out), n, rate)


def _shared(text: str, n: int, hits: np.ndarray) -> str:
    word_list = words(text)
    h = ngram_hashes(text, n)
    inside = np.flatnonzero(np.isin(h, hits))
    return " ".join(word_list[inside[0] : inside[0] + n]) if len(inside) else ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def held_out_index(held_out: Iterable[str], n: int, rate: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(hashes, owning document numbers, the first documents' texts for examples) of the held-out side."""
    held: list[str] = []
    held_chars = 0
    hashes, owners = [], []
    for i, text in enumerate(held_out):
        h = _sampled(ngram_hashes(text, n), rate)
        hashes.append(h)
        owners.append(np.full(len(h), i, dtype=np.int64))
        if held_chars < EXAMPLE_SOURCE_CHARS and len(held) == i:
            held.append(text)  # the first documents only, for the examples
            held_chars += len(text)
    return (np.concatenate(hashes) if hashes else np.zeros(0, np.uint64),
            np.concatenate(owners) if owners else np.zeros(0, np.int64), held)


def found_in(unique: np.ndarray, train: Iterable[str], n: int, rate: int) -> np.ndarray:
    """Positions in `unique` (sorted held-out hashes) of those that occur in the training texts."""
    found = np.zeros(len(unique), dtype=bool)
    if len(unique):
        for text in train:
            h = _sampled(ngram_hashes(text, n), rate)
            if len(h):
                pos = np.searchsorted(unique, h).clip(0, len(unique) - 1)
                found[pos[unique[pos] == h]] = True
    return np.flatnonzero(found)


def sampling_rate(held_out_chars: int) -> int:
    # About one word per 6 characters (CJK: one per character, so the sample is smaller than the cap there).
    return max(1, -(-held_out_chars // 6 // MAX_HELD_OUT_NGRAMS))


def result(all_h: np.ndarray, all_owner: np.ndarray, held: list[str], unique: np.ndarray, hit: np.ndarray,
           count: int, n: int, rate: int) -> dict[str, Any]:
    hit_hashes = unique[hit]
    contaminated = np.unique(all_owner[np.isin(all_h, hit_hashes)]).tolist()
    examples = [{"document": i, "text": _short(held[i]), "shared": _shared(held[i], n, hit_hashes)}
                for i in contaminated[:2] if i < len(held)]
    return {"held_out_documents": count, "contaminated_documents": len(contaminated), "contaminated": contaminated,
            "ngram_words": n, "sampling_rate": rate, "examples": examples}


def remove(per_shard: dict, result: dict, val_kind: int) -> dict:
    """per_shard with the contaminated validation documents unassigned (numbered as `run` streamed them)."""
    bad = set(result["contaminated"])
    out: dict = {}
    number = 0
    for role, assigns in per_shard.items():
        out[role] = []
        for assign in assigns:
            assign = assign.copy()
            for pos in np.flatnonzero(assign == val_kind).tolist():
                if number in bad:
                    assign[pos] = 0
                number += 1
            out[role].append(assign)
    return out
