"""The language-modelling task for the training loop: batches from token files, loss, evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.tokenizer import Tokenizer
from lmforge.data.tokens import TokenFile
from lmforge.errors import DataError
from lmforge.models.gpt import GPT
from lmforge.trainer.runtime import Runtime


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for; special tokens count 0. Used for bits per byte."""
    return np.array([len(tok.token_bytes(i)) for i in range(tok.vocab_size)], dtype=np.float64)


def window_batch(tokens: np.ndarray, starts: np.ndarray, context_len: int, device: torch.device):
    """(B, T) inputs and next-token targets for windows beginning at `starts`."""
    idx = starts[:, None] + np.arange(context_len + 1)[None, :]
    chunk = torch.from_numpy(tokens[idx].astype(np.int64))  # (B, T+1)
    x, y = chunk[:, :-1], chunk[:, 1:]
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous(), y.contiguous()


def evaluate_stream(
    model: torch.nn.Module,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    context_len: int,
    max_tokens: int,
    rt: Runtime,
    batch_size: int = 32,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte over non-overlapping windows from the start of `tokens`.

    Deterministic (no sampling noise between evaluations); ranks score interleaved windows and
    the sums are all-reduced.
    """
    T = context_len
    n_windows = max(1, min((len(tokens) - 1) // T, max_tokens // T))
    starts = np.arange(n_windows) * T
    mine = starts[rt.rank :: rt.world_size]
    nats = torch.zeros((), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    nbytes = torch.zeros((), dtype=torch.float64)
    for i in range(0, len(mine), batch_size):
        x, y = window_batch(tokens, mine[i : i + batch_size], T, rt.device)
        logits = model(x)
        nll = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        nats += nll.double().cpu()
        count += y.numel()
        nbytes += float(byte_lengths[y.cpu().numpy()].sum())
    if rt.distributed:
        import torch.distributed as dist

        sums = torch.stack([nats, count, nbytes]).to(rt.device)
        dist.all_reduce(sums)
        nats, count, nbytes = sums.cpu()
    loss = float(nats / count)
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        "val_bpb": float(nats / math.log(2) / max(float(nbytes), 1.0)),
        "val_tokens": int(count),
    }


class LMTask:
    """Random windows of the training stream; windows are a pure function of (seed, step)."""

    def __init__(
        self,
        model: GPT,
        train: TokenFile,
        val: TokenFile,
        byte_lengths: np.ndarray,
        examples_per_step: int,
        seed: int,
        eval_max_tokens: int,
    ):
        self.model = model
        self.context_len = model.cfg.context_len
        self.train_tokens = train.tokens
        self.val_tokens = val.tokens
        self.byte_lengths = byte_lengths
        self.examples_per_step = examples_per_step
        self.tokens_per_example = self.context_len
        self.seed = seed
        self.eval_max_tokens = eval_max_tokens
        T = self.context_len
        if len(self.train_tokens) < T + 2:
            raise DataError(
                f"the training split has {len(self.train_tokens)} tokens, fewer than one context of {T}; "
                "give more text or lower model.context_len"
            )
        if len(self.val_tokens) < T + 2:
            raise DataError(
                f"the validation split has {len(self.val_tokens)} tokens, fewer than one context of {T}; "
                "raise data.val_fraction or lower model.context_len"
            )

    def step_starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.train_tokens) - self.context_len - 1, size=self.examples_per_step)

    def micro_batch(self, step: int, micro: int, micro_batch_size: int, rt: Runtime):
        per_rank = self.examples_per_step // rt.world_size
        lo = rt.rank * per_rank + micro * micro_batch_size
        starts = self.step_starts(step)[lo : lo + micro_batch_size]
        return window_batch(self.train_tokens, starts, self.context_len, rt.device)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return model(x, y)

    def evaluate(self, model: torch.nn.Module, rt: Runtime, batch_size: int = 32) -> dict[str, float]:
        return evaluate_stream(model, self.val_tokens, self.byte_lengths, self.context_len,
                               self.eval_max_tokens, rt, batch_size)
