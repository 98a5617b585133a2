"""Service hardening (issue 17) against a real ``reidserve serve``: slow clients are closed on a time limit while
others are served; a client that goes away is a 499, not a 500 with a traceback; high-bit-depth and EXIF-oriented
images embed like their plain copies; and the smaller rules (ids ``.`` and ``..``, one ``Authorization`` header,
strict JSON types, no ignored multipart field, relative redirects, the ``Allow`` header, the OpenAPI document)."""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

for _module in ("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason=f"the service needs {_module}: pip install 'pruneopt[serve]'")
import httpx  # noqa: E402

from reidserve.cli import cli  # noqa: E402
from reidserve.client import ReidClient, ReidClientError  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from tests.support.images import exif_oriented, pfm_float, pgm16, png16_grey, png48_rgb  # noqa: E402
from tests.support.serving import export_models, png_bytes, random_images  # noqa: E402

TOKEN = "harden-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 1.5


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_models(tmp_path_factory.getbasetemp() / "reid-serve-models")


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("serve-harden")
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(data), "--threads", "1", "--max-wait-ms", "5",
            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)]
    with ServerProcess(args, tokens=[TOKEN]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(http: httpx.Client, prefix: str) -> float:
    """The sum of the samples of the metric lines starting with ``prefix``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in http.get("/metrics").text.splitlines()
               if line.startswith(prefix))


# -- 1: slow clients --------------------------------------------------------------------------------------------
_HEAD = b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def _slow_socket(port: int, kind: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "header":  # part of the headers, then (some of them) one byte at a time
        s.sendall(_HEAD + b"X-Slow: ")
    elif kind == "body":  # the headers and part of the body
        s.sendall(_HEAD + b"Content-Length: 4000\r\n\r\n" + b'{"embedding": [')
    return s  # "silent": connected, nothing sent


def _is_closed(s: socket.socket, wait: float) -> bool:
    """Whether the server closed ``s`` (end of stream or reset) within ``wait`` seconds."""
    s.settimeout(wait)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slow_clients_are_closed_while_others_are_served(server: ServerProcess, http: httpx.Client) -> None:
    port = int(server.port or 0)
    linux = sys.platform.startswith("linux") and server.proc is not None
    fds_before = _open_fds(server.proc.pid) if linux else 0  # type: ignore[union-attr]
    header_before = metric(http, 'reidserve_slow_connections_closed_total{phase="header"}')
    body_before = metric(http, 'reidserve_slow_connections_closed_total{phase="body"}')
    slow = {kind: [_slow_socket(port, kind) for _ in range(40)] for kind in ("silent", "header", "body")}
    t0 = time.monotonic()
    stop = threading.Event()

    def drip() -> None:  # half of the header and body clients keep sending, one byte each 0.2 s
        while not stop.wait(0.2):
            for s in slow["header"][::2] + slow["body"][::2]:
                try:
                    s.send(b"a" if s in slow["header"] else b"1")
                except OSError:
                    pass

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        assert not any(_is_closed(s, 0.01) for group in slow.values() for s in group)  # none closed at once
        latencies = []
        q = [1.0] * 64
        while time.monotonic() - t0 < BODY_TIMEOUT + 1.5:  # normal requests go on meanwhile
            t1 = time.perf_counter()
            assert http.post("/v1/search", json={"embedding": q, "k": 3}).status_code == 200
            assert http.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t1)
        deadline = t0 + BODY_TIMEOUT + 4.0
        still_open = {kind: sum(not _is_closed(s, max(0.01, deadline - time.monotonic())) for s in group)
                      for kind, group in slow.items()}
    finally:
        stop.set()
        dripper.join()
        for group in slow.values():
            for s in group:
                s.close()
    assert still_open == {"silent": 0, "header": 0, "body": 0}
    assert max(latencies) < 1.0 and len(latencies) >= 5, (max(latencies), len(latencies))
    assert metric(http, 'reidserve_slow_connections_closed_total{phase="header"}') - header_before == 80
    assert metric(http, 'reidserve_slow_connections_closed_total{phase="body"}') - body_before == 40
    if linux:  # the descriptors came back
        assert _open_fds(server.proc.pid) <= fds_before + 5  # type: ignore[union-attr]


def _response(s: socket.socket) -> bytes:
    """One whole answer (head and a Content-Length body) read from ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(65536)
    return head


@pytest.mark.slow
def test_kept_alive_connection_may_idle_between_requests(server: ServerProcess) -> None:
    """The header clock starts with a request's first byte, not when the previous answer went out."""
    with socket.create_connection(("127.0.0.1", int(server.port or 0)), timeout=10) as s:
        for _ in range(3):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(s).startswith(b"HTTP/1.1 200")
            time.sleep(HEADER_TIMEOUT + 0.5)  # idle, under uvicorn's 5 s keep-alive limit


# -- 4: clients that go away --------------------------------------------------------------------------------------
def _send_and_vanish(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        time.sleep(0.05)


def test_a_client_gone_mid_body_is_a_499_without_traceback(server: ServerProcess, http: httpx.Client) -> None:
    port = int(server.port or 0)
    token = f"Authorization: Bearer {TOKEN}\r\n".encode()
    cut = {
        "/v1/embed": b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000\r\n\r\n" + b'{"images": ["AAAA',
        "/v1/gallery": b"POST /v1/gallery HTTP/1.1\r\nHost: x\r\n" + token + b"Content-Type: multipart/form-data; "
                       b"boundary=zz\r\nContent-Length: 5000\r\n\r\n--zz\r\nContent-Disposition: form-data; "
                       b'name="id"\r\n\r\nx\r\n--zz\r\nContent-Disposition: form-data; name="images"; '
                       b'filename="a.png"\r\n\r\n\x89PNG',
        "/v1/search chunked": b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + b'{"embedding": [1',
        "/v1/search fast path": b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 5000\r\n\r\n" + b'{"embedding": [1.0, 2.0',
    }
    before = {route: metric(http, f'reidserve_requests_total{{method="POST",route="{route}",status="499"}}')
              for route in ("/v1/embed", "/v1/gallery", "/v1/search")}
    for request in cut.values():
        _send_and_vanish(port, request)
    want = {"/v1/embed": 1, "/v1/gallery": 1, "/v1/search": 2}
    deadline = time.monotonic() + 10
    while True:
        got = {route: metric(http, f'reidserve_requests_total{{method="POST",route="{route}",status="499"}}')
               - before[route] for route in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == want
    text = http.get("/metrics").text
    assert 'status="500"' not in text and 'route="<unmatched>",status="499"' not in text
    log = server.log_tail(200_000)
    assert "Traceback" not in log and "Exception in ASGI application" not in log


# -- 2, 3: image bit depth and orientation, through the service ------------------------------------------------------
def _embed(http: httpx.Client, files: list[bytes]) -> np.ndarray:
    r = http.post("/v1/embed", json={"images": [b64(f) for f in files]})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], np.float32)


def test_high_bit_depth_images_embed_like_their_8bit_copy(http: httpx.Client) -> None:
    rng = np.random.default_rng(5)
    texture = rng.integers(0, 65536, (96, 48), dtype=np.uint16)
    white = png_bytes(np.full((96, 48), 255, np.uint8))
    for data, eight in (png16_grey(texture), pgm16(texture), pfm_float(texture / 65535.0)):
        e, copy, blank = _embed(http, [data, png_bytes(eight), white])
        np.testing.assert_allclose(e, copy, atol=1e-5)  # the same pixels, so the same embedding
        assert float(e @ blank) < float(copy @ copy) - 1e-3  # not the blank image of the old decoding
    data, eight = png48_rgb(rng.integers(0, 65536, (96, 48, 3), dtype=np.uint16))
    e, copy = _embed(http, [data, png_bytes(eight)])
    assert float(e @ copy) > 0.9999


def test_exif_oriented_images_embed_upright(http: httpx.Client) -> None:
    upright = random_images(1, 128, 64, seed=21)[0]
    sideways = np.ascontiguousarray(np.rot90(upright))
    tagged_png, tagged_jpeg = exif_oriented(upright, 6), exif_oriented(upright, 6, fmt="JPEG")
    e_png, e_jpeg, e_up, e_up_jpeg, e_side = _embed(http, [tagged_png, tagged_jpeg, png_bytes(upright),
                                                           png_bytes(upright, "JPEG"), png_bytes(sideways)])
    np.testing.assert_allclose(e_png, e_up, atol=1e-5)
    assert float(e_jpeg @ e_up_jpeg) > float(e_jpeg @ e_side) and float(e_jpeg @ e_up_jpeg) > 0.999


# -- 6: the smaller ones ----------------------------------------------------------------------------------------------
def test_ids_dot_and_dotdot_are_refused(server: ServerProcess, http: httpx.Client) -> None:
    for item_id in (".", ".."):
        r = http.post("/v1/gallery", json={"items": [{"id": item_id, "embedding": [1.0] * 64}]}, headers=AUTH)
        assert r.status_code == 422 and "pattern" in r.text, r.text
    ok = http.post("/v1/gallery", json={"items": [{"id": "...", "embedding": [1.0] * 64}]}, headers=AUTH)
    assert ok.status_code == 200 and http.get("/v1/gallery/...").status_code == 200
    with socket.create_connection(("127.0.0.1", int(server.port or 0)), timeout=10) as s:  # not normalised away
        s.sendall(b"GET /v1/gallery/.. HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 422")
    with ReidClient(server.url) as c, pytest.raises(ReidClientError, match="cannot be sent"):
        c.get("..")
    r = CliRunner().invoke(cli, ["query", "--url", server.url, "get", ".."])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "cannot be sent" in r.stderr


DUP_ITEM = {"items": [{"id": "dup", "embedding": [1.0] * 64}]}


@pytest.mark.parametrize("method, path, body", [("POST", "/v1/search", {"embedding": [1.0] * 64}),
                                                ("POST", "/v1/gallery", DUP_ITEM), ("GET", "/v1/stats", None)])
def test_more_than_one_authorization_header_is_refused(http: httpx.Client, method: str, path: str,
                                                       body: object) -> None:
    both = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer " + "x" * 30)]
    for headers in (both, both[::-1]):
        r = http.request(method, path, json=body, headers=headers)
        assert r.status_code == 400 and "more than one Authorization" in r.json()["detail"], r.text
    if body is DUP_ITEM:
        assert http.get("/v1/gallery/dup").status_code == 404  # the refused request wrote nothing
    assert http.request(method, path, json=body, headers=AUTH).status_code == 200


@pytest.mark.parametrize("body, where", [
    ({"embedding": [1.0] * 64, "k": True}, "k"), ({"embedding": [1.0] * 64, "k": "5"}, "k"),
    ({"embedding": [1.0] * 64, "k": 5.0}, "k"), ({"embedding": ["1"] * 64}, "embedding"),
    ({"embedding": [True] * 64}, "embedding"), ({"embedding": [1.0] * 64, "filter": {"time_min": "3"}}, "filter"),
])
def test_json_types_are_strict(http: httpx.Client, body: dict[str, object], where: str) -> None:
    r = http.post("/v1/search", json=body)
    assert r.status_code == 422 and where in json.dumps(r.json()["detail"][0]["loc"]), r.text
    item = {"id": "strict", "embedding": body["embedding"], "time": "5"}
    assert http.post("/v1/gallery", json={"items": [item]}, headers=AUTH).status_code == 422
    assert http.post("/v1/search", json={"embedding": [1] * 64, "k": 2}).status_code == 200  # ints are numbers


def test_multipart_fields_are_used_or_refused(http: httpx.Client) -> None:
    png = png_bytes(random_images(1, 96, 48, seed=4)[0])
    r = http.post("/v1/gallery", data={"id": "mp", "embedding": json.dumps([1.0] * 64)},
                  files=[("images", ("a.png", png, "image/png"))], headers=AUTH)
    assert r.status_code == 422 and "embedding" in r.json()["detail"], r.text
    assert http.get("/v1/gallery/mp").status_code == 404
    r = http.post("/v1/search", data={"embedding": "[1]"}, files=[("image", ("q.png", png, "image/png"))])
    assert r.status_code == 422 and "embedding" in r.json()["detail"]
    r = http.post("/v1/gallery", data={"id": "mp", "time": "12.5"}, files=[("images", ("a.png", png, "image/png"))],
                  headers=AUTH)
    assert r.status_code == 200 and http.get("/v1/gallery/mp").json()["time"] == 12.5
    r = http.post("/v1/gallery", data={"id": "mp", "time": "noon"}, files=[("images", ("a.png", png, "image/png"))],
                  headers=AUTH)
    assert r.status_code == 422 and "number" in r.json()["detail"]


def test_slash_redirect_is_relative(http: httpx.Client) -> None:
    r = http.get("/v1/stats/", headers={"Host": "attacker.example:8443"}, follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"] == "/v1/stats"
    r = http.get("/v1/gallery/abc/?include_embedding=true", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"] == "/v1/gallery/abc?include_embedding=true"


def test_options_allow_lists_every_method(http: httpx.Client) -> None:
    r = http.options("/v1/gallery/someone")
    assert r.status_code == 405 and {"GET", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}
    assert {m.strip() for m in http.put("/v1/gallery/someone").headers["allow"].split(",")} >= {"GET", "DELETE"}
    assert http.options("/v1/search").headers["allow"] == "POST"


def test_openapi_documents_malformed_multipart_and_exactly_one_source(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    for path in ("/v1/embed", "/v1/gallery", "/v1/search"):
        assert "multipart" in doc["paths"][path]["post"]["responses"]["400"]["description"]
    schemas = doc["components"]["schemas"]
    assert [s["required"] for s in schemas["SearchRequest"]["oneOf"]] == [["image"], ["embedding"]]
    assert [s["required"] for s in schemas["GalleryItemIn"]["oneOf"]] == [["image"], ["images"], ["embedding"]]
    assert schemas["GalleryUpload"]["additionalProperties"] is False
    r = http.post("/v1/embed", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400


async def _echo(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """An ASGI app answering every request with its body."""
    body, more = b"", True
    while more:
        message = await receive()  # type: ignore[operator]
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


@pytest.mark.parametrize("impl", ["h11", "httptools"])
def test_read_timeouts_in_both_uvicorn_protocols(impl: str) -> None:
    """The limits hold with either of uvicorn's HTTP/1.1 implementations, in-process."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from reidserve.service.read_timeouts import timed_protocol

    if impl == "httptools":
        base = pytest.importorskip("uvicorn.protocols.http.httptools_impl").HttpToolsProtocol
    else:
        base = H11Protocol
    closed: list[str] = []
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_echo, http=timed_protocol(0.4, 0.6, closed.append, base=base),
                                           lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as ok:
            for _ in range(2):  # a kept-alive connection idles longer than the header limit between requests
                ok.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                assert _response(ok).startswith(b"HTTP/1.1 200")
                time.sleep(0.7)
            slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
            slow[1].sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
            slow[2].sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            t0 = time.monotonic()
            assert not any(_is_closed(s, 0.01) for s in slow)
            assert all(_is_closed(s, 3.0) for s in slow) and time.monotonic() - t0 < 3.0
            ok.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
            assert _response(ok).startswith(b"HTTP/1.1 200")
        for s in slow:
            s.close()
        assert sorted(closed) == ["body", "header", "header"]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
