"""A wall-clock budget for `lmforge classify train --time D`: what to train, and for how long.

Like `train --auto` for language models, the budget is split before training and every choice
comes with its reason. Two decisions are made up front, from the size of the training texts:

* which members: the linear model always (seconds, and the strongest single member on most
  sets), a fastText-style bag when it gets a few epochs, a BiLSTM on vectors from the training
  texts when it gets at least two;
* how they are weighed: out-of-fold stacking (each member trained once more per fold) when the
  budget still gives every fold model its minimum, else the validation split.

The training time of each neural model is not fixed up front: `BudgetClock` hands it out when the
model starts, from what is left of the budget at that moment, so a slow start (a busy machine, a
slow linear fit) shrinks the later models instead of overrunning. Each neural model then fits its
learning-rate schedule to its slot (trainer.budget.fit_to_budget) and ends annealed. A reserve at
the end pays for scoring the validation and test texts: a share of the budget at first, then what
the members' measured prediction speed says it will take.

Speeds are rough rates (word tokens per second for one epoch, or one linear fit); they only decide
membership and stacking, never the training time itself. fastText's was read from
`lmforge classify train` on a 5,000-text SST-2 sample on a busy 2-core CPU (the BiLSTM's too, until
the full sets measured it; see TOKENS_PER_S). The linear one was too,
and at 15,000 it was 20 to 30 times too slow: `benchmarks/classify.py --models default,time
--time 10m` on the full sets, on a quiet 2-core CPU, measured the linear model's whole fit (search
for C, fit, refit) at 496,000 (IMDB) and 312,000 (SST-2) by _cost's count of fits, and the 10-minute
plans, believing the linear model alone would take 90 minutes on IMDB, trained nothing else and
scored below the no-option default (91.75% against 92.34% on IMDB, 81.54% against 85.32% on SST-2)
in a third and a sixteenth of their budgets.

In-domain pretraining (a GPT pretrained on the training texts, then fine-tuned as a member; see
classify.pretrain) is added last, and only when the budget still pays for it after the richest
members and stacking have been chosen: its minimum is PRETRAIN_MIN_PASSES passes of pretraining
plus MIN_EPOCHS['gpt'] epochs of fine-tuning per training, at conservative rates read from
`benchmarks/classify.py --max-train 1000 --models gpt-indomain --threads 1` on the busy 2-core CPU
(the default 4 x 128 GPT: about 2,200 BPE tokens, about as many words, per second pretraining;
about 1,000 words per second fine-tuning, evaluations included), plus a fixed PRETRAIN_FIXED_S for
preparing the corpus, the tokenizer, the run folder and the language model's report. When added, it gets
PRETRAIN_SHARE of the training time for pretraining (at most PRETRAIN_MAX_PASSES passes); the gpt
member's fine-tuning then takes its slot from the clock like any neural model. The caller decides
whether it is considered at all (run.plan_run: with --unlabeled text or model.gpt.pretrain 'on').
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Rough rates on a 2-core CPU, tokens x epochs per second (see the module docstring).
TOKENS_PER_S = {"linear": 300_000.0, "fasttext": 100_000.0, "bilstm": 8_000.0, "gpt": 1_000.0}
# The BiLSTM's was 4,000 (the busy sample) until the full-set `--time 10m` runs measured 9,000 (SST-2:
# 633,724 words x 3 epochs in 211 s) and 12,000 (ChnSentiCorp's 90%: 450,000 x 3 in 112 s) on a quiet
# CPU, two threads. At 4,000 a 10-minute plan left the BiLSTM out of sets of 1 to 1.3 million words
# that the no-option default trains it on (in about 6 minutes), and spent the time on out-of-fold
# stacking instead, which buys nothing measurable at that size (README: 5 folds on ChnSentiCorp and
# IMDB, +0.13 and 0 points for four times the training).
PRETRAIN_WORDS_PER_S = 2_000.0  # the in-domain GPT's pretraining (see the module docstring)
PRETRAIN_MIN_PASSES = 3.0
PRETRAIN_MAX_PASSES = 30.0
PRETRAIN_FIXED_S = 15.0  # corpus, tokenizer, model, first step, final evaluation and report
PRETRAIN_SHARE = 0.3  # of the training time, when the in-domain GPT is added
LINEAR_C_SEARCH_FITS = 13  # 3-fold cross-validation over 4 values of C, then the fit itself
VECTORS_S = 15.0  # word vectors from the training texts (PPMI + SVD): mostly the SVD, about fixed
MIN_EPOCHS = {"fasttext": 3.0, "bilstm": 2.0, "gpt": 2.0}
# Share of neural training time: a BiLSTM learns more per extra second than the n-gram bag.
TIME_WEIGHT = {"fasttext": 1.0, "bilstm": 3.0, "transformer": 3.0, "gpt": 3.0}
SCORING_SHARE = 0.05  # of the budget, kept for scoring validation and test texts and saving
SCORING_MIN_S = 5.0  # ... and at least this (predictions, plots, report), until measured
REPORT_S = 2.0  # metrics, plots and the report, after the predictions
# Fixed costs of neural training: the first model measures the CPU's threads and precision (the
# imports it would need are made before the plan, see run._warm_imports), and every model builds
# its vocabulary, measures its step and saves checkpoints.
FIRST_NEURAL_S = 2.0
PER_NEURAL_S = 1.0
MIN_SLOT_S = 1.0
LINEAR_SEARCH_SHARE = 0.2  # of the training time left, at most, for the linear model's search for C
# Neural models stop at train.epochs (3 by default) even when time is left; with train.epochs 0 at this.
# Measured with `benchmarks/classify.py --models time --time 10m` on the full sets (quiet 2-core CPU):
# stretched over the whole budget, the schedule was still high where the models had converged (the
# BiLSTM on SST-2 after 1 to 2 epochs, fastText on IMDB after 1), their best validation loss came
# from an early, unannealed epoch, and the 10-minute runs scored below the no-option default (SST-2
# 83.72% against 85.32%, IMDB 92.14% against 92.34%). Time the members cannot use is left unspent.
MAX_EPOCHS = 60.0
# Nor do more seeds use the spare time well. Tried: the time the members were expected to leave (at
# rates read from these runs) bought copies of the neural members with other seeds, the BiLSTM first,
# at most three of a kind, each kind's copies averaged under one weight. `--time 10m`, full sets,
# quiet 2-core CPU: IMDB 92.30% with three fastText seeds (92.34% with one) in 430 s; SST-2 84.75%
# with two BiLSTMs and three fastTexts (85.32%) in 588 s; ChnSentiCorp 90.73% with three of each
# (90.66%) in 517 s. No change beyond one test set's noise, for up to twice the time: not planned.


@dataclass
class ClassifyPlan:
    members: str
    stacking: str  # 'oof' or 'split'
    folds: int
    epochs: float
    rows: list[tuple[str, str]] = field(default_factory=list)
    pretrain_s: float = 0.0  # in-domain pretraining time of the gpt member (0: none)


def scoring_reserve_s(budget_s: float) -> float:
    return max(SCORING_MIN_S, SCORING_SHARE * budget_s)


def _cost(members: list[str], folds: int, tokens: int) -> float:
    """Least seconds a plan needs: linear fits plus each neural model's minimum epochs, per training."""
    trainings = 1 + folds  # the final members, then one per fold
    # The final linear model searches C, then refits; each fold fits twice with that C.
    s = tokens / TOKENS_PER_S["linear"] * (LINEAR_C_SEARCH_FITS + 1 + 2 * folds)
    neural = [m for m in members if m in MIN_EPOCHS]
    for m in neural:
        s += trainings * (MIN_EPOCHS[m] * tokens / TOKENS_PER_S[m] + PER_NEURAL_S)
    s += FIRST_NEURAL_S if neural else 0.0
    if "bilstm" in members:
        s += VECTORS_S
    if "gpt" in members:
        s += pretrain_min_s(tokens)
    return s


def pretrain_min_s(tokens: int) -> float:
    """Least seconds of in-domain pretraining worth doing on `tokens` words."""
    return PRETRAIN_FIXED_S + PRETRAIN_MIN_PASSES * tokens / PRETRAIN_WORDS_PER_S


def plan_budget(budget_s: float, elapsed_s: float, tokens: int, choose_members: bool, members: str,
                choose_stacking: bool, stacking: str, folds: int, in_domain_gpt: bool = False,
                epochs: float = 3.0) -> ClassifyPlan:
    """Members and stacking for a budget of `budget_s` seconds, `elapsed_s` of them already spent.

    `tokens` is the training texts' rough word count. Members given by the user (choose_members
    False) and a stacking they chose are kept; only what was left 'auto' is decided here.
    `in_domain_gpt`: the members may gain a GPT pretrained on the training texts (model.gpt.pretrain
    not 'off'), added when what is left after the other choices pays for its minimum. `epochs`
    (train.epochs; 0: MAX_EPOCHS) is the most each neural model trains, however much time is left.
    """
    epochs = epochs if epochs > 0 else MAX_EPOCHS
    train_s = max(0.0, budget_s - scoring_reserve_s(budget_s) - elapsed_s)
    member_options = [["linear", "fasttext", "bilstm"], ["linear", "fasttext"], ["linear"]] if choose_members \
        else [[m.strip() for m in members.split(",") if m.strip()]]
    fold_options = ([folds, 3] if folds > 3 else [folds]) + [0] if choose_stacking else \
        [folds if stacking == "oof" else 0]
    chosen = None
    for ms in member_options:
        for k in fold_options:
            if len(ms) == 1 and k:
                continue  # nothing to weigh
            if _cost(ms, k, tokens) <= train_s:
                chosen = (ms, k)
                break
        if chosen:
            break
    if chosen is None:
        chosen = (member_options[-1], 0 if choose_stacking else fold_options[0])
    ms, k = chosen
    gpt_row = None
    if choose_members and in_domain_gpt:
        with_gpt = _cost([*ms, "gpt"], k, tokens)
        if with_gpt <= train_s:
            ms = [*ms, "gpt"]
            gpt_row = (f"added: its minimum ({with_gpt - _cost(ms[:-1], k, tokens):.0f}s: {PRETRAIN_MIN_PASSES:.0f} "
                       f"passes of pretraining, {MIN_EPOCHS['gpt']:.0f} epochs of fine-tuning per training) fits")
        else:
            gpt_row = (f"left out: with it the minimum training is {with_gpt:.0f}s, more than the {train_s:.0f}s "
                       "to train (give more --time)")
    need = _cost(ms, k, tokens)
    rows = [("budget", f"{budget_s:.0f}s: {elapsed_s:.0f}s spent reading, {scoring_reserve_s(budget_s):.0f}s kept for "
                       f"scoring, {train_s:.0f}s to train"),
            ("members", ",".join(ms) + (" (chosen: the richest set whose minimum training fits)" if choose_members
                                        else " (given)")),
            ("stacking", (f"out-of-fold, {k} folds" if k else "validation split")
             + (" (chosen)" if choose_stacking else " (given)")),
            ("minimum training", f"{need:.0f}s of {train_s:.0f}s (rough rates); the rest extends the neural models "
                                 f"up to {epochs:g} epochs (train.epochs: longer ones over-fit in measurements, so "
                                 "the run may end before its budget)")]
    pretrain_s = 0.0
    if "gpt" in ms:
        pretrain_s = max(pretrain_min_s(tokens), min(PRETRAIN_SHARE * train_s,
                                                     PRETRAIN_FIXED_S + PRETRAIN_MAX_PASSES * tokens / PRETRAIN_WORDS_PER_S))
        if gpt_row:
            gpt_row += f"; {pretrain_s:.0f}s of in-domain pretraining"
    if gpt_row:
        rows.insert(2, ("in-domain gpt", gpt_row))
    return ClassifyPlan(",".join(ms), "oof" if k else "split", k or folds, epochs, rows, pretrain_s)


class BudgetClock:
    """Hands each training job its seconds when it starts, from what is left before the deadline.

    Jobs are the neural trainings (weighted by TIME_WEIGHT) and the linear fits (not capped: their
    last measured duration is set aside for each fit still to come). The non-training time of a
    neural job (vocabulary, encoding, vectors) is measured and set aside likewise.
    """

    def __init__(self, end: float, neural: list[str], linear_fits: int, reserve_s: float, scored_texts: int = 0):
        self.end, self.reserve_s, self.scored_texts = end, reserve_s, scored_texts
        self.predict_s_per_text: dict[str, float] = {}
        self.pending = list(neural)
        self.linear_left = linear_fits
        self.linear_s = 0.0
        self.overhead_s = PER_NEURAL_S  # until measured
        self.one_off_s = FIRST_NEURAL_S  # paid by the first neural model

    def slot(self, kind: str, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        if kind in self.pending:
            self.pending.remove(kind)
        weights = [TIME_WEIGHT.get(k, 1.0) for k in self.pending]
        w = TIME_WEIGHT.get(kind, 1.0)
        left = (self.deadline - now - self.linear_left * self.linear_s - (len(weights) + 1) * self.overhead_s
                - self.one_off_s)
        return max(MIN_SLOT_S, left * w / (w + sum(weights)))

    def linear_search_until(self, now: float | None = None) -> float:
        """When the linear model should stop trying values of C: after LINEAR_SEARCH_SHARE of the
        time left (the rate used to plan is rough, and a busy CPU can make the search minutes)."""
        now = time.perf_counter() if now is None else now
        return now + LINEAR_SEARCH_SHARE * max(0.0, self.deadline - now)

    @property
    def deadline(self) -> float:
        """When training must be over: the end less the reserve for scoring."""
        return self.end - self.reserve_s

    def predicted(self, member: str, seconds: float, texts: int) -> None:
        """A member predicted `texts` texts in `seconds`: the scoring reserve follows from the measured speed."""
        if texts:
            self.predict_s_per_text[member] = seconds / texts
            self.reserve_s = REPORT_S + self.scored_texts * sum(self.predict_s_per_text.values())

    def fits(self, seconds: float, now: float | None = None) -> bool:
        """Whether a job of `seconds` started now ends before the deadline."""
        return (time.perf_counter() if now is None else now) + seconds <= self.deadline

    def linear_done(self, seconds: float) -> None:
        self.linear_left = max(0, self.linear_left - 1)
        self.linear_s = seconds

    def neural_done(self, wall_s: float, train_s: float) -> None:
        # The latest, not the largest: the first model also pays one-off imports.
        self.overhead_s = max(0.0, wall_s - train_s)
        self.one_off_s = 0.0
