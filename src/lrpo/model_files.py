"""Reading published model files and loading them strictly into our modules.

The reward models here (LPIPS, CLIP, the Face Reward Model) are rebuilt in plain torch with the
exact parameter names of the files their publishers release, so a downloaded file loads with no
renaming. ``load_state_dict_strict`` is the single gate: any missing key, unexpected key or shape
difference is an error that lists them all and names the file, instead of torch's
``strict=False`` silently leaving random weights in place.

Formats handled by :func:`read_state_dict`:

* ``torch.save`` of a state dict, or of a dict holding one under ``"state_dict"`` (HPSv2-style
  checkpoints); a ``"module."`` prefix left by DistributedDataParallel is removed; training
  bookkeeping pickled beside it (Lightning callbacks ...) is skipped without unpickling code;
* TorchScript archives (OpenAI's CLIP ``RN50.pt``), read with ``torch.jit.load(...).state_dict()``;
* ``.safetensors`` files.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from .checkpoint import listing, mismatch_parts
from .torch_floor import require_safe_torch_load

__all__ = [
    "BOOKKEEPING_MODULES",
    "CheckpointFormatError",
    "StateDictMismatchError",
    "freeze",
    "is_torchscript_archive",
    "load_error_line",
    "load_state_dict_strict",
    "load_torch_file",
    "read_state_dict",
    "unwrap_state_dict",
]



class StateDictMismatchError(ValueError):
    """A state dict does not match the module's parameter names and shapes."""


class CheckpointFormatError(ValueError):
    """A file could not be read as a state dict."""


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip archive (it holds compiled ``code/``; a torch.save zip does not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


# Modules whose objects training frameworks pickle beside the weights: Lightning's callbacks and
# loop states, OmegaConf hyper-parameters, numpy scalars of logged metrics, typing markers. Read
# with weights_only=True they would refuse the file; they are unpickled as inert placeholders
# instead (no code of theirs runs, nothing of theirs is kept: only tensors are used).
BOOKKEEPING_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "numpy.", "typing.")


class _Inert:
    """Stands in for any bookkeeping class or function: called, built or given state, it keeps nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def load_torch_file(path: str | os.PathLike, *, trust_pickle: bool = False, mmap: bool = False) -> object:
    """``torch.load`` on the CPU; ``weights_only=True`` unless ``trust_pickle``.

    A checkpoint refused only for objects of :data:`BOOKKEEPING_MODULES` (e.g. a Lightning
    ``.ckpt``'s ModelCheckpoint callback) is read again with those replaced by inert placeholders,
    still without unpickling code. ``mmap`` maps zip files instead of reading them (legacy files
    cannot be mapped and are read).
    """

    if not trust_pickle:
        require_safe_torch_load()

    def load() -> object:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=True)
            except RuntimeError as err:  # legacy (non-zip) torch.save files cannot be memory-mapped
                if "mmap" not in str(err):
                    raise
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)

    try:
        return load()
    except pickle.UnpicklingError:
        if trust_pickle or not zipfile.is_zipfile(path):
            raise
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not unsafe or not all(name.startswith(BOOKKEEPING_MODULES) for name in unsafe):
            raise
        with torch.serialization.safe_globals([(_Inert, name) for name in unsafe]):
            return load()


def load_error_line(path: str | os.PathLike, err: BaseException) -> str:
    """Why ``torch.load`` refused ``path``, in one line: the names a weights_only refusal would have
    imported (read from the pickle's opcodes; nothing runs), else the error's first line (torch
    explains a refusal over several lines)."""
    if isinstance(err, pickle.UnpicklingError):
        try:
            unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # noqa: BLE001 - not a zip file (a legacy or raw pickle), or a damaged one
            unsafe = []
        if unsafe:
            shown = ", ".join(unsafe[:4]) + (f", ... ({len(unsafe) - 4} more)" if len(unsafe) > 4 else "")
            return f"it holds Python objects that only full unpickling could rebuild ({shown}); read as tensors only, not loaded"
        return "it is not a file of tensors that torch.load(weights_only=True) can read; not loaded"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors stored in ``path`` as a flat ``{name: tensor}`` dict, on the CPU.

    ``trust_pickle=False`` reads torch.save files with ``weights_only=True``, which refuses
    pickled code objects; set it only for files from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            obj: object = load_file(str(path), device="cpu")
        elif is_torchscript_archive(path):
            # TorchScript is deprecated in recent torch, but it is the format OpenAI published.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = load_torch_file(path, trust_pickle=trust_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        hint = "" if trust_pickle else " (if it holds pickled objects from a trusted source, pass trust_pickle=True)"
        raise CheckpointFormatError(f"could not read {path} as a model file: {load_error_line(path, err)}{hint}") from err
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """The flat state dict inside ``obj``: ``obj`` itself or ``obj["state_dict"]``, without a
    DistributedDataParallel ``"module."`` prefix. Non-tensor entries are an error."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointFormatError(
            f"{source}: entries {listing(bad)} are not tensors; expected a state dict, or a dict with one under 'state_dict'"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: str,
    ignore: Callable[[str], bool] = lambda key: False,
    may_be_missing: Callable[[str], bool] = lambda key: False,
) -> None:
    """Copy ``state_dict`` into ``module``; every key and shape must match.

    ignore(key):          file entries deliberately not loaded (e.g. a VGG's classifier).
    may_be_missing(key):  module entries the file may omit without harm (e.g. BatchNorm's
                          ``num_batches_tracked``, unused in eval mode); they keep their value.
    Values are cast to the module's dtypes (published CLIP files are float16).
    """
    expected = module.state_dict()
    given = {k: v for k, v in state_dict.items() if not ignore(k)}
    missing = [k for k in expected if k not in given and not may_be_missing(k)]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in given.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = mismatch_parts(missing, unexpected, wrong_shape)
        raise StateDictMismatchError(
            f"{source} does not match {type(module).__name__}: " + "; ".join(parts)
            + ". Is it the right file for this model (see the registry entry's description)?"
        )
    merged = dict(expected)
    merged.update(given)
    module.load_state_dict(merged, strict=True)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: reward models are fixed judges."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module



