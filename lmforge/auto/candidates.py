"""Candidate shapes, their speed on this machine, and the search for the best one.

Speed is measured, not assumed: the real training step (forward, backward, optimizer) of candidate
shapes is timed on this machine, the minimum of a few repeats so that noise from other programs
does not count. Shapes not measured are estimated from the nearest measured one, scaled by FLOPs;
the search measures the best-ranked shapes until the top ones are all measured. Because speed is
measured, a small model that runs no faster than a larger one (common on CPUs, where small matrices
waste the cores) is not chosen just for its size.

Each shape is ranked by the loss the scaling rule predicts for the tokens it can train on in the
budget (see scaling). Shapes whose predicted loss is within a few percent of the best are a near
tie: the choice among them is made by a fixed rule (the cheapest step), not by which one happened
to time a little faster, so the same corpus, budget and machine give the same plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lmforge.auto.arithmetic import Candidate, ShapeCounts, memory_needed, round_pow2_down, shape_counts
from lmforge.auto.inputs import PlanOptions
from lmforge.auto.scaling import predicted_loss
from lmforge.config import ModelConfig
from lmforge.errors import ConfigError

LOOP_EFFICIENCY = 0.85  # measured throughput of the training loop relative to the timed step
WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
DEPTHS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
CONTEXTS = (64, 128, 256, 512, 1024, 2048)


def head_count(d_model: int) -> int:
    head_dim = 32 if d_model <= 256 else 64
    return max(1, d_model // head_dim)


def context_cap(unique_tokens: float) -> int:
    """Longest context worth having: a sixteenth of the corpus, as a power of two (64 at least)."""
    return max(CONTEXTS[0], min(CONTEXTS[-1], round_pow2_down(unique_tokens / 16)))


def default_context(d_model: int, n_layer: int, vocab: int, cap: int, base: ModelConfig | None = None,
                    n_head: int | None = None) -> int:
    """Longest power-of-two context whose attention costs at most an eighth of the weight FLOPs.

    A longer context lowers the loss (more to condition on) and costs little until attention,
    whose cost per token grows with the context, dominates the step. (On tiny Shakespeare at 100 s,
    128 characters beat 64 and 256.)
    """
    probe = Candidate(n_layer, d_model, n_head or head_count(d_model), CONTEXTS[0])
    counts = shape_counts(probe, vocab, base)
    weights = counts.weight_flops_per_token
    attn_per_context_token = (counts.flops_per_token - weights) / probe.context_len
    best = CONTEXTS[0]
    for T in CONTEXTS:
        if T <= cap and attn_per_context_token * T <= 0.125 * weights:
            best = T
    return best


def candidate_shapes(model: ModelConfig, fixed: set[str] | frozenset[str], vocab: int, unique_tokens: float,
                     memory_bytes: float, measure_tokens: int) -> list[Candidate]:
    """The grid of shapes (widths, depths with 16 to 128 channels per layer, heads of 32 or 64, the
    default context), restricted by what the user fixed and by memory."""
    cap = context_cap(unique_tokens)
    widths = [model.d_model] if "model.d_model" in fixed else list(WIDTHS)
    cands = []
    for d in widths:
        depths = [model.n_layer] if "model.n_layer" in fixed else [L for L in DEPTHS if 16 <= d / L <= 128]
        for L in depths:
            h = model.n_head if "model.n_head" in fixed else head_count(d)
            if d % h or (model.position == "rope" and (d // h) % 2):
                continue
            T = model.context_len if "model.context_len" in fixed else default_context(d, L, vocab, cap, model, h)
            c = Candidate(L, d, h, T)
            if memory_needed(c, vocab, max(1, measure_tokens // T), model) > 0.6 * memory_bytes:
                continue
            cands.append(c)
    if not cands:
        raise ConfigError("no model shape fits the fixed settings and this machine's memory; "
                          "unset some model.* options or give a smaller model")
    return cands


@dataclass
class Speeds:
    """Training tokens per second of each shape: measured where timed, else estimated.

    Before anything is measured the estimate is a share of the measured matmul peak; afterwards the
    nearest measured shape (in log width, depth and context), scaled by FLOPs per token.
    """

    vocab: int
    model: ModelConfig
    prior_flops: float
    measured: dict[Candidate, float] = field(default_factory=dict)
    failed: set[Candidate] = field(default_factory=set)

    def flops(self, c: Candidate) -> float:
        return shape_counts(c, self.vocab, self.model).flops_per_token

    def estimate(self, c: Candidate) -> tuple[float, bool]:
        if c in self.measured:
            return self.measured[c], True
        if not self.measured:
            return self.prior_flops / self.flops(c), False

        def dist(m: Candidate) -> float:
            return (abs(math.log(m.d_model / c.d_model)) + abs(math.log(m.n_layer / c.n_layer))
                    + 0.5 * abs(math.log(m.context_len / c.context_len)))

        m = min(self.measured, key=dist)
        return self.measured[m] * self.flops(m) / self.flops(c), False


@dataclass
class Scored:
    cand: Candidate
    counts: ShapeCounts
    tokens_per_s: float
    measured: bool
    tokens: float = 0.0
    score: float = math.inf

    @property
    def params(self) -> int:
        return self.counts.params

    @property
    def block_params(self) -> int:
        return self.counts.block_params

    def to_dict(self) -> dict:
        return {"name": self.cand.name, **asdict(self.cand), "params": self.params,
                "block_params": self.block_params, "tokens_per_s": round(self.tokens_per_s),
                "tokens": round(self.tokens), "measured": self.measured, "score": self.score}


LADDER_STEP = 2 ** 0.125  # training times the shape is decided at: a grid of about 9% steps
LADDER_START_S = 8.0


def ladder_floor(seconds: float) -> float:
    """`seconds` rounded down to the ladder of training times (LADDER_START_S x LADDER_STEP^k)."""
    if seconds <= LADDER_START_S:
        return seconds
    return LADDER_START_S * LADDER_STEP ** math.floor(math.log(seconds / LADDER_START_S, LADDER_STEP) + 1e-9)


def ladder_below(seconds: float) -> list[float]:
    """The ladder's training times below `seconds`, shortest first."""
    out, t = [], LADDER_START_S
    while t < seconds * (1 - 1e-9):
        out.append(t)
        t *= LADDER_STEP
    return out


@dataclass
class ShapeSearch:
    """Ranks the candidates by predicted loss with their (measured or estimated) speed, and times the
    best-ranked ones until the top of the ranking is measured.

    More time must never give a worse plan. So the shape is decided for the training time rounded
    down to a ladder of about 9% steps (`ladder_floor`), walking up the ladder from a few seconds:
    at each rung the choice is made among shapes at least as large (in block parameters) as the
    rung below chose. Along the ladder the chosen shape then never shrinks and its predicted loss
    never rises (the same shape gets more tokens, or a larger one is in a lower cell of the tie
    grid), and between rungs the shape stays and only its tokens grow."""

    cands: list[Candidate]
    speeds: Speeds
    unique_tokens: float
    train_s: float  # training time each shape would get
    speed_factor: float  # expected from compiling
    opt: PlanOptions

    @property
    def decision_s(self) -> float:
        """The training time the shape is decided for (see the class note)."""
        return ladder_floor(self.train_s)

    def speeds_now(self) -> list[tuple[Candidate, ShapeCounts, float, bool]]:
        """(shape, counts, expected training tokens/s, measured) of every candidate that can run."""
        out = []
        for c in self.cands:
            if c not in self.speeds.failed:
                tps, is_measured = self.speeds.estimate(c)
                out.append((c, shape_counts(c, self.speeds.vocab, self.speeds.model),
                            tps * self.speed_factor * LOOP_EFFICIENCY, is_measured))
        return out

    def score_all(self, train_s: float, now: list | None = None) -> list[Scored]:
        """Every candidate scored for `train_s` of training (with `now`, speeds_now() computed once),
        ranked: the tokens-per-parameter floor first, then the predicted loss."""
        out = []
        for c, counts, tps, is_measured in (self.speeds_now() if now is None else now):
            s = Scored(c, counts, tps, is_measured)
            s.tokens = tps * train_s
            # Fewer than a few dozen steps' worth of tokens is not a training run.
            if s.tokens >= 32 * c.context_len:
                s.score = predicted_loss(s.block_params, s.tokens, self.unique_tokens, self.opt)
            out.append(s)
        # At CPU-minute scale the fit favours models too large for the tokens they get: Tang poems,
        # 2 minutes, 2L x 128 at about 6 tokens per block parameter reached 2.615 bits per byte
        # against 2.78-2.80 for 3-4 layers at 1.5-2.3. Shapes below the floor rank after the rest.
        out.sort(key=lambda s: (self.below_floor(s), s.score))
        return out

    def min_block_params(self, now: list | None = None) -> int:
        """The smallest shape (block parameters) the decision may take: what the ladder's rungs below
        the decision time chose, each among shapes no smaller than the rung below it."""
        now = self.speeds_now() if now is None else now
        least = 0
        for t in ladder_below(self.decision_s):
            allowed = [s for s in self.score_all(t, now) if math.isfinite(s.score) and s.block_params >= least]
            # A rung commits only to a shape that would really train (at or above the floor of tokens
            # per parameter); below it the ranking is a fallback, not a choice to build on.
            if allowed and not self.below_floor(allowed[0]):
                least = min(self.near_ties(allowed, allowed[0]), key=cost).block_params
        return least

    def rank(self) -> list[Scored]:
        """The candidates ranked at the decision time, without those smaller than the ladder allows."""
        now = self.speeds_now()
        ranked = self.score_all(self.decision_s, now)
        least = self.min_block_params(now)
        allowed = [s for s in ranked if s.block_params >= least]
        return allowed if any(math.isfinite(s.score) for s in allowed) else ranked

    def below_floor(self, s: Scored) -> bool:
        return s.tokens < self.opt.min_tokens_per_param * s.block_params

    def near_floor_group(self, kept: Scored, best: Scored) -> bool:
        """Whether an earlier plan's shape counts as in `best`'s floor group: the same group, or just
        below the floor (within the keep band) when `best` is above it."""
        from lmforge.auto.hysteresis import KEEP_BAND

        if self.below_floor(kept) == self.below_floor(best):
            return True
        return (self.below_floor(kept) and kept.tokens >= (1 - KEEP_BAND) * self.opt.min_tokens_per_param
                * kept.block_params)

    def cell(self, score: float) -> int:
        """The predicted loss rounded down to a geometric grid of `tie_fraction` steps: shapes in the
        same cell are a near tie, decided by a fixed rule (the cheapest), not by timing noise."""
        return math.floor(math.log(max(score, 1e-12)) / math.log1p(self.opt.tie_fraction)) if (
            self.opt.tie_fraction > 0) else 0

    def tied(self, s: Scored, best: Scored) -> bool:
        """Whether `s` is in a near tie with `best`: the same floor group and, with a tie grid, the same
        cell (without one, the same score)."""
        if self.below_floor(s) != self.below_floor(best):
            return False
        return self.cell(s.score) == self.cell(best.score) if self.opt.tie_fraction > 0 else s.score <= best.score

    def near_ties(self, ranked: list[Scored], best: Scored) -> list[Scored]:
        """Shapes in a near tie with `best` (see `tied`)."""
        return [s for s in ranked if self.tied(s, best)]

    def search(self, tokens_per_s: Callable[[Candidate], float | None], out_of_time: Callable[[], bool],
               keep: Candidate | None = None) -> None:
        """Time shapes (`tokens_per_s(c)`, None when it cannot run) until the top three of the
        ranking, the cheaper shapes in a near tie with the best, the best shape of each neighbouring
        width and `keep` (the previous plan's shape) are measured; or until `opt.max_measured`
        shapes are, or planning time is up."""
        while len(self.speeds.measured) < self.opt.max_measured:
            ranked = [s for s in self.rank() if math.isfinite(s.score)]
            if not ranked:
                break
            ties = [s for s in self.near_ties(ranked, ranked[0]) if cheaper(s, ranked[0])]
            todo = [s.cand for s in ranked[:3] + sorted(ties, key=cost) + neighbours(ranked) if not s.measured]
            # The earlier plan's shape first: timed last, it could miss the limit of timed shapes.
            todo = ([keep] if keep in self.cands and keep not in {*self.speeds.measured, *self.speeds.failed}
                    else []) + todo
            if not todo or (self.speeds.measured and out_of_time()):
                break
            tps = tokens_per_s(todo[0])
            if tps is None or tps <= 0:
                self.speeds.failed.add(todo[0])
            else:
                self.speeds.measured[todo[0]] = tps

    def pick(self, budget_s: float, keep: Candidate | None = None) -> tuple[Scored, list[Scored], list[Scored]]:
        """The chosen shape, the ranking it was chosen from (finite scores only), and the shapes of a
        close call: those a small change in the measured speeds could have chosen instead.

        Predicted losses are rounded down to a grid of `tie_fraction` steps (see `cell`); among the
        measured shapes in the best one's cell, the cheapest (fewest block parameters, then fewest
        FLOPs per token) is chosen: timing noise moves predicted losses by about a percent (5% more
        tokens lower the data term by 1.4%), so a closer race is decided by the rule, not by the
        noise. At this scale the smaller shape is also the safer bet: the fit favours models too large
        for their tokens (see the floor in `rank`). The grid is fixed, not drawn around the best shape
        (a band within x% of the best): with more time every shape's predicted loss falls, so the
        chosen cell never rises and the plan's predicted loss never grows with the budget, and a
        band's edge moved with the best shape, which added close calls.

        `keep` (the shape of an earlier plan for the same inputs, see hysteresis) stays chosen while
        its predicted loss is within twice the tie band of the best: taken at most one band from the
        best, it moves less than another band with 5% of timing noise."""
        ranked = [s for s in self.rank() if math.isfinite(s.score)]
        if not ranked:
            raise ConfigError(f"no model shape trains for a useful number of steps in {budget_s:.0f}s on this "
                              "machine; give more time")
        best = next((s for s in ranked if s.measured), ranked[0])  # an unmeasured best: planning time ran out
        ties = [s for s in self.near_ties(ranked, best) if s.measured]
        chosen = min(ties, key=cost) if ties else best
        # An earlier plan was made for the same budget: its shape may be kept even where noise moved
        # the ladder's lower rungs above it (the ladder orders budgets, not repeats of one).
        kept = next((s for s in self.score_all(self.decision_s) if s.cand == keep and s.measured), None)
        if (kept is not None and self.near_floor_group(kept, best)
                and kept.score <= best.score * (1 + 2 * self.opt.tie_fraction)):
            return kept, ranked, [chosen] if chosen is not kept else []
        return chosen, ranked, self._contenders(ranked, best, chosen)

    def _contenders(self, ranked: list[Scored], best: Scored, chosen: Scored) -> list[Scored]:
        """Measured shapes that about 1.5% of noise in the predicted loss (5% in speed) or 5% in tokens
        per parameter could have chosen instead of `chosen`: those that could cross a line of the tie
        grid (into or out of the chosen cell) and are cheaper than `chosen` or the best, and
        better-scored ones just below the tokens-per-parameter floor."""
        edge = 0.015
        out = []
        for s in ranked:
            if not s.measured or s is chosen:
                continue
            crosses = self.cell(s.score * (1 - edge)) != self.cell(s.score * (1 + edge))
            if self.below_floor(s) == self.below_floor(best) and crosses and (cheaper(s, chosen) or s is best):
                out.append(s)
            elif (self.below_floor(s) and not self.below_floor(chosen) and s.score < chosen.score
                  and s.tokens >= 0.95 * self.opt.min_tokens_per_param * s.block_params):
                out.append(s)
        if chosen.measured and self.cell(chosen.score * (1 - edge)) != self.cell(chosen.score * (1 + edge)):
            out += [s for s in ranked if s.measured and s is not chosen and s not in out
                    and self.below_floor(s) == self.below_floor(chosen) and self.cell(s.score) in
                    (self.cell(chosen.score * (1 - edge)), self.cell(chosen.score * (1 + edge)))][:1]
        return out

    def close_call(self, chosen: Scored, ranked: list[Scored], contenders: list[Scored],
                   kept_from: str | None = None) -> dict | None:
        """The plan's record of a close call on the shape: what was chosen over what, and the
        measurement that decided (`kept_from`: the earlier plan whose shape was kept)."""
        if not contenders:
            return None
        best = next(s for s in ranked if s.measured)
        other = contenders[0]
        gap = abs(other.score / chosen.score - 1)
        if kept_from is not None:
            rule = (f"kept the shape of the earlier plan for the same inputs ({kept_from}): within "
                    f"{200 * self.opt.tie_fraction:g}% of the best")
        elif self.below_floor(other) != self.below_floor(chosen):
            rule = (f"{other.cand.short} would train on {other.tokens / other.block_params:.1f} tokens per block "
                    f"parameter, below the floor of {self.opt.min_tokens_per_param:g}")
        elif chosen is best:
            rule = f"chose the lowest; predicted losses are compared on a grid of {100 * self.opt.tie_fraction:g}% steps"
        else:
            rule = (f"chose the cheapest shape in the lowest cell of the {100 * self.opt.tie_fraction:g}% grid of "
                    "predicted losses")
        return {"decision": "model", "chose": chosen.cand.short, "over": other.cand.short, "value": round(gap, 4),
                "measurement": (f"predicted loss {100 * gap:.1f}% apart, from {chosen.tokens_per_s:,.0f} and "
                                f"{other.tokens_per_s:,.0f} measured tokens/s; {rule}")}


def neighbours(ranked: list[Scored]) -> list[Scored]:
    """The best-ranked shape of each width next to the best one's: an estimate scaled by FLOPs from
    another width misses how much better larger matrices use the cores, so which widths get timed
    would otherwise depend on which shape happened to be timed first."""
    widths = sorted({s.cand.d_model for s in ranked})
    i = widths.index(ranked[0].cand.d_model)
    near = set(widths[max(0, i - 1): i + 2]) - {ranked[0].cand.d_model}
    return [next(s for s in ranked if s.cand.d_model == w) for w in sorted(near)]


def cost(s: Scored) -> tuple[int, float]:
    return s.block_params, s.counts.flops_per_token


def cheaper(a: Scored, b: Scored) -> bool:
    return cost(a) < cost(b)
