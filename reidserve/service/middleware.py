"""ASGI middleware of the service: the request-body limit and Prometheus metrics.

:class:`BodyLimitMiddleware` answers 413 at once when ``Content-Length`` is over the limit, and cuts a body sent
without one (chunked) as soon as it grows past the limit: the app's next ``receive()`` raises a 413
``HTTPException`` (FastAPI passes those through its body parsing), and the server closes the connection since the
rest of the body is never read.

:class:`ServiceMetrics` owns a private ``CollectorRegistry`` (two apps in one process do not clash) with request
counts and latencies by route template, embedding batch sizes and inference time, search time, search batch sizes
and times, images embedded, authentication failures and the gallery size; :class:`MetricsMiddleware` records every
HTTP request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "MetricsMiddleware", "ServiceMetrics"]

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
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - t0)
