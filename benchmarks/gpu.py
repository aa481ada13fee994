"""GPU benchmark: GPT-2 small (124M, context 1024) throughput and MFU, and nanoGPT's shakespeare-char recipe.

    python benchmarks/gpu.py --data ../shared/data/tinyshakespeare/input.txt      # on a GPU machine, < 8 min
    python benchmarks/gpu.py --smoke --data ../shared/data/tinyshakespeare/input.txt   # CPU: tiny shapes, gloo

1. Throughput: a GPT-2-small shape (12 x 768, 12 heads, context 1024, vocab 50304, LayerNorm,
   learned positions, tanh-GELU MLP, tied embeddings) trained with lmforge's own pieces (the
   layout, `parallelize.build_model`, `wrap_model`, `train_step`, AdamW) on random tokens, bf16
   autocast and torch.compile on a GPU. For one process (the single-device path) and, with two or
   more GPUs, DDP and FSDP on all of them (torchrun). Reports tokens/s (steady state, after the
   compile warm-up), model FLOPs utilisation (the model's training FLOPs per token x tokens/s,
   against the device's published dense bf16 peak) and peak memory per process. With one process
   train.parallel fsdp trains unsharded (sharding one process buys nothing), so one GPU measures
   one configuration.
2. nanoGPT's GPU shakespeare-char recipe through `lmforge train` (6 x 384, 6 heads, context 256,
   batch 64, dropout 0.2, lr 1e-3 -> 1e-4 cosine over 5000 steps, AdamW beta2 0.99, 100 warm-up steps, evaluation
   every 250): the wall time at which validation loss first reaches 1.47 (nanoGPT: 1.4697 after
   5000 iterations, about 3 minutes on an A100).

`--smoke` runs both parts with tiny shapes on the CPU (1 process, DDP 2 and FSDP 2 over gloo) to
check the benchmark itself; its figures mean nothing. Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Published dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of the device name.
BF16_PEAK = {"H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "GH200": 989e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12, "RTX 3090": 71e12}

GPT2 = dict(n_layer=12, n_head=12, d_model=768, context_len=1024, vocab=50304, micro_batch=16, steps=30, warmup=10)
SMOKE = dict(n_layer=2, n_head=2, d_model=64, context_len=64, vocab=256, micro_batch=4, steps=4, warmup=2)


def peak_flops(device) -> tuple[float | None, str]:
    import torch

    if device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, flops in BF16_PEAK.items():
        if key in name:
            return flops, name
    return None, name


def throughput_worker(args) -> None:
    """One process of a throughput configuration (launched alone or by torchrun)."""
    import torch

    from lmforge.config import ModelConfig, OptimConfig
    from lmforge.lm.model import build_model
    from lmforge.trainer import parallelize
    from lmforge.trainer.optim import build_optimizer
    from lmforge.trainer.runtime import init_runtime, wrap_model
    from lmforge.trainer.step import train_step

    shape = SMOKE if args.smoke else GPT2
    rt = init_runtime("auto", 1 if args.smoke else 0)
    on_gpu = rt.device.type == "cuda"
    rt.precision = "bf16" if on_gpu else "fp32"
    cfg = ModelConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], d_model=shape["d_model"],
                      context_len=shape["context_len"], norm="layer", position="learned", mlp="gelu_tanh",
                      qk_norm=False, dropout=0.0)

    def make():
        return build_model(cfg, shape["vocab"], seed=0)

    layout = parallelize.choose_layout(args.parallel, 1, "none", cfg, shape["vocab"], parallelize.count_parameters(make),
                                       shape["micro_batch"], "adamw", rt)
    if layout.sharded and on_gpu:
        layout.param_dtype = torch.bfloat16  # FSDP's mixed precision: bf16 compute, fp32 reduction
    model = parallelize.build_model(make, layout, rt)
    step_model = wrap_model(model, rt, compile_model=on_gpu)
    optimizer = build_optimizer(model, OptimConfig(), rt.device.type)
    gen = torch.Generator().manual_seed(rt.rank)
    tokens = torch.randint(0, shape["vocab"], (shape["micro_batch"], shape["context_len"] + 1), generator=gen)
    batch = (tokens[:, :-1].to(rt.device), tokens[:, 1:].to(rt.device))

    def sync():
        if on_gpu:
            torch.cuda.synchronize()
        rt.barrier()

    def step():
        return train_step(step_model, model, lambda m, b: m(*b), lambda i: batch, 1, optimizer, rt, 1.0)

    for _ in range(shape["warmup"]):  # compile, allocator and communication warm-up
        step()
    sync()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(shape["steps"]):
        loss, _ = step()
    sync()
    wall = time.perf_counter() - t0
    tokens_per_s = shape["steps"] * shape["micro_batch"] * shape["context_len"] * rt.world_size / wall
    peak, device_name = peak_flops(rt.device)
    flops_per_token = model.flops_per_token()
    peak_mem = (torch.cuda.max_memory_allocated(rt.device) if on_gpu
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    mems = [None] * rt.world_size
    if rt.distributed:
        torch.distributed.all_gather_object(mems, peak_mem)
    else:
        mems = [peak_mem]
    if rt.is_main:
        Path(args.result).write_text(json.dumps({
            "layout": layout.describe(), "processes": rt.world_size, "device": device_name,
            "parameters": model.num_params(non_embedding=False), "tokens_per_s": tokens_per_s,
            "mfu": flops_per_token * tokens_per_s / (peak * rt.world_size) if peak else None,
            "peak_memory_gib": [m / 2**30 for m in mems], "loss": loss}))
    if rt.distributed:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throughput(args, base: Path, parallel: str, nproc: int) -> dict:
    result = base / f"throughput-{parallel}-{nproc}.json"
    cmd = [sys.executable, __file__, "--worker", "--parallel", parallel, "--result", str(result),
           *(["--smoke"] if args.smoke else [])]
    if nproc > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, LMFORGE_NO_PROGRESS="1"), timeout=args.timeout)
    if done.returncode or not result.is_file():
        return {"parallel": parallel, "processes": nproc, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return {"parallel": parallel, **json.loads(result.read_text())}


def shakespeare(args, base: Path) -> dict:
    """nanoGPT's GPU shakespeare-char recipe through the real `lmforge train`."""
    from lmforge.config import load_config
    from lmforge.lm.pretrain import train

    steps = 20 if args.smoke else args.shakespeare_steps
    overrides = {"data.path": args.data, "out": str(base / "shakespeare"), "sample.num_samples": "0",
                 "model.n_layer": "6", "model.n_head": "6", "model.d_model": "384", "model.context_len": "256",
                 "model.dropout": "0.2", "train.global_batch_tokens": str(64 * 256), "train.max_steps": str(steps),
                 "eval.interval": "10" if args.smoke else "250", "optim.lr": "1e-3", "optim.beta2": "0.99", "schedule.min_lr": "1e-4",
                 "schedule.warmup_steps": "100", "runtime.compile": "off" if args.smoke else "on"}
    if args.smoke:
        overrides.update({"model.n_layer": "2", "model.d_model": "64", "model.n_head": "2", "model.context_len": "64",
                          "train.global_batch_tokens": str(8 * 64), "schedule.warmup_steps": "2",
                          "eval.max_tokens": "4096"})
    cfg = load_config(ROOT / "configs" / "shakespeare-char.yaml", overrides)
    t0 = time.perf_counter()
    result = train(cfg, progress=False, overwrite=True)
    wall = time.perf_counter() - t0
    records = [json.loads(x) for x in (base / "shakespeare" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["val_loss"], r.get("elapsed_s")) for r in records if "val_loss" in r]
    reached = next(((step, t) for step, loss, t in evals if loss <= args.target), None)
    return {"steps": result.steps, "val_loss": result.val_loss, "wall_s": wall, "evals": evals,
            "target": args.target, "reached_at_step": reached[0] if reached else None,
            "seconds_to_target": reached[1] if reached else None}


def show(r: dict) -> None:
    if "error" in r:
        print(f"{r['parallel']:<5} x {r['processes']}: FAILED: {r['error'][:200]}", flush=True)
        return
    mfu = f"MFU {r['mfu']:.1%}" if r["mfu"] is not None else "MFU -"
    mem = "/".join(f"{m:.2f}" for m in r["peak_memory_gib"])
    print(f"{r['layout'][:60]:<60} {r['tokens_per_s']:>12,.0f} tok/s  {mfu:<10} peak {mem} GiB/process "
          f"({r['device']}, {r['parameters'] / 1e6:.1f}M parameters)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/tinyshakespeare/input.txt", help="tiny Shakespeare input.txt")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the benchmark, not a GPU")
    ap.add_argument("--target", type=float, default=1.47, help="validation loss to time shakespeare-char to")
    ap.add_argument("--shakespeare-steps", type=int, default=5000)
    ap.add_argument("--skip-shakespeare", action="store_true")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per throughput configuration")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--parallel", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        throughput_worker(args)
        return

    import torch

    gpus = torch.cuda.device_count()
    if not gpus and not args.smoke:
        raise SystemExit("no CUDA device: this benchmark measures GPUs (use --smoke to check it on the CPU)")
    base = Path(tempfile.mkdtemp(prefix="lmforge-gpu-"))
    runs = [throughput(args, base, "auto", 1)]
    show(runs[-1])
    many = 2 if args.smoke else gpus
    if many > 1:
        for parallel in ("ddp", "fsdp"):
            runs.append(throughput(args, base, parallel, many))
            show(runs[-1])
    char = None
    if not args.skip_shakespeare:
        char = shakespeare(args, base)
        for step, loss, t in char["evals"]:
            print(f"shakespeare-char step {step:>5}  val loss {loss:.4f}  {t or 0:7.1f} s", flush=True)
        print(f"target {args.target}: " + (f"reached at step {char['reached_at_step']} after "
                                           f"{char['seconds_to_target']:.1f} s" if char["reached_at_step"]
                                           else "not reached"), flush=True)
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({"smoke": args.smoke, "gpus": gpus, "throughput": runs,
                      "shakespeare_char": {k: v for k, v in (char or {}).items() if k != "evals"} or None}))


if __name__ == "__main__":
    main()
