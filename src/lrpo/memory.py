"""Device-independent memory accounting: parameter/optimiser bytes and the activations autograd keeps.

What an RL update holds on an accelerator is, to first order,

    frozen weights (at their storage dtype) + trainable weights + their gradients + AdamW's two
    moments (fp32, like the master weights) + activations saved for backward (per sample).

The first four are counted from the modules; the last is measured on any device (the CPU too) by
:func:`saved_activation_bytes`, which sums the distinct tensor storages autograd saves during a
forward pass. Measured at two micro-batch sizes, it gives the bytes per sample and the fixed part,
and so a prediction for any micro-batch (:func:`predict_bytes`). Allocator caching, fragmentation,
transient buffers in backward and the CUDA context are not included: the prediction is a floor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ActivationFit", "GIB", "fit_activation_bytes", "module_bytes", "predict_bytes", "saved_activation_bytes", "trainable_state_bytes"]

GIB = float(2**30)
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the shape and dtype of the parameter


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers at their current dtypes."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def trainable_state_bytes(params: Iterable[nn.Parameter]) -> dict[str, int]:
    """Weights, gradients (same dtype) and AdamW moments of the trainable parameters."""
    weights = sum(p.numel() * p.element_size() for p in params)
    return {"weights": weights, "gradients": weights, "adamw_states": ADAMW_STATES * weights}


def _storage_key(t: Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


@contextlib.contextmanager
def _count_saved(exclude: Iterable[Tensor]) -> Iterator[dict[tuple[str, int], int]]:
    """Collect storage -> bytes of every tensor autograd saves inside the block."""
    skip = {_storage_key(t) for t in exclude}
    seen: dict[tuple[str, int], int] = {}

    def pack(t: Tensor):
        if isinstance(t, Tensor) and t.untyped_storage().nbytes():
            key = _storage_key(t)
            if key not in skip:
                seen.setdefault(key, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


@contextlib.contextmanager
def _count_checkpoint_inputs(modules: Iterable[nn.Module], seen: dict, skip: set) -> Iterator[None]:
    """Record the tensors handed to activation-checkpointed blocks (diffusers' ``gradient_checkpointing``
    + ``_gradient_checkpointing_func``): a checkpointed block keeps exactly its inputs for the recompute."""
    patched = []
    for module in modules:
        for sub in module.modules():
            func = getattr(sub, "_gradient_checkpointing_func", None)
            if func is None or not getattr(sub, "gradient_checkpointing", False):
                continue

            def recording(block, *args, _func=func, **kwargs):
                for a in (*args, *kwargs.values()):
                    if isinstance(a, Tensor) and a.untyped_storage().nbytes():
                        key = _storage_key(a)
                        if key not in skip:
                            seen.setdefault(key, a.untyped_storage().nbytes())
                return _func(block, *args, **kwargs)

            patched.append((sub, func))
            sub._gradient_checkpointing_func = recording
    try:
        yield
    finally:
        for sub, func in patched:
            sub._gradient_checkpointing_func = func


def saved_activation_bytes(fn: Callable[[], object], exclude: Iterable[Tensor] = (), checkpointed: Iterable[nn.Module] = ()) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn()`` runs.

    ``exclude``: tensors not to count (parameters and buffers: they are weights, not activations).
    Views of one storage count once. Inside activation-checkpointed blocks of ``checkpointed``
    modules nothing is saved; their inputs, which the checkpoint keeps, are counted instead. (The
    recompute of one block during backward is transient and not counted.)
    """
    exclude = list(exclude)
    skip = {_storage_key(t) for t in exclude}
    with _count_saved(exclude) as seen, _count_checkpoint_inputs(checkpointed, seen, skip):
        out = fn()
    del out
    return sum(seen.values())


@dataclass(frozen=True)
class ActivationFit:
    """bytes(m) = fixed + per_sample * m, from measurements at two micro-batch sizes."""

    fixed: float
    per_sample: float


def fit_activation_bytes(m1: int, bytes1: float, m2: int, bytes2: float) -> ActivationFit:
    """The line through (m1, bytes1) and (m2, bytes2); m1 != m2."""
    if m1 == m2:
        raise ValueError("fit_activation_bytes needs two different micro-batch sizes")
    per = (bytes2 - bytes1) / (m2 - m1)
    return ActivationFit(fixed=bytes1 - per * m1, per_sample=per)


def predict_bytes(static_bytes: float, fit: ActivationFit, micro_batch: int) -> float:
    """Static (weights, gradients, optimiser) plus the fitted activations at ``micro_batch``."""
    return static_bytes + fit.fixed + fit.per_sample * micro_batch
