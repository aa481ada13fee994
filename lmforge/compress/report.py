"""Measuring a compressed model against its original, and the one table each compression command
prints at the end and saves in its run folder (compress.json, compress.md).

Rows carry: parameters, weight-file size, speed (language models: greedy decoding with the KV
cache at batch 1 and batch 8, in generated tokens per second; classifiers: predictions per
second), and quality (bits per byte on the validation split, or accuracy). Speeds are the best of
a few repeats, so that other programs on a shared machine count as little as possible.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge import runs
from lmforge.atomic import atomic_write_json, atomic_write_text
from lmforge.console import console
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT, KVCache


@dataclass
class Row:
    """One model of a comparison; None where a figure was not measured."""

    name: str
    params: int
    file_mb: float
    speed_b1: float | None = None  # LM: decode tokens/s at batch 1; classifier: predictions/s
    speed_b8: float | None = None  # LM: decode tokens/s at batch 8
    quality: float | None = None  # LM: bits per byte (lower is better); classifier: accuracy
    notes: dict = field(default_factory=dict)


def file_mb(path: Path) -> float:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.safetensors") if "checkpoints" not in p.parts) / 2**20
    return path.stat().st_size / 2**20


@torch.no_grad()
def decode_tokens_per_s(model: GPT, batch: int, new_tokens: int = 64, prompt_len: int = 8, repeats: int = 5,
                        device: str = "cpu", budget_s: float = 20.0) -> float:
    """Greedy decoding speed with the KV cache: generated tokens per second over the batch.

    The number of new tokens is cut to what fits in the context after the prompt."""
    T = model.cfg.context_len
    prompt_len = max(1, min(prompt_len, T // 4))
    new_tokens = max(1, min(new_tokens, T - prompt_len))
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.vocab_size, (batch, prompt_len), generator=gen, device=device)
    best = float("inf")
    t_end = time.perf_counter() + budget_s
    for i in range(repeats + 1):  # the first pass warms up the kernels (packing, allocator)
        cache = KVCache(model.cfg.n_layer)
        logits = model(prompt, cache=cache)
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(nxt, cache=cache)
        if i:
            best = min(best, time.perf_counter() - t0)
        if i and time.perf_counter() > t_end:
            break
    return batch * new_tokens / best


def lm_row(name: str, model: GPT, weights: Path, val_tokens: np.ndarray | None, byte_lengths: np.ndarray | None,
           eval_tokens: int, params: int | None = None, speed: bool = True) -> Row:
    """The row of one language model: speed at batch 1 and 8, bits per byte on `val_tokens`."""
    from lmforge.lm.task import evaluate_stream
    from lmforge.trainer.runtime import Runtime

    model.eval()
    row = Row(name, params if params is not None else sum(p.numel() for p in model.parameters()),
              file_mb(weights))
    if speed:
        row.speed_b1 = decode_tokens_per_s(model, 1)
        row.speed_b8 = decode_tokens_per_s(model, 8)
    if val_tokens is not None and byte_lengths is not None:
        rt = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), precision="fp32")
        with torch.no_grad():
            m = evaluate_stream(model, val_tokens, byte_lengths, model.cfg.context_len, eval_tokens, rt)
        row.quality = m["val_bpb"]
    return row


def classifier_params(clf) -> int:
    """Weights of a classifier run's members (the linear model's coefficients included)."""
    from lmforge.models.quant import count_weights

    n = 0
    for m in clf.members:
        model = m.model
        n += count_weights(model) if isinstance(model, torch.nn.Module) else int(np.size(getattr(model, "coef", 0)))
    return n


def predictions_per_s(predict, texts: list[str], repeats: int = 2) -> float:
    """Texts classified per second by `predict(texts)` (the best of a few passes)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(texts)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table_lines(rows: list[Row], kind: str) -> list[str]:
    """The comparison as a Markdown table (the first row is the reference)."""
    ref = rows[0]
    if kind == "lm":
        head = "| model | params | file MB | decode tok/s b1 | decode tok/s b8 | bits/byte | vs original |"
    else:
        head = "| model | params | file MB | predictions/s | - | accuracy | vs original |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        if r is ref:
            vs = "reference"
        else:
            parts = []
            if ref.file_mb and r.file_mb:
                parts.append(f"{ref.file_mb / r.file_mb:.2f}x smaller")
            if ref.speed_b1 and r.speed_b1:
                parts.append(f"{r.speed_b1 / ref.speed_b1:.2f}x speed")
            if ref.quality is not None and r.quality is not None:
                d = r.quality - ref.quality
                parts.append(f"{d / ref.quality:+.2%} bpb" if kind == "lm" else f"{100 * d:+.2f} points")
            vs = ", ".join(parts)
        q = _fmt(r.quality, 4)
        lines.append(f"| {r.name} | {r.params:,} | {r.file_mb:.2f} | {_fmt(r.speed_b1, 1)} | {_fmt(r.speed_b8, 1)} "
                     f"| {q} | {vs} |")
    return lines


def save_and_print(run_dir: Path, method: str, kind: str, rows: list[Row], facts: dict,
                   progress: bool = True) -> dict:
    """Print the table, and save it as RUN/compress.json and RUN/compress.md."""
    lines = table_lines(rows, kind)
    report = {"method": method, "kind": kind, "run_dir": str(run_dir), "rows": [asdict(r) for r in rows], **facts}
    atomic_write_json(Path(run_dir) / "compress.json", report)
    notes = [f"- {k}: {v}" for k, v in facts.items() if isinstance(v, (str, int, float))]
    atomic_write_text(Path(run_dir) / "compress.md", f"# {method}\n\n" + "\n".join(lines + [""] + notes) + "\n")
    if progress:
        console.print(f"\n{method}: " + ("decode speed with the KV cache, greedy; bits per byte on the validation "
                                         "split" if kind == "lm" else "predictions per second; accuracy"))
        console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
    return report


# --- run folders -------------------------------------------------------------------------------


def claim_output(out: str | Path, kind: str, source: Path, method: str, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """The run folder a compression command writes, claimed like any run's (lmforge.runs.claim): a new
    or empty folder, or with `overwrite` an earlier run of the same kind (only lmforge's files of it
    go); run.json records the original run and the method."""
    if out and Path(out).resolve() == Path(source).resolve():
        raise ConfigError(f"--out {out} is the run being compressed; give a new folder")
    path = runs.claim(out, kind, overwrite=overwrite, quiet=not progress)
    runs.update_info(path, compressed_from=str(Path(source).resolve()), compression=method)
    return path


def link_or_copy(src: Path, dst: Path) -> None:
    """A read-only input (token file, tokenizer) shared with the original run: a hard link where the
    file system allows it, else a copy. Nothing writes these files in place (prepared data is
    replaced by rename), and an earlier link at `dst` is replaced by rename too, so the original's
    file is never written through a link."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
