"""Read raw data files into text documents or generic records.

Supported inputs: a file, a folder (searched recursively) or a glob pattern. Formats: plain text
(.txt/.md/.text), JSON Lines, JSON, CSV, TSV and Parquet, each optionally gzip-compressed (.gz).
Every error names the file (and line or field) and says what to do about it.
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lmforge.config import text_codec
from lmforge.data.encoding import Decoded, decode, stream_codec
from lmforge.errors import DataError

TEXT_EXTENSIONS: tuple[str, ...] = (".txt", ".md", ".text")
RECORD_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SUPPORTED_EXTENSIONS: tuple[str, ...] = TEXT_EXTENSIONS + RECORD_EXTENSIONS
DOC_SPLITS: tuple[str, ...] = ("auto", "paragraph", "file")

# Python's csv default (128 KiB per field) is far too small for whole documents; 2**31-1 is the
# largest value accepted on every platform (sys.maxsize overflows a C long on Windows).
_CSV_FIELD_LIMIT = 2**31 - 1
_PARQUET_BATCH_ROWS = 512
_MAX_KEYS_SHOWN = 20


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # file path as given/resolved, for error messages
    line: int  # 1-based line where the document starts (parquet: row index + 1)


# ---------------------------------------------------------------------------
# Finding files


def _supported_text() -> str:
    return ", ".join(SUPPORTED_EXTENSIONS) + " (each optionally with .gz)"


def _format_of(path: Path) -> tuple[str, bool] | None:
    """(extension, gzipped) for a supported file name, else None."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[:-3]
    ext = os.path.splitext(name)[1]
    return (ext, gzipped) if ext in SUPPORTED_EXTENSIONS else None


# Formats that hold text only after conversion (markup, documents, archives, binaries): a file named
# directly with one of these is refused rather than read as plain text.
NOT_PLAIN_TEXT = frozenset(
    ".xml .html .htm .xhtml .pdf .doc .docx .odt .rtf .epub .xls .xlsx .ppt .pptx .zip .tar .tgz .7z .rar .bz2 "
    ".xz .zst .lz4 .bin .pt .pth .ckpt .npy .npz .safetensors .arrow .feather .pkl .pickle .h5 .db .sqlite "
    ".exe .dll .so .png .jpg .jpeg .gif .webp .mp3 .mp4 .wav .flac".split())


def _named_plain_text(path: Path) -> bool:
    """True for a file named directly whose extension lmforge does not know (WikiText's .tokens, a
    log, no extension at all) but whose start is text (no NUL byte): users name such files on
    purpose, and they are plain text."""
    if os.path.splitext(path.name.lower())[1] in NOT_PLAIN_TEXT or path.name.lower().endswith(".gz"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    return bool(head) and b"\x00" not in head


def _require_format(path: Path) -> tuple[str, bool]:
    fmt = _format_of(path)
    if fmt is None and _named_plain_text(path):  # only a file named directly gets here (folders skip it)
        return ".txt", False
    if fmt is None:
        raise DataError(
            f"{path}: unsupported file type. Supported extensions: {_supported_text()}, and any other file of "
            "plain text named directly. Rename or convert the file, or point the data path at the supported files only."
        )
    return fmt


Skipped = tuple[Path, str]  # a file (or hidden folder) left out of a read, and why


def _skip_reason(path: Path) -> str | None:
    """Why a file found in a folder or by a pattern is left out, or None to read it."""
    if not path.is_file():
        return "not a regular file"
    if _format_of(path) is None:
        ext = os.path.splitext(path.name)[1].lower()
        return f"unsupported extension {ext}" if ext else "no file extension"
    try:
        if path.stat().st_size == 0:
            return "empty"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def _scan_folder(root: Path) -> tuple[list[Path], list[Skipped]]:
    """(files to read, files left out with the reason) under root; hidden files and folders are left out."""
    found: list[Path] = []
    skipped: list[Skipped] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames.sort()
        # Prune hidden folders in place so os.walk never descends into e.g. .git.
        skipped.extend((Path(folder) / d, "hidden folder") for d in dirnames if d.startswith("."))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in sorted(filenames):
            path = Path(folder) / name
            reason = "hidden" if name.startswith(".") else _skip_reason(path)
            if reason is None:
                found.append(path)
            else:
                skipped.append((path, reason))
    # Sort by path components so the order is stable and folder-aware on every platform.
    found.sort(key=lambda p: p.relative_to(root).parts)
    skipped.sort(key=lambda item: item[0].relative_to(root).parts)
    return found, skipped


def _no_usable_files(where: str, skipped: list[Skipped]) -> DataError:
    if not skipped:
        return DataError(f"{where}: no files found. Check the data path.")
    reasons: dict[str, list[str]] = {}
    for path, reason in skipped:
        reasons.setdefault(reason, []).append(path.name)
    shown = "; ".join(f"{reason}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                      for reason, names in reasons.items())
    return DataError(
        f"{where}: found {len(skipped)} file(s) but none to read ({shown}). Supported extensions: "
        f"{_supported_text()}. Convert the data or point the data path at the right files."
    )


def _files_from_glob(pattern: str) -> tuple[list[Path], list[Skipped]]:
    found: list[Path] = []
    skipped: list[Skipped] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            inner, inner_skipped = _scan_folder(path)
            found.extend(inner)
            skipped.extend(inner_skipped)
        else:
            reason = _skip_reason(path)
            if reason is None:
                found.append(path)
            else:
                skipped.append((path, reason))
    if not found:
        if not skipped:
            raise DataError(f"{pattern}: the pattern matched no files (searched from {Path.cwd()}).")
        raise _no_usable_files(pattern, skipped)
    # A folder match and a file match can name the same file twice (e.g. "data/**").
    return list(dict.fromkeys(found)), list(dict.fromkeys(skipped))


def scan(path: str | Path) -> tuple[list[Path], list[Skipped]]:
    """(files to read, files left out with the reason) for a file, folder (recursive) or glob
    pattern (``**`` allowed). A file named directly is always read; in folders and patterns hidden,
    empty and unsupported files are left out."""
    raw = str(path)
    candidate = Path(path)
    if candidate.is_file():
        return [candidate], []
    if candidate.is_dir():
        found, skipped = _scan_folder(candidate)
        if not found:
            raise _no_usable_files(raw, skipped)
        return found, skipped
    if any(ch in raw for ch in "*?["):
        return _files_from_glob(raw)
    raise DataError(
        f"{raw}: no such file or folder (relative paths start from {Path.cwd()}). Check the data path."
    )


def check_inputs(*paths: str | Path | None) -> None:
    """The one-line error a read of each given path would end with when it names no usable file; run
    before a run folder is claimed, so that a mistyped path leaves no folder behind."""
    for path in paths:
        if path:
            scan(path)


def find_files(path: str | Path) -> list[Path]:
    """Data files for a file, folder (recursive) or glob pattern (``**`` allowed)."""
    return scan(path)[0]


# ---------------------------------------------------------------------------
# What a read took in


@dataclass
class ReadReport:
    """Files read, files left out and why, and files not read as plain UTF-8: filled in as a read
    goes on, printed by `prepare` and `classify train`, stored in their summaries."""

    path: str
    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    decoded: dict[str, list[str]] = field(default_factory=dict)  # "cp1252 (detected)" -> files

    def note_decoding(self, path: Path, decoded: Decoded) -> None:
        if text_codec(decoded.encoding) != "utf-8":
            self.decoded.setdefault(f"{decoded.encoding} ({decoded.how})", []).append(str(path))

    def summary_lines(self, limit: int | None = 20) -> list[str]:
        """One line for the count, then one per encoding and per reason a file was left out."""
        lines = [f"files: {len(self.files):,} read from {self.path}"
                 + (f", {len(self.skipped):,} skipped" if self.skipped else "")]
        for how, names in self.decoded.items():
            lines.append(f"decoded as {how}: {_listing(names, limit)}")
        reasons: dict[str, list[str]] = {}
        for path, reason in self.skipped:
            reasons.setdefault(reason, []).append(str(path))
        for reason, names in reasons.items():
            lines.append(f"skipped ({reason}): {_listing(names, limit)}")
        return lines

    def to_dict(self) -> dict:
        return {"path": self.path, "files_read": len(self.files),
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
                "decoded": self.decoded}


def _listing(names: list[str], limit: int | None) -> str:
    if limit is None or len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit:,} more"


T = TypeVar("T")


class ReadStream(Iterator[T]):
    """Documents or records of one read, streamed file by file; `report` fills in as it goes."""

    def __init__(self, items: Iterator[T], report: ReadReport):
        self._items, self.report = items, report

    def __iter__(self) -> ReadStream[T]:
        return self

    def __next__(self) -> T:
        return next(self._items)


# ---------------------------------------------------------------------------
# Reading bytes


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"{path}: cannot be read ({exc.strerror}). Check that it exists and is readable."
        ) from None
    if not path.name.lower().endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path}: not a valid gzip file ({exc}). Re-compress it, or drop the .gz suffix if it is "
            "not compressed."
        ) from None


def _read_text(path: Path, encoding: str, report: ReadReport) -> str:
    decoded = decode(_read_bytes(path), str(path), encoding)
    report.note_decoding(path, decoded)
    return decoded.text


# ---------------------------------------------------------------------------
# Plain text

_NEWLINE = r"(?:\r\n|\r(?!\n)|\n)"  # the lookahead stops backtracking from splitting a \r\n pair
# A paragraph break: a line ending followed by one or more blank (or whitespace-only) lines.
_PARAGRAPH_BREAK = re.compile(_NEWLINE + r"(?:[ \t\f\v]*" + _NEWLINE + r")+")
_LEADING_BLANK_LINES = re.compile(r"(?:[ \t\f\v]*" + _NEWLINE + r")*")


def _count_newlines(text: str, start: int, end: int) -> int:
    # \r\n counts once; callers never cut a \r\n pair in half.
    return text.count("\n", start, end) + text.count("\r", start, end) - text.count("\r\n", start, end)


def _content_end(text: str) -> int:
    """End of the last non-blank line, keeping that line's own trailing spaces."""
    end = len(text)
    while True:
        i = end
        while i > 0 and text[i - 1] in " \t\f\v":
            i -= 1
        if i == 0 or text[i - 1] not in "\r\n":
            return end
        end = i - 2 if text[i - 2 : i] == "\r\n" else i - 1


def _paragraphs(text: str) -> Iterator[tuple[str, int]]:
    """(paragraph, 1-based start line) for each run of non-blank lines, text kept as-is."""
    start = _LEADING_BLANK_LINES.match(text).end()  # type: ignore[union-attr]  # always matches
    end = _content_end(text)
    if start >= end:
        return
    line = 1 + _count_newlines(text, 0, start)
    pos = start
    for brk in _PARAGRAPH_BREAK.finditer(text, start, end):
        yield text[pos : brk.start()], line
        line += _count_newlines(text, pos, brk.end())
        pos = brk.end()
    yield text[pos:end], line


def _text_documents(text: str, source: str, doc_split: str) -> Iterator[Document]:
    if doc_split == "file":
        yield Document(text, source, 1)
        return
    found = False
    for paragraph, line in _paragraphs(text):
        found = True
        yield Document(paragraph, source, line)
    if not found:
        # An empty or blank file still shows up as one (empty) document so cleaning can report it.
        yield Document(text, source, 1)


# Plain-text and JSON Lines files bigger than this are read in blocks of STREAM_BLOCK_BYTES, documents cut at
# paragraph breaks (or lines) as they arrive, so one huge file needs no more memory than its longest
# document and a block.
STREAM_MIN_BYTES = 64 << 20
STREAM_BLOCK_BYTES = 4 << 20


def _blocks(path: Path, skip: int = 0) -> Iterator[bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            f.seek(skip)
            while block := f.read(STREAM_BLOCK_BYTES):
                yield block
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            raise DataError(f"{path}: cannot be read ({exc.strerror}). Check that it exists and is readable.") from None
        raise DataError(f"{path}: not a valid gzip file ({exc}). Re-compress it, or drop the .gz suffix if it is "
                        "not compressed.") from None


def _streamed_pieces(path: Path, encoding: str, report: ReadReport) -> Iterator[str] | None:
    """The text of a big file, decoded block by block; None when it is read whole instead (small, or an encoding
    only the whole file tells)."""
    try:
        big = path.stat().st_size > STREAM_MIN_BYTES
    except OSError:
        return None  # the whole-file read says what is wrong
    if not big:
        return None
    found = stream_codec(_blocks(path), encoding)  # a first pass over the bytes: decode() without holding them
    if found is None:
        return None
    codec, how, skip = found
    report.note_decoding(path, Decoded("", encoding if how == "--data.encoding" else codec, how))
    return _decoded_blocks(path, codec, skip)


def _streamed_text(path: Path, encoding: str, doc_split: str, report: ReadReport) -> Iterator[Document] | None:
    if doc_split == "file":
        return None
    pieces = _streamed_pieces(path, encoding, report)
    return None if pieces is None else _paragraph_stream(pieces, str(path))


def _streamed_jsonl(pieces: Iterator[str], source: str) -> Iterator[tuple[dict | str, int]]:
    """What `_jsonl_rows` yields for the concatenation of `pieces`: the complete lines of each piece at once."""
    buf, line = "", 1
    for piece in pieces:
        buf += piece
        cut = buf.rfind("\n")
        if cut < 0:
            continue
        yield from _jsonl_rows(buf[:cut], source, line)
        line += buf.count("\n", 0, cut) + 1
        buf = buf[cut + 1 :]
    yield from _jsonl_rows(buf, source, line)


def _decoded_blocks(path: Path, codec: str, skip: int) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(codec)("strict")
    for block in _blocks(path, skip):
        yield decoder.decode(block)
    yield decoder.decode(b"", final=True)


_NON_BLANK = re.compile(r"[^ \t\f\v]")


def _settled(text: str, at: int) -> bool:
    """Whether a paragraph starts for certain at `at`: a non-blank character follows on its line, so more
    text cannot turn the line into a blank one (which would lengthen the break before it)."""
    return _NON_BLANK.search(text, at) is not None


def _paragraph_stream(pieces: Iterator[str], source: str) -> Iterator[Document]:
    """What `_text_documents` yields for the concatenation of `pieces`, without concatenating them."""
    buf, line, started = "", 1, False
    for piece in pieces:
        buf += piece
        if not started:
            lead = _LEADING_BLANK_LINES.match(buf).end()  # type: ignore[union-attr]  # always matches
            if not _settled(buf, lead):
                continue  # blank so far: held until text starts (a blank file is one document)
            line += _count_newlines(buf, 0, lead)
            buf, started = buf[lead:], True
        pos = 0
        for brk in _PARAGRAPH_BREAK.finditer(buf):
            if not _settled(buf, brk.end()):
                break
            yield Document(buf[pos : brk.start()], source, line)
            line += _count_newlines(buf, pos, brk.end())
            pos = brk.end()
        buf = buf[pos:]
    if not started:
        yield from _text_documents(buf, source, "auto")
        return
    for paragraph, at in _paragraphs(buf):
        yield Document(paragraph, source, line + at - 1)


# ---------------------------------------------------------------------------
# Records: JSON Lines, JSON, CSV/TSV, Parquet


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_row(value: Any, source: str, line: int) -> dict | str:
    if isinstance(value, (dict, str)):
        return value
    raise DataError(
        f"{source}:{line}: expected a JSON object (or a string), got {_json_type(value)}. "
        "Each record must be an object such as {\"text\": \"...\"}."
    )


def _json_error(source: str, exc: json.JSONDecodeError, line_offset: int = 0) -> DataError:
    return DataError(
        f"{source}:{exc.lineno + line_offset}: invalid JSON ({exc.msg} at column {exc.colno}). "
        "Fix or remove this line."
    )


def _jsonl_rows(text: str, source: str, first_line: int = 1) -> Iterator[tuple[dict | str, int]]:
    decoder = json.JSONDecoder()
    start, line = 0, first_line
    while start <= len(text):
        end = text.find("\n", start)
        if end == -1:
            end = len(text)
        chunk = text[start:end]
        if chunk.strip(" \t\r"):  # blank lines separate nothing and hold no record
            try:
                value = decoder.decode(chunk)
            except json.JSONDecodeError as exc:
                raise _json_error(source, exc, line - 1) from None
            yield _check_row(value, source, line), line
        start, line = end + 1, line + 1


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_array_rows(text: str, source: str, pos: int) -> Iterator[tuple[dict | str, int]]:
    """Walk a top-level JSON array element by element, so each record knows its line."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def skip(at: int) -> int:
        return _JSON_SPACE.match(text, at).end()  # type: ignore[union-attr]  # always matches

    pos = skip(pos + 1)  # past "["
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise _json_error(source, exc) from None
            line += text.count("\n", counted, pos)
            counted = pos
            yield _check_row(value, source, line), line
            pos = skip(end)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                bad = text.count("\n", 0, pos) + 1
                raise DataError(f"{source}:{bad}: invalid JSON (expected ',' or ']' after a list item).")
    if skip(pos) != len(text):
        bad = text.count("\n", 0, pos) + 1
        raise DataError(f"{source}:{bad}: invalid JSON (extra data after the closing ']'). Remove it.")


def _json_rows(text: str, source: str) -> Iterator[tuple[dict | str, int]]:
    start = _JSON_SPACE.match(text).end()  # type: ignore[union-attr]  # always matches
    if text.startswith("[", start):
        yield from _json_array_rows(text, source, start)
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            # Several top-level values: the file is JSON Lines with a .json name.
            yield from _jsonl_rows(text, source)
            return
        raise _json_error(source, exc) from None
    keys = f" with keys {_key_list(value)}" if isinstance(value, dict) else ""
    raise DataError(
        f"{source}: expected a JSON list of objects or strings, got {_json_type(value)}{keys}. "
        "Put the records in a top-level list, or write them as JSON Lines (.jsonl)."
    )


def _key_list(keys: Any) -> str:
    names = [str(k) for k in keys]
    shown = ", ".join(repr(k) for k in names[:_MAX_KEYS_SHOWN])
    extra = len(names) - _MAX_KEYS_SHOWN
    return f"[{shown}{f', ... {extra} more' if extra > 0 else ''}]"


def _missing_column(source: str, field: str, columns: list[str]) -> DataError:
    return DataError(
        f"{source}: no column {field!r}. Columns present: {_key_list(columns)}. "
        "Use --data.text_field KEY to pick the text column."
    )


def _csv_rows(text: str, source: str, delimiter: str, require: str | None) -> Iterator[tuple[dict, int]]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    # newline="" hands line endings to the csv module, which needs them for quoted multi-line fields.
    # strict: a quote left open would otherwise swallow every later row into one field, silently.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    previous = 0
    try:
        header = next(reader, None)
        if header is None:
            return
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise DataError(f"{source}:1: column {twice[0]!r} appears twice in the header, so its values would "
                            "overwrite each other; rename one of them")
        if require is not None and require not in header:
            raise _missing_column(f"{source}:1", require, header)
        previous = reader.line_num
        for row in reader:
            line, previous = previous + 1, reader.line_num
            if not row:  # an empty line is not a record
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{source}:{line}: row has {len(row)} fields but the header has {len(header)}. "
                    "Quote fields that contain the delimiter or line breaks, or fix the row."
                )
            yield dict(zip(header, row)), line
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise DataError(f"{source}:{previous + 1}: a quoted field opened on this line is never closed (the file "
                            "ends inside it). Close the quote, or double a quote inside a quoted field (\"\").") from None
        raise DataError(
            f"{source}:{reader.line_num}: malformed row ({exc}). Fix the quoting on this line."
        ) from None


def _parquet_rows(path: Path, gzipped: bool, columns: list[str] | None) -> Iterator[tuple[dict, int]]:
    import pyarrow as pa  # imported late: pyarrow is slow to import and only parquet needs it
    import pyarrow.parquet as pq

    source = str(path)
    try:
        handle: Any = io.BytesIO(_read_bytes(path)) if gzipped else source
        parquet = pq.ParquetFile(handle)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(
            f"{source}: not a readable Parquet file ({exc}). Re-export it or remove it."
        ) from None
    names = parquet.schema_arrow.names
    if columns is not None:
        for column in columns:
            if column not in names:
                raise _missing_column(source, column, names)
    line = 1
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for row in batch.to_pylist():
            yield row, line
            line += 1


def _rows(path: Path, require: str | None, encoding: str, report: ReadReport) -> Iterator[tuple[dict | str, int]]:
    """Rows of one record file. ``require``: a column that must exist (checked up front when the
    format has a header or schema; parquet then reads only that column)."""
    ext, gzipped = _require_format(path)
    source = str(path)
    if ext == ".parquet":
        yield from _parquet_rows(path, gzipped, [require] if require is not None else None)
    elif ext == ".jsonl":
        pieces = _streamed_pieces(path, encoding, report)
        if pieces is not None:
            yield from _streamed_jsonl(pieces, source)
        else:
            yield from _jsonl_rows(_read_text(path, encoding, report), source)
    elif ext == ".json":
        yield from _json_rows(_read_text(path, encoding, report), source)
    elif ext in (".csv", ".tsv"):
        text = _read_text(path, encoding, report)
        yield from _csv_rows(text, source, "," if ext == ".csv" else "\t", require)
    else:
        raise DataError(
            f"{source}: {ext} files hold plain text, not records with fields. "
            f"Use one of {', '.join(RECORD_EXTENSIONS)} (optionally .gz) for records."
        )


def _document_from_row(row: dict | str, text_field: str, source: str, line: int) -> Document:
    if isinstance(row, str):  # a JSON list (or line) of plain strings
        return Document(row, source, line)
    if text_field not in row:
        raise DataError(
            f"{source}:{line}: no field {text_field!r}. Fields present: {_key_list(row)}. "
            "Use --data.text_field KEY to pick the text field."
        )
    value = row[text_field]
    if not isinstance(value, str):
        raise DataError(
            f"{source}:{line}: field {text_field!r} is {_json_type(value)}, expected a string. "
            "Fix or remove this record, or pick another field with --data.text_field KEY."
        )
    return Document(value, source, line)


# ---------------------------------------------------------------------------
# Public readers


def _documents(text_field: str, doc_split: str, encoding: str, report: ReadReport) -> Iterator[Document]:
    for path in report.files:
        ext, _ = _require_format(path)
        if ext in TEXT_EXTENSIONS:
            streamed = _streamed_text(path, encoding, doc_split, report)
            if streamed is not None:
                yield from streamed
            else:
                yield from _text_documents(_read_text(path, encoding, report), str(path), doc_split)
        else:
            for row, line in _rows(path, text_field, encoding, report):
                yield _document_from_row(row, text_field, str(path), line)


def _start(path: str | Path) -> ReadReport:
    files, skipped = scan(path)
    return ReadReport(str(path), files, skipped)


def read_documents(path: str | Path, text_field: str = "text", doc_split: str = "auto",
                   encoding: str = "auto") -> ReadStream[Document]:
    """Documents from every data file under ``path``, streamed file by file; the stream's `report`
    says which files were read, which were left out and why, and how they were decoded.

    Path and file-type errors are raised at once; content errors when the file is reached.
    `encoding` is 'auto' (detect per file) or a codec name used for every text file.
    """
    if doc_split not in DOC_SPLITS:
        raise DataError(f"doc_split: unknown value {doc_split!r}. Use one of: {', '.join(DOC_SPLITS)}.")
    report = _start(path)
    for file in report.files:
        _require_format(file)
    return ReadStream(_documents(text_field, doc_split, encoding, report), report)


def read_texts(path: str | Path, text_field: str = "text", doc_split: str = "auto",
               encoding: str = "auto") -> list[str]:
    return [doc.text for doc in read_documents(path, text_field, doc_split, encoding)]


def _records(encoding: str, report: ReadReport) -> Iterator[tuple[dict, str, int]]:
    for path in report.files:
        source = str(path)
        for row, line in _rows(path, None, encoding, report):
            if not isinstance(row, dict):
                raise DataError(
                    f"{source}:{line}: expected a record with fields, got a plain string. "
                    'Write each record as an object such as {"text": "...", "label": "..."}.'
                )
            yield row, source, line


def iter_records(path: str | Path, encoding: str = "auto") -> ReadStream[tuple[dict, str, int]]:
    """(record, source, line) for every row of the jsonl/json/csv/tsv/parquet files under ``path``;
    the stream's `report` lists the files read and left out."""
    report = _start(path)
    for file in report.files:
        ext, _ = _require_format(file)
        if ext in TEXT_EXTENSIONS:
            raise DataError(
                f"{file}: {ext} files hold plain text, not records with fields. "
                f"Use one of {', '.join(RECORD_EXTENSIONS)} (optionally .gz) for records."
            )
    return ReadStream(_records(encoding, report), report)
