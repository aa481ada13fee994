"""The planner's rules for each training setting, one small function per setting.

Each returns the value and the reason printed beside it in the plan. The rules are pure: what
they need that was measured (a step time, the passes over the corpus the run will make) is an
argument, so they can be tested and read on their own. The numbers in the reasons and comments are
the measurements behind each rule.
"""

from __future__ import annotations

import math

from lmforge.auto.hardware import Hardware
from lmforge.auto.inputs import PlanOptions
from lmforge.config import Config
from lmforge.trainer.precision import BF16_MIN_SPEEDUP

Fixed = set[str] | frozenset[str]
# A provisional precision to time candidates in: bf16 when its matmuls are clearly faster. The plan's
# precision is decided later on the measured step of the chosen shape (BF16_MIN_SPEEDUP).
PROVISIONAL_BF16_MATMUL_SPEEDUP = 1.5
LIGHT_DROPOUT = 0.05  # the dropout of a few passes over the corpus (see dropout_for_passes)


def plan_optimizer(cfg: Config, fixed: Fixed, opt: PlanOptions) -> tuple[str, str]:
    """The optimizer a planned run uses, and why (before the passes over the corpus are known)."""
    if "optim.kind" in fixed:
        return cfg.optim.kind, "set by you"
    if opt.optimizer == "muon":
        return "muon", ("Muon for the hidden matrices, AdamW for embeddings and norms: in 2 minutes, lower loss than "
                        "AdamW (Tang poems: 2.523 against 2.571 bits per byte; tiny Shakespeare, 8 passes over the "
                        "corpus: 2.125 against 2.137)")
    return opt.optimizer, "set by the plan options"


def optimizer_for_passes(optimizer: str, why: str, passes: float, fixed: Fixed, opt: PlanOptions) -> tuple[str, str]:
    """Muon trains faster per step, but on a small corpus seen many times it overfits sooner."""
    if optimizer == "muon" and "optim.kind" not in fixed and passes > opt.muon_max_epochs:
        return "adamw", (f"{passes:.0f} passes over the corpus: AdamW, which fits more slowly than Muon and so "
                         f"overfits later (Muon is used up to {opt.muon_max_epochs:g} passes)")
    return optimizer, why


def provisional_precision(cfg: Config, fixed: Fixed, hw: Hardware) -> tuple[str, str]:
    """The precision candidates are timed in (on a CPU, confirmed later at the chosen shape)."""
    if "runtime.precision" in fixed and cfg.runtime.precision != "auto":
        return cfg.runtime.precision, "set by you"
    if hw.device == "cuda":
        return ("bf16", "GPU supports bf16") if hw.fast_bf16 else ("fp16", "GPU lacks bf16: fp16 with loss scaling")
    if hw.fast_bf16 and hw.bf16_speedup >= PROVISIONAL_BF16_MATMUL_SPEEDUP:
        return "bf16", f"matmuls measured {hw.bf16_speedup:.1f}x faster in bf16 than fp32"
    return "fp32", ("CPU has no AMX/AVX512-BF16" if not hw.fast_bf16
                    else f"bf16 matmuls measured only {hw.bf16_speedup:.1f}x the speed of fp32")


def precision_at_shape(fp32_s: float, bf16_s: float, micro_batch: int) -> tuple[str, str, float]:
    """bf16 or fp32 from the measured training step of the chosen shape in both: bf16 must be at least
    BF16_MIN_SPEEDUP times faster (the threshold every 'auto' precision in lmforge uses). Returns the
    precision, why, and the measured speed-up."""
    speedup = fp32_s / max(bf16_s, 1e-12)
    measured = (f"a training step at this shape (micro-batch {micro_batch}) measured {fp32_s * 1e3:.1f} ms in fp32, "
                f"{bf16_s * 1e3:.1f} ms in bf16: {speedup:.2f}x")
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"{measured} (bf16 needs >= {BF16_MIN_SPEEDUP:g}x)", speedup
    return "fp32", f"{measured}, below the {BF16_MIN_SPEEDUP:g}x bf16 needs", speedup


def expected_compile(cfg: Config, fixed: Fixed, hw: Hardware, train_s: float, cost_s: float,
                     speedup: float) -> tuple[bool, str]:
    """Compilation pays when the time it saves exceeds its one-off cost by a margin (confirmed by a
    measured compiled step later)."""
    if "runtime.compile" in fixed and cfg.runtime.compile != "auto":
        return cfg.runtime.compile == "on", "set by you"
    if not hw.compile_ok:
        return False, f"torch.compile unavailable: {hw.compile_why}"
    saved = train_s * (1 - 1 / speedup)
    why = (f"saves about {saved:.0f}s of {train_s:.0f}s training (expected {speedup:.1f}x faster steps) for a "
           f"one-off cost of about {cost_s:.0f}s")
    if saved > 1.5 * cost_s:
        return True, why
    return False, "not worth it: " + why


def compiled_speedup_verdict(speedup: float, cost_s: float, opt: PlanOptions) -> tuple[bool, str]:
    """Whether a measured compiled step is fast enough to use."""
    if speedup < opt.compile_min_speedup:
        return False, (f"measured a compiled step only {speedup:.2f}x as fast as an eager one (compiling took "
                       f"{cost_s:.0f}s); not used")
    return True, f"measured a compiled step {speedup:.2f}x as fast as an eager one; compiling took {cost_s:.0f}s"


def threads_verdict(one_s: float | None, all_s: float | None, worst_s: float, n_threads: int) -> tuple[bool, str]:
    """Whether to train on one thread: when other programs keep the cores busy, threads that wait for
    each other can make a step several times slower than one thread alone. `worst_s` is the slowest
    repeat on all threads: stalls show there first. Returns (use one thread, why)."""
    if one_s is not None and (all_s is None or one_s < 0.85 * all_s or worst_s > 1.3 * one_s):
        if all_s is None:
            why = "all threads failed to run"
        elif one_s < 0.85 * all_s:
            why = (f"a training step measured {all_s / one_s:.1f}x faster on one thread than on {n_threads}: other "
                   "programs are using the cores")
        else:
            why = (f"{n_threads} threads were {one_s / all_s:.1f}x faster at best, but their slowest step took "
                   f"{worst_s / one_s:.1f}x a one-thread step: other programs are using the cores, and there one "
                   "thread is the robust choice")
        return True, why + " (applies to this process; set OMP_NUM_THREADS=1 for a later run)"
    return False, "all cores: " + (f"one thread measured {all_s / one_s:.2f}x as fast" if one_s else "one thread failed")


def dropout_for_passes(passes: float) -> tuple[float, str]:
    """Dropout from the passes over the corpus an uncompiled run would make."""
    if passes <= 4:
        # Up to about 4 passes, repeated data is worth nearly as much as fresh (Muennighoff et al.).
        return 0.0, f"{passes:.1f} passes over the corpus: no regularization needed"
    if passes <= 16:
        # Tiny Shakespeare, 9 passes, 2 layers x 128, 1800 steps: dropout 0 / 0.05 / 0.1 / 0.2 gave
        # 2.141 / 2.117 / 2.148 / 2.197 bits per byte.
        return LIGHT_DROPOUT, (f"{passes:.1f} passes over the corpus: light regularization (on tiny Shakespeare, 9 passes, "
                      "0.05 beat 0, 0.1 and 0.2)")
    if passes <= 48:
        return 0.1, f"{passes:.0f} passes over a small corpus: some overfitting to guard against"
    return 0.2, f"{passes:.0f} passes over a small corpus: strong regularization"


def light_dropout_or_compile_why(passes: float, compile_speedup: float) -> str:
    """Why a compiled CPU run goes without light dropout: compiled random masks are slow (see
    `compile_with_dropout_why`), and the tokens compiling adds are worth more than light dropout. On
    tiny Shakespeare at 9 passes dropout 0.05 gained 1.1% (2.141 -> 2.117 bits per byte); about 1.6x
    the tokens lower the rule's data term by about 12%. Without this, a longer budget whose passes
    crossed the dropout boundary lost its compiled speed and trained on fewer tokens than a shorter one."""
    return (f"{passes:.1f} passes over the corpus (uncompiled): compiling (about {compile_speedup:.1f}x the "
            f"tokens) is worth more than light dropout ({LIGHT_DROPOUT:g}), which a compiled CPU step runs slowly")


# Random masks are slow in compiled CPU code: on tiny Shakespeare (2 layers x 128, dropout 0.1) a
# compiled step was only 1.16x as fast as an eager one, against 1.8x without dropout, which did not
# repay 14 s of compiling.
def compile_with_dropout_why(dropout: float) -> str:
    return (f"not worth it with dropout {dropout:g} on a CPU: compiled random masks are slow (measured 1.16x "
            "faster steps, against 1.8x without dropout)")


def global_batch(tokens: float, target_steps: int, micro: int, context_len: int, opt: PlanOptions,
                 on_gpu: bool = False, keep_accum: int = 0, keep_seqs: int = 0) -> tuple[int, int, str]:
    """(sequences per optimizer step, micro-batch, why): about `target_steps` optimizer steps in the
    budget, in equal micro-batches near the measured knee `micro`.

    Short runs learn more from many small steps than from few large ones (nanoGPT's baby setting:
    2000 steps of 768 tokens), even below the throughput knee: a micro-batch of a quarter of the
    knee size still runs at about 80% of the speed. The batch follows the tokens in the budget to
    the sequence rather than to a multiple of the knee: a machine measured 5% faster gets a batch
    about 5% larger, not one micro-batch more (which doubled the batch and halved the steps when a
    step held one or two micro-batches). So the micro-batch moves around the knee: on a CPU between
    3/4 and 3/2 of it (throughput is flat above the knee), on a GPU up to it (the knee is what fits).
    `keep_accum` (an earlier plan's accumulation for the same inputs) is kept while its micro-batch
    stays between 0.6 and 1.7 times the knee on a CPU. A batch of one micro-batch is a handful of
    sequences, where one sequence more or less is a step of 10-15%: an earlier plan's `keep_seqs`
    is kept while the wanted batch stays between 2/3 and 3/2 of it: the throughput measured in a few
    seconds of planning moves by 15-30% from run to run on a 2-core machine (tiny Shakespeare, 2
    minutes: a batch wanted near 8 sequences was cut to 7 in one run of three; Tang poems: 6, 7 and
    5 sequences in three runs), while the loss is flat over such a range of batch sizes.
    """
    T = context_len
    want = tokens / target_steps / T  # sequences per step
    if want <= micro:
        seqs = min(micro, max(opt.min_batch_tokens // T, 1, round(want)))
        kept = ""
        if keep_seqs and keep_seqs != seqs and keep_seqs <= micro and 2 / 3 <= want / keep_seqs <= 1.5:
            seqs = max(opt.min_batch_tokens // T, 1, keep_seqs)
            kept = f"; {keep_seqs} sequences kept from the earlier plan ({want:.2f} wanted now)"
        return seqs, seqs, (f"about {target_steps} optimizer steps in the budget (many small steps beat few large "
                            f"ones in a short run), at least {opt.min_batch_tokens} tokens{kept}")
    accum = math.ceil(want / micro) if on_gpu else max(1, round(want / micro))
    if keep_accum and not on_gpu and 0.6 * micro <= want / keep_accum <= 1.7 * micro:
        accum = keep_accum
    micro = min(micro, math.ceil(want / accum)) if on_gpu else max(1, round(want / accum))
    return micro * accum, micro, f"about {target_steps} optimizer steps in the budget"


def rule_lr(d_model: int, batch_tokens: int, optimizer: str = "adamw") -> float:
    """Peak learning rate: about 1/width (muP-like), lowered gently for small batches.

    AdamW anchors: 1e-3 at width 384 with 16k-token batches (nanoGPT's character model); on tiny
    Shakespeare at 100 s (BPE), 1.5e-3 beat 7.5e-4 and 3e-3 at width 96 with 512-token batches,
    and 2e-3 beat 1e-3 at width 128 with 1024-token batches.
    Muon (update matched to AdamW's RMS) takes about 2.5x that: on Tang poems, 2 layers x 128,
    3072-token batches, 800 steps, 8e-3 and 4e-3 gave 2.556 and 2.560 bits per byte against 2.599
    at 2e-3, while AdamW at 4e-3 diverged to 2.766.
    """
    if optimizer == "muon":
        base = min(8e-3, 1.0 / d_model)
    else:
        base = min(3e-3, 0.4 / d_model)
    return base * min(1.0, (batch_tokens / 8192) ** 0.25)


def rule_lr_why(optimizer: str) -> str:
    return (("about 1/width capped at 8e-3 (Muon)" if optimizer == "muon" else "about 0.4/width capped at 3e-3")
            + ", times (batch/8192)^0.25 for batches below 8k tokens")


def warmup_steps(steps: int) -> int:
    """4% of the steps, between 10 and 1000."""
    return int(min(1000, max(10, 0.04 * steps)))


SCHEDULE_WHY = ("warm-up-stable-decay: the decay (last 25%) starts when the remaining time is known, so a "
                "mis-estimated step count costs nothing")
