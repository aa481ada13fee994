"""Train the decoder-only LM: prepare, build, fit, evaluate, sample. `train(cfg)` is the API; the CLI only calls it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge.atomic import atomic_write_json
from lmforge.config import Config, from_dict, save_config
from lmforge.errors import ConfigError
from lmforge.lm.model import build_model, save_shape
from lmforge.lm.task import LMTask, token_byte_lengths
from lmforge.data.prepare import prepare
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.loop import FitResult, fit, seed_everything
from lmforge.trainer.precision import decide_precision, step_probe
from lmforge.trainer.runtime import Runtime, init_runtime, shutdown
from lmforge.trainer.step import plan_batches
from lmforge.console import console, fmt, print_summary
from lmforge.trainer.metrics import plot_loss_curve

# Below this many steps the one-off compile (tens of seconds on a small CPU) costs more than it saves.
COMPILE_MIN_STEPS = 1000


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    val_loss: float | None
    val_bpb: float | None
    best_val_loss: float | None
    tokens_per_s: float
    wall_s: float
    stop_reason: str
    params: int
    samples: list[str]


def resolve_compile(setting: str, cfg: Config, device: torch.device) -> tuple[bool, str]:
    if setting == "on":
        return True, "set in the config"
    if setting == "off":
        return False, "set in the config"
    if cfg.train.max_steps < COMPILE_MIN_STEPS:
        return False, f"run of {cfg.train.max_steps} steps is too short to repay compiling"
    return True, f"run of {cfg.train.max_steps} steps repays the compile time"


def _runtime_choices(cfg: Config, rt: Runtime, run_dir: Path, resume: bool, task: LMTask, micro_bs: int):
    """Precision and compile, decided once per run and kept on resume so both halves match."""
    path = run_dir / "runtime.json"
    if resume and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved["precision"], "kept from the run being resumed", saved["compile"], "kept from the run being resumed"

    probe = step_probe(task.model, task.loss, task.micro_batch(0, 0, micro_bs, rt), rt)
    precision, precision_why = decide_precision(cfg.runtime.precision, rt, probe)
    compile_model, compile_why = resolve_compile(cfg.runtime.compile, cfg, rt.device)
    if rt.is_main:
        atomic_write_json(path, {"precision": precision, "compile": compile_model})
    return precision, precision_why, compile_model, compile_why


def load_run_config(run_dir: Path) -> Config:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"cannot resume: {path} not found; pass the run folder given as --out")
    return from_dict(Config, yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path)).validate()


def train(cfg: Config | None = None, resume: str | Path | None = None, progress: bool = True,
          on_eval=None, init_state: dict | None = None, wrap_task=None) -> TrainResult:
    """Prepare data (or reuse it), build the model, train, evaluate, save, print samples.

    With `resume=RUN_DIR` the run's saved config is used and training continues from its latest
    checkpoint, reaching the same weights an uninterrupted run would have. `on_eval(step, record)`
    is passed to the training loop (called after every evaluation; used by `lmforge tune`).

    `init_state` (a state dict) starts training from those weights instead of a fresh
    initialization (pruning's recovery); a resumed run takes its checkpoint's instead.
    `wrap_task(task, rt)` returns the task the loop trains, built around the LM task
    (distillation adds a teacher's loss term this way).
    """
    if resume is not None:
        cfg = load_run_config(Path(resume))
        cfg.out = str(resume)
    elif cfg is None:
        raise ConfigError("train() needs a config or resume=RUN_DIR")
    cfg.validate()
    run_dir = Path(cfg.out)
    rt = init_runtime(cfg.runtime.device, cfg.runtime.threads)
    try:
        result = _train(cfg, rt, run_dir, resume is not None, progress, on_eval, init_state, wrap_task)
    except BaseException:
        shutdown(rt)
        raise
    shutdown(rt, finished=True)
    return result


def _train(cfg: Config, rt: Runtime, run_dir: Path, resume: bool, progress: bool, on_eval=None,
           init_state: dict | None = None, wrap_task=None) -> TrainResult:
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume and ckpt.latest_checkpoint(run_dir) is None:
            from lmforge.errors import TrainingError

            raise TrainingError(f"nothing to resume in {run_dir}: no complete checkpoint in {run_dir}/checkpoints")
        if not resume:
            save_config(cfg, run_dir / "config.yaml")
        data = prepare(cfg, quiet=not progress)
    rt.barrier()
    if not rt.is_main:
        data = prepare(cfg, quiet=True)  # reuses what rank 0 built

    seed_everything(cfg.seed)
    model = build_model(cfg.model, data.tokenizer.vocab_size, cfg.seed)
    if init_state is not None and not resume:
        model.load_state_dict(init_state)
    model.to(rt.device)
    examples_per_step = cfg.train.global_batch_tokens // cfg.model.context_len
    micro_bs, accum = plan_batches(examples_per_step, cfg.train.micro_batch_size, rt.world_size)
    task = LMTask(model, data.train, data.val, token_byte_lengths(data.tokenizer), examples_per_step,
                  cfg.seed, cfg.eval.max_tokens)
    if wrap_task is not None:
        task = wrap_task(task, rt)
    rt.precision, precision_why, compile_model, compile_why = _runtime_choices(cfg, rt, run_dir, resume, task, micro_bs)
    shape = model.cfg
    if rt.is_main:
        save_shape(model, run_dir / "model.json")
    if rt.is_main and progress:
        n_params = model.num_params(non_embedding=False)
        print_summary(
            "model and training",
            [
                ("parameters", f"{n_params:,} ({model.num_params():,} non-embedding)"),
                ("shape", f"{shape.n_layer} layers x {shape.d_model} wide, {shape.n_head} heads "
                          f"({shape.n_kv_head} kv), context {shape.context_len}, vocab {model.vocab_size}"),
                ("FLOPs per token", f"{model.flops_per_token() / 1e6:,.1f} M (training, fwd+bwd)"),
                ("global batch", f"{examples_per_step} sequences = {cfg.train.global_batch_tokens:,} tokens; "
                                 f"micro-batch {micro_bs} x {accum} accumulation x {rt.world_size} processes"),
                ("device / precision", f"{rt.device} / {rt.precision} ({precision_why})"),
                ("compile", f"{'on' if compile_model else 'off'} ({compile_why})"),
                ("schedule", f"{cfg.optim.kind}, {cfg.schedule.kind}, lr {cfg.optim.lr:g} -> {cfg.schedule.min_lr:g}, "
                             f"warm-up {cfg.schedule.warmup_steps}, {cfg.train.max_steps} steps"),
            ],
        )

    def save_best(m: torch.nn.Module) -> None:
        ckpt.save_weights(m.state_dict(), run_dir / "model.safetensors")

    meta = {"task": "lm", "tokens_per_step": cfg.train.global_batch_tokens}
    result: FitResult = fit(task, cfg.train, cfg.optim, cfg.schedule, cfg.eval, rt, run_dir, compile_model=compile_model,
                            resume=resume, meta=meta, on_best=save_best, progress=progress, on_eval=on_eval)
    samples: list[str] = []
    if rt.is_main:
        plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{run_dir.name}: loss")
        m = result.last_metrics
        atomic_write_json(run_dir / "result.json", {
            "steps": result.steps, "val_loss": m.get("val_loss"), "val_bpb": m.get("val_bpb"),
            "val_ppl": m.get("val_ppl"), "best_val_loss": result.best_val_loss,
            "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s, "stop_reason": result.stop_reason,
        })
        if progress:
            print_summary(
                "result",
                [
                    ("steps", f"{result.steps} ({result.stop_reason})"),
                    ("validation loss", fmt(m.get("val_loss"))),
                    ("perplexity", fmt(m.get("val_ppl"), 2)),
                    ("bits per byte", fmt(m.get("val_bpb"))),
                    ("throughput", f"{result.tokens_per_s:,.0f} tokens/s"),
                    ("wall time", f"{result.wall_s:.1f} s"),
                    ("run folder", str(run_dir)),
                ],
            )
        if cfg.sample.num_samples and cfg.sample.max_new_tokens:
            from lmforge.lm.sample import sample_text

            model.eval()
            for i in range(cfg.sample.num_samples):
                text = sample_text(model, data.tokenizer, cfg.sample.prompt, cfg.sample, seed=cfg.seed + i,
                                   device=rt.device, stream=None)
                samples.append(text)
                if progress:
                    console.rule(f"sample {i + 1}")
                    console.print(text, markup=False, highlight=False)
            atomic_write_json(run_dir / "samples.json", samples)
    m = result.last_metrics
    return TrainResult(
        run_dir=run_dir, steps=result.steps, val_loss=m.get("val_loss"), val_bpb=m.get("val_bpb"),
        best_val_loss=result.best_val_loss, tokens_per_s=result.tokens_per_s, wall_s=result.wall_s,
        stop_reason=result.stop_reason, params=model.num_params(non_embedding=False), samples=samples,
    )


def result_json(result: TrainResult) -> str:
    d = asdict(result)
    d["run_dir"] = str(result.run_dir)
    return json.dumps(d)
