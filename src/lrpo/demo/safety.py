"""What keeps the demo safe to leave running: upload limits, path containment, one job at a time.

Nothing here knows about HTTP beyond a Host header; the web layer (:mod:`lrpo.demo.app`) turns
:class:`DemoError` into a message in the page (never a traceback).

* Uploads: at most ``max_bytes`` bytes, read before anything is decoded; only PNG, JPEG, WebP,
  BMP and TIFF are opened (Pillow's other plugins, EPS among them, are never reached); the pixel
  count in the header is checked before a pixel is decoded, so a decompression bomb (a 20 kB PNG
  that claims 50000 x 50000 pixels) is refused from its header alone.
* Output: the caller passes ``check_size``, which sees the header's width and height before a
  pixel is decoded, so a small file that would ask for a huge restoration is refused for free.
* Hosts: :class:`HostAllowList` is the set of Host names the demo answers to (DNS rebinding).
* Paths: the browser only ever names files relative to the run folder chosen on the command
  line. :func:`resolve_inside` resolves symlinks and ``..`` and refuses anything that lands
  outside it, so a symlink inside the run that points elsewhere is refused too.
* Jobs: :class:`JobGate` runs one restoration at a time (a CPU has no spare cores for two) and
  lets a few more wait; beyond that a request is answered "busy" at once.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.images import pil_to_rgb

__all__ = [
    "ALLOWED_FORMATS",
    "DemoError",
    "HostAllowList",
    "JobGate",
    "UploadLimits",
    "decode_upload",
    "host_allowed",
    "is_loopback",
    "resolve_inside",
]

T = TypeVar("T")

# Pillow plugin names the demo opens; everything else is refused before a plugin parses it
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class DemoError(Exception):
    """A request the demo refuses or cannot do; ``message`` is shown in the page as it is.

    ``status``: the HTTP status the web layer answers with (400 bad input, 403 refused path,
    404 not found, 413 too large, 503 busy).
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 20 * 1024 * 1024  # size of the uploaded file
    max_pixels: int = 36_000_000  # width x height of the decoded image (6000 x 6000)
    min_side: int = 8  # smaller images hold no face worth restoring

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.min_side < 1:
            raise ValueError(f"upload limits must be >= 1, got {self}")

    def describe(self) -> str:
        return f"{self.max_bytes / 2**20:.0f} MB and {self.max_pixels / 1e6:.0f} megapixels"


def decode_upload(data: bytes, limits: UploadLimits = UploadLimits(), name: str = "the upload",
                  check_size: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Uploaded file bytes -> RGB uint8 ``H x W x 3`` (EXIF orientation applied).

    ``check_size(width, height)`` (optional) runs on the header's size before any pixel is decoded
    and refuses by raising :class:`DemoError` (the work a request asks for, e.g. its output size).

    Raises:
        DemoError: empty or too large file (413), a format outside :data:`ALLOWED_FORMATS`, more
        pixels than ``limits.max_pixels`` (413, checked from the header before decoding), a
        truncated or corrupt file, or an image smaller than ``limits.min_side``.
    """
    if not data:
        raise DemoError(f"{name} is empty")
    if len(data) > limits.max_bytes:
        raise DemoError(f"{name} is {len(data) / 2**20:.1f} MB; the demo accepts files up to {limits.max_bytes / 2**20:.0f} MB", 413)
    with warnings.catch_warnings():
        # Pillow's own bomb check warns above ~89 MP and raises above ~179 MP; make both refusals
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as img:
                w, h = img.size
                if w * h > limits.max_pixels:
                    raise DemoError(_too_many_pixels(name, w, h, limits), 413)
                if min(w, h) < limits.min_side:
                    raise DemoError(f"{name} is {w} x {h} pixels; the demo needs at least {limits.min_side} px a side")
                if check_size is not None:
                    check_size(w, h)
                img.load()  # decode now: a truncated file fails here
                img = ImageOps.exif_transpose(img)
                rgb = pil_to_rgb(img)
        except DemoError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DemoError(f"{name} was refused as a decompression bomb ({e})", 413) from None
        except UnidentifiedImageError:
            raise DemoError(f"{name} is not an image the demo opens (PNG, JPEG, WebP, BMP or TIFF)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DemoError(f"{name} is corrupt or truncated ({e})") from None
    return rgb


def _too_many_pixels(name: str, w: int, h: int, limits: UploadLimits) -> str:
    return (f"{name} is {w} x {h} pixels ({w * h / 1e6:.1f} megapixels); the demo accepts at most "
            f"{limits.max_pixels / 1e6:.0f} megapixels (a tiny file claiming that many is a decompression bomb)")


def resolve_inside(root: str | os.PathLike, relative: str, what: str = "path") -> Path:
    """``root / relative`` with symlinks and ``..`` resolved, refused unless it stays inside ``root``.

    ``relative`` comes from the browser: absolute paths, NUL bytes, backslashes and any part that
    resolves outside ``root`` (``..``, a symlink pointing elsewhere) raise :class:`DemoError`
    (403). The path need not exist; callers check that.
    """
    if not isinstance(relative, str) or "\x00" in relative or "\\" in relative:
        raise DemoError(f"{what} {relative!r} is not allowed", 403)
    if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise DemoError(f"{what} {relative!r} must be relative to the run folder", 403)
    base = Path(root).resolve(strict=True)
    target = (base / relative).resolve(strict=False)
    if target != base and base not in target.parents:
        raise DemoError(f"{what} {relative!r} leaves the run folder; refused", 403)
    return target


HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _host_key(name: str) -> str:
    """A Host name as compared: IP literals in one spelling (``::ffff:127.0.0.1`` is ``127.0.0.1``),
    names in lower case."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostAllowList:
    """The Host names the demo answers to; any other is refused (421), whatever address it listens on.

    DNS rebinding makes a browser send a page's own name (``evil.example``) to this server's address,
    so that page becomes same-origin with the demo. A refused name defeats it. An IP literal cannot be
    rebound (the page's origin would be that IP, not the attacker's name), so ``any_ip`` (a wildcard
    bind such as 0.0.0.0, whose own address is every address of the machine) admits any IP literal.
    """

    names: frozenset[str]  # _host_key spellings
    any_ip: bool = False
    any_host: bool = False  # "*": no check (only for tests and explicit callers, never from the CLI)

    @classmethod
    def of(cls, names: Iterable[str]) -> "HostAllowList":
        names = list(names)
        return cls(frozenset(_host_key(n) for n in names if n != "*"), any_host="*" in names)

    @classmethod
    def for_bind(cls, host: str, extra: Iterable[str] = ()) -> "HostAllowList":
        """The default for ``--host host``: the loopback names, ``host`` itself (any IP literal for a
        wildcard address) and ``extra`` (``--allow-host``). Raises ValueError naming a bad ``extra``."""
        extra = list(extra)
        for name in extra:
            if not (_is_ip(name) or HOST_NAME.match(name.lower())):
                raise ValueError(f"--allow-host {name!r} is not a host name or IP address (a name such as "
                                 "demo.lan or an address such as 192.168.1.5; '*' is not allowed: name each host)")
        wildcard = host in ("0.0.0.0", "::", "")
        names = [*LOOPBACK_NAMES, *([] if wildcard else [host]), *extra]
        return cls(frozenset(_host_key(n) for n in names), any_ip=wildcard)

    def allows(self, host_header: str | None) -> bool:
        if self.any_host:
            return True
        if not host_header:
            return False
        try:
            name = urlsplit("//" + host_header).hostname
        except ValueError:
            return False
        if name is None:
            return False
        return _host_key(name) in self.names or (self.any_ip and _is_ip(name))

    def describe(self) -> str:
        return ", ".join(sorted(self.names)) + (" and any IP address" if self.any_ip else "")


def host_allowed(host_header: str | None, allowed: "HostAllowList | Iterable[str]") -> bool:
    """Whether a request's Host header names one of ``allowed`` (the port is ignored; ``"*"``: any)."""
    allow = allowed if isinstance(allowed, HostAllowList) else HostAllowList.of(allowed)
    return allow.allows(host_header)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost``, 127.0.0.0/8, ``::1`` or ``::ffff:127.x.y.z``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(_host_key(host)).is_loopback
    except ValueError:
        return False


class JobGate:
    """One job at a time; up to ``max_waiting`` more wait their turn; the next is refused (503).

    ``run(fn)`` blocks the calling (worker) thread until the job before it has finished. Used from
    the web layer's thread pool, so the event loop keeps answering (the Run tab, "busy" replies).
    """

    def __init__(self, max_waiting: int = 4):
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.max_waiting = max_waiting
        # runs a job and returns its result (None: on the calling thread; `lrpo demo` hands jobs to
        # the main thread, lrpo.demo.mainthread)
        self.executor: Callable[[Callable[[], T]], T] | None = None
        self._run = threading.Lock()
        self._count = threading.Lock()
        self._admitted = 0  # running + waiting

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def full(self) -> bool:
        """Whether :meth:`run` would refuse a job now."""
        return self._admitted >= 1 + self.max_waiting

    def run(self, fn: Callable[[], T]) -> T:
        with self._count:
            if self.full:
                raise DemoError(f"the demo is busy ({self._admitted} jobs running or waiting); try again in a moment", 503)
            self._admitted += 1
        try:
            with self._run:
                return self.executor(fn) if self.executor is not None else fn()
        finally:
            with self._count:
                self._admitted -= 1
