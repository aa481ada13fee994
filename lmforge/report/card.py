"""The run report card: RUN/report.html (self-contained) and RUN/report.md, written after every run
and by `lmforge report RUN`. Everything comes from the run folder's files.

Language models: data (source, cleaning, duplicates, tokenizer, bytes per token), the plan against
what happened, curves, final metrics, samples, model, hardware and software, timings. Chat
fine-tuning runs add the loss before fine-tuning and replies before and after. Classifiers: metrics
(overall and per class), confusion matrix, ROC and calibration curves, the most confident errors
with their text, members and their curves.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from lmforge.errors import DataError
from lmforge.report import figures
from lmforge.report.document import Figure, Section, Table, Text, write
from lmforge.report.runinfo import key_figures, read_json, run_kind, run_status
from lmforge.trainer.metrics import read_metrics

EVAL_DETAILS = "eval_{split}.npz"  # a classifier's labels and probabilities on its scored split
ERRORS_FILE = "errors_{split}.json"  # its most confident errors, with their text
TOP_ERRORS = 10


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re)write RUN/report.html and RUN/report.md; returns their paths."""
    run_dir = Path(run_dir)
    kind = run_kind(run_dir)
    if kind is None:
        raise DataError(f"{run_dir} is not an lmforge run folder (no config.yaml with a model or labels)")
    sections = _classifier_sections(run_dir) if kind == "classify" else _lm_sections(run_dir)
    sections += [_environment(run_dir)]
    status = run_status(run_dir)
    title = f"lmforge report: {run_dir.resolve().name}"
    what = {"lm": "language model", "classify": "text classifier"}[kind]
    if (run_dir / "sft.yaml").is_file():
        what = "chat fine-tuning"
    subtitle = f"{what}, {status}; written {time.strftime('%Y-%m-%d %H:%M:%S')} from {run_dir.resolve()}"
    return write(run_dir, title, subtitle, sections)


def try_write_report(run_dir: str | Path) -> Path | None:
    """write_report for the end of a run: a failure is printed, never raised (the run itself is saved)."""
    try:
        return write_report(run_dir)[0]
    except Exception as e:  # noqa: BLE001 - the trained run must not be lost to a report problem
        from lmforge.console import console

        console.print(f"[yellow]warning:[/yellow] the report card was not written ({type(e).__name__}: {e}); "
                      f"retry with `lmforge report {run_dir}`")
        return None


def _config(run_dir: Path) -> dict:
    try:
        return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


# --- language models ---------------------------------------------------------------------------


def _lm_sections(run: Path) -> list[Section]:
    cfg = _config(run)
    result = read_json(run / "result.json", {}) or {}
    records = read_metrics(run / "metrics.jsonl")
    sections = [_lm_summary(run, result, records), _data_section(run, cfg), _plan_section(run, cfg, result, records)]
    charts = figures.training_curves(records)
    if charts:
        sections.append(Section("Curves", [Figure("curves", charts)]))
    sections += [_samples_section(run), _model_section(run, cfg), _timings(run, result)]
    return [s for s in sections if s.blocks]


def _lm_summary(run: Path, result: dict, records: list[dict]) -> Section:
    k = key_figures(run)
    evals = [r for r in records if "val_loss" in r]
    rows = [["steps", k.get("steps")], ["stopped because", result.get("stop_reason")],
            ["validation loss (nats/token)", k.get("val_loss")], ["best validation loss", result.get("best_val_loss")],
            ["perplexity", result.get("val_ppl")], ["bits per byte", k.get("val_bpb")],
            ["last training loss", k.get("train_loss")], ["throughput (tokens/s)", k.get("tokens_per_s")],
            ["training wall time (s)", k.get("wall_s")], ["evaluations", len(evals)]]
    if "first_val_loss" in result:
        rows.insert(2, ["assistant-token loss before fine-tuning", result["first_val_loss"]])
    return Section("Final metrics", [Table([r for r in rows if r[1] is not None])])


def _data_section(run: Path, cfg: dict) -> Section:
    prep = (read_json(run / "data" / "prepare.json", {}) or {}).get("summary")
    blocks: list = []
    if (run / "sft.yaml").is_file():
        sft = yaml.safe_load((run / "sft.yaml").read_text(encoding="utf-8")) or {}
        data = sft.get("data", {})
        blocks.append(Table([["base run", sft.get("base")],
                             ["conversations", "demo (from the embedded plays)" if data.get("demo") else data.get("path")],
                             ["held out for validation", data.get("val_fraction")]]))
        return Section("Data", blocks)
    if not prep:
        return Section("Data", [Text("no data summary (RUN/data/prepare.json) was found")])
    c = prep.get("cleaning", {})
    tok = prep.get("tokenizer", {})
    blocks.append(Table([
        ["source", prep.get("source")], ["files", ", ".join(_data_files(cfg)) or prep.get("source")],
        ["documents in / kept", f"{c.get('documents_in', 0):,} / {c.get('documents_out', 0):,}"],
        ["characters in / kept", f"{c.get('chars_in', 0):,} / {c.get('chars_out', 0):,}"],
        ["duplicates removed", c.get("removed_duplicate")], ["empty or short removed",
                                                             (c.get("removed_empty", 0) + c.get("removed_short", 0))],
        ["control characters removed", c.get("control_chars_removed")],
        ["train / validation documents", f"{prep.get('train_documents', 0):,} / {prep.get('val_documents', 0):,}"],
        ["train / validation tokens", f"{prep.get('train_tokens', 0):,} / {prep.get('val_tokens', 0):,}"],
        ["tokenizer", f"{tok.get('kind')}, vocabulary {tok.get('vocab_size', 0):,}"],
        ["bytes per token", prep.get("bytes_per_token")]]))
    return Section("Data", blocks)


def _data_files(cfg: dict, limit: int = 8) -> list[str]:
    path = (cfg.get("data") or {}).get("path")
    if not path:
        return []
    try:
        from lmforge.data.readers import find_files

        files = [str(p) for p in find_files(path)]
    except Exception:  # noqa: BLE001 - the data may have moved since training; the source is still shown
        return []
    return files[:limit] + ([f"... {len(files) - limit} more"] if len(files) > limit else [])


def _plan_section(run: Path, cfg: dict, result: dict, records: list[dict]) -> Section:
    plan = read_json(run / "plan.json")
    train = cfg.get("train", {})
    steps = result.get("steps") or (records[-1]["step"] if records else None)
    tokens = records[-1].get("tokens") if records else None
    tps = result.get("tokens_per_s")
    rows = []
    if plan:
        est, outcome = plan.get("estimates", {}), plan.get("outcome", {})
        rows += [["steps", est.get("steps"), steps], ["training tokens", est.get("train_tokens"), tokens],
                 ["tokens per second", est.get("tokens_per_s"), tps],
                 ["training time (s)", (plan.get("time") or {}).get("training"), result.get("wall_s")],
                 ["whole command (s)", plan.get("budget_s"), outcome.get("wall_s_so_far")],
                 ["loss (planner's relative score / validation loss)", est.get("predicted_loss_rel"),
                  result.get("val_loss")]]
        why = Table([list(r) for r in plan.get("rows", [])], ["setting", "value", "why"])
        return Section("Plan against outcome", [Table(rows, ["", "planned", "actual"]), why])
    budget = train.get("time_budget_s") or None
    planned_tokens = (train.get("max_steps") or 0) * (train.get("global_batch_tokens") or 0) or None
    if (run / "sft.yaml").is_file():
        planned_tokens = None  # fine-tuning counts conversations, not the base run's token batch
    rows += [["steps", train.get("max_steps"), steps], ["training tokens", planned_tokens, tokens],
             ["time budget (s)", budget, result.get("wall_s")]]
    return Section("Configured against outcome", [Table(rows, ["", "configured", "actual"])])


def _samples_section(run: Path) -> Section:
    samples = read_json(run / "samples.json", []) or []
    blocks: list = []
    for i, s in enumerate(samples):
        if isinstance(s, str):
            blocks.append(Text(s, pre=True))
        elif isinstance(s, dict) and s.get("after"):
            a, b = s["after"], s.get("before")
            convo = "\n".join(f"{m['role']}: {m['content']}" for m in a["messages"])
            text = f"{convo}\n\nbefore fine-tuning: {b['reply'] if b else '-'}\nafter fine-tuning:  {a['reply']}"
            if a.get("reference"):
                text += f"\nreference:          {a['reference']}"
            blocks.append(Text(text, pre=True))
    return Section("Samples", blocks)


def _model_section(run: Path, cfg: dict) -> Section:
    shape = read_json(run / "model.json", {}) or {}
    if not shape:
        return Section("Model", [])
    runtime = read_json(run / "runtime.json", {}) or {}
    params = _count_params(run / "model.safetensors")
    opt, sched = cfg.get("optim", {}), cfg.get("schedule", {})
    rows = [["parameters", params], ["layers x width", f"{shape.get('n_layer')} x {shape.get('d_model')}"],
            ["heads (kv)", f"{shape.get('n_head')} ({shape.get('n_kv_head')})"],
            ["context", shape.get("context_len")], ["vocabulary", shape.get("vocab_size")],
            ["norm / position / MLP", f"{shape.get('norm')} / {shape.get('position')} / {shape.get('mlp')}"],
            ["optimizer", f"{opt.get('kind')}, lr {opt.get('lr')} -> {sched.get('min_lr')} ({sched.get('kind')})"],
            ["precision / compile", f"{runtime.get('precision', '-')} / {runtime.get('compile', '-')}"]]
    return Section("Model", [Table(rows)])


def _count_params(path: Path) -> int | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))
    except Exception:  # noqa: BLE001 - no weights yet
        return None


def _timings(run: Path, result: dict) -> Section:
    prep = (read_json(run / "data" / "prepare.json", {}) or {}).get("summary", {})
    plan = read_json(run / "plan.json", {}) or {}
    rows = [[f"prepare: {k.replace('_', ' + ')}", v] for k, v in (prep.get("seconds") or {}).items()]
    rows += [[f"plan: {k.replace('_', ' ')}", v] for k, v in (plan.get("time") or {}).items()
             if k in ("hardware_probe", "planning", "prepare")]
    rows.append(["training (with evaluations)", result.get("wall_s")])
    return Section("Timings (seconds)", [Table(rows)])


# --- classifiers ---------------------------------------------------------------------------------


def save_eval_details(run_dir: Path, split: str, texts: list[str], y: np.ndarray, proba: np.ndarray,
                      names: list) -> None:
    """Keep what the report's ROC, calibration and error sections need: labels and probabilities of
    the scored split, and its most confident errors with their text."""
    from lmforge.atomic import atomic_write_bytes, atomic_write_json
    import io

    y, proba = np.asarray(y, dtype=np.int64), np.asarray(proba, dtype=np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, y=y, proba=proba)
    atomic_write_bytes(Path(run_dir) / EVAL_DETAILS.format(split=split), buf.getvalue())
    pred = proba.argmax(1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-proba[wrong, pred[wrong]])][:TOP_ERRORS]
    atomic_write_json(Path(run_dir) / ERRORS_FILE.format(split=split), [
        {"index": int(i), "text": texts[i][:500], "true": str(names[y[i]]), "predicted": str(names[pred[i]]),
         "confidence": float(proba[i, pred[i]])} for i in worst])


def _classifier_sections(run: Path) -> list[Section]:
    m = read_json(run / "metrics.json", {}) or {}
    cfg = _config(run)
    names = [str(n) for n in (read_json(run / "labels.json", {}) or {}).get("labels", [])]
    split = "test" if m.get("test") else "valid"
    shown = m.get(split) or {}
    sections = [_clf_metrics(m), _clf_data(cfg, m, names)]
    if shown.get("per_class"):
        rows = [[n, v["precision"], v["recall"], v["f1"], v["support"]] for n, v in shown["per_class"].items()]
        sections.append(Section(f"Per class ({split})", [Table(rows, ["class", "precision", "recall", "F1", "support"])]))
    plots = []
    if shown.get("confusion_matrix"):
        plots.append(Figure("confusion", [figures.confusion(shown["confusion_matrix"], names, f"confusion ({split})")]))
    details = run / EVAL_DETAILS.format(split=split)
    if details.is_file():
        d = np.load(details)
        plots.append(Figure("roc_calibration", figures.roc_and_calibration(d["y"], d["proba"], names)))
    sections.append(Section("Confusion, ROC and calibration", plots))
    errors = read_json(run / ERRORS_FILE.format(split=split), []) or []
    if errors:
        rows = [[e["confidence"], e["true"], e["predicted"], e["text"][:300]] for e in errors]
        sections.append(Section(f"Most confident errors ({split})",
                                [Table(rows, ["confidence", "true", "predicted", "text"])]))
    sections.append(_clf_members(run, m))
    return [s for s in sections if s.blocks]


def _clf_metrics(m: dict) -> Section:
    keys = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1", "roc_auc", "log_loss")
    header = ["metric"] + [s for s in ("valid", "test") if m.get(s)]
    rows = [[k] + [m[s].get(k) for s in header[1:]] for k in keys]
    blocks = [Table(rows, header)]
    cv = m.get("cv")
    if cv:
        blocks.append(Table([[k, f"{cv[k]['mean']:.4f} ± {cv[k]['std']:.4f}"] for k in keys if k in cv],
                            [f"{cv.get('folds')}-fold cross-validation", "mean ± std"]))
    return Section("Final metrics", blocks)


def _clf_data(cfg: dict, m: dict, names: list[str]) -> Section:
    d, text = cfg.get("data", {}), cfg.get("text", {})
    rows = [["training data", d.get("path")], ["validation data", d.get("valid_path") or
                                                f"{d.get('val_fraction')} of the training data, stratified"],
            ["test data", d.get("test_path")], ["classes", ", ".join(names)],
            ["validation / test examples", f"{(m.get('valid') or {}).get('n', '-')} / {(m.get('test') or {}).get('n', '-')}"],
            ["language / units", f"{text.get('language')} / {text.get('tokenizer')}"]]
    return Section("Data", [Table(rows)])


def _clf_members(run: Path, m: dict) -> Section:
    facts = m.get("member_facts", {})
    rows = [[name, w, (facts.get(name) or {}).get("train_s"), (facts.get(name) or {}).get("steps"),
             (facts.get(name) or {}).get("params")] for name, w in zip(m.get("members", []), m.get("weights", []))]
    blocks: list = [Table(rows, ["member", "weight", "train time (s)", "steps", "parameters"])]
    for name in m.get("members", []):
        records = read_metrics(run / name / "metrics.jsonl")
        charts = figures.training_curves(records) if records else []
        if charts:
            blocks.append(Figure(f"curves_{name}", charts, caption=f"{name}: training"))
    blocks.append(Table([["training, all members (s)", m.get("train_s")]]))
    return Section("Members and timings", blocks)


# --- environment ---------------------------------------------------------------------------------


def _environment(run: Path) -> Section:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    plan_hw = (read_json(run / "plan.json", {}) or {}).get("hardware", {})
    rows = [["python", platform.python_version()], ["platform", platform.platform()],
            ["cpu", _cpu_name()], ["cores", os.cpu_count()]]
    try:
        import torch

        rows.append(["accelerator", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"])
    except Exception:  # noqa: BLE001
        pass
    if plan_hw:
        rows.append(["planner's probe", json.dumps({k: v for k, v in plan_hw.items() if not isinstance(v, dict)})[:300]])
    rows += [[pkg, version(pkg)] for pkg in ("lmforge", "torch", "numpy", "tokenizers", "scikit-learn") if version(pkg)]
    return Section("Hardware and software (where the report was written)", [Table(rows)])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
