"""`lmforge env`: versions, devices, backends and launcher variables, for debugging a cluster run."""

from __future__ import annotations

import argparse
import json

COMMANDS = ("env",)


def add_commands(sub) -> None:
    p = sub.add_parser("env", help="print versions, devices, distributed backends and the torchrun/Slurm variables "
                                   "this process sees (run it on every node to compare)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def dispatch(args: argparse.Namespace) -> int:
    from lmforge.trainer.environment import environment_report, format_report

    report = environment_report()
    print(json.dumps(report) if args.json else format_report(report))
    return 0
