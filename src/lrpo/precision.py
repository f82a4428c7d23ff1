"""Numeric precision of the network's forward passes: one place turns a precision name into an
autocast context.

Names: ``fp32`` (no autocast), ``bf16`` (autocast to bfloat16; weights, latents, log-probabilities
and losses stay float32) and ``auto``: bf16 where the device has bf16 arithmetic units (CUDA cards
that support it; CPUs with AVX512-BF16 or AMX-BF16, as torch reports them), fp32 elsewhere. On a
CPU without those units bf16 is emulated and slower than fp32, hence the rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Capability:
    """What the processor offers for bf16, as torch sees it."""

    device: str  # "cpu" or "cuda"
    bf16_units: bool  # hardware bf16 arithmetic
    detail: str  # e.g. "avx512_bf16" or "amx_bf16, avx512_bf16", or the card's name

    def describe(self) -> str:
        units = f"bf16 units ({self.detail})" if self.bf16_units else f"no bf16 units ({self.detail})"
        return f"{self.device}: {units}"


def capability(device: torch.device | str = "cpu") -> Capability:
    device = torch.device(device)
    if device.type == "cuda":
        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "no CUDA device"
        return Capability("cuda", ok, name)
    if device.type != "cpu":
        return Capability(device.type, False, "not a CPU or CUDA device")
    flags = _cpu_flags()
    found = [f for f in ("amx_bf16", "avx512_bf16") if flags.get(f)]
    return Capability("cpu", bool(found), ", ".join(found) or f"vector unit {torch.backends.cpu.get_cpu_capability()}")


def _cpu_flags() -> dict[str, bool]:
    # torch's own reading of the processor (cpuinfo); a private call, so read defensively
    try:
        info = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return {}
    return {k: bool(v) for k, v in info.items() if isinstance(v, bool)}


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` or ``fp32`` for ``device`` (see the module docstring); others unchanged."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if capability(device).bf16_units else "fp32"


def autocast_context(device: torch.device | str, precision: str):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32 (``auto`` is resolved)."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of contexts for ``precision``: "fp32" (no autocast) or "bf16" (CUDA autocast).

    bf16 is refused off CUDA: CPU autocast is slow on most CPUs and the rewards are cheap there.
    """
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "bf16":
        if device.type != "cuda":
            raise ValueError(f"precision='bf16' autocast is for CUDA devices; use 'fp32' on {device}")
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
