"""Scale-out on this CPU: tokens/s and peak memory per process for 1 process, DDP on 2 and FSDP on 2, and
a per-process memory cap that DDP does not fit under and FSDP does.

    python benchmarks/scale.py                       # GPT 12 x 768 (about 85M parameters), 4 steps each
    python benchmarks/scale.py --n-layer 4 --d-model 256 --steps 3      # a quick look

Each configuration is a real `lmforge train` (torchrun, gloo, fp32, one thread per process) on a
synthetic character corpus, in processes of its own, so each peak resident memory (ru_maxrss) is
its own. The cap is a per-process limit on the data segment (setrlimit RLIMIT_DATA, what `ulimit -d`
sets), by default halfway between the FSDP and the DDP peaks measured without it; with the cap,
train.parallel auto sees the limit and picks FSDP by itself. Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the king and queen walk in the garden while the bells ring over the quiet town and a cat sleeps by "
         "the warm fire as rain falls on old stone roofs").split()


def make_corpus(path: Path, n_docs: int = 400) -> Path:
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(20, 60))).capitalize() + "." for _ in range(n_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def train_args(args, corpus: Path, out: Path, parallel: str) -> list[str]:
    opts = {"tokenizer.kind": "char", "model.n_layer": args.n_layer, "model.d_model": args.d_model,
            "model.n_head": max(1, args.d_model // 64), "model.context_len": args.context,
            "train.global_batch_tokens": args.context * args.batch, "train.max_steps": args.steps,
            "train.parallel": parallel, "train.activation_checkpointing": "none", "runtime.precision": "fp32",
            "runtime.compile": "off", "runtime.threads": 1, "train.log_interval": 1, "eval.interval": args.steps,
            "eval.max_tokens": args.context * 4, "sample.num_samples": 0, "schedule.warmup_steps": 1}
    return ["train", str(corpus), "--out", str(out), *[a for k, v in opts.items() for a in (f"--{k}", str(v))]]


def worker(out: Path, cap: int, argv: list[str]) -> int:
    """One process of a configuration: cap the data segment, train, record peak memory and throughput."""
    rank = int(os.environ.get("RANK", 0))
    if cap:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
    record: dict = {"rank": rank}
    try:
        sys.path.insert(0, str(ROOT))
        from lmforge.cli import main

        code = main(argv)
        record["ok"] = code == 0
        if code:
            record["error"] = f"exit code {code}"
    except BaseException as e:  # noqa: BLE001 - the benchmark reports any failure (out of memory above all)
        record.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/status", encoding="ascii") as f:
        record["vm_data_mb"] = next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmData:"))
    (out.parent / f"{out.name}.rank{rank}.json").write_text(json.dumps(record))
    return 0 if record["ok"] else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, corpus: Path, base: Path, name: str, nproc: int, parallel: str, cap: int = 0) -> dict:
    out = base / name
    cmd = [sys.executable, __file__, "--worker", str(out), "--cap", str(cap), "--",
           *train_args(args, corpus, out, parallel)]
    if nproc > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
                    "--master_addr=127.0.0.1"]
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    ranks = []
    for r in range(nproc):
        path = base / f"{name}.rank{r}.json"
        ranks.append(json.loads(path.read_text()) if path.is_file() else
                     {"rank": r, "ok": False, "error": "killed (torchrun stopped it after another rank failed)"})
    ok = all(r["ok"] for r in ranks)
    result = {"name": name, "processes": nproc, "parallel": parallel, "cap_mb": round(cap / 2**20) if cap else None,
              "ok": ok, "wall_s": round(wall, 1), "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in ranks
                                                                 if "peak_rss_mb" in r],
              "errors": sorted({r["error"] for r in ranks if not r["ok"]})}
    if ok:
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        rates = sorted(r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > 1)
        result["tokens_per_s"] = round(rates[len(rates) // 2], 1) if rates else None
        header = (out / "runtime.json")
        result["chosen"] = _chosen_layout(out) if header.is_file() else None
    return result


def _chosen_layout(out: Path) -> str | None:
    # The layout is printed in the run header; checkpoints tell it too: sharded ones have a DCP folder.
    last = sorted((out / "checkpoints").glob("step_*"))
    return ("fsdp" if (last[-1] / "sharded").is_dir() else "ddp") if last else None


def show(r: dict) -> None:
    peak = "/".join(f"{m:,.0f}" for m in r["peak_rss_mb"]) or "-"
    speed = f"{r['tokens_per_s']:>8,.0f} tok/s" if r.get("tokens_per_s") else "         -     "
    cap = f"cap {r['cap_mb']:,} MB" if r["cap_mb"] else "no cap"
    state = "ok" if r["ok"] else "FAILED: " + "; ".join(r["errors"])[:140]
    print(f"{r['name']:<14} {r['processes']} x {r['parallel']:<5} {cap:<14} {speed}  peak RSS {peak:>13} MB/process"
          f"  {r['wall_s']:>6.1f} s  {state}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (global)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cap-mb", type=float, default=0, help="per-process cap (default: between FSDP's and DDP's peaks)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (several GB at the default shape)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, default=0, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.worker:
        raise SystemExit(worker(Path(args.worker), args.cap, [a for a in rest if a != "--"]))

    base = Path(tempfile.mkdtemp(prefix="lmforge-scale-"))
    corpus = make_corpus(base / "corpus.txt")
    runs = {}
    for name, nproc, parallel in (("one", 1, "auto"), ("ddp2", 2, "ddp"), ("fsdp2", 2, "fsdp")):
        runs[name] = run(args, corpus, base, name, nproc, parallel)
        show(runs[name])
    ddp_peak = max(runs["ddp2"]["peak_rss_mb"] or [0])
    fsdp_peak = max(runs["fsdp2"]["peak_rss_mb"] or [0])
    cap = int((args.cap_mb or (ddp_peak + fsdp_peak) / 2) * 2**20)
    for name, parallel in (("ddp2_capped", "ddp"), ("fsdp2_capped", "fsdp"), ("auto2_capped", "auto")):
        runs[name] = run(args, corpus, base, name, 2, parallel, cap)
        show(runs[name])
    if args.keep:
        print(f"(run folders under {base})")
    else:
        shutil.rmtree(base, ignore_errors=True)
    ratio = fsdp_peak / ddp_peak if ddp_peak else None
    print(json.dumps({
        "shape": f"{args.n_layer}x{args.d_model}", "tokens_per_step": args.context * args.batch,
        "one_tokens_per_s": runs["one"].get("tokens_per_s"), "ddp2_tokens_per_s": runs["ddp2"].get("tokens_per_s"),
        "fsdp2_tokens_per_s": runs["fsdp2"].get("tokens_per_s"),
        "one_peak_rss_mb": max(runs["one"]["peak_rss_mb"] or [0]), "ddp2_peak_rss_mb": ddp_peak,
        "fsdp2_peak_rss_mb": fsdp_peak, "fsdp_over_ddp_peak": round(ratio, 3) if ratio else None,
        "cap_mb": round(cap / 2**20), "ddp2_fits_cap": runs["ddp2_capped"]["ok"],
        "fsdp2_fits_cap": runs["fsdp2_capped"]["ok"], "auto_under_cap_chose": runs["auto2_capped"].get("chosen"),
    }))


if __name__ == "__main__":
    main()
