"""Out-of-memory back-off in the training loop: halve the micro-batch, double accumulation, same results."""

import json

import pytest
import torch

import lmforge
from lmforge.errors import TrainingError
from lmforge.lm.task import LMTask
from lmforge.trainer.step import backoff_micro_batch, is_oom_error
from test_train import final_weights, small_cfg

COMMON = {"train.max_steps": 6, "train.global_batch_tokens": 8 * 32, "eval.interval": 3, "train.micro_batch_size": 8}


def test_oom_errors_are_recognised():
    assert is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom_error(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert is_oom_error(MemoryError())
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))  # only allocator errors
    assert backoff_micro_batch(8, 8) == 4 and backoff_micro_batch(6, 12) == 3 and backoff_micro_batch(1, 8) == 0
    assert backoff_micro_batch(5, 15) == 1


def test_oom_backs_off_and_keeps_the_global_batch_and_results(corpus, tmp_path, monkeypatch):
    ref = lmforge.train(small_cfg(corpus, tmp_path / "ref", **COMMON), progress=False)

    original = LMTask.loss
    sizes: list[int] = []

    def flaky(self, model, batch):
        x, _ = batch
        sizes.append(x.shape[0])
        # The device "fills up" at step 2: micro-batches above 2 no longer fit from then on.
        if len(sizes) > 2 and x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, model, batch)

    monkeypatch.setattr(LMTask, "loss", flaky)
    res = lmforge.train(small_cfg(corpus, tmp_path / "oom", **COMMON), progress=False)
    # steps 0-1 at 8 x 1; step 2 fails at 8, then at 4, and is redone as 2 x 4; so are the rest
    assert sizes[:4] == [8, 8, 8, 4] and set(sizes[4:]) == {2}
    assert len(sizes[4:]) == 4 * 4  # steps 2..5, four micro-batches each: the global batch is still 8
    assert res.steps == 6
    assert res.val_loss == pytest.approx(ref.val_loss, abs=1e-5)
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "oom")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    steps = [json.loads(line)["step"] for line in (tmp_path / "oom" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_oom_at_micro_batch_one_is_a_clear_error(corpus, tmp_path, monkeypatch):
    def always(self, model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(LMTask, "loss", always)
    with pytest.raises(TrainingError, match="out of memory at step 0 with micro-batch 1.*micro_batch_size"):
        lmforge.train(small_cfg(corpus, tmp_path / "run", **COMMON), progress=False)


def test_on_eval_hook_sees_every_evaluation_and_can_stop_training(corpus, tmp_path):
    from lmforge.lm.pretrain import train

    seen = []

    class Stop(Exception):
        pass

    def hook(step, record):
        seen.append((step, record["val_loss"], "elapsed_s" in record))
        if step == 4:
            raise Stop

    cfg = small_cfg(corpus, tmp_path / "run", **{"train.max_steps": 10, "eval.interval": 2})
    with pytest.raises(Stop):
        train(cfg, progress=False, on_eval=hook)
    assert [s for s, _, _ in seen] == [2, 4] and all(e for *_, e in seen)
    # the checkpoint of the step that raised is complete, so the run can be resumed
    assert (tmp_path / "run" / "checkpoints" / "step_0000004" / "meta.json").is_file()
    res = train(resume=tmp_path / "run", progress=False)
    assert res.steps == 10
