"""Write stand-ins for every published model file of the paper's run (see lrpo.standins).

Random weights in each file's published container, key names, dtypes and shapes, under the
registry's file names, so that LRPO_WEIGHTS=OUT makes every loader find them:

    python bench/make_standin_weights.py /work/standins/tiny --scale tiny   # ~60 MB, seconds
    python bench/make_standin_weights.py /work/standins/real                # ~18 GB, the published sizes
    python bench/make_standin_weights.py OUT --only lrpo-fidelity lrpo-perception   # the release's two LRPO ControlNets
    python bench/make_standin_weights.py OUT --only sd21-base clip-rn50 --seed 1

Prints one line per file (size, seconds) and the peak resident memory of this process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from lrpo import standins


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write into (created)")
    p.add_argument("--scale", choices=standins.SCALES, default="real", help="real: published sizes; tiny: CPU test sizes")
    p.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(standins.STANDINS), help="registry names to write (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    start = last = time.perf_counter()
    total = 0

    def report(name: str, path: Path) -> None:
        nonlocal last, total
        now, size = time.perf_counter(), path.stat().st_size
        total += size
        print(f"{name:22s} {path.name:40s} {size / 1e6:10.1f} MB {now - last:7.1f} s", flush=True)
        last = now

    print(f"writing {args.scale} stand-ins into {args.out} (seed {args.seed}, torch {torch.__version__})")
    standins.write_standins(args.out, args.scale, args.only, args.seed, on_written=report)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(f"total {total / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s; peak RSS {peak_mb:.0f} MB")
    print(f"use them with: LRPO_WEIGHTS={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
