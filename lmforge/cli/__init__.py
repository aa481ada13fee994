"""Command line: parses arguments and calls the API. No logic of its own.

One module per command family: `lm` (train, prepare, eval, generate, config), `classify`, `auto`
(plan, lr-find, tune), `serve` (serve, chat, sft, report, compare, ui), `export` (export, import),
`compress` (quantize, distill, prune). Every config field is an option `--section.field` (see `options`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from lmforge.errors import LmforgeError

CTRL_C_ENV = "LMFORGE_CTRL_C"  # set to 1 by a parent that stops this command with SIGINT


class _Parser(argparse.ArgumentParser):
    """argparse, suggesting the nearest option for a misspelt one (--optim.lrr -> --optim.lr)."""

    argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            import difflib

            known = sorted(_option_strings(_command_parser(self, self.argv)))
            for token in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(token.split("=")[0], known, n=1, cutoff=0.7)
                if token.startswith("--") and close:
                    message += f". Did you mean {close[0]}?"
                    break
        super().error(message)


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command `argv` names: suggestions come from its options, not another command's."""
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            parser = subs[0].choices[token]
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _option_strings(child)
    return found


def build_parser() -> argparse.ArgumentParser:
    from lmforge.cli import auto, classify, compress, env, export, lm, serve

    parser = _Parser(
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
    env.add_commands(sub)  # env
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 bad input or usage, 1 a bug, 130 interrupted)."""
    t_start = time.perf_counter()  # a --time budget counts from here
    if os.environ.pop(CTRL_C_ENV, "") == "1" and threading.current_thread() is threading.main_thread():
        # Started by the dashboard, whose Stop is Ctrl-C: a SIGINT ignored by whoever started the
        # dashboard (a shell's `lmforge ui &`) is inherited, and Python would never raise it here.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return e.code if isinstance(e.code, int) else 2 if e.code else 0
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
    except Exception as e:
        if os.environ.get("LMFORGE_TRACEBACK") == "1":
            raise
        # Bad input never lands here (it raises LmforgeError); this is a bug, told in one line.
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"lmforge: internal error: {type(e).__name__}: {first[:300]}. This is a bug in lmforge; please "
              "report it with the command line (LMFORGE_TRACEBACK=1 shows the traceback).", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    from lmforge.cli import auto, classify, compress, env, export, lm, serve

    for family in (lm, auto, classify, serve, export, compress, env):
        if args.command in family.COMMANDS:
            return family.dispatch(args)
    raise AssertionError(args.command)
