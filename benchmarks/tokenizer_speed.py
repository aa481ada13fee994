"""Tokenizer training and corpus-encoding speed, English vs Chinese.

    python benchmarks/tokenizer_speed.py [--data chinese.txt] [--mb 2] [--vocab-size 4096]
        [--pretokenizers lmforge,qwen2]

Every case runs in its own child process so its peak RSS is its own.  Without --data the
Chinese text is generated (Zipf-distributed pseudo-words over common ideographs with Chinese
punctuation), which reproduces the shape that hurts BPE training: long clauses with no spaces.
Prints one line per case, then one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _zipf_sampler(rng: random.Random, items: list[str]) -> Callable[[int], list[str]]:
    cum, total = [], 0.0
    for rank in range(len(items)):
        total += 1.0 / (rank + 1)
        cum.append(total)  # cumulative once: rng.choices with weights= redoes this per call
    return lambda k: rng.choices(items, cum_weights=cum, k=k)


def generate_english(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvw" for b in ["a", "e", "i", "o", "u", "ou", "ea", "an", "er"]]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(20_000)})
    rng.shuffle(words)
    pick = _zipf_sampler(rng, words)
    lines, size = [], 0
    while size < n_bytes:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            ws = pick(rng.randint(4, 18))
            ws[0] = ws[0].capitalize()
            sentences.append(" ".join(ws) + rng.choice([".", ".", ".", "?", "!"]))
        line = " ".join(sentences) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)


def generate_chinese(n_bytes: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    chars = [chr(c) for c in rng.sample(range(0x4E00, 0x9FA6), 3500)]
    pick_char = _zipf_sampler(rng, chars)
    lexicon = sorted({"".join(pick_char(rng.choice([1, 2, 2, 2, 3, 4]))) for _ in range(30_000)})
    rng.shuffle(lexicon)
    pick = _zipf_sampler(rng, lexicon)
    lines, size = [], 0
    while size < n_bytes:
        sentences = []
        for _ in range(rng.randint(2, 6)):
            clauses = ["".join(pick(rng.randint(2, 8))) for _ in range(rng.randint(1, 4))]
            sentences.append("，".join(clauses) + rng.choice(["。", "。", "！", "？", "；"]))
        line = "".join(sentences) + "\n"
        lines.append(line)
        size += len(line.encode("utf-8"))
    return "".join(lines)


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _read_lines(path: str) -> tuple[list[str], int]:
    text = Path(path).read_text(encoding="utf-8")
    return text.splitlines(keepends=True), len(text.encode("utf-8"))


def child(case: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from lmforge.config import TokenizerConfig
    from lmforge.data.tokenizer import Tokenizer, train_tokenizer
    from lmforge.data.tokens import encode_corpus

    if case["op"] == "baseline":
        return {"peak_rss_mb": round(_peak_rss_mb(), 1)}
    lines, n_bytes = _read_lines(case["data"])
    t0 = time.perf_counter()
    if case["op"] == "train":
        cfg = TokenizerConfig(kind=case["kind"], vocab_size=case["vocab_size"], cjk_split=case["cjk_split"],
                              pretokenizer=case.get("pretokenizer", "lmforge"))
        tok = train_tokenizer(lines, cfg)
        tok.save(case["tokenizer"])
        extra = {"vocab_size": tok.vocab_size}
    else:
        tok = Tokenizer.load(case["tokenizer"])
        t0 = time.perf_counter()
        tf = encode_corpus(lines, tok, case["out"], num_workers=case["workers"])
        extra = {"tokens": tf.num_tokens, "bytes_per_token": round(n_bytes / max(1, tf.num_tokens), 3)}
    secs = time.perf_counter() - t0
    return {"mb": round(n_bytes / 1e6, 2), "secs": round(secs, 2), "mb_per_s": round(n_bytes / 1e6 / secs, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "workers_peak_rss_mb": round(_peak_rss_mb(resource.RUSAGE_CHILDREN), 1), **extra}


def run_case(case: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="Chinese text file to use instead of generated text (read whole)")
    ap.add_argument("--mb", type=float, default=2.0, help="MB of generated text per language")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2, help="processes for the parallel encode cases")
    ap.add_argument("--skip-none", action="store_true", help="skip the slow cjk_split=none Chinese case")
    ap.add_argument("--pretokenizers", default="lmforge",
                    help="comma-separated tokenizer.pretokenizer values for the BPE cases (cjk_split applies to "
                         "lmforge only; the others run once per language)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        en = Path(tmp, "en.txt")
        en.write_text(generate_english(int(args.mb * 1e6)), encoding="utf-8")
        zh = Path(args.data) if args.data else Path(tmp, "zh.txt")
        if not args.data:
            zh.write_text(generate_chinese(int(args.mb * 1e6)), encoding="utf-8")

        def report(name: str, case: dict) -> None:
            results[name] = run_case(case)
            print(f"{name:28s} {json.dumps(results[name])}", flush=True)

        report("baseline_import", {"op": "baseline"})
        trains = [("en", "bpe", "char"), ("zh", "bpe", "char"), ("zh", "bpe", "jieba"), ("zh", "char", "char")]
        if not args.skip_none:
            trains.insert(1, ("zh", "bpe", "none"))
        trains = [(lang, kind, split, "lmforge") for lang, kind, split in trains]
        for pre in [p for p in args.pretokenizers.split(",") if p != "lmforge"]:
            trains += [("en", "bpe", "char", pre), ("zh", "bpe", "char", pre)]
        if "lmforge" not in args.pretokenizers.split(","):
            trains = [t for t in trains if t[3] != "lmforge"]

        def case_name(lang: str, kind: str, split: str, pre: str) -> str:
            if kind != "bpe":
                return f"{lang}_{kind}"
            return f"{lang}_bpe_{split}" if pre == "lmforge" else f"{lang}_bpe_{pre}"

        for lang, kind, split, pre in trains:
            name = case_name(lang, kind, split, pre)
            report(f"train_{name}", {"op": "train", "data": str(en if lang == "en" else zh), "kind": kind,
                                     "cjk_split": split, "pretokenizer": pre, "vocab_size": args.vocab_size,
                                     "tokenizer": str(Path(tmp, f"{name}.json"))})
        for lang, kind, split, pre in [t for t in trains if t[2] != "none"]:
            name = case_name(lang, kind, split, pre)
            for workers in (1, args.workers):
                report(f"encode_{name}_w{workers}", {"op": "encode", "data": str(en if lang == "en" else zh),
                                                      "tokenizer": str(Path(tmp, f"{name}.json")),
                                                      "out": str(Path(tmp, f"{name}-w{workers}.tokens.bin")), "workers": workers})
    print(json.dumps({"data": args.data or f"generated {args.mb} MB per language", **results}))


if __name__ == "__main__":
    main()
