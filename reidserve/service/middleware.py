"""ASGI middleware of the service: the request-body limit, request and response header rules, Prometheus metrics.

:class:`BodyLimitMiddleware` answers 413 at once when ``Content-Length`` is over the limit, and cuts a body sent
without one (chunked) as soon as it grows past the limit: the app's next ``receive()`` raises a 413
``HTTPException`` (FastAPI passes those through its body parsing), and the server closes the connection since the
rest of the body is never read.

:class:`ServiceMetrics` owns a private ``CollectorRegistry`` (two apps in one process do not clash) with request
counts and latencies by route template, embedding batch sizes and inference time, search time, search batch sizes
and times, images embedded, authentication failures, connections closed for being too slow to send a request and
the gallery size; :class:`MetricsMiddleware` records every HTTP request. A request whose client went away before it
was answered (the body was cut, the connection closed) is counted with the status ``499`` (nginx's "client closed
request"), not as a server error.

:class:`SingleAuthorizationMiddleware` refuses (400) a request carrying more than one ``Authorization`` header,
which parts of the stack would otherwise read differently (the first or the last). :class:`RouteHeadersMiddleware`
makes the ``Location`` of redirects (Starlette's trailing-slash redirects) a path, never a URL built from the
client's ``Host`` header, and has a 405 answer's ``Allow`` list every method the path has, not only those of the
first route that matched it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CLIENT_CLOSED", "BodyLimitMiddleware", "MetricsMiddleware", "RouteHeadersMiddleware", "ServiceMetrics",
           "SingleAuthorizationMiddleware"]

CLIENT_CLOSED = 499  # the status label of requests whose client went away before the answer

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BodyLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return (f"the request body is larger than the limit of {self.max_bytes} bytes; send fewer or smaller "
                "images per request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                break
        if length is not None and (length < 0 or length > self.max_bytes):
            status = 413 if length > self.max_bytes else 400
            detail = self._message() if status == 413 else "Content-Length is not a non-negative integer"
            body = json.dumps({"detail": detail}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of their own."""

    def __init__(self, max_batch: int = 64, search_max_batch: int = 64) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("reidserve_requests_total", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("reidserve_request_duration_seconds", "HTTP request latency by route template",
                                 ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch})
        self.batch_size = Histogram("reidserve_embed_batch_size", "Images per model run (micro-batch size)",
                                    buckets=[b for b in buckets if b <= max(max_batch, 1)], registry=r)
        self.inference = Histogram("reidserve_inference_seconds", "Model run time per micro-batch",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("reidserve_embed_queue_seconds", "Time images wait for their micro-batch",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.search = Histogram("reidserve_search_seconds", "Gallery search time per request (queueing for its "
                                "micro-batch, index lookup and filtering)", buckets=_LATENCY_BUCKETS, registry=r)
        sbuckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, search_max_batch})
        self.search_batch_size = Histogram("reidserve_search_batch_size", "Queries per index search (micro-batch "
                                           "size)", buckets=[b for b in sbuckets if b <= max(search_max_batch, 1)],
                                           registry=r)
        self.search_batch = Histogram("reidserve_search_batch_seconds", "Index search time per micro-batch",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.images = Counter("reidserve_images_embedded_total", "Images embedded", registry=r)
        self.writes = Counter("reidserve_gallery_writes_total", "Gallery items written or deleted", ["op"],
                              registry=r)
        self.auth_failures = Counter("reidserve_auth_failures_total", "Requests refused for lack of a valid token",
                                     ["reason"], registry=r)
        self.slow_closed = Counter("reidserve_slow_connections_closed_total", "Connections closed because the "
                                   "request's headers or body took too long to arrive (--header-timeout, "
                                   "--body-timeout)", ["phase"], registry=r)
        self.gallery_size = Gauge("reidserve_gallery_items", "Items in the gallery", registry=r)

    def watch_gallery(self, count: Callable[[], int]) -> None:
        self.gallery_size.set_function(lambda: float(count()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every HTTP request by method, route template (``<unmatched>`` for 404s) and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0  # no answer started
        gone = False

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        async def watch_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, watch_receive, send_status)
        finally:
            if not status:  # no answer: the client went away, or the app failed (a 500 from the server)
                status = CLIENT_CLOSED if gone else 500
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - t0)


class SingleAuthorizationMiddleware:
    """Answer 400 to a request with more than one ``Authorization`` header (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
            body = json.dumps({"detail": "the request has more than one Authorization header; send exactly one"})
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await self.app(scope, receive, send)


class RouteHeadersMiddleware:
    """Relative ``Location`` on redirects; every method of the path in a 405's ``Allow`` (see the module
    docstring). ``routes()`` gives the app's routes."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    def _allowed(self, scope: Scope) -> str:
        methods: set[str] = set()
        for route in self.routes():
            route_methods = getattr(route, "methods", None)
            if route_methods and route.matches(scope)[0] is not Match.NONE:
                methods.update(route_methods)
        return ", ".join(sorted(methods))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def fix_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and (message["status"] == 405 or
                                                              300 <= message["status"] < 400):
                message = dict(message, headers=[self._fixed(scope, message["status"], name, value)
                                                 for name, value in message.get("headers", ())])
            await send(message)

        await self.app(scope, receive, fix_headers)

    def _fixed(self, scope: Scope, status: int, name: bytes, value: bytes) -> tuple[bytes, bytes]:
        if status == 405 and name.lower() == b"allow":
            return name, (self._allowed(scope).encode() or value)
        if name.lower() == b"location":
            parts = urlsplit(value.decode("latin-1"))
            if parts.scheme or parts.netloc:  # an absolute URL: keep only the path (and query)
                path = parts.path or "/"
                return name, (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
        return name, value
