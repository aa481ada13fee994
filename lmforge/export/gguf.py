"""Export a run to one GGUF file that llama.cpp (and so Ollama) runs: weights, shape and tokenizer.

    lmforge export RUN --to gguf --out model.gguf --dtype f32|f16|bf16|q8_0|q4_1

A quantized run (lmforge quantize) goes in as the GGUF type that holds its integers as they are:
int8 rows as q8_0, int4 groups as q4_1 (see export/quantized.py).

The architecture is the model's family (`arch.family_of`): qwen3, qwen2, llama or gpt2. llama.cpp
rotates interleaved pairs in its `llama` architecture, so q and k rows are permuted there; Qwen
uses the half-split layout like lmforge. The tokenizer goes in as GPT-2-style byte-level BPE
(tokens, merges) with the name of its pre-tokenizer (tokenizer.ggml.pre), which llama.cpp must
know: a tokenizer it cannot reproduce exactly is refused with the option to train with instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from lmforge.data.tokenizer import LLAMA_CPP_PRE, PRETOKENIZER_REGEX, Tokenizer
from lmforge.errors import ConfigError
from lmforge.export.arch import family_of, links_for, permute_rope
from lmforge.export.common import Run, check_out_file, open_run

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_1")
# A quantized run (lmforge quantize) exports to the GGUF type that holds its integers as they are.
QUANTIZED_GGUF = {"int8": "q8_0", "int4": "q4_1"}
EXPORTABLE = ("retrain with --tokenizer.kind bpe --tokenizer.pretokenizer qwen2 (or llama3, gpt2), "
              "or export to Hugging Face with --to hf")


def pre_name(tok: Tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, or a ConfigError saying what to train with."""
    if tok.kind == "char":
        raise ConfigError(f"config field 'tokenizer.kind': 'char' has no llama.cpp tokenizer; {EXPORTABLE}")
    if tok.kind == "bpe":
        pre = getattr(tok, "pretokenizer", "lmforge")
        if pre not in LLAMA_CPP_PRE:
            raise ConfigError("config field 'tokenizer.pretokenizer': 'lmforge' (line pieces, each CJK character "
                              f"on its own) is not one of llama.cpp's pre-tokenizers; {EXPORTABLE}")
        return LLAMA_CPP_PRE[pre]
    return _detect_pre(tok.hf_json())


def _detect_pre(spec: dict) -> str:
    """The llama.cpp name of an imported tokenizer.json's pre-tokenizer, when it is one llama.cpp knows."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConfigError("this imported tokenizer is not byte-level BPE (a SentencePiece-style vocabulary?); "
                          "export to Hugging Face with --to hf and convert with llama.cpp's convert_hf_to_gguf.py")
    normalizer = (spec.get("normalizer") or {}).get("type")
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if normalizer in (None, "NFC") and len(steps) == 1 and steps[0].get("type") == "ByteLevel" \
            and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return LLAMA_CPP_PRE["gpt2"]
    if normalizer in (None, "NFC") and len(steps) == 2 and steps[0].get("type") == "Split" \
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        for name, regex in PRETOKENIZER_REGEX.items():
            canonical = "(?i:'s|'t|'re|'ve|'m|'ll|'d)" + regex[regex.index(")|") + 1:]
            if pattern in (regex, canonical) and bool(model.get("ignore_merges")) == (name == "llama3"):
                return LLAMA_CPP_PRE[name]
    raise ConfigError("this imported tokenizer's pre-tokenizer is not one lmforge can name for llama.cpp; "
                      "export to Hugging Face with --to hf and convert with llama.cpp's convert_hf_to_gguf.py")


def vocab_for_gguf(tok: Tokenizer, n_vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order (padded to the model's rows), their llama.cpp types, and the merges."""
    import gguf

    spec = tok.hf_json()
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            special = i in added and added[i].get("special")
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED if i in added
                             else gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def _check_llama_cpp_arch(run: Run, family: str) -> None:
    s = run.model
    if s.mlp == "gelu":
        raise ConfigError("config field 'model.mlp': llama.cpp's GPT-2 computes GELU with the tanh approximation, "
                          "not lmforge's exact 'gelu'; train with model.mlp gelu_tanh, or export with --to hf")
    if family == "qwen3" and s.qkv_bias:
        raise ConfigError("config field 'model.qkv_bias': llama.cpp's qwen3 has no attention biases; train "
                          "without them, or with model.qk_norm false (qwen2), or export with --to hf")
    if family == "llama" and s.bias:
        raise ConfigError("config field 'model.bias': llama.cpp's llama architecture is not read with biases "
                          "here; train with model.bias false, or export with --to hf")


def _ggml_type(shape: tuple[int, ...], dtype: str):
    """The GGML type of a tensor: 1-D ones (norms, biases) stay f32, as llama.cpp expects; q8_0 and
    q4_1 need rows that are whole blocks of 32, else f16."""
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) == 1 or dtype == "f32":
        return q.F32
    if dtype == "f16" or (dtype in ("q8_0", "q4_1") and shape[-1] % 32):
        return q.F16
    return {"bf16": q.BF16, "q8_0": q.Q8_0, "q4_1": q.Q4_1}[dtype]


def _tensor_array(t: torch.Tensor, qtype, rows_per_chunk: int = 8192) -> np.ndarray:
    """The tensor as GGML data, converted a block of rows at a time (blocks never cross rows), so a
    large embedding does not pass through float32 and the quantizer's temporaries whole."""
    import gguf

    def convert(block: torch.Tensor) -> np.ndarray:
        a = block.detach().to(torch.float32).numpy()
        if qtype == gguf.GGMLQuantizationType.F32:
            return a
        if qtype == gguf.GGMLQuantizationType.F16:
            return a.astype(np.float16)
        return gguf.quants.quantize(a, qtype)

    if t.ndim < 2 or t.shape[0] <= rows_per_chunk:
        return convert(t)
    first = convert(t[:rows_per_chunk])
    out = np.empty((t.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[:rows_per_chunk] = first
    for start in range(rows_per_chunk, t.shape[0], rows_per_chunk):
        out[start:start + rows_per_chunk] = convert(t[start:start + rows_per_chunk])
    return out


def export_gguf(run_dir: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> dict:
    """Write the GGUF file `out` for the run in `run_dir`; returns a summary. `dtype` None: f16, or
    for a quantized run the type that holds its integers exactly (q8_0 for int8, q4_1 for int4)."""
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the gguf package: pip install 'lmforge[export]' (or pip install gguf)") \
            from None

    run = open_run(run_dir)
    method = getattr(run.weights, "method", None)
    if method is not None:
        exact = QUANTIZED_GGUF[method]
        if dtype not in (None, exact):
            raise ConfigError(f"--dtype {dtype}: {run_dir} is quantized ({method}); GGUF holds its weights exactly "
                              f"as {exact} (the default for it). For another type export the run it was quantized "
                              "from")
        dtype = exact
    dtype = dtype or "f16"
    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(GGUF_DTYPES)} for GGUF")
    family = family_of(run.model, "gguf")
    _check_llama_cpp_arch(run, family)
    pre = pre_name(run.tokenizer)
    out = Path(out)
    check_out_file(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), family)
    try:
        _write_metadata(writer, run, family, dtype, pre)
        n_params = _write_tensors(writer, run, family, dtype)
        writer.close()
        tmp.replace(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return {"format": "gguf", "out": str(out), "architecture": family, "dtype": dtype, "parameters": n_params,
            "pretokenizer": pre}


def _write_metadata(writer, run: Run, family: str, dtype: str, pre: str) -> None:
    import gguf

    s, tok = run.model, run.tokenizer
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                  "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}
    writer.add_name(re.sub(r"[^\w.-]+", "-", run.folder.resolve().name))
    writer.add_file_type(file_types[dtype])
    writer.add_context_length(s.context_len)
    writer.add_embedding_length(s.d_model)
    writer.add_block_count(s.n_layer)
    writer.add_feed_forward_length(s.d_ff)
    writer.add_head_count(s.n_head)
    writer.add_head_count_kv(s.n_kv_head)
    writer.add_vocab_size(run.vocab_size)
    if family == "gpt2":
        writer.add_layer_norm_eps(s.norm_eps)
    else:
        writer.add_layer_norm_rms_eps(s.norm_eps)
        writer.add_rope_freq_base(s.rope_base)
        writer.add_rope_dimension_count(s.head_dim)
        writer.add_key_length(s.head_dim)
        writer.add_value_length(s.head_dim)
    tokens, types, merges = vocab_for_gguf(tok, run.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.eot_id)
    writer.add_eos_token_id(tok.eot_id)
    writer.add_add_bos_token(False)  # lmforge separates documents with end-of-text only
    writer.add_add_eos_token(False)
    config = tok.hf_config() or {}
    template = getattr(tok, "chat_template_file", None) or config.get("chat_template")
    if isinstance(template, str):
        writer.add_chat_template(template)


def _tensors(run: Run, family: str, meta: bool):
    """(GGUF name, tensor, GGML type name of a quantized run's blocks or None) in file order; with
    meta=True only their shapes. A quantized run's block tensors are rows of bytes, one per weight
    row, so row splits and rotary permutations apply to them as to the weights."""
    ggml_type = getattr(run.weights, "ggml_type", lambda name: None)
    links = links_for(run.model, family, run.vocab_size)
    run.check_covered(links)
    for link in links:
        blocks = ggml_type(link.lm)
        if meta:
            t = torch.empty(link.shape, device="meta")
        else:
            t = run.weights.ggml(link.lm) if blocks else run.tensor(link)
        for k, (name, part) in enumerate(zip(link.gguf, link.split(t))):
            if link.rope_heads and link.rope_heads[k] and not meta:
                part = permute_rope(part, link.rope_heads[k])
            yield name, part, blocks
    if family == "gpt2" and run.model.tied_embeddings:
        # llama.cpp's gpt2 reads an output matrix of its own; tied, it is the embedding again.
        shape = (run.vocab_size, run.model.d_model)
        blocks = ggml_type("embed.weight")
        t = torch.empty(shape, device="meta") if meta else run.weights.ggml("embed.weight") if blocks \
            else run.weights.read("embed.weight")
        yield "output.weight", t, blocks


def _write_tensors(writer, run: Run, family: str, dtype: str) -> int:
    """Tensor infos first, then the data one tensor at a time, so the model is never held whole."""
    import gguf

    def qtype_of(t: torch.Tensor, blocks: str | None):
        return gguf.GGMLQuantizationType[blocks] if blocks else _ggml_type(tuple(t.shape), dtype)

    for name, t, blocks in _tensors(run, family, meta=True):
        qtype = qtype_of(t, blocks)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(name, tuple(t.shape), np.dtype(np.float32), t.numel() // block * size, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, t, blocks in _tensors(run, family, meta=False):
        writer.write_tensor_data(t.numpy() if blocks else _tensor_array(t, qtype_of(t, None)))
    return sum(torch.Size(run.weights.shape(n)).numel() for n in run.weights.names())


def read_back(path: str | Path) -> dict:
    """The metadata and tensor names, types and shapes of a GGUF file, via the gguf reader."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        fields[name] = value
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape]} for t in reader.tensors}
    return {"fields": json.loads(json.dumps(fields, default=str)), "tensors": tensors}
