"""Import a local Transformers checkpoint (Llama, Mistral, Qwen2, Qwen3, GPT-2) as an lmforge run folder.

    RUN/config.yaml, RUN/model.json, RUN/model.safetensors, RUN/data/tokenizer.json,
    RUN/generation_config.json (when the checkpoint has one), RUN/import.json (where it came from)

The run then works with `generate`, `eval --data`, `classify --model gpt`, `export` and as the
starting point of `train --init`. Weights keep their dtype and are converted one tensor at a time
from the shards (sharded or not), so memory never holds the model twice; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from lmforge.atomic import atomic_write_json, atomic_write_text
from lmforge.config import Config, ModelConfig, save_config
from lmforge.data.tokenizer import HfTokenizer, hf_tokenizer
from lmforge.errors import ConfigError, DataError
from lmforge.export.arch import Link, links_for, model_config_from_hf
from lmforge.export.common import check_out_dir
from lmforge.export.hf import CHAT_TEMPLATE_FILE, GENERATION_FILE
from lmforge.trainer.safetensors_io import CheckpointReader, SafetensorsWriter, checkpoint_files
from lmforge.models.gpt import GPT

# Buffers some checkpoints carry that are no weights: rotary tables and GPT-2's causal masks.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise DataError(f"{path} not found; give a Transformers model folder (config.json, "
                            "model.safetensors, tokenizer.json)")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object")
    return data


def read_tokenizer(folder: Path) -> HfTokenizer:
    if not (folder / "tokenizer.json").is_file():
        raise DataError(f"{folder} has no tokenizer.json (only a slow tokenizer?); write one with transformers: "
                        "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)")
    config = _read_json(folder / "tokenizer_config.json", required=False)
    special = _read_json(folder / "special_tokens_map.json", required=False)
    eos = special.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    template = folder / CHAT_TEMPLATE_FILE
    return hf_tokenizer(_read_json(folder / "tokenizer.json"), config, str(folder),
                        template.read_text(encoding="utf-8") if template.is_file() else None,
                        eos_token=None if config.get("eos_token") else eos)


class _Source:
    """A checkpoint's tensors under the names `arch` uses (GPT-2 files may lack the transformer. prefix)."""

    def __init__(self, folder: Path, family: str):
        self.reader = CheckpointReader(checkpoint_files(folder))
        self.folder = folder
        self.prefix = ""
        if family == "gpt2" and "transformer.wte.weight" not in self.reader and "wte.weight" in self.reader:
            self.prefix = "transformer."
        self.used: set[str] = set()

    def name(self, hf_name: str) -> str | None:
        name = hf_name[len(self.prefix):] if self.prefix and hf_name.startswith(self.prefix) else hf_name
        return name if name in self.reader else None

    def read(self, link: Link) -> torch.Tensor | None:
        """The lmforge tensor of a link from the checkpoint; None for a bias the checkpoint lacks."""
        parts = []
        for hf_name in link.hf:
            name = self.name(hf_name)
            if name is None:
                if link.bias:
                    return None
                raise DataError(f"{self.folder}: the checkpoint lacks {hf_name}, which config.json implies")
            self.used.add(name)
            t = self.reader.read(name)
            parts.append(t.T.contiguous() if link.transpose else t)
            if link.shared:
                break
        t = link.join(parts)
        if tuple(t.shape) != link.shape:
            raise DataError(f"{self.folder}: {', '.join(link.hf)} has shape {tuple(t.shape)}, config.json implies "
                            f"{link.shape}")
        return t

    def dtype(self, link: Link) -> torch.dtype | None:
        name = self.name(link.hf[0])
        return None if name is None else self.reader.dtype(name)

    def unused(self, tied: bool) -> list[str]:
        extra = {"lm_head.weight"} if tied else set()  # tied models sometimes keep a copy of the embedding
        return [n for n in self.reader.names()
                if n not in self.used and n not in extra and not n.endswith(IGNORED_SUFFIXES)]


def import_hf(hf_dir: str | Path, out: str | Path, context_len: int = 0, overwrite: bool = False) -> dict:
    """Convert the Transformers folder `hf_dir` into the lmforge run folder `out`; returns a summary."""
    folder, out = Path(hf_dir), Path(out)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a local Transformers model folder")
    model_cfg, vocab, family = model_config_from_hf(_read_json(folder / "config.json"), str(folder / "config.json"))
    if context_len:
        if model_cfg.position == "learned" and context_len != model_cfg.context_len:
            raise ConfigError(f"--context-len: GPT-2 learns one position embedding per position; it stays "
                              f"{model_cfg.context_len}")
        model_cfg = dataclasses.replace(model_cfg, context_len=context_len)
        model_cfg.validate()
    tok = read_tokenizer(folder)
    if tok.vocab_size > vocab:
        raise DataError(f"{folder}: the tokenizer has {tok.vocab_size} ids but the model only {vocab} embeddings")
    source = _Source(folder, family)
    check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    dtype = _write_weights(source, model_cfg, vocab, family, out / "model.safetensors")
    cfg = Config(out=str(out), model=model_cfg)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / "model.json", {"vocab_size": vocab, **dataclasses.asdict(model_cfg.resolved())})
    tok.save(out / "data" / "tokenizer.json")
    if (folder / GENERATION_FILE).is_file():
        atomic_write_text(out / GENERATION_FILE, (folder / GENERATION_FILE).read_text(encoding="utf-8"))
    summary = {"source": str(folder), "family": family, "dtype": str(dtype).replace("torch.", ""),
               "vocab_size": vocab, "tokenizer_ids": tok.vocab_size, "eot_token": tok.eot_token}
    atomic_write_json(out / "import.json", summary)
    return {"out": str(out), **summary}


def _write_weights(source: _Source, cfg: ModelConfig, vocab: int, family: str, path: Path) -> torch.dtype:
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in GPT(cfg, vocab).state_dict().items()}
    if cfg.tied_embeddings:
        shapes.pop("lm_head.weight")  # stored once, under embed.weight, as lmforge saves tied weights
    links = {link.lm: link for link in links_for(cfg, family, vocab)}
    main = source.dtype(links["embed.weight"]) or torch.float32
    missing = [n for n in shapes if n not in links]
    if missing:
        raise DataError(f"{source.folder}: nothing in the checkpoint maps to {', '.join(missing[:3])}")
    spec = [(n, source.dtype(links[n]) or main, shapes[n]) for n in shapes]
    writer = SafetensorsWriter(path, spec)
    try:
        for name in shapes:
            t = source.read(links[name])
            writer.write(name, torch.zeros(shapes[name], dtype=main) if t is None else t)
        for link in links.values():
            if link.lm not in shapes:  # a checkpoint bias where lmforge's model has none: zeros only
                t = source.read(link)
                if t is not None and bool(t.any()):
                    raise DataError(f"{source.folder}: {', '.join(link.hf)} is not zero, and lmforge's model of "
                                    "this family has no such bias")
        unused = source.unused(cfg.tied_embeddings)
        if unused:
            raise DataError(f"{source.folder}: tensors lmforge's model has no place for: {', '.join(unused[:4])}")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return main
