"""The real step-time measurer: times the training step a run of a candidate shape would take."""

from __future__ import annotations

import time

from lmforge.auto.arithmetic import Candidate, shape_config
from lmforge.config import ModelConfig


class LMStepTimer:
    """Times the real training step of a GPT shape: forward, backward, clipping and the optimizer.

    The step is the run's own (trainer.step.train_step) on the model the run would build (the run's
    model section at the candidate's sizes, see arithmetic.shape_config). The minimum over
    `repeats` timings after a warm-up; a shape's model is kept while its micro-batch sizes are
    tried. Slow steps are timed fewer times: repeats stop after about 3 x `slow_s` seconds, and a
    warm-up slower than 4 x `slow_s` is taken as the answer.
    """

    def __init__(self, vocab_size: int, device: str = "cpu", repeats: int = 3, slow_s: float = 0.5,
                 model: ModelConfig | None = None, seed: int = 0, optimizer: str = "adamw", grad_clip: float = 1.0):
        self.vocab = vocab_size
        self.grad_clip = grad_clip
        self.optimizer = optimizer
        self.device = device
        self.repeats = repeats
        self.slow_s = slow_s
        # The run's model config supplies the architecture choices (norm, positions, MLP, tying),
        # so the step timed is the step the run takes; each candidate sets the sizes.
        self.model = model or ModelConfig()
        self.seed = seed
        self._key: tuple | None = None
        self._model = None
        self._step_model = None
        self._opt = None
        self.calls: list[dict] = []
        self.last_compile_s = 0.0
        self.worst_s = 0.0

    def _build(self, c: Candidate, optimizer: str, dropout: float, compiled: bool):
        import torch

        from lmforge.config import OptimConfig
        from lmforge.models.gpt import GPT
        from lmforge.trainer.optim import build_optimizer
        from lmforge.trainer.runtime import Runtime, wrap_model

        key = (c, optimizer, dropout, compiled)
        if self._key == key:
            return
        self._model = self._step_model = self._opt = None
        torch.manual_seed(self.seed)
        self._model = GPT(shape_config(self.model, c, dropout), self.vocab).to(self.device)
        # Wrapped as the training loop wraps it, so a compiled graph here is the run's graph.
        self._step_model = wrap_model(self._model, Runtime(0, 1, 0, torch.device(self.device), "fp32"), compiled)
        self._opt = build_optimizer(self._model, OptimConfig(kind=optimizer), torch.device(self.device).type)
        self._key = key

    def __call__(self, c: Candidate, micro_batch: int, precision: str, *, compiled: bool = False,
                 optimizer: str | None = None, dropout: float = 0.0) -> float:
        import torch

        from lmforge.trainer.runtime import Runtime
        from lmforge.trainer.step import make_scaler, train_step

        self._build(c, optimizer or self.optimizer, dropout, compiled)
        model, step_model, opt = self._model, self._step_model, self._opt
        dev = torch.device(self.device)
        rt = Runtime(0, 1, 0, dev, precision)
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randint(0, self.vocab, (micro_batch, c.context_len), generator=g).to(dev)
        y = torch.randint(0, self.vocab, (micro_batch, c.context_len), generator=g).to(dev)
        scaler = make_scaler(precision)

        def timed() -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            # The run's own step (trainer.step), clipping as the run's optimizer section says.
            train_step(step_model, model, lambda m, batch: m(*batch), lambda _i: (x, y), 1, opt, rt,
                       self.grad_clip, scaler)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        model.train()
        first = timed()  # warm-up: allocations, kernel selection, compilation
        best, worst = self._repeat(timed, first, compiled)
        if compiled:
            self.last_compile_s = max(0.0, first - best)
        self.calls.append({"shape": c.name, "micro_batch": micro_batch, "precision": precision,
                           "compiled": compiled, "optimizer": optimizer or self.optimizer,
                           "seconds": best, "worst_s": worst, "first_s": first})
        self.worst_s = worst
        return best

    def _repeat(self, timed, first: float, compiled: bool) -> tuple[float, float]:
        """(best, worst) of the repeats after the warm-up `first`."""
        if first > 4 * self.slow_s and not compiled:
            return first, first  # far too slow to matter: do not spend more time on it
        best = worst = spent = timed()
        for _ in range(self.repeats - 1 + int(compiled)):  # a compiled step's first repeat may still warm up
            if spent > 3 * self.slow_s:
                break
            t = timed()
            spent += t
            best, worst = min(best, t), max(worst, t)
        return best, worst

    def release(self) -> None:
        self._model = self._step_model = self._opt = None
        self._key = None
