"""Command-line parts of the automation: `train --auto/--time`, `plan`, `lr-find`, `tune`.

Argument definitions and dispatch only; the work is done in auto/ (plan, run, lr_finder, tune). Importing
this module is cheap (no torch), so `lmforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os

from lmforge.cli.options import add_config_options, make_config, overrides_from

COMMANDS = ("plan", "lr-find", "tune")


DEFAULT_TIME = "10m"
"""The budget `lmforge train DATA` plans for when it is given no budget, steps or preset."""


def add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("automation (the default: without --config or --train.max_steps, train plans for a "
                             f"time budget, {DEFAULT_TIME} unless --time says otherwise)")
    g.add_argument("--auto", action="store_true",
                   help="choose the model, batch, schedule, precision and compilation for this machine and --time "
                        "(settings you give explicitly are kept); prints and saves the plan. The default unless a "
                        "preset (--config) or --train.max_steps / --train.time_budget_s is given")
    g.add_argument("--time", metavar="DURATION",
                   help=f"wall-clock budget, e.g. 90s, 10m, 1h (default when planning: {DEFAULT_TIME}): the whole "
                        "command (data preparation included) ends within it. With a preset (--config) or "
                        "--train.max_steps and no --auto, training just stops after it (train.time_budget_s)")
    g.add_argument("--lr-find", action="store_true",
                   help="when planning: take the learning rate from a range test instead of the width/batch rule")


def plans(args) -> bool:
    """Whether `train` plans: with --auto, or when nothing fixes the run's length or settings (no
    preset, no train.max_steps or train.time_budget_s). A resumed run, or one that starts from a given
    model (--init), never plans."""
    if args.resume or getattr(args, "init", None):
        return False
    if args.auto:
        return True
    fixed_length = {"train.max_steps", "train.time_budget_s"} & set(overrides_from(args))
    return not args.config and not fixed_length


def add_commands(sub) -> None:
    p = sub.add_parser("plan", help="probe the hardware, time candidate shapes and print the plan for a time budget")
    p.add_argument("data_pos", nargs="?", metavar="DATA", help="training text (same as --data)")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--time", metavar="DURATION", required=True, help="wall-clock budget, e.g. 10m")
    p.add_argument("--lr-find", action="store_true", help="use the learning-rate range test for the learning rate")
    p.add_argument("--overwrite", action="store_true", help="--out holds a trained run: replace it")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_config_options(p)

    p = sub.add_parser("lr-find", help="learning-rate range test; saves the curve (lr_find.png) with the suggestion")
    p.add_argument("data_pos", nargs="?", metavar="DATA")
    p.add_argument("--data")
    p.add_argument("--out")
    p.add_argument("--steps", type=int, default=100, help="steps of the test (default 100)")
    p.add_argument("--lr-min", type=float, default=1e-5)
    p.add_argument("--lr-max", type=float, default=1.0)
    p.add_argument("--overwrite", action="store_true", help="--out holds a trained run: replace it")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    add_config_options(p)

    p = sub.add_parser("tune", help="hyperparameter search (Optuna) over a search space declared in YAML")
    p.add_argument("tune_file", metavar="CONFIG",
                   help="YAML: a config plus a 'search:' section mapping fields to ranges or lists (see README)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    p.add_argument("--time", metavar="DURATION", help="stop starting trials after this long (and cap each trial)")
    p.add_argument("--trial-time", metavar="DURATION", help="time budget of each trial (train.time_budget_s)")
    p.add_argument("--space", metavar="FILE", help="search space in its own YAML file (then CONFIG is a plain preset)")
    p.add_argument("--task", help="lm or classify (default: 'task:' in the file, else lm)")
    p.add_argument("--out", help="study folder (default: runs/tune)")
    p.add_argument("--data", help="training data (sets data.path)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage, e.g. postgresql://user@host/db to share a study between machines "
                        "(default: sqlite in the study folder)")
    p.add_argument("--study-name", default="lmforge")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field of every trial, e.g. --set train.max_steps=500 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the best trial as one JSON line")


def _fixed(args) -> set[str]:
    from lmforge.auto.inputs import explicit_fields

    return explicit_fields(args.config, _explicit_overrides(args))


def _explicit_overrides(args) -> dict:
    """Fields the command line sets, the --data/--out shortcuts included."""
    over = overrides_from(args)
    if getattr(args, "data", None) or getattr(args, "data_pos", None):
        over["data.path"] = args.data or args.data_pos
    if getattr(args, "out", None):
        over["out"] = args.out
    return over


def train_auto(args) -> int:
    """`lmforge train` that plans (see `plans`): plan, then train, all within --time (default
    DEFAULT_TIME); or, with a preset or fixed steps and --time but no --auto, a plain training budget."""
    from lmforge.durations import parse_duration
    from lmforge.lm.pretrain import result_json, train

    cfg = make_config(args)
    # Planning runs in one process: under torchrun only an explicit --auto plans (and says so).
    if plans(args) and (args.auto or int(os.environ.get("WORLD_SIZE", "1")) == 1):
        from lmforge.auto.inputs import PlanOptions
        from lmforge.auto.run import auto_train

        if not args.time:
            from lmforge.console import console

            console.print(f"lmforge: no --time given: planning the run for the default budget of {DEFAULT_TIME} "
                          f"(change it with --time, e.g. --time 30m; a preset (--config) or --train.max_steps "
                          "trains a fixed run instead)", highlight=False)
        result = auto_train(cfg, parse_duration(args.time or DEFAULT_TIME), t_start=getattr(args, "t_start", None),
                            fixed=_fixed(args), options=PlanOptions(lr_method="find" if args.lr_find else "rule"),
                            overwrite=args.overwrite)
    else:
        if args.time:
            cfg.train.time_budget_s = parse_duration(args.time)
        result = train(cfg, overwrite=args.overwrite)
    if args.json and int(os.environ.get("RANK", 0)) == 0:
        print(result_json(result))
    return 0


def dispatch(args) -> int:

    if args.command == "plan":
        from lmforge.auto.inputs import PlanOptions
        from lmforge.durations import parse_duration
        from lmforge.auto.run import plan_run

        cfg = make_config(args)
        plan = plan_run(cfg, parse_duration(args.time), t_start=getattr(args, "t_start", None),
                        fixed=_fixed(args), options=PlanOptions(lr_method="find" if args.lr_find else "rule"),
                        progress=not args.json, overwrite=args.overwrite)
        if args.json:
            print(json.dumps(plan.to_dict()))
        return 0
    if args.command == "lr-find":
        from lmforge.auto.lr_finder import check_lr_find_options, find_lr
        from lmforge.runs import claim

        check_lr_find_options(args.steps, args.lr_min, args.lr_max)
        cfg = make_config(args)
        cfg.out = str(claim(cfg.out, "lm", overwrite=args.overwrite, quiet=args.json))
        res = find_lr(cfg, steps=args.steps, lr_min=args.lr_min, lr_max=args.lr_max, progress=not args.json)
        if args.json:
            print(json.dumps({"suggestion": res.suggestion, "stop_reason": res.stop_reason, "steps": len(res.lrs),
                              "plot": os.path.join(cfg.out, "lr_find.png")}))
        return 0
    if args.command == "tune":
        from lmforge.durations import parse_duration
        from lmforge.auto.tune import load_tune_spec, tune
        from lmforge.errors import ConfigError

        sets = {}
        for item in args.set:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: write FIELD=VALUE, e.g. --set optim.lr=3e-4")
            k, v = item.split("=", 1)
            sets[k.strip()] = v.strip()
        if args.data:
            sets["data.path"] = args.data
        spec = load_tune_spec(args.tune_file, args.space, args.task, sets)
        out = args.out or "runs/tune"
        result = tune(spec, args.trials, out=out, storage=args.storage, study_name=args.study_name,
                      time_s=parse_duration(args.time) if args.time else None,
                      trial_time_s=parse_duration(args.trial_time) if args.trial_time else None,
                      pruner=args.pruner, seed=args.seed)
        if args.json:
            print(json.dumps({"best_value": result.best_value, "best_trial": result.best_trial,
                              "best_params": result.best_params,
                              "best_config": str(result.best_config) if result.best_config else None,
                              "counts": result.counts, "storage": result.storage}))
        return 0
    raise AssertionError(args.command)
