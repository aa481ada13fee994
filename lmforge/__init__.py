"""lmforge: raw text to a trained, evaluated language model in one command.

The API mirrors the command line: `prepare(cfg)`, `train(cfg)`, `evaluate(run_dir)`,
`generate(run_dir, prompt)`. Importing lmforge is cheap: each is loaded on first use.
"""

from __future__ import annotations

from lmforge.config import Config, load_config

__all__ = ["Config", "load_config", "prepare", "train", "evaluate", "generate"]
__version__ = "0.1.0"


def prepare(cfg: Config, overwrite: bool = False):
    """Clean the text, train the tokenizer and write token files into cfg.out/data (a run folder:
    a new or empty one, or one holding only prepared data; empty cfg.out: a new dated folder)."""
    from lmforge.lm.pretrain import prepare_run

    return prepare_run(cfg, overwrite=overwrite)


def train(cfg: Config | None = None, resume=None, progress: bool = True, overwrite: bool = False):
    """Train a GPT as configured, in a new run folder (or `overwrite` the run in cfg.out), or resume
    a run folder (with `cfg`: the settings to change, see lmforge.lm.pretrain.train); returns a TrainResult."""
    from lmforge.lm.pretrain import train as _train

    return _train(cfg, resume=resume, progress=progress, overwrite=overwrite)


def evaluate(run_dir, data=None, max_tokens: int = 0, device: str = "cpu"):
    """Validation loss, perplexity and bits per byte of a trained run."""
    from lmforge.lm.evaluate import evaluate as _evaluate

    return _evaluate(run_dir, data, max_tokens, device)


def generate(run_dir, prompt=None, cfg=None, seed: int = 0, stream: bool = True, device: str = "cpu"):
    """Sample text from a trained run."""
    from lmforge.lm.sample import generate as _generate

    return _generate(run_dir, prompt, cfg, seed=seed, stream=stream, device=device)
