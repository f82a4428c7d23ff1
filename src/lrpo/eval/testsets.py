"""The field's BFR test sets by name: recognise their folder layouts, and evaluate several in one run.

``lrpo evaluate --set celeba-test=DIR --set lfw-test=DIR ...`` names each folder. The recogniser
(:func:`recognise_set`) accepts the layouts the GFPGAN / VQFR / CodeFormer releases unpack to and
the ones ``lrpo degrade`` writes, says what it found (counts and image sizes), and refuses a folder
whose layout or name does not fit the set it was given as:

======================  ======  =====  ==============================================================
set (``--set NAME``)    kind    count  layouts accepted (DIR is what follows ``NAME=``)
======================  ======  =====  ==============================================================
``celeba-test``         paired  3000   ``DIR/lq/`` + ``DIR/hq/`` (``lrpo degrade``; also LQ/HQ, gt);
                                       ``DIR/X/`` + ``DIR/X_lq/`` (the release's
                                       ``celeba_512_validation/`` + ``celeba_512_validation_lq/``;
                                       ``_lq``, ``-lq``, ``_LQ``, ``-LQ``); or DIR = ``X_lq/`` or ``X/``
                                       with the other beside it (``CelebA-Test`` + ``CelebA-Test-LQ``)
``lfw-test``            LQ      1711   a folder of images, or one holding a single folder of images
``webphoto-test``       LQ      407    (``LFW-Test/cropped_faces/``, ``WebPhoto-Test/WebPhoto-Test/``),
``wider-test``          LQ      970    two levels deep at most
``celebchild-test``     LQ      180
======================  ======  =====  ==============================================================

All are 512 x 512 aligned faces in the releases. Any other NAME is a set of your own: paired when
its folder has a paired layout, LQ-only otherwise. Counts that differ from the release are noted
(a subset), not refused. Refused: a paired layout given as an LQ-only set or the reverse, LQ and
HQ files whose names do not match, and a folder whose path names another known set (``--set
lfw-test=.../WebPhoto-Test``).

:func:`lrpo.eval.evaluate.evaluate_sets` runs ``evaluate_paired`` / ``evaluate_lq_only`` for
each set into ``OUT/<name>/`` (that set's metrics.json, per_image.csv, report.html, outputs) and
writes ``OUT/metrics.json`` with a section per set, ``OUT/report.html`` with a table per set and,
with ``--table``, ``OUT/table.md`` / ``table.tex`` with a table per set. A folder method holds its
outputs per set: ``PATH/<name>/`` or ``PATH/<release title>/`` (``results/codeformer/lfw-test/``,
``results/codeformer/LFW-Test/``), or a path with ``{set}`` in it; with one set, ``PATH`` itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..data.datasets import PairedSet
from ..data.images import IMAGE_EXTENSIONS

__all__ = [
    "KNOWN_SETS",
    "FoundSet",
    "KnownSet",
    "parse_set_arg",
    "recognise_set",
    "recognise_sets",
]


@dataclass(frozen=True)
class KnownSet:
    name: str  # the --set name
    title: str  # as papers write it
    paired: bool
    count: int  # images in the release
    side: int  # face size in the release
    aliases: tuple[str, ...]  # folder names the releases and common copies use (compared normalised)


KNOWN_SETS: dict[str, KnownSet] = {
    s.name: s
    for s in (
        KnownSet("celeba-test", "CelebA-Test", True, 3000, 512,
                 ("celeba-test", "celeba_512_validation", "celeba-test-lq", "celeba_512_validation_lq", "celeba512")),
        KnownSet("lfw-test", "LFW-Test", False, 1711, 512, ("lfw-test", "lfw_cropped_faces", "lfw")),
        KnownSet("webphoto-test", "WebPhoto-Test", False, 407, 512, ("webphoto-test", "webphoto_cropped_faces", "webphoto")),
        KnownSet("wider-test", "WIDER-Test", False, 970, 512, ("wider-test", "wider_cropped_faces", "wider")),
        KnownSet("celebchild-test", "CelebChild-Test", False, 180, 512, ("celebchild-test", "celebchild", "child")),
    )
}
_LQ_DIRS = ("lq", "LQ", "input", "inputs")
_HQ_DIRS = ("hq", "HQ", "gt", "GT")
_LQ_SUFFIXES = ("_lq", "-lq", "_LQ", "-LQ")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


# ---------------------------------------------------------------------------------------------
# what a folder holds
# ---------------------------------------------------------------------------------------------
def _images_in(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError:
        return []


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _inventory(folder: Path) -> str:
    """What a folder holds, for error messages: its images and its subfolders with their counts."""
    parts = [f"{len(_images_in(folder))} image(s) directly"]
    subs = _subdirs(folder)
    if subs:
        shown = ", ".join(f"{s.name}/ ({len(_images_in(s))} images)" for s in subs[:6])
        parts.append(f"subfolders {shown}" + (f" and {len(subs) - 6} more" if len(subs) > 6 else ""))
    return "; ".join(parts)


def _sizes(paths: Sequence[Path]) -> dict[str, int]:
    """'WxH' -> count, read from the file headers (no decoding)."""
    counts: Counter[str] = Counter()
    for p in paths:
        try:
            with Image.open(p) as im:
                counts[f"{im.width}x{im.height}"] += 1
        except OSError:
            counts["unreadable"] += 1
    return dict(counts.most_common())


def _paired_layout(folder: Path) -> tuple[Path, Path, str] | None:
    """(lq_dir, hq_dir, how it was recognised) or None."""
    subs = {s.name: s for s in _subdirs(folder)}
    lq = next((subs[n] for n in _LQ_DIRS if n in subs and _images_in(subs[n])), None)
    hq = next((subs[n] for n in _HQ_DIRS if n in subs and _images_in(subs[n])), None)
    if lq and hq:
        return lq, hq, f"{lq.name}/ + {hq.name}/ inside {folder}"
    for name, sub in subs.items():  # X/ + X_lq/ side by side
        for suffix in _LQ_SUFFIXES:
            partner = subs.get(name + suffix)
            if partner is not None and _images_in(sub) and _images_in(partner):
                return partner, sub, f"{sub.name}/ (HQ) + {partner.name}/ (LQ) inside {folder}"
    if _images_in(folder):  # DIR = X_lq/ with X/ beside it, or DIR = X/ with X_lq/ beside it
        for suffix in _LQ_SUFFIXES:
            if folder.name.endswith(suffix):
                hq_dir = folder.with_name(folder.name[: -len(suffix)])
                if _images_in(hq_dir):
                    return folder, hq_dir, f"{folder.name}/ (LQ) with {hq_dir.name}/ (HQ) beside it"
            lq_dir = folder.with_name(folder.name + suffix)
            if _images_in(lq_dir):
                return lq_dir, folder, f"{folder.name}/ (HQ) with {lq_dir.name}/ (LQ) beside it"
    return None


def _lq_layout(folder: Path) -> tuple[Path, str] | None:
    """(image folder, how) for a folder of images or one nested one or two single folders deep."""
    current, hops = folder, []
    for _ in range(3):
        if _images_in(current):
            return current, "images in " + (str(folder) if not hops else f"{folder}/{'/'.join(hops)}")
        subs = [s for s in _subdirs(current) if _images_in(s) or _subdirs(s)]
        if len(subs) != 1:
            return None
        current = subs[0]
        hops.append(current.name)
    return None


# ---------------------------------------------------------------------------------------------
# recognition
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoundSet:
    """A recognised test set: where its LQ (and HQ) images are and what they are."""

    name: str
    title: str
    paired: bool
    lq_dir: Path
    hq_dir: Path | None
    layout: str  # how it was recognised
    lq_count: int
    hq_count: int | None
    lq_sizes: dict[str, int]
    hq_sizes: dict[str, int] | None
    release_count: int | None  # images in the published release (None: a set of your own)
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        def sizes(s: dict[str, int]) -> str:
            return ", ".join(f"{k} ({v})" for k, v in s.items())

        text = f"{self.name} ({self.title}): {'paired' if self.paired else 'LQ only'}, {self.lq_count} LQ"
        if self.paired:
            text += f" + {self.hq_count} HQ"
        text += f" [{self.layout}]; LQ sizes {sizes(self.lq_sizes)}"
        if self.hq_sizes:
            text += f"; HQ sizes {sizes(self.hq_sizes)}"
        return text + "".join(f"; {n}" for n in self.notes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lq_dir"], d["hq_dir"] = str(self.lq_dir), None if self.hq_dir is None else str(self.hq_dir)
        d["notes"] = list(self.notes)
        d["description"] = self.describe()
        return d


def parse_set_arg(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` -> (name, path)."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        known = ", ".join(KNOWN_SETS)
        raise ValueError(f"--set {text!r}: expected NAME=DIR, e.g. celeba-test=data/celeba (known names: {known})")
    if not _NAME_RE.match(name):
        raise ValueError(f"--set {text!r}: the name must start with a letter or digit and use only letters, digits and . _ + -")
    return name.lower() if name.lower() in KNOWN_SETS else name, Path(path).expanduser()


def _named_sets(names: Sequence[str]) -> set[str]:
    """Known sets whose aliases begin one of the folder names (compared without case and punctuation)."""
    found = set()
    for name in names:
        n = _norm(name)
        for s in KNOWN_SETS.values():
            if any(n.startswith(_norm(a)) for a in s.aliases):
                found.add(s.name)
    return found


def recognise_set(name: str, path: str | os.PathLike) -> FoundSet:
    """Find set ``name``'s images under ``path`` (see the module docstring) or raise with what was
    expected and what is there."""
    folder = Path(path).expanduser()
    known = KNOWN_SETS.get(name)
    title = known.title if known else name
    if not folder.is_dir():
        raise FileNotFoundError(f"--set {name}={folder}: no such folder")
    paired = _paired_layout(folder)
    if known is not None and known.paired and paired is None:
        raise ValueError(
            f"--set {name}={folder}: {title} is a paired set (LQ inputs with their GT), but no paired layout was found. "
            f"Expected DIR/lq/ + DIR/hq/ (as `lrpo degrade` writes), DIR/X/ + DIR/X_lq/ (the release's "
            f"celeba_512_validation/ + celeba_512_validation_lq/), or DIR = X_lq/ with X/ beside it. Found: {_inventory(folder)}"
        )
    if known is not None and not known.paired and paired is not None and _lq_layout(folder) is None:
        raise ValueError(
            f"--set {name}={folder}: {title} is an LQ-only set (real faces without GT), but the folder holds a paired layout "
            f"({paired[2]}). Give a paired folder as --set celeba-test=DIR (or a name of your own), or point "
            f"{name} at the folder of LQ images itself."
        )
    if known is None or known.paired:
        is_paired = paired is not None
    else:
        is_paired = False
    if is_paired:
        lq_dir, hq_dir, layout = paired
        pairs = PairedSet((lq_dir, hq_dir))  # refuses LQ and HQ names that do not match
        lq_paths, hq_paths = pairs.lq_paths, pairs.hq_paths
    else:
        found = _lq_layout(folder)
        if found is None:
            raise ValueError(
                f"--set {name}={folder}: no images found. Expected a folder of LQ images, or a folder holding one folder of "
                f"them (LFW-Test/cropped_faces/, WebPhoto-Test/WebPhoto-Test/). Found: {_inventory(folder)}"
            )
        lq_dir, layout = found
        hq_dir, lq_paths, hq_paths = None, _images_in(lq_dir), None
    # only the folders the user named or that lie under it (a parent like /data/wider_runs/ says nothing)
    inside = [d for d in (lq_dir, hq_dir) if d is not None]
    names = [folder.resolve().name] + [d.resolve().name for d in inside]
    names += [d.resolve().parent.name for d in inside if d.resolve().parent != folder.resolve().parent]
    named = _named_sets(names)
    if known is not None and named and name not in named:
        others = ", ".join(f"{n} ({KNOWN_SETS[n].title})" for n in sorted(named))
        raise ValueError(
            f"--set {name}={folder}: the folder's path names {others}, not {title}. Check which folder goes with which "
            f"set, or use a name of your own for a set that is neither."
        )
    notes = []
    if known is not None and len(lq_paths) != known.count:
        notes.append(f"the {title} release has {known.count} images, this folder {len(lq_paths)} (a subset or another copy)")
    lq_sizes = _sizes(lq_paths)
    hq_sizes = _sizes(hq_paths) if hq_paths is not None else None
    if known is not None and (hq_sizes or lq_sizes) and f"{known.side}x{known.side}" not in (hq_sizes or lq_sizes):
        notes.append(f"the release's faces are {known.side}x{known.side}; these are not")
    return FoundSet(name, title, is_paired, lq_dir, hq_dir, layout, len(lq_paths), None if hq_paths is None else len(hq_paths),
                    lq_sizes, hq_sizes, known.count if known else None, tuple(notes))


def recognise_sets(items: Sequence[str]) -> list[FoundSet]:
    """Every ``NAME=DIR`` of the command line, recognised; a name given twice is refused."""
    found: list[FoundSet] = []
    for item in items:
        name, path = parse_set_arg(item)
        if any(f.name == name for f in found):
            raise ValueError(f"--set {name} is given twice")
        found.append(recognise_set(name, path))
    return found
