"""`lmforge serve | chat | sft | report | compare | ui`: argument definitions and dispatch only."""

from __future__ import annotations

import argparse

from lmforge.cli.options import add_sampling_options

COMMANDS = ("serve", "chat", "sft", "report", "compare", "ui")


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (completions, chat, classify) for trained runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders to serve (language models or classifiers)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $LMFORGE_API_KEY, else none)")
    p.add_argument("--model-name", action="append", metavar="NAME",
                   help="model id of each run, in order (default: the run folder's name)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("chat", help="chat in the terminal with a run fine-tuned by `lmforge sft`")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--system", help="system message that starts the conversation")
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    from lmforge.cli.options import add_config_options
    from lmforge.lm.sft_config import SFTConfig

    p = sub.add_parser("sft", help="fine-tune a trained run on conversations (OpenAI messages format) for chat")
    p.add_argument("base_run", nargs="?", metavar="RUN_DIR", help="the trained language-model run to fine-tune")
    p.add_argument("--data", metavar="FILE", help="conversations: JSON lines of {\"messages\": [...]}")
    p.add_argument("--demo-data", action="store_true",
                   help="fine-tune on demo conversations built from the embedded Shakespeare plays")
    p.add_argument("--out", metavar="RUN_DIR", help="folder of the fine-tuned run (default: runs/sft)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the fine-tuning run in RUN_DIR")
    p.add_argument("--track", choices=("tensorboard", "mlflow", "none"), help="experiment tracking (train.track)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    add_config_options(p, SFTConfig)

    p = sub.add_parser("ui", help="web dashboard: runs, live curves, reports, launch/stop/resume, chat playground")
    p.add_argument("--runs", default="runs", metavar="DIR", help="the runs folder to show and launch into (default runs)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--presets", metavar="DIR", help="YAML presets offered by the launch form (default: ./configs)")
    p.add_argument("--device", default="cpu", help="device of the playground's models")

    p = sub.add_parser("report", help="(re)write a run's report card: RUN/report.html and RUN/report.md")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")

    p = sub.add_parser("compare", help="a table of several runs' key figures and one plot of their loss curves")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="compare.png", help="where to write the plot (default: compare.png)")
    p.add_argument("--overwrite", action="store_true", help="replace the plot at --out if it exists")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def _sft_config(args: argparse.Namespace):
    from lmforge.cli.options import overrides_from
    from lmforge.config import load_config
    from lmforge.lm.sft_config import SFTConfig

    overrides = overrides_from(args)
    for value, dotted in ((args.base_run, "base"), (args.data, "data.path"), (args.out, "out"),
                          (args.track, "train.track")):
        if value:
            overrides[dotted] = value
    if args.demo_data:
        overrides["data.demo"] = True
    return load_config(args.config, overrides, cls=SFTConfig)


def _check_port(port: int) -> None:
    from lmforge.config import check_option

    check_option(1 <= port <= 65535, "--port", port, "must be a TCP port number in [1, 65535]")


def _check_serve(args: argparse.Namespace) -> None:
    """serve's options, before any model is loaded or any port bound; errors name the option or folder."""
    from pathlib import Path

    from lmforge.config import check_option
    from lmforge.errors import DataError
    from lmforge.trainer.runtime import check_device

    _check_port(args.port)
    check_option(1 <= args.max_batch <= 256, "--max-batch", args.max_batch, "must be between 1 and 256")
    check_device(args.device)
    for run in args.runs:
        if not Path(run).is_dir():
            raise DataError(f"{run}: no such run folder; pass folders given as --out when training")
    names = args.model_name or [Path(r).resolve().name for r in args.runs]
    check_option(len(names) == len(args.runs), "--model-name", " ".join(names),
                 f"gives {len(names)} name(s) for {len(args.runs)} run folder(s); give one per run, in order")
    twice = sorted({n for n in names if names.count(n) > 1})
    check_option(not twice, "--model-name", twice[0] if twice else "",
                 "names two models alike; give each run its own --model-name")


def _check_chat(args: argparse.Namespace) -> None:
    from lmforge.config import SampleConfig
    from lmforge.lm.sample import check_generate_options
    from lmforge.trainer.runtime import check_device

    cfg = SampleConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p)
    check_generate_options(cfg, args.seed)
    check_device(args.device)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from lmforge.serve.server import serve

        _check_serve(args)
        return serve(args.runs, host=args.host, port=args.port, api_key=args.api_key, names=args.model_name,
                     device=args.device, max_batch=args.max_batch)
    if args.command == "chat":
        from lmforge.lm.chat import chat_loop

        _check_chat(args)
        chat_loop(args.run, system=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device)
        return 0
    if args.command == "sft":
        import json
        import os

        from lmforge.lm.sft import sft

        result = sft(resume=args.resume) if args.resume else sft(_sft_config(args))
        if args.json and int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps({k: v for k, v in vars(result).items() if k != "samples"} | {"run_dir": str(result.run_dir)}))
        return 0
    if args.command == "ui":
        from pathlib import Path

        from lmforge.config import check_option
        from lmforge.serve.ui import ui
        from lmforge.trainer.runtime import check_device

        _check_port(args.port)
        check_device(args.device)
        check_option(args.presets is None or Path(args.presets).is_dir(), "--presets", args.presets,
                     "is not a folder of YAML presets")
        check_option(not Path(args.runs).exists() or Path(args.runs).is_dir(), "--runs", args.runs,
                     "is a file; give the folder that holds the run folders")
        return ui(args.runs, host=args.host, port=args.port, presets=args.presets, device=args.device)
    if args.command == "report":
        from lmforge.report.card import write_report

        for run in args.runs:
            html, md = write_report(run)
            print(f"{html}\n{md}")
        return 0
    if args.command == "compare":
        import json

        from lmforge.report.compare import compare, print_table

        result = compare(args.runs, args.out, overwrite=args.overwrite)
        if args.json:
            print(json.dumps(result))
        else:
            print_table(result)
        return 0
    raise AssertionError(args.command)
