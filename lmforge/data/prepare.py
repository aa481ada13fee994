"""Stage 1: raw text -> cleaned documents -> trained tokenizer -> memory-mapped token files.

Everything lands in RUN/data/. A key over the input files (path, size, mtime) and every setting
that shapes the output is stored there (RUN/data/prepare.json, with the file list and the
tokenizer's fingerprint); re-running with the same key reuses the files. A resumed run never
re-prepares: it loads what is there (`load_prepared`) after checking the inputs (`input_changes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.config import Config, DataConfig
from lmforge.data import default_corpus
from lmforge.data import engine, pipeline
from lmforge.data.clean import CleanReport
from lmforge.data.quality import parse_languages
from lmforge.data.readers import ReadReport, find_files, read_documents
from lmforge.data.tokenizer import Tokenizer
from lmforge.data.tokens import TokenFile, cache_key
from lmforge.errors import ConfigError, DataError
from lmforge.atomic import atomic_write_json
from lmforge.console import console

TOKENIZER_FILE = "tokenizer.json"
ENGINE_FIELDS = ("engine", "executor", "tasks", "logging_dir", "slurm_partition", "slurm_time", "slurm_cpus_per_task",
                 "slurm_mem_per_cpu_gb")


def init_tokenizer(run_dir: str | Path) -> Tokenizer:
    """The tokenizer of the run a training starts from (`init`): its data is encoded with it, not a new one."""
    path = Path(run_dir) / "data" / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"init {run_dir} is not an lmforge run folder with a tokenizer ({path} is missing); "
                        "give a run folder, or a Hugging Face folder to `lmforge import` first")
    return Tokenizer.load(path)


@dataclass
class PreparedData:
    folder: Path
    tokenizer: Tokenizer
    train: TokenFile
    val: TokenFile
    summary: dict
    reused: bool


def file_signature(path: str | None) -> list:
    """[path, size, mtime] of every input file under `path` (the embedded corpus: [name, size])."""
    if path is None:
        return [[str(p.name), p.stat().st_size] for p in default_corpus.play_files()]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in find_files(path)]


def _inputs(cfg: Config) -> dict:
    data = cfg.data
    return {"train": file_signature(data.path), "valid": file_signature(data.valid_path) if data.valid_path else None}


def _key(cfg: Config, inputs: dict, given: Tokenizer | None = None) -> str:
    """given: the tokenizer of the model the run starts from (--init), used instead of training one."""
    tokenizer = asdict(cfg.tokenizer) if given is None else {"init_tokenizer": given.fingerprint()}
    # Neither the worker count, the shard size nor the engine and its options change the output.
    same = {name: None for name in ENGINE_FIELDS}
    return cache_key(inputs, asdict(cfg.data) | {"num_workers": 0, "shard_mb": 0} | same, asdict(cfg.clean),
                     asdict(cfg.filter), tokenizer, {"seed": cfg.seed, "version": 2})


def _read_manifest(folder: Path) -> dict:
    try:
        saved = json.loads((folder / "prepare.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder / 'prepare.json'} is missing: the run's prepared data is gone") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{folder / 'prepare.json'} is damaged ({type(e).__name__})") from None
    if not isinstance(saved, dict):
        raise DataError(f"{folder / 'prepare.json'} is damaged (not a JSON object)")
    return saved


def signature_changes(old: list | None, new: list | None, role: str) -> list[str]:
    if old == new:
        return []
    if not old or not new:
        return [f"the {role} files were {'added' if new else 'removed'}"]
    before = {str(e[0]): e[1:] for e in old}
    after = {str(e[0]): e[1:] for e in new}
    out = [f"{p} is new" for p in after if p not in before] + [f"{p} is gone" for p in before if p not in after]
    for p in after.keys() & before.keys():
        if after[p] != before[p]:
            how = (f"size {before[p][0]:,} -> {after[p][0]:,} bytes" if before[p][0] != after[p][0]
                   else "modified since")
            out.append(f"{p} changed ({how})")
    return sorted(out)


def input_changes(cfg: Config) -> list[str]:
    """How the input files differ from those RUN/data was prepared from (new, gone, other size or
    modification time); empty when unchanged."""
    saved = _read_manifest(Path(cfg.out) / "data")
    try:
        now = _inputs(cfg)
    except DataError as e:
        return [str(e)]
    if not isinstance(saved.get("inputs"), dict):  # prepared by an older lmforge: only the key to compare
        return [] if saved.get("key") == _key(cfg, now) else ["the input files changed (size or modification time)"]
    return (signature_changes(saved["inputs"].get("train"), now["train"], "training")
            + signature_changes(saved["inputs"].get("valid"), now["valid"], "validation"))


def load_prepared(cfg: Config) -> PreparedData:
    """The prepared data of the run in cfg.out, as it is (a resumed run trains on exactly these tokens)."""
    folder = Path(cfg.out) / "data"
    saved = _read_manifest(folder)
    try:
        tok = Tokenizer.load(folder / TOKENIZER_FILE)
        train, val = TokenFile(folder / "train.bin"), TokenFile(folder / "val.bin")
    except DataError as e:
        raise DataError(f"the run's prepared data in {folder} is damaged: {e}") from None
    want = saved.get("tokenizer", tok.fingerprint())
    for what, fp in (("tokenizer.json", tok.fingerprint()), ("train.bin", train.tokenizer_fingerprint),
                     ("val.bin", val.tokenizer_fingerprint)):
        if fp != want:
            raise DataError(f"{folder / what} does not belong to the tokenizer this run was prepared with; the "
                            "prepared data was replaced. Start a new run (--out NEW_FOLDER or --overwrite).")
    return PreparedData(folder, tok, train, val, saved.get("summary", {}), reused=True)


def _load_documents(data: DataConfig, path: str | None, reads: dict | None = None,
                    role: str = "train") -> Iterable[str]:
    """The documents of `path`, streamed file by file; the reader's report of the files read and left
    out goes into `reads[role]` (filled as the stream is consumed; none for the embedded corpus)."""
    if path is None:
        return default_corpus.default_documents()
    stream = read_documents(path, text_field=data.text_field, doc_split=data.doc_split, encoding=data.encoding)
    if reads is not None:
        reads[role] = stream.report
    return (doc.text for doc in stream)


def prepare(cfg: Config, quiet: bool = False) -> PreparedData:
    """Build (or reuse) RUN/data for this config and return handles to it."""
    if not cfg.out:
        raise ConfigError("config field 'out' is empty: name the run folder the prepared data goes in")
    if cfg.filter.languages:
        parse_languages(cfg.filter.languages)  # refuses an unknown code before any work
    engine.check_available(cfg.data)
    folder = Path(cfg.out) / "data"
    folder.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    inputs = _inputs(cfg)
    given = init_tokenizer(cfg.init) if cfg.init else None
    key = _key(cfg, inputs, given)
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

    source = data.path or default_corpus.describe()
    reads: dict[str, ReadReport] = {}
    sources = {"train": lambda: _load_documents(data, data.path, reads, "train")}
    if data.valid_path:
        sources["valid"] = lambda: _load_documents(data, data.valid_path, reads, "valid")
    input_bytes = sum(entry[1] for role in inputs.values() if role for entry in role)
    result = pipeline.run(cfg, folder, key, sources, given, folder / TOKENIZER_FILE, input_bytes)
    tok = result.tokenizer
    train, val = TokenFile(folder / "train.bin"), TokenFile(folder / "val.bin")
    report, val_report = result.report, result.val_report
    files, val_files = reads.get("train"), reads.get("valid")
    summary = {
        "source": str(source),
        "files": files.to_dict() if files else None,
        "validation_files": val_files.to_dict() if val_files else None,
        "cleaning": report.to_dict(),
        "validation_cleaning": val_report.to_dict() if val_report else None,
        "train_documents": result.train_documents,
        "val_documents": result.val_documents,
        "train_tokens": train.num_tokens,
        "val_tokens": val.num_tokens,
        "train_bytes": train.num_bytes_utf8,
        "bytes_per_token": train.num_bytes_utf8 / max(1, train.num_tokens),
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size},
        "decontamination": _decontam_summary(result.decontamination),
        "seconds": result.seconds,
    }
    atomic_write_json(manifest, {"key": key, "inputs": inputs, "tokenizer": tok.fingerprint(), "summary": summary})
    pipeline.remove_work(folder)
    if not quiet:
        _print_summary(summary, report, [r for r in (files, val_files) if r is not None])
    return PreparedData(folder, tok, train, val, summary, reused=False)


def _decontam_summary(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {k: v for k, v in result.items() if k != "contaminated"} | {"first": result["contaminated"][:20]}


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
    d = summary.get("decontamination")
    if d:
        console.print(f"  decontamination: {d['contaminated_documents']:,} of {d['held_out_documents']:,} validation "
                      f"documents share a {d['ngram_words']}-word run with the training text")
        for example in d["examples"][:2]:
            console.print(f"    e.g. {example['shared']!r} in {example['text']!r}")
    console.print("  time: " + ", ".join(f"{k.replace('_', '+')} {v}s" for k, v in summary["seconds"].items()))
