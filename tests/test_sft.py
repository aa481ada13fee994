"""Chat fine-tuning: the chat format and its template, the vocabulary resize, the assistant-only
loss falling through the shared loop, exact resume, the demo conversations and the terminal chat."""

import io
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import QA
from lmforge.cli import main
from lmforge.config import ModelConfig, TokenizerConfig, load_config
from lmforge.data.chat_demo import demo_conversations
from lmforge.data.tokenizer import Tokenizer, train_tokenizer
from lmforge.lm.chat import CHAT_TEMPLATE, CHAT_TOKENS, ChatFormat, add_chat_tokens, chat_loop
from lmforge.lm.sft import SFTConfig, encode_rows, resize_vocab, sft
from lmforge.models.gpt import GPT

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi <|end|> there"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "bye"}]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_format_marks_only_assistant_tokens_and_matches_the_template(kind):
    import jinja2  # the [test] extra
    tok = add_chat_tokens(train_tokenizer(["hi there hello bye and be brief " * 30],
                                          TokenizerConfig(kind=kind, vocab_size=300)))
    fmt = ChatFormat(tok)
    ids, mask = fmt.encode_with_mask(MESSAGES)
    specials = {i: t for t, i in tok.special_ids.items()} | {tok.eot_id: "<|endoftext|>"}
    # Contents are text: a user typing a marker does not produce the marker's id.
    assert ids.count(fmt.end_id) == len(MESSAGES)
    rendered = "".join(specials.get(i) or tok.decode([i]) for i in ids)
    expected = jinja2.Template(CHAT_TEMPLATE).render(messages=MESSAGES, add_generation_prompt=False)
    assert rendered == expected
    masked = "".join(specials.get(i) or tok.decode([i]) for i, m in zip(ids, mask) if m)
    assert masked == "hello<|end|>bye<|end|>"
    prompt = fmt.prompt(MESSAGES[:2])
    assert prompt[-1] == tok.special_ids["<|assistant|>"]
    assert "".join(specials.get(i) or tok.decode([i]) for i in prompt) == jinja2.Template(CHAT_TEMPLATE).render(
        messages=MESSAGES[:2], add_generation_prompt=True)


def test_encoded_rows_carry_loss_only_on_replies():
    tok = add_chat_tokens(train_tokenizer(["abcdefgh hello bye " * 10], TokenizerConfig(kind="char")))
    fmt = ChatFormat(tok)
    rows = encode_rows([MESSAGES, [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y"}]],
                       fmt, context_len=40)
    # Both are longer than the context; the second has no reply inside it, the first keeps its first.
    assert rows.truncated == 2 and rows.dropped == 1 and len(rows) == 1
    ids, mask = fmt.encode_with_mask(MESSAGES)
    want = np.where(np.array(mask[1:41]), np.array(ids[1:41]), -1)
    assert (rows.targets[0] == want).all() and (rows.ids[0] == ids[:41]).all()
    assert 0 < (want >= 0).sum() < 8


@pytest.mark.parametrize("tied", [True, False])
def test_resized_model_keeps_the_old_vocabulary_exactly(tied):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, context_len=16, tied_embeddings=tied), 40).eval()
    bigger = resize_vocab(model, 44).eval()
    x = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        assert torch.allclose(bigger(x)[..., :40], model(x), atol=1e-6)
        assert torch.allclose(bigger.embed.weight[40:], model.embed.weight.mean(0).expand(4, -1))
    assert (bigger.lm_head.weight is bigger.embed.weight) == tied


def sft_cfg(base, out, chats, **extra):
    over = {"base": str(base), "out": str(out), "data.path": str(chats), "train.max_steps": 60,
            "train.batch_size": 8, "optim.lr": 3e-3, "schedule.warmup_steps": 5, "eval.interval": 20,
            "runtime.compile": "off", "runtime.precision": "fp32", "train.log_interval": 5,
            "sample.num_samples": 1, "sample.max_new_tokens": 20, "train.keep_checkpoints": 5}
    over.update(extra)
    return load_config(None, {k: str(v) for k, v in over.items()}, cls=SFTConfig)


def test_assistant_loss_falls_and_the_run_folder_is_a_chat_model(trained_runs, tmp_path):
    out = tmp_path / "chat"
    result = sft(sft_cfg(trained_runs["lm"], out, trained_runs["chats"]), progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["train_loss"] for r in records if "train_loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert np.mean(train[-3:]) < 0.6 * np.mean(train[:3])
    assert result.val_loss < 0.6 * result.first_val_loss and vals[-1] < vals[0]
    meta = json.loads((out / "data" / "tokenizer.json").read_text())["lmforge"]
    assert meta["chat_template"] == CHAT_TEMPLATE and meta["special_tokens"] == CHAT_TOKENS
    tok = Tokenizer.load(out / "data" / "tokenizer.json")
    base_tok = Tokenizer.load(trained_runs["lm"] / "data" / "tokenizer.json")
    assert tok.vocab_size == base_tok.vocab_size + len(CHAT_TOKENS)
    assert json.loads((out / "model.json").read_text())["vocab_size"] == tok.vocab_size
    samples = json.loads((out / "samples.json").read_text())
    assert samples[0]["before"]["reply"] is not None and "reply" in samples[0]["after"]
    for name in ("config.yaml", "sft.yaml", "model.safetensors", "loss.png", "result.json"):
        assert (out / name).is_file(), name
    assert (trained_runs["lm"] / "data" / "tokenizer.json").read_text() != (out / "data" / "tokenizer.json").read_text()


def test_resume_reaches_the_same_weights(trained_runs, tmp_path):
    out = tmp_path / "chat"
    sft(sft_cfg(trained_runs["lm"], out, trained_runs["chats"], **{"train.max_steps": 20, "eval.interval": 10}),
        progress=False)
    final = load_file(str(out / "checkpoints" / "step_0000020" / "model.safetensors"))
    shutil.rmtree(out / "checkpoints" / "step_0000020")
    sft(resume=out, progress=False)
    again = load_file(str(out / "checkpoints" / "step_0000020" / "model.safetensors"))
    for k in final:
        assert torch.allclose(final[k], again[k], atol=1e-6), k


def test_terminal_chat_streams_replies_and_keeps_history(trained_runs):
    out = io.StringIO()
    history = chat_loop(trained_runs["chat"], system="answer briefly", max_new_tokens=12,
                        stdin=io.StringIO(f"{QA[0][0]}\n/reset\n{QA[1][0]}\n"), stdout=out)
    assert [m["role"] for m in history] == ["system", "user", "assistant"]  # /reset dropped the first exchange
    assert history[1]["content"] == QA[1][0]
    assert out.getvalue().count("assistant> ") == 2
    assert history[2]["content"] in out.getvalue()


def test_demo_conversations_come_from_the_plays():
    convs = demo_conversations(200, seed=1)
    assert len(convs) == 200
    for c in convs:
        assert [m["role"] for m in c] == ["system", "user", "assistant"]
        assert all(m["content"].strip() and len(m["content"]) <= 160 for m in c[1:])
        assert c[0]["content"].startswith("You are ")
    assert demo_conversations(200, seed=1) == convs


def test_cli_errors_are_one_line(trained_runs, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert main(["sft", str(trained_runs["lm"]), "--data", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: the conversation has no assistant message" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    assert main(["sft", str(trained_runs["lm"]), "--out", str(tmp_path / "x")]) == 2
    assert "--demo-data" in capsys.readouterr().err
    assert main(["chat", str(trained_runs["lm"])]) == 2
    assert "lmforge sft" in capsys.readouterr().err


def test_cli_sft_on_demo_data(trained_runs, tmp_path, capsys):
    code = main(["sft", str(trained_runs["lm"]), "--demo-data", "--out", str(tmp_path / "demo"), "--json",
                 "--train.max_steps", "4", "--train.batch_size", "4", "--data.demo_conversations", "60",
                 "--eval.interval", "2", "--sample.num_samples", "1", "--sample.max_new_tokens", "5",
                 "--runtime.compile", "off", "--track", "none"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 4 and result["conversations"] == 60
    assert not (tmp_path / "demo" / "tb").exists()


def test_two_process_ddp_matches_one_process(trained_runs, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    def args(out):
        return ["sft", str(trained_runs["lm"]), "--data", str(trained_runs["chats"]), "--out", str(out),
                "--train.max_steps", "6", "--train.batch_size", "8", "--train.micro_batch_size", "4",
                "--eval.interval", "6", "--optim.lr", "3e-3", "--runtime.compile", "off",
                "--runtime.precision", "fp32", "--sample.num_samples", "0", "--track", "none"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "lmforge.cli", *args(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={port}", "--master_addr=127.0.0.1", "-m", "lmforge.cli",
                          *args(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    a = load_file(str(tmp_path / "one" / "checkpoints" / "step_0000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "step_0000006" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    ra = json.loads((tmp_path / "one" / "result.json").read_text())
    rb = json.loads((tmp_path / "two" / "result.json").read_text())
    assert ra["val_loss"] == pytest.approx(rb["val_loss"], abs=1e-5)
    assert ra["first_val_loss"] == pytest.approx(rb["first_val_loss"], abs=1e-6)
