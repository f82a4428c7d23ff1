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

``meta.json`` also records the size and sha256 of the weights, ``config.yaml`` and ``state.pt``.
:func:`find_checkpoint`, which every loader here goes through, checks them, the safetensors headers
and the YAML before anything loads: a damaged or edited checkpoint (truncated, overwritten, bit rot,
a config edited by hand) is refused by name, and the message names the intact checkpoint before it
and how to resume from it. (Files replaced on purpose pass again once the ``files`` entry is removed
from meta.json; checkpoints written before the entry existed are checked by structure only.) A full
disk while saving removes the partial new checkpoint, leaves the previous one untouched and stops
with :class:`DiskFullError`, one line saying so.

Everything in a checkpoint is data, never code: whoever wrote the folder wrote meta.json too, so the
digests guard against damage, not against a hostile folder. ``state.pt`` is read with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts, tuples; nothing that
runs code); a file that needs more (an old or foreign pickle) is refused in one line, never
unpickled. ``latest``, a run folder's ``step_*`` folders and every name in meta.json must resolve
inside the run (or checkpoint) folder, or the checkpoint is refused by name. The files a save writes
are recorded in the run folder's manifest (:mod:`lrpo.manifest`) with the digests computed for
meta.json, so ``--overwrite`` deletes them and nothing else.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from . import __version__, manifest
from .faults import fault_point
from .torch_floor import UnsafeTorchError, require_safe_torch_load

STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    pass


class CorruptCheckpointError(CheckpointError):
    """A checkpoint folder whose files are not what was written (``checkpoint``: that folder)."""

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


class UnsafeStateError(CheckpointError):
    """A ``state.pt`` that only full unpickling (which may run code) could read: refused, never loaded."""


class DiskFullError(CheckpointError):
    """The disk filled up while a checkpoint was written; the previous checkpoint is intact."""


# a full disk, or a full quota (which the user frees the same way)
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_CHUNK = 1 << 24  # bytes per write call
# what meta.json records sizes and digests of (config.yaml too: an edited config must not pass as the run's)
_DIGESTED = ("model.safetensors", "ema.safetensors", "config.yaml", "state.pt")


def _read_umask() -> int:
    mask = os.umask(0o22)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # mkdtemp makes 0700 folders; a checkpoint should be as readable as the user's other files


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


def _write_file(path: Path, data: bytes, label: str | None = None) -> None:
    """Write ``data`` to a new file ``path`` and fsync it. Every byte of a checkpoint goes through
    here, so a full disk is an ``OSError`` (ENOSPC) that save_checkpoint can report."""
    view = memoryview(data)
    half = len(view) // 2
    with open(path, "wb") as f:
        _write_all(f, view[:half])
        f.flush()
        fault_point("checkpoint", f"{label or path.name}: half written")  # a torn temporary file
        _write_all(f, view[half:])
        f.flush()
        os.fsync(f.fileno())


def _write_all(f, view: memoryview) -> None:
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def save_file(tensors: dict[str, torch.Tensor], filename: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, written by :func:`_write_file` (safetensors' own writer is native code)."""
    _write_file(Path(filename), safetensors.torch.save(tensors, metadata))  # (bytes in memory, as for state.pt)


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` (a run folder's ``latest``) atomically and record it in the folder's manifest."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    data = text.encode()
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        _write_file(Path(tmp), data, label=path.name)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    manifest.record_digests(path.parent, {path.name: (len(data), hashlib.sha256(data).hexdigest())})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


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
    Raises :class:`DiskFullError` when the disk fills up (the partial new checkpoint is removed).
    """
    run_dir = Path(run_dir)
    final = run_dir / (name or f"step_{step:06d}")
    previous = _newest_other(run_dir, final)
    tmp: Path | None = None
    writing = final.name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{final.name}.tmp-"))
        os.chmod(tmp, 0o777 & ~_UMASK)
        writing = "model.safetensors"
        save_file(_state_tensors(model), str(tmp / writing))
        if ema is not None:
            writing = "ema.safetensors"
            save_file(_state_tensors(ema), str(tmp / writing))
        writing = "config.yaml"
        _write_file(tmp / writing, yaml.safe_dump(config, sort_keys=False).encode())
        buf = io.BytesIO()
        torch.save(state, buf)
        writing = "state.pt"
        _write_file(tmp / writing, buf.getvalue())
        # the sizes and digests of what is on disk now: find_checkpoint compares them before loading
        files = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(tmp.iterdir()) if f.name in _DIGESTED}
        meta = {"kind": kind, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "lrpo": __version__, "files": files}
        writing = "meta.json"
        meta_bytes = json.dumps(meta, indent=1).encode()
        _write_file(tmp / writing, meta_bytes)
        written = {**{n: (f["bytes"], f["sha256"]) for n, f in files.items()},
                   "meta.json": (len(meta_bytes), hashlib.sha256(meta_bytes).hexdigest())}
        if final.exists():  # re-saving the same step: move the old one aside first
            old = _move_aside(final, "old")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        tmp = None
        _fsync_dir(run_dir)
        fault_point("checkpoint", f"{final.name}: renamed into place")
        # the manifest first: a crash between the rename and this line leaves a checkpoint that
        # --overwrite names as foreign (the safe side), never a recorded file lrpo did not write
        manifest.record_digests(run_dir, {f"{final.name}/{n}": v for n, v in written.items()})
        writing = "latest"
        _atomic_write_text(run_dir / "latest", final.name + "\n")
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            raise DiskFullError(_disk_full_message(run_dir, final, writing, previous)) from e
        raise
    _VERIFIED[str(final)] = _signature(final)  # just written and hashed: no need to read it back
    fault_point("checkpoint", f"{final.name}: latest replaced")
    _remove_leftovers(run_dir, final)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                # rename out of the step_* namespace first: a crash mid-delete must not leave a
                # half-deleted folder that list_checkpoints would offer as complete
                shutil.rmtree(_move_aside(old, "del"), ignore_errors=True)
    return final


def _remove_leftovers(run_dir: Path, final: Path) -> None:
    """Remove what killed writers left behind (each up to a checkpoint's size; repeated crashes
    would fill the disk): unfinished writes and deletions, the replaced copy of ``final`` and stray
    ``latest`` files. A replaced copy of another checkpoint may be its only copy, so it stays."""
    for p in run_dir.iterdir():
        m = manifest.temp_match(p)  # only the exact names lrpo gives them: a user's ".latest.backup/" stays
        if m is None or p.name.startswith(".log.jsonl.") or p.name.startswith(manifest.MANIFEST_NAME):
            continue  # a resume's log or the manifest being rewritten right now may be another writer's
        if m.groupdict().get("tag") == "old" and m["name"] != final.name:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _newest_other(run_dir: Path, final: Path) -> Path | None:
    """The checkpoint a resume would use if ``final`` were not written (for messages)."""
    try:
        named = _latest_target(run_dir)
    except CheckpointError:
        named = None
    if named is not None and named != final and (named / "model.safetensors").is_file():
        return named
    others = [p for p in list_checkpoints(run_dir) if p != final]
    return others[-1] if others else None


def _disk_full(e: BaseException) -> bool:
    if not isinstance(e, OSError):
        return False
    # OSError(errno.ENOSPC) with no message keeps the number in args, not in errno
    code = e.errno if e.errno is not None else (e.args[0] if e.args and isinstance(e.args[0], int) else None)
    return code in _DISK_FULL


def _disk_full_message(run_dir: Path, final: Path, writing: str, previous: Path | None) -> str:
    if writing == "latest":  # the new folder is complete; only the pointer to it is not
        return (f"{final}: the disk is full (no space left while replacing {run_dir / 'latest'}); the checkpoint is complete, "
                f"latest still names {previous.name if previous else 'nothing'} and nothing of it was lost. "
                f"Free space in {run_dir} and continue with --resume")
    kept = (f"nothing of the previous checkpoint {previous} was lost" if previous is not None
            else "there was no previous checkpoint to lose")
    return (f"{final}: the disk is full (no space left while writing {writing}); the partial checkpoint was removed and "
            f"{kept}. Free space in {run_dir} and continue with --resume")


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


def find_checkpoint(path: str | os.PathLike, verify: bool = True) -> Path:
    """Accept a checkpoint folder or a run folder (then its ``latest``, else newest ``step_*``).

    With ``verify`` the folder's files are checked first (:func:`verify_checkpoint`): a damaged one
    raises :class:`CorruptCheckpointError` naming it and the intact checkpoint before it.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        found = path
    elif not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    else:
        candidate = _latest_target(path)
        if candidate is not None and (candidate / "model.safetensors").is_file():
            found = candidate
        else:
            steps = list_checkpoints(path)
            if not steps:
                raise CheckpointError(f"{path}: contains no checkpoint (expected model.safetensors or step_* folders)")
            found = steps[-1]
        _check_inside(found, path, f"{path}'s checkpoint {found.name}")
    if verify:
        verify_checkpoint(found)
    return found


def _latest_target(run_dir: Path) -> Path | None:
    """The folder ``run_dir/latest`` names, which must be a plain folder name inside ``run_dir``."""
    latest = run_dir / "latest"
    if not latest.is_file():
        return None
    try:
        name = latest.read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise CheckpointError(f"{latest}: unreadable (expected the name of a checkpoint folder of {run_dir})") from None
    if manifest.safe_relative(name) != name or "/" in name:
        raise CheckpointError(f"{latest} names {manifest.ascii_name(name)!r}, which is not a checkpoint folder inside "
                              f"{run_dir}; refused (a run's latest names one of its own step_* or best folders)")
    candidate = run_dir / name
    _check_inside(candidate, run_dir, f"{latest} names {name!r}, which")
    return candidate


def _check_inside(target: Path, folder: Path, what: str) -> None:
    """Refuse ``target`` unless it resolves (links followed) to a place inside ``folder``."""
    inside = folder.resolve()
    resolved = target.resolve()
    if resolved != inside and inside not in resolved.parents:
        raise CheckpointError(f"{what} resolves to {resolved}, outside {folder}; refused (a checkpoint's files "
                              f"must lie inside its folder)")


# folder -> signature (name, size, mtime) of its files when they were last found intact
_VERIFIED: dict[str, tuple] = {}


def _signature(ckpt: Path) -> tuple:
    stats = [(f.name, f.stat()) for f in ckpt.iterdir() if f.is_file()]
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))


def checkpoint_problem(ckpt: str | os.PathLike) -> str | None:
    """What is wrong with checkpoint folder ``ckpt``, in a few words; None when nothing is."""
    ckpt = Path(ckpt)
    meta: Any = {}
    if (ckpt / "meta.json").is_file():
        try:
            meta = json.loads((ckpt / "meta.json").read_text())
        except (ValueError, UnicodeDecodeError):
            return "meta.json is not valid JSON"
        if not isinstance(meta, dict):
            return "meta.json is not a JSON object"
    for f in sorted(ckpt.glob("*.safetensors")):
        problem = _safetensors_problem(f)
        if problem:
            return f"{f.name} {problem}"
    if (ckpt / "config.yaml").is_file():
        try:
            yaml.safe_load((ckpt / "config.yaml").read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            return "config.yaml is not valid YAML"
    outside = _file_outside(ckpt, meta.get("files"))
    if outside:
        return outside
    files = meta.get("files")
    if not isinstance(files, dict):
        return None  # written before sizes and digests were recorded: the structure is all we know
    for name, want in files.items():
        f = ckpt / name
        if not isinstance(want, dict) or not isinstance(want.get("bytes"), int):
            return f"meta.json's record of {name} is not readable"
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        edited = " (edited since the run wrote it?)" if name == "config.yaml" else ""
        if size != want["bytes"]:
            return f"{name} has {size} bytes, {want['bytes']} were written" + (edited or (" (truncated)" if size < want["bytes"] else ""))
        if _sha256(f) != want.get("sha256"):
            return f"{name} differs from what was written (sha256 mismatch){edited}"
    return None


def _file_outside(ckpt: Path, files: Any) -> str | None:
    """A name in meta.json's ``files``, or a file of the checkpoint, that leads outside its folder."""
    names = list(files) if isinstance(files, dict) else []
    for name in names:
        if manifest.safe_relative(name) != name or "/" in name:
            return f"meta.json names {manifest.ascii_name(str(name))!r}, which is not a file of the checkpoint folder"
    inside = ckpt.resolve()
    for name in (*names, *_DIGESTED, "meta.json"):
        f = ckpt / name
        if f.is_symlink() and f.resolve().parent != inside:
            return f"{name} is a link to {f.resolve()}, outside the checkpoint folder"
    return None


def _safetensors_problem(f: Path) -> str | None:
    """Header and size of a safetensors file (a cheap check that needs no recorded digest)."""
    size = f.stat().st_size
    try:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            if n > size - 8:
                return f"is truncated ({size} bytes, its header alone needs {n + 8})"
            header = json.loads(fh.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
        return "is not a safetensors file (unreadable header)"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"is truncated ({size} of {expected} bytes)"
    if size > expected:
        return f"has {size - expected} bytes after its last tensor"
    return None


def verify_checkpoint(ckpt: str | os.PathLike) -> None:
    """Raise :class:`CorruptCheckpointError` if ``ckpt``'s files are not what was written."""
    ckpt = Path(ckpt)
    key, sig = str(ckpt), _signature(ckpt)
    if _VERIFIED.get(key) == sig:
        return
    problem = checkpoint_problem(ckpt)
    if problem:
        raise CorruptCheckpointError(f"{ckpt} is damaged and was not loaded: {problem}. {_earlier_offer(ckpt)}", ckpt)
    _VERIFIED[key] = sig


def _earlier_offer(bad: Path) -> str:
    """Where to go on from, when checkpoint ``bad`` is damaged: the newest intact one before it."""
    run_dir = bad.parent
    m = STEP_DIR.match(bad.name)
    before = [p for p in list_checkpoints(run_dir) if p != bad and (m is None or int(p.name[5:]) < int(m.group(1)))]
    for p in reversed(before):
        if checkpoint_problem(p) is None:
            return f"The checkpoint before it, {p}, is intact: continue from it with --resume {p}"
    return f"{run_dir} holds no intact checkpoint before it: start the run over with --overwrite"


def load_config_dict(ckpt: str | os.PathLike) -> dict:
    ckpt = find_checkpoint(ckpt)
    try:
        return yaml.safe_load((ckpt / "config.yaml").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}: config.yaml is missing; the checkpoint cannot rebuild its model") from None


def load_weights(module: nn.Module, ckpt: str | os.PathLike, ema: bool = False,
                 layout: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None) -> None:
    """Load ``model.safetensors`` (or ``ema.safetensors``) strictly; mismatches are listed.

    A module with ``load_trainable_state_dict`` (the latent policy) gets only its trainable part.
    ``layout`` turns the file's whole tensors into the module's own (shards, under FSDP).
    """
    ckpt = find_checkpoint(ckpt)
    f = ckpt / ("ema.safetensors" if ema else "model.safetensors")
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    try:
        sd = load_file(str(f))
    except Exception as e:  # a damage the structural check cannot see (no digests recorded)
        raise CorruptCheckpointError(f"{f} cannot be read ({e}). {_earlier_offer(ckpt)}", ckpt) from e
    if layout is not None:
        sd = layout(sd)
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
    """``state.pt`` as data: ``torch.load(weights_only=True)`` never runs code from the file.

    A state that only full unpickling could rebuild (an old or foreign file, or one carrying code)
    is refused with :class:`UnsafeStateError`, naming what it would have imported.
    """
    ckpt = find_checkpoint(ckpt)
    f = ckpt / "state.pt"
    try:
        require_safe_torch_load()
    except UnsafeTorchError as e:
        raise CheckpointError(f"{f}: not read: {e}") from None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt}/state.pt is missing: the checkpoint holds weights only and cannot be resumed") from None
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(f)
        if unsafe:
            raise UnsafeStateError(
                f"{f} holds Python objects that only full unpickling could rebuild ({listing(unsafe, 4)}); lrpo reads "
                f"training state as data and did not load it. Resume from a checkpoint this lrpo wrote, or start a "
                f"new run (its weights may still serve as init_checkpoint)") from None
        raise CorruptCheckpointError(f"{f} cannot be read ({_first_line(e)}). {_earlier_offer(ckpt)}", ckpt) from None
    except Exception as e:  # a damage the structural check cannot see (no digests recorded)
        raise CorruptCheckpointError(f"{f} cannot be read ({type(e).__name__}: {_first_line(e)}). {_earlier_offer(ckpt)}", ckpt) from e
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{ckpt}/state.pt holds a {type(state).__name__}, not a training state. {_earlier_offer(ckpt)}", ckpt)
    return state


def require_state_fields(state: dict[str, Any], ckpt: str | os.PathLike, fields: dict[str, type]) -> None:
    """Refuse a ``state.pt`` (plain data, but from a folder that may come from anyone) whose entries a
    resume reads are not of the kind this lrpo writes: counters non-negative ints, RNG states uint8
    tensors, the optimiser a dict. One line naming the entry, what it holds and what was expected."""
    f = Path(ckpt) / "state.pt"
    for key, kind in fields.items():
        value = state.get(key)
        ok = isinstance(value, kind) and not (kind is int and (isinstance(value, bool) or value < 0))
        if ok and kind is Tensor:
            ok = value.dtype == torch.uint8 and value.dim() == 1
        if not ok:
            held = "nothing" if key not in state else f"a {type(value).__name__}" + (f" ({value!r:.40})" if isinstance(value, (int, float, str)) else "")
            want = {int: "a non-negative int", Tensor: "an RNG state (1-D uint8 tensor)", dict: "a dict"}.get(kind, kind.__name__)
            raise CorruptCheckpointError(f"{f}: its {key!r} entry holds {held}, expected {want}; the state was not resumed. "
                                         f"{_earlier_offer(Path(ckpt))}", Path(ckpt))


def _real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# entries a resume may find absent (older checkpoints) or None, else of this shape: (test, expected)
_OPTIONAL_STATE = {
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of log records (dicts)"),
    "best": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and isinstance(v[0], int) and not isinstance(v[0], bool)
             and v[0] >= 0 and _real(v[1]), "None or (epoch, reward)"),
    "guard_baseline": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _real(x) for k, x in v.items()),
                       "None or a dict of metric name -> number"),
}


def require_optional_state(state: dict[str, Any], ckpt: str | os.PathLike, keys: tuple[str, ...]) -> None:
    """Like :func:`require_state_fields` for the entries ``keys`` a resume reads when present
    (``history``, ``best``, ``guard_baseline``): absent or None passes, anything else must have the
    shape this lrpo writes, or the state is refused in one line."""
    for key in keys:
        value = state.get(key)
        test, want = _OPTIONAL_STATE[key]
        if value is not None and not test(value):
            held = f"a {type(value).__name__}" + (f" ({value!r:.40})" if isinstance(value, (int, float, str)) else "")
            raise CorruptCheckpointError(f"{Path(ckpt) / 'state.pt'}: its {key!r} entry holds {held}, expected {want}; the "
                                         f"state was not resumed. {_earlier_offer(Path(ckpt))}", Path(ckpt))


def load_meta(ckpt: str | os.PathLike) -> dict:
    return json.loads((find_checkpoint(ckpt) / "meta.json").read_text())


def _unsafe_globals(f: Path) -> list[str]:
    """The importable names a zip-format torch file's pickle refers to beyond what
    ``weights_only=True`` allows (read from the pickle's opcodes, nothing is executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(f)))
    except Exception:  # not a zip file, or a damaged one
        return []


def _first_line(e: BaseException) -> str:
    """An exception's message up to its first line break (torch's explain several lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
