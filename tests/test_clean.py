"""Tests for lmforge.data.clean: cleaning rules, the report, and the train/validation split."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.config import CleanConfig
from lmforge.data.clean import (
    CleanReport,
    clean_documents,
    clean_text,
    split_documents,
)
from lmforge.errors import DataError

OFF = CleanConfig(nfkc=False, strip_control=False, normalize_whitespace=False, dedup=False, min_chars=0)


def only(**changes: object) -> CleanConfig:
    """A config with every rule off except the given ones."""
    cfg = CleanConfig(**{**OFF.__dict__, **changes})  # type: ignore[arg-type]
    return cfg


# --- clean_text rules ---------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = CleanConfig()
    assert (cfg.nfkc, cfg.strip_control, cfg.normalize_whitespace, cfg.dedup, cfg.min_chars) == (
        False, True, True, True, 1,
    )


def test_all_off_is_identity() -> None:
    text = " a\x00b\r\n\n\n\nｆｕｌｌ\u00a0 "
    assert clean_text(text, OFF) == text


def test_nfkc() -> None:
    assert clean_text("ｆｕｌｌ ﬁ ①", only(nfkc=True)) == "full fi 1"
    assert clean_text("ｆｕｌｌ", OFF) == "ｆｕｌｌ"


def test_strip_control_keeps_newline_tab_and_format_chars() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # ZWJ (Cf) must survive
    text = "a\x00b\x07c\x7fd\x9fe\tf\ng" + family
    assert clean_text(text, only(strip_control=True)) == "abcde\tf\ng" + family


def test_strip_control_turns_separating_controls_into_spaces_and_cr_into_newlines() -> None:
    assert clean_text("end.\x0cNext\x0bpage", only(strip_control=True)) == "end. Next page"
    assert clean_text("mac\rlines\r\nwin", only(strip_control=True)) == "mac\nlines\nwin"


def test_normalize_whitespace() -> None:
    cfg = only(normalize_whitespace=True)
    assert clean_text("a\r\nb\rc", cfg) == "a\nb\nc"
    assert clean_text("line  \t\nnext\t\tx", cfg) == "line\nnext\t\tx"
    assert clean_text("p1\n\n\n\n\np2\n \n \n \np3", cfg) == "p1\n\np2\n\np3"
    assert clean_text("  \n\t lead and trail \n\n ", cfg) == "lead and trail"
    assert clean_text("a\u00a0b\u3000c\u2009d\u202fe", cfg) == "a b c d e"
    assert clean_text("a\u2028b", cfg) == "a\nb"


def test_space_separator_table_matches_unicode() -> None:
    cfg = only(normalize_whitespace=True)
    spaces = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Zs"]
    assert clean_text("x" + "".join(spaces) + "y", cfg) == "x" + " " * len(spaces) + "y"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))), st.booleans())
def test_clean_text_is_idempotent(text: str, nfkc: bool) -> None:
    cfg = CleanConfig(nfkc=nfkc)
    once = clean_text(text, cfg)
    assert clean_text(once, cfg) == once


# --- clean_documents and the report -------------------------------------------------------------


def test_clean_documents_counts_each_reason() -> None:
    docs = ["hello  world", "", "   \n ", "hi", "hello  world\n", "a\x00b\x01c long enough", "unique one"]
    kept, report = clean_documents(docs, CleanConfig(min_chars=3))
    assert kept == ["hello  world", "abc long enough", "unique one"]
    assert report.documents_in == 7 and report.documents_out == 3
    assert report.removed_empty == 2
    assert report.removed_short == 1
    assert report.removed_duplicate == 1
    assert report.control_chars_removed == 2
    assert report.chars_in == sum(map(len, docs))
    assert report.chars_out == sum(map(len, kept))
    assert report.to_dict()["removed_duplicate"] == 1


def test_dedup_off_keeps_duplicates() -> None:
    kept, report = clean_documents(["same", "same"], CleanConfig(dedup=False))
    assert kept == ["same", "same"] and report.removed_duplicate == 0


def test_dedup_handles_lone_surrogates() -> None:
    kept, report = clean_documents(["x\ud800", "x\ud800"], CleanConfig())
    assert kept == ["x\ud800"] and report.removed_duplicate == 1


def test_min_chars_counts_characters_after_cleaning() -> None:
    kept, report = clean_documents(["  abc  ", "abcd"], CleanConfig(min_chars=4))
    assert kept == ["abcd"] and report.removed_short == 1


def test_summary_lines() -> None:
    _, report = clean_documents(["a", "a", "", "bb", "x\x00yz"], CleanConfig(min_chars=2))
    text = "\n".join(report.summary_lines())
    assert "5 in" in text and "2 kept" in text
    assert "1 document(s) (20.0%): empty" in text
    assert "min_chars=2" in text and "duplicates" not in text
    assert "1 control character" in text
    assert CleanReport().summary_lines()[-1] == "nothing removed"


# --- split_documents ---------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_ordered() -> None:
    docs = [f"doc {i}" for i in range(100)]
    train, val = split_documents(docs, 0.1, seed=7)
    assert (train, val) == split_documents(docs, 0.1, seed=7)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert train == [d for d in docs if d in set(train)]
    assert val == [d for d in docs if d in set(val)]


def test_split_varies_with_seed() -> None:
    docs = [f"doc {i}" for i in range(100)]
    assert split_documents(docs, 0.1, seed=1)[1] != split_documents(docs, 0.1, seed=2)[1]


def test_split_edge_sizes() -> None:
    assert split_documents(["a", "b"], 0.01, seed=0)[1] in (["a"], ["b"])
    assert len(split_documents(["a", "b", "c"], 0.9, seed=0)[0]) == 1  # train keeps one
    assert split_documents(["a", "b"], 0.0, seed=0) == (["a", "b"], [])
    assert split_documents([], 0.1, seed=0) == ([], [])
    with pytest.raises(DataError, match="val_fraction"):
        split_documents(["a"], 1.0, seed=0)


def test_split_single_document_at_line_boundary() -> None:
    lines = [f"line number {i:03d}" for i in range(100)]
    train, val = split_documents(["\n".join(lines)], 0.1, seed=0)
    assert len(train) == 1 and len(val) == 1
    assert train[0] + "\n" + val[0] == "\n".join(lines)
    assert val[0].startswith("line number") and 8 <= len(val[0].split("\n")) <= 12


def test_split_single_document_without_newlines() -> None:
    text = "没有换行的中文文本" * 20
    train, val = split_documents([text], 0.25, seed=0)
    assert train[0] + val[0] == text and len(val[0]) == 45
