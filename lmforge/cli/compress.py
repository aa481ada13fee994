"""`lmforge quantize | distill | prune`: argument definitions and dispatch only."""

from __future__ import annotations

import argparse
import json

from lmforge.classify.config import ClassifyConfig
from lmforge.cli.options import add_config_options, overrides_from

COMMANDS = ("quantize", "distill", "prune")


def add_commands(sub) -> None:
    p = sub.add_parser("quantize", help="int8 or int4 weights for a trained language model or classifier; prints "
                                        "size, speed and quality against the original")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--method", choices=("int8", "int4"), required=True)
    p.add_argument("--out", metavar="RUN_Q", help="run folder for the quantized model (default: a new one under runs/)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier run of this kind: replace it (removes only lmforge's files of that run)")
    p.add_argument("--group-size", type=int, default=0,
                   help="int4: inputs per scale and offset (32, 64 or 128; default 128 for models 512 wide or "
                        "more, else 32)")
    p.add_argument("--data", metavar="FILE", help="classifiers: labeled data to score (default: the run's test set)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")

    p = sub.add_parser("distill", help="train a smaller student on a teacher's outputs (language model or "
                                       "classifier), through the same training loop")
    p.add_argument("--teacher", metavar="RUN_DIR", help="the trained run to learn from")
    p.add_argument("--out", metavar="RUN_S", help="run folder of the student (default: a new one under runs/)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier run of this kind: replace it (removes only lmforge's files of that run)")
    p.add_argument("--resume", metavar="RUN_S", help="continue an interrupted distillation (language models)")
    p.add_argument("--auto", action="store_true",
                   help="student of half the teacher's non-embedding parameters (language models; classifiers "
                        "take --student), trained with the teacher's settings")
    p.add_argument("--time", metavar="DURATION", help="training time of the student, e.g. 10m")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the KL term; 1 - alpha weighs the "
                                                            "cross-entropy on the data (default 0.5)")
    p.add_argument("--temperature", type=float, help="softmax temperature of the KL term (default: 2 for language "
                                                      "models, 1 for classifiers)")
    p.add_argument("--student", choices=("fasttext", "bilstm"), default="fasttext",
                   help="classifiers: the student model (default fasttext; for Chinese it reads character "
                        "n-grams unless --text.tokenizer says otherwise)")
    p.add_argument("--unlabeled", metavar="FILE", action="append", default=[],
                   help="classifiers: extra texts (records with the run's text field, or .txt lines) labeled by "
                        "the teacher (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    add_config_options(p)  # a language-model student's fields (--model.n_layer, --optim.lr, ...)
    add_config_options(p, ClassifyConfig)  # and a classifier student's (--train.epochs, --model.fasttext.*)

    p = sub.add_parser("prune", help="remove the least important attention heads and MLP channels (or whole "
                                     "layers) of a language model, then recover with a short training run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--keep", type=float, required=True, help="fraction of the non-embedding parameters to keep")
    p.add_argument("--out", metavar="RUN_P", help="run folder for the pruned model (default: a new one under runs/)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier run of this kind: replace it (removes only lmforge's files of that run)")
    p.add_argument("--structure", choices=("width", "depth"), default="width",
                   help="width: heads and MLP channels in every layer (default); depth: whole layers")
    p.add_argument("--importance", choices=("taylor", "activation"), default="taylor",
                   help="taylor: |activation x gradient| of the loss (default); activation: mean |activation|")
    p.add_argument("--recover", metavar="DURATION", help="train the pruned model this long, e.g. 5m")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")


def dispatch(args: argparse.Namespace) -> int:
    from lmforge.durations import parse_duration

    if args.command == "quantize":
        from lmforge.compress.quantize import quantize_run

        report = quantize_run(args.run, args.method, args.out, args.group_size, args.data,
                              overwrite=args.overwrite)
    elif args.command == "prune":
        from lmforge.compress.prune import prune_run

        report = prune_run(args.run, args.keep, args.out, recover_s=parse_duration(args.recover) if args.recover
                           else 0.0, structure=args.structure, importance=args.importance,
                           overwrite=args.overwrite)
    elif args.command == "distill":
        from lmforge.compress.distill import distill

        report = distill(args.teacher, args.out, resume=args.resume, auto=args.auto,
                         time_s=parse_duration(args.time) if args.time else 0.0, alpha=args.alpha,
                         temperature=args.temperature, overrides=overrides_from(args), config_file=args.config,
                         student_kind=args.student, unlabeled=args.unlabeled,
                         overwrite=args.overwrite)
    else:
        raise AssertionError(args.command)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    return 0
