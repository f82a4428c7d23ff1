"""Output folders of ``lrpo degrade`` and ``lrpo restore``: lrpo deletes and overwrites only what it wrote.

What :class:`OutputFolder` guarantees (README, "What lrpo writes"):

- Checked before anything is written: OUT must not be a file, must not contain an input, and may hold
  only files lrpo recorded in its manifest (:mod:`lrpo.manifest`); other files are named and the run is
  refused, with or without ``--overwrite`` (a folder holding only the user's files is refused too: lrpo
  never mixes its outputs with files it cannot tell apart later). Earlier outputs need ``--overwrite``.
- Nothing happens to OUT until the first output is written: then ``--overwrite`` removes the earlier
  outputs (recorded, unchanged; :func:`lrpo.manifest.remove_written`) and the folder is created.
- Each file is written to a fresh hidden name beside its place (``O_CREAT | O_EXCL | O_NOFOLLOW``) and
  linked into place without replacing anything (a hard link fails on any existing name, a symbolic
  link included), so no file or link already there is written through or replaced. Sub-folders that are
  links are refused.
- ``.lrpo-output`` names the command; earlier outputs of another command (a training run's
  checkpoints are lrpo's too) are never cleared by this one.
- Names longer than a file system takes (:data:`NAME_MAX_BYTES`) are cut and get a hash suffix
  (:func:`fit_name`); every written file is recorded in the manifest as it is written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import numpy as np

from .manifest import ForeignFilesError, MANIFEST_NAME, ascii_name, claim_folder, read_manifest, record, remove_written

KIND_FILE = ".lrpo-output"  # names the command whose outputs the folder holds ("lrpo restore"), recorded too
NAME_MAX_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units there): bytes of one name
TMP_PREFIX = ".lrpo-tmp-"
_TAKEN = "the name is taken by a file lrpo did not write in this run; that file was left as it is"
_HASH_CHARS = 10  # hex digits of sha256(name) that keep cut names apart


class OutputError(ValueError):
    """An output folder lrpo refuses to write into (one line, names the folder and why)."""


def fit_name(name: str, limit: int = NAME_MAX_BYTES) -> str:
    """``name`` itself when its file-system encoding fits ``limit`` bytes; else its stem cut on a
    character boundary + ``~`` + 10 hex digits of sha256(name) + its suffix, exactly fitting."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(os.fsencode(suffix)) > 16:
        stem, suffix = name, ""
    tail = f"~{hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]}" + (f".{suffix}" if suffix else "")
    budget = limit - len(tail.encode())
    kept, used = [], 0
    for ch in stem:
        size = len(os.fsencode(ch))
        if used + size > budget:
            break
        kept.append(ch)
        used += size
    return "".join(kept) + tail


def require_input(source: str | os.PathLike) -> Path:
    """``source`` as a Path, or a one-line FileNotFoundError when nothing by that name exists."""
    path = Path(source)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{ascii_name(str(path))}: does not exist")
    return path


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


class OutputFolder:
    """A folder ``command`` writes into, checked at construction, created on the first write.

    ``inputs``: the files (and input folder) the command reads; OUT may not contain any of them.
    """

    def __init__(self, folder: str | os.PathLike, *, command: str, overwrite: bool = False,
                 inputs: Iterable[Path] = (), ignore: Iterable[str] = ()):
        self.folder = Path(folder)
        self.command, self.overwrite, self.ignore = command, overwrite, tuple(ignore)
        self.opened = False
        self._check(list(inputs))

    @property
    def name(self) -> str:
        return ascii_name(str(self.folder))

    def _check(self, inputs: list[Path]) -> None:
        f = self.folder
        if os.path.lexists(f) and not f.is_dir():
            kind = "a broken symbolic link" if f.is_symlink() else "a file"
            raise OutputError(f"{self.name} is {kind}, not a folder; {self.command} writes a folder there: choose another")
        for p in inputs:
            if _within(Path(p), f):
                raise OutputError(f"{self.name} contains the input {ascii_name(str(p))}; {self.command} writes and deletes "
                                  f"outputs there: choose an output folder outside the inputs")
        if not f.is_dir():
            return
        self._claim()
        earlier = [p for p in self.earlier_outputs() if p != KIND_FILE]
        if not earlier:
            return
        kind = self._earlier_kind()
        if kind != self.command:  # a run folder's checkpoints are lrpo's too, but not for restore --overwrite to delete
            raise OutputError(f"{self.name} holds files {ascii_name(kind) if kind else 'another lrpo command (a training run?)'} "
                              f"wrote, not outputs of {self.command}; choose another folder")
        if not self.overwrite:
            shown = ", ".join(ascii_name(p) for p in earlier[:3]) + (" ..." if len(earlier) > 3 else "")
            raise OutputError(f"{self.name} holds {len(earlier)} file(s) of an earlier {self.command} ({shown}); pass "
                              f"--overwrite to replace them (only those are deleted), or choose another folder")

    def _earlier_kind(self) -> str | None:
        """The command :data:`KIND_FILE` names (a regular file lrpo recorded), or None."""
        f = self.folder / KIND_FILE
        if KIND_FILE not in (read_manifest(self.folder) or {}) or f.is_symlink() or not f.is_file():
            return None
        with open(f, "rb") as fh:
            return fh.read(200).decode("utf-8", "replace").strip() or None

    def _claim(self) -> None:
        try:
            claim_folder(self.folder, what="output folder", ignore=self.ignore)
        except ForeignFilesError as e:
            raise OutputError(f"{e} ({self.command} writes only into a new or empty folder, or one it wrote before)") from None
        except OSError as e:
            raise OutputError(f"{self.name}: cannot read the output folder ({e.strerror or e})") from None

    def earlier_outputs(self) -> list[str]:
        """Paths the manifest records that still exist (a manifest whose files are gone holds no outputs)."""
        entries = read_manifest(self.folder) or {}
        return sorted(p for p in entries if os.path.lexists(self.folder / p))

    def open(self) -> None:
        """On the first write: clear earlier outputs (``--overwrite``) and create the folder."""
        if self.opened:
            return
        try:
            if self.overwrite and self.folder.is_dir():
                removal = remove_written(self.folder)  # recorded, unchanged files only, whatever came since the check
                if removal.kept:
                    rel, why = next(iter(removal.kept.items()))
                    raise OutputError(f"{self.name}/{ascii_name(rel)} {why}; it was kept and {self.command} stopped")
            self.folder.mkdir(parents=True, exist_ok=True)
            self.opened = True
            if not os.path.lexists(self.folder / KIND_FILE):
                self.record([self.write(KIND_FILE, lambda f: f.write(f"{self.command}\n".encode()))])
        except OSError as e:
            self.opened = False
            raise OutputError(f"{self.name}: cannot create the output folder ({e.strerror or e})") from None

    def subfolder(self, rel: str) -> Path:
        """``folder/rel``, created if needed; a link or a file on the way is refused."""
        self.open()
        cur = self.folder
        for part in Path(rel).parts:
            cur = cur / part
            try:
                os.mkdir(cur)
            except FileExistsError:
                if cur.is_symlink() or not cur.is_dir():
                    raise OSError(errno.EEXIST, "is not a folder lrpo made (a link or a file); nothing is written "
                                  "through it", str(cur)) from None
        return cur

    def write(self, rel: str, writer: Callable[[BinaryIO], None]) -> Path:
        """Write ``folder/rel`` through ``writer(file)`` without touching anything already there.

        Raises OSError (one line: the path and why) when the name is taken or the write fails.
        """
        rel_path = Path(rel)
        target = self.subfolder(str(rel_path.parent)) / rel_path.name  # Path(".").parts is (): the folder itself
        tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
            place(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def write_image(self, rel: str, image: np.ndarray, alpha: np.ndarray | None = None) -> Path:
        """An RGB uint8 image (with an optional alpha plane of the same size) as PNG at ``folder/rel``."""
        from PIL import Image  # start-up time: lrpo --help imports this module; PIL adds ~70 ms

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images are written as uint8 HxWx3, got {image.dtype} {image.shape}")
        pixels = image if alpha is None else np.dstack([image, alpha])
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return self.write(rel, lambda f: f.write(buf.getbuffer()))

    def open_log(self, rel: str):
        """A new text file lrpo appends to (``faces.jsonl``), recorded by name until :meth:`record` digests it."""
        target = self.subfolder(".") / rel
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND, 0o666)
        self.record([rel], digest=False)
        return os.fdopen(fd, "w", encoding="utf-8")

    def record(self, paths: Iterable[str | os.PathLike], digest: bool = True) -> None:
        """Append ``paths`` (written by :meth:`write`, or relative to the folder) to the manifest."""
        rels = [self._relative(Path(p)) for p in paths]
        if rels:
            record(self.folder, rels, digest=digest)


    def _relative(self, path: Path) -> Path:
        try:
            return path.relative_to(self.folder)
        except ValueError:
            return path


def place(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` only if no file, folder or link is named ``dst`` (a hard link fails then)."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, _TAKEN, str(dst)) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):  # a file system without hard links: check, then rename
            raise FileExistsError(errno.EEXIST, _TAKEN, str(dst)) from None
        os.replace(src, dst)
        return
    os.unlink(src)


def one_line(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """An OSError or ValueError as one printable line: ``PATH: why`` (the error's own file name first,
    else ``path``), without Python's '[Errno N]'."""
    if isinstance(error, OSError) and error.strerror:
        where, why = error.filename or path, error.strerror
    else:
        where, why = path, str(error)
    return ascii_name(f"{where}: {why}" if where is not None else why)


__all__ = ["KIND_FILE", "MANIFEST_NAME", "NAME_MAX_BYTES", "OutputError", "OutputFolder", "fit_name", "one_line", "place", "require_input"]


def output_folder(source: str | Path, paths: list[Path], out_dir: str | Path | OutputFolder, overwrite: bool) -> OutputFolder:
    """OUT checked for ``lrpo restore`` (see :mod:`lrpo.outputs`): not IN, holding no input, no foreign files,
    earlier outputs only with ``overwrite``. An OutputFolder (checked already, by the command line) is used as it is."""
    if isinstance(out_dir, OutputFolder):
        return out_dir
    source, out_dir = Path(source), Path(out_dir)
    if source.is_dir() and out_dir.resolve() == source.resolve():
        raise ValueError(f"{ascii_name(str(out_dir))}: OUT_DIR is IN_DIR; restoring in place would overwrite the input images")
    return OutputFolder(out_dir, command="lrpo restore", overwrite=overwrite, inputs=[source, *paths] if source.is_dir() else paths)
