"""Cross-entropy of a linear output layer, computed in row chunks without the full logits.

A small language model spends a surprising share of its step on the output layer's loss: on a
CPU, 3 layers x 96 with a 2,048-token vocabulary and 2,048 tokens per micro-batch spent about a
third of each step casting, normalizing and zero-filling the (tokens x vocabulary) logits, every
pass going through memory. Done a few hundred rows at a time, the logits of a chunk stay in the
cache, and the gradients for the chunk are formed while its logits are at hand, so the logits
are never stored for the backward pass (which also saves their memory on a GPU).

The numerics follow the plain path under autocast: logits in the autocast dtype, softmax and
loss in fp32, the logit gradients cast back to the autocast dtype for the two matmuls.
"""

from __future__ import annotations

import torch

# fp32 logits per chunk. Chunks of fewer than a few hundred rows were slower on a CPU (each
# matmul has a fixed cost); 8 MiB bounds the memory on a CPU, 256 MiB keeps a GPU's matmuls large.
CHUNK_BYTES = {"cpu": 8 << 20, "cuda": 256 << 20}


def _chunk_rows(vocab_size: int, device: torch.device) -> int:
    return max(256, CHUNK_BYTES.get(device.type, 8 << 20) // (4 * vocab_size))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _logit_chunks(xc: torch.Tensor, wc: torch.Tensor, targets: torch.Tensor):
    """Yield (rows, xc chunk, its logits in fp32 or wider, its targets); xc and wc in the matmul dtype."""
    acc = torch.promote_types(xc.dtype, torch.float32)
    step = _chunk_rows(wc.shape[0], xc.device)
    for start in range(0, xc.shape[0], step):
        rows = slice(start, start + step)
        yield rows, xc[rows], (xc[rows] @ wc.t()).to(acc), targets[rows]


def _chunk_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 logits (n, V) -> sum of the token losses. Used where no gradient is needed."""
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return ((lse - picked) * (targets >= 0)).sum()


def _chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, all_valid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits (n, V) -> (sum of token losses, d(sum)/d(logits)), overwriting the logits.

    Each pass is written in place, and the exponentials serve both the loss and the gradient
    (softmax - onehot), so the chunk is read and written as few times as possible.
    """
    valid = targets >= 0
    safe = targets.clamp(min=0).unsqueeze(1)
    picked = logits.gather(1, safe).squeeze(1)
    peak = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(peak).exp_()
    total = probs.sum(dim=1, keepdim=True)
    loss = ((peak + total.log()).squeeze(1) - picked) * valid
    probs.div_(total)
    probs.scatter_add_(1, safe, -valid.to(probs.dtype).unsqueeze(1))
    if not all_valid:
        probs.mul_(valid.unsqueeze(1))
    return loss.sum(), probs


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, dtype):
        # x: (N, C), weight: (V, C), targets: (N,) with -1 for positions that carry no loss.
        valid = targets >= 0
        n_valid = valid.sum().clamp(min=1)
        all_valid = bool(valid.all())  # once here, not a device sync per chunk
        acc = torch.promote_types(dtype, torch.float32)
        grad_x = torch.empty(x.shape, dtype=dtype, device=x.device)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        total = torch.zeros((), dtype=acc, device=x.device)
        wc = weight.to(dtype)
        for rows, xs, logits, ts in _logit_chunks(x.to(dtype), wc, targets):
            loss, g = _chunk_loss_and_grad(logits, ts, all_valid)
            total += loss
            g = g.to(dtype)
            grad_x[rows] = g @ wc
            grad_w += g.t() @ xs
        ctx.save_for_backward(grad_x, grad_w, n_valid)
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, n_valid = ctx.saved_tensors
        scale = grad_out / n_valid
        return (grad_x * scale.to(grad_x.dtype)).to(ctx.x_dtype), (grad_w * scale).to(ctx.w_dtype), None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `x @ weight.T` against `targets` (-1 = ignored).

    x: (N, C) hidden states, weight: (V, C) output layer, targets: (N,). Same value and gradients
    as `F.cross_entropy(F.linear(x, weight).float(), targets, ignore_index=-1)` under the active
    autocast, up to the order of floating-point sums.
    """
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(x, weight, targets, dtype)
        chunks = _logit_chunks(x.to(dtype), weight.to(dtype), targets)
        total = sum(_chunk_loss(logits, ts) for _rows, _xs, logits, ts in chunks)
        return total / (targets >= 0).sum().clamp(min=1)
