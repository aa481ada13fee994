"""Demo conversations for chat fine-tuning, built offline from the embedded Shakespeare plays.

Each exchange of two speakers becomes one conversation: the last line(s) of a speech are the user
turn, the first line(s) of the next speaker's reply the assistant turn, with a system message that
names the replying character. Stage directions and scene headings are skipped. The result is in
the OpenAI `messages` format that `lmforge sft --data` reads, so the demo exercises the same path.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from lmforge.atomic import atomic_write_text
from lmforge.data.default_corpus import default_documents

_SPEAKER = re.compile(r"^([A-Z][A-Z' .,&-]{1,40}):$")
MAX_TURN_CHARS = 160  # a turn is a line or two: short enough for small contexts


def speeches(play: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) of each speech of a play in lmforge's plain-text layout ('NAME:' then lines)."""
    out: list[tuple[str, list[str]]] = []
    for block in play.split("\n\n"):
        lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
        if len(lines) < 2:
            continue
        m = _SPEAKER.match(lines[0])
        if m:
            out.append((m.group(1).title(), lines[1:]))
    return out


def _clip(lines: list[str], from_end: bool) -> str:
    """A line or two, whole lines only, at most MAX_TURN_CHARS (a single longer line is cut at a word)."""
    picked: list[str] = []
    for line in (reversed(lines) if from_end else lines):
        if picked and len(" ".join(picked)) + len(line) + 1 > MAX_TURN_CHARS:
            break
        picked.insert(0, line) if from_end else picked.append(line)
        if len(picked) == 2:
            break
    text = " ".join(picked)
    if len(text) > MAX_TURN_CHARS:
        text = text[:MAX_TURN_CHARS].rsplit(" ", 1)[0]
    return text


def demo_conversations(max_conversations: int = 3000, seed: int = 0) -> list[list[dict]]:
    """Exchanges between two speakers of the plays, as conversations; a seeded sample of them."""
    convs = []
    for play in default_documents():
        said = speeches(play)
        for (a, a_lines), (b, b_lines) in zip(said, said[1:]):
            if a == b:
                continue
            user, reply = _clip(a_lines, from_end=True), _clip(b_lines, from_end=False)
            if user and reply:
                convs.append([{"role": "system", "content": f"You are {b}."},
                              {"role": "user", "content": user},
                              {"role": "assistant", "content": reply}])
    random.Random(seed).shuffle(convs)
    return convs[:max_conversations]


def write_demo(path: str | Path, max_conversations: int = 3000, seed: int = 0) -> Path:
    """The demo conversations as a .jsonl file (one {"messages": [...]} per line)."""
    path = Path(path)
    lines = [json.dumps({"messages": c}, ensure_ascii=False) for c in demo_conversations(max_conversations, seed)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
