"""LPIPS v0.1 with the VGG16 backbone (Zhang et al., CVPR 2018), loading the published files.

Notation (for one image pair x0, x1 in [-1, 1]):
  s(x)        = (x - shift) / scale                       input scaling layer (constants below)
  f_l(x)      = VGG16 activation after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (l = 0..4),
                shape [C_l, H_l, W_l] with C = (64, 128, 256, 512, 512)
  n(f)        = f / (||f||_2 over channels + 1e-10)       unit-normalised per pixel
  w_l         = the learned non-negative weights of layer l, shape [C_l]  (file vgg.pth)
  LPIPS(x0,x1) = sum_l mean_{h,w} sum_c w_l[c] * (n(f_l(s(x0))) - n(f_l(s(x1))))[c,h,w]^2

Files (both are needed; neither ships with this package):
  * ``vgg16-imagenet``  torchvision's ImageNet VGG16, ``vgg16-397923af.pth``: keys
    ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}`` (the ``classifier.*`` keys
    are ignored).
  * ``lpips-vgg-v0.1``  the linear heads of the ``lpips`` package, ``weights/v0.1/vgg.pth``:
    keys ``lin{0..4}.model.1.weight`` of shape [1, C_l, 1, 1] (index 1 because the package's
    head is ``Sequential(Dropout, Conv2d)``).

The conv widths are read from the VGG file (the published one gives VGG16's own; smaller
stand-ins of the same layout, see :mod:`lrpo.standins`, load as well); the heads must match them.

Inputs of :class:`LPIPS` are in [-1, 1] (the ``lpips`` package's convention); convert images
in [0, 1] with ``2 * x - 1`` (:class:`LPIPSReward` does this for you).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..weights import WeightFile, register, resolve
from .base import BaseReward, RewardInput, RewardOutput
from ..model_files import freeze, load_state_dict_strict, read_state_dict
from ..precision import autocast_factory
from .registry import register_reward

__all__ = [
    "LPIPS",
    "LPIPSReward",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "VGG16Features",
    "VGG16_WIDTHS",
    "lpips_from_features",
    "normalize_channels",
    "vgg16_widths_from_state_dict",
]

VGG16_WEIGHTS = register(
    WeightFile(
        "vgg16-imagenet",
        "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "BSD-3-Clause (torchvision)",
        "torchvision VGG16 ImageNet classifier; its conv layers are the LPIPS backbone",
        # torchvision names files by the first 8 hex digits of their sha256; the full value is the
        # one public training scripts pin for this file (not hashed here: no copy reachable).
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        528.0,
        container="torch",
    )
)
LPIPS_VGG_WEIGHTS = register(
    WeightFile(
        "lpips-vgg-v0.1",
        "vgg.pth",
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
        "BSD-2-Clause",
        "LPIPS v0.1 linear heads for the VGG16 backbone (lpips package, weights/v0.1/vgg.pth)",
        # hashed here from the copy inside the lpips 0.1.4 wheel on PyPI
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        0.007,
        container="torch",
    )
)

# Input scaling of LPIPS v0.1: maps [-1, 1] images to roughly ImageNet-normalised values
# ((x + 1) / 2 - mean) / std with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # added to the channel norm, as in the lpips package

# torchvision's vgg16().features: "M" is a 2x2 max-pool; every conv is 3x3, padding 1, + ReLU.
_VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# out channels of the 13 convolutions (the published file's); other widths come from a file's shapes
VGG16_WIDTHS = tuple(int(c) for c in _VGG16_PLAN if c != "M")
# index in ``features`` of each convolution (the file's key numbers: features.0, features.2, ...)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# index in ``features`` of the ReLU after which LPIPS taps a feature map (relu1_2 ... relu5_3)
VGG16_TAPS = (3, 8, 15, 22, 29)
_TAPPED_CONVS = (1, 3, 6, 9, 12)  # which of the 13 convolutions feed those ReLUs
VGG16_CHANNELS = tuple(VGG16_WIDTHS[i] for i in _TAPPED_CONVS)  # (64, 128, 256, 512, 512)


def vgg16_widths_from_state_dict(state_dict: dict[str, Tensor]) -> tuple[int, ...]:
    """The 13 conv widths of a torchvision-layout VGG16 state dict (published widths where a key is
    absent, so that the strict load names what is missing)."""
    return tuple(
        int(state_dict[k].shape[0]) if (k := f"features.{i}.weight") in state_dict and state_dict[k].ndim == 4 else w
        for i, w in zip(VGG16_CONV_INDICES, VGG16_WIDTHS)
    )


class VGG16Features(nn.Module):
    """Convolutional part of torchvision's VGG16, up to relu5_3, with its module indices.

    widths: out channels of the 13 convolutions (default: the published VGG16's).
    forward(x: [B, 3, H, W], already scaled) -> list of 5 feature maps [B, C_l, H / 2^l, W / 2^l].
    """

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS) -> None:
        super().__init__()
        if len(widths) != len(VGG16_WIDTHS):
            raise ValueError(f"VGG16 has {len(VGG16_WIDTHS)} convolutions, got {len(widths)} widths")
        self.widths = tuple(int(w) for w in widths)
        layers: list[nn.Module] = []
        channels = 3
        convs = iter(self.widths)
        for item in _VGG16_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                width = next(convs)
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        assert len(self.features) == VGG16_TAPS[-1] + 1

    @property
    def tapped_channels(self) -> tuple[int, ...]:
        return tuple(self.widths[i] for i in _TAPPED_CONVS)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                taps.append(x)
        return taps

    def load_torchvision(self, state_dict: dict[str, Tensor], source: str = "VGG16 state dict") -> None:
        """Load a torchvision ``vgg16`` state dict strictly; its ``classifier.*`` keys are skipped."""
        load_state_dict_strict(self, state_dict, source=source, ignore=lambda k: k.startswith("classifier."))


class _LinearHead(nn.Module):
    """One learned 1x1 conv C_l -> 1 without bias, named as in the lpips package (``model.1``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # The Dropout slot only keeps the key index at 1; it is the identity in eval mode.
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


def normalize_channels(feat: Tensor, eps: float = NORM_EPS) -> Tensor:
    """feat / (L2 norm over dim 1 + eps); feat [B, C, H, W] -> same shape, float32."""
    feat = feat.float()
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def lpips_from_features(feats0: Sequence[Tensor], feats1: Sequence[Tensor], weights: Sequence[Tensor]) -> Tensor:
    """LPIPS from the tapped feature maps of both images; returns [B] float32.

    feats0[l], feats1[l]: [B, C_l, H_l, W_l];  weights[l]: [C_l] (or the [1, C_l, 1, 1] conv weight).
    Sum over layers of the spatial mean of sum_c w[c] * (n(f0) - n(f1))^2.
    """
    if not len(feats0) == len(feats1) == len(weights):
        raise ValueError(f"need one weight per layer: {len(feats0)}, {len(feats1)}, {len(weights)} given")
    total = None
    for f0, f1, w in zip(feats0, feats1, weights):
        diff2 = (normalize_channels(f0) - normalize_channels(f1)).pow(2)
        w = w.reshape(1, -1, 1, 1).float()
        layer = (diff2 * w).sum(dim=1).mean(dim=(1, 2))
        total = layer if total is None else total + layer
    return total


class LPIPS(nn.Module):
    """LPIPS v0.1, VGG16 backbone. forward(x0, x1: [B, 3, H, W] in [-1, 1]) -> [B] float32 >= 0.

    State dict: ``net.features.*`` (torchvision layout) and ``lin{0..4}.model.1.weight`` (lpips
    layout); use :meth:`from_files` to load the two published files strictly.
    """

    def __init__(self, widths: tuple[int, ...] = VGG16_WIDTHS) -> None:
        super().__init__()
        self.net = VGG16Features(widths)
        for i, c in enumerate(self.net.tapped_channels):
            self.add_module(f"lin{i}", _LinearHead(c))
        # Non-persistent: constants of the method, not part of either published file.
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    @property
    def lin_weights(self) -> list[Tensor]:
        return [getattr(self, f"lin{i}").model[1].weight for i in range(len(VGG16_CHANNELS))]

    def heads(self) -> nn.Module:
        """A view holding only the ``lin*`` modules, i.e. the layout of ``vgg.pth``."""
        view = nn.Module()
        for i in range(len(VGG16_CHANNELS)):
            view.add_module(f"lin{i}", getattr(self, f"lin{i}"))
        return view

    @classmethod
    def from_files(cls, vgg_path: str | os.PathLike, lin_path: str | os.PathLike) -> "LPIPS":
        """Build from torchvision's ``vgg16-397923af.pth`` and lpips' ``weights/v0.1/vgg.pth``.

        The conv widths come from the VGG file's shapes (the published file gives VGG16's own);
        both files are then loaded strictly (missing/unexpected keys or shapes raise
        StateDictMismatchError). The model is returned frozen (eval mode, no gradients).
        """
        vgg = read_state_dict(vgg_path)
        model = cls(vgg16_widths_from_state_dict(vgg))
        model.net.load_torchvision(vgg, source=str(vgg_path))
        load_state_dict_strict(model.heads(), read_state_dict(lin_path), source=str(lin_path))
        return freeze(model)

    def features(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] in [-1, 1] -> the 5 tapped VGG feature maps."""
        return self.net((x - self.shift.to(x.dtype)) / self.scale.to(x.dtype))

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [B, 3, H, W] batches of one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        # One backbone pass over both images halves the kernel launches.
        feats = self.features(torch.cat([x0, x1], dim=0))
        b = x0.shape[0]
        return lpips_from_features([f[:b] for f in feats], [f[b:] for f in feats], self.lin_weights)


class LPIPSReward(BaseReward):
    """Score = 1 - LPIPS_vgg(x, GT) on [-1, 1] images (SPEC section 4). Needs the ground truth.

    details: ``{"lpips": [B]}`` (the distance itself).
    precision: "fp32", or "bf16" (autocast of the backbone; CUDA only). The normalisation and the
    weighted sum always run in float32.
    """

    name = "lpips"
    needs_gt = True

    def __init__(self, model: LPIPS, device: torch.device | str = "cpu", precision: str = "fp32"):
        super().__init__(device)
        self.autocast = autocast_factory(self.device, precision)
        self.model = freeze(model.to(self.device))

    @classmethod
    def from_registry(
        cls,
        vgg_path: str | os.PathLike | None = None,
        lin_path: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> "LPIPSReward":
        """Locate both files through the weights registry (explicit paths win) and build the reward."""
        model = LPIPS.from_files(resolve(VGG16_WEIGHTS.name, vgg_path), resolve(LPIPS_VGG_WEIGHTS.name, lin_path))
        return cls(model, device=device, precision=precision)

    def score(self, inp: RewardInput) -> RewardOutput:
        x = inp.images.clamp(0, 1) * 2 - 1
        gt = inp.gt.clamp(0, 1) * 2 - 1
        with self.autocast():
            dist = self.model(x, gt).float()
        return RewardOutput(1.0 - dist, {"lpips": dist})


register_reward("lpips", LPIPSReward.from_registry)
