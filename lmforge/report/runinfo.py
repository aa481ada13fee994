"""What a run folder is, how far it got and its key figures, read from its files alone (no model
is loaded): used by the report card, `compare`, the server and the dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmforge.trainer.metrics import read_metrics

# A run whose metrics were written this recently is taken to be training.
ACTIVE_WITHIN_S = 60.0


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def run_kind(run_dir: Path) -> str | None:
    """'lm', 'classify', or None for a folder that is not an lmforge run."""
    p = Path(run_dir)
    if not (p / "config.yaml").is_file():
        return None
    if (p / "labels.json").is_file():
        return "classify"
    if (p / "model.json").is_file() or (p / "data" / "tokenizer.json").is_file():
        return "lm"
    return None


def has_weights(run_dir: Path) -> bool:
    """Whether the run can be loaded: best weights, a checkpoint, or a classifier's ensemble.json."""
    p = Path(run_dir)
    kind = run_kind(p)
    if kind == "classify":
        return (p / "ensemble.json").is_file()
    if kind == "lm":
        return (p / "model.json").is_file() and ((p / "model.safetensors").is_file()
                                                 or any((p / "checkpoints").glob("step_*/meta.json")))
    return False


def weights_mtime(run_dir: Path) -> float:
    p = Path(run_dir)
    for name in ("model.safetensors", "ensemble.json", "config.yaml"):
        if (p / name).is_file():
            return (p / name).stat().st_mtime
    return 0.0


def metrics_files(run_dir: Path) -> list[Path]:
    """metrics.jsonl of an LM run; a classifier's, one per neural model (sub-folders)."""
    p = Path(run_dir)
    if (p / "metrics.jsonl").is_file():
        return [p / "metrics.jsonl"]
    return sorted(p.glob("*/metrics.jsonl"))


def result_file(run_dir: Path) -> Path:
    return Path(run_dir) / ("metrics.json" if run_kind(run_dir) == "classify" else "result.json")


def run_status(run_dir: Path, now: float | None = None) -> str:
    """'finished', 'training' (metrics written in the last minute) or 'stopped' (neither)."""
    now = time.time() if now is None else now
    result = result_file(run_dir)
    logs = metrics_files(run_dir)
    last_log = max((f.stat().st_mtime for f in logs), default=0.0)
    if result.is_file() and result.stat().st_mtime >= last_log - 1.0:
        return "finished"
    if last_log and now - last_log < ACTIVE_WITHIN_S:
        return "training"
    return "stopped"


def key_figures(run_dir: Path) -> dict[str, Any]:
    """The few numbers a runs list shows: steps, losses and speed (LM), accuracy and F1 (classifier)."""
    p = Path(run_dir)
    kind = run_kind(p)
    out: dict[str, Any] = {"kind": kind}
    if kind == "classify":
        m = read_json(p / "metrics.json", {}) or {}
        shown = m.get("test") or m.get("valid") or {}
        out.update({"split": "test" if m.get("test") else "valid", "accuracy": shown.get("accuracy"),
                    "macro_f1": shown.get("macro_f1"), "wall_s": m.get("train_s"),
                    "members": ", ".join(m.get("members", []))})
        return out
    result = read_json(p / "result.json", {}) or {}
    records = read_metrics(p / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r]
    last = records[-1] if records else {}
    out.update({
        "steps": result.get("steps", last.get("step")),
        "train_loss": next((r["train_loss"] for r in reversed(records) if "train_loss" in r), None),
        "val_loss": result.get("val_loss", evals[-1]["val_loss"] if evals else None),
        "val_bpb": result.get("val_bpb", evals[-1].get("val_bpb") if evals else None),
        "tokens_per_s": result.get("tokens_per_s", last.get("tokens_per_s")),
        "wall_s": result.get("wall_s", last.get("elapsed_s")),
    })
    return out
