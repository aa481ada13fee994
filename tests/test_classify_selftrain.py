"""Self-training on unlabeled text: which pseudo-labels are taken, and what the run does with them."""

import json
import random
import shutil

import numpy as np
import pytest

from classify_synth import tiny_overrides, write_jsonl
from lmforge.classify.config import ClassifyConfig
from lmforge.classify.run import resolve_auto, train_classifier
from lmforge.classify.selftrain import select_pseudo
from lmforge.config import load_config
from lmforge.errors import ConfigError

FILLER = "the movie film plot actor scene story was is and a it this very quite with of".split()
KNOWN = {0: ["bad", "awful", "poor"], 1: ["good", "great", "fine"]}  # cues the labeled texts use
NEW = {0: ["dreadful", "dull", "tedious"], 1: ["superb", "lovely", "brilliant"]}  # cues they never use


def _texts(n: int, seed: int, cues) -> list[dict]:
    """Filler texts with one cue word drawn from each cue table in `cues` for a random class."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.randrange(2)
        words = [rng.choice(FILLER) for _ in range(rng.randrange(4, 12))]
        for table in cues:
            words.insert(rng.randrange(len(words) + 1), rng.choice(table[y]))
        out.append({"text": " ".join(words), "label": y})
    return out


def test_select_pseudo_takes_confident_rows_most_confident_first_within_class_shares():
    proba = np.array([[.95, .05], [.2, .8], [.01, .99], [.97, .03], [.6, .4], [.08, .92], [.05, .95]])
    labeled_y = np.array([0, 1, 1, 1])  # class shares 1/4 and 3/4
    idx, cls = select_pseudo(proba, labeled_y, 2, threshold=0.9, max_texts=4)
    # Class 0 may take round(4/4) = 1 of rows 0 (.95) and 3 (.97): row 3. Class 1 takes 3 of rows
    # 2 (.99), 5 (.92) and 6 (.95); row 1 (.8) and row 4 (.6) are below the threshold.
    assert idx.tolist() == [2, 3, 5, 6] and cls.tolist() == [1, 0, 1, 1]
    idx, cls = select_pseudo(proba, labeled_y, 2, threshold=0.96, max_texts=100)
    assert idx.tolist() == [2, 3] and cls.tolist() == [1, 0]
    idx, _ = select_pseudo(proba, labeled_y, 2, threshold=0.9, max_texts=0)
    assert idx.tolist() == []


@pytest.mark.slow
def test_self_training_learns_cue_words_only_the_unlabeled_texts_carry(tmp_path):
    # The labeled texts use three cue words per class; the unlabeled ones pair a known cue with a new
    # one; the test texts carry new cues only. Trained on the labeled texts the classifier cannot read
    # the test texts (the new words have no weight); one round of self-training labels the unlabeled
    # texts by their known cue, and the new words it then learns read the test texts.
    train = write_jsonl(tmp_path / "train.jsonl", _texts(60, 0, [KNOWN, KNOWN]))
    test_recs = _texts(120, 2, [NEW])
    test = write_jsonl(tmp_path / "test.jsonl", test_recs)
    unl = _texts(400, 1, [KNOWN, NEW])
    copies = [r["text"] for r in test_recs[:5]]  # test texts given as unlabeled: never pseudo-labeled
    (tmp_path / "u.txt").write_text("\n".join([r["text"] for r in unl] + copies) + "\n", encoding="utf-8")
    common = {"data.path": str(train), "data.test_path": str(test), "model.kind": "linear", "train.track": "none",
              "model.linear.C": 1}  # sure enough of its labels for the 0.9 threshold (a chosen C is smaller here)

    plain = train_classifier(load_config(None, {**common, **tiny_overrides(tmp_path / "plain")}, cls=ClassifyConfig),
                             progress=False)
    over = tiny_overrides(tmp_path / "st", **{"self_train.rounds": 1, "data.unlabeled": str(tmp_path / "u.txt"),
                                              "self_train.max_ratio": 3})
    st = train_classifier(load_config(None, {**common, **over}, cls=ClassifyConfig), progress=False)

    assert plain.test["accuracy"] < 0.7, plain.test  # the new cue words are unknown to it
    assert st.test["accuracy"] > 0.9, st.test
    facts = st.member_facts["self_train"]["rounds"][0]
    assert facts["unlabeled"] == 405 and facts["held_out_copies_left_out"] == 5
    rows = [json.loads(line) for line in (tmp_path / "st" / "self_train" / "round_1" / "pseudo.jsonl").open()]
    assert len(rows) == facts["taken"] <= 3 * 54  # max_ratio x the 54 texts left after the validation split
    assert not set(copies) & {r["text"] for r in rows}
    truth = {r["text"]: r["label"] for r in unl}
    assert np.mean([truth[r["text"]] == r["label"] for r in rows]) > 0.95  # the pseudo-labels are right
    # The final linear model was refitted on every labeled text plus the pseudo-labeled ones; the
    # round's own models were removed (only its labels and facts stay).
    assert st.member_facts["linear"]["training_texts"] == 60 + len(rows)
    assert not (tmp_path / "st" / "self_train" / "round_1" / "linear").exists()

    # Interrupted after the round (its labels written, the final model not): the resumed run keeps the
    # round's pseudo-labels instead of labelling again, and ends with the same model.
    for name in ("metrics.json", "ensemble.json"):
        (tmp_path / "st" / name).unlink()
    shutil.rmtree(tmp_path / "st" / "linear")
    resumed = train_classifier(resume=tmp_path / "st", progress=False)
    assert resumed.test["accuracy"] == st.test["accuracy"]
    assert resumed.member_facts["self_train"]["rounds"][0]["taken"] == facts["taken"]
    assert resumed.member_facts["linear"]["training_texts"] == 60 + len(rows)


def test_self_training_needs_unlabeled_text_and_no_budget():
    cfg = ClassifyConfig()
    cfg.self_train.rounds = 1
    with pytest.raises(ConfigError, match="self_train.rounds.*--unlabeled"):
        resolve_auto(cfg, ["a text"] * 10)
    cfg.data.unlabeled = "u.txt"
    cfg.train.run_budget_s = 60
    with pytest.raises(ConfigError, match="self_train.rounds.*--time"):
        resolve_auto(cfg, ["a text"] * 10)
    cfg.train.run_budget_s = 0
    assert resolve_auto(cfg, ["a text"] * 10).data.unlabeled == "u.txt"  # self-training reads it: accepted
