"""metrics.jsonl (one JSON line per log line or evaluation) and the loss-curve plot of any training run."""

from __future__ import annotations

import json
import os
from pathlib import Path



class MetricsLog:
    """Append-only JSON lines; flushed per line so a killed run keeps every record written."""

    def __init__(self, path: Path, enabled: bool = True, tracker=None):
        self.path = Path(path)
        self.enabled = enabled
        # A trainer.tracking tracker (TensorBoard, MLflow) that receives every record written here.
        self.tracker = tracker if enabled else None

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file matches the restored run."""
        if self.tracker is not None:
            self.tracker.resume_at(step)
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        from lmforge.atomic import atomic_write_text

        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.tracker is not None:
            self.tracker.log(record)

    def close(self, failed: bool = False) -> None:
        if self.tracker is not None:
            self.tracker.close("FAILED" if failed else "FINISHED")


def read_metrics(path: Path) -> list[dict]:
    out = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def plot_loss_curve(metrics_path: Path, out_png: Path, title: str = "") -> Path | None:
    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.0, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png

