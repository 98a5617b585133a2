"""Run the service: bind the socket, open the resources, serve with uvicorn until SIGINT/SIGTERM (:func:`serve`).

Requests are read under time limits (``--header-timeout``, ``--body-timeout``: :mod:`.read_timeouts`); the
connections closed for being too slow are counted in ``reidserve_slow_connections_closed_total``.

The socket is bound and the model, tokens and gallery are opened *before* uvicorn starts, so a port in use, a
missing model or a locked gallery is one clear error (:class:`ServerError`, ``ModelLoadError``, ``StoreError``,
``TokenError``: all :class:`~reidserve.errors.ReidserveError`) instead of a log line from inside the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

import uvicorn

from pruneopt.common.files import atomic_write

from ..errors import ReidserveError
from .app import create_app
from .read_timeouts import timed_protocol
from .settings import ServiceSettings
from .state import ServiceState

__all__ = ["ServerError", "bind_socket", "is_loopback", "serve"]

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class ServerError(ReidserveError, RuntimeError):
    """The server cannot listen or did not start (or, for :class:`~.process.ServerProcess`, did not come up);
    the message says why. A ``RuntimeError`` too, as it was before it became a :class:`ReidserveError`."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface (reachable from this machine only)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port); :class:`ServerError` when it cannot."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServerError(f"--host {host}: cannot be resolved ({exc.strerror})") from None
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        hint = "another process listens there: pick another --port" if exc.errno in (98, 48) else \
            "check --host names an address of this machine"
        raise ServerError(f"cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServiceSettings, announce: Callable[[str], None] = print) -> None:
    """Serve ``settings`` until interrupted; ``announce`` gets the warnings and the "serving on" line meant for
    the person who started it (stderr on the command line). Set ``OMP_WAIT_POLICY=PASSIVE`` before FAISS is
    imported, as ``reidserve serve`` does, so that idle OpenMP threads sleep instead of spinning on the cores the
    event loop needs."""
    s = settings
    if not is_loopback(s.host):
        announce(f"reidserve: warning: listening on {s.host}, reachable from other machines"
                 + ("; --auth none lets anyone read AND change the gallery" if s.auth == "none" else
                    "; requests and tokens travel unencrypted: put a TLS proxy in front"))
    sock = bind_socket(s.host, s.port)
    state = ServiceState(s)
    try:
        state.open()  # model, tokens and gallery now, so that mistakes are one clear line
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    if s.port_file is not None:
        atomic_write(s.port_file, f"{bound}\n", fsync=False)
    shown = f"[{s.host}]" if ":" in s.host else s.host
    announce(f"reidserve: serving {s.model.name} on http://{shown}:{bound} (docs: /docs, auth: {s.auth})")
    app = create_app(state=state)
    protocol = timed_protocol(s.header_timeout, s.body_timeout,
                              on_timeout=lambda phase: state.metrics.slow_closed.labels(phase).inc())
    # log_config=None: uvicorn's loggers (its access log included, which it would print on stdout) go through the
    # process's own logging set-up, so every log line goes to one stream, in order
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, log_level=s.log_level, access_log=s.access_log,
                                           log_config=None, lifespan="on", timeout_graceful_shutdown=15,
                                           server_header=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state.store is not None or state.model is not None:  # startup failed before the lifespan closed them
            asyncio.run(state.stop())
    if not server.started:
        raise ServerError("the server did not start (see the log above)")
