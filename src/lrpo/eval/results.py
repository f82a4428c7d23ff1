"""What an evaluation writes into its ``--out`` folder: the file names and the per-image CSV.

The run (:mod:`lrpo.eval.evaluate`) writes these files and the report (:mod:`lrpo.eval.report`)
reads them back, so both take the names from here.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "INPUT_METHOD",
    "METRICS_FILE",
    "OUTPUTS_DIR",
    "PER_IMAGE_FILE",
    "REPORT_FILE",
    "TABLE_FILES",
    "read_per_image_csv",
    "write_per_image_csv",
]

INPUT_METHOD = "input"  # name of the baseline row: the LQ input scored as if it were an output
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
REPORT_FILE = "report.html"
TABLE_FILES = ("table.md", "table.tex")  # with --table (lrpo.eval.table)
OUTPUTS_DIR = "outputs"  # outputs/<method>/<name>.png: our checkpoints' restorations


def write_per_image_csv(path: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> Path:
    """One line per (method, image): ``method,name,<metric>...``; empty when not computed, ``nan``
    when it failed (e.g. LMD without a detected face)."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # non-UTF-8 file names as their bytes
        writer = csv.writer(f)
        writer.writerow(["method", "name", *keys])
        for r in rows:
            writer.writerow([r["method"], r["name"], *("" if r.get(k) is None else repr(float(r[k])) for k in keys)])
    return path


def read_per_image_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of :func:`write_per_image_csv` with metric values as floats (None when empty)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        return [
            {k: (v if k in ("method", "name") else (None if v == "" else float(v))) for k, v in row.items()}
            for row in reader
        ]
