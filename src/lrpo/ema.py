"""Exponential moving average of a module's parameters (buffers are copied, not averaged)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = {k for k, _ in model.named_parameters()}
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if k in params and v.dtype.is_floating_point:
                s.lerp_(v.detach(), 1.0 - self.decay)  # s = decay * s + (1 - decay) * v
            else:  # buffers (running statistics, counters) follow the model as they are
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(sd)
        if missing:
            raise KeyError(f"EMA state lacks keys: {sorted(missing)[:5]}")
        wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in self.shadow.items() if sd[k].shape != v.shape]
        if wrong:  # copy_ would broadcast a smaller tensor silently
            raise ValueError(f"EMA state has wrong shapes (given vs expected): {wrong[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(sd[k])

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``model`` (restored on exit)."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(backup)
