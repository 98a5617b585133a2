"""Time limits on reading a request, for uvicorn's HTTP/1.1 protocols (:func:`timed_protocol`).

uvicorn closes an idle keep-alive connection after 5 s, but has no limit on how long a client may take to send a
request: a client that sends part of its headers, or part of its body, holds its connection (and a file
descriptor) forever, and a few thousand such clients exhaust the process's descriptors. The protocol classes
made here add two limits:

* **header timeout**: the request line and headers must be complete within ``header_timeout`` seconds of the
  connection's opening (first request) or of the first byte of the request (later requests on a kept-alive
  connection; the wait before that byte is uvicorn's keep-alive timeout);
* **body timeout**: the body must be complete within ``body_timeout`` seconds of the end of the headers. While the
  server itself has paused reading (the application has not yet taken what arrived), the clock starts again.

A connection over either limit is closed (a request whose body was cut is seen by the application as a client
that went away), and ``on_timeout("header" | "body")`` is called, e.g. to count it. The limits are per request, not
per byte: a client dripping one byte a second is closed as surely as one that stopped.

Both of uvicorn's HTTP/1.1 implementations are covered: ``httptools`` (the default with ``uvicorn[standard]``;
the parser's callbacks say where a request stands) and ``h11`` (its connection state says it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is not installed: uvicorn uses h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

__all__ = ["PHASES", "timed_protocol"]

log = logging.getLogger(__name__)

PHASES = ("header", "body")


class _ReadDeadline:
    """The deadline of the request part being read (mixed into a uvicorn protocol class)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    on_timeout: Callable[[str], None] = staticmethod(lambda phase: None)

    # set by the uvicorn protocol this is mixed into
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    flow: Any
    client: tuple[str, int] | None

    _phase: str | None = None
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self, phase: str) -> None:
        """Start the clock of ``phase`` (``header`` or ``body``)."""
        self._disarm()
        self._phase = phase
        limit = self.header_timeout if phase == "header" else self.body_timeout
        self._deadline = self.loop.call_later(limit, self._expired)

    def _enter(self, phase: str) -> None:
        """Start the clock of ``phase`` unless it runs already."""
        if self._phase != phase:
            self._arm(phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self) -> None:
        phase, self._deadline = self._phase, None
        if phase is None or self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:  # the server is not reading: not the client's doing
            self._arm(phase)
            return
        self._phase = None
        log.info("closing a connection from %s: the request %s took longer than %.3g s", _peer(self.client),
                 "headers" if phase == "header" else "body",
                 self.header_timeout if phase == "header" else self.body_timeout)
        self.on_timeout(phase)
        self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown client"


class _TimedH11(_ReadDeadline, H11Protocol):
    """h11: where a request stands is read from the connection's state after every change."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("header")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._enter("body")
        elif state is h11.IDLE and self.conn.trailing_data[0]:  # part of a request head is waiting
            self._enter("header")
        elif state is not h11.IDLE or self._phase != "header":  # a whole request is in, or none has begun
            self._disarm()


if HttpToolsProtocol is not None:

    class _TimedHttpTools(_ReadDeadline, HttpToolsProtocol):
        """httptools: the parser's callbacks mark the start of a request, the end of its head and its end."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("header")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._enter("header")

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._arm("body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)


def timed_protocol(header_timeout: float, body_timeout: float, on_timeout: Callable[[str], None] = lambda p: None,
                   base: type[asyncio.Protocol] = AutoHTTPProtocol) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class (pass it as ``uvicorn.Config(http=...)``) like ``base`` (``httptools`` or
    ``h11``; default: uvicorn's own choice) with the read limits of the module docstring."""
    if header_timeout <= 0 or body_timeout <= 0:
        raise ValueError(f"read timeouts must be positive, got {header_timeout} and {body_timeout}")
    if HttpToolsProtocol is not None and issubclass(base, HttpToolsProtocol):
        timed: type[asyncio.Protocol] = _TimedHttpTools
    elif issubclass(base, H11Protocol):
        timed = _TimedH11
    else:
        raise ValueError(f"no read timeouts for the {base.__name__} protocol (httptools or h11 only)")
    return type(f"Timed{base.__name__}", (timed,), {"header_timeout": float(header_timeout),
                                                    "body_timeout": float(body_timeout),
                                                    "on_timeout": staticmethod(on_timeout)})
