"""A run's GGUF export in llama.cpp (through llama-cpp-python) against lmforge itself.

    python benchmarks/gguf_check.py RUN [--tokens 64] [--threads 0]

Installs llama-cpp-python into this Python environment when it is missing (pip builds llama.cpp
from source for this CPU; the build time is reported as install_s), exports RUN to f32, f16 and
q8_0 GGUF files in a temporary folder, then reports:
  - tokenize_match: llama.cpp tokenizes a stretch of the run's validation text to lmforge's ids;
  - greedy_match_f32 / _f16: llama.cpp's greedy continuation of the prompt equals lmforge's;
  - top1_agree_* / kl_*: on --windows contexts of validation tokens, how often llama.cpp's most likely next
    token is lmforge's, and the mean KL(lmforge || llama.cpp) of the next-token distributions;
  - llamacpp_tok_s / lmforge_tok_s: decode speed on the same prompt (f16 in llama.cpp; lmforge's
    `generate` path, fp32 with a KV cache), one token at a time, the fastest of --repeats runs.
Ends with one JSON line. The tokenizer must be exportable (tokenizer.pretokenizer gpt2, llama3 or qwen2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# Beyond the run's own text: what pre-tokenizers disagree on when they disagree.
TRICKY = ["It's 2024; they'LL say 1234567 times!", "  two  spaces,\ttab\r\nCRLF\n\n\nthree newlines   ",
          "床前明月光，疑是地上霜。举头望明月", "Emoji 😀👍🏽 👩‍👩‍👧 café cafe\u0301 ｆｕｌｌ", "'S 'ſ ǅ Ⅻ ١٢٣ ½",
          "code(x) => {return x**2;}  // done\n    indented", "<|endoftext|> stays text", "\u3000\u2028\x1c\x00end"]


def ensure_llama_cpp() -> float | None:
    """Seconds spent installing llama-cpp-python, None when it was already there."""
    try:
        importlib.import_module("llama_cpp")
        return None
    except ImportError:
        pass
    print("installing llama-cpp-python (builds llama.cpp from source; this takes a while)...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        sys.exit(f"pip install llama-cpp-python failed:\n{tail}")
    importlib.invalidate_caches()
    importlib.import_module("llama_cpp")
    return time.perf_counter() - t0


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's next-token logits after each position of `ids` (T, V)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def llama_greedy(llm, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy continuation and decode tokens/s (the prompt's prefill not counted)."""
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    t0 = time.perf_counter()
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out, n / (time.perf_counter() - t0)


def compare(p_logits: np.ndarray, q_logits: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean KL(p || q) of two (T, V) logit arrays."""
    lp = p_logits - np.logaddexp.reduce(p_logits, axis=-1, keepdims=True)
    lq = q_logits - np.logaddexp.reduce(q_logits, axis=-1, keepdims=True)
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    agree = float(np.mean(p_logits.argmax(-1) == q_logits.argmax(-1)))
    return agree, kl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated greedily")
    ap.add_argument("--threads", type=int, default=0, help="threads for both (0: all cores)")
    ap.add_argument("--repeats", type=int, default=5, help="decode timings per side; the fastest counts")
    ap.add_argument("--windows", type=int, default=8, help="contexts of validation tokens scored for agreement and KL")
    args = ap.parse_args()

    install_s = ensure_llama_cpp()
    from llama_cpp import Llama

    from lmforge.data.tokens import TokenFile
    from lmforge.export.gguf import export_gguf
    from lmforge.lm.model import load_run_model
    from lmforge.lm.sample import generate_ids

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    run = Path(args.run)
    model, tok, info = load_run_model(run)
    T = model.cfg.context_len
    val = TokenFile(run / "data" / "val.bin").tokens
    windows = [[int(i) for i in val[k * T:(k + 1) * T]] for k in range(args.windows) if (k + 1) * T <= len(val)]
    text = tok.decode([int(i) for i in val[: 4 * T]])
    prompt = tok.encode(info["config"].sample.prompt or "\n")[: T // 2]
    n = min(args.tokens, T - len(prompt))
    with torch.no_grad():
        ref_logits = np.concatenate([model(torch.tensor([w]))[0].double().numpy() for w in windows])
    lmforge_tok_s = 0.0
    for _ in range(args.repeats):  # the fastest of several: the machine may be shared
        t0 = time.perf_counter()
        ref_greedy = generate_ids(model, prompt, n, temperature=0)
        lmforge_tok_s = max(lmforge_tok_s, n / (time.perf_counter() - t0))

    result: dict = {"run": str(run), "install_s": None if install_s is None else round(install_s, 1),
                    "threads": threads, "prompt_tokens": len(prompt), "generated": n,
                    "scored_positions": len(windows) * T}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f32", "f16", "q8_0"):
            path = Path(tmp, f"model-{dtype}.gguf")
            export_gguf(run, path, dtype)
            llm = Llama(str(path), n_ctx=T, n_threads=threads, n_batch=T, logits_all=True, verbose=False)
            if dtype == "f32":
                texts = [text, *TRICKY]
                same = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) == tok.encode(t) for t in texts]
                result["tokenize_match"] = all(same)
                result["tokenize_mismatches"] = [t for t, ok in zip(texts, same) if not ok][:3]
            runs = [llama_greedy(llm, prompt, n) for _ in range(args.repeats)]
            greedy, tok_s = runs[0][0], max(r[1] for r in runs)
            result[f"greedy_match_{dtype}"] = greedy == ref_greedy
            agree, kl = compare(ref_logits, np.concatenate([llama_logits(llm, w) for w in windows]))
            result[f"top1_agree_{dtype}"] = round(agree, 4)
            result[f"kl_{dtype}"] = float(f"{kl:.3g}") if math.isfinite(kl) else None
            result[f"llamacpp_tok_s_{dtype}"] = round(tok_s, 1)
            print(f"{dtype:5s} greedy match {greedy == ref_greedy}, top-1 agreement {agree:.4f}, KL {kl:.3g}, "
                  f"{tok_s:.1f} tokens/s", flush=True)
            del llm
    result["llamacpp_tok_s"] = result["llamacpp_tok_s_f16"]
    result["lmforge_tok_s"] = round(lmforge_tok_s, 1)
    result["speed_ratio"] = round(result["llamacpp_tok_s"] / lmforge_tok_s, 2)
    print(f"lmforge {lmforge_tok_s:.1f} tokens/s; llama.cpp f16 {result['llamacpp_tok_s']} tokens/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
