"""Checkpoints that survive kills, full disks and damaged files.

Layout of a run folder's checkpoints:
    checkpoints/step_000500/model.safetensors   weights
    checkpoints/step_000500/state.pt            optimizer, RNG states, step, data position (tensors only)
    checkpoints/step_000500/meta.json           written last: step, run id, sha256 of the two files
A checkpoint folder is assembled under a temporary name and renamed into place, so a kill at any
moment leaves the previous checkpoints intact; older ones are pruned only after the new one exists.

A sharded run (FSDP, tensor parallelism: `trainer.parallelize`) writes a sharded checkpoint instead:
    checkpoints/step_000500/sharded/            torch.distributed.checkpoint (DCP): each process's shards
                                                (__RANK_N.distcp) and the .metadata that maps them
    checkpoints/step_000500/state.pt            as above, without the optimizer (it is in the shards)
    checkpoints/step_000500/meta.json           written last, with the sha256 of every file
Every process writes its shards into the temporary folder, then rank 0 renames it into place, so a
kill (of any process) during a save leaves the previous checkpoint as it was. DCP reshards on
loading: a checkpoint saved by N processes resumes on M, sharded or not; `run_weights` consolidates
one into whole weights on the fly (for eval, generate, export).

Every weights file also carries a sha256 of its tensors in its safetensors header, so a lone
weights file (a run's best weights, model.safetensors) can be verified too. Readers go through
`latest_intact` / `restore_latest` / `run_weights`, which skip a damaged file with a one-line
warning and use the newest intact one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors import safe_open

from lmforge.atomic import atomic_write_json, fsync_dir, fsync_file, temp_dir
from lmforge.console import warn
from lmforge.errors import DataError, LmforgeError, StorageError, TrainingError
from lmforge.trainer.safetensors_io import SafetensorsWriter, WholeWeights

DIGEST_KEY = "lmforge.tensors_sha256"
CHECKSUMMED = ("model.safetensors", "state.pt")
SHARDED = "sharded"  # the DCP folder of a sharded checkpoint


class Damaged(Exception):
    """A file that does not hold what was written (truncated, flipped bytes, missing)."""


def _warn(message: str) -> None:
    warn(message)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _hash_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def _digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in named:
        _hash_tensor(h, name, t)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes: independent of how the file lays them out."""
    return _digest((name, tensors[name]) for name in sorted(tensors))


# --- writing ---------------------------------------------------------------------------------------

_IO_HINTS = ("basic_ios", "file write failed", "PytorchStreamWriter", "No space", "IoError", "Errno", "os error")


def _is_io_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or (isinstance(e, Exception) and any(h in str(e) for h in _IO_HINTS))


def storage_error(e: BaseException, path: Path, run_dir: Path | None) -> StorageError:
    """One line: what could not be written, why, and that the previous checkpoint is intact."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EDQUOT: "the disk quota is exceeded"}
    if isinstance(e, OSError) and e.errno in reasons:
        reason = reasons[e.errno]
    else:
        try:
            free = shutil.disk_usage(Path(path).parent if Path(path).parent.exists() else ".").free
        except OSError:
            free = None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        reason = "the disk is full" if free is not None and free < (64 << 20) else first
    prev = latest_checkpoint(run_dir) if run_dir is not None else None
    state = f"the previous checkpoint {prev} is intact" if prev else "no checkpoint was saved before this one"
    return StorageError(f"cannot write {path}: {reason}; {state}. Free space or fix the folder's permissions, "
                        "then resume the run with --resume.")


@contextlib.contextmanager
def guard_writes(run_dir: Path):
    """Turn an OSError from a write during training (metrics log, plots, results) into the one-line
    StorageError that says the previous checkpoint is intact."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise storage_error(e, Path(e.filename or run_dir), run_dir) from None


def save_weights(weights: Mapping[str, torch.Tensor] | WholeWeights, path: Path,
                 metadata: dict[str, str] | None = None, run_dir: Path | None = None) -> str:
    """Weights as safetensors, atomically, written tensor by tensor, with a digest of the tensors in
    the header. Tied weights are stored once. Returns the file's sha256. A failed write (disk full,
    read-only) raises StorageError."""
    path = Path(path)
    whole = weights if isinstance(weights, WholeWeights) else WholeWeights.of(weights)
    tensors = iter(whole)
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The digest covers tensors the header precedes: a placeholder of its length, filled in at the end.
        writer = SafetensorsWriter(path, whole.spec, {**(metadata or {}), DIGEST_KEY: "0" * 64})
        h = hashlib.sha256()
        for name, t in tensors:
            t = t.detach().to("cpu").contiguous()
            _hash_tensor(h, name, t)
            writer.write(name, t)
        writer.set_metadata(DIGEST_KEY, h.hexdigest())
        writer.close()
    except BaseException as e:
        if writer is not None:
            writer.abort()
        if _is_io_error(e):
            for _ in tensors:  # the other processes are still gathering: see them through, then fail
                pass
            raise storage_error(e, path, run_dir if run_dir is not None else path.parent) from None
        raise
    return file_sha256(path)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(p: Path) -> int:
    return int(p.name.split("_")[1])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (meta.json present), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.name.split("_")[1].isdigit() and (p / "meta.json").is_file()]
    return sorted(done, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, unverified (see `latest_intact`)."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], train_state: dict[str, Any],
                    meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoints/step_N; keep the `keep` newest and drop any of a later step (left by a
    history this run has abandoned: a damaged checkpoint it resumed before)."""
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:07d}"
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(root, f".tmp_step_{step:07d}_")
        sums = {"model.safetensors": save_weights(model_state, tmp / "model.safetensors", run_dir=run_dir)}
        torch.save(train_state, tmp / "state.pt")
        fsync_file(tmp / "state.pt")
        sums["state.pt"] = file_sha256(tmp / "state.pt")
        atomic_write_json(tmp / "meta.json", {"step": step, **meta, "sha256": sums})
        if final.exists():  # an earlier attempt at this very step (e.g. resumed and re-saved)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, StorageError):
            raise StorageError(str(e).replace(str(tmp), str(final))) from None
        if _is_io_error(e):
            raise storage_error(e, final, run_dir) from None
        raise
    _prune(run_dir, step, keep)
    return final


def _prune(run_dir: Path, step: int, keep: int) -> None:
    done = list_checkpoints(run_dir)
    newer = [p for p in done if _step_of(p) > step]
    older = [p for p in done if _step_of(p) <= step]
    for old in newer + older[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_dir(run_dir).glob(".tmp_step_*"):  # left by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / SHARDED).is_dir()


def save_sharded_checkpoint(run_dir: Path, step: int, state: dict, train_state: dict[str, Any],
                            meta: dict[str, Any], keep: int, rt) -> Path:
    """Write checkpoints/step_N as a sharded checkpoint. Every process calls it: each writes its
    shards of `state` (see parallelize.sharded_state) and their checksums; rank 0 adds state.pt and
    meta.json and renames the folder into place. `rt`: the run's Runtime."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from lmforge.trainer.runtime import on_main

    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:07d}"

    def fresh() -> str:
        try:
            root.mkdir(parents=True, exist_ok=True)
            return str(temp_dir(root, f".tmp_step_{step:07d}_"))
        except OSError as e:
            raise storage_error(e, final, run_dir) from None

    tmp = Path(on_main(fresh, rt))
    try:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp / SHARDED)), no_dist=not rt.distributed)
        mine = {f"{SHARDED}/{p.name}": file_sha256(p) for p in sorted((tmp / SHARDED).glob(f"__{rt.rank}_*"))}
        every = [mine]
        if rt.distributed:
            every = [None] * rt.world_size
            dist.all_gather_object(every, mine)
        sums = {k: v for d in every for k, v in d.items()}
        return Path(on_main(lambda: str(_finish_sharded(run_dir, tmp, final, step, sums, train_state, meta, keep)),
                            rt))
    except BaseException as e:
        if rt.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, LmforgeError):
            raise
        if _is_io_error(e) or "CheckpointException" in type(e).__name__:
            raise storage_error(e, final, run_dir) from None
        raise


def _finish_sharded(run_dir: Path, tmp: Path, final: Path, step: int, sums: dict[str, str],
                    train_state: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
    """Rank 0's part of a sharded save: the training state, the checksums, the rename, the pruning."""
    try:
        torch.save(train_state, tmp / "state.pt")
        fsync_file(tmp / "state.pt")
        sums = {**sums, "state.pt": file_sha256(tmp / "state.pt"),
                f"{SHARDED}/.metadata": file_sha256(tmp / SHARDED / ".metadata")}
        atomic_write_json(tmp / "meta.json", {"step": step, **meta, "format": "dcp", "sha256": sums})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as e:
        raise storage_error(e, final, run_dir) from None
    _prune(run_dir, step, keep)
    return final


def load_sharded(ckpt: Path, state: dict) -> None:
    """Load a sharded checkpoint into `state` (parallelize.sharded_state), resharded to this run's
    layout. Every process of a run calls it."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dcp.load(state, storage_reader=dcp.FileSystemReader(str(Path(ckpt) / SHARDED)),
             no_dist=not (dist.is_available() and dist.is_initialized()))


def read_sharded_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded checkpoint, consolidated in this process (on the CPU) and keyed
    as the unsharded model's."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from lmforge.trainer.parallelize import fuse_state

    reader = dcp.FileSystemReader(str(Path(ckpt) / SHARDED))
    try:
        entries = reader.read_metadata().state_dict_metadata
        weights = {k.removeprefix("model."): torch.empty(v.size, dtype=v.properties.dtype)
                   for k, v in entries.items() if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
        dcp.load({"model": weights}, storage_reader=reader, no_dist=True)
    except Exception as e:  # noqa: BLE001 - DCP wraps a bad file in several error types
        raise Damaged(f"unreadable: {(str(e).splitlines() or [type(e).__name__])[0][:120]}") from None
    return fuse_state(weights)


# --- reading and verifying -------------------------------------------------------------------------


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "meta.json").read_text(encoding="utf-8"))


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint holds what was written, else why not. Checkpoints of an older lmforge
    (no checksums) pass."""
    try:
        meta = read_meta(ckpt)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"meta.json is unreadable ({type(e).__name__})"
    sums = meta.get("sha256") if isinstance(meta, dict) else None
    if not isinstance(sums, dict):
        return None
    for name, want in sums.items():
        p = Path(ckpt) / name
        if not p.is_file():
            return f"{name} is missing"
        try:
            if file_sha256(p) != want:
                return f"{name} does not match its checksum"
        except OSError as e:
            return f"{name} is unreadable ({e.strerror})"
    return None


def load_verified(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked against the digest in its header; Damaged if they differ."""
    path = Path(path)
    if not path.is_file():
        raise Damaged("it is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        raise Damaged(f"unreadable: {(str(e).splitlines() or [type(e).__name__])[0][:120]}") from None
    want = header.get(DIGEST_KEY)
    if want is not None and tensors_sha256(tensors) != want:
        raise Damaged("its tensors do not match their checksum")
    return tensors


def apply_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Tied weights (and a quantized model's shared int8 tables) are saved once; anything else
    # missing is a real mismatch.
    tied = {n for n, p in model.named_parameters(remove_duplicate=False)} - set(dict(model.named_parameters()))
    tied |= {n for n, b in model.named_buffers(remove_duplicate=False)} - set(dict(model.named_buffers()))
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise TrainingError(
            f"weights in {path} do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}); "
            "was the run's config.yaml changed after training?"
        )


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        tensors = load_verified(path)
    except Damaged as e:
        raise DataError(f"{path} is damaged ({e}); retrain, or resume the run from an intact checkpoint") from None
    apply_weights(model, tensors, path)


def _owner_check(ckpt: Path, run_id: str | None) -> None:
    if run_id is None:
        return
    owner = read_meta(ckpt).get("run_id")
    if owner is not None and owner != run_id:
        raise TrainingError(
            f"{ckpt} was written by another run ({owner}), not by this run ({run_id}); it was copied in from "
            f"another run folder. Move it out of {ckpt.parent} to resume from this run's own checkpoints.")


def latest_intact(run_dir: Path, run_id: str | None = None,
                  warn: Callable[[str], None] = _warn) -> Path | None:
    """The newest checkpoint that verifies, warning about each damaged newer one. With `run_id`, a
    checkpoint written by another run is refused (TrainingError); one without an id (an older
    lmforge) is accepted."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        why = verify(ckpt)
        if why is not None:
            warn(f"checkpoint {ckpt} is damaged ({why}); trying the one before it")
            continue
        _owner_check(ckpt, run_id)
        return ckpt
    return None


def load_train_state(ckpt: Path) -> dict[str, Any]:
    # weights_only: a run folder may come from anywhere; never execute pickled code from it.
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)


def restore_latest(run_dir: Path, model: torch.nn.Module, run_id: str | None = None,
                   warn: Callable[[str], None] = _warn,
                   load: Callable[[Path], None] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest intact checkpoint's weights into `model`; (its path, its training state), or None.

    `load(checkpoint)`, when given, loads the checkpoint instead (the training loop's, which also
    restores the optimizer and reads sharded checkpoints)."""
    skip: set[Path] = set()
    while True:
        ckpt = None
        for c in reversed(list_checkpoints(run_dir)):
            if c in skip:
                continue
            why = verify(c)
            if why is None:
                ckpt = c
                break
            warn(f"checkpoint {c} is damaged ({why}); trying the one before it")
            skip.add(c)
        if ckpt is None:
            return None
        _owner_check(ckpt, run_id)
        try:  # checksums catch damage; this catches it in a checkpoint of an older lmforge (none stored)
            state = load_train_state(ckpt)
            if load is not None:
                load(ckpt)
                return ckpt, state
            tensors = load_verified(ckpt / "model.safetensors")
        except (Damaged, RuntimeError, OSError, EOFError) as e:
            if isinstance(e, LmforgeError):
                raise
            warn(f"checkpoint {ckpt} is damaged ({(str(e).splitlines() or [''])[0][:120]}); trying the one before it")
            skip.add(ckpt)
            continue
        apply_weights(model, tensors, ckpt / "model.safetensors")
        return ckpt, state


def check_weights_file(path: Path) -> None:
    """Damaged unless a weights file matches the digest in its header; reads one tensor at a time,
    so a model larger than memory can be checked before it is streamed elsewhere (export)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            want = (f.metadata() or {}).get(DIGEST_KEY)
            if want is not None and _digest((k, f.get_tensor(k)) for k in sorted(f.keys())) != want:
                raise Damaged("its tensors do not match their checksum")
    except Damaged:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        raise Damaged(f"unreadable: {(str(e).splitlines() or [type(e).__name__])[0][:120]}") from None


def run_weights_path(run_dir: Path, warn: Callable[[str], None] = _warn) -> Path:
    """The file run_weights would load, checked tensor by tensor instead of loaded whole; for a sharded
    checkpoint, its folder of shards (checked against their checksums; `read_sharded_weights`
    consolidates them)."""
    return run_weights(run_dir, warn, load=False)[0]


def run_weights(run_dir: Path, warn: Callable[[str], None] = _warn,
                load: bool = True) -> tuple[Path, dict[str, torch.Tensor]]:
    """The weights a trained run folder is used with, verified: its best-validation weights
    (model.safetensors), or, when they are missing or damaged, the newest intact checkpoint's.
    `load=False`: only check them ({} instead of the tensors)."""
    def checked(path: Path) -> dict[str, torch.Tensor]:
        if load:
            return load_verified(path)
        if not path.is_file():
            raise Damaged("it is missing")
        check_weights_file(path)
        return {}

    run_dir = Path(run_dir)
    best = run_dir / "model.safetensors"
    if best.is_file():
        try:
            return best, checked(best)
        except Damaged as e:
            warn(f"{best} is damaged ({e}); using the newest intact checkpoint instead (the last weights "
                 "saved, not the best-validation ones)")
    ckpt = latest_intact(run_dir, warn=warn)
    if ckpt is None:
        if list_checkpoints(run_dir) or best.is_file():
            raise DataError(f"{run_dir} has no intact weights: model.safetensors and every checkpoint are damaged")
        raise DataError(f"{run_dir} has no trained weights yet (no model.safetensors, no checkpoint)")
    path = ckpt / SHARDED if is_sharded(ckpt) else ckpt / "model.safetensors"
    try:
        if is_sharded(ckpt):  # latest_intact has checked every shard against its checksum
            return path, read_sharded_weights(ckpt) if load else {}
        return path, checked(path)
    except Damaged as e:
        raise DataError(f"{path} is damaged ({e})") from None
