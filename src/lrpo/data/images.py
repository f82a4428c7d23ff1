"""Robust image IO: any common photo file -> RGB uint8 array, with errors that name the file.

Faces arrive as JPEG/PNG/WebP in every flavour: EXIF-rotated phone photos, grayscale scans, RGBA
PNGs, 16-bit TIFF/PNG. Everything becomes ``np.uint8`` ``H x W x 3`` RGB here, so the rest of the
code sees one format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image file could not be read; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read image ({reason})")


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) grayscale: rescale by the type's range, not the image's, so a
        # dark 16-bit scan stays dark.
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 1.0 if arr.max() <= 1.0 else 255.0
        arr = np.clip(np.round(arr / scale * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # composite on white: transparent face cut-outs would otherwise turn black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read ``path`` as RGB ``uint8`` ``H x W x 3``; EXIF orientation applied.

    Raises:
        ImageLoadError: missing, empty, truncated, corrupt or non-image file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file")
    try:
        with Image.open(path) as img:
            img.load()  # force decoding now: truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            arr = _to_uint8_rgb(img)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(path, f"corrupt or truncated: {e}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageLoadError(path, f"unexpected decoded shape {arr.shape}")
    return arr


def save_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an RGB ``uint8`` ``H x W x 3`` array; format from the suffix (PNG is lossless)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"save_rgb expects uint8 HxWx3, got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def list_images(source: str | os.PathLike) -> list[Path]:
    """Image files of a folder (sorted, non-recursive) or of a text file listing one path per line.

    Relative paths in a list file are taken relative to the list file's folder; blank lines and
    lines starting with ``#`` are ignored.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(
                f"{source}: no images found (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        return files
    if source.is_file():
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"{source} is an image; expected a folder of images or a text file listing image paths")
        try:
            text = source.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{source} is not a text file listing image paths (nor a folder of images)") from None
        files = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line)
            files.append(p if p.is_absolute() else source.parent / p)
        if not files:
            raise FileNotFoundError(f"{source}: the file list names no images")
        return files
    raise FileNotFoundError(f"{source}: neither a folder of images nor a file listing image paths")


def load_many(
    paths: Iterable[Path], skip_bad: bool = False
) -> tuple[list[tuple[Path, np.ndarray]], list[ImageLoadError]]:
    """Load images; with ``skip_bad`` return the failures instead of raising on the first one."""
    good, bad = [], []
    for p in paths:
        try:
            good.append((Path(p), load_rgb(p)))
        except ImageLoadError as e:
            if not skip_bad:
                raise
            bad.append(e)
    return good, bad


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image to ``size x size`` (area filter when shrinking, bicubic when growing)."""
    import cv2

    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def to_tensor(image: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """uint8 ``H x W x 3`` -> float32 ``3 x H x W`` in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(tensor: "torch.Tensor") -> np.ndarray:  # noqa: F821
    """float ``3 x H x W`` in [0, 1] -> uint8 ``H x W x 3`` (rounded, clipped)."""
    import torch

    t = tensor.detach().float().clamp(0, 1).mul(255.0).round().to("cpu", dtype=torch.uint8)
    return t.permute(1, 2, 0).numpy().copy()
