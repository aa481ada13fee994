"""Config fields as command-line options: `--section.field`, its help taken from the field's docstring."""

from __future__ import annotations

import argparse
import typing

from lmforge.config import Config, iter_fields


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return name.replace(" | None", "").replace("NoneType", "")


def add_config_options(p: argparse.ArgumentParser, cls: type = Config) -> None:
    if "--config" not in p._option_string_actions:  # a second call adds another config class's fields
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


def make_config(args: argparse.Namespace):
    """The config a command line describes: the preset, then --data/--out, then --section.field options."""
    from lmforge.config import load_config

    overrides = overrides_from(args)
    data = getattr(args, "data", None) or getattr(args, "data_pos", None)
    if data:
        overrides["data.path"] = data
    if getattr(args, "out", None):
        overrides["out"] = args.out
    return load_config(args.config, overrides)
