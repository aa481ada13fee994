"""Compression: quantized models stay close to the original and load safely; distillation is plain
training at alpha 0 and has no KL term when student = teacher; pruning keeps outputs at keep=1 and
gives a plain shape that every command reads."""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge.cli import main
from lmforge.compress.distill import DistillTask, SoftTargetTask, distill_kl, half_shape
from lmforge.compress.prune import non_embedding_params, prune_model, pruned_shape, unit_importance
from lmforge.config import ModelConfig, load_config
from lmforge.lm.model import load_run_model
from lmforge.lm.pretrain import train
from lmforge.models import quant
from lmforge.models.gpt import GPT
from lmforge.trainer.checkpoint import load_weights, save_weights

from classify_synth import chinese_records, sentiment_records, write_jsonl


def tiny_gpt(seed=0, **shape) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=4, d_model=64, context_len=32)
    cfg.update(shape)
    return GPT(ModelConfig(**cfg), 96).eval()


def lm_cfg(corpus: Path, out: Path, **overrides):
    base = {"data.path": str(corpus), "out": str(out), "tokenizer.kind": "char", "model.n_layer": "2",
            "model.n_head": "4", "model.d_model": "64", "model.context_len": "32", "train.max_steps": "40",
            "train.global_batch_tokens": "256", "optim.lr": "3e-3", "schedule.min_lr": "3e-4",
            "schedule.warmup_steps": "5", "runtime.precision": "fp32", "runtime.compile": "off",
            "train.log_interval": "1", "eval.interval": "20", "eval.max_tokens": "2048", "sample.num_samples": "0"}
    base.update({k: str(v) for k, v in overrides.items()})
    return load_config(None, base)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from conftest import make_corpus

    root = tmp_path_factory.mktemp("lm")
    corpus = make_corpus(root / "corpus.txt", n_docs=300)
    lmforge.train(lm_cfg(corpus, root / "run"), progress=False)
    return root / "run", corpus


# --- quantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("method,bound", [("int8", 0.02), ("int4", 0.15)])
def test_quantized_logits_stay_close_and_state_round_trips(method, bound, tmp_path):
    model = tiny_gpt()
    x = torch.randint(0, 96, (3, 32))
    with torch.no_grad():
        ref = model(x)
        q = copy.deepcopy(model)
        spec = quant.quantize(q, method, 32)
        out = q(x)
    # Relative to the logits' spread: int8 per row within 2%, int4 in groups of 32 within 15%.
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < bound, err
    assert err > 0  # it really is quantized
    kinds = {e["kind"] for e in spec["modules"].values()}
    assert ("int4_linear" in kinds) == (method == "int4") and "int8_embedding" in kinds
    # Saved as safetensors (plain tensors: int8/uint8 weights, float scales), loaded into a model rebuilt
    # from the spec alone: identical outputs.
    save_weights(q.state_dict(), tmp_path / "q.safetensors")
    stored = load_file(str(tmp_path / "q.safetensors"))
    assert stored["blocks.0.attn.qkv.qweight"].dtype == (torch.int8 if method == "int8" else torch.uint8)
    assert "lm_head.qweight" not in stored  # the tied table is stored once
    rebuilt = quant.rebuild(tiny_gpt(seed=5), json.loads(json.dumps(spec)))
    load_weights(rebuilt, tmp_path / "q.safetensors")
    with torch.no_grad():
        assert torch.equal(rebuilt(x), out)
    assert quant.count_weights(rebuilt) == sum(p.numel() for p in model.parameters())


def test_int4_kernel_matches_its_dequantized_weights():
    lin = torch.nn.Linear(128, 48, bias=True)
    q = quant.Int4Linear.from_linear(lin, 32)
    x = torch.randn(5, 128)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, q.dequantized(), q.bias)
        y = q(x)
    assert q.kernel == "int4pack"
    # bf16 activations around the kernel: agreement to bf16 precision.
    assert float((y - ref).abs().max()) < 0.02 * float(ref.abs().max())
    # Dequantized weights are within half a step of the originals.
    step = (q.scale.float().repeat_interleave(32, dim=1))
    assert bool(((q.dequantized() - lin.weight).abs() <= step / 2 + 1e-3).all())


def test_quantize_cli_then_eval_and_generate_read_the_quantized_run(lm_run, tmp_path, capsys):
    run, _ = lm_run
    out = tmp_path / "q8"
    assert main(["quantize", str(run), "--method", "int8", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    orig, q8 = report["rows"]
    assert q8["file_mb"] < orig["file_mb"] / 2.5  # int8 against fp32, with per-row scales
    assert abs(q8["quality"] - orig["quality"]) < 0.01 * orig["quality"]
    assert (out / "compress.md").is_file() and (out / "quant.json").is_file()
    model, _, info = load_run_model(out)
    assert quant.is_quantized(model) and info["quant"]["method"] == "int8"
    assert main(["eval", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["val_bpb"] == pytest.approx(q8["quality"], rel=1e-6)
    assert main(["generate", str(out), "--prompt", "The", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out.startswith("The")
    # Never overwrite: the same --out again, or quantizing a quantized run, is a one-line error.
    assert main(["quantize", str(run), "--method", "int4", "--out", str(out)]) == 2
    assert main(["quantize", str(out), "--method", "int4", "--out", str(tmp_path / "qq")]) == 2
    assert "already" in capsys.readouterr().err
    # The output is a run folder of its own (run.json names the original); --overwrite replaces only
    # lmforge's files there, and a folder of someone else's is refused.
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "lm" and info["compression"] == "int8" and info["status"] == "finished"
    (out / "notes.txt").write_text("mine")
    assert main(["quantize", str(run), "--method", "int4", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "quant.json").read_text())["method"] == "int4"
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "a.txt").write_text("x")
    assert main(["quantize", str(run), "--method", "int8", "--out", str(tmp_path / "theirs")]) == 2
    assert "not an lmforge run folder" in capsys.readouterr().err
    # Training from a quantized run is refused: it needs the float weights.
    from lmforge.errors import ConfigError
    from lmforge.lm.model import check_init

    with pytest.raises(ConfigError, match="quantized"):
        check_init(load_run_model(run)[2]["config"].model, out)


def test_quantized_run_is_served_like_generate_decodes_it(lm_run, tmp_path):
    openai = pytest.importorskip("openai")
    from serving import ServerThread

    from lmforge.compress.quantize import quantize_run
    from lmforge.lm.sample import generate_ids
    from lmforge.serve.api import create_app
    from lmforge.serve.models import Registry

    run, _ = lm_run
    out = tmp_path / "q4"
    quantize_run(run, "int4", out, eval_tokens=2048, progress=False, speed=False)
    model, tok, _ = load_run_model(out)
    assert quant.kernels_used(model)  # the quantized modules, not float ones, are what is served
    prompt = "The"
    want = tok.decode(generate_ids(model, tok.encode(prompt), 16, temperature=0.0, seed=0, stop_id=tok.eot_id))
    srv = ServerThread(create_app(Registry({"q4": out})))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=30, max_retries=0)
        r = client.completions.create(model="q4", prompt=prompt, max_tokens=16, temperature=0.0)
    finally:
        srv.stop()
    assert r.choices[0].text == want


@pytest.mark.slow  # loads Transformers
@pytest.mark.parametrize("method,ggml,variant", [("int8", "Q8_0", {"qk_norm": False, "tied_embeddings": False}),
                                                 ("int4", "Q4_1", {"n_head": 2, "n_kv_head": 1, "head_dim": 128})])
def test_quantized_run_exports_to_gguf_with_its_integers(method, ggml, variant, tmp_path):
    """GGUF holds a quantized run's integers as they are: Transformers' GGUF reader computes the
    logits of the float model with the quantized run's weight values (f16 scales the only
    difference), for llama (rotary rows permuted, separate output layer) and qwen3 (tied int8
    embedding in a q4_1 file)."""
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    from test_export import make_run, qwen2_tok  # noqa: F401 - the fixture is used below

    from lmforge.compress.quantize import quantize_run
    from lmforge.data.tokenizer import train_tokenizer
    from lmforge.config import TokenizerConfig
    from test_export import CORPUS

    import gguf

    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=320, pretokenizer="qwen2"))
    make_run(tmp_path / "run", tok, d_model=64, **variant)
    quantize_run(tmp_path / "run", method, tmp_path / "q", progress=False, speed=False)
    from lmforge.export.common import open_run
    from lmforge.lm.model import model_from_shape

    weights = open_run(tmp_path / "q").weights
    model = model_from_shape(tmp_path / "q" / "model.json").eval()  # float, holding the quantized values
    model.load_state_dict({n: weights.read(n) for n in weights.names()}, strict=False)
    path = tmp_path / "q" / "model.gguf"
    assert main(["export", str(tmp_path / "q"), "--to", "gguf", "--out", str(path)]) == 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.ffn_up.weight"] == ggml and types["token_embd.weight"] == "Q8_0"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q", gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    ids = torch.randint(0, tok.vocab_size, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-3 * float(ours.abs().max()), rtol=0)
    # Another GGUF type would re-quantize the integers: refused, naming the exact one.
    assert main(["export", str(tmp_path / "q"), "--to", "gguf", "--out", str(tmp_path / "x.gguf"),
                 "--dtype", "f16"]) == 2


@pytest.mark.slow
def test_quantized_classifier_predicts_like_the_original(tmp_path, capsys):
    from lmforge.classify.run import Classifier

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    for path, n, seed in ((train, 400, 0), (test, 100, 1)):
        path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_records(n, seed)), encoding="utf-8")
    run = tmp_path / "clf"
    assert main(["classify", "train", "--data", str(train), "--test", str(test), "--out", str(run), "--model",
                 "ensemble", "--model.members", "linear,fasttext", "--train.epochs", "2"]) == 0
    assert main(["quantize", str(run), "--method", "int8", "--out", str(tmp_path / "q")]) == 0
    texts = [r["text"] for r in sentiment_records(100, 1)]
    p, pq = Classifier(run).predict_proba(texts), Classifier(tmp_path / "q").predict_proba(texts)
    assert np.abs(p - pq).max() < 0.05 and (p.argmax(1) == pq.argmax(1)).mean() >= 0.98
    assert json.loads((tmp_path / "q" / "fasttext" / "quant.json").read_text())["modules"]["bag"]["bag"]


# --- distillation -----------------------------------------------------------------------------


def test_kl_term_is_zero_when_student_is_teacher_and_positive_otherwise():
    logits = torch.randn(2, 8, 50)
    for T in (1.0, 2.0, 4.0):
        assert abs(float(distill_kl(logits, logits.clone(), T))) < 1e-5
        assert float(distill_kl(logits, torch.randn(2, 8, 50), T)) > 0.01
    model = tiny_gpt()
    x, y = torch.randint(0, 96, (2, 32)), torch.randint(0, 96, (2, 32))

    class Inner:
        pass

    task = DistillTask(Inner(), copy.deepcopy(model), alpha=1.0, temperature=2.0)
    assert abs(float(task.loss(model, (x, y)))) < 1e-5
    assert float(task.loss(tiny_gpt(seed=1), (x, y))) > 0.01


def test_distillation_with_alpha_zero_is_plain_training(corpus, tmp_path):
    plain = lmforge.train(lm_cfg(corpus, tmp_path / "plain", **{"train.max_steps": 15}), progress=False)
    wrapped = train(lm_cfg(corpus, tmp_path / "alpha0", **{"train.max_steps": 15}), progress=False,
                            wrap_task=lambda task, rt: DistillTask(task, torch.nn.Identity(), 0.0, 2.0))
    assert plain.steps == wrapped.steps == 15  # the identity "teacher" would fail if it were ever called

    def losses(run):
        return [r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "train_loss" in r]

    a, b = losses(tmp_path / "plain"), losses(tmp_path / "alpha0")
    assert np.allclose(a, b, rtol=1e-4), (a, b)
    wa, wb = load_file(str(tmp_path / "plain" / "model.safetensors")), load_file(
        str(tmp_path / "alpha0" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_distill_cli_student_of_half_the_teacher_learns_and_resumes(lm_run, tmp_path, capsys):
    run, _ = lm_run
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(run), "--out", str(out), "--auto", "--train.max_steps", "30",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["student_non_embedding"] == pytest.approx(report["teacher_non_embedding"] / 2, rel=0.05)
    student = report["rows"][1]
    assert student["quality"] < 0.8 * np.log2(96)  # far below a uniform guess over the vocabulary
    shape = json.loads((out / "model.json").read_text())
    assert shape["n_layer"] == 1 and shape["d_model"] == 64
    # Resume continues the interrupted (here: finished and extended) run through the same task.
    assert main(["distill", "--resume", str(out), "--train.max_steps", "40"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 40


def test_half_shape_halves_non_embedding_parameters():
    for cfg in (ModelConfig(n_layer=2, n_head=4, d_model=128), ModelConfig(n_layer=6, n_head=12, d_model=768),
                ModelConfig(n_layer=3, n_head=8, n_kv_head=2, d_model=256)):
        half = half_shape(cfg)
        half.validate()
        ratio = non_embedding_params(half) / non_embedding_params(cfg)
        assert 0.4 < ratio < 0.6, (cfg, half, ratio)
        r = half.resolved()
        assert r.n_head % r.n_kv_head == 0


def test_soft_target_task_pulls_a_student_towards_the_teacher_probabilities():
    from lmforge.models.classifiers import NgramBagClassifier

    torch.manual_seed(0)
    model = NgramBagClassifier(20, 2, embed_dim=8)
    target = np.array([[0.9, 0.1], [0.2, 0.8]])

    class Inner:
        pass

    task = SoftTargetTask(Inner(), target, np.array([-1, -1]), alpha=1.0, temperature=1.0)
    ids, lengths, rows = torch.tensor([[1, 2, 0], [3, 4, 5]]), torch.tensor([2, 3]), torch.tensor([0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = float(task.loss(model, (ids, lengths, rows)))
    for _ in range(200):
        opt.zero_grad()
        task.loss(model, (ids, lengths, rows)).backward()
        opt.step()
    p = torch.softmax(model(ids, lengths), -1).detach().numpy()
    assert float(task.loss(model, (ids, lengths, rows))) < first / 20
    assert np.abs(p - target).max() < 0.02  # unlabeled rows learn the teacher's probabilities, not 0/1


def test_classifier_distillation_with_unlabeled_text(tmp_path, capsys):
    train, test, unlabeled = tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "more.txt"
    for path, n, seed in ((train, 300, 0), (test, 100, 1)):
        path.write_text("".join(json.dumps(r) + "\n" for r in sentiment_records(n, seed)), encoding="utf-8")
    unlabeled.write_text("\n".join(r["text"] for r in sentiment_records(300, 2)), encoding="utf-8")
    run = tmp_path / "clf"
    assert main(["classify", "train", "--data", str(train), "--test", str(test), "--out", str(run), "--model",
                 "linear"]) == 0
    assert main(["distill", "--teacher", str(run), "--out", str(tmp_path / "s"), "--unlabeled", str(unlabeled),
                 "--train.epochs", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    teacher, student = report["rows"]
    assert report["unlabeled_texts"] == 300
    assert student["quality"] >= teacher["quality"] - 0.1 and student["quality"] > 0.85
    assert main(["classify", "eval", str(tmp_path / "s"), "--data", str(test), "--json"]) == 0


def test_a_chinese_fasttext_student_reads_characters_unless_told(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", chinese_records(300, 0))
    test = write_jsonl(tmp_path / "test.jsonl", chinese_records(100, 1))
    run = tmp_path / "clf"
    assert main(["classify", "train", "--data", str(train), "--test", str(test), "--out", str(run), "--model",
                 "linear"]) == 0
    for extra, unit in (([], "char"), (["--text.tokenizer", "word"], "word")):
        out = tmp_path / f"s_{unit}"
        assert main(["distill", "--teacher", str(run), "--out", str(out), "--train.epochs", "20", "--json",
                     *extra]) == 0
        teacher, student = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
        assert json.loads((out / "fasttext" / "inputs.json").read_text(encoding="utf-8"))["unit"] == unit
        assert student["quality"] >= teacher["quality"] - 0.1 and student["quality"] > 0.85


# --- pruning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [dict(), dict(n_kv_head=2), dict(n_layer=3, qk_norm=False, mlp="gelu",
                                                                    position="learned", norm="layer")])
def test_prune_keep_one_leaves_outputs_unchanged(shape):
    model = tiny_gpt(**shape)
    tokens = np.random.default_rng(0).integers(0, 96, 4000)
    x = torch.randint(0, 96, (2, 32))
    for structure in ("width", "depth"):
        pruned, _ = prune_model(model, 1.0, tokens, structure)
        assert dataclasses.asdict(pruned.cfg) == dataclasses.asdict(model.cfg)
        with torch.no_grad():
            assert torch.allclose(pruned(x), model(x), atol=1e-6)


@pytest.mark.parametrize("shape", [dict(), dict(n_kv_head=2)])
def test_pruning_removes_the_unimportant_units_and_keeps_a_plain_shape(shape):
    model = tiny_gpt(**shape)
    s = model.cfg
    with torch.no_grad():  # head 1 of every layer writes nothing; its removal costs nothing
        for b in model.blocks:
            b.attn.proj.weight.view(s.d_model, s.n_head, s.head_dim)[:, 1] = 0
            b.mlp.down.weight[:, :10] = 0  # nor do these MLP channels
    tokens = np.random.default_rng(0).integers(0, 96, 4000)
    heads, chans = unit_importance(model, tokens)
    assert all(int(h.argmin()) == 1 for h in heads)
    assert all(set(c.argsort()[:10].tolist()) == set(range(10)) for c in chans)
    pruned, info = prune_model(model, 0.5, tokens)
    r = pruned.cfg
    assert r.n_head < s.n_head and r.n_head % r.n_kv_head == 0 and r.head_dim == s.head_dim
    assert all(1 not in kept for kept in info["heads_kept"])
    assert 0.4 < non_embedding_params(r) / non_embedding_params(s) < 0.6
    GPT.from_shape_dict(pruned.shape_dict()).load_state_dict(pruned.state_dict())  # a plain shape


def test_pruned_shape_depth_and_width():
    cfg = ModelConfig(n_layer=4, n_head=4, d_model=64)
    assert pruned_shape(cfg, 0.5, "depth").n_layer == 2
    w = pruned_shape(cfg, 0.25, "width")
    assert w.n_head == 1 and w.n_layer == 4


@pytest.mark.slow
def test_pruned_run_is_read_by_generate_eval_and_classify_gpt(lm_run, tmp_path, capsys):
    run, corpus = lm_run
    out = tmp_path / "p"
    assert main(["prune", str(run), "--keep", "0.5", "--out", str(out), "--recover", "3s", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    orig, before, after = report["rows"]
    assert after["params"] < orig["params"] and after["quality"] < before["quality"] + 1e-9
    shape = json.loads((out / "model.json").read_text())
    assert shape["n_head"] == 2 and shape["head_dim"] == 16
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["val_bpb"] == pytest.approx(
        after["quality"], rel=1e-6)
    assert main(["generate", str(out), "--prompt", "The", "--max-new-tokens", "8"]) == 0
    capsys.readouterr()
    data = tmp_path / "labeled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_records(120, 3)), encoding="utf-8")
    assert main(["classify", "train", "--data", str(data), "--out", str(tmp_path / "g"), "--model", "gpt",
                 "--model.gpt.run", str(out), "--train.epochs", "1"]) == 0
    # The pruned run quantizes too, and a quantized run cannot be fine-tuned.
    assert main(["quantize", str(out), "--method", "int4", "--out", str(tmp_path / "pq")]) == 0
    assert main(["classify", "train", "--data", str(data), "--out", str(tmp_path / "g2"), "--model", "gpt",
                 "--model.gpt.run", str(tmp_path / "pq"), "--train.epochs", "1"]) == 2
