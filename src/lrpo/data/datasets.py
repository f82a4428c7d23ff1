"""Face datasets: HQ training faces, synthetic LQ/HQ test pairs, real LQ faces without GT.

Every item is float32 ``3 x H x W`` in [0, 1] (the degradation/metric range); models convert to
[-1, 1] themselves. Images go through :func:`lrpo.data.images.load_rgb`, so EXIF rotation,
grayscale, RGBA and 16-bit files are handled there and unreadable files raise
:class:`~lrpo.data.images.ImageLoadError` naming the file.

Ordering is always by sorted path, so "the first N files" means the same files on every machine
and in every process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from lrpo.data.images import ImageLoadError, list_images, load_rgb, resize_square, to_tensor

ImageSource = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

_SHOW = 5  # how many offending names an error message lists before "... and N more"


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"a list of {len(source)} path(s)"


def _resolve_paths(source: ImageSource) -> list[Path]:
    """Sorted image paths from a folder, a list file or an explicit sequence of paths."""
    if isinstance(source, (str, os.PathLike)):
        if not str(source).strip():
            # Path("") is ".", which would quietly read whatever images the working folder holds
            raise ValueError("FaceImageSet: no image source given (empty path; is data.hq set?)")
        paths = list_images(source)
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise ValueError("FaceImageSet: the list of image paths is empty")
    paths = sorted(paths)
    seen: set[str] = set()
    dupes = []
    for p in paths:
        key = os.path.realpath(p)  # unlike Path.resolve, never raises: a link loop is reported when it is loaded
        if key in seen:
            dupes.append(str(p))
        seen.add(key)
    if dupes:
        # a repeated file would land in both the train and validation halves of split()
        raise ValueError(f"{_describe(source)}: image listed more than once: {_preview(dupes)}")
    return paths


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    more = len(names) - _SHOW
    return f"{shown} ... and {more} more" if more > 0 else shown


def _check_resolution(resolution: int | None) -> None:
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive integer or None, got {resolution!r}")


def _load_item(path: Path, resolution: int | None) -> np.ndarray:
    image = load_rgb(path)
    return resize_square(image, resolution) if resolution is not None else image


class FaceImageSet(Dataset):
    """HQ face images from a folder, a text file listing paths, or a list of paths.

    Items are float32 tensors ``3 x R x R`` in [0, 1] (``3 x H x W`` at native size when
    ``resolution`` is None). Files are sorted by path.

    Every file is decoded once at construction, so a corrupt, truncated or non-image file is found
    before training starts, not hours into it: it raises :class:`ImageLoadError` naming the file,
    or with ``skip_bad`` is left out and recorded in :attr:`skipped`. With ``cache`` the decoded,
    resized ``uint8`` images are kept in memory (our sets are small; 1000 faces at 512 px are
    0.8 GB); without it the check still decodes each file once, and items are decoded again on
    access.

    Attributes:
        paths: the usable image files, sorted.
        names: their file stems (used to name outputs).
        skipped: the :class:`ImageLoadError` of each file left out by ``skip_bad``.
    """

    def __init__(
        self,
        source: ImageSource,
        resolution: int | None,
        skip_bad: bool = False,
        cache: bool = True,
    ):
        _check_resolution(resolution)
        self.source = _describe(source)
        self.resolution = resolution
        self.cache = cache
        self.paths: list[Path] = []
        self.skipped: list[ImageLoadError] = []
        arrays: list[np.ndarray] = []
        for path in _resolve_paths(source):
            try:
                image = _load_item(path, resolution)
            except ImageLoadError as e:
                if not skip_bad:
                    raise
                self.skipped.append(e)
                continue
            self.paths.append(path)
            if cache:
                arrays.append(image)
        if not self.paths:
            raise ValueError(
                f"{self.source}: no readable images (all {len(self.skipped)} file(s) failed to load; "
                f"first: {self.skipped[0] if self.skipped else 'none'})"
            )
        self._arrays: list[np.ndarray] | None = arrays if cache else None

    @classmethod
    def _subset(cls, parent: "FaceImageSet", indices: range, label: str) -> "FaceImageSet":
        """A view on some of ``parent``'s files sharing its cache (no decoding)."""
        subset = cls.__new__(cls)
        subset.source = f"{parent.source} [{label}]"
        subset.resolution = parent.resolution
        subset.cache = parent.cache
        subset.paths = [parent.paths[i] for i in indices]
        # skipped files belong to the source, so both halves report them
        subset.skipped = list(parent.skipped)
        subset._arrays = None if parent._arrays is None else [parent._arrays[i] for i in indices]
        return subset

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Float32 ``3 x R x R`` in [0, 1]."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images from {self.source}")
        if self._arrays is not None:
            return to_tensor(self._arrays[index])
        return to_tensor(_load_item(self.paths[index], self.resolution))

    def split(self, val_count: int) -> tuple["FaceImageSet", "FaceImageSet"]:
        """``(train, val)``: the first ``val_count`` files in sorted path order are validation.

        Deterministic: it depends only on the file names, never on a seed, the process or the
        order a file list was written in. ``val_count = 0`` gives an empty validation set.
        """
        if isinstance(val_count, bool) or not isinstance(val_count, int) or val_count < 0:
            raise ValueError(f"val_count must be a non-negative integer, got {val_count!r}")
        if val_count >= len(self):
            raise ValueError(
                f"val_count={val_count} leaves no training images: {self.source} has only {len(self)} "
                f"readable image(s); use val_count <= {len(self) - 1}"
            )
        val = self._subset(self, range(val_count), "val")
        train = self._subset(self, range(val_count, len(self)), "train")
        return train, val

    def summary(self) -> str:
        """One line of counts, then one line per skipped file."""
        size = f"{self.resolution}x{self.resolution}" if self.resolution else "native size"
        mode = "cached in memory" if self._arrays is not None else "decoded on access"
        lines = [f"{self.source}: {len(self)} image(s) at {size}, {mode}; {len(self.skipped)} skipped"]
        lines += [f"  skipped {e.path}: {e.reason}" for e in self.skipped]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"FaceImageSet({self.source!r}, resolution={self.resolution}, n={len(self)}, "
            f"skipped={len(self.skipped)})"
        )


def _by_stem(folder: str | os.PathLike) -> dict[str, Path]:
    """Images of a folder (or list file) keyed by file stem; two files with one stem is an error."""
    files: dict[str, Path] = {}
    clashes = []
    for path in list_images(folder):
        if path.stem in files:
            clashes.append(f"{files[path.stem].name} / {path.name}")
        files[path.stem] = path
    if clashes:
        raise ValueError(f"{folder}: several files share a name (stem), so pairing is ambiguous: {_preview(clashes)}")
    return files


class PairedSet(Dataset):
    """Synthetic test pairs (CelebA-Test style), matched by file stem.

    ``source`` is either a folder holding ``lq/`` and ``hq/`` subfolders (as written by
    ``lrpo degrade``) or a pair ``(lq_dir, hq_dir)``. Items are
    ``{"name": str, "lq": float32 3 x H x W, "hq": float32 3 x H x W}`` in [0, 1], sorted by name;
    both images are resized to ``resolution`` when it is given, else kept at their own sizes
    (which may differ). Images are decoded on access: test sets at 512 px are too big to cache.
    """

    def __init__(
        self,
        source: str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike],
        resolution: int | None = None,
    ):
        _check_resolution(resolution)
        if isinstance(source, (tuple, list)):
            if len(source) != 2:
                raise ValueError(f"PairedSet expects a root folder or a pair (lq_dir, hq_dir), got {source!r}")
            lq_dir, hq_dir = Path(source[0]), Path(source[1])
        else:
            root = Path(source)
            lq_dir, hq_dir = root / "lq", root / "hq"
            missing = [str(d) for d in (lq_dir, hq_dir) if not d.is_dir()]
            if missing:
                raise FileNotFoundError(
                    f"{root}: expected subfolders lq/ and hq/ (as written by `lrpo degrade`); missing {missing}"
                )
        lq, hq = _by_stem(lq_dir), _by_stem(hq_dir)
        lq_only, hq_only = sorted(set(lq) - set(hq)), sorted(set(hq) - set(lq))
        if lq_only or hq_only:
            parts = []
            if lq_only:
                parts.append(f"{len(lq_only)} in {lq_dir} without a partner in {hq_dir}: {_preview(lq_only)}")
            if hq_only:
                parts.append(f"{len(hq_only)} in {hq_dir} without a partner in {lq_dir}: {_preview(hq_only)}")
            raise ValueError("unmatched LQ/HQ pairs (matched by file stem): " + "; ".join(parts))
        self.lq_dir, self.hq_dir = lq_dir, hq_dir
        self.resolution = resolution
        self.names: list[str] = sorted(lq)
        self.lq_paths: list[Path] = [lq[n] for n in self.names]
        self.hq_paths: list[Path] = [hq[n] for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        """``{"name", "lq", "hq"}``; images float32 ``3 x H x W`` in [0, 1]."""
        return {
            "name": self.names[index],
            "lq": to_tensor(_load_item(self.lq_paths[index], self.resolution)),
            "hq": to_tensor(_load_item(self.hq_paths[index], self.resolution)),
        }


class LQOnlySet(Dataset):
    """Real LQ faces without ground truth (LFW-Test, WebPhoto-Test, WIDER-Test style).

    ``folder`` is a folder of images or a text file listing them. Items are
    ``{"name": str, "lq": float32 3 x H x W in [0, 1]}``, sorted by name, decoded on access.
    """

    def __init__(self, folder: str | os.PathLike, resolution: int | None = None):
        _check_resolution(resolution)
        files = _by_stem(folder)
        self.folder = Path(folder)
        self.resolution = resolution
        self.names: list[str] = sorted(files)
        self.paths: list[Path] = [files[n] for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        """``{"name", "lq"}``; ``lq`` float32 ``3 x H x W`` in [0, 1]."""
        return {"name": self.names[index], "lq": to_tensor(_load_item(self.paths[index], self.resolution))}


__all__ = ["FaceImageSet", "PairedSet", "LQOnlySet"]
