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

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..rewards.checkpoint_io import freeze, load_state_dict_strict, read_state_dict
from ..weights import WeightFile, register, resolve

__all__ = [
    "FID_FEATURE_DIM",
    "INCEPTION_FID_WEIGHTS",
    "InceptionFeatures",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "psd_sqrt",
]

INCEPTION_FID_WEIGHTS = register(
    WeightFile(
        "inception-fid",
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "Apache-2.0 (pytorch-fid; weights converted from TensorFlow's Inception 2015-12-05)",
        "Inception v3 of FID (TF 2015-12-05 graph) in torchvision layout, 1008-way fc; 2048-d pool features",
        None,  # not pinned: no copy reachable here to hash (torch hub names carry 6726825d, its sha256 prefix)
        91.2,
    )
)
FID_FEATURE_DIM = 2048
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


class _InceptionA(nn.Module):
    """Mixed_5b/5c/5d (35 x 35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 224 + pool_features."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(cin, 64, 1)
        self.branch5x5_1 = _ConvBN(cin, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(cin, pool_features, 1)

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
    """Mixed_6a, 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 384 + 96 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

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
    """Mixed_6b..6e (17 x 17), factorised 7x7 convolutions: four branches of 192 -> 768."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _ConvBN(cin, 192, 1)
        self.branch7x7_1 = _ConvBN(cin, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, **row)
        self.branch7x7_3 = _ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, **row)
        self.branch_pool = _ConvBN(cin, 192, 1)

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
    """Mixed_7a, 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 320 + 192 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(cin, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    """Mixed_7b/7c (8 x 8): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 -> 2048.

    ``max_pool=True`` (Mixed_7c in the FID graph) max-pools the pool branch instead of averaging.
    """

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(cin, 320, 1)
        self.branch3x3_1 = _ConvBN(cin, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(cin, 192, 1)

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


class InceptionFeatures(nn.Module):
    """FID's Inception v3 up to the 2048-d global average pool.

    forward(images [B, 3, H, W] RGB in [0, 1], any size) -> [B, 2048] float32.

    The state dict has torchvision's Inception3 names and a 1008-way ``fc`` (kept so the published
    file loads strictly; unused by FID).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32)
        self.Mixed_5c = _InceptionA(256, 64)
        self.Mixed_5d = _InceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128)
        self.Mixed_6c = _InceptionC(768, 160)
        self.Mixed_6d = _InceptionC(768, 160)
        self.Mixed_6e = _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FID_FEATURE_DIM, 1008)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects [B, 3, H, W] RGB in [0, 1], got {tuple(images.shape)}")
        x = F.interpolate(images.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "InceptionFeatures":
        """Load pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` strictly; returned frozen."""
        model = cls()
        load_state_dict_strict(
            model,
            read_state_dict(path),
            source=str(path),
            may_be_missing=lambda key: key.endswith("num_batches_tracked"),
        )
        return freeze(model)

    @classmethod
    def from_registry(cls, path: str | os.PathLike | None = None) -> "InceptionFeatures":
        """Locate the file (explicit path, ``$LRPO_WEIGHTS``, cache) or raise MissingWeightsError."""
        return cls.from_file(resolve(INCEPTION_FID_WEIGHTS.name, path))
