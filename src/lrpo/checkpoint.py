"""Checkpoints that rebuild alone and resume exactly, written atomically.

A checkpoint is a folder::

    step_000500/
        model.safetensors   policy weights (what ``lrpo restore`` loads)
        ema.safetensors     EMA weights (optional)
        config.yaml         the resolved run config; its ``policy`` section rebuilds the model
        state.pt            everything else a resume needs: optimiser, LR schedule, step,
                            generator and RNG states, run-specific extras
        meta.json           kind of run, step, time, lrpo version

It is written under a temporary name in the same folder and renamed into place, so a crash
mid-write leaves either the previous checkpoint or a complete new one, never a torn one. The run
folder's ``latest`` file (also replaced atomically) names the newest complete checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__

STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    pass


def _state_tensors(module: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views: save plain copies
    sd = module if isinstance(module, dict) else module.state_dict()
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _move_aside(path: Path, tag: str) -> Path:
    """Rename folder ``path`` to a fresh hidden name beside it (atomic) and return the new name."""
    # a unique name: a leftover of a killed process (whose pid may repeat) must not block the rename
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{tag}-"))
    os.replace(path, aside)  # POSIX rename may replace an empty folder
    return aside


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module | dict[str, torch.Tensor],
    config: dict,
    state: dict[str, Any],
    ema: nn.Module | dict[str, torch.Tensor] | None = None,
    kind: str = "pretrain",
    keep_last: int = 0,
    name: str | None = None,
) -> Path:
    """Write ``run_dir/step_{step:06d}`` (or ``run_dir/name``) atomically and update ``latest``.

    ``keep_last`` > 0 deletes older ``step_*`` folders beyond that many (named ones are kept).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / (name or f"step_{step:06d}")
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{final.name}.tmp-"))
    try:
        save_file(_state_tensors(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state_tensors(ema), str(tmp / "ema.safetensors"))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        buf = io.BytesIO()
        torch.save(state, buf)
        (tmp / "state.pt").write_bytes(buf.getvalue())
        meta = {"kind": kind, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lrpo": __version__}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving the same step: move the old one aside first
            old = _move_aside(final, "old")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(run_dir / "latest", final.name + "\n")
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                # rename out of the step_* namespace first: a crash mid-delete must not leave a
                # half-deleted folder that list_checkpoints would offer as complete
                shutil.rmtree(_move_aside(old, "del"), ignore_errors=True)
    return final


def set_latest(run_dir: str | os.PathLike, name: str) -> None:
    """Point the run's ``latest`` at checkpoint folder ``name`` (e.g. a rollback to ``best``)."""
    run_dir = Path(run_dir)
    if not (run_dir / name / "model.safetensors").is_file():
        raise CheckpointError(f"{run_dir / name}: not a checkpoint")
    _atomic_write_text(run_dir / "latest", name + "\n")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete ``step_*`` checkpoint folders of a run, oldest first."""
    run_dir = Path(run_dir)
    found = []
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        m = STEP_DIR.match(p.name)
        if m and (p / "model.safetensors").is_file() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """Accept a checkpoint folder or a run folder (then its ``latest``, else newest ``step_*``)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    latest = path / "latest"
    if latest.is_file():
        candidate = path / latest.read_text().strip()
        if (candidate / "model.safetensors").is_file():
            return candidate
    steps = list_checkpoints(path)
    if not steps:
        raise CheckpointError(f"{path}: contains no checkpoint (expected model.safetensors or step_* folders)")
    return steps[-1]


def load_config_dict(ckpt: str | os.PathLike) -> dict:
    ckpt = find_checkpoint(ckpt)
    try:
        return yaml.safe_load((ckpt / "config.yaml").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: config.yaml is missing; the checkpoint cannot rebuild its model") from None


def load_weights(module: nn.Module, ckpt: str | os.PathLike, ema: bool = False) -> None:
    """Load ``model.safetensors`` (or ``ema.safetensors``) strictly; mismatches are listed.

    A module with ``load_trainable_state_dict`` (the latent policy) gets only its trainable part.
    """
    ckpt = find_checkpoint(ckpt)
    f = ckpt / ("ema.safetensors" if ema else "model.safetensors")
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    sd = load_file(str(f))
    if hasattr(module, "load_trainable_state_dict"):
        module.load_trainable_state_dict(sd, source=str(f))
        return
    check_state_dict(module, sd, source=str(f))
    module.load_state_dict(sd, strict=True)


def listing(items: list[str], limit: int = 12) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    items = list(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def mismatch_parts(missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> list[str]:
    """Sentence parts describing a state-dict mismatch (shared by every strict loader)."""
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    if wrong_shape:
        parts.append(f"shape mismatches ({len(wrong_shape)}): {listing(wrong_shape)}")
    return parts


def compare_state_dicts(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape descriptions) of ``given`` against ``own``."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [f"{k}: file {tuple(given[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if k in given and given[k].shape != v.shape]
    return missing, unexpected, shapes


def check_state_dict(module: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError listing missing/unexpected keys and shape mismatches."""
    parts = mismatch_parts(*compare_state_dicts(module.state_dict(), sd))
    if parts:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))


def load_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    ckpt = find_checkpoint(ckpt)
    return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)


def load_meta(ckpt: str | os.PathLike) -> dict:
    return json.loads((find_checkpoint(ckpt) / "meta.json").read_text())
