import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("LMFORGE_NO_PROGRESS", "1")
# Plans made by tests are not remembered in the user's cache (nor recalled from it): a test that
# needs the machine's plan memory points it at a folder of its own.
os.environ["LMFORGE_PLAN_MEMORY"] = "off"

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


# --- trained runs shared by the serving, chat, report and dashboard tests -----------------------

QA = [("what rings over the town", "the bells ring over the quiet town"),
      ("where does the cat sleep", "a cat sleeps by the warm fire"),
      ("who walks in the garden", "the king and queen walk in the garden"),
      ("what falls on the roofs", "rain falls on old stone roofs")]


def write_chats(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Conversations in the OpenAI messages format: four questions, each with its fixed answer."""
    import json

    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        q, a = rng.choice(QA)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "answer briefly"})
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_lm_overrides(corpus: Path, out: Path, **extra) -> dict:
    base = {"data.path": str(corpus), "out": str(out), "tokenizer.kind": "char", "model.n_layer": 2,
            "model.n_head": 2, "model.d_model": 32, "model.context_len": 64, "train.max_steps": 60,
            "train.global_batch_tokens": 512, "optim.lr": 3e-3, "schedule.min_lr": 3e-4,
            "schedule.warmup_steps": 5, "runtime.precision": "fp32", "runtime.compile": "off",
            "train.log_interval": 5, "eval.interval": 20, "eval.max_tokens": 2048, "sample.num_samples": 1,
            "sample.max_new_tokens": 40}
    base.update(extra)
    return {k: str(v) for k, v in base.items()}


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """A tiny LM run, its chat fine-tuning and a tiny classifier: {'lm', 'chat', 'clf', 'chats', 'root'}."""
    import json

    import lmforge
    from lmforge.classify.config import ClassifyConfig
    from lmforge.classify.run import train_classifier
    from lmforge.config import load_config
    from lmforge.lm.sft import SFTConfig, sft

    root = tmp_path_factory.mktemp("runs")
    corpus = make_corpus(root / "corpus.txt")
    lmforge.train(load_config(None, tiny_lm_overrides(corpus, root / "runs" / "lm")), progress=False)
    chats = write_chats(root / "chats.jsonl")
    sft(load_config(None, {"base": str(root / "runs" / "lm"), "out": str(root / "runs" / "chat"),
                           "data.path": str(chats), "train.max_steps": "40", "train.batch_size": "8",
                           "optim.lr": "3e-3", "schedule.warmup_steps": "5", "eval.interval": "20",
                           "runtime.compile": "off", "runtime.precision": "fp32", "train.log_interval": "5",
                           "sample.num_samples": "2", "sample.max_new_tokens": "30"}, cls=SFTConfig),
        progress=False)
    records = []
    for i in range(120):
        y = i % 2
        records.append({"text": ("good great fine day " if y else "bad awful poor day ") + WORDS[i % len(WORDS)],
                        "label": "pos" if y else "neg"})
    data = root / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    train_classifier(load_config(None, {"data.path": str(data), "out": str(root / "runs" / "clf"),
                                        "model.kind": "linear"}, cls=ClassifyConfig), progress=False)
    return {"lm": root / "runs" / "lm", "chat": root / "runs" / "chat", "clf": root / "runs" / "clf",
            "chats": chats, "root": root, "runs": root / "runs", "corpus": corpus}
