"""`lmforge plan` and `lmforge train --auto --time`: the whole command keeps to its budget."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=300):
    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p, time.perf_counter() - t


def test_train_plans_by_default_keeps_to_the_budget_and_saves_the_plan(corpus, tmp_path):
    # No --auto: with no preset and no fixed steps, `train --time` plans as --auto does.
    out = tmp_path / "run"
    budget = 25
    p, wall = run("train", str(corpus), "--time", f"{budget}s", "--tokenizer.kind", "char",
                  "--sample.num_samples", "1", "--sample.max_new_tokens", "50", "--out", str(out), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "lmforge plan" in p.stderr and "why" in p.stderr  # the plan table, with reasons
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["val_bpb"] > 0 and result["steps"] > 10
    # within 10% of the budget, plus a little for this test machine's noise
    assert 0.75 * budget < wall < 1.1 * budget + 2, wall
    plan = json.loads((out / "plan.json").read_text())
    assert plan["outcome"]["stop_reason"].startswith("time budget")
    assert {r[0] for r in plan["rows"]} >= {"model", "context", "micro-batch", "learning rate", "precision", "compile"}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["tokenizer"]["kind"] == "char"  # what the user set is kept
    assert cfg["train"]["time_budget_s"] < budget
    for name in ("plan.yaml", "model.safetensors", "result.json", "loss.png"):
        assert (out / name).exists(), name


def test_plan_json_and_a_fixed_field(corpus, tmp_path):
    p, _ = run("plan", str(corpus), "--time", "2m", "--tokenizer.kind", "char", "--model.d_model", "48",
               "--model.n_head", "2", "--out", str(tmp_path / "p"), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    plan = json.loads(p.stdout.strip().splitlines()[-1])
    assert plan["config"]["model"]["d_model"] == 48 and plan["config"]["model"]["n_head"] == 2
    assert plan["config"]["train"]["time_budget_s"] > 60
    assert (tmp_path / "p" / "plan.yaml").is_file()
    p, _ = run("plan", str(corpus), "--time", "1h5x", "--out", str(tmp_path / "q"))
    assert p.returncode == 2 and "duration" in p.stderr


def test_which_train_commands_plan():
    from lmforge.cli import build_parser
    from lmforge.cli.auto import plans

    def parse(*argv):
        return build_parser().parse_args(["train", *argv])

    assert plans(parse("--data", "x.txt"))  # the default: plan for the default budget
    assert plans(parse("x.txt", "--time", "10m"))
    assert plans(parse("x.txt", "--model.d_model", "64"))  # explicit settings are kept by the plan
    assert plans(parse("x.txt", "--config", "configs/demo.yaml", "--auto", "--time", "1m"))
    assert not plans(parse("x.txt", "--config", "configs/demo.yaml"))  # presets train as they say
    assert not plans(parse("x.txt", "--config", "configs/demo.yaml", "--time", "1m"))
    assert not plans(parse("x.txt", "--train.max_steps", "100"))
    assert not plans(parse("x.txt", "--train.time_budget_s", "60"))
    assert not plans(parse("--resume", "runs/x"))
    assert not plans(parse("x.txt", "--init", "runs/base"))  # a given model trains as it is


def test_default_train_plans_for_the_default_budget_and_says_so(corpus, tmp_path):
    from lmforge.cli.auto import DEFAULT_TIME

    env = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "train", "--data", str(corpus), "--out",
                             str(tmp_path / "run")], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:  # the message comes before any work; the default budget itself is not run here
        first = proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()
    assert f"default budget of {DEFAULT_TIME}" in first and "--time" in first
