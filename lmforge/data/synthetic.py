"""A generated corpus with planted near-duplicates, for measuring deduplication and prepare at scale.

Distinct documents are random draws from a Zipf-distributed vocabulary of pseudo-words (so they share
common words but almost no runs of five); a planted near-duplicate is an earlier document with a small
share of its words replaced, inserted or deleted. `write_corpus` writes plain-text files of one
document per paragraph plus a JSON list of the planted pairs, so recall and false positives of the
deduplication can be measured against ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmforge.atomic import atomic_write_json

_LETTERS = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))


def _vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    lengths = rng.integers(2, 10, size)
    return np.array(["".join(rng.choice(_LETTERS, n)) for n in lengths])


def _sentences(words: list[str], rng: np.random.Generator) -> str:
    out: list[str] = []
    i = 0
    while i < len(words):
        n = int(rng.integers(8, 20))
        sentence = words[i : i + n]
        out.append(sentence[0].capitalize() + " " + " ".join(sentence[1:]) + ".")
        i += n
    return " ".join(out)


def _edit(words: list[str], vocab: np.ndarray, rng: np.random.Generator, rate: float) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(len(words) * rate))):
        at = int(rng.integers(0, len(out)))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            out[at] = str(rng.choice(vocab))
        elif kind == 1:
            out.insert(at, str(rng.choice(vocab)))
        elif len(out) > 1:
            del out[at]
    return out


def documents(num_docs: int, dup_fraction: float = 0.1, edit_rate: float = 0.01, seed: int = 0,
              words_per_doc: tuple[int, int] = (80, 400)):
    """Yield (text, index of the original it near-duplicates or -1) for num_docs documents."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, 20000)
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1) ** 1.1)
    cdf /= cdf[-1]
    originals: list[list[str]] = []  # a bounded pool of recent originals to copy from
    pool_size = 2000
    for i in range(num_docs):
        if originals and rng.random() < dup_fraction:
            j = int(rng.integers(0, len(originals)))
            source, words = originals[j]
            yield _sentences(_edit(words, vocab, rng, edit_rate), rng), source
            continue
        n = int(rng.integers(*words_per_doc))
        words = vocab[np.searchsorted(cdf, rng.random(n)).clip(0, len(vocab) - 1)].tolist()
        if len(originals) < pool_size:
            originals.append((i, words))
        else:
            originals[int(rng.integers(0, pool_size))] = (i, words)
        yield _sentences(words, rng), -1


def write_corpus(folder: str | Path, total_mb: float, file_mb: float = 8.0, **kwargs) -> dict:
    """Write about total_mb of generated text as FOLDER/text/*.txt, files of about file_mb each (one
    document per paragraph), and FOLDER/planted.json ([duplicate, original] document numbers); returns a
    description."""
    folder = Path(folder)
    (folder / "text").mkdir(parents=True, exist_ok=True)
    budget, per_file = int(total_mb * 1e6), int(file_mb * 1e6)
    written = index = file_no = 0
    planted: list[list[int]] = []
    out = None
    docs = documents(10**12, **kwargs)
    try:
        while written < budget:
            if out is None or out.tell() >= per_file:
                if out is not None:
                    out.close()
                out = open(folder / "text" / f"part-{file_no:05d}.txt", "w", encoding="utf-8")
                file_no += 1
            text, source = next(docs)
            out.write(text + "\n\n")
            written += len(text) + 2
            if source >= 0:
                planted.append([index, source])
            index += 1
    finally:
        if out is not None:
            out.close()
    atomic_write_json(folder / "planted.json", planted)
    return {"documents": index, "planted": len(planted), "bytes": written, "files": file_no}


def load_planted(folder: str | Path) -> list[list[int]]:
    return json.loads((Path(folder) / "planted.json").read_text(encoding="utf-8"))
