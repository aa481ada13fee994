"""The chunked output-layer loss gives the plain loss and its gradients."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import chunked_loss
from lmforge.models.chunked_loss import linear_cross_entropy
from lmforge.models.gpt import GPT


def _plain(x, w, t):
    return F.cross_entropy(F.linear(x, w).float(), t, ignore_index=-1)


@pytest.fixture
def small_chunks(monkeypatch):
    # 300 rows in chunks of 256: one full chunk and one partial one.
    monkeypatch.setitem(chunked_loss.CHUNK_BYTES, "cpu", 1)


@pytest.mark.parametrize("ignored", [0, 37])
def test_value_and_gradients_match_fp32(small_chunks, ignored):
    torch.manual_seed(0)
    x = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (300,))
    t[torch.randperm(300)[:ignored]] = -1
    got = linear_cross_entropy(x, w, t)
    (got * 3.0).backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    want = _plain(x, w, t)
    (want * 3.0).backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(gx, x.grad.to(gx.dtype), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, w.grad.to(gw.dtype), rtol=1e-5, atol=1e-7)


def test_without_gradients_gives_the_same_value(small_chunks):
    torch.manual_seed(1)
    x, w, t = torch.randn(300, 8), torch.randn(40, 8), torch.randint(-1, 40, (300,))
    with torch.no_grad():
        assert linear_cross_entropy(x, w, t).item() == pytest.approx(_plain(x, w, t).item(), rel=1e-5)


def test_under_bf16_autocast_matches_the_plain_path(small_chunks):
    torch.manual_seed(2)
    x = torch.randn(300, 32, requires_grad=True)
    w = (0.1 * torch.randn(64, 32)).requires_grad_()
    t = torch.randint(0, 64, (300,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(x, w, t)
    got.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _plain(x, w, t)
    want.backward()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-3)
    torch.testing.assert_close(gx, x.grad, rtol=2e-2, atol=2e-4)
    torch.testing.assert_close(gw, w.grad, rtol=2e-2, atol=2e-4)


def test_gpt_loss_and_tied_gradient_match_the_logits_path():
    torch.manual_seed(3)
    model = GPT.from_shape_dict(dict(vocab_size=37, n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32, context_len=8,
                         qk_norm=True)).double()
    idx = torch.randint(0, 37, (3, 8))
    tgt = torch.randint(0, 37, (3, 8))
    tgt[0, :4] = -1
    model(idx, tgt).backward()
    got = model.embed.weight.grad.clone()
    model.zero_grad()
    logits = model(idx)
    F.cross_entropy(logits.view(-1, 37), tgt.view(-1), ignore_index=-1).backward()
    torch.testing.assert_close(got, model.embed.weight.grad, rtol=1e-6, atol=1e-9)
