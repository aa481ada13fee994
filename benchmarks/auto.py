"""Benchmark of the automation: `--auto` against nanoGPT's CPU baby setting and against a tuned search.

For each corpus, with the same wall-clock budget:
  (a) auto:  `lmforge train DATA --auto --time BUDGET`                     (everything included)
  (b) baby:  nanoGPT's CPU baby setting (configs/shakespeare-char.yaml: characters, nanoGPT's GPT-2
             model of 4 layers x 128, context 64, batch 12, lr 1e-3 -> 1e-4, warm-up 100; no compile,
             as nanoGPT runs it on a CPU), trained for the same total wall time as (a) (its schedule
             fitted to that time). For reference, the same settings on lmforge's model are run too
             (baby_lmforge_model_bpb): the gain of the automation alone.
  (c) tuned: the best of a `lmforge tune` study of N trials, each trained for BUDGET
All three use the same data split (the last 10% of the file held out, as nanoGPT does) and are
scored afterwards on the whole validation split in bits per byte, so the tokenizers may differ
(the tuned trials use the tokenizer the auto run chose). The baby run and the trials get the number
of threads the auto run chose: on a CPU shared with other programs, two threads can be several
times slower than one, and the comparison is meant to be about the settings.

Prints one JSON line per corpus with auto_bpb, baby_bpb, baby_lmforge_model_bpb, tuned_bpb, auto_wall_s, budget_s and how
far each run's wall time was from its budget. Goal: auto beats baby by >= 10% and is within 3% of tuned.

    python benchmarks/auto.py --budget 2m --trials 8                 # the full benchmark (~50 minutes)
    python benchmarks/auto.py --budget 20s --trials 2 --max-bytes 200000   # a quick end-to-end check
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Data lives beside the repository (read-only); never copied into it.
CORPORA = {
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "tang_poems": "tang_poems/tang_poems.simplified.txt",
}
DATA_OPTIONS = ["--data.doc_split", "file", "--data.val_fraction", "0.1"]


def lmforge(args: list[str], log: Path, timeout: float, threads: int | None = None) -> tuple[int, float, str]:
    """Run the CLI in a fresh process (as a user would); returns (exit code, wall seconds, stdout)."""
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        p = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=err, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, time.perf_counter() - t, p.stdout


def full_val_bpb(run_dir: Path) -> float:
    """Bits per byte of the run's saved model on its whole validation split (the same text for all runs)."""
    import lmforge

    return float(lmforge.evaluate(run_dir, max_tokens=0)["val_bpb"])


def slice_corpus(src: Path, max_bytes: int, dst: Path) -> Path:
    data = src.read_bytes()[:max_bytes]
    cut = data.rfind(b"\n")
    data = data[: cut + 1] if cut > 0 else data
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data.decode("utf-8", errors="ignore").encode("utf-8"))
    return dst


LMFORGE_MODEL = ["--model.norm", "rms", "--model.position", "rope", "--model.mlp", "swiglu", "--model.qk_norm", "true"]


def run_baby(out: Path, data: Path, wall_s: float, slack: float, threads: int | None,
             extra: list[str] = ()) -> tuple[float, float]:
    """nanoGPT's CPU baby setting trained for `wall_s` in all (preparation timed first, then training
    for what is left); returns (wall seconds, bits per byte on the whole validation split)."""
    cfg = ["--config", str(ROOT / "configs" / "shakespeare-char.yaml"), "--out", str(out), *DATA_OPTIONS, *extra]
    # Same threads as the auto run chose: with busy cores, two threads can be several times slower
    # than one, and the comparison is about the settings, not about the other programs.
    # --overwrite: a benchmark re-run replaces its earlier run folders.
    rc, prep_wall, _ = lmforge(["prepare", str(data), *cfg, "--overwrite"], out.with_name(out.name + "-prepare.log"),
                               slack, threads)
    if rc != 0:
        raise SystemExit(f"{out.name} prepare failed; see {out.with_name(out.name + '-prepare.log')}")
    overhead = 4.0  # start-up, final evaluation, save and the sample, measured on this CPU
    budget = max(5.0, wall_s - prep_wall - overhead)
    log = out.with_name(out.name + ".log")
    rc, wall, _ = lmforge(["train", str(data), *cfg, "--train.max_steps", "1000000",
                           "--train.time_budget_s", f"{budget:.1f}", "--runtime.compile", "off", "--json"],
                          log, slack, threads)
    if rc != 0:
        raise SystemExit(f"{out.name} run failed; see {log}")
    return round(prep_wall + wall, 1), round(full_val_bpb(out), 4)


def tune_file(path: Path, data: Path, tokenizer: dict, budget: float) -> Path:
    import yaml

    tree = {
        "search": {
            "model.d_model": [64, 128, 192, 256],
            "model.n_layer": {"low": 2, "high": 6},
            "model.context_len": [64, 128, 256],
            "optim.lr": {"low": 3.0e-4, "high": 6.0e-3, "log": True},
            "train.global_batch_tokens": [2048, 4096, 8192],
            "optim.kind": ["adamw", "muon"],
        },
        "data": {"path": str(data), "doc_split": "file", "val_fraction": 0.1},
        "tokenizer": tokenizer,
        "model": {"n_head": 4},
        "train": {"max_steps": 1_000_000, "time_budget_s": budget},
        "runtime": {"compile": "off"},
        "schedule": {"min_lr": 3.0e-5, "warmup_steps": 100},
        "eval": {"interval": 250, "max_tokens": 65536},
        "sample": {"num_samples": 0},
    }
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


def bench_corpus(name: str, data: Path, out: Path, budget: float, trials: int, tokenizer: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    row: dict = {"corpus": name, "budget_s": budget}
    slack = 10 * budget + 600

    # (a) auto
    auto_dir = out / "auto"
    rc, auto_wall, _ = lmforge(["train", str(data), "--auto", "--time", f"{budget}s", "--out", str(auto_dir), "--overwrite",
                                *DATA_OPTIONS, *tokenizer, "--json"], out / "auto.log", slack)
    if rc != 0:
        raise SystemExit(f"auto run failed; see {out / 'auto.log'}")
    plan = json.loads((auto_dir / "plan.json").read_text())
    cfg = plan["config"]
    row["auto_wall_s"] = round(auto_wall, 1)
    row["auto_bpb"] = round(full_val_bpb(auto_dir), 4)
    threads = plan["estimates"].get("threads")
    row["auto_plan"] = (f"{cfg['tokenizer']['kind']}, {cfg['model']['n_layer']}L x {cfg['model']['d_model']}, "
                        f"ctx {cfg['model']['context_len']}, "
                        f"batch {cfg['train']['global_batch_tokens']}, lr {cfg['optim']['lr']:.2e}, "
                        f"{cfg['runtime']['precision']}, compile {cfg['runtime']['compile']}, "
                        f"threads {plan['estimates'].get('threads')}, steps {plan['outcome']['steps']}")

    # (b) baby, for the same total wall time, as nanoGPT sets it up (its GPT-2 model included);
    # and, for reference, the same settings on lmforge's model (rotary positions, RMSNorm, SwiGLU,
    # QK-norm), which shows how much of the gain is the model and how much the automation.
    row["baby_wall_s"], row["baby_bpb"] = run_baby(out / "baby", data, auto_wall, slack, threads)
    _, row["baby_lmforge_model_bpb"] = run_baby(out / "baby-lmforge-model", data, auto_wall, slack, threads,
                                                LMFORGE_MODEL)
    row["auto_vs_baby_lmforge_model"] = round(
        (row["baby_lmforge_model_bpb"] - row["auto_bpb"]) / row["baby_lmforge_model_bpb"], 4)

    # (c) tune: N trials, each with the same budget for its training
    row["tuned_bpb"] = None
    row["auto_vs_baby"] = round((row["baby_bpb"] - row["auto_bpb"]) / row["baby_bpb"], 4)
    row["goal_auto_beats_baby_by_10pct"] = row["auto_vs_baby"] >= 0.10
    row["wall_deviation"] = {"auto_vs_budget": round((auto_wall - budget) / budget, 4),
                             "baby_vs_auto_wall": round((row["baby_wall_s"] - auto_wall) / auto_wall, 4),
                             "tune_trials_max_abs_vs_budget": None}
    if trials <= 0:
        return row
    tune_dir = out / "tune"
    spec = tune_file(out / "tune.yaml", data, cfg["tokenizer"], budget)  # the auto run's tokenizer
    rc, tune_wall, stdout = lmforge(["tune", str(spec), "--trials", str(trials), "--out", str(tune_dir),
                                     "--json"], out / "tune.log", slack * trials, threads)
    if rc != 0:
        raise SystemExit(f"tune failed; see {out / 'tune.log'}")
    summary = json.loads((tune_dir / "trials.json").read_text())
    best = summary["best_trial"]
    best_row = next(t for t in summary["trials"] if t["number"] == best)
    row["tuned_bpb"] = round(full_val_bpb(Path(best_row["run_dir"])), 4)
    row["tuned_params"] = best_row["params"]
    row["tune_counts"] = summary["counts"]
    trial_dev = [abs(t["wall_s"] - budget) / budget for t in summary["trials"]
                 if t["state"] == "complete" and "wall_s" in t]

    row["auto_vs_baby"] = round((row["baby_bpb"] - row["auto_bpb"]) / row["baby_bpb"], 4)
    row["auto_vs_tuned"] = round((row["auto_bpb"] - row["tuned_bpb"]) / row["tuned_bpb"], 4)
    row["goal_auto_beats_baby_by_10pct"] = row["auto_vs_baby"] >= 0.10
    row["goal_auto_within_3pct_of_tuned"] = row["auto_vs_tuned"] <= 0.03
    row["wall_deviation"] = {
        "auto_vs_budget": round((auto_wall - budget) / budget, 4),
        "baby_vs_auto_wall": round((row["baby_wall_s"] - auto_wall) / auto_wall, 4),
        "tune_trials_max_abs_vs_budget": round(max(trial_dev), 4) if trial_dev else None,
        "tune_total_s": round(tune_wall, 1),
    }
    return row


def main() -> int:
    from lmforge.durations import parse_duration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", default="2m", help="time budget of the auto run and of each tune trial")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"comma-separated, from {', '.join(CORPORA)}")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                    help="folder holding the corpora (default: ../shared/data beside the repository)")
    ap.add_argument("--max-bytes", type=int, default=0, help="use only the first N bytes of each corpus (quick checks)")
    ap.add_argument("--tokenizer", default="auto", choices=("auto", "char", "bpe"),
                    help="tokenizer of the auto run ('auto': its own choice) and so of the tuned trials; the baby "
                         "setting is always char")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "lmforge-bench-auto"),
                    help="where runs go (default: a folder in the system temp dir)")
    args = ap.parse_args()
    budget = parse_duration(args.budget)
    out = Path(args.out)
    tokenizer = [] if args.tokenizer == "auto" else ["--tokenizer.kind", args.tokenizer]
    for name in args.corpora.split(","):
        src = Path(args.data_root) / CORPORA[name]
        if not src.is_file():
            print(json.dumps({"corpus": name, "error": f"{src} not found"}), flush=True)
            continue
        data = slice_corpus(src, args.max_bytes, out / "slices" / f"{name}.txt") if args.max_bytes else src
        row = bench_corpus(name, data, out / name, budget, args.trials, tokenizer)
        print(json.dumps(row), flush=True)
        dev = row["wall_deviation"]
        print(f"# {name}: wall vs budget: auto {100 * dev['auto_vs_budget']:+.1f}%, baby vs auto wall "
              f"{100 * dev['baby_vs_auto_wall']:+.1f}%, tune trials up to "
              f"{100 * (dev['tune_trials_max_abs_vs_budget'] or 0):.1f}% off their budget", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
