"""Robust image IO: any common photo file -> RGB uint8 array, with errors that name the file.

Faces arrive as JPEG/PNG/WebP in every flavour: EXIF-rotated phone photos, grayscale scans, RGBA
PNGs, 16-bit TIFF/PNG. Everything becomes ``np.uint8`` ``H x W x 3`` RGB here, so the rest of the
code sees one format.
"""

from __future__ import annotations

import errno
import os
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..outputs import fit_name, require_input

# .gif: the first frame of an animation is the image
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageLoadError(ValueError):
    """An image file could not be read; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: cannot read image ({reason})")


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """An opened image of any mode as RGB ``uint8`` ``H x W x 3`` (16-bit and float scaled by their
    type's range, transparency composited on white); the one conversion every reader uses."""
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
        raise ImageLoadError(path, _why_not_a_file(path))
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns between its limit and twice it; _check_pixels refuses all of that range
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(path, *img.size)
                img.load()  # force decoding now: truncated files fail here, not later
                img = ImageOps.exif_transpose(img)
                arr = pil_to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a recognised image format") from None
    except Image.DecompressionBombError as e:  # over twice the limit: refused inside Image.open
        raise ImageLoadError(path, f"too many pixels ({e})") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied: the file is not readable by this user") from None
    except MemoryError:
        raise ImageLoadError(path, "not enough memory to decode it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error) as e:
        # what Pillow's decoders raise on damaged data (zlib.error from a broken PNG stream, ...)
        raise ImageLoadError(path, f"corrupt or truncated: {e}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageLoadError(path, f"unexpected decoded shape {arr.shape}")
    return arr


def _why_not_a_file(path: Path) -> str:
    """Why ``path`` is not a readable regular file (a reason for ImageLoadError)."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if path.is_symlink():
            return f"broken symbolic link to {os.readlink(path)}"
        return "no such file"
    return "not a regular file (a folder?)" if path.is_dir() else "not a regular file"


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse images over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89.5
    megapixels unless changed; None disables the check) before any pixel is decoded. A header may
    claim any size: 20000 x 20000 would ask for 1.2 GB whether or not the data follow."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            path, f"{width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of {limit / 1e6:.1f} "
            f"(PIL.Image.MAX_IMAGE_PIXELS); a header claiming this size is a possible decompression bomb"
        )


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
        # broken links and link loops are listed (not dropped unseen), so loading names them
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir())
        if not files:
            raise FileNotFoundError(
                f"{source}: no images found (expected files ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        return files
    if source.is_file():
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"{source} is an image; expected a folder of images or a text file listing image paths")
        raw = source.read_bytes()
        if b"\0" in raw:  # binary (an image under another name, UTF-16 text): no list of paths
            raise ValueError(f"{source} is not a text file listing image paths (nor a folder of images)")
        # bytes that are not UTF-8 stay as the file system has them (os.fsdecode's escapes), so a
        # list naming such files finds them
        text = raw.decode("utf-8", "surrogateescape")
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
    why = f" ({_why_not_a_file(source)})" if source.is_symlink() else ""
    raise FileNotFoundError(f"{source}: neither a folder of images nor a file listing image paths{why}")


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
    h, w = image.shape[:2]
    if h == size and w == size:
        return image
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interp)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x 3`` -> float32 ``3 x H x W`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """float ``3 x H x W`` in [0, 1] -> uint8 ``H x W x 3`` (rounded, clipped)."""
    t = tensor.detach().float().clamp(0, 1).mul(255.0).round().to("cpu", dtype=torch.uint8)
    return t.permute(1, 2, 0).numpy().copy()


def input_paths(source: str | Path) -> list[Path]:
    """One image file, or the images of a folder / of a text file listing them (:func:`list_images`)."""
    source = require_input(source)
    if source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
        return [source]
    return list_images(source)


def output_names(paths: list[Path]) -> list[str]:
    """``<stem>.png`` for each input; inputs sharing a stem get ``<stem>_<ext>.png``, so none overwrites another.
    Names over :data:`lrpo.outputs.NAME_MAX_BYTES` are cut and get a hash suffix (:func:`lrpo.outputs.fit_name`)."""
    stems = Counter(p.stem for p in paths)
    return [fit_name(f"{p.stem}.png" if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}.png") for p in paths]


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB uint8 images (rows x columns) with a white gap."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid
