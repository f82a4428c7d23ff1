"""The life of a run folder: one run per folder, resumes that are the same run, interrupts that keep the work.

* :func:`claim_run_dir` — a fresh run refuses a folder holding another run's checkpoints, unless
  told to ``overwrite`` or to resume it; ``overwrite`` is refused, before anything is deleted, when
  the folder holds files lrpo did not write (its manifest, :mod:`lrpo.manifest`, says which are
  lrpo's). :func:`clear_run_dir` then deletes lrpo's files and nothing else.
* :func:`config_changes` — on resume, the settings that change a run's trajectory must equal the
  checkpoint's; budgets, logging, device and the number of epochs/steps to go may change.
* :class:`GracefulInterrupt` — the first SIGINT/SIGTERM asks the loop to stop at the next safe
  point (it writes a checkpoint of the last completed epoch/step, then raises :class:`Interrupted`);
  a second one stops at once (the previous checkpoint, written atomically, stays intact).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import manifest

__all__ = [
    "GracefulInterrupt", "Interrupted", "RunFolderError", "check_resume", "claim_run_dir", "clear_run_dir", "config_changes",
    "refuse_links",
    "describe_changes", "record_written", "RUN_ARTIFACTS",
]

# what a run writes at the top of its folder besides step_* (a fresh run must not write over a user's file there)
RUN_ARTIFACTS = ("latest", "best", "log.jsonl", "config.yaml", "samples", "tb")


class RunFolderError(ValueError):
    """The output folder belongs to another run, or a resume would change the run. ``files``: the
    files lrpo did not write that made it refuse (relative to the folder), when that was the reason."""

    def __init__(self, message: str, files: Iterable[str] = ()):
        super().__init__(message)
        self.files = list(files)


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; ``checkpoint`` is the last one written (or None)."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


def _latest_name(run_dir: Path) -> str | None:
    latest = run_dir / "latest"
    if not latest.is_file():
        return None
    text = latest.read_bytes()[:200].decode("utf-8", errors="replace").strip()  # for messages: one short line
    return manifest.ascii_name(text)


def claim_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool = False) -> bool:
    """Make sure a fresh run may write into ``run_dir``; True when :func:`clear_run_dir` must clear it first.

    Nothing is deleted here: the caller clears the folder once its own inputs are known to be good.
    A folder holding a run (files lrpo recorded, checkpoints, a log) is refused unless ``overwrite``
    (the old run's files are removed later) or ``resume`` (continue that run). ``overwrite`` is
    refused too when the folder holds anything lrpo did not write, and a fresh run when a user's file
    sits where the run would write: both name those files (:attr:`RunFolderError.files`).
    """
    from .checkpoint import list_checkpoints  # start-up time: torch, imported only when a run starts

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    if resume:
        refuse_links(run_dir)
        return False
    temp = [p.name for p in run_dir.iterdir() if manifest.temp_match(p)]
    foreign = manifest.foreign_files(run_dir, ignore=temp, whole_folders=False)
    recorded = manifest.read_manifest(run_dir) or {}
    steps = list_checkpoints(run_dir)
    names = [p.name for p in run_dir.iterdir()]
    holds_run = bool(steps) or any(n in RUN_ARTIFACTS for n in names) or any(
        os.path.lexists(run_dir / rel) for rel in recorded)
    if overwrite and foreign:
        raise RunFolderError(
            f"{run_dir}: not cleared (--overwrite), nothing was deleted: it holds files lrpo did not write "
            f"({manifest.describe(foreign)}){_legacy_hint(recorded, steps)}. lrpo deletes only what it wrote: move "
            f"them elsewhere, or choose another out_dir", foreign)
    if not holds_run:
        return False
    if not overwrite:
        raise _held_error(run_dir, steps, foreign)
    return True


def _held_error(run_dir: Path, steps: list[Path], foreign: list[str]) -> RunFolderError:
    """Why a fresh run (no --overwrite) may not start in ``run_dir``, which holds a run or a user's
    files where a run writes (then ``files`` names them)."""
    latest = _latest_name(run_dir)
    if latest or steps:
        what = f"latest checkpoint {latest}" if latest else f"{len(steps)} checkpoint(s), e.g. {steps[-1].name}"
        start_over = ("delete it yourself if it is yours (it was written before lrpo kept a record of its files, so "
                      "--overwrite cannot tell it is lrpo's), move it" if manifest.read_manifest(run_dir) is None
                      else "start over with --overwrite (deletes its checkpoints and log)")
        return RunFolderError(f"{run_dir} already holds a run ({what}). Continue it with --resume, {start_over}, or "
                              f"choose another out_dir.")
    clash = [f for f in foreign if f.rstrip("/").split("/")[0] in RUN_ARTIFACTS]
    if clash:
        return RunFolderError(f"{run_dir} holds files where a run writes its own ({manifest.describe(clash)}) that lrpo "
                              f"did not write; a new run would write over them. Move them elsewhere or choose another "
                              f"out_dir", clash)
    mine = [n for n in RUN_ARTIFACTS if os.path.lexists(run_dir / n)]
    return RunFolderError(f"{run_dir} holds the {', '.join(mine) or 'files'} of another run but no checkpoint; use "
                          f"--overwrite to start over there, or choose another out_dir")


def _legacy_hint(recorded: dict, steps: list[Path]) -> str:
    if not recorded and steps:
        return (" (a run written before lrpo kept a record of its files: delete it yourself if it is yours, or move "
                "it elsewhere)")
    return ""


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete what lrpo wrote into ``run_dir`` (its manifest's files, unchanged) and lrpo's temporary
    leftovers; nothing else. Call it after :func:`claim_run_dir` returned True."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():  # what killed writers left under lrpo's hidden temporary names
        if manifest.temp_match(p):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    manifest.remove_written(run_dir)


def refuse_links(run_dir: Path) -> None:
    """Refuse to resume in ``run_dir`` when a name a run writes there is a symbolic link: writing
    the log, config, checkpoints or samples would go through it to a file outside the run."""
    linked = [n for n in RUN_ARTIFACTS if (run_dir / n).is_symlink()]
    if linked:
        one = len(linked) == 1
        raise RunFolderError(
            f"{run_dir}: not resumed, {', '.join(linked)} {'is a symbolic link' if one else 'are symbolic links'} (a run "
            f"folder holds its own files; lrpo does not write through links). Replace {'it' if one else 'them'} with the "
            f"run's own files, or resume into another out_dir", linked)


def record_written(run_dir: str | Path, *paths: str | Path, grows: bool = False) -> None:
    """Record files a run wrote into ``run_dir`` (``grows``: a log it keeps appending to, by name only)."""
    manifest.record(run_dir, paths, digest=not grows)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        # reward.terms holds user-named terms: compared whole, so an added or removed term shows up
        if isinstance(v, Mapping) and v and key != "reward.terms":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_norm(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _norm(x) for k, x in v.items()}
    return v


def config_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], free: Iterable[str], *, defaults: Mapping[str, Any] | None = None,
    paths: Iterable[str] = (),
) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between the checkpoint's config and the current one, except the
    ``free`` keys (and anything below a free section). Returns key -> (saved, current).

    A key the checkpoint lacks (written before the key existed) is unchanged while the current value
    is its default; ``paths`` are compared as resolved file paths (``faces`` == ``/abs/faces/``).
    """
    free, paths = tuple(free), tuple(paths)
    a, b = _flatten(saved), _flatten(current)
    d = _flatten(defaults) if defaults is not None else {}
    changes = {}
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in free):
            continue
        if key not in a and key in d and _norm(b.get(key)) == _norm(d[key]):
            continue
        va, vb = _norm(a.get(key, "<absent>")), _norm(b.get(key, "<absent>"))
        if key in paths and isinstance(va, str) and isinstance(vb, str) and va and vb:
            va, vb = _resolved(va), _resolved(vb)
        if va != vb:
            changes[key] = (_norm(a.get(key, "<absent>")), _norm(b.get(key, "<absent>")))
    return changes


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in changes.items())


def check_resume(ckpt: Path, changes: Mapping[str, tuple[Any, Any]], allow_changes: bool) -> dict[str, list[Any]] | None:
    """Refuse a resume that changes the run (unless allowed); returns the log record of allowed changes."""
    if changes and not allow_changes:
        raise RunFolderError(
            f"--resume from {ckpt} would change the run: {describe_changes(changes)}. Resume with the checkpoint's "
            f"settings, pass --allow-changes to continue with the new ones (recorded in the log), or start a new run "
            f"in another out_dir"
        )
    return {k: list(v) for k, v in changes.items()} or None


class GracefulInterrupt:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` once; the second signal raises
    KeyboardInterrupt at once. Handlers are installed only in the main thread and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, message: str = "stopping after the step in flight; press Ctrl-C again to stop at once") -> None:
        self.requested = False
        self.signal_name: str | None = None
        self.message = message
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: {self.message}", flush=True)

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()
