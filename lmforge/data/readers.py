"""Read raw data files into text documents or generic records.

Supported inputs: a file, a folder (searched recursively) or a glob pattern. Formats: plain text
(.txt/.md/.text), JSON Lines, JSON, CSV, TSV and Parquet, each optionally gzip-compressed (.gz).
Every error names the file (and line or field) and says what to do about it.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _require_format(path: Path) -> tuple[str, bool]:
    fmt = _format_of(path)
    if fmt is None:
        raise DataError(
            f"{path}: unsupported file type. Supported extensions: {_supported_text()}. "
            "Rename or convert the file, or point the data path at the supported files only."
        )
    return fmt


def _scan_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """(supported files, other files) under root, skipping hidden files and folders."""
    found: list[Path] = []
    others: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        # Prune hidden folders in place so os.walk never descends into e.g. .git.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if not path.is_file():
                continue
            (found if _format_of(path) else others).append(path)
    # Sort by path components so the order is stable and folder-aware on every platform.
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found, others


def _no_supported_files(where: str, others: list[Path]) -> DataError:
    if not others:
        return DataError(f"{where}: no files found. Check the data path.")
    examples = ", ".join(p.name for p in others[:5])
    return DataError(
        f"{where}: found {len(others)} file(s) (e.g. {examples}) but none with a supported extension: "
        f"{_supported_text()}. Convert the data or point the data path at the right files."
    )


def _files_from_glob(pattern: str) -> list[Path]:
    found: list[Path] = []
    others: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            inner, inner_others = _scan_folder(path)
            found.extend(inner)
            others.extend(inner_others)
        elif path.is_file():
            (found if _format_of(path) else others).append(path)
    if not found:
        if not others:
            raise DataError(f"{pattern}: the pattern matched no files (searched from {Path.cwd()}).")
        raise _no_supported_files(pattern, others)
    # A folder match and a file match can name the same file twice (e.g. "data/**").
    return list(dict.fromkeys(found))


def find_files(path: str | Path) -> list[Path]:
    """Data files for a file, folder (recursive) or glob pattern (``**`` allowed)."""
    raw = str(path)
    candidate = Path(path)
    if candidate.is_file():
        return [candidate]
    if candidate.is_dir():
        found, others = _scan_folder(candidate)
        if not found:
            raise _no_supported_files(raw, others)
        return found
    if any(ch in raw for ch in "*?["):
        return _files_from_glob(raw)
    raise DataError(
        f"{raw}: no such file or folder (relative paths start from {Path.cwd()}). Check the data path."
    )


# ---------------------------------------------------------------------------
# Decoding

_UTF8_BOM = b"\xef\xbb\xbf"
# Byte-order marks, longest first: a UTF-32 LE BOM begins with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Control bytes that never occur in text. Tab, newlines, VT, FF, backspace and ESC are left out:
# they do turn up in real text files (page breaks, overstrike, terminal colours).
_BINARY_BYTES = bytes([*range(0x00, 0x08), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_BINARY_CHARS = re.compile("[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f]")
_MAX_BINARY_FRACTION = 0.01
# BOM-less UTF-16: the NUL high bytes of ASCII characters must be common on one side and rare on
# the other. CJK-heavy text has fewer NULs, hence the low share.
_MIN_UTF16_NUL_SHARE = 0.05
_TRIED = "UTF-8, UTF-16 (LE/BE), GB18030"


def _looks_binary(text: str) -> bool:
    return len(_BINARY_CHARS.findall(text)) > _MAX_BINARY_FRACTION * max(len(text), 1)


def _guess_utf16(data: bytes) -> str | None:
    """The UTF-16 codec for BOM-less data whose NUL bytes fit UTF-16, else None."""
    units = len(data) // 2
    if units == 0 or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    # ASCII in UTF-16 LE puts the NUL high byte at odd offsets; BE at even ones.
    codec, major, minor = ("utf-16-le", odd, even) if odd > even else ("utf-16-be", even, odd)
    if major < _MIN_UTF16_NUL_SHARE * units or minor * 4 > major:
        return None
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return None
    return None if _looks_binary(text) else codec


def _binary_error(source: str, count: int, total: int, has_nul: bool) -> DataError:
    # Mostly-CJK UTF-16 without a BOM has too few NUL bytes to be recognised; say so.
    hint = " If it is UTF-16 text without a byte-order mark, re-save it as UTF-8." if has_nul else ""
    return DataError(
        f"{source}: looks like a binary file, not text ({count} of {total} bytes are control bytes "
        f"such as NUL; tried {_TRIED}). Remove it from the data path, or convert it to UTF-8 text.{hint}"
    )


def decode_bytes(data: bytes, source: str) -> str:
    """Decode text bytes: UTF-8 (BOM stripped), UTF-16/32 (with BOM, or BOM-less UTF-16), GB18030.

    Never replaces characters: data that fits none of these raises DataError.
    """
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    else:
        for bom, codec in _BOMS:
            if data.startswith(bom):
                try:
                    return data[len(bom):].decode(codec)
                except UnicodeDecodeError as exc:
                    # A UTF-32 LE BOM may just be a UTF-16 LE BOM followed by a NUL; keep looking.
                    if codec.startswith("utf-32"):
                        continue
                    raise DataError(
                        f"{source}: starts with a {codec.upper()} byte-order mark but is not valid "
                        f"{codec.upper()} (byte {exc.start}). Re-save the file as UTF-8."
                    ) from None
    if 0 in data:
        codec = _guess_utf16(data)
        if codec is not None:
            return data.decode(codec)
    # Bytes below 0x20 mean the same in UTF-8 and GB18030, so this check is encoding-independent.
    binary = len(data) - len(data.translate(None, _BINARY_BYTES))
    if binary > _MAX_BINARY_FRACTION * len(data):
        raise _binary_error(source, binary, len(data), 0 in data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError:
        pass
    line = data.count(b"\n", 0, utf8_error.start) + 1
    raise DataError(
        f"{source}: could not be decoded as text (tried {_TRIED}; first invalid UTF-8 byte on "
        f"line {line}). Convert the file to UTF-8 (e.g. iconv -f ENCODING -t UTF-8), or remove it "
        "if it is not text."
    )


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


def _read_text(path: Path) -> str:
    return decode_bytes(_read_bytes(path), str(path))


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


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[dict | str, int]]:
    decoder = json.JSONDecoder()
    start, line = 0, 1
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
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
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


def _rows(path: Path, require: str | None) -> Iterator[tuple[dict | str, int]]:
    """Rows of one record file. ``require``: a column that must exist (checked up front when the
    format has a header or schema; parquet then reads only that column)."""
    ext, gzipped = _require_format(path)
    source = str(path)
    if ext == ".parquet":
        yield from _parquet_rows(path, gzipped, [require] if require is not None else None)
    elif ext == ".jsonl":
        yield from _jsonl_rows(_read_text(path), source)
    elif ext == ".json":
        yield from _json_rows(_read_text(path), source)
    elif ext in (".csv", ".tsv"):
        yield from _csv_rows(_read_text(path), source, "," if ext == ".csv" else "\t", require)
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


def _documents(files: list[Path], text_field: str, doc_split: str) -> Iterator[Document]:
    for path in files:
        ext, _ = _require_format(path)
        if ext in TEXT_EXTENSIONS:
            yield from _text_documents(_read_text(path), str(path), doc_split)
        else:
            for row, line in _rows(path, text_field):
                yield _document_from_row(row, text_field, str(path), line)


def read_documents(path: str | Path, text_field: str = "text", doc_split: str = "auto") -> Iterator[Document]:
    """Documents from every data file under ``path``, streamed file by file.

    Path and file-type errors are raised at once; content errors when the file is reached.
    """
    if doc_split not in DOC_SPLITS:
        raise DataError(f"doc_split: unknown value {doc_split!r}. Use one of: {', '.join(DOC_SPLITS)}.")
    files = find_files(path)
    for file in files:
        _require_format(file)
    return _documents(files, text_field, doc_split)


def read_texts(path: str | Path, text_field: str = "text", doc_split: str = "auto") -> list[str]:
    return [doc.text for doc in read_documents(path, text_field, doc_split)]


def _records(files: list[Path]) -> Iterator[tuple[dict, str, int]]:
    for path in files:
        source = str(path)
        for row, line in _rows(path, None):
            if not isinstance(row, dict):
                raise DataError(
                    f"{source}:{line}: expected a record with fields, got a plain string. "
                    'Write each record as an object such as {"text": "...", "label": "..."}.'
                )
            yield row, source, line


def iter_records(path: str | Path) -> Iterator[tuple[dict, str, int]]:
    """(record, source, line) for every row of the jsonl/json/csv/tsv/parquet files under ``path``."""
    files = find_files(path)
    for file in files:
        ext, _ = _require_format(file)
        if ext in TEXT_EXTENSIONS:
            raise DataError(
                f"{file}: {ext} files hold plain text, not records with fields. "
                f"Use one of {', '.join(RECORD_EXTENSIONS)} (optionally .gz) for records."
            )
    return _records(files)
