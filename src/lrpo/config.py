"""Typed configuration: dataclasses, YAML loading, ``key=value`` overrides, validation.

Every run is described by one dataclass tree. A YAML file fills it, ``a.b=value`` overrides
change single leaves (values parsed as YAML, so ``train.lr=1e-4`` is a float and
``degradation.downscale=[1,4]`` a pair), and ``validate()`` on each section rejects values that
cannot work, naming the field and what was expected. Unknown keys are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from .runlog import replace_text

if TYPE_CHECKING:
    import torch  # start-up time: annotations only (lrpo --help reads this module, not torch)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key."""


T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------
@dataclass
class DegradationConfig:
    """BFR degradation ranges (SPEC section 7). Each pair is a closed interval sampled uniformly."""

    kernel_size: int = 41  # blur kernel side in pixels (odd)
    isotropic_prob: float = 0.5  # probability of an isotropic kernel; else anisotropic + rotation
    blur_sigma: tuple[float, float] = (0.1, 12.0)  # Gaussian sigma_x, sigma_y in pixels
    rotation: tuple[float, float] = (-math.pi, math.pi)  # anisotropic kernel angle, radians
    downscale: tuple[float, float] = (1.0, 12.0)  # downsampling factor s
    noise_sigma: tuple[float, float] = (0.0, 15.0)  # Gaussian noise std, in units of 1/255
    jpeg_quality: tuple[int, int] = (30, 99)  # inclusive integer range

    def validate(self, prefix: str = "degradation") -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"{prefix}.kernel_size must be a positive odd integer, got {self.kernel_size}")
        if not 0.0 <= self.isotropic_prob <= 1.0:
            raise ConfigError(f"{prefix}.isotropic_prob must be in [0, 1], got {self.isotropic_prob}")
        _check_range(f"{prefix}.blur_sigma", self.blur_sigma, low=1e-6)
        _check_range(f"{prefix}.rotation", self.rotation)
        _check_range(f"{prefix}.downscale", self.downscale, low=1.0)
        _check_range(f"{prefix}.noise_sigma", self.noise_sigma, low=0.0)
        _check_range(f"{prefix}.jpeg_quality", self.jpeg_quality, low=1, high=100)


DEGRADATION_PRESETS: dict[str, DegradationConfig] = {
    # the reference training ranges (SPEC section 7)
    "spec": DegradationConfig(),
    # milder degradations: used to check fidelity of small CPU models (issue 2's benchmark)
    "mild": DegradationConfig(blur_sigma=(0.1, 3.0), downscale=(1.0, 4.0), noise_sigma=(0.0, 5.0), jpeg_quality=(60, 99)),
}


@dataclass
class DataConfig:
    """Where HQ faces come from and how they are split."""

    hq: str = ""  # folder of HQ aligned faces, or a text file listing image paths
    resolution: int = 64  # faces are resized (area) to resolution x resolution
    val_count: int = 20  # the first N files in sorted order are held out for validation
    skip_bad: bool = False  # skip unreadable images (listed at the end) instead of stopping
    # captions, for reward terms that need one per image (the face reward): a table (CSV
    # "name,caption" or JSONL); sidecar NAME.txt files beside the images are read in any case
    captions: str = ""
    default_caption: str = ""  # used for images with no caption; empty = none (missing ones are errors)

    def validate(self, prefix: str = "data") -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise ConfigError(f"{prefix}.resolution must be a multiple of 8 and >= 8, got {self.resolution}")
        if self.val_count < 0:
            raise ConfigError(f"{prefix}.val_count must be >= 0, got {self.val_count}")


@dataclass
class PolicyConfig:
    """The built-in pixel-space conditional UNet policy."""

    kind: Literal["pixel_unet"] = "pixel_unet"
    resolution: int = 64  # image side the network works at
    base_channels: int = 32  # width of the first level
    channel_mults: tuple[int, ...] = (1, 2, 4)  # width multiplier per resolution level
    blocks_per_level: int = 1  # residual blocks per level (encoder and decoder)
    attention_levels: tuple[int, ...] = ()  # indices of levels with self-attention
    prediction: Literal["eps", "v", "x0"] = "x0"  # network output; an untrained residual x0 model returns its base
    # diffuse the residual hq - base instead of the image itself; base is the stage-1 output when
    # stage1 != "none", else the bicubically upsampled LQ. Starts every sample from a sensible image.
    residual: bool = True
    residual_scale: float = 2.0  # residual is multiplied by this to give it roughly unit variance
    stage1: Literal["none", "cnn"] = "cnn"  # regression restorer whose output conditions the model
    stage1_channels: int = 32
    stage1_blocks: int = 4
    dropout: float = 0.0

    def validate(self, prefix: str = "policy") -> None:
        if self.resolution % (2 ** (len(self.channel_mults) - 1)):
            raise ConfigError(
                f"{prefix}.resolution={self.resolution} must be divisible by 2**(len(channel_mults)-1)"
                f"={2 ** (len(self.channel_mults) - 1)}"
            )
        if self.base_channels < 8 or self.base_channels % 8:
            raise ConfigError(f"{prefix}.base_channels must be a multiple of 8, got {self.base_channels}")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ConfigError(f"{prefix}.channel_mults must be positive integers, got {self.channel_mults}")
        if any(not 0 <= i < len(self.channel_mults) for i in self.attention_levels):
            raise ConfigError(f"{prefix}.attention_levels must index channel_mults, got {self.attention_levels}")
        if self.blocks_per_level < 1:
            raise ConfigError(f"{prefix}.blocks_per_level must be >= 1, got {self.blocks_per_level}")
        if self.residual_scale <= 0:
            raise ConfigError(f"{prefix}.residual_scale must be > 0, got {self.residual_scale}")


@dataclass
class DiffusionConfig:
    """Noise schedule and sampler."""

    schedule: Literal["sd_linear", "cosine"] = "sd_linear"
    train_timesteps: int = 1000
    beta_start: float = 0.00085  # sd_linear only
    beta_end: float = 0.012  # sd_linear only
    sample_steps: int = 50  # DDIM steps
    eta: float = 0.0  # DDIM eta for restoration/validation (0 = deterministic)

    def validate(self, prefix: str = "diffusion") -> None:
        if self.train_timesteps < 2:
            raise ConfigError(f"{prefix}.train_timesteps must be >= 2, got {self.train_timesteps}")
        if not 1 <= self.sample_steps <= self.train_timesteps:
            raise ConfigError(f"{prefix}.sample_steps must be in [1, train_timesteps], got {self.sample_steps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"{prefix}: need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.eta < 0:
            raise ConfigError(f"{prefix}.eta must be >= 0, got {self.eta}")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    warmup_steps: int = 100  # linear warm-up from 0 to lr over this many steps
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # after warm-up
    min_lr_ratio: float = 0.05  # cosine floor as a fraction of lr

    def validate(self, prefix: str = "optim") -> None:
        if not self.lr > 0:
            raise ConfigError(f"{prefix}.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"{prefix}.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            raise ConfigError(f"{prefix}.grad_clip must be >= 0, got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ConfigError(f"{prefix}.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass
class PretrainConfig:
    """Supervised diffusion training of the base policy (``lrpo pretrain``)."""

    out_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 = autocast (master weights stay fp32); auto = bf16 where the processor has bf16 units
    # (lrpo.precision), fp32 elsewhere; the log's first record says which was used
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # compile the validation's sampling forward: auto = when validation runs long enough to pay
    # back (lrpo.policies.compiled); the training step stays eager
    compile: Literal["auto", "off", "on"] = "auto"
    steps: int = 2000  # optimiser steps
    # stop (with a checkpoint) once this invocation has trained this many minutes (0 = no limit);
    # a resume gets the budget anew, as in lrpo train
    time_budget_min: float = 0.0
    # the budget's clock: "wall" (training time, validations and checkpoints left out) or "cpu" (this
    # process's CPU time, all threads: runs sharing cores get equal compute, as in lrpo train)
    time_budget_clock: Literal["wall", "cpu"] = "wall"
    batch_size: int = 16
    ema_decay: float = 0.999
    stage1_loss_weight: float = 1.0  # weight of the stage-1 L1 loss
    log_every: int = 20
    val_every: int = 500  # steps between validation passes (0 = only at the end)
    val_steps: int = 20  # DDIM steps used by validation
    ckpt_every: int = 500
    keep_last: int = 2  # step checkpoints to keep (0 = keep all)
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    val_degradation: str = "mild"  # preset name used for the validation pass
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "val_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "keep_last", "time_budget_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.val_degradation not in DEGRADATION_PRESETS:
            raise ConfigError(f"val_degradation must be one of {sorted(DEGRADATION_PRESETS)}, got {self.val_degradation!r}")
        if self.policy.resolution != self.data.resolution:
            raise ConfigError(
                f"policy.resolution ({self.policy.resolution}) must equal data.resolution ({self.data.resolution})"
            )
        self.data.validate()
        self.degradation.validate()
        self.policy.validate()
        self.diffusion.validate()
        self.optim.validate()


# ----------------------------------------------------------------------------------------------
# generic machinery
# ----------------------------------------------------------------------------------------------
def launcher_world_size() -> int:
    """The number of processes a launcher (torchrun, accelerate) started: ``WORLD_SIZE``, 1 when unset."""
    raw = os.environ.get("WORLD_SIZE", "").strip()
    if not raw:
        return 1
    try:
        world = int(raw)
    except ValueError:
        world = 0
    if world < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} must be a positive integer (the number of processes)")
    return world


def _check_range(name: str, pair: tuple, low: float | None = None, high: float | None = None) -> None:
    if len(pair) != 2 or not all(math.isfinite(float(v)) for v in pair):
        raise ConfigError(f"{name} must be a pair [low, high] of finite numbers, got {pair}")
    lo, hi = pair
    if lo > hi:
        raise ConfigError(f"{name}: low {lo} is above high {hi}")
    if low is not None and lo < low:
        raise ConfigError(f"{name}: values must be >= {low}, got {pair}")
    if high is not None and hi > high:
        raise ConfigError(f"{name}: values must be <= {high}, got {pair}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty YAML section ("policy:" alone) means that section's defaults
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (tuple, list, typing.List, dict, typing.Dict):
        return _coerce_container(value, tp, origin, key)
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """``value`` as a bool, int, float or str (``tp``), or a ConfigError naming ``key``."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _coerce_container(value: Any, tp: Any, origin: Any, key: str) -> Any:
    """``value`` as the tuple, list or dict ``tp``, each element coerced, or a ConfigError naming ``key``."""
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} elements, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, typing.List):
        (arg,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}


# the shipped presets (configs/ in the repository is a link to this folder)
SHIPPED_CONFIG_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIG_DIR.glob("*.yaml"))


def find_config(name: str | Path) -> Path:
    """A config file path as given, or the shipped preset of that name (``lrpo-cpu`` ->
    ``<package>/configs/lrpo-cpu.yaml``), so ``--config lrpo-cpu`` works from any folder."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    preset = SHIPPED_CONFIG_DIR / f"{stem}.yaml"
    # a bare name, or the README's configs/NAME.yaml typed outside the repository
    if (len(path.parts) == 1 or path.parent.name == "configs") and preset.is_file():
        return preset
    raise ConfigError(f"config file not found: {name} (a YAML path, or a shipped preset: {', '.join(shipped_configs())})")


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of a config dataclass tree, dotted ('optim.lr')."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            out += _dotted_keys(hints[f.name], key + ".")
    return out


def did_you_mean(key: str, candidates: list[str]) -> str:
    """' (did you mean X?)' for the closest candidates: same last part in another section, a key
    starting with the typed one, then spelling neighbours."""
    leaf = key.rsplit(".", 1)[-1]
    leaves = {c: c.rsplit(".", 1)[-1] for c in candidates}
    same_leaf = [c for c, lf in leaves.items() if lf == leaf and c != key]
    prefix = [c for c, lf in leaves.items() if lf.startswith(leaf) and lf != leaf]
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    close += [c for c, lf in leaves.items() if lf in difflib.get_close_matches(leaf, list(leaves.values()), n=3, cutoff=0.75)]
    picks = list(dict.fromkeys(same_leaf + prefix + close))[:3]
    return f" (did you mean {' or '.join(repr(p) for p in picks)}?)" if picks else ""


def check_override_keys(cls: type, overrides: list[str]) -> None:
    """Unknown keys typed on the command line are reported as such, with a did-you-mean."""
    known = _dotted_keys(cls)
    free_sections = [k for k in known if _is_mapping_field(cls, k)]  # e.g. reward.terms: any key below
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in known or any(key.startswith(s + ".") for s in free_sections):
            continue
        raise ConfigError(f"command-line override {item!r}: {cls.__name__} has no key {key!r}{did_you_mean(key, known)}")


def _is_mapping_field(cls: type, dotted: str) -> bool:
    node: Any = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return False
        node = get_type_hints(node)[part]
    return get_origin(node) in (dict, typing.Dict) or node is dict


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)  # YAML may give non-string keys (`on:` is True)
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        hint = did_you_mean(str(unknown[0]), sorted(names))
        raise ConfigError(f"unknown key(s) {unknown}{where}{hint}; expected some of {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (value parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (for example optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:  # absent, or an empty YAML section ("policy:" alone)
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults <- YAML file <- overrides, then ``validate()``. Errors name the file and key."""
    data: dict = {}
    check_override_keys(cls, overrides or [])
    if path is not None:
        path = find_config(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(cls, data)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{_blame(str(e), path, overrides or [])}{e}") from None
    return cfg


def _blame(message: str, path: Path | None, overrides: list[str]) -> str:
    """Where the value an error is about came from: the last command-line override whose key the
    message names (``optim.lr=abc``), else the YAML file."""
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message):
            return f"command-line override {item!r}: "
    return f"{path}: " if path is not None else ""


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a run's config.yaml (replacing it, never writing through a link). ``trust_pickle`` is
    saved as false: it is the user's say on each command line, never a run folder's."""
    data = to_dict(cfg)
    if "trust_pickle" in data:
        data["trust_pickle"] = False
    replace_text(Path(path), yaml.safe_dump(data, sort_keys=False))


def resolve_device(name: str) -> torch.device:
    import torch  # start-up time: lrpo --help imports this module, and torch takes seconds

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else f"is built for CUDA {torch.version.cuda} but sees no GPU"
            raise ConfigError(f"device={name!r}, but this torch ({torch.__version__}) {build}; use device=cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r}, but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


__all__ = [
    "ConfigError",
    "DegradationConfig",
    "DEGRADATION_PRESETS",
    "DataConfig",
    "PolicyConfig",
    "DiffusionConfig",
    "OptimConfig",
    "PretrainConfig",
    "launcher_world_size",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "check_override_keys",
    "find_config",
    "load_config",
    "shipped_configs",
    "save_config",
    "resolve_device",
]
