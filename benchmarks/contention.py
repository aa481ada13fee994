"""Training throughput when another program takes the cores, with and without the thread governor.

    python benchmarks/contention.py [--seconds 30] [--competitor torch|spin] [--threads N]
                                    [--global-batch-tokens 8192]

Four cases, each in its own child process: a quiet machine and one with a busy competitor (another
PyTorch program multiplying matrices on every core, or with `--competitor spin` one pure-Python
loop per core), each with `runtime.threads 0` (all cores, the governor on) and with a fixed
`runtime.threads N` (default: all cores, the governor off). The model and batch are `train`'s
defaults (4 layers x 128 wide, context 64, 8,192 tokens a step, a 4,096-token vocabulary; a
smaller batch for a quick smoke run) on synthetic tokens, in fp32. Throughput is counted from the third step on (the first ones carry
one-off costs). Prints one line per case, then one JSON line with all figures.

Timed: run it on a machine nobody else is using.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmforge.config import TrainConfig

COMPETITORS = {
    # Another training-like program: OpenMP threads on every core, busy all the time.
    "torch": "import torch\na = torch.randn(512, 512)\nwhile True:\n    a = torch.tanh(a @ a)\n",
    "spin": "while True:\n    pass\n",
}


def run_case(seconds: float, threads: int, global_batch_tokens: int) -> dict:
    """Train for `seconds` on this process; `threads` 0: all cores with the governor."""
    import numpy as np
    import torch

    from lmforge.config import EvalConfig, ModelConfig, OptimConfig, ScheduleConfig
    from lmforge.lm.model import build_model
    from lmforge.lm.task import LMTask
    from lmforge.trainer.loop import fit
    from lmforge.trainer.runtime import init_runtime

    rt = init_runtime("cpu", threads)
    threads_at_start = torch.get_num_threads()
    vocab, model_cfg = 4096, ModelConfig()
    split = type("Split", (), {"tokens": np.random.default_rng(0).integers(0, vocab, 2_000_000).astype(np.uint16)})
    model = build_model(model_cfg, vocab, seed=0)
    task = LMTask(model, split, split, np.ones(vocab), global_batch_tokens // model_cfg.context_len,
                  seed=0, eval_max_tokens=model_cfg.context_len * 8)
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(task, TrainConfig(max_steps=10**6, time_budget_s=seconds, log_interval=1), OptimConfig(),
                     ScheduleConfig(), EvalConfig(interval=10**6, max_tokens=model_cfg.context_len * 8), rt,
                     Path(run_dir), progress=False)
    steps = [r for r in result.history if "train_loss" in r]
    row = {"threads_setting": threads, "threads_at_start": threads_at_start, "threads_at_end": torch.get_num_threads(),
           "steps": result.steps, "first_step_s": round(steps[0]["elapsed_s"], 2)}
    if len(steps) < 4:
        return {**row, "error": f"only {len(steps)} steps in {seconds:g} s: give it more --seconds"}
    span_s = steps[-1]["elapsed_s"] - steps[2]["elapsed_s"]
    return {**row, "tokens_per_s": round((steps[-1]["tokens"] - steps[2]["tokens"]) / span_s),
            "step_ms": round(1000 * span_s / (len(steps) - 3), 1)}


def case_in_child(seconds: float, threads: int, competitor: str | None, global_batch_tokens: int) -> dict:
    busy = None
    if competitor:
        busy = subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]])
        time.sleep(1.0)  # let it start and take the cores
    try:
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps({"seconds": seconds, "threads": threads,
                                                                "global_batch_tokens": global_batch_tokens})],
                             capture_output=True, text=True, check=False)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {' '.join(out.stderr.strip().splitlines()[-1:])}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="training time per case")
    ap.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="the fixed thread count compared against the governor (default: all cores)")
    ap.add_argument("--global-batch-tokens", type=int, default=TrainConfig.global_batch_tokens,
                    help="tokens per step (a multiple of 64; default: train's)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(run_case(spec["seconds"], spec["threads"], spec["global_batch_tokens"])), flush=True)
        return 0
    figures: dict = {"seconds": args.seconds, "cores": os.cpu_count(), "competitor": args.competitor,
                     "global_batch_tokens": args.global_batch_tokens}
    for machine, competitor in (("quiet", None), ("busy", args.competitor)):
        for label, threads in (("governor", 0), (f"fixed_{args.threads}", args.threads)):
            row = case_in_child(args.seconds, threads, competitor, args.global_batch_tokens)
            figures[f"{machine}_{label}"] = row
            if "error" in row:
                print(f"{machine:5}  {label:9}  {row['error']}", flush=True)
                continue
            print(f"{machine:5}  {label:9}  {row['tokens_per_s']:>8,} tokens/s  {row['step_ms']:>7.1f} ms/step  "
                  f"threads {row['threads_at_start']} -> {row['threads_at_end']}  ({row['steps']} steps)", flush=True)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
