"""The OpenAI-compatible server, driven by the official `openai` client on 127.0.0.1: models,
completions and chat (streamed or not) equal lmforge's own sampling, classify, errors in OpenAI's
shape, concurrent clients batched together, API key, and a clean stop on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

import openai  # the [test] extra
from serving import ServerThread

from lmforge.classify.run import Classifier
from lmforge.lm.chat import ChatFormat
from lmforge.lm.model import load_run_model
from lmforge.lm.sample import generate_ids
from lmforge.serve.api import create_app
from lmforge.serve.models import Registry


@pytest.fixture(scope="module")
def server(trained_runs):
    registry = Registry({"lm": trained_runs["lm"], "chat": trained_runs["chat"], "clf": trained_runs["clf"]})
    srv = ServerThread(create_app(registry))
    srv.registry = registry
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=30, max_retries=0)


def reference(run, prompt_ids, n, temperature, seed, stop_ids=()):
    model, tok, _ = load_run_model(run)
    ids = generate_ids(model, prompt_ids, n, temperature=temperature, top_p=1.0, seed=seed,
                       stop_id=tok.eot_id, stop_ids=stop_ids)
    return tok.decode(ids), len(ids)


def test_models_lists_every_run_with_its_task(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"lm", "chat", "clf"}
    assert models["lm"].owned_by == "lmforge"
    extra = {m.id: m.model_extra["lmforge"] for m in models.values()}
    assert extra["lm"]["task"] == "lm" and extra["lm"]["chat"] is False
    assert extra["chat"]["chat"] is True and extra["clf"]["labels"] == ["neg", "pos"]
    assert client.models.retrieve("clf").id == "clf"


def test_completion_equals_lmforge_sampling_greedy_and_seeded(client, trained_runs):
    _, tok, _ = load_run_model(trained_runs["lm"])
    prompt = "The king and"
    for temperature, seed in ((0.0, 0), (0.9, 7)):
        r = client.completions.create(model="lm", prompt=prompt, max_tokens=24, temperature=temperature, seed=seed)
        text, n = reference(trained_runs["lm"], tok.encode(prompt), 24, temperature, seed)
        assert r.choices[0].text == text
        assert r.usage.prompt_tokens == len(tok.encode(prompt)) and r.usage.completion_tokens == n
        assert r.choices[0].finish_reason == ("length" if n == 24 else "stop")


def test_streamed_completion_matches_and_reports_usage(client):
    kwargs = dict(model="lm", prompt="a cat", max_tokens=30, temperature=0.8, seed=3)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == whole and len([t for t in texts if t]) > 1
    assert chunks[-1].usage.completion_tokens == 30 and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model="lm", prompt="the", max_tokens=40, temperature=0).choices[0].text
    stop = full[10:13]
    cut = full[: full.index(stop)]
    r = client.completions.create(model="lm", prompt="the", max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="lm", prompt="the", max_tokens=40, temperature=0, stop=stop,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_chat_with_and_without_streaming(client, trained_runs):
    model, tok, _ = load_run_model(trained_runs["chat"])
    fmt = ChatFormat(tok)
    messages = [{"role": "user", "content": "where does the cat sleep"}]
    r = client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=40)
    expected, n = reference(trained_runs["chat"], fmt.prompt(messages), 40, 0.0, 0, fmt.stop_ids)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == expected
    assert r.usage.completion_tokens == n and r.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="chat", messages=messages, temperature=0, max_tokens=40,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_classify_returns_labels_and_probabilities(server, trained_runs):
    texts = ["good great fine day the king", "bad awful poor day a cat"]
    body = post(server.url + "/v1/classify", {"model": "clf", "input": texts})
    expected = Classifier(trained_runs["clf"]).predict_proba(texts)
    assert [d["label"] for d in body["data"]] == ["pos", "neg"]
    for d, p in zip(body["data"], expected):
        assert d["probabilities"]["neg"] == pytest.approx(p[0], abs=1e-6)
        assert sum(d["probabilities"].values()) == pytest.approx(1.0)
    one = post(server.url + "/v1/classify", {"model": "clf", "input": texts[0]})
    assert len(one["data"]) == 1 and one["data"][0]["label"] == "pos"


def post(url, body, headers=None, expect=200):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        status, payload = e.code, json.loads(e.read())
    assert status == expect, payload
    return payload


@pytest.mark.parametrize("body, status, param, code", [
    ({"prompt": "x"}, 400, "model", "missing_required_parameter"),
    ({"model": "lm"}, 400, "prompt", "missing_required_parameter"),
    ({"model": "lm", "prompt": "x", "max_tokens": "ten"}, 400, "max_tokens", "invalid_value"),
    ({"model": "lm", "prompt": "x", "max_tokens": -1}, 400, "max_tokens", "invalid_value"),
    ({"model": "lm", "prompt": "x", "temperature": 5}, 400, "temperature", "invalid_value"),
    ({"model": "lm", "prompt": 12}, 400, "prompt", "invalid_value"),
    ({"model": "nope", "prompt": "x"}, 404, "model", "model_not_found"),
    ({"model": "lm", "prompt": "the king " * 20}, 400, "prompt", "context_length_exceeded"),
    ({"model": "clf", "prompt": "x"}, 400, "model", "wrong_model_task"),
])
def test_bad_completion_requests_get_openai_errors(server, body, status, param, code):
    err = post(server.url + "/v1/completions", body, expect=status)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["code"] == code and err["message"]


def test_bad_requests_through_the_client_and_truncation(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="lm", prompt="x", max_tokens=-1)
    assert e.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "no_chat_template"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "the king " * 20}])
    assert e.value.body["code"] == "context_length_exceeded"
    r = client.completions.create(model="lm", prompt="the king " * 20, max_tokens=3, seed=0,
                                  extra_body={"truncate_prompt_tokens": 16})
    assert r.usage.prompt_tokens == 16 and r.usage.completion_tokens == 3
    assert post(server.url + "/v1/completions", b"{not json", expect=400)["error"]["param"] is None
    post(server.url + "/v1/classify", {"model": "lm", "input": "x"}, expect=400)
    post(server.url + "/v1/classify", {"model": "clf", "input": []}, expect=400)
    # The server still answers after all of these.
    assert client.completions.create(model="lm", prompt="a", max_tokens=2, seed=0).usage.completion_tokens == 2


def test_concurrent_clients_are_batched_and_get_their_own_results(client, server):
    seeds = list(range(8))
    alone = {s: client.completions.create(model="lm", prompt="the quiet", max_tokens=40, temperature=0.9,
                                          seed=s).choices[0].text for s in seeds[:3]}
    engine = server.registry.get("lm").engine
    engine.max_rows_seen = 0
    results, errors = {}, []
    start = threading.Barrier(len(seeds))

    def one(seed):
        try:
            start.wait(10)
            stream = client.completions.create(model="lm", prompt="the quiet", max_tokens=40, temperature=0.9,
                                               seed=seed, stream=True)
            results[seed] = "".join(c.choices[0].text for c in stream)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == len(seeds)
    for s, text in alone.items():
        assert results[s] == text  # sharing a batch does not change a request's result
    assert engine.max_rows_seen >= 2  # requests shared decode forwards
    assert len(set(results.values())) > 1


def test_api_key_is_required_when_set(trained_runs):
    srv = ServerThread(create_app(Registry({"lm": trained_runs["lm"]}), api_key="s3cret"))
    try:
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0, timeout=10)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.body["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0, timeout=10)
        assert [m.id for m in good.models.list().data] == ["lm"]
    finally:
        srv.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_stops_cleanly_on_sigterm(trained_runs):
    port = free_port()
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(trained_runs["lm"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read())["status"] == "ok"
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "slow"
                time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=20)
        # Seeded: unseeded sampling can draw the end-of-text token first and stop short of 3.
        assert c.completions.create(model="lm", prompt="a", max_tokens=3, seed=0).usage.completion_tokens == 3
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "server stopped (SIGTERM)" in err and "Traceback" not in err
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_serve_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    from lmforge.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a trained lmforge run" in capsys.readouterr().err


def test_batched_slot_cache_decoding_matches_one_sequence_at_a_time(trained_runs):
    import torch

    from lmforge.models.gpt import SlotKVCache

    model, tok, _ = load_run_model(trained_runs["lm"])
    c = model.cfg
    seqs = [tok.encode(t) for t in ("the king", "a cat sleeps by", "rain")]
    cache = SlotKVCache(c.n_layer, 4, c.n_kv_head, c.d_model // c.n_head, c.context_len)
    x = torch.zeros(3, max(map(len, seqs)), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.tensor(s)
    cache.select([3, 0, 1])
    with torch.no_grad():
        out = model(x, cache=cache)
        cache.commit([len(s) for s in seqs])
        for i, s in enumerate(seqs):
            assert torch.allclose(out[i, len(s) - 1], model(torch.tensor([s]))[0, -1], atol=1e-5)
        nxt = torch.tensor([[5], [7], [9]])
        cache.select([1, 3, 0])  # another order: rows follow the slots
        out = model(nxt, cache=cache)[:, 0]
        for row, (i, t) in enumerate(zip((2, 0, 1), (5, 7, 9))):
            ref = model(torch.tensor([seqs[i] + [t]]))[0, -1]
            assert np.allclose(out[row].numpy(), ref.numpy(), atol=1e-5)


def test_batched_sampler_draws_from_the_filtered_distribution_row_by_row():
    import torch

    from lmforge.lm.sample import filter_logits, pick_tokens

    torch.manual_seed(0)
    logits = torch.randn(3, 6)
    settings = ([1.0, 0.7, 0.0], [0, 3, 0], [0.9, 1.0, 1.0])
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    counts = torch.zeros(2, 6)
    for _ in range(4000):
        a, b, greedy = pick_tokens(logits, *settings, gens)
        counts[0, a] += 1
        counts[1, b] += 1
        assert greedy == int(logits[2].argmax())
    assert torch.allclose(counts[0] / 4000, filter_logits(logits[0], 1.0, 0, 0.9), atol=0.03)
    assert torch.allclose(counts[1] / 4000, filter_logits(logits[1], 0.7, 3, 1.0), atol=0.03)
    assert counts[1, filter_logits(logits[1], 0.7, 3, 1.0) == 0].sum() == 0  # outside the top 3: never
    # A row's draw depends on its own generator only, not on the rows beside it.
    alone = pick_tokens(logits[1:2], [0.7], [3], [1.0], [torch.Generator().manual_seed(9)])
    batched = pick_tokens(logits, *settings, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(9),
                                              torch.Generator().manual_seed(7)])
    assert alone[0] == batched[1]
