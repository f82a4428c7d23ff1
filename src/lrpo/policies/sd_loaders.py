"""Loading the published SD 2.1, DiffBIR ControlNet and SwinIR files into our modules, strictly.

Our UNet and VAE are diffusers modules; the files are in the original LDM layout. Each mapping
here is a function from *our* parameter name to the *file's* name, built from the module's own
state-dict keys, so it is one-to-one by construction and can be checked both ways:

  * every parameter of the module must be found in the file (else "missing", listed with both names);
  * every file entry under the component's prefix must be used (else "unexpected"), except the
    few entries that are unused by design (the text tower's last layer and projection);
  * shapes must agree (LDM's VAE attention stores 1x1 convolutions [C, C, 1, 1] where diffusers
    has linear layers [C, C]; that is the only reshaping allowed).

The same map, run backwards (:func:`to_original_layout`), writes a module's weights in the
original layout: tests use it to make files in the published format, and a trained ControlNet
can be exported for DiffBIR's own code (:func:`save_diffbir_controlnet`). What the files' shapes say
about the architecture is read in :mod:`lrpo.policies.sd_sizes`.

Layouts (facts from the public code; see the tests for literal key names):
  SD 2.1 LDM file (``v2-1_512-ema-pruned.ckpt``: ``{"state_dict": ...}``; CompVis ldm /
  Stability ``ldm.models.diffusion.ddpm``):
      model.diffusion_model.*  UNet: time_embed.{0,2}, input_blocks.{i}.{0: ResBlock | op, 1:
                               SpatialTransformer}, middle_block.{0,1,2}, output_blocks.{i}.{0,1,2},
                               out.{0,2}; ResBlock = in_layers.{0,2}, emb_layers.1,
                               out_layers.{0,3}, skip_connection
      first_stage_model.*      VAE: encoder/decoder.{conv_in, down.{i}.block.{j}, down.{i}.downsample,
                               up.{i}.block.{j}, up.{i}.upsample, mid.block_{1,2}, mid.attn_1.{norm,
                               q, k, v, proj_out}, norm_out, conv_out}, quant_conv, post_quant_conv
      cond_stage_model.model.* OpenCLIP text tower: token_embedding, positional_embedding,
                               transformer.resblocks.{0..23}, ln_final, text_projection, logit_scale
      (also betas, alphas_cumprod, ... and possibly model_ema.*: not model weights, ignored)
  DiffBIR ControlNet (``v1_face.pth``; XPixelGroup/DiffBIR ``diffbir/model/controlnet.py``,
  loaded by ``ControlLDM.load_controlnet_from_ckpt`` with ``load_state_dict(sd, strict=True)``):
      the UNet encoder names without prefix (time_embed, input_blocks.0.0 with 4 + 4 input
      channels: noisy latent and condition latent concatenated, no hint network, input_blocks.*,
      middle_block.*) plus zero_convs.{0..11}.0 and middle_block_out.0 (12 + 1 = 13 residuals).
      LRPO's training code saves the same under a ``controlnet.`` prefix; ControlNet's original
      training code under ``control_model.``: both are accepted.
  DiffBIR SwinIR (``face_swinir_v1.ckpt``): the module's own names (see :mod:`.swinir`), possibly
      under ``{"state_dict": ...}`` and a ``module.`` prefix (DiffBIR strips both).
  diffusers folder: ``unet/`` and ``vae/`` hold our names (older files use the VAE attention names
      query/key/value/proj_attn); ``text_encoder/`` is a transformers CLIPTextModel already cut
      to 23 layers (diffusers drops resblocks.23 when converting SD 2.x).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..checkpoint import CheckpointError, listing, mismatch_parts
from ..model_files import CheckpointFormatError, load_error_line, load_torch_file, unwrap_state_dict
from ..weights import REFERENCE_HUB_REPO, hub_file, register

SD_UNET_PREFIX = "model.diffusion_model."
SD_VAE_PREFIX = "first_stage_model."
SD_TEXT_PREFIX = "cond_stage_model.model."
CONTROLNET_PREFIXES = ("controlnet.", "control_model.")  # LRPO / original ControlNet training saves

_HUB_UNPINNED = ("the Hub serves it from Git LFS; no copy was reachable here to hash and the publisher states no "
                 "sha256 outside the Hub (which states it as the file's ETag at download: checked)")
SD21_BASE = register(
    hub_file(
        "sd21-base",
        "stabilityai/stable-diffusion-2-1-base",
        "v2-1_512-ema-pruned.ckpt",
        "CreativeML Open RAIL++-M",
        "Stable Diffusion 2.1-base (512 px, eps-prediction), LDM single file: UNet, VAE, OpenCLIP text tower "
        f"(the reference release carries a copy in {REFERENCE_HUB_REPO})",
        size_mb=5214.0,
        min_mb=4900.0,
        max_mb=5600.0,
        container="torch",
        unpinned_reason=_HUB_UNPINNED,
    )
)
DIFFBIR_V1_FACE = register(
    hub_file(
        "diffbir-v1-face",
        "lxq007/DiffBIR-v2",
        "v1_face.pth",
        "Apache-2.0",
        "DiffBIR v1 face IRControlNet (input: noisy latent + condition latent, 8 channels); the LRPO base policy",
        # a 363 M-parameter ControlNet: 0.73 GB in fp16, 1.45 GB in fp32, more with training state
        min_mb=600.0,
        max_mb=3000.0,
        container="torch",
        unpinned_reason=_HUB_UNPINNED,
    )
)
DIFFBIR_SWINIR_FACE = register(
    hub_file(
        "diffbir-swinir-face",
        "lxq007/DiffBIR",
        "face_swinir_v1.ckpt",
        "Apache-2.0",
        "DiffBIR stage-1 SwinIR for 512 px faces (pixel-unshuffle 8, 8 groups x 6 blocks, 180 channels)",
        # about 16 M parameters (63 MB fp32); a Lightning .ckpt may add optimiser state
        min_mb=20.0,
        max_mb=600.0,
        container="torch",
        unpinned_reason=_HUB_UNPINNED,
    )
)
# The reference release's trained LRPO ControlNets (the same layout as diffbir-v1-face).
_LRPO_UNPINNED = (f"published in {REFERENCE_HUB_REPO} after this registry was written; no copy was reachable here "
                  "to hash (the Hub states its sha256 as the file's ETag at download: checked)")
LRPO_FIDELITY = register(
    hub_file(
        "lrpo-fidelity",
        REFERENCE_HUB_REPO,
        "lrpo_fidelity.pth",
        "Apache-2.0",
        "LRPO ControlNet of the paper (trained with the GT-guided likelihood term) on DiffBIR v1 face / SD 2.1-base",
        min_mb=300.0,
        max_mb=6000.0,
        container="torch",
        unpinned_reason=_LRPO_UNPINNED,
    )
)
LRPO_PERCEPTION = register(
    hub_file(
        "lrpo-perception",
        REFERENCE_HUB_REPO,
        "lrpo_perception.pth",
        "Apache-2.0",
        "LRPO ControlNet trained without the GT-guided term (perception-leaning) on DiffBIR v1 face / SD 2.1-base",
        min_mb=300.0,
        max_mb=6000.0,
        container="torch",
        unpinned_reason=_LRPO_UNPINNED,
    )
)


class WeightsMismatchError(CheckpointError):
    """A file does not hold the weights the module expects; the message lists every difference."""


@dataclass
class LoadReport:
    """What a load used and ignored (for logging; mismatches raise instead)."""

    source: str
    loaded: dict[str, int] = field(default_factory=dict)  # component -> tensors loaded
    unused_by_design: list[str] = field(default_factory=list)  # file keys deliberately not loaded
    other_entries: list[str] = field(default_factory=list)  # file keys outside every component


# ----------------------------------------------------------------------------------------------
# reading files
# ----------------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Flat {name: tensor} of a .ckpt/.pth/.pt/.bin (torch.save) or .safetensors file, on the CPU.

    ``{"state_dict": ...}`` is unwrapped and a ``module.`` prefix on every key removed (as DiffBIR's
    ``load_model_from_url`` does). torch.save files are memory-mapped where possible and read with
    ``weights_only=True`` unless ``trust_pickle`` (only for files from a source you trust); a
    Lightning checkpoint's callbacks and hyper-parameters are skipped without unpickling them
    (:func:`lrpo.model_files.load_torch_file`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == ".safetensors":
        return dict(load_file(str(path), device="cpu"))
    try:
        obj = load_torch_file(path, trust_pickle=trust_pickle, mmap=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        hint = "" if trust_pickle else " (if it holds pickled objects and comes from a trusted source, set trust_pickle)"
        raise CheckpointFormatError(f"could not read {path} as a model file: {load_error_line(path, err)}{hint}") from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping):  # extra non-tensor entries (epoch counters ...) are not weights
        obj = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    return unwrap_state_dict(obj, source=str(path))


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------
# name maps: our (diffusers) key -> original (LDM / DiffBIR) key
# ----------------------------------------------------------------------------------------------
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
_VAE_CONV_ATTN = re.compile(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def _unknown(key: str, what: str) -> KeyError:
    return KeyError(f"no {what} mapping for parameter {key!r}; the module is not the expected architecture")


def _unet_original_key(key: str, per_level: int, up_levels_with_attention: set[int]) -> str:
    """One diffusers UNet/ControlNet key -> its LDM name (``per_level`` = layers_per_block)."""
    p = key.split(".")
    rest = lambda i: ".".join(p[i:])  # noqa: E731
    head = p[0]
    if head == "time_embedding":
        return f"time_embed.{ {'linear_1': 0, 'linear_2': 2}[p[1]] }.{rest(2)}"
    if head == "conv_in":
        return f"input_blocks.0.0.{rest(1)}"
    if head == "conv_norm_out":
        return f"out.0.{rest(1)}"
    if head == "conv_out":
        return f"out.2.{rest(1)}"
    if head == "controlnet_down_blocks":
        return f"zero_convs.{p[1]}.0.{rest(2)}"
    if head == "controlnet_mid_block":
        return f"middle_block_out.0.{rest(1)}"
    if head == "down_blocks":
        level, kind = int(p[1]), p[2]
        if kind == "downsamplers":  # p[3] = "0", p[4] = "conv"
            return f"input_blocks.{(level + 1) * (per_level + 1)}.0.op.{rest(5)}"
        block = 1 + level * (per_level + 1) + int(p[3])
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_UNET_RESNET[p[4]]}.{rest(5)}"
        if kind == "attentions":
            return f"input_blocks.{block}.1.{rest(4)}"
    if head == "mid_block":
        if p[1] == "resnets":
            return f"middle_block.{0 if p[2] == '0' else 2}.{_UNET_RESNET[p[3]]}.{rest(4)}"
        if p[1] == "attentions":
            return f"middle_block.1.{rest(3)}"
    if head == "up_blocks":
        level, kind = int(p[1]), p[2]
        if kind == "upsamplers":  # after the level's last ResBlock (and its attention, if any)
            sub = 2 if level in up_levels_with_attention else 1
            return f"output_blocks.{level * (per_level + 1) + per_level}.{sub}.conv.{rest(5)}"
        block = level * (per_level + 1) + int(p[3])
        if kind == "resnets":
            return f"output_blocks.{block}.0.{_UNET_RESNET[p[4]]}.{rest(5)}"
        if kind == "attentions":
            return f"output_blocks.{block}.1.{rest(4)}"
    raise _unknown(key, "LDM UNet")


def unet_key_map(model_keys: Iterable[str], layers_per_block: int) -> dict[str, str]:
    """{our key: LDM key} for a diffusers UNet2DConditionModel or our ConcatControlNet."""
    keys = list(model_keys)
    with_attn = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    try:
        return {k: _unet_original_key(k, layers_per_block, with_attn) for k in keys}
    except (KeyError, IndexError, ValueError) as err:
        raise KeyError(f"cannot map UNet parameter names to the LDM layout: {err}") from None


def _vae_original_key(key: str, levels: int) -> str:
    p = key.split(".")
    rest = lambda i: ".".join(p[i:])  # noqa: E731
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key
    side = p[0]
    if side not in ("encoder", "decoder"):
        raise _unknown(key, "LDM VAE")
    part = p[1]
    if part in ("conv_in", "conv_out"):
        return key
    if part == "conv_norm_out":
        return f"{side}.norm_out.{rest(2)}"
    if part in ("down_blocks", "up_blocks"):
        level = int(p[2])
        name, level_out = ("down", level) if part == "down_blocks" else ("up", levels - 1 - level)  # LDM's up.0 is the last
        if p[3] == "resnets":
            return f"{side}.{name}.{level_out}.block.{p[4]}.{_VAE_RESNET[p[5]]}.{rest(6)}"
        if p[3] in ("downsamplers", "upsamplers"):  # p[4] = "0", p[5] = "conv"
            return f"{side}.{name}.{level_out}.{'downsample' if name == 'down' else 'upsample'}.conv.{rest(6)}"
    if part == "mid_block":
        if p[2] == "resnets":
            return f"{side}.mid.block_{int(p[3]) + 1}.{_VAE_RESNET[p[4]]}.{rest(5)}"
        if p[2] == "attentions":
            leaf = _VAE_ATTN[p[4]]
            tail = rest(6) if p[4] == "to_out" else rest(5)  # to_out.0.weight -> proj_out.weight
            return f"{side}.mid.attn_1.{leaf}.{tail}"
    raise _unknown(key, "LDM VAE")


def vae_key_map(model_keys: Iterable[str], levels: int) -> dict[str, str]:
    """{our key: LDM key} for a diffusers AutoencoderKL with ``levels`` resolution levels."""
    try:
        return {k: _vae_original_key(k, levels) for k in model_keys}
    except (KeyError, IndexError, ValueError) as err:
        raise KeyError(f"cannot map VAE parameter names to the LDM layout: {err}") from None


def identity_key_map(model_keys: Iterable[str]) -> dict[str, str]:
    return {k: k for k in model_keys}


def _is_conv1x1_in_original(original_key: str) -> bool:
    return bool(_VAE_CONV_ATTN.search(original_key))


# ----------------------------------------------------------------------------------------------
# strict conversion, both ways
# ----------------------------------------------------------------------------------------------
def from_original_layout(
    module: nn.Module,
    original: Mapping[str, Tensor],
    key_map: Mapping[str, str],
    *,
    source: str,
    prefix: str = "",
    unused_by_design: Callable[[str], bool] = lambda key: False,
) -> dict[str, Tensor]:
    """Our state dict for ``module`` from ``original`` (keys ``prefix + key_map[ours]``).

    Raises :class:`WeightsMismatchError` listing missing, unexpected and wrong-shape entries.
    ``unused_by_design(key)`` (key without prefix) marks file entries that may be present and are
    deliberately not loaded.
    """
    expected = module.state_dict()
    missing, wrong_shape, out = [], [], {}
    for ours, theirs in key_map.items():
        full = prefix + theirs
        if full not in original:
            missing.append(f"{full} (ours: {ours})")
            continue
        t = original[full]
        want = tuple(expected[ours].shape)
        if tuple(t.shape) != want:
            if _is_conv1x1_in_original(theirs) and t.ndim == 4 and tuple(t.shape[2:]) == (1, 1) and tuple(t.shape[:2]) == want:
                t = t[:, :, 0, 0]
            else:
                wrong_shape.append(f"{full}: file {tuple(t.shape)} vs model {want}")
                continue
        out[ours] = t
    used = {prefix + v for v in key_map.values()}
    unexpected = [
        k for k in original if k.startswith(prefix) and k not in used and not unused_by_design(k[len(prefix):])
    ]
    not_ours = sorted(set(expected) - set(key_map))
    if missing or unexpected or wrong_shape or not_ours:
        parts = mismatch_parts(missing, sorted(unexpected), wrong_shape)
        if not_ours:
            parts.append(f"module entries without a mapping ({len(not_ours)}): {listing(not_ours)}")
        raise WeightsMismatchError(
            f"{source} does not match {type(module).__name__}"
            + (f" under prefix {prefix!r}" if prefix else "")
            + ": " + "; ".join(parts) + ". Is it the right file, and does the config describe its architecture?"
        )
    return out


def to_original_layout(state_dict: Mapping[str, Tensor], key_map: Mapping[str, str], prefix: str = "") -> dict[str, Tensor]:
    """Inverse of :func:`from_original_layout`: our state dict -> the original names and shapes."""
    out = {}
    for ours, theirs in key_map.items():
        t = state_dict[ours]
        if _is_conv1x1_in_original(theirs) and t.ndim == 2:
            t = t[:, :, None, None]
        out[prefix + theirs] = t
    return out


def load_converted(module: nn.Module, sd: Mapping[str, Tensor]) -> None:
    """load_state_dict(strict=True) after the checks above (values cast to the module's dtypes)."""
    module.load_state_dict(dict(sd), strict=True)


# ----------------------------------------------------------------------------------------------
# component loaders
# ----------------------------------------------------------------------------------------------
def _levels(vae: nn.Module) -> int:
    return len({k.split(".")[2] for k in vae.state_dict() if k.startswith("encoder.down_blocks.")})


def _text_unused_by_design(model_layers: int) -> Callable[[str], bool]:
    """The SD file's text entries we do not load: layers past the penultimate and the projection."""

    def unused(key: str) -> bool:
        if key in ("text_projection", "logit_scale", "attn_mask"):
            return True
        m = re.match(r"transformer\.resblocks\.(\d+)\.", key)
        return bool(m) and int(m.group(1)) >= model_layers

    return unused


def text_layers(text: nn.Module) -> int:
    return len({k.split(".")[2] for k in text.state_dict() if k.startswith("transformer.resblocks.")})


def load_sd_ldm(
    sd: Mapping[str, Tensor],
    *,
    unet: nn.Module,
    vae: nn.Module,
    text: nn.Module | None,
    layers_per_block: int,
    source: str,
) -> LoadReport:
    """Load an SD 2.x LDM state dict (``model.diffusion_model.`` etc.) into our modules, strictly."""
    report = LoadReport(source)
    components = [
        ("unet", unet, SD_UNET_PREFIX, unet_key_map(unet.state_dict(), layers_per_block), lambda k: False),
        ("vae", vae, SD_VAE_PREFIX, vae_key_map(vae.state_dict(), _levels(vae)), lambda k: False),
    ]
    if text is not None:
        components.append(("text", text, SD_TEXT_PREFIX, identity_key_map(text.state_dict()), _text_unused_by_design(text_layers(text))))
    for name, module, prefix, key_map, unused in components:
        if not any(k.startswith(prefix) for k in sd):
            raise WeightsMismatchError(f"{source} has no {name} weights (no key starts with {prefix!r}); is it an LDM-format SD checkpoint?")
        converted = from_original_layout(module, sd, key_map, source=source, prefix=prefix, unused_by_design=unused)
        load_converted(module, converted)
        report.loaded[name] = len(converted)
        report.unused_by_design += [k for k in sd if k.startswith(prefix) and unused(k[len(prefix):])]
    prefixes = (SD_UNET_PREFIX, SD_VAE_PREFIX, SD_TEXT_PREFIX)
    report.other_entries = sorted(k for k in sd if not k.startswith(prefixes))
    return report


def controlnet_state_dict_from_file(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The bare DiffBIR ControlNet names: strips a ``controlnet.`` / ``control_model.`` prefix."""
    for prefix in CONTROLNET_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return strip_prefix(sd, prefix)
    return dict(sd)


# What the reference's inference (diffbir/inference/loop.py, ``--version v1_refl``) reads: torch.load,
# ``sd["state_dict"]`` if present, a ``module.`` prefix stripped, then load_state_dict(strict=True).
REFERENCE_CONTROLNET_FORMS = "a plain state dict, {'state_dict': state dict}, either with every key under 'module.'"
# other layouts met in practice, named in the refusal (key prefix -> what saves it)
_OTHER_CONTROLNET_FORMS = {
    "controlnet.": "lrpo's own training save",
    "control_model.": "ControlNet's training save (a whole ControlLDM)",
    "model.diffusion_model.": "a whole LDM checkpoint (SD UNet), not a ControlNet",
    "_orig_mod.": "a torch.compile'd module's save",
}


def read_reference_controlnet(path: str | os.PathLike) -> dict[str, Tensor]:
    """A trained LRPO ControlNet (``lrpo_fidelity.pth``), read exactly as the reference's inference
    reads it (:data:`REFERENCE_CONTROLNET_FORMS`), ``weights_only`` always; any other form is
    refused with one line naming it. Key names and shapes are checked by the strict load after."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == ".safetensors":
        raise CheckpointFormatError(f"{path}: a safetensors file; the reference's inference reads torch.save files only "
                                    f"({REFERENCE_CONTROLNET_FORMS}); set policy.controlnet_format=any to read it")
    try:
        obj = load_torch_file(path, trust_pickle=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointFormatError(f"could not read {path} as a torch.save file of tensors (weights_only): "
                                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return reference_controlnet_state_dict(obj, source=str(path))


def reference_controlnet_state_dict(obj: object, *, source: str) -> dict[str, Tensor]:
    """The state dict inside ``obj`` if it is one of :data:`REFERENCE_CONTROLNET_FORMS`, else a
    :class:`~lrpo.model_files.CheckpointFormatError` naming what was found."""
    def refuse(found: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"{source}: {found}; expected what the reference's inference loads: {REFERENCE_CONTROLNET_FORMS}")

    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise refuse(f"its 'state_dict' entry is a {type(obj).__name__}, not a state dict")
    if not isinstance(obj, Mapping):
        raise refuse(f"the file holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise refuse("the state dict is empty")
    if not all(isinstance(k, str) for k in obj):
        raise refuse("some keys are not strings")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        what = "a dict of other entries (" + listing(sorted(obj)) + ")" if len(bad) == len(obj) else f"non-tensor entries {listing(bad)}"
        raise refuse(f"{what} (the reference loads the state dict strictly)")
    under_module = [k.startswith("module.") for k in obj]
    if any(under_module) and not all(under_module):
        raise refuse(f"{sum(under_module)} of {len(obj)} keys start with 'module.' (all or none may)")
    sd = {k[len("module."):]: v for k, v in obj.items()} if all(under_module) else dict(obj)
    for prefix, what in _OTHER_CONTROLNET_FORMS.items():
        first = next((k for k in sd if k.startswith(prefix)), None)
        if first is not None:
            raise refuse(f"keys under {prefix!r} ({what}; e.g. {first!r})")
    return sd


def load_diffbir_controlnet(sd: Mapping[str, Tensor], controlnet: nn.Module, *, layers_per_block: int, source: str) -> LoadReport:
    """Load a DiffBIR IRControlNet state dict (v1_face.pth) into our ConcatControlNet, strictly."""
    bare = controlnet_state_dict_from_file(sd)
    converted = from_original_layout(controlnet, bare, unet_key_map(controlnet.state_dict(), layers_per_block), source=source)
    load_converted(controlnet, converted)
    return LoadReport(source, loaded={"controlnet": len(converted)})


def load_swinir_state_dict(sd: Mapping[str, Tensor], model: nn.Module, *, source: str) -> LoadReport:
    converted = from_original_layout(model, sd, identity_key_map(model.state_dict()), source=source)
    load_converted(model, converted)
    return LoadReport(source, loaded={"swinir": len(converted)})


def load_swinir(path: str | os.PathLike, model: nn.Module, *, trust_pickle: bool = False) -> LoadReport:
    """Load DiffBIR's face_swinir_v1.ckpt (or any file of the same layout) into :class:`SwinIR`."""
    return load_swinir_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), model, source=str(path))


def init_controlnet_from_unet(controlnet: nn.Module, unet: nn.Module) -> list[str]:
    """Copy the UNet encoder into the ControlNet (DiffBIR ``load_controlnet_from_unet``).

    conv_in gets the UNet's kernel for the noisy-latent channels and zeros for the condition
    channels; the zero convolutions (the only entries the UNet lacks) are set to zero, so the
    initial ControlNet adds nothing. Returns the ControlNet keys not copied from the UNet.
    """
    src = unet.state_dict()
    own = controlnet.state_dict()
    not_copied = []
    with torch.no_grad():
        for k, v in own.items():
            if k not in src:
                if not k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")):
                    raise WeightsMismatchError(f"ControlNet entry {k} has no UNet counterpart and is not a zero convolution")
                v.zero_()
                not_copied.append(k)
                continue
            w = src[k]
            if w.shape == v.shape:
                v.copy_(w)
            elif k == "conv_in.weight" and w.shape[0] == v.shape[0] and w.shape[2:] == v.shape[2:]:
                v.zero_()
                v[:, : w.shape[1]].copy_(w)
            else:
                raise WeightsMismatchError(f"cannot initialise ControlNet {k} {tuple(v.shape)} from UNet {tuple(w.shape)}")
    return not_copied


# ----------------------------------------------------------------------------------------------
# diffusers folders
# ----------------------------------------------------------------------------------------------
_LEGACY_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _find_weights_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {stem}.safetensors / .bin (diffusers folder layout expected)")


def _modernise_vae_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.match(r"(.*mid_block\.attentions\.0\.)(query|key|value|proj_attn)(\..*)$", k)
        out[m.group(1) + _LEGACY_VAE_ATTN[m.group(2)] + m.group(3) if m else k] = v
    return out


def hf_clip_text_to_openclip(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIPTextModel names -> OpenCLIP text-tower names (q, k, v joined to in_proj)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    simple = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
            continue
        if k in ("text_model.embeddings.position_ids", "text_projection.weight"):
            continue  # a buffer of older files; the projection is unused (penultimate features)
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        if not m:
            out[k] = v  # left as is: the strict load reports it
            continue
        i, name, kind = int(m.group(1)), m.group(2), m.group(3)
        q = re.match(r"self_attn\.(q|k|v)_proj$", name)
        if q:
            qkv.setdefault((i, kind), {})[q.group(1)] = v
        elif name in layer_names:
            out[f"transformer.resblocks.{i}.{layer_names[name]}.{kind}"] = v
        else:
            out[k] = v
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsMismatchError(f"text encoder layer {i}: {kind} of q/k/v projections incomplete ({sorted(parts)})")
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def load_diffusers_folder(folder: str | os.PathLike, *, unet: nn.Module, vae: nn.Module, text: nn.Module | None) -> LoadReport:
    """Load ``unet/``, ``vae/`` (and ``text_encoder/``) of a diffusers SD 2.x folder, strictly."""
    folder = Path(folder)
    report = LoadReport(str(folder))
    parts: list[tuple[str, nn.Module, Callable[[dict], dict]]] = [
        ("unet", unet, dict),
        ("vae", vae, _modernise_vae_keys),
    ]
    stems = {"unet": ("unet", "diffusion_pytorch_model"), "vae": ("vae", "diffusion_pytorch_model"), "text": ("text_encoder", "model")}
    if text is not None:
        parts.append(("text", text, hf_clip_text_to_openclip))
    for name, module, convert in parts:
        sub, stem = stems[name]
        path = _find_weights_file(folder / sub, stem)
        sd = convert(read_checkpoint(path))
        converted = from_original_layout(module, sd, identity_key_map(module.state_dict()), source=str(path))
        load_converted(module, converted)
        report.loaded[name] = len(converted)
    return report


# ----------------------------------------------------------------------------------------------
# the empty-prompt context cache, and export
# ----------------------------------------------------------------------------------------------
def text_fingerprint(text_state: Mapping[str, Tensor]) -> str:
    """sha256 of the text tower's embeddings and final norm (identifies the weights cheaply)."""
    h = hashlib.sha256()
    for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"):
        t = text_state[k].detach().float().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def read_cached_context(path: str | os.PathLike, fingerprint: str | None) -> Tensor | None:
    """The cached [1, L, D] context, or None if absent or made from other weights."""
    path = Path(path)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            return None
        return f.get_tensor("context")


def write_cached_context(path: str | os.PathLike, context: Tensor, fingerprint: str, source: str) -> Path:
    """Write the context (float32) atomically; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({"context": context.detach().float().cpu().contiguous()}, tmp, metadata={"fingerprint": fingerprint, "source": source})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the cache from other users of the weights
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_diffbir_controlnet(state_dict: Mapping[str, Tensor], layers_per_block: int, path: str | os.PathLike) -> Path:
    """Write our ControlNet weights (LoRA merged, see LatentPolicy.controlnet_state_dict) as a
    DiffBIR-loadable file: bare LDM names, ``torch.save`` of a plain dict (as v1_face.pth)."""
    out = to_original_layout(state_dict, unet_key_map(state_dict.keys(), layers_per_block))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in out.items()}, path)
    return path


__all__ = [
    "CONTROLNET_PREFIXES",
    "LoadReport",
    "SD_TEXT_PREFIX",
    "SD_UNET_PREFIX",
    "SD_VAE_PREFIX",
    "WeightsMismatchError",
    "controlnet_state_dict_from_file",
    "from_original_layout",
    "hf_clip_text_to_openclip",
    "identity_key_map",
    "init_controlnet_from_unet",
    "load_diffbir_controlnet",
    "load_diffusers_folder",
    "load_sd_ldm",
    "load_swinir",
    "load_swinir_state_dict",
    "read_cached_context",
    "REFERENCE_CONTROLNET_FORMS",
    "read_checkpoint",
    "read_reference_controlnet",
    "reference_controlnet_state_dict",
    "save_diffbir_controlnet",
    "text_fingerprint",
    "to_original_layout",
    "unet_key_map",
    "vae_key_map",
    "write_cached_context",
]
