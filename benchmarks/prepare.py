"""Throughput and peak memory of `prepare`, per stage; near-duplicate recall on a generated corpus.

    python benchmarks/prepare.py --data PATH [--workers 0] [--near-dedup] [--gopher] [--tokenizer bpe]
                                 [--engine local|datatrove] [--decontam 13] [--shard-mb 4]
    python benchmarks/prepare.py --generate 200 [--keep-corpus DIR] [--workers 0]
    python benchmarks/prepare.py --data BIG.txt --read-only

--read-only: only read PATH's documents, twice (a child process each): big plain-text files streamed in
blocks as prepare does, then every file read whole as before; prints the peak RSS and seconds of each.

--data: prepare PATH as `lmforge prepare` would (file, folder or glob). --generate MB: write a corpus of
that many MB (lmforge.data.synthetic: distinct Zipf-word documents, 10% of them near-duplicates of an
earlier one with 1% of the words edited) to a temporary folder, prepare it with near-duplicate removal,
and score the removal against the planted pairs (recall; false positives among the distinct documents).
Every prepare runs in a child process, so its peak RSS is its own (RSS of the main process and of the
largest worker are reported apart; with --engine datatrove the workers are grandchildren,
under datatrove's forkserver, and the worker figure may miss them). MB/s per stage is input megabytes over that stage's seconds;
end-to-end includes starting Python and the workers. Prints a line per figure, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from lmforge.config import Config  # noqa: E402  (light: no PyTorch)

GOPHER = {"min_words": 50, "max_words": 100000, "min_mean_word_chars": 3, "max_mean_word_chars": 10,
          "max_symbol_word_ratio": 0.1, "min_alpha_word_fraction": 0.8, "max_bullet_line_fraction": 0.9,
          "max_ellipsis_line_fraction": 0.3, "max_dup_line_fraction": 0.3, "max_dup_ngram_char_fraction": 0.15,
          "max_top_bigram_char_fraction": 0.2}


def child(case: dict) -> dict:
    import numpy as np

    from lmforge.config import Config
    from lmforge.data import pipeline
    from lmforge.data.prepare import file_signature, prepare

    cfg = Config()
    cfg.data.path, cfg.out, cfg.data.num_workers = case["data"], case["out"], case["workers"]
    cfg.data.engine = case.get("engine", "local")
    cfg.data.shard_mb = case.get("shard_mb", cfg.data.shard_mb)
    cfg.clean.decontam_ngram = case.get("decontam", 0)
    cfg.tokenizer.kind = case["tokenizer"]
    cfg.clean.near_dedup = case["near_dedup"]
    for name, value in (GOPHER if case["gopher"] else {}).items():
        setattr(cfg.filter, name, value)
    captured: dict = {}
    real = pipeline._dedup_role

    def capture(work, role, n, clean):  # the keep mask, to score against the planted pairs
        keep, info = real(work, role, n, clean)
        captured[role] = keep.copy()
        return keep, info

    pipeline._dedup_role = capture
    t0 = time.perf_counter()
    prepared = prepare(cfg, quiet=True)
    out = {"wall_s": time.perf_counter() - t0, "summary": prepared.summary,
           "input_bytes": sum(entry[1] for entry in file_signature(cfg.data.path)),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if case.get("planted"):
        keep = captured["train"]
        pairs = json.loads(Path(case["planted"]).read_text(encoding="utf-8"))
        duplicate = np.zeros(len(keep), dtype=bool)
        duplicate[[d for d, _ in pairs]] = True
        out["planted_pairs"] = int(duplicate.sum())
        out["recall"] = float((~keep[duplicate]).mean()) if duplicate.any() else None
        out["false_positive_rate"] = float((~keep[~duplicate]).mean())
    return out


def read_child(case: dict) -> dict:
    from lmforge.data import readers

    if case["mode"] == "whole":
        readers.STREAM_MIN_BYTES = 1 << 62
    t0 = time.perf_counter()
    documents = chars = 0
    for doc in readers.read_documents(case["data"]):
        documents += 1
        chars += len(doc.text)
    return {"mode": case["mode"], "documents": documents, "chars": chars,
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def read_only(path: str) -> None:
    results = []
    for mode in ("streamed", "whole"):
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({"read": True, "mode": mode,
                                                                               "data": path})],
                              capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"reading failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{mode:9s} {results[-1]}")
    assert results[0]["documents"] == results[1]["documents"] and results[0]["chars"] == results[1]["chars"]
    print(json.dumps({"data": path, "read_only": results}))


def run_case(case: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["end_to_end_s"] = time.perf_counter() - t0
    return result


def figures(result: dict) -> dict:
    mb = result["input_bytes"] / 1e6
    seconds = result["summary"]["seconds"]
    out = {"input_mb": round(mb, 1),
           "mb_per_s": {stage: round(mb / s, 2) if s > 0 else None for stage, s in seconds.items()},
           "seconds": seconds,
           "end_to_end_mb_per_s": round(mb / result["end_to_end_s"], 2),
           "end_to_end_s": round(result["end_to_end_s"], 1),
           "peak_rss_mb": round(result["peak_rss_mb"]), "worker_peak_rss_mb": round(result["worker_peak_rss_mb"]),
           "removed_near_duplicate": result["summary"]["cleaning"]["removed_near_duplicate"],
           "removed_by_filter": result["summary"]["cleaning"]["removed_by_filter"],
           "train_tokens": result["summary"]["train_tokens"]}
    for name in ("planted_pairs", "recall", "false_positive_rate"):
        if name in result:
            out[name] = result[name]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="corpus to prepare (file, folder or glob)")
    parser.add_argument("--generate", type=float, help="generate a corpus of this many MB with planted near-duplicates")
    parser.add_argument("--keep-corpus", help="with --generate: write the corpus here and keep it")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (0: one per core)")
    parser.add_argument("--tokenizer", default="bpe", choices=("bpe", "char"))
    parser.add_argument("--near-dedup", action="store_true", help="clean.near_dedup (always on with --generate)")
    parser.add_argument("--gopher", action="store_true", help="turn on the Gopher-style quality filters")
    parser.add_argument("--engine", default="local", choices=("local", "datatrove"), help="data.engine")
    parser.add_argument("--decontam", type=int, default=0, help="clean.decontam_ngram (0: off)")
    parser.add_argument("--shard-mb", type=float, default=Config().data.shard_mb, help="data.shard_mb")
    parser.add_argument("--read-only", action="store_true", help="only read --data, streamed and whole: peak RSS")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(read_child(case) if case.get("read") else child(case)))
        return
    if args.read_only:
        if not args.data:
            parser.error("--read-only needs --data PATH")
        read_only(args.data)
        return
    if bool(args.data) == bool(args.generate):
        parser.error("give one of --data PATH or --generate MB")
    scratch = Path(tempfile.mkdtemp(prefix="lmforge-prepare-bench-"))
    try:
        case = {"out": str(scratch / "run"), "workers": args.workers, "tokenizer": args.tokenizer,
                "near_dedup": args.near_dedup or bool(args.generate), "gopher": args.gopher, "engine": args.engine,
                "decontam": args.decontam, "shard_mb": args.shard_mb}
        if args.generate:
            from lmforge.data.synthetic import write_corpus

            folder = Path(args.keep_corpus) if args.keep_corpus else scratch / "corpus"
            t0 = time.perf_counter()
            made = write_corpus(folder, args.generate)
            print(f"generated {made['bytes'] / 1e6:.0f} MB, {made['documents']:,} documents, "
                  f"{made['planted']:,} planted near-duplicates in {time.perf_counter() - t0:.0f} s", flush=True)
            case |= {"data": str(folder / "text"), "planted": str(folder / "planted.json")}
        else:
            case["data"] = args.data
        result = figures(run_case(case))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, value in result.items():
        print(f"{name:24s} {value}")
    print(json.dumps({"data": args.data or f"generated {args.generate} MB", "workers": args.workers,
                      "engine": args.engine, "decontam": args.decontam,
                      "shard_mb": args.shard_mb,
                      "tokenizer": args.tokenizer, **result}))


if __name__ == "__main__":
    main()
