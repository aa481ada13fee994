"""LR range test: the suggestion sits where the loss falls fastest."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmforge.auto.lr_finder import centred_average, lr_range_test, suggest_lr
from lmforge.config import OptimConfig
from lmforge.trainer.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
CPU = Runtime(0, 1, 0, torch.device("cpu"), "fp32")


def test_suggestion_on_a_known_curve():
    """A loss that falls as a logistic in log(lr) (steepest at its midpoint), then blows up."""
    rng = np.random.default_rng(0)
    lrs = list(np.logspace(-6, 0, 120))
    for mid in (1e-4, 3e-3):
        x = np.log10(lrs)
        loss = 3 - 2 / (1 + np.exp(-(x - math.log10(mid)) * 3)) + np.where(x > math.log10(mid) + 1.5,
                                                                           (x - math.log10(mid) - 1.5) * 8, 0)
        loss = loss + rng.normal(0, 0.02, len(x))
        lr, i = suggest_lr(lrs, list(loss))
        assert abs(math.log10(lr) - math.log10(mid)) < 0.2, (lr, mid)
        assert lrs[i] == lr


class Regression:
    """Task protocol on a linear least-squares problem: batches are a pure function of the step."""

    def __init__(self, dim=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(1024, dim, generator=g)
        self.y = self.X @ (2 * torch.randn(dim, 1, generator=g)) + 0.05 * torch.randn(1024, 1, generator=g)
        self.model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        torch.manual_seed(seed)
        for p in self.model.parameters():
            torch.nn.init.normal_(p, 0, 0.1)
        self.examples_per_step = 64
        self.tokens_per_example = 1

    def micro_batch(self, step, micro, size, rt):
        idx = np.random.default_rng([7, step]).integers(0, len(self.X), self.examples_per_step)
        idx = idx[micro * size:(micro + 1) * size]
        return self.X[idx], self.y[idx]

    def loss(self, model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)


def test_range_test_on_a_synthetic_problem_points_at_the_fastest_fall(tmp_path):
    task = Regression()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    res = lr_range_test(task, OptimConfig(weight_decay=0.0, grad_clip=0.0), CPU, lr_min=1e-5, lr_max=10.0, steps=150)
    # the weights are put back
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k])
    losses = np.array(res.losses)
    assert "diverged" in res.stop_reason or not math.isfinite(losses[-1]) or losses[-1] > losses.min() * 2
    # Independently: the biggest drop of a (differently) smoothed curve per step of log(lr).
    sm = np.array(centred_average(list(losses), 15))
    drops = sm[:-4] - sm[4:]
    fastest = int(np.nanargmax(drops)) + 2
    assert abs(math.log10(res.suggestion) - math.log10(res.lrs[fastest])) < 0.4, (res.suggestion, res.lrs[fastest])
    i_min = int(np.nanargmin(sm))
    assert res.suggestion < res.lrs[i_min]
    assert sm[res.suggestion_index] < sm[0]  # the loss is falling there, not flat
    png = res.plot(tmp_path / "lr.png")
    assert png.stat().st_size > 10_000


def test_cli_lr_find_saves_curve_and_suggestion(corpus, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "lmforge.cli", "lr-find", str(corpus), "--out", str(out),
                        "--tokenizer.kind", "char", "--model.n_layer", "1", "--model.d_model", "32",
                        "--model.n_head", "2", "--model.context_len", "32", "--train.global_batch_tokens", "256",
                        "--steps", "40", "--lr-max", "1", "--json"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert 1e-5 < res["suggestion"] < 1
    assert (out / "lr_find.png").stat().st_size > 10_000
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggestion"] == pytest.approx(res["suggestion"])
    assert len(saved["lrs"]) == len(saved["losses"]) <= 40
