"""Streaming prepare: read -> clean -> filter -> deduplicate -> split -> tokenizer -> encode, shard by shard.

The corpus is never held in memory. The input is cut into shards of about data.shard_mb of raw text,
in input order; each shard is cleaned, filtered and fingerprinted (exact digest, MinHash signature)
by a worker process and written to RUN/data/work/. Deduplication then works on the digests and
signatures alone (a few bytes per document), the split on document numbers, the tokenizer trains on
a bounded sample read back from the shards, and the workers encode shard by shard into token parts
that are finally concatenated into train.bin / val.bin, the same files `encode_corpus` writes.

Every step ends by writing a marker file atomically (`*.done`, `*.npy`, `tokenizer.json`), so a
killed prepare restarts at the first unfinished step and shard. Shard boundaries are set by the
reading process and every decision is made in document order, so the output does not depend on the
number of workers.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
import os
import pickle
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_write_bytes, atomic_write_json
from lmforge.config import CleanConfig, Config, FilterConfig
from lmforge.data import decontam, engine
from lmforge.data.clean import CleanReport, clean_counted, fingerprint, split_documents
from lmforge.data.neardup import near_duplicates, signature
from lmforge.data.quality import any_enabled, reject_reason
from lmforge.data.tokenizer import Tokenizer, train_tokenizer
from lmforge.data.tokens import _usable_cpus, dtype_for, encode_docs, write_token_parts
from lmforge.errors import DataError

log = logging.getLogger(__name__)

WORK_DIR = "work"
STATE_FILE = "state.json"
TRAIN, VAL, SPLIT_ONE = 1, 2, 3  # assignment of a kept document; SPLIT_ONE: the only document, cut in two
EXAMPLE_CHARS = 160


# --- shards on disk -------------------------------------------------------------------------------


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, _npy_bytes(array))


def _base(work: Path, role: str, index: int) -> Path:
    return work / f"{role}-{index:05d}"


@dataclass
class Shard:
    """The kept documents of one input shard, read back from disk."""

    base: Path

    def offsets(self) -> np.ndarray:
        return np.load(f"{self.base}.idx.npy")

    def texts(self, select: np.ndarray | None = None) -> Iterator[str]:
        offsets = self.offsets()
        blob = Path(f"{self.base}.txt").read_bytes()
        for i in range(len(offsets) - 1) if select is None else np.flatnonzero(select).tolist():
            yield blob[offsets[i] : offsets[i + 1]].decode("utf-8", "surrogatepass")

    def stats(self) -> dict:
        return json.loads(Path(f"{self.base}.done").read_text(encoding="utf-8"))


# --- step 1: clean, filter, fingerprint (in the workers) -------------------------------------------


def clean_shard(base: Path, docs: list[str], clean: CleanConfig, filters: FilterConfig) -> dict:
    """Clean and filter one shard's documents and write the survivors with their fingerprints."""
    stats: Counter = Counter()
    filtering = any_enabled(filters)
    kept: list[bytes] = []
    lengths: list[int] = []
    digests: list[bytes] = []
    sigs: list[np.ndarray] = []
    for doc in docs:
        stats["documents_in"] += 1
        stats["chars_in"] += len(doc)
        text, removed = clean_counted(doc, clean)
        stats["control_chars_removed"] += removed
        if not text:
            stats["removed_empty"] += 1
            continue
        if len(text) < clean.min_chars:
            stats["removed_short"] += 1
            continue
        reason = reject_reason(text, filters, clean.shingle_words) if filtering else None
        if reason:
            stats[f"filter:{reason}"] += 1
            continue
        kept.append(text.encode("utf-8", "surrogatepass"))
        lengths.append(len(text))
        digests.append(fingerprint(text))
        if clean.near_dedup:
            sigs.append(signature(text, clean.near_dedup_num_perm, clean.shingle_words))
    offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in kept], out=offsets[1:])
    atomic_write_bytes(Path(f"{base}.txt"), b"".join(kept))
    _save_npy(Path(f"{base}.idx.npy"), offsets)
    _save_npy(Path(f"{base}.len.npy"), np.array(lengths, dtype=np.int64))
    _save_npy(Path(f"{base}.dig.npy"), np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 16))
    width = clean.near_dedup_num_perm
    _save_npy(Path(f"{base}.sig.npy"), np.stack(sigs) if sigs else np.zeros((0, width), dtype=np.uint32))
    stats["documents_kept"] = len(kept)
    atomic_write_json(Path(f"{base}.done"), dict(stats))
    return dict(stats)


# --- worker pool ------------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(payload: bytes, parent: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker.update(pickle.loads(payload))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A killed prepare (SIGKILL, out of memory) cannot stop its workers; they would wait forever.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def load_state(state: dict) -> None:
    """Make `state` (configs) what the task functions below read: in a worker, or in a datatrove task."""
    _worker.update(state)


def _clean_task(base: Path, docs: list[str]) -> dict:
    return clean_shard(base, docs, _worker["clean"], _worker["filter"])


def _encode_task(base: Path, assign: np.ndarray, val_fraction: float, seed: int, tokenizer: bytes) -> dict:
    # The pool is started before the tokenizer exists, so it travels with the tasks and is built once per worker.
    if _worker.get("tokenizer_blob") != tokenizer:
        _worker["tokenizer_blob"], _worker["tokenizer"] = tokenizer, pickle.loads(tokenizer)
    return encode_shard(base, assign, _worker["tokenizer"], val_fraction, seed)


class Runner:
    """Runs tasks in order on N spawned worker processes (or here when N is 1), a bounded number in flight."""

    def __init__(self, workers: int, state: dict) -> None:
        self.workers = workers
        self.state = state
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        if self.workers > 1:
            # spawn, not fork: forking after HF tokenizers started threads can deadlock.
            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                            initializer=_init_worker, initargs=(pickle.dumps(self.state), os.getpid()))
        else:
            _worker.update(self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[Any]:
        if self.pool is None:
            for args in tasks:
                yield fn(*args)
            return
        tasks = iter(tasks)
        pending: deque[tuple[tuple, Future]] = deque()
        try:
            for args in tasks:
                pending.append((args, self.pool.submit(fn, *args)))
                # Two shards per worker in flight keep every core busy while memory stays bounded.
                if len(pending) >= 2 * self.workers:
                    yield pending[0][1].result()
                    pending.popleft()
            while pending:
                yield pending[0][1].result()
                pending.popleft()
        except BrokenProcessPool:
            # Workers can fail to start (the main script cannot be re-imported under spawn, memory ran
            # out); the shards still pending are done here instead, so nothing is lost.
            log.warning("prepare's worker processes died; continuing in this process (slower)")
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            _worker.update(self.state)
            for args, _ in pending:
                yield fn(*args)
            for args in tasks:
                yield fn(*args)


def _shards_of(texts: Iterable[str], shard_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= shard_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _clean_role(work: Path, role: str, texts: Callable[[], Iterable[str]], shard_chars: int, runner: Runner) -> int:
    """Step 1 for one source; returns its number of shards. Finished shards are skipped, not redone."""
    marker = work / f"{role}.clean.done"
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))["shards"]
    count = 0

    def tasks() -> Iterator[tuple]:
        nonlocal count
        for index, docs in enumerate(_shards_of(texts(), shard_chars)):
            count = index + 1
            base = _base(work, role, index)
            if not Path(f"{base}.done").exists():
                yield base, docs

    for _ in runner.map(_clean_task, tasks()):
        pass
    atomic_write_json(marker, {"shards": count})
    return count


# --- step 2: deduplicate ---------------------------------------------------------------------------


def _dedup_role(work: Path, role: str, shards: int, clean: CleanConfig) -> tuple[np.ndarray, dict]:
    """Keep mask over the role's documents (in shard order) and what deduplication removed."""
    keep_path, info_path = work / f"{role}.keep.npy", work / f"{role}.dedup.json"
    if info_path.exists():
        return np.load(keep_path), json.loads(info_path.read_text(encoding="utf-8"))
    bases = [_base(work, role, i) for i in range(shards)]
    sizes = [len(np.load(f"{b}.len.npy")) for b in bases]
    starts = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    n = int(starts[-1])
    keep = np.ones(n, dtype=bool)
    info: dict[str, Any] = {"removed_duplicate": 0, "removed_near_duplicate": 0, "examples": []}
    if clean.dedup and n:
        digests = np.concatenate([np.load(f"{b}.dig.npy") for b in bases]).view("V16").ravel()
        _, first = np.unique(digests, return_index=True)  # the first of equal digests is the one kept
        keep[:] = False
        keep[first] = True
        info["removed_duplicate"] = int(n - len(first))
        del digests
    if clean.near_dedup and n:
        sigs = [np.load(f"{b}.sig.npy", mmap_mode="r") for b in bases]

        def gather(indices: np.ndarray) -> np.ndarray:
            shard = np.searchsorted(starts, indices, side="right") - 1
            out = np.empty((len(indices), clean.near_dedup_num_perm), dtype=np.uint32)
            for s in np.unique(shard).tolist():
                rows = shard == s
                out[rows] = sigs[s][indices[rows] - starts[s]]
            return out

        removed, pairs = near_duplicates(n, keep, lambda: sigs, gather, clean.near_dedup_threshold,
                                         clean.near_dedup_num_perm)
        keep &= ~removed
        info["removed_near_duplicate"] = int(removed.sum())
        info["examples"] = [_example(bases, starts, a, b, sim) for a, b, sim in pairs[:2]]
    _save_npy(keep_path, keep)
    atomic_write_json(info_path, info)
    return keep, info


def _text_at(bases: list[Path], starts: np.ndarray, index: int) -> str:
    shard = int(np.searchsorted(starts, index, side="right") - 1)
    select = np.zeros(int(starts[shard + 1] - starts[shard]), dtype=bool)
    select[index - starts[shard]] = True
    return next(Shard(bases[shard]).texts(select))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _example(bases: list[Path], starts: np.ndarray, kept: int, removed: int, sim: float) -> dict:
    return {"kept": _short(_text_at(bases, starts, kept)), "removed": _short(_text_at(bases, starts, removed)),
            "similarity": round(sim, 3)}


# --- step 3: split -----------------------------------------------------------------------------------


def _split(work: Path, keep: np.ndarray, val_fraction: float, seed: int, separate_valid: bool) -> np.ndarray:
    """Assignment of every document of the training source: 0 removed, TRAIN, VAL or SPLIT_ONE."""
    path = work / "train.assign.npy"
    if path.exists():
        return np.load(path)
    assign = np.zeros(len(keep), dtype=np.int8)
    kept = np.flatnonzero(keep)
    if separate_valid or val_fraction == 0.0 or len(kept) == 0:
        assign[kept] = TRAIN
    elif len(kept) == 1:
        assign[kept] = SPLIT_ONE
    else:
        # The same seeded shuffle as split_documents on the documents themselves, on their numbers.
        train_pos, val_pos = split_documents(list(range(len(kept))), val_fraction, seed)
        assign[kept[np.array(train_pos, dtype=np.int64)]] = TRAIN
        assign[kept[np.array(val_pos, dtype=np.int64)]] = VAL
    _save_npy(path, assign)
    return assign


def _per_shard(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes else []


def _shard_docs(shard: Shard, assign: np.ndarray, want: int, val_fraction: float, seed: int) -> Iterator[str]:
    """The shard's documents assigned to `want` (TRAIN or VAL), the one SPLIT_ONE document cut as the split does."""
    for text, a in zip(shard.texts(assign != 0), assign[assign != 0].tolist()):
        if a == want:
            yield text
        elif a == SPLIT_ONE:
            train, val = split_documents([text], val_fraction, seed)
            yield from (train if want == TRAIN else val)


# --- step 4: tokenizer on a bounded sample ------------------------------------------------------------


def _sample(shards: list[Shard], assigns: list[np.ndarray], budget_chars: int, val_fraction: float,
            seed: int) -> Iterator[str]:
    lengths = [np.load(f"{s.base}.len.npy") for s in shards]
    train_chars = [int(length[(a == TRAIN) | (a == SPLIT_ONE)].sum()) for length, a in zip(lengths, assigns)]
    total = sum(train_chars)
    for shard, assign, chars in zip(shards, assigns, train_chars):
        # Every shard gives its share, so a sample of a big corpus spans all of it, not its beginning.
        allowance = chars if total <= budget_chars else budget_chars * chars // max(1, total)
        taken = 0
        for text in _shard_docs(shard, assign, TRAIN, val_fraction, seed):
            if taken >= allowance:
                break
            yield text
            taken += len(text)


# --- step 5: encode --------------------------------------------------------------------------------


def encode_shard(base: Path, assign: np.ndarray, tokenizer: Tokenizer, val_fraction: float, seed: int) -> dict:
    """Token parts of one shard: its training documents and its validation documents."""
    shard = Shard(base)
    dtype = dtype_for(tokenizer.vocab_size)
    counts = {}
    for name, want in (("train", TRAIN), ("val", VAL)):
        docs = list(_shard_docs(shard, assign, want, val_fraction, seed))
        tokens, nbytes = encode_docs(tokenizer, docs, dtype)
        atomic_write_bytes(Path(f"{base}.{name}.tok"), tokens.tobytes())
        counts[name] = [len(docs), nbytes]
    atomic_write_json(Path(f"{base}.enc.done"), counts)
    return counts


# --- the whole pipeline ------------------------------------------------------------------------------


@dataclass
class StreamResult:
    tokenizer: Tokenizer
    report: CleanReport
    val_report: CleanReport | None
    train_documents: int
    val_documents: int
    seconds: dict[str, float] = field(default_factory=dict)
    decontamination: dict | None = None


# Below this much input, starting worker processes (seconds each on a busy machine: Python, numpy,
# datasketch) costs more than they save, so num_workers 0 (auto) works in-process.
AUTO_WORKERS_MIN_BYTES = 8_000_000


def resolve_workers(num_workers: int, input_bytes: int | None = None) -> int:
    if num_workers > 0:
        return num_workers
    if input_bytes is not None and input_bytes < AUTO_WORKERS_MIN_BYTES:
        return 1
    return max(1, _usable_cpus())


def open_work(folder: Path, key: str) -> Path:
    """RUN/data/work for this key: kept when a prepare with the same key was interrupted, else started afresh."""
    work = folder / WORK_DIR
    state = work / STATE_FILE
    if work.exists():
        try:
            same = json.loads(state.read_text(encoding="utf-8")).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            if not state.exists() and any(work.iterdir()):
                raise DataError(f"{work} holds files lmforge did not write; move them away and re-run prepare")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not state.exists():
        atomic_write_json(state, {"key": key})
    return work


def _report(shards: list[Shard], info: dict, min_chars: int) -> CleanReport:
    report = CleanReport(min_chars=min_chars)
    filters: Counter = Counter()
    for shard in shards:
        stats = shard.stats()
        for name in ("documents_in", "chars_in", "removed_empty", "removed_short", "control_chars_removed"):
            setattr(report, name, getattr(report, name) + stats.get(name, 0))
        filters.update({k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("filter:")})
    report.removed_by_filter = dict(filters)
    report.removed_duplicate = info["removed_duplicate"]
    report.removed_near_duplicate = info["removed_near_duplicate"]
    report.near_duplicate_examples = info["examples"]
    return report


def _finish_report(report: CleanReport, shards: list[Shard], keep: np.ndarray) -> None:
    lengths = np.concatenate([np.load(f"{s.base}.len.npy") for s in shards]) if shards else np.zeros(0, np.int64)
    report.documents_out = int(keep.sum())
    report.chars_out = int(lengths[keep].sum())


def run(cfg: Config, folder: Path, key: str, sources: dict[str, Callable[[], Iterable[str]]],
        given: Tokenizer | None, tokenizer_path: Path, input_bytes: int | None = None) -> StreamResult:
    """Prepare train.bin / val.bin in `folder` from `sources` ("train", optionally "valid": document streams)."""
    data, clean = cfg.data, cfg.clean
    work = open_work(folder, f"{key}:shard_mb={data.shard_mb}")  # shard boundaries depend on it
    workers = resolve_workers(data.num_workers, input_bytes)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    state = {"clean": clean, "filter": cfg.filter}
    # One pool for cleaning and encoding: starting worker processes costs seconds each time. The datatrove
    # engine runs the same task functions in its executors' processes (or on other machines) instead.
    runner = (engine.DatatroveRunner(data, workers, state, load_state, work) if data.engine == "datatrove"
              else Runner(workers, state))
    with runner:
        return _run(cfg, folder, work, sources, given, tokenizer_path, runner, seconds, t0)


def _run(cfg: Config, folder: Path, work: Path, sources: dict[str, Callable[[], Iterable[str]]],
         given: Tokenizer | None, tokenizer_path: Path, runner: Runner | engine.DatatroveRunner,
         seconds: dict[str, float],
         t0: float) -> StreamResult:
    data, clean = cfg.data, cfg.clean
    shard_chars = max(1, int(data.shard_mb * 1_000_000))
    counts = {role: _clean_role(work, role, make, shard_chars, runner) for role, make in sources.items()}
    seconds["read_clean_filter"] = time.perf_counter() - t0
    t = time.perf_counter()
    shards = {role: [Shard(_base(work, role, i)) for i in range(n)] for role, n in counts.items()}
    keeps, reports = {}, {}
    for role, n in counts.items():
        keeps[role], info = _dedup_role(work, role, n, clean)
        reports[role] = _report(shards[role], info, clean.min_chars)
        _finish_report(reports[role], shards[role], keeps[role])
    seconds["dedup"] = time.perf_counter() - t
    t = time.perf_counter()
    separate = "valid" in sources
    assigns = {"train": _split(work, keeps["train"], data.val_fraction, cfg.seed, separate)}
    if separate:
        assigns["valid"] = np.where(keeps["valid"], VAL, 0).astype(np.int8)
    per_shard = {role: _per_shard(assigns[role], [len(np.load(f"{s.base}.len.npy")) for s in shards[role]])
                 for role in sources}
    _check_nonempty(assigns, cfg)
    decon = None
    if clean.decontam_ngram:
        decon = _decontaminate(work, shards, per_shard, clean.decontam_ngram, data.val_fraction, cfg.seed, runner)
        if clean.decontam_remove and decon["contaminated_documents"]:
            per_shard = decontam.remove(per_shard, decon, VAL)
    seconds["split_decontam"] = time.perf_counter() - t
    t = time.perf_counter()
    tok = _tokenizer(work, given, cfg, shards["train"], per_shard["train"])
    tok.save(tokenizer_path)
    seconds["tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    parts = _encode_all(work, shards, per_shard, tok, runner, data.val_fraction, cfg.seed)
    for name in ("train", "val"):
        write_token_parts(parts[name], tok, folder / f"{name}.bin")
    seconds["encode"] = time.perf_counter() - t
    n_train = sum(p[1] for p in parts["train"])
    n_val = sum(p[1] for p in parts["val"])
    return StreamResult(tok, reports["train"], reports.get("valid"), n_train, n_val,
                        {k: round(v, 2) for k, v in seconds.items()}, decon)


def _decontaminate(work: Path, shards: dict[str, list[Shard]], per_shard: dict[str, list[np.ndarray]], n: int,
                   val_fraction: float, seed: int, runner: Runner) -> dict:
    """Validation documents sharing an n-word run with the training documents; the training side is
    scanned by the workers, shard by shard, against the held-out hashes saved in the work folder."""
    marker = work / "decontam.json"
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))
    pairs = [(s, a) for role in shards for s, a in zip(shards[role], per_shard[role])]
    val_chars = sum(int(np.load(f"{s.base}.len.npy")[(a == VAL) | (a == SPLIT_ONE)].sum()) for s, a in pairs)
    rate = decontam.sampling_rate(val_chars)
    held_out = (t for s, a in pairs for t in _shard_docs(s, a, VAL, val_fraction, seed))
    all_h, all_owner, held = decontam.held_out_index(held_out, n, rate)
    unique = np.unique(all_h)
    index_path = work / "decontam.index.npy"
    _save_npy(index_path, unique)
    hit = np.zeros(len(unique), dtype=bool)
    tasks = [(s.base, a, val_fraction, seed, n, rate, index_path) for s, a in pairs if (a == TRAIN).any()
             or (a == SPLIT_ONE).any()]
    for found in runner.map(_decontam_task, tasks):
        hit[found] = True
    count = sum(int(((a == VAL) | (a == SPLIT_ONE)).sum()) for _, a in pairs)
    out = decontam.result(all_h, all_owner, held, unique, np.flatnonzero(hit), count, n, rate)
    atomic_write_json(marker, out)
    return out


def _decontam_task(base: Path, assign: np.ndarray, val_fraction: float, seed: int, n: int, rate: int,
                   index_path: Path) -> np.ndarray:
    unique = np.load(index_path, mmap_mode="r")
    return decontam.found_in(unique, _shard_docs(Shard(base), assign, TRAIN, val_fraction, seed), n, rate)


def remove_work(folder: Path) -> None:
    """Drop the intermediate shards once the manifest of the finished prepare is written."""
    shutil.rmtree(folder / WORK_DIR, ignore_errors=True)


def _check_nonempty(assigns: dict[str, np.ndarray], cfg: Config) -> None:
    source = cfg.data.path or "the embedded corpus"
    train = assigns["train"]
    if not ((train == TRAIN) | (train == SPLIT_ONE)).any():
        raise DataError(f"no training text left in {source} after cleaning; see the cleaning summary above")
    val = assigns.get("valid", train)
    if not ((val == VAL) | (val == SPLIT_ONE)).any():
        raise DataError(
            f"no validation text: {source} has too little text for data.val_fraction={cfg.data.val_fraction}; "
            "raise it or pass --data.valid_path"
        )


def _tokenizer(work: Path, given: Tokenizer | None, cfg: Config, shards: list[Shard],
               assigns: list[np.ndarray]) -> Tokenizer:
    if given is not None:
        return given
    path = work / "tokenizer.json"
    if path.exists():
        return Tokenizer.load(path)
    budget = cfg.tokenizer.train_sample_mb * 1_000_000
    tok = train_tokenizer(_sample(shards, assigns, budget, cfg.data.val_fraction, cfg.seed), cfg.tokenizer)
    tok.save(path)
    return tok


def _encode_all(work: Path, shards: dict[str, list[Shard]], per_shard: dict[str, list[np.ndarray]],
                tok: Tokenizer, runner: Runner, val_fraction: float, seed: int) -> dict[str, list[tuple[Path, int, int]]]:
    jobs = [(s.base, a) for role in shards for s, a in zip(shards[role], per_shard[role])]
    blob = pickle.dumps(tok)
    todo = [(base, a, val_fraction, seed, blob) for base, a in jobs if not Path(f"{base}.enc.done").exists()]
    for _ in runner.map(_encode_task, todo):
        pass
    parts: dict[str, list[tuple[Path, int, int]]] = {"train": [], "val": []}
    for base, _ in jobs:
        counts = json.loads(Path(f"{base}.enc.done").read_text(encoding="utf-8"))
        for name in parts:
            parts[name].append((Path(f"{base}.{name}.tok"), *counts[name]))
    return parts
