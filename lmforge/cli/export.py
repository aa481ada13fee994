"""`lmforge export | import`, and resolving `train --init`: argument definitions and dispatch only."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

COMMANDS = ("export", "import")


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write a run's model as a Hugging Face folder or a GGUF file (llama.cpp, Ollama)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--to", choices=("hf", "gguf"), required=True,
                   help="hf: a Transformers folder (config.json, model.safetensors, tokenizer); gguf: one llama.cpp file")
    p.add_argument("--out", required=True, help="folder (hf) or file (gguf) to write")
    p.add_argument("--dtype", choices=("auto", "f32", "f16", "bf16", "q8_0", "q4_1"), default=None,
                   help="weight type: hf default auto (as stored: f32 for trained runs), gguf default f16; "
                        "q8_0 and q4_1 are GGUF only. A quantized run (lmforge quantize) exports to GGUF as q8_0 "
                        "(int8) or q4_1 (int4), its integers unchanged, and to hf dequantized")
    p.add_argument("--overwrite", action="store_true", help="replace the files an export writes at --out")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")

    p = sub.add_parser("import", help="read a local Hugging Face model folder (Llama, Mistral, Qwen2, Qwen3, GPT-2) "
                                      "into an lmforge run folder")
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--context-len", type=int, default=0,
                   help="context the run uses (default: the model's max_position_embeddings)")
    p.add_argument("--overwrite", action="store_true", help="replace the files an import writes at --out")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "export":
        from lmforge.errors import ConfigError

        if args.to == "hf":
            from lmforge.export.hf import export_hf

            if args.dtype in ("q8_0", "q4_1"):
                raise ConfigError(f"--dtype {args.dtype} is for GGUF; a Hugging Face export takes auto, f32, f16 "
                                  "or bf16")
            command = "lmforge " + shlex.join(args.argv) if getattr(args, "argv", None) else None
            summary = export_hf(args.run, args.out, args.dtype or "auto", args.overwrite, command)
        else:
            from lmforge.export.gguf import export_gguf

            if args.dtype == "auto":
                raise ConfigError("--dtype auto is for Hugging Face exports; GGUF takes f32, f16, bf16, q8_0 or q4_1")
            summary = export_gguf(args.run, args.out, args.dtype, args.overwrite)
        _report(summary, args.json)
        return 0
    if args.command == "import":
        from lmforge.config import check_option
        from lmforge.export.hf_import import import_hf

        check_option(0 <= args.context_len <= 2**20, "--context-len", args.context_len,
                     "must be in [0, 1048576] (0: the model's max_position_embeddings)")
        _report(import_hf(args.hf_dir, args.out, args.context_len, args.overwrite), args.json)
        return 0
    raise AssertionError(args.command)


def _report(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key:>14}: {value}")


def resolve_init(args: argparse.Namespace, cfg):
    """The config of `train --init PATH`: a Hugging Face folder is imported into RUN/init first; the model
    section becomes the init model's, with --model.context_len and --model.dropout when given."""
    import dataclasses

    from lmforge.cli.options import overrides_from
    from lmforge.errors import ConfigError
    from lmforge.lm.model import INIT_FREE_FIELDS, init_model_config

    model_flags = [k for k in overrides_from(args) if k.startswith("model.")]
    fixed = [k for k in model_flags if k.split(".", 1)[1] not in INIT_FREE_FIELDS]
    if fixed:
        raise ConfigError(f"--{fixed[0]}: with --init the model's shape is the init model's; only "
                          "--model.context_len and --model.dropout may be set")
    source = Path(args.init)
    if (source / "config.json").is_file() and not (source / "config.yaml").is_file():
        from lmforge import runs

        # The imported model lives in the new run's folder, so the folder is claimed first.
        cfg.out = str(runs.claim(cfg.out, "lm", overwrite=getattr(args, "overwrite", False)))
        source = _import_once(source, Path(cfg.out) / "init")
    given = {k.split(".", 1)[1]: getattr(cfg.model, k.split(".", 1)[1]) for k in model_flags}
    model = init_model_config(source, given.get("context_len", 0), given.get("dropout"))
    cfg = dataclasses.replace(cfg, init=str(source), model=model)
    return cfg.validate()


def _import_once(hf_dir: Path, target: Path) -> Path:
    """RUN/init holds the imported model; a rerun of the same command reuses it."""
    from lmforge.errors import ConfigError
    from lmforge.export.hf_import import import_hf

    record = target / "import.json"
    if record.is_file():
        if json.loads(record.read_text(encoding="utf-8")).get("source") == str(hf_dir):
            return target
        raise ConfigError(f"{target} holds a model imported from elsewhere; choose another --out")
    import_hf(hf_dir, target)
    return target
