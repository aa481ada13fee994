"""Token files: exact id stream, header, dtype choice, parallel == serial, corruption checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import TokenizerConfig
from lmforge.data.tokenizer import Tokenizer, train_tokenizer
from lmforge.data.tokens import TokenFile, cache_key, dtype_for, encode_corpus, header_path
from lmforge.errors import ConfigError, DataError

DOCS = [
    "First document.\nWith two lines.\n",
    "",
    "第二篇文档：中文内容，还有标点。\n\n",
    "Emoji 👩‍👩‍👧 and e\u0301 and \x00 and <|endoftext|> as plain text",
    "  spaces  \t tabs \r\n",
] * 13  # 65 docs: several chunks with chunk_docs=8, last one partial


@pytest.fixture(scope="module", params=["char", "bpe-char", "bpe-jieba"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    cfg = {
        "char": TokenizerConfig(kind="char"),
        "bpe-char": TokenizerConfig(vocab_size=350, cjk_split="char"),
        "bpe-jieba": TokenizerConfig(vocab_size=350, cjk_split="jieba"),
    }[request.param]
    return train_tokenizer(DOCS, cfg)


def expected_stream(tok: Tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for doc in docs:
        out.extend(tok.encode(doc))
        out.append(tok.eot_id)
    return out


def test_stream_matches_per_doc_encoding(tok: Tokenizer, tmp_path: Path) -> None:
    tf = encode_corpus(DOCS, tok, tmp_path / "train.bin", num_workers=1, chunk_docs=8)
    assert tf.tokens.tolist() == expected_stream(tok, DOCS)
    assert len(tf) == tf.num_tokens == len(tf.tokens)
    assert tf.num_documents == len(DOCS)
    assert tf.num_bytes_utf8 == sum(len(d.encode("utf-8")) for d in DOCS)
    assert tf.dtype == "uint16" and tf.tokens.dtype == np.dtype("<u2")
    # Splitting the stream at EOT gives the documents back.
    ids = tf.tokens.tolist()
    docs, cur = [], []
    for i in ids:
        if i == tok.eot_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert docs == DOCS and cur == []


def test_header_contents(tok: Tokenizer, tmp_path: Path) -> None:
    encode_corpus(DOCS, tok, tmp_path / "train.bin", num_workers=1)
    header = json.loads((tmp_path / "train.json").read_text(encoding="utf-8"))
    assert header["version"] == 1 and header["dtype"] == "uint16"
    assert header["num_tokens"] * 2 == (tmp_path / "train.bin").stat().st_size
    assert header["num_documents"] == len(DOCS)
    assert header["tokenizer"] == tok.fingerprint()
    assert header["eot_id"] == tok.eot_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.json"]  # no temp files


def test_reopen_and_memmap_is_read_only(tok: Tokenizer, tmp_path: Path) -> None:
    written = encode_corpus(DOCS, tok, tmp_path / "a.bin", num_workers=1)
    reopened = TokenFile(tmp_path / "a.bin")
    assert isinstance(reopened.tokens, np.memmap)
    assert not reopened.tokens.flags.writeable
    assert np.array_equal(reopened.tokens, written.tokens)


def test_iterator_input_and_chunk_size_do_not_change_output(tok: Tokenizer, tmp_path: Path) -> None:
    a = encode_corpus(DOCS, tok, tmp_path / "a.bin", num_workers=1, chunk_docs=256)
    b = encode_corpus(iter(DOCS), tok, tmp_path / "b.bin", num_workers=1, chunk_docs=1)
    assert np.array_equal(a.tokens, b.tokens)
    assert (a.num_documents, a.num_bytes_utf8) == (b.num_documents, b.num_bytes_utf8)


def test_parallel_equals_serial(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # jieba mode: the workers must rebuild the tokenizer with its pre-split mode intact.
    tok = train_tokenizer(DOCS, TokenizerConfig(vocab_size=350, cjk_split="jieba"))
    serial = encode_corpus(DOCS, tok, tmp_path / "s.bin", num_workers=1, chunk_docs=4)
    with caplog.at_level(logging.WARNING, logger="lmforge.data.tokens"):
        parallel = encode_corpus(DOCS, tok, tmp_path / "p.bin", num_workers=2, chunk_docs=4)
    assert not caplog.records, "workers died and the serial fallback ran"
    assert np.array_equal(serial.tokens, parallel.tokens)
    assert serial.header == parallel.header


def test_auto_workers_matches_serial(tok: Tokenizer, tmp_path: Path) -> None:
    auto = encode_corpus(DOCS, tok, tmp_path / "auto.bin", num_workers=0)
    assert auto.tokens.tolist() == expected_stream(tok, DOCS)


def test_dtype_boundary() -> None:
    assert dtype_for(256) == "uint16"
    assert dtype_for(65536) == "uint16"  # ids 0..65535 fit
    assert dtype_for(65537) == "uint32"


def test_uint32_for_large_vocab(tmp_path: Path) -> None:
    # A char tokenizer over ~70k distinct characters has a vocabulary beyond uint16.
    alphabet = "".join(chr(c) for c in range(0x4E00, 0x9FFF)) + "".join(chr(c) for c in range(0x20000, 0x2CFFF))
    tok = train_tokenizer([alphabet], TokenizerConfig(kind="char"))
    assert tok.vocab_size > 65536
    docs = ["abc 𬺰 \U0010ffff", alphabet[-50:]]  # unseen ASCII uses byte-fallback ids > 65535
    tf = encode_corpus(docs, tok, tmp_path / "big.bin", num_workers=1)
    assert tf.dtype == "uint32" and tf.tokens.dtype == np.dtype("<u4")
    assert tf.tokens.max() > 65535
    assert tf.tokens.tolist() == expected_stream(tok, docs)


def test_empty_corpus(tok: Tokenizer, tmp_path: Path) -> None:
    tf = encode_corpus([], tok, tmp_path / "empty.bin")
    assert len(tf) == 0 and tf.num_documents == 0 and tf.tokens.shape == (0,)
    assert len(TokenFile(tmp_path / "empty.bin")) == 0


def test_truncated_bin_detected(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    encode_corpus(DOCS, tok, path, num_workers=1)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match="corrupt or incomplete.*delete it and re-run prepare") as info:
        TokenFile(path)
    assert str(path) in str(info.value)


def test_missing_header_detected(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    encode_corpus(DOCS, tok, path, num_workers=1)
    header_path(path).unlink()
    with pytest.raises(DataError, match="missing"):
        TokenFile(path)


@pytest.mark.parametrize(
    "patch",
    [{"dtype": "int8"}, {"num_tokens": -1}, {"num_tokens": "12"}, {"version": 2}, {"tokenizer": None},
     {"num_documents": 10**9}],
)
def test_inconsistent_header_detected(tok: Tokenizer, tmp_path: Path, patch: dict) -> None:
    path = tmp_path / "train.bin"
    encode_corpus(DOCS, tok, path, num_workers=1)
    hdr = header_path(path)
    header = json.loads(hdr.read_text(encoding="utf-8"))
    header.update(patch)
    hdr.write_text(json.dumps(header), encoding="utf-8")
    with pytest.raises(DataError, match="train"):
        TokenFile(path)


def test_garbled_header_detected(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    encode_corpus(DOCS, tok, path, num_workers=1)
    header_path(path).write_text("{half", encoding="utf-8")
    with pytest.raises(DataError, match="unreadable"):
        TokenFile(path)


def test_failed_run_leaves_nothing_that_looks_complete(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    encode_corpus(DOCS, tok, path, num_workers=1)  # a previous, complete run

    def failing_docs() -> Iterator[str]:
        yield from DOCS[:20]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        encode_corpus(failing_docs(), tok, path, num_workers=1, chunk_docs=4)
    assert not header_path(path).exists()  # the old header no longer vouches for anything
    with pytest.raises(DataError):
        TokenFile(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin"]  # temp file removed


def test_bad_arguments(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="document #1"):
        encode_corpus(["ok", None], tok, tmp_path / "x.bin")  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="num_workers"):
        encode_corpus(DOCS, tok, tmp_path / "x.bin", num_workers=-1)
    with pytest.raises(ConfigError, match="chunk_docs"):
        encode_corpus(DOCS, tok, tmp_path / "x.bin", chunk_docs=0)
    with pytest.raises(ConfigError, match=".json"):
        encode_corpus(DOCS, tok, tmp_path / "x.json")


def test_cache_key() -> None:
    key = cache_key("text", b"bytes", {"b": 1, "a": [1, 2]})
    assert key == cache_key("text", b"bytes", {"a": [1, 2], "b": 1})  # dict order does not matter
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache_key("ab", "c") != cache_key("a", "bc")
    assert cache_key("x") != cache_key(b"x")
    assert cache_key({"p": Path("a/b")}) == cache_key({"p": "a/b"})
    assert cache_key() != cache_key("")
    with pytest.raises(TypeError):
        cache_key(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cache_key({"x": object()})


def test_big_documents_are_chunked_by_size(tok: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmforge.data import tokens

    monkeypatch.setattr(tokens, "CHUNK_MAX_CHARS", 50)
    calls: list[int] = []
    real = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda docs: calls.append(len(docs)) or real(docs))
    tf = encode_corpus(DOCS, tok, tmp_path / "t.bin", num_workers=1, chunk_docs=256)
    assert max(calls) < len(DOCS) and sum(calls) == len(DOCS)
    assert tf.tokens.tolist() == expected_stream(tok, DOCS)
