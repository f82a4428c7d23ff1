"""Synthetic paired test sets: a folder of HQ faces -> ``hq/``, ``lq/`` and ``params.jsonl``.

Layout written by :func:`make_paired_set`::

    out_dir/hq/<stem>.png     the HQ face resized to size x size (what the LQ was made from)
    out_dir/lq/<stem>.png     its degradation (SPEC section 7), size x size
    out_dir/hq/<stem>.txt     the input's caption sidecar (<stem>.txt beside it), when it has one
    out_dir/.lrpo-manifest.jsonl  what lrpo wrote there (names, sizes, sha256; lrpo.outputs): --overwrite
                              deletes only those files
    out_dir/params.jsonl      one JSON object per written pair, in input order:
                              {"name": "<stem>.png", "source": <input file name>,
                               "seed": <per-image generator seed>, <every DegradationParams field>}

Reproducibility: image number ``i`` (its position in the sorted folder or in the list file,
counting unreadable files too) is degraded alone with ``torch.Generator().manual_seed(
image_seed(seed, i))``. Its pair therefore depends only on (seed, i, the image, cfg), not on
batching, on other images, or on skipped files before it, and two runs write identical bytes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from lrpo.config import DEGRADATION_PRESETS, DegradationConfig
from lrpo.data.images import ImageLoadError, list_images, load_rgb, resize_square, save_rgb, to_tensor, to_uint8
from lrpo.degradation.arguments import add_degrade_arguments
from lrpo.degradation.pipeline import DegradationParams, degrade
from lrpo.manifest import ascii_name
from lrpo.outputs import OutputFolder, one_line, place, require_input

PARAMS_FILE = "params.jsonl"


@dataclass
class PairedSetSummary:
    """What :func:`make_paired_set` did."""

    out_dir: Path
    written: int  # pairs written
    skipped: list[ImageLoadError] = field(default_factory=list)  # unreadable inputs (skip_bad only)
    seconds: float = 0.0


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index``'s generator: 63 bits of SHA-256("lrpo.degrade:<seed>:<index>").

    A hash rather than ``seed + index`` so that runs with neighbouring seeds do not share
    degradations shifted by one image.
    """
    digest = hashlib.sha256(f"lrpo.degrade:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_unique_stems(files: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise ValueError(f"two inputs would both be written as {ascii_name(p.stem)}.png: {ascii_name(str(seen[p.stem]))} "
                             f"and {ascii_name(str(p))}; rename one")
        seen[p.stem] = p


def make_paired_set(
    hq_source: str | Path,
    out_dir: str | Path,
    size: int = 512,
    seed: int = 0,
    cfg: Optional[DegradationConfig] = None,
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> PairedSetSummary:
    """Write a paired HQ/LQ set from a folder of faces (or a text file listing image paths).

    Args:
        hq_source: folder of images or a file listing one image path per line.
        out_dir: destination (see :mod:`lrpo.outputs`): new, empty, or holding only the files an earlier
            run recorded in its manifest; those are replaced only with ``overwrite``, once the new set
            is made. It may not contain an input, and holds nothing before an input is known readable.
        size: side of the written HQ and LQ images.
        seed: base seed; see the module docstring for how each image's generator is seeded.
        cfg: degradation ranges; ``None`` means the SPEC ranges (``DegradationConfig()``).
        skip_bad: skip unreadable images and list them in the summary instead of stopping.
        progress: show a tqdm progress bar.

    Raises:
        ImageLoadError: an input cannot be read (without ``skip_bad``); it names the file.
        FileNotFoundError: ``hq_source`` does not exist.
        lrpo.outputs.OutputError: ``out_dir`` is a file, contains an input, holds files lrpo did not
            write (named), or holds an earlier set and ``overwrite`` is False.
    """
    cfg = DegradationConfig() if cfg is None else cfg
    cfg.validate()
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    source = require_input(hq_source)
    files = list_images(source)
    check_unique_stems(files)
    out = OutputFolder(out_dir, command="lrpo degrade", overwrite=overwrite, inputs=[source, *files])
    _first_readable(files, skip_bad)  # no folder is made for a set whose inputs cannot be read
    # written into a hidden folder inside out_dir (the same file system, so every move is a rename)
    # and moved into place at the end: a run stopped by a bad file (or Ctrl-C) leaves no partial
    # set, so the retry needs no --overwrite; the earlier set is removed only once the new one is made
    created = not out.folder.exists()
    out.folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.folder, prefix=".lrpo-partial-"))
    out.ignore += (work.name,)
    done = False
    try:
        (work / "hq").mkdir()
        (work / "lq").mkdir()
        summary = _write_pairs(files, work, size, seed, cfg, skip_bad, progress)
        out.open()  # --overwrite: the earlier set's recorded, unchanged files are deleted here, nothing else
        _move_into(work, out)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done and created:
            _remove_if_empty(out.folder)
    summary.out_dir = out.folder
    return summary


def _first_readable(files: list[Path], skip_bad: bool) -> None:
    """Raise unless an input can be read: the first one, or (``skip_bad``) any."""
    for path in files:
        try:
            load_rgb(path)
            return
        except ImageLoadError:
            if not skip_bad:
                raise
    raise ValueError(f"none of the {len(files)} input image(s) can be read (first: {ascii_name(str(files[0]))}); nothing was written")


def _move_into(work: Path, out: OutputFolder) -> None:
    """Move hq/, lq/ and params.jsonl from ``work`` into ``out`` without replacing anything; each is recorded."""
    moved = []
    try:
        for sub in ("hq", "lq"):
            dest = out.subfolder(sub)
            for f in sorted((work / sub).iterdir()):
                place(f, dest / f.name)
                moved.append(dest / f.name)
        place(work / PARAMS_FILE, out.folder / PARAMS_FILE)
        moved.append(out.folder / PARAMS_FILE)
    finally:
        out.record(moved)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: something else is there now, and it stays


def _write_pairs(files, out_dir: Path, size: int, seed: int, cfg, skip_bad: bool, progress: bool) -> PairedSetSummary:
    start = time.perf_counter()
    summary = PairedSetSummary(out_dir=out_dir, written=0)
    with open(out_dir / PARAMS_FILE, "w", encoding="utf-8") as params_file:
        for index, path in enumerate(tqdm(files, desc="degrade", unit="img", disable=not progress)):
            try:
                hq = resize_square(load_rgb(path), size)
            except ImageLoadError as e:
                if not skip_bad:
                    raise
                summary.skipped.append(e)
                continue
            image_generator_seed = image_seed(seed, index)
            generator = torch.Generator().manual_seed(image_generator_seed)
            lq, (params,) = degrade(to_tensor(hq)[None], cfg, generator, out_size=size)
            name = f"{path.stem}.png"
            save_rgb(out_dir / "hq" / name, hq)
            save_rgb(out_dir / "lq" / name, to_uint8(lq[0]))
            caption = path.with_suffix(".txt")
            if caption.is_file():  # captions travel with their faces (the face reward reads them)
                shutil.copyfile(caption, out_dir / "hq" / f"{path.stem}.txt")
            record = {"name": name, "source": path.name, "seed": image_generator_seed, **params.to_dict()}
            params_file.write(json.dumps(record) + "\n")
            summary.written += 1
    summary.seconds = time.perf_counter() - start
    return summary


def read_params_jsonl(path: str | Path) -> list[tuple[str, DegradationParams]]:
    """``(name, params)`` per line of a ``params.jsonl`` written by :func:`make_paired_set`."""
    path = Path(path)
    out = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name = record.pop("name")
            record.pop("source", None)
            record.pop("seed", None)
            out.append((name, DegradationParams.from_dict(record)))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}:{line_no}: not a valid params record ({e})") from None
    return out


# ----------------------------------------------------------------------------------------------
# command line: `lrpo degrade`
# ----------------------------------------------------------------------------------------------
def run_degrade(args: argparse.Namespace) -> int:
    """Run ``lrpo degrade`` from parsed arguments; returns the process exit code."""
    cfg = copy.deepcopy(DEGRADATION_PRESETS[args.preset])
    try:
        summary = make_paired_set(
            args.hq_dir,
            args.out_dir,
            size=args.size,
            seed=args.seed,
            cfg=cfg,
            skip_bad=args.skip_bad,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:  # ImageLoadError and OutputError are ValueErrors
        print(f"lrpo degrade: error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"wrote {summary.written} pairs to {ascii_name(str(summary.out_dir))} in {summary.seconds:.1f} s "
          f"(preset {args.preset}, seed {args.seed})")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable image(s):")
        for e in summary.skipped:
            print(f"  {ascii_name(str(e))}")
    return 0


__all__ = [
    "PairedSetSummary",
    "image_seed",
    "make_paired_set",
    "read_params_jsonl",
    "add_degrade_arguments",
    "run_degrade",
]
