"""Run folders: one owner, one history.

A run folder holds exactly one run. `run.json` names it: a run id (uuid), its kind (lm, classify,
tune), when, by which command and by which lmforge version it was created, its status, and every
resume with the settings it changed. A new run never writes into a folder that holds anything else:
  * a new or empty folder becomes the run's;
  * a folder holding a run of the same kind that has not started training (only prepared data or
    a plan) is taken over;
  * a run that has started needs `--resume` (continue it) or `--overwrite` (remove lmforge's own
    files of that run, and nothing else, then start afresh);
  * any other folder is refused.
Without `--out` every run gets a new dated folder under runs/, and runs/latest (runs/latest-classify)
links to the newest.

This module also holds the rule for user-named output files: an output never replaces an input,
nor an existing file lmforge did not write, unless asked to (`check_output`).
"""

from __future__ import annotations

import datetime as _dt
import errno
import fnmatch
import json
import os
import re
import shlex
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable

from lmforge.atomic import atomic_write_json
from lmforge.console import say, warn
from lmforge.errors import ConfigError, StorageError

RUN_FILE = "run.json"
DEFAULT_ROOT = "runs"
LATEST = {"lm": "latest", "classify": "latest-classify"}

# The report card and the metrics trackers (lmforge.report, lmforge.trainer.tracking).
_REPORT_NAMES = ("report.html", "report.md", "report_files", "tb", "mlflow.db")
# What the compression commands (lmforge.compress) add to the run folders they write.
_COMPRESS_NAMES = ("quant.json", "compress.json", "compress.md", "distill.json")
# What lmforge writes at the top of a run folder. `--overwrite` removes these and nothing else; an
# LM run's prepared data (data/) is kept: it is a cache keyed by the input files and the settings,
# rebuilt when either differs.
OWN_NAMES = {
    "lm": ("run.json", "config.yaml", "model.json", "model.safetensors", "runtime.json", "metrics.jsonl", "loss.png",
           "result.json", "samples.json", "plan.json", "plan.yaml", "lr_find.png", "lr_find.json", "checkpoints")
    + _REPORT_NAMES + _COMPRESS_NAMES,
    "classify": ("run.json", "config.yaml", "labels.json", "ensemble.json", "metrics.json", "cv.json",
                 "confusion_test.png", "confusion_valid.png", "folds", "eval_valid.npz", "eval_test.npz",
                 "errors_valid.json", "errors_test.json", "pretrain", "self_train") + _REPORT_NAMES + _COMPRESS_NAMES,
}
# A classifier's member folders (linear/, bilstm_2/, ...), recognised by name and by lmforge's files in them.
_MEMBER_DIR = re.compile(r"(linear|bilstm|fasttext|transformer|gpt)(_\d+)?")
_MEMBER_MARKERS = ("inputs.json", "linear.json", "model.json")


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line() -> str:
    argv = list(sys.argv)
    if argv and (argv[0].endswith("lmforge") or argv[0].endswith(("lmforge/cli/__main__.py", "__main__.py"))):
        argv[0] = "lmforge"
    return shlex.join(argv)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lmforge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# --- what a folder holds -------------------------------------------------------------------------


def read_info(folder: Path) -> dict | None:
    """run.json of a folder, or None when it has none. A damaged run.json reads as an empty record."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        warn(f"{path} is damaged; treating the folder as a run without identity")
        return {}


def guess_kind(folder: Path) -> str | None:
    """The kind of run a folder holds (from run.json, or from the files an older lmforge wrote), or None."""
    folder = Path(folder)
    info = read_info(folder)
    if info and info.get("kind"):
        return str(info["kind"])
    if (folder / "study.db").is_file() or (folder / "trials.json").is_file():
        return "tune"
    if (folder / "labels.json").is_file() or (folder / "ensemble.json").is_file():
        return "classify"
    if (folder / "model.json").is_file() or (folder / "data" / "prepare.json").is_file() or (
            (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()):
        return "lm"
    return None


def _has_checkpoint(folder: Path) -> bool:
    root = folder / "checkpoints"
    return root.is_dir() and any(root.glob("step_*"))


def member_dirs(folder: Path) -> list[Path]:
    """The classifier member folders lmforge wrote in a run folder."""
    return [p for p in sorted(Path(folder).iterdir()) if p.is_dir() and _MEMBER_DIR.fullmatch(p.name)
            and any((p / m).is_file() for m in _MEMBER_MARKERS)]


def started(folder: Path, kind: str) -> bool:
    """Whether the run in `folder` has begun training (has left checkpoints, logs or results)."""
    folder = Path(folder)
    if kind == "classify":
        return any((folder / n).exists() for n in ("ensemble.json", "metrics.json", "cv.json")) or bool(
            member_dirs(folder))
    metrics = folder / "metrics.jsonl"
    return (_has_checkpoint(folder) or (metrics.is_file() and metrics.stat().st_size > 0)
            or (folder / "result.json").is_file() or (folder / "model.safetensors").is_file())


def _describe(folder: Path, info: dict | None) -> str:
    parts = []
    if info and info.get("run_id"):
        parts.append(f"run {str(info['run_id'])[:8]}")
    if info and info.get("created"):
        parts.append(f"created {info['created']}")
    if info and info.get("status") == "finished":
        parts.append("finished" + (f" after {info['steps']} steps" if info.get("steps") is not None else ""))
    elif _has_checkpoint(folder):
        steps = [p.name.split("_")[1] for p in (folder / "checkpoints").glob("step_*")]
        parts.append(f"checkpoints up to step {max((int(s) for s in steps if s.isdigit()), default=0)}")
    return ", ".join(parts) or "trained by an older lmforge"


def _listing(folder: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# --- creating and claiming -----------------------------------------------------------------------


def storage_error(e: OSError, what: str, path: Path, after: str = "") -> StorageError:
    """A one-line StorageError for an OSError while writing `path`."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "the disk quota is exceeded", errno.ENOTDIR: "a part of the path is a file"}
    reason = reasons.get(e.errno or -1, e.strerror or str(e))
    where = e.filename or path
    return StorageError(f"cannot {what} {where}: {reason}" + (f"; {after}" if after else ""))


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--out {path}: a part of this path is a file, not a folder; choose another --out") from None
    except OSError as e:
        raise storage_error(e, "create the run folder", path) from None


def new_run_dir(kind: str, root: str | Path = DEFAULT_ROOT) -> Path:
    """A new folder runs/<date>_<time>-<kind>, unique even when two runs start in the same second."""
    root = Path(root)
    _mkdir(root)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for n in range(1, 10_000):
        path = root / (f"{stamp}-{kind}" if n == 1 else f"{stamp}-{kind}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise storage_error(e, "create the run folder", path) from None
    raise StorageError(f"cannot find a free run folder name under {root}")


def link_latest(path: Path, kind: str) -> None:
    """runs/latest (runs/latest-classify) -> the newest default run folder; left alone if it is a real folder."""
    name = LATEST.get(kind)
    if name is None:
        return
    link = path.parent / name
    if link.exists() and not link.is_symlink():
        say(f"note: {link} is a folder (from an older lmforge), so it was not replaced by a link")
        return
    tmp = path.parent / f".{name}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(path.name, tmp)
        os.replace(tmp, link)
    except OSError:  # e.g. a file system without symbolic links: the run itself is unaffected
        tmp.unlink(missing_ok=True)


def write_info(folder: Path, info: dict) -> None:
    try:
        atomic_write_json(Path(folder) / RUN_FILE, info)
    except OSError as e:
        raise storage_error(e, "write", Path(folder) / RUN_FILE) from None


def update_info(folder: Path, **fields: Any) -> dict:
    info = read_info(folder) or {}
    info.update(fields)
    write_info(folder, info)
    return info


def _new_info(kind: str, status: str) -> dict:
    return {"run_id": uuid.uuid4().hex, "kind": kind, "created": _now(), "lmforge_version": _version(),
            "command": command_line(), "status": status, "resume_history": []}


def remove_own_files(folder: Path, kind: str) -> list[str]:
    """Remove what lmforge wrote for a run of `kind` in `folder` (and the temporary files of its writes);
    every other file stays. Returns the names removed."""
    folder = Path(folder)
    own = set(OWN_NAMES.get(kind, ()))
    targets = [folder / n for n in own if (folder / n).exists() or (folder / n).is_symlink()]
    if kind == "classify":
        targets += member_dirs(folder)
    targets += [p for p in folder.iterdir() if p.name.startswith(".") and any(
        p.name.startswith(f".{n}.") for n in own)]
    removed = []
    for p in targets:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            raise storage_error(e, "remove", p, "nothing of the new run was written yet") from None
        removed.append(p.name)
    return sorted(removed)


def claim(out: str | Path | None, kind: str, *, overwrite: bool = False, status: str = "created",
          root: str | Path = DEFAULT_ROOT, quiet: bool = False) -> Path:
    """The folder a new run of `kind` writes to: created, or checked to be free for it; run.json written.

    `out` empty or None: a new dated folder under `root`, linked from runs/latest. `overwrite`: a
    started run of the same kind in `out` is replaced (only lmforge's files of it are removed).
    """
    if not out:
        path = new_run_dir(kind, root)
        link_latest(path, kind)
        if not quiet:
            say(f"run folder: {path}")
        write_info(path, _new_info(kind, status))
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; choose another --out (a new or empty folder)")
    if not path.exists():
        _mkdir(path)
    elif any(path.iterdir()):
        _check_free(path, kind, overwrite, quiet)
    write_info(path, _new_info(kind, status))
    return path


def _check_free(path: Path, kind: str, overwrite: bool, quiet: bool) -> None:
    """Refuse a non-empty folder that is not this kind's run, or a started run without --overwrite."""
    found = guess_kind(path)
    if found is None:
        raise ConfigError(
            f"--out {path} exists and is not an lmforge run folder (it holds {_listing(path)}); a new run writes "
            "only into a new or empty folder or into its own run folder. Choose another --out.")
    if found != kind:
        raise ConfigError(f"--out {path} holds an lmforge {found} run, not a {kind} run; choose another --out.")
    if not started(path, kind):
        return  # prepared data or a plan, not yet trained: the new run takes it over
    info = read_info(path)
    if not overwrite:
        raise ConfigError(
            f"--out {path} already holds an lmforge {kind} run ({_describe(path, info)}). Continue it with "
            f"--resume {path}, replace it with --overwrite (removes only lmforge's files of that run), or "
            "choose another --out.")
    removed = remove_own_files(path, kind)
    if not quiet:
        say(f"--overwrite: removed the earlier run's files from {path}: {', '.join(removed)}")


def claim_study(out: str | Path) -> Path:
    """The folder of a tune study: new, empty, or a study already (a killed study resumes there)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder; choose another --out")
    if not path.exists():
        _mkdir(path)
    info = read_info(path)
    if info is None:
        if any(path.iterdir()) and guess_kind(path) != "tune":
            raise ConfigError(f"--out {path} exists and is not an lmforge tune study (it holds {_listing(path)}); "
                              "choose another --out")
        write_info(path, _new_info("tune", "created"))
    elif info.get("kind") not in (None, "tune"):
        raise ConfigError(f"--out {path} holds an lmforge {info.get('kind')} run, not a tune study; "
                          "choose another --out")
    return path


# --- resuming ------------------------------------------------------------------------------------


def open_run(folder: str | Path, kind: str) -> dict:
    """The identity of the run to resume in `folder` (read only). A run written by an older lmforge,
    without run.json, gets one (not yet saved) with `adopted` set."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(f"cannot resume {path}: no such folder (no config.yaml to resume); pass the run folder "
                          "given as --out")
    found = guess_kind(path)
    if found is None or not (path / "config.yaml").is_file():
        raise ConfigError(f"cannot resume {path}: it is not an lmforge run folder (no run.json and config.yaml); "
                          "pass the run folder given as --out")
    if found != kind:
        raise ConfigError(f"cannot resume {path} here: it holds an lmforge {found} run; resume it with "
                          f"`lmforge {'classify train' if found == 'classify' else 'train'} --resume {path}`")
    info = read_info(path)
    if not info or not info.get("run_id"):
        adopted = _new_info(kind, "training")
        adopted["adopted"] = True
        return adopted
    return info


# The names lmforge's crash-safe writes give their temporary files: .NAME.RANDOM (atomic.temp_file),
# .NAME.HEX.tmp (token files), .NAME.tmp, and NAME.tmp.png (plots).
_TEMP_NAMES = (re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}(\.tmp)?"), re.compile(r"\.(?P<target>.+)\.tmp"),
               re.compile(r"(?P<stem>.+)\.tmp(?P<ext>\.png)"))
_DATA_NAMES = ("prepare.json", "tokenizer.json", "train.bin", "val.bin", "train.json", "val.json")


def _temp_target(name: str) -> str | None:
    for pattern in _TEMP_NAMES:
        m = pattern.fullmatch(name)
        if m:
            return m.group("target") if "target" in pattern.groupindex else m.group("stem") + m.group("ext")
    return None


def sweep_temp_files(folder: str | Path, kind: str) -> list[str]:
    """Remove the temporary files that a kill in the middle of a crash-safe write left in a run
    folder (its top level, data/ and classifier member folders; a half-written checkpoint is
    removed by the next save). Only the temporaries of files lmforge writes there are touched: a
    name of its own, or a file the temporary was to replace. Returns the paths removed."""
    folder = Path(folder)
    places = [(folder, set(OWN_NAMES.get(kind, ())) | {"mlflow_run.json"}), (folder / "data", set(_DATA_NAMES))]
    if kind == "classify" and folder.is_dir():
        places += [(p, set()) for p in folder.iterdir() if p.is_dir() and _MEMBER_DIR.fullmatch(p.name)]
    removed = []
    for place, known in places:
        try:
            entries = list(place.iterdir()) if place.is_dir() else []
        except OSError:
            continue
        for p in entries:
            target = _temp_target(p.name)
            if target is None or not p.is_file() or p.is_symlink() or not (target in known or (place / target).is_file()):
                continue
            try:
                p.unlink()
                removed.append(str(p))
            except OSError:
                pass  # read-only: the resume reports the folder when it writes
    return removed


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict, ignore: Iterable[str] = ("out",)) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for every field the two config trees set differently."""
    a, b = flatten(old), flatten(new)
    skip = set(ignore)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in skip and a.get(k) != b.get(k)]


def split_changes(changes: list[tuple[str, Any, Any]], may_change: Iterable[str]):
    """(honoured, refused): changes whose field matches one of the `may_change` patterns, and the rest."""
    patterns = list(may_change)
    ok = [c for c in changes if any(fnmatch.fnmatchcase(c[0], p) for p in patterns)]
    return ok, [c for c in changes if c not in ok]


def refusal(folder: Path, refused: list[tuple[str, Any, Any]], kept: str) -> ConfigError:
    shown = "; ".join(f"{k}: the run has {a!r}, now {b!r}" for k, a, b in refused[:6])
    more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
    return ConfigError(
        f"cannot resume {folder} with changed settings: {shown}{more}. A resumed run keeps its {kept}. "
        f"To train with these settings, start a new run: --out NEW_FOLDER (or --overwrite to replace {folder}).")


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)


def record_resume(folder: Path, info: dict, changes: list[tuple[str, Any, Any]], note: str = "") -> dict:
    """Append this resume to run.json's history (the settings it changed, the command) and mark the run as training."""
    entry = {"time": _now(), "command": command_line(), "lmforge_version": _version(),
             "changed": {k: [a, b] for k, a, b in changes}}
    if note:
        entry["note"] = note
    info = dict(info)
    info["resume_history"] = list(info.get("resume_history") or []) + [entry]
    info["status"] = "training"
    write_info(folder, info)
    return info


# --- user-named outputs --------------------------------------------------------------------------


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path: str | Path, inputs: Iterable[str | Path], *, overwrite: bool = False,
                 option: str = "--output", own_names: Iterable[str] = ()) -> Path:
    """Refuse to write `path` when it is one of the inputs, or an existing file lmforge did not write
    (unless `overwrite`). A file named in `own_names` inside an lmforge run folder is lmforge's own."""
    out = Path(path)
    for src in inputs:
        if _same_file(out, Path(src)):
            raise ConfigError(f"{option} {out} is also an input ({src}); writing it would destroy the input. "
                              f"Choose another {option}.")
    if out.is_dir():
        raise ConfigError(f"{option} {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        if out.name in set(own_names) and guess_kind(out.parent) is not None:
            return out  # a file lmforge writes in its own run folder
        raise ConfigError(f"{option} {out} exists; lmforge does not replace a file it did not create. Add "
                          f"--overwrite to replace it, or choose another {option}.")
    return out
