"""Budget curve: does more time give a better model? `--auto` at several budgets on three corpora.

For each corpus (tiny Shakespeare, the Tang poems, WikiText-2) and each budget, runs
`lmforge train DATA --auto --time BUDGET` in a fresh process, as a user would, and scores the saved
model (the weights the run keeps) on the whole validation split in bits per byte. The 2-minute run
is repeated (three times by default) to show the spread from run to run. Tiny Shakespeare and the
Tang poems hold out their last 10% (`--data.doc_split file --data.val_fraction 0.1`, as nanoGPT
does); WikiText-2 trains on wiki.train.tokens and is scored on wiki.valid.tokens.

Prints one JSON line per run (corpus, budget_s, repeat, wall_s, bpb, plan), writes a PNG of bits
per byte against budget per corpus, and ends with one JSON line that checks the goals: bits per
byte non-increasing from each budget to the next (allowing the spread of the 2-minute repeats) and
every run within 5% of its budget.

    python benchmarks/budget_curve.py                                   # all of it: hours on a CPU
    python benchmarks/budget_curve.py --budgets 1m,2m,5m --corpora tinyshakespeare
    python benchmarks/budget_curve.py --budgets 20s --corpora tinyshakespeare --repeats 1   # a smoke run
    python benchmarks/budget_curve.py --corpora tang_poems --with-rows shakespeare.out     # one PNG for both

The data is read where it lies (default ../shared/data beside the repository), never copied into it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (training text, extra options) per corpus, relative to --data-root.
CORPORA = {
    "tinyshakespeare": ("tinyshakespeare/input.txt", ["--data.doc_split", "file", "--data.val_fraction", "0.1"]),
    "tang_poems": ("tang_poems/tang_poems.simplified.txt", ["--data.doc_split", "file", "--data.val_fraction", "0.1"]),
    "wikitext2": ("wikitext2/wiki.train.tokens", ["--data.valid_path", "{root}/wikitext2/wiki.valid.tokens"]),
}
SPREAD_BUDGET_S = 120.0  # the budget whose run is repeated to measure the spread
BUDGET_TOLERANCE = 0.05  # every run must end within 5% of its budget


def run_auto(data: Path, options: list[str], budget_s: float, out: Path) -> tuple[int, float, str]:
    """`lmforge train DATA --auto --time BUDGET` in a fresh process; (exit code, wall seconds, log path)."""
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = out.with_name(out.name + ".log")
    cmd = [sys.executable, "-m", "lmforge.cli", "train", str(data), "--auto", "--time", f"{budget_s:g}s",
           "--out", str(out), "--overwrite", *options, "--json"]
    t = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True,
                           timeout=10 * budget_s + 600, stdin=subprocess.DEVNULL)
    return p.returncode, time.perf_counter() - t, str(log)


def full_val_bpb(run_dir: Path) -> float:
    """Bits per byte of the run's kept weights on its whole validation split."""
    import lmforge

    return float(lmforge.evaluate(run_dir, max_tokens=0)["val_bpb"])


def plan_summary(run_dir: Path) -> dict:
    """What the plan chose, from RUN/plan.json."""
    plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    cfg, est = plan["config"], plan["estimates"]
    tok = cfg["tokenizer"]
    return {"tokenizer": tok["kind"] + (f" {tok['vocab_size']}" if tok["kind"] == "bpe" else ""),
            "n_layer": cfg["model"]["n_layer"], "d_model": cfg["model"]["d_model"],
            "context_len": cfg["model"]["context_len"], "global_batch_tokens": cfg["train"]["global_batch_tokens"],
            "optimizer": cfg["optim"]["kind"], "lr": cfg["optim"]["lr"], "dropout": cfg["model"]["dropout"],
            "precision": cfg["runtime"]["precision"], "compile": cfg["runtime"]["compile"],
            "planned_steps": est.get("steps"), "planned_epochs": est.get("epochs"),
            "steps": (plan.get("outcome") or {}).get("steps")}


def check_curve(rows: list[dict]) -> dict:
    """Per corpus: the median bits per byte per budget, whether it is non-increasing from each budget
    to the next (a rise within the spread of the repeated runs is allowed), and the repeats' spread."""
    out = {}
    for corpus in sorted({r["corpus"] for r in rows}):
        mine = [r for r in rows if r["corpus"] == corpus and r["bpb"] is not None]
        by_budget: dict[float, list[float]] = {}
        for r in mine:
            by_budget.setdefault(r["budget_s"], []).append(r["bpb"])
        budgets = sorted(by_budget)
        medians = [statistics.median(by_budget[b]) for b in budgets]
        repeats = by_budget.get(SPREAD_BUDGET_S, [])
        spread = (max(repeats) - min(repeats)) if len(repeats) > 1 else 0.0
        rises = [(budgets[i], budgets[i + 1]) for i in range(len(budgets) - 1) if medians[i + 1] > medians[i] + spread]
        out[corpus] = {"budgets_s": budgets, "median_bpb": [round(m, 4) for m in medians],
                       "spread_2m": round(spread, 4),
                       "spread_2m_rel": round(spread / min(repeats), 4) if len(repeats) > 1 else None,
                       "non_increasing": not rises, "rises": rises}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for corpus in sorted({r["corpus"] for r in rows}):
        pts = sorted((r["budget_s"], r["bpb"]) for r in rows if r["corpus"] == corpus and r["bpb"] is not None)
        if not pts:
            continue
        ax.scatter([p[0] / 60 for p in pts], [p[1] for p in pts], s=14)
        medians = check_curve([r for r in rows if r["corpus"] == corpus])[corpus]
        ax.plot([b / 60 for b in medians["budgets_s"]], medians["median_bpb"], marker="o", label=corpus)
    ax.set_xscale("log")
    ax.set_xlabel("budget (minutes, whole command)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("lmforge --auto: quality against time budget")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    from lmforge.durations import parse_duration

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"),
                    help="folder holding tinyshakespeare/, tang_poems/ and wikitext2/ (default ../shared/data)")
    ap.add_argument("--budgets", default="1m,2m,5m,10m,20m", help="comma-separated durations")
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"comma-separated, from {', '.join(CORPORA)}")
    ap.add_argument("--repeats", type=int, default=3, help="runs at the 2-minute budget (the spread)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "budget_curve"), help="folder for the runs and the PNG")
    ap.add_argument("--with-rows", action="append", default=[], metavar="FILE",
                    help="also plot and check the runs printed by an earlier invocation (its output saved to "
                         "FILE), so a curve measured corpus by corpus ends in one PNG; repeatable")
    args = ap.parse_args()

    root, out = Path(args.data_root), Path(args.out)
    budgets = sorted(parse_duration(b.strip()) for b in args.budgets.split(",") if b.strip())
    names = [c.strip() for c in args.corpora.split(",") if c.strip()]
    unknown = [c for c in names if c not in CORPORA]
    if unknown:
        raise SystemExit(f"unknown corpora {unknown}; choose from {', '.join(CORPORA)}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for earlier in args.with_rows:
        lines = Path(earlier).read_text(encoding="utf-8").splitlines()
        rows += [r for r in map(json.loads, (x for x in lines if x.startswith("{"))) if "corpus" in r]
    for corpus in names:
        rel, options = CORPORA[corpus]
        data = root / rel
        if not data.exists():
            raise SystemExit(f"{data} not found; pass --data-root (the folder holding {rel.split('/')[0]}/)")
        options = [o.replace("{root}", str(root)) for o in options]
        for budget in budgets:
            for repeat in range(args.repeats if budget == SPREAD_BUDGET_S else 1):
                run_dir = out / corpus / f"{budget:g}s-{repeat}"
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                rc, wall, log = run_auto(data, options, budget, run_dir)
                row = {"corpus": corpus, "budget_s": budget, "repeat": repeat, "wall_s": round(wall, 1),
                       "within_5pct": abs(wall - budget) <= BUDGET_TOLERANCE * budget, "bpb": None, "plan": None}
                if rc == 0:
                    row["bpb"], row["plan"] = round(full_val_bpb(run_dir), 4), plan_summary(run_dir)
                else:
                    row["error"] = f"exit code {rc}; see {log}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    png = out / "budget_curve.png"
    plot(rows, png)
    curve = check_curve(rows)
    print(json.dumps({"bench": "budget_curve", "runs": len(rows), "failed": sum(r["bpb"] is None for r in rows),
                      "all_within_5pct": all(r["within_5pct"] for r in rows), "curve": curve,
                      "all_non_increasing": all(c["non_increasing"] for c in curve.values()), "png": str(png)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
