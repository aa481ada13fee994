"""Stage 3: score a trained run on any text: loss, perplexity, bits per byte."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lmforge.data.clean import clean_documents
from lmforge.data.readers import read_texts
from lmforge.data.tokens import TokenFile, encode_corpus
from lmforge.errors import DataError
from lmforge.lm.model import load_run_model
from lmforge.lm.task import evaluate_stream, token_byte_lengths
from lmforge.trainer.runtime import Runtime


def evaluate(run_dir: str | Path, data: str | Path | None = None, max_tokens: int = 0,
             device: str = "cpu") -> dict[str, float]:
    """Metrics of the run's model on `data` (cleaned as in training), or on its validation split."""
    model, tok, info = load_run_model(Path(run_dir), device)
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
        docs, _ = clean_documents(read_texts(data, cfg.data.text_field, cfg.data.doc_split), cfg.clean)
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
    return metrics
