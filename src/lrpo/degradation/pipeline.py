"""The blind-face-restoration degradation (SPEC section 7), batched in torch.

For each HQ face ``x`` (float ``[3, H, W]`` in [0, 1]) with parameters ``p``:

1. blur:        ``x * k(p.sigma_x, p.sigma_y, p.angle)``, a ``cfg.kernel_size`` Gaussian kernel,
                reflect-101 borders (cv2's default);
2. downsample:  bilinear to ``round(H / p.scale) x round(W / p.scale)`` (at least 1 px), cv2
                INTER_LINEAR semantics, no antialiasing;
3. noise:       ``+ N(0, (p.noise_sigma / 255)^2)`` per pixel and colour channel, clamp to [0, 1];
4. JPEG:        quantise to uint8, encode/decode with OpenCV at ``p.jpeg_quality`` (on the CPU);
5. resize back: bilinear to the output size.

:func:`degrade_cv2` is the same degradation written per image with OpenCV/numpy: the reference
the torch code is tested against, and the baseline of ``bench/degradation_throughput.py``.

Randomness: parameters and noise are drawn only from the ``torch.Generator`` passed in (or one
generator per sample), never from global state. For a given generator state the output is
reproducible; the group rule of SPEC section 3 (all G candidates see the identical LQ) is
:func:`degrade_group`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch import Tensor

from lrpo.config import DegradationConfig
from lrpo.degradation.kernels import gaussian_kernels
from lrpo.degradation.ops import (
    add_gaussian_noise,
    blur,
    jpeg_roundtrip,
    quantize_uint8,
    resize_bilinear,
    scaled_size,
)

GeneratorArg = Union[torch.Generator, Sequence[torch.Generator]]
SizeArg = Union[int, tuple[int, int], None]


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DegradationParams:
    """The drawn parameters of one degradation. Units: pixels, radians, 1/255, JPEG quality."""

    kernel: Literal["iso", "aniso"]  # isotropic: sigma_x == sigma_y and angle == 0
    sigma_x: float  # blur std along the kernel's first axis, pixels
    sigma_y: float  # blur std along the kernel's second axis, pixels
    angle: float  # rotation of the kernel axes, radians (0 for iso)
    scale: float  # downsampling factor s: the LQ is round(H / s) pixels high before resizing back
    noise_sigma: float  # Gaussian noise std in units of 1/255
    jpeg_quality: int  # 1..100

    def __post_init__(self) -> None:
        if self.kernel not in ("iso", "aniso"):
            raise ValueError(f"DegradationParams.kernel must be 'iso' or 'aniso', got {self.kernel!r}")
        for name in ("sigma_x", "sigma_y", "angle", "scale", "noise_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"DegradationParams.{name} must be a finite number, got {value!r}")
        if not (self.sigma_x > 0 and self.sigma_y > 0):
            raise ValueError(f"DegradationParams sigmas must be > 0, got {self.sigma_x}, {self.sigma_y}")
        if self.kernel == "iso" and (self.sigma_x != self.sigma_y or self.angle != 0):
            raise ValueError(
                f"an 'iso' kernel needs sigma_x == sigma_y and angle == 0, got "
                f"{self.sigma_x}, {self.sigma_y}, {self.angle}"
            )
        if not self.scale > 0:
            raise ValueError(f"DegradationParams.scale must be > 0, got {self.scale}")
        if self.noise_sigma < 0:
            raise ValueError(f"DegradationParams.noise_sigma must be >= 0, got {self.noise_sigma}")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"DegradationParams.jpeg_quality must be an integer in [1, 100], got {self.jpeg_quality!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict with one key per field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DegradationParams":
        """Inverse of :meth:`to_dict`; missing or unknown keys raise ``ValueError`` naming them."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f"DegradationParams.from_dict: missing keys {missing}, unknown keys {unknown}; expected {names}")
        quality = data["jpeg_quality"]
        if isinstance(quality, float) and quality.is_integer():
            quality = int(quality)
        floats = {n: float(data[n]) if isinstance(data[n], int) and not isinstance(data[n], bool) else data[n]
                  for n in ("sigma_x", "sigma_y", "angle", "scale", "noise_sigma")}
        return cls(kernel=data["kernel"], jpeg_quality=quality, **floats)


def sample_params(cfg: DegradationConfig, generator: torch.Generator, n: int) -> list[DegradationParams]:
    """Draw ``n`` parameter sets from the ranges of ``cfg`` using only ``generator``.

    Each draw uses a fixed number of random numbers (one row of 6 uniforms and one integer), so
    the generator advances the same way whichever kernel type comes out. Uniforms are float64 in
    [0, 1); the ranges are therefore half-open except the JPEG quality, which is uniform on the
    integers ``lo..hi`` inclusive.
    """
    cfg.validate()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    device = generator.device
    u = torch.rand((n, 6), generator=generator, dtype=torch.float64, device=device).cpu().tolist()
    lo_q, hi_q = (int(v) for v in cfg.jpeg_quality)
    qualities = torch.randint(lo_q, hi_q + 1, (n,), generator=generator, device=device).cpu().tolist()

    def uniform(pair: tuple[float, float], t: float) -> float:
        return float(pair[0]) + (float(pair[1]) - float(pair[0])) * t

    out = []
    for (u_iso, u_sx, u_sy, u_angle, u_scale, u_noise), quality in zip(u, qualities):
        sigma_x = uniform(cfg.blur_sigma, u_sx)
        if u_iso < cfg.isotropic_prob:
            kernel, sigma_y, angle = "iso", sigma_x, 0.0
        else:
            kernel, sigma_y, angle = "aniso", uniform(cfg.blur_sigma, u_sy), uniform(cfg.rotation, u_angle)
        out.append(
            DegradationParams(
                kernel=kernel,
                sigma_x=sigma_x,
                sigma_y=sigma_y,
                angle=angle,
                scale=uniform(cfg.downscale, u_scale),
                noise_sigma=uniform(cfg.noise_sigma, u_noise),
                jpeg_quality=int(quality),
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# torch pipeline
# ----------------------------------------------------------------------------------------------
def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # "cuda" and "cuda:0" are the same device when the current device is 0; compare indices
    # only when both are explicit
    return a.index is None or b.index is None or a.index == b.index


def _per_sample_generators(generator: GeneratorArg, batch: int, device: torch.device) -> list[torch.Generator]:
    gens = [generator] * batch if isinstance(generator, torch.Generator) else list(generator)
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} generators for a batch of {batch}; pass one generator or one per image")
    for g in gens:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"expected torch.Generator, got {type(g).__name__}")
        if not _same_device(g.device, device):
            raise ValueError(
                f"the generator is on {g.device} but the images are on {device}; noise is drawn on the "
                f"images' device, so create it with torch.Generator(device={str(device)!r}).manual_seed(seed)"
            )
    return gens


def _output_size(out_size: SizeArg, height: int, width: int) -> tuple[int, int]:
    if out_size is None:
        return height, width
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    h, w = (int(v) for v in out_size)
    if h < 1 or w < 1:
        raise ValueError(f"out_size must be positive, got {out_size}")
    return h, w


def _check_images(hq: Tensor, name: str = "hq") -> None:
    if not isinstance(hq, Tensor) or hq.ndim != 4 or hq.shape[1] != 3:
        shape = tuple(hq.shape) if isinstance(hq, Tensor) else type(hq).__name__
        raise ValueError(f"{name} must be a float tensor [B, 3, H, W] in [0, 1], got {shape}")
    if not hq.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {hq.dtype} (divide uint8 by 255)")


def degrade(
    hq: Tensor,
    cfg: DegradationConfig,
    generator: GeneratorArg,
    out_size: SizeArg = None,
    params: Optional[Sequence[DegradationParams]] = None,
) -> tuple[Tensor, list[DegradationParams]]:
    """Degrade a batch of HQ faces into LQ faces.

    Args:
        hq: float ``[B, 3, H, W]`` in [0, 1], CPU or CUDA. Computation runs in float32.
        cfg: parameter ranges (and ``cfg.kernel_size``).
        generator: one ``torch.Generator`` on ``hq.device`` for the whole batch (parameters for
            all images are drawn first, then each image's noise in order), or a sequence of B
            generators, image ``b`` drawing its parameters and noise from ``generator[b]`` only,
            which makes each result independent of how images are batched.
        out_size: side (or ``(h, w)``) of the output; ``None`` keeps ``H x W``.
        params: B parameter sets to replay instead of drawing new ones; noise is still drawn
            from the generator(s).

    Returns:
        ``(lq, params)``: float32 ``[B, 3, out, out]`` in [0, 1] on ``hq.device`` and the B
        parameter sets used.
    """
    _check_images(hq)
    batch, _, height, width = hq.shape
    gens = _per_sample_generators(generator, batch, hq.device)
    if params is None:
        if isinstance(generator, torch.Generator):
            params = sample_params(cfg, generator, batch)
        else:
            params = [sample_params(cfg, g, 1)[0] for g in gens]
    params = list(params)
    if len(params) != batch or not all(isinstance(p, DegradationParams) for p in params):
        raise ValueError(f"params must be {batch} DegradationParams (one per image), got {len(params)} items")
    out_h, out_w = _output_size(out_size, height, width)

    x = hq.detach().to(torch.float32)
    # kernels in float64 on the CPU (tiny), then moved: some devices lack float64
    sigmas = torch.tensor([[p.sigma_x, p.sigma_y, p.angle] for p in params], dtype=torch.float64)
    kernels = gaussian_kernels(cfg.kernel_size, sigmas[:, 0], sigmas[:, 1], sigmas[:, 2]).to(x.device)
    blurred = blur(x, kernels)  # the whole batch in one FFT

    # after the blur, sizes differ per image, so the rest runs image by image
    if x.device.type == "cpu":
        out = np.empty((batch, 3, out_h, out_w), dtype=np.float32)
        for b, (p, g) in enumerate(zip(params, gens)):
            out[b] = _finish_opencv(blurred[b], p, g, (out_h, out_w)).transpose(2, 0, 1)
        lq = torch.from_numpy(out)
    else:
        lq = torch.stack([_finish_torch(blurred[b], p, g, (out_h, out_w)) for b, (p, g) in enumerate(zip(params, gens))])
    # bilinear weights are convex, so this only removes float rounding beyond the range
    return lq.clamp_(0.0, 1.0), params


# Steps 2-5 for one blurred image [3, H, W]. Two implementations of the same operations: on the
# CPU, OpenCV calls are far cheaper than torch ops on these small images (on our loaded 2-core
# machine a 100x100 -> 512x512 bilinear resize took 0.3 ms in cv2 and 2.5-12 ms in torch, the
# excess being thread-pool wake-ups), so the CPU path runs no torch op per image and assembles
# its batch in numpy; on a GPU the torch ops keep the data on the device. Noise is drawn from the
# torch generator in [3, h, w] order in both, so for one seed they differ only by float rounding
# (tested). Each is split at the JPEG input, the one place where rounding differences can be
# amplified, so that tests can look there.
def _small_lq_torch(blurred: Tensor, p: DegradationParams, generator: torch.Generator) -> Tensor:
    """Steps 2-3 and quantisation: uint8 ``[3, h, w]`` on ``blurred.device``."""
    height, width = blurred.shape[-2:]
    y = resize_bilinear(blurred[None], scaled_size(height, width, p.scale))[0]
    return quantize_uint8(add_gaussian_noise(y, p.noise_sigma, generator))


def _finish_torch(blurred: Tensor, p: DegradationParams, generator: torch.Generator, out_hw: tuple[int, int]) -> Tensor:
    rgb = _small_lq_torch(blurred, p, generator).permute(1, 2, 0).cpu().numpy()
    decoded = torch.from_numpy(jpeg_roundtrip(rgb, p.jpeg_quality)).to(blurred.device)
    y = decoded.permute(2, 0, 1).to(torch.float32) / 255.0
    return resize_bilinear(y[None], out_hw)[0]


def _small_lq_opencv(blurred: Tensor, p: DegradationParams, generator: torch.Generator) -> np.ndarray:
    """Steps 2-3 and quantisation with OpenCV: uint8 ``h x w x 3`` (``blurred`` on the CPU)."""
    height, width = blurred.shape[-2:]
    h, w = scaled_size(height, width, p.scale)
    # plane by plane: the [3, H, W] planes are contiguous, an H x W x 3 view would need a copy
    y = np.stack([cv2.resize(plane, (w, h), interpolation=cv2.INTER_LINEAR) for plane in blurred.detach().numpy()])
    if p.noise_sigma > 0:
        noise = torch.randn((3, h, w), generator=generator, dtype=torch.float32).numpy()
        y = y + noise * np.float32(p.noise_sigma / 255.0)
    y = np.clip(y, 0.0, 1.0)
    return np.clip(np.rint(y.transpose(1, 2, 0) * np.float32(255.0)), 0, 255).astype(np.uint8)


def _finish_opencv(blurred: Tensor, p: DegradationParams, generator: torch.Generator, out_hw: tuple[int, int]) -> np.ndarray:
    """Returns float32 ``out_h x out_w x 3`` (numpy: the CPU path assembles its batch in numpy)."""
    decoded = jpeg_roundtrip(_small_lq_opencv(blurred, p, generator), p.jpeg_quality)
    return cv2.resize(decoded.astype(np.float32) / np.float32(255.0), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)


def degrade_group(
    hq: Tensor,
    group_size: int,
    cfg: DegradationConfig,
    generator: torch.Generator,
    out_size: SizeArg = None,
    params: Optional[DegradationParams] = None,
) -> tuple[Tensor, DegradationParams]:
    """Degrade one HQ face once and give it to a whole group (SPEC section 3).

    Args:
        hq: float ``[3, H, W]`` in [0, 1].
        group_size: G >= 1.

    Returns:
        ``(lq, params)``: float32 ``[G, 3, out, out]`` whose G copies are bit-identical (same
        parameters *and* same noise realisation), and the one parameter set used. The copies are
        materialised (not a broadcast view), so writing into one member cannot alter the others.
    """
    if not isinstance(hq, Tensor) or hq.ndim != 3:
        raise ValueError(f"degrade_group expects one image [3, H, W], got {tuple(getattr(hq, 'shape', ()))}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    lq, used = degrade(hq[None], cfg, generator, out_size=out_size, params=None if params is None else [params])
    return lq.expand(group_size, -1, -1, -1).contiguous(), used[0]


# ----------------------------------------------------------------------------------------------
# per-image OpenCV/numpy reference
# ----------------------------------------------------------------------------------------------
def gaussian_kernel_np(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """float32 ``[size, size]`` kernel, written independently of :mod:`kernels` (numpy)."""
    r = (size - 1) // 2
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def degrade_cv2(
    image: np.ndarray,
    params: DegradationParams,
    kernel_size: int = 41,
    out_size: SizeArg = None,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """The same degradation for one image, per image with OpenCV and numpy.

    Args:
        image: float32 ``H x W x 3`` RGB in [0, 1].
        params: the degradation to apply.
        rng: numpy generator for the noise (needed when ``params.noise_sigma > 0``).

    Returns:
        float32 ``out_h x out_w x 3`` in [0, 1].
    """
    if image.dtype != np.float32 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"degrade_cv2 expects float32 HxWx3 in [0, 1], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    out_h, out_w = _output_size(out_size, height, width)
    kernel = gaussian_kernel_np(kernel_size, params.sigma_x, params.sigma_y, params.angle)
    x = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    h, w = scaled_size(height, width, params.scale)
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
    if params.noise_sigma > 0:
        if rng is None:
            raise ValueError("degrade_cv2 needs rng (a numpy Generator) when noise_sigma > 0")
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(params.noise_sigma / 255.0)
    x = np.clip(x, 0.0, 1.0)
    u8 = np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.uint8)
    x = jpeg_roundtrip(u8, params.jpeg_quality).astype(np.float32) / np.float32(255.0)
    x = cv2.resize(x, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.clip(x, 0.0, 1.0)


__all__ = [
    "DegradationParams",
    "sample_params",
    "degrade",
    "degrade_group",
    "degrade_cv2",
    "gaussian_kernel_np",
]
