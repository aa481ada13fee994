"""The derived sentiment sets of benchmarks/cross_dataset.py: deterministic, label-preserving, cut
where they say (review openings and closings by whole sentences, Chinese reviews by length)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_cross_dataset", ROOT / "benchmarks" / "cross_dataset.py")
cd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cd)

REVIEWS = [
    {"text": "A slow start.<br /><br />The middle drags on and on! But the end? Wonderful, truly moving.", "label": 1},
    {"text": "I wanted to like it. I did not. Avoid.", "label": 0},
    {"text": " ".join(["word"] * 50) + ". Short end.", "label": 0},
]


def test_openings_and_closings_keep_whole_sentences_and_labels():
    heads = cd.review_parts(REVIEWS, words=8)
    assert [r["label"] for r in heads] == [1, 0, 0]
    # "A slow start." (3) + "The middle drags on and on!" (6) is over 8 words: the opening stops at one sentence.
    assert heads[0]["text"] == "A slow start."
    assert heads[1]["text"] == "I wanted to like it. I did not."
    assert heads[2]["text"] == " ".join(["word"] * 8)  # a first sentence over the limit is cut to its words
    tails = cd.review_parts(REVIEWS, words=8, tail=True)
    assert [r["label"] for r in tails] == [1, 0, 0]
    assert tails[0]["text"] == "But the end? Wonderful, truly moving."
    assert tails[1]["text"] == "I did not. Avoid."  # all three sentences would be 9 words
    assert tails[2]["text"] == "Short end."
    assert "<br" not in " ".join(r["text"] for r in heads + tails)
    assert cd.review_parts(REVIEWS, words=8) == heads  # deterministic


def test_length_split_is_a_partition_at_the_median():
    records = [{"text": "好" * n, "label": n % 2} for n in (5, 1, 9, 3, 7, 2)]
    threshold = cd.median_length(records)
    assert threshold == 3
    short, long = cd.split_by_length(records, threshold)
    assert [len(r["text"]) for r in short] == [1, 3, 2]  # order kept
    assert [len(r["text"]) for r in long] == [5, 9, 7]
    assert all(r["label"] == len(r["text"]) % 2 for r in short + long)


def test_sample_is_seeded_and_leaves_the_input_alone():
    records = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    a, b = cd.sample(records, 5, seed=3), cd.sample(records, 5, seed=3)
    assert a == b and len(a) == 5 and a != cd.sample(records, 5, seed=4)
    assert [r["text"] for r in records] == [f"t{i}" for i in range(20)]
    assert cd.sample(records, 0, seed=3) == records


def test_leave_one_dataset_out_never_uses_the_held_out_set():
    # Setting b is far better on the held-out set 'x' but worse elsewhere: choosing for 'x' must not see it.
    cv = {("x", "default"): 0.5, ("x", "b"): 0.99, ("y", "default"): 0.8, ("y", "b"): 0.7,
          ("z", "default"): 0.8, ("z", "b"): 0.7}
    rows = {k: {"cv_accuracy": v, "accuracy": v, "margin": 0.0} for k, v in cv.items()}
    lines = {line["held_out"]: line for line in cd.leave_one_out(rows, ["x", "y", "z"], ["default", "b"])}
    assert lines["x"]["chosen"] == "default" and lines["x"]["gain_over_default"] == 0.0
    # Held out 'y': x and z give b (0.99 + 0.7) / 2 > default (0.5 + 0.8) / 2.
    assert lines["y"]["chosen"] == "b" and lines["y"]["gain_over_default"] == -10.0
