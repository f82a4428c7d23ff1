"""Frechet Inception Distance: the Gaussian maths, and the Inception v3 feature extractor of FID.

Maths (Heusel et al. 2017). With features of two image sets summarised by their means mu_1, mu_2
and covariances S_1, S_2 (a Gaussian fitted to each set), the squared Frechet (2-Wasserstein)
distance between the two Gaussians is

    FID = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}).

tr((S_1 S_2)^{1/2}) is computed as tr((A S_2 A)^{1/2}) with A = S_1^{1/2}: S_1 S_2 = A (A S_2 A) A^{-1}
is similar to the symmetric positive semi-definite A S_2 A, so both have the same (real,
non-negative) eigenvalues lambda_k, and the trace of the square root is sum_k sqrt(lambda_k). Two
symmetric eigendecompositions in float64 replace a general matrix square root, so no complex
parts appear when a covariance is singular (fewer images than feature dimensions).

Features: the 2048-d average-pooled activations of the Inception v3 network that FID was defined
with (TensorFlow's 2015-12-05 graph), in the PyTorch port most papers' numbers come from
(pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, registry name ``inception-fid``). Its
state dict uses torchvision's Inception3 names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1
.bn.running_mean``, ... and a 1008-way ``fc`` that FID does not use). The network differs from
torchvision's ImageNet Inception v3 in the pooling of four blocks (see :class:`_InceptionA` etc.):
average pools exclude the zero padding from their mean, and the last block max-pools its pool
branch. Inputs: RGB in [0, 1], resized bilinearly to 299 x 299 and scaled to [-1, 1].

Set statistics use the unbiased covariance (``np.cov``, N - 1 in the denominator), as the
reference implementations do. FID is biased upwards for small sets (it depends on N; published
numbers use thousands of images), so values from a few hundred faces are only comparable with each
other at the same N.
"""

from __future__ import annotations

from dataclasses import dataclass

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model_files import freeze, load_state_dict_strict, read_state_dict
from ..weights import WeightFile, register, resolve

__all__ = [
    "FID_FEATURE_DIM",
    "FID_INCEPTION_WIDTHS",
    "INCEPTION_FID_WEIGHTS",
    "InceptionFeatures",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_widths_from_state_dict",
    "psd_sqrt",
]

INCEPTION_FID_WEIGHTS = register(
    WeightFile(
        "inception-fid",
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "Apache-2.0 (pytorch-fid; weights converted from TensorFlow's Inception 2015-12-05)",
        "Inception v3 of FID (TF 2015-12-05 graph) in torchvision layout, 1008-way fc; 2048-d pool features",
        None,
        91.2,
        container="torch",
        unpinned_reason="a GitHub release asset with no published sha256; no copy was reachable here to hash (torch "
        "hub names carry 6726825d, unconfirmed as its sha256 prefix, so not checked)",
    )
)
FID_FEATURE_DIM = 2048  # pool features of the published network (InceptionFeatures.feature_dim)
INCEPTION_SIZE = 299  # input side of Inception v3
BN_EPS = 1e-3  # BatchNorm epsilon of every conv block in the converted TF graph


# ---------------------------------------------------------------------------------------------
# maths (pure functions)
# ---------------------------------------------------------------------------------------------
def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (tiny negative
    eigenvalues from rounding are set to 0)."""
    m = np.asarray(matrix, np.float64)
    m = (m + m.T) / 2
    vals, vecs = np.linalg.eigh(m)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring).

    Args:
        mu1, mu2: [D] means. sigma1, sigma2: [D, D] covariances (D = 1 accepted as scalars/[1]).
    Returns:
        A float >= 0 (clipped at 0 against rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape} "
            f"do not describe two Gaussians of one dimension"
        )
    a = psd_sqrt(s1)
    inner = a @ s2 @ a
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(value, 0.0)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, D]`` features -> (mean ``[D]``, unbiased covariance ``[D, D]``), float64. Needs N >= 2."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_statistics needs [N, D] features with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


@dataclass(frozen=True)
class ReferenceStats:
    """FID reference statistics: mean and covariance of the reference set's Inception features."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int  # reference images
    resolution: int | None  # side they were resized to before Inception (None: unknown, from a foreign .npz)
    source: str  # folder or .npz they came from


def save_reference_stats(path: str | os.PathLike, stats: ReferenceStats) -> Path:
    """Write ``mu``/``sigma`` (pytorch-fid's .npz keys) plus count, resolution and source, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, count=stats.count, resolution=-1 if stats.resolution is None else stats.resolution,
             source=stats.source)
    os.replace(tmp, path)
    return path


def load_reference_stats(path: str | os.PathLike) -> ReferenceStats:
    """Read a .npz with ``mu`` and ``sigma`` (ours, or pytorch-fid's ``--save-stats`` output)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
            count = int(f["count"]) if "count" in f else 0
            res = int(f["resolution"]) if "resolution" in f else -1
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not FID statistics (expected a .npz with arrays 'mu' [D] and 'sigma' [D, D]): {e}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: 'mu' must be [D] and 'sigma' [D, D], got {mu.shape} and {sigma.shape}")
    for key, value in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(value).all():  # else the matrix square root fails far from the file's name
            bad = int((~np.isfinite(value)).sum())
            raise ValueError(f"{path}: '{key}' holds {bad} NaN or infinite value(s); expected finite statistics")
    return ReferenceStats(mu, sigma, count, None if res < 0 else res, str(path))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets ``[N_a, D]`` and ``[N_b, D]``."""
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


# ---------------------------------------------------------------------------------------------
# the FID Inception v3 (torchvision names, pytorch-fid's pooling)
# ---------------------------------------------------------------------------------------------
class _ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; state dict keys ``conv.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: Tensor) -> Tensor:
    # The TF graph's average pools divide by the number of real (unpadded) pixels in the window.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


# Out channels of every convolution of the published network (torchvision Inception3 names, the
# key prefixes of its state dict, without ".conv.weight"). A file of other widths (a stand-in, see
# lrpo.standins) is built from its own shapes (:func:`inception_widths_from_state_dict`).
def _a(pool: int) -> dict[str, int]:
    return {"branch1x1": 64, "branch5x5_1": 48, "branch5x5_2": 64, "branch3x3dbl_1": 64, "branch3x3dbl_2": 96,
            "branch3x3dbl_3": 96, "branch_pool": pool}


def _c(c7: int) -> dict[str, int]:
    return {"branch1x1": 192, "branch7x7_1": c7, "branch7x7_2": c7, "branch7x7_3": 192, "branch7x7dbl_1": c7,
            "branch7x7dbl_2": c7, "branch7x7dbl_3": c7, "branch7x7dbl_4": c7, "branch7x7dbl_5": 192, "branch_pool": 192}


_E = {"branch1x1": 320, "branch3x3_1": 384, "branch3x3_2a": 384, "branch3x3_2b": 384, "branch3x3dbl_1": 448,
      "branch3x3dbl_2": 384, "branch3x3dbl_3a": 384, "branch3x3dbl_3b": 384, "branch_pool": 192}
_BLOCK_WIDTHS: dict[str, dict[str, int]] = {
    "Mixed_5b": _a(32), "Mixed_5c": _a(64), "Mixed_5d": _a(64),
    "Mixed_6a": {"branch3x3": 384, "branch3x3dbl_1": 64, "branch3x3dbl_2": 96, "branch3x3dbl_3": 96},
    "Mixed_6b": _c(128), "Mixed_6c": _c(160), "Mixed_6d": _c(160), "Mixed_6e": _c(192),
    "Mixed_7a": {"branch3x3_1": 192, "branch3x3_2": 320, "branch7x7x3_1": 192, "branch7x7x3_2": 192,
                 "branch7x7x3_3": 192, "branch7x7x3_4": 192},
    "Mixed_7b": dict(_E), "Mixed_7c": dict(_E),
}
FID_INCEPTION_WIDTHS: dict[str, int] = {
    "Conv2d_1a_3x3": 32, "Conv2d_2a_3x3": 32, "Conv2d_2b_3x3": 64, "Conv2d_3b_1x1": 80, "Conv2d_4a_3x3": 192,
    **{f"{block}.{conv}": c for block, convs in _BLOCK_WIDTHS.items() for conv, c in convs.items()},
}
FID_FC_CLASSES = 1008  # the TF graph's classifier (1001 classes padded); unused by FID


def inception_widths_from_state_dict(state_dict: dict[str, Tensor]) -> dict[str, int]:
    """Conv widths of an Inception state dict (the published widths where a key is absent, so the
    strict load names what is missing)."""
    return {
        name: int(state_dict[k].shape[0]) if (k := f"{name}.conv.weight") in state_dict and state_dict[k].ndim == 4 else c
        for name, c in FID_INCEPTION_WIDTHS.items()
    }


class _InceptionA(nn.Module):
    """Mixed_5b/5c/5d (35 x 35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (224 + pool_features)."""

    def __init__(self, cin: int, w: dict[str, int]):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, w["branch1x1"], 1)
        self.branch5x5_1 = _ConvBN(cin, w["branch5x5_1"], 1)
        self.branch5x5_2 = _ConvBN(w["branch5x5_1"], w["branch5x5_2"], 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, w["branch3x3dbl_1"], 1)
        self.branch3x3dbl_2 = _ConvBN(w["branch3x3dbl_1"], w["branch3x3dbl_2"], 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(w["branch3x3dbl_2"], w["branch3x3dbl_3"], 3, padding=1)
        self.branch_pool = _ConvBN(cin, w["branch_pool"], 1)
        self.out_channels = w["branch1x1"] + w["branch5x5_2"] + w["branch3x3dbl_3"] + w["branch_pool"]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_3x3(x)),
            ],
            1,
        )


class _InceptionB(nn.Module):
    """Mixed_6a, 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (384 + 96 + cin)."""

    def __init__(self, cin: int, w: dict[str, int]):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, w["branch3x3"], 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, w["branch3x3dbl_1"], 1)
        self.branch3x3dbl_2 = _ConvBN(w["branch3x3dbl_1"], w["branch3x3dbl_2"], 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(w["branch3x3dbl_2"], w["branch3x3dbl_3"], 3, stride=2)
        self.out_channels = w["branch3x3"] + w["branch3x3dbl_3"] + cin

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _InceptionC(nn.Module):
    """Mixed_6b..6e (17 x 17), factorised 7x7 convolutions: four branches of 192 (768)."""

    def __init__(self, cin: int, w: dict[str, int]):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, w["branch1x1"], 1)
        self.branch7x7_1 = _ConvBN(cin, w["branch7x7_1"], 1)
        self.branch7x7_2 = _ConvBN(w["branch7x7_1"], w["branch7x7_2"], **row)
        self.branch7x7_3 = _ConvBN(w["branch7x7_2"], w["branch7x7_3"], **col)
        self.branch7x7dbl_1 = _ConvBN(cin, w["branch7x7dbl_1"], 1)
        for k, kind in zip(range(2, 6), (col, row, col, row)):
            setattr(self, f"branch7x7dbl_{k}", _ConvBN(w[f"branch7x7dbl_{k - 1}"], w[f"branch7x7dbl_{k}"], **kind))
        self.branch_pool = _ConvBN(cin, w["branch_pool"], 1)
        self.out_channels = w["branch1x1"] + w["branch7x7_3"] + w["branch7x7dbl_5"] + w["branch_pool"]

    def forward(self, x: Tensor) -> Tensor:
        dbl = x
        for k in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{k}")(dbl)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool_3x3(x)),
            ],
            1,
        )


class _InceptionD(nn.Module):
    """Mixed_7a, 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 (320 + 192 + cin)."""

    def __init__(self, cin: int, w: dict[str, int]):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, w["branch3x3_1"], 1)
        self.branch3x3_2 = _ConvBN(w["branch3x3_1"], w["branch3x3_2"], 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, w["branch7x7x3_1"], 1)
        self.branch7x7x3_2 = _ConvBN(w["branch7x7x3_1"], w["branch7x7x3_2"], (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(w["branch7x7x3_2"], w["branch7x7x3_3"], (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(w["branch7x7x3_3"], w["branch7x7x3_4"], 3, stride=2)
        self.out_channels = w["branch3x3_2"] + w["branch7x7x3_4"] + cin

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    """Mixed_7b/7c (8 x 8): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (2048).

    ``max_pool=True`` (Mixed_7c in the FID graph) max-pools the pool branch instead of averaging.
    """

    def __init__(self, cin: int, w: dict[str, int], max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, w["branch1x1"], 1)
        self.branch3x3_1 = _ConvBN(cin, w["branch3x3_1"], 1)
        self.branch3x3_2a = _ConvBN(w["branch3x3_1"], w["branch3x3_2a"], (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(w["branch3x3_1"], w["branch3x3_2b"], (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, w["branch3x3dbl_1"], 1)
        self.branch3x3dbl_2 = _ConvBN(w["branch3x3dbl_1"], w["branch3x3dbl_2"], 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(w["branch3x3dbl_2"], w["branch3x3dbl_3a"], (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(w["branch3x3dbl_2"], w["branch3x3dbl_3b"], (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, w["branch_pool"], 1)
        self.out_channels = sum(w[k] for k in ("branch1x1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_3a",
                                               "branch3x3dbl_3b", "branch_pool"))

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


_BLOCKS = (("Mixed_5b", _InceptionA), ("Mixed_5c", _InceptionA), ("Mixed_5d", _InceptionA), ("Mixed_6a", _InceptionB),
           ("Mixed_6b", _InceptionC), ("Mixed_6c", _InceptionC), ("Mixed_6d", _InceptionC), ("Mixed_6e", _InceptionC),
           ("Mixed_7a", _InceptionD), ("Mixed_7b", _InceptionE), ("Mixed_7c", _InceptionE))


class InceptionFeatures(nn.Module):
    """FID's Inception v3 up to the global average pool.

    forward(images [B, 3, H, W] RGB in [0, 1], any size) -> [B, feature_dim] float32 (2048 for the
    published widths; ``widths`` maps conv names to out channels, default FID_INCEPTION_WIDTHS).

    The state dict has torchvision's Inception3 names and a 1008-way ``fc`` (kept so the published
    file loads strictly; unused by FID).
    """

    def __init__(self, widths: dict[str, int] | None = None, fc_classes: int = FID_FC_CLASSES) -> None:
        super().__init__()
        w = {**FID_INCEPTION_WIDTHS, **(widths or {})}
        stem = ("Conv2d_1a_3x3", 3, 2, 0), ("Conv2d_2a_3x3", 3, 1, 0), ("Conv2d_2b_3x3", 3, 1, 1), ("Conv2d_3b_1x1", 1, 1, 0), ("Conv2d_4a_3x3", 3, 1, 0)
        cin = 3
        for name, kernel, stride, padding in stem:
            setattr(self, name, _ConvBN(cin, w[name], kernel, stride=stride, padding=padding))
            cin = w[name]
        for name, block in _BLOCKS:
            bw = {k[len(name) + 1:]: c for k, c in w.items() if k.startswith(name + ".")}
            module = block(cin, bw, max_pool=name == "Mixed_7c") if block is _InceptionE else block(cin, bw)
            setattr(self, name, module)
            cin = module.out_channels
        self.feature_dim = cin
        self.fc = nn.Linear(cin, fc_classes)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects [B, 3, H, W] RGB in [0, 1], got {tuple(images.shape)}")
        x = F.interpolate(images.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name, _ in _BLOCKS:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "InceptionFeatures":
        """Load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` strictly; returned frozen.

        Conv widths and the fc size come from the file's shapes (the published file's are the
        network's own), so a smaller file in the same layout loads too."""
        sd = read_state_dict(path)
        fc = sd.get("fc.weight")
        model = cls(inception_widths_from_state_dict(sd), int(fc.shape[0]) if fc is not None and fc.ndim == 2 else FID_FC_CLASSES)
        load_state_dict_strict(
            model,
            sd,
            source=str(path),
            may_be_missing=lambda key: key.endswith("num_batches_tracked"),
        )
        return freeze(model)

    @classmethod
    def from_registry(cls, path: str | os.PathLike | None = None) -> "InceptionFeatures":
        """Locate the file (explicit path, ``$LRPO_WEIGHTS``, cache) or raise MissingWeightsError."""
        return cls.from_file(resolve(INCEPTION_FID_WEIGHTS.name, path))
