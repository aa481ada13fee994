"""How often does timing noise change the plan? The planner on a fake machine, no training.

For each budget x corpus size, a plan is made on a fake CPU (a per-layer overhead plus FLOPs at a
rate that rises with the matrix size), then again with the step times perturbed: all scaled by
0.95 and 1.05 (a machine a little faster or slower), and with an independent factor in
[0.95, 1.05] per timed shape (noise). It counts the cases where the shape, context or optimizer
changed, and where the global batch or the steps moved by more than 10%:

  rule:    the tie grid (PlanOptions.tie_fraction: the cheapest shape in the best cell), no memory
  argmin:  tie_fraction 0 (the lowest predicted loss, whatever the margin)
  memory:  the rule, given the first plan as the earlier plan for the same inputs (hysteresis)

    python benchmarks/plan_stability.py [--draws 4] [--flat]

Prints one line per variant and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmforge.auto.arithmetic import flops_per_token  # noqa: E402
from lmforge.auto.hardware import Hardware  # noqa: E402
from lmforge.auto.hysteresis import PreviousPlan  # noqa: E402
from lmforge.auto.inputs import DataFacts, PlanOptions  # noqa: E402
from lmforge.auto.plan import make_plan  # noqa: E402
from lmforge.config import Config  # noqa: E402

VOCAB = 65
BUDGETS = (30, 45, 60, 90, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600)
CORPORA = (50_000, 150_000, 400_000, 1_000_000, 3_000_000, 10**7, 10**9)


class FakeCPU:
    """Step time: 2 ms per layer plus FLOPs at up to 0.2 (bf16) / 0.08 (fp32) TFLOP/s, reached with
    matrices of 4096 tokens x 256 wide; `flat` makes the rate rise gently below that (a quarter of
    the size at about 80% of the speed) instead of in proportion."""

    def __init__(self, flat: bool, factor: float | None = None, seed: int | None = None):
        self.flat, self.factor = flat, factor
        self.rng, self.noise = random.Random(seed), {}
        self.last_compile_s = 0.0

    def __call__(self, c, mb, precision, compiled=False, **run):
        tokens = mb * c.context_len
        fill = min(1.0, tokens * c.d_model / (4096 * 256))
        fill = fill ** 0.2 if self.flat else max(fill, 0.05)
        t = 0.002 * c.n_layer + tokens * flops_per_token(c, VOCAB) / ({"bf16": 0.2e12, "fp32": 0.08e12}[precision] * fill)
        if compiled:
            self.last_compile_s, t = 15.0, t / 1.8
        if self.factor is not None:
            return t * self.factor
        if self.rng is not None and self.noise is not None:
            return t * self.noise.setdefault((c, mb, precision, compiled), 1 + self.rng.uniform(-0.05, 0.05))
        return t


def plan(budget, tokens, timer, options, previous=None):
    hw = Hardware(device="cpu", name="fake CPU", cores=2, threads=2, memory_bytes=16 * 2**30, fast_bf16=True,
                  fp32_tflops=0.1, bf16_tflops=0.5, compile_ok=True, compile_why="fake")
    ticks = itertools.count()
    return make_plan(Config(), DataFacts(tokens, max(1000, tokens // 10), VOCAB), hw, budget, timer,
                     clock=lambda: next(ticks) * 1e-6, options=options, previous=previous)


def key(p):
    m = p.config.model
    return m.n_layer, m.d_model, m.context_len, p.config.optim.kind


def variant(name: str, flat: bool, draws: int) -> dict:
    options = PlanOptions(tie_fraction=0.0) if name == "argmin" else PlanOptions()
    changed = {"uniform": 0, "per_shape": 0}
    batch_or_steps = 0
    for budget, tokens in itertools.product(BUDGETS, CORPORA):
        first = plan(budget, tokens, FakeCPU(flat, seed=None), options)
        previous = PreviousPlan.from_dict(first.to_dict(), "first") if name == "memory" else None
        runs = {"uniform": [FakeCPU(flat, factor=f) for f in (0.95, 1.05)],
                "per_shape": [FakeCPU(flat, seed=s) for s in range(draws)]}
        moved = False
        for kind, timers in runs.items():
            again = [plan(budget, tokens, t, options, previous) for t in timers]
            changed[kind] += any(key(a) != key(first) for a in again)
            moved |= any(key(a) == key(first) and (
                abs(a.config.train.global_batch_tokens / first.config.train.global_batch_tokens - 1) > 0.1
                or abs(a.estimates["steps"] / first.estimates["steps"] - 1) > 0.1) for a in again)
        batch_or_steps += moved
    n = len(BUDGETS) * len(CORPORA)
    print(f"{name:7s}: shape, context or optimizer changed in {changed['uniform']}/{n} cases by +-5% overall, "
          f"{changed['per_shape']}/{n} by +-5% per shape; batch or steps moved >10% in {batch_or_steps}/{n}")
    return {"cases": n, "changed_uniform": changed["uniform"], "changed_per_shape": changed["per_shape"],
            "batch_or_steps_over_10pct": batch_or_steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=4, help="per-shape noise draws per case")
    ap.add_argument("--flat", action="store_true", help="a throughput curve that is flat near the knee")
    args = ap.parse_args()
    out = {name: variant(name, args.flat, args.draws) for name in ("argmin", "rule", "memory")}
    print(json.dumps({"bench": "plan_stability", "flat": args.flat, "draws": args.draws, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
