"""`lmforge plan` and `lmforge train --auto`: prepare, probe, plan, (train), all inside one time budget."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from lmforge.auto.choices import plan_optimizer
from lmforge.auto.hardware import probe_hardware
from lmforge.auto.hysteresis import PreviousPlan, load_previous, plan_inputs, read_plan, recall, remember
from lmforge.auto.inputs import DataFacts, PlanOptions
from lmforge.auto.plan import Plan, make_plan
from lmforge.auto.timer import LMStepTimer
from lmforge.config import Config, SampleConfig, from_dict, save_config, to_dict
from lmforge.errors import ConfigError
from lmforge.data.readers import check_inputs
from lmforge.runs import claim


def plan_run(
    cfg: Config,
    budget_s: float,
    *,
    t_start: float | None = None,
    fixed: set[str] | frozenset[str] = frozenset(),
    options: PlanOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Plan:
    """Prepare the data (reused by the training run), probe the machine, time shapes and plan.

    `t_start` (time.perf_counter() when the command started) is when the budget began; the time
    already spent counts against it. The plan is printed and saved as RUN/plan.json and plan.yaml.
    """
    import torch

    from lmforge.data.prepare import prepare
    from lmforge.console import console

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("automatic planning runs in one process; run `lmforge plan` first and launch its "
                          "plan.yaml with torchrun (`lmforge train --config RUN/plan.yaml`)")
    t_start = time.perf_counter() if t_start is None else t_start
    check_inputs(cfg.data.path, cfg.data.valid_path)  # a mistyped path leaves no run folder behind
    earlier_doc = read_plan(cfg.out)  # before claim: --overwrite removes the earlier plan
    # The plan, its prepared data and the run that follows share one run folder (see lmforge.runs).
    run_dir = claim(cfg.out, "lm", overwrite=overwrite, quiet=not progress)
    cfg = from_dict(Config, to_dict(cfg))
    cfg.out = str(run_dir)
    device = cfg.runtime.device if "runtime.device" in fixed else "auto"
    hw = probe_hardware(device)  # first: the tokenizer's vocabulary depends on the compute at hand
    t0 = time.perf_counter()
    corpus = corpus_identity(cfg)
    remembered = recall(plan_inputs(budget_s, hw.to_dict(), fixed, corpus))

    def earlier_plan(inputs: dict) -> PreviousPlan | None:
        """The run folder's earlier plan for these inputs, else the one this machine remembers."""
        return load_previous(run_dir, inputs, earlier_doc) or (
            load_previous(None, inputs, *remembered) if remembered[0] else None)

    earlier = earlier_plan(plan_inputs(budget_s, hw.to_dict(), fixed, corpus))
    cfg, tokenizer_row, tokenizer_close = plan_tokenizer(cfg, hw, budget_s, fixed, earlier)
    data = prepare(cfg, quiet=not progress)
    prepare_s = time.perf_counter() - t0
    facts = DataFacts.from_prepared(data)
    corpus.update(asdict(facts))
    previous = earlier_plan(plan_inputs(budget_s, hw.to_dict(), fixed, corpus))
    # A timing may take longer with a longer budget (bigger candidates), never a large share of it.
    timer = LMStepTimer(facts.vocab_size, hw.device, model=cfg.model, seed=cfg.seed, grad_clip=cfg.optim.grad_clip,
                        slow_s=max(0.25, budget_s / 400),
                        optimizer=plan_optimizer(cfg, fixed, options or PlanOptions())[0])

    def lr_finder(probe_cfg: Config) -> tuple[float, str]:
        from lmforge.auto.lr_finder import find_lr

        res = find_lr(probe_cfg, steps=60, lr_min=1e-5, lr_max=0.1, progress=False)
        return res.suggestion, (f"learning-rate range test ({len(res.lrs)} steps, {res.seconds:.0f}s): steepest "
                                f"fall of the loss; curve in lr_find.png")

    spent = time.perf_counter() - t_start
    plan = make_plan(cfg, facts, hw, budget_s, timer, spent_s=spent, fixed=set(fixed), options=options,
                     lr_finder=lr_finder, set_threads=torch.set_num_threads,
                     spent_detail={"prepare": prepare_s, "hardware_probe": hw.probe_s,
                                   "start_up": max(0.0, spent - prepare_s - hw.probe_s)}, previous=previous)
    timer.release()
    plan.inputs["corpus"] = corpus
    if tokenizer_row is not None:
        plan.rows.insert(2, tokenizer_row)
    if tokenizer_close is not None:
        plan.close_calls.insert(0, tokenizer_close)
    plan.save(run_dir)
    remember(plan.to_dict())
    if progress:
        console.print(plan.table())
        console.print(plan.candidates_table())
        for line in plan.close_call_lines():
            console.print(line, markup=False, highlight=False)
        console.print(f"plan saved in {run_dir / 'plan.json'}; its config in {run_dir / 'plan.yaml'}")
    return plan


def corpus_identity(cfg: Config) -> dict:
    """The corpus as a plan's inputs name it before it is prepared: its path and size."""
    if not cfg.data.path:
        return {"path": None, "bytes": 0}
    from lmforge.data.readers import find_files

    # Resolved: the same corpus named from another folder is the same input to the machine's memory.
    return {"path": str(Path(cfg.data.path).resolve()),
            "bytes": sum(f.stat().st_size for f in find_files(cfg.data.path))}


def plan_tokenizer(cfg: Config, hw, budget_s: float, fixed,
                   earlier: PreviousPlan | None = None) -> tuple[Config, tuple | None, dict | None]:
    """The tokenizer for the corpus and the compute at hand (unless the user chose one): the config
    with it, its plan row, and a close call when the compute was near the vocabulary threshold (where
    an earlier plan for the same inputs keeps its tokenizer)."""
    if "tokenizer.kind" in fixed or not cfg.data.path:
        return cfg, None, None
    from lmforge.auto.corpus import choose_tokenizer, sample_corpus, tokenizer_close_call

    sample, total = sample_corpus(cfg.data.path, cfg.data.text_field, encoding=cfg.data.encoding)
    peak_tflops = max(hw.bf16_tflops if hw.fast_bf16 else 0.0, hw.fp32_tflops)
    kind, vocab, why = choose_tokenizer(sample, total, cfg.tokenizer.cjk_split, budget_s * peak_tflops)
    close = None
    if "tokenizer.vocab_size" not in fixed:
        close = tokenizer_close_call(sample, total, cfg.tokenizer.cjk_split, budget_s, peak_tflops)
    if close is not None and earlier is not None and earlier.tokenizer != (kind, vocab):
        kind, vocab = earlier.tokenizer
        why += f"; near the threshold: kept {kind} {vocab or ''}, as the earlier plan for the same inputs"
        close["over"], close["chose"] = close["chose"], _tok(kind, vocab)
        close["measurement"] += "; kept the earlier plan's tokenizer"
    cfg = from_dict(Config, to_dict(cfg))
    cfg.tokenizer.kind = kind
    if kind == "bpe" and "tokenizer.vocab_size" not in fixed:
        cfg.tokenizer.vocab_size = vocab
    row = ("tokenizer", f"{kind}" + (f", {cfg.tokenizer.vocab_size:,} tokens" if kind == "bpe" else ""), why)
    return cfg, row, close


def _tok(kind: str, vocab: int) -> str:
    return f"bpe {vocab}" if kind == "bpe" else kind


def with_time_budget(cfg: Config, seconds: float) -> Config:
    """A copy of `cfg` whose training stops after `seconds`."""
    cfg = from_dict(Config, to_dict(cfg))
    cfg.train.time_budget_s = round(max(1.0, seconds), 1)
    return cfg


def auto_train(
    cfg: Config,
    budget_s: float,
    *,
    t_start: float | None = None,
    fixed: set[str] | frozenset[str] = frozenset(),
    options: PlanOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
):
    """Plan, then train the plan so that the whole command ends within `budget_s`."""
    from lmforge.atomic import atomic_write_json
    from lmforge.lm.pretrain import train

    t_start = time.perf_counter() if t_start is None else t_start
    plan = plan_run(cfg, budget_s, t_start=t_start, fixed=fixed, options=options, progress=progress,
                    overwrite=overwrite)
    # The training budget, recomputed now that planning is over: what is left, less the save and
    # samples, the safety margin and about a second to build the model. (The loop keeps time for
    # its final evaluation itself.)
    left = t_start + budget_s - time.perf_counter()
    fit_budget = left - plan.final_reserve_s - plan.time.get("safety", 0.0) - 1.0
    if fit_budget < 2:
        raise ConfigError(f"planning left only {left:.0f}s of the {budget_s:.0f}s budget; give more time")
    run_cfg = with_time_budget(plan.config, fit_budget)
    samples = run_cfg.sample
    run_cfg.sample = replace(samples, num_samples=0)  # generated below, in the time left
    result = train(run_cfg, progress=progress)
    run_cfg.sample = samples
    save_config(run_cfg, Path(run_cfg.out) / "config.yaml")
    deadline = t_start + budget_s - 1.0  # the process still has to exit
    if samples.num_samples and samples.max_new_tokens:
        result.samples = samples_until(Path(run_cfg.out), samples, run_cfg.seed, deadline, run_cfg.runtime.device,
                                       progress)
    wall = time.perf_counter() - t_start
    outcome = {"budget_s": budget_s, "wall_s_so_far": round(wall, 2), "train_budget_s": run_cfg.train.time_budget_s,
               "steps": result.steps, "val_loss": result.val_loss, "val_bpb": result.val_bpb,
               "stop_reason": result.stop_reason, "deviation": round((wall - budget_s) / budget_s, 4)}
    d = plan.to_dict()
    d["outcome"] = outcome
    atomic_write_json(Path(run_cfg.out) / "plan.json", d)
    from lmforge.report.card import try_write_report

    try_write_report(run_cfg.out)  # again, now with the plan's outcome and the samples
    return result


class _TimeUp(Exception):
    pass


def samples_until(run_dir: Path, cfg: SampleConfig, seed: int, deadline: float, device: str = "auto",
                  progress: bool = True) -> list[str]:
    """The run's samples, generated while time is left before `deadline` (a sample is cut short at it)."""
    import torch

    from lmforge.lm.model import load_run_model
    from lmforge.lm.sample import generate_ids
    from lmforge.atomic import atomic_write_json
    from lmforge.console import console

    if time.perf_counter() > deadline - 0.5:
        return []
    dev = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    model, tok, _ = load_run_model(run_dir, dev)
    texts: list[str] = []
    for i in range(cfg.num_samples):
        if time.perf_counter() > deadline - 0.5:
            break
        ids: list[int] = []

        def on_token(token: int) -> None:
            ids.append(token)
            if time.perf_counter() > deadline:
                raise _TimeUp

        try:
            generate_ids(model, tok.encode(cfg.prompt) if cfg.prompt else [], cfg.max_new_tokens, cfg.temperature,
                         cfg.top_k, cfg.top_p, seed=seed + i, device=dev, stop_id=tok.eot_id, on_token=on_token)
        except _TimeUp:
            pass
        texts.append(cfg.prompt + tok.decode(ids))
        if progress:
            console.rule(f"sample {i + 1}")
            console.print(texts[-1], markup=False, highlight=False)
    atomic_write_json(run_dir / "samples.json", texts)
    return texts
