"""JsonFastPath (reidserve/service/fastpath.py) as plain ASGI: what it answers itself, and that everything else
reaches the wrapped app unchanged, with the body replayed when it was already read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

pytest.importorskip("starlette", reason="the service needs starlette: pip install 'pruneopt[serve]'")
from reidserve.service.fastpath import JsonFastPath, media_type  # noqa: E402


class Query(BaseModel):
    x: list[float]
    k: int = Field(default=1, ge=1)


class App:
    """The wrapped app: records what reached it and echoes the body it read."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = m.get("more_body", False)
        self.seen.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"app:" + body})


async def _handler(q: Query) -> bytes | None:
    if q.k == 7:
        return None  # declined
    if q.k == 13:
        raise RuntimeError("boom")
    return json.dumps({"sum": sum(q.x), "k": q.k}).encode()


def call(mw: JsonFastPath, body: bytes, *, method: str = "POST", path: str = "/s",
         headers: dict[str, str] | None = None, chunks: int = 1) -> tuple[int, bytes, dict[str, Any]]:
    hdrs = {"content-type": "application/json", "content-length": str(len(body))} if headers is None else headers
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path,
                             "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()]}
    size = max(1, -(-len(body) // chunks))
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(mw(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), scope


ROUTE = object()  # what the app's router would put in scope["route"]


def make(authorized: bool = True, max_body: int = 1000) -> tuple[JsonFastPath, App]:
    app = App()
    mw = JsonFastPath(app, path="/s", model=Query, handler=_handler, authorized=lambda h: authorized or h == "ok",
                      max_body=max_body, route=lambda: ROUTE)
    return mw, app


def test_answers_valid_json_itself() -> None:
    mw, app = make()
    status, body, scope = call(mw, b'{"x": [1, 2.5], "k": 3}', chunks=3)
    assert status == 200 and json.loads(body) == {"sum": 3.5, "k": 3}
    assert app.seen == [] and mw.counts == {"answered": 1, "passed": 0}
    assert scope["route"] is ROUTE  # metrics label the route
    status, _, _ = call(mw, b'{"x": [1]}', headers={"content-length": "10"})  # no Content-Type: JSON
    assert status == 200 and mw.counts["answered"] == 2
    assert media_type("Application/JSON; charset=utf-8") == "application/json"


@pytest.mark.parametrize("case", ["get", "other path", "multipart", "no length", "too long", "unauthorized"])
def test_passes_other_requests_untouched(case: str) -> None:
    mw, app = make(authorized=case != "unauthorized", max_body=20)
    body = b'{"x": [1]}'
    kw: dict[str, Any] = {
        "get": {"method": "GET"}, "other path": {"path": "/t"},
        "multipart": {"headers": {"content-type": "multipart/form-data; boundary=x", "content-length": "10"}},
        "no length": {"headers": {"content-type": "application/json"}},
        "too long": {"headers": {"content-type": "application/json", "content-length": "21"}},
        "unauthorized": {},
    }[case]
    status, out, scope = call(mw, body, **kw)
    assert status == 299 and out == b"app:" + body and len(app.seen) == 1 and "route" not in scope
    assert mw.counts["answered"] == 0
    assert mw.counts["passed"] == (0 if case in ("get", "other path") else 1)


@pytest.mark.parametrize("body", [b'{"x": "no"}', b"{not json", b'{"x": [1], "k": 0}', b'{"x": [1], "k": 7}',
                                  b'{"x": [1], "k": 13}'])
def test_falls_back_with_the_body_replayed(body: bytes) -> None:
    mw, app = make()
    status, out, _ = call(mw, body, chunks=2)
    assert status == 299 and out == b"app:" + body  # the app read the whole body again
    assert app.seen == [("POST", "/s", body)] and mw.counts == {"answered": 0, "passed": 1}


def test_authorized_header_is_what_the_check_sees() -> None:
    mw, app = make(authorized=False)
    body = b'{"x": [2]}'
    status, _, _ = call(mw, body, headers={"content-type": "application/json", "content-length": str(len(body)),
                                           "authorization": "ok"})
    assert status == 200 and not app.seen


def test_client_gone_mid_body_sends_nothing() -> None:
    mw, app = make()
    scope = {"type": "http", "method": "POST", "path": "/s",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")]}
    sent: list[Any] = []
    messages = [{"type": "http.request", "body": b'{"x"', "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(m: Any) -> None:
        sent.append(m)

    asyncio.run(mw(scope, receive, send))
    assert sent == [] and app.seen == []
