"""nanoGPT's CPU "baby" setting on tiny Shakespeare, then lmforge's own CPU recipe for the same wall time.

    python benchmarks/shakespeare_char.py --data ../shared/data/tinyshakespeare/input.txt

Baby setting: characters, last 10% held out, 4 layers x 4 heads x 128 wide, context 64, batch 12,
2000 iterations, lr 1e-3 -> 1e-4 after 100 warm-up iterations, no dropout, evaluation every 250.
Reference (nanoGPT, fp32, this 2-core class of CPU): 74-89 s, 32.6-41.0 ms/iter, 19-24k tokens/s,
validation loss 1.8857, peak RSS 375 MB.

Each setting runs in its own process so its peak RSS is its own. Prints the validation loss at
each evaluation and ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BABY = "configs/shakespeare-char.yaml"
# lmforge's CPU recipe: wider (AMX bf16 pays from width ~256), longer context, a bigger batch,
# a higher peak LR and a warmup-stable-decay schedule fitted to the wall-time budget.
RECIPE = "configs/shakespeare-char-cpu.yaml"


def run_one(config: str, data: str, out: str, overrides: dict[str, str]) -> dict:
    sys.path.insert(0, str(ROOT))
    from lmforge.config import load_config
    from lmforge.lm.pretrain import train

    cfg = load_config(ROOT / config, {"data.path": data, "out": out, "sample.num_samples": "0", **overrides})
    t0 = time.perf_counter()
    result = train(cfg, progress=False, overwrite=True)  # a re-run replaces its run
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    # Steady-state speed: training steps only, excluding the first log window (compile, warm-up).
    windows = [r for r in records if "tokens_per_s" in r and "val_loss" not in r]
    steady = sorted(r["tokens_per_s"] for r in windows[len(windows) // 10 :]) or [result.tokens_per_s]
    tokens_per_s = steady[len(steady) // 2]
    tokens_per_step = cfg.train.global_batch_tokens
    return {
        "evals": evals,
        "val_loss": result.val_loss,
        "val_bpb": result.val_bpb,
        "steps": result.steps,
        "tokens_per_s": tokens_per_s,
        "ms_per_iter": 1000.0 * tokens_per_step / tokens_per_s,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stop_reason": result.stop_reason,
    }


def spawn(config: str, data: str, out: str, overrides: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--one", config, "--data", data, "--out", out,
           "--overrides", json.dumps(overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{config} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="tiny Shakespeare input.txt")
    ap.add_argument("--out", default=None, help="folder for the two run folders (default: a temporary one)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--recipe-budget", type=float, default=0.0,
                    help="wall seconds for the recipe (default: the baby setting's wall time)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.out, json.loads(args.overrides))))
        return

    out = Path(args.out or tempfile.mkdtemp(prefix="lmforge-bench-"))
    baby = spawn(BABY, args.data, str(out / "baby"), {})
    for step, loss in baby["evals"]:
        print(f"baby   step {step:>5}  val_loss {loss:.4f}", flush=True)
    print(f"baby   {baby['ms_per_iter']:.1f} ms/iter, {baby['tokens_per_s']:,.0f} tokens/s, "
          f"{baby['wall_s']:.1f} s, peak RSS {baby['peak_rss_mb']:.0f} MB", flush=True)

    budget = args.recipe_budget or baby["wall_s"]
    # The budget covers the whole process (prepare, compile, evaluation); the trainer's own clock
    # starts after preparation, so leave it a margin for start-up.
    recipe = spawn(RECIPE, args.data, str(out / "recipe"), {"train.time_budget_s": str(max(10.0, budget - 8.0))})
    for step, loss in recipe["evals"]:
        print(f"recipe step {step:>5}  val_loss {loss:.4f}", flush=True)
    print(f"recipe {recipe['steps']} steps, {recipe['tokens_per_s']:,.0f} tokens/s, {recipe['wall_s']:.1f} s "
          f"({recipe['stop_reason']})", flush=True)

    print(json.dumps({
        "tokens_per_s": round(baby["tokens_per_s"], 1),
        "ms_per_iter": round(baby["ms_per_iter"], 2),
        "val_loss": round(baby["val_loss"], 4),
        "wall_s": round(baby["wall_s"], 1),
        "peak_rss_mb": round(baby["peak_rss_mb"], 1),
        "recipe_val_loss": round(recipe["val_loss"], 4),
        "recipe_wall_s": round(recipe["wall_s"], 1),
    }))


if __name__ == "__main__":
    main()
