"""Checkpoints that survive kills: every file is written to a temporary name, fsynced and renamed.

Layout of a run folder's checkpoints:
    checkpoints/step_000500/model.safetensors   weights
    checkpoints/step_000500/state.pt            optimizer, RNG states, step, data position (tensors only)
    checkpoints/step_000500/meta.json           written last: a folder without it is incomplete
A checkpoint folder is assembled under a temporary name and renamed into place, so a kill at any
moment leaves the previous checkpoints intact; older ones are pruned only after the new one exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmforge.atomic import atomic_write_json, fsync_dir, fsync_file
from lmforge.errors import TrainingError


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors, atomically. Tied weights are stored once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[int, str] = {}
    tensors = {}
    for name, t in state_dict.items():
        key = t.data_ptr()
        if key in seen:  # tied parameter: safetensors refuses shared storage
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        fsync_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
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


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / "meta.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:07d}_", dir=root))
    try:
        save_weights(model_state, tmp / "model.safetensors")
        buf_path = tmp / "state.pt"
        torch.save(train_state, buf_path)
        fsync_file(buf_path)
        atomic_write_json(tmp / "meta.json", {"step": step, **meta})
        if final.exists():  # an earlier attempt at this very step (e.g. resumed and re-saved)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp_step_*"):  # left by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_train_state(ckpt: Path) -> dict[str, Any]:
    # weights_only: a run folder may come from anywhere; never execute pickled code from it.
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)


def read_meta(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "meta.json").read_text(encoding="utf-8"))
