"""Small synthetic labeled data for the classification tests (never the real benchmark data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

POS = "good great excellent wonderful superb lovely brilliant".split()
NEG = "bad awful terrible boring poor dreadful dull".split()
FILLER = "the movie film plot actor scene story was is and a it this very quite with of".split()
TOPICS = {
    0: "goal match team score league coach player".split(),
    1: "stock market price bank trade profit shares".split(),
    2: "rain storm weather cloud sunny wind snow".split(),
}
ZH_POS = ["很好", "满意", "干净", "舒适", "推荐", "不错"]
ZH_NEG = ["很差", "失望", "肮脏", "吵闹", "糟糕", "难受"]
ZH_FILLER = ["酒店", "房间", "服务", "早餐", "位置", "我们", "这次", "入住", "觉得", "前台"]


def sentiment_records(n: int, seed: int = 0, labels=("neg", "pos"), cues: int = 2) -> list[dict]:
    """English-like reviews whose label is given by a few sentiment words among fillers."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.randrange(2)
        words = [rng.choice(FILLER) for _ in range(rng.randrange(4, 25))]
        for _ in range(cues):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
        out.append({"text": " ".join(words), "label": labels[y]})
    return out


def topic_records(n: int, seed: int = 0) -> list[dict]:
    """Three classes with integer labels."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.randrange(3)
        words = [rng.choice(FILLER) for _ in range(rng.randrange(4, 20))]
        for _ in range(2):
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[y]))
        out.append({"text": " ".join(words), "label": y})
    return out


def chinese_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        y = rng.randrange(2)
        words = [rng.choice(ZH_FILLER) for _ in range(rng.randrange(3, 12))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(ZH_POS if y else ZH_NEG))
        out.append({"text": "，".join(words) + "。", "label": y})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(records)
    return path


def tiny_overrides(out: Path, **extra) -> dict:
    """Config overrides that keep a neural run to a few seconds on a CPU."""
    base = {
        "out": str(out),
        "runtime.precision": "fp32",
        "runtime.compile": "off",
        "train.log_interval": 5,
        "train.batch_size": 32,
        "train.epochs": 8,
        "model.stacking": "split",  # out-of-fold stacking trains every member k more times
        "text.min_freq": 1,
        "model.bilstm.embed_dim": 32,
        "model.bilstm.hidden_dim": 32,
        "model.bilstm.dropout": 0.1,
        "model.bilstm.lr": 1e-2,
        "model.transformer.lr": 2e-3,
        "model.fasttext.lr": 5e-2,
        "model.transformer.d_model": 32,
        "model.transformer.n_head": 2,
        "model.transformer.n_layer": 1,
        "model.fasttext.embed_dim": 16,
        "model.linear.min_df": 1,
    }
    base.update(extra)
    return {k: str(v) for k, v in base.items()}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (no OpenMP hand-offs); restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
