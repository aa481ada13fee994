"""Decontamination: which validation (or test) documents share a long word n-gram with the training data.

The n-grams of the held-out side are hashed into a sorted array (sampled by hash when that side is big, so
memory stays bounded: a long shared passage still shows up, since it contains many n-grams); the training
side is then streamed and looked up. Words are counted as everywhere in lmforge's filters (each CJK
character a word).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_write_json
from lmforge.config import CleanConfig
from lmforge.data.quality import words

MAX_HELD_OUT_NGRAMS = 8_000_000  # hashes kept for the held-out side (16 bytes each with the document number)
EXAMPLE_CHARS = 160
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
    """Which held-out documents share an n-word run with any training document.

    Returns held_out_documents, contaminated_documents, contaminated (their numbers, in order), the
    sampling rate used, and examples (up to two: the document's start and one shared n-gram).
    """
    # About one word per 6 characters (fewer for CJK, where a character is a word: the rate is then lower).
    rate = max(1, -(-held_out_chars // 6 // MAX_HELD_OUT_NGRAMS))
    held: list[str] = []
    hashes, owners = [], []
    count = 0
    for i, text in enumerate(held_out):
        h = _sampled(ngram_hashes(text, n), rate)
        hashes.append(h)
        owners.append(np.full(len(h), i, dtype=np.int64))
        count = i + 1
        if len(held) < 1000:
            held.append(text)  # a few kept for the examples only
    all_h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    all_owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    del hashes, owners
    unique = np.unique(all_h)
    found = np.zeros(len(unique), dtype=bool)
    if len(unique):
        for text in train:
            h = _sampled(ngram_hashes(text, n), rate)
            if len(h):
                pos = np.searchsorted(unique, h).clip(0, len(unique) - 1)
                found[pos[unique[pos] == h]] = True
    hit_hashes = unique[found]
    contaminated = np.unique(all_owner[np.isin(all_h, hit_hashes)]).tolist()
    examples = []
    for i in contaminated[:2]:
        if i < len(held):
            examples.append({"document": i, "text": _short(held[i]), "shared": _shared(held[i], n, hit_hashes)})
    return {"held_out_documents": count, "contaminated_documents": len(contaminated), "contaminated": contaminated,
            "ngram_words": n, "sampling_rate": rate, "examples": examples}


def _shared(text: str, n: int, hits: np.ndarray) -> str:
    word_list = words(text)
    h = ngram_hashes(text, n)
    inside = np.flatnonzero(np.isin(h, hits))
    return " ".join(word_list[inside[0] : inside[0] + n]) if len(inside) else ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def run(work: Path, shards: dict, per_shard: dict, clean: CleanConfig,
        docs: Callable[[Any, np.ndarray, int], Iterator[str]], kinds: tuple[int, int]) -> dict[str, Any]:
    """Step of the streaming prepare: overlap of the validation documents with the training documents."""
    marker = work / "decontam.json"
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))
    train_kind, val_kind = kinds

    def stream(kind: int) -> Iterator[str]:
        for role in shards:
            for shard, assign in zip(shards[role], per_shard[role]):
                yield from docs(shard, assign, kind)

    val_chars = sum(len(t) for t in stream(val_kind))
    result = overlap(stream(train_kind), stream(val_kind), clean.decontam_ngram, val_chars)
    atomic_write_json(marker, result)
    return result


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
