"""Test helpers: the published CLIP state-dict layouts, written out independently of the model code.

``clip_layout`` lists every key and shape of an OpenAI / OpenCLIP ``CLIP`` state dict from its
hyper-parameters, following the key names of the released files (OpenAI ``clip/model.py``,
OpenCLIP ``CLIP``; facts recorded in lrpo.rewards.clip_models). Random tensors in that layout,
saved in the publishers' formats, stand in for the real files, which cannot be downloaded here.
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import torch
from torch import nn

Shape = tuple[int, ...]
INT_SCALAR = "int"  # BatchNorm's num_batches_tracked


def _bn(prefix: str, c: int) -> dict[str, object]:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": INT_SCALAR
    }


def _ln(prefix: str, c: int) -> dict[str, Shape]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _block(prefix: str, w: int) -> dict[str, Shape]:
    return {
        f"{prefix}.attn.in_proj_weight": (3 * w, w),
        f"{prefix}.attn.in_proj_bias": (3 * w,),
        f"{prefix}.attn.out_proj.weight": (w, w),
        f"{prefix}.attn.out_proj.bias": (w,),
        **_ln(f"{prefix}.ln_1", w),
        f"{prefix}.mlp.c_fc.weight": (4 * w, w),
        f"{prefix}.mlp.c_fc.bias": (4 * w,),
        f"{prefix}.mlp.c_proj.weight": (w, 4 * w),
        f"{prefix}.mlp.c_proj.bias": (w,),
        **_ln(f"{prefix}.ln_2", w),
    }


def clip_layout(
    *,
    embed_dim: int,
    image_resolution: int,
    vision_layers,
    vision_width: int,
    patch_size: int | None,
    context_length: int,
    vocab_size: int,
    text_width: int,
    text_layers: int,
) -> dict[str, object]:
    """key -> shape (or INT_SCALAR) of a CLIP state dict; ResNet if vision_layers is a tuple."""
    out: dict[str, object] = {}
    if isinstance(vision_layers, tuple):
        w = vision_width
        out["visual.conv1.weight"] = (w // 2, 3, 3, 3)
        out |= _bn("visual.bn1", w // 2)
        out["visual.conv2.weight"] = (w // 2, w // 2, 3, 3)
        out |= _bn("visual.bn2", w // 2)
        out["visual.conv3.weight"] = (w, w // 2, 3, 3)
        out |= _bn("visual.bn3", w)
        inplanes = w
        for i, blocks in enumerate(vision_layers):
            planes = w * 2**i
            for j in range(blocks):
                p = f"visual.layer{i + 1}.{j}"
                out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                out |= _bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out |= _bn(f"{p}.bn2", planes)
                out[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
                out |= _bn(f"{p}.bn3", 4 * planes)
                if j == 0 and (i > 0 or inplanes != 4 * planes):
                    out[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                    out |= _bn(f"{p}.downsample.1", 4 * planes)
                inplanes = 4 * planes
        c = 32 * w
        out["visual.attnpool.positional_embedding"] = ((image_resolution // 32) ** 2 + 1, c)
        for n in ("k_proj", "q_proj", "v_proj"):
            out[f"visual.attnpool.{n}.weight"] = (c, c)
            out[f"visual.attnpool.{n}.bias"] = (c,)
        out["visual.attnpool.c_proj.weight"] = (embed_dim, c)
        out["visual.attnpool.c_proj.bias"] = (embed_dim,)
    else:
        w, grid = vision_width, image_resolution // patch_size
        out["visual.class_embedding"] = (w,)
        out["visual.positional_embedding"] = (grid * grid + 1, w)
        out["visual.proj"] = (w, embed_dim)
        out["visual.conv1.weight"] = (w, 3, patch_size, patch_size)
        out |= _ln("visual.ln_pre", w)
        for i in range(vision_layers):
            out |= _block(f"visual.transformer.resblocks.{i}", w)
        out |= _ln("visual.ln_post", w)
    out["positional_embedding"] = (context_length, text_width)
    out["text_projection"] = (text_width, embed_dim)
    out["logit_scale"] = ()
    out["token_embedding.weight"] = (vocab_size, text_width)
    for i in range(text_layers):
        out |= _block(f"transformer.resblocks.{i}", text_width)
    out |= _ln("ln_final", text_width)
    return out


def random_state_dict(layout: dict[str, object], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors in ``layout``: normalisation scales near 1, variances positive, weights
    scaled by 1/sqrt(fan-in) so activations stay O(1); logit_scale = log(100) as in OpenAI's files."""
    sd: dict[str, torch.Tensor] = {}
    for key, shape in layout.items():
        if shape == INT_SCALAR:
            sd[key] = torch.tensor(0, dtype=torch.long)
        elif key == "logit_scale":
            sd[key] = torch.tensor(math.log(100.0))
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=gen)
        elif (".bn" in key or ".ln" in key or "ln_" in key or ".downsample.1" in key) and key.endswith("weight"):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2 and "embedding" not in key:
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=gen)
    return sd


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript_archive(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript archive whose ``state_dict()`` is ``state_dict`` (the container of OpenAI's
    RN50.pt), plus OpenAI's attribute entries input_resolution / context_length / vocab_size."""
    root = _Holder()
    entries = dict(state_dict)
    entries |= {n: torch.tensor(v) for n, v in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408))}
    for key, value in entries.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, _Holder())
            node = getattr(node, name)
        if value.is_floating_point() and value.ndim > 0:
            node.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
        else:
            node.register_buffer(leaf, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is OpenAI's format
        torch.jit.save(torch.jit.script(root), str(path))


def write_merges_file(path: Path, merges: list[tuple[str, str]]) -> Path:
    """A CLIP-format BPE file: a version header, then one merge per line, gzip-compressed."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return path
