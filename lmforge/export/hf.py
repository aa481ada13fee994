"""Export a run to a Hugging Face Transformers folder that loads with no custom code.

    config.json, model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json,
    README.md (model card)

`AutoModelForCausalLM.from_pretrained(DIR)` builds the standard class of the model's family
(`arch.family_of`) and computes the same logits; `AutoTokenizer.from_pretrained(DIR)` encodes every
text to lmforge's ids. Weights are streamed tensor by tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.atomic import atomic_write_text
from lmforge.data.tokenizer import EOT_TOKEN, Tokenizer
from lmforge.export.arch import HF_CLASS, family_of, hf_config, links_for
from lmforge.export.common import TORCH_NAMES, Run, check_out_dir, dump_json, open_run, target_dtype
from lmforge.trainer.safetensors_io import SafetensorsWriter

GENERATION_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def export_hf(run_dir: str | Path, out: str | Path, dtype: str = "auto", overwrite: bool = False,
              command: str | None = None) -> dict:
    """Write the Transformers folder `out` for the run in `run_dir`; returns a summary."""
    run = open_run(run_dir)
    family = family_of(run.model)  # refuses, naming the option, before anything is written
    tokenizer_json = run.tokenizer.hf_json()
    out = Path(out)
    check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = target_dtype(run, dtype)
    n_params = write_weights(run, family, out / "model.safetensors", torch_dtype)
    eot = run.tokenizer.eot_id
    atomic_write_text(out / "config.json", dump_json(hf_config(run.model, family, run.vocab_size, eot,
                                                               TORCH_NAMES[torch_dtype])))
    atomic_write_text(out / GENERATION_FILE, generation_config(run))
    atomic_write_text(out / "tokenizer.json", dump_json(tokenizer_json))
    tok_config, chat_template = tokenizer_config(run.tokenizer, run.model.context_len)
    atomic_write_text(out / "tokenizer_config.json", dump_json(tok_config))
    if chat_template is not None:
        atomic_write_text(out / CHAT_TEMPLATE_FILE, chat_template)
    atomic_write_text(out / "README.md", model_card(run, family, n_params, torch_dtype, command))
    return {"format": "hf", "out": str(out), "architecture": HF_CLASS[family], "parameters": n_params,
            "dtype": TORCH_NAMES[torch_dtype]}


def write_weights(run: Run, family: str, path: Path, dtype: torch.dtype) -> int:
    links = links_for(run.model, family, run.vocab_size)
    run.check_covered(links)
    spec = []
    for link in links:
        for name, part in zip(link.hf, link.split(torch.empty(link.shape, device="meta"))):
            spec.append((name, dtype, tuple(part.T.shape if link.transpose else part.shape)))
    writer = SafetensorsWriter(path, spec, metadata={"format": "pt"})
    try:
        for link in links:
            for name, part in zip(link.hf, link.split(run.tensor(link))):
                writer.write(name, part.T if link.transpose else part)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    counted = {link.lm for link in links if link.lm in run.weights.entries}
    return sum(torch.Size(run.weights.shape(n)).numel() for n in counted)


def generation_config(run: Run) -> str:
    """An imported model's own generation settings, else lmforge's sampling defaults of the run."""
    kept = run.folder / GENERATION_FILE
    if kept.is_file():
        return kept.read_text(encoding="utf-8")
    s, eot = run.config.sample, run.tokenizer.eot_id
    return dump_json({"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
                      "do_sample": s.temperature > 0, "temperature": s.temperature or 1.0, "top_k": s.top_k,
                      "top_p": s.top_p})


def tokenizer_config(tok: Tokenizer, context_len: int) -> tuple[dict, str | None]:
    """tokenizer_config.json (and a chat template kept in its own file), as imported or for lmforge's own.

    `split_special_tokens`: lmforge reads "<|endoftext|>" inside text as text, never as the separator."""
    imported = tok.hf_config()
    if imported is not None:
        return imported, getattr(tok, "chat_template_file", None)
    eot = {"content": EOT_TOKEN, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
           "special": True}
    return {"added_tokens_decoder": {str(tok.eot_id): eot}, "bos_token": None, "eos_token": EOT_TOKEN,
            "pad_token": EOT_TOKEN, "unk_token": None, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "split_special_tokens": True,
            "model_max_length": context_len, "tokenizer_class": "PreTrainedTokenizerFast"}, None


def model_card(run: Run, family: str, n_params: int, dtype: torch.dtype, command: str | None) -> str:
    cfg, s = run.config, run.model
    result = {}
    if (run.folder / "result.json").is_file():
        result = json.loads((run.folder / "result.json").read_text(encoding="utf-8"))
    tok = run.tokenizer
    if tok.kind == "bpe":
        tok_line = f"byte-level BPE, {tok.vocab_size:,} tokens, pre-tokenizer {getattr(tok, 'pretokenizer', 'lmforge')}"
    elif tok.kind == "char":
        tok_line = f"characters with byte fallback, {tok.vocab_size:,} ids"
    else:
        tok_line = f"imported Hugging Face tokenizer, {tok.vocab_size:,} ids"
    figures = [f"- {k.replace('_', ' ')}: {result[k]:.4g}" if isinstance(result.get(k), float) else f"- {k}: {result[k]}"
               for k in ("steps", "val_loss", "val_bpb", "tokens_per_s", "wall_s", "stop_reason") if k in result]
    origin = "trained with lmforge"
    if (run.folder / "import.json").is_file():
        source = json.loads((run.folder / "import.json").read_text(encoding="utf-8"))
        origin = f"imported into lmforge from {source.get('source')} ({source.get('family')})"
    elif cfg.init:
        origin = f"trained with lmforge, starting from {cfg.init}"
    lines = [
        "---", "library_name: transformers", "tags:", "- lmforge", f"- {family}", "---", "",
        f"# {run.folder.name}", "",
        f"A {n_params / 1e6:.1f}M-parameter language model {origin}, exported as "
        f"`{HF_CLASS[family]}` ({TORCH_NAMES[dtype]}). It loads with no custom code:", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)",
        "print(tok.decode(model.generate(**tok(\"Once\", return_tensors=\"pt\"), max_new_tokens=50)[0]))",
        "```", "",
        "## Training", "",
        f"- data: {cfg.data.path or 'the embedded Shakespeare plays'}",
        f"- tokenizer: {tok_line}",
        f"- shape: {s.n_layer} layers, {s.d_model} wide, {s.n_head} heads ({s.n_kv_head} key/value) of "
        f"{s.head_dim}, context {s.context_len}",
        f"- optimizer: {cfg.optim.kind}, peak learning rate {cfg.optim.lr:g}, {cfg.schedule.kind} schedule",
        *figures, "",
        "Documents are separated by `<|endoftext|>`-style end-of-text tokens; no BOS token is added.",
    ]
    if command:
        lines += ["", "## Made with", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
