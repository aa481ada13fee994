"""Stage 3: score a trained run on any text: loss, perplexity, bits per byte."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lmforge.config import check_option, is_int
from lmforge.data.clean import clean_documents
from lmforge.data.readers import read_documents
from lmforge.data.tokens import TokenFile, encode_corpus
from lmforge.errors import DataError
from lmforge.lm.model import load_run_model
from lmforge.lm.task import evaluate_stream, token_byte_lengths
from lmforge.trainer.runtime import Runtime, check_device


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
        if not (Path(run_dir) / "data" / "val.bin").is_file():
            raise DataError(f"{run_dir} has no validation split (an imported model has none); "
                            "score a text file with --data FILE")
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
