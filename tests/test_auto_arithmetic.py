"""The planner's model arithmetic counts what the run builds, for every architecture option."""

import pytest
import torch

from lmforge.auto.arithmetic import Candidate, memory_needed, shape_config, shape_counts
from lmforge.auto.candidates import default_context
from lmforge.config import ModelConfig
from lmforge.models.gpt import GPT

OPTIONS = [
    {},  # SwiGLU, rotary positions, tied embeddings
    {"mlp": "gelu", "position": "learned", "norm": "layer", "qk_norm": False},  # GPT-2 / nanoGPT
    {"n_kv_head": 2},  # grouped-query attention
    {"tied_embeddings": False, "d_ff": 200},
    {"mlp": "gelu", "tied_embeddings": False, "n_kv_head": 1, "position": "learned"},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("shape", [Candidate(1, 64, 2, 32), Candidate(3, 96, 4, 64), Candidate(5, 128, 4, 16)])
def test_counts_equal_the_real_model(options, shape):
    base = ModelConfig(**options)
    counts = shape_counts(shape, 97, base)
    torch.manual_seed(0)
    model = GPT(shape_config(base, shape), 97)
    assert counts.params == sum(p.numel() for p in model.parameters())
    assert counts.block_params == sum(p.numel() for p in model.blocks.parameters())
    assert counts.flops_per_token == model.flops_per_token()
    assert counts.weight_flops_per_token < counts.flops_per_token


def test_options_change_the_counts():
    c = Candidate(4, 128, 4, 128)
    plain = shape_counts(c, 1000)
    assert shape_counts(c, 1000, ModelConfig(tied_embeddings=False)).params == plain.params + 1000 * 128
    assert shape_counts(c, 1000, ModelConfig(position="learned")).params == plain.params + 128 * 128
    assert shape_counts(c, 1000, ModelConfig(n_kv_head=1)).block_params < plain.block_params
    # GQA that does not divide the candidate's heads falls back to plain attention, as the run would
    assert shape_config(ModelConfig(n_kv_head=3), c).n_kv_head == 0
    assert memory_needed(c, 1000, 8, ModelConfig(tied_embeddings=False)) > memory_needed(c, 1000, 8)


def test_default_context_keeps_attention_an_eighth_of_the_weights():
    T = default_context(128, 2, 1000, cap=2048)
    c = shape_counts(Candidate(2, 128, 4, T), 1000)
    assert c.flops_per_token - c.weight_flops_per_token <= 0.125 * c.weight_flops_per_token
    c2 = shape_counts(Candidate(2, 128, 4, 2 * T), 1000)
    assert c2.flops_per_token - c2.weight_flops_per_token > 0.125 * c2.weight_flops_per_token
    assert default_context(128, 2, 1000, cap=64) == 64
