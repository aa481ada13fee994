"""Muon: batched orthogonalization, agreement with torch.optim.Muon, training and resume."""

import json

import pytest
import torch

import lmforge
from lmforge.config import OptimConfig
from lmforge.lm.pretrain import train
from lmforge.trainer.muon import Muon, orthogonalize
from lmforge.trainer.optim import OptimizerSet, build_optimizer
from test_train import final_weights, small_cfg


@pytest.mark.parametrize("shape", [(3, 16, 48), (2, 40, 24), (1, 32, 32)])
def test_orthogonalize_makes_singular_values_near_one_and_batches_exactly(shape):
    g = torch.Generator().manual_seed(0)
    G = torch.randn(*shape, generator=g)
    ortho = orthogonalize(G, dtype=torch.float32)
    sv = torch.linalg.svdvals(ortho)
    # The quintic iteration trades exactness for speed: singular values land in about [0.7, 1.2].
    assert sv.min() > 0.5 and sv.max() < 1.3
    for i in range(shape[0]):
        torch.testing.assert_close(orthogonalize(G[i : i + 1], dtype=torch.float32)[0], ortho[i], atol=1e-5, rtol=1e-4)


def test_batched_muon_matches_torch_muon():
    torch.manual_seed(0)
    shapes = [(16, 48), (16, 48), (40, 24), (32, 32)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16)  # torch's Muon iterates in bf16
    b = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(3):
        for p, q in zip(ours, ref):
            grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step * 10 + p.shape[0]))
            p.grad, q.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, atol=2e-3, rtol=0)  # bf16 rounding of updates of about 0.03


def test_muon_goes_to_hidden_matrices_only():
    from lmforge.models.gpt import GPT

    model = GPT.from_shape_dict(dict(vocab_size=50, n_layer=2, n_head=2, n_kv_head=2, d_model=16, d_ff=32, context_len=8))
    opt = build_optimizer(model, OptimConfig(kind="muon"), "cpu")
    assert isinstance(opt, OptimizerSet)
    muon_params = {id(p) for g in opt.optimizers[0].param_groups for p in g["params"]}
    assert id(model.embed.weight) not in muon_params  # tied with the output layer: AdamW
    assert id(model.blocks[0].attn.qkv.weight) in muon_params
    assert all(p.ndim == 2 for g in opt.optimizers[0].param_groups for p in g["params"])
    n_all = sum(1 for _ in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_all
    assert isinstance(build_optimizer(model, OptimConfig(), "cpu"), torch.optim.AdamW)

    from lmforge.models.classifiers import NgramBagClassifier

    clf = NgramBagClassifier(n_features=100, n_classes=3, embed_dim=8)
    # no hidden matrix at all: the n-gram table and the head stay with AdamW
    assert isinstance(build_optimizer(clf, OptimConfig(kind="muon"), "cpu"), torch.optim.AdamW)


def test_muon_training_loss_falls_and_resume_reproduces_the_uninterrupted_run(corpus, tmp_path):
    over = {"optim.kind": "muon", "train.max_steps": 40, "eval.interval": 10, "optim.lr": 1e-2,
            "schedule.min_lr": 1e-3}
    lmforge.train(small_cfg(corpus, tmp_path / "ref", **over), progress=False)
    records = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5

    class Stop(Exception):
        pass

    def stop_at_20(step, record):
        if step == 20:
            raise Stop

    with pytest.raises(Stop):
        train(small_cfg(corpus, tmp_path / "run", **over), progress=False, on_eval=stop_at_20)
    train(resume=tmp_path / "run", progress=False)
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resuming_with_another_optimizer_is_refused():
    from lmforge.models.gpt import GPT

    model = GPT.from_shape_dict(dict(vocab_size=50, n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32, context_len=8))
    adamw_state = build_optimizer(model, OptimConfig(), "cpu").state_dict()
    with pytest.raises(ValueError, match="different optim.kind"):
        build_optimizer(model, OptimConfig(kind="muon"), "cpu").load_state_dict(adamw_state)
