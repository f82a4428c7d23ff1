"""The life of a run folder: one run per folder, resumes that are the same run, interrupts that keep the work.

* :func:`claim_run_dir` — a fresh run refuses a folder holding another run's checkpoints, unless
  told to ``overwrite`` (which clears that run first) or to resume it.
* :func:`config_changes` — on resume, the settings that change a run's trajectory must equal the
  checkpoint's; budgets, logging, device and the number of epochs/steps to go may change.
* :class:`GracefulInterrupt` — the first SIGINT/SIGTERM asks the loop to stop at the next safe
  point (it writes a checkpoint of the last completed epoch/step, then raises :class:`Interrupted`);
  a second one stops at once (the previous checkpoint, written atomically, stays intact).
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping


__all__ = [
    "GracefulInterrupt", "Interrupted", "RunFolderError", "check_resume", "claim_run_dir", "config_changes", "describe_changes",
    "RUN_ARTIFACTS",
]

# the hidden names lrpo.checkpoint gives a checkpoint while writing, replacing or deleting it
_CHECKPOINT_TEMP = re.compile(r"^\.(step_\d+|best)\.(tmp|old|del)-")
# what a run writes into its folder (cleared by --overwrite)
RUN_ARTIFACTS = ("latest", "best", "log.jsonl", "config.yaml", "samples", "tb")


class RunFolderError(ValueError):
    """The output folder belongs to another run, or a resume would change the run."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; ``checkpoint`` is the last one written (or None)."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


def _latest_name(run_dir: Path) -> str | None:
    latest = run_dir / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def claim_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool = False) -> None:
    """Make sure a fresh run may write into ``run_dir``.

    A folder with checkpoints (``step_*``, ``best``, ``latest``) holds another run: starting anew
    there would mix two runs' checkpoints and logs, so it is refused unless ``overwrite`` (the old
    run's files are removed first) or ``resume`` (continue that run).
    """
    from .checkpoint import list_checkpoints  # torch: imported only when a run starts

    run_dir = Path(run_dir)
    if resume or not run_dir.is_dir():
        return
    steps = list_checkpoints(run_dir)
    latest = _latest_name(run_dir)
    if not steps and latest is None and not (run_dir / "best").exists():
        if (run_dir / "log.jsonl").exists() and overwrite:
            (run_dir / "log.jsonl").unlink()
        elif (run_dir / "log.jsonl").exists():
            raise RunFolderError(
                f"{run_dir} holds a log.jsonl of another run but no checkpoint; use --overwrite to start over there, "
                f"or choose another out_dir"
            )
        return
    if not overwrite:
        what = f"latest checkpoint {latest}" if latest else f"{len(steps)} checkpoint(s), e.g. {steps[-1].name}"
        raise RunFolderError(
            f"{run_dir} already holds a run ({what}). Continue it with --resume, start over with --overwrite "
            f"(deletes its checkpoints and log), or choose another out_dir."
        )
    for p in steps:
        shutil.rmtree(p)
    for name in RUN_ARTIFACTS:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    for p in run_dir.iterdir():  # temporary folders a killed checkpoint writer left, and nothing else
        if p.is_dir() and _CHECKPOINT_TEMP.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


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
