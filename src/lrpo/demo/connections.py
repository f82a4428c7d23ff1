"""What the server does with a connection before and while the app reads its request: deadlines and a cap.

uvicorn's HTTP/1.1 protocols time out only a keep-alive connection that is idle after a response, and
any byte that arrives cancels even that. A client that connects and sends nothing, or sends its headers
or its body a byte at a time, keeps its connection for as long as it likes; with ``limit_concurrency``
64 such sockets made every other request answer 503. :class:`GuardedH11Protocol`, a small subclass of
uvicorn's h11 protocol, adds three rules (figures: :class:`ConnectionLimits`):

* Headers by a deadline: from the moment a connection opens, and again after each response, the next
  request's headers must be complete within ``header_timeout`` seconds, or the connection is closed.
  Bytes arriving do not extend it, so sending a header a byte at a time gains nothing.
* A body at a minimum rate: ``body_grace`` seconds after its headers, a request body must have come at
  ``min_body_rate`` bytes/s on average since then (counted only while the server is reading), and all
  of it within ``body_timeout``; else the connection is closed and the app sees a disconnect.
* A cap on connections: when ``max_connections`` are open, a new one closes the one that has waited
  longest for its headers (an idle socket), so idle sockets never lock a visitor out; when every
  connection is in the middle of a request, the new one is closed at once.

Why the protocol and not the app: a connection that never completes its headers never reaches the ASGI
app, so only the protocol sees it; the body rule sits beside it and counts bytes as they arrive. The
request cap of uvicorn (``limit_concurrency``) is not used: its 503 counted idle sockets, and with at
most one request per connection, ``max_connections`` bounds the requests in flight too.

The subclass relies on these parts of ``uvicorn.protocols.http.h11_impl.H11Protocol``: ``connection_made``,
``connection_lost``, ``data_received``, ``handle_events``, ``on_response_complete``, ``send_400_response``
and the attributes ``loop``, ``transport``, ``conn``, ``cycle``, ``flow``, ``connections``, ``client``
(tests/demo/test_server.py exercises each rule against a real uvicorn).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionLimits", "GuardedH11Protocol", "guarded_protocol"]

log = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 5.0  # s from connect (or from the last response) to the end of the next headers
    body_grace: float = 5.0  # s after the headers before the body's rate is checked
    min_body_rate: float = 10_000.0  # bytes/s on average after the grace (80 kbit/s; 20 MB then needs 35 min)
    body_timeout: float = 120.0  # s for a whole body (20 MB at 1.4 Mbit/s)
    max_connections: int = 64  # open connections (each holds at most one request)
    check_every: float = 0.5  # s between checks of a body's progress

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.body_grace, self.body_timeout, self.check_every) <= 0 or self.min_body_rate < 0:
            raise ValueError(f"connection timeouts must be > 0 and the body rate >= 0, got {self}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines and an idle-first connection cap."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    extra_headers: ClassVar[list[tuple[bytes, bytes]]] = []  # added to the 400 uvicorn writes for bad HTTP

    # -- connection life ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._waiting_since = self.loop.time()
        self._body_start = self._body_bytes = 0.0
        super().connection_made(transport)
        if not self._make_room():
            transport.close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._body_timer is not None:
            self._body_bytes += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and not self.transport.is_closing():  # a request's headers are complete
            self._request_started()

    def on_response_complete(self) -> None:
        self._cancel_timers()
        if not self.transport.is_closing():
            self._await_headers()  # before super(): it starts a pipelined request, which cancels this
        super().on_response_complete()

    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"), *self.extra_headers]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=msg.encode("ascii")), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    # -- the rules ---------------------------------------------------------------------------
    def _make_room(self) -> bool:
        """Close the longest-idle other connection when the cap is reached; False when none is idle."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < self.limits.max_connections:
            return True
        idle = [c for c in others if getattr(c, "_header_timer", None) is not None]
        if not idle:
            log.warning("lrpo demo: %d connections are all in a request; refused a new one", len(others))
            return False
        min(idle, key=lambda c: c._waiting_since).transport.close()
        return True

    def _await_headers(self) -> None:
        self._waiting_since = self.loop.time()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._close_waiting)

    def _close_waiting(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # silent: an idle socket is not worth a log line

    def _request_started(self) -> None:
        self._cancel_timers()
        if self.cycle.more_body and self.conn.their_state is h11.SEND_BODY:
            self._body_start = self.loop.time()
            self._body_bytes = float(len(self.cycle.body))  # what came with the headers
            self._body_timer = self.loop.call_later(self.limits.check_every, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        cycle, lim = self.cycle, self.limits
        if cycle is None or not cycle.more_body or cycle.response_complete or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # we are not reading (the app has not asked yet): not the client's fault
            self._body_start += lim.check_every
        elapsed = now - self._body_start
        too_slow = elapsed > lim.body_grace and self._body_bytes < lim.min_body_rate * (elapsed - lim.body_grace)
        if too_slow or now - self._body_start > lim.body_timeout:
            why = (f"under {lim.min_body_rate / 1000:g} kB/s" if too_slow else f"not complete after {lim.body_timeout:g} s")
            log.warning("lrpo demo: closed %s: its request body came %s (%d bytes in %.1f s)",
                        _peer(self.client), why, self._body_bytes, elapsed)
            self.transport.close()
            return
        self._body_timer = self.loop.call_later(lim.check_every, self._check_body)

    def _cancel_timers(self) -> None:
        for name in ("_header_timer", "_body_timer"):
            timer = getattr(self, name, None)
            if timer is not None:
                timer.cancel()
            setattr(self, name, None)


def _peer(client: tuple[str, int] | None) -> str:
    return f"the connection from {client[0]}:{client[1]}" if client else "a connection"


def guarded_protocol(limits: ConnectionLimits, extra_headers: list[tuple[bytes, bytes]]) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class with these limits (uvicorn's ``Config(http=...)`` takes a class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "extra_headers": list(extra_headers)})
