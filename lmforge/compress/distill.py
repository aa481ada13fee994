"""`lmforge distill --teacher RUN --out RUN_S`: train a smaller student on a teacher's outputs.

Language models: loss = alpha * T^2 * KL(teacher || student, both softened by temperature T)
+ (1 - alpha) * cross-entropy on the data, with the teacher's logits computed on the fly inside the
one training loop (a task wrapped around the LM task), so the student run has the same
checkpoints, resume (`lmforge distill --resume RUN_S`) and DDP as `train`. T^2 keeps the KL
term's gradients at the scale of the cross-entropy's as T changes (Hinton et al. 2015).
Why not cached top-k logits: training windows start at random offsets drawn per step, so the
teacher's logits at a position depend on a context that is rarely seen twice; a cache would
hold as many teacher forward passes as the run computes on the fly, written to disk besides.

Classifiers: the teacher is any classifier run (the default ensemble included); a fastText-style
or BiLSTM student learns from its class probabilities (soft targets, at temperature T), on the
labeled training texts and optionally on extra unlabeled ones (`--unlabeled FILE`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmforge import runs
from lmforge.atomic import atomic_write_json
from lmforge.compress.prune import non_embedding_params
from lmforge.compress.quantize import run_kind
from lmforge.compress.report import Row, claim_output, classifier_params, file_mb, link_or_copy, lm_row, \
    predictions_per_s, save_and_print
from lmforge.config import Config, ModelConfig, default_d_ff, from_dict, set_dotted, to_dict
from lmforge.errors import ConfigError, DataError


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over positions of KL(softmax(teacher/T) || softmax(student/T)); logits (..., V)."""
    V = student_logits.size(-1)
    s = F.log_softmax(student_logits.float().reshape(-1, V) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, V) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


class DistillTask:
    """The LM task with the teacher's KL term added to its loss; batches and evaluation are the LM task's."""

    def __init__(self, inner, teacher: torch.nn.Module, alpha: float, temperature: float):
        self.inner, self.teacher, self.alpha, self.temperature = inner, teacher, alpha, temperature
        self.teacher.eval().requires_grad_(False)

    def __getattr__(self, name):  # model, examples_per_step, tokens_per_example, micro_batch, evaluate
        return getattr(self.inner, name)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)  # (B, T, V): the KL term needs the student's whole distribution
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        if self.alpha == 0:
            return ce
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        kl = distill_kl(logits, teacher_logits, self.temperature)
        return self.alpha * kl + (1 - self.alpha) * ce if self.alpha < 1 else kl


def half_shape(cfg: ModelConfig) -> ModelConfig:
    """The student of about half the teacher's non-embedding parameters: the teacher's head width and
    MLP ratio, fewer layers and/or a narrower stream (the closest count; ties keep more layers)."""
    s = cfg.resolved()
    target = non_embedding_params(s) / 2
    group = s.n_head // s.n_kv_head
    ratio = s.d_ff / s.d_model
    best = None
    for n_layer in range(1, s.n_layer + 1):
        for n_head in range(group, s.n_head + 1, group):
            d = n_head * s.head_dim
            d_ff = max(1, round(ratio * d))
            c = dataclasses.replace(s, n_layer=n_layer, n_head=n_head, n_kv_head=n_head // group, d_model=d,
                                    d_ff=d_ff, head_dim=0 if cfg.head_dim == 0 else s.head_dim)
            key = (abs(non_embedding_params(c) - target), -n_layer)
            if best is None or key < best[0]:
                best = (key, c)
    c = best[1]
    if best[0][0] > 0.05 * target:
        # No depth and width come close (e.g. grouped heads allow few widths): the MLP width makes up the rest.
        per_channel = c.n_layer * c.d_model * (3 if c.mlp == "swiglu" else 2)
        d_ff = c.d_ff + round((target - non_embedding_params(c)) / per_channel)
        c = dataclasses.replace(c, d_ff=max(8, 8 * round(d_ff / 8)))
    if cfg.d_ff == 0 and c.d_ff == default_d_ff(c.d_model, c.mlp):
        c = dataclasses.replace(c, d_ff=0)
    return c


def distill(teacher: str | None, out: str | None, resume: str | None = None, auto: bool = False,
            time_s: float = 0.0, alpha: float = 0.5, temperature: float | None = None, overrides: dict | None = None,
            config_file: str | None = None, student_kind: str = "fasttext", unlabeled: list[str] | None = None,
            progress: bool = True, overwrite: bool = False) -> dict:
    """Distill `teacher` (a run folder) into a new student run `out`; returns the report.

    `temperature` defaults to 2 for language models (their next-token distributions are peaked) and 1
    for classifiers (an ensemble's averaged probabilities are soft already)."""
    if resume:
        return _resume_lm(Path(resume), dict(overrides or {}, **({"train.time_budget_s": time_s} if time_s else {})),
                          progress)
    if not teacher:
        raise ConfigError("distill needs --teacher RUN (or --resume RUN_S)")
    classifier = run_kind(Path(teacher)) == "classify"
    temperature = (1.0 if classifier else 2.0) if temperature is None else temperature
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha {alpha}: give the KL term's weight, in [0, 1]")
    if not temperature > 0:
        raise ConfigError(f"--temperature {temperature}: must be > 0")
    if config_file:
        raise ConfigError("distill takes the teacher's settings; change single fields with --section.field")
    if classifier:
        return distill_classifier(Path(teacher), out, student_kind, alpha, temperature, time_s,
                                  unlabeled or [], overrides or {}, progress, overwrite)
    if unlabeled:
        raise ConfigError("--unlabeled is for classifier teachers; a language model learns from its training text")
    return distill_lm(Path(teacher), out, auto, time_s, alpha, temperature, overrides or {}, progress, overwrite)


def student_config(teacher_cfg: Config, out: str | Path | None, auto: bool, time_s: float, overrides: dict) -> Config:
    """The teacher's config with the student's shape (--model.* or --auto) and any other overrides."""
    fixed = [k for k in overrides if k.split(".")[0] in ("data", "clean", "tokenizer", "seed")]
    if fixed:
        raise ConfigError(f"--{fixed[0]}: the student reads the teacher's prepared data and tokenizer; "
                          "data, cleaning and tokenizer settings cannot change")
    if "init" in overrides:
        raise ConfigError("--init: a student starts from fresh weights; distill from the model you would start from")
    shape = {k: v for k, v in overrides.items() if k.startswith("model.")}
    if not shape and not auto:
        raise ConfigError("give the student's shape (--model.n_layer, --model.d_model, ...) or --auto")
    tree = to_dict(teacher_cfg)
    if auto:
        tree["model"] = to_dict(half_shape(teacher_cfg.model))
    elif "model.head_dim" not in shape:
        tree["model"]["head_dim"] = 0  # a new width takes its heads' width from d_model / n_head
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    tree["out"] = str(out or "")
    tree["init"] = None  # the student starts fresh (a teacher trained from an imported model named one)
    cfg = from_dict(Config, tree)
    if time_s:
        cfg.train.time_budget_s = time_s
        # The budget decides the length: the step count only bounds it.
        cfg.train.max_steps = max(cfg.train.max_steps * 10, 100_000)
    if cfg.runtime.compile == "auto":
        # The step count is only a bound here, so decide compilation by the time: a first compile
        # takes about 35 s on a 2-core CPU, which a budget of a few minutes does not repay.
        cfg.runtime.compile = "on" if (time_s or cfg.train.time_budget_s) >= 600 else "off"
    cfg.sample.num_samples = min(cfg.sample.num_samples, 1)
    return cfg.validate()


def _link_data(teacher: Path, out: Path) -> None:
    for name in ("tokenizer.json", "train.bin", "train.json", "val.bin", "val.json", "prepare.json"):
        if (teacher / "data" / name).is_file():
            link_or_copy(teacher / "data" / name, out / "data" / name)


def _load_teacher(run: Path):
    from lmforge.lm.model import load_run_model

    model, tok, info = load_run_model(run)
    if info["quant"] is not None:
        raise ConfigError(f"{run} is quantized; distill from the run it was quantized from")
    return model, tok, info


def distill_lm(teacher: Path, out: str | Path | None, auto: bool, time_s: float, alpha: float, temperature: float,
               overrides: dict, progress: bool, overwrite: bool = False) -> dict:
    from lmforge.config import save_config
    from lmforge.lm.pretrain import load_run_config, train

    t_model, _, _ = _load_teacher(teacher)
    cfg = student_config(load_run_config(teacher), out, auto, time_s, overrides)
    out = claim_output(out, "lm", teacher, "distill", overwrite, progress)
    cfg.out = str(out)
    _link_data(teacher, out)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / "distill.json", {"teacher": str(teacher.resolve()), "alpha": alpha,
                                             "temperature": temperature})
    train(cfg, progress=progress, claimed=True, wrap_task=_wrapper(t_model, alpha, temperature))
    return _lm_report(teacher, out, alpha, temperature, progress)


def _wrapper(t_model: torch.nn.Module, alpha: float, temperature: float):
    def wrap(task, rt):
        return DistillTask(task, copy.deepcopy(t_model).to(rt.device), alpha, temperature)
    return wrap


def _resume_lm(run: Path, overrides: dict, progress: bool) -> dict:
    """Continue a distillation; `overrides` are the settings a resumed run may change (more steps or
    time, a new learning-rate tail; see lmforge.lm.pretrain.RESUMABLE), others are refused there."""
    from lmforge.lm.pretrain import load_run_config, train

    path = run / "distill.json"
    if not path.is_file():
        raise DataError(f"{run} is not a distillation run (no distill.json); resume it with `lmforge train --resume`")
    d = json.loads(path.read_text(encoding="utf-8"))
    t_model, _, _ = _load_teacher(Path(d["teacher"]))
    cfg = None
    if overrides:
        tree = to_dict(load_run_config(run))
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        cfg = from_dict(Config, tree)
    train(cfg, resume=run, progress=progress, wrap_task=_wrapper(t_model, d["alpha"], d["temperature"]))
    return _lm_report(Path(d["teacher"]), run, d["alpha"], d["temperature"], progress)


def _lm_report(teacher: Path, out: Path, alpha: float, temperature: float, progress: bool) -> dict:
    from lmforge.data.tokens import TokenFile
    from lmforge.lm.model import load_run_model
    from lmforge.lm.task import token_byte_lengths

    t_model, tok, t_info = load_run_model(teacher)
    s_model, _, s_info = load_run_model(out)
    val = TokenFile(out / "data" / "val.bin").tokens
    lengths = token_byte_lengths(tok)
    rows = [lm_row("teacher", t_model, Path(t_info["weights"]), val, lengths, 65536,
                   t_model.num_params(non_embedding=False)),
            lm_row("student (distilled)", s_model, Path(s_info["weights"]), val, lengths, 65536,
                   s_model.num_params(non_embedding=False))]
    result = json.loads((out / "result.json").read_text(encoding="utf-8")) if (out / "result.json").is_file() else {}
    facts = {"teacher": str(teacher), "alpha": alpha, "temperature": temperature,
             "teacher_non_embedding": non_embedding_params(t_model.cfg),
             "student_non_embedding": non_embedding_params(s_model.cfg),
             "student_train_s": result.get("wall_s"), "student_steps": result.get("steps"),
             "teacher_logits": "computed on the fly"}
    return save_and_print(out, "distill", "lm", rows, facts, progress)


# --- classifiers --------------------------------------------------------------------------------


class SoftTargetTask:
    """The classification task with the teacher's probabilities as targets.

    The inner task's "labels" are row numbers, so each micro-batch can fetch its rows' teacher
    probabilities and true labels (-1 for unlabeled texts, which get the KL term only)."""

    def __init__(self, inner, teacher_probs: np.ndarray, labels: np.ndarray, alpha: float, temperature: float):
        self.inner, self.alpha, self.temperature = inner, alpha, temperature
        p = torch.from_numpy(teacher_probs).float().clamp_min(1e-8)
        self.soft = torch.softmax(p.log() / temperature, dim=-1)  # the teacher's probabilities at T
        self.labels = torch.from_numpy(labels).long()

    def __getattr__(self, name):  # model, examples_per_step, lengths, epoch_batches, evaluate, ...
        return getattr(self.inner, name)

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        ids, lengths, rows = batch
        rows = rows.cpu()
        logits = model(ids, lengths).float()
        soft = self.soft[rows].to(logits.device)
        kl = F.kl_div(F.log_softmax(logits / self.temperature, -1), soft, reduction="batchmean") * self.temperature**2
        y = self.labels[rows].to(logits.device)
        if self.alpha >= 1 or not bool((y >= 0).any()):
            return kl
        ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
        ce = (ce * (y >= 0)).sum() / (y >= 0).sum()
        return self.alpha * kl + (1 - self.alpha) * ce


def _classifier_config(tcfg, out: str | Path | None, kind: str, time_s: float, overrides: dict):
    from lmforge.classify.config import ClassifyConfig

    tree = to_dict(tcfg)
    tree["model"]["kind"] = kind
    tree["model"]["members"] = kind
    tree["data"]["oversample"] = False  # the task's labels are row numbers: resampling is done by the teacher
    tree["data"]["class_weights"] = False
    tree["out"] = str(out or "")
    if kind == "fasttext" and tree["text"]["language"] == "zh":
        # Measured on ChnSentiCorp: a character n-gram student matched the ensemble's accuracy at 34x its
        # speed, a jieba word student lost 0.13 points at 6x (segmenting is most of its time).
        tree["text"]["tokenizer"] = "char"
    for key, value in overrides.items():
        set_dotted(tree, key, value, ClassifyConfig)
    cfg = from_dict(ClassifyConfig, tree)
    if time_s:
        cfg.train.time_budget_s = time_s
    return cfg.validate()


def distill_classifier(teacher: Path, out: str | Path | None, kind: str, alpha: float, temperature: float,
                       time_s: float, unlabeled: list[str], overrides: dict, progress: bool,
                       overwrite: bool = False) -> dict:
    import time

    from lmforge.classify.data import stratified_split
    from lmforge.classify.members import train_neural
    from lmforge.classify.run import Classifier, _read, _say
    from lmforge.config import save_config
    from lmforge.trainer.runtime import init_runtime, shutdown

    t0 = time.perf_counter()
    clf = Classifier(teacher)
    cfg = _classifier_config(clf.cfg, out, kind, time_s, overrides)
    train, valid, test, labels = _read(cfg)
    y = clf.labels.encode(train)
    if valid is None:
        fit_idx, val_idx = stratified_split(y, max(cfg.data.val_fraction, 0.05), cfg.seed)
        fit_texts, fit_y = [train.texts[i] for i in fit_idx], y[fit_idx]
        val_texts, val_y = [train.texts[i] for i in val_idx], y[val_idx]
    else:
        fit_texts, fit_y, val_texts, val_y = train.texts, y, valid.texts, clf.labels.encode(valid)
    from lmforge.classify.data import read_unlabeled

    extra = read_unlabeled(unlabeled, cfg.data.text_field)
    texts = list(fit_texts) + extra
    hard = np.concatenate([fit_y, -np.ones(len(extra), dtype=np.int64)])
    t_label = time.perf_counter()
    probs = clf.predict_proba(texts)
    teacher_label_s = time.perf_counter() - t_label
    out = claim_output(out, "classify", teacher, "distill", overwrite, progress)
    cfg.out = str(out)
    rt = init_runtime(cfg.runtime.device, cfg.runtime.threads)
    try:
        save_config(cfg, out / "config.yaml")
        labels.save(out / "labels.json")
        train_neural(kind, cfg, texts, np.arange(len(texts)), val_texts, val_y, len(labels), out / kind, rt,
                     False, progress, _say(progress, rt), run_id=(runs.read_info(out) or {}).get("run_id"),
                     wrap_task=lambda task: SoftTargetTask(task, probs, hard, alpha, temperature))
    finally:
        shutdown(rt, finished=True)
    atomic_write_json(out / "ensemble.json", {"members": [kind], "kinds": [kind], "weights": [1.0]})
    atomic_write_json(out / "distill.json", {"teacher": str(teacher.resolve()), "alpha": alpha,
                                             "temperature": temperature, "unlabeled": unlabeled,
                                             "texts": len(texts)})
    runs.update_info(out, status="finished")
    facts = {"teacher": str(teacher), "student": kind, "alpha": alpha, "temperature": temperature,
             "unlabeled_texts": len(extra), "teacher_labelling_s": round(teacher_label_s, 2),
             "student_total_s": round(time.perf_counter() - t0, 2)}
    scored = test if test is not None else valid
    if scored is not None:
        texts_y = (scored.texts, clf.labels.encode(scored))
        facts["scored_on"] = "test" if test is not None else "validation file"
    else:
        texts_y = (val_texts, val_y)
        facts["scored_on"] = "held-out validation part of the training data"
    return classifier_report(clf, Classifier(out), teacher, out, texts_y, facts, progress)


def classifier_report(teacher, student, t_dir: Path, s_dir: Path, texts_y, facts: dict, progress: bool,
                      method: str = "distill") -> dict:
    texts, y = texts_y
    rows = []
    for name, c, folder in (("teacher", teacher, t_dir), (f"student ({method})", student, s_dir)):
        row = Row(name, classifier_params(c), file_mb(folder))
        row.speed_b1 = predictions_per_s(c.predict_proba, list(texts[:2000]))
        row.quality = float(np.mean(c.predict_proba(list(texts)).argmax(1) == y))
        rows.append(row)
    return save_and_print(s_dir, method, "classify", rows, facts, progress)
