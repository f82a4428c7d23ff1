"""What the pyiqa networks share: their weight-file entries, reading pyiqa's files strictly, common layers."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from ...model_files import CheckpointFormatError, freeze, load_state_dict_strict, load_torch_file, unwrap_state_dict
from ...weights import WeightFile, hub_file, register


# pyiqa's get_url_from_name: hf_hub_url(repo_id="chaofengc/IQA-PyTorch-Weights", filename=name)
# (file names URL-quoted: "+" is %2B); the same files are on the GitHub release "v0.1-weights".
PYIQA_WEIGHTS_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
# The weight files carry no licence of their own; pyiqa is PolyForm Noncommercial 1.0.0 (its
# LICENSE; S-Lab License 1.0 for some components), so treat them as non-commercial.
PYIQA_LICENCE = "PolyForm-Noncommercial-1.0.0"


PYIQA_HUB_REPO = "chaofengc/IQA-PyTorch-Weights"


def pyiqa_file(name: str, filename: str, description: str, prefix: str | None, bounds_mb: tuple[float, float]) -> WeightFile:
    # The URL quotes the name as pyiqa does ("+" is %2B).
    reason = ("pyiqa publishes no sha256 and no copy was reachable here to hash" + (
        f"; the name's {prefix} is checked as its prefix" if prefix else "") + " (the Hub states the sha256 as the "
        "file's ETag at download: checked)")
    return register(hub_file(name, PYIQA_HUB_REPO, filename, PYIQA_LICENCE, description, sha256_prefix=prefix,
                             min_mb=bounds_mb[0], max_mb=bounds_mb[1], container="torch", unpinned_reason=reason))


def _bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # unused in eval mode; a file may omit it


# ----------------------------------------------------------------------------------------------
# reading pyiqa's files
# ----------------------------------------------------------------------------------------------
def read_pyiqa_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The flat state dict in one of pyiqa's files: a raw state dict, ``{"params": sd}`` (BasicSR
    style, TOPIQ) or ``{"state_dict": sd}``; a DataParallel ``module.`` prefix is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = load_torch_file(path, trust_pickle=trust_pickle)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        hint = "" if trust_pickle else " (if it holds pickled objects from a trusted source, pass trust_pickle=True)"
        raise CheckpointFormatError(f"could not read {path} as a model file: {err}{hint}") from err
    if isinstance(obj, Mapping) and isinstance(obj.get("params"), Mapping):
        obj = obj["params"]
    return unwrap_state_dict(obj, source=str(path))


def count_children(sd: Mapping[str, Tensor], prefix: str) -> int:
    """Number of numbered children ``prefix<i>.`` (e.g. blocks) in a state dict."""
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def need_key(sd: Mapping[str, Tensor], key: str, source: str, model: str) -> Tensor:
    if key not in sd:
        raise CheckpointFormatError(f"{source}: no {key!r}; is it a {model} file (see `lrpo weights list`)?")
    return sd[key]


def load_frozen(model: nn.Module, sd: Mapping[str, Tensor], source: str) -> nn.Module:
    load_state_dict_strict(model, sd, source=source, may_be_missing=_bn_counter)
    return freeze(model.float())


# ----------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (timm's, MUSIQ's and Swin's MLP; dropout is 0 at inference)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)


def tf_same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero padding of TensorFlow's 'SAME' convolutions: output ceil(n / stride), the odd pixel
    at the bottom / right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
