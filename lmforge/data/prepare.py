"""Stage 1: raw text -> cleaned documents -> trained tokenizer -> memory-mapped token files.

Everything lands in RUN/data/. A key over the input files (path, size, mtime) and every setting
that shapes the output is stored there; re-running with the same key reuses the files.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.config import Config, DataConfig
from lmforge.data import default_corpus
from lmforge.data.clean import CleanReport, clean_documents, split_documents
from lmforge.data.readers import ReadReport, find_files, read_documents
from lmforge.data.tokenizer import Tokenizer, train_tokenizer
from lmforge.data.tokens import TokenFile, cache_key, encode_corpus
from lmforge.errors import DataError
from lmforge.atomic import atomic_write_json
from lmforge.console import console

TOKENIZER_FILE = "tokenizer.json"


@dataclass
class PreparedData:
    folder: Path
    tokenizer: Tokenizer
    train: TokenFile
    val: TokenFile
    summary: dict
    reused: bool


def _file_signature(path: str | None) -> list:
    if path is None:
        return [[str(p.name), p.stat().st_size] for p in default_corpus.play_files()]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in find_files(path)]


def _load_documents(data: DataConfig, path: str | None) -> tuple[list[str], ReadReport | None]:
    """The documents under `path` and the report of the files read and left out (None: embedded corpus)."""
    if path is None:
        return default_corpus.default_documents(), None
    stream = read_documents(path, text_field=data.text_field, doc_split=data.doc_split, encoding=data.encoding)
    return [doc.text for doc in stream], stream.report


def prepare(cfg: Config, quiet: bool = False) -> PreparedData:
    """Build (or reuse) RUN/data for this config and return handles to it."""
    folder = Path(cfg.out) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    key = cache_key(
        {"train": _file_signature(data.path), "valid": _file_signature(data.valid_path) if data.valid_path else None},
        asdict(data) | {"num_workers": 0},
        asdict(cfg.clean),
        asdict(cfg.tokenizer),
        {"seed": cfg.seed, "version": 1},
    )
    manifest = folder / "prepare.json"
    if manifest.exists():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            saved = {}
        if saved.get("key") == key:
            try:
                tok = Tokenizer.load(folder / TOKENIZER_FILE)
                prepared = PreparedData(folder, tok, TokenFile(folder / "train.bin"), TokenFile(folder / "val.bin"),
                                        saved.get("summary", {}), reused=True)
                if not quiet:
                    console.print(f"[green]prepare[/green]: reusing {folder} (inputs and settings unchanged)")
                return prepared
            except (DataError, OSError):
                pass  # incomplete or damaged: rebuild below

    t0 = time.perf_counter()
    source = data.path or default_corpus.describe()
    docs, files = _load_documents(data, data.path)
    cleaning = cfg.clean
    docs, report = clean_documents(docs, cleaning)
    val_files = None
    if data.valid_path:
        train_docs = docs
        raw_val, val_files = _load_documents(data, data.valid_path)
        val_docs, val_report = clean_documents(raw_val, cleaning)
    else:
        train_docs, val_docs = split_documents(docs, data.val_fraction, cfg.seed)
        val_report = None
    if not train_docs:
        raise DataError(f"no training text left in {source} after cleaning; see the cleaning summary above")
    if not val_docs:
        raise DataError(
            f"no validation text: {source} has too little text for data.val_fraction={data.val_fraction}; "
            "raise it or pass --data.valid_path"
        )
    t_read = time.perf_counter() - t0
    tok = train_tokenizer(train_docs, cfg.tokenizer)
    tok.save(folder / TOKENIZER_FILE)
    t_tok = time.perf_counter() - t0 - t_read
    train = encode_corpus(train_docs, tok, folder / "train.bin", num_workers=data.num_workers)
    val = encode_corpus(val_docs, tok, folder / "val.bin", num_workers=data.num_workers)
    t_enc = time.perf_counter() - t0 - t_read - t_tok
    summary = {
        "source": str(source),
        "files": files.to_dict() if files else None,
        "validation_files": val_files.to_dict() if val_files else None,
        "cleaning": report.to_dict(),
        "validation_cleaning": val_report.to_dict() if val_report else None,
        "train_documents": len(train_docs),
        "val_documents": len(val_docs),
        "train_tokens": train.num_tokens,
        "val_tokens": val.num_tokens,
        "train_bytes": train.num_bytes_utf8,
        "bytes_per_token": train.num_bytes_utf8 / max(1, train.num_tokens),
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size},
        "seconds": {"read_clean": round(t_read, 2), "tokenizer": round(t_tok, 2), "encode": round(t_enc, 2)},
    }
    atomic_write_json(manifest, {"key": key, "summary": summary})
    if not quiet:
        _print_summary(summary, report, [r for r in (files, val_files) if r is not None])
    return PreparedData(folder, tok, train, val, summary, reused=False)


def _print_summary(summary: dict, report: CleanReport, reads: list[ReadReport]) -> None:
    console.print(f"[green]prepare[/green]: {summary['source']}")
    for read in reads:
        for line in read.summary_lines():
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    for line in report.summary_lines():
        console.print(f"  {line}")
    console.print(
        f"  split: {summary['train_documents']:,} train / {summary['val_documents']:,} validation documents; "
        f"{summary['train_tokens']:,} / {summary['val_tokens']:,} tokens "
        f"({summary['tokenizer']['kind']}, vocabulary {summary['tokenizer']['vocab_size']:,}, "
        f"{summary['bytes_per_token']:.2f} bytes per token)"
    )
    s = summary["seconds"]
    console.print(f"  time: read+clean {s['read_clean']}s, tokenizer {s['tokenizer']}s, encode {s['encode']}s")
