"""Run logs: one JSON object per line (``log.jsonl``), appended as training goes."""

from __future__ import annotations

import json
from pathlib import Path


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_log(path: Path, history: list[dict]) -> None:
    """After a resume the log holds exactly what the checkpoint had logged: records written after
    that checkpoint belong to the abandoned continuation."""
    if path.parent.is_dir():
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        tmp.replace(path)
