"""Run logs: one JSON object per line (``log.jsonl``), appended as training goes.

A log is recorded by name in its folder's manifest (:mod:`lrpo.manifest`) when it is created or
rewritten: it keeps growing, so it has no digest to compare, and ``--overwrite`` may remove it.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import manifest


def append_record(path: Path, record: dict) -> None:
    new = not path.exists()
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if new:
        manifest.record(path.parent, [path.name], digest=False)


def rewrite_log(path: Path, history: list[dict]) -> None:
    """After a resume the log holds exactly what the checkpoint had logged: records written after
    that checkpoint belong to the abandoned continuation."""
    if path.parent.is_dir():
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        tmp.replace(path)
        manifest.record(path.parent, [path.name], digest=False)
