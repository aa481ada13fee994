"""`lmforge quantize RUN --method int8|int4 --out RUN_Q`: post-training weight quantization of a
language model or of a classifier's neural members, saved as a run folder every command loads.

RUN_Q holds what the loaders need (config, shape, tokenizer or vocabularies, the validation tokens
for `eval`), `quant.json` (which modules are quantized and how; see lmforge.models.quant) and the
quantized weights as safetensors. The table compares it with the original on this machine, and a
warning says when quantization does not make it faster here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from lmforge import runs
from lmforge.atomic import atomic_write_json
from lmforge.compress.report import Row, claim_output, classifier_params, file_mb, link_or_copy, lm_row, \
    predictions_per_s, save_and_print
from lmforge.console import console
from lmforge.errors import ConfigError, DataError
from lmforge.models import quant as q
from lmforge.trainer.checkpoint import save_weights

# Below this speed-up at batch 1 the CLI says that quantization does not pay on this machine.
PAYS_SPEEDUP = 1.1


def auto_group_size(width: int) -> int:
    """int4 group: 128 inputs for wide models (the usual choice, 4.25 bits per weight), 32 below
    512 wide, where a tiny model's few weights per row make coarse groups cost quality."""
    return 128 if width >= 512 else 32


def run_kind(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    if (run_dir / "ensemble.json").is_file():
        return "classify"
    if (run_dir / "model.json").is_file():
        return "lm"
    raise DataError(f"{run_dir} is neither a language-model run (no model.json) nor a classifier run "
                    "(no ensemble.json); pass a run folder given as --out to train")


def quantize_run(run: str | Path, method: str, out: str | Path | None, group_size: int = 0, data: str | None = None,
                 eval_tokens: int = 65536, progress: bool = True, overwrite: bool = False, speed: bool = True) -> dict:
    """Quantize the run's model(s) into `out`; returns the report (rows of the table and facts).
    `speed=False` leaves the language-model decode timings out of the table (they take seconds)."""
    if method not in q.METHODS:
        raise ConfigError(f"--method {method!r}: use one of {', '.join(q.METHODS)}")
    if group_size and group_size not in q.INT4_GROUP_SIZES:
        raise ConfigError(f"--group-size {group_size}: the int4 kernel takes groups of "
                          f"{', '.join(map(str, q.INT4_GROUP_SIZES))}")
    run = Path(run)
    if (run / "quant.json").is_file():
        raise DataError(f"{run} is already quantized; quantize the original run")
    if run_kind(run) == "classify":
        report = _quantize_classifier(run, method, out, group_size, data, progress, overwrite)
    else:
        report = _quantize_lm(run, method, out, group_size, eval_tokens, progress, overwrite, speed)
    runs.update_info(Path(report["run_dir"]), status="finished")
    return report


def _write_spec(folder: Path, spec: dict, model: torch.nn.Module, source: Path) -> None:
    kernels = q.kernels_used(model)
    spec = {**spec, "source": str(source), "kernels": {q.KERNEL_NAMES[k]: n for k, n in kernels.items()}}
    atomic_write_json(folder / "quant.json", spec)


def _quantize_lm(run: Path, method: str, out: str | Path | None, group_size: int, eval_tokens: int, progress: bool,
                 overwrite: bool, speed: bool = True) -> dict:
    from lmforge.data.tokens import TokenFile
    from lmforge.lm.model import load_run_model
    from lmforge.lm.task import token_byte_lengths

    model, tok, info = load_run_model(run)
    group = group_size or auto_group_size(model.cfg.d_model)
    quantized = copy.deepcopy(model)
    spec = q.quantize(quantized, method, group)
    out = claim_output(out, "lm", run, method, overwrite, progress)
    for name in ("config.yaml", "model.json", "data/tokenizer.json", "data/val.bin", "data/val.json"):
        if (run / name).is_file():
            link_or_copy(run / name, out / name)
    save_weights(quantized.state_dict(), out / "model.safetensors")
    _write_spec(out, spec, quantized, run)
    val = TokenFile(run / "data" / "val.bin").tokens if (run / "data" / "val.bin").is_file() else None
    lengths = token_byte_lengths(tok)
    n_params = model.num_params(non_embedding=False)
    rows = [lm_row("original (fp32)", model, Path(info["weights"]), val, lengths, eval_tokens, n_params, speed),
            lm_row(method, quantized, out / "model.safetensors", val, lengths, eval_tokens, n_params, speed)]
    kernels = {q.KERNEL_NAMES[k]: n for k, n in q.kernels_used(quantized).items()}
    facts = {"source": str(run), "group_size": group if method == "int4" else None,
             "kernels": kernels, "kernel": "; ".join(f"{k} x{n}" for k, n in kernels.items())}
    _warn_if_slow(rows, facts, progress)
    return save_and_print(out, method, "lm", rows, facts, progress)


def _warn_if_slow(rows: list[Row], facts: dict, progress: bool, unit_lm: bool = True) -> None:
    ref, new = rows[0], rows[1]
    if not (ref.speed_b1 and new.speed_b1) or new.speed_b1 >= PAYS_SPEEDUP * ref.speed_b1:
        return
    unit = "decoded tokens per second at batch 1" if unit_lm else "predictions per second"
    msg = (f"quantization does not pay in speed on this machine: {new.speed_b1:,.0f} against "
           f"{ref.speed_b1:,.0f} {unit}. A model this small is bound by the per-operation overhead of its "
           "small matrices, not by reading its weights; the gain is file size only.")
    facts["warning"] = msg
    if progress:
        console.print(f"[yellow]warning:[/yellow] {msg}")


# --- classifiers --------------------------------------------------------------------------------


def _copy_member(src: Path, dst: Path, skip: set[str]) -> None:
    for p in src.iterdir():
        if p.is_file() and p.name not in skip and p.suffix != ".tmp":
            link_or_copy(p, dst / p.name)


def _labeled_for_quality(clf, data: str | None):
    """(texts, labels) to score: --data, else the run's test file, else its validation file."""
    from lmforge.classify.data import read_labeled

    d = clf.cfg.data
    path = data or d.test_path or d.valid_path
    if not path:
        return None, None, None
    ds = read_labeled(path, d.text_field, d.label_field)
    return ds.texts, clf.labels.encode(ds), path


def _quantize_classifier(run: Path, method: str, out: str | Path | None, group_size: int, data: str | None,
                         progress: bool, overwrite: bool) -> dict:
    from lmforge.classify.members import NeuralMember
    from lmforge.classify.run import Classifier

    clf = Classifier(run)
    if not any(isinstance(m, NeuralMember) for m in clf.members):
        raise DataError(f"{run} has no neural member to quantize (members: {', '.join(clf.kinds)})")
    out = claim_output(out, "classify", run, method, overwrite, progress)
    for name in ("config.yaml", "labels.json", "ensemble.json"):
        link_or_copy(run / name, out / name)
    original = Classifier(run)
    for name, member in zip(clf.kinds, clf.members):
        (out / name).mkdir()
        if not isinstance(member, NeuralMember):
            _copy_member(run / name, out / name, set())
            continue
        width = max((m.in_features for m in member.model.modules() if isinstance(m, torch.nn.Linear)), default=128)
        spec = q.quantize(member.model, method, group_size or auto_group_size(width))
        _copy_member(run / name, out / name, {"model.safetensors", "runtime.json"})
        save_weights(member.model.state_dict(), out / name / "model.safetensors")
        _write_spec(out / name, spec, member.model, run / name)
    quantized = Classifier(out)
    texts, y, source = _labeled_for_quality(original, data)
    rows = []
    for label, c, folder in (("original", original, run), (method, quantized, out)):
        row = Row(label, classifier_params(c), file_mb(folder))
        if texts is not None:
            row.speed_b1 = predictions_per_s(c.predict_proba, texts[:2000])
            row.quality = float(np.mean(c.predict_proba(texts).argmax(1) == y))
        rows.append(row)
    facts = {"source": str(run), "scored_on": source, "members": clf.kinds,
             "kernel": json.dumps(json.loads((out / _first_neural(clf) / "quant.json").read_text())["kernels"])}
    _warn_if_slow(rows, facts, progress, unit_lm=False)
    return save_and_print(out, method, "classify", rows, facts, progress)


def _first_neural(clf) -> str:
    from lmforge.classify.members import NeuralMember

    return next(n for n, m in zip(clf.kinds, clf.members) if isinstance(m, NeuralMember))
