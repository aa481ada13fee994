"""What the planner is given: facts about the prepared corpus, its options, the step-time measurer,
and the config fields the user set (which it keeps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lmforge.auto.arithmetic import Candidate


@dataclass
class DataFacts:
    """What the planner needs to know about the prepared corpus."""

    train_tokens: int
    val_tokens: int
    vocab_size: int
    bytes_per_token: float = 1.0

    @classmethod
    def from_prepared(cls, data) -> DataFacts:
        s = data.summary
        return cls(train_tokens=int(s.get("train_tokens") or len(data.train)),
                   val_tokens=int(s.get("val_tokens") or len(data.val)),
                   vocab_size=int(data.tokenizer.vocab_size),
                   bytes_per_token=float(s.get("bytes_per_token") or 1.0))


class StepMeasurer(Protocol):
    def __call__(self, cand: Candidate, micro_batch: int, precision: str, **run: Any) -> float:
        """Seconds per training micro-step (forward, backward, optimizer) at this shape and size.

        `run` may carry the planned run's settings (compiled=True, optimizer=..., dropout=...): the
        planner then times the step the run will take. A compiled timing also records the one-off
        compile time as `last_compile_s`."""


@dataclass
class PlanOptions:
    law: tuple[float, float, float, float] = (406.4, 0.34, 410.7, 0.28)
    """Scaling rule A, alpha, B, beta of loss = E + A/N^alpha + B/D^beta (Chinchilla's approach-3 fit)."""
    repeat_saturation: float = 15.0
    """Passes over the corpus after which repeated data is nearly worthless (R_D* of Muennighoff et al.)."""
    param_saturation: float = 5.0
    """Same for parameters beyond what the unique data can feed (R_N*)."""
    planning_fraction: float = 0.08
    """Largest share of the budget spent on probes and step timings."""
    eval_fraction: float = 0.05
    """Share of the training time spent on evaluations during training."""
    max_measured: int = 8
    min_tokens_per_param: float = 5.0
    """Shapes that would train on fewer tokens per block parameter rank after all others (short runs)."""
    tie_fraction: float = 0.03
    """Step of the geometric grid predicted losses are rounded to: shapes in the best one's cell are a
    near tie, decided by a fixed rule (the cheapest) instead of by timing noise. 0: the lowest wins."""
    target_steps: int = 2000
    """Optimizer steps the batch size aims for with AdamW; fewer, larger steps waste tokens, more waste time."""
    target_steps_muon: int = 1000
    """Same with Muon, which keeps its sample efficiency at larger batches and costs more per step."""
    muon_max_epochs: float = 16.0
    """Above this many passes over the corpus the plan uses AdamW: Muon fits faster and so may overfit
    sooner. (Tiny Shakespeare, 8 passes, 2-minute auto runs: Muon 2.125, AdamW 2.137 bits per byte.)"""
    min_batch_tokens: int = 512
    """Smallest global batch the planner chooses (in tokens)."""
    measure_tokens: int = 0
    """Tokens per micro-step when timing candidates; 0: 4096 on CPU, 32768 on GPU."""
    compile_cost_s: float = 0.0
    """Expected one-off compile time; 0: 35 s on CPU (a first compile on 2 cores, measured 33 s for
    3 layers x 96; a cached one takes about 4 s), 60 s on GPU. When compiling is planned, the chosen
    step is compiled and timed during planning, and the plan uses what was measured."""
    compile_speedup: float = 0.0
    """Expected speed-up of a compiled step; 0: 1.6 on CPU, 1.5 on GPU (small CPU models are bound by
    per-operation overhead, which compiling fuses away: 1.8x measured at 2 layers x 128)."""
    compile_over_dropout_max_passes: float = 10.0
    """Light dropout gives way to compiling (on a CPU, where compiled dropout is slow) only while the
    compiled run would make at most this many passes over the corpus; beyond, its extra tokens are
    repeats worth less than the dropout (tiny Shakespeare, 20 minutes: 17 compiled passes without
    dropout overfit from the middle of the run)."""
    compile_min_speedup: float = 1.15
    """A measured compiled step must be at least this much faster, or the plan does not compile."""
    optimizer: str = "muon"
    """Optimizer of the planned run: 'muon' (Muon for hidden matrices, AdamW for the rest) or 'adamw'."""
    lr_method: str = "rule"
    """'rule' (a width- and batch-scaled rule) or 'find' (the LR range test; see lr_finder)."""
    safety_fraction: float = 0.02
    """Share of the budget kept free for what is not estimated."""


def explicit_fields(config_path: str | Path | None, overrides: dict[str, Any]) -> set[str]:
    """Dotted names set in the YAML preset or on the command line: the planner leaves them alone."""
    import yaml

    names = set(overrides)
    if config_path:
        tree = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    names.add(f"{prefix}{k}")

        walk(tree, "")
    return names
