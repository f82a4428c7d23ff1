"""Full-reference image metrics on [0, 1] tensors, batched: PSNR and SSIM, and what every reported
column means (:data:`METRIC_DEFINITIONS`).

PSNR and SSIM as the BFR field computes them (BasicSR's ``calculate_psnr`` / ``calculate_ssim``,
used by GFPGAN, VQFR and CodeFormer's evaluation scripts):

* images are 8-bit (outputs and GT are read from, or pass through, uint8 files; the evaluation
  quantises every output to 8 bits before scoring), compared at one size;
* ``crop_border`` pixels are dropped on each side first (0 for aligned 512 px faces, the field's
  setting);
* ``space="rgb"``: the three channels (PSNR: MSE over all of them; SSIM: mean of the per-channel
  SSIMs). ``space="y"``: the BT.601 studio-range luma Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
  (R, G, B in [0, 255]; Y in [16, 235]), unrounded, as BasicSR's ``to_y_channel`` with
  ``test_y_channel=True``;
* PSNR = 10 log10(255^2 / MSE) on [0, 255] values, the same number as 10 log10(1 / MSE) on [0, 1];
* SSIM follows Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  population statistics, valid (unpadded) windows (BasicSR's ``filter2D(...)[5:-5, 5:-5]``),
  averaged over positions and channels: the same numbers as
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=...)``. SSIM is invariant to scaling the
  data and its range together, so [0, 1] with data_range 1 equals [0, 255] with 255.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..rewards.simple import ssim as _ssim

__all__ = [
    "METRIC_DEFINITIONS",
    "MetricDefinition",
    "PSNR_SPACES",
    "crop",
    "definitions_for",
    "psnr",
    "quantise_8bit",
    "ssim",
    "to_y",
]

PSNR_SPACES = ("rgb", "y")
# BT.601 studio-range luma on [0, 1] inputs: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255
Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
Y_OFFSET = 16 / 255


def quantise_8bit(x: Tensor) -> Tensor:
    """[0, 1] values rounded to the nearest of the 256 levels of an 8-bit file (clamped first)."""
    return (x.clamp(0, 1) * 255).round() / 255


def to_y(x: Tensor) -> Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B, 1, H, W] BT.601 studio-range luma in [16/255, 235/255]."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"to_y expects [B, 3, H, W] RGB, got {tuple(x.shape)}")
    w = torch.tensor(Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) + Y_OFFSET


def crop(x: Tensor, border: int) -> Tensor:
    """Drop ``border`` pixels on every side of [..., H, W]."""
    if border < 0:
        raise ValueError(f"crop_border must be >= 0, got {border}")
    return x[..., border:-border, border:-border] if border else x


def _prepare(x: Tensor, y: Tensor, space: str, crop_border: int, what: str) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if space not in PSNR_SPACES:
        raise ValueError(f"{what}: space must be one of {', '.join(PSNR_SPACES)}, got {space!r}")
    x, y = crop(x, crop_border), crop(y, crop_border)
    if space == "y":
        x, y = to_y(x), to_y(y)
    return x, y


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, eps: float = 1e-12, *, space: str = "rgb",
         crop_border: int = 0) -> Tensor:
    """Per-image PSNR in dB of [B, C, H, W] images: 10 log10(range^2 / MSE).

    space: "rgb" (all channels) or "y" (BT.601 studio-range luma of RGB input in [0, 1]; needs
    data_range 1). Identical images give 10 log10(range^2 / eps) (120 dB), finite so set means stay
    finite (BasicSR returns inf).
    """
    if space == "y" and data_range != 1.0:
        raise ValueError("psnr: space='y' converts RGB in [0, 1]; give data_range=1.0")
    x, y = _prepare(x.float(), y.float(), space, crop_border, "psnr")
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / (mse + eps))


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, *, space: str = "rgb", crop_border: int = 0) -> Tensor:
    """Per-image SSIM of [B, C, H, W] images (mean over channels and valid windows), in float32.

    The one implementation lives with the SSIM reward (:func:`lrpo.rewards.simple.ssim`); this
    name keeps metrics code independent of the reward package's layout. ``space="y"``: SSIM of the
    BT.601 studio-range luma (BasicSR's ``test_y_channel``).
    """
    if space == "y" and data_range != 1.0:
        raise ValueError("ssim: space='y' converts RGB in [0, 1]; give data_range=1.0")
    x, y = _prepare(x.float(), y.float(), space, crop_border, "ssim")
    return _ssim(x, y, data_range=data_range)


# ---------------------------------------------------------------------------------------------
# what each column means, and whether the field's published numbers measure the same thing
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricDefinition:
    definition: str  # how the number is computed here
    comparable: str  # "yes", "partly" or "no": with the field's published tables
    note: str = ""  # why not (or under which condition), when comparable is not "yes"


_FIELD_PSNR = "BasicSR's calculate_psnr / calculate_ssim as GFPGAN / VQFR / CodeFormer evaluate them"

METRIC_DEFINITIONS: dict[str, MetricDefinition] = {
    "psnr": MetricDefinition(
        "PSNR to the GT, 10 log10(255^2 / MSE) over 8-bit images at the evaluation size; {space}; crop_border {crop}",
        "yes", f"as {_FIELD_PSNR} (state the space: most BFR tables use RGB)"),
    "ssim": MetricDefinition(
        "SSIM to the GT (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, population "
        "statistics, valid windows, mean over positions and channels; 8-bit images; {space}; crop_border {crop}",
        "yes", f"as {_FIELD_PSNR}"),
    "ms_ssim": MetricDefinition(
        "multi-scale SSIM (Wang et al. 2003) on RGB, published scale weights, fewer scales below 176 px", "partly",
        "rarely reported for BFR; implementations differ in padding and channel handling"),
    "lpips": MetricDefinition(
        "LPIPS v0.1, VGG16 backbone with its linear heads, inputs RGB scaled to [-1, 1]", "yes",
        "the field's LPIPS is the lpips package's net='vgg' (some papers use AlexNet: check the paper)"),
    "id_cos": MetricDefinition(
        "cosine of SFace (OpenCV Zoo, 128-d) embeddings of output and GT at the fixed FFHQ 112x112 alignment",
        "no", "the field's identity metric uses ArcFace; SFace angles are on another scale"),
    "id_deg": MetricDefinition(
        "identity angle to the GT in degrees, arccos(cosine) of SFace embeddings (offline)", "no",
        "the field's Deg uses ArcFace (VQFR/GFPGAN: ArcFace ResNet-18 on 128x128 grey crops); ours is SFace"),
    "arcface_cos": MetricDefinition("cosine of the given ArcFace ONNX's embeddings (112x112 RGB, (x-127.5)/127.5) of output and GT",
                                    "partly", "comparable only if the ONNX is the network the paper used"),
    "arcface_deg": MetricDefinition(
        "identity angle to the GT in degrees, arccos(cosine) of the given ArcFace ONNX's embeddings", "partly",
        "VQFR/GFPGAN's Deg uses ArcFace ResNet-18 on 128x128 grey crops; another ArcFace gives other angles"),
    "id_cos_lq": MetricDefinition("cosine of SFace embeddings of output and LQ input", "no", "an lrpo diagnostic, not a field metric"),
    "id_deg_lq": MetricDefinition("identity angle to the LQ input in degrees (SFace)", "no", "an lrpo diagnostic, not a field metric"),
    "arcface_cos_lq": MetricDefinition("cosine of ArcFace embeddings of output and LQ input", "no", "an lrpo diagnostic"),
    "arcface_deg_lq": MetricDefinition("identity angle to the LQ input in degrees (ArcFace)", "no", "an lrpo diagnostic"),
    "lmd": MetricDefinition(
        "landmark distance: mean Euclidean distance of the 5 YuNet landmarks (OpenCV Zoo face_detection_yunet_2023mar) "
        "of output and GT, in pixels of a 512x512 face; images where a face is missed are left out (see LMD fails)",
        "no", "the field's LMD uses another landmark network (VQFR's script: facexlib's alignment model, 98 points)"),
    "lmd_fail": MetricDefinition("images where YuNet found no face in the output or the GT (count)", "no", "lrpo bookkeeping"),
    "fid": MetricDefinition(
        "FID (Heusel et al. 2017) of the outputs' pytorch-fid Inception v3 pool features against the reference set's "
        "(the GT set unless --fid-ref is given), unbiased covariances", "partly",
        "comparable only with the same reference statistics (the field: FFHQ 70k at 512 px) and a similar N"),
    "sharpness": MetricDefinition("lrpo's no-reference detail score with a noise penalty, [0, 1)", "no", "an lrpo score"),
    "noise": MetricDefinition("estimated white-noise std in 8-bit levels (Donoho MAD on the Haar diagonal band)", "no",
                              "an lrpo diagnostic"),
    "clipiqa": MetricDefinition("CLIP-IQA (Wang et al. 2023) with CLIP RN50 and 5 antonym prompt pairs", "partly",
                                "pyiqa's clipiqa uses the same prompts; clipiqa+ (learnt prompts) is another metric"),
    "niqe": MetricDefinition(
        "NIQE (Mittal et al. 2013): 96x96 blocks at two scales, 36 NSS features per block, Mahalanobis-like "
        "distance to the pristine Gaussian of the LIVE release (BasicSR 1.4.2's niqe_pris_params.npz); input "
        "{niqe_channel}; crop_border {crop}", "yes",
        "matches the MATLAB release to 0.6 % on published images; BasicSR uses the Y channel, pyiqa grey: state which"),
    "brisque": MetricDefinition(
        "BRISQUE (Mittal et al. 2012): 36 NSS features at two scales scored by the LIVE release's SVR (allmodel, "
        "allrange) on the MATLAB rgb2gray image", "yes",
        "the LIVE release's model as pyiqa's brisque uses; within 3 % of MATLAB's on published images"),
    "piqe": MetricDefinition(
        "PIQE (Venkatanath et al. 2015) with MATLAB piqe's settings: 16x16 blocks, activity 0.1, edge-segment "
        "threshold 0.1, 6-pixel segments, on the rgb2gray image", "yes",
        "equals MATLAB's piqe to its published 2 decimals"),
}


def definitions_for(keys: Sequence[str], *, space: str = "rgb", crop_border: int = 0,
                    niqe_channel: str = "y", extra: Mapping[str, MetricDefinition] | None = None) -> dict[str, dict[str, Any]]:
    """{key: {"definition", "comparable", "note"}} for the reported keys, with this run's settings
    filled in; reward terms get a generic definition (they are lrpo's own scores)."""
    space_text = {"rgb": "RGB, all three channels",
                  "y": "Y channel (BT.601 studio range, 16 + 65.481 R + 128.553 G + 24.966 B)"}[space]
    channel_text = {"y": "Y channel (BT.601, rounded; BasicSR)", "gray": "grey (MATLAB rgb2gray, rounded; LIVE release, pyiqa)"}[niqe_channel]
    table = {**METRIC_DEFINITIONS, **(extra or {})}
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        if key in table:
            d = table[key]
            text = d.definition.format(space=space_text, crop=crop_border, niqe_channel=channel_text)
            out[key] = asdict(MetricDefinition(text, d.comparable, d.note))
        elif key.startswith("reward/"):
            term = key.split("/", 1)[1]
            what = "the weighted total of the composite reward" if term == "total" else f"the raw score of reward term {term!r}"
            out[key] = asdict(MetricDefinition(f"{what} (lrpo.rewards)", "no", "lrpo's training reward, not a field metric"))
        else:
            out[key] = asdict(MetricDefinition(key, "no", "no definition recorded"))
    return out
