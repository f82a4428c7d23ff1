"""The demo's server against misbehaving clients, with real sockets on 127.0.0.1: idle and slow
connections are timed out or pushed aside, every answer carries the security headers, the Host
allow-list holds off loopback, a client that leaves mid-upload is one log line, and a restoration is
capped by the pixels it would write, before decoding.

The server runs the production recipe (``make_server``) in a thread, with shorter deadlines than the
defaults so that the whole file takes a few seconds; the defaults are checked to be of the same kind.
"""

from __future__ import annotations

import http.client
import json
import logging
import select
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.demo.test_safety import _png, _png_header_only
from tests.conftest import demo_server

pytest.importorskip("starlette", reason='the demo needs pip install "lrpo[demo]"')

from lrpo.demo.app import SECURITY_HEADERS  # noqa: E402
from lrpo.demo.connections import ConnectionLimits  # noqa: E402
from lrpo.demo.safety import DemoError, HostAllowList, UploadLimits, is_loopback  # noqa: E402

# short deadlines for the tests (the defaults are 5 s / 5 s); a check every 0.1 s
LIMITS = ConnectionLimits(header_timeout=1.5, body_grace=1.0, min_body_rate=10_000.0, body_timeout=30.0,
                          max_connections=64, check_every=0.1)


@pytest.fixture(scope="module")
def service(tiny_run: Path, tmp_path_factory):
    from tests.conftest import single_thread
    from lrpo.demo.service import DemoService

    with single_thread():
        # the default upload limits (20 MB, 36 MP): the output caps must refuse what they let through
        yield DemoService(tiny_run, device="cpu", detector_path=str(tmp_path_factory.mktemp("no_detector")),
                          limits=UploadLimits(), max_waiting=0, reward_names=["dwt"])


def running(service, allowed: HostAllowList, limits: ConnectionLimits = LIMITS):
    """The demo's server on a free loopback port in a thread, with this file's short deadlines."""
    return demo_server(service, allowed, limits)


@pytest.fixture(scope="module")
def server(service):
    with running(service, HostAllowList.for_bind("127.0.0.1")) as port:
        yield port


@pytest.fixture
def demo_log():
    """The records the demo writes to uvicorn's error logger while a test runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _get(port, path, headers=None, method="GET", body=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"X-LRPO-Demo": "1", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Send ``trickle`` a byte every 0.1 s until the server closes ``sock``; the seconds it took, or None."""
    t0 = time.monotonic()
    for i in range(int(seconds / 0.1) + 1):
        try:
            if i < len(trickle):
                sock.send(trickle[i : i + 1])
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and sock.recv(4096) == b"":
                return time.monotonic() - t0
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
    return None


def _open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


# ---------------------------------------------------------------------------------------------
# idle and slow connections
# ---------------------------------------------------------------------------------------------
def test_idle_sockets_do_not_lock_out_a_visitor(server):
    """70 sockets that send nothing (more than the 64 places): a normal request is still answered at
    once (an idle socket gives up its place), and every idle socket is closed by the header deadline."""
    idle = _open_idle(server, 70)
    try:
        time.sleep(0.3)  # let the server accept them all
        t0 = time.monotonic()
        status, _, body = _get(server, "/api/info", timeout=5)
        seconds = time.monotonic() - t0
        assert status == 200 and "limits" in json.loads(body), (status, body[:200])
        assert seconds < 3.0, seconds
        # each idle socket is closed within the header deadline (1.5 s here) plus slack for a busy machine
        deadline = time.monotonic() + LIMITS.header_timeout + 4.0
        for s in idle:
            assert _closed_within(s, max(0.1, deadline - time.monotonic())) is not None
    finally:
        for s in idle:
            s.close()


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_deadline(server):
    """Bytes arriving do not extend the header deadline (the slowloris attack)."""
    request = b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        took = _closed_within(s, LIMITS.header_timeout + 4.0, trickle=request)
    assert took is not None and LIMITS.header_timeout - 0.3 <= took <= LIMITS.header_timeout + 4.0, took


def test_a_body_sent_a_byte_at_a_time_is_cut_and_logged_in_one_line(server, demo_log):
    """A declared 100 kB body sent at 10 B/s: cut after the grace (1 s here), one log line, and the
    next request is served."""
    head = (b"POST /api/restore?aligned=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-LRPO-Demo: 1\r\n"
            b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(head)
        took = _closed_within(s, LIMITS.body_grace + 4.0, trickle=b"\0" * 100)
    assert took is not None and LIMITS.body_grace - 0.2 <= took <= LIMITS.body_grace + 4.0, took
    lines = [r.getMessage() for r in demo_log if "request body came" in r.getMessage()]
    assert len(lines) == 1 and "under 10 kB/s" in lines[0] and "\n" not in lines[0], lines
    assert _get(server, "/api/info")[0] == 200


def test_a_fast_body_is_read_whole(server):
    """The body rule leaves a normal upload alone: a 1 MB body, bigger than uvicorn's 64 kB read
    buffer, arrives and is answered (decoded: this one is not an image)."""
    status, _, body = _get(server, "/api/restore?aligned=1", method="POST", body=b"\1" * 2**20)
    assert status == 400 and "not an image the demo opens" in json.loads(body)["error"]


def test_default_deadlines_are_a_few_seconds():
    d = ConnectionLimits()
    assert d.header_timeout <= 10 and d.body_grace <= 10 and d.max_connections >= 16
    with pytest.raises(ValueError, match="max_connections"):
        ConnectionLimits(max_connections=0)


# ---------------------------------------------------------------------------------------------
# headers on every answer
# ---------------------------------------------------------------------------------------------
def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_every_answer_carries_the_security_headers(server, service):
    face = _png(np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
    cases = [
        ("GET", "/", None, {}, 200),
        ("GET", "/api/run?name=x", None, {}, 404),  # no --runs here
        ("GET", "/nowhere", None, {}, 404),
        ("POST", "/api/info", b"", {}, 405),
        ("GET", "/", None, {"Host": "rebound.example"}, 421),
        ("POST", "/api/restore?aligned=1", b"x", {"Content-Length": str(30 * 2**20)}, 413),
        ("POST", "/api/restore?aligned=1", b"not an image", {}, 400),
        ("POST", "/api/restore?aligned=1", face, {"X-LRPO-Demo": "0"}, 403),
    ]
    want = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}
    assert want["cross-origin-resource-policy"] == "same-origin"
    for method, path, body, headers, status in cases:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
        try:
            conn.putrequest(method, path, skip_host="Host" in headers)
            for k, v in {"X-LRPO-Demo": "1", "Content-Length": str(len(body or b"")), **headers}.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            got = {k.lower(): v for k, v in resp.getheaders()}
            resp.read()
        finally:
            conn.close()
        assert resp.status == status, (method, path, resp.status)
        for k, v in want.items():
            assert got.get(k) == v, (path, resp.status, k, got.get(k))
    # a fault of ours (500) and a full queue (503)
    original = service.info
    service.info = lambda: 1 / 0
    try:
        status, got, body = _get(server, "/api/info")
    finally:
        service.info = original
    assert status == 500 and "internal error (ZeroDivisionError)" in json.loads(body)["error"]
    assert all(got.get(k) == v for k, v in want.items()), got
    service.gate._admitted += 1
    try:
        status, got, _ = _get(server, "/api/restore?aligned=1", method="POST", body=face)
    finally:
        service.gate._admitted -= 1
    assert status == 503 and all(got.get(k) == v for k, v in want.items()), got
    # HTTP the server cannot parse: uvicorn's own 400, written below the app
    answer = _raw(server, b"NOT HTTP AT ALL\r\n\r\n").decode("latin-1").lower()
    assert answer.startswith("http/1.1 400") and "cross-origin-resource-policy: same-origin" in answer, answer[:300]
    assert "x-content-type-options: nosniff" in answer


# ---------------------------------------------------------------------------------------------
# the Host allow-list
# ---------------------------------------------------------------------------------------------
def test_host_allow_list_off_loopback():
    wild = HostAllowList.for_bind("0.0.0.0", ["demo.lan"])
    for ok in ("demo.lan:7860", "DEMO.LAN", "localhost:7860", "127.0.0.1", "192.168.1.5:7860", "[fe80::1]:80",
               "[::ffff:127.0.0.1]:7860"):
        assert wild.allows(ok), ok  # named, loopback, or an IP literal (a literal cannot be rebound)
    for bad in ("rebound.example:7860", "demo.lan.rebound.example", "", None, "lan"):
        assert not wild.allows(bad), bad
    one = HostAllowList.for_bind("192.168.1.5")
    assert one.allows("192.168.1.5:7860") and one.allows("localhost") and one.allows("[::ffff:192.168.1.5]")
    assert not one.allows("10.0.0.7") and not one.allows("rebound.example")
    for bad in ("*", "evil example", "a/b", ""):
        with pytest.raises(ValueError, match="--allow-host"):
            HostAllowList.for_bind("0.0.0.0", [bad])
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("::ffff:10.0.0.1")
    loop = HostAllowList.for_bind("127.0.0.1")
    assert loop.allows("[::ffff:127.0.0.1]:7860") and not loop.allows("192.168.1.5")


def test_a_server_off_loopback_refuses_other_host_names(service):
    """As ``lrpo demo --host 0.0.0.0 --allow-host demo.lan`` answers (the socket is on 127.0.0.1 here)."""
    with running(service, HostAllowList.for_bind("0.0.0.0", ["demo.lan"])) as port:
        status, headers, body = _get(port, "/", headers={"Host": "rebound.example:80"})
        assert status == 421 and "--allow-host" in json.loads(body)["error"]
        assert headers["cross-origin-resource-policy"] == "same-origin"
        assert _get(port, "/", headers={"Host": "demo.lan:80"})[0] == 200
        assert _get(port, "/", headers={"Host": "192.168.1.5:80"})[0] == 200


def test_cli_refuses_a_wildcard_allow_host(capsys):
    from lrpo.cli import main

    assert main(["demo", "--checkpoint", "x", "--host", "0.0.0.0", "--allow-host", "*"]) == 2
    assert "--allow-host '*'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a client that leaves, and work capped by output pixels
# ---------------------------------------------------------------------------------------------
def test_a_client_that_leaves_mid_upload_is_one_log_line(server, demo_log, capfd):
    head = (b"POST /api/restore?aligned=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-LRPO-Demo: 1\r\n"
            b"Content-Length: 50000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(head + b"\0" * 1000)
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while not any("during its upload" in r.getMessage() for r in demo_log) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [r.getMessage() for r in demo_log]
    assert len(lines) == 1 and "closed the connection during its upload to /api/restore (1000 bytes read)" in lines[0], lines
    assert demo_log[0].exc_info is None and "Traceback" not in capfd.readouterr().err


def test_restoration_is_capped_by_output_pixels_before_decoding(server):
    """A 5999 x 5999 PNG (under the 36 MP upload limit) as an aligned face would come back at 36 MP:
    refused at once from its header. The header-only file shows nothing was decoded (decoding it
    would say "corrupt or truncated")."""
    t0 = time.monotonic()
    status, _, body = _get(server, "/api/restore?aligned=1", method="POST", body=_png_header_only(5999, 5999))
    assert status == 413 and time.monotonic() - t0 < 3.0
    text = json.loads(body)["error"]
    assert "5999 x 5999 (36.0 megapixels)" in text and "at most 4.2 megapixels" in text, text
    status, _, body = _get(server, "/api/restore?upscale=2", method="POST", body=_png_header_only(3000, 3000))
    assert status == 413 and "3000 x 3000 upscaled 2x is 36.0 megapixels" in json.loads(body)["error"]


def test_output_caps_at_their_boundaries():
    from lrpo.demo.service import MAX_ALIGNED_OUTPUT_PIXELS, MAX_OUTPUT_PIXELS, RestoreRequest, check_restore_size

    aligned = RestoreRequest(aligned=True)
    check_restore_size(2048, 2048, aligned)  # 4,194,304 pixels: exactly the cap
    assert MAX_ALIGNED_OUTPUT_PIXELS == 2048 * 2048
    with pytest.raises(DemoError, match=r"2048 x 2049 \(4.2 megapixels\).*at most 4.2 megapixels \(2048 x 2048\)") as e:
        check_restore_size(2048, 2049, aligned)
    assert e.value.status == 413
    check_restore_size(4000, 4000, RestoreRequest())  # 16.0 MP at 1x: exactly the cap
    assert 4000 * 4000 == MAX_OUTPUT_PIXELS
    with pytest.raises(DemoError, match="4000 x 4000 upscaled 1.5x is 36.0 megapixels"):
        check_restore_size(4000, 4000, RestoreRequest(upscale=1.5))
