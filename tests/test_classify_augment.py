"""Augmentation of classifier training texts (`--augment`) and decontamination of test/validation files."""

import json
from collections import Counter

import numpy as np
import pytest

from classify_synth import sentiment_records, tiny_overrides, write_jsonl
from lmforge.classify import run as clf_run
from lmforge.classify.augment import Units, augment_texts, check_vectors
from lmforge.classify.config import AugmentConfig, ClassifyConfig
from lmforge.classify.data import Labeled, contamination
from lmforge.classify.run import train_classifier
from lmforge.config import load_config
from lmforge.errors import ConfigError

EN = Units("en", "word", True, True)
ZH = Units("zh", "word", True, True)
EN_TEXTS = ["the movie was wonderful and the actors were great fun to watch from start to end",
            "a dull lifeless film that never finds its rhythm and wastes a good cast",
            "superb acting , a brilliant script and a lovely score"]
ZH_TEXTS = ["房间很干净，服务也非常热情，下次还会再来。", "早餐太差，酒店应该重视一下这个问题了。",
            "位置不错，但是隔音很差，晚上很吵。"]


def _augment(texts, methods, units=EN, seed=0, copies=2, **kw):
    y = np.arange(len(texts)) % 2
    out, out_y, source = augment_texts(texts, y, AugmentConfig(methods=methods, copies=copies, **kw), units, seed)
    assert out[:len(texts)] == list(texts)  # the originals first, unchanged
    assert len(out) == len(texts) * (copies + 1)
    assert (out_y == y[source]).all() and (source[:len(texts)] == np.arange(len(texts))).all()  # labels kept
    # Chinese copies are compared by characters: jieba may cut a changed text into other words.
    view = units.split if units is EN else (lambda t: [c for c in t if not c.isspace()])
    return [(view(texts[s]), view(t)) for s, t in zip(source[len(texts):], out[len(texts):])]


def _is_subsequence(short, long):
    it = iter(long)
    return all(u in it for u in short)


@pytest.mark.parametrize("units,texts", [(EN, EN_TEXTS), (ZH, ZH_TEXTS)], ids=["en", "zh"])
def test_each_method_alters_the_words_as_it_says(units, texts):
    for src, new in _augment(texts, "swap", units):
        assert Counter(src) == Counter(new) and src != new
    for src, new in _augment(texts, "delete", units):
        assert 0 < len(new) < len(src) and _is_subsequence(new, src)
    for src, new in _augment(texts, "insert", units):
        assert len(new) > len(src) and _is_subsequence(src, new) and set(new) == set(src)  # no vectors: its own words
    for src, new in _augment(texts, "noise", units):
        if units is ZH:  # characters dropped, repeated or exchanged inside words
            assert new != src and set(new) <= set(src) and abs(len(new) - len(src)) <= 3
            continue
        changed = [(a, b) for a, b in zip(src, new) if a != b]
        assert len(new) == len(src) and changed
        for a, b in changed:  # one character dropped, repeated or exchanged with its neighbour
            assert abs(len(a) - len(b)) <= 1 and (Counter(a) == Counter(b) or set(b) <= set(a))
    if units is ZH:  # joined without spaces, like the source texts
        assert all(" " not in t for t in augment_texts(texts, np.zeros(3), AugmentConfig("swap"), units, 0)[0])


def test_copies_depend_only_on_seed_and_source_text():
    both = "swap,delete,insert,noise"
    first = augment_texts(EN_TEXTS, np.zeros(3), AugmentConfig(both, copies=3), EN, 7)[0]
    assert first == augment_texts(EN_TEXTS, np.zeros(3), AugmentConfig(both, copies=3), EN, 7)[0]
    assert first != augment_texts(EN_TEXTS, np.zeros(3), AugmentConfig(both, copies=3), EN, 8)[0]
    assert first == augment_texts(EN_TEXTS, np.zeros(3), AugmentConfig(both, copies=3, seed=7), EN, 99)[0]
    # A text gets the same copies whatever it is augmented with (so in every fold).
    alone = augment_texts(EN_TEXTS[1:2], np.zeros(1), AugmentConfig(both, copies=3), EN, 7)[0]
    assert alone[1:] == [t for t in first[3:] if t in alone[1:]] and len(alone) == 4
    assert set(alone[1:]) <= set(first[3:])


def _vectors_file(path):
    # "great"/"superb" and "film"/"movie" are near (cosine 0.99); "good"/"bad" only 0.2 (below 0.5).
    rows = {"great": [1, 0.1, 0, 0], "superb": [1, 0.2, 0, 0], "movie": [0, 1, 0.1, 0], "film": [0, 1, 0.2, 0],
            "good": [0, 0, 1, 0], "bad": [0, 0, 0.2, 0.98], "the": [0.5, -0.5, -0.5, -0.5]}
    path.write_text(f"{len(rows)} 4\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()))
    return str(path)


def test_synonyms_come_from_near_vectors_only(tmp_path):
    vectors = _vectors_file(tmp_path / "v.txt")
    texts = ["a great movie with a good cast", "good film , great fun"]
    allowed = {"great": {"superb"}, "movie": {"film"}, "film": {"movie"}, "superb": {"great"}}
    seen = set()
    for seed in range(5):
        for src, new in _augment(texts, "synonym", seed=seed, vectors=vectors, strength=0.5):
            assert len(new) == len(src)
            for a, b in zip(src, new):
                if a != b:
                    assert b in allowed[a]  # never good -> bad: their similarity is below min_similarity
                    seen.add((a, b))
    assert ("great", "superb") in seen and ("movie", "film") in seen
    for src, new in _augment(texts, "insert", vectors=vectors):
        extra = Counter(new) - Counter(src)
        assert set(extra) <= {"superb", "film", "movie", "great", "good", "a", "with", "cast", ",", "fun"}


def test_synonym_without_vectors_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.augment.vectors") as e:
        check_vectors(AugmentConfig("swap,synonym"), None)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data.augment.vectors"):  # 'train' vectors are made later, per member
        check_vectors(AugmentConfig("synonym"), "train")
    with pytest.raises(ConfigError, match="nowhere.txt"):
        check_vectors(AugmentConfig("synonym", vectors=str(tmp_path / "nowhere.txt")), None)
    check_vectors(AugmentConfig("synonym"), _vectors_file(tmp_path / "v.txt"))  # text.vectors serves too


@pytest.mark.slow
def test_stacking_folds_never_train_on_copies_of_their_held_out_texts(tmp_path, monkeypatch):
    records = sentiment_records(80, seed=0)
    for i, r in enumerate(records):
        r["text"] += f" row{i}"  # swaps keep every word: each copy still names its source row
    train = write_jsonl(tmp_path / "train.jsonl", records)
    folds_seen, calls = [], []
    real_kfold, real_fit = clf_run.kfold_splits, clf_run._fit_members

    def kfold(y, k, seed):
        folds = real_kfold(y, k, seed)
        folds_seen.append(folds)
        return folds

    def fit_members(cfg, part, y, val, val_y, *args, **kw):
        out = real_fit(cfg, part, y, val, val_y, *args, **kw)
        calls.append((list(part.texts), list(val.texts), out[3]))
        return out

    def rows(texts):
        return {w for t in texts for w in t.split() if w.startswith("row")}

    trained = []
    real_linear = clf_run.train_linear
    monkeypatch.setattr(clf_run, "train_linear", lambda cfg, texts, *a, **k: trained.append(list(texts))
                        or real_linear(cfg, texts, *a, **k))
    monkeypatch.setattr(clf_run, "kfold_splits", kfold)
    monkeypatch.setattr(clf_run, "_fit_members", fit_members)
    over = tiny_overrides(tmp_path / "run", **{"data.path": str(train), "model.kind": "ensemble",
                                               "model.members": "linear,fasttext", "model.stacking": "oof",
                                               "model.stack_folds": 2, "train.epochs": 2, "model.linear.C": 1.0,
                                               "data.augment.methods": "swap", "data.augment.copies": 2,
                                               "data.augment.linear": True})
    train_classifier(load_config(None, over, cls=ClassifyConfig), progress=False)
    originals = {r["text"] for r in records}
    assert len(calls) == 3 and len(folds_seen) == 1  # the final members, then one call per fold
    for (part, val, facts), held in zip(calls, [None, *[te for _, te in folds_seen[0]]]):
        assert set(val) <= originals  # validation texts are never altered
        assert not rows(part) & rows(val)
        assert facts["fasttext"]["training_texts"] == 3 * len(part)  # each training text and its two copies
        if held is not None:
            assert not rows(part) & {f"row{i}" for i in held.tolist()}
    # Every linear fit (split part, refit, each fold's fit and refit) saw copies, never of a fold's held-out rows.
    assert len(trained) == 6 and all(len(t) > len(set(t) & originals) for t in trained)
    for texts, held in zip(trained[2:], [te for _, te in folds_seen[0] for _ in (0, 1)]):
        assert not rows(texts) & {f"row{i}" for i in held.tolist()}


def test_contamination_finds_planted_overlap_and_keeps_clean_texts():
    train = Labeled(["the quick brown fox jumps over the lazy dog while the farmer sleeps in the warm afternoon sun",
                     "短文本", "房间很干净服务也非常热情下次还会再来我们全家都很满意早餐丰富"], [0, 1, 0])
    held = Labeled(["yesterday the quick brown fox jumps over the lazy dog while the farmer sleeps in the barn",
                    "a completely different review about a film with a long and winding plot twist at the end",
                    "  短文本 ", "总之房间很干净服务也非常热情下次还会再来", "短文本 很好"], [0, 1, 1, 0, 1],
                   [("t.jsonl", i + 1) for i in range(5)], "t.jsonl")
    r = contamination(train, held, 13, "test")
    assert r["indices"] == [0, 2, 3] and r["contaminated"] == 3 and r["exact_copies"] == 1
    assert r["examples"][0]["where"] == "t.jsonl:1"


def test_classify_reports_and_removes_contaminated_test_records(tmp_path):
    records = sentiment_records(120, seed=0)
    clean = sentiment_records(40, seed=1)
    long = [r for r in records if len(r["text"].split()) >= 15][:2]
    test = write_jsonl(tmp_path / "test.jsonl", clean + long)
    train = write_jsonl(tmp_path / "train.jsonl", records)
    base = {"data.path": str(train), "data.test_path": str(test), "model.kind": "linear", "model.linear.C": 1.0}
    train_classifier(load_config(None, tiny_overrides(tmp_path / "a", **base), cls=ClassifyConfig), progress=False)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    planted = sum(r["text"] in {x["text"] for x in records} for r in clean) + len(long)  # random twins count too
    d = m["decontamination"]["test"]
    assert d["contaminated"] >= len(long) and d["contaminated"] == planted and not d["removed"]
    assert m["test"]["n"] == len(clean) + len(long)
    result = train_classifier(load_config(None, tiny_overrides(tmp_path / "b", **base, **{
        "data.decontam_remove": True}), cls=ClassifyConfig), progress=False)
    assert result.test["n"] == len(clean) + len(long) - planted


def test_linear_model_trains_on_the_texts_as_given_unless_asked(tmp_path, monkeypatch):
    records = sentiment_records(60, seed=0)
    train = write_jsonl(tmp_path / "train.jsonl", records)
    trained = []
    real_linear = clf_run.train_linear
    monkeypatch.setattr(clf_run, "train_linear", lambda cfg, texts, *a, **k: trained.append(list(texts))
                        or real_linear(cfg, texts, *a, **k))
    over = tiny_overrides(tmp_path / "run", **{"data.path": str(train), "model.kind": "ensemble",
                                               "model.members": "linear,fasttext", "train.epochs": 1,
                                               "model.linear.C": 1.0, "data.augment.methods": "delete,noise"})
    result = train_classifier(load_config(None, over, cls=ClassifyConfig), progress=False)
    originals = [r["text"] for r in records]
    assert len(trained) == 2 and all(set(t) <= set(originals) for t in trained)  # split part, then all texts
    assert result.member_facts["fasttext"]["training_texts"] == 2 * len(trained[0])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["augment"]["linear"] is False
