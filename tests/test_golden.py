"""Golden values: the losses of fixed-seed tiny runs through the real training loop, pinned.

Any change to the model, the initialization, the optimizers, the schedule, the training step, the
loop or the task's batches moves these numbers. When a change is meant to, re-pin them: each
failure prints the values the code now produces, as a list to paste over the old one, and say in
the commit why they moved.

How they were produced: this file's `golden_run`, fp32 on a CPU with one thread (a fixed thread
count fixes the order of floating-point sums), PyTorch 2.13 CPU build. The tolerance (relative
1e-4) absorbs only float noise, such as another CPU's kernels; a real change to the arithmetic moves
the losses by far more.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmforge.config import EvalConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from lmforge.lm.model import build_model
from lmforge.lm.task import LMTask
from lmforge.trainer.loop import fit, seed_everything
from lmforge.trainer.runtime import Runtime

STEPS = 20
PINNED_STEPS = (1, 5, 10, 20)  # the training losses pinned: after these optimizer steps
REL = 1e-4
GPT2 = {"norm": "layer", "position": "learned", "mlp": "gelu", "qk_norm": False, "dropout": 0.1}
WORDS = "the king and queen walk in a garden while bells ring over the quiet town as rain falls".split()


def synthetic_tokens(n: int, seed: int) -> tuple[np.ndarray, int]:
    """Character ids of words chosen by a linear congruential generator: the same on every machine
    and NumPy version, and with structure a tiny model learns within a few steps."""
    alphabet = sorted(set(" ".join(WORDS)) | {"."})
    ids = {c: i for i, c in enumerate(alphabet)}
    state, text = seed, []
    while len(text) < n:
        state = (1103515245 * state + 12345) % 2**31
        word = WORDS[(state >> 16) % len(WORDS)]
        text.extend(word + ("." if (state >> 8) % 7 == 0 else " "))
    return np.array([ids[c] for c in text[:n]], dtype=np.uint16), len(alphabet)


def golden_run(tmp_path, optim: str = "adamw", micro_batch_size: int = 0, **model) -> dict:
    """A tiny GPT trained STEPS steps on 8 sequences of 32 characters per step."""
    train, vocab = synthetic_tokens(20_000, seed=1)
    val, _ = synthetic_tokens(2_048, seed=2)
    seed_everything(0)
    gpt = build_model(ModelConfig(n_layer=2, n_head=2, d_model=32, context_len=32, **model), vocab, seed=0)
    task = LMTask(gpt, SimpleNamespace(tokens=train), SimpleNamespace(tokens=val), np.ones(vocab),
                  examples_per_step=8, seed=0, eval_max_tokens=2_048)
    rt = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), precision="fp32")
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = fit(task, TrainConfig(max_steps=STEPS, micro_batch_size=micro_batch_size, log_interval=1),
                 OptimConfig(kind=optim, lr=1e-2), ScheduleConfig(warmup_steps=5, min_lr=1e-3),
                 EvalConfig(interval=STEPS), rt, tmp_path, progress=False)
    losses = {r["step"]: r["train_loss"] for r in result.history}
    return {"train": [losses[s] for s in PINNED_STEPS], "val": result.last_metrics["val_loss"],
            "trajectory": [losses[s] for s in range(1, STEPS + 1)]}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_golden(run: dict, train: list[float], val: float) -> None:
    now = f"now: train {[float(f'{x:.7g}') for x in run['train']]}, val {run['val']:.7g}"
    assert run["train"] == pytest.approx(train, rel=REL), now
    assert run["val"] == pytest.approx(val, rel=REL), now
    # And it learned: the pinned numbers are not those of a broken run.
    assert run["val"] < run["train"][0] - 0.5


ADAMW_TRAIN, ADAMW_VAL = [3.074402, 2.750888, 2.337446, 1.936105], 1.935062


def test_golden_adamw(tmp_path):
    # The default architecture: RMSNorm, rotary positions, QK-norm, SwiGLU, tied embeddings.
    assert_golden(golden_run(tmp_path), train=ADAMW_TRAIN, val=ADAMW_VAL)


def test_golden_muon(tmp_path):
    assert_golden(golden_run(tmp_path, optim="muon"), train=[3.074402, 2.840005, 2.554803, 2.276649], val=2.260168)


def test_golden_gpt2_options(tmp_path):
    assert_golden(golden_run(tmp_path, **GPT2), train=[3.058396, 2.779687, 2.324114, 2.076273], val=2.027344)


def test_golden_accumulation_equals_one_batch(tmp_path):
    # The global batch of 8 as one micro-batch and as 4 accumulated micro-batches of 2: the same
    # gradients up to the order of sums, so the same trajectory, and the AdamW golden values.
    whole = golden_run(tmp_path / "whole", micro_batch_size=8)
    accumulated = golden_run(tmp_path / "accumulated", micro_batch_size=2)
    assert accumulated["trajectory"] == pytest.approx(whole["trajectory"], rel=1e-5, abs=1e-6)
    assert accumulated["val"] == pytest.approx(whole["val"], rel=1e-5)
    assert_golden(accumulated, train=ADAMW_TRAIN, val=ADAMW_VAL)
