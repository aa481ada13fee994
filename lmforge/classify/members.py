"""The models a classifier run is made of ("members"): how each is trained, saved, loaded and applied.

A run folder holds one sub-folder per member (`linear/`, `bilstm/`, ...) and `ensemble.json`
with the members' weights; a single model is an ensemble of one. Neural members train through
the shared loop (trainer.loop.fit) and keep its checkpoints, metrics.jsonl and resume in their
sub-folder; the linear member is fitted by scikit-learn.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import atomic_write_json
from lmforge.classify.config import ClassifyConfig, GPTHeadConfig
from lmforge.classify.data import balanced_class_weights, oversample_indices
from lmforge.classify.task import ClassifyTask, predict_proba
from lmforge.classify.text import (Encoded, NgramIndex, TextEncoder, UnitIds, load_vectors, normalize, split_chars,
                                   split_words, vectors_matrix)
from lmforge.config import EvalConfig
from lmforge.errors import ConfigError
from lmforge.lm.model import read_quant_spec, rebuild_quantized
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.loop import fit, seed_everything
from lmforge.trainer.optim import LrGroup
from lmforge.trainer.precision import decide_precision, step_probe
from lmforge.trainer.runtime import Runtime
from lmforge.trainer.step import plan_batches

Log = Callable[[str], None]


# --- inputs: text to id sequences --------------------------------------------------------------


class TokenInputs:
    """Token ids (word, char or BPE) cut to max_len: the input of the BiLSTM, transformer and GPT."""

    kind = "tokens"

    def __init__(self, encoder: TextEncoder, max_len: int, truncate: str):
        self.encoder, self.max_len, self.truncate = encoder, max_len, truncate

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    def encode(self, texts: Sequence[str]) -> Encoded:
        enc = self.encoder.encode(texts, self.max_len, self.truncate)
        # An empty text still needs one position to read a state from: give it the unknown token.
        ids = [s if len(s) else np.ones(1, dtype=np.int32) for s in enc.ids]
        return Encoded(ids, enc.truncated)

    def save(self, folder: Path) -> None:
        self.encoder.save(folder / "text.json")
        atomic_write_json(folder / "inputs.json", {"kind": self.kind, "max_len": self.max_len,
                                                        "truncate": self.truncate})


class NgramInputs:
    """Ids of the text's 1..n-grams of units (words, or characters), +1 so that 0 is padding."""

    kind = "ngrams"

    def __init__(self, language: str, lowercase: bool, strip_html: bool, unit: str, units: UnitIds,
                 index: NgramIndex):
        self.language, self.lowercase, self.strip_html, self.unit = language, lowercase, strip_html, unit
        self.units, self.index = units, index

    @property
    def vocab_size(self) -> int:
        return len(self.index)

    def _units(self, texts: Sequence[str]) -> list[list[str]]:
        norm = (normalize(t, self.lowercase, self.strip_html) for t in texts)
        return [split_chars(t) if self.unit == "char" else split_words(t, self.language) for t in norm]

    @classmethod
    def fit(cls, texts: Sequence[str], language: str, lowercase: bool, strip_html: bool, unit: str, n: int,
            min_count: int) -> NgramInputs:
        tmp = cls(language, lowercase, strip_html, unit, UnitIds([]), NgramIndex(np.zeros(0, np.int64), n))
        docs = tmp._units(texts)
        tmp.units = UnitIds.build(docs)
        tmp.index = NgramIndex.fit([tmp.units.encode(d) for d in docs], n, min_count)
        return tmp

    def encode(self, texts: Sequence[str]) -> Encoded:
        ids = [self.units.encode(d) for d in self._units(texts)]
        return Encoded(self.index.sequences(ids, offset=1), 0)

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        tmp = folder / ".ngrams.safetensors.tmp"
        save_file({"keys": self.index.keys}, str(tmp))
        tmp.replace(folder / "ngrams.safetensors")
        atomic_write_json(folder / "inputs.json", {
            "kind": self.kind, "language": self.language, "lowercase": self.lowercase,
            "strip_html": self.strip_html, "unit": self.unit, "n": self.index.n, "units": self.units.units})


def load_inputs(folder: Path):
    info = json.loads((folder / "inputs.json").read_text(encoding="utf-8"))
    if info["kind"] == "tokens":
        return TokenInputs(TextEncoder.load(folder / "text.json"), info["max_len"], info["truncate"])
    from safetensors.numpy import load_file

    keys = load_file(str(folder / "ngrams.safetensors"))["keys"]
    return NgramInputs(info["language"], info["lowercase"], info["strip_html"], info["unit"],
                       UnitIds(info["units"]), NgramIndex(keys, info["n"]))


# --- members -----------------------------------------------------------------------------------


class LinearMember:
    kind = "linear"

    def __init__(self, model):
        self.model = model

    def predict_proba(self, texts: Sequence[str], rt: Runtime | None = None) -> np.ndarray:
        return self.model.predict_proba(texts)

    @classmethod
    def load(cls, folder: Path) -> LinearMember:
        from lmforge.classify.linear import LinearTextModel

        return cls(LinearTextModel.load(folder))


class NeuralMember:
    def __init__(self, kind: str, inputs, model: torch.nn.Module):
        self.kind, self.inputs, self.model = kind, inputs, model

    def predict_proba(self, texts: Sequence[str], rt: Runtime) -> np.ndarray:
        self.model.to(rt.device)
        return predict_proba(self.model, self.inputs.encode(texts).ids, rt)

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu") -> NeuralMember:
        from lmforge.models.classifiers import build_classifier

        spec = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        model = build_classifier(spec)
        quant = read_quant_spec(folder)
        if quant is not None:
            rebuild_quantized(model, quant, folder / "quant.json")
        weights, tensors = ckpt.run_weights(folder)  # verified; a damaged file falls back to a checkpoint
        ckpt.apply_weights(model, tensors, weights)
        model.to(device).eval()
        return cls(spec["kind"], load_inputs(folder), model)


def load_member(folder: Path, kind: str, device: torch.device | str = "cpu"):
    return LinearMember.load(folder) if kind == "linear" else NeuralMember.load(folder, device)


# --- training ----------------------------------------------------------------------------------


def train_linear(cfg: ClassifyConfig, texts: Sequence[str], y: np.ndarray, n_classes: int, folder: Path,
                 log: Log, search_until: float | None = None) -> LinearMember:
    from lmforge.classify.linear import LinearTextModel

    model = LinearTextModel(cfg.model.linear, cfg.text.language, cfg.text.lowercase, cfg.text.strip_html, n_classes)
    sample = oversample_indices(y, cfg.seed) if cfg.data.oversample else np.arange(len(y))
    cw = balanced_class_weights(y, n_classes) if cfg.data.class_weights else None
    model.fit([texts[i] for i in sample], y[sample], cw, cfg.seed, log=log, search_until=search_until)
    model.save(folder)
    return LinearMember(model)


def build_inputs(kind: str, cfg: ClassifyConfig, texts: Sequence[str], gpt_tokenizer=None, gpt_context: int = 0):
    t = cfg.text
    if kind == "fasttext":
        if t.tokenizer == "bpe":
            raise ConfigError("config field 'text.tokenizer': the fasttext model uses words or characters, not 'bpe'")
        ft = cfg.model.fasttext
        return NgramInputs.fit(texts, t.language, t.lowercase, t.strip_html, t.tokenizer, ft.ngrams, ft.min_count)
    if kind == "gpt":
        enc = TextEncoder("bpe", t.language, False, t.strip_html, bpe=gpt_tokenizer, bpe_source=cfg.model.gpt.run)
        return TokenInputs(enc, min(t.max_len, gpt_context), t.truncate)
    enc = TextEncoder.fit(texts, t.tokenizer, t.language, t.lowercase, t.strip_html, t.min_freq, t.max_vocab,
                          t.bpe_path)
    return TokenInputs(enc, t.max_len, t.truncate)


def model_spec(kind: str, cfg: ClassifyConfig, vocab_size: int, n_classes: int, max_len: int,
               gpt_shape: dict | None = None) -> dict:
    m = cfg.model
    if kind == "bilstm":
        b = m.bilstm
        return {"kind": kind, "vocab_size": vocab_size, "n_classes": n_classes, "embed_dim": b.embed_dim,
                "hidden_dim": b.hidden_dim, "layers": b.layers, "dropout": b.dropout, "pooling": b.pooling}
    if kind == "fasttext":
        return {"kind": kind, "n_features": vocab_size, "n_classes": n_classes,
                "embed_dim": m.fasttext.embed_dim, "dropout": m.fasttext.dropout}
    if kind == "transformer":
        e = m.transformer
        return {"kind": kind, "vocab_size": vocab_size, "n_classes": n_classes, "max_len": max_len,
                "d_model": e.d_model, "n_layer": e.n_layer, "n_head": e.n_head, "dropout": e.dropout,
                "pooling": e.pooling}
    if kind == "gpt":
        return {"kind": kind, "gpt_shape": gpt_shape, "n_classes": n_classes, "pooling": m.gpt.pooling,
                "dropout": m.gpt.dropout, "freeze": m.gpt.freeze}
    raise ConfigError(f"config field 'model.kind': {kind!r} is not a neural model")


def gpt_lr_groups(model, g: GPTHeadConfig) -> list[LrGroup]:
    """ULMFiT's fine-tuning of a GPT classifier: layer group i from the top (0: the head) trains at
    lr / layer_lr_decay**i, and only after the share i / (groups - 1) * unfreeze of the steps."""
    groups = model.layer_groups()
    last = max(1, len(groups) - 1)
    return [LrGroup(params, g.layer_lr_decay ** -i, g.unfreeze * i / last) for i, params in enumerate(groups)]


def member_vectors(cfg: ClassifyConfig, texts: Sequence[str], vocab, cache: dict | None, log: Log):
    """(embedding matrix for `vocab`, words found): from cfg.text.vectors, a file or 'train'.

    'train' computes PPMI-SVD vectors from the training texts (once per run, kept in `cache`).
    """
    if cfg.text.vectors != "train":
        return load_vectors(cfg.text.vectors, vocab)
    cache = {} if cache is None else cache
    wv = train_vectors(cfg, texts, cache, log)
    return vectors_matrix(wv.words, wv.matrix, vocab)


def train_vectors(cfg: ClassifyConfig, texts: Sequence[str], cache: dict, log: Log):
    """The word vectors computed from the training texts (PPMI + SVD), once per run: kept in `cache`."""
    from lmforge.classify.vectors import train_word_vectors

    if "train" not in cache:
        t = cfg.text
        cache["train"] = train_word_vectors(texts, dim=t.vectors_dim, min_count=max(2, t.min_freq),
                                            language=t.language, unit=t.tokenizer, lowercase=t.lowercase,
                                            strip_html=t.strip_html, seed=cfg.seed, log=log)
    return cache["train"]


def _precision(cfg: ClassifyConfig, rt: Runtime, folder: Path, resume: bool, task: ClassifyTask,
               micro_bs: int) -> tuple[str, str]:
    """fp32 or bf16, decided once per member (measured when 'auto') and kept on resume."""
    path = folder / "runtime.json"
    if resume and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["precision"], "kept from the run being resumed"

    # The longest batches dominate an epoch's time, so time one of them.
    step = int(np.argmax([len(b) and task.lengths[b].max() for b in task.epoch_batches(0)]))
    probe = step_probe(task.model, task.loss, task.micro_batch(step, 0, micro_bs, rt), rt, repeats=2)
    precision, why = decide_precision(cfg.runtime.precision, rt, probe)
    if rt.is_main:
        atomic_write_json(path, {"precision": precision})
    return precision, why


def train_neural(kind: str, cfg: ClassifyConfig, texts: Sequence[str], y: np.ndarray, val_texts: Sequence[str],
                 val_y: np.ndarray, n_classes: int, folder: Path, rt: Runtime, resume: bool, progress: bool,
                 log: Log, on_eval=None, seed: int | None = None,
                 vectors_cache: dict | None = None, run_id: str | None = None,
                 wrap_task=None) -> tuple[NeuralMember, dict]:
    """Train one neural member through the shared loop; returns it (best validation weights) and facts.

    `seed` (default cfg.seed) drives initialization, dropout and batch order. `wrap_task(task)`
    returns the task the loop trains, built around the classification task (distillation's soft
    targets come in this way).
    """
    from lmforge.models.classifiers import build_classifier, count_params, init_embedding

    t0 = time.perf_counter()
    resume = resume and ckpt.latest_checkpoint(folder) is not None
    gpt_model = gpt_tok = None
    gpt_shape = None
    gpt_context = 0
    if kind == "gpt":
        if not cfg.model.gpt.run:
            raise ConfigError("config field 'model.gpt.run': the gpt model fine-tunes a run folder trained by "
                              "`lmforge train`; give its path, or leave model.gpt.pretrain at 'auto' to pretrain "
                              "one on the training texts")
        from lmforge.lm.model import load_run_model

        gpt_model, gpt_tok, info = load_run_model(Path(cfg.model.gpt.run))
        if info["quant"] is not None:
            raise ConfigError(f"config field 'model.gpt.run': {cfg.model.gpt.run} is a quantized run, which "
                              "cannot be fine-tuned; give the run it was quantized from")
        gpt_shape = gpt_model.shape_dict()
        gpt_context = gpt_model.cfg.context_len
    if resume and (folder / "inputs.json").is_file():
        inputs = load_inputs(folder)  # the vocabulary the checkpoints were trained with
    else:
        inputs = build_inputs(kind, cfg, texts, gpt_tok, gpt_context)
    enc, val_enc = inputs.encode(texts), inputs.encode(val_texts)
    max_len = getattr(inputs, "max_len", 0)
    spec = model_spec(kind, cfg, inputs.vocab_size, n_classes, max_len, gpt_shape)
    seed = cfg.seed if seed is None else seed
    seed_everything(seed)
    model = build_classifier(spec)
    if gpt_model is not None:
        model.gpt.load_state_dict(gpt_model.state_dict())
    vectors_found = None
    if cfg.text.vectors and kind in ("bilstm", "transformer") and not resume:
        matrix, vectors_found = member_vectors(cfg, texts, inputs.encoder.vocab, vectors_cache, log)
        if matrix.shape[1] != model.embed.weight.shape[1]:
            # The vectors define the embedding width: rebuild the model with it.
            key = "embed_dim" if kind == "bilstm" else "d_model"
            spec[key] = int(matrix.shape[1])
            if kind == "transformer" and spec["d_model"] % spec["n_head"]:
                raise ConfigError(f"config field 'model.transformer.n_head': {spec['n_head']} does not divide the "
                                  f"vectors' width {spec['d_model']} (the model's width follows text.vectors)")
            seed_everything(seed)
            model = build_classifier(spec)
        init_embedding(model, torch.from_numpy(matrix))
        log(f"{folder.name}: {vectors_found:,} of {len(inputs.encoder.vocab):,} vocabulary words have a vector "
            f"({cfg.text.vectors})")
    model.to(rt.device)
    if rt.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        inputs.save(folder)
        atomic_write_json(folder / "model.json", spec)

    sample = oversample_indices(y, cfg.seed) if cfg.data.oversample else None
    cw = balanced_class_weights(y, n_classes) if cfg.data.class_weights else None
    task = ClassifyTask(model, enc.ids, y, val_enc.ids, val_y, cfg.train.batch_size, seed, sample, cw, n_classes)
    if wrap_task is not None:
        task = wrap_task(task)
    if kind == "gpt":
        task.lr_groups = gpt_lr_groups(model, cfg.model.gpt)
    lr = cfg.optim.lr or getattr(cfg.model, kind).lr
    optim_cfg = replace(cfg.optim, lr=lr)
    schedule_cfg = replace(cfg.schedule, min_lr=min(cfg.schedule.min_lr, lr / 10))
    train_cfg = cfg.train
    if cfg.train.epochs > 0:
        steps = max(1, math.ceil(cfg.train.epochs * task.steps_per_epoch))
        train_cfg = replace(train_cfg, max_steps=steps)
        # Short runs get a proportionally short warm-up.
        schedule_cfg = replace(schedule_cfg, warmup_steps=min(schedule_cfg.warmup_steps, steps // 5))
    interval = cfg.eval.interval or min(task.steps_per_epoch, train_cfg.max_steps)
    eval_cfg = EvalConfig(interval=interval, patience=cfg.eval.patience)
    micro_bs, accum = plan_batches(task.examples_per_step, train_cfg.micro_batch_size, rt.world_size)
    rt.precision, why = _precision(cfg, rt, folder, resume, task, micro_bs)
    n_params = count_params(model)
    cut = f" ({enc.truncated:,} cut to {max_len} tokens)" if max_len else ""
    log(f"{folder.name}: {n_params:,} parameters, vocabulary {inputs.vocab_size:,}, {len(enc.ids):,} training "
        f"texts{cut}, {train_cfg.max_steps} steps of {task.examples_per_step}, {rt.precision} ({why})")

    def save_best(weights: ckpt.WholeWeights) -> None:
        ckpt.save_weights(weights, folder / "model.safetensors", run_dir=folder)

    result = fit(task, train_cfg, optim_cfg, schedule_cfg, eval_cfg, rt, folder, compile_model=cfg.runtime.compile == "on", resume=resume,
                 meta={"task": "classify", "member": kind, "run_id": run_id}, on_best=save_best, progress=progress,
                 on_eval=on_eval)
    rt.barrier()
    weights, tensors = ckpt.run_weights(folder)  # the best validation weights, verified
    ckpt.apply_weights(model, tensors, weights)
    member = NeuralMember(kind, inputs, model)
    facts = {"params": n_params, "steps": result.steps, "train_s": time.perf_counter() - t0, "fit_s": result.wall_s,
             "stop_reason": result.stop_reason, "best_val_loss": result.best_val_loss,
             "truncated": enc.truncated, "precision": rt.precision, "vectors_found": vectors_found,
             "training_texts": len(enc.ids)}
    return member, facts
