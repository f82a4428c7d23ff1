"""Run logs: one JSON object per line (``log.jsonl``), appended as training goes.

A log is recorded by name in its folder's manifest (:mod:`lrpo.manifest`) when it is created or
rewritten: it keeps growing, so it has no digest to compare, and ``--overwrite`` may remove it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import manifest


def _read_umask() -> int:
    mask = os.umask(0o22)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # mkstemp makes 0600 files; a log is as readable as the user's other files


def append_record(path: Path, record: dict) -> None:
    new = not os.path.lexists(path)
    # O_NOFOLLOW: a log replaced by a link must not make lrpo append to a file outside the run
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")
    if new:
        manifest.record(path.parent, [path.name], digest=False)


def rewrite_log(path: Path, history: list[dict]) -> None:
    """After a resume the log holds exactly what the checkpoint had logged: records written after
    that checkpoint belong to the abandoned continuation."""
    if path.parent.is_dir():
        replace_text(path, "".join(json.dumps(r) + "\n" for r in history))
        manifest.record(path.parent, [path.name], digest=False)


def replace_text(path: Path, text: str) -> None:
    replace_file(path, text.encode())


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a fresh hidden file beside it (mkstemp:
    ``.<name>.XXXXXXXX``, a name that did not exist) renamed over it: a link planted at ``path``
    is replaced, never written through."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
