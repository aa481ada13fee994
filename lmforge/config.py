"""Typed configuration: one dataclass per component, YAML files, dotted overrides, validation.

Each field's docstring (the string literal under it) is its documentation: the CLI shows it as
`--section.field` help, and `describe()` prints it. Components receive only their own section.
"""

from __future__ import annotations

import ast
import codecs
import dataclasses
import difflib
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

from lmforge.errors import ConfigError

# Upper bounds, so that no value passes validation and then allocates terabytes or overflows a C
# integer deep inside. Each is far beyond what lmforge is for.
MAX_INT = 2**63 - 1
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1
MAX_WORKERS = 256
MAX_THREADS = 1024
MAX_VOCAB = 2**20
MAX_WIDTH = 2**17
MAX_STEPS = 10**12
MAX_BATCH_TOKENS = 2**31
MAX_BLOCK_PARAMS = 10**12
MAX_LR = 10.0
MODEL_LIMITS = {"n_layer": 1024, "n_head": 1024, "d_model": 2**16, "context_len": 2**20}


@dataclass
class DataConfig:
    path: str | None = None
    """File, folder or glob of training text (.txt .md .jsonl .json .csv .tsv .parquet, optionally .gz). Empty: the embedded Shakespeare corpus."""
    valid_path: str | None = None
    """Optional separate validation text; when empty, val_fraction of the documents is held out."""
    text_field: str = "text"
    """Field (jsonl/json) or column (csv/tsv/parquet) holding the text."""
    doc_split: Literal["auto", "paragraph", "file"] = "auto"
    """How plain-text files become documents: 'paragraph' splits on blank lines, 'file' keeps each file whole."""
    val_fraction: float = 0.1
    """Share of documents held out for validation (by document, seeded)."""
    encoding: str = "auto"
    """Text encoding of the input files: 'auto' detects it (UTF-8/16/32, GB18030 and legacy single-byte encodings such as Latin-1) and stops when unsure; or a codec name such as utf-8, latin-1, cp1252, gbk."""
    num_workers: int = 0
    """Processes for cleaning, filtering, deduplicating and encoding; 0 = one per usable CPU core (in-process below
    8 MB of input). The output is the same for any number."""
    shard_mb: float = 4.0
    """Megabytes of raw text per work shard: prepare streams the corpus shard by shard (memory grows with this, not
    with the corpus), and a killed prepare resumes at the first shard not finished."""
    engine: Literal["local", "datatrove"] = "local"
    """What runs the per-shard work (cleaning, filtering, fingerprinting, encoding): 'local' (lmforge's own worker
    processes) or 'datatrove' (datatrove's executors, see data.executor; needs `pip install lmforge[datatrove]`).
    Either gives the same token files."""
    executor: Literal["local", "slurm", "ray"] = "local"
    """With data.engine datatrove: 'local' (data.num_workers processes on this machine), 'slurm' (a Slurm job array
    per stage; the run folder must be on a file system every node sees) or 'ray' (the Ray cluster RAY_ADDRESS names,
    else one started here)."""
    tasks: int = 0
    """With data.engine datatrove: datatrove tasks the shards are dealt to (task r takes shards r, r+tasks, ...);
    0 = one task per shard."""
    logging_dir: str | None = None
    """With data.engine datatrove: folder for datatrove's logs, stats and completion markers (a subfolder per
    stage); empty: RUN/data/work/datatrove-logs."""
    slurm_partition: str = ""
    """With data.executor slurm: the partition the job arrays are submitted to (required)."""
    slurm_time: str = "04:00:00"
    """With data.executor slurm: the time limit of each array task (HH:MM:SS)."""
    slurm_cpus_per_task: int = 1
    """With data.executor slurm or ray: CPUs given to each task."""
    slurm_mem_per_cpu_gb: float = 2.0
    """With data.executor slurm or ray: memory per CPU in GB (a task holds about 3 x data.shard_mb of text)."""

    def validate(self) -> None:
        check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
        check(self.val_fraction > 0 or bool(self.valid_path), "data.val_fraction",
              "is 0 and data.valid_path is empty, so there would be no validation text; raise it or give "
              "--data.valid_path")
        check(0 <= self.num_workers <= MAX_WORKERS, "data.num_workers", f"must be in [0, {MAX_WORKERS}] (0: automatic)")
        check(bool(self.text_field.strip()), "data.text_field", "must name a field, e.g. text")
        check_paths({"data.path": self.path, "data.valid_path": self.valid_path})
        check(self.shard_mb >= 0.01, "data.shard_mb", "must be >= 0.01")
        check(0 <= self.tasks <= MAX_COUNT, "data.tasks", f"must be in [0, {MAX_COUNT}] (0: one per shard)")
        if self.engine == "local":
            for name, value, default in (("executor", self.executor, "local"), ("tasks", self.tasks, 0),
                                         ("logging_dir", self.logging_dir, None),
                                         ("slurm_partition", self.slurm_partition, "")):
                check(value == default, f"data.{name}", "is only used with --data.engine datatrove; add that "
                      "option or leave this one out")
        check(self.logging_dir is None or bool(self.logging_dir.strip()), "data.logging_dir",
              "is blank; give a folder, or leave it out")
        check(self.executor != "slurm" or bool(self.slurm_partition.strip()), "data.slurm_partition",
              "is required with --data.executor slurm: name the partition (sinfo lists them)")
        check(re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", self.slurm_time) is not None, "data.slurm_time",
              f"{self.slurm_time!r} is not a Slurm time limit; write HH:MM:SS or D-HH:MM:SS")
        check(1 <= self.slurm_cpus_per_task <= MAX_THREADS, "data.slurm_cpus_per_task", f"must be in [1, {MAX_THREADS}]")
        check(0 < self.slurm_mem_per_cpu_gb <= 4096, "data.slurm_mem_per_cpu_gb", "must be in (0, 4096]")
        check_encoding(self.encoding, "data.encoding")


@dataclass
class CleanConfig:
    nfkc: bool = False
    """Apply Unicode NFKC normalization (folds full-width forms and compatibility characters)."""
    strip_control: bool = True
    """Remove control characters other than newline and tab."""
    normalize_whitespace: bool = True
    """Unify line endings, drop trailing spaces, collapse runs of blank lines."""
    dedup: bool = True
    """Remove exact duplicate documents."""
    min_chars: int = 1
    """Drop documents shorter than this many characters after cleaning."""
    near_dedup: bool = False
    """Remove near-duplicate documents (MinHash LSH over shingles of clean.shingle_words words; each Chinese,
    Japanese or Korean character counts as a word); the first of each group of near-duplicates is kept."""
    near_dedup_threshold: float = 0.75
    """Estimated Jaccard similarity of two documents' shingle sets above which the later one is removed."""
    near_dedup_num_perm: int = 64
    """MinHash permutations per document: more estimate similarity more exactly and cost proportionally more time."""
    shingle_words: int = 5
    """Words per shingle for near-duplicate detection and the repetition filters."""
    decontam_ngram: int = 0
    """Report validation documents sharing a run of this many words (CJK: characters) with the training data, e.g.
    13; 0 = off (it costs about as much time as cleaning)."""
    decontam_remove: bool = False
    """Also remove those validation documents (otherwise only report them)."""

    def validate(self) -> None:
        check(0 <= self.min_chars <= MAX_COUNT, "clean.min_chars", f"must be in [0, {MAX_COUNT}]")
        check(0.0 < self.near_dedup_threshold < 1.0, "clean.near_dedup_threshold", "must be in (0, 1)")
        check(16 <= self.near_dedup_num_perm <= 1024, "clean.near_dedup_num_perm", "must be in [16, 1024]")
        check(1 <= self.shingle_words <= 1000, "clean.shingle_words", "must be in [1, 1000]")
        check(self.decontam_ngram == 0 or self.decontam_ngram >= 5, "clean.decontam_ngram",
              "must be 0 (off) or >= 5")


@dataclass
class FilterConfig:
    """Heuristic quality filters in the style of Gopher and FineWeb. Each is off at 0 (or false). Words are runs of
    letters or digits; every CJK character is a word of its own, so the filters also work on Chinese."""

    min_words: int = 0
    """Drop documents with fewer words (Gopher: 50)."""
    max_words: int = 0
    """Drop documents with more words (Gopher: 100000)."""
    min_mean_word_chars: float = 0.0
    """Drop documents whose mean word length is below this (Gopher: 3); skipped for mostly-CJK documents."""
    max_mean_word_chars: float = 0.0
    """Drop documents whose mean word length is above this (Gopher: 10); skipped for mostly-CJK documents."""
    max_symbol_word_ratio: float = 0.0
    """Drop documents with more '#' and ellipses per word than this (Gopher: 0.1)."""
    min_alpha_word_fraction: float = 0.0
    """Drop documents where fewer words than this contain a letter (Gopher: 0.8)."""
    max_bullet_line_fraction: float = 0.0
    """Drop documents where more lines than this start with a bullet (Gopher: 0.9)."""
    max_ellipsis_line_fraction: float = 0.0
    """Drop documents where more lines than this end in an ellipsis (Gopher: 0.3)."""
    min_punct_line_fraction: float = 0.0
    """Drop documents where fewer lines than this end in sentence punctuation, . ! ? and the CJK 。！？ among them
    (FineWeb: 0.12)."""
    max_short_line_fraction: float = 0.0
    """Drop documents where more lines than this are shorter than 30 characters (FineWeb: 0.67)."""
    max_dup_line_fraction: float = 0.0
    """Drop documents where more lines than this repeat an earlier line of the same document (Gopher: 0.3)."""
    max_dup_ngram_char_fraction: float = 0.0
    """Drop documents where more characters than this sit in repeated clean.shingle_words-word n-grams
    (Gopher, 5-grams: 0.15)."""
    max_top_bigram_char_fraction: float = 0.0
    """Drop documents where the most frequent word pair covers more characters than this (Gopher: 0.2)."""
    languages: str = ""
    """Keep only documents in these languages (comma-separated ISO 639-1 codes such as en,zh), detected by
    py3langid's model that ships inside the package; empty: every language."""

    def validate(self) -> None:
        for name in ("min_words", "max_words"):
            check(getattr(self, name) >= 0, f"filter.{name}", "must be >= 0")
        for name in ("max_symbol_word_ratio", "min_alpha_word_fraction", "max_bullet_line_fraction",
                     "max_ellipsis_line_fraction", "min_punct_line_fraction", "max_short_line_fraction",
                     "max_dup_line_fraction", "max_dup_ngram_char_fraction", "max_top_bigram_char_fraction",
                     "min_mean_word_chars", "max_mean_word_chars"):
            check(getattr(self, name) >= 0, f"filter.{name}", "must be >= 0")


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "char"] = "bpe"
    """'bpe' (byte-level BPE trained on your data) or 'char' (one token per character, byte fallback)."""
    vocab_size: int = 4096
    """BPE vocabulary size including special tokens (the char tokenizer sizes its own vocabulary: one id per character seen, plus 256 bytes)."""
    cjk_split: Literal["char", "jieba", "none"] = "char"
    """BPE with tokenizer.pretokenizer lmforge only: pre-split runs of Chinese/Japanese/Korean characters per character or per jieba word, so CJK text trains as fast as English."""
    min_frequency: int = 2
    """BPE only: a pair must occur this often to be merged."""
    train_sample_mb: int = 256
    """Train the tokenizer on at most this many megabytes of training text, taken evenly from across the corpus."""
    pretokenizer: Literal["lmforge", "gpt2", "llama3", "qwen2"] = "lmforge"
    """BPE only: how text is cut into words before BPE. 'lmforge': lines, each CJK character on its own
    (tokenizer.cjk_split), then GPT-2's rule; exports to Hugging Face but not to GGUF. 'gpt2', 'llama3',
    'qwen2': those models' rules exactly (llama3 and qwen2 keep newline runs and cut digits into
    groups of three or one), which llama.cpp reproduces, so the model also exports to GGUF."""

    def validate(self) -> None:
        check_types(self, "tokenizer.")  # also checked here: the tokenizer trainer is called directly
        if self.kind == "bpe":
            check(self.vocab_size >= 257, "tokenizer.vocab_size",
                  "must be an integer >= 257 (256 byte symbols + <|endoftext|>)")
            check(self.vocab_size <= MAX_VOCAB, "tokenizer.vocab_size",
                  f"must be at most {MAX_VOCAB:,}: larger vocabularies make the embedding huge and most ids unused")
        check(0 <= self.min_frequency <= MAX_COUNT, "tokenizer.min_frequency", f"must be an integer in [0, {MAX_COUNT}]")
        check(self.train_sample_mb >= 1, "tokenizer.train_sample_mb", "must be >= 1")
        check(self.cjk_split != "jieba" or self.pretokenizer == "lmforge", "tokenizer.cjk_split",
              f"'jieba' works with tokenizer.pretokenizer lmforge only, not {self.pretokenizer!r}")


def swiglu_hidden(d_model: int, multiple_of: int = 32) -> int:
    """SwiGLU hidden width with about the parameter count of a 4x GELU MLP (8/3 * d_model)."""
    hidden = int(8 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


def default_d_ff(d_model: int, mlp: str) -> int:
    """GPT-2's 4x for a GELU MLP; for SwiGLU the width with about the same parameter count."""
    return swiglu_hidden(d_model) if mlp == "swiglu" else 4 * d_model


@dataclass
class ModelConfig:
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_kv_head: int = 0
    """Key/value heads for grouped-query attention; 0 means n_head (plain multi-head attention)."""
    d_model: int = 128
    """Width of the residual stream."""
    d_ff: int = 0
    """Hidden width of the MLP; 0 means about 8/3 * d_model for SwiGLU, 4 * d_model for GELU."""
    context_len: int = 64
    """Tokens of context the model sees."""
    dropout: float = 0.0
    """Dropout probability (useful when making many passes over a small corpus). On a CPU the
    language model rounds it to a multiple of 1/256, for a mask four times cheaper to draw."""
    tied_embeddings: bool = True
    """Share the input embedding with the output projection."""
    qk_norm: bool = True
    """RMS-normalize each head's queries and keys before attention, with one learned gain per head
    dimension (at equal steps, 0.5 to 0.6 percent lower validation loss on tiny Shakespeare and
    Tang poems)."""
    norm: Literal["rms", "layer"] = "rms"
    """'rms' (RMSNorm) or 'layer' (LayerNorm without bias, GPT-2's and nanoGPT's choice)."""
    position: Literal["rope", "learned"] = "rope"
    """'rope' (rotary positions) or 'learned' (a learned position embedding added to the input, as in GPT-2)."""
    mlp: Literal["swiglu", "gelu", "gelu_tanh"] = "swiglu"
    """'swiglu' (gated SiLU), 'gelu' (GPT-2's two-layer MLP with the exact, erf-based GELU) or 'gelu_tanh'
    (the same with GELU's tanh approximation, as GPT-2 was trained and as llama.cpp computes it)."""
    rope_base: float = 10000.0
    """Base (theta) of the rotary position frequencies."""
    norm_eps: float = 1e-5
    """Epsilon of the normalization layers."""
    head_dim: int = 0
    """Width of each attention head; 0 means d_model / n_head. Imported models may use another width
    (Qwen3-0.6B: 16 heads of 128 in a 1024-wide stream)."""
    bias: bool = False
    """Biases in every linear layer (and LayerNorm) but the output layer, as in GPT-2; for imported checkpoints."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections only, as in Qwen2; for imported checkpoints."""
    qk_norm_shared: bool = True
    """With qk_norm: one gain vector serves queries and keys (attention sees only their product); false
    keeps a gain for each, as Qwen3 checkpoints have."""

    def validate(self) -> None:
        check_types(self, "model.")  # also checked here: models are built from this section directly
        for name, most in MODEL_LIMITS.items():
            check(0 < getattr(self, name) <= most, f"model.{name}", f"must be in [1, {most:,}]")
        check(self.n_kv_head >= 0, "model.n_kv_head", "must be >= 0 (0: as many as model.n_head)")
        check(0 <= self.d_ff <= MAX_WIDTH, "model.d_ff", f"must be in [0, {MAX_WIDTH:,}] (0: the default width for model.mlp)")
        check(0 <= self.head_dim <= MAX_WIDTH, "model.head_dim", f"must be in [0, {MAX_WIDTH:,}] (0: d_model / n_head)")
        check(self.head_dim > 0 or self.d_model % self.n_head == 0, "model.d_model",
              f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        head = self.head_dim or self.d_model // self.n_head
        check(self.position != "rope" or head % 2 == 0, "model.n_head",
               "head size (model.head_dim, or d_model/n_head) must be even for rotary embeddings "
               "(or set model.position: learned)")
        kv = self.n_kv_head or self.n_head
        check(self.n_head % kv == 0, "model.n_kv_head", f"n_head={self.n_head} must be a multiple of n_kv_head={kv}")
        check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        check(self.rope_base > 0, "model.rope_base", "must be > 0")
        check(0 < self.norm_eps < 1, "model.norm_eps", "must be in (0, 1)")
        params = self.block_params()
        check(params <= MAX_BLOCK_PARAMS, "model", f"{self.n_layer} layers of width {self.d_model} hold about "
              f"{params:.2g} parameters ({4 * params / 2**40:.1f} TiB in fp32); lmforge trains models up to "
              f"{MAX_BLOCK_PARAMS:.0e} parameters")

    def block_params(self) -> int:
        """Weights of the transformer blocks (attention and MLP matrices), without embeddings."""
        r = self.resolved()
        attn = r.d_model * (r.n_head + 2 * r.n_kv_head) * r.head_dim + r.n_head * r.head_dim * r.d_model
        mlp = (3 if r.mlp == "swiglu" else 2) * r.d_model * r.d_ff
        return r.n_layer * (attn + mlp)

    def resolved(self) -> ModelConfig:
        """A copy with every 'choose for me' value (0) replaced by what it stands for."""
        return dataclasses.replace(self, n_kv_head=self.n_kv_head or self.n_head,
                                   d_ff=self.d_ff or default_d_ff(self.d_model, self.mlp),
                                   head_dim=self.head_dim or self.d_model // self.n_head)


@dataclass
class OptimConfig:
    kind: Literal["adamw", "muon"] = "adamw"
    """'adamw', or 'muon': Muon (orthogonalized momentum) for the hidden weight matrices and AdamW for embeddings, norms and the rest."""
    lr: float = 1e-3
    """Peak learning rate. Classifiers: 0 (their default) gives each model its own (model.<kind>.lr); a value here overrides them all."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices only (not norms, biases or embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""

    def validate(self) -> None:
        check(0 <= self.lr <= MAX_LR, "optim.lr", f"must be in [0, {MAX_LR}] (AdamW and Muon diverge far below "
                                                  f"{MAX_LR})")
        check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        check(0 <= self.beta1 < 1, "optim.beta1", "must be in [0, 1)")
        check(0 <= self.beta2 < 1, "optim.beta2", "must be in [0, 1)")
        check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    """After warm-up: 'cosine' decay to min_lr, 'wsd' (warmup-stable-decay: constant, then linear decay over decay_fraction), or 'constant'."""
    warmup_steps: int = 100
    """Linear warm-up steps from 0 to the peak learning rate."""
    min_lr: float = 1e-4
    """Learning rate at the end of the decay (a classifier's model uses at most a tenth of its own peak)."""
    decay_fraction: float = 0.2
    """wsd only: share of the steps spent in the final decay."""
    decay_on_plateau: int = 0
    """wsd only: after this many evaluations in a row without a better validation loss before the decay, start the decay at once and end the run when it is done (more steps at the peak rate would only overfit); 0: off. --auto sets 2."""

    def validate(self) -> None:
        check(self.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0")
        check(self.min_lr >= 0, "schedule.min_lr", "must be >= 0")
        check(0 < self.decay_fraction <= 1, "schedule.decay_fraction", "must be in (0, 1]")
        check(0 <= self.decay_on_plateau <= 1000, "schedule.decay_on_plateau", "must be in [0, 1000] (0: off)")


@dataclass
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; 'auto' picks CUDA when available (the local GPU under torchrun)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """'auto' uses bf16 autocast where a training step measures faster in it (GPUs with bf16, CPUs with AMX/AVX512-BF16 at widths where it pays)."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the model; 'auto' compiles runs long enough to repay the compile time."""
    threads: int = 0
    """CPU threads per process; 0: all cores, dropping to one when other programs make threads stall."""
    timeout_s: float = 1800.0
    """Several processes: seconds one waits for the others (joining the process group, each collective operation) before it stops with an error naming its rank, its host and the likely cause."""

    def validate(self) -> None:
        check(0 <= self.threads <= MAX_THREADS, "runtime.threads", f"must be in [0, {MAX_THREADS}] (0: automatic)")
        check(self.timeout_s > 0 and math.isfinite(self.timeout_s), "runtime.timeout_s", "must be a number of seconds > 0")


@dataclass
class TrainConfig:
    max_steps: int = 1000
    """Optimizer steps to train for (presets and the Python API; `lmforge train` without a preset or this option plans the run for --time instead)."""
    global_batch_tokens: int = 8192
    """Tokens per optimizer step, summed over all processes and accumulation steps (a multiple of model.context_len)."""
    micro_batch_size: int = 0
    """Sequences per forward pass per process; 0 picks the whole per-process batch (no accumulation). Accumulation steps are derived."""
    time_budget_s: float = 0.0
    """Stop (evaluate and save) once training has used this many seconds; 0 means no limit."""
    log_interval: int = 10
    """Steps between training-loss log lines in metrics.jsonl."""
    save_interval: int = 0
    """Steps between checkpoints; 0 means at every evaluation."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep for resuming."""
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    """Several processes: 'ddp' keeps a whole copy of the weights, gradients and optimizer state in each; 'fsdp' shards them across the processes (FSDP2; checkpoints are sharded too and resume on any number of processes); 'auto' picks DDP while they fit comfortably on one device, FSDP otherwise (the run header says why). One process trains unsharded."""
    tensor_parallel: int = 1
    """Processes that split each attention and MLP projection between them (tensor parallelism, on a data x tensor mesh, with FSDP over the data dimension); must divide the number of processes, model.n_kv_head and the MLP width. 1: off."""
    activation_checkpointing: Literal["auto", "none", "blocks"] = "auto"
    """'blocks' keeps only each transformer block's input for the backward pass and recomputes the rest (about a third more compute, far less memory); 'auto' does so when the memory estimate says the activations would not fit; 'none' never."""
    track: Literal["tensorboard", "mlflow", "none"] = "tensorboard"
    """Experiment tracking of the training records: 'tensorboard' (event files in RUN/tb), 'mlflow' (a local store in RUN/mlflow.db, or MLFLOW_TRACKING_URI when set) or 'none'."""

    def validate(self) -> None:
        check(0 < self.max_steps <= MAX_STEPS, "train.max_steps", f"must be in [1, {MAX_STEPS:,}]")
        check(self.tensor_parallel >= 1, "train.tensor_parallel", "must be >= 1 (1: off)")
        check(0 < self.global_batch_tokens <= MAX_BATCH_TOKENS, "train.global_batch_tokens",
              f"must be in [1, {MAX_BATCH_TOKENS:,}]")
        check(self.micro_batch_size >= 0, "train.micro_batch_size", "must be >= 0")
        check(self.time_budget_s >= 0 and math.isfinite(self.time_budget_s), "train.time_budget_s",
               "must be a finite number of seconds >= 0")
        check(self.log_interval >= 1, "train.log_interval", "must be >= 1")
        check(self.save_interval >= 0, "train.save_interval", "must be >= 0")
        check(1 <= self.keep_checkpoints <= MAX_COUNT, "train.keep_checkpoints", "must be >= 1")


@dataclass
class EvalConfig:
    interval: int = 250
    """Steps between validation evaluations (and checkpoints)."""
    max_tokens: int = 262144
    """Validation tokens scored per evaluation (the whole split when it is smaller)."""
    patience: int = 0
    """Stop early after this many evaluations without a better validation loss; 0 disables early stopping."""

    def validate(self) -> None:
        check(self.interval > 0, "eval.interval", "must be > 0")
        check(self.max_tokens > 0, "eval.max_tokens", "must be > 0")
        check(self.patience >= 0, "eval.patience", "must be >= 0")


@dataclass
class SampleConfig:
    prompt: str = "\n"
    """Text the samples printed after training start from."""
    num_samples: int = 2
    """Samples printed after training."""
    max_new_tokens: int = 200
    """Tokens generated per sample."""
    temperature: float = 0.8
    """Softmax temperature; lower is more conservative, 0 is greedy."""
    top_k: int = 0
    """Sample only among the k most likely tokens; 0 disables."""
    top_p: float = 0.95
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p; 1 disables."""

    def validate(self) -> None:
        check(self.num_samples >= 0, "sample.num_samples", "must be >= 0")
        check(self.max_new_tokens >= 0, "sample.max_new_tokens", "must be >= 0")
        check(self.temperature >= 0 and math.isfinite(self.temperature), "sample.temperature", "must be >= 0")
        check(0 <= self.top_k <= MAX_COUNT, "sample.top_k", "must be >= 0 (0: off)")
        check(0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1]")


@dataclass
class Config:
    out: str = ""
    """Run folder: config, tokenizer, token files, checkpoints, metrics and plots go here; empty: a new dated folder under runs/ (runs/latest links to it)."""
    seed: int = 1337
    """Seed for the data split, initialization, batch order and dropout."""
    init: str | None = None
    """Start from a trained model instead of random weights: an lmforge run folder (`lmforge import` makes one of a
    Hugging Face model; `train --init` takes either). Its tokenizer and model shape are used; only model.context_len
    and model.dropout may differ from it."""
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> Config:
        validate_sections(self)
        check_run_fields(self)
        check(self.optim.lr > 0, "optim.lr", "must be > 0")
        check(self.schedule.min_lr <= self.optim.lr, "schedule.min_lr", f"must not exceed optim.lr={self.optim.lr}")
        T = self.model.context_len
        check(self.train.global_batch_tokens % T == 0, "train.global_batch_tokens",
               f"{self.train.global_batch_tokens} is not a multiple of model.context_len={T}")
        examples = self.train.global_batch_tokens // T
        check(self.train.micro_batch_size <= examples, "train.micro_batch_size",
              f"{self.train.micro_batch_size} is more than the {examples} sequences of a step "
              f"(train.global_batch_tokens / model.context_len)")
        check(self.eval.max_tokens >= T, "eval.max_tokens",
              f"{self.eval.max_tokens} is less than one window of model.context_len={T} tokens")
        return self


def check_run_fields(cfg) -> None:
    """The run folder and seed, shared by the language-model and classifier configs."""
    check(cfg.out == "" or bool(cfg.out.strip()), "out",
          "is blank; name a run folder, or leave it out for a new dated run folder under runs/")
    check(0 <= cfg.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}] (2**32 - 1)")


def check_paths(paths: dict[str, str | None]) -> None:
    """Given data paths are not blank, and validation or test data is not the training data itself
    (its scores would measure memorization, not generalization)."""
    given = {name: p for name, p in paths.items() if p is not None}
    for name, p in given.items():
        check(bool(p.strip()), name, "is blank; give a file, folder or glob, or leave it out")
    train = given.get("data.path")
    for name, p in given.items():
        if train is not None and name != "data.path" and _same_path(p, train):
            check(False, name, f"is the training data ({train}); its scores would measure memorization. "
                               "Give held-out data, or leave it out to hold out part of data.path")


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def validate_sections(cfg, prefix: str = "") -> None:
    """Check the type of every field of a config (also one built in Python rather than loaded),
    then let each section (nested dataclass) check its ranges."""
    check_types(cfg, prefix)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, f"{prefix}{f.name}.")
            value.validate()


def check_types(section, prefix: str = "") -> None:
    """Each leaf field holds a value of its declared type (a Literal: one of its options)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        tp, value, name = hints[f.name], getattr(section, f.name), prefix + f.name
        if dataclasses.is_dataclass(tp):
            continue
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                continue
            tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Literal:
            ok = value in args
            want = "one of " + ", ".join(map(str, args))
        elif tp is bool:
            ok, want = isinstance(value, bool), "true or false"
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
            want = f"an integer of magnitude at most {MAX_INT}"
        elif tp is float:
            # inf is refused too: no field means "unlimited" by it, and it turns into NaN losses.
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        elif tp is str:
            ok, want = isinstance(value, str), "text"
        else:
            continue
        check(ok, name, f"{value!r} is not {want}")


def check(ok: bool, name: str, reason: str) -> None:
    """Raise a ConfigError naming the field unless `ok`."""
    if not ok:
        raise ConfigError(f"config field '{name}': {reason}")


def check_option(ok: bool, option: str, value: Any, reason: str) -> None:
    """Raise a ConfigError naming a command-line option that is not a config field (--max-tokens,
    --threshold, ...) unless `ok`."""
    if not ok:
        raise ConfigError(f"{option} {value}: {reason}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def text_codec(name: str) -> str | None:
    """The standard-library text codec a name stands for ('UTF8' -> 'utf-8', 'latin1' -> 'iso8859-1'),
    or None. Looked up among Python's own `encodings` only: packages may register codec search
    functions that accept any name, and codecs such as rot13 or base64 do not decode text files."""
    import encodings
    import encodings.aliases
    import importlib.util

    key = encodings.normalize_encoding(name.strip()).lower()
    key = encodings.aliases.aliases.get(key, key)
    if not key or not key.replace("_", "").isalnum() or importlib.util.find_spec(f"encodings.{key}") is None:
        return None
    try:
        info = codecs.lookup(key)
    except LookupError:
        return None
    found = encodings.normalize_encoding(info.name).lower()
    if encodings.aliases.aliases.get(found, found) != key:  # e.g. 'mbcs' off Windows, answered by another package
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def check_encoding(name: str, field_name: str) -> None:
    if name == "auto":
        return
    check(text_codec(name) is not None, field_name, f"{name!r} is not a known text encoding; use auto, or a codec "
                                                    "name such as utf-8, latin-1, cp1252, gbk")


# --- docstrings ------------------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of a dataclass, read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def iter_fields(cls: type = Config, prefix: str = "", defaults: Any = None):
    """Yield (dotted name, type, default, doc) for every leaf field."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            # The section's default comes from its parent, which may set it up differently
            # (a classifier's optimizer section defaults to per-model learning rates).
            yield from iter_fields(tp, f"{prefix}{f.name}.", getattr(defaults, f.name))
        else:
            yield f"{prefix}{f.name}", tp, getattr(defaults, f.name), docs.get(f.name, "")


# --- building from dicts, YAML and overrides -------------------------------------------------


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        # "" is unset here too (presets and scripts use it); a blank --data is refused by the command line,
        # where it would otherwise fall back to the embedded corpus.
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is Literal:
        text = str(value).lower() if isinstance(value, bool) else value
        if isinstance(value, bool):
            text = "on" if value else "off"
        if text not in args:
            close = difflib.get_close_matches(str(text), [str(a) for a in args], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config field '{name}': {value!r} is not one of {', '.join(map(str, args))}.{hint}")
        return text
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config field '{name}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config field '{name}': expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field '{name}': expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"config field '{name}': expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field '{name}': expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config field '{name}': expected text, got {value!r}")
        return str(value)
    return value


def _unknown(name: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(valid)}."
    return ConfigError(f"unknown config key '{name}'{where}.{hint}")


def from_dict(cls: type, data: dict, prefix: str = "", source: str = "", base: Any = None):
    """Build a dataclass from a nested dict, coercing types and rejecting unknown keys.

    Fields the dict leaves out keep their value in `base` (default: the class's defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    where = f" in {source}" if source else ""
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise _unknown(prefix + str(key), [prefix + n for n in names], where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, f"{prefix}{key}.", source, getattr(base, key))
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return dataclasses.replace(base, **kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(tree: dict, dotted: str, value: Any, cls: type = None) -> None:
    valid = [name for name, *_ in iter_fields(cls or Config)]
    if dotted not in valid:
        raise _unknown(dotted, valid, " on the command line")
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, cls: type = None):
    """Read a YAML preset (optional), apply dotted overrides ({'train.lr': '3e-4'}), validate.

    `cls` is the top-level config class (default: the language-model `Config`).
    """
    cls = cls or Config
    tree: dict = {}
    if path is not None:
        tree = read_config_file(Path(path))
        try:  # the file's own keys and types, so that their errors name the file
            from_dict(cls, tree, source=str(path))
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    for dotted, value in (overrides or {}).items():
        set_dotted(tree, dotted, value, cls)
    return from_dict(cls, tree).validate()


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one section; "
                                  "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(p: Path) -> dict:
    """A YAML config file as a dict; one-line errors naming the file (and line) otherwise."""
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or e})") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from None
    except yaml.YAMLError as e:
        mark, start = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if start is not None and getattr(e, "context", None) and (mark is None or start.line != mark.line):
            problem = f"{e.context} opened at line {start.line + 1}: {problem}"
        raise ConfigError(f"config file {p} is not valid YAML{where} ({problem}); fix it there") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {p} must be a mapping of sections (like `model:` and `train:`), "
                          f"not {type(tree).__name__} {str(tree)[:60]!r}")
    return tree


RUN_KINDS = {"lm": "language-model", "classify": "classifier"}
_OTHER_KIND_HINT = {
    "lm": "use `lmforge classify eval` or `lmforge classify predict` with it",
    "classify": "use `lmforge eval` or `lmforge generate` with it (or fine-tune it as a classifier: "
                "--model.kind gpt --model.gpt.run RUN_DIR)",
}


def config_kind(tree: Any) -> str | None:
    """'lm' or 'classify' for a saved config, told by the sections only one of them has; None: neither."""
    if not isinstance(tree, dict):
        return None
    data, model = tree.get("data"), tree.get("model")
    if "text" in tree or (isinstance(data, dict) and "label_field" in data):
        return "classify"
    if {"tokenizer", "clean", "sample"} & tree.keys() or (isinstance(model, dict) and "n_layer" in model):
        return "lm"
    return None


def read_run_config(run_dir: str | Path, kind: str) -> dict:
    """The saved config.yaml of a run folder of `kind` ('lm' or 'classify') as a dict; a one-line
    error for a path that is not a run folder, a damaged config, or a run of the other kind."""
    from lmforge.errors import DataError

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run folder; pass the folder given as --out when training")
    if not path.is_file():
        raise DataError(f"{run_dir} is not an lmforge run folder (no config.yaml); pass the folder given as --out "
                        "when training")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"{path} is unreadable ({str(e).splitlines()[0]}); the run folder is damaged") from None
    found = config_kind(tree)
    if found is None:
        raise DataError(f"{path} does not look like an lmforge config; the run folder is damaged or not lmforge's")
    if found != kind:
        raise DataError(f"{run_dir} is a {RUN_KINDS[found]} run, not a {RUN_KINDS[kind]} run; {_OTHER_KIND_HINT[found]}")
    return tree


def save_config(cfg, path: str | Path) -> None:
    from lmforge.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def describe(cls: type = Config) -> str:
    """Every field with its type, default and docstring: the reference for presets."""
    lines = []
    for name, tp, default, doc in iter_fields(cls):
        lines.append(f"{name} = {default!r}\n    {doc}")
    return "\n".join(lines)
