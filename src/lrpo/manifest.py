"""What lrpo wrote into a folder, so that it deletes and overwrites only that.

Every folder lrpo writes into (a run folder, a ``degrade`` or ``restore`` output) carries a hidden
append-only file, :data:`MANIFEST_NAME`, one JSON object a line::

    {"path": "step_000500/model.safetensors", "bytes": 1234, "sha256": "ab12..."}
    {"path": "log.jsonl", "bytes": null, "sha256": null}      # a file lrpo keeps appending to

A later line for the same path replaces the earlier one. Appending is O(1) per file and a line torn
by a crash is ignored (its file then counts as not written by lrpo, the safe side).

``--overwrite`` calls :func:`remove_written`: it deletes the recorded files that are still what lrpo
wrote (same size and sha256; files recorded without a digest only need to be regular files) and
nothing else. Before it, :func:`claim_folder` refuses a folder holding files lrpo did not record,
and names them. Paths in a manifest are data from the folder: only relative paths that stay inside
the folder are honoured, and symbolic links are never followed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

MANIFEST_NAME = ".lrpo-manifest.jsonl"
_CHUNK = 1 << 20
# Python's tempfile names: 8 characters from this alphabet after the prefix lrpo chose
_RANDOM = r"[a-z0-9_]{8}"
# the exact hidden names lrpo gives what it is writing, replacing or deleting in a run folder:
# checkpoint folders (mkdtemp ".<name>.tmp-", aside as ".<name>.old-"/".<name>.del-"), files
# (mkstemp ".latest.", ".log.jsonl.") and the manifest's rewrite. A name of another shape
# (".latest.backup/", "log.jsonl.tmp") is the user's.
_TEMP_DIR = re.compile(rf"^\.(?P<name>step_\d+|best)\.(?P<tag>tmp|old|del)-{_RANDOM}$")
_TEMP_FILE = re.compile(rf"^(\.(latest|log\.jsonl)\.{_RANDOM}|{re.escape(MANIFEST_NAME)}\.tmp)$")
# what an interrupted output command leaves: degrade's working folder, restore's file being written
_INTERRUPTED = {re.compile(rf"^\.lrpo-partial-{_RANDOM}$"): ("lrpo degrade", True),
                re.compile(r"^\.lrpo-tmp-[0-9a-f]{12}$"): ("lrpo restore", False)}


class ForeignFilesError(FileExistsError):
    """A folder lrpo was asked to write into (or clear) holds files lrpo did not write."""

    def __init__(self, message: str, files: list[str]):
        super().__init__(message)
        self.files = files


@dataclass(frozen=True)
class Entry:
    path: str  # relative, '/'-separated, inside the folder
    bytes: int | None  # None: a file lrpo keeps appending to (a log): no size or digest to compare
    sha256: str | None


@dataclass
class Removal:
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # path -> why it was kept (changed since written, a link)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def safe_relative(name: str) -> str | None:
    """``name`` as a clean relative '/'-path inside a folder, or None when it would leave it
    (absolute, '..', empty, NUL)."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        return None
    p = PurePosixPath(name)  # drops "." parts: PurePosixPath(".").parts is empty
    if not p.parts or p.is_absolute() or ".." in p.parts:
        return None
    return "/".join(p.parts)


def temp_match(path: Path) -> re.Match | None:
    """The match when ``path`` (a top-level entry of a run folder) has exactly the shape and kind
    (folder or file, never a link) of a temporary name lrpo gives a checkpoint, ``latest``, the log
    or the manifest while writing them; ``name`` and ``tag`` groups for checkpoint folders."""
    if path.is_symlink():
        return None
    if path.is_dir():
        return _TEMP_DIR.match(path.name)
    return _TEMP_FILE.match(path.name) if path.is_file() else None


def interrupted_by(rel: str, folder: Path) -> str | None:
    """The lrpo command whose interrupted run left ``rel`` (a path in ``folder``), by its exact name
    and kind; None for anything else."""
    name, full = PurePosixPath(rel.rstrip("/")).name, folder / rel.rstrip("/")
    for shape, (command, is_dir) in _INTERRUPTED.items():
        if shape.match(name) and not full.is_symlink() and (full.is_dir() if is_dir else full.is_file()):
            return command
    return None


def read_manifest(folder: str | os.PathLike) -> dict[str, Entry] | None:
    """The manifest's entries (last line per path wins), or None when the folder has none."""
    f = Path(folder) / MANIFEST_NAME
    if f.is_symlink() or not f.is_file():
        return None
    entries: dict[str, Entry] = {}
    for line in f.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash, or garbage: ignored (its file counts as foreign)
        if not isinstance(rec, dict):
            continue
        rel = safe_relative(rec.get("path"))
        size, digest = rec.get("bytes"), rec.get("sha256")
        if rel is None or not (size is None or isinstance(size, int)) or not (digest is None or isinstance(digest, str)):
            continue
        entries[rel] = Entry(rel, size, digest)
    return entries


def record(folder: str | os.PathLike, paths: Iterable[str | os.PathLike], *, digest: bool = True) -> None:
    """Append entries for ``paths`` (files inside ``folder``, as absolute paths or relative to it).

    ``digest=False`` records a file lrpo will keep appending to (a log), by name only.
    """
    folder = Path(folder)
    lines = []
    for p in paths:
        p = Path(p)
        full = p if p.is_absolute() else folder / p
        rel = safe_relative(full.relative_to(folder).as_posix())
        if rel is None:
            raise ValueError(f"{full}: not inside {folder}")
        if digest:
            lines.append({"path": rel, "bytes": full.stat().st_size, "sha256": sha256_file(full)})
        else:
            lines.append({"path": rel, "bytes": None, "sha256": None})
    _append(folder, lines)


def record_digests(folder: str | os.PathLike, digests: Mapping[str, tuple[int, str]]) -> None:
    """Append entries for files whose size and sha256 the caller has just computed (a checkpoint's
    writer hashes its files for meta.json already): ``{relative path: (bytes, sha256)}``."""
    lines = []
    for rel, (size, digest) in digests.items():
        clean = safe_relative(rel)
        if clean is None:
            raise ValueError(f"{rel}: not a path inside {folder}")
        lines.append({"path": clean, "bytes": int(size), "sha256": str(digest)})
    _append(Path(folder), lines)


def _append(folder: Path, lines: list[dict]) -> None:
    if not lines:
        return
    # O_NOFOLLOW: a manifest replaced by a link would make lrpo append to a file elsewhere
    _write_lines(folder / MANIFEST_NAME, lines, os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW)


def _write_lines(path: Path, lines: list[dict], flags: int) -> None:
    """One JSON object a line, written and fsynced through a descriptor opened with ``flags``."""
    text = "".join(json.dumps(rec, ensure_ascii=True) + "\n" for rec in lines)
    fd = os.open(path, os.O_WRONLY | flags, 0o666)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def is_unchanged(folder: Path, entry: Entry) -> str | None:
    """None when ``entry``'s file is still what lrpo wrote, else why not (a few words)."""
    f = folder / entry.path
    if f.is_symlink():
        return "is a symbolic link"
    if not f.is_file():
        return "is not a regular file"
    if entry.bytes is None:
        return None
    if f.stat().st_size != entry.bytes:
        return "changed since lrpo wrote it (size)"
    if entry.sha256 is not None and sha256_file(f) != entry.sha256:
        return "changed since lrpo wrote it (sha256)"
    return None


def foreign_files(folder: str | os.PathLike, ignore: Iterable[str] = (), *, whole_folders: bool = True) -> list[str]:
    """Files, links and folders under ``folder`` that lrpo did not record (relative paths, sorted).

    ``ignore``: names at the top of the folder that the caller accounts for itself (lrpo's own hidden
    temporary names, say). A recorded file that changed since is foreign too: it is the user's now.
    A folder lrpo recorded nothing in is one entry ``name/``, or with ``whole_folders=False`` each
    file in it (an empty one stays ``name/``), so that a message can name the user's files.
    """
    folder = Path(folder)
    entries = read_manifest(folder) or {}
    ignore = set(ignore) | {MANIFEST_NAME}
    recorded_dirs = {str(PurePosixPath(p).parent) for p in entries} | {
        str(parent) for p in entries for parent in PurePosixPath(p).parents}
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        rel_root = Path(root).relative_to(folder).as_posix()
        for name in sorted(dirs + files):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel_root == "." and name in ignore:
                if name in dirs:
                    dirs.remove(name)
                continue
            full = Path(root) / name
            if name in dirs and not full.is_symlink():
                if rel not in recorded_dirs and (whole_folders or not any(full.iterdir())):
                    found.append(rel + "/")
                    dirs.remove(name)  # one line for a whole foreign (or empty) folder
                continue
            entry = entries.get(rel)
            if entry is None or is_unchanged(folder, entry) is not None:
                found.append(rel)
    return sorted(found)


def unrecorded(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (paths inside ``folder``) that exist but are not files lrpo recorded there,
    unchanged: writing one of them would replace a file that is not lrpo's."""
    folder = Path(folder)
    entries = read_manifest(folder) or {}
    out = []
    for name in names:
        rel = safe_relative(name)
        if rel is None or not os.path.lexists(folder / rel):
            continue
        entry = entries.get(rel)
        if entry is None or _inside_without_links(folder, rel) or is_unchanged(folder, entry):
            out.append(rel)
    return out


def describe(files: list[str], limit: int = 8) -> str:
    shown = ", ".join(ascii_name(f) for f in files[:limit])
    return shown + (f" and {len(files) - limit} more" if len(files) > limit else "")


def ascii_name(name: str) -> str:
    """A file name fit for one line of output: control characters and non-printables escaped."""
    if name.isprintable():
        return name
    return repr(name)[1:-1]


def claim_folder(folder: str | os.PathLike, *, what: str, ignore: Iterable[str] = ()) -> None:
    """Refuse to write or clear ``folder`` when it holds files lrpo did not record there."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    foreign = foreign_files(folder, ignore)
    if foreign:
        raise ForeignFilesError(describe_foreign(folder, foreign, what), foreign)


def describe_foreign(folder: Path, foreign: list[str], what: str) -> str:
    """One line naming ``foreign``, with what an interrupted lrpo command left said apart: lrpo
    cannot prove such a leftover is its own (it was never recorded), so the user deletes it."""
    left = {f: c for f in foreign if (c := interrupted_by(f, folder))}
    others = [f for f in foreign if f not in left]
    notes = []
    for command in sorted(set(left.values())):
        names = [f for f, c in left.items() if c == command]
        notes.append(f"{describe(names)} {'was' if len(names) == 1 else 'were'} left by an interrupted {command}: "
                     f"delete {'it' if len(names) == 1 else 'them'}")
    if not others:
        return f"{folder}: {'; '.join(notes)} (lrpo deletes only files it recorded as written)"
    return (f"{folder} holds files lrpo did not write ({describe(others)}); lrpo only replaces or deletes what it wrote "
            f"itself. Move them elsewhere or choose another {what}" + "".join(f"; {n}" for n in notes))


def remove_written(folder: str | os.PathLike) -> Removal:
    """Delete the files the manifest records that are still what lrpo wrote, then the folders that
    became empty and the manifest itself when nothing recorded is left. Nothing else is touched."""
    folder = Path(folder)
    entries = read_manifest(folder) or {}
    out = Removal()
    for rel, entry in sorted(entries.items()):
        f = folder / rel
        if not os.path.lexists(f):
            continue
        why = _inside_without_links(folder, rel) or is_unchanged(folder, entry)
        if why:
            out.kept[rel] = why
            continue
        f.unlink()
        out.removed.append(rel)
    for d in sorted({str(parent) for p in entries for parent in PurePosixPath(p).parents if str(parent) != "."},
                    key=lambda s: -s.count("/")):
        full = folder / d
        if full.is_dir() and not full.is_symlink() and not any(full.iterdir()):
            full.rmdir()
    if not out.kept:
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
    else:
        _rewrite(folder, {k: v for k, v in entries.items() if k in out.kept})
    return out


def _inside_without_links(folder: Path, rel: str) -> str | None:
    """None when no folder on the way from ``folder`` to ``rel`` is a symbolic link."""
    cur = folder
    for part in PurePosixPath(rel).parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            return f"lies behind the symbolic link {cur.relative_to(folder).as_posix()}"
    return None


def _rewrite(folder: Path, entries: dict[str, Entry]) -> None:
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.unlink(missing_ok=True)
    lines = [{"path": e.path, "bytes": e.bytes, "sha256": e.sha256} for e in entries.values()]
    _write_lines(tmp, lines, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
    os.replace(tmp, folder / MANIFEST_NAME)
