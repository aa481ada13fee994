"""In-domain pretraining for the gpt member, ULMFiT-style fine-tuning (discriminative rates, gradual
unfreezing) and the time plan that adds the member when the budget pays for it."""

import json

import numpy as np
import pytest
import torch

from classify_synth import sentiment_records, tiny_overrides, write_jsonl
from lmforge.classify.config import ClassifyConfig, ClassifyTrainConfig, GPTHeadConfig
from lmforge.classify.members import gpt_lr_groups
from lmforge.classify.plan import plan_budget
from lmforge.classify.run import Classifier, train_classifier
from lmforge.classify.task import ClassifyTask
from lmforge.config import EvalConfig, OptimConfig, ScheduleConfig, load_config
from lmforge.models.classifiers import GPTClassifier
from lmforge.models.gpt import GPT
from lmforge.trainer.loop import fit
from lmforge.trainer.optim import build_optimizer, set_lr
from lmforge.trainer.runtime import Runtime


def _tiny_gpt_classifier(n_layer: int = 3) -> GPTClassifier:
    torch.manual_seed(0)
    shape = dict(vocab_size=40, n_layer=n_layer, n_head=2, n_kv_head=2, d_model=16, d_ff=32, context_len=32)
    return GPTClassifier(GPT.from_shape_dict(shape), 2, dropout=0.0)


@pytest.mark.slow
def test_pretrain_then_finetune_end_to_end(tmp_path):
    recs = sentiment_records(320, seed=0)
    train = write_jsonl(tmp_path / "train.jsonl", recs)
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_records(60, seed=1))
    extra = tmp_path / "more.txt"
    extra.write_text("\n".join(r["text"] for r in sentiment_records(100, seed=5)) + "\n", encoding="utf-8")
    over = tiny_overrides(tmp_path / "run", **{
        "model.kind": "gpt", "model.gpt.lr": "3e-2", "model.gpt.dropout": "0.0", "model.gpt.pretrain_d_model": "32",
        "model.gpt.pretrain_n_layer": "2", "model.gpt.pretrain_epochs": "6", "data.unlabeled": str(extra),
        "train.epochs": "6", "train.track": "none"})
    cfg = load_config(None, {"data.path": str(train), "data.test_path": str(test), **over}, cls=ClassifyConfig)
    result = train_classifier(cfg, progress=False)

    lm = tmp_path / "run" / "pretrain"
    info = json.loads((lm / "run.json").read_text())
    assert info["kind"] == "lm" and info["status"] == "finished"
    # The language model read the training part only (90%: the validation split is held out) and the extra text.
    corpus = [json.loads(line)["text"] for line in (lm / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus) == 288 + 100
    facts = result.member_facts["pretrain"]
    assert facts["texts"] == 288 and facts["unlabeled_texts"] == 100
    lm_log = [json.loads(line) for line in (lm / "metrics.jsonl").read_text().splitlines()]
    lm_val = [r["val_loss"] for r in lm_log if "val_loss" in r]
    assert lm_val[-1] < lm_val[0]  # the language model learned the domain's text
    log = [json.loads(line) for line in (tmp_path / "run" / "gpt" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in log if "val_loss" in r]
    assert min(val) < val[0] - 0.05, val  # fine-tuning lowered the classifier's validation loss
    assert result.test["accuracy"] > 0.6, result.test
    clf = Classifier(tmp_path / "run")  # the member is self-contained: weights and tokenizer in gpt/
    assert clf.predict_proba(["a fine day"]).shape == (1, 2)


def test_discriminative_learning_rates_follow_the_config():
    model = _tiny_gpt_classifier(n_layer=3)
    groups = gpt_lr_groups(model, GPTHeadConfig(layer_lr_decay=2.0, unfreeze=0.5))
    opt = build_optimizer(model, OptimConfig(lr=1.0), "cpu", groups)
    set_lr(opt, 0.1, step=100, total_steps=100)  # past the unfreezing: every group trains
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    expect = [(model.head.weight, 0.1), (model.gpt.norm.weight, 0.1), (model.gpt.blocks[2].attn.qkv.weight, 0.05),
              (model.gpt.blocks[1].mlp.down.weight, 0.025), (model.gpt.blocks[0].attn_norm.weight, 0.0125),
              (model.gpt.embed.weight, 0.00625)]
    for p, lr in expect:
        assert rate[id(p)] == pytest.approx(lr)
    assert len(rate) == sum(p.requires_grad for p in model.parameters())  # every trainable weight has a rate
    # Before their start, groups are frozen: rate 0. Group i (of 5 below the head) starts at 0.5 * i / 4.
    set_lr(opt, 0.1, step=30, total_steps=100)  # 0.3: the head and the top two blocks train
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rate[id(model.gpt.blocks[1].mlp.down.weight)] > 0 and rate[id(model.gpt.blocks[0].mlp.down.weight)] == 0
    assert rate[id(model.gpt.embed.weight)] == 0
    one = gpt_lr_groups(model, GPTHeadConfig(layer_lr_decay=1.0, unfreeze=0.0))
    assert {(g.lr_scale, g.start) for g in one} == {(1.0, 0.0)}


def test_gradual_unfreezing_keeps_frozen_blocks_unchanged(tmp_path):
    model = _tiny_gpt_classifier(n_layer=2)  # groups: head, block 1, block 0, embeddings
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 40, rng.integers(3, 12)).astype(np.int32) for _ in range(64)]
    y = np.array([int(s[0] > 20) for s in seqs])
    task = ClassifyTask(model, seqs, y, seqs[:16], y[:16], 16, seed=0)
    task.lr_groups = gpt_lr_groups(model, GPTHeadConfig(layer_lr_decay=2.6, unfreeze=0.6))  # starts 0, .2, .4, .6
    watched = {"block1": model.gpt.blocks[1].mlp.down.weight, "block0": model.gpt.blocks[0].attn.qkv.weight,
               "embed": model.gpt.embed.weight, "head": model.head.weight}
    seen = {k: [p.detach().clone()] for k, p in watched.items()}

    def snapshot(step, record):
        for k, p in watched.items():
            seen[k].append(p.detach().clone())

    rt = Runtime(0, 1, 0, torch.device("cpu"), "fp32")
    fit(task, ClassifyTrainConfig(max_steps=10, log_interval=1, track="none"), OptimConfig(lr=1e-2),
        ScheduleConfig(warmup_steps=0, min_lr=1e-3), EvalConfig(interval=1), rt, tmp_path, progress=False,
        on_eval=snapshot)

    def moved(k):  # moved[i]: whether optimizer step i (0-based) changed the weight
        return [not torch.equal(a, b) for a, b in zip(seen[k], seen[k][1:])]

    # Step i is frozen while i < start * 10: block 1 until step 2, block 0 until 4, the embeddings until 6.
    assert moved("head") == [True] * 10
    assert moved("block1") == [False] * 2 + [True] * 8
    assert moved("block0") == [False] * 4 + [True] * 6
    assert moved("embed") == [False] * 6 + [True] * 4


def test_time_plan_adds_the_in_domain_gpt_only_when_the_budget_pays_for_it():
    words = 20_000  # about 1,000 SST-2 sentences
    roomy = plan_budget(1200, 5, words, True, "", True, "auto", 5, in_domain_gpt=True)
    assert roomy.members.split(",")[-1] == "gpt" and roomy.pretrain_s > 0
    row = dict(roomy.rows)["in-domain gpt"]
    assert row.startswith("added") and "pretraining" in row
    tight = plan_budget(60, 5, words, True, "", True, "auto", 5, in_domain_gpt=True)
    assert "gpt" not in tight.members.split(",") and tight.pretrain_s == 0
    assert dict(tight.rows)["in-domain gpt"].startswith("left out")
    # The other choices are the ones made without it: the gpt member only uses what is left over.
    without = plan_budget(1200, 5, words, True, "", True, "auto", 5, in_domain_gpt=False)
    assert roomy.members == without.members + ",gpt" and roomy.stacking == without.stacking
    assert "in-domain gpt" not in dict(without.rows)


def test_unlabeled_text_without_a_pretrained_gpt_is_refused(tmp_path):
    from lmforge.classify.run import resolve_auto
    from lmforge.errors import ConfigError

    cfg = ClassifyConfig()
    cfg.data.unlabeled = str(tmp_path / "u.txt")
    with pytest.raises(ConfigError, match="data.unlabeled.*self-training is off.*members are linear, fasttext"):
        resolve_auto(cfg, ["a text"] * 10)
    cfg.model.kind, cfg.model.gpt.run = "gpt", str(tmp_path)
    with pytest.raises(ConfigError, match="data.unlabeled.*pretrained only when"):
        resolve_auto(cfg, ["a text"] * 10)
    cfg.model.gpt.pretrain = "on"
    assert resolve_auto(cfg, ["a text"] * 10).data.unlabeled
    # Run folders written before data.unlabeled keep it under model.gpt: read as if given there.
    old = ClassifyConfig()
    old.model.kind, old.model.gpt.unlabeled = "gpt", str(tmp_path / "u.txt")
    resolved = resolve_auto(old, ["a text"] * 10)
    assert resolved.data.unlabeled == str(tmp_path / "u.txt") and resolved.model.gpt.unlabeled == ""


def test_gpt_learning_rate_zero_picks_one_for_the_model_at_hand(tmp_path):
    from lmforge.classify.run import resolve_auto

    cfg = ClassifyConfig()
    cfg.model.kind = "gpt"
    assert resolve_auto(cfg, ["a text"] * 10).model.gpt.lr == 1e-3  # a small GPT pretrained here
    cfg.model.gpt.run = str(tmp_path)
    assert resolve_auto(cfg, ["a text"] * 10).model.gpt.lr == 1e-4  # a given, larger pretrained model
    cfg.model.gpt.lr = 5e-4
    assert resolve_auto(cfg, ["a text"] * 10).model.gpt.lr == 5e-4


def test_time_plan_considers_the_in_domain_gpt_with_unlabeled_text_or_when_asked(tmp_path):
    from lmforge.classify.run import plan_run

    texts = ["a rather long review of a film that was good or bad " * 2] * 1000  # about 20,000 words
    cfg = ClassifyConfig()
    cfg.train.run_budget_s = 1200
    plain, plan = plan_run(cfg, texts)
    assert "gpt" not in plain.model.member_kinds()
    assert dict(plan.rows)["in-domain gpt"].startswith("not considered without --unlabeled")
    cfg.model.gpt.unlabeled = str(tmp_path / "more.txt")  # read only when pretraining starts
    with_text, plan = plan_run(cfg, texts)
    assert with_text.model.member_kinds()[-1] == "gpt" and dict(plan.rows)["in-domain gpt"].startswith("added")
    assert 0 < with_text.model.gpt.pretrain_time_s == plan.pretrain_s
    cfg.model.gpt.unlabeled, cfg.model.gpt.pretrain = "", "on"
    assert plan_run(cfg, texts)[0].model.member_kinds()[-1] == "gpt"
