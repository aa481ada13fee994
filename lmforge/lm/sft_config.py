"""The settings of chat fine-tuning (`lmforge sft`), apart from its code so that the CLI can build its
options (and `--help`) without importing PyTorch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmforge.config import EvalConfig, OptimConfig, RuntimeConfig, ScheduleConfig, check, validate_sections

SFT_FILE = "sft.yaml"


@dataclass
class ChatDataConfig:
    path: str | None = None
    """JSON-lines file of conversations, one {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]} per line."""
    demo: bool = False
    """Use demo conversations built from the embedded Shakespeare plays (a line, then the next speaker's reply) instead of a file."""
    demo_conversations: int = 3000
    """How many demo conversations to build."""
    val_fraction: float = 0.05
    """Share of the conversations held out for validation (at least one)."""

    def validate(self) -> None:
        check(bool(self.path) != self.demo, "data.path", "give a conversations file (--data FILE) or --demo-data, "
              "not both" if self.path else "give a conversations file (--data FILE) or --demo-data")
        check(self.demo_conversations >= 2, "data.demo_conversations", "must be >= 2")
        check(0 < self.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")


@dataclass
class SFTTrainConfig:
    max_steps: int = 300
    """Optimizer steps to fine-tune for."""
    batch_size: int = 16
    """Conversations per optimizer step, summed over processes and accumulation steps."""
    micro_batch_size: int = 0
    """Conversations per forward pass per process; 0: the whole per-process batch."""
    time_budget_s: float = 0.0
    """Stop (evaluate and save) after this many seconds of training; 0 means no limit."""
    log_interval: int = 10
    """Steps between training-loss lines in metrics.jsonl."""
    save_interval: int = 0
    """Steps between checkpoints; 0 means at every evaluation."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep for resuming."""
    track: Literal["tensorboard", "mlflow", "none"] = "tensorboard"
    """Experiment tracking: 'tensorboard' (RUN/tb), 'mlflow' (RUN/mlflow.db) or 'none'."""

    def validate(self) -> None:
        check(self.max_steps > 0, "train.max_steps", "must be > 0")
        check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        check(self.micro_batch_size >= 0, "train.micro_batch_size", "must be >= 0")
        check(self.time_budget_s >= 0 and math.isfinite(self.time_budget_s), "train.time_budget_s",
              "must be a finite number of seconds >= 0")
        check(self.log_interval >= 1, "train.log_interval", "must be >= 1")
        check(self.save_interval >= 0, "train.save_interval", "must be >= 0")
        check(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")


@dataclass
class ChatSampleConfig:
    num_samples: int = 3
    """Validation conversations whose last user turn is answered before and after fine-tuning (samples.json)."""
    max_new_tokens: int = 80
    """Tokens per sampled reply."""
    temperature: float = 0.7
    """Sampling temperature of the replies (0: greedy)."""

    def validate(self) -> None:
        check(self.num_samples >= 0, "sample.num_samples", "must be >= 0")
        check(self.max_new_tokens >= 1, "sample.max_new_tokens", "must be >= 1")
        check(self.temperature >= 0, "sample.temperature", "must be >= 0")


@dataclass
class SFTConfig:
    base: str = ""
    """Run folder of the trained language model to fine-tune."""
    out: str = "runs/sft"
    """Run folder of the fine-tuned model."""
    seed: int = 1337
    """Seed of the split, the batch order and the samples."""
    data: ChatDataConfig = field(default_factory=ChatDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=20, min_lr=3e-5))
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(interval=50, max_tokens=65536))
    sample: ChatSampleConfig = field(default_factory=ChatSampleConfig)

    def validate(self) -> SFTConfig:
        validate_sections(self)
        check(bool(self.base), "base", "give the run folder to fine-tune")
        check(Path(self.out).resolve() != Path(self.base).resolve(), "out",
              "must differ from the base run (its files are kept as they are)")
        check(self.optim.lr > 0, "optim.lr", "must be > 0")
        check(self.schedule.min_lr <= self.optim.lr, "schedule.min_lr", f"must not exceed optim.lr={self.optim.lr}")
        return self
