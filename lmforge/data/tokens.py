"""Encoded corpora on disk: a flat little-endian token stream (.bin) plus a JSON header.

The stream is doc0, EOT, doc1, EOT, ... and is read back through np.memmap, so training
never holds the corpus in RAM.  The header is written last and carries the token count, so a
.bin from an interrupted run is recognisable as incomplete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.atomic import atomic_write_bytes as write_atomic
from lmforge.atomic import fsync_dir
from lmforge.data.tokenizer import Tokenizer
from lmforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)

HEADER_VERSION = 1
DTYPES = ("uint16", "uint32")
CHUNK_MAX_CHARS = 4_000_000  # per encode_batch call, whatever chunk_docs says
_REQUIRED_INT_FIELDS = ("num_tokens", "num_documents", "num_bytes_utf8")


def header_path(bin_path: str | Path) -> Path:
    return Path(bin_path).with_suffix(".json")


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")  # the file format is little-endian on every machine


class TokenFile:
    """A memory-mapped token stream written by `encode_corpus`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header_path = header_path(self.path)
        header = _read_header(self.path, self.header_path)
        self.dtype: str = header["dtype"]
        self.num_tokens: int = header["num_tokens"]
        self.num_documents: int = header["num_documents"]
        self.num_bytes_utf8: int = header["num_bytes_utf8"]
        self.tokenizer_fingerprint: str = header["tokenizer"]
        self.eot_id: int | None = header.get("eot_id")
        self.header: dict[str, Any] = header
        dtype = _np_dtype(self.dtype)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise DataError(
                f"token file {self.path} is missing but its header {self.header_path} exists; "
                "delete the header and re-run prepare"
            ) from None
        expected = self.num_tokens * dtype.itemsize
        if size != expected:
            raise DataError(
                f"token file {self.path} is corrupt or incomplete ({size} bytes, header says "
                f"{self.num_tokens} {self.dtype} tokens = {expected} bytes); delete it and re-run prepare"
            )
        if self.num_tokens == 0:
            self.tokens: np.ndarray = np.zeros(0, dtype=dtype)  # mmap cannot map an empty file
        else:
            self.tokens = np.memmap(self.path, dtype=dtype, mode="r", shape=(self.num_tokens,))

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, num_tokens={self.num_tokens}, dtype={self.dtype})"


def _read_header(bin_path: Path, hdr_path: Path) -> dict[str, Any]:
    redo = f"delete {bin_path} and re-run prepare"
    try:
        header = json.loads(hdr_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"header {hdr_path} for token file {bin_path} is missing (prepare did not finish); {redo}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"header {hdr_path} is unreadable ({exc}); {redo}") from None
    if not isinstance(header, dict) or header.get("version") != HEADER_VERSION:
        raise DataError(f"header {hdr_path} is not a version-{HEADER_VERSION} token header; {redo}")
    if header.get("dtype") not in DTYPES:
        raise DataError(f"header {hdr_path} has dtype {header.get('dtype')!r}, expected one of {DTYPES}; {redo}")
    for field in _REQUIRED_INT_FIELDS:
        value = header.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"header {hdr_path} field '{field}' is {value!r}, expected an integer >= 0; {redo}")
    if not isinstance(header.get("tokenizer"), str):
        raise DataError(f"header {hdr_path} lacks the tokenizer fingerprint; {redo}")
    if header["num_documents"] > header["num_tokens"]:
        # Every document is followed by an end-of-text token.
        raise DataError(f"header {hdr_path} counts more documents than tokens; {redo}")
    return header


def cache_key(*parts: str | bytes | dict) -> str:
    """A stable hex key over `parts`; decides whether an existing TokenFile can be reused."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            tag, data = b"b", part
        elif isinstance(part, str):
            tag, data = b"s", part.encode("utf-8")
        elif isinstance(part, dict):
            text = json.dumps(part, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
            tag, data = b"d", text.encode("utf-8")
        else:
            raise TypeError(f"cache_key parts must be str, bytes or dict, got {type(part).__name__}")
        # Type tag and length prefix keep ("ab", "c") and ("a", "bc") apart.
        digest.update(tag + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cache_key cannot hash a {type(value).__name__} inside a dict")


# ---------------------------------------------------------------------------------------------
# writing


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _encode_chunk(tokenizer: Tokenizer, docs: list[str], dtype: str) -> tuple[np.ndarray, int]:
    flat: list[int] = []
    eot = tokenizer.eot_id
    for ids in tokenizer.encode_batch(docs):
        flat.extend(ids)
        flat.append(eot)
    return np.array(flat, dtype=_np_dtype(dtype)), sum(_utf8_len(d) for d in docs)


def _chunks(texts: Iterable[str], chunk_docs: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for index, doc in enumerate(texts):
        if not isinstance(doc, str):
            raise DataError(f"document #{index} is a {type(doc).__name__}, expected str")
        chunk.append(doc)
        chars += len(doc)
        # The character cap bounds memory when documents are whole books, not lines.
        if len(chunk) >= chunk_docs or chars >= CHUNK_MAX_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _serial(chunks: Iterator[list[str]], tokenizer: Tokenizer, dtype: str) -> Iterator[tuple[np.ndarray, int, int]]:
    for docs in chunks:
        arr, nbytes = _encode_chunk(tokenizer, docs, dtype)
        yield arr, nbytes, len(docs)


_worker_state: dict[str, Any] = {}


def _worker_init(pickled_tokenizer: bytes, dtype: str) -> None:
    # Each worker encodes single-threaded (the processes are the parallelism); the variable must
    # be set before HF is imported, hence the tokenizer arrives as bytes and is built here, once.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_state["tokenizer"] = pickle.loads(pickled_tokenizer)
    _worker_state["dtype"] = dtype


def _worker_encode(docs: list[str]) -> tuple[np.ndarray, int, int]:
    arr, nbytes = _encode_chunk(_worker_state["tokenizer"], docs, _worker_state["dtype"])
    return arr, nbytes, len(docs)


def _parallel(
    chunks: Iterator[list[str]], tokenizer: Tokenizer, dtype: str, workers: int
) -> Iterator[tuple[np.ndarray, int, int]]:
    # spawn, not fork: forking after HF tokenizers (or torch) started threads can deadlock.
    # A bounded window of in-flight chunks (Pool.imap would read the whole input ahead) keeps
    # memory flat while results still come back in input order.
    pending: deque[tuple[list[str], Future]] = deque()
    try:
        with ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
            initargs=(pickle.dumps(tokenizer), dtype),
        ) as pool:
            for docs in chunks:
                pending.append((docs, pool.submit(_worker_encode, docs)))
                if len(pending) >= 2 * workers:
                    result = pending[0][1].result()
                    pending.popleft()
                    yield result
            while pending:
                result = pending[0][1].result()
                pending.popleft()
                yield result
    except BrokenProcessPool:
        # Workers can fail to start (e.g. the main script cannot be re-imported under spawn,
        # or memory ran out); the chunks still pending are redone here rather than lost.
        log.warning("encoding worker processes died; continuing in this process (slower)")
        redo = [docs for docs, _ in pending]
        yield from _serial(chain(redo, chunks), tokenizer, dtype)


# Below this much text, starting worker processes (about 1-2 s each, jieba's dictionary
# included) costs more than it saves; see benchmarks/tokenizer_speed.py.
AUTO_PARALLEL_MIN_BYTES = 4_000_000
# Measured on 2 shared cores, worker processes were slower for every kind (jieba too: the
# serial path already overlaps jieba with HF's own encoding threads), so auto only uses them
# where there are clearly spare cores.
AUTO_PARALLEL_MIN_CPUS = 4


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours container / taskset limits
    except AttributeError:
        return os.cpu_count() or 1


def _python_bound(tokenizer: Tokenizer) -> bool:
    # jieba segmentation is pure Python holding the GIL (~1-2 MB/s), so processes can help.
    # HF BPE already encodes a batch on all cores and char encoding runs at ~30 MB/s, so for
    # those pickling chunks between processes only slows things down (measured).
    return tokenizer.kind == "bpe" and getattr(tokenizer, "cjk_split", "") == "jieba"


def _auto_workers(
    chunks: Iterator[list[str]], tokenizer: Tokenizer
) -> tuple[int, Iterator[list[str]]]:
    cpus = _usable_cpus()
    if not _python_bound(tokenizer) or cpus < AUTO_PARALLEL_MIN_CPUS:
        return 1, chunks
    # The input may be a stream of unknown size: buffer text until it is clearly big enough.
    head: list[list[str]] = []
    size = 0
    for docs in chunks:
        head.append(docs)
        size += sum(_utf8_len(d) for d in docs)
        if size >= AUTO_PARALLEL_MIN_BYTES:
            return min(cpus, 8), chain(head, chunks)
    return 1, iter(head)


def check_workers(num_workers: int) -> int:
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
        raise ConfigError(f"num_workers must be an integer >= 0 (0 = auto), got {num_workers!r}")
    return num_workers


def encode_corpus(
    texts: list[str] | Iterable[str],
    tokenizer: Tokenizer,
    out_path: str | Path,
    num_workers: int = 0,
    chunk_docs: int = 256,
) -> TokenFile:
    """Encode `texts` as doc, EOT, doc, EOT, ... into `out_path` (.bin) plus its .json header.

    Texts are consumed `chunk_docs` at a time, so memory stays bounded for any corpus size.
    num_workers: 1 = encode in this process (HF still uses its own threads), N > 1 = N worker
    processes, 0 = auto (in-process except for jieba-split BPE on big corpora with >= 4 cores).
    """
    if not isinstance(chunk_docs, int) or chunk_docs < 1:
        raise ConfigError(f"chunk_docs must be an integer >= 1, got {chunk_docs!r}")
    out = Path(out_path)
    hdr = header_path(out)
    if hdr == out:
        raise ConfigError(f"token file {out} must not end in .json: its header is written as {hdr}")
    check_workers(num_workers)
    dtype = dtype_for(tokenizer.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Drop the old header first: a run killed after replacing the .bin must not leave a stale
    # header that happens to describe it.
    hdr.unlink(missing_ok=True)
    chunks = _chunks(texts, chunk_docs)
    workers = num_workers
    if workers == 0:
        workers, chunks = _auto_workers(chunks, tokenizer)
    encoded = _serial(chunks, tokenizer, dtype) if workers <= 1 else _parallel(chunks, tokenizer, dtype, workers)
    num_tokens = num_docs = num_bytes = 0
    try:
        with _replacing(out) as f:
            for arr, nbytes, ndocs in encoded:
                f.write(arr.tobytes())
                num_tokens += len(arr)
                num_bytes += nbytes
                num_docs += ndocs
    finally:
        encoded.close()  # stops worker processes now, not whenever the generator is collected
    return _finish(out, tokenizer, dtype, num_tokens, num_docs, num_bytes)


@contextlib.contextmanager
def _replacing(out: Path) -> Iterator[Any]:
    """A binary file that replaces `out` only once it is complete and on disk (a temporary beside it)."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


def _finish(out: Path, tokenizer: Tokenizer, dtype: str, num_tokens: int, num_docs: int, num_bytes: int) -> TokenFile:
    header = {
        "version": HEADER_VERSION,
        "dtype": dtype,
        "num_tokens": num_tokens,
        "num_documents": num_docs,
        "num_bytes_utf8": num_bytes,
        "tokenizer": tokenizer.fingerprint(),
        "eot_id": tokenizer.eot_id,
        "vocab_size": tokenizer.vocab_size,
    }
    write_atomic(header_path(out), (json.dumps(header, indent=1) + "\n").encode("utf-8"))
    return TokenFile(out)


def encode_docs(tokenizer: Tokenizer, docs: list[str], dtype: str) -> tuple[np.ndarray, int]:
    """Tokens of docs as doc0, EOT, doc1, EOT, ... and their UTF-8 size; long lists go in bounded chunks."""
    parts: list[np.ndarray] = []
    nbytes = 0
    for chunk in _chunks(docs, 256):
        arr, n = _encode_chunk(tokenizer, chunk, dtype)
        parts.append(arr)
        nbytes += n
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=_np_dtype(dtype))), nbytes


def write_token_parts(parts: Iterable[tuple[Path, int, int]], tokenizer: Tokenizer, out_path: str | Path) -> TokenFile:
    """Concatenate raw token parts (path, documents, UTF-8 bytes), each written with `encode_docs`' dtype, into
    one token file with its header, exactly as `encode_corpus` would have written the same documents."""
    out = Path(out_path)
    dtype = dtype_for(tokenizer.vocab_size)
    itemsize = _np_dtype(dtype).itemsize
    header_path(out).unlink(missing_ok=True)
    num_tokens = num_docs = num_bytes = 0
    with _replacing(out) as f:
        for path, ndocs, nbytes in parts:
            with open(path, "rb") as part:
                while block := part.read(1 << 22):
                    f.write(block)
                    num_tokens += len(block) // itemsize
            num_docs += ndocs
            num_bytes += nbytes
    return _finish(out, tokenizer, dtype, num_tokens, num_docs, num_bytes)
