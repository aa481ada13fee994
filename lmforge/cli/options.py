"""Config fields as command-line options: `--section.field`, its help taken from the field's docstring."""

from __future__ import annotations

import argparse
import typing

from lmforge.config import Config, iter_fields
from lmforge.errors import ConfigError


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
    out = getattr(args, "out", None)
    if isinstance(out, str) and not out.strip():
        # An empty --out (often an unset shell variable) must not quietly mean "a new dated folder".
        raise ConfigError("config field 'out' (--out): is blank; name a run folder, or leave --out out for a new "
                          "dated run folder under runs/")
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}


def make_config(args: argparse.Namespace):
    """The config a command line describes: the preset, then --data/--out, then --section.field options."""
    from lmforge.config import load_config

    overrides = overrides_from(args)
    given = {name: value for name, value in (("DATA", getattr(args, "data_pos", None)),
                                             ("--data", getattr(args, "data", None)),
                                             ("--data.path", overrides.get("data.path"))) if value is not None}
    for name, value in given.items():
        if not str(value).strip():
            raise ConfigError(f"config field 'data.path' ({name}): is blank; give a file, folder or glob, or leave it "
                              "out for the embedded corpus")
    if len(set(given.values())) > 1:
        raise ConfigError(f"the training data is given twice ({', '.join(f'{k} {v}' for k, v in given.items())}); "
                          "give it once")
    if given:
        overrides["data.path"] = next(iter(given.values()))
    if getattr(args, "out", None) is not None:
        overrides["out"] = args.out
    if getattr(args, "track", None):
        overrides["train.track"] = args.track
    return load_config(args.config, overrides)


def resume_config(args: argparse.Namespace, run_dir: str, cls: type = Config, extra: dict | None = None):
    """The settings a `--resume` command line asks for: the run's saved config.yaml (or the --config
    preset) with the command line's options on top; None when it gives no option (resume as saved)."""
    from pathlib import Path

    import yaml

    from lmforge.config import from_dict, load_config, set_dotted
    from lmforge.errors import ConfigError

    overrides = {**overrides_from(args), **(extra or {})}
    if getattr(args, "config", None):
        return load_config(args.config, overrides, cls=cls)
    if not overrides:
        return None
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None  # train() says that the folder is not a run
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is damaged (not valid YAML: {str(e).splitlines()[0]})") from None
    for dotted, value in overrides.items():
        set_dotted(tree, dotted, value, cls)
    return from_dict(cls, tree, source=str(path)).validate()


def check_resume_args(args: argparse.Namespace) -> None:
    """--resume continues a run in its own folder: --overwrite and another --out contradict it."""
    from pathlib import Path

    from lmforge.errors import ConfigError

    if getattr(args, "overwrite", False):
        raise ConfigError("--resume continues the run in its folder and --overwrite replaces it; give one of them")
    if getattr(args, "out", None) and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ConfigError(f"--resume continues the run in {args.resume}; drop --out {args.out} (or start a new "
                          "run with --out instead of --resume)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """The sampling options shared by `generate` and `chat`."""
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.95)
