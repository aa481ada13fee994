import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("LMFORGE_NO_PROGRESS", "1")

WORDS = (
    "the king and queen walk in the garden while the bells ring over the quiet town and "
    "a cat sleeps by the warm fire as rain falls on old stone roofs"
).split()


def make_corpus(path: Path, n_docs: int = 200, seed: int = 0) -> Path:
    """Small synthetic English-like text with learnable structure, in paragraphs."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        start = rng.randrange(len(WORDS))
        n = rng.randrange(8, 30)
        docs.append(" ".join(WORDS[(start + i) % len(WORDS)] for i in range(n)).capitalize() + ".")
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt")
