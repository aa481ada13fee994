"""Command line: parses arguments and calls the API. No logic of its own.

Every config field is an option `--section.field`, its help taken from the field's docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lmforge.config import Config, iter_fields, load_config
from lmforge.errors import LmforgeError


def _type_name(tp) -> str:
    import typing

    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return name.replace(" | None", "").replace("NoneType", "")


def add_config_options(p: argparse.ArgumentParser, cls: type = Config) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML preset (see configs/); options below override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, tp, default, doc in iter_fields(cls):
        if f"--{name}" in p._option_string_actions:  # e.g. --out, declared by the subcommand itself
            continue
        section = name.split(".")[0] if "." in name else "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} options")
        groups[section].add_argument(
            f"--{name}", dest=f"cfg:{name}", metavar=_type_name(tp).upper(), default=argparse.SUPPRESS,
            help=f"{doc} (default: {default!r})",
        )


def overrides_from(args: argparse.Namespace) -> dict[str, str]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}


def build_parser() -> argparse.ArgumentParser:
    from lmforge.auto import commands as auto_commands

    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Raw text to a trained, evaluated language model in one command.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="prepare data, train a GPT, evaluate it and print samples")
    p.add_argument("data_pos", nargs="?", metavar="DATA", help="training text (same as --data)")
    p.add_argument("--data", help="file, folder or glob of training text; omit for the embedded Shakespeare corpus")
    p.add_argument("--out", help="run folder (same as --out on the config)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    auto_commands.add_train_options(p)
    add_config_options(p)

    p = sub.add_parser("prepare", help="clean text, train the tokenizer and write token files (no training)")
    p.add_argument("data_pos", nargs="?", metavar="DATA")
    p.add_argument("--data")
    p.add_argument("--out")
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
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("config", help="show every config field with its default and meaning, or a resolved config")
    p.add_argument("--show", metavar="FILE", help="print this preset resolved with defaults and overrides")
    add_config_options(p)
    auto_commands.add_commands(sub, add_config_options)  # plan, lr-find, tune
    from lmforge.classify.cli import add_classify_parser

    add_classify_parser(sub)  # classify train|eval|predict
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides = overrides_from(args)
    data = getattr(args, "data", None) or getattr(args, "data_pos", None)
    if data:
        overrides["data.path"] = data
    if getattr(args, "out", None):
        overrides["out"] = args.out
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()  # a --time budget counts from here
    args = build_parser().parse_args(argv)
    args.t_start = t_start
    try:
        return _dispatch(args)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted; the last checkpoint is intact (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from lmforge.auto import commands as auto_commands

    if args.command in auto_commands.COMMANDS:
        return auto_commands.dispatch(args, _config, overrides_from(args))
    if args.command == "classify":
        from lmforge.classify.cli import dispatch as classify_dispatch

        return classify_dispatch(args)
    if args.command == "train":
        from lmforge.pretrain import result_json, train

        if args.auto or args.time:
            return auto_commands.train_auto(args, _config, overrides_from(args))
        if args.resume:
            result = train(resume=args.resume)
        else:
            result = train(_config(args))
        if args.json and int(os.environ.get("RANK", 0)) == 0:
            print(result_json(result))
        return 0
    if args.command == "prepare":
        from lmforge.data.prepare import prepare

        cfg = _config(args)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        prepare(cfg)
        return 0
    if args.command == "eval":
        from lmforge.eval.lm import evaluate

        metrics = evaluate(args.run, args.data, args.max_tokens, args.device)
        if args.json:
            print(json.dumps(metrics))
        else:
            for k, v in metrics.items():
                print(f"{k:>12}: {v}")
        return 0
    if args.command == "generate":
        from lmforge.config import SampleConfig
        from lmforge.sample import generate

        cfg = SampleConfig(prompt=args.prompt or "", num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        cfg.validate()
        generate(args.run, args.prompt, cfg, seed=args.seed, device=args.device)
        return 0
    if args.command == "config":
        import yaml

        from lmforge.config import describe, to_dict

        if args.show or overrides_from(args):
            args.config = args.show or args.config
            print(yaml.safe_dump(to_dict(_config(args)), sort_keys=False, allow_unicode=True), end="")
        else:
            print(describe())
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
