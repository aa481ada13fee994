"""The classification task for the shared training loop, and batched prediction.

Batches are a pure function of (seed, step): epoch e's order is drawn from rng([seed, e]) and cut
into length-bucketed batches, so a resumed run sees exactly the batches an uninterrupted one
would, and N processes split the same global batch that one process would take whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.classify.data import bucketed_batches
from lmforge.trainer.runtime import Runtime


# Padded lengths are rounded up to a multiple of this: with every batch a different length, the
# CPU kernels' per-shape caches (oneDNN) kept growing, to gigabytes in a long fine-tuning run.
PAD_MULTIPLE = 16


def collate(seqs: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) with 0 and true lengths (B,); T is the longest text, rounded up to 16."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    longest = max(1, int(lengths.max()) if len(lengths) else 1)
    T = longest if longest < PAD_MULTIPLE else -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    ids = np.zeros((len(seqs), T), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return torch.from_numpy(ids).to(device), torch.from_numpy(lengths).to(device)


def prediction_batches(lengths: np.ndarray, max_tokens: int = 32768, max_batch: int = 256) -> list[np.ndarray]:
    """Indices sorted by length and cut so each padded batch holds about max_tokens ids."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[min(len(order) - 1, start + max_batch - 1)]]))
        size = max(1, min(max_batch, max_tokens // longest))
        batches.append(order[start:start + size])
        start += size
    return batches


@torch.no_grad()
def predict_proba(model: torch.nn.Module, seqs: Sequence[np.ndarray], rt: Runtime,
                  indices: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (len(indices), C) for seqs[indices] (all by default), in that order."""
    idx = np.arange(len(seqs)) if indices is None else np.asarray(indices)
    lengths = np.fromiter((len(seqs[i]) for i in idx), dtype=np.int64, count=len(idx))
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    with rt.autocast():
        for b in prediction_batches(lengths):
            ids, lens = collate([seqs[i] for i in idx[b]], rt.device)
            p = torch.softmax(model(ids, lens).float(), dim=-1).cpu().numpy().astype(np.float64)
            if out is None:
                out = np.zeros((len(idx), p.shape[1]), dtype=np.float64)
            out[b] = p
    model.train(was_training)
    return out if out is not None else np.zeros((0, 0))


class ClassifyTask:
    """What trainer.loop.fit needs: model, batches, loss and a validation evaluation."""

    def __init__(self, model: torch.nn.Module, seqs: Sequence[np.ndarray], y: np.ndarray,
                 val_seqs: Sequence[np.ndarray], val_y: np.ndarray, batch_size: int, seed: int,
                 sample_index: np.ndarray | None = None, class_weights: np.ndarray | None = None,
                 n_classes: int = 2):
        self.model = model
        self.seqs = seqs
        self.y = y
        self.val_seqs = val_seqs
        self.val_y = val_y
        self.examples_per_step = batch_size
        self.seed = seed
        self.n_classes = n_classes
        # Oversampling repeats indices; batches are drawn from this list.
        self.sample_index = np.arange(len(seqs)) if sample_index is None else np.asarray(sample_index)
        self.lengths = np.fromiter((len(seqs[i]) for i in self.sample_index), dtype=np.int64,
                                   count=len(self.sample_index))
        self.tokens_per_example = max(1, int(round(float(self.lengths.mean())))) if len(self.lengths) else 1
        self.steps_per_epoch = -(-len(self.sample_index) // batch_size)
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch = (epoch, bucketed_batches(self.lengths, self.examples_per_step, rng))
        return self._epoch[1]

    def micro_batch(self, step: int, micro: int, micro_batch_size: int, rt: Runtime):
        epoch, k = divmod(step, self.steps_per_epoch)
        batch = self.epoch_batches(epoch)[k]
        per_rank = self.examples_per_step // rt.world_size
        lo = rt.rank * per_rank + micro * micro_batch_size
        rows = self.sample_index[batch[lo:lo + micro_batch_size]]
        ids, lengths = collate([self.seqs[i] for i in rows], rt.device)
        return ids, lengths, torch.from_numpy(self.y[rows]).to(rt.device)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        ids, lengths, y = batch
        logits = model(ids, lengths).float()
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits, y, weight=weight)

    def evaluate(self, model: torch.nn.Module, rt: Runtime) -> dict[str, float]:
        """Unweighted cross-entropy, accuracy and macro F1 on the validation set (ranks split it)."""
        from sklearn.metrics import accuracy_score, f1_score

        mine = np.arange(rt.rank, len(self.val_seqs), rt.world_size)
        proba = predict_proba(model, self.val_seqs, rt, mine)
        if rt.distributed:
            import torch.distributed as dist

            gathered: list = [None] * rt.world_size
            dist.all_gather_object(gathered, (mine, proba))
            proba = np.zeros((len(self.val_seqs), self.n_classes))
            for idx, p in gathered:
                if len(idx):
                    proba[idx] = p
        y = self.val_y
        nll = -np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))
        pred = proba.argmax(1)
        return {"val_loss": float(nll.mean()), "val_accuracy": float(accuracy_score(y, pred)),
                "val_macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(self.n_classes)),
                                               zero_division=0))}
