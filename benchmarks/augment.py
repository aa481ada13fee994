"""Does `--augment` help? Test accuracy with and without augmentation on small samples of SST-2 and ChnSentiCorp.

    python benchmarks/augment.py --data-root ../shared/data [--datasets sst2,chnsenticorp] [--seeds 5]
        [--n-train 1000] [--conditions none,eda,eda+synonym] [--members linear,fasttext] [--copies 1]
    python benchmarks/augment.py --data-root ../shared/data --decontam 13   # classify's decontamination counts

For each seed a seeded sample of --n-train labeled training texts is drawn; every condition trains on that
same sample with the same run seed, so the conditions differ only by augmentation (paired comparison).
Conditions: `none`; `eda` (swap, delete, insert, noise; neural members only, the default); `eda+synonym` (the
same plus synonyms from word vectors); `eda+linear`, `eda+synonym+linear` (the linear model's texts augmented
too: data.augment.linear); `none-same-steps` (no augmentation, as many optimizer steps as with it); or any
single method name. Synonyms come from PPMI-SVD vectors (`lmforge classify vectors`'
code) trained once on the unlabeled texts of the dataset's whole training file (never its test texts).

Splits as in benchmarks/classify.py: SST-2 is scored on its dev set (872) and validated on its labeled
sentence-level test set; ChnSentiCorp holds out 10% of the sample for validation and is scored on its test
set (1,553). The model is an ensemble of --members weighed on the validation split (default: linear +
fastText, the fast members of the default classifier; the default's BiLSTM and out-of-fold stacking take
10+ minutes per run on a 2-core machine). Prints one line per run, a table, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EDA = "swap,delete,insert,noise"
# condition -> (methods, also augment the linear model's texts)
CONDITIONS = {"none": ("", False), "eda": (EDA, False), "eda+synonym": (EDA + ",synonym", False),
              "eda+linear": (EDA, True), "eda+synonym+linear": (EDA + ",synonym", True), "none-same-steps": ("", False)}
# 'none-same-steps': no augmentation, but epochs x (copies + 1), so the neural member takes as many
# optimizer steps as with augmentation (epochs count passes over the augmented set): a control that
# tells the copies' effect from that of longer training.


def files(root: Path, name: str) -> dict[str, Path]:
    if name == "sst2":
        return {"train": root / "sst2" / "train.jsonl", "valid": root / "sst2" / "test.jsonl",
                "test": root / "sst2" / "dev.jsonl"}
    if name == "chnsenticorp":
        return {"train": root / "chnsenticorp" / "train.jsonl", "test": root / "chnsenticorp" / "test.jsonl"}
    raise SystemExit(f"unknown dataset {name!r}; use sst2 or chnsenticorp")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_vectors(records: list[dict], out: Path, dim: int) -> tuple[Path, float]:
    from lmforge.classify.vectors import train_word_vectors

    t0 = time.perf_counter()
    vectors = train_word_vectors([r["text"] for r in records], dim=dim, min_count=5, max_words=50000)
    vectors.save(out)
    return out, time.perf_counter() - t0


def run_one(sample: Path, paths: dict, out: Path, seed: int, condition: tuple[str, bool], members: str, copies: int,
            vectors: Path | None, epochs: float) -> dict:
    from lmforge.classify.config import ClassifyConfig
    from lmforge.classify.run import train_classifier
    from lmforge.config import load_config

    methods, linear = condition
    over = {"out": str(out), "data.augment.linear": linear, "seed": seed, "data.path": str(sample), "data.test_path": str(paths["test"]),
            "model.kind": "ensemble", "model.members": members, "model.stacking": "split",
            "runtime.threads": 1, "train.epochs": epochs, "data.augment.methods": methods,
            "data.augment.copies": copies}
    if "valid" in paths:
        over["data.valid_path"] = str(paths["valid"])
    if vectors is not None and "synonym" in methods:
        over["data.augment.vectors"] = str(vectors)
    cfg = load_config(None, {k: str(v) for k, v in over.items()}, cls=ClassifyConfig)
    t0 = time.perf_counter()
    result = train_classifier(cfg, progress=False, overwrite=True)
    test = result.test
    return {"accuracy": test["accuracy"], "wall_s": time.perf_counter() - t0,
            "members": {k: v["accuracy"] for k, v in (test.get("members") or {}).items()},
            "weights": result.weights}


def decontam_report(root: Path, n: int) -> dict:
    """What `classify train` reports as contaminated in each held-out file of the three datasets."""
    from lmforge.classify.data import contamination, read_labeled

    out = {}
    pairs = {"sst2 dev": ("sst2/train.jsonl", "sst2/dev.jsonl"), "sst2 test": ("sst2/train.jsonl", "sst2/test.jsonl"),
             "chnsenticorp test": ("chnsenticorp/train.jsonl", "chnsenticorp/test.jsonl"),
             "imdb test": ("imdb/train.jsonl.gz", "imdb/test.jsonl.gz")}
    for name, (train, held) in pairs.items():
        a, b = read_labeled(root / train, "text", "label"), read_labeled(root / held, "text", "label")
        t0 = time.perf_counter()
        r = contamination(a, b, n, "test")
        seconds = time.perf_counter() - t0
        out[name] = {"records": r["records"], "contaminated": r["contaminated"], "exact_copies": r["exact_copies"],
                     "seconds": seconds}
        print(f"{name}: {r['contaminated']:,} of {r['records']:,} records ({r['exact_copies']:,} exact copies) "
              f"in {seconds:.1f}s", flush=True)
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--datasets", default="sst2,chnsenticorp")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-train", type=int, default=1000, help="training texts per sample; 0: the whole file")
    ap.add_argument("--conditions", default="none,eda,eda+synonym")
    ap.add_argument("--members", default="linear,fasttext")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--vectors-dim", type=int, default=100)
    ap.add_argument("--decontam", type=int, metavar="N", default=0,
                    help="instead: count each dataset's test records sharing an N-word run with its training file")
    args = ap.parse_args()
    if args.decontam:
        print(json.dumps({"decontam_ngram": args.decontam, "files": decontam_report(Path(args.data_root), args.decontam)}))
        return

    import torch

    torch.set_num_threads(1)
    root = Path(args.data_root)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    summary: dict = {"n_train": args.n_train, "seeds": args.seeds, "members": args.members, "copies": args.copies,
                     "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            paths = files(root, name)
            records = read_jsonl(paths["train"])
            vectors = None
            if any("synonym" in CONDITIONS.get(c, (c,))[0] for c in conditions):
                vectors, vec_s = make_vectors(records, tmp / f"{name}.vectors.txt", args.vectors_dim)
                print(f"{name}: word vectors from {len(records):,} unlabeled training texts in {vec_s:.0f}s", flush=True)
            per: dict[str, list[dict]] = {c: [] for c in conditions}
            for seed in range(args.seeds):
                rng = random.Random(seed)
                chosen = rng.sample(records, args.n_train) if 0 < args.n_train < len(records) else records
                sample = tmp / f"{name}.{seed}.jsonl"
                sample.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
                for c in conditions:
                    epochs = args.epochs * (args.copies + 1) if c == "none-same-steps" else args.epochs
                    r = run_one(sample, paths, tmp / f"run-{name}-{c}-{seed}", seed, CONDITIONS.get(c, (c, False)),
                                args.members, args.copies, vectors, epochs)
                    per[c].append(r)
                    members = ", ".join(f"{k} {v:.4f}" for k, v in r["members"].items())
                    print(f"{name} seed {seed} {c:12s} accuracy {r['accuracy']:.4f} ({members}) {r['wall_s']:.0f}s",
                          flush=True)
            out = {}
            for c, runs in per.items():
                m, s = mean_std([r["accuracy"] for r in runs])
                diffs = [r["accuracy"] - b["accuracy"] for r, b in zip(runs, per[conditions[0]])]
                dm, ds = mean_std(diffs)
                member_names = runs[0]["members"].keys()
                out[c] = {"accuracy_mean": m, "accuracy_std": s, "diff_vs_first_mean": dm, "diff_vs_first_std": ds,
                          "members": {k: mean_std([r["members"][k] for r in runs]) for k in member_names},
                          "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
                          "accuracies": [r["accuracy"] for r in runs]}
                print(f"{name} {c:12s} {100 * m:.2f} ± {100 * s:.2f}%  (paired diff {100 * dm:+.2f} ± {100 * ds:.2f}) "
                      + ", ".join(f"{k} {100 * v[0]:.2f} ± {100 * v[1]:.2f}" for k, v in out[c]["members"].items())
                      + f"  {out[c]['wall_s_mean']:.0f}s/run", flush=True)
            summary["datasets"][name] = out
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
