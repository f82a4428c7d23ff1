"""The oldest torch whose ``torch.load(weights_only=True)`` is safe on untrusted files.

Up to torch 2.5.1 a crafted file could run code even with ``weights_only=True`` (CVE-2025-32434,
fixed in 2.6.0). lrpo reads checkpoints and model files people hand it with that flag, so every
such load goes through :func:`require_safe_torch_load` first.
"""

from __future__ import annotations

import re

import torch

MIN_TORCH = (2, 6)


class UnsafeTorchError(RuntimeError):
    """The installed torch cannot read untrusted files safely (one line: the version and the minimum)."""


def torch_version(text: str) -> tuple[int, int]:
    """(major, minor) of a torch version string ("2.5.1+cu121" -> (2, 5)); (0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def require_safe_torch_load() -> None:
    """Refuse to read an untrusted torch file with a torch older than :data:`MIN_TORCH`."""
    installed = str(torch.__version__)
    if torch_version(installed) < MIN_TORCH:
        raise UnsafeTorchError(
            f"torch {installed} is installed, but reading torch files from others safely needs torch >= "
            f"{'.'.join(map(str, MIN_TORCH))} (torch.load(weights_only=True) can run code before that, "
            f"CVE-2025-32434); nothing was loaded. Upgrade torch")
