"""Scale-out: FSDP and tensor parallelism equal one process, sharded checkpoints resume on another number
of processes, a kill during a sharded save, two-node rendezvous, and no silent hangs.

Everything runs on this CPU over gloo with 1, 2 or 4 processes and a tiny model, through the real CLI,
fp32, one thread per process: one-process runs inside the test process, several processes started
with torchrun's variables (`launch`), and the two-node test under torchrun itself. Losses are compared step
for step with one uninterrupted single-process run (`reference`); the schedule is constant after
warm-up, so a run stopped at step 5 and resumed with max_steps 10 trains with the learning rates of
the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.errors import ConfigError
from lmforge.trainer import parallelize
from lmforge.trainer.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, LMFORGE_NO_PROGRESS="1", OMP_NUM_THREADS="1")
STEPS = 10
TOL = 1e-5  # fp32; FSDP and tensor parallelism only reorder floating-point sums


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_args(corpus: Path, out: Path, **overrides) -> list[str]:
    opts = {"tokenizer.kind": "char", "model.n_layer": 2, "model.n_head": 2, "model.d_model": 32,
            "model.context_len": 32, "train.max_steps": STEPS, "train.global_batch_tokens": 256, "optim.lr": 3e-3,
            "schedule.kind": "constant", "schedule.warmup_steps": 2, "schedule.min_lr": 3e-4,
            "runtime.precision": "fp32", "runtime.compile": "off", "runtime.threads": 1, "train.log_interval": 1,
            "eval.interval": 5, "eval.max_tokens": 2048, "sample.num_samples": 0, **overrides}
    return ["train", str(corpus), "--out", str(out), *[a for k, v in opts.items() for a in (f"--{k}", str(v))]]


def launch(nproc: int, args: list[str], script: Path | None = None, timeout: int = 120,
           check: bool = True) -> subprocess.CompletedProcess:
    """lmforge (or `script`) on `nproc` processes, started directly with the variables torchrun gives
    them and, as torchrun does, the others stopped once one fails: one interpreter fewer to start on
    this busy machine than under torchrun, which the two-node test runs for real."""
    entry = [str(script)] if script else ["-m", "lmforge.cli"]
    port, logs = str(free_port()), [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(nproc)]
    procs = [subprocess.Popen([sys.executable, *entry, *args], cwd=ROOT, text=True, stdout=out, stderr=err,
                              env=dict(ENV, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                                       LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r, (out, err) in enumerate(logs)]
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if any(p.returncode for p in procs) or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)
    assert time.monotonic() <= deadline + 1, f"timed out after {timeout} s"
    texts = []
    for out, err in logs:
        out.seek(0)
        err.seek(0)
        texts.append((out.read(), err.read()))
        out.close()
        err.close()
    code = next((p.returncode for p in procs if p.returncode), 0)
    done = subprocess.CompletedProcess(procs[0].args, code, texts[0][0], "".join(e for _, e in texts))
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def lmforge(args: list[str]) -> int:
    """lmforge on one process, in this one: no start-up of a fresh interpreter and PyTorch."""
    from lmforge.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMFORGE_NO_PROGRESS", "1")
        return main(args)


def losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r}


def assert_same_losses(run: Path, reference: dict[int, float], steps) -> None:
    got = losses(run)
    for step in steps:
        assert got[step] == pytest.approx(reference[step], abs=TOL), (step, got, reference)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from conftest import make_corpus

    return make_corpus(tmp_path_factory.mktemp("scale") / "corpus.txt")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[int, float]:
    """Losses of one uninterrupted run on one process."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert lmforge(run_args(corpus, out)) == 0
    return losses(out)


# --- one process: the decisions and the pieces ------------------------------------------------------


def rt_of(world: int) -> Runtime:
    return Runtime(rank=0, world_size=world, local_rank=0, device=torch.device("cpu"), precision="fp32")


def test_auto_picks_ddp_while_the_state_fits_and_fsdp_beyond_and_says_why():
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, context_len=32)
    n = 1_000_000  # 16 MB of weights, gradients and AdamW moments
    small = parallelize.choose_layout("auto", 1, "auto", cfg, 100, n, 4, "adamw", rt_of(2), device_bytes=1 << 30)
    assert small.mode == "ddp" and not small.sharded and "fit comfortably" in small.why
    big = parallelize.choose_layout("auto", 1, "auto", cfg, 100, n, 4, "adamw", rt_of(2), device_bytes=20 << 20)
    assert big.mode == "fsdp" and big.sharded and "sharded 2 ways" in big.why
    one = parallelize.choose_layout("auto", 1, "auto", cfg, 100, n, 4, "adamw", rt_of(1), device_bytes=20 << 20)
    assert one.mode == "single"  # one process has nothing to shard across
    # Activation checkpointing comes on when the activations, not the state, would not fit.
    wide = ModelConfig(n_layer=8, n_head=8, d_model=512, context_len=1024)
    on = parallelize.choose_layout("auto", 1, "auto", wide, 100, n, 16, "adamw", rt_of(2), device_bytes=2 << 30)
    off = parallelize.choose_layout("auto", 1, "auto", wide, 100, n, 1, "adamw", rt_of(2), device_bytes=2 << 30)
    assert on.checkpointing and "with it" in on.checkpointing_why and not off.checkpointing


def test_layouts_that_cannot_work_are_refused_naming_the_field():
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=32, context_len=32)
    with pytest.raises(ConfigError, match="train.parallel.*ddp cannot be combined"):
        parallelize.choose_layout("ddp", 2, "none", cfg, 100, 1000, 4, "adamw", rt_of(2))
    with pytest.raises(ConfigError, match="optim.kind.*muon"):
        parallelize.choose_layout("fsdp", 1, "none", cfg, 100, 1000, 4, "muon", rt_of(2))
    with pytest.raises(ConfigError, match="train.tensor_parallel.*3 processes"):
        parallelize.choose_layout("auto", 2, "none", cfg, 100, 1000, 4, "adamw", rt_of(3))
    with pytest.raises(ConfigError, match="model.n_kv_head"):
        parallelize.choose_layout("auto", 4, "none", cfg, 100, 1000, 4, "adamw", rt_of(4))


def test_fused_projections_split_into_parts_and_back():
    from lmforge.lm.model import build_model

    cfg = ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, context_len=16)
    weights = build_model(cfg, 50, seed=0).state_dict()
    parts = parallelize.split_state(weights, parallelize.fused_parts(cfg))
    assert parts["blocks.0.attn.qkv.q.weight"].shape == (32, 32)
    assert parts["blocks.0.attn.qkv.k.weight"].shape == parts["blocks.0.attn.qkv.v.weight"].shape == (16, 32)
    assert parts["blocks.1.mlp.gate_up.up.weight"].shape == (cfg.resolved().d_ff, 32)
    back = parallelize.fuse_state(parts)
    assert back.keys() == weights.keys()
    assert all(torch.equal(back[k], weights[k]) for k in weights)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every process of the runs below; two would only contend on this machine
    yield
    torch.set_num_threads(before)


def test_activation_checkpointing_trains_exactly_as_without(tmp_path, monkeypatch, one_thread):
    # The golden run (the real loop), with every block checkpointed: the same losses, with dropout
    # on, because the recomputation replays the random state of the forward pass.
    import test_golden

    plain = test_golden.golden_run(tmp_path / "plain", dropout=0.1)
    build = test_golden.build_model

    def checkpointed(*args, **kwargs):
        model = build(*args, **kwargs)
        parallelize.checkpoint_blocks(model)
        return model

    monkeypatch.setattr(test_golden, "build_model", checkpointed)
    recomputed = test_golden.golden_run(tmp_path / "checkpointed", dropout=0.1)
    assert recomputed["trajectory"] == plain["trajectory"]
    assert recomputed["val"] == plain["val"]


# --- several processes ----------------------------------------------------------------------------

GRADIENTS = """
import os, torch, torch.distributed as dist
from torch.distributed.tensor import DTensor
from lmforge.config import ModelConfig
from lmforge.lm.model import build_model
from lmforge.trainer import parallelize as P
from lmforge.trainer.runtime import init_runtime

rt = init_runtime("cpu", 1)
SHAPES = {  # the default GPT; and biases, a head width of its own, separate q/k gains, untied (Qwen-like)
    "plain": ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, context_len=16, dropout=0.0),
    "qwen": ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, head_dim=16, context_len=16, bias=True,
                        qkv_bias=True, qk_norm_shared=False, norm="layer", tied_embeddings=False)}
g = torch.Generator().manual_seed(0)
x, y = torch.randint(0, 50, (4, 16), generator=g), torch.randint(0, 50, (4, 16), generator=g)
report = {}
for shape, cfg in SHAPES.items():
    make = lambda: build_model(cfg, 50, seed=3)
    whole = make()
    whole(x, y).backward()
    whole_norm = float(torch.nn.utils.clip_grad_norm_(whole.parameters(), 1e9))
    for tp in (1, 2):  # meshes data 2 x tensor 1 (FSDP) and data 1 x tensor 2 (FSDP + tensor parallel)
        P.check_tensor_parallel(tp, cfg, rt)
        model = P.build_model(make, P.Layout("fsdp", tp), rt)
        init = {k: v.clone() for k, v in P.full_state(model).items()}  # (may be views of unsplit parameters)
        n = rt.dp_size
        model(x.chunk(n)[rt.dp_rank], y.chunk(n)[rt.dp_rank]).backward()
        P.sum_partial_grads(model)
        norm = float(P.clip_grad_norm(model.parameters(), 1e9))
        grads = P.fuse_state({k: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                              for k, p in model.named_parameters()})
        target = {k: v + 1.0 for k, v in whole.state_dict().items()}  # whole weights, as train --init loads
        P.load_whole_weights(model, target, "target")
        loaded = P.full_state(model)
        if rt.rank == 0:
            report[f"{shape} tp{tp}"] = {
                "init": max(float((init[k] - v).abs().max()) for k, v in whole.state_dict().items() if k in init),
                "grad": max(float((grads[k] - p.grad).abs().max()) for k, p in whole.named_parameters()),
                "norm": abs(norm - whole_norm), "keys": sorted(set(whole.state_dict()) - set(init)),
                "biases": sum(k.endswith(".bias") for k in grads),
                "loaded": max(float((loaded[k] - target[k]).abs().max()) for k in loaded)}
if rt.rank == 0:
    print("REPORT", __import__("json").dumps(report), flush=True)
# Then, in the same two processes (one interpreter start each fewer on this busy machine): the run
# given on the command line, resumed by the CLI, which reuses the process group.
import sys
from lmforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def two_processes(corpus, tmp_path_factory) -> tuple[dict, Path]:
    """One launch of two processes: the checks of GRADIENTS (their report), then a one-process run
    with sharded checkpoints resumed with tensor parallelism 2 (a data 1 x tensor 2 mesh, FSDP over
    the data dimension) and activation checkpointing (its run folder)."""
    base = tmp_path_factory.mktemp("two")
    run, script = base / "run", base / "gradients.py"
    script.write_text(GRADIENTS)
    assert lmforge(run_args(corpus, run, **{"train.parallel": "fsdp", "train.max_steps": 5})) == 0
    assert (run / "checkpoints" / "step_0000005" / "sharded" / ".metadata").is_file()
    out = launch(2, ["train", "--resume", str(run), "--train.max_steps", str(STEPS), "--train.tensor_parallel", "2",
                     "--train.activation_checkpointing", "blocks"], script=script).stdout
    return json.loads(out.split("REPORT", 1)[1].splitlines()[0]), run


@pytest.mark.slow
def test_sharded_models_start_from_the_unsharded_weights_and_get_its_gradients(two_processes):
    # Built on the meta device and materialised shard by shard, the model has exactly the weights of
    # the unsharded one (the same random draws), and one backward pass gives its gradients.
    report, _ = two_processes
    assert len(report) == 4, report
    for name, r in report.items():
        assert r["init"] == 0.0, report
        # A tied output layer is the embedding: stored once.
        assert r["keys"] == (["lm_head.weight"] if name.startswith("plain") else []), report
        assert r["grad"] < 1e-7 and r["norm"] < 1e-5, report
        assert r["loaded"] == 0.0, report  # whole weights loaded into the shards come back whole
    assert report["qwen tp2"]["biases"] > 0  # q, k and v parts' biases, split between the processes


@pytest.mark.slow
def test_a_one_process_sharded_checkpoint_resumes_on_two_with_tensor_parallelism(two_processes, reference):
    # train.parallel fsdp on one process trains unsharded and saves a sharded checkpoint; resumed on two
    # with tensor parallelism and activation checkpointing, the losses stay the uninterrupted run's.
    _, run = two_processes
    assert_same_losses(run, reference, range(1, STEPS + 1))


KILL_IN_SAVE = """
import os, signal, sys
import torch.distributed.checkpoint as dcp
from lmforge.cli import main

save = dcp.save

def save_then_die(state, *, storage_writer, **kw):
    save(state, storage_writer=storage_writer, **kw)
    # Rank 0 dies once the shards of step 10 are written, before the checkpoint is complete.
    if "step_0000010" in str(storage_writer.path) and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)

dcp.save = save_then_die
sys.exit(main())
"""


@pytest.mark.slow
def test_fsdp_matches_one_process_and_a_kill_in_its_save_leaves_a_checkpoint_that_resumes_on_one(
        corpus, reference, tmp_path, capsys):
    # FSDP on two processes; rank 0 is killed (SIGKILL) once the shards of step 10 are written,
    # before that checkpoint is complete. Every step until then trained as one process does.
    run, script = tmp_path / "run", tmp_path / "kill.py"
    script.write_text(KILL_IN_SAVE)
    done = launch(2, run_args(corpus, run, **{"train.parallel": "fsdp", "sample.num_samples": 1,
                                              "sample.max_new_tokens": 5}), script=script, check=False)
    assert done.returncode != 0
    assert_same_losses(run, reference, range(1, STEPS + 1))
    ckpts = run / "checkpoints"
    assert [p.name for p in ckpts.glob("step_*")] == ["step_0000005"]
    assert list(ckpts.glob(".tmp_step_0000010_*"))  # the unfinished save, never renamed into place
    last = ckpts / "step_0000005"
    assert sorted(p.name for p in (last / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert set(json.loads((last / "meta.json").read_text())["sha256"]) == {
        "state.pt", "sharded/.metadata", "sharded/__0_0.distcp", "sharded/__1_0.distcp"}
    # eval and generate consolidate the sharded checkpoint when the best weights are gone.
    val = {r["step"]: r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if "val_loss" in r}
    (run / "model.safetensors").unlink()
    capsys.readouterr()
    assert lmforge(["eval", str(run), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["val_loss"] == pytest.approx(val[5], abs=1e-5)
    assert lmforge(["generate", str(run), "--prompt", "The", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The")
    # export reads it too: the weights keyed and shaped as the unsharded model's (fused q|k|v).
    from lmforge.export.common import open_run
    from lmforge.lm.model import model_from_shape

    exported, whole = open_run(run).weights, model_from_shape(run / "model.json").state_dict()
    assert {n: exported.shape(n) for n in exported.names()} == {
        n: tuple(t.shape) for n, t in whole.items() if n != "lm_head.weight"}
    # Resumed on one process (the shards of two, resharded), the run continues as the uninterrupted one.
    assert lmforge(["train", "--resume", str(run)]) == 0
    assert_same_losses(run, reference, range(1, STEPS + 1))
    assert not list(ckpts.glob(".tmp_step_*"))


@pytest.mark.slow
def test_a_sharded_run_moves_from_four_processes_to_two_to_one_exactly(corpus, reference, tmp_path):
    # FSDP on four processes to step 5, resumed on two to step 8, then on one to step 10: every step's
    # loss is the uninterrupted one-process run's. The best weights, which rank 0 writes as each
    # tensor is gathered (never the whole model at once), are the consolidated sharded checkpoint's.
    from lmforge.trainer import checkpoint as ckpt

    run = tmp_path / "run"
    launch(4, run_args(corpus, run, **{"train.parallel": "fsdp", "train.max_steps": 5}), timeout=300)
    last = run / "checkpoints" / "step_0000005"
    assert sorted(p.name for p in (last / "sharded").glob("*.distcp")) == [f"__{r}_0.distcp" for r in range(4)]
    best, whole = ckpt.load_verified(run / "model.safetensors"), ckpt.read_sharded_weights(last)
    assert sorted(best) == sorted(whole) and all(torch.equal(best[k], whole[k]) for k in best)
    launch(2, ["train", "--resume", str(run), "--train.max_steps", "8"], timeout=180)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_0000005", "step_0000008"]
    assert lmforge(["train", "--resume", str(run), "--train.max_steps", str(STEPS)]) == 0
    assert_same_losses(run, reference, range(1, STEPS + 1))


@pytest.mark.slow
def test_two_nodes_by_torchrun_rendezvous_match_one_node(corpus, reference, tmp_path):
    # Two torchrun invocations, one process each, meeting through the c10d rendezvous on 127.0.0.1.
    run, port = tmp_path / "run", free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-nodes",
            "-m", "lmforge.cli", *run_args(corpus, run)]
    nodes = [subprocess.Popen(node, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs
    assert_same_losses(run, reference, range(1, STEPS + 1))
    assert (run / "logs" / "rank_1.log").is_file()  # the other rank's output goes to its own log


def test_a_process_that_cannot_join_says_which_where_and_why(corpus, tmp_path, monkeypatch, capsys):
    port = free_port()  # nobody listens there: rank 0 never came
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    assert lmforge([*run_args(corpus, tmp_path / "run"), "--runtime.timeout_s", "2"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"lmforge: error: rank 1 of 2 on {socket.gethostname()} could not join the process group "
                           f"at 127.0.0.1:{port} within 2 s"), last
    assert "Likely cause" in last
    assert not torch.distributed.is_initialized()  # nothing left behind in this process


STALL = """
import sys, time
from lmforge.lm import task
batch = task.LMTask.micro_batch

def stalled(self, step, micro, size, rt):
    if step == 3 and rt.rank == 1:
        time.sleep(120)
    return batch(self, step, micro, size, rt)

task.LMTask.micro_batch = stalled
from lmforge.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_with_a_message_not_a_hang(corpus, tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(STALL)
    done = launch(2, run_args(corpus, tmp_path / "run", **{"runtime.timeout_s": 3, "train.parallel": "fsdp"}),
                  script=script, check=False, timeout=90)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("lmforge: error: rank 0 of 2")]
    assert errors and "waited 3 s (runtime.timeout_s) for the other processes" in errors[0], done.stderr[-2000:]
    assert "Likely cause" in errors[0]


def test_lmforge_env_reports_what_a_cluster_run_needs(monkeypatch, capsys):
    from lmforge.trainer.environment import LAUNCH_VARIABLES

    for k in LAUNCH_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    for k, v in {"RANK": "3", "WORLD_SIZE": "8", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                 "NCCL_DEBUG": "INFO"}.items():
        monkeypatch.setenv(k, v)
    assert lmforge(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["versions"]["torch"] == torch.__version__
    assert report["backends"]["gloo"] is True
    assert report["launcher"] == {"RANK": "3", "WORLD_SIZE": "8", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert report["network"]["NCCL_DEBUG"] == "INFO" and report["devices"][0].startswith("cpu")
    assert lmforge(["env"]) == 0
    text = capsys.readouterr().out
    assert "launcher      WORLD_SIZE=8" in text and "backends      gloo yes" in text


def test_planner_memory_model_shards_and_checkpoints_only_when_needed():
    from lmforge.auto.memory import fit_memory

    gib = 1 << 30
    gpt2 = dict(n_layer=12, d_model=768, context_len=1024, vocab_size=50304, micro_batch=8)
    roomy = fit_memory(124_000_000, **gpt2, device_bytes=80 * gib, processes=8)
    assert roomy.fits and not roomy.sharded and not roomy.checkpointing
    # 1.5B parameters: 24 GB of state, more than a 16 GB device holds.
    big = dict(n_layer=24, d_model=2048, context_len=2048, vocab_size=50304, micro_batch=4)
    eight = fit_memory(1_500_000_000, **big, device_bytes=16 * gib, processes=8)
    assert eight.fits and eight.sharded and eight.checkpointing and eight.bytes_per_process < 0.6 * 16 * gib
    assert not fit_memory(1_500_000_000, **big, device_bytes=16 * gib, processes=8, checkpointing="none").fits
    assert not fit_memory(1_500_000_000, **big, device_bytes=16 * gib, processes=1).fits
