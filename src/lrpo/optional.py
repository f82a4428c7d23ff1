"""Optional dependencies: import them where needed, and say which extra to install when missing.

The core install (``pip install lrpo``) trains and restores with the CPU pixel policy. Extras:
  sd    diffusers: the SD 2.1 + ControlNet latent policy (the paper's run, ``--policy sd21-diffbir``)
  test  pytest and the reference implementations the tests compare with
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependencyError", "require"]

# module -> (extra that installs it, pip requirement)
EXTRAS: dict[str, tuple[str, str]] = {
    "diffusers": ("sd", "diffusers>=0.30"),
}


class MissingDependencyError(RuntimeError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra, requirement = EXTRAS.get(module, (None, module))
        how = f'pip install "lrpo[{extra}]" (or pip install "{requirement}")' if extra else f'pip install "{requirement}"'
        raise MissingDependencyError(f"{purpose} needs the Python package {module!r}, which is not importable ({e}): {how}") from None
