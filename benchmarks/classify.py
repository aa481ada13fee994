"""Text-classification benchmark: IMDB, SST-2 and ChnSentiCorp, every model, on this machine's CPU.

    python benchmarks/classify.py --data-root ../shared/data [--datasets imdb,sst2,chnsenticorp]
        [--models default,linear,...] [--time 10m] [--max-train N]

DIR holds imdb/{train,test}.jsonl.gz, sst2/{train,dev,test}.jsonl and chnsenticorp/{train,test}.jsonl.
Each (dataset, model) trains in its own process, so its time and peak RSS are its own, and prints
one JSON line: dataset, model, accuracy, macro_f1, roc_auc, train_s, peak_rss_mb (and a few more),
and `baseline_accuracy`: a scikit-learn TF-IDF + logistic regression trained in the same run on the
same training texts and scored on the same split (`margin`: accuracy minus it, in points).
`--models gpt-indomain,default+gpt` runs the opt-in in-domain GPT rows (see OPT_IN).
`--models self-train` (with `--max-train N`) runs the default with one round of self-training
(`--self_train.rounds 1`), the training texts left out of the sample as its unlabeled text.
`--time 10m` adds a row `time-10m`: `lmforge classify train --time 10m`. `--max-train N` trains
every row and the baseline on a seeded random sample of N training texts (quick checks; the
figures are then not the datasets' own).

Splits: IMDB and ChnSentiCorp hold out 10% of their training set for validation and report the
test set. SST-2 reports the dev set (the usual figure) and uses the labeled sentence-level test
set for validation (early stopping, ensemble weights), so dev is never seen before scoring.
ChnSentiCorp's best model also runs 5-fold cross-validation on its training set.

Reference anchors on this 2-core machine (scikit-learn, TF-IDF word 1-2-grams + logistic
regression, C by 5-fold CV): IMDB 90.68% (NBSVM-style 90.98%), SST-2 dev 82.57%,
ChnSentiCorp (character 1-3-grams) 90.34%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmforge.durations import parse_duration  # noqa: E402
PRESETS = ROOT / "configs" / "classify"


def datasets(root: Path) -> dict[str, dict]:
    return {
        "imdb": {"data.path": root / "imdb" / "train.jsonl.gz", "data.test_path": root / "imdb" / "test.jsonl.gz"},
        "sst2": {"data.path": root / "sst2" / "train.jsonl", "data.valid_path": root / "sst2" / "test.jsonl",
                 "data.test_path": root / "sst2" / "dev.jsonl"},
        "chnsenticorp": {"data.path": root / "chnsenticorp" / "train.jsonl",
                         "data.test_path": root / "chnsenticorp" / "test.jsonl"},
    }


# (model name, preset or None, overrides) per dataset. "default" is `lmforge classify train` with no
# option (what a newcomer gets); "default-split" the same with its ensemble weighed on the
# validation split instead of out-of-fold (identical to "default" where 'auto' picks the split
# anyway: large sets); "best" is the preset lmforge recommends there.
PLAN: dict[str, list[tuple[str, str | None, dict]]] = {
    "imdb": [
        ("default", None, {}),
        ("default-split", None, {"model.stacking": "split"}),
        ("linear", None, {"model.kind": "linear"}),
        ("fasttext", "imdb-fasttext.yaml", {}),
        ("bilstm", "imdb-bilstm.yaml", {}),
        ("best", "imdb-best.yaml", {}),
    ],
    "sst2": [
        ("default", None, {}),
        ("default-split", None, {"model.stacking": "split"}),
        ("linear", None, {"model.kind": "linear"}),
        ("fasttext", "sst2-best.yaml", {"model.kind": "fasttext"}),
        ("bilstm", "sst2-best.yaml", {"model.kind": "bilstm"}),
        ("best", "sst2-best.yaml", {}),
    ],
    "chnsenticorp": [
        ("default", None, {}),
        ("default-split", None, {"model.stacking": "split"}),
        ("linear", "chinese-sentiment.yaml", {"model.kind": "linear"}),
        ("fasttext", "chinese-sentiment.yaml", {"model.kind": "fasttext"}),
        ("bilstm", "chinese-sentiment.yaml", {"model.kind": "bilstm"}),
        ("best", "chinese-sentiment.yaml", {"eval.folds": "5"}),
    ],
}


# Opt-in rows, run only when --models names them: a GPT pretrained on the training texts (in-domain
# pretraining, lmforge.classify.pretrain), fine-tuned alone ("gpt-indomain") or added to the members
# 'auto' picks for small sets ("default+gpt": linear, fastText, BiLSTM on vectors from the texts).
OPT_IN = [
    ("gpt-indomain", None, {"model.kind": "gpt"}),
    ("default+gpt", None, {"model.kind": "ensemble", "model.members": "linear,fasttext,bilstm,gpt",
                           "text.vectors": "train"}),
]


def baseline(train: Path, test: Path, language: str) -> dict:
    """TF-IDF + logistic regression, C by 5-fold cross-validation: word 1-2-grams for English,
    character 1-3-grams for Chinese (the README's anchors)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV

    from lmforge.classify.data import read_labeled

    t0 = time.perf_counter()
    tr, te = read_labeled(str(train), "text", "label"), read_labeled(str(test), "text", "label")
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, **({"analyzer": "char", "ngram_range": (1, 3)}
                                                          if language == "zh" else {"ngram_range": (1, 2)}))
    x = vec.fit_transform(tr.texts)
    y_tr, y_te = [str(v) for v in tr.labels], [str(v) for v in te.labels]
    lr = LogisticRegressionCV(Cs=[0.25, 1.0, 4.0, 16.0, 64.0], cv=5, scoring="accuracy", max_iter=2000).fit(x, y_tr)
    acc = float((lr.predict(vec.transform(te.texts)) == y_te).mean())
    return {"baseline_accuracy": round(acc, 4), "baseline_s": round(time.perf_counter() - t0, 1)}


def subsample(path: Path, n: int, out: Path, seed: int = 0) -> Path:
    """A seeded random sample of n records of a jsonl(.gz) file, written to out; the texts of the
    other records, without their labels, one per line to out's name with .rest.txt (the
    unlabeled text of the `self-train` row)."""
    import gzip
    import random

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    random.Random(seed).shuffle(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines[:n]), encoding="utf-8")
    rest = [" ".join(json.loads(line)["text"].split()) for line in lines[n:]]
    out.with_suffix(".rest.txt").write_text("".join(t + "\n" for t in rest if t), encoding="utf-8")
    return out


def run_one(spec: dict) -> dict:
    """Train and score one model in this process; the figures for its JSON line."""
    sys.path.insert(0, str(ROOT))
    import torch

    from lmforge.classify.config import ClassifyConfig
    from lmforge.classify.run import train_classifier
    from lmforge.config import load_config

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cfg = load_config(spec["preset"], spec["overrides"], cls=ClassifyConfig)
    t0 = time.perf_counter()
    result = train_classifier(cfg, progress=bool(spec.get("verbose")), overwrite=True)  # a re-run replaces its run
    wall = time.perf_counter() - t0
    m = result.test
    line = {
        "dataset": spec["dataset"], "model": spec["model"],
        "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
        "roc_auc": None if m["roc_auc"] is None else round(m["roc_auc"], 4),
        "train_s": round(result.train_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "split": "dev" if spec["dataset"] == "sst2" else "test", "n": m["n"],
        "members": {k: round(w, 2) for k, w in zip(result.members, result.weights)},
        "stacking": {k: v for k, v in (result.stacking or {}).items() if k in ("method", "folds", "folds_done",
                                                                              "stack_s", "split_weights")},
        "wall_s": round(wall, 1), "threads": torch.get_num_threads(),
    }
    if "members" in m:
        line["member_accuracy"] = {k: round(v["accuracy"], 4) for k, v in m["members"].items()}
    st = (result.member_facts or {}).get("self_train")
    if st:
        line["self_train"] = [{k: r[k] for k in ("unlabeled", "above_threshold", "taken", "teacher_valid_accuracy", "s")}
                              for r in st["rounds"]]
    if result.cv:
        line["cv_folds"] = result.cv["folds"]
        for key in ("accuracy", "macro_f1", "roc_auc"):
            if key in result.cv:
                line[f"cv_{key}"] = f"{result.cv[key]['mean']:.4f} ± {result.cv[key]['std']:.4f}"
    return line


def spawn(spec: dict) -> dict | None:
    cmd = [sys.executable, __file__, "--one", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if spec.get("verbose") else subprocess.PIPE,
                          text=True, cwd=ROOT, env={**os.environ, "LMFORGE_NO_PROGRESS": "1"})
    if proc.returncode != 0:
        sys.stderr.write((proc.stderr or "") + proc.stdout[-2000:])
        print(json.dumps({"dataset": spec["dataset"], "model": spec["model"], "error": f"exit {proc.returncode}"}),
              flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", help="folder holding imdb/, sst2/ and chnsenticorp/")
    ap.add_argument("--datasets", default="imdb,sst2,chnsenticorp", help="comma-separated subset to run")
    ap.add_argument("--models", default="", help="comma-separated subset of models (default: all)")
    ap.add_argument("--out", help="folder for the run folders (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per run (0: PyTorch's default). On a CPU shared with other jobs, 1 "
                         "avoids OpenMP threads spinning against each other")
    ap.add_argument("--verbose", action="store_true", help="show each run's progress on stderr")
    ap.add_argument("--time", help="also run `classify train --time DURATION` (a row named time-DURATION)")
    ap.add_argument("--max-train", type=int, default=0,
                    help="train on a seeded random sample of this many training texts (quick checks)")
    ap.add_argument("--self-train-rounds", type=int, default=1, help="rounds of the self-train row (default 1)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one)), ensure_ascii=False))
        return
    if not args.data_root:
        ap.error("--data-root is required")
    root = Path(args.data_root)
    table = datasets(root)
    out = Path(args.out or tempfile.mkdtemp(prefix="lmforge-classify-bench-"))
    wanted = [m for m in args.models.split(",") if m]
    for name in [d for d in args.datasets.split(",") if d]:
        if name not in table:
            raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(table)}")
        paths = {k: str(v) for k, v in table[name].items()}
        if args.max_train:
            paths["data.path"] = str(subsample(Path(paths["data.path"]), args.max_train,
                                               out / name / f"train_{args.max_train}.jsonl"))
        sys.path.insert(0, str(ROOT))
        base = baseline(Path(paths["data.path"]), Path(paths["data.test_path"]),
                        "zh" if name == "chnsenticorp" else "en")
        print(f"{name}: TF-IDF + logistic regression baseline {base['baseline_accuracy']:.4f} "
              f"({base['baseline_s']}s)", file=sys.stderr, flush=True)
        rows = list(PLAN[name]) + [row for row in OPT_IN if row[0] in wanted]
        if "self-train" in wanted:
            if not 1 <= args.self_train_rounds <= 10:
                ap.error("--self-train-rounds must be in [1, 10]")
            if not args.max_train:
                ap.error("the self-train row needs --max-train N: the other training texts are its unlabeled text")
            rows.append(("self-train", None, {"self_train.rounds": str(args.self_train_rounds),
                                              "data.unlabeled": str(Path(paths["data.path"]).with_suffix(".rest.txt"))}))
        if args.time:
            rows.append((f"time-{args.time}", None, {"train.run_budget_s": str(parse_duration(args.time))}))
        for model, preset, over in rows:
            if wanted and model not in wanted and not (model.startswith("time-") and "time" in wanted):
                continue
            spec = {"dataset": name, "model": model, "threads": args.threads, "verbose": args.verbose,
                    "preset": str(PRESETS / preset) if preset else None,
                    "overrides": {**paths, "out": str(out / name / model), **over}}
            line = spawn(spec)
            if line is not None:
                line.update(base, margin=round(100 * (line["accuracy"] - base["baseline_accuracy"]), 2),
                            max_train=args.max_train or None)
                print(json.dumps(line, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
