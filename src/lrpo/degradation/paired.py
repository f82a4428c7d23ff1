"""Synthetic paired test sets: a folder of HQ faces -> ``hq/``, ``lq/`` and ``params.jsonl``.

Layout written by :func:`make_paired_set`::

    out_dir/hq/<stem>.png     the HQ face resized to size x size (what the LQ was made from)
    out_dir/lq/<stem>.png     its degradation (SPEC section 7), size x size
    out_dir/hq/<stem>.txt     the input's caption sidecar (<stem>.txt beside it), when it has one
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
import os
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
from lrpo.degradation.pipeline import DegradationParams, degrade

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


def _existing_outputs(out_dir: Path) -> list[Path]:
    found = []
    for sub in ("hq", "lq"):
        folder = out_dir / sub
        if folder.is_dir():
            found.extend(p for p in folder.iterdir() if p.is_file())
    return found


def _check_unique_stems(files: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise ValueError(f"two inputs would both be written as {p.stem}.png: {seen[p.stem]} and {p}; rename one")
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
        out_dir: destination; must not already hold files in ``hq/`` or ``lq/`` unless
            ``overwrite`` (then those files and ``params.jsonl`` are deleted first).
        size: side of the written HQ and LQ images.
        seed: base seed; see the module docstring for how each image's generator is seeded.
        cfg: degradation ranges; ``None`` means the SPEC ranges (``DegradationConfig()``).
        skip_bad: skip unreadable images and list them in the summary instead of stopping.
        progress: show a tqdm progress bar.

    Raises:
        ImageLoadError: an input cannot be read (without ``skip_bad``); it names the file.
        FileExistsError: ``out_dir`` already holds a set and ``overwrite`` is False.
    """
    cfg = DegradationConfig() if cfg is None else cfg
    cfg.validate()
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    files = list_images(hq_source)
    _check_unique_stems(files)
    out_dir = Path(out_dir)
    existing = _existing_outputs(out_dir)
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(existing)} file(s) in hq/ or lq/ (e.g. {existing[0]}); "
            f"choose another folder or pass overwrite=True (--overwrite) to replace them"
        )
    # written into a hidden folder inside out_dir (the same file system, so every move is a rename)
    # and moved into place at the end: a run stopped by a bad file (or Ctrl-C) leaves no partial
    # set, so the retry needs no --overwrite; an old set is moved aside first and deleted last
    final_dir = out_dir
    created = not final_dir.exists()
    final_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final_dir, prefix=".partial-"))
    done = False
    try:
        (work / "hq").mkdir()
        (work / "lq").mkdir()
        summary = _write_pairs(files, work, size, seed, cfg, skip_bad, progress)
        aside = work / "replaced"
        aside.mkdir()
        for i, p in enumerate(existing + [final_dir / PARAMS_FILE]):
            if p.exists():
                os.replace(p, aside / f"{i}_{p.name}")
        for sub in ("hq", "lq"):
            (final_dir / sub).mkdir(exist_ok=True)
            for f in (work / sub).iterdir():
                os.replace(f, final_dir / sub / f.name)
        os.replace(work / PARAMS_FILE, final_dir / PARAMS_FILE)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done and created:
            shutil.rmtree(final_dir, ignore_errors=True)
    summary.out_dir = final_dir
    return summary


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
def add_degrade_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``lrpo degrade`` to ``parser`` (a subcommand parser)."""
    parser.add_argument("hq_dir", metavar="HQ_DIR", help="folder of HQ face images, or a text file listing image paths")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where hq/, lq/ and params.jsonl are written")
    parser.add_argument("--size", type=int, default=512, help="side in pixels of the written HQ and LQ images (default: 512)")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="base seed; image i is degraded with a generator seeded from (seed, i), so the same "
        "seed and inputs give byte-identical output (default: 0)",
    )
    parser.add_argument(
        "--preset", choices=sorted(DEGRADATION_PRESETS), default="spec",
        help="degradation ranges: 'spec' = the paper's training ranges, 'mild' = weaker blur, "
        "downscale, noise and JPEG (default: spec)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them at the end instead of stopping at the first")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing set in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


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
    except (ValueError, OSError) as e:  # ImageLoadError is a ValueError; FileExistsError an OSError
        print(f"lrpo degrade: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary.written} pairs to {summary.out_dir} in {summary.seconds:.1f} s (preset {args.preset}, seed {args.seed})")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable image(s):")
        for e in summary.skipped:
            print(f"  {e}")
    return 0


__all__ = [
    "PairedSetSummary",
    "image_seed",
    "make_paired_set",
    "read_params_jsonl",
    "add_degrade_arguments",
    "run_degrade",
]
