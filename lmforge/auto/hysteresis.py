"""Hysteresis: the same command on the same machine keeps its plan.

A decision taken from a measurement near a threshold (two shapes whose predicted losses are within
a few percent, a bf16 speed-up near 1.1x, passes over the corpus near the optimizer's limit) flips
with a few percent of timing noise; no rule without memory avoids that everywhere (measured with
benchmarks/plan_stability.py: 11-18 of 91 cases change under +-5% noise without memory, 0 with).
So a plan remembers: when there is a plan of an earlier run made for the same inputs (budget,
corpus, machine, the settings the user fixed), a decision near its threshold keeps the earlier
value, and changes only when the new measurement is clearly on the other side (a Schmitt
trigger: the band to keep a decision is wider than the one to take it). Each kept decision is
listed as a close call.

The earlier plan is the run folder's plan.json, or else the machine's plan memory: every plan is
also kept under a key of its inputs in $LMFORGE_PLAN_MEMORY (default $XDG_CACHE_HOME/lmforge/plans,
i.e. ~/.cache/lmforge/plans; `off` turns it off), so the same command on the same machine keeps its
plan in a new run folder too. Those files are lmforge's own: a few KB per (corpus, budget).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.auto.arithmetic import Candidate

PLAN_FORMAT = 1  # bumped when the planner's rules change, so older plans are not taken as memory
KEEP_BAND = 0.15  # a measurement within this fraction of a threshold keeps the earlier decision


@dataclass(frozen=True)
class PreviousPlan:
    """The decisions of an earlier plan made for the same inputs."""

    shape: Candidate
    optimizer: str
    dropout: float
    precision: str
    compile: bool
    tokenizer: tuple[str, int]
    source: str  # the plan file, for the reasons printed
    micro_knee: int = 0  # the micro-batch the throughput curve's knee was found at (0: unknown)
    accumulation: int = 0  # micro-batches per optimizer step
    sequences: int = 0  # sequences per optimizer step (the global batch)

    @classmethod
    def from_dict(cls, d: dict, source: str) -> PreviousPlan:
        m, cfg = d["config"]["model"], d["config"]
        tok = cfg["tokenizer"]
        return cls(shape=Candidate(m["n_layer"], m["d_model"], m["n_head"], m["context_len"]),
                   optimizer=cfg["optim"]["kind"], dropout=float(m["dropout"]),
                   precision=cfg["runtime"]["precision"], compile=cfg["runtime"]["compile"] == "on",
                   tokenizer=(tok["kind"], int(tok["vocab_size"]) if tok["kind"] == "bpe" else 0), source=source,
                   micro_knee=int(d.get("estimates", {}).get("micro_knee") or 0),
                   accumulation=cfg["train"]["global_batch_tokens"] // (cfg["train"]["micro_batch_size"]
                                                                       * m["context_len"]),
                   sequences=cfg["train"]["global_batch_tokens"] // m["context_len"])


def plan_inputs(budget_s: float, hardware: dict, fixed, corpus: dict[str, Any]) -> dict:
    """What a plan was made for; a later plan with equal inputs may take it as memory."""
    return {"format": PLAN_FORMAT, "budget_s": round(float(budget_s), 3),
            "hardware": {k: hardware.get(k) for k in ("device", "name", "cores")},
            "fixed": sorted(fixed), "corpus": corpus}


def read_plan(run_dir: str | Path | None) -> dict | None:
    """The plan.json in `run_dir` as written, or None. Read before the run folder is claimed, since
    --overwrite removes it and the memory of the earlier plan would go with it."""
    if not run_dir:
        return None
    return read_plan_file(Path(run_dir) / "plan.json")


def memory_dir() -> Path | None:
    """The machine's plan memory: $LMFORGE_PLAN_MEMORY ('off': none), else the user's cache folder."""
    chosen = os.environ.get("LMFORGE_PLAN_MEMORY")
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmforge" / "plans"


def _memory_file(inputs: dict) -> Path | None:
    """The memory file of a plan made for `inputs`, keyed by what is known before the data is prepared."""
    folder = memory_dir()
    if folder is None:
        return None
    corpus = inputs["corpus"]
    known = {k: inputs[k] for k in ("format", "budget_s", "hardware", "fixed")}
    known["corpus"] = {"path": corpus.get("path"), "bytes": corpus.get("bytes")}
    key = hashlib.sha256(json.dumps(known, sort_keys=True).encode()).hexdigest()[:24]
    return folder / f"{key}.json"


def recall(inputs: dict) -> tuple[dict | None, str]:
    """The plan the machine remembers for these inputs (the doc, its file), or (None, '')."""
    path = _memory_file(inputs)
    if path is None:
        return None, ""
    return read_plan_file(path), str(path)


def remember(doc: dict) -> None:
    """Keep a plan in the machine's memory. A memory that cannot be written is only a lost hint."""
    from lmforge.atomic import atomic_write_json

    path = _memory_file(doc["inputs"]) if "inputs" in doc else None
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"inputs": doc["inputs"], "config": doc["config"],
                                 "estimates": {"micro_knee": doc.get("estimates", {}).get("micro_knee")}})
    except OSError:
        pass


def read_plan_file(path: Path) -> dict | None:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def load_previous(run_dir: str | Path | None, inputs: dict, doc: dict | None = None,
                  source: str | None = None) -> PreviousPlan | None:
    """The earlier plan in `run_dir` (or `doc`, that plan read earlier, from `source`) when it was
    made for these inputs (`corpus` compared only on the keys given, so the tokenizer can be kept
    before the data is prepared); else None."""
    path = source or str(Path(run_dir or ".") / "plan.json")
    d = doc if doc is not None else read_plan(run_dir)
    if d is None:
        return None
    try:
        old = d["inputs"]
        same = (old["format"] == inputs["format"] and old["budget_s"] == inputs["budget_s"]
                and old["hardware"] == inputs["hardware"] and old["fixed"] == inputs["fixed"]
                and all(old["corpus"].get(k) == v for k, v in inputs["corpus"].items()))
        return PreviousPlan.from_dict(d, path) if same else None
    except (ValueError, KeyError, TypeError):
        return None  # a plan this planner did not write: plan afresh


def sticky(new, previous, ratio_to_threshold: float, band: float = KEEP_BAND) -> tuple[Any, bool]:
    """(decision, kept): the earlier decision when the deciding measurement is within `band` of its
    threshold (ratio_to_threshold = measurement / threshold), else the new one."""
    if previous is not None and previous != new and abs(ratio_to_threshold - 1) <= band:
        return previous, True
    return new, False
