"""The arguments of ``lrpo degrade``: argparse and the config only, so ``lrpo --help`` imports no torch."""

from __future__ import annotations

import argparse

from lrpo.config import DEGRADATION_PRESETS


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
