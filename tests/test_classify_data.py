"""Reading labeled data: formats, label types, and clear errors that name the file and line."""

import json

import numpy as np
import pytest

from classify_synth import sentiment_records, write_csv, write_jsonl
from lmforge.classify.data import LabelMap, read_labeled, skew_message
from lmforge.classify.members import TokenInputs
from lmforge.classify.text import (NgramIndex, TextEncoder, Vocab, detect_language, load_vectors, split_words,
                                   truncate)
from lmforge.errors import DataError


def test_jsonl_csv_tsv_parquet_and_label_types(tmp_path):
    recs = [{"review": "fine film", "y": 1}, {"review": "bad film", "y": 0}, {"review": "ok", "y": 1}]
    for path in (write_jsonl(tmp_path / "a.jsonl", recs), write_csv(tmp_path / "a.csv", recs),
                 write_csv(tmp_path / "a.tsv", recs, "\t")):
        d = read_labeled(path, "review", "y")
        assert d.texts == ["fine film", "bad film", "ok"]
        assert d.labels == [1, 0, 1]  # csv cells "1" are the integer label 1, as in jsonl
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"review": ["a b", "c d"], "y": ["spam", "ham"]}), tmp_path / "a.parquet")
    d = read_labeled(tmp_path / "a.parquet", "review", "y")
    assert d.labels == ["spam", "ham"]
    labels = LabelMap.from_labels(d.labels, "x")
    assert labels.names == ["ham", "spam"]
    assert labels.encode(d).tolist() == [1, 0]


def test_missing_text_field_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"body": "b", "label": 0}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: no field 'text'.*'body'.*--text-field"):
        read_labeled(p, "text", "label")


def test_missing_label_and_empty_text_name_the_line(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: no field 'label'.*--label-field"):
        read_labeled(p, "text", "label")
    p = write_jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0},
                                           {"text": "   ", "label": 1}])
    with pytest.raises(DataError, match=r"e\.jsonl:3: field 'text' is empty"):
        read_labeled(p, "text", "label")


def test_label_unseen_in_training_names_the_test_file_and_line(tmp_path):
    train = read_labeled(write_jsonl(tmp_path / "train.jsonl", sentiment_records(20)), "text", "label")
    labels = LabelMap.from_labels(train.labels, "train.jsonl")
    test_recs = sentiment_records(5, seed=1)
    test_recs[3]["label"] = "neutral"
    test = read_labeled(write_jsonl(tmp_path / "test.jsonl", test_recs), "text", "label")
    with pytest.raises(DataError, match=r"test\.jsonl:4: label 'neutral' does not occur in the training data"):
        labels.encode(test)


def test_one_class_only_is_refused(tmp_path):
    p = write_jsonl(tmp_path / "one.jsonl", [{"text": f"t {i}", "label": "pos"} for i in range(5)])
    d = read_labeled(p, "text", "label")
    with pytest.raises(DataError, match=r"one\.jsonl: every record has the label 'pos'.*two classes"):
        LabelMap.from_labels(d.labels, str(p))


def test_skew_warning():
    labels = LabelMap([0, 1])
    assert skew_message(np.array([0] * 50 + [1] * 40), labels, 3.0) is None
    msg = skew_message(np.array([0] * 90 + [1] * 10), labels, 3.0)
    assert "skewed" in msg and "class_weights" in msg and "oversample" in msg


def test_truncation_counts_and_keeps_head_and_tail():
    ids = np.arange(1, 11)
    assert truncate(ids, 6, "head").tolist() == [1, 2, 3, 4, 5, 6]
    assert truncate(ids, 6, "tail").tolist() == [5, 6, 7, 8, 9, 10]
    assert truncate(ids, 6, "head_tail").tolist() == [1, 2, 7, 8, 9, 10]
    enc = TextEncoder.fit(["a b c d e f g", "a b", "c d e f g h i j"], "word", "en", True, True, 1, 100)
    out = TokenInputs(enc, 5, "head").encode(["a b c d e f g", "a b", "c d e f g h i j"])
    assert out.truncated == 2
    assert [len(x) for x in out.ids] == [5, 2, 5]


def test_english_words_html_and_case():
    enc = TextEncoder.fit(["Great<br />film, isn't it?"], "word", "en", True, True, 1, 100)
    assert enc.units("Great<br />film, isn't it?") == ["great", "film", ",", "is", "n't", "it", "?"]
    assert split_words("it 's a n't", "en") == ["it", "'s", "a", "n't"]


def test_chinese_word_level_uses_jieba(monkeypatch):
    import jieba

    text = "这家酒店的服务非常好，房间也很干净。"
    expected = [w for w in jieba.lcut(text, HMM=False) if w.strip()]
    assert split_words(text, "zh") == expected
    calls = []
    real = jieba.lcut
    monkeypatch.setattr(jieba, "lcut", lambda s, *a, **k: calls.append(s) or real(s, *a, **k))
    enc = TextEncoder.fit([text], "word", "zh", True, True, 1, 100)
    assert calls, "word-level Chinese must be segmented with jieba"
    assert enc.units(text) == expected
    assert "酒店" in enc.vocab.index and "服务" in enc.vocab.index
    assert detect_language([text] * 3) == "zh" and detect_language(["a plain english text"]) == "en"
    chars = TextEncoder.fit([text], "char", "zh", True, True, 1, 100)
    assert chars.units("房间 干净") == ["房", "间", "干", "净"]


def test_vocab_cutoffs_and_unknown_token():
    v = Vocab.build([["a", "a", "b", "c"], ["a", "b"]], min_freq=2, max_size=10)
    assert v.units == ["<pad>", "<unk>", "a", "b"]
    assert v.encode(["a", "zzz", "b"]).tolist() == [2, 1, 3]
    assert len(Vocab.build([["a", "a", "b", "b", "c"]], min_freq=1, max_size=3)) == 3


def test_ngram_index_is_exact_and_respects_min_df():
    docs = [np.array([2, 3, 4]), np.array([2, 3]), np.array([5])]
    idx = NgramIndex.fit(docs, 2, min_df=2)
    assert len(idx) == 3  # unigrams 2 and 3 and bigram (2,3) occur in two texts
    seqs = idx.sequences([np.array([2, 3, 9]), np.array([9])], offset=1)
    assert sorted(seqs[0].tolist()) == [1, 2, 3] and seqs[1].tolist() == []
    counts = idx.counts([np.array([2, 2, 3])]).toarray()
    assert sorted(counts[0].tolist()) == [1.0, 1.0, 2.0]


def test_word_vectors_glove_and_word2vec_formats(tmp_path):
    vocab = Vocab(["<pad>", "<unk>", "good", "bad", "meh"])
    (tmp_path / "glove.txt").write_text("good 1 2 3\nbad -1 -2 -3\nother 0 0 0\n")
    m, found = load_vectors(tmp_path / "glove.txt", vocab)
    assert found == 2 and m.shape == (5, 3)
    assert m[2].tolist() == [1, 2, 3] and m[0].tolist() == [0, 0, 0]
    (tmp_path / "w2v.txt").write_text("2 3\ngood 1 2 3\nmeh 4 5 6\n")
    m, found = load_vectors(tmp_path / "w2v.txt", vocab)
    assert found == 2 and m[4].tolist() == [4, 5, 6]
    (tmp_path / "bad.txt").write_text("good 1 2 3\nbad 1 2\n")
    with pytest.raises(DataError, match=r"bad\.txt:2"):
        load_vectors(tmp_path / "bad.txt", vocab)


def test_records_json_roundtrip_of_label_map(tmp_path):
    m = LabelMap([0, 1, "x"])
    m.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json").names == [0, 1, "x"]
    assert json.loads((tmp_path / "labels.json").read_text())["labels"] == [0, 1, "x"]


@pytest.mark.parametrize(("labels", "bad_line", "other_line"), [
    (["1", "positive", "0"], 3, 2),  # csv: "1" is a number, "positive" a word
    (["positive", "negative", "1"], 4, 2),
    (["1.0", "0", "1"], 3, 2),  # "1.0" is not the integer 1: a word next to numbers
])
def test_labels_mixing_numbers_and_words_are_refused(tmp_path, labels, bad_line, other_line):
    p = tmp_path / "mixed.csv"
    p.write_text("text,label\n" + "".join(f"text {i},{lab}\n" for i, lab in enumerate(labels)), encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_labeled(p, "text", "label")
    message = str(err.value)
    assert message.startswith(f"{p}:{bad_line}: label ") and f"{p}:{other_line} has the label" in message
    assert "mixes numbers and words" in message


def test_labels_differing_only_in_case_are_refused(tmp_path):
    p = write_jsonl(tmp_path / "case.jsonl", [{"text": "a", "label": "positive"}, {"text": "b", "label": "negative"},
                                              {"text": "c", "label": "Positive"}])
    with pytest.raises(DataError, match=r"case\.jsonl:3: label 'Positive' differs only in case from 'positive' at "
                                        r".*case\.jsonl:1"):
        read_labeled(p, "text", "label")


def test_signed_integer_labels_are_numbers(tmp_path):
    p = tmp_path / "svm.tsv"
    p.write_text("text\tlabel\ngood\t+1\nbad\t-1\n", encoding="utf-8")
    assert read_labeled(p, "text", "label").labels == [1, -1]


def test_a_label_field_of_ids_is_refused(tmp_path):
    recs = [{"text": f"review {i}", "id": f"r{i}"} for i in range(40)]
    d = read_labeled(write_jsonl(tmp_path / "ids.jsonl", recs), "text", "id")
    with pytest.raises(DataError, match=r"40 different labels among 40 records.*looks like ids or free text"):
        LabelMap.from_labels(d.labels, "ids.jsonl")
    many = [{"text": f"t {i}", "label": f"c{i % 25}"} for i in range(100)]  # 25 classes of 4: fine
    assert len(LabelMap.from_labels(read_labeled(write_jsonl(tmp_path / "ok.jsonl", many), "text", "label").labels,
                                    "ok.jsonl")) == 25


def test_reader_reports_files_and_encoding(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_bytes("text,label\nGrüße,1\nschön,0\n".encode("latin-1"))
    (tmp_path / "d" / "notes.txt.bak").write_text("x")
    d = read_labeled(tmp_path / "d", "text", "label")
    assert d.texts == ["Grüße", "schön"]
    assert d.report.decoded == {"cp1252 (detected)": [str(tmp_path / "d" / "a.csv")]}
    assert [(p.name, r) for p, r in d.report.skipped] == [("notes.txt.bak", "unsupported extension .bak")]
