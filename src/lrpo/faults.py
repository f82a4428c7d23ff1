"""Fault injection for ``bench/fault_sweep.py``: inert unless one of two environment variables is set.

``LRPO_FAULT_AT=PHASE:N``
    SIGKILL this process the N-th time (1-based) it reaches a fault point of PHASE: no handler,
    no ``finally``, no flush runs, as when the machine loses power or the OOM killer strikes.
``LRPO_FAULT_LOG=FILE``
    append ``PHASE N DETAIL`` to FILE at every fault point reached (a calibration run lists them, so
    a sweep can draw its N for each phase; DETAIL says where, e.g. ``step_000004: latest replaced``).

Fault points:

* ``checkpoint``: inside :func:`lrpo.checkpoint.save_checkpoint`, halfway through each file it
  writes, after the new folder is renamed into place and after ``latest`` is replaced;
* once ``lrpo.cli`` has called :func:`install` for its command, at the entry of
  ``train``: ``rollout`` (each rollout chunk), ``score`` (each scoring of an epoch's rollouts),
  ``update`` (each optimiser step, after its backward passes);
  ``pretrain``: ``data`` (each online degradation), ``update`` (after each optimiser step, before
  the EMA and the step count), ``validate``.

The trainer phases are seams the tests patch already (see ``_SEAMS``); wrapping them here keeps the
trainers free of fault hooks. Both variables are read here and nowhere else.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal

__all__ = ["PHASES", "fault_point", "install", "reset"]

# command -> phase -> (module, attribute path) of the callable whose entry is the fault point
_SEAMS: dict[str, dict[str, tuple[str, str]]] = {
    "train": {
        "rollout": ("lrpo.rl.trainer", "sample_trajectories"),
        "score": ("lrpo.rl.trainer", "LRPOTrainer.score"),
        "update": ("lrpo.rl.trainer", "LRPOTrainer.optimizer_step"),
    },
    "pretrain": {
        "data": ("lrpo.pretrain.trainer", "degrade"),
        "update": ("lrpo.ema", "EMA.update"),
        "validate": ("lrpo.pretrain.trainer", "Pretrainer.validate"),
    },
}
PHASES: dict[str, tuple[str, ...]] = {cmd: (*seams, "checkpoint") for cmd, seams in _SEAMS.items()}
_KNOWN = {p for phases in PHASES.values() for p in phases}

_counts: dict[str, int] = {}
_target: tuple[str, int] | None | bool = False  # False: the environment is not read yet


def _parse(value: str) -> tuple[str, int]:
    phase, _, n = value.partition(":")
    if phase not in _KNOWN or not n.isdigit() or int(n) < 1:
        raise ValueError(f"LRPO_FAULT_AT={value!r}: expected PHASE:N with N >= 1 and PHASE one of {', '.join(sorted(_KNOWN))}")
    return phase, int(n)


def _armed_target() -> tuple[str, int] | None:
    global _target
    if _target is False:
        value = os.environ.get("LRPO_FAULT_AT", "").strip()
        _target = _parse(value) if value else None
    return _target  # type: ignore[return-value]


def reset() -> None:
    """Forget the counts and re-read the environment at the next fault point (for tests)."""
    global _target
    _counts.clear()
    _target = False


def fault_point(phase: str, detail: str = "") -> None:
    """Count a visit to ``phase``; log it and/or SIGKILL this process as the environment asks."""
    target = _armed_target()
    log = os.environ.get("LRPO_FAULT_LOG")
    if target is None and not log:
        return
    n = _counts[phase] = _counts.get(phase, 0) + 1
    if log:
        with open(log, "a") as f:
            f.write(f"{phase} {n} {detail}".rstrip() + "\n")
    if target == (phase, n):
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(phase: str, fn):
    @functools.wraps(fn)
    def at_fault_point(*args, **kwargs):
        fault_point(phase)
        return fn(*args, **kwargs)

    at_fault_point.__lrpo_fault__ = phase
    return at_fault_point


def install(command: str) -> None:
    """Put fault points at the entry of ``command``'s trainer seams, if a variable asks for faults."""
    if _armed_target() is None and not os.environ.get("LRPO_FAULT_LOG"):
        return
    for phase, (module_name, attr) in _SEAMS.get(command, {}).items():
        owner = importlib.import_module(module_name)
        *parents, name = attr.split(".")
        for p in parents:
            owner = getattr(owner, p)
        fn = getattr(owner, name)  # an AttributeError here: a seam was renamed; update _SEAMS
        if not hasattr(fn, "__lrpo_fault__"):
            setattr(owner, name, _wrap(phase, fn))
