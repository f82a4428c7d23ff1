"""Reward registry: names -> factories, so configs can say ``{"dwt": {"weight": 0.3}}``.

A factory is any callable ``factory(**kwargs) -> Reward``. Modules register their rewards when they
are imported (``register_reward("lpips", build_lpips)``). Importing heavy modules (CLIP, VGG, ONNX
runtimes) is deferred: :data:`_LAZY_MODULES` maps the names of the built-in rewards to the module
that registers them, and :func:`build_reward` imports that module only when the name is asked for.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from .base import Reward

__all__ = ["available_rewards", "build_reward", "register_reward", "reward_factory", "UnknownRewardError"]

RewardFactory = Callable[..., Reward]

_FACTORIES: dict[str, RewardFactory] = {}

# Built-in reward names and the module whose import registers each.
_LAZY_MODULES: dict[str, str] = {
    "dwt": "lrpo.rewards.wavelet",
    "dwt_haar": "lrpo.rewards.wavelet",
    "identity": "lrpo.rewards.identity",
    "ssim": "lrpo.rewards.simple",
    "ms_ssim": "lrpo.rewards.simple",
    "psnr": "lrpo.rewards.simple",
    "sharpness": "lrpo.rewards.simple",
    "brightness": "lrpo.rewards.simple",
    "lpips": "lrpo.rewards.lpips",
    "clipiqa": "lrpo.rewards.clipiqa",
    "face_reward": "lrpo.rewards.face_reward",
}


class UnknownRewardError(KeyError):
    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


def register_reward(name: str, factory: RewardFactory) -> RewardFactory:
    """Register ``factory`` under ``name``; returns the factory (usable as a decorator helper).

    Registering a different factory under a taken name is an error; re-registering the same
    function (a module imported twice, or reloaded) replaces it silently.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"reward factory for {name!r} must be callable, got {type(factory).__name__}")
    old = _FACTORIES.get(name)
    if old is not None and _qualname(old) != _qualname(factory):
        raise ValueError(f"reward {name!r} is already registered to {_qualname(old)}; not replacing it with {_qualname(factory)}")
    _FACTORIES[name] = factory
    return factory


def available_rewards() -> list[str]:
    """Names :func:`build_reward` accepts (registered ones and built-ins not yet imported)."""
    return sorted(set(_FACTORIES) | set(_LAZY_MODULES))


def reward_factory(name: str) -> RewardFactory:
    """The factory registered as ``name``, importing the built-in module that provides it if needed."""
    if name not in _FACTORIES and name in _LAZY_MODULES:
        module = _LAZY_MODULES[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                raise UnknownRewardError(f"reward {name!r} lives in {module}, which is not available: {e}") from e
            raise
    if name not in _FACTORIES:
        raise UnknownRewardError(f"unknown reward {name!r}; known rewards: {', '.join(available_rewards())}")
    return _FACTORIES[name]


def build_reward(name: str, **kwargs: Any) -> Reward:
    """Instantiate the reward registered as ``name`` with ``kwargs`` (e.g. ``path=``, ``device=``)."""
    factory = reward_factory(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        raise TypeError(f"reward {name!r}: bad arguments {sorted(kwargs)} for {_qualname(factory)}: {e}") from None
    except ValueError:  # callables without a signature: let the call itself complain
        pass
    return factory(**kwargs)


def _qualname(f: Callable) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"
