"""Peak memory of `lmforge import` and `lmforge export` on a 0.5B-parameter checkpoint made here.

    python benchmarks/import_memory.py [--shard-mb 200] [--keep DIR]

Writes a random-weight Transformers checkpoint with Qwen2.5-0.5B's shape (24 layers, 896 wide,
14 heads with 2 key/value heads, MLP 4864, vocabulary 151,936, tied embeddings) in bf16, sharded,
with a small tokenizer; then, each in its own child process so its peak RSS is its own: Python with
torch and lmforge imported (the baseline), the import into a run folder, the export of that run back
to Transformers, and a q8_0 GGUF export. Prints one line per step, then one JSON line.
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

ROOT = Path(__file__).resolve().parent.parent
SHAPE = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
         "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768}


def make_checkpoint(folder: Path, shard_mb: float) -> int:
    """A sharded bf16 Qwen2 checkpoint of random weights, written tensor by tensor; returns its bytes."""
    import torch

    from lmforge.config import TokenizerConfig
    from lmforge.data.tokenizer import train_tokenizer
    from lmforge.trainer.safetensors_io import SafetensorsWriter

    d, ff, hd = SHAPE["hidden_size"], SHAPE["intermediate_size"], 64
    kv = SHAPE["num_key_value_heads"] * hd
    tensors = [("model.embed_tokens.weight", (SHAPE["vocab_size"], d))]
    for i in range(SHAPE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (d,)), (p + "self_attn.q_proj.weight", (d, d)),
                    (p + "self_attn.q_proj.bias", (d,)), (p + "self_attn.k_proj.weight", (kv, d)),
                    (p + "self_attn.k_proj.bias", (kv,)), (p + "self_attn.v_proj.weight", (kv, d)),
                    (p + "self_attn.v_proj.bias", (kv,)), (p + "self_attn.o_proj.weight", (d, d)),
                    (p + "post_attention_layernorm.weight", (d,)), (p + "mlp.gate_proj.weight", (ff, d)),
                    (p + "mlp.up_proj.weight", (ff, d)), (p + "mlp.down_proj.weight", (d, ff))]
    tensors.append(("model.norm.weight", (d,)))
    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = 2 * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > shard_mb * 1e6:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        writer = SafetensorsWriter(folder / fname, [(n, torch.bfloat16, s) for n, s in shard], {"format": "pt"})
        for name, shape in shard:
            t = torch.randn(shape, generator=gen).mul_(0.02) if len(shape) == 2 else torch.ones(shape)
            writer.write(name, t.to(torch.bfloat16))
            weight_map[name] = fname
            total += 2 * t.numel()
        writer.close()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **SHAPE, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    tok = train_tokenizer(["a small tokenizer for a large random model\n"] * 50,
                          TokenizerConfig(vocab_size=300, pretokenizer="qwen2"))
    (folder / "tokenizer.json").write_text(json.dumps(tok.hf_json()))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return total


def child(step: dict) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (the baseline counts torch, as every command loads it)

    from lmforge.export.gguf import export_gguf
    from lmforge.export.hf import export_hf
    from lmforge.export.hf_import import import_hf

    t0 = time.perf_counter()
    if step["op"] == "import":
        import_hf(step["src"], step["run"])
    elif step["op"] == "export_hf":
        export_hf(step["run"], step["out"])
    elif step["op"] == "export_gguf":
        export_gguf(step["run"], step["out"], "q8_0")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and
    exec, so a child would report its parent's peak when that was higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-mb", type=float, default=200.0)
    ap.add_argument("--keep", help="make the checkpoint and runs in this folder and keep them")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        src = root / "qwen2-0.5b-random"
        src.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        nbytes = make_checkpoint(src, args.shard_mb)
        results: dict = {"checkpoint_mb": round(nbytes / 1e6, 1), "parameters": nbytes // 2,
                         "shards": len(list(src.glob("*.safetensors"))), "make_s": round(time.perf_counter() - t0, 1)}
        print(f"checkpoint: {json.dumps(results)}", flush=True)
        steps = [("baseline", {"op": "baseline"}),
                 ("import", {"op": "import", "src": str(src), "run": str(root / "run")}),
                 ("export_hf", {"op": "export_hf", "run": str(root / "run"), "out": str(root / "hf")}),
                 ("export_gguf_q8_0", {"op": "export_gguf", "run": str(root / "run"), "out": str(root / "m.gguf")})]
        for name, step in steps:
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(step)], capture_output=True,
                                  text=True, check=False)
            results[name] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                             else {"error": proc.stderr.strip().splitlines()[-1:]})
            print(f"{name:18s} {json.dumps(results[name])}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
