"""Every model learns a small synthetic task to near 100%, and the models' masking is right."""

from pathlib import Path

import numpy as np
import pytest
import torch

from classify_synth import chinese_records, sentiment_records, tiny_overrides, topic_records, write_jsonl
from lmforge.classify.config import ClassifyConfig
from lmforge.classify.run import Classifier, train_classifier
from lmforge.config import load_config
from lmforge.models.classifiers import BiLSTMClassifier, GPTClassifier, TransformerClassifier
from lmforge.models.gpt import GPT


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sent")
    return (write_jsonl(root / "train.jsonl", sentiment_records(320, seed=0)),
            write_jsonl(root / "test.jsonl", sentiment_records(120, seed=1)))


def _train(train: Path, test: Path, out: Path, **over):
    cfg = load_config(None, {"data.path": str(train), "data.test_path": str(test),
                             **tiny_overrides(out, **over)}, cls=ClassifyConfig)
    return train_classifier(cfg, progress=False)


@pytest.mark.parametrize("kind,extra", [
    ("bilstm", {"model.bilstm.pooling": "last"}),
    ("fasttext", {}),
    ("transformer", {}),
    ("linear", {}),
])
def test_each_model_learns_synthetic_sentiment(sentiment, tmp_path, kind, extra):
    result = _train(*sentiment, tmp_path / kind, **{"model.kind": kind, **extra})
    assert result.test["accuracy"] >= 0.95, result.test
    assert result.test["n"] == 120
    assert result.members == [kind]


def test_multiclass_integer_labels_and_ensemble(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", topic_records(500, seed=0))
    test = write_jsonl(tmp_path / "test.jsonl", topic_records(90, seed=1))
    result = _train(train, test, tmp_path / "run", **{"model.kind": "ensemble", "model.members": "linear,fasttext"})
    assert result.test["accuracy"] >= 0.95
    assert result.test["labels"] == [0, 1, 2]
    assert set(result.test["members"]) == {"linear", "fasttext"}
    assert sum(result.weights) == pytest.approx(1.0)
    clf = Classifier(tmp_path / "run")
    proba = clf.predict_proba(["the team will score a goal", "the bank raised the price of shares"])
    assert proba.shape == (2, 3) and proba.argmax(1).tolist() == [0, 1]


def test_chinese_char_model_learns(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chinese_records(300, seed=0))
    test = write_jsonl(tmp_path / "test.jsonl", chinese_records(100, seed=1))
    result = _train(train, test, tmp_path / "zh", **{"model.kind": "bilstm"})
    assert result.language == "zh"
    assert result.test["accuracy"] >= 0.95


def test_gpt_finetuning_from_an_lmforge_run(tmp_path):
    import lmforge

    recs = sentiment_records(320, seed=0)
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n\n".join(r["text"] for r in recs) + "\n", encoding="utf-8")
    lm_cfg = load_config(None, {
        "data.path": str(corpus), "out": str(tmp_path / "lm"), "tokenizer.kind": "bpe", "tokenizer.vocab_size": "400",
        "model.n_layer": "1", "model.n_head": "2", "model.d_model": "32", "model.context_len": "128",
        "train.max_steps": "20", "train.global_batch_tokens": "2048", "optim.lr": "3e-3", "schedule.min_lr": "3e-4",
        "schedule.warmup_steps": "2", "runtime.precision": "fp32", "runtime.compile": "off", "eval.interval": "20",
        "eval.max_tokens": "2048", "sample.num_samples": "0"})
    lmforge.train(lm_cfg, progress=False)
    train = write_jsonl(tmp_path / "train.jsonl", recs)
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_records(120, seed=1))
    result = _train(train, test, tmp_path / "gpt", **{"model.kind": "gpt", "model.gpt.run": str(tmp_path / "lm"),
                                                     "model.gpt.lr": "1e-2"})
    assert result.test["accuracy"] >= 0.95
    clf = Classifier(tmp_path / "gpt")  # loads without the original LM run's files being needed
    assert clf.kinds == ["gpt"]


def test_bilstm_reads_each_direction_at_the_true_end():
    torch.manual_seed(0)
    for pooling in ("last", "max", "mean", "last_max"):
        model = BiLSTMClassifier(50, 3, embed_dim=8, hidden_dim=8, layers=2, dropout=0.0, pooling=pooling).eval()
        ids = torch.tensor([[5, 6, 7, 8]])
        alone = model(ids, torch.tensor([4]))
        padded = model(torch.tensor([[5, 6, 7, 8, 0, 0, 0], [9, 10, 11, 12, 13, 14, 15]]), torch.tensor([4, 7]))
        torch.testing.assert_close(padded[0], alone[0])
    # The backward direction must start at the last real token: changing it changes the output.
    a = model(torch.tensor([[5, 6, 7, 8, 0]]), torch.tensor([4]))
    b = model(torch.tensor([[5, 6, 7, 9, 0]]), torch.tensor([4]))
    assert not torch.allclose(a, b)


def test_transformer_and_gpt_ignore_padding():
    torch.manual_seed(0)
    enc = TransformerClassifier(30, 2, max_len=16, d_model=16, n_layer=1, n_head=2, dropout=0.0).eval()
    gpt = GPTClassifier(GPT.from_shape_dict(dict(vocab_size=30, n_layer=1, n_head=2, n_kv_head=2, d_model=16, d_ff=32,
                                     context_len=16)), 2, pooling="last", dropout=0.0).eval()
    for model in (enc, gpt):
        alone = model(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
        padded = model(torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]]), torch.tensor([3, 5]))
        torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)


def test_class_weights_and_oversampling_run(tmp_path):
    recs = sentiment_records(300, seed=0)
    skewed = [r for r in recs if r["label"] == "pos"] + [r for r in recs if r["label"] == "neg"][:30]
    train = write_jsonl(tmp_path / "train.jsonl", skewed)
    test = write_jsonl(tmp_path / "test.jsonl", sentiment_records(100, seed=1))
    for opt in ("data.class_weights", "data.oversample"):
        result = _train(train, test, tmp_path / opt, **{"model.kind": "fasttext", opt: "true", "train.epochs": 10,
                                                        "model.fasttext.ngrams": 1})
        assert result.test["macro_f1"] >= 0.9, (opt, result.test)
        assert result.test["per_class"]["neg"]["recall"] >= 0.8
    assert np.isfinite(result.test["log_loss"])
