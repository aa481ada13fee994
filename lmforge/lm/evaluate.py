"""Stage 3: score a trained run on any text: loss, perplexity, bits per byte."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.config import check_option, is_int
from lmforge.data.clean import clean_documents
from lmforge.data.readers import read_documents
from lmforge.data.tokens import TokenFile, encode_corpus
from lmforge.errors import DataError
from lmforge.lm.model import load_run_model
from lmforge.lm.task import token_byte_lengths, window_batch
from lmforge.trainer.runtime import Runtime, check_device


def evaluate_stream(
    model: torch.nn.Module,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    context_len: int,
    max_tokens: int,
    rt: Runtime,
    batch_size: int = 32,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte over non-overlapping windows from the start of `tokens`.

    Deterministic (no sampling noise between evaluations); ranks score interleaved windows and
    the sums are all-reduced.
    """
    T = context_len
    n_windows = max(1, min((len(tokens) - 1) // T, max_tokens // T))
    starts = np.arange(n_windows) * T
    mine = starts[rt.rank :: rt.world_size]
    nats = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    nbytes = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(mine), batch_size):
        x, y = window_batch(tokens, mine[i : i + batch_size], T, rt.device)
        logits = model(x)
        nll = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        nats += nll.double().cpu()
        count += y.numel()
        nbytes += float(byte_lengths[y.cpu().numpy()].sum())
    if rt.distributed:
        import torch.distributed as dist

        sums = torch.stack([nats, count, nbytes]).to(rt.device)
        dist.all_reduce(sums)
        nats, count, nbytes = sums.cpu()
    loss = float(nats / count)
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        "val_bpb": float(nats / math.log(2) / max(float(nbytes), 1.0)),
        "val_tokens": int(count),
    }


def evaluate(run_dir: str | Path, data: str | Path | None = None, max_tokens: int = 0,
             device: str = "cpu") -> dict[str, float]:
    """Metrics of the run's model on `data` (cleaned as in training), or on its validation split."""
    check_option(is_int(max_tokens) and max_tokens >= 0, "--max-tokens", max_tokens, "must be an integer >= 0 (0: all)")
    check_device(device)
    model, tok, info = load_run_model(Path(run_dir), device)
    check_option(max_tokens == 0 or max_tokens >= model.cfg.context_len, "--max-tokens", max_tokens,
                 f"is less than one window of the model's context ({model.cfg.context_len} tokens)")
    cfg = info["config"]
    rt = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device(device), precision="fp32")
    T = model.cfg.context_len
    if data is None:
        tokens = TokenFile(Path(run_dir) / "data" / "val.bin").tokens
        source = "validation split"
    else:
        stream = read_documents(data, cfg.data.text_field, cfg.data.doc_split, cfg.data.encoding)
        docs, _ = clean_documents([doc.text for doc in stream], cfg.clean)
        files_read, files_skipped = len(stream.report.files), len(stream.report.skipped)
        if not docs:
            raise DataError(f"{data}: no text left after cleaning")
        with tempfile.TemporaryDirectory() as tmp:
            tokens = encode_corpus(docs, tok, Path(tmp) / "eval.bin").tokens.copy()
        source = str(data)
    if len(tokens) < T + 1:
        raise DataError(f"{source}: {len(tokens)} tokens is less than one context window of {T}")
    with torch.no_grad():
        metrics = evaluate_stream(model, tokens, token_byte_lengths(tok), T, max_tokens or len(tokens), rt)
    metrics["source"] = source
    if data is not None:
        metrics["files_read"], metrics["files_skipped"] = files_read, files_skipped
    return metrics
