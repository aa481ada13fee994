"""Compression benchmark: quantization, distillation and pruning, each against the honest reference.

    python benchmarks/compress.py [--data-root DIR] [--quick] [--subjects shakespeare,tang,big,imdb,chnsenticorp]

Subjects: (a) tiny Shakespeare and (b) the Tang poems, each the model `lmforge train DATA --auto
--time 10m` makes; (c) a GPT of about 100M parameters (random weights: speed and size only,
where decoding reads far more weight bytes than it spends in per-operation overhead); (d) the
default IMDB and ChnSentiCorp classifiers (`lmforge classify train` with no options).

Rows (one JSON line each): subject, method, params, file_mb, speed (LM: greedy decode tokens/s at
batch 1; classifier: predictions/s), speed_b8 (LM decode at batch 8), quality (bits per byte on the
validation split, or test accuracy), ref_speed, ref_quality, ref_file_mb (the reference the goal
names: bf16 for quantization, the teacher for distillation, the original for pruning), and for
distillation and pruning `scratch_quality`: the same student shape trained from scratch for the
same total time (the student's time plus the teacher's training time). Quantization rows also
carry the fp32 figures (fp32_*) and the kernels that ran. Pruning also draws
RUN/<subject>/prune_curve.png: bits per byte against kept fraction, pruned + recovered and from
scratch.

The full run needs a quiet machine and takes a few hours on 2 cores (two 10-minute teachers,
distillation and from-scratch students, three pruning levels each with recovery and a scratch
model); `--quick` runs everything with small budgets and sliced data in about 20 minutes, to
check that it works end to end (its figures are not the goals' measurement).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lmforge(args: list[str], log: Path, timeout: float = 14400) -> dict:
    """Run one lmforge command in its own process; the last stdout line is its JSON report."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1")
    with open(log, "a", encoding="utf-8") as err:
        err.write(f"$ lmforge {' '.join(args)}\n")
        err.flush()
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=err, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"lmforge {' '.join(args)} failed ({p.returncode}); see {log}")
    lines = [x for x in p.stdout.strip().splitlines() if x.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    out["_wall_s"] = time.perf_counter() - t0
    return out


def slice_text(src: Path, max_bytes: int, dst: Path) -> Path:
    """The first max_bytes of a text, cut at a blank line (quick mode)."""
    text = src.read_bytes()[:max_bytes].decode("utf-8", errors="ignore")
    cut = text.rfind("\n\n")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text[:cut if cut > 0 else len(text)] + "\n", encoding="utf-8")
    return dst


def bpb(run: Path, max_tokens: int) -> float:
    from lmforge.lm.evaluate import evaluate

    return evaluate(run, max_tokens=max_tokens)["val_bpb"]


def emit(row: dict) -> dict:
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return row


# --- quantization ------------------------------------------------------------------------------


def bf16_row(model, val, lengths, eval_tokens: int, tmp: Path) -> dict:
    """The bf16 reference: weights stored and run in bf16 (what the goals compare int8 and int4 with)."""
    import torch

    from lmforge.compress.report import lm_row
    from lmforge.trainer.checkpoint import save_weights

    m = copy.deepcopy(model).to(torch.bfloat16)
    save_weights(m.state_dict(), tmp / "bf16.safetensors")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the model mixes fp32 attention with bf16 matmuls
        r = lm_row("bf16", m, tmp / "bf16.safetensors", val, lengths, eval_tokens,
                   model.num_params(non_embedding=False))
    return {"file_mb": r.file_mb, "speed": r.speed_b1, "speed_b8": r.speed_b8, "quality": r.quality}


def quantize_rows(subject: str, teacher: Path, work: Path, eval_tokens: int, log: Path) -> list[dict]:
    from lmforge.data.tokens import TokenFile
    from lmforge.lm.model import load_run_model
    from lmforge.lm.task import token_byte_lengths

    model, tok, _ = load_run_model(teacher)
    val = TokenFile(teacher / "data" / "val.bin").tokens
    ref = bf16_row(model, val, token_byte_lengths(tok), eval_tokens, work)
    rows = []
    for method in ("int8", "int4"):
        rep = lmforge(["quantize", str(teacher), "--method", method, "--out", str(work / method), "--json"], log)
        fp32, q = rep["rows"]
        rows.append(emit({"subject": subject, "method": method, "params": q["params"], "file_mb": q["file_mb"],
                          "speed": q["speed_b1"], "speed_b8": q["speed_b8"], "quality": q["quality"],
                          "ref": "bf16", "ref_speed": ref["speed"], "ref_speed_b8": ref["speed_b8"],
                          "ref_quality": ref["quality"], "ref_file_mb": ref["file_mb"],
                          "fp32_speed": fp32["speed_b1"], "fp32_speed_b8": fp32["speed_b8"],
                          "fp32_quality": fp32["quality"], "fp32_file_mb": fp32["file_mb"],
                          "kernel": rep.get("kernel"), "warning": rep.get("warning")}))
    return rows


# --- distillation and pruning --------------------------------------------------------------------


def scratch(config: Path, out: Path, seconds: float, log: Path) -> Path:
    """The same shape and settings trained from a fresh initialization for `seconds`."""
    lmforge(["train", "--config", str(config), "--out", str(out), "--train.time_budget_s", f"{seconds:.0f}",
             "--sample.num_samples", "0", "--json"], log)
    return out


def distill_row(subject: str, teacher: Path, teacher_s: float, work: Path, budget: float, eval_tokens: int,
                log: Path) -> dict:
    rep = lmforge(["distill", "--teacher", str(teacher), "--out", str(work / "distill"), "--auto", "--time",
                   f"{budget:.0f}s", "--json"], log)
    t_row, s_row = rep["rows"]
    base = scratch(work / "distill" / "config.yaml", work / "distill_scratch", budget + teacher_s, log)
    return emit({"subject": subject, "method": "distill", "params": s_row["params"], "file_mb": s_row["file_mb"],
                 "speed": s_row["speed_b1"], "speed_b8": s_row["speed_b8"], "quality": bpb(work / "distill", eval_tokens),
                 "ref": "teacher", "ref_speed": t_row["speed_b1"], "ref_quality": bpb(teacher, eval_tokens),
                 "ref_file_mb": t_row["file_mb"], "scratch_quality": bpb(base, eval_tokens),
                 "scratch_s": round(budget + teacher_s), "student_s": budget,
                 "student_non_embedding": rep["student_non_embedding"],
                 "teacher_non_embedding": rep["teacher_non_embedding"]})


def prune_rows(subject: str, teacher: Path, teacher_s: float, work: Path, keeps: list[float], recover: float,
               eval_tokens: int, log: Path) -> list[dict]:
    rows = []
    ref_q = bpb(teacher, eval_tokens)
    for keep in keeps:
        out = work / f"prune_{keep:g}"
        rep = lmforge(["prune", str(teacher), "--keep", f"{keep:g}", "--out", str(out), "--recover", f"{recover:.0f}s",
                       "--json"], log)
        orig, before, after = rep["rows"]
        base = scratch(out / "config.yaml", work / f"prune_{keep:g}_scratch", recover + teacher_s, log)
        rows.append(emit({"subject": subject, "method": f"prune_{keep:g}", "params": after["params"],
                          "file_mb": after["file_mb"], "speed": after["speed_b1"], "speed_b8": after["speed_b8"],
                          "quality": bpb(out, eval_tokens), "quality_before_recovery": before["quality"],
                          "ref": "original", "ref_speed": orig["speed_b1"], "ref_quality": ref_q,
                          "ref_file_mb": orig["file_mb"], "scratch_quality": bpb(base, eval_tokens),
                          "scratch_s": round(recover + teacher_s), "recover_s": recover, "shape": rep.get("shape")}))
    plot_prune_curve(rows, ref_q, work / "prune_curve.png", subject)
    return rows


def plot_prune_curve(rows: list[dict], ref_q: float, path: Path, subject: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = [float(r["method"].split("_")[1]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(keeps, [r["quality"] for r in rows], "o-", label="pruned + recovery")
    ax.plot(keeps, [r["scratch_quality"] for r in rows], "s--", label="same shape from scratch, same total time")
    ax.axhline(ref_q, color="gray", lw=0.8, label="original")
    ax.set_xlabel("kept fraction of non-embedding parameters")
    ax.set_ylabel("bits per byte (validation)")
    ax.set_title(f"{subject}: pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lm_subject(name: str, data: Path, work: Path, opt) -> list[dict]:
    log = work / "log.txt"
    if opt.quick:
        data = slice_text(data, 400_000, work / "data.txt")
    t0 = time.perf_counter()
    lmforge(["train", str(data), "--auto", "--time", f"{opt.budget:.0f}s", "--out", str(work / "teacher"),
             "--json"], log)
    teacher_s = time.perf_counter() - t0
    rows = quantize_rows(name, work / "teacher", work, opt.eval_tokens, log)
    rows.append(distill_row(name, work / "teacher", teacher_s, work, opt.distill_s, opt.eval_tokens, log))
    rows += prune_rows(name, work / "teacher", teacher_s, work, opt.keeps, opt.recover_s, opt.eval_tokens, log)
    return rows


# --- the 100M model --------------------------------------------------------------------------------


def big_subject(work: Path, opt) -> list[dict]:
    """A 100M-parameter GPT (random weights): decode speed and file size of fp32, bf16, int8 and int4."""
    import torch

    from lmforge.compress.report import decode_tokens_per_s
    from lmforge.config import ModelConfig
    from lmforge.models import quant
    from lmforge.models.gpt import GPT
    from lmforge.trainer.checkpoint import save_weights

    torch.manual_seed(0)
    base = GPT(ModelConfig(n_layer=14, n_head=12, d_model=768, context_len=256), 4096).eval()
    params = base.num_params(non_embedding=False)
    tokens = 16 if opt.quick else 64
    figures = {}
    for method in ("fp32", "bf16", "int8", "int4"):
        m = copy.deepcopy(base)
        if method == "bf16":
            m = m.to(torch.bfloat16)
        elif method != "fp32":
            quant.quantize(m, method, 128)
        save_weights(m.state_dict(), work / f"{method}.safetensors")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=method == "bf16"):
            figures[method] = {"file_mb": (work / f"{method}.safetensors").stat().st_size / 2**20,
                               "speed": decode_tokens_per_s(m, 1, new_tokens=tokens, repeats=2 if opt.quick else 4),
                               "speed_b8": decode_tokens_per_s(m, 8, new_tokens=tokens, repeats=2 if opt.quick else 4),
                               "kernel": {quant.KERNEL_NAMES[k]: n for k, n in quant.kernels_used(m).items()}}
        del m
    rows = []
    ref, fp32 = figures["bf16"], figures["fp32"]
    for method in ("int8", "int4"):
        f = figures[method]
        rows.append(emit({"subject": "gpt_100m", "method": method, "params": params, "file_mb": f["file_mb"],
                          "speed": f["speed"], "speed_b8": f["speed_b8"], "quality": None, "ref": "bf16",
                          "ref_speed": ref["speed"], "ref_speed_b8": ref["speed_b8"], "ref_quality": None,
                          "ref_file_mb": ref["file_mb"], "fp32_speed": fp32["speed"], "fp32_speed_b8": fp32["speed_b8"],
                          "fp32_file_mb": fp32["file_mb"], "kernel": f["kernel"],
                          "size_vs_bf16": round(ref["file_mb"] / f["file_mb"], 3),
                          "speed_vs_bf16": round(f["speed"] / ref["speed"], 3),
                          "speed_vs_fp32": round(f["speed"] / fp32["speed"], 3)}))
    return rows


# --- classifiers ----------------------------------------------------------------------------------


def subsample_jsonl(src: Path, n: int, dst: Path, seed: int = 0) -> Path:
    import random

    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = [x for x in f if x.strip()]
    random.Random(seed).shuffle(lines)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(lines[:n]), encoding="utf-8")
    return dst


def classifier_subject(name: str, train: Path, test: Path, work: Path, opt) -> list[dict]:
    log = work / "log.txt"
    if opt.quick:
        train = subsample_jsonl(train, 3000, work / "train.jsonl")
    if opt.test_max:
        test = subsample_jsonl(test, opt.test_max, work / "test.jsonl")
    args = ["classify", "train", "--data", str(train), "--test", str(test), "--out", str(work / "teacher"), "--json"]
    lmforge(args + (["--train.epochs", "1"] if opt.quick else []), log)
    rows = []
    rep = lmforge(["quantize", str(work / "teacher"), "--method", "int8", "--out", str(work / "int8"), "--json"], log)
    orig, q = rep["rows"]
    rows.append(emit({"subject": name, "method": "int8", "params": q["params"], "file_mb": q["file_mb"],
                      "speed": q["speed_b1"], "quality": q["quality"], "ref": "original", "ref_speed": orig["speed_b1"],
                      "ref_quality": orig["quality"], "ref_file_mb": orig["file_mb"], "kernel": rep.get("kernel"),
                      "warning": rep.get("warning")}))
    for student in ("fasttext", "bilstm") if not opt.quick else ("fasttext",):
        d = lmforge(["distill", "--teacher", str(work / "teacher"), "--out", str(work / f"distill_{student}"),
                     "--student", student, "--alpha", "0.5", "--temperature", "1", "--json"], log)
        t, s = d["rows"]
        rows.append(emit({"subject": name, "method": f"distill_{student}", "params": s["params"],
                          "file_mb": s["file_mb"], "speed": s["speed_b1"], "quality": s["quality"], "ref": "teacher",
                          "ref_speed": t["speed_b1"], "ref_quality": t["quality"], "ref_file_mb": t["file_mb"],
                          "speedup": round(s["speed_b1"] / t["speed_b1"], 2),
                          "points": round(100 * (s["quality"] - t["quality"]), 2),
                          "student_total_s": d.get("student_total_s")}))
    return rows


def fractions(text: str) -> list[float]:
    """--keeps: comma-separated kept fractions, each in (0, 1]."""
    try:
        keeps = [float(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.75,0.5") from None
    if not all(0 < k <= 1 for k in keeps):
        raise argparse.ArgumentTypeError(f"{text!r}: each kept fraction must be in (0, 1]")
    return keeps


def not_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is below 0")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid float value"
    return parse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", help="work folder (default: a new temporary folder)")
    p.add_argument("--quick", action="store_true", help="small budgets and sliced data: checks it works end to end")
    p.add_argument("--subjects", default="shakespeare,tang,big,imdb,chnsenticorp")
    p.add_argument("--teacher-s", type=float, default=0.0,
                   help="the LM teachers' --time in seconds (default 600; quick 60, which planning alone can use up "
                        "on a loaded machine)")
    p.add_argument("--distill-s", type=not_negative(float), default=0.0,
                   help="the LM student's distillation time T in seconds (default 600; quick 30); its from-scratch "
                        "rival trains for T plus the teacher's time")
    p.add_argument("--recover-s", type=not_negative(float), default=0.0,
                   help="recovery training after each pruning, in seconds (default 300; quick 15)")
    p.add_argument("--keeps", type=fractions, default=None, help="kept fractions to prune to (default 0.75,0.5,0.25; quick 0.5)")
    p.add_argument("--test-max", type=not_negative(int), default=0,
                   help="score classifiers on this many test texts (a fixed random sample; default all, quick 1000)")
    opt = p.parse_args()
    opt.budget = opt.teacher_s or (60.0 if opt.quick else 600.0)  # the teacher: `train --auto --time`
    opt.distill_s = opt.distill_s or (30.0 if opt.quick else 600.0)
    opt.recover_s = opt.recover_s or (15.0 if opt.quick else 300.0)
    opt.keeps = opt.keeps or ([0.5] if opt.quick else [0.75, 0.5, 0.25])
    opt.test_max = opt.test_max or (1000 if opt.quick else 0)
    opt.eval_tokens = 32768 if opt.quick else 262144
    root, work = Path(opt.data_root), Path(opt.out or tempfile.mkdtemp(prefix="lmforge_compress_"))
    print(f"work folder: {work}", file=sys.stderr)
    subjects = {
        "shakespeare": lambda w: lm_subject("shakespeare", root / "tinyshakespeare" / "input.txt", w, opt),
        "tang": lambda w: lm_subject("tang", root / "tang_poems" / "tang_poems.simplified.txt", w, opt),
        "big": lambda w: big_subject(w, opt),
        "imdb": lambda w: classifier_subject("imdb", root / "imdb" / "train.jsonl.gz", root / "imdb" / "test.jsonl.gz",
                                             w, opt),
        "chnsenticorp": lambda w: classifier_subject("chnsenticorp", root / "chnsenticorp" / "train.jsonl",
                                                     root / "chnsenticorp" / "test.jsonl", w, opt),
    }
    rows, t0 = [], time.perf_counter()
    for name in opt.subjects.split(","):
        w = work / name
        w.mkdir(parents=True, exist_ok=True)
        try:
            rows += subjects[name](w)
        except Exception as e:  # noqa: BLE001 - one subject failing must not hide the others
            rows.append(emit({"subject": name, "error": f"{type(e).__name__}: {e}"}))
    print(json.dumps({"summary": True, "rows": len(rows), "errors": sum("error" in r for r in rows),
                      "quick": opt.quick, "wall_s": round(time.perf_counter() - t0), "work": str(work)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
