"""Typed configuration of `lmforge classify`: data, text, model, optim, schedule, runtime, train, eval, self_train.

Each field's docstring becomes its `--section.field` help. The optimizer, schedule and runtime
sections are the language model's; `train` is the classifier's own (its batch is counted in
texts, its length in epochs), and each model has its own learning rate (`model.bilstm.lr`, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from lmforge.config import (MAX_COUNT, MAX_LR, OptimConfig, RuntimeConfig, ScheduleConfig, check, check_encoding, check_paths,
                            check_run_fields, validate_sections)

# Upper bounds for sizes: far beyond what a text classifier needs, low enough that no value that
# passes allocates terabytes (the transformer's position table is text.max_len x d_model).
MAX_TEXT_LEN = 2**17
MAX_VOCAB = 2**24
MAX_DIM = 2**14
MAX_LAYERS = 64

MODEL_KINDS = ("auto", "bilstm", "fasttext", "transformer", "gpt", "linear", "ensemble")
NEURAL_KINDS = ("bilstm", "fasttext", "transformer", "gpt")


AUGMENT_METHODS = ("swap", "delete", "insert", "synonym", "noise")


@dataclass
class AugmentConfig:
    """Offline text augmentation of the training texts (never validation or test texts): each training text
    gets `copies` altered copies with its label, made by word swaps, deletions, insertions, synonyms from word
    vectors, or character noise. Words are the units classify splits text into (jieba words for Chinese; single
    characters with text.tokenizer char)."""

    methods: str = ""
    """Comma-separated methods, each copy made by one of them (picked per copy): swap (exchange two words),
    delete (drop words), insert (repeat a word, or with vectors one of its synonyms, elsewhere in the text),
    synonym (replace words by near neighbours in data.augment.vectors), noise (drop, repeat or exchange
    characters inside words); empty: no augmentation (the default: see the README for where it helps)."""
    copies: int = 1
    """Altered copies added per training text (the original is always kept)."""
    strength: float = 0.1
    """Share of a text's words each method changes (at least one word): swaps, deletions, insertions,
    replacements or misspelt words per word of the text."""
    seed: int = -1
    """Seed of the alterations (each copy depends only on this seed and its source text, so a text gets the
    same copies in every fold); -1: the run's seed."""
    vectors: str | None = None
    """Word vectors for 'synonym' (and synonym insertion): a word2vec/GloVe text file such as one written by
    `lmforge classify vectors`; empty: text.vectors when that is a file."""
    linear: bool = False
    """Augment the linear model's training texts too; by default only the neural members (fastText, BiLSTM, ...)
    get the copies (measured: they cost the linear model about a point on SST-2 and ChnSentiCorp samples)."""
    min_similarity: float = 0.5
    """Cosine similarity a neighbour needs to count as a synonym (distributional neighbours of a sentiment
    word can be its opposite; a high bar keeps fewer of them)."""

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def validate(self) -> None:
        for m in self.method_list():
            check(m in AUGMENT_METHODS, "data.augment.methods",
                  f"{m!r} is not one of {', '.join(AUGMENT_METHODS)}")
        check(1 <= self.copies <= 100, "data.augment.copies", "must be in [1, 100]")
        check(0.0 < self.strength <= 0.5, "data.augment.strength", "must be in (0, 0.5]")
        check(self.seed >= -1, "data.augment.seed", "must be >= 0, or -1 for the run's seed")
        check(self.vectors is None or bool(self.vectors.strip()), "data.augment.vectors",
              "is blank; give a word-vector file or leave it out")
        check(-1.0 <= self.min_similarity < 1.0, "data.augment.min_similarity", "must be in [-1, 1)")


@dataclass
class ClassifyDataConfig:
    path: str | None = None
    """Labeled training data: a file, folder or glob of .jsonl/.json/.csv/.tsv/.parquet (optionally .gz)."""
    valid_path: str | None = None
    """Optional labeled validation data (early stopping, model selection); when empty, val_fraction of the training data is held out."""
    test_path: str | None = None
    """Optional labeled test data, scored once at the end with every metric."""
    text_field: str = "text"
    """Field (jsonl/json) or column (csv/tsv/parquet) holding the text."""
    label_field: str = "label"
    """Field or column holding the label: strings or integers, two classes or more."""
    val_fraction: float = 0.1
    """Share of the training data held out for validation (stratified, seeded) when no valid_path is given."""
    encoding: str = "auto"
    """Text encoding of csv/tsv/json files: 'auto' detects it and stops when unsure; or a codec name such as utf-8, latin-1, gbk."""
    oversample: bool = False
    """Randomly repeat examples of the smaller classes so every class is seen equally often in training."""
    class_weights: bool = False
    """Weight the loss by inverse class frequency (n / (classes * count)), so rare classes count as much as common ones."""
    skew_warning_ratio: float = 3.0
    """Warn when the most common class outnumbers the rarest by this factor or more."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    decontam_ngram: int = 13
    """Report test and validation records (from --test/--valid files) sharing a run of this many words (each
    CJK character a word) with a training text; 0: off."""
    decontam_remove: bool = False
    """Also leave those records out of validation and scoring (otherwise only count them)."""
    unlabeled: str = ""
    """Unlabeled texts of the task's kind (`--unlabeled FILE`, repeatable): comma-separated files, .txt/.md one text per line or records with data.text_field. Read by the gpt member's in-domain pretraining and by self-training (self_train.rounds); never scored."""

    def unlabeled_paths(self) -> list[str]:
        return [p.strip() for p in self.unlabeled.split(",") if p.strip()]

    def validate(self) -> None:
        check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
        check(self.skew_warning_ratio >= 1, "data.skew_warning_ratio", "must be >= 1")
        check(bool(self.text_field.strip()), "data.text_field", "must name a field, e.g. text")
        check(bool(self.label_field.strip()), "data.label_field", "must name a field, e.g. label")
        check(self.text_field != self.label_field, "data.label_field",
              f"is the text field ({self.text_field!r}) too; the label must be another field")
        check_paths({"data.path": self.path, "data.valid_path": self.valid_path, "data.test_path": self.test_path})
        check_encoding(self.encoding, "data.encoding")
        check(self.decontam_ngram == 0 or 5 <= self.decontam_ngram <= 1000, "data.decontam_ngram",
              "must be 0 (off) or in [5, 1000]")
        validate_sections(self, "data.")


@dataclass
class TextConfig:
    language: Literal["auto", "en", "zh"] = "auto"
    """Language of the texts; 'auto' detects Chinese/Japanese/Korean script, else treats them as space-separated words."""
    tokenizer: Literal["auto", "word", "char", "bpe"] = "auto"
    """Units for neural models: 'word' (regex for space-separated languages, jieba for Chinese), 'char', or 'bpe' (a trained lmforge tokenizer, see bpe_path); 'auto' is word (measured best for Chinese too)."""
    lowercase: bool = True
    """Lower-case the text before splitting it into words."""
    strip_html: bool = True
    """Replace HTML tags such as <br /> by spaces."""
    min_freq: int = 2
    """Words (or characters) seen fewer times in the training data become the unknown token."""
    max_vocab: int = 100000
    """Largest vocabulary, special tokens included; the most frequent units are kept."""
    max_len: int = 512
    """Longest text in tokens seen by neural models; longer texts are cut (and counted)."""
    truncate: Literal["head", "tail", "head_tail"] = "head_tail"
    """What a cut keeps: the start, the end, or the first third plus the last two thirds (reviews often end with the verdict)."""
    bpe_path: str | None = None
    """tokenizer='bpe' only: a tokenizer.json written by `lmforge prepare/train`, or its run folder."""
    vectors: str | None = None
    """Initial embeddings for the BiLSTM/transformer: a word-vector text file (GloVe 'word v1 v2 ...' or word2vec text format, e.g. from `lmforge classify vectors`), or 'train' to compute them from the training texts (PPMI + SVD)."""
    vectors_dim: int = 300
    """Width of the vectors computed when vectors is 'train'."""

    def validate(self) -> None:
        check(1 <= self.min_freq <= MAX_COUNT, "text.min_freq", "must be >= 1")
        check(3 <= self.max_vocab <= MAX_VOCAB, "text.max_vocab",
              f"must be in [3, {MAX_VOCAB:,}] (padding, unknown, and at least one real token)")
        check(1 <= self.max_len <= MAX_TEXT_LEN, "text.max_len", f"must be in [1, {MAX_TEXT_LEN:,}]")
        check(2 <= self.vectors_dim <= MAX_DIM, "text.vectors_dim", f"must be in [2, {MAX_DIM:,}]")
        for name in ("bpe_path", "vectors"):
            value = getattr(self, name)
            check(value is None or bool(value.strip()), f"text.{name}", "is blank; give a path or leave it out")


@dataclass
class BiLSTMConfig:
    embed_dim: int = 128
    """Embedding width (set from the vectors file when text.vectors is given)."""
    hidden_dim: int = 128
    """LSTM state width per direction."""
    layers: int = 1
    """Stacked bidirectional LSTM layers."""
    dropout: float = 0.5
    """Dropout on the embeddings and on the pooled features."""
    pooling: Literal["last", "max", "mean", "last_max"] = "last_max"
    """'last': each direction's state at the text's true end (the tutorial's read-out, done right); 'max'/'mean' over positions; 'last_max' concatenates last and max."""
    lr: float = 2e-3
    """Peak learning rate of this model (AdamW); it decays to min(schedule.min_lr, lr/10) on schedule.kind."""

    def validate(self) -> None:
        check(0 < self.lr <= MAX_LR, "model.bilstm.lr", f"must be in (0, {MAX_LR}]")
        for name, most in (("embed_dim", MAX_DIM), ("hidden_dim", MAX_DIM), ("layers", MAX_LAYERS)):
            check(1 <= getattr(self, name) <= most, f"model.bilstm.{name}", f"must be in [1, {most:,}]")
        check(0.0 <= self.dropout < 1.0, "model.bilstm.dropout", "must be in [0, 1)")


@dataclass
class FastTextConfig:
    embed_dim: int = 16
    """Width of each n-gram's embedding; the text's vector is their mean."""
    ngrams: int = 3
    """Longest n-gram of units (1 to 3); units follow text.tokenizer (words, or characters)."""
    min_count: int = 3
    """N-grams found in fewer training texts are dropped (keeps the table small)."""
    dropout: float = 0.3
    """Dropout on the averaged vector."""
    lr: float = 2e-2
    """Peak learning rate of this model (AdamW); it decays to min(schedule.min_lr, lr/10) on schedule.kind."""

    def validate(self) -> None:
        check(0 < self.lr <= MAX_LR, "model.fasttext.lr", f"must be in (0, {MAX_LR}]")
        check(1 <= self.embed_dim <= MAX_DIM, "model.fasttext.embed_dim", f"must be in [1, {MAX_DIM:,}]")
        check(1 <= self.ngrams <= 3, "model.fasttext.ngrams", "must be 1, 2 or 3")
        check(1 <= self.min_count <= MAX_COUNT, "model.fasttext.min_count", "must be >= 1")
        check(0.0 <= self.dropout < 1.0, "model.fasttext.dropout", "must be in [0, 1)")


@dataclass
class EncoderConfig:
    d_model: int = 128
    """Width of the encoder."""
    n_layer: int = 2
    """Transformer encoder layers."""
    n_head: int = 4
    """Attention heads per layer."""
    dropout: float = 0.1
    """Dropout in the encoder and on the pooled features."""
    pooling: Literal["mean", "max", "cls"] = "mean"
    """How token states become one vector: masked mean, masked max, or the first token."""
    lr: float = 5e-4
    """Peak learning rate of this model (AdamW); it decays to min(schedule.min_lr, lr/10) on schedule.kind."""

    def validate(self) -> None:
        check(0 < self.lr <= MAX_LR, "model.transformer.lr", f"must be in (0, {MAX_LR}]")
        for name, most in (("d_model", MAX_DIM), ("n_layer", MAX_LAYERS), ("n_head", 256)):
            check(1 <= getattr(self, name) <= most, f"model.transformer.{name}", f"must be in [1, {most:,}]")
        check(self.d_model % self.n_head == 0, "model.transformer.d_model",
               f"{self.d_model} is not divisible by model.transformer.n_head={self.n_head}")
        check(0.0 <= self.dropout < 1.0, "model.transformer.dropout", "must be in [0, 1)")


@dataclass
class GPTHeadConfig:
    run: str | None = None
    """Run folder of a GPT trained by `lmforge train`; its tokenizer is used and its weights are fine-tuned."""
    pooling: Literal["mean", "last"] = "mean"
    """Read-out of the hidden states: masked mean over the text, or the state at its last token."""
    dropout: float = 0.1
    """Dropout on the pooled features."""
    freeze: bool = False
    """Train only the classification head (a linear probe), keeping the GPT's weights fixed."""
    lr: float = 0.0
    """Peak learning rate of the classification head (AdamW; the layers below train at lower rates, see layer_lr_decay); it decays to min(schedule.min_lr, lr/10) on schedule.kind. 0: 1e-4 for a given model.gpt.run (a large pretrained model), 1e-3 for a GPT pretrained here (small, from scratch; not tuned)."""
    layer_lr_decay: float = 2.6
    """Discriminative learning rates (ULMFiT): the top transformer block trains at lr / this, each block below at a further / this, the embeddings last; 1: one rate for all."""
    unfreeze: float = 0.3
    """Gradual unfreezing (ULMFiT): the head (and final norm) trains alone at first, then the blocks join one at a time from the top, the embeddings last, at even intervals, all training after this share of the steps; 0: everything trains from the first step."""
    pretrain: Literal["auto", "on", "off"] = "auto"
    """In-domain pretraining: first train an lmforge GPT on the training texts (never the validation or test texts) plus data.unlabeled, in RUN/pretrain, then fine-tune it. 'auto': when model.gpt.run is not given (and, with --time and --unlabeled text, the plan adds this member when the budget allows); 'on': also continue pretraining a given model.gpt.run on the task's texts (ULMFiT's second stage), and --time considers the member without unlabeled text too; 'off': never (the gpt model then needs model.gpt.run)."""
    pretrain_time_s: float = 0.0
    """Seconds of in-domain pretraining at most; 0: no time limit (pretrain_epochs passes), or the plan's share with --time."""
    pretrain_epochs: float = 10.0
    """Passes over the pretraining text (fewer when pretrain_time_s ends it first)."""
    pretrain_d_model: int = 128
    """Width of the GPT pretrained in-domain (ignored when continuing a given model.gpt.run)."""
    pretrain_n_layer: int = 4
    """Transformer blocks of the GPT pretrained in-domain (ignored when continuing a given model.gpt.run)."""
    unlabeled: str = ""
    """The former place of data.unlabeled (kept so that run folders written before it still load): read as if given there."""

    def validate(self) -> None:
        check(0 <= self.lr <= MAX_LR, "model.gpt.lr", f"must be in [0, {MAX_LR}] (0: chosen, see the help)")
        check(self.run is None or bool(self.run.strip()), "model.gpt.run", "is blank; give a run folder or leave it out")
        check(0.0 <= self.dropout < 1.0, "model.gpt.dropout", "must be in [0, 1)")
        check(1.0 <= self.layer_lr_decay <= 100 and math.isfinite(self.layer_lr_decay), "model.gpt.layer_lr_decay",
              "must be in [1, 100] (1: one learning rate for every layer; ULMFiT used 2.6)")
        check(0.0 <= self.unfreeze < 1.0, "model.gpt.unfreeze",
              "must be in [0, 1): the share of the steps over which layers are unfrozen (0: none frozen)")
        check(self.pretrain_time_s >= 0 and math.isfinite(self.pretrain_time_s), "model.gpt.pretrain_time_s",
              "must be a finite number of seconds >= 0 (0: no limit)")
        check(0 < self.pretrain_epochs <= 10**4 and math.isfinite(self.pretrain_epochs), "model.gpt.pretrain_epochs",
              "must be a number in (0, 10000]")
        check(8 <= self.pretrain_d_model <= MAX_DIM and self.pretrain_d_model % 8 == 0, "model.gpt.pretrain_d_model",
              f"must be a multiple of 8 in [8, {MAX_DIM:,}] (heads 32 wide, or 8 when it is no multiple of 32)")
        check(1 <= self.pretrain_n_layer <= MAX_LAYERS, "model.gpt.pretrain_n_layer", f"must be in [1, {MAX_LAYERS}]")

    def pretrains(self) -> bool:
        """Whether the gpt member is first pretrained in-domain."""
        return self.pretrain == "on" or (self.pretrain == "auto" and not self.run)


@dataclass
class LinearConfig:
    features: Literal["auto", "nb", "tfidf"] = "auto"
    """'nb': binary n-grams scaled by naive-Bayes log-count ratios (NBSVM-style); 'tfidf': sublinear TF-IDF; 'auto': nb for English, tfidf for Chinese."""
    ngrams: int = -1
    """Longest word n-gram (1 to 3; 0: no word n-grams); -1: 3 for English, 2 for Chinese (jieba words)."""
    char_ngrams: int = -1
    """Longest character n-gram (0: none); -1: none for English, 3 for Chinese."""
    min_df: int = 2
    """N-grams found in fewer training texts are dropped."""
    C: float = 0.0
    """Inverse L2 strength of the logistic regression; 0 picks it by cross-validation on the training data."""
    cv_folds: int = 3
    """Folds used to pick C when C is 0."""

    def validate(self) -> None:
        check(-1 <= self.ngrams <= 3, "model.linear.ngrams", "must be -1 (auto), 0, 1, 2 or 3")
        check(-1 <= self.char_ngrams <= 5, "model.linear.char_ngrams", "must be between -1 (auto) and 5")
        check(1 <= self.min_df <= MAX_COUNT, "model.linear.min_df", "must be >= 1")
        check(self.C >= 0, "model.linear.C", "must be >= 0 (0: chosen by cross-validation)")
        check(2 <= self.cv_folds <= 100, "model.linear.cv_folds", "must be in [2, 100]")


@dataclass
class ClassifierConfig:
    kind: Literal["auto", "bilstm", "fasttext", "transformer", "gpt", "linear", "ensemble"] = "auto"
    """Model: 'bilstm', 'fasttext' (bag of n-grams), 'transformer' (small encoder), 'gpt' (fine-tune an lmforge GPT), 'linear' (scikit-learn), 'ensemble' (see members), or 'auto': linear + fasttext, plus a BiLSTM on vectors from the training texts when the data is small (measured strongest)."""
    members: str = "linear,fasttext"
    """kind='ensemble' only: comma-separated models whose class probabilities are averaged (weights: see stacking); a neural model may repeat, each copy with another seed (the copies are averaged and share one tuned weight)."""
    stacking: Literal["auto", "oof", "split"] = "auto"
    """How ensemble weights are tuned: 'oof' on out-of-fold predictions of the whole training set (each member also trained stack_folds times, on k-1 folds), 'split' on the validation split only (fast, but the weights swing with the split); 'auto': oof when the data is small enough for the extra training to take about as long as the members themselves (or as train.run_budget_s allows), else split."""
    stack_folds: int = 5
    """Folds of out-of-fold stacking (k >= 2): more folds, fold models closer to the final ones, k times the training."""
    bilstm: BiLSTMConfig = field(default_factory=BiLSTMConfig)
    fasttext: FastTextConfig = field(default_factory=FastTextConfig)
    transformer: EncoderConfig = field(default_factory=EncoderConfig)
    gpt: GPTHeadConfig = field(default_factory=GPTHeadConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)

    def member_kinds(self) -> list[str]:
        if self.kind != "ensemble":
            return [self.kind]
        return [m.strip() for m in self.members.split(",") if m.strip()]

    def member_names(self) -> list[str]:
        """Folder names of the members: the kind, then kind_2, kind_3 for repeats (trained with other seeds)."""
        seen: dict[str, int] = {}
        names = []
        for k in self.member_kinds():
            seen[k] = seen.get(k, 0) + 1
            names.append(k if seen[k] == 1 else f"{k}_{seen[k]}")
        return names

    def validate(self) -> None:
        if self.kind == "ensemble":
            kinds = self.member_kinds()
            check(len(kinds) >= 1, "model.members", "name at least one model, e.g. 'linear,fasttext'")
            for k in kinds:
                check(k in MODEL_KINDS[1:6], "model.members",
                       f"{k!r} is not one of {', '.join(MODEL_KINDS[1:6])}")
            check(kinds.count("linear") <= 1, "model.members", "lists the linear model twice (it has no seed to vary)")
        check(self.stack_folds >= 2, "model.stack_folds", "must be at least 2")
        validate_sections(self)


@dataclass
class ClassifyTrainConfig:
    epochs: float = 3.0
    """Passes over the training data; sets max_steps (0: use max_steps as given)."""
    batch_size: int = 64
    """Texts per optimizer step, summed over processes and accumulation steps."""
    micro_batch_size: int = 0
    """Texts per forward pass per process; 0 picks the whole per-process batch (no accumulation)."""
    max_steps: int = 1000
    """Optimizer steps per neural model when epochs is 0."""
    time_budget_s: float = 0.0
    """Stop each neural model once it has trained this many seconds; 0 means no limit."""
    run_budget_s: float = 0.0
    """Wall-clock budget of the whole run in seconds (`--time`): when > 0, a plan picks the members, the stacking and each neural model's training time so that reading, training, stacking and scoring end within it; 0: no plan."""
    log_interval: int = 10
    """Steps between training-loss log lines in each model's metrics.jsonl."""
    save_interval: int = 0
    """Steps between checkpoints; 0 means at every evaluation."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep for resuming."""
    track: Literal["tensorboard", "mlflow", "none"] = "tensorboard"
    """Experiment tracking of the training records: 'tensorboard' (event files in each neural model's folder, MODEL/tb; the final metrics in RUN/tb), 'mlflow' (a local store, MODEL/mlflow.db and RUN/mlflow.db, or MLFLOW_TRACKING_URI when set) or 'none'."""

    def validate(self) -> None:
        check(0 <= self.epochs <= 10**6 and math.isfinite(self.epochs), "train.epochs", "must be a number in [0, 1e6]")
        check(1 <= self.batch_size <= MAX_COUNT, "train.batch_size", "must be >= 1")
        check(0 <= self.micro_batch_size <= self.batch_size, "train.micro_batch_size",
              f"must be in [0, train.batch_size={self.batch_size}] (0: the whole batch)")
        check(0 < self.max_steps <= 10**12, "train.max_steps", "must be in [1, 1e12]")
        check(self.time_budget_s >= 0 and math.isfinite(self.time_budget_s), "train.time_budget_s",
               "must be a finite number of seconds >= 0")
        check(self.run_budget_s >= 0 and math.isfinite(self.run_budget_s), "train.run_budget_s",
               "must be a finite number of seconds >= 0")
        check(self.log_interval >= 1, "train.log_interval", "must be >= 1")
        check(self.save_interval >= 0, "train.save_interval", "must be >= 0")
        check(1 <= self.keep_checkpoints <= MAX_COUNT, "train.keep_checkpoints", "must be >= 1")


@dataclass
class ClassifyEvalConfig:
    interval: int = 0
    """Steps between validation evaluations (and checkpoints); 0 means once per epoch."""
    patience: int = 0
    """Stop early after this many evaluations without a better validation loss; 0 disables early stopping."""
    folds: int = 0
    """k-fold cross-validation on the training data (k >= 2): reports the mean and standard deviation of every metric."""
    threshold: float = 0.5
    """Binary tasks: predict the second class (in sorted label order) when its probability reaches this."""

    def validate(self) -> None:
        check(self.interval >= 0, "eval.interval", "must be >= 0")
        check(self.patience >= 0, "eval.patience", "must be >= 0")
        check(self.folds == 0 or 2 <= self.folds <= 100, "eval.folds", "must be 0 (off) or in [2, 100]")
        check(0.0 < self.threshold < 1.0, "eval.threshold", "must be in (0, 1)")


@dataclass
class SelfTrainConfig:
    """Self-training on data.unlabeled: the classifier trained on the labeled texts labels the unlabeled ones, those
    it is sure of join the training texts with the predicted label, and the members train again."""

    rounds: int = 0
    """Rounds of pseudo-labelling (each trains the members once more, on the labeled texts plus the last round's
    pseudo-labeled ones); 0: off (the default; see the README for what it measured)."""
    threshold: float = 0.9
    """Least probability of the predicted class for an unlabeled text to be taken."""
    max_ratio: float = 1.0
    """At most this many pseudo-labeled texts per labeled training text, the most confident first, each class
    keeping its share of the labeled texts (so one class cannot take over)."""

    def validate(self) -> None:
        check(0 <= self.rounds <= 10, "self_train.rounds", "must be in [0, 10] (0: off)")
        check(0.5 <= self.threshold < 1.0, "self_train.threshold", "must be in [0.5, 1)")
        check(0 < self.max_ratio <= 100 and math.isfinite(self.max_ratio), "self_train.max_ratio",
              "must be a number in (0, 100]")


@dataclass
class ClassifyConfig:
    out: str = ""
    """Run folder: config, label map, vocabulary, weights, metrics and plots go here; empty: a new dated folder under runs/ (runs/latest-classify links to it)."""
    seed: int = 1337
    """Seed for the validation split, initialization, batch order and dropout."""
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.0))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: ClassifyTrainConfig = field(default_factory=ClassifyTrainConfig)
    eval: ClassifyEvalConfig = field(default_factory=ClassifyEvalConfig)
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)

    def validate(self) -> ClassifyConfig:
        validate_sections(self)
        check_run_fields(self)
        return self

