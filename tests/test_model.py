import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT, GeluMLP, KVCache
from lmforge.lm.sample import filter_logits, generate_ids


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    s = dict(vocab_size=50, n_layer=2, n_head=4, n_kv_head=4, d_model=32, d_ff=64, context_len=16)
    s.update(kw)
    return GPT.from_shape_dict(s).eval()


def test_logits_shape_and_loss():
    m = tiny()
    x = torch.randint(0, 50, (3, 16))
    assert m(x).shape == (3, 16, 50)
    loss = m(x, torch.randint(0, 50, (3, 16)))
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5  # near uniform at init


# nanoGPT's GPT-2: LayerNorm without bias, learned positions, GELU MLP, no QK-norm.
GPT2 = dict(norm="layer", position="learned", mlp="gelu", qk_norm=False, d_ff=128)


@pytest.mark.parametrize("arch", [{}, GPT2], ids=["lmforge", "gpt2"])
def test_causal_future_does_not_leak(arch):
    m = tiny(**arch)
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 50
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-5)
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-3)


@pytest.mark.parametrize("arch", [{}, GPT2], ids=["lmforge", "gpt2"])
def test_kv_cache_matches_full_forward(arch):
    for kv in (4, 2, 1):  # multi-head, grouped-query, multi-query
        m = tiny(n_kv_head=kv, **arch)
        x = torch.randint(0, 50, (2, 12))
        with torch.no_grad():
            full = m(x)
            cache = KVCache(2)
            first = m(x[:, :5], cache=cache)  # prefill
            steps = [m(x[:, i : i + 1], cache=cache) for i in range(5, 12)]
        inc = torch.cat([first] + steps, dim=1)
        assert torch.allclose(full, inc, atol=1e-5), kv


def test_gpt2_options_build_gpt2_layers_and_learn():
    m = tiny(**GPT2)
    assert isinstance(m.norm, torch.nn.LayerNorm) and m.norm.bias is None
    assert isinstance(m.blocks[0].mlp, GeluMLP) and m.blocks[0].attn.qk_norm is None
    assert m.pos_embed.weight.shape == (16, 32)
    # Position is all the model sees of order: a repeated token's logits differ by position.
    with torch.no_grad():
        logits = m(torch.full((1, 16), 7))
    assert not torch.allclose(logits[0, 0], logits[0, 9], atol=1e-4)
    # Learned positions lift the even-head-size limit of rotary embeddings.
    assert tiny(**GPT2, n_head=8, n_kv_head=8, d_model=24).blocks[0].attn.head_dim == 3
    with pytest.raises(ValueError, match="even"):
        tiny(n_head=8, n_kv_head=8, d_model=24)
    ModelConfig(n_head=8, d_model=24, position="learned").validate()
    with pytest.raises(ConfigError, match="model.n_head"):
        ModelConfig(n_head=8, d_model=24).validate()
    # It trains: a few AdamW steps on one batch lower the loss (gradients reach every weight).
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    x, y = torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16))
    first = m(x, y)
    first.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    opt.step()
    for _ in range(20):
        opt.zero_grad()
        loss = m(x, y)
        loss.backward()
        opt.step()
    assert loss.item() < first.item() - 0.5


def test_shapes_saved_before_the_options_load_as_before():
    old = dict(vocab_size=50, n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32, context_len=8)
    m = GPT.from_shape_dict(old)
    assert (m.cfg.norm, m.cfg.position, m.cfg.mlp, m.cfg.qk_norm) == ("rms", "rope", "swiglu", False)
    assert m.pos_embed is None


def test_tied_embeddings_share_storage():
    m = tiny()
    assert m.lm_head.weight.data_ptr() == m.embed.weight.data_ptr()
    u = tiny(tied_embeddings=False)
    assert u.lm_head.weight.data_ptr() != u.embed.weight.data_ptr()
    assert u.num_params(non_embedding=False) > m.num_params(non_embedding=False)


def test_flops_per_token_counts_weights_and_attention():
    m = tiny()
    assert m.flops_per_token() > 6 * sum(p.numel() for p in m.blocks.parameters())


def test_generation_is_seeded_and_runs_past_context():
    m = tiny()
    a = generate_ids(m, [1, 2, 3], 40, temperature=1.0, seed=7)
    b = generate_ids(m, [1, 2, 3], 40, temperature=1.0, seed=7)
    c = generate_ids(m, [1, 2, 3], 40, temperature=1.0, seed=8)
    assert a == b and len(a) == 40  # 43 tokens > context 16: the cache restarts
    assert a != c


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    p = filter_logits(logits, 1.0, top_k=2, top_p=1.0)
    assert (p[2:] == 0).all() and abs(p.sum().item() - 1) < 1e-6
    p = filter_logits(logits, 1.0, top_k=0, top_p=0.5)
    assert p[0] == 1.0  # the top token alone holds over half the mass


def test_cpu_dropout_keeps_the_expected_share_and_the_mean():
    from lmforge.models.gpt import Dropout

    drop = Dropout(0.05).train()
    assert drop.threshold == 13  # 0.05 rounded to 13/256
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - (1 - 13 / 256)) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.005
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # gradient is the mask times the scale
    torch.manual_seed(0)
    torch.testing.assert_close(drop(torch.ones(200_000)), y.detach())  # the seed fixes the mask
    assert drop.eval()(x) is x


def test_cpu_dropout_draws_independent_bytes():
    from lmforge.models.gpt import Dropout

    torch.manual_seed(1)
    keep = Dropout(0.5).train()(torch.ones(80_000)) != 0
    # Every byte position of the 64-bit draws, the sign byte included, drops about half.
    by_position = keep.view(-1, 8).float().mean(dim=0)
    assert ((by_position - 0.5).abs() < 0.02).all(), by_position
