"""A compiled no-grad forward of a policy, for long sampling work (rollouts, validation, evaluation).

``compile: auto | off | on`` (training configs, ``lrpo evaluate``, ``lrpo restore``). Only the
sampling forward is compiled: it is most of an RL epoch and all of an evaluation, and its graph
compiles in well under a minute on a CPU. Training forwards (the RL update, pretraining) stay eager:
their graph carries the backward too and compiles for minutes on a CPU. The rule of ``auto``: compile
when the job will run at least :data:`AUTO_MIN_FORWARDS` batched forwards (compiling pays back after
several hundred, ``bench/cpu_speed.py``), and only where torch.compile can build kernels (a C++
compiler on the CPU). ``on`` compiles whatever the length.

The compiled graph is built for one batch size: smaller batches are padded (with copies of their last
row; every output row depends only on its own input row) and larger ones run in chunks, so the last,
smaller batch of an epoch never recompiles.
"""

from __future__ import annotations

import shutil
import threading
import time

import torch
from torch import Tensor, nn

from ..precision import autocast_context

COMPILE_SETTINGS = ("auto", "off", "on")
AUTO_MIN_FORWARDS = 2000  # batched forwards of one job before `auto` compiles (about 3x the measured payback)


def compile_decision(setting: str, forwards: int, device: torch.device | str) -> tuple[bool, str]:
    """(compile?, why) for a job of about ``forwards`` batched sampling forwards on ``device``."""
    if setting not in COMPILE_SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_SETTINGS)}, got {setting!r}")
    if setting == "off":
        return False, "compile: off"
    if setting == "on":
        return True, "compile: on"
    if torch.device(device).type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return False, "compile: auto -> off (no C++ compiler for torch.compile's CPU kernels)"
    if forwards < AUTO_MIN_FORWARDS:
        return False, f"compile: auto -> off (about {forwards} forwards, under {AUTO_MIN_FORWARDS}: compiling would not pay back)"
    return True, f"compile: auto -> on (about {forwards} forwards)"


class CompiledForward:
    """``policy(x_t, t, cond)`` through ``torch.compile``, at a fixed batch size ``batch_size``.

    Call it under ``torch.no_grad()`` (the graph is built for inference). The policy's weights are
    read at each call, so optimiser steps and EMA swaps are seen without recompiling.
    """

    def __init__(self, policy: nn.Module, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.policy = policy
        self.batch_size = batch_size
        self._compiled = torch.compile(policy, dynamic=False)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        n = x_t.shape[0]
        # one memory layout whatever the caller passes (a rollout's t is an expanded scalar, stride 0):
        # torch.compile guards on strides, and another layout would compile the graph again
        # (.contiguous() keeps stride 0 on a batch of one: a fresh tensor has stride 1 at every size)
        t = t.new_empty(n).copy_(t.expand(n))
        outs = [self._padded(x_t[s : s + self.batch_size], t[s : s + self.batch_size], cond[s : s + self.batch_size])
                for s in range(0, n, self.batch_size)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _padded(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        n = x_t.shape[0]
        if n == self.batch_size:
            return self._compiled(x_t, t, cond)
        pad = self.batch_size - n
        grow = lambda v: torch.cat([v, v[-1:].expand(pad, *v.shape[1:])])  # noqa: E731
        return self._compiled(grow(x_t), grow(t), grow(cond))[:n]


def batch1_example(policy, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, t, cond) of one face at the policy's resolution: what a compiled batch-1 forward is traced with."""
    lq = torch.full((1, 3, policy.resolution, policy.resolution), 0.5, device=device)
    with torch.no_grad():
        cond = policy.condition(lq)
    return torch.zeros(policy.sample_shape(cond), device=device), torch.full((1,), 500, dtype=torch.long, device=device), cond


class BackgroundCompile:
    """A batch-1 sampling forward of ``policy`` compiled in a thread, for a long-lived process (the demo).

    One face at a time is what a server restores, and a forward compiled for batch 1 is about a third
    faster there on a CPU (``bench/cpu_speed.py``), but compiling takes half a minute. The thread traces
    the forward with :func:`batch1_example` under ``precision``; until :meth:`ready` returns it,
    callers run the policy eager. A failure leaves ``error`` set and the callers eager.
    """

    def __init__(self, policy: nn.Module, device: torch.device | str, precision: str):
        self.policy = policy
        self.error: str | None = None
        self.seconds: float | None = None
        self._forward: CompiledForward | None = None
        self._thread = threading.Thread(target=self._build, args=(device, precision), name="lrpo-compile", daemon=True)
        self._thread.start()

    def _build(self, device: torch.device | str, precision: str) -> None:
        start = time.perf_counter()
        try:
            forward = CompiledForward(self.policy, 1)
            example = batch1_example(self.policy, device)
            with torch.no_grad(), autocast_context(device, precision):
                forward(*example)
        except Exception as e:  # noqa: BLE001  (any compiler failure leaves the eager forward in use)
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return
        self.seconds = round(time.perf_counter() - start, 1)
        self._forward = forward

    def ready(self) -> CompiledForward | None:
        """The compiled forward once built, else None (run eager)."""
        return self._forward

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread ends (or ``timeout`` seconds pass); True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> str:
        """'ready (compiled in N s)', 'compiling' or 'failed: ...' (eager)."""
        if self._forward is not None:
            return f"ready (compiled in {self.seconds} s)"
        if self.error is not None:
            return f"failed, running eager: {self.error}"
        return "compiling (eager until it is ready)"
