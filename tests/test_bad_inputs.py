"""The catalogue of bad inputs and faults: each case runs the real CLI and checks the exit code, a
one-line message naming the file, line, field or option, no traceback, and no file outside the run
folder changed (see tests/catalogue.py). Cases that would train fail before training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from catalogue import (PNG, TINY_LM, case, csv_text, gz, jsonl, labeled, parametrize, parquet, prose, run_case,
                       shared_runs)

__all__ = ["shared_runs"]  # the session fixture, imported so that pytest finds it

P = "prepare d.txt --out run --tokenizer.kind char"  # reads and prepares data: no model is built
TEXT = prose()
LATIN1_DE = ("Die Stadt München liegt an der Isar. Über die Brücke gehen täglich viele Menschen.\n" * 20
             ).encode("latin-1")
RECS = labeled(40)
CLF = "classify train --data d.jsonl --model linear --out run"


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _unreadable(path: Path) -> None:
    path.write_text(TEXT)
    path.chmod(0)


def _readonly_folder(path: Path) -> None:
    path.mkdir()
    path.chmod(0o500)


DATA_FILES = [
    case("data", "binary-png", P, "d.txt", "binary file", files={"d.txt": PNG}),
    case("data", "binary-nuls", P, "d.txt", "binary file", files={"d.txt": b"\x00" * 200}),
    case("data", "encoding-no-confident-guess", P, "d.txt", "cannot tell its text encoding", "best guess",
         "--data.encoding", files={"d.txt": b"text \x80\xff\x80 more\n" * 3}),
    case("data", "encoding-short-cyrillic", P, "d.txt", "cannot tell its text encoding",
         files={"d.txt": "Привет".encode("cp1251")}),
    case("data", "encoding-nothing-fits", P, "d.txt", "no known text encoding fits",
         files={"d.txt": bytes(range(0x80, 0x100)) * 4}),
    case("data", "encoding-utf8-and-latin1-lines", P, "d.txt", "mixes encodings: line 21 is UTF-8",
         files={"d.txt": LATIN1_DE + "Größe und Übung\n".encode()}),
    case("data", "encoding-detected-then-invalid-byte", P, "d.txt", "reads as cp1252", "byte 0x81 on line 21",
         files={"d.txt": LATIN1_DE + b"bad \x81 byte\n"}),
    case("data", "encoding-utf8-bom-then-invalid", P, "d.txt", "UTF-8 byte-order mark", "line 2",
         files={"d.txt": b"\xef\xbb\xbfhello\n\xff\xfe\n"}),
    case("data", "encoding-utf16-bom-odd-length", P, "d.txt", "UTF-16-LE byte-order mark",
         files={"d.txt": b"\xff\xfe" + "hello".encode("utf-16-le") + b"x"}),
    case("data", "encoding-given-wrong", P + " --data.encoding ascii", "d.txt", "not valid ascii",
         "--data.encoding", files={"d.txt": "Größe\n".encode()}),
    case("data", "encoding-given-unknown", P + " --data.encoding klingon", "data.encoding", "klingon",
         files={"d.txt": TEXT}),
    case("data", "encoding-given-not-a-text-codec", P + " --data.encoding rot13", "data.encoding", "rot13",
         files={"d.txt": TEXT}),
    case("data", "encoding-given-binary", P + " --data.encoding latin-1", "d.txt", "control characters",
         files={"d.txt": bytes(range(32)) * 10}),
    case("data", "empty-file", P, "no training text left in d.txt", files={"d.txt": ""}),
    case("data", "blank-file", P, "no training text left in d.txt", files={"d.txt": "\n  \n\t\n"}),
    case("data", "folder-only-unsupported", "prepare docs --out run", "docs", "none to read",
         "unsupported extension .pdf", files={"docs/a.pdf": b"%PDF", "docs/b.docx": b"PK"}),
    case("data", "folder-only-empty", "prepare docs --out run", "docs", "none to read", "empty: a.txt",
         files={"docs/a.txt": "", "docs/b.md": ""}),
    case("data", "folder-only-hidden", "prepare docs --out run", "docs", "hidden",
         files={"docs/.a.txt": TEXT, "docs/.git/b.txt": TEXT}),
    case("data", "folder-empty", "prepare docs --out run", "docs", "no files found",
         setup=lambda f: (f / "docs").mkdir()),
    case("data", "folder-fifo-only", "prepare docs --out run", "docs", "not a regular file",
         files={"docs/pipe.txt": _fifo}),
    case("data", "missing-path", "prepare nope.txt --out run", "nope.txt", "no such file or folder"),
    case("data", "glob-matches-nothing", "prepare 'corpus/*.jsonl' --out run", "corpus/*.jsonl",
         "matched no files", files={"corpus/a.txt": TEXT}),
    case("data", "glob-only-unsupported", "prepare 'corpus/*' --out run", "corpus/*", "none to read",
         files={"corpus/a.xml": "<a/>"}),
    case("data", "unsupported-extension", "prepare d.xml --out run", "d.xml", "unsupported file type",
         files={"d.xml": "<a/>"}),
    case("data", "gz-not-gzip", "prepare d.txt.gz --out run", "d.txt.gz", "not a valid gzip file",
         files={"d.txt.gz": TEXT}),
    case("data", "gz-truncated", "prepare d.txt.gz --out run", "d.txt.gz", "not a valid gzip file",
         files={"d.txt.gz": gz(TEXT)[:40]}),
    case("data", "jsonl-invalid-line", "prepare d.jsonl --out run", "d.jsonl:3: invalid JSON",
         files={"d.jsonl": '{"text": "a"}\n{"text": "b"}\n{"text": oops}\n'}),
    case("data", "jsonl-missing-field", "prepare d.jsonl --out run", "d.jsonl:2: no field 'text'",
         "--data.text_field", files={"d.jsonl": '{"text": "a"}\n{"body": "b"}\n'}),
    case("data", "jsonl-text-is-number", "prepare d.jsonl --out run", "d.jsonl:1", "'text' is a number",
         files={"d.jsonl": '{"text": 5}\n'}),
    case("data", "jsonl-text-is-null", "prepare d.jsonl --out run", "d.jsonl:1", "null",
         files={"d.jsonl": '{"text": null}\n'}),
    case("data", "jsonl-record-is-list", "prepare d.jsonl --out run", "d.jsonl:1", "expected a JSON object",
         files={"d.jsonl": "[1, 2]\n"}),
    case("data", "jsonl-huge-bad-line", "prepare d.jsonl --out run", "d.jsonl:1: invalid JSON",
         files={"d.jsonl": '{"text": "' + "x" * 3_000_000 + '"\n'}),
    case("data", "json-top-level-object", "prepare d.json --out run", "d.json", "expected a JSON list",
         "'data'", files={"d.json": '{"data": [{"text": "a"}]}'}),
    case("data", "json-broken", "prepare d.json --out run", "d.json:3: invalid JSON",
         files={"d.json": '[\n{"text": "a"},\n{"text": }\n]'}),
    case("data", "json-extra-after-list", "prepare d.json --out run", "d.json", "extra data",
         files={"d.json": '[{"text": "a"}] [1]'}),
    case("data", "json-missing-comma", "prepare d.json --out run", "d.json:2", "expected ',' or ']'",
         files={"d.json": '[{"text": "a"}\n{"text": "b"}]'}),
    case("data", "csv-missing-column", "prepare d.csv --out run", "d.csv", "no column 'text'", "'body'",
         files={"d.csv": csv_text(["id", "body"], [[1, "a"]])}),
    case("data", "csv-row-field-count", "prepare d.csv --out run", "d.csv:3", "row has 3 fields",
         files={"d.csv": "id,text\n1,fine\n2,not,quoted\n"}),
    case("data", "csv-unterminated-quote", "prepare d.csv --out run", "d.csv", "quot",
         files={"d.csv": 'id,text\n1,"never closed\n2,more\n'}),
    case("data", "csv-duplicate-column", "prepare d.csv --out run", "d.csv:1", "'text'", "twice",
         files={"d.csv": "text,id,text\na,1,b\n"}),
    case("data", "tsv-missing-column", "prepare d.tsv --out run", "d.tsv", "no column 'text'",
         files={"d.tsv": "label\tbody\npos\tgood\n"}),
    case("data", "parquet-garbage", "prepare d.parquet --out run", "d.parquet", "not a readable Parquet file",
         files={"d.parquet": b"PAR1 not really"}),
    case("data", "parquet-missing-column", "prepare d.parquet --out run", "d.parquet", "no column 'text'",
         files={"d.parquet": parquet({"body": ["a", "b"]})}),
    case("data", "parquet-null-text", "prepare d.parquet --out run", "d.parquet:2", "null",
         files={"d.parquet": parquet({"text": ["a", None]})}),
    case("data", "parquet-text-is-int", "prepare d.parquet --out run", "d.parquet:1", "a number",
         files={"d.parquet": parquet({"text": [1, 2]})}),
    case("data", "unreadable-file", P, "d.txt", "cannot be read", files={"d.txt": _unreadable},
         root_can_read=True),
    case("data", "valid-path-is-train", P + " --data.valid_path d.txt", "data.valid_path", "training data",
         files={"d.txt": TEXT}),
    case("data", "valid-path-missing", P + " --data.valid_path v.txt", "v.txt", "no such file",
         files={"d.txt": TEXT}),
    case("data", "data-given-twice", "prepare d.txt --data e.txt --out run", "given twice", "d.txt", "e.txt",
         files={"d.txt": TEXT, "e.txt": TEXT}),
    case("data", "data-blank", "prepare --data '' --out run", "data.path", "blank"),
    case("data", "data-path-is-folder-of-folders", "prepare docs --out run", "docs", "none to read",
         files={"docs/sub/.hidden": "x"}),
]

CONFIG = [
    case("config", "int-not-a-number", "train --train.max_steps ten", "train.max_steps", "integer"),
    case("config", "int-is-fraction", "train --model.n_layer 1.5", "model.n_layer", "integer"),
    case("config", "float-not-a-number", "train --optim.lr fast", "optim.lr", "number"),
    case("config", "float-nan", "train --optim.lr nan", "optim.lr", "finite"),
    case("config", "float-inf", "train --train.time_budget_s inf", "train.time_budget_s", "finite"),
    case("config", "bool-not-a-bool", "train --model.tied_embeddings maybe", "model.tied_embeddings",
         "true or false"),
    case("config", "choice-typo-suggests", "train --schedule.kind cosin", "schedule.kind", "Did you mean 'cosine'"),
    case("config", "unknown-option-suggests", "train --optim.lrr 0.1", "--optim.lrr", "Did you mean --optim.lr"),
    case("config", "unknown-option-far", "train --banana 3", "--banana"),
    case("config", "lr-zero", "train --optim.lr 0", "optim.lr", "> 0"),
    case("config", "lr-absurd", "train --optim.lr 1e30", "optim.lr", "must be in"),
    case("config", "beta-one", "train --optim.beta2 1", "optim.beta2", "[0, 1)"),
    case("config", "dropout-one", "train --model.dropout 1", "model.dropout", "[0, 1)"),
    case("config", "min-lr-above-lr", "train --optim.lr 1e-4 --schedule.min_lr 1e-3", "schedule.min_lr"),
    case("config", "decay-fraction-zero", "train --schedule.decay_fraction 0", "schedule.decay_fraction"),
    case("config", "decay-on-plateau-negative", "train --schedule.decay_on_plateau -1", "schedule.decay_on_plateau"),
    case("config", "decay-on-plateau-not-a-count", "train --schedule.decay_on_plateau two",
         "schedule.decay_on_plateau"),
    case("config", "context-len-terabytes", "train --model.context_len 1000000000", "model.context_len",
         "must be in"),
    case("config", "layers-absurd", "train --model.n_layer 100000", "model.n_layer"),
    case("config", "model-too-large", "train --model.n_layer 1024 --model.d_model 65536 --model.n_head 512 "
         "--train.global_batch_tokens 65536", "'model'", "parameters"),
    case("config", "width-not-divisible-by-heads", "train --model.d_model 130", "model.d_model", "divisible"),
    case("config", "kv-heads-not-dividing", "train --model.n_kv_head 3", "model.n_kv_head"),
    case("config", "rope-odd-head", "train --model.d_model 12 --model.n_head 4", "model.n_head", "even"),
    case("config", "norm-eps-zero", "train --model.norm_eps 0", "model.norm_eps"),
    case("config", "batch-not-multiple-of-context", "train --train.global_batch_tokens 100",
         "train.global_batch_tokens", "multiple"),
    case("config", "micro-batch-above-batch", "train --train.micro_batch_size 1000", "train.micro_batch_size"),
    case("config", "eval-tokens-below-context", "train --eval.max_tokens 10", "eval.max_tokens",
         "one window"),
    case("config", "eval-interval-zero", "train --eval.interval 0", "eval.interval"),
    case("config", "top-p-zero", "train --sample.top_p 0", "sample.top_p"),
    case("config", "seed-negative", "train --seed -1", "'seed'"),
    case("config", "seed-huge", "train --seed 1099511627776", "'seed'"),
    case("config", "int-overflow", "train --data.num_workers 10000000000000000000", "data.num_workers"),
    case("config", "workers-absurd", "train --data.num_workers 1000000000", "data.num_workers"),
    case("config", "threads-negative", "train --runtime.threads -1", "runtime.threads"),
    case("config", "device-unknown", "train --runtime.device tpu", "runtime.device"),
    case("config", "val-fraction-one", "train --data.val_fraction 1", "data.val_fraction"),
    case("config", "val-fraction-zero-no-valid", "train --data.val_fraction 0", "data.val_fraction",
         "no validation text"),
    case("config", "vocab-below-bytes", "train --tokenizer.vocab_size 100", "tokenizer.vocab_size", "257"),
    case("config", "vocab-absurd", "train --tokenizer.vocab_size 100000000", "tokenizer.vocab_size"),
    case("config", "keep-checkpoints-zero", "train --train.keep_checkpoints 0", "train.keep_checkpoints"),
    case("config", "out-blank", "train --out ''", "'out'", "run folder"),
    case("config", "yaml-syntax", "train --config c.yaml", "c.yaml", "not valid YAML", "line 2",
         files={"c.yaml": "model:\n  n_layer: [1\n"}),
    case("config", "yaml-is-a-list", "train --config c.yaml", "c.yaml", "mapping", files={"c.yaml": "- 1\n- 2\n"}),
    case("config", "yaml-is-a-scalar", "train --config c.yaml", "c.yaml", "mapping", files={"c.yaml": "hello\n"}),
    case("config", "yaml-section-not-mapping", "train --config c.yaml", "c.yaml", "'model'", "mapping",
         files={"c.yaml": "model: 5\n"}),
    case("config", "yaml-unknown-key-suggests", "train --config c.yaml", "c.yaml", "model.n_layers",
         "Did you mean 'model.n_layer'", files={"c.yaml": "model:\n  n_layers: 3\n"}),
    case("config", "yaml-duplicate-key", "train --config c.yaml", "c.yaml", "'lr'", "twice",
         files={"c.yaml": "optim:\n  lr: 0.1\n  lr: 0.001\n"}),
    case("config", "yaml-not-utf8", "train --config c.yaml", "c.yaml", "UTF-8",
         files={"c.yaml": "# Größe\nseed: 1\n".encode("latin-1")}),
    case("config", "yaml-wrong-type", "train --config c.yaml", "c.yaml", "train.max_steps", "integer",
         files={"c.yaml": "train:\n  max_steps: [1, 2]\n"}),
    case("config", "preset-missing", "train --config nope.yaml", "nope.yaml", "not found"),
    case("config", "preset-is-folder", "train --config presets", "presets", "not found",
         setup=lambda f: (f / "presets").mkdir()),
    case("config", "show-missing-preset", "config --show nope.yaml", "nope.yaml", "not found"),
    case("config", "classify-kind-unknown", "classify train --data d.jsonl --model.kind bogus", "model.kind",
         files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-members-unknown", "classify train --data d.jsonl --model.kind ensemble "
         "--model.members linear,bogus", "model.members", "'bogus'", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-max-len-zero", "classify train --data d.jsonl --text.max_len 0", "text.max_len"),
    case("config", "classify-max-len-absurd", "classify train --data d.jsonl --text.max_len 1000000000",
         "text.max_len"),
    case("config", "classify-folds-one", "classify train --data d.jsonl --folds 1", "eval.folds"),
    case("config", "classify-threshold-above-one", "classify train --data d.jsonl --threshold 1.5",
         "eval.threshold"),
    case("config", "classify-batch-zero", "classify train --data d.jsonl --train.batch_size 0", "train.batch_size"),
    case("config", "classify-label-is-text-field", "classify train --data d.jsonl --label-field text",
         "data.label_field", "text field"),
    case("config", "classify-transformer-heads", "classify train --data d.jsonl --model.transformer.d_model 130",
         "model.transformer.d_model", "divisible"),
    case("config", "classify-no-ngrams", CLF + " --model.linear.ngrams 0 --model.linear.char_ngrams 0",
         "model.linear.ngrams", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-bpe-without-path", "classify train --data d.jsonl --model fasttext --out run "
         "--text.tokenizer bpe", "text.bpe_path", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-vectors-missing", CLF.replace("linear", "bilstm") + " --text.vectors nope.vec",
         "text.vectors", "nope.vec", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-gpt-run-not-a-run", "classify train --data d.jsonl --model gpt --out run "
         "--model.gpt.run d.jsonl", "d.jsonl", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-gpt-run-is-classifier", "classify train --data d.jsonl --model gpt --out run "
         "--model.gpt.run clf", "clf holds an lmforge classify run", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("config", "classify-gpt-unfreeze-one", "classify train --data d.jsonl --model gpt --model.gpt.unfreeze 1",
         "model.gpt.unfreeze", "[0, 1)"),
    case("config", "classify-gpt-lr-decay-below-one", "classify train --data d.jsonl --model gpt "
         "--model.gpt.layer_lr_decay 0.5", "model.gpt.layer_lr_decay"),
    case("config", "classify-gpt-pretrain-unknown", "classify train --data d.jsonl --model gpt "
         "--model.gpt.pretrain maybe", "model.gpt.pretrain"),
    case("config", "classify-gpt-pretrain-off-no-run", "classify train --data d.jsonl --model gpt --out run "
         "--model.gpt.pretrain off", "model.gpt.run", "pretrain", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-unlabeled-missing", "classify train --data d.jsonl --model gpt --out run "
         "--unlabeled nope.txt", "nope.txt", "no such file", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-unlabeled-without-gpt", CLF + " --unlabeled u.txt", "data.unlabeled",
         "members are linear", files={"d.jsonl": jsonl(RECS), "u.txt": "more text\n"}),
    case("config", "classify-self-train-without-unlabeled", CLF + " --self_train.rounds 1", "self_train.rounds",
         "--unlabeled", files={"d.jsonl": jsonl(RECS)}),
    case("config", "classify-self-train-with-time", CLF + " --self_train.rounds 1 --unlabeled u.txt --time 1m",
         "self_train.rounds", "--time", files={"d.jsonl": jsonl(RECS), "u.txt": "more text\n"}),
    case("config", "classify-self-train-rounds", CLF + " --self_train.rounds 11 --unlabeled u.txt",
         "self_train.rounds", "[0, 10]", files={"d.jsonl": jsonl(RECS), "u.txt": "more text\n"}),
    case("config", "classify-self-train-max-ratio", CLF + " --self_train.rounds 1 --unlabeled u.txt "
         "--self_train.max_ratio 0", "self_train.max_ratio", "(0, 100]",
         files={"d.jsonl": jsonl(RECS), "u.txt": "more text\n"}),
    case("config", "classify-self-train-threshold", CLF + " --self_train.rounds 1 --unlabeled u.txt "
         "--self_train.threshold 1.5", "self_train.threshold", "[0.5, 1)",
         files={"d.jsonl": jsonl(RECS), "u.txt": "more text\n"}),
    case("config", "classify-yaml-is-lm-config", "classify train --config c.yaml --data d.jsonl", "c.yaml",
         "'tokenizer'", files={"c.yaml": "tokenizer:\n  kind: char\n", "d.jsonl": jsonl(RECS)}),
]


def _mixed(rows):
    return csv_text(["text", "label"], rows)


CLASSIFY = [
    case("classify", "single-class", CLF, "d.jsonl", "every record has the label 'pos'",
         files={"d.jsonl": jsonl([{"text": f"t {i}", "label": "pos"} for i in range(10)])}),
    case("classify", "unseen-test-label", CLF + " --test t.jsonl", "t.jsonl:2", "label 'neutral'",
         "does not occur in the training data",
         files={"d.jsonl": jsonl(RECS), "t.jsonl": jsonl([RECS[0], {"text": "x y", "label": "neutral"}])}),
    case("classify", "unseen-valid-label", CLF + " --valid v.jsonl", "v.jsonl:1", "label 'meh'",
         files={"d.jsonl": jsonl(RECS), "v.jsonl": jsonl([{"text": "x y", "label": "meh"}])}),
    case("classify", "empty-text", CLF, "d.jsonl:3", "field 'text' is empty",
         files={"d.jsonl": jsonl(RECS[:2] + [{"text": "   ", "label": "pos"}])}),
    case("classify", "text-is-number", CLF, "d.jsonl:1", "field 'text' is int",
         files={"d.jsonl": jsonl([{"text": 5, "label": "pos"}])}),
    case("classify", "missing-text-field", CLF, "d.jsonl:2", "no field 'text'", "--text-field",
         files={"d.jsonl": jsonl([RECS[0], {"body": "x", "label": "pos"}])}),
    case("classify", "missing-label-field", CLF, "d.jsonl:2", "no field 'label'", "--label-field",
         files={"d.jsonl": jsonl([RECS[0], {"text": "x"}])}),
    case("classify", "label-null", CLF, "d.jsonl:2", "'label'",
         files={"d.jsonl": jsonl([RECS[0], {"text": "x", "label": None}])}),
    case("classify", "label-empty", "classify train --data d.csv --model linear --out run", "d.csv:3",
         "'label' is empty", files={"d.csv": _mixed([["a b", "pos"], ["c d", ""]])}),
    case("classify", "label-fraction", CLF, "d.jsonl:2", "a label must be a string or an integer",
         files={"d.jsonl": jsonl([RECS[0], {"text": "x", "label": 0.5}])}),
    case("classify", "label-list", CLF, "d.jsonl:1", "a label must be",
         files={"d.jsonl": jsonl([{"text": "x", "label": ["a"]}])}),
    case("classify", "labels-mixed-numbers-words", "classify train --data d.csv --model linear --out run",
         "d.csv:3", "mixes numbers and words", "d.csv:2",
         files={"d.csv": _mixed([["good film", 1], ["great film", "positive"], ["bad film", 0]])}),
    case("classify", "labels-mixed-json-types", CLF, "d.jsonl:2", "mixes numbers and words",
         files={"d.jsonl": jsonl([{"text": "a", "label": 1}, {"text": "b", "label": "1.0"}])}),
    case("classify", "labels-differ-in-case", CLF, "d.jsonl:3", "differs only in case",
         files={"d.jsonl": jsonl([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"},
                                  {"text": "c", "label": "Pos"}])}),
    case("classify", "label-field-of-ids", "classify train --data d.jsonl --model linear --out run "
         "--label-field id", "d.jsonl", "looks like ids",
         files={"d.jsonl": jsonl([{"text": f"t {i}", "id": f"r{i}"} for i in range(30)])}),
    case("classify", "plain-text-file", "classify train --data d.txt --model linear --out run", "d.txt",
         "plain text, not records", files={"d.txt": TEXT}),
    case("classify", "json-list-of-strings", "classify train --data d.json --model linear --out run", "d.json:1",
         "plain string", files={"d.json": '["a", "b"]'}),
    case("classify", "no-records", CLF, "d.jsonl", "holds no records", files={"d.jsonl": "\n\n"}),
    case("classify", "valid-is-train", CLF + " --valid d.jsonl", "data.valid_path", "training data",
         files={"d.jsonl": jsonl(RECS)}),
    case("classify", "test-is-train", CLF + " --test ./d.jsonl", "data.test_path", "training data",
         files={"d.jsonl": jsonl(RECS)}),
    case("classify", "threshold-on-three-classes", CLF + " --threshold 0.3", "eval.threshold",
         "two-class tasks only", files={"d.jsonl": jsonl(labeled(30, ("a", "b", "c")))}),
    case("classify", "folds-above-rarest-class", CLF + " --folds 5", "5 stratified folds", "rarest class",
         files={"d.jsonl": jsonl(RECS[:20] + [{"text": "odd one", "label": "rare"}] * 2)}),
    case("classify", "too-few-for-validation", "classify train --data d.jsonl --model fasttext --out run",
         "d.jsonl", "validation", files={"d.jsonl": jsonl(RECS[:3])}),
    case("classify", "latin1-csv-mixed-with-utf8", "classify train --data d.csv --model linear --out run",
         "d.csv", "mixes encodings",
         files={"d.csv": "text,label\nGrüße aus München,1\n".encode("latin-1") + "Größe,0\n".encode()}),
    case("classify", "eval-on-lm-run", "classify eval lm --data d.jsonl", "lm holds an lmforge lm run",
         "lmforge eval", files={"d.jsonl": jsonl(RECS)}, runs=("lm",)),
    case("classify", "predict-on-lm-run", "classify predict lm --input d.jsonl", "lm run, not a classifier",
         files={"d.jsonl": jsonl(RECS)}, runs=("lm",)),
    case("classify", "eval-not-a-run", "classify eval somewhere --data d.jsonl", "somewhere",
         "not an lmforge run folder", files={"d.jsonl": jsonl(RECS), "somewhere/notes.txt": "x"}),
    case("classify", "eval-missing-run", "classify eval gone --data d.jsonl", "gone", "no such run folder",
         files={"d.jsonl": jsonl(RECS)}),
    case("classify", "eval-unseen-label", "classify eval clf --data t.jsonl", "t.jsonl:1", "label 'meh'",
         files={"t.jsonl": jsonl([{"text": "x", "label": "meh"}])}, runs=("clf",)),
    case("classify", "eval-mixed-labels", "classify eval clf --data t.csv", "t.csv:3", "mixes numbers",
         files={"t.csv": _mixed([["a", "pos"], ["b", 1]])}, runs=("clf",)),
    case("classify", "predict-threshold-two", "classify predict clf --input d.jsonl --threshold 2",
         "--threshold 2.0", "between 0 and 1", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("classify", "predict-threshold-nan", "classify predict clf --input d.jsonl --threshold nan",
         "--threshold nan", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("classify", "predict-threshold-three-classes", "classify predict clf3 --input d.jsonl --threshold 0.3",
         "--threshold", "two-class runs only", files={"d.jsonl": jsonl(RECS)}, runs=("clf3",)),
    case("classify", "predict-missing-text-field", "classify predict clf --input d.jsonl", "d.jsonl:1",
         "no field 'text'", files={"d.jsonl": jsonl([{"body": "x"}])}, runs=("clf",)),
    case("classify", "predict-device-unknown", "classify predict clf --input d.jsonl --device tpu",
         "--device tpu", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("classify", "run-labels-damaged", "classify predict clf --input d.jsonl", "labels.json", "damaged",
         files={"d.jsonl": jsonl(RECS)}, runs=("clf",),
         setup=lambda f: (f / "clf" / "labels.json").write_text("{not json")),
    case("classify", "predict-output-unknown-type", "classify predict clf --input d.jsonl --output o.xml",
         "--output o.xml", ".jsonl", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("classify", "predict-format-contradicts-output", "classify predict clf --input d.jsonl --output o.csv "
         "--format jsonl", "--format jsonl", "o.csv", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("classify", "predict-output-is-input", "classify predict clf --input d.jsonl --output d.jsonl",
         "--output d.jsonl", "input", files={"d.jsonl": jsonl(RECS)}, runs=("clf",)),
    case("classify", "vectors-dim-zero", "classify vectors --data d.txt --out v.vec --dim 0", "--dim 0",
         files={"d.txt": TEXT}),
    case("classify", "vectors-window-zero", "classify vectors --data d.txt --out v.vec --window 0", "--window 0",
         files={"d.txt": TEXT}),
    case("classify", "vectors-out-is-input", "classify vectors --data d.txt --out d.txt", "--out d.txt",
         "input", files={"d.txt": TEXT}),
    case("classify", "vectors-missing-data", "classify vectors --data nope.txt --out v.vec", "nope.txt",
         "no such file"),
]

RUN = "lm"
GENERATION = [
    case("generate", "classifier-run", "generate clf --prompt hi", "clf holds an lmforge classify run",
         "lmforge classify", runs=("clf",)),
    case("generate", "not-a-run", "generate docs --prompt hi", "docs", "not an lmforge run folder",
         files={"docs/a.txt": "x"}),
    case("generate", "missing-run", "generate gone --prompt hi", "gone", "no such run folder"),
    case("generate", "run-config-damaged", "generate lm --prompt hi", "config.yaml", "damaged", runs=("lm",),
         setup=lambda f: (f / "lm" / "config.yaml").write_text("model: [1\n")),
    case("generate", "run-config-not-lmforge", "generate lm --prompt hi", "config.yaml", "does not look like",
         runs=("lm",), setup=lambda f: (f / "lm" / "config.yaml").write_text("- a\n- b\n")),
    case("generate", "run-without-model", "generate lm --prompt hi", "model.json", "missing", runs=("lm",),
         setup=lambda f: (f / "lm" / "model.json").unlink()),
    case("generate", "max-new-tokens-negative", "generate lm --prompt hi --max-new-tokens -5",
         "--max-new-tokens -5", runs=("lm",)),
    case("generate", "max-new-tokens-text", "generate lm --max-new-tokens many", "--max-new-tokens",
         "invalid int value", runs=("lm",)),
    case("generate", "temperature-nan", "generate lm --prompt hi --temperature nan", "--temperature nan",
         runs=("lm",)),
    case("generate", "temperature-inf", "generate lm --prompt hi --temperature inf", "--temperature inf",
         runs=("lm",)),
    case("generate", "temperature-negative", "generate lm --prompt hi --temperature -1", "--temperature -1",
         runs=("lm",)),
    case("generate", "top-p-zero", "generate lm --prompt hi --top-p 0", "--top-p 0", runs=("lm",)),
    case("generate", "top-p-above-one", "generate lm --prompt hi --top-p 1.5", "--top-p 1.5", runs=("lm",)),
    case("generate", "top-k-negative", "generate lm --prompt hi --top-k -1", "--top-k -1", runs=("lm",)),
    case("generate", "num-samples-zero", "generate lm --prompt hi --num-samples 0", "--num-samples 0",
         runs=("lm",)),
    case("generate", "seed-negative", "generate lm --prompt hi --seed -1", "--seed -1", runs=("lm",)),
    case("generate", "device-unknown", "generate lm --prompt hi --device quantum", "--device quantum",
         runs=("lm",)),
    case("generate", "prompt-not-unicode", "generate lm --prompt \udcff", "prompt", runs=("lm",)),
    case("eval", "max-tokens-negative", "eval lm --max-tokens -1", "--max-tokens -1", runs=("lm",)),
    case("eval", "max-tokens-below-context", "eval lm --max-tokens 5", "--max-tokens 5", "one window",
         runs=("lm",)),
    case("eval", "classifier-run", "eval clf", "clf holds an lmforge classify run", runs=("clf",)),
    case("eval", "not-a-run", "eval docs", "docs", "not an lmforge run folder", files={"docs/a.txt": "x"}),
    case("eval", "data-missing", "eval lm --data nope.txt", "nope.txt", "no such file", runs=("lm",)),
    case("eval", "data-binary", "eval lm --data d.txt", "d.txt", "binary file", files={"d.txt": PNG},
         runs=("lm",)),
    case("eval", "data-shorter-than-context", "eval lm --data d.txt", "d.txt", "less than one context window",
         files={"d.txt": "tiny\n"}, runs=("lm",)),
    case("eval", "device-unknown", "eval lm --device gpu0", "--device gpu0", runs=("lm",)),
    case("resume", "not-a-run", "train --resume docs", "docs", "not an lmforge run folder",
         files={"docs/a.txt": "x"}),
    case("resume", "classifier-run", "train --resume clf", "cannot resume clf", "classify run", runs=("clf",)),
    case("resume", "lm-run-as-classifier", "classify train --resume lm", "cannot resume lm", "lm run",
         runs=("lm",)),
]

CONV = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def _damage(rel: str, data: bytes | str | None):
    """A setup that replaces (or, with None, removes) a file of a copied shared run."""
    def setup(folder: Path) -> None:
        path = folder / rel
        if data is None:
            path.unlink()
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return setup


def _no_intact_weights(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder / "lm" / "checkpoints", ignore_errors=True)
    (folder / "lm" / "model.safetensors").write_bytes(b"\x00" * 64)


SERVING = [
    case("serve", "port-negative", "serve lm --port -1", "--port -1", runs=("lm",)),
    case("serve", "port-too-high", "serve lm --port 70000", "--port 70000", runs=("lm",)),
    case("serve", "max-batch-zero", "serve lm --max-batch 0", "--max-batch 0", runs=("lm",)),
    case("serve", "device-unknown", "serve lm --device tpu", "--device tpu", runs=("lm",)),
    case("serve", "missing-run", "serve gone", "gone", "no such run folder"),
    case("serve", "names-count", "serve lm --model-name a --model-name b", "--model-name", "one per run",
         runs=("lm",)),
    case("serve", "names-twice", "serve lm lm/", "--model-name", "lm", runs=("lm",)),
    case("serve", "port-not-a-number", "serve lm --port http", "--port", "invalid int value", runs=("lm",)),
    case("chat", "temperature-nan", "chat lm --temperature nan", "--temperature nan", runs=("lm",)),
    case("chat", "top-p-zero", "chat lm --top-p 0", "--top-p 0", runs=("lm",)),
    case("chat", "max-new-tokens-negative", "chat lm --max-new-tokens -3", "--max-new-tokens -3", runs=("lm",)),
    case("chat", "device-unknown", "chat lm --device gpu7", "--device gpu7", runs=("lm",)),
    case("chat", "classifier-run", "chat clf", "clf holds an lmforge classify run", runs=("clf",), stdin="hi\n"),
    case("chat", "missing-run", "chat gone", "gone", stdin="hi\n"),
    case("ui", "port-too-high", "ui --port 99999", "--port 99999"),
    case("ui", "presets-missing", "ui --presets nope", "--presets nope"),
    case("ui", "runs-is-a-file", "ui --runs f.txt", "--runs f.txt", files={"f.txt": "x"}),
    case("report", "not-a-run", "report docs", "docs", files={"docs/a.txt": "x"}),
    case("report", "missing-run", "report gone", "gone"),
    case("compare", "not-a-run", "compare docs --out c.png", "docs", files={"docs/a.txt": "x"}),
    case("compare", "out-is-a-user-file", "compare lm --out notes.png", "notes.png", files={"notes.png": PNG},
         runs=("lm",)),
    case("sft", "no-data", "sft lm --out ft", "data", runs=("lm",)),
    case("sft", "base-missing", "sft gone --data c.jsonl --out ft", "gone", files={"c.jsonl": CONV}),
    case("sft", "base-is-classifier", "sft clf --data c.jsonl --out ft", "clf", files={"c.jsonl": CONV},
         runs=("clf",)),
    case("sft", "data-missing", "sft lm --data nope.jsonl --out ft", "nope.jsonl", runs=("lm",)),
    case("sft", "data-not-conversations", "sft lm --data c.jsonl --out ft", "c.jsonl:1", "messages",
         files={"c.jsonl": '{"text": "hello"}\n'}, runs=("lm",)),
    case("sft", "data-unknown-role", "sft lm --data c.jsonl --out ft", "c.jsonl:1", "wizard",
         files={"c.jsonl": '{"messages": [{"role": "wizard", "content": "x"}]}\n'}, runs=("lm",)),
    case("sft", "data-content-not-text", "sft lm --data c.jsonl --out ft", "c.jsonl:1", "content",
         files={"c.jsonl": '{"messages": [{"role": "user", "content": 5}, '
                           '{"role": "assistant", "content": "a"}]}\n'}, runs=("lm",)),
    case("sft", "data-invalid-json", "sft lm --data c.jsonl --out ft", "c.jsonl:2", files={"c.jsonl": CONV + "{oops\n"},
         runs=("lm",)),
    case("sft", "lr-nan", "sft lm --data c.jsonl --out ft --optim.lr nan", "optim.lr", files={"c.jsonl": CONV},
         runs=("lm",)),
    case("export", "missing-run", "export gone --to hf --out x", "gone"),
    case("export", "classifier-run", "export clf --to hf --out x", "clf", "classify", runs=("clf",)),
    case("export", "hf-q8", "export lm --to hf --out x --dtype q8_0", "--dtype q8_0", runs=("lm",)),
    case("export", "gguf-auto", "export lm --to gguf --out x.gguf --dtype auto", "--dtype auto", runs=("lm",)),
    case("export", "to-unknown", "export lm --to onnx --out x", "--to", "invalid choice", runs=("lm",)),
    case("export", "out-is-a-user-folder", "export lm --to hf --out mine", "mine", files={"mine/notes.txt": "x"},
         runs=("lm",)),
    case("export", "gguf-char-tokenizer", "export lm --to gguf --out m.gguf", "tokenizer.kind", "--to hf",
         runs=("lm",)),
    case("export", "out-is-the-run", "export lm --to hf --out lm", "lm", runs=("lm",)),
    case("import", "missing-folder", "import nope --out r", "nope"),
    case("import", "not-a-model-folder", "import docs --out r", "docs", files={"docs/a.txt": "x"}),
    case("import", "config-not-json", "import h --out r", "config.json", files={"h/config.json": "{oops"}),
    case("import", "unsupported-architecture", "import h --out r", "h", "bert",
         files={"h/config.json": '{"architectures": ["BertModel"], "model_type": "bert"}'}),
    case("import", "context-negative", "import h --out r --context-len -5", "--context-len -5",
         files={"h/config.json": "{}"}),
    case("train", "init-missing", "train d.txt --out run --init gone", "gone", files={"d.txt": TEXT}),
    case("train", "init-is-classifier", "train d.txt --out run --init clf", "clf", files={"d.txt": TEXT},
         runs=("clf",)),
]

DAMAGED = [
    case("damaged", "weights-garbage-no-checkpoint", "generate lm --prompt hi", "lm", "model.safetensors",
         runs=("lm",), setup=_no_intact_weights),
    case("damaged", "tokenizer-garbage", "generate lm --prompt hi", "tokenizer.json", runs=("lm",),
         setup=_damage("lm/data/tokenizer.json", "{not json")),
    case("damaged", "tokenizer-missing", "eval lm", "tokenizer.json", runs=("lm",),
         setup=_damage("lm/data/tokenizer.json", None)),
    case("damaged", "model-json-garbage", "generate lm --prompt hi", "model.json", runs=("lm",),
         setup=_damage("lm/model.json", "[1, 2")),
    case("damaged", "config-missing-resume", "train --resume lm", "lm", runs=("lm",),
         setup=_damage("lm/config.yaml", None)),
    case("damaged", "ensemble-json-garbage", "classify predict clf --input d.jsonl", "ensemble.json",
         files={"d.jsonl": jsonl(RECS)}, runs=("clf",), setup=_damage("clf/ensemble.json", "{")),
    case("damaged", "classifier-member-missing", "classify predict clf --input d.jsonl", "clf",
         files={"d.jsonl": jsonl(RECS)}, runs=("clf",), setup=lambda f: shutil.rmtree(f / "clf" / "linear")),
    case("damaged", "classifier-config-garbage", "classify eval clf --data d.jsonl", "config.yaml",
         files={"d.jsonl": jsonl(RECS)}, runs=("clf",), setup=_damage("clf/config.yaml", "text: [")),
]

MORE_DATA = [
    case("data", "parquet-struct-text", "prepare d.parquet --out run", "d.parquet:1", "'text'",
         files={"d.parquet": parquet({"text": [{"a": 1}, {"a": 2}]})}),
    case("data", "jsonl-text-is-object", "prepare d.jsonl --out run", "d.jsonl:1", "'text'",
         files={"d.jsonl": '{"text": {"a": 1}}\n'}),
    case("data", "jsonl-line-not-utf8", "prepare d.jsonl --out run", "d.jsonl",
         files={"d.jsonl": b'{"text": "ok"}\n{"text": "\xff\xfe bad"}\n'}),
    case("data", "csv-only-header", "classify train --data d.csv --model linear --out run", "d.csv", "no records",
         files={"d.csv": "text,label\n"}),
]

PREPARE = [
    case("prepare", "corpus-too-small-for-context", "train d.txt --out run --tokenizer.kind char "
         "--model.context_len 512 --train.global_batch_tokens 512 --eval.max_tokens 512 --train.max_steps 3",
         "training split", "model.context_len", files={"d.txt": prose(4)}),
    case("prepare", "all-removed-by-min-chars", P + " --clean.min_chars 100000", "no training text left",
         files={"d.txt": TEXT}),
    case("prepare", "validation-file-empty", P + " --data.valid_path v.txt", "no validation text",
         files={"d.txt": TEXT, "v.txt": ""}),
    case("prepare", "tokenizer-kind-unknown", P + " --tokenizer.kind wordpiece", "tokenizer.kind",
         files={"d.txt": TEXT}),
    case("prepare", "bpe-vocab-below-bytes", "prepare d.txt --out run --tokenizer.vocab_size 256",
         "tokenizer.vocab_size", files={"d.txt": TEXT}),
    case("prepare", "cjk-split-unknown", P + " --tokenizer.cjk_split words", "tokenizer.cjk_split",
         files={"d.txt": TEXT}),
    case("prepare", "out-is-a-file", "prepare d.txt --out taken --tokenizer.kind char", "taken",
         files={"d.txt": TEXT, "taken": "a file, not a folder"}),
]

CLI = [
    case("cli", "unknown-command", "fly", "invalid choice: 'fly'"),
    case("cli", "time-unreadable", "train --time soon", "soon", "duration"),
    case("cli", "time-infinite", "train --time inf", "inf", "finite"),
    case("cli", "time-zero", "plan --time 0", "'0'", "positive"),
    case("cli", "lr-find-steps-zero", "lr-find --steps 0", "--steps 0"),
    case("cli", "lr-find-max-below-min", "lr-find --lr-min 1 --lr-max 0.1", "--lr-max 0.1"),
    case("cli", "tune-trials-zero", "tune t.yaml --trials 0", "--trials 0",
         files={"t.yaml": "search:\n  optim.lr: [1e-4, 1e-2]\n"}),
    case("cli", "tune-file-not-utf8", "tune t.yaml --trials 1 --out study", "t.yaml", "UTF-8",
         files={"t.yaml": b"\xff\xfesearch: {}\n"}),
    case("cli", "tune-file-bad-yaml", "tune t.yaml --trials 1 --out study", "t.yaml", "line 1",
         files={"t.yaml": "search: [1\n"}),
    case("cli", "tune-space-unknown-key", "tune t.yaml --trials 1 --out study", "search space", "optim.lrr",
         "Did you mean 'optim.lr'", files={"t.yaml": "search:\n  optim.lrr: [1e-4, 1e-2]\n"}),
    case("cli", "tune-space-scalar", "tune t.yaml --trials 1 --out study", "optim.lr", "low",
         files={"t.yaml": "search:\n  optim.lr: 5\n"}),
    case("cli", "tune-space-file-missing", "tune t.yaml --space s.yaml --trials 1 --out study", "s.yaml",
         "not found", files={"t.yaml": "train:\n  max_steps: 2\n"}),
    case("cli", "out-read-only", "prepare d.txt --out ro --tokenizer.kind char", "ro", files={"d.txt": TEXT},
         setup=lambda f: _readonly_folder(f / "ro"), root_can_read=True),
    case("cli", "tune-set-without-equals", "tune t.yaml --trials 1 --set optim.lr", "--set",
         files={"t.yaml": "search:\n  optim.lr: [1e-4, 1e-2]\n"}),
]

SUBPROCESS = [
    case("exit-path", "binary-data", P, "d.txt", "binary file", files={"d.txt": PNG}, subprocess=True),
    case("exit-path", "bad-config-value", "train --model.dropout 2", "model.dropout", subprocess=True),
    case("exit-path", "wrong-run-kind", "generate clf --prompt hi", "classify run", runs=("clf",),
         subprocess=True),
    case("exit-path", "unknown-option", "train --optim.lrr 1", "Did you mean --optim.lr", subprocess=True),
]

# Inputs added with compression, streaming prepare, quality filters and classifier time budgets.
LATER = [
    case("prepare", "filter-language-unknown", P + " --filter.languages en,xx", "filter.languages", "xx",
         files={"d.txt": TEXT}),
    case("prepare", "shard-mb-zero", P + " --data.shard_mb 0", "data.shard_mb", files={"d.txt": TEXT}),
    case("prepare", "filter-negative", P + " --filter.min_words -1", "filter.min_words", files={"d.txt": TEXT}),
    case("prepare", "engine-unknown", P + " --data.engine spark", "data.engine", "datatrove", files={"d.txt": TEXT}),
    case("prepare", "executor-without-engine", P + " --data.executor slurm", "data.executor", "--data.engine datatrove",
         files={"d.txt": TEXT}),
    case("prepare", "slurm-without-partition", P + " --data.engine datatrove --data.executor slurm",
         "data.slurm_partition", files={"d.txt": TEXT}),
    case("prepare", "slurm-time-bad", P + " --data.engine datatrove --data.slurm_time soon", "data.slurm_time", "soon",
         files={"d.txt": TEXT}),
    case("prepare", "engine-tasks-negative", P + " --data.engine datatrove --data.tasks -2", "data.tasks",
         files={"d.txt": TEXT}),
    case("compress", "quantize-missing-run", "quantize gone --method int8", "gone"),
    case("compress", "quantize-unknown-method", "quantize lm --method int3", "--method", "invalid choice",
         runs=("lm",)),
    case("compress", "prune-missing-run", "prune gone --keep 0.5", "gone"),
    case("compress", "distill-missing-teacher", "distill --teacher gone", "gone"),
    case("classify", "time-unreadable", CLF + " --time banana", "banana", files={"d.jsonl": jsonl(labeled())}),
    case("classify", "augment-unknown-method", CLF + " --augment swap,shuffle", "data.augment.methods", "shuffle",
         files={"d.jsonl": jsonl(labeled())}),
    case("classify", "augment-synonym-without-vectors", CLF + " --augment synonym", "data.augment.vectors",
         "classify vectors", files={"d.jsonl": jsonl(labeled())}),
    case("classify", "augment-vectors-missing", CLF + " --augment synonym --data.augment.vectors gone.txt",
         "data.augment.vectors", "gone.txt", files={"d.jsonl": jsonl(labeled())}),
    case("classify", "augment-copies-zero", CLF + " --augment swap --data.augment.copies 0", "data.augment.copies",
         files={"d.jsonl": jsonl(labeled())}),
    case("classify", "augment-strength-above-half", CLF + " --augment noise --data.augment.strength 0.9",
         "data.augment.strength", files={"d.jsonl": jsonl(labeled())}),
    case("classify", "decontam-ngram-too-short", CLF + " --data.decontam_ngram 2", "data.decontam_ngram",
         files={"d.jsonl": jsonl(labeled())}),
]

CASES = (DATA_FILES + MORE_DATA + CONFIG + CLASSIFY + GENERATION + SERVING + DAMAGED + PREPARE + CLI + SUBPROCESS
         + LATER)


@parametrize(CASES)
def test_bad_input(bad, tmp_path, capsys, monkeypatch, shared_runs):
    run_case(bad, tmp_path, capsys, monkeypatch, shared_runs)


def test_catalogue_size_and_categories():
    assert len(CASES) >= 100
    assert {c.category for c in CASES} >= {"data", "config", "classify", "generate", "eval", "prepare", "cli", "serve",
                                           "chat", "sft", "export", "import", "damaged"}


def test_tiny_lm_settings_train():
    # The shared run's settings must keep validating as the config grows stricter.
    from lmforge.config import load_config

    pairs = TINY_LM.split()
    load_config(None, {k[2:]: v for k, v in zip(pairs[::2], pairs[1::2])})


def test_a_mistyped_data_path_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    """The data paths are checked before the run folder is claimed: fixing the typo and running the
    same command again then starts cleanly, and no empty run folder is left to puzzle over."""
    from lmforge.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text(jsonl(RECS), encoding="utf-8")
    commands = ["train --data nope.txt --out run", "train --data d.txt --data.valid_path nope.txt --out run",
                "prepare nope.txt --out run",
                "classify train --data nope.jsonl --out run",
                "classify train --data d.jsonl --test nope.jsonl --model linear --out run",
                "classify train --data d.jsonl --unlabeled nope.txt --self_train.rounds 1 --out run"]
    (tmp_path / "d.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "u.txt").write_text("an unlabeled text\n", encoding="utf-8")
    for command in commands:
        capsys.readouterr()
        assert main(command.split()) == 2, command
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]  # `train` first says which budget it plans for
        assert line.startswith("lmforge: error: nope.") and "no such file or folder" in line, err
        assert "Traceback" not in err
        assert not (tmp_path / "run").exists(), command
    # Unlabeled text that the run would not read, or self-training without it: refused before the
    # claim too (the members 'auto' picks without --time never read it).
    for command, field in [("classify train --data d.jsonl --unlabeled u.txt --out run", "data.unlabeled"),
                           ("classify train --data d.jsonl --model fasttext --unlabeled u.txt --out run",
                            "data.unlabeled"),
                           ("classify train --data d.jsonl --self_train.rounds 1 --out run", "self_train.rounds")]:
        assert main(command.split()) == 2, command
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"lmforge: error: config field '{field}'"), line
        assert not (tmp_path / "run").exists(), command


def test_a_suggested_option_belongs_to_the_command_given(capsys):
    """`--valid` is an option of `classify train`, not of `train`: it is not offered back as its own fix."""
    from lmforge.cli import main

    assert main(["train", "--valid", "v.txt"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "lmforge: error: unrecognized arguments: --valid", line  # v.txt: read as the data path
    assert main(["classify", "train", "--vaild", "v.jsonl"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("Did you mean --valid?")
