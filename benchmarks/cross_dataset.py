"""Do the classifier's defaults hold on data they were not chosen on? Leave one dataset out.

    python benchmarks/cross_dataset.py --data-root ../shared/data [--datasets sst2,imdb-head,chn-short,chn-long]
        [--settings default,linear,linear+fasttext] [--max-train N] [--max-test N] [--folds K] [--threads 1]

Sentiment-like sets are derived at run time, in a temporary folder, from the files under DIR
(nothing is written next to the data):

* `sst2`: SST-2's training sentences; scored on its dev set (872 sentences).
* `imdb-head` / `imdb-tail`: each IMDB review cut to its opening (or closing) sentences, at most
  `--words` (40) words, labeled by the whole review's label: short and noisy (an opening often
  only tells the plot), a length regime unlike the full reviews. Train from IMDB's training
  reviews, test from its test reviews.
* `chn-short` / `chn-long`: ChnSentiCorp's hotel reviews split by length at the median character
  count of its training reviews (short: at most the median), train and test files each split at
  that same threshold: two domains of one source, the long one with more negative reviews.

Every set is cut to a seeded random sample of `--max-train` training and `--max-test` test texts.
For each dataset and each setting (a named set of `--section.field` overrides, see SETTINGS) the
benchmark measures the setting's k-fold cross-validated accuracy on the (sampled) training texts
only, each fold a full `lmforge classify` run, stacking included, trained on k-1 parts and
scored on the part it did not see, then trains it on all the training texts and scores it on the
test set, next to the TF-IDF + logistic regression baseline of benchmarks/classify.py (same
texts). One JSON line per (dataset, setting).

Leave one dataset out: for each dataset, the setting with the best mean cross-validated accuracy
on the OTHER datasets is the one that would have been chosen without it; its test accuracy there
is compared with the current default's. One JSON line per held-out dataset, then one final line.
Training is by epochs (no setting here is time-budgeted), so accuracies do not depend on the
load of the machine; times do.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The TF-IDF + LR baseline and the one-run trainer of the classification benchmark, reused as they are.
_spec = importlib.util.spec_from_file_location("bench_classify", ROOT / "benchmarks" / "classify.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

# Candidate defaults. 'default' is `lmforge classify train` with no option: on these small samples
# it resolves to linear + fastText + BiLSTM (vectors from the training texts) with out-of-fold
# stacking (5 folds) when the sample is small enough (see lmforge/classify/run.py plan_run).
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "default-split": {"model.stacking": "split"},
    "linear": {"model.kind": "linear"},
    "linear+fasttext": {"model.kind": "ensemble", "model.members": "linear,fasttext", "model.stacking": "split"},
    "linear+fasttext-oof": {"model.kind": "ensemble", "model.members": "linear,fasttext", "model.stacking": "oof"},
    "linear+fasttext+bilstm": {"model.kind": "ensemble", "model.members": "linear,fasttext,bilstm",
                               "text.vectors": "train", "model.stacking": "split"},
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TAG = re.compile(r"<[^>]+>")


# --- derived sets: pure functions of records, so they can be tested on tiny inputs ---------------


def sentences(text: str) -> list[str]:
    """A review's sentences: HTML tags become spaces, then a split after . ! or ? and a space."""
    flat = " ".join(_TAG.sub(" ", text).split())
    return [s for s in _SENTENCE_END.split(flat) if s]


def review_part(text: str, words: int, tail: bool = False) -> str:
    """The opening (or closing) whole sentences of a review that fit in `words` words; a first (or
    last) sentence longer than that is cut to its first (or last) `words` words."""
    parts = sentences(text)
    if tail:
        parts = parts[::-1]
    kept: list[str] = []
    count = 0
    for s in parts:
        n = len(s.split())
        if kept and count + n > words:
            break
        kept.append(s)
        count += n
    if tail:
        kept = kept[::-1]
    tokens = " ".join(kept).split()
    return " ".join(tokens[-words:] if tail else tokens[:words])


def review_parts(records: list[dict], words: int, tail: bool = False) -> list[dict]:
    """Each record's text cut to its opening (closing) sentences; the review's label kept."""
    out = []
    for r in records:
        text = review_part(r["text"], words, tail)
        if text:
            out.append({"text": text, "label": r["label"]})
    return out


def median_length(records: list[dict]) -> int:
    lengths = sorted(len(r["text"]) for r in records)
    return lengths[(len(lengths) - 1) // 2]


def split_by_length(records: list[dict], threshold: int) -> tuple[list[dict], list[dict]]:
    """(texts of at most `threshold` characters, longer texts), order and labels kept."""
    short = [r for r in records if len(r["text"]) <= threshold]
    long = [r for r in records if len(r["text"]) > threshold]
    return short, long


def sample(records: list[dict], n: int, seed: int) -> list[dict]:
    if not n or n >= len(records):
        return list(records)
    picked = list(records)
    random.Random(seed).shuffle(picked)
    return picked[:n]


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def derive(name: str, root: Path, words: int) -> tuple[list[dict], list[dict], str]:
    """(train records, test records, language) of a derived set."""
    if name == "sst2":
        return read_jsonl(root / "sst2" / "train.jsonl"), read_jsonl(root / "sst2" / "dev.jsonl"), "en"
    if name in ("imdb-head", "imdb-tail"):
        tail = name == "imdb-tail"
        return (review_parts(read_jsonl(root / "imdb" / "train.jsonl.gz"), words, tail),
                review_parts(read_jsonl(root / "imdb" / "test.jsonl.gz"), words, tail), "en")
    if name in ("chn-short", "chn-long"):
        train, test = read_jsonl(root / "chnsenticorp" / "train.jsonl"), read_jsonl(root / "chnsenticorp" / "test.jsonl")
        threshold = median_length(train)
        part = 0 if name == "chn-short" else 1
        return split_by_length(train, threshold)[part], split_by_length(test, threshold)[part], "zh"
    raise SystemExit(f"unknown dataset {name!r}; choose from sst2, imdb-head, imdb-tail, chn-short, chn-long")


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) + "\n"
                            for r in records), encoding="utf-8")
    return path


# --- measuring -----------------------------------------------------------------------------------


def train_and_score(dataset: str, setting: str, train: Path, test: Path, out: Path, threads: int,
                    verbose: bool) -> dict:
    spec = {"dataset": dataset, "model": setting, "threads": threads, "verbose": verbose, "preset": None,
            "overrides": {"data.path": str(train), "data.test_path": str(test), "out": str(out),
                          **SETTINGS[setting]}}
    return bench.run_one(spec)


def measure(dataset: str, setting: str, folder: Path, folds: int, args) -> dict:
    """Cross-validated accuracy on the training texts, then the test accuracy of a model on all of them."""
    t0 = time.perf_counter()
    cv = []
    for i in range(folds):
        d = folder / f"fold_{i + 1}"
        cv.append(train_and_score(dataset, setting, d / "train.jsonl", d / "held.jsonl",
                                  folder / "runs" / setting / f"fold_{i + 1}", args.threads, args.verbose)["accuracy"])
    cv_s = time.perf_counter() - t0
    line = train_and_score(dataset, setting, folder / "train.jsonl", folder / "test.jsonl",
                           folder / "runs" / setting / "final", args.threads, args.verbose)
    return {"dataset": dataset, "setting": setting, "cv_accuracy": round(sum(cv) / len(cv), 4),
            "cv_fold_accuracy": cv, "accuracy": line["accuracy"], "train_s": line["train_s"],
            "cv_s": round(cv_s, 1), "members": line["members"], "stacking": line["stacking"].get("method"),
            "n_test": line["n"]}


def prepare(name: str, folder: Path, args) -> dict:
    """Write the sampled train/test files and the k fold files of a dataset; its baseline."""
    from lmforge.classify.data import kfold_splits
    import numpy as np

    train, test, language = derive(name, Path(args.data_root), args.words)
    train, test = sample(train, args.max_train, args.seed), sample(test, args.max_test, args.seed + 1)
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(test, folder / "test.jsonl")
    names = sorted({str(r["label"]) for r in train})
    y = np.array([names.index(str(r["label"])) for r in train])
    for i, (tr, te) in enumerate(kfold_splits(y, args.folds, args.seed)):
        write_jsonl([train[j] for j in tr], folder / f"fold_{i + 1}" / "train.jsonl")
        write_jsonl([train[j] for j in te], folder / f"fold_{i + 1}" / "held.jsonl")
    base = bench.baseline(folder / "train.jsonl", folder / "test.jsonl", language)
    positive = sum(str(r["label"]) == "1" for r in train) / len(train)
    mean_chars = sum(len(r["text"]) for r in train) / len(train)
    print(f"{name}: {len(train)} train / {len(test)} test texts, {positive:.0%} positive, "
          f"{mean_chars:.0f} characters on average; baseline {base['baseline_accuracy']:.4f}",
          file=sys.stderr, flush=True)
    return {**base, "n_train": len(train), "positive_share": round(positive, 3), "mean_chars": round(mean_chars)}


def leave_one_out(rows: dict[tuple[str, str], dict], datasets: list[str], settings: list[str]) -> list[dict]:
    """For each dataset: the setting best on the other datasets' cross-validation, scored on it."""
    out = []
    for held in datasets:
        others = [d for d in datasets if d != held]
        complete = [s for s in settings if all((d, s) in rows for d in datasets)]
        if not others or not complete:
            continue
        mean_cv = {s: sum(rows[(d, s)]["cv_accuracy"] for d in others) / len(others) for s in complete}
        # Ties go to the current default, then to the earlier setting.
        chosen = max(complete, key=lambda s: (mean_cv[s], s == "default", -settings.index(s)))
        line = {"held_out": held, "chosen": chosen, "chosen_accuracy": rows[(held, chosen)]["accuracy"],
                "chosen_margin": rows[(held, chosen)]["margin"],
                "others_mean_cv": {s: round(v, 4) for s, v in mean_cv.items()}}
        if "default" in complete:
            line["default_accuracy"] = rows[(held, "default")]["accuracy"]
            line["gain_over_default"] = round(100 * (line["chosen_accuracy"] - line["default_accuracy"]), 2)
        out.append(line)
    return out


def reuse_rows(paths: list[str], args) -> dict[tuple[str, str], dict]:
    """Rows printed by earlier runs with the same sizes (e.g. settings run in two processes)."""
    rows = {}
    for path in paths:
        for text in Path(path).read_text(encoding="utf-8").splitlines():
            line = json.loads(text) if text.startswith("{") else {}
            same = all(line.get(k) == (getattr(args, k) or None) for k in ("max_train", "max_test", "folds"))
            if "cv_accuracy" in line and same:
                rows[(line["dataset"], line["setting"])] = line
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="folder holding imdb/, sst2/ and chnsenticorp/")
    ap.add_argument("--datasets", default="sst2,imdb-head,chn-short,chn-long",
                    help="comma-separated: sst2, imdb-head, imdb-tail, chn-short, chn-long")
    ap.add_argument("--settings", default="default,linear,linear+fasttext",
                    help=f"comma-separated, from: {', '.join(SETTINGS)}")
    ap.add_argument("--max-train", type=int, default=2000, help="seeded sample of training texts per set (0: all)")
    ap.add_argument("--max-test", type=int, default=1000, help="seeded sample of test texts per set (0: all)")
    ap.add_argument("--folds", type=int, default=3, help="cross-validation folds on the training texts")
    ap.add_argument("--words", type=int, default=40, help="longest IMDB opening/closing, in words")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: PyTorch's default)")
    ap.add_argument("--out", help="folder for derived sets and runs (default: a temporary one)")
    ap.add_argument("--verbose", action="store_true", help="show each run's progress on stderr")
    ap.add_argument("--rows", action="append",
                    help="a file of JSON lines printed by an earlier run with the same sizes: its rows are reused, "
                         "not measured again (repeatable)")
    args = ap.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    settings = [s for s in args.settings.split(",") if s]
    for s in settings:
        if s not in SETTINGS:
            raise SystemExit(f"unknown setting {s!r}; choose from {', '.join(SETTINGS)}")
    if args.folds < 2:
        raise SystemExit("--folds must be at least 2")
    if not args.verbose:
        os.environ["LMFORGE_NO_PROGRESS"] = "1"
    t0 = time.perf_counter()
    out = Path(args.out or tempfile.mkdtemp(prefix="lmforge-cross-dataset-"))
    rows = reuse_rows(args.rows or [], args)
    bases: dict[str, dict] = {}
    # Setting-major: an interrupted run still has every dataset for the settings it finished.
    for setting in settings:
        for name in datasets:
            if (name, setting) in rows:  # reused: printed again so that this run's output is the whole table
                print(json.dumps(rows[(name, setting)], ensure_ascii=False), flush=True)
                continue
            if name not in bases:
                bases[name] = prepare(name, out / name, args)
            try:
                row = measure(name, setting, out / name, args.folds, args)
            except Exception as e:  # one failing run must not lose the table
                print(json.dumps({"dataset": name, "setting": setting, "error": f"{type(e).__name__}: {e}"}),
                      flush=True)
                continue
            row.update(bases[name], margin=round(100 * (row["accuracy"] - bases[name]["baseline_accuracy"]), 2),
                       max_train=args.max_train or None, max_test=args.max_test or None, folds=args.folds)
            rows[(name, setting)] = row
            print(json.dumps(row, ensure_ascii=False), flush=True)
    lodo = leave_one_out(rows, datasets, settings)
    for line in lodo:
        print(json.dumps(line), flush=True)
    margins = {s: round(sum(rows[(d, s)]["margin"] for d in datasets) / len(datasets), 2)
               for s in settings if all((d, s) in rows for d in datasets)}
    print(json.dumps({
        "benchmark": "cross_dataset", "datasets": datasets, "settings": settings, "max_train": args.max_train,
        "max_test": args.max_test, "folds": args.folds, "mean_margin": margins,
        "lodo_choices": {line["held_out"]: line["chosen"] for line in lodo},
        "lodo_mean_gain_over_default": (round(sum(line["gain_over_default"] for line in lodo) / len(lodo), 2)
                                        if lodo and all("gain_over_default" in line for line in lodo) else None),
        "default_chosen_everywhere": bool(lodo) and all(line["chosen"] == "default" for line in lodo),
        "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
