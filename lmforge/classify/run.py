"""Train, evaluate and apply text classifiers: `train_classifier(cfg)`, `evaluate_run(run, data)`,
`predict_run(run, input, output)`. The CLI only parses arguments and calls these.

A run folder:
    config.yaml          the resolved configuration ('auto' choices filled in)
    labels.json          class names in class-id order
    ensemble.json        members and their weights in the averaged probabilities
    <member>/            one folder per model (linear/, fasttext/, bilstm/, ...): weights, vocabulary,
                         and for neural models the loop's checkpoints and metrics.jsonl
    metrics.json         validation and test metrics (cv.json too with eval.folds)
    self_train/round_N/  with self_train.rounds: each round's pseudo-labels (pseudo.jsonl) and facts
    confusion_test.png   (or confusion_valid.png) the confusion matrix
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lmforge import runs
from lmforge.atomic import atomic_write_json, atomic_write_text
from lmforge.classify.augment import Units, augment_texts, check_vectors
from lmforge.classify.config import NEURAL_KINDS, ClassifyConfig
from lmforge.classify.data import (Labeled, LabelMap, contamination, kfold_splits, label_distribution, read_labeled,
                                   skew_message, stratified_split)
from lmforge.classify.members import load_member, train_linear, train_neural, train_vectors
from lmforge.classify.plan import MIN_SLOT_S, BudgetClock, ClassifyPlan, plan_budget, scoring_reserve_s
from lmforge.classify.stacking import combine, out_of_fold, tune_weights
from lmforge.classify.text import detect_language
from lmforge.config import from_dict, read_run_config, save_config, to_dict
from lmforge.data.prepare import file_signature, signature_changes
from lmforge.data.readers import check_inputs
from lmforge.errors import ConfigError, DataError
from lmforge.classify.metrics import (check_threshold, classification_metrics, confusion_table, flat_metrics, format_metrics,
                                      predict_labels, save_confusion_png, summarize_folds)
from lmforge.trainer import checkpoint as ckpt
from lmforge.trainer.runtime import Runtime, init_runtime, on_main, shutdown
from lmforge.trainer.tracking import log_final
from lmforge.report.card import save_eval_details, try_write_report
from lmforge.console import console, print_summary, say, warn

# What 'auto' picks, measured with benchmarks/classify.py on a 2-core CPU: a linear model and a
# fastText-style bag always (IMDB 92.4% test in about 3 minutes; a BiLSTM added only 0.05%), plus
# a BiLSTM on vectors computed from the training texts when the data is small enough for it to
# train in a few minutes (tokens x epochs below this), where it adds the most (SST-2, ChnSentiCorp).
AUTO_MEMBERS = "linear,fasttext"
AUTO_BILSTM_MAX_TOKENS = 4_000_000
# stacking='auto' is out-of-fold below this many tokens x epochs: the k more trainings of each
# neural member then add a few minutes on a 2-core CPU (a 5,000-text SST-2 sample: about twice
# the time of the members alone), not the half hour they would on ChnSentiCorp's 6,000 reviews.
AUTO_OOF_MAX_TOKENS = 400_000

# Settings a resumed run may change (honoured for the remaining steps and recorded in run.json):
# more epochs, steps or time, a new learning-rate tail, intervals, the test set, device and threads.
RESUMABLE = ("train.epochs", "train.max_steps", "train.time_budget_s", "train.log_interval", "train.save_interval",
             "train.keep_checkpoints", "train.micro_batch_size", "eval.interval", "eval.patience", "eval.threshold",
             "data.test_path", "schedule.*", "optim.lr", "model.*.lr", "runtime.device", "runtime.threads",
             "runtime.compile")
KEPT_ON_RESUME = "training and validation data, classes, text processing, models, seed, optimizer kind and batch"


def estimate_tokens(texts: list[str], language: str) -> int:
    """Rough word count: spaces for English, characters / 1.6 (jieba's mean word length) for Chinese."""
    if language == "zh":
        return int(sum(len(t) for t in texts) / 1.6)
    return sum(len(t.split()) for t in texts)


def check_unlabeled_use(cfg: ClassifyConfig, kinds: list[str] | None = None) -> bool:
    """Refuse self-training and unlabeled text that this run would not use (ConfigError, naming the field).

    `kinds`: the members; None before 'auto' has chosen them (without a budget it never chooses gpt;
    with one, the --time plan does). True when the unlabeled text may go unused only because the
    plan leaves no time for the gpt member: a note in the plan, not an error. Run before the run
    folder is claimed, and again once 'auto' is resolved.
    """
    st, g = cfg.self_train, cfg.model.gpt
    planned = cfg.train.run_budget_s > 0
    unlabeled = cfg.data.unlabeled or g.unlabeled  # its former place, until plan_run moves it
    if st.rounds and not unlabeled:
        raise ConfigError("config field 'self_train.rounds': self-training labels unlabeled texts; give them with "
                          "--unlabeled FILE (data.unlabeled)")
    if st.rounds and cfg.eval.folds:
        raise ConfigError("config field 'self_train.rounds': k-fold cross-validation (eval.folds) does not self-train "
                          "its fold models yet, so it would not measure this run; drop one of them")
    if st.rounds and planned:
        raise ConfigError("config field 'self_train.rounds': self-training is not planned within a --time budget yet; "
                          "drop one of them")
    if not unlabeled or st.rounds:
        return False
    if kinds is None:
        if cfg.model.kind == "auto":
            if planned:
                return False  # the plan may add the gpt member
            kinds = AUTO_MEMBERS.split(",") + ["bilstm (on small data)"]
        else:
            kinds = cfg.model.member_kinds()
    if "gpt" in kinds and g.pretrains():
        return False
    if planned and "gpt" not in kinds:
        return True
    why = ("the gpt model is pretrained only when model.gpt.run is not given, or with model.gpt.pretrain on"
           if "gpt" in kinds else
           f"the members are {', '.join(kinds)} (add gpt, or give --time for the plan to add it when the budget "
           "allows)")
    raise ConfigError("config field 'data.unlabeled': unlabeled text is read by self-training (--self_train.rounds N) "
                      f"and by the gpt model's in-domain pretraining; self-training is off, and {why}")


@dataclass
class ClassifyResult:
    run_dir: Path
    valid: dict | None
    test: dict | None
    cv: dict | None = None
    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    train_s: float = 0.0
    member_facts: dict = field(default_factory=dict)
    language: str = "en"
    stacking: dict = field(default_factory=dict)


# --- configuration ----------------------------------------------------------------------------


def resolve_auto(cfg: ClassifyConfig, texts: list[str], elapsed_s: float = 0.0) -> ClassifyConfig:
    """Fill in every 'auto' choice from the training texts; the result is what config.yaml records."""
    return plan_run(cfg, texts, elapsed_s)[0]


def plan_run(cfg: ClassifyConfig, texts: list[str], elapsed_s: float = 0.0) -> tuple[ClassifyConfig,
                                                                                      ClassifyPlan | None]:
    """resolve_auto, and the budget plan when train.run_budget_s is set (`elapsed_s` of it spent)."""
    cfg = copy.deepcopy(cfg)
    if cfg.text.language == "auto":
        cfg.text.language = detect_language(texts)
    zh = cfg.text.language == "zh"
    if cfg.text.tokenizer == "auto":
        # Measured on ChnSentiCorp: jieba words match characters for the n-gram bag and beat them
        # for the BiLSTM (89.7% against 85.6%); the linear model uses both anyway.
        cfg.text.tokenizer = "word"
    if cfg.model.gpt.unlabeled:  # its former place, in run folders written before data.unlabeled
        cfg.data.unlabeled = ",".join(p for p in (cfg.data.unlabeled, cfg.model.gpt.unlabeled) if p)
        cfg.model.gpt.unlabeled = ""
    tokens = estimate_tokens(texts, cfg.text.language)
    choose_members = cfg.model.kind == "auto"
    plan = None
    if cfg.train.run_budget_s > 0:
        m = cfg.model
        # Pretrained on the training texts alone, the in-domain GPT was measured to get weight 0 (README,
        # SST-2 sample); with much more unlabeled text it helped. So 'auto' considers it only then.
        consider_gpt = m.gpt.pretrain == "on" or (m.gpt.pretrain == "auto" and bool(cfg.data.unlabeled))
        plan = plan_budget(cfg.train.run_budget_s, elapsed_s, tokens, choose_members, m.members,
                           m.stacking == "auto", m.stacking, m.stack_folds, consider_gpt, cfg.train.epochs)
        if choose_members and not consider_gpt and m.gpt.pretrain == "auto":
            plan.rows.insert(2, ("in-domain gpt", "not considered without --unlabeled text (from the training texts "
                                                  "alone it was measured not to help); --model.gpt.pretrain on "
                                                  "considers it anyway"))
        if choose_members:
            m.kind, m.members = "ensemble", plan.members
        if plan.pretrain_s and m.gpt.pretrains():
            m.gpt.pretrain_time_s = min(m.gpt.pretrain_time_s or plan.pretrain_s, plan.pretrain_s)
        m.stacking, m.stack_folds = plan.stacking, plan.folds
        cfg.train.epochs = plan.epochs  # each neural model ends at these epochs or its time, the first reached
    elif choose_members:
        cfg.model.kind = "ensemble"
        cfg.model.members = AUTO_MEMBERS
        if tokens * max(cfg.train.epochs, 1) <= AUTO_BILSTM_MAX_TOKENS:
            cfg.model.members += ",bilstm"
    if choose_members and "bilstm" in cfg.model.member_kinds() and not cfg.text.vectors:
        cfg.text.vectors = "train"
    if cfg.model.stacking == "auto":
        small = tokens * max(cfg.train.epochs, 1) <= AUTO_OOF_MAX_TOKENS
        cfg.model.stacking = "oof" if small else "split"
    if len(cfg.model.member_kinds()) == 1:
        cfg.model.stacking = "split"  # one model: nothing to weigh
    g = cfg.model.gpt
    if g.lr == 0:
        g.lr = 1e-3 if g.pretrains() and not g.run else 1e-4
    if check_unlabeled_use(cfg, cfg.model.member_kinds()):
        plan.rows.append(("unlabeled text", "the run budget leaves no time for the in-domain gpt model; --unlabeled is "
                                            "not used"))
    lin = cfg.model.linear
    if lin.features == "auto":
        lin.features = "tfidf" if zh else "nb"
    if lin.ngrams < 0:
        lin.ngrams = 2 if zh else 3
    if lin.char_ngrams < 0:
        lin.char_ngrams = 3 if zh else 0
    if lin.ngrams == 0 and lin.char_ngrams == 0:
        raise ConfigError("config fields 'model.linear.ngrams' and 'model.linear.char_ngrams' are both 0: "
                          "the linear model needs word or character n-grams")
    if cfg.text.tokenizer == "bpe" and not cfg.text.bpe_path and "gpt" not in cfg.model.member_kinds():
        raise ConfigError("config field 'text.bpe_path': tokenizer 'bpe' needs a tokenizer.json or an lmforge run folder")
    return cfg.validate(), plan


def load_run_config(run_dir: Path) -> ClassifyConfig:
    tree = read_run_config(run_dir, "classify")
    return from_dict(ClassifyConfig, tree, source=str(Path(run_dir) / "config.yaml")).validate()


# --- training ---------------------------------------------------------------------------------


def _say(progress: bool, rt: Runtime | None = None):
    def log(msg: str) -> None:
        if progress and (rt is None or rt.is_main):
            console.print(msg, markup=False, highlight=False)
    return log


def _read(cfg: ClassifyConfig):
    d = cfg.data
    if not d.path:
        raise ConfigError("config field 'data.path': give the labeled training data (--data FILE)")
    train = read_labeled(d.path, d.text_field, d.label_field, encoding=d.encoding)
    labels = LabelMap.from_labels(train.labels, d.path)
    valid = read_labeled(d.valid_path, d.text_field, d.label_field, encoding=d.encoding) if d.valid_path else None
    test = read_labeled(d.test_path, d.text_field, d.label_field, encoding=d.encoding) if d.test_path else None
    if len(labels) > 2 and cfg.eval.threshold != 0.5:
        raise ConfigError(f"config field 'eval.threshold': {cfg.eval.threshold} applies to two-class tasks only; "
                          f"{d.path} has {len(labels)} classes (each text gets its most probable class)")
    return train, valid, test, labels


def _fit_members(cfg: ClassifyConfig, train: Labeled, y: np.ndarray, val: Labeled, val_y: np.ndarray,
                 n_classes: int, run_dir: Path, rt: Runtime, resume: bool, progress: bool,
                 refit_linear_on: tuple[list[str], np.ndarray] | None = None, on_eval=None,
                 run_id: str | None = None, clock: BudgetClock | None = None, vectors_cache: dict | None = None):
    """Train every member; returns (members, validation probabilities per member, weights, facts).

    With a `clock` (a run budget), each neural member trains for the seconds the clock gives it.
    """
    log = _say(progress, rt)
    members, val_probas, facts = [], [], {}
    names = cfg.model.member_names()
    vectors_cache = {} if vectors_cache is None else vectors_cache  # vectors from the texts, shared
    linear_part = (train, y, refit_linear_on)
    if cfg.data.augment.method_list():
        train, y, linear_part = _augment_part(cfg, train, y, refit_linear_on, resume, vectors_cache, log)
    for i, (kind, name) in enumerate(zip(cfg.model.member_kinds(), names)):
        folder = run_dir / name
        t0 = time.perf_counter()
        if kind == "linear":
            if rt.is_main:  # scikit-learn runs in one process; the others wait at the next barrier
                until = clock.linear_search_until() if clock is not None else None
                member = train_linear(cfg, linear_part[0].texts, linear_part[1], n_classes, folder, log, until)
                facts[name] = {"train_s": time.perf_counter() - t0, "C": member.model.C,
                               "training_texts": len(linear_part[0])}
                val_p = _timed_predict(member, val.texts, rt, clock, name)
            if clock is not None:
                clock.linear_done(time.perf_counter() - t0)
            refit_linear_on = linear_part[2]
            if rt.is_main and refit_linear_on is not None:
                # The validation part only serves to weigh the members: the linear model (seconds
                # to fit) is refitted on all the labeled training data, with the C just chosen.
                t1 = time.perf_counter()
                fixed = replace(cfg, model=replace(cfg.model, linear=replace(cfg.model.linear, C=member.model.C)))
                member = train_linear(fixed, refit_linear_on[0], refit_linear_on[1], n_classes, folder, log)
                facts[name]["train_s"] += time.perf_counter() - t1
                facts[name]["training_texts"] = len(refit_linear_on[0])
                if clock is not None:
                    clock.linear_done(time.perf_counter() - t1)
        else:
            mcfg = cfg
            if clock is not None:
                if kind in ("bilstm", "transformer") and cfg.text.vectors == "train" and not resume:
                    train_vectors(cfg, train.texts, vectors_cache, log)  # before the slot: not out of it
                slot = clock.slot(kind)
                mcfg = replace(cfg, train=replace(cfg.train, time_budget_s=slot))
                log(f"{name}: {slot:.0f}s of the run budget")
            # Repeated kinds differ by seed: member i is seeded cfg.seed + i.
            member, facts[name] = train_neural(kind, mcfg, train.texts, y, val.texts, val_y, n_classes, folder, rt,
                                               resume, progress, log, on_eval, seed=cfg.seed + i,
                                               vectors_cache=vectors_cache, run_id=run_id)
            if clock is not None:
                clock.neural_done(time.perf_counter() - t0, facts[name].get("fit_s", slot))
            if rt.is_main:
                val_p = _timed_predict(member, val.texts, rt, clock, name)
        rt.barrier()
        if rt.is_main:
            members.append(member)
            val_probas.append(val_p)
    weights = tune_weights(val_probas, val_y, kinds=cfg.model.member_kinds()) if rt.is_main else []
    return members, val_probas, weights, facts


def _augment_part(cfg: ClassifyConfig, train: Labeled, y: np.ndarray, refit: tuple[list[str], np.ndarray] | None,
                  resume: bool, vectors_cache: dict, log):
    """(training texts, labels) of the neural members with data.augment's copies, and (texts, labels, refit
    data) of the linear model: the same, or the texts as given unless data.augment.linear.

    Copies are made here, from the training part only (after the validation split or fold was cut), so no
    copy of a held-out text is trained on; word vectors from the texts come from the texts as written.
    """
    if (cfg.text.vectors == "train" and not resume
            and any(k in ("bilstm", "transformer") for k in cfg.model.member_kinds())):
        train_vectors(cfg, train.texts, vectors_cache, log)
    texts, aug_y = augment_training(cfg, train.texts, y)
    augmented = Labeled(texts, list(aug_y))
    log(f"augmentation ({cfg.data.augment.methods}): {len(train):,} training texts -> {len(augmented):,}"
        + ("" if cfg.data.augment.linear or "linear" not in cfg.model.member_kinds() else
           " (neural members; the linear model trains on the texts as given)"))
    if not cfg.data.augment.linear:
        return augmented, aug_y, (train, y, refit)
    return augmented, aug_y, (augmented, aug_y, augment_training(cfg, *refit) if refit is not None else None)


def augment_training(cfg: ClassifyConfig, texts: list[str], y: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Training texts with data.augment's altered copies appended (their labels too)."""
    t = cfg.text
    units = Units(t.language, t.tokenizer, t.lowercase, t.strip_html)
    out, out_y, _ = augment_texts(texts, y, cfg.data.augment, units, cfg.seed, t.vectors)
    return out, out_y


def _timed_predict(member, texts: list[str], rt: Runtime, clock: BudgetClock | None, name: str) -> np.ndarray:
    t0 = time.perf_counter()
    p = member.predict_proba(texts, rt)
    if clock is not None:
        clock.predicted(name, time.perf_counter() - t0, len(texts))
    return p


def _oof_weights(cfg: ClassifyConfig, train: Labeled, y: np.ndarray, n_classes: int, run_dir: Path, rt: Runtime,
                 progress: bool, clock: BudgetClock | None, vectors_cache: dict,
                 linear_C: float | None = None, final_facts: dict | None = None) -> tuple[list[float] | None, dict]:
    """Ensemble weights tuned on out-of-fold predictions of the whole training set (see stacking.py).

    Each fold trains every member on the other folds, with its own inner validation split for early
    stopping, so neither the member nor its checkpoint choice sees the held-out fold's labels.
    Word vectors computed from the training texts (no labels) are shared by the folds, and so is
    the linear model's C (`linear_C`, one number chosen by cross-validation for the final model):
    the fold models then fit in seconds. Under a run budget, a fold starts only when it can end
    in time (the first is judged by the final members' training, `final_facts`); with no fold
    done the weights are None (the caller keeps the split's).
    """
    log = _say(progress, rt)
    t0 = time.perf_counter()
    k = cfg.model.stack_folds
    folds = kfold_splits(y, k, cfg.seed + 1)
    names = cfg.model.member_names()
    if linear_C:
        cfg = replace(cfg, model=replace(cfg.model, linear=replace(cfg.model.linear, C=linear_C)))

    final = [f for f in (final_facts or {}).values() if isinstance(f, dict)]
    last = {"fold": 0, "wall_s": sum(f.get("train_s", 0.0) for f in final),  # the latest fold's timings
            "fit_s": sum(f.get("fit_s", 0.0) for f in final), "neural": sum("fit_s" in f for f in final)}

    def fit_predict(tr: np.ndarray, te: np.ndarray) -> list[np.ndarray]:
        i = last["fold"] = last["fold"] + 1
        log(f"stacking fold {i}/{k}: training {len(names)} members on {len(tr):,} texts, predicting {len(te):,}")
        part, held = train.subset(tr), train.subset(te)
        inner_fit, inner_val = stratified_split(y[tr], max(cfg.data.val_fraction, 0.1), cfg.seed + i)
        fold_dir = run_dir / "stack" / f"fold_{i}"
        if rt.is_main:  # left by an interrupted run: a fold always starts afresh
            shutil.rmtree(fold_dir, ignore_errors=True)
        rt.barrier()
        t_fold = time.perf_counter()
        members, _, _, facts = _fit_members(cfg, part.subset(inner_fit), y[tr][inner_fit], part.subset(inner_val),
                                            y[tr][inner_val], n_classes, fold_dir, rt, False, False,
                                            (part.texts, y[tr]), clock=clock, vectors_cache=vectors_cache)
        last["fit_s"] = sum(f.get("fit_s", 0.0) for f in facts.values())
        last["neural"] = sum(kind in NEURAL_KINDS for kind in cfg.model.member_kinds())
        if not rt.is_main:
            last["wall_s"] = time.perf_counter() - t_fold
            return [np.full((len(te), n_classes), 1.0 / n_classes) for _ in names]
        preds = [m.predict_proba(held.texts, rt) for m in members]
        shutil.rmtree(fold_dir, ignore_errors=True)  # fold models only serve to weigh the members
        last["wall_s"] = time.perf_counter() - t_fold
        return preds

    def keep_going() -> bool:
        # Under a run budget, start a fold only when one as long as the last (less its neural
        # training, which the clock would shrink) still ends before the deadline.
        if clock is None:
            return True
        return clock.fits(last["wall_s"] - last["fit_s"] + last["neural"] * MIN_SLOT_S)

    oof, covered = out_of_fold(fit_predict, folds, len(y), n_classes, keep_going)
    if rt.is_main:
        shutil.rmtree(run_dir / "stack", ignore_errors=True)
    done = int(sum(covered[te].all() for _, te in folds))
    if not done:
        log("stacking: no fold fits in the run budget; the validation split weighs the members")
        return None, {"method": "split", "folds_done": 0, "note": "no out-of-fold fold fitted in the run budget"}
    oof, yc = [p[covered] for p in oof], y[covered]
    weights = tune_weights(oof, yc, kinds=cfg.model.member_kinds())
    facts = {"method": "oof", "folds": k, "folds_done": done, "texts": int(covered.sum()), "weights": weights,
             "stack_s": time.perf_counter() - t0,
             "oof_accuracy": {n: float((p.argmax(1) == yc).mean()) for n, p in zip(names, oof)},
             "oof_ensemble_accuracy": float((combine(oof, weights).argmax(1) == yc).mean())}
    log(f"out-of-fold weights: {', '.join(f'{n} {w:.2f}' for n, w in zip(names, weights))} "
        f"({facts['stack_s']:.0f}s for {done} of {k} folds)")
    return weights, facts


@dataclass
class _Resumed:
    """The run being resumed: its folder, identity and saved config (checks happen once the data is read)."""

    run_dir: Path
    info: dict
    saved: ClassifyConfig
    accept_changed_data: bool


def train_classifier(cfg: ClassifyConfig | None = None, resume: str | Path | None = None,
                     progress: bool = True, on_eval=None, overwrite: bool = False,
                     accept_changed_data: bool = False, t_start: float | None = None) -> ClassifyResult:
    """Read and check the data, train the configured model(s), evaluate, save everything in cfg.out.

    A new run claims cfg.out (empty: a new dated folder under runs/; another run there is refused
    unless `overwrite`, see lmforge.runs). With eval.folds = k, first k-fold cross-validation on the
    training data (cv.json), then the final model on all of it. With resume=RUN_DIR neural members
    continue from their newest intact checkpoints; `cfg` then holds the settings asked for (None:
    the run's own): changes in RESUMABLE are honoured and recorded, others refused, and data files
    changed since the run started are refused unless `accept_changed_data`. `on_eval(step, record)`
    is handed to the training loop of each neural member (see trainer.loop.fit), e.g. for a tuner.
    With train.run_budget_s, the budget counts from `t_start` (a time.perf_counter() value; default:
    now), so that the command-line tool can count its own start-up.
    """
    resumed = None
    if resume is not None:
        run_dir = Path(resume)
        info = runs.open_run(run_dir, "classify")
        saved = load_run_config(run_dir)
        if int(os.environ.get("RANK", 0)) == 0:  # left by a kill in the middle of a write
            runs.sweep_temp_files(run_dir, "classify")
        resumed = _Resumed(run_dir, info, saved, accept_changed_data)
        cfg = from_dict(ClassifyConfig, to_dict(cfg if cfg is not None else saved))
        cfg.out = str(run_dir)
    elif cfg is None:
        raise ConfigError("train_classifier() needs a config or resume=RUN_DIR")
    cfg.validate()
    check_vectors(cfg.data.augment, cfg.text.vectors)  # before the run folder is claimed
    if resumed is None:  # before the claim: a mistyped path or an unused --unlabeled leaves no folder
        check_unlabeled_use(cfg)
        check_inputs(cfg.data.path, cfg.data.valid_path, cfg.data.test_path, *cfg.data.unlabeled_paths())
    rt = init_runtime(cfg.runtime.device, cfg.runtime.threads)
    try:
        if resumed is None:
            cfg.out = on_main(lambda: str(runs.claim(cfg.out, "classify", overwrite=overwrite, quiet=not progress)),
                              rt)
        result = _train(cfg, rt, resumed, progress, on_eval, t_start)
    except BaseException:
        shutdown(rt)
        raise
    shutdown(rt, finished=True)
    return result


def input_signature(cfg: ClassifyConfig) -> dict:
    """Size and modification time of every training and validation file, to notice changes on resume."""
    d = cfg.data
    return {"data.path": file_signature(d.path),
            "data.valid_path": file_signature(d.valid_path) if d.valid_path else None,
            "data.unlabeled": [e for p in d.unlabeled_paths() for e in file_signature(p)] or None}


def _check_resume(r: _Resumed, cfg: ClassifyConfig, labels: LabelMap) -> tuple[list, str]:
    """Refuse what a resume cannot honour; (the honoured changes, a note for the history)."""
    honoured, refused = runs.split_changes(runs.config_changes(to_dict(r.saved), to_dict(cfg)), RESUMABLE)
    if refused:
        raise runs.refusal(r.run_dir, refused, KEPT_ON_RESUME)
    if (r.run_dir / "labels.json").is_file():
        before = LabelMap.load(r.run_dir / "labels.json").names
        if before != labels.names:
            raise DataError(f"cannot resume {r.run_dir}: the classes in {cfg.data.path} are now {labels.names}, the "
                            f"run was trained on {before}. Start a new run (--out NEW_FOLDER or --overwrite).")
    note = ""
    old = r.info.get("inputs")
    if isinstance(old, dict):
        now = input_signature(cfg)
        changed = [c for key in ("data.path", "data.valid_path", "data.unlabeled")
                   if key in old  # runs started before data.unlabeled existed did not sign it
                   for c in signature_changes(old.get(key), now[key], key)]
        if changed and not r.accept_changed_data:
            raise DataError(
                f"cannot resume {r.run_dir}: its data changed since the run started: {'; '.join(changed[:3])}. Add "
                "--accept-changed-data to continue on the changed files (with the run's vocabulary and classes), "
                "or start a new run (--out NEW_FOLDER or --overwrite).")
        if changed:
            note = "data changed since the run started: " + "; ".join(changed[:3])
    return honoured, note


def _finished_result(r: _Resumed, cfg: ClassifyConfig, honoured: list) -> ClassifyResult | None:
    """The stored result of a finished run whose final checkpoints are intact, unless the resume gives
    it more to do (more epochs or steps, more time)."""
    path = r.run_dir / "metrics.json"
    if r.info.get("status") != "finished" or not path.is_file():
        return None
    for name, old, new in honoured:
        if name in ("train.epochs", "train.max_steps") and (new == 0 or new > old):
            return None
        if name == "train.time_budget_s" and (new == 0 or new > old):
            return None
    finals = r.info.get("final_checkpoints") or []
    if any(not (r.run_dir / f / "meta.json").is_file() or ckpt.verify(r.run_dir / f) for f in finals):
        warn(f"{r.run_dir} finished, but a final checkpoint is missing or damaged; resuming redoes the steps "
             "after the newest intact one")
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # damaged: the resume recomputes it
    return ClassifyResult(r.run_dir, m.get("valid"), m.get("test"), m.get("cv"), m.get("members") or [],
                          m.get("weights") or [], m.get("train_s") or 0.0, m.get("member_facts") or {},
                          cfg.text.language)


def _open(cfg: ClassifyConfig, rt: Runtime, resumed: _Resumed | None, labels: LabelMap,
          progress: bool) -> tuple[str | None, ClassifyResult | None]:
    """The run folder made ready (a new run's config, classes and input signature; a resume checked
    and recorded); (run id, the stored result when a finished run has nothing more to do)."""
    run_dir = Path(cfg.out)
    if resumed is None:
        def start() -> str:
            save_config(cfg, run_dir / "config.yaml")
            labels.save(run_dir / "labels.json")
            return runs.update_info(run_dir, inputs=input_signature(cfg), status="training")["run_id"]
        return on_main(start, rt), None
    honoured, note = _check_resume(resumed, cfg, labels)
    done = _finished_result(resumed, cfg, honoured)
    if done is not None:
        if progress and rt.is_main:
            say(f"{run_dir} already finished; nothing was changed. To train it further, pass more "
                "--train.epochs (or --train.max_steps, or a longer --train.time_budget_s).")
        if rt.is_main and not (run_dir / "report.html").is_file():  # killed while writing it
            try_write_report(run_dir)
        return resumed.info["run_id"], done

    def record() -> str:
        info = runs.record_resume(run_dir, resumed.info, honoured, note)
        if honoured:
            save_config(cfg, run_dir / "config.yaml")
        if progress:
            what = runs.describe_changes(honoured) if honoured else "no settings changed"
            say(f"resume {run_dir}: {what}" + (f" ({note})" if note else ""))
        return info["run_id"]
    return on_main(record, rt), None


def _warm_imports(cfg: ClassifyConfig) -> None:
    """Import now what training and scoring will import later (seconds on a busy CPU), so that the
    budget plan counts it as spent instead of having a model's slot pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the confusion-matrix plot)
    import sklearn.linear_model  # noqa: F401
    import torch._dynamo  # noqa: F401  (imported by the first optimizer)

    if cfg.train.track == "tensorboard":
        import torch.utils.tensorboard  # noqa: F401


def _pretrain(cfg: ClassifyConfig, texts: list[str], run_dir: Path, rt: Runtime, resume: bool,
              progress: bool) -> tuple[ClassifyConfig, dict | None]:
    """In-domain pretraining for the gpt member when it asks for it (see classify.pretrain): on the
    texts the members train on, never the validation texts. Returns the config with model.gpt.run
    set to the pretrained run (what every gpt member, in the folds too, fine-tunes) and its facts."""
    g = cfg.model.gpt
    if "gpt" not in cfg.model.member_kinds() or not g.pretrains():
        return cfg, None
    if rt.distributed:
        raise ConfigError("config field 'model.gpt.pretrain': in-domain pretraining runs in one process; pretrain "
                          "with `lmforge train` first and give it as --model.gpt.run (with --model.gpt.pretrain off)")
    from lmforge.classify.data import read_unlabeled
    from lmforge.classify.pretrain import pretrain_gpt

    extra = read_unlabeled(cfg.data.unlabeled_paths(), cfg.data.text_field, cfg.data.encoding)
    folder, facts = pretrain_gpt(cfg, texts, extra, run_dir, g.pretrain_time_s, resume, progress,
                                 _say(progress, rt))
    return replace(cfg, model=replace(cfg.model, gpt=replace(g, run=str(folder)))), facts


def _self_train(cfg: ClassifyConfig, fit_set: Labeled, fit_y: np.ndarray, val_set: Labeled, val_y: np.ndarray,
                refit: tuple[list[str], np.ndarray] | None, test: Labeled | None, labels: LabelMap, run_dir: Path,
                rt: Runtime, resume: bool, progress: bool):
    """Self-training (self_train.rounds; see classify.selftrain): (training texts, their labels, the linear
    model's refit data, facts), each with the last round's pseudo-labeled texts added.

    Round r trains the members on the labeled texts plus round r-1's pseudo-labeled ones in
    RUN/self_train/round_r, weighed on the validation part (never trained on, never pseudo-labeled),
    labels the unlabeled texts and keeps the confident ones in RUN/self_train/round_r/pseudo.jsonl
    (written last, so a resumed run redoes only an unfinished round). Out-of-fold stacking weighs the
    final members on the labeled texts alone: a pseudo-label was made by a model that saw every fold.
    """
    if rt.distributed:
        raise ConfigError("config field 'self_train.rounds': self-training runs in one process; drop torchrun or "
                          "set it to 0")
    from lmforge.classify.data import read_unlabeled
    from lmforge.classify.selftrain import held_out_texts, select_pseudo

    log = _say(progress, rt)
    st = cfg.self_train
    unlabeled = read_unlabeled(cfg.data.unlabeled_paths(), cfg.data.text_field, cfg.data.encoding)
    held = held_out_texts(val_set.texts, test.texts if test is not None else [])
    pool = [t for t in unlabeled if t.strip() not in held]
    max_texts = int(st.max_ratio * len(fit_y))
    teacher_cfg = replace(cfg, model=replace(cfg.model, stacking="split"), eval=replace(cfg.eval, folds=0))
    pseudo_texts: list[str] = []
    pseudo_y = np.zeros(0, dtype=np.int64)
    rounds = []
    for r in range(1, st.rounds + 1):
        folder = run_dir / "self_train" / f"round_{r}"
        saved = folder / "pseudo.jsonl"
        t0 = time.perf_counter()
        if resume and saved.is_file():
            rows = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines() if line.strip()]
            pseudo_texts, pseudo_y = [row["text"] for row in rows], np.array([row["class"] for row in rows], np.int64)
            rounds.append(json.loads((folder / "round.json").read_text(encoding="utf-8")))
            log(f"self-training round {r}: {len(pseudo_texts):,} pseudo-labeled texts, kept from the interrupted run")
            continue
        texts = fit_set.texts + pseudo_texts
        y = np.concatenate([fit_y, pseudo_y])
        log(f"self-training round {r}/{st.rounds}: members on {len(fit_y):,} labeled + {len(pseudo_texts):,} "
            f"pseudo-labeled texts, then labelling {len(pool):,} unlabeled")
        members, val_probas, weights, _ = _fit_members(teacher_cfg, Labeled(texts, [None] * len(texts)), y,
                                                       val_set, val_y, len(labels), folder, rt, resume, False)
        proba = combine([m.predict_proba(pool, rt) for m in members], weights)
        idx, cls = select_pseudo(proba, fit_y, len(labels), st.threshold, max_texts)
        pseudo_texts, pseudo_y = [pool[i] for i in idx], cls
        conf = proba.max(axis=1)
        facts = {"round": r, "unlabeled": len(unlabeled), "held_out_copies_left_out": len(unlabeled) - len(pool),
                 "above_threshold": int((conf >= st.threshold).sum()), "taken": len(idx),
                 "taken_per_class": {str(labels.names[c]): int((cls == c).sum()) for c in range(len(labels))},
                 "teacher_valid_accuracy": float((combine(val_probas, weights).argmax(1) == val_y).mean())
                 if len(val_y) else None,
                 "teacher_weights": weights, "s": time.perf_counter() - t0}
        for member_dir in runs.member_dirs(folder):  # the round's models served only to label
            shutil.rmtree(member_dir, ignore_errors=True)
        atomic_write_json(folder / "round.json", facts)
        atomic_write_text(saved, "".join(json.dumps({"text": t, "label": labels.names[int(c)], "class": int(c),
                                                     "probability": round(float(proba[i].max()), 4)},
                                                    ensure_ascii=False) + "\n"
                                         for t, c, i in zip(pseudo_texts, pseudo_y, idx)))
        rounds.append(facts)
        log(f"self-training round {r}: {facts['above_threshold']:,} of {len(pool):,} unlabeled texts at probability "
            f">= {st.threshold:g}; {len(idx):,} taken ({', '.join(f'{k} {v:,}' for k, v in facts['taken_per_class'].items())})"
            + (f"; the round's validation accuracy {facts['teacher_valid_accuracy']:.4f}"
               if facts["teacher_valid_accuracy"] is not None else ""))
    texts = fit_set.texts + pseudo_texts
    out_set = Labeled(texts, [None] * len(texts))
    out_y = np.concatenate([fit_y, pseudo_y])
    if refit is not None:
        refit = (refit[0] + pseudo_texts, np.concatenate([refit[1], pseudo_y]))
    return out_set, out_y, refit, {"rounds": rounds, "threshold": st.threshold, "max_ratio": st.max_ratio}


def _budget_clock(cfg: ClassifyConfig, t_start: float, scored_texts: int, refit: bool) -> BudgetClock | None:
    """The clock that shares out a run budget's training time (None without train.run_budget_s)."""
    if cfg.train.run_budget_s <= 0:
        return None
    kinds = cfg.model.member_kinds()
    folds = cfg.model.stack_folds if cfg.model.stacking == "oof" else 0
    neural = [k for k in kinds if k in NEURAL_KINDS] * (1 + folds)
    # The final linear model is refitted on all the labeled texts when a split was held out; each
    # fold's is always fitted, then refitted on the fold's training part.
    linear_fits = (1 + refit + 2 * folds) if "linear" in kinds else 0
    return BudgetClock(t_start + cfg.train.run_budget_s, neural, linear_fits,
                       scoring_reserve_s(cfg.train.run_budget_s), scored_texts)


def _train(cfg: ClassifyConfig, rt: Runtime, resumed: _Resumed | None, progress: bool,
           on_eval=None, t_start: float | None = None) -> ClassifyResult:
    t_start = time.perf_counter() if t_start is None else t_start
    train, valid, test, labels = _read(cfg)
    decontam, valid, test = _decontaminate(cfg, train, valid, test)
    if cfg.train.run_budget_s > 0:
        _warm_imports(cfg)
    cfg, plan = plan_run(cfg, train.texts, time.perf_counter() - t_start)
    run_dir = Path(cfg.out)
    y = labels.encode(train)
    valid_y = labels.encode(valid) if valid is not None else None
    test_y = labels.encode(test) if test is not None else None
    run_id, done = _open(cfg, rt, resumed, labels, progress)
    if done is not None:
        return done
    resume = resumed is not None
    if (cfg.data.augment.method_list() and not cfg.data.augment.linear and cfg.model.member_kinds() == ["linear"]
            and rt.is_main):
        warn("data.augment.methods changes nothing here: the linear model trains on the texts as given "
                  "unless data.augment.linear is true")
    skew = skew_message(y, labels, cfg.data.skew_warning_ratio)
    if skew and rt.is_main:
        console.print(f"[yellow]warning:[/yellow] {cfg.data.path}: {skew}")
    reads = [part.report for part in (train, valid, test) if part is not None and part.report is not None]
    if progress and rt.is_main:
        for read in reads:
            for line in read.summary_lines():
                console.print(line, markup=False, highlight=False, soft_wrap=True)
        print_summary("data", [
            ("training", f"{len(train):,} texts from {cfg.data.path}"),
            ("classes", ", ".join(f"{k} ({v:,})" for k, v in label_distribution(y, labels).items())),
            ("validation", f"{len(valid):,} texts from {cfg.data.valid_path}" if valid is not None
             else f"{cfg.data.val_fraction:.0%} of the training texts, stratified"),
            ("test", f"{len(test):,} texts from {cfg.data.test_path}" if test is not None else "none"),
            ("language / units", f"{cfg.text.language} / {cfg.text.tokenizer}"),
            ("model", cfg.model.kind + (f" of {cfg.model.members}" if cfg.model.kind == "ensemble" else "")),
            ("weights", f"out-of-fold, {cfg.model.stack_folds} folds" if cfg.model.stacking == "oof"
             else "validation split"),
            *_augment_rows(cfg), *_decontam_rows(cfg, decontam),
            *([("self-training", f"{cfg.self_train.rounds} round(s) on {cfg.data.unlabeled}: texts at probability "
                                 f">= {cfg.self_train.threshold:g}, at most {cfg.self_train.max_ratio:g} per labeled "
                                 "text")] if cfg.self_train.rounds else []),
        ])
        if plan is not None:
            print_summary("time plan", plan.rows)

    if valid is None:
        if cfg.data.val_fraction <= 0:
            if any(k in NEURAL_KINDS for k in cfg.model.member_kinds()) or len(cfg.model.member_kinds()) > 1:
                raise ConfigError("config field 'data.val_fraction': neural models and ensembles need validation "
                                  "data; give --valid FILE or a val_fraction above 0")
            fit_idx, val_idx = np.arange(len(y)), np.arange(0)
        else:
            fit_idx, val_idx = stratified_split(y, cfg.data.val_fraction, cfg.seed)
            _check_split(cfg, y, fit_idx, val_idx, len(labels))
        fit_set, val_set = train.subset(fit_idx), train.subset(val_idx)
        fit_y, val_y = y[fit_idx], y[val_idx]
        refit = (train.texts, y) if len(val_idx) else None
    else:
        fit_set, fit_y, val_set, val_y, refit = train, y, valid, valid_y, None
    cfg, pretrain_facts = _pretrain(cfg, fit_set.texts, run_dir, rt, resume, progress)
    self_train_facts = None
    if cfg.self_train.rounds:
        fit_set, fit_y, refit, self_train_facts = _self_train(cfg, fit_set, fit_y, val_set, val_y, refit, test,
                                                              labels, run_dir, rt, resume, progress)
    cv = None
    if cfg.eval.folds:
        cv = _cross_validate(cfg, train, y, labels, rt, progress)
        if rt.is_main:
            atomic_write_json(run_dir / "cv.json", cv)

    vectors_cache: dict = {}
    # Validation texts are predicted as each member finishes; the test texts at the end.
    clock = _budget_clock(cfg, t_start, len(test_y) if test_y is not None else 0, refit is not None)
    with ckpt.guard_writes(run_dir):
        members, val_probas, weights, facts = _fit_members(cfg, fit_set, fit_y, val_set, val_y, len(labels),
                                                           run_dir, rt, resume, progress, refit, on_eval, run_id,
                                                           clock, vectors_cache)
        if pretrain_facts and rt.is_main:
            facts["pretrain"] = pretrain_facts
        if self_train_facts and rt.is_main:
            facts["self_train"] = self_train_facts
        stacking = {"method": "split", "weights": weights}
        if cfg.model.stacking == "oof" and len(members if rt.is_main else cfg.model.member_kinds()) > 1:
            oof_w, stacking = _oof_weights(cfg, train, y, len(labels), run_dir, rt, progress, clock, vectors_cache,
                                           facts.get("linear", {}).get("C"), facts)
            stacking["split_weights"] = weights
            weights = oof_w or weights
    if not rt.is_main:
        return ClassifyResult(run_dir, None, None, cv)
    with ckpt.guard_writes(run_dir):
        result = _score(cfg, rt, run_dir, members, val_probas, weights, facts, labels, val_set, val_y, test, test_y,
                        cv, t_start, stacking, reads, {"decontamination": decontam, "augment": _augment_facts(cfg)})
    finals = [str(c.relative_to(run_dir)) for c in (ckpt.latest_checkpoint(d) for d in runs.member_dirs(run_dir))
              if c is not None]
    runs.update_info(run_dir, status="finished", final_checkpoints=finals)
    try_write_report(run_dir)
    if progress:
        _print_result(result, labels, "test" if result.test else "valid")
    return result


def _score(cfg: ClassifyConfig, rt: Runtime, run_dir: Path, members, val_probas, weights, facts, labels: LabelMap,
           val_set: Labeled, val_y, test: Labeled | None, test_y, cv, t_start: float,
           stacking: dict | None = None, reads=(), extra: dict | None = None) -> ClassifyResult:
    """Validation and test metrics of the ensemble (and its members); ensemble.json, metrics.json, the plot."""
    kinds = cfg.model.member_names()
    atomic_write_json(run_dir / "ensemble.json", {"members": kinds, "kinds": cfg.model.member_kinds(),
                                                       "weights": weights})
    train_s = time.perf_counter() - t_start
    result = ClassifyResult(run_dir, None, None, cv, kinds, weights, train_s, facts, cfg.text.language,
                            stacking or {})
    threshold = cfg.eval.threshold
    if len(val_y):
        result.valid = classification_metrics(val_y, combine(val_probas, weights), labels.names, threshold)
        if len(kinds) > 1:
            result.valid["members"] = {k: _brief(classification_metrics(val_y, p, labels.names, threshold))
                                       for k, p in zip(kinds, val_probas)}
    if test is not None:
        test_probas = [m.predict_proba(test.texts, rt) for m in members]
        result.test = classification_metrics(test_y, combine(test_probas, weights), labels.names, threshold)
        if len(kinds) > 1:
            result.test["members"] = {k: _brief(classification_metrics(test_y, p, labels.names, threshold))
                                      for k, p in zip(kinds, test_probas)}
    shown = result.test or result.valid
    split = "test" if result.test else "valid"
    if shown:
        save_confusion_png(shown["confusion_matrix"], labels.names, run_dir / f"confusion_{split}.png",
                           title=f"{run_dir.name}: {split}")
        scored = (test.texts, test_y, combine(test_probas, weights)) if result.test else \
            (val_set.texts, val_y, combine(val_probas, weights))
        save_eval_details(run_dir, split, *scored, labels.names)
    atomic_write_json(run_dir / "metrics.json", {"valid": result.valid, "test": result.test, "cv": cv,
                                                      "members": kinds, "weights": weights, "train_s": train_s,
                                                      "member_facts": facts, "stacking": stacking,
                                                      "files": [read.to_dict() for read in reads],
                                                      **(extra or {})})
    log_final(cfg.train.track, run_dir, {**flat_metrics(result.valid, "valid"), **flat_metrics(result.test, "test")})
    return result


def _decontaminate(cfg: ClassifyConfig, train: Labeled, valid: Labeled | None, test: Labeled | None):
    """({role: what data.decontam_ngram found in the --test/--valid file}, valid, test), the contaminated
    records left out of the latter with data.decontam_remove."""
    d = cfg.data
    found: dict = {}
    if not d.decontam_ngram:
        return found, valid, test
    kept = {}
    for role, held in (("test", test), ("valid", valid)):
        if held is None:
            kept[role] = None
            continue
        r = contamination(train, held, d.decontam_ngram, role)
        bad = set(r.pop("indices"))
        r["removed"] = bool(d.decontam_remove and bad)
        found[role] = r
        if r["removed"]:
            if len(bad) == len(held):
                raise DataError(f"{held.path}: every record shares a {d.decontam_ngram}-word run with the training "
                                f"data ({d.path}), so --data.decontam_remove would leave nothing to score; check "
                                "that the files differ")
            held = held.subset([i for i in range(len(held)) if i not in bad])
        kept[role] = held
    return found, kept["valid"], kept["test"]


def _decontam_rows(cfg: ClassifyConfig, found: dict) -> list[tuple[str, str]]:
    rows = []
    for role, r in found.items():
        what = (f"{r['contaminated']:,} of {r['records']:,} records share a {r['ngram_words']}-word run with (or "
                f"equal) a training text" + (", left out" if r["removed"] else
                                             ", kept (--data.decontam_remove true leaves them out)"
                                             if r["contaminated"] else ""))
        rows.append((f"{role} overlap", what))
    return rows


def _augment_facts(cfg: ClassifyConfig) -> dict | None:
    a = cfg.data.augment
    if not a.method_list():
        return None
    return {"methods": a.method_list(), "copies": a.copies, "strength": a.strength, "linear": a.linear,
            "seed": cfg.seed if a.seed < 0 else a.seed}


def _augment_rows(cfg: ClassifyConfig) -> list[tuple[str, str]]:
    a = cfg.data.augment
    if not a.method_list():
        return []
    who = "every member" if a.linear else "the neural members"
    return [("augmentation", f"{a.methods}: {a.copies} altered cop{'y' if a.copies == 1 else 'ies'} of each training "
                             f"text (strength {a.strength}) for {who}; validation and test texts untouched")]


def _check_split(cfg: ClassifyConfig, y, fit_idx, val_idx, n_classes: int) -> None:
    """A held-out split too small to score every class, or a training part missing a class, would give
    a metric or a model that is not what was asked for."""
    missing = n_classes - len(np.unique(y[fit_idx]))
    if len(val_idx) < 2 or missing:
        why = (f"the training part would lack {missing} of the {n_classes} classes" if missing else
               f"the validation part would hold {len(val_idx)} record, and a score on one record means nothing")
        raise DataError(f"{cfg.data.path}: {len(y)} records are too few to hold out validation data "
                        f"(data.val_fraction {cfg.data.val_fraction}): {why}. Add records, give --valid FILE, or "
                        "raise --data.val_fraction")


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("accuracy", "macro_f1", "roc_auc", "log_loss")}


def _print_result(result: ClassifyResult, labels: LabelMap, split: str) -> None:
    rows = [("members", ", ".join(f"{k} x{w:.2f}" for k, w in zip(result.members, result.weights)))]
    for name, m in (("validation", result.valid), ("test", result.test)):
        if m:
            rows += [(f"{name} {k}", v) for k, v in format_metrics(m)]
    if result.cv:
        rows += [(f"{result.cv['folds']}-fold cv {k}", v) for k, v in format_metrics(result.cv)]
    rows += [("train time", f"{result.train_s:.1f} s"), ("run folder", str(result.run_dir))]
    print_summary("result", rows)
    shown = result.test or result.valid
    if shown:
        console.print(f"confusion matrix ({split}):\n" + confusion_table(shown["confusion_matrix"], labels.names),
                      markup=False, highlight=False)


def _cross_validate(cfg: ClassifyConfig, train: Labeled, y: np.ndarray, labels: LabelMap, rt: Runtime,
                    progress: bool) -> dict:
    """k-fold: each fold trains the configured model(s) on k-1 parts and scores the held-out part."""
    log = _say(progress, rt)
    run_dir = Path(cfg.out)
    folds = kfold_splits(y, cfg.eval.folds, cfg.seed)
    scores = []
    for i, (tr, te) in enumerate(folds):
        log(f"fold {i + 1}/{len(folds)}: training on {len(tr):,}, scoring {len(te):,}")
        part, held = train.subset(tr), train.subset(te)
        inner_fit, inner_val = stratified_split(y[tr], max(cfg.data.val_fraction, 0.1), cfg.seed + i)
        fold_dir = run_dir / "folds" / f"fold_{i + 1}"
        if rt.is_main:  # left by an interrupted run: a fold always starts afresh
            shutil.rmtree(fold_dir, ignore_errors=True)
        rt.barrier()
        members, _, weights, _ = _fit_members(cfg, part.subset(inner_fit), y[tr][inner_fit], part.subset(inner_val),
                                              y[tr][inner_val], len(labels), fold_dir, rt, False, False,
                                              (part.texts, y[tr]))
        if rt.is_main:
            proba = combine([m.predict_proba(held.texts, rt) for m in members], weights)
            m = classification_metrics(y[te], proba, labels.names, cfg.eval.threshold)
            scores.append(m)
            log(f"fold {i + 1}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}")
            shutil.rmtree(fold_dir, ignore_errors=True)  # fold models are not kept; their scores are
    if not rt.is_main:
        return {}
    out = summarize_folds(scores)
    out["fold_metrics"] = [_brief(s) for s in scores]
    return out


# --- using a trained run ------------------------------------------------------------------------


class Classifier:
    """A trained run folder, loaded: `predict_proba(texts)` averages its members as trained."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        from lmforge.trainer.runtime import check_device

        check_device(device)
        self.run_dir = Path(run_dir)
        kind = runs.guess_kind(self.run_dir) if self.run_dir.is_dir() else None
        if kind not in (None, "classify"):
            raise DataError(f"{self.run_dir} holds an lmforge {kind} run, not a classifier"
                            + ("; use `lmforge eval` / `lmforge generate` with it" if kind == "lm" else ""))
        self.cfg = load_run_config(self.run_dir)
        self.labels = LabelMap.load(self.run_dir / "labels.json")
        info_path = self.run_dir / "ensemble.json"
        if not info_path.is_file():
            raise DataError(f"{self.run_dir} has no trained model yet (no ensemble.json); finish or resume training")
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            self.kinds, self.weights = list(info["members"]), list(info["weights"])
            kinds = list(info.get("kinds", self.kinds))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{info_path} is unreadable ({type(e).__name__}); the run folder is damaged. Train "
                            "it again (--overwrite)") from None
        if not (len(self.kinds) == len(self.weights) == len(kinds) >= 1):
            raise DataError(f"{info_path} lists {len(self.kinds)} members but {len(self.weights)} weights; the run "
                            "folder is damaged. Train it again (--overwrite)")
        import torch

        self.rt = Runtime(0, 1, 0, torch.device(device), "fp32")
        self.members = [load_member(self.run_dir / name, kind, device) for name, kind in zip(self.kinds, kinds)]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return combine([m.predict_proba(texts, self.rt) for m in self.members], self.weights)


def evaluate_run(run_dir: str | Path, data: str | Path, threshold: float | None = None, device: str = "cpu",
                 text_field: str | None = None, label_field: str | None = None) -> dict:
    """Every metric of a trained run on labeled data (fields default to the run's)."""
    clf = Classifier(run_dir, device)
    d = clf.cfg.data
    t = check_threshold(clf.cfg.eval.threshold if threshold is None else threshold, len(clf.labels), threshold)
    ds = read_labeled(data, text_field or d.text_field, label_field or d.label_field, encoding=d.encoding)
    y = clf.labels.encode(ds)
    return classification_metrics(y, clf.predict_proba(ds.texts), clf.labels.names, t)


def predict_run(run_dir: str | Path, input_path: str | Path, output: str | Path | None = None,
                threshold: float | None = None, device: str = "cpu", text_field: str | None = None,
                fmt: str | None = None, id_field: str | None = None, keep_text: bool = False,
                overwrite: bool = False) -> list[dict]:
    """Label and class probabilities for each text of input_path; written as jsonl or csv when output is given.

    Each row starts with the record's id, so it can be joined back: the value of `id_field` (default
    'id', used when every record has it), else 'row', the record's 1-based position in the input;
    then the text itself with `keep_text`. Labels in the input, if any, are ignored. `output` may not
    be the input, nor an existing file unless `overwrite`.
    """
    from lmforge.data.readers import find_files

    if output is not None:
        check_prediction_format(Path(output), fmt)
        runs.check_output(output, [input_path, *find_files(input_path)], overwrite=overwrite, option="--output")
    clf = Classifier(run_dir, device)
    t = check_threshold(clf.cfg.eval.threshold if threshold is None else threshold, len(clf.labels), threshold)
    ds = read_labeled(input_path, text_field or clf.cfg.data.text_field, "", need_labels=False,
                      encoding=clf.cfg.data.encoding,
                      id_field=id_field or "id")
    key, ids = _row_ids(ds, id_field)
    proba = clf.predict_proba(ds.texts)
    pred = predict_labels(proba, t)
    names = clf.labels.names
    rows = [{key: i, **({"text": text} if keep_text else {}), "label": names[int(c)],
             **{f"p_{n}": float(p[j]) for j, n in enumerate(names)}}
            for i, text, c, p in zip(ids, ds.texts, pred, proba)]
    if output is not None:
        write_predictions(rows, Path(output), fmt)
    return rows


def _row_ids(ds: Labeled, id_field: str | None) -> tuple[str, list]:
    """(column name, values) identifying each input record: its id field, else its 1-based position."""
    present = [v is not None for v in ds.ids]
    if ds.ids and all(present):
        return id_field or "id", list(ds.ids)
    if id_field:  # asked for by name: every record must have it
        source, line = ds.where[present.index(False)]
        raise DataError(f"{source}:{line}: no field {id_field!r} (--id-field); give every record an id, or leave "
                        "out --id-field to number the rows instead")
    if any(present):
        warn("only some records have an 'id' field; the predictions are "
             "numbered by input row instead (column 'row')")
    return "row", list(range(1, len(ds) + 1))


def format_predictions(rows: list[dict], fmt: str = "jsonl", delimiter: str = ",") -> str:
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["label"], delimiter=delimiter,
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


_PREDICTION_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv"}


def check_prediction_format(path: Path, fmt: str | None) -> None:
    """An --output whose name says one format must not receive another (o.csv holding JSON lines)."""
    from lmforge.config import check_option

    implied = _PREDICTION_SUFFIXES.get(path.suffix.lower())
    check_option(implied is not None or fmt is not None, "--output", path,
                 "has no known file type; name it .jsonl, .csv or .tsv, or give --format")
    check_option(fmt is None or implied is None or implied == fmt, "--format", fmt,
                 f"contradicts --output {path}; drop --format or rename the output")


def write_predictions(rows: list[dict], path: Path, fmt: str | None = None) -> None:
    suffix = path.suffix.lower()
    fmt = fmt or ("csv" if suffix in (".csv", ".tsv") else "jsonl")
    atomic_write_text(path, format_predictions(rows, fmt, "\t" if suffix == ".tsv" else ","))


def result_json(result: ClassifyResult) -> str:
    def brief(m):
        if not m:
            return m
        return {k: v for k, v in m.items() if k not in ("per_class", "confusion_matrix")}

    return json.dumps({"run_dir": str(result.run_dir), "valid": brief(result.valid), "test": brief(result.test),
                       "cv": {k: v for k, v in (result.cv or {}).items() if k != "fold_metrics"} or None,
                       "members": result.members, "weights": result.weights, "train_s": result.train_s,
                       "language": result.language}, ensure_ascii=False)

