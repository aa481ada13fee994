"""lmforge's own BPE pre-tokenizer against the llama.cpp-exportable ones: bits per byte and tokenizer speed.

    python benchmarks/pretokenizer.py --english ../shared/data/tinyshakespeare/input.txt \
        --chinese ../shared/data/tang_poems/tang_poems.simplified.txt [--mb 2] [--steps 300]

For each corpus (the first --mb MB of it) and each tokenizer.pretokenizer, one child process
prepares the data (training the tokenizer: its seconds and bytes per token are reported) and
trains the same small model for the same number of steps and tokens; validation bits per byte
compare the tokenizers on equal compute. The validation documents are the same for every
tokenizer (the split is by document). Prints one line per case, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(case: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    from lmforge.config import load_config
    from lmforge.lm.pretrain import train

    overrides = {
        "out": case["out"], "data.path": case["data"], "tokenizer.pretokenizer": case["pretokenizer"],
        "tokenizer.vocab_size": case["vocab_size"], "model.n_layer": 4, "model.n_head": 4, "model.d_model": 128,
        "model.context_len": 128, "train.max_steps": case["steps"], "train.global_batch_tokens": 4096,
        "eval.interval": case["steps"], "eval.max_tokens": 131072, "schedule.warmup_steps": 30,
        "optim.lr": 2e-3, "schedule.min_lr": 2e-4, "sample.num_samples": 0, "runtime.compile": "off",
        "runtime.precision": "fp32",
    }
    result = train(load_config(None, overrides), progress=False)
    prep = json.loads((Path(case["out"]) / "data" / "prepare.json").read_text())["summary"]
    return {"val_bpb": round(result.val_bpb, 4), "tokenizer_s": prep["seconds"]["tokenizer"],
            "bytes_per_token": round(prep["bytes_per_token"], 3), "train_tokens_per_s": round(result.tokens_per_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--english", help="English text file, e.g. tiny Shakespeare")
    ap.add_argument("--chinese", help="Chinese text file, e.g. the Tang poems")
    ap.add_argument("--mb", type=float, default=2.0, help="MB taken from the start of each corpus")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--pretokenizers", default="lmforge,qwen2,llama3")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if not (args.english and args.chinese):
        ap.error("--english and --chinese are required")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lang, path in (("en", args.english), ("zh", args.chinese)):
            raw = Path(path).read_bytes()[: int(args.mb * 1e6)]
            text = raw.decode("utf-8", errors="ignore")
            sample = Path(tmp, f"{lang}.txt")
            sample.write_text(text[: text.rfind("\n\n") + 1] if "\n\n" in text else text, encoding="utf-8")
            for pre in args.pretokenizers.split(","):
                case = {"data": str(sample), "pretokenizer": pre, "vocab_size": args.vocab_size, "steps": args.steps,
                        "out": str(Path(tmp, f"{lang}-{pre}"))}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)],
                                      capture_output=True, text=True, check=False)
                name = f"{lang}_{pre}"
                if proc.returncode != 0:
                    results[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
                else:
                    results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{name:16s} {json.dumps(results[name])}", flush=True)
    print(json.dumps({"mb": args.mb, "steps": args.steps, "vocab_size": args.vocab_size, **results}))


if __name__ == "__main__":
    main()
