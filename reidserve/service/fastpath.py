"""A fast path for the service's hottest request: a well-formed JSON ``POST /v1/search`` with an embedding.

Each request through FastAPI crosses about ten ASGI layers (error and exception middleware, exit stacks, routing,
dependency solving, the ``Request`` object) before the endpoint runs. On a 2-core machine that Python work, all of
it under the GIL, was the limit of the service: with a trivial search the server did ~820 requests/s on one busy
core while the other sat 43% idle. :class:`JsonFastPath` answers the common case directly and hands *everything
else* to the app unchanged, so the API, its error responses and its OpenAPI schema stay those of the FastAPI route:

- it takes only ``POST`` to its path with a JSON (or missing) ``Content-Type`` and a ``Content-Length``;
- the token check is the service's own (:meth:`TokenChecker.check`, constant time); a request that fails it goes
  to the app, which answers 401 and counts the failure;
- the body is validated by the route's own pydantic model; a body that does not validate, or that the handler
  declines (returns ``None``, e.g. an image query) or fails on (raises), goes to the app with the body replayed;
- ``scope["route"]`` is set to the app's route for the path, so the metrics middleware labels it as before (also
  when the client goes away before its body is in: the metrics count that as 499, nothing is sent).

Only a 200 answer is ever produced here; every other status comes from the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonFastPath", "media_type"]

JSON_TYPES = ("application/json", "")  # no Content-Type: the body is read as JSON


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, lower case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


class JsonFastPath:
    """ASGI middleware answering JSON ``POST path`` requests with ``handler`` (see the module docstring).

    ``authorized(authorization_header)`` says whether the request may go ahead (always true on an open endpoint);
    ``handler(parsed_model)`` returns the JSON response body, or ``None`` to leave the request to the app;
    ``route()`` gives the app's route object for the path (for metrics labels), or ``None``; ``counts`` (a dict)
    is kept up to date with the requests ``answered`` here and ``passed`` to the app.
    """

    def __init__(self, app: ASGIApp, *, path: str, model: type[BaseModel],
                 handler: Callable[[Any], Awaitable[bytes | None]], authorized: Callable[[str | None], bool],
                 max_body: int, route: Callable[[], Any] = lambda: None, counts: dict[str, int] | None = None) -> None:
        self.app = app
        self.path = path
        self.model = model
        self.handler = handler
        self.authorized = authorized
        self.max_body = int(max_body)
        self.route = route
        # requests of this path answered here / handed to the app (a dict the owner may also read)
        self.counts = counts if counts is not None else {}
        self.counts.update(answered=0, passed=0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        ctype, auth, length = None, None, -1
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.decode("latin-1")
            elif name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
        if media_type(ctype) not in JSON_TYPES or not 0 <= length <= self.max_body or not self.authorized(auth):
            self.counts["passed"] += 1
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                self._label(scope)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        out: bytes | None = None
        try:
            out = await self.handler(self.model.model_validate_json(body))
        except Exception:  # invalid body, or the handler failed: the app answers (and reports) it
            out = None
        if out is None:
            self.counts["passed"] += 1
            await self.app(scope, _replay(body, receive), send)
            return
        self._label(scope)
        self.counts["answered"] += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})


    def _label(self, scope: Scope) -> None:
        route = self.route()
        if route is not None:
            scope["route"] = route


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read ``body`` once, then defers to the connection's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
