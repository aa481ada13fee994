"""The planner's decisions, with a fake machine: no real timings, so these are exact and fast."""

import math

import pytest
import torch

from lmforge.auto.batch_size import find_micro_batch
from lmforge.auto.hardware import Hardware
from lmforge.auto.arithmetic import Candidate, flops_per_token
from lmforge.auto.inputs import DataFacts, PlanOptions
from lmforge.auto.plan import make_plan
from lmforge.auto.scaling import effective_data, predicted_loss
from lmforge.config import Config
from lmforge.durations import parse_duration
from lmforge.errors import ConfigError

VOCAB = 65


def fake_hw(**kw) -> Hardware:
    base = dict(device="cpu", name="fake CPU", cores=2, threads=2, memory_bytes=16 * 2**30, fast_bf16=True,
                fp32_tflops=0.1, bf16_tflops=0.5, compile_ok=True, compile_why="fake")
    base.update(kw)
    return Hardware(**base)


class FakeTimer:
    """A CPU-like step time: per-layer overhead plus FLOPs at a rate that needs big matrices to peak."""

    def __init__(self, bf16_rate=0.2e12, fp32_rate=0.08e12, overhead=0.002):
        self.rates = {"bf16": bf16_rate, "fp32": fp32_rate}
        self.overhead = overhead
        self.calls = []

    compiled_speedup = 1.8
    last_compile_s = 0.0

    def __call__(self, c: Candidate, mb: int, precision: str, compiled: bool = False, **run) -> float:
        self.calls.append((c, mb, precision))
        if compiled:
            self.compiled_call = (c, mb, precision, run)
        tokens = mb * c.context_len
        fill = min(1.0, tokens * c.d_model / (4096 * 256))  # small matrices leave the cores idle
        t = self.overhead * c.n_layer + tokens * flops_per_token(c, VOCAB) / (self.rates[precision] * max(fill, 0.05))
        if compiled:
            self.last_compile_s = 15.0
            return t / self.compiled_speedup
        return t


def plan(budget, train_tokens=10**9, hw=None, timer=None, cfg=None, **kw):
    data = DataFacts(train_tokens=train_tokens, val_tokens=max(1000, train_tokens // 10), vocab_size=VOCAB)
    return make_plan(cfg or Config(), data, hw or fake_hw(), budget, timer or FakeTimer(), **kw)


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("10m") == 600 and parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400
    for bad in ("ten minutes", "5x", "-3", "0"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_rule_is_compute_optimal_at_tens_of_tokens_per_param_at_scale():
    """With fixed compute C = 6ND the rule's best N gives tens of tokens per parameter at Chinchilla's
    scale and fewer (but several) at the scale of CPU minutes."""
    opt = PlanOptions()

    def best_ratio(C):
        ns = [10 ** (k / 40) for k in range(120, 520)]
        n = min(ns, key=lambda n: predicted_loss(n, C / (6 * n), 0, opt))
        return C / (6 * n) / n

    assert 14 < best_ratio(5.76e23) < 150  # Chinchilla: 70B parameters, 1.4T tokens
    assert 3 < best_ratio(1e13) < 15  # a few CPU-minutes
    assert best_ratio(1e13) < best_ratio(1e17) < best_ratio(5.76e23)


def test_repeated_data_is_discounted():
    assert effective_data(50, 100, 15) == 50
    assert effective_data(400, 100, 15) < 400  # 4 passes: worth less than 400 fresh tokens
    assert effective_data(10**6, 100, 15) < 16.1 * 100  # saturates at about (1 + 15) passes


def test_more_time_gives_a_bigger_model_more_tokens_and_compile():
    plans = [plan(b) for b in (60, 600, 6000)]
    params = [p.estimates["params"] for p in plans]
    tokens = [p.estimates["train_tokens"] for p in plans]
    assert params[0] <= params[1] <= params[2] and params[0] < params[2]
    assert tokens[0] < tokens[1] < tokens[2]
    assert [p.config.runtime.compile for p in plans] == ["off", "off", "on"] or plans[0].config.runtime.compile == "off"
    assert plans[-1].config.runtime.compile == "on"  # an hour repays a minute of compiling
    for p in plans:  # the rule keeps models near compute-optimal on an unlimited corpus
        assert 0.3 < p.estimates["tokens_per_param"] < 100, p.estimates


def test_small_corpus_gives_a_smaller_model_and_dropout():
    big = plan(1800, train_tokens=10**9)
    small = plan(1800, train_tokens=200_000)
    assert small.estimates["params"] < big.estimates["params"]
    assert small.estimates["epochs"] > 10
    assert small.config.model.dropout > 0 and big.config.model.dropout == 0
    assert small.config.model.context_len <= 2048
    why = dict((k, w) for k, _v, w in small.rows)["dropout"]
    assert "passes" in why


def test_optimizer_follows_the_passes_over_the_corpus():
    big = plan(600, train_tokens=10**9)
    small = plan(600, train_tokens=200_000)
    assert big.config.optim.kind == "muon" and small.config.optim.kind == "adamw"
    assert "passes" in dict((k, w) for k, _v, w in small.rows)["optimizer"]
    adamw = plan(600, train_tokens=10**9, options=PlanOptions(optimizer="adamw"))
    assert adamw.config.optim.kind == "adamw"
    if adamw.config.model.d_model == big.config.model.d_model:
        assert big.config.optim.lr > adamw.config.optim.lr  # Muon takes a larger rate
    cfg = Config()
    cfg.optim.kind = "adamw"
    assert plan(600, cfg=cfg, fixed={"optim.kind"}).config.optim.kind == "adamw"


def test_compile_is_timed_before_it_is_relied_on():
    fast = FakeTimer()
    p = plan(600, timer=fast)
    assert p.config.runtime.compile == "on"
    assert "measured a compiled step 1.80x" in dict((k, w) for k, _v, w in p.rows)["compile"]
    c, mb, precision, run = fast.compiled_call  # the step the run will take
    assert (c.n_layer, c.d_model, c.context_len) == (p.config.model.n_layer, p.config.model.d_model,
                                                     p.config.model.context_len)
    assert mb == p.config.train.micro_batch_size and run["optimizer"] == p.config.optim.kind
    assert p.time["compile"] <= 3.0  # paid while planning; the run's compile hits the cache

    slow = FakeTimer()
    slow.compiled_speedup = 1.05
    p_slow = plan(600, timer=slow)
    assert p_slow.config.runtime.compile == "off" and "only 1.05x" in dict((k, w) for k, _v, w in p_slow.rows)["compile"]
    # the same budget buys more steps when compiled steps are measured faster
    assert p.estimates["tokens_per_s"] > 1.5 * p_slow.estimates["tokens_per_s"]

    dropout = plan(600, train_tokens=200_000, timer=FakeTimer())
    assert dropout.config.model.dropout > 0 and dropout.config.runtime.compile == "off"
    assert "dropout" in dict((k, w) for k, _v, w in dropout.rows)["compile"]


def test_time_is_accounted_within_the_budget():
    for budget in (60, 600):
        p = plan(budget, spent_s=5.0)
        parts = p.time
        used = (parts["spent_before_planning"] + parts["planning"] + p.config.train.time_budget_s
                + parts["save_and_samples"] + parts["safety"])
        assert used <= budget + 0.2  # (the parts are rounded)
        assert used >= 0.9 * budget
        # the training budget includes compilation and evaluations, whose shares are listed
        assert p.config.train.time_budget_s >= parts["training"] + parts["compile"] + parts["evaluations"] - 1
        assert p.config.train.max_steps >= 2 * p.estimates["steps"]  # a cap only: the clock ends the run
        assert p.config.eval.interval <= p.config.train.max_steps


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(ConfigError, match="give more time"):
        plan(10, spent_s=8)


def test_compile_needs_a_toolchain_and_fixed_settings_are_kept():
    p = plan(6000, hw=fake_hw(compile_ok=False, compile_why="no C++ compiler"))
    assert p.config.runtime.compile == "off"
    cfg = Config()
    cfg.model.d_model, cfg.model.context_len, cfg.optim.lr = 192, 96, 1.234e-3
    p = plan(600, cfg=cfg, fixed={"model.d_model", "model.context_len", "optim.lr"})
    assert p.config.model.d_model == 192 and p.config.model.context_len == 96 and p.config.optim.lr == 1.234e-3
    reasons = {k: w for k, _v, w in p.rows}
    assert reasons["learning rate"] == "set by you"


def test_only_a_few_shapes_are_timed_and_the_chosen_one_is_one_of_them():
    timer = FakeTimer()
    p = plan(600, timer=timer)
    shapes = {c for c, _mb, _p in timer.calls}
    assert 1 <= len(shapes) <= PlanOptions().max_measured
    chosen = Candidate(p.config.model.n_layer, p.config.model.d_model, p.config.model.n_head, p.config.model.context_len)
    assert chosen in shapes
    assert p.estimates["measured_shapes"] == len(shapes)


def test_precision_follows_the_measured_step_not_the_matmul():
    # bf16 matmuls are fast, but at these shapes the whole step is slower in bf16: fp32 wins.
    p = plan(300, timer=FakeTimer(bf16_rate=0.05e12, fp32_rate=0.08e12))
    assert p.config.runtime.precision == "fp32"
    assert plan(300).config.runtime.precision == "bf16"
    assert plan(300, hw=fake_hw(fast_bf16=False, bf16_tflops=0.05)).config.runtime.precision == "fp32"


def test_busy_cores_make_the_planner_use_one_thread():
    state = {"threads": 2}
    base = FakeTimer()

    def timer(c, mb, precision):  # two threads fighting other programs: 3x slower than one
        return base(c, mb, precision) * (3.0 if state["threads"] == 2 else 1.0)

    p = plan(300, timer=timer, set_threads=lambda n: state.update(threads=n))
    assert state["threads"] == 1 and p.estimates["threads"] == 1
    state["threads"] = 2
    p = plan(300, timer=base, set_threads=lambda n: state.update(threads=n))
    assert state["threads"] == 2 and p.estimates["threads"] == 2


def test_plan_is_a_valid_config_and_saves(tmp_path):
    p = plan(120)
    p.config.validate()
    assert p.config.train.global_batch_tokens % p.config.model.context_len == 0
    seqs = p.config.train.global_batch_tokens // p.config.model.context_len
    assert seqs % p.config.train.micro_batch_size == 0
    p.save(tmp_path)
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "plan.yaml").is_file()
    from lmforge.config import load_config

    assert load_config(tmp_path / "plan.yaml").model.d_model == p.config.model.d_model
    assert {"model", "context", "precision", "compile", "micro-batch", "learning rate", "steps"} <= {r[0] for r in p.rows}


# --- batch-size finder ------------------------------------------------------------------------


def test_cpu_batch_finder_takes_the_knee():
    # throughput rises until 16 then is flat: the knee is the smallest size within 90% of the best
    def step(b):
        return 0.01 + b * 0.001 if b <= 16 else b * (0.026 / 16)

    r = find_micro_batch(step, max_size=128, device="cpu", start=1)
    assert r.micro_batch_size in (8, 16)
    rates = {b: b / s for b, s in r.tried}
    assert rates[r.micro_batch_size] >= 0.9 * max(rates.values())


def test_gpu_batch_finder_backs_off_from_out_of_memory():
    def step(b):
        if b > 24:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return 0.01 * b

    r = find_micro_batch(step, max_size=1024, device="cuda", start=2)
    assert r.micro_batch_size == 16
    assert (32, None) in r.tried and "out of memory" in r.reason
    with pytest.raises(MemoryError):
        find_micro_batch(step, max_size=1024, device="cuda", start=32)
    assert not math.isnan(r.seconds_per_example)


def test_tokenizer_choice_follows_the_text():
    from lmforge.auto.corpus import choose_tokenizer

    english = "The quick brown fox jumps over the lazy dog. " * 40_000
    assert choose_tokenizer(english, 2_000_000, "char")[:2] == ("bpe", 4096)
    kind, vocab, why = choose_tokenizer(english[:300_000], 300_000, "char")
    assert kind == "bpe" and 512 <= vocab < 4096
    chinese = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n" * 1000
    kind, _, why = choose_tokenizer(chinese, 12_000_000, "char")
    assert kind == "char" and "CJK" in why
    assert choose_tokenizer(chinese, 12_000_000, "jieba")[0] == "bpe"  # jieba words do merge
    assert choose_tokenizer(english[:50_000], 50_000, "char")[0] == "char"
    # A short run (little compute) gets a small vocabulary, so the output layer does not dominate.
    assert choose_tokenizer(english, 2_000_000, "char", compute_tflop=120)[:2] == ("bpe", 1024)
    assert choose_tokenizer(english, 2_000_000, "char", compute_tflop=1e5)[:2] == ("bpe", 4096)
    assert choose_tokenizer(chinese, 12_000_000, "char", compute_tflop=120)[:2] == ("bpe", 2048)
    assert choose_tokenizer(chinese, 12_000_000, "char", compute_tflop=1e5)[0] == "char"


def test_real_timer_times_the_compiled_step_of_the_run():
    from lmforge.auto.timer import LMStepTimer

    timer = LMStepTimer(vocab_size=64, slow_s=0.01, optimizer="muon")
    c = Candidate(1, 32, 2, 16)
    eager = timer(c, 2, "fp32")
    compiled = timer(c, 2, "fp32", compiled=True, optimizer="muon", dropout=0.0)
    assert eager > 0 and compiled > 0
    assert timer.last_compile_s > compiled  # the first compiled call paid the compile
    assert timer.calls[-1]["compiled"] and timer.calls[-1]["optimizer"] == "muon"


def test_light_dropout_gives_way_only_to_a_compile_that_pays_and_few_passes():
    rows = lambda p: dict((k, w) for k, _v, w in p.rows)  # noqa: E731
    fast, slow = FakeTimer(), FakeTimer()
    slow.compiled_speedup = 1.05
    # 4.4 passes uncompiled: compiling's 1.6x tokens stay fresh enough to be worth more than dropout ...
    compiled = plan(600, train_tokens=2_000_000, timer=fast)
    assert (compiled.config.runtime.compile, compiled.config.model.dropout) == ("on", 0.0)
    # ... unless the compiled step measures slow: then the run keeps its dropout (it had neither before).
    eager = plan(600, train_tokens=2_000_000, timer=slow)
    assert (eager.config.runtime.compile, eager.config.model.dropout) == ("off", 0.05)
    assert "kept, as compiling was measured not worth it" in rows(eager)["dropout"]
    # 7.5 passes, 12 if compiled: the extra tokens would be repeats, so light dropout wins.
    many = plan(600, train_tokens=1_200_000, timer=fast)
    assert (many.config.runtime.compile, many.config.model.dropout) == ("off", 0.05)
    assert "repeats" in rows(many)["compile"]
    assert all(p.config.schedule.decay_on_plateau == 2 for p in (compiled, eager, many))
