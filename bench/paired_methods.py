"""Paired differences between methods scored on the same faces, from `lrpo evaluate`'s per_image.csv.

    python bench/paired_methods.py EVAL_DIR [EVAL_DIR ...] --pair NEW-OLD [--pair ...] \
        [--metrics reward/total,psnr,ssim,id_cos] [--command "how the runs were made"] --out JSON

Each EVAL_DIR is an `lrpo evaluate --out` folder; methods are found by name across them (a name
that two folders score is an error: name them apart). Every evaluation must have scored the same
faces with the same seeds, which `lrpo evaluate` does for one paired set. For each pair: the mean of
NEW - OLD per metric with a 95 % paired bootstrap interval over faces
(lrpo.eval.stats.paired_bootstrap_ci), faces where either value is missing left out; plus each
method's means. Used for the quickstart's comparisons in docs/results-cpu.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from lrpo.eval.results import PER_IMAGE_FILE, read_per_image_csv
from lrpo.eval.stats import paired_bootstrap_ci


def read_methods(folders: list[Path]) -> dict[str, dict[str, dict]]:
    """{method: {face name: row}} over the folders' per-image files (metric values as floats or None)."""
    methods: dict[str, dict[str, dict]] = {}
    for folder in folders:
        path = folder / PER_IMAGE_FILE
        if not path.is_file():
            raise SystemExit(f"{path}: not found (an `lrpo evaluate --out` folder holds one)")
        seen: dict[str, dict[str, dict]] = {}
        for row in read_per_image_csv(path):
            seen.setdefault(row["method"], {})[row["name"]] = row
        for name, rows in seen.items():
            if name in methods:
                raise SystemExit(f"{path}: method {name!r} is also in another folder; evaluate them under different names")
            methods[name] = rows
    return methods


def paired(methods: dict, new: str, old: str, metric: str) -> dict:
    faces = sorted(set(methods[new]) & set(methods[old]))
    pairs = [(methods[new][k][metric], methods[old][k][metric]) for k in faces]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    mean, low, high = paired_bootstrap_ci(a, b)
    return {"mean": round(mean, 5), "ci95": [round(low, 5), round(high, 5)], "faces": len(pairs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="`lrpo evaluate --out` folders")
    ap.add_argument("--pair", action="append", required=True, metavar="NEW-OLD", help="methods to compare (repeatable)")
    ap.add_argument("--metrics", default="reward/total,psnr,ssim,id_cos")
    ap.add_argument("--command", default="", help="how the evaluated runs were made (kept in the JSON)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    methods = read_methods(args.folders)
    metrics = args.metrics.split(",")
    for pair in args.pair:
        for name in pair.split("-", 1):
            if name not in methods:
                raise SystemExit(f"--pair {pair}: no method {name!r}; the folders score {', '.join(sorted(methods))}")
    result = {
        "bench": "paired_methods", "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/paired_methods.py", *sys.argv[1:]]),
        "runs": args.command,
        "means": {m: {k: round(float(np.nanmean([np.nan if r[k] is None else r[k] for r in rows.values()])), 5) for k in metrics}
                  for m, rows in methods.items()},
        "pairs": {pair: {k: paired(methods, *pair.split("-", 1), k) for k in metrics} for pair in args.pair},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for pair, row in result["pairs"].items():
        print(pair, "  ".join(f"{k} {v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
