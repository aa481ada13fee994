"""`lmforge train | prepare | eval | generate | config`: argument definitions and dispatch only."""

from __future__ import annotations

import argparse
import json
import os

from lmforge.cli.options import add_config_options, add_sampling_options, make_config, overrides_from

COMMANDS = ("train", "prepare", "eval", "generate", "config")


def add_commands(sub) -> None:
    from lmforge.cli import auto

    p = sub.add_parser("train", help="prepare data, train a GPT, evaluate it and print samples; without a preset "
                       "(--config) or --train.max_steps it plans the run for --time (10m by default)")
    p.add_argument("data_pos", nargs="?", metavar="DATA", help="training text (same as --data)")
    p.add_argument("--data", help="file, folder or glob of training text; omit for the embedded Shakespeare corpus")
    p.add_argument("--out", help="run folder (same as --out on the config)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest intact checkpoint; options given with it may "
                        "extend the run (--train.max_steps, --time), change the learning-rate tail (--optim.lr, "
                        "--schedule.*), intervals, device and threads; any other change is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier run: replace it (removes only lmforge's files of that run)")
    p.add_argument("--use-prepared-data", action="store_true",
                   help="with --resume: continue on the tokens the run prepared at its start although the input "
                        "files changed or are gone (nothing is re-read or re-tokenized)")
    p.add_argument("--init", metavar="MODEL_DIR",
                   help="start from a trained model: an lmforge run folder, or a local Hugging Face folder "
                        "(imported into RUN/init first); its tokenizer and shape are used")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    p.add_argument("--track", choices=("tensorboard", "mlflow", "none"), help="experiment tracking (train.track)")
    auto.add_train_options(p)
    add_config_options(p)

    p = sub.add_parser("prepare", help="clean text, train the tokenizer and write token files (no training)")
    p.add_argument("data_pos", nargs="?", metavar="DATA")
    p.add_argument("--data")
    p.add_argument("--out", help="run folder (default: a new dated folder under runs/)")
    p.add_argument("--overwrite", action="store_true", help="--out holds a trained run: replace it")
    add_config_options(p)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a trained run on some text")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--data", help="text to score (default: the run's validation split)")
    p.add_argument("--max-tokens", type=int, default=0, help="score at most this many tokens (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("generate", help="sample text from a trained run, streaming to the terminal")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--prompt", help="text to continue; read from stdin when omitted")
    add_sampling_options(p)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("config", help="show every config field with its default and meaning, or a resolved config")
    p.add_argument("--show", metavar="FILE", help="print this preset resolved with defaults and overrides")
    add_config_options(p)


def _resume(args: argparse.Namespace):
    """`train --resume RUN [options]`: the options are the settings to change (see pretrain.RESUMABLE)."""
    from lmforge.cli.options import check_resume_args, resume_config
    from lmforge.errors import ConfigError
    from lmforge.lm.pretrain import train

    if args.auto:
        raise ConfigError("--resume continues a run with its own settings; do not combine it with --auto")
    check_resume_args(args)
    extra = {}
    if args.time:
        from lmforge.durations import parse_duration

        extra["train.time_budget_s"] = parse_duration(args.time)  # the run's total, time already trained included
    data = args.data or args.data_pos
    if data:
        extra["data.path"] = data
    return train(resume_config(args, args.resume, extra=extra), resume=args.resume,
                 use_prepared_data=args.use_prepared_data)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from lmforge.cli import auto
        from lmforge.lm.pretrain import result_json, train

        if args.init and (args.auto or args.time or args.resume):
            from lmforge.errors import ConfigError

            raise ConfigError("--init starts a new run with a given model; it does not combine with --resume, "
                              "--auto or --time")
        if args.resume:
            result = _resume(args)
        elif args.init:
            from lmforge.cli.export import resolve_init

            result = train(resolve_init(args, make_config(args)), overwrite=args.overwrite)
        elif auto.plans(args) or args.time:
            return auto.train_auto(args)
        else:
            result = train(make_config(args), overwrite=args.overwrite)
        if args.json and int(os.environ.get("RANK", 0)) == 0:
            print(result_json(result))
        return 0
    if args.command == "prepare":
        from lmforge.lm.pretrain import prepare_run

        prepare_run(make_config(args), overwrite=args.overwrite)
        return 0
    if args.command == "eval":
        from lmforge.lm.evaluate import evaluate

        metrics = evaluate(args.run, args.data, args.max_tokens, args.device)
        if args.json:
            print(json.dumps(metrics))
        else:
            for k, v in metrics.items():
                print(f"{k:>12}: {v}")
        return 0
    if args.command == "generate":
        from lmforge.config import SampleConfig
        from lmforge.lm.sample import generate

        cfg = SampleConfig(prompt=args.prompt or "", num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        generate(args.run, args.prompt, cfg, seed=args.seed, device=args.device)
        return 0
    if args.command == "config":
        import yaml

        from lmforge.config import describe, to_dict

        if args.show or overrides_from(args):
            args.config = args.show or args.config
            print(yaml.safe_dump(to_dict(make_config(args)), sort_keys=False, allow_unicode=True), end="")
        else:
            print(describe())
        return 0
    raise AssertionError(args.command)
