"""In-domain pretraining for the gpt member (ULMFiT's first stages): a GPT learns the language of
the task's own texts before it is fine-tuned as a classifier.

The language model is trained by `lmforge.lm.pretrain.train` (the one training loop) into
RUN/pretrain, a language-model run folder of its own inside the classifier's run folder, on the
training texts plus any unlabeled text the user gives (`data.unlabeled`). It never sees the
validation or test texts. It sees no labels either, so with out-of-fold stacking every fold's gpt
member fine-tunes this same model although it was pretrained on the fold's held-out texts too:
the held-out labels stay unseen, which is all the out-of-fold weights need (the same holds for the
word vectors computed from the training texts).

The shape is fixed and small (model.gpt.pretrain_d_model x pretrain_n_layer, 128 tokens of context,
a BPE vocabulary sized to the corpus), so that a CPU pretrains it in minutes; the run's length is
pretrain_epochs passes, cut by pretrain_time_s (the loop fits its schedule to the time). A given
model.gpt.run with pretrain 'on' is continued instead (`init`), keeping its shape and tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from lmforge import runs
from lmforge.atomic import atomic_write_text
from lmforge.classify.config import ClassifyConfig
from lmforge.config import Config
from lmforge.errors import ConfigError, TrainingError

FOLDER = "pretrain"  # inside the classifier's run folder
CORPUS = "corpus.jsonl"  # the pretraining texts, written into FOLDER
CONTEXT_LEN = 128
BATCH_SEQUENCES = 16
BYTES_PER_TOKEN = 4.0  # rough, for the step count before the tokenizer exists (BPE of a few thousand ids)
MIN_VOCAB, MAX_VOCAB = 512, 4096


def vocab_size_for(corpus_bytes: int) -> int:
    """A BPE vocabulary the corpus can fill: about one id per 64 bytes of text, within [512, 4096]."""
    return int(min(MAX_VOCAB, max(MIN_VOCAB, 2 ** round(math.log2(max(1, corpus_bytes) / 64)))))


def lm_config(cfg: ClassifyConfig, folder: Path, corpus_bytes: int, seconds: float) -> Config:
    """The language model's config: small, fixed shape; pretrain_epochs passes or `seconds`, whichever ends first."""
    g = cfg.model.gpt
    lm = Config(out=str(folder), seed=cfg.seed)
    lm.data.path = str(folder / CORPUS)
    lm.data.val_fraction = 0.05
    lm.data.num_workers = 1
    lm.tokenizer.vocab_size = vocab_size_for(corpus_bytes)
    if g.run and g.pretrain == "on":
        from lmforge.lm.model import init_model_config

        # Continued pretraining: the given model's shape and tokenizer, with this context.
        lm.init = g.run
        lm.model = init_model_config(g.run, CONTEXT_LEN)
    else:
        m = lm.model
        m.d_model, m.n_layer = g.pretrain_d_model, g.pretrain_n_layer
        m.n_head = m.d_model // 32 if m.d_model % 32 == 0 else m.d_model // 8
        m.dropout = 0.1  # many passes over a small corpus
    lm.model.context_len = CONTEXT_LEN
    lm.train.global_batch_tokens = BATCH_SEQUENCES * lm.model.context_len
    tokens = corpus_bytes / BYTES_PER_TOKEN
    steps = max(10, math.ceil(g.pretrain_epochs * tokens / lm.train.global_batch_tokens))
    lm.train.max_steps = steps
    lm.train.time_budget_s = seconds
    lm.train.track = cfg.train.track
    # Short: under a time limit on a CPU only a few hundred steps may fit, and the schedule is fitted to them.
    lm.schedule.warmup_steps = min(30, steps // 10)
    lm.eval.interval = max(1, steps // 5)
    lm.eval.max_tokens = 65536
    lm.sample.num_samples = 0
    # 'auto' compiles runs of 1,000 steps or more, but a time-bounded pretraining on a CPU rarely
    # repays the minute that compiling costs there: compile only when asked.
    lm.runtime = replace(cfg.runtime, compile="on" if cfg.runtime.compile == "on" else "off")
    return lm


def pretrain_gpt(cfg: ClassifyConfig, texts: Sequence[str], unlabeled: Sequence[str], run_dir: Path,
                 seconds: float, resume: bool, progress: bool, log: Callable[[str], None]) -> tuple[Path, dict]:
    """Pretrain (or, resuming, finish or reuse) RUN/pretrain on `texts` + `unlabeled`; (its folder, facts)."""
    from lmforge.lm.pretrain import train

    folder = run_dir / FOLDER
    info = runs.read_info(folder) if folder.is_dir() else None
    if resume and info and (info.get("status") == "finished" or runs.started(folder, "lm")):
        try:
            result = train(None, resume=folder, progress=progress)
        except (ConfigError, TrainingError):
            result = None  # nothing intact to resume: start it again below
        if result is not None:
            return folder, _facts(result, 0, 0)
    runs.claim(folder, "lm", overwrite=True, quiet=True)
    corpus = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in [*texts, *unlabeled] if t.strip())
    atomic_write_text(folder / CORPUS, corpus)
    lm = lm_config(cfg, folder, len(corpus.encode("utf-8")), seconds)
    limit = f", at most {seconds:.0f}s" if seconds else ""
    log(f"pretrain: a GPT on {len(texts):,} training texts + {len(unlabeled):,} unlabeled ({lm.train.max_steps} "
        f"steps{limit}) in {folder}")
    result = train(lm, progress=progress, claimed=True)
    return folder, _facts(result, len(texts), len(unlabeled))


def _facts(result, texts: int, unlabeled: int) -> dict:
    return {"steps": result.steps, "val_loss": result.val_loss, "best_val_loss": result.best_val_loss,
            "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s, "stop_reason": result.stop_reason,
            "params": result.params, "texts": texts, "unlabeled_texts": unlabeled}
