"""What the user sees in the terminal: the shared console, summary tables and the progress bar.

Everything prints to stderr, so stdout carries only results (`--json`, generated text).
"""

from __future__ import annotations

import math
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=True)


def make_progress(enabled: bool) -> Progress:
    # On a non-terminal (CI logs, pipes) rich prints nothing live, which is what we want there.
    disable = not enabled or os.environ.get("LMFORGE_NO_PROGRESS") == "1"
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def print_summary(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def is_tty() -> bool:
    return sys.stderr.isatty()


def say(message: str) -> None:
    """One line on stderr, never wrapped (logs keep it whole) and never read as markup (paths may hold '[')."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A one-line warning on stderr (see `say`)."""
    from rich.markup import escape

    console.print("[yellow]warning:[/yellow] " + escape(message), highlight=False, soft_wrap=True)
