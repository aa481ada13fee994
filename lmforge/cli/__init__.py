"""Command line: parses arguments and calls the API. No logic of its own.

One module per command family: `lm` (train, prepare, eval, generate, config), `classify`, `auto`
(plan, lr-find, tune), `serve` (serve, chat, sft, report, compare, ui), `export` (export, import),
`compress` (quantize, distill, prune). Every config field is an option `--section.field` (see `options`).
"""

from __future__ import annotations

import argparse
import sys
import time

from lmforge.errors import LmforgeError


def build_parser() -> argparse.ArgumentParser:
    from lmforge.cli import auto, classify, compress, export, lm, serve

    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Raw text to a trained, evaluated language model or text classifier in one command.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    lm.add_commands(sub)
    auto.add_commands(sub)  # plan, lr-find, tune
    classify.add_commands(sub)  # classify train|eval|predict|vectors
    serve.add_commands(sub)  # serve, chat, sft, report, compare, ui
    export.add_commands(sub)  # export, import
    compress.add_commands(sub)  # quantize, distill, prune
    return parser


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()  # a --time budget counts from here
    args = build_parser().parse_args(argv)
    args.t_start = t_start
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write refused by the system (disk full, read-only, permissions): no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"lmforge: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted; the last checkpoint is intact (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from lmforge.cli import auto, classify, compress, export, lm, serve

    for family in (lm, auto, classify, serve, export, compress):
        if args.command in family.COMMANDS:
            return family.dispatch(args)
    raise AssertionError(args.command)
