"""`lmforge compare RUN1 RUN2 ...`: one table of the runs' key figures and one plot of their loss curves."""

from __future__ import annotations

from pathlib import Path

from lmforge.atomic import atomic_write_bytes
from lmforge.errors import DataError
from lmforge.report import figures
from lmforge.report.runinfo import key_figures, metrics_files, run_kind, run_status
from lmforge.trainer.metrics import read_metrics

LM_COLUMNS = ("steps", "train_loss", "val_loss", "val_bpb", "tokens_per_s", "wall_s")
CLF_COLUMNS = ("split", "accuracy", "macro_f1", "wall_s", "members")


# Written into the plot's PNG Software field: a later compare may replace its own plot, never another file.
PLOT_SOFTWARE = "lmforge compare"


def check_plot_path(out_png: str | Path, overwrite: bool = False) -> None:
    """Refuse an --out that exists and is not a plot an earlier `lmforge compare` wrote (unless overwrite)."""
    from lmforge.runs import check_output

    out = Path(out_png)
    if not overwrite and out.is_file() and out.stat().st_size < 2**26:
        if PLOT_SOFTWARE.encode() in out.read_bytes():
            return
    check_output(out, [], overwrite=overwrite, option="--out")


def compare(runs: list[str | Path], out_png: str | Path, overwrite: bool = False) -> dict:
    """{'rows': [...], 'plot': path}; each row is a run's name, kind, status and key figures."""
    check_plot_path(out_png, overwrite)
    paths = [Path(r) for r in runs]
    for p in paths:
        if run_kind(p) is None:
            raise DataError(f"{p} is not an lmforge run folder (no config.yaml); pass run folders given as --out")
    names = _names(paths)
    rows, curves = [], {}
    for name, p in zip(names, paths):
        rows.append({"run": name, "status": run_status(p), **key_figures(p)})
        for f in metrics_files(p):
            records = read_metrics(f)
            label = name if f.parent == p else f"{name}/{f.parent.name}"
            curves[label] = {"train": [(r["step"], r["train_loss"]) for r in records if "train_loss" in r],
                             "val": [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]}
    out_png = Path(out_png)
    plot = None
    if any(c["train"] or c["val"] for c in curves.values()):
        atomic_write_bytes(out_png, figures.overlay(curves, "loss by step", PLOT_SOFTWARE))
        plot = str(out_png)
    return {"rows": rows, "plot": plot}


def _names(paths: list[Path]) -> list[str]:
    """Folder names, with the parent added where two runs share a name."""
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def print_table(result: dict) -> None:
    from rich.table import Table

    from lmforge.console import console
    from lmforge.report.document import fmt_cell

    rows = result["rows"]
    kinds = {r["kind"] for r in rows}
    cols = [c for c in LM_COLUMNS if "lm" in kinds] + [c for c in CLF_COLUMNS if "classify" in kinds]
    t = Table(title="runs")
    for c in ("run", "kind", "status", *cols):
        t.add_column(c.replace("_", " "), justify="left" if c in ("run", "kind", "status", "members", "split") else "right")
    for r in rows:
        t.add_row(r["run"], r["kind"], r["status"], *[fmt_cell(r.get(c)) for c in cols])
    console.print(t)
    if result["plot"]:
        console.print(f"loss curves: {result['plot']}")
