"""The HTTP API against a real uvicorn on loopback (``reidserve serve`` in a subprocess): every endpoint, the
three auth modes, every kind of bad input, the no-torch rule, grayscale classifier models, and the CLI clients."""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

for _module in ("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason=f"the service needs {_module}: pip install 'pruneopt[serve]'")
import httpx  # noqa: E402

from reidserve.cli import cli  # noqa: E402
from reidserve.client import ReidClient, ReidClientError  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from tests.support.serving import export_models, png_bytes, random_images  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_models(tmp_path_factory.getbasetemp() / "reid-serve-models")


@pytest.fixture(scope="module")
def server(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedding model, --auth mutating, small limits so that they are cheap to hit."""
    data = tmp_path_factory.mktemp("serve-main")
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(data), "--max-images", "8", "--max-k", "50",
            "--max-body-mb", "1", "--max-pixels", "1000000", "--max-wait-ms", "20", "--threads", "1"]
    with ServerProcess(args, tokens=[TOKEN]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


IMAGES = random_images(12, 96, 48, seed=1)
PNGS = [png_bytes(im) for im in IMAGES]


def embed(http: httpx.Client, pngs: list[bytes]) -> np.ndarray:
    r = http.post("/v1/embed", json={"images": [b64(p) for p in pngs]})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], np.float32)


# -- endpoints ------------------------------------------------------------------------------------------------------
def test_probes_docs_and_schema(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"ready": True, "reasons": []}
    assert "swagger" in http.get("/docs").text.lower()
    schema = http.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/gallery", "/v1/gallery/{item_id}", "/v1/search", "/v1/stats", "/metrics", "/healthz",
            "/readyz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    components = set(schema["components"]["schemas"])
    assert {"EmbedRequest", "GalleryAddRequest", "SearchRequest", "GalleryUpload"} <= components


def test_stats_and_no_torch_in_the_server(http: httpx.Client, server: ServerProcess) -> None:
    st = http.get("/v1/stats", headers=AUTH).json()
    assert st["torch_loaded"] is False
    assert st["model"]["input_shape"] == [3, 64, 32] and st["model"]["output_dim"] == 64
    assert st["model"]["runtime"] == "ort-cpu" and st["model"]["output_kind"] == "embedding"
    assert st["limits"]["max_k"] == 50 and st["auth"] == "mutating"
    assert st["pid"] == server.proc.pid
    assert st["gallery"]["data_dir"] == server.args[server.args.index("--data-dir") + 1]
    assert st["model"]["path"].endswith("embed.onnx")
    anonymous = http.get("/v1/stats").json()  # no token: where the service runs is not shown (issue 17)
    assert anonymous["pid"] is None and anonymous["gallery"]["data_dir"] is None and anonymous["model"]["path"] is None
    assert anonymous["gallery"]["items"] == st["gallery"]["items"] and anonymous["torch_loaded"] is False
    wrong = http.get("/v1/stats", headers={"Authorization": "Bearer " + "x" * 30}).json()
    assert wrong["pid"] is None
    assert st["gc"]["frozen_objects"] > 10_000  # start-up objects are out of the collector's reach
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if sys.platform.startswith("linux") and maps.exists():  # independent of the server's own word
        assert "libtorch" not in maps.read_text()


def test_embed_json_and_multipart_agree(http: httpx.Client) -> None:
    e = embed(http, PNGS[:3])
    assert e.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    r = http.post("/v1/embed", files=[("images", (f"{i}.png", p, "image/png")) for i, p in enumerate(PNGS[:3])])
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["embeddings"]), e, atol=1e-6)
    assert r.json()["dim"] == 64 and r.json()["count"] == 3
    np.testing.assert_allclose(embed(http, [PNGS[1]])[0], e[1], atol=1e-6)  # batch-independent
    jpeg = png_bytes(IMAGES[0], "JPEG")
    gray = png_bytes(IMAGES[0][..., 0])
    assert embed(http, [jpeg, gray]).shape == (2, 64)  # other formats and grayscale input to an RGB model


def test_gallery_lifecycle(http: httpx.Client) -> None:
    e = np.concatenate([embed(http, PNGS[:6]), embed(http, PNGS[6:])])
    items = [{"id": "alice", "image": b64(PNGS[0]), "camera": "cam1", "time": 100.0, "metadata": {"track": 7}},
             {"id": "bob", "images": [b64(PNGS[1]), b64(PNGS[2])], "camera": "cam2"},
             {"id": "carol.v2:x-1", "embedding": (e[3] * 5).tolist(), "camera": "cam1", "time": 200.0}]
    r = http.post("/v1/gallery", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [i["created"] for i in r.json()["items"]] == [True, True, True]
    assert r.json()["gallery_size"] >= 3
    got = http.get("/v1/gallery/alice").json()
    assert got["camera"] == "cam1" and got["time"] == 100.0 and got["metadata"] == {"track": 7}
    assert got["embedding"] is None
    full = http.get("/v1/gallery/carol.v2:x-1", params={"include_embedding": "true"}).json()
    np.testing.assert_allclose(full["embedding"], e[3], atol=1e-5)  # stored normalised
    bob = http.get("/v1/gallery/bob", params={"include_embedding": True}).json()["embedding"]
    mean = (e[1] + e[2]) / np.linalg.norm(e[1] + e[2])
    np.testing.assert_allclose(bob, mean, atol=1e-5)  # several images: their normalised mean

    hits = http.post("/v1/search", json={"image": b64(PNGS[0]), "k": 3}).json()["hits"]
    assert hits[0]["id"] == "alice" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["metadata"] == {"track": 7} and hits[0]["camera"] == "cam1"
    hits = http.post("/v1/search", json={"embedding": e[3].tolist(), "k": 5,
                                         "filter": {"exclude_cameras": ["cam2"]}}).json()["hits"]
    assert hits[0]["id"] == "carol.v2:x-1" and all(h["camera"] != "cam2" for h in hits)
    hits = http.post("/v1/search", json={"embedding": e[3].tolist(), "k": 5,
                                         "filter": {"time_min": 150}}).json()["hits"]
    assert [h["id"] for h in hits] == ["carol.v2:x-1"]
    hits = http.post("/v1/search", json={"embedding": e[0].tolist(), "k": 5,
                                         "filter": {"cameras": ["cam2"]}}).json()["hits"]
    assert [h["id"] for h in hits] == ["bob"]

    r = http.post("/v1/gallery", json={"items": [{"id": "alice", "image": b64(PNGS[4]), "camera": "cam3"}]},
                  headers=AUTH)
    assert r.json()["items"][0]["created"] is False
    assert http.get("/v1/gallery/alice").json()["camera"] == "cam3"
    assert http.post("/v1/search", json={"image": b64(PNGS[4]), "k": 1}).json()["hits"][0]["id"] == "alice"

    r = http.post("/v1/gallery", data={"id": "dave", "camera": "cam4", "time": "5.5", "metadata": '{"a": "b"}'},
                  files=[("images", ("d.png", PNGS[5], "image/png"))], headers=AUTH)
    assert r.status_code == 200, r.text
    assert http.get("/v1/gallery/dave").json()["metadata"] == {"a": "b"}
    r = http.post("/v1/search", data={"k": "2", "filter": '{"cameras": ["cam4"]}'},
                  files=[("image", ("q.png", PNGS[5], "image/png"))])
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["hits"]] == ["dave"]

    before = http.get("/v1/stats").json()["gallery"]["items"]
    r = http.delete("/v1/gallery/dave", headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted"] is True and r.json()["gallery_size"] == before - 1
    assert http.get("/v1/gallery/dave").status_code == 404
    assert http.delete("/v1/gallery/dave", headers=AUTH).status_code == 404
    st = http.get("/v1/stats").json()["gallery"]
    assert st["items"] == st["store_rows"] == st["index"]["ntotal"]


def test_metrics(http: httpx.Client) -> None:
    http.post("/v1/search", json={"image": b64(PNGS[0]), "k": 1})
    text = http.get("/metrics").text
    assert 'reidserve_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert 'route="/v1/gallery/{item_id}"' in text  # templates, not raw paths
    assert "reidserve_embed_batch_size_count" in text and "reidserve_request_duration_seconds_bucket" in text
    size = next(line for line in text.splitlines() if line.startswith("reidserve_gallery_items "))
    assert float(size.split()[1]) == http.get("/v1/stats").json()["gallery"]["items"]


def _search_200s(http: httpx.Client) -> float:
    key = 'reidserve_requests_total{method="POST",route="/v1/search",status="200"}'
    line = next((x for x in http.get("/metrics").text.splitlines() if x.startswith(key)), f"{key} 0")
    return float(line.split()[-1])


def test_json_search_fast_path_agrees_with_the_route(http: httpx.Client) -> None:
    e = embed(http, PNGS[:4])
    items = [{"id": f"fp{i}", "embedding": e[i].tolist(), "camera": f"c{i % 2}", "metadata": {"i": i}}
             for i in range(4)]
    assert http.post("/v1/gallery", json={"items": items}, headers=AUTH).status_code == 200
    body = json.dumps({"embedding": e[1].tolist(), "k": 3, "filter": {"cameras": ["c1"]}}).encode()
    before, counted = http.get("/v1/stats").json()["search_fast_path"], _search_200s(http)
    fast = http.post("/v1/search", content=body, headers={"content-type": "application/json"})
    # sent chunked (no Content-Length), the same query takes the FastAPI route
    routed = http.post("/v1/search", content=iter([body[:50], body[50:]]),
                       headers={"content-type": "application/json"})
    assert http.get("/v1/stats").json()["search_fast_path"] == {"answered": before["answered"] + 1,
                                                                "passed": before["passed"] + 1}
    assert _search_200s(http) == counted + 2  # both labelled with the route template
    assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
    f, r = fast.json(), routed.json()
    assert f.pop("took_ms") >= 0 and r.pop("took_ms") >= 0
    assert f == r and f["hits"][0]["id"] == "fp1" and f["hits"][0]["metadata"] == {"i": 1}
    assert [h["id"] for h in f["hits"]] == ["fp1", "fp3"]
    # what the fast path cannot answer is the route's answer, word for word
    bad = http.post("/v1/search", json={"embedding": [1.0] * 3})
    assert bad.status_code == 422 and "64-dimensional" in bad.json()["detail"]
    bad = http.post("/v1/search", json={"embedding": [1.0] * 64, "k": 51})
    assert bad.status_code == 422 and "--max-k" in bad.json()["detail"]
    assert http.post("/v1/search", json={"embedding": [1.0] * 64, "k": 0}).json()["detail"][0]["loc"] == \
        ["body", "k"]


def test_concurrent_embeds_are_batched(http: httpx.Client) -> None:
    before = http.get("/v1/stats").json()["batching"]

    def one(i: int) -> int:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as c:
            return c.post("/v1/embed", json={"images": [b64(PNGS[i % len(PNGS)])]}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(32))) == [200] * 32
    after = http.get("/v1/stats").json()["batching"]
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == 32 and batches < images  # at least some requests shared a model run


# -- auth -----------------------------------------------------------------------------------------------------------
def test_auth_mutating(http: httpx.Client) -> None:
    item = {"items": [{"id": "eve", "embedding": [1.0] * 64}]}
    r = http.post("/v1/gallery", json=item)
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"] and "token" in r.json()["detail"]
    r = http.post("/v1/gallery", json=item, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert http.post("/v1/gallery", json=item, headers={"Authorization": "Basic abc"}).status_code == 401
    assert http.get("/v1/gallery/eve").status_code == 404  # nothing was written
    assert http.post("/v1/gallery", json=item, headers=AUTH).status_code == 200
    assert http.delete("/v1/gallery/eve").status_code == 401
    assert http.delete("/v1/gallery/eve", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.delete("/v1/gallery/eve", headers=AUTH).status_code == 200
    for path, body in (("/v1/embed", {"images": [b64(PNGS[0])]}), ("/v1/search", {"embedding": [1.0] * 64})):
        assert http.post(path, json=body).status_code == 200  # reads stay open in this mode
    text = http.get("/metrics").text
    assert 'reidserve_auth_failures_total{reason="missing"}' in text
    assert 'reidserve_auth_failures_total{reason="invalid"}' in text


@pytest.mark.slow
def test_auth_all(models: dict[str, Path], tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# two tokens\n" + "first-token-aaaaaaaaaaaa\nsecond-token-bbbbbbbbbbb\n")
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path / "d"), "--auth", "all",
            "--token-file", str(token_file)]
    env_without_tokens = {k: v for k, v in __import__("os").environ.items() if k != "REIDSERVE_TOKENS"}
    with ServerProcess(args, env=env_without_tokens) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        calls = [("GET", "/v1/stats", None), ("GET", "/metrics", None), ("GET", "/v1/gallery/x", None),
                 ("POST", "/v1/search", {"embedding": [1.0] * 64}), ("POST", "/v1/embed", {"images": [b64(PNGS[0])]}),
                 ("POST", "/v1/gallery", {"items": [{"id": "x", "embedding": [1.0] * 64}]}),
                 ("DELETE", "/v1/gallery/x", None)]
        for method, path, body in calls:
            assert c.request(method, path, json=body).status_code == 401, path
        for probe in ("/healthz", "/readyz", "/openapi.json"):
            assert c.get(probe).status_code == 200
        for tok in ("first-token-aaaaaaaaaaaa", "second-token-bbbbbbbbbbb"):
            h = {"Authorization": f"Bearer {tok}"}
            assert [c.request(m, p, json=b, headers=h).status_code for m, p, b in calls] == \
                [200, 200, 404, 200, 200, 200, 200]


# -- bad input: always 4xx with a message, never 5xx ------------------------------------------------------------
def _bad(http: httpx.Client, status: int, match: str, method: str, path: str, **kw: Any) -> None:
    r = http.request(method, path, **kw)
    assert r.status_code == status, (path, r.status_code, r.text)
    detail = r.json()["detail"]
    assert match.lower() in json.dumps(detail).lower(), detail


def test_bad_images(http: httpx.Client) -> None:
    _bad(http, 422, "not a JPEG, PNG", "POST", "/v1/embed", json={"images": [b64(b"definitely not an image")]})
    _bad(http, 422, "truncated or corrupt", "POST", "/v1/embed", json={"images": [b64(PNGS[0][:300])]})
    _bad(http, 422, "not valid base64", "POST", "/v1/embed", json={"images": ["%%%%"]})
    _bad(http, 422, "not valid base64", "POST", "/v1/search", json={"image": "#"})
    bomb = png_bytes(np.zeros((2000, 1000), np.uint8))  # 2 M pixels > --max-pixels 1 M, 8 kB on the wire
    _bad(http, 413, "above the limit of 1000000", "POST", "/v1/embed", json={"images": [b64(bomb)]})
    _bad(http, 413, "above the limit", "POST", "/v1/gallery", headers=AUTH,
         json={"items": [{"id": "bomb", "image": b64(bomb)}]})
    _bad(http, 422, "must be a file upload", "POST", "/v1/embed", data={"images": "text"},
         files=[("other", ("a.png", PNGS[0], "image/png"))])
    _bad(http, 422, "no image files", "POST", "/v1/embed", files=[("other", ("a.png", PNGS[0], "image/png"))])
    assert http.get("/v1/gallery/bomb").status_code == 404


def test_limits(http: httpx.Client) -> None:
    _bad(http, 413, "at most 8", "POST", "/v1/embed", json={"images": [b64(PNGS[0])] * 9})
    _bad(http, 422, "--max-k", "POST", "/v1/search", json={"embedding": [1.0] * 64, "k": 51})
    _bad(http, 422, "greater than or equal to 1", "POST", "/v1/search", json={"embedding": [1.0] * 64, "k": 0})
    big = {"images": ["A" * (1024 * 1024)]}
    _bad(http, 413, "larger than the limit", "POST", "/v1/embed", json=big)
    _bad(http, 413, "larger than the limit", "POST", "/v1/gallery", headers=AUTH,
         content=json.dumps({"items": [{"id": "x", "image": "A" * 1_100_000}]}),
         )


def test_streamed_body_is_cut(server: ServerProcess) -> None:
    """A chunked body (no Content-Length) is cut once it passes the limit, and answered 413."""
    host, port = "127.0.0.1", int(server.port or 0)
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"A" * 65536
        sent = 0
        try:
            while sent < 2 * 1024 * 1024:  # twice the limit; the server stops reading after the first MiB
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                part = s.recv(65536)
                if not part:
                    break
                data += part
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    # and small chunked bodies work
    r = httpx.post(server.url + "/v1/embed", content=iter([b'{"images": ["', b64(PNGS[0]).encode(), b'"]}']),
                   headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_bad_embeddings_ids_and_bodies(http: httpx.Client) -> None:
    post = {"method": "POST", "path": "/v1/gallery", "headers": AUTH}
    _bad(http, 422, "64-dimensional", **post, json={"items": [{"id": "x", "embedding": [1.0] * 63}]})
    _bad(http, 422, "all zeros", **post, json={"items": [{"id": "x", "embedding": [0.0] * 64}]})
    nan = b'{"items": [{"id": "x", "embedding": [NaN' + b", 1.0" * 63 + b"]}]}"
    _bad(http, 422, "finite", **post, content=nan)  # no Content-Type: read as JSON
    huge = b'{"items": [{"id": "x", "embedding": [1e999' + b", 1.0" * 63 + b"]}]}"
    _bad(http, 422, "finite", **post, content=huge)
    _bad(http, 422, "64-dimensional", "POST", "/v1/search", json={"embedding": [1.0] * 3})
    _bad(http, 422, "string should match pattern", **post,
         json={"items": [{"id": "../../etc/passwd", "embedding": [1.0] * 64}]})
    _bad(http, 422, "string should match pattern", **post, json={"items": [{"id": "x" * 129, "embedding": [1.0] * 64}]})
    _bad(http, 422, "string should match pattern", "GET", "/v1/gallery/bad%20id")
    _bad(http, 422, "string should match pattern", "DELETE", "/v1/gallery/" + "y" * 129, headers=AUTH)
    _bad(http, 422, "exactly one of image, images or embedding", **post,
         json={"items": [{"id": "x", "embedding": [1.0] * 64, "image": b64(PNGS[0])}]})
    _bad(http, 422, "exactly one of image or embedding", "POST", "/v1/search", json={"k": 3})
    _bad(http, 422, "twice", **post, json={"items": [{"id": "x", "embedding": [1.0] * 64}] * 2})
    _bad(http, 422, "metadata", **post, json={"items": [{"id": "x", "embedding": [1.0] * 64,
                                                         "metadata": {"a b": 1}}]})
    _bad(http, 422, "64 bits", **post, json={"items": [{"id": "x", "embedding": [1.0] * 64,
                                                        "metadata": {"n": 2**70}}]})
    _bad(http, 422, "camera", "POST", "/v1/search", json={"embedding": [1.0] * 64,
                                                         "filter": {"exclude_cameras": ['" or 1']}})
    _bad(http, 422, "extra inputs", "POST", "/v1/search", json={"embedding": [1.0] * 64, "kk": 3})
    _bad(http, 422, "json", "POST", "/v1/search", content=b'{"embedding": [1.0,', headers={"content-type":
                                                                                              "application/json"})
    _bad(http, 415, "multipart/form-data", "POST", "/v1/search", content=b"k=3",
         headers={"content-type": "text/plain"})
    _bad(http, 400, "boundary", "POST", "/v1/embed", content=b"--xx\r\nbroken",
         headers={"content-type": "multipart/form-data"})
    _bad(http, 422, "no image files", "POST", "/v1/embed", content=b"--xx\r\nbroken",
         headers={"content-type": "multipart/form-data; boundary=xx"})
    _bad(http, 422, "must be an integer", "POST", "/v1/search", data={"k": "many"},
         files=[("image", ("q.png", PNGS[0], "image/png"))])
    _bad(http, 422, "JSON object", "POST", "/v1/search", data={"filter": "[1, 2"},
         files=[("image", ("q.png", PNGS[0], "image/png"))])
    assert http.get("/v1/gallery/x").status_code == 404  # none of it was written


# -- grayscale classifier (the shape of a pruneopt search winner), --auth none, the CLI clients ------------------
FM = random_images(6, 28, 28, channels=1, seed=3)


def _fake_fashion_mnist(folder: Path, n: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x = np.stack([random_images(1, 28, 28, channels=1, seed=100 + i)[0] for i in range(n)])
    y = (np.arange(n) % 10).astype(np.uint8)
    head_x = bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
    head_y = bytes([0, 0, 8, 1]) + n.to_bytes(4, "big")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(head_x + x.tobytes()))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(head_y + y.tobytes())


@pytest.mark.slow
def test_grayscale_classifier_and_cli(models: dict[str, Path], tmp_path: Path) -> None:
    args = ["--model", str(models["fmnist.onnx"]), "--data-dir", str(tmp_path / "d"), "--auth", "none"]
    with ServerProcess(args) as srv, ReidClient(srv.url) as c:
        st = c.stats()
        assert st["model"]["color"] == "L" and st["model"]["output_kind"] == "logits"
        assert st["model"]["output_dim"] == 10 and st["torch_loaded"] is False and st["auth"] == "none"
        e = c.embed([FM[0], np.dstack([FM[1]] * 3)])  # grayscale and RGB input both work
        assert e.shape == (2, 10)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)  # logits normalised by the service
        c.add("g0", image=FM[0], metadata={"label": 3})
        assert c.search(image=FM[0], k=1)[0]["id"] == "g0"

        fm_dir, queries = tmp_path / "fmnist", tmp_path / "queries"
        _fake_fashion_mnist(fm_dir)
        run = CliRunner().invoke
        r = run(cli, ["demo-gallery", "--url", srv.url, "--fashion-mnist", "--fmnist-dir", str(fm_dir), "--count",
                       "30", "--batch", "8", "--queries-out", str(queries), "--queries", "3"])
        assert r.exit_code == 0, r.output
        assert "added 30 items" in r.output
        written = sorted(queries.glob("q-*.png"))
        assert [p.name.split("-")[1] for p in written] == ["00030", "00031", "00032"]
        assert c.get("fmnist-00029")["metadata"] == {"label": 9, "class": "Ankle boot"}
        r = run(cli, ["query", "--url", srv.url, "search", str(written[0]), "-k", "3"])
        assert r.exit_code == 0, r.output
        assert r.output.count("score") == 3 and "fmnist-" in r.output
        r = run(cli, ["query", "--url", srv.url, "search", "--json", str(written[0]), "-k", "2"])
        assert [h["id"].startswith(("fmnist-", "g0")) for h in json.loads(r.output)[str(written[0])]] == [True] * 2
    r = run(cli, ["demo-gallery", "--url", "http://127.0.0.1:9", "--fashion-mnist", "--fmnist-dir", str(fm_dir)])
    assert r.exit_code == 2 and "cannot reach" in r.output


def test_fashion_mnist_not_found_says_where(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pruneopt.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "search_dirs", lambda data_dir: [tmp_path / "a", tmp_path / "b"])
    r = CliRunner().invoke(cli, ["demo-gallery", "--url", "http://127.0.0.1:9", "--fashion-mnist"])
    assert r.exit_code == 2 and "t10k-images-idx3-ubyte" in r.output and str(tmp_path / "b") in r.output


def test_query_cli(server: ServerProcess, tmp_path: Path) -> None:
    img = tmp_path / "p.png"
    img.write_bytes(PNGS[7])
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    run = CliRunner().invoke
    base = ["query", "--url", server.url]
    r = run(cli, [*base, "--token-file", str(token_file), "add", "cli-1", str(img), "--camera", "cam9", "--meta",
                   "track=12", "--meta", "note=hello"])
    assert r.exit_code == 0 and "added cli-1" in r.output, r.output
    r = run(cli, [*base, "search", str(img), "-k", "2", "--camera", "cam9"])
    assert r.exit_code == 0 and "cli-1" in r.output and "camera=cam9 track=12 note=hello" in r.output, r.output
    r = run(cli, [*base, "get", "cli-1"])
    assert json.loads(r.output)["metadata"] == {"track": 12, "note": "hello"}
    r = run(cli, [*base, "embed", str(img)])
    assert len(json.loads(r.output)[str(img)]) == 64
    assert json.loads(run(cli, [*base, "stats"]).output)["torch_loaded"] is False
    r = run(cli, [*base, "delete", "cli-1"])  # no token
    assert r.exit_code == 2 and "401" in r.output and "Bearer" in r.output
    r = run(cli, [*base, "--token", TOKEN, "delete", "cli-1"])
    assert r.exit_code == 0 and "deleted cli-1" in r.output
    r = run(cli, [*base, "get", "cli-1"])
    assert r.exit_code == 2 and "404" in r.output
    r = run(cli, ["query", "--url", "http://127.0.0.1:9", "stats"])
    assert r.exit_code == 2 and "cannot reach" in r.output


def test_client_errors_carry_status(server: ServerProcess) -> None:
    with ReidClient(server.url, TOKEN, upload="multipart") as c:
        with pytest.raises(ReidClientError) as info:
            c.search(embedding=[1.0] * 5)
        assert info.value.status == 422 and "64-dimensional" in str(info.value)
        assert c.add("mp-1", image=IMAGES[8], camera="c1", time=3.0, metadata={"k": "v"})["items"][0]["created"]
        assert c.search(image=IMAGES[8], k=1)[0]["id"] == "mp-1"
        c.delete("mp-1")


# -- serve command errors -----------------------------------------------------------------------------------------
def test_serve_reports_configuration_errors(models: dict[str, Path], server: ServerProcess, tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(cli, ["serve", "--model", str(tmp_path / "none.onnx"), "--data-dir", str(tmp_path), "--port", "0"])
    assert r.exit_code == 2 and "does not exist" in r.output and "pruneopt export" in r.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    r = run(cli, ["serve", "--model", str(bad), "--data-dir", str(tmp_path), "--port", "0"])
    assert r.exit_code == 2 and "export it again" in r.output
    busy = run(cli, ["serve", "--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path), "--port",
                      str(server.port)])
    assert busy.exit_code == 2 and "pick another --port" in busy.output
    data_dir = Path(server.args[server.args.index("--data-dir") + 1])
    r = run(cli, ["serve", "--model", str(models["embed.onnx"]), "--data-dir", str(data_dir), "--port", "0"],
            env={"REIDSERVE_TOKENS": TOKEN})
    assert r.exit_code == 2 and "in use by another reidserve process" in r.output
    r = run(cli, ["serve", "--model", str(models["fmnist.onnx"]), "--data-dir", str(data_dir), "--port", "0",
                   "--auth", "none", "--store", "milvus-lite:///x.sqlite"])
    assert r.exit_code == 2 and "must end in .db" in r.output
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    r = run(cli, ["serve", "--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path / "w"), "--port", "0",
                   "--token-file", str(weak)])
    assert r.exit_code == 2 and "too easy to guess" in r.output


def test_index_options_reach_the_store(models: dict[str, Path], tmp_path: Path) -> None:
    import asyncio

    from reidserve.service.settings import ServiceSettings
    from reidserve.service.state import ServiceState

    state = ServiceState(ServiceSettings(model=models["embed.onnx"], data_dir=tmp_path, ivf_codec="flat", nlist=32,
                                         nprobe=4, tokens=(TOKEN,)))
    state.open()
    try:
        store: Any = state.store
        assert (store.options.ivf_codec, store.options.nlist, store.options.nprobe) == ("flat", 32, 4)
    finally:
        asyncio.run(state.stop())
    r = CliRunner().invoke(cli, ["serve", "--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path),
                                  "--ivf-codec", "pq"])
    assert r.exit_code == 2 and "--ivf-codec" in r.output
