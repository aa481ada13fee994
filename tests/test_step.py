"""The one training step: how a global batch splits into micro-batches, and that a step is exactly
the hand-written forward, backward, clip and update."""

from __future__ import annotations

import copy

import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.trainer.runtime import Runtime
from lmforge.trainer.step import backoff_micro_batch, is_oom_error, make_scaler, plan_batches, train_step

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), precision="fp32")


@pytest.mark.parametrize("examples,micro,world,expected", [
    (8, 0, 1, (8, 1)),  # 0: the whole per-process batch, no accumulation
    (8, 8, 1, (8, 1)),
    (8, 2, 1, (2, 4)),
    (8, 1, 1, (1, 8)),
    (8, 0, 2, (4, 1)),  # each of 2 processes takes half
    (8, 2, 2, (2, 2)),
    (12, 3, 2, (3, 2)),
])
def test_plan_batches_keeps_the_global_batch(examples, micro, world, expected):
    micro_bs, accum = plan_batches(examples, micro, world)
    assert (micro_bs, accum) == expected
    assert micro_bs * accum * world == examples


def test_plan_batches_refuses_what_does_not_divide():
    with pytest.raises(ConfigError, match="not divisible by 3 processes"):
        plan_batches(8, 0, 3)
    with pytest.raises(ConfigError, match="train.micro_batch_size.*3 does not divide.*8 examples"):
        plan_batches(8, 3, 1)
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        plan_batches(8, 8, 2)  # more than one process's share


@pytest.mark.parametrize("micro,per_rank,expected", [(8, 8, 4), (4, 8, 2), (6, 12, 3), (5, 10, 2), (3, 9, 1), (1, 8, 0)])
def test_backoff_halves_to_a_divisor(micro, per_rank, expected):
    smaller = backoff_micro_batch(micro, per_rank)
    assert smaller == expected
    assert smaller == 0 or per_rank % smaller == 0


def test_out_of_memory_errors_are_recognized():
    assert is_oom_error(MemoryError())
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not is_oom_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom_error(ValueError("out of memory"))  # only the allocators' error types


def test_only_fp16_scales_the_loss():
    assert make_scaler("fp32") is None and make_scaler("bf16") is None


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    return model, x, y


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("accum", [1, 4])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05])  # 0.05 is below the gradient's norm: clipping acts
def test_train_step_is_the_hand_written_step(accum, grad_clip):
    model, x, y = _problem()
    reference = copy.deepcopy(model)
    micro = len(x) // accum
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss, norm = train_step(model, model, _loss, lambda i: (x[i * micro:(i + 1) * micro], y[i * micro:(i + 1) * micro]),
                                accum, optimizer, CPU, grad_clip)
        # By hand: the mean loss over the whole batch, its gradient, the clip, the update.
        ref_optimizer.zero_grad()
        ref_loss = _loss(reference, (x, y))
        ref_loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), grad_clip) if grad_clip else None
        ref_optimizer.step()
        assert loss == pytest.approx(ref_loss.item(), rel=1e-6)
        if grad_clip:
            assert norm == pytest.approx(ref_norm.item(), rel=1e-5) and norm > grad_clip
        else:
            assert norm is None
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
            assert p.grad is None  # cleared for the next step
