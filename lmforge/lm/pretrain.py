"""Train the decoder-only LM: prepare, build, fit, evaluate, sample. `train(cfg)` is the API; the CLI only calls it."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge import runs
from lmforge.atomic import atomic_write_json
from lmforge.config import Config, from_dict, read_run_config, save_config, to_dict
from lmforge.errors import ConfigError, DataError
from lmforge.lm.model import apply_init_weights, build_model, check_init, init_weights, save_shape
from lmforge.lm.task import LMTask, token_byte_lengths
from lmforge.data.prepare import input_changes, load_prepared, prepare
from lmforge.data.readers import check_inputs
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.loop import FitResult, fit, seed_everything
from lmforge.trainer import parallelize
from lmforge.trainer.precision import choose_precision, decide_precision, step_probe
from lmforge.trainer.runtime import (Runtime, describe_dist_failure, init_runtime, is_dist_failure, on_main, rank_logs,
                                     shutdown)
from lmforge.trainer.step import plan_batches
from lmforge.console import console, fmt, print_summary, say, warn
from lmforge.trainer.metrics import plot_loss_curve
from lmforge.report.card import try_write_report

# Below this many steps the one-off compile (tens of seconds on a small CPU) costs more than it saves.
COMPILE_MIN_STEPS = 1000

# Settings a resumed run may change: they are honoured from the resumed step on and recorded in
# run.json. The schedule is a function of the step and the total, so a new max_steps, learning rate
# or schedule gives the remaining steps a new learning-rate tail. Any other change is refused.
RESUMABLE = ("train.max_steps", "train.time_budget_s", "train.log_interval", "train.save_interval",
             "train.keep_checkpoints", "train.micro_batch_size", "eval.interval", "eval.patience", "schedule.*",
             "optim.lr", "runtime.device", "runtime.threads", "runtime.compile", "runtime.timeout_s", "sample.*",
             "data.num_workers", "train.parallel", "train.tensor_parallel", "train.activation_checkpointing")
KEPT_ON_RESUME = "model, data, cleaning, tokenizer, seed, optimizer kind, batch, precision and evaluation set"


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


def _runtime_choices(cfg: Config, rt: Runtime, run_dir: Path, resume: bool, task: LMTask, micro_bs: int,
                     changed: set[str]):
    """Precision and compile, decided once per run and kept on resume so both halves match (compile
    is decided again when the resume changes runtime.compile)."""
    path = run_dir / "runtime.json"
    if resume and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        compile_model, compile_why = saved["compile"], "kept from the run being resumed"
        if "runtime.compile" in changed:
            compile_model, compile_why = resolve_compile(cfg.runtime.compile, cfg, rt.device)
        return saved["precision"], "kept from the run being resumed", compile_model, compile_why

    probe = step_probe(task.model, task.loss, task.micro_batch(0, 0, micro_bs, rt), rt)
    precision, precision_why = decide_precision(cfg.runtime.precision, rt, probe)
    compile_model, compile_why = resolve_compile(cfg.runtime.compile, cfg, rt.device)
    if rt.is_main:
        atomic_write_json(path, {"precision": precision, "compile": compile_model})
    return precision, precision_why, compile_model, compile_why


def load_run_config(run_dir: Path) -> Config:
    tree = read_run_config(run_dir, "lm")
    return from_dict(Config, tree, source=str(Path(run_dir) / "config.yaml")).validate()


@dataclass
class _Resume:
    """What resuming a run folder will do, decided before anything is written."""

    run_dir: Path
    info: dict  # run.json
    cfg: Config  # the run's config with the honoured changes
    changes: list  # (field, old, new) honoured
    note: str = ""
    finished: TrainResult | None = None  # set when the run is finished and nothing extends it
    from_start: bool = False  # stopped before its first checkpoint: trained again from step 0


def _finished_result(run_dir: Path, info: dict) -> TrainResult | None:
    """The stored result of a run that finished with its final checkpoint intact, else None."""
    path = run_dir / "result.json"
    if not path.is_file() or (info.get("status") != "finished" and not info.get("adopted")):
        return None
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    finals = info.get("final_checkpoints")
    if finals is None:  # a run of an older lmforge: its newest checkpoint must be at the final step
        last = ckpt.latest_checkpoint(run_dir)
        finals = [last.relative_to(run_dir)] if last and ckpt.read_meta(last).get("step") == res.get("steps") else []
        if not finals:
            return None
    if any(not (run_dir / f / "meta.json").is_file() or ckpt.verify(run_dir / f) for f in finals):
        warn(f"{run_dir} finished at step {res.get('steps')}, but its final checkpoint is missing or damaged; "
             "resuming from the newest intact one redoes the steps after it")
        return None
    try:
        samples = json.loads((run_dir / "samples.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        samples = []
    return TrainResult(run_dir=run_dir, steps=int(res.get("steps") or 0), val_loss=res.get("val_loss"),
                       val_bpb=res.get("val_bpb"), best_val_loss=res.get("best_val_loss"),
                       tokens_per_s=res.get("tokens_per_s") or 0.0, wall_s=res.get("wall_s") or 0.0,
                       stop_reason=res.get("stop_reason") or "", params=int(res.get("params") or 0),
                       samples=samples)


def _extends(changes: list, done: TrainResult, cfg: Config) -> bool:
    """Whether the honoured changes give a finished run more to do: more steps, or more time for a
    run the time budget stopped."""
    if cfg.train.max_steps <= done.steps:
        return False
    for name, old, new in changes:
        if name == "train.max_steps":
            return True
        if name == "train.time_budget_s" and "time budget" in done.stop_reason and (new == 0 or new > (old or 0)):
            return True
    return False


def plan_resume(run_dir: Path, requested: Config | None, use_prepared_data: bool = False,
                progress: bool = True) -> _Resume:
    """Check that `run_dir` can be resumed with the settings in `requested` (None: as saved) and
    decide how; nothing is written. Changes outside RESUMABLE are refused, naming the setting."""
    info = runs.open_run(run_dir, "lm")
    saved = load_run_config(run_dir)
    cfg = from_dict(Config, to_dict(requested if requested is not None else saved))
    cfg.out = str(run_dir)
    cfg.validate()
    honoured, refused = runs.split_changes(runs.config_changes(to_dict(saved), to_dict(cfg)), RESUMABLE)
    if refused:
        raise runs.refusal(run_dir, refused, KEPT_ON_RESUME)
    plan = _Resume(run_dir, info, cfg, honoured)
    done = _finished_result(run_dir, info)
    if done is not None and not _extends(honoured, done, cfg):
        if progress:
            say(f"{run_dir} already finished: {done.steps} steps ({done.stop_reason}); nothing was "
                "changed. To train it further, pass a larger --train.max_steps (or a longer --time).")
        plan.finished = done
        return plan
    if not ckpt.list_checkpoints(run_dir):
        # Killed before its first checkpoint (in start-up, data preparation or the first steps): nothing
        # was kept, so starting again from step 0 with the run's settings is the exact continuation.
        plan.from_start = True
        plan.note = "no checkpoint was saved before it stopped: trained again from step 0"
        return plan
    changed = input_changes(cfg)
    if changed and not use_prepared_data:
        shown = "; ".join(changed[:3]) + (f" (and {len(changed) - 3} more)" if len(changed) > 3 else "")
        raise DataError(
            f"cannot resume {run_dir}: its input data changed since the run prepared it: {shown}. Add "
            f"--use-prepared-data to continue on the tokens prepared then ({run_dir}/data; nothing is re-read), "
            "or start a new run on the changed data (--out NEW_FOLDER or --overwrite).")
    if changed:
        plan.note = "input data changed; continued on the prepared data: " + "; ".join(changed[:3])
    return plan


# What a run that stopped before its first checkpoint may have written while training; a fresh
# start removes them so its log and best weights are not mixed with the lost attempt's.
_BEFORE_FIRST_CHECKPOINT = ("metrics.jsonl", "model.safetensors", "tb", "loss.png", "result.json", "samples.json")


def _record_resume(plan: _Resume, progress: bool) -> str:
    """On rank 0: write the honoured changes into config.yaml and run.json; the run id."""
    if plan.from_start:
        for name in _BEFORE_FIRST_CHECKPOINT:
            path = plan.run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    info = runs.record_resume(plan.run_dir, plan.info, plan.changes, plan.note)
    if plan.changes:
        save_config(plan.cfg, plan.run_dir / "config.yaml")
    if progress:
        what = runs.describe_changes(plan.changes) if plan.changes else "no settings changed"
        say(f"resume {plan.run_dir}: {what}" + (f" ({plan.note})" if plan.note else ""))
    return info["run_id"]


def prepare_run(cfg: Config, overwrite: bool = False, quiet: bool = False):
    """`lmforge prepare`: claim the run folder (see lmforge.runs), then clean and tokenize into it."""
    check_inputs(cfg.data.path, cfg.data.valid_path)  # before the claim: a mistyped path leaves no folder
    cfg.out = str(runs.claim(cfg.out, "lm", overwrite=overwrite, quiet=quiet))
    return prepare(cfg, quiet=quiet)


def train(cfg: Config | None = None, resume: str | Path | None = None, progress: bool = True,
          on_eval=None, overwrite: bool = False, use_prepared_data: bool = False, claimed: bool = False,
          init_state: dict | None = None, wrap_task=None) -> TrainResult:
    """Prepare data (or reuse it), build the model, train, evaluate, save, print samples.

    A new run claims cfg.out (empty: a new dated folder under runs/); a folder holding another run
    is refused unless `overwrite` (see lmforge.runs). With `resume=RUN_DIR` training continues
    from the newest intact checkpoint, reaching the same weights an uninterrupted run would have;
    `cfg` then holds the settings asked for (None: the run's own): the changes in RESUMABLE are
    honoured and recorded, any other is refused. `on_eval(step, record)` is passed to the training
    loop (called after every evaluation; used by `lmforge tune`).

    For the compression commands: `claimed` says cfg.out is a run folder the caller has just claimed
    (lmforge.runs.claim) and put its own files in (a student's linked data, a pruned shape).
    `init_state` (a state dict) starts training from those weights instead of a fresh initialization
    (pruning's recovery); a resumed run takes its checkpoint's. `wrap_task(task, rt)` returns the
    task the loop trains, built around the LM task (distillation adds the teacher's loss term).
    """
    plan = None
    if resume is not None:
        main_rank = int(os.environ.get("RANK", 0)) == 0
        plan = plan_resume(Path(resume), cfg, use_prepared_data, progress and main_rank)
        if main_rank:  # left by a kill in the middle of a write; the files they were for are intact
            runs.sweep_temp_files(plan.run_dir, "lm")
        if plan.finished is not None:
            if main_rank and not (plan.run_dir / "report.html").is_file():  # killed while writing it
                try_write_report(plan.run_dir)
            return plan.finished
        cfg = plan.cfg
    elif cfg is None:
        raise ConfigError("train() needs a config or resume=RUN_DIR")
    cfg.validate()
    if plan is None and not claimed and not use_prepared_data:
        check_inputs(cfg.data.path, cfg.data.valid_path)  # before the run folder is claimed
    rt = init_runtime(cfg.runtime.device, cfg.runtime.threads, cfg.runtime.timeout_s)
    try:
        def open_folder() -> tuple[str, str]:
            if plan is not None:
                return str(plan.run_dir), _record_resume(plan, progress)
            path = Path(cfg.out) if claimed else runs.claim(cfg.out, "lm", overwrite=overwrite, quiet=not progress)
            return str(path), (runs.read_info(path) or {}).get("run_id")

        out, run_id = on_main(open_folder, rt)
        cfg.out = out
        changed = {name for name, _, _ in plan.changes} if plan else set()
        resume_steps = plan is not None and not plan.from_start
        with rank_logs(rt, Path(out)):
            result = _train(cfg, rt, Path(out), run_id, resume_steps, progress, on_eval, changed, init_state,
                            wrap_task)
    except BaseException as e:
        shutdown(rt)
        if rt.distributed and is_dist_failure(e):
            raise describe_dist_failure(e, rt) from None
        raise
    shutdown(rt, finished=True)
    return result


def _load_data(cfg: Config, resume: bool, quiet: bool):
    """The run's prepared data: as it is when resuming (never rebuilt), else built or reused."""
    if not resume:
        return prepare(cfg, quiet=quiet)
    data = load_prepared(cfg)
    last = ckpt.latest_checkpoint(Path(cfg.out))
    try:
        trained_on = ckpt.read_meta(last).get("tokenizer") if last else None
    except (OSError, ValueError):
        trained_on = None  # a damaged checkpoint: the loop skips it
    if trained_on is not None and trained_on != data.tokenizer.fingerprint():
        raise DataError(f"{cfg.out}/data holds another tokenizer than the one checkpoint {last} was trained with "
                        "(the prepared data was rebuilt); the run cannot continue. Start a new run.")
    return data


def _train(cfg: Config, rt: Runtime, run_dir: Path, run_id: str | None, resume: bool, progress: bool,
           on_eval=None, changed: set[str] = frozenset(), init_state: dict | None = None,
           wrap_task=None) -> TrainResult:
    if rt.is_main:
        if not resume:
            save_config(cfg, run_dir / "config.yaml")
        data = _load_data(cfg, resume, quiet=not progress)
    rt.barrier()
    if not rt.is_main:
        data = _load_data(cfg, resume, quiet=True)  # reuses what rank 0 built

    seed_everything(cfg.seed)
    examples_per_step = cfg.train.global_batch_tokens // cfg.model.context_len
    # Continued pretraining or fine-tuning (--init) takes the init run's shape (its vocabulary may have
    # more rows than its tokenizer has ids, as Qwen's does) and weights.
    vocab_size = check_init(cfg.model, cfg.init) if cfg.init else data.tokenizer.vocab_size
    layout, model = _build(cfg, rt, run_dir, resume, vocab_size, examples_per_step,
                           None if resume else init_state)
    micro_bs, accum = plan_batches(examples_per_step, cfg.train.micro_batch_size, rt.dp_size)
    task = LMTask(model, data.train, data.val, token_byte_lengths(data.tokenizer), examples_per_step,
                  cfg.seed, cfg.eval.max_tokens)
    if wrap_task is not None:
        task = wrap_task(task, rt)
    rt.precision, precision_why, compile_model, compile_why = _runtime_choices(cfg, rt, run_dir, resume, task, micro_bs,
                                                                                changed)
    if rt.is_main:
        save_shape(model, run_dir / "model.json")
    if rt.is_main and progress:
        _print_header(cfg, rt, model, layout, (micro_bs, accum), (precision_why, compile_model, compile_why))

    def save_best(weights: ckpt.WholeWeights) -> None:
        ckpt.save_weights(weights, run_dir / "model.safetensors", run_dir=run_dir)

    meta = {"task": "lm", "run_id": run_id, "tokens_per_step": cfg.train.global_batch_tokens,
            "tokenizer": data.tokenizer.fingerprint()}
    if rt.is_main:
        runs.update_info(run_dir, status="training")
    with ckpt.guard_writes(run_dir):
        result: FitResult = fit(task, cfg.train, cfg.optim, cfg.schedule, cfg.eval, rt, run_dir,
                                compile_model=compile_model, resume=resume, meta=meta, on_best=save_best,
                                progress=progress, on_eval=on_eval, layout=layout)
    if not result.last_metrics:  # resumed at its last step (killed after the final checkpoint): score it now
        model.eval()
        with torch.no_grad(), rt.autocast():
            result.last_metrics = task.evaluate(model, rt)
    sampler = _sampling_model(model, rt) if cfg.sample.num_samples and cfg.sample.max_new_tokens else None
    with ckpt.guard_writes(run_dir):
        samples = _finish(cfg, rt, run_dir, result, model, sampler, data, progress)
    m = result.last_metrics
    return TrainResult(
        run_dir=run_dir, steps=result.steps, val_loss=m.get("val_loss"), val_bpb=m.get("val_bpb"),
        best_val_loss=result.best_val_loss, tokens_per_s=result.tokens_per_s, wall_s=result.wall_s,
        stop_reason=result.stop_reason, params=model.num_params(non_embedding=False), samples=samples,
    )


def _build(cfg: Config, rt: Runtime, run_dir: Path, resume: bool, vocab_size: int, examples_per_step: int,
           init_state: dict | None = None):
    """Decide how the model is spread over the processes (see trainer.parallelize), then build it."""
    def make():
        return build_model(cfg.model, vocab_size, cfg.seed)

    parallelize.check_tensor_parallel(cfg.train.tensor_parallel, cfg.model, rt)
    micro_bs, _ = plan_batches(examples_per_step, cfg.train.micro_batch_size, rt.dp_size)
    layout = parallelize.choose_layout(cfg.train.parallel, cfg.train.tensor_parallel, cfg.train.activation_checkpointing,
                                       cfg.model, vocab_size, parallelize.count_parameters(make), micro_bs,
                                       cfg.optim.kind, rt)
    if layout.sharded and rt.device.type == "cuda":
        # FSDP's mixed precision (bf16 weights in compute, fp32 gradient reduction) is fixed when the
        # model is sharded, before the precision probe; on a GPU the choice needs no probe.
        saved = run_dir / "runtime.json"
        precision = (json.loads(saved.read_text(encoding="utf-8"))["precision"] if resume and saved.is_file()
                     else choose_precision(cfg.runtime.precision, rt.device, None)[0])
        if precision == "fp16":
            raise ConfigError("config field 'runtime.precision': fp16 (with loss scaling) is not supported for a sharded "
                              "model (train.parallel fsdp, tensor parallelism); use bf16 on a GPU that has it, or fp32")
        layout.param_dtype = torch.bfloat16 if precision == "bf16" else None
    model = parallelize.build_model(make, layout, rt)
    if cfg.init or init_state is not None:  # --init's run, or given weights (pruning's recovery)
        path, tensors = init_weights(model.cfg, cfg.init) if cfg.init else ("the given weights", init_state)
        if parallelize.is_sharded(model):
            parallelize.load_whole_weights(model, tensors, path)
        elif cfg.init:
            apply_init_weights(model, tensors, path)
        else:
            model.load_state_dict(tensors)
    return layout, model


def _print_header(cfg: Config, rt: Runtime, model, layout, batches: tuple[int, int], why: tuple) -> None:
    shape, (micro_bs, accum), (precision_why, compile_model, compile_why) = model.cfg, batches, why
    n_params = model.num_params(non_embedding=False)
    examples_per_step = cfg.train.global_batch_tokens // cfg.model.context_len
    tp = f" x {layout.tensor_parallel} tensor-parallel" if layout.tensor_parallel > 1 else ""
    print_summary(
        "model and training",
        [
            ("parameters", f"{n_params:,} ({model.num_params():,} non-embedding)"),
            ("shape", f"{shape.n_layer} layers x {shape.d_model} wide, {shape.n_head} heads "
                      f"({shape.n_kv_head} kv), context {shape.context_len}, vocab {model.vocab_size}"),
            ("FLOPs per token", f"{model.flops_per_token() / 1e6:,.1f} M (training, fwd+bwd)"),
            ("global batch", f"{examples_per_step} sequences = {cfg.train.global_batch_tokens:,} tokens; "
                             f"micro-batch {micro_bs} x {accum} accumulation x {rt.dp_size} processes{tp}"),
            ("parallel", layout.describe()),
            ("activation checkpointing", f"{'on' if layout.checkpointing else 'off'} ({layout.checkpointing_why})"),
            ("device / precision", f"{rt.device} / {rt.precision} ({precision_why})"),
            ("compile", f"{'on' if compile_model else 'off'} ({compile_why})"),
            ("schedule", f"{cfg.optim.kind}, {cfg.schedule.kind}, lr {cfg.optim.lr:g} -> {cfg.schedule.min_lr:g}, "
                         f"warm-up {cfg.schedule.warmup_steps}, {cfg.train.max_steps} steps"),
        ],
    )


def _sampling_model(model, rt: Runtime):
    """The model rank 0 samples from: the trained one, or, when it is sharded, a whole copy (gathered
    by every process) on rank 0's device."""
    if not parallelize.is_sharded(model):
        return model
    weights = parallelize.full_state(model)
    if not rt.is_main:
        return None
    whole = type(model).from_shape_dict(model.shape_dict())
    ckpt.apply_weights(whole, weights, Path("(the trained weights)"))
    return whole.to(rt.device)


def _finish(cfg: Config, rt: Runtime, run_dir: Path, result: FitResult, model, sampler, data,
            progress: bool) -> list[str]:
    """On rank 0: the loss plot, result.json, the summary, the samples; the run marked finished."""
    samples: list[str] = []
    if rt.is_main:
        plot_loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{run_dir.name}: loss")
        m = result.last_metrics
        atomic_write_json(run_dir / "result.json", {
            "steps": result.steps, "val_loss": m.get("val_loss"), "val_bpb": m.get("val_bpb"),
            "val_ppl": m.get("val_ppl"), "best_val_loss": result.best_val_loss,
            "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s, "stop_reason": result.stop_reason,
            "params": model.num_params(non_embedding=False),
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

            sampler.eval()
            for i in range(cfg.sample.num_samples):
                text = sample_text(sampler, data.tokenizer, cfg.sample.prompt, cfg.sample, seed=cfg.seed + i,
                                   device=rt.device, stream=None)
                samples.append(text)
                if progress:
                    console.rule(f"sample {i + 1}")
                    console.print(text, markup=False, highlight=False)
            atomic_write_json(run_dir / "samples.json", samples)
        last = ckpt.latest_checkpoint(run_dir)
        runs.update_info(run_dir, status="finished", steps=result.steps,
                         final_checkpoints=[str(last.relative_to(run_dir))] if last else [])
        try_write_report(run_dir)
    return samples


def result_json(result: TrainResult) -> str:
    d = asdict(result)
    d["run_dir"] = str(result.run_dir)
    return json.dumps(d)
