"""The web layer: a Starlette app serving one static page and a small JSON API, run by uvicorn.

Routes (every answer of ``/api`` is JSON, errors as ``{"error": message}``, never a traceback)::

    GET  /                    the page (static/index.html, demo.js, demo.css)
    GET  /api/info            the loaded model and the models to choose from, defaults, reward terms and
                              presets, detector, limits, runs
    GET  /api/example/NAME    the embedded public-domain examples: photo.png, face.png
    POST /api/restore?...     body: the image file -> restored image, faces, timings
    POST /api/group?...       body: one face -> G scored candidates with advantages
                              (both take model=NAME, a name from /api/info's list: loaded in the job)
    GET  /api/run?name=RUN    curves, guard events, sample grid names of a run under --runs
    GET  /api/run/grid?name=RUN&file=epoch_NNNN.png   one sample grid (PNG)

POSTs must carry the header ``X-LRPO-Demo: 1``: a page on another site cannot add it without a
CORS preflight, which this server never grants, so it cannot make a browser run jobs here. Requests
whose Host is not on the allow-list (:class:`~lrpo.demo.safety.HostAllowList`: loopback names, the
bound address, ``--allow-host``) are refused with 421 (DNS rebinding). Every answer, refusals and
errors included, carries :data:`SECURITY_HEADERS`; connections are held to the deadlines of
:mod:`lrpo.demo.connections`.

Starlette and uvicorn (the demo extra) are imported at the top: :func:`lrpo.demo.run_demo` imports
this module only after checking that they are installed.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import sys
import threading
import traceback
from importlib import resources
from typing import Awaitable, Callable

import cv2
import torch
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import DEGRADATION_PRESETS
from ..data.images import to_tensor, to_uint8
from ..data.samples import ASTRONAUT_FACE_BOX, astronaut_photo
from ..degradation.pipeline import DegradationParams, degrade
from .connections import ConnectionLimits, guarded_protocol
from .mainthread import MainThreadJobs
from .safety import LOOPBACK_NAMES, DemoError, HostAllowList, decode_upload, is_loopback
from .service import DemoService, GroupRequest, RestoreRequest, check_restore_size

__all__ = ["SECURITY_HEADERS", "create_app", "example_image", "make_server", "serve"]

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: one "WARNING:  ..." line on stderr

CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
# on every answer; Cross-Origin-Resource-Policy keeps another site's page from embedding /api/run*
# images or reading them through a no-cors request
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                    (b"cross-origin-resource-policy", b"same-origin")]
STATIC = {"index.html": "text/html; charset=utf-8", "demo.js": "text/javascript; charset=utf-8",
          "demo.css": "text/css; charset=utf-8"}
EXAMPLES = ("photo.png", "face.png", "face-hq.png")
EXAMPLE_PHOTO_SIDE = 256  # the whole-photo example: its face then spans about the 64 px policies' crop
EXAMPLE_FACE_SIDE = 128
# one fixed degradation of the examples (blur sigma 1.2 px, 2x down, noise 4/255, JPEG 45), so that
# Restore has something to restore; the Group tab degrades the clean face itself
EXAMPLE_DEGRADATION = dict(kernel="iso", sigma_x=1.2, sigma_y=1.2, angle=0.0, scale=2.0, noise_sigma=4.0, jpeg_quality=45)


def example_image(name: str):
    """The embedded public-domain examples, from scikit-image's astronaut photo (NASA):
    ``photo.png`` the photo, degraded; ``face.png`` its aligned face crop, degraded; ``face-hq.png``
    the clean face crop."""
    if name not in EXAMPLES:
        raise DemoError(f"no example {name!r}; examples: {', '.join(EXAMPLES)}", 404)
    photo = astronaut_photo()
    r0, r1, c0, c1 = ASTRONAUT_FACE_BOX
    if name == "photo.png":
        image = cv2.resize(photo, (EXAMPLE_PHOTO_SIDE,) * 2, interpolation=cv2.INTER_AREA)
    else:
        image = cv2.resize(photo[r0:r1, c0:c1], (EXAMPLE_FACE_SIDE,) * 2, interpolation=cv2.INTER_AREA)
    if name == "face-hq.png":
        return image
    lq, _ = degrade(to_tensor(image)[None], DEGRADATION_PRESETS["mild"], torch.Generator().manual_seed(0),
                    params=[DegradationParams(**EXAMPLE_DEGRADATION)])
    return to_uint8(lq[0])


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class _ClientGone(Exception):
    """The client closed its connection while sending the body (``size`` bytes read)."""

    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


def create_app(service: DemoService, allowed_hosts: "HostAllowList | tuple[str, ...]" = LOOPBACK_NAMES):
    """The ASGI app for ``service``; ``allowed_hosts`` (names, "*": any, or a HostAllowList) are the
    Host names it answers to."""
    api = _Endpoints(service)
    routes = [
        Route("/", _guarded(_page("index.html"))),
        Route("/static/demo.js", _guarded(_page("demo.js"))),
        Route("/static/demo.css", _guarded(_page("demo.css"))),
        Route("/api/info", _guarded(api.info)),
        Route("/api/example/{name}", _guarded(api.example)),
        Route("/api/restore", _guarded(api.restore), methods=["POST"]),
        Route("/api/group", _guarded(api.group), methods=["POST"]),
        Route("/api/run", _guarded(api.run)),
        Route("/api/run/grid", _guarded(api.run_grid)),
    ]
    app = Starlette(routes=routes)
    allow = allowed_hosts if isinstance(allowed_hosts, HostAllowList) else HostAllowList.of(allowed_hosts)
    return _SecurityMiddleware(app, allow)


def _guarded(fn: Callable[[Request], Awaitable[Response]]):
    """``fn`` as a route: POSTs without the demo's header refused, every error one JSON line
    (a fault of ours: its traceback in the server log), answers never cached."""
    async def endpoint(request: Request) -> Response:
        try:
            if request.method == "POST" and request.headers.get("x-lrpo-demo") != "1":
                raise DemoError("requests must come from the demo's own page", 403)
            response = await fn(request)
        except _ClientGone as e:  # nobody to answer: one line, no traceback
            log.warning("lrpo demo: %s closed the connection during its upload to %s (%d bytes read); dropped",
                        _peer(request), request.url.path, e.size)
            return Response(status_code=400)
        except DemoError as e:
            response = JSONResponse({"error": e.message}, status_code=e.status)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:  # lrpo's user-facing errors
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            response = JSONResponse({"error": str(msg).splitlines()[0] if msg else type(e).__name__}, status_code=400)
        except Exception as e:  # a fault of ours: one line in the page, the traceback in the server log
            traceback.print_exc(file=sys.stderr)
            response = JSONResponse({"error": f"internal error ({type(e).__name__}); the server's log has the details"},
                                    status_code=500)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return endpoint


async def _read_body(service: DemoService, request: Request) -> bytes:
    """The upload, refused (413) past ``service.limits.max_bytes`` whatever Content-Length claims."""
    if service.gate.full:  # say so before taking a large upload into memory
        raise DemoError("the demo is busy (its queue of jobs is full); try again in a moment", 503)
    limit = service.limits.max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise DemoError(f"the file is {int(declared) / 2**20:.1f} MB; the demo accepts files up to {limit / 2**20:.0f} MB", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # stop reading: a lying or missing Content-Length gains nothing
                raise DemoError(f"the file is larger than {limit / 2**20:.0f} MB, the demo's limit", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise _ClientGone(size) from None
    return b"".join(chunks)


def _page(name: str):
    """A route serving the static file ``name`` (read once, when the app is made)."""
    body = resources.files("lrpo.demo").joinpath("static", name).read_bytes()

    async def serve_static(request: Request) -> Response:
        return Response(body, media_type=STATIC[name])

    return serve_static


class _Endpoints:
    """The API routes of one service; the example images are made on first request and kept."""

    def __init__(self, service: DemoService):
        self.service = service
        self.examples: dict[str, bytes] = {}

    async def info(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(self.service.info))  # lists run folders: off the event loop

    async def example(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in EXAMPLES:
            raise DemoError(f"no example {name!r}; examples: {', '.join(EXAMPLES)}", 404)
        if name not in self.examples:
            self.examples[name] = _png_bytes(example_image(name))
        return Response(self.examples[name], media_type="image/png")

    async def restore(self, request: Request) -> Response:
        service = self.service
        req = RestoreRequest.from_params(request.query_params)
        data = await _read_body(service, request)

        def job():
            def check(w: int, h: int) -> None:  # from the header: refused before a pixel is decoded
                check_restore_size(w, h, req)

            return service.restore(decode_upload(data, service.limits, "the uploaded image", check), req)

        return JSONResponse(await run_in_threadpool(service.gate.run, job))

    async def group(self, request: Request) -> Response:
        service = self.service
        req = GroupRequest.from_params(request.query_params)
        data = await _read_body(service, request)

        def job():
            return service.group(decode_upload(data, service.limits, "the uploaded face"), req)

        return JSONResponse(await run_in_threadpool(service.gate.run, job))

    def _runs(self):
        if self.service.runs is None:
            raise DemoError("no run folder was given: start the demo with --runs DIR (a training out_dir or a folder of them)", 404)
        return self.service.runs

    async def run(self, request: Request) -> Response:
        runs = self._runs()
        name = request.query_params.get("name", ".")
        return JSONResponse(await run_in_threadpool(runs.summary, name))

    async def run_grid(self, request: Request) -> Response:
        runs = self._runs()
        data = await run_in_threadpool(runs.grid, request.query_params.get("name", "."), request.query_params.get("file", ""))
        return Response(data, media_type="image/png")


def _peer(request) -> str:
    client = request.client
    return f"the client at {client.host}:{client.port}" if client else "a client"


class _SecurityMiddleware:
    """Refuse requests for other Host names; add the headers that keep the page to itself to every
    answer, this layer's own refusals and errors included."""

    def __init__(self, app, allowed_hosts: HostAllowList):
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not self.allowed_hosts.allows(host):
            return await _json_answer(send, 421, f"this demo answers only to its own address, not Host {host!r} "
                                      f"(allowed: {self.allowed_hosts.describe()}; start it with --allow-host NAME to add one)")
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = dict(message, headers=list(message.get("headers", [])) + SECURITY_HEADERS)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as e:  # a fault past the routes' own handling: the trace in the log, a line in the page
            traceback.print_exc(file=sys.stderr)
            if not started:
                await _json_answer(send, 500, f"internal error ({type(e).__name__}); the server's log has the details")


async def _json_answer(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 takes a free one (read it from getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def make_server(service: DemoService, allowed_hosts: HostAllowList, limits=None):
    """The uvicorn server for ``service`` (run it with ``.run(sockets=[bind(...)])``): the app behind
    the Host allow-list, on the guarded h11 protocol with ``limits`` (a ConnectionLimits; None: the
    defaults)."""
    protocol = guarded_protocol(limits or ConnectionLimits(), SECURITY_HEADERS)
    config = uvicorn.Config(create_app(service, allowed_hosts), http=protocol, ws="none", lifespan="off",
                            log_level="warning", timeout_keep_alive=5, server_header=False)
    return uvicorn.Server(config)


def serve(service: DemoService, host: str = "127.0.0.1", port: int = 7860, allow_hosts: tuple[str, ...] = ()) -> None:
    """Serve until Ctrl-C. Prints the address (with the real port when ``port`` is 0) first.
    ``allow_hosts``: Host names to answer besides the defaults of :meth:`HostAllowList.for_bind`."""
    allowed = HostAllowList.for_bind(host, allow_hosts)
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"lrpo demo: serving {service.source} on http://{shown}:{actual}/ (Ctrl-C stops)", flush=True)
    if not is_loopback(host):
        print(f"lrpo demo: warning: --host {host} is not loopback; anyone who can reach this machine can use the demo "
              f"(it answers to Host {allowed.describe()})", flush=True)
    server = make_server(service, allowed)
    if threading.current_thread() is not threading.main_thread():  # (run_demo called from a thread of the caller's)
        server.run(sockets=[sock])
        return
    jobs = MainThreadJobs()
    service.gate.executor = jobs.execute  # the jobs on this (main) thread: torch is faster here
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lrpo-demo-server", daemon=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    thread.start()
    try:
        jobs.serve_until(lambda: stop.is_set() or not thread.is_alive())
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(timeout=10)
