"""What the corpus calls for before it is prepared: a sample of its text, its size, and the tokenizer.

The tokenizer is chosen before the data is prepared (preparation trains it), from a sample of the
text, the corpus size and the compute the run will have.
"""

from __future__ import annotations

import re

# Below this much compute (budget seconds x measured matmul TFLOP/s) a run trains small models, whose
# output layer dominates the step when the vocabulary is large. Measured on this project's 2-core CPU
# (about 1 TFLOP/s bf16) with 2-minute `--auto` runs, validation bits per byte: tiny Shakespeare BPE
# 512 / 1024 / 2048 / 4096: 2.181 / 2.157 / 2.161 / 2.212; Tang poems (Chinese) per-character
# tokens (about 7,000) 2.720 against BPE 2048 2.653 and BPE 4096 2.718.
SMALL_COMPUTE_TFLOP = 1000.0
# Compute within this factor of SMALL_COMPUTE_TFLOP is a close call: the plan says which measurement
# decided it (a busier or quieter machine could tip it).
CLOSE_CALL_FACTOR = 1.15


def choose_tokenizer(sample: str, total_bytes: int, cjk_split: str,
                     compute_tflop: float | None = None) -> tuple[str, int, str]:
    """(kind, vocab_size, reason) for a corpus, from a sample of its text, its size and the compute
    the run will have (`compute_tflop`: budget x measured matmul throughput; None: unknown).

    Byte-level BPE packs several characters of English into a token, so the model reads more text
    per step. Chinese split per character gains nothing from it with a large vocabulary (the tokens
    are the characters), but a short run does better with a capped one: common characters stay one
    token, rare ones fall back to two or three byte tokens, and the output layer shrinks several
    times. Tiny corpora have too little text to learn merges from.
    """
    from lmforge.data.tokenizer import CJK_CLASS

    small = compute_tflop is not None and compute_tflop < SMALL_COMPUTE_TFLOP
    why_small = (f"; a short run (about {compute_tflop:,.0f} TFLOP of compute) trains a small model, whose output "
                 "layer a larger vocabulary would dominate") if small else ""
    if not sample:
        return "bpe", 4096, "default"
    cjk = len(re.findall(CJK_CLASS, sample)) / max(1, len(sample))
    if cjk > 0.3 and cjk_split == "char":
        if small and total_bytes >= 1_000_000:
            return "bpe", 2048, (f"{100 * cjk:.0f}% CJK characters: BPE split per character with 2048 tokens keeps "
                                 "common characters whole and spells rare ones in bytes" + why_small)
        return "char", 0, (f"{100 * cjk:.0f}% CJK characters: BPE (split per character) would give about one token "
                           "per character anyway, at the cost of training and slower encoding")
    if total_bytes < 100_000:
        return "char", 0, f"only {total_bytes / 1000:.0f} kB of text: too little to learn BPE merges from"
    vocab = 4096 if total_bytes >= 1_000_000 else max(512, 256 * round(total_bytes / 250 / 256))
    if small:
        vocab = min(vocab, 1024)
    return "bpe", vocab, (f"byte-level BPE packs several characters into a token, so each step reads more text; "
                          f"vocabulary {vocab} for {total_bytes / 1e6:.1f} MB" + why_small)


def tokenizer_close_call(sample: str, total_bytes: int, cjk_split: str, budget_s: float,
                         peak_tflops: float) -> dict | None:
    """A close call when the tokenizer would differ with CLOSE_CALL_FACTOR more or less compute (a
    busier or quieter machine measures a different matmul peak): what was chosen, over what, and the
    measurement that decided. None when the choice is clear."""
    compute = budget_s * peak_tflops
    chosen = choose_tokenizer(sample, total_bytes, cjk_split, compute)[:2]
    for other_compute in (compute / CLOSE_CALL_FACTOR, compute * CLOSE_CALL_FACTOR):
        other = choose_tokenizer(sample, total_bytes, cjk_split, other_compute)[:2]
        if other != chosen:
            side = "under" if compute < SMALL_COMPUTE_TFLOP else "over"
            return {"decision": "tokenizer", "chose": _tok_name(chosen), "over": _tok_name(other),
                    "value": round(compute, 1),
                    "measurement": (f"{compute:,.0f} TFLOP of compute ({budget_s:.0f}s x {peak_tflops:.2f} TFLOP/s, "
                                    f"the measured matmul peak) is {side} the {SMALL_COMPUTE_TFLOP:,.0f} TFLOP "
                                    f"threshold by {100 * abs(compute / SMALL_COMPUTE_TFLOP - 1):.0f}%")}
    return None


def _tok_name(choice: tuple[str, int]) -> str:
    return f"bpe {choice[1]}" if choice[0] == "bpe" else choice[0]


def sample_corpus(path: str | None, text_field: str, max_chars: int = 1_000_000,
                  encoding: str = "auto") -> tuple[str, int]:
    """The first `max_chars` characters of the corpus and the total size of its files in bytes."""
    from lmforge.data.readers import find_files, read_documents

    if path is None:
        return "", 0
    total = sum(f.stat().st_size for f in find_files(path))
    parts, n = [], 0
    for doc in read_documents(path, text_field=text_field, doc_split="file", encoding=encoding):
        parts.append(doc.text[: max_chars - n])
        n += len(parts[-1])
        if n >= max_chars:
            break
    return "".join(parts), total
