"""Tests for lmforge.data.readers: encodings, formats, inputs and error messages."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.readers import (
    Document,
    find_files,
    iter_records,
    read_documents,
    read_texts,
)
from lmforge.data.encoding import decode_bytes
from lmforge.errors import DataError

CHINESE = "中文测试，这是一个句子。"
MIXED = "机器学习 (machine learning) 是人工智能的一个分支。\n第二行：数字 123，English words, 标点！\n"


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


# --- decode_bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xef\xbb\xbf" + "héllo 世界".encode(), "héllo 世界"),
        (b"\xff\xfe" + MIXED.encode("utf-16-le"), MIXED),
        (b"\xfe\xff" + MIXED.encode("utf-16-be"), MIXED),
        ("plain ascii\nline two\n".encode("utf-16-le"), "plain ascii\nline two\n"),
        (MIXED.encode("utf-16-le"), MIXED),
        (MIXED.encode("utf-16-be"), MIXED),
        (CHINESE.encode("gbk"), CHINESE),
        (MIXED.encode("gbk"), MIXED),
        ("𠀀 emoji 😀 and 中文".encode("gb18030"), "𠀀 emoji 😀 and 中文"),
        (b"\xff\xfe\x00\x00" + "utf32 text".encode("utf-32-le"), "utf32 text"),
        (b"", ""),
    ],
    ids=[
        "utf8-bom", "utf16le-bom", "utf16be-bom", "utf16le-ascii-nobom", "utf16le-mixed-nobom",
        "utf16be-mixed-nobom", "gbk", "gbk-mixed", "gb18030-4byte", "utf32le-bom", "empty",
    ],
)
def test_decode_bytes_exact(data: bytes, expected: str) -> None:
    assert decode_bytes(data, "f.txt") == expected


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ufeff")))
def test_decode_bytes_round_trips_utf8_and_utf16_bom(text: str) -> None:
    assert decode_bytes(text.encode("utf-8"), "f.txt") == text
    assert decode_bytes(b"\xff\xfe" + text.encode("utf-16-le"), "f.txt") == text


@pytest.mark.parametrize(
    "data",
    [
        bytes(range(256)) * 10,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06\x00\x00\x00" * 20,
        b"\x00" * 64,
    ],
    ids=["all-bytes", "png", "nuls"],
)
def test_binary_file_is_rejected_naming_file(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path / "image.txt", data)
    with pytest.raises(DataError, match="image.txt") as err:
        read_texts(path)
    assert "binary" in str(err.value)


def test_undecodable_names_file_guess_and_what_to_do() -> None:
    # Symbols wrapped around a letter in cp1252, garbled in every other candidate: no confident guess.
    with pytest.raises(DataError) as err:
        decode_bytes(b"text \x80\xff\x80 more\n" * 3, "weird.txt")
    message = str(err.value)
    assert "weird.txt" in message and "cannot tell its text encoding" in message
    assert "best guess" in message and "confidence" in message and "--data.encoding" in message


def test_stray_nul_in_long_text_is_decoded_not_rejected() -> None:
    text = "a long line of text. " * 20 + "\x00" + "end"
    assert decode_bytes(text.encode(), "f.txt") == text


# --- text files -------------------------------------------------------------------------------


def test_txt_paragraphs_with_start_lines(tmp_path: Path) -> None:
    text = "\n\nfirst para\n  still first\n\n\n   \nsecond\n\nthird  \n\n"
    path = write(tmp_path / "a.txt", text)
    docs = list(read_documents(path))
    assert docs == [
        Document("first para\n  still first", str(path), 3),
        Document("second", str(path), 8),
        Document("third  ", str(path), 10),
    ]


def test_txt_crlf_paragraph_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "one\r\ntwo\r\n\r\nthree\r\n")
    docs = list(read_documents(path, doc_split="paragraph"))
    assert [(d.text, d.line) for d in docs] == [("one\r\ntwo", 1), ("three", 4)]


def test_txt_whole_file_and_md(tmp_path: Path) -> None:
    write(tmp_path / "a.md", "# Title\n\nbody text\n")
    docs = list(read_documents(tmp_path / "a.md", doc_split="file"))
    assert docs == [Document("# Title\n\nbody text\n", str(tmp_path / "a.md"), 1)]
    assert read_texts(tmp_path / "a.md") == ["# Title", "body text"]


def test_empty_txt_yields_one_empty_document(tmp_path: Path) -> None:
    write(tmp_path / "empty.txt", "\n  \n")
    assert read_texts(tmp_path / "empty.txt") == ["\n  \n"]


def test_unknown_doc_split(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "x")
    with pytest.raises(DataError, match="doc_split"):
        read_documents(tmp_path / "a.txt", doc_split="sentence")


# --- record formats ---------------------------------------------------------------------------


def test_jsonl_lines_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "one", "id": 1}\n\n{"text": "two\\nlines"}\n"bare"\n')
    docs = list(read_documents(path))
    assert [(d.text, d.line) for d in docs] == [("one", 1), ("two\nlines", 3), ("bare", 4)]


def test_jsonl_other_field(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"content": "hi"}\n')
    assert read_texts(path, text_field="content") == ["hi"]


def test_jsonl_missing_field_names_file_line_field_and_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "ok"}\n{"body": "x", "id": 2}\n')
    with pytest.raises(DataError) as err:
        read_texts(path)
    message = str(err.value)
    assert "data.jsonl:2" in message
    assert "'text'" in message and "'body'" in message and "'id'" in message
    assert "--data.text_field" in message


def test_jsonl_invalid_json_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        read_texts(path)


@pytest.mark.parametrize(
    ("line", "what"),
    [('{"text": 5}', "a number"), ('{"text": null}', "null"), ("[1, 2]", "a list")],
)
def test_jsonl_non_string_value(tmp_path: Path, line: str, what: str) -> None:
    path = write(tmp_path / "a.jsonl", line + "\n")
    with pytest.raises(DataError, match=what) as err:
        read_texts(path)
    assert "a.jsonl:1" in str(err.value)


def test_json_list_of_objects_and_strings(tmp_path: Path) -> None:
    records = [{"text": "alpha"}, {"text": "beta", "x": [1, 2]}]
    path = write(tmp_path / "a.json", json.dumps(records, indent=2))
    docs = list(read_documents(path))
    assert [d.text for d in docs] == ["alpha", "beta"]
    assert [d.line for d in docs] == [2, 5]
    write(tmp_path / "b.json", '["x", "y"]')
    assert read_texts(tmp_path / "b.json") == ["x", "y"]
    write(tmp_path / "c.json", "[]")
    assert read_texts(tmp_path / "c.json") == []


def test_json_errors(tmp_path: Path) -> None:
    write(tmp_path / "obj.json", '{"data": [{"text": "a"}]}')
    with pytest.raises(DataError, match=r"obj\.json.*list.*'data'"):
        read_texts(tmp_path / "obj.json")
    write(tmp_path / "broken.json", '[\n{"text": "a"},\n{"text": }\n]')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON"):
        read_texts(tmp_path / "broken.json")
    write(tmp_path / "missing.json", '[\n{"text": "a"},\n{"body": "b"}\n]')
    with pytest.raises(DataError, match=r"missing\.json:3: no field 'text'"):
        read_texts(tmp_path / "missing.json")


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '{"text": "a"}\n{"text": "b"}\n')
    assert read_texts(path) == ["a", "b"]


def test_csv_quoted_multiline_and_large_field(tmp_path: Path) -> None:
    big = "word " * 40_000  # larger than csv's default 128 KiB field limit
    path = tmp_path / "a.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerow(["1", "line one\nline two, with comma"])
        writer.writerow(["2", big])
    docs = list(read_documents(path))
    assert [d.text for d in docs] == ["line one\nline two, with comma", big]
    assert [d.line for d in docs] == [2, 4]


def test_tsv_and_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path / "a.tsv", "label\tbody\npos\tgood film\nneg\tbad film\n")
    assert read_texts(path, text_field="body") == ["good film", "bad film"]
    with pytest.raises(DataError) as err:
        read_texts(path)
    message = str(err.value)
    assert "a.tsv" in message and "'text'" in message and "'label'" in message and "'body'" in message


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "id,text\n1,fine\n2,not,quoted\n")
    with pytest.raises(DataError, match=r"a\.csv:3"):
        read_texts(path)


def test_parquet_in_batches(tmp_path: Path) -> None:
    texts = [f"document {i}" for i in range(1300)]  # more than one record batch
    table = pa.table({"id": list(range(1300)), "text": texts})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path)
    docs = list(read_documents(path))
    assert [d.text for d in docs] == texts
    assert docs[0].line == 1 and docs[-1].line == 1300
    with pytest.raises(DataError, match=r"a\.parquet.*'body'.*'id'"):
        read_texts(path, text_field="body")


def test_parquet_null_value_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), path)
    with pytest.raises(DataError, match=r"a\.parquet:2.*null"):
        read_texts(path)


def test_gz_variants(tmp_path: Path) -> None:
    write(tmp_path / "a.txt.gz", gzip.compress("p1\n\np2\n".encode("utf-16")))
    write(tmp_path / "b.jsonl.gz", gzip.compress(b'{"text": "j"}\n'))
    write(tmp_path / "c.json.gz", gzip.compress(b'["s"]'))
    write(tmp_path / "d.csv.gz", gzip.compress(b"text\nc\n"))
    write(tmp_path / "e.tsv.gz", gzip.compress(b"text\nt\n"))
    write(tmp_path / "f.md.gz", gzip.compress(CHINESE.encode("gbk")))
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["pq"]}), buffer)
    write(tmp_path / "g.parquet.gz", gzip.compress(buffer.getvalue().to_pybytes()))
    assert read_texts(tmp_path) == ["p1", "p2", "j", "s", "c", "t", CHINESE, "pq"]


def test_bad_gzip(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl.gz", b"not gzip at all")
    with pytest.raises(DataError, match=r"a\.jsonl\.gz.*gzip"):
        read_texts(tmp_path / "a.jsonl.gz")


# --- inputs: files, folders, globs --------------------------------------------------------------


def make_tree(root: Path) -> None:
    write(root / "b.txt", "b")
    write(root / "a.jsonl", '{"text": "a"}\n')
    write(root / "sub" / "c.md", "c")
    write(root / "sub" / "deeper" / "d.csv", "text\nd\n")
    write(root / "notes.pdf", b"%PDF")
    write(root / ".hidden.txt", "hidden")
    write(root / ".git" / "e.txt", "hidden folder")


def test_folder_recursive_sorted_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    make_tree(tmp_path)
    files = find_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.jsonl", "b.txt", "sub/c.md", "sub/deeper/d.csv",
    ]
    assert read_texts(tmp_path) == ["a", "b", "c", "d"]


def test_folder_report_lists_every_skipped_file_with_its_reason(tmp_path: Path) -> None:
    make_tree(tmp_path)
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "README", "no extension")
    write(tmp_path / "sub" / "latin.txt", "Größe".encode("latin-1"))
    stream = read_documents(tmp_path)
    assert [d.text for d in stream] == ["a", "b", "c", "d", "Größe"]
    report = stream.report
    assert [p.relative_to(tmp_path).as_posix() for p in report.files] == [
        "a.jsonl", "b.txt", "sub/c.md", "sub/deeper/d.csv", "sub/latin.txt",
    ]
    assert [(p.relative_to(tmp_path).as_posix(), r) for p, r in report.skipped] == [
        (".git", "hidden folder"), (".hidden.txt", "hidden"), ("README", "no file extension"),
        ("empty.txt", "empty"), ("notes.pdf", "unsupported extension .pdf"),
    ]
    lines = report.summary_lines()
    assert lines[0] == f"files: 5 read from {tmp_path}, 5 skipped"
    assert f"decoded as cp1252 (detected): {tmp_path / 'sub' / 'latin.txt'}" in lines
    assert f"skipped (unsupported extension .pdf): {tmp_path / 'notes.pdf'}" in lines
    assert f"skipped (hidden folder): {tmp_path / '.git'}" in lines
    assert report.to_dict()["files_read"] == 5 and len(report.to_dict()["skipped"]) == 5


def test_report_listing_is_capped_on_screen_but_complete_in_the_summary(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "text")
    for i in range(30):
        write(tmp_path / f"x{i:02}.pdf", b"%PDF")
    report = read_documents(tmp_path).report
    line = report.summary_lines(limit=3)[1]
    assert line.startswith("skipped (unsupported extension .pdf): ") and line.endswith("and 27 more")
    assert len(report.to_dict()["skipped"]) == 30


def test_prepare_prints_and_stores_the_folder_report(tmp_path: Path, capsys) -> None:
    from lmforge.cli import main

    data = tmp_path / "data"
    for i in range(40):
        write(data / f"doc{i}.txt", f"document number {i} about the garden and the king.\n")
    write(data / "old.txt", "Die Größe der Brücke in München.\n".encode("latin-1"))
    write(data / "notes.pdf", b"%PDF")
    write(data / ".DS_Store", b"\x00")
    assert main(["prepare", str(data), "--out", str(tmp_path / "run"), "--tokenizer.kind", "char"]) == 0
    out = capsys.readouterr().err  # the console prints to stderr; stdout carries results only
    assert f"files: 41 read from {data}, 2 skipped" in out
    assert f"decoded as cp1252 (detected): {data / 'old.txt'}" in out
    assert f"skipped (unsupported extension .pdf): {data / 'notes.pdf'}" in out
    summary = json.loads((tmp_path / "run" / "data" / "prepare.json").read_text())["summary"]
    assert summary["files"]["files_read"] == 41
    assert {(Path(s["path"]).name, s["reason"]) for s in summary["files"]["skipped"]} == {
        ("notes.pdf", "unsupported extension .pdf"), (".DS_Store", "hidden")}
    assert summary["files"]["decoded"] == {"cp1252 (detected)": [str(data / "old.txt")]}


def test_glob_patterns(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert read_texts(str(tmp_path / "**" / "*.md")) == ["c"]
    assert [f.name for f in find_files(str(tmp_path / "*.txt"))] == ["b.txt"]
    assert [f.name for f in find_files(str(tmp_path / "sub" / "**"))] == ["c.md", "d.csv"]


def test_nothing_found_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope"):
        find_files(tmp_path / "nope")
    with pytest.raises(DataError, match=r"matched no files"):
        find_files(str(tmp_path / "*.jsonl"))
    write(tmp_path / "only" / "x.pdf", b"%PDF")
    write(tmp_path / "only" / "e.txt", b"")
    with pytest.raises(DataError, match=r"only: found 2 file\(s\) but none to read \(empty: e\.txt; "
                                        r"unsupported extension \.pdf: x\.pdf\).*\.jsonl"):
        find_files(tmp_path / "only")


def test_unknown_extension_lists_supported(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xml", "<a/>")
    with pytest.raises(DataError, match=r"data\.xml.*\.txt.*\.parquet"):
        read_documents(path)


def test_read_documents_streams_file_by_file(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "good")
    write(tmp_path / "b.jsonl", "{broken\n")
    docs = read_documents(tmp_path)
    assert next(docs).text == "good"  # the bad second file is not touched yet
    with pytest.raises(DataError, match=r"b\.jsonl:1"):
        next(docs)


# --- iter_records -------------------------------------------------------------------------------


def test_iter_records_all_formats(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", '{"text": "x", "label": "pos"}\n')
    write(tmp_path / "b.csv", "text,label\ny,neg\n")
    pq.write_table(pa.table({"text": ["z"], "label": [1]}), tmp_path / "c.parquet")
    records = list(iter_records(tmp_path))
    assert [(r, Path(s).name, n) for r, s, n in records] == [
        ({"text": "x", "label": "pos"}, "a.jsonl", 1),
        ({"text": "y", "label": "neg"}, "b.csv", 2),
        ({"text": "z", "label": 1}, "c.parquet", 1),
    ]


def test_iter_records_rejects_text_files_and_strings(tmp_path: Path) -> None:
    write(tmp_path / "t" / "a.txt", "plain")
    with pytest.raises(DataError, match=r"a\.txt.*records"):
        iter_records(tmp_path / "t")
    write(tmp_path / "s.json", '["plain"]')
    with pytest.raises(DataError, match=r"s\.json:1"):
        list(iter_records(tmp_path / "s.json"))


def test_cjk_utf16_without_bom_is_an_error_not_garbage() -> None:
    # Too few NUL bytes to recognise the encoding: an error with a hint beats a silent misread.
    with pytest.raises(DataError, match="UTF-16 text without a byte-order mark"):
        decode_bytes(CHINESE.encode("utf-16-le"), "zh.txt")


def test_big_text_file_is_streamed_into_the_same_documents(tmp_path: Path, monkeypatch) -> None:
    """A file above readers.STREAM_MIN_BYTES is read block by block; cut anywhere (inside a \\r\\n, a blank
    line, a multi-byte character, a byte-order mark), it gives the documents and lines of the whole read."""
    import random

    from lmforge.data import readers

    streamed: list[int] = []
    real = readers._paragraph_stream
    monkeypatch.setattr(readers, "_paragraph_stream", lambda *a: (streamed.append(1), real(*a))[1])
    rng = random.Random(0)
    pieces = ["word", "b", " ", "\t", "\r", "\n", "\r\n", "中文", "\n\n", " \n", "\r\n \r\n", "é"]
    path = tmp_path / "t.txt"
    for trial in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        path.write_bytes(("\ufeff" if trial % 7 == 0 else "").encode() + text.encode("utf-8"))
        monkeypatch.setattr(readers, "STREAM_MIN_BYTES", 1 << 40)
        whole = [(d.text, d.line) for d in read_documents(path)]
        monkeypatch.setattr(readers, "STREAM_MIN_BYTES", -1)
        monkeypatch.setattr(readers, "STREAM_BLOCK_BYTES", rng.randint(1, 9))
        assert [(d.text, d.line) for d in read_documents(path)] == whole, (text, readers.STREAM_BLOCK_BYTES)
    assert len(streamed) == 400
    # --data.encoding is streamed too; a legacy encoding that must be detected is read whole.
    path.write_bytes("caf\xe9\n\nna\xefve au bord de l'eau".encode("cp1252"))
    assert [d.text for d in read_documents(path, encoding="cp1252")] == ["café", "naïve au bord de l'eau"]
    assert len(streamed) == 401
    assert [d.text for d in read_documents(path)] == ["café", "naïve au bord de l'eau"] and len(streamed) == 401


def test_big_jsonl_file_is_streamed_into_the_same_records(tmp_path: Path, monkeypatch) -> None:
    import random

    from lmforge.data import readers

    rng = random.Random(1)
    path = tmp_path / "t.jsonl"
    for _ in range(150):
        lines = [rng.choice(['{"text": "a b"}', '{"text": "中文 é\\\\n"}', "", "  ", '"plain"', '{"text": ""}\r'])
                 for _ in range(rng.randint(0, 12))]
        path.write_text("\n".join(lines) + rng.choice(["", "\n"]), encoding="utf-8")
        monkeypatch.setattr(readers, "STREAM_MIN_BYTES", 1 << 40)
        whole = [(d.text, d.line) for d in read_documents(path)]
        monkeypatch.setattr(readers, "STREAM_MIN_BYTES", -1)
        monkeypatch.setattr(readers, "STREAM_BLOCK_BYTES", rng.randint(1, 9))
        assert [(d.text, d.line) for d in read_documents(path)] == whole
    # An error names the same line either way.
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.jsonl:3: invalid JSON"):
        list(read_documents(path))


def test_a_file_named_directly_is_plain_text_whatever_its_extension(tmp_path: Path) -> None:
    # WikiText's wiki.train.tokens, a log or a file without an extension: named on purpose, read as
    # text. In a folder they are still left out, and binaries or markup named directly are refused.
    tokens = write(tmp_path / "wiki.train.tokens", "First paragraph here.\n\nSecond one.\n")
    bare = write(tmp_path / "corpus", "Only one.\n")
    assert read_texts(tokens) == ["First paragraph here.", "Second one."]
    assert read_texts(bare) == ["Only one."]
    blob = write(tmp_path / "weights.dat", b"\x00\x01binary")
    page = write(tmp_path / "page.html", "<p>hello</p>\n")
    for refused in (blob, page):
        with pytest.raises(DataError, match="unsupported file type"):
            read_texts(refused)
    write(tmp_path / "notes.txt", "Read.\n")
    folder_report = read_documents(tmp_path).report
    assert folder_report.files == [tmp_path / "notes.txt"]
    assert {(p.name, reason) for p, reason in folder_report.skipped} >= {
        ("corpus", "no file extension"), ("wiki.train.tokens", "unsupported extension .tokens")}
