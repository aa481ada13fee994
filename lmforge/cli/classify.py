"""`lmforge classify train|eval|predict`: argument definitions and dispatch. No logic of its own."""

from __future__ import annotations

import argparse
import json
import os

from lmforge.classify.config import MODEL_KINDS, ClassifyConfig
from lmforge.cli.options import add_config_options, overrides_from

COMMANDS = ("classify",)

# Shortcut options and the config field each sets.
_SHORTCUTS = {"data": "data.path", "valid": "data.valid_path", "test": "data.test_path",
              "text_field": "data.text_field", "label_field": "data.label_field", "out": "out",
              "folds": "eval.folds", "model": "model.kind", "threshold": "eval.threshold", "track": "train.track",
              "augment": "data.augment.methods"}


def add_commands(sub) -> None:
    p = sub.add_parser("classify", help="train, evaluate and apply text classifiers (sentiment, topics, ...)")
    csub = p.add_subparsers(dest="classify_command", required=True)

    t = csub.add_parser("train", help="train a classifier on labeled records; with no options, the strongest "
                                      "measured model for the language of the data")
    t.add_argument("--data", metavar="FILE", help="labeled training data (.jsonl .json .csv .tsv .parquet, or .gz)")
    t.add_argument("--valid", metavar="FILE", help="labeled validation data (default: 10%% of --data held out)")
    t.add_argument("--test", metavar="FILE", help="labeled test data, scored at the end")
    t.add_argument("--text-field", metavar="NAME", help="field/column with the text (default: text)")
    t.add_argument("--label-field", metavar="NAME", help="field/column with the label (default: label)")
    t.add_argument("--out", metavar="RUN_DIR",
                   help="run folder (default: a new dated folder under runs/, linked from runs/latest-classify)")
    t.add_argument("--model", choices=MODEL_KINDS, help="model kind (same as --model.kind)")
    t.add_argument("--folds", type=int, metavar="K", help="k-fold cross-validation on --data first (eval.folds)")
    t.add_argument("--threshold", type=float, help="binary tasks: decision threshold for the second class")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its newest intact checkpoints; options given with it may extend it "
                        "(--train.epochs, --train.max_steps) or change the learning-rate tail, intervals, --test, "
                        "device and threads; any other change (--data, --model, ...) is refused")
    t.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier classifier run: replace it (removes only lmforge's files of that run)")
    t.add_argument("--accept-changed-data", action="store_true",
                   help="with --resume: continue although the data files changed since the run started (the run "
                        "keeps its vocabulary and classes)")
    t.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    t.add_argument("--track", choices=("tensorboard", "mlflow", "none"), help="experiment tracking (train.track)")
    t.add_argument("--time", metavar="DURATION",
                   help="wall-clock budget of the whole run, e.g. 10m: plans which models to train, how long, and "
                        "how to weigh them, and ends within it (train.run_budget_s)")
    t.add_argument("--augment", metavar="METHODS",
                   help="add altered copies of the training texts, made by these comma-separated methods: swap, "
                        "delete, insert, synonym (needs --data.augment.vectors), noise; for the neural members (the linear "
                        "model too with --data.augment.linear true) (data.augment.methods)")
    t.add_argument("--unlabeled", metavar="FILE", action="append",
                   help="unlabeled texts of the task's kind, for self-training (--self_train.rounds) and the gpt "
                        "model's in-domain pretraining: .txt/.md (one text per line) or records with the text field "
                        "(repeatable; data.unlabeled)")
    add_config_options(t, ClassifyConfig)

    e = csub.add_parser("eval", help="every metric of a trained classifier on labeled data")
    e.add_argument("run", metavar="RUN_DIR")
    e.add_argument("--data", required=True, metavar="FILE", help="labeled data to score")
    e.add_argument("--text-field", metavar="NAME", help="default: the field the run was trained with")
    e.add_argument("--label-field", metavar="NAME", help="default: the field the run was trained with")
    e.add_argument("--threshold", type=float, help="binary tasks: decision threshold (default: the run's)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--confusion-png", metavar="FILE", help="also draw the confusion matrix into this PNG")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --confusion-png file")

    r = csub.add_parser("predict", help="label and class probabilities for each input text")
    r.add_argument("run", metavar="RUN_DIR")
    r.add_argument("--input", required=True, metavar="FILE", help="records with a text field (labels not needed)")
    r.add_argument("--output", metavar="FILE", help="where to write (.jsonl or .csv); default: jsonl on stdout")
    r.add_argument("--format", choices=("jsonl", "csv"), help="output format (default: from --output's suffix)")
    r.add_argument("--text-field", metavar="NAME", help="default: the field the run was trained with")
    r.add_argument("--id-field", metavar="NAME",
                   help="field/column identifying each record, copied into the output (default: 'id' when every "
                        "record has one, else a 'row' column with the 1-based input row)")
    r.add_argument("--keep-text", action="store_true", help="copy each record's text into the output")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --output file (never the input)")
    r.add_argument("--threshold", type=float, help="binary tasks: decision threshold (default: the run's)")
    r.add_argument("--device", default="cpu")
    _add_vectors_parser(csub)


def _add_vectors_parser(csub) -> None:
    v = csub.add_parser("vectors", help="word vectors (word2vec text format) from unlabeled text, for --text.vectors")
    v.add_argument("--data", required=True, metavar="FILE", action="append",
                   help="text: .txt/.md, or records with --text-field; a file, folder or glob (repeatable)")
    v.add_argument("--text-field", default="text", metavar="NAME", help="field/column with the text (records)")
    v.add_argument("--out", required=True, metavar="FILE", help="where to write the vectors")
    v.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never an input)")
    v.add_argument("--dim", type=int, default=300, help="vector width (default 300)")
    v.add_argument("--window", type=int, default=5, help="co-occurrence window in words (default 5)")
    v.add_argument("--min-count", type=int, default=5, help="words seen fewer times get no vector (default 5)")
    v.add_argument("--max-words", type=int, default=100000, help="largest vocabulary (default 100000)")
    v.add_argument("--language", choices=("auto", "en", "zh"), default="auto")
    v.add_argument("--unit", choices=("word", "char"), default="word", help="vectors for words or characters")


def config_from_args(args: argparse.Namespace) -> ClassifyConfig:
    from lmforge.config import load_config

    overrides = overrides_from(args)
    for attr, dotted in _SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[dotted] = value
    if getattr(args, "unlabeled", None):
        overrides["data.unlabeled"] = ",".join(args.unlabeled)
    if getattr(args, "time", None):
        from lmforge.durations import parse_duration

        overrides["train.run_budget_s"] = parse_duration(args.time)
    return load_config(args.config, overrides, cls=ClassifyConfig)


def dispatch(args: argparse.Namespace) -> int:
    from lmforge.classify import run

    cmd = args.classify_command
    if cmd == "train":
        if args.resume:
            from lmforge.cli.options import check_resume_args, resume_config

            check_resume_args(args)
            if args.time:
                from lmforge.errors import ConfigError

                raise ConfigError("--time plans a new run; a resumed run keeps its plan (give more "
                                  "--train.time_budget_s or --train.epochs to extend it)")
            extra = {dotted: getattr(args, attr) for attr, dotted in _SHORTCUTS.items()
                     if attr != "out" and getattr(args, attr, None) is not None}
            result = run.train_classifier(resume_config(args, args.resume, ClassifyConfig, extra), resume=args.resume,
                                          accept_changed_data=args.accept_changed_data)
        else:
            result = run.train_classifier(config_from_args(args), overwrite=args.overwrite,
                                          t_start=getattr(args, "t_start", None))
        if args.json and int(os.environ.get("RANK", 0)) == 0:
            print(run.result_json(result))
        return 0
    if cmd == "eval":
        if args.confusion_png:
            from lmforge.data.readers import find_files
            from lmforge.runs import check_output

            check_output(args.confusion_png, [args.data, *find_files(args.data)], overwrite=args.overwrite,
                         option="--confusion-png", own_names=("confusion_test.png", "confusion_valid.png"))
        metrics = run.evaluate_run(args.run, args.data, args.threshold, args.device, args.text_field, args.label_field)
        if args.confusion_png:
            from pathlib import Path

            from lmforge.classify.metrics import save_confusion_png

            save_confusion_png(metrics["confusion_matrix"], metrics["labels"], Path(args.confusion_png))
        if args.json:
            print(json.dumps(metrics, ensure_ascii=False))
        else:
            from lmforge.classify.metrics import confusion_table, format_metrics

            for k, v in format_metrics(metrics):
                print(f"{k:>20}: {v}")
            print(confusion_table(metrics["confusion_matrix"], metrics["labels"]))
        return 0
    if cmd == "predict":
        import sys

        rows = run.predict_run(args.run, args.input, args.output, args.threshold, args.device, args.text_field,
                               args.format, id_field=args.id_field, keep_text=args.keep_text,
                               overwrite=args.overwrite)
        if args.output is None:
            sys.stdout.write(run.format_predictions(rows, args.format or "jsonl"))
        return 0
    if cmd == "vectors":
        from lmforge.classify.vectors import vectors_from_file

        vectors_from_file(args.data, args.out, args.text_field, dim=args.dim, window=args.window,
                          min_count=args.min_count, max_words=args.max_words, language=args.language,
                          unit=args.unit, overwrite=args.overwrite)
        return 0
    raise AssertionError(cmd)
