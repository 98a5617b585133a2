"""The client against a fake server (``httpx.MockTransport``): it learns the server's limits once, refuses requests
above them before sending, splits what it can split (embeddings, bulk-import batches), and the bulk import skips
what the gallery holds, keeps several requests in flight and names the file the server refused."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from reidserve.client import ReidClient, ReidClientError, ServerLimits
from reidserve.gallery_import import GalleryImportError, import_items
from reidserve.import_sources import ImportItem

LIMITS = {"max_k": 50, "max_images": 8, "max_items": 6, "max_body_bytes": 20_000, "max_pixels": 10**6,
          "max_batch": 4}


class FakeServer:
    """Answers /v1/limits, /v1/embed, /v1/gallery, /v1/gallery/exists and /v1/search; records every request."""

    def __init__(self, limits: dict[str, int] | None = LIMITS, refuse: str | None = None, delay: float = 0.0) -> None:
        self.limits, self.refuse, self.delay = limits, refuse, delay
        self.gallery: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, int, Any]] = []  # method, path, body bytes, parsed body
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        with self.lock:
            self.requests.append((request.method, request.url.path, len(request.content), body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            return self._answer(request.method, request.url.path, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, method: str, path: str, body: Any) -> httpx.Response:
        if path == "/v1/limits":
            return httpx.Response(200, json=self.limits) if self.limits else httpx.Response(404, json={"detail": "x"})
        if path == "/v1/embed":
            return httpx.Response(200, json={"embeddings": [[1.0, 0.0]] * len(body["images"]), "dim": 2,
                                             "count": len(body["images"])})
        if path == "/v1/gallery/exists":
            with self.lock:
                present = [i for i in body["ids"] if i in self.gallery]
            return httpx.Response(200, json={"present": present, "missing": [i for i in body["ids"]
                                                                             if i not in present]})
        if path == "/v1/gallery":
            for n, it in enumerate(body["items"]):
                if self.refuse and it["id"] == self.refuse:
                    return httpx.Response(422, json={"detail": f"items[{n}].image is not a JPEG, PNG ... image"})
            with self.lock:
                for it in body["items"]:
                    self.gallery[it["id"]] = it
                size = len(self.gallery)
            return httpx.Response(200, json={"items": [{"id": it["id"], "created": True, "seq": 1}
                                                       for it in body["items"]], "gallery_size": size})
        if path == "/v1/search":
            return httpx.Response(200, json={"hits": [], "k": body["k"], "gallery_size": 0, "took_ms": 0.1})
        return httpx.Response(404, json={"detail": "not found"})

    def paths(self, path: str) -> list[Any]:
        return [r for r in self.requests if r[1] == path]


def client(server: FakeServer) -> ReidClient:
    return ReidClient("http://fake", "token-0123456789abcdef", transport=httpx.MockTransport(server))


def test_limits_are_asked_once_and_requests_checked_before_sending() -> None:
    server = FakeServer()
    with client(server) as c:
        assert c.limits() == ServerLimits(**LIMITS)
        with pytest.raises(ReidClientError, match="k=51 is above the server's limit of 50.*--max-k") as info:
            c.search(embedding=[1.0, 0.0], k=51)
        assert info.value.status == 0
        c.search(embedding=[1.0, 0.0], k=50)
        with pytest.raises(ReidClientError, match="7 items in one request.*at most 6 \\(its --max-items\\)"):
            c.add_many([c.item(f"i{n}", embedding=[1.0, 0.0]) for n in range(7)])
        with pytest.raises(ReidClientError, match="9 images in one request.*at most 8 \\(its --max-images\\)"):
            c.add("x", images=[b"\x89PNG"] * 9)
        with pytest.raises(ReidClientError, match="above the server's limit of 20000 \\(its --max-body-mb\\)"):
            c.add("x", image=b"\0" * 16_000)
    assert len(server.paths("/v1/limits")) == 1
    assert len(server.paths("/v1/search")) == 1 and not server.paths("/v1/gallery")


def test_embed_is_split_to_fit_images_and_body_limits() -> None:
    server = FakeServer()
    with client(server) as c:
        e = c.embed([bytes([i]) * 10 for i in range(19)])
        assert e.shape == (19, 2)
        sent = [len(r[3]["images"]) for r in server.paths("/v1/embed")]
        assert sent == [8, 8, 3]
        e = c.embed([b"\1" * 5000] * 5)  # 6.7 kB of base64 each: two per 20 kB body
        assert e.shape == (5, 2) and [len(r[3]["images"]) for r in server.paths("/v1/embed")][3:] == [2, 2, 1]
        assert all(r[2] <= LIMITS["max_body_bytes"] for r in server.requests)
        with pytest.raises(ReidClientError, match="image 0 .* too large"):
            c.embed([b"\1" * 30_000])


def test_a_server_without_limits_is_not_checked() -> None:
    server = FakeServer(limits=None)
    with client(server) as c:
        assert c.limits() is None
        assert c.embed([b"\1"] * 20).shape == (20, 2) and len(server.paths("/v1/embed")) == 1
        c.search(embedding=[1.0, 0.0], k=5000)


def items(n: int, size: int = 10, prefix: str = "p") -> list[ImportItem]:
    return [ImportItem(f"{prefix}{i:03d}", bytes([i % 256]) * size, camera="c1", metadata={"pid": i},
                       label=f"{prefix}{i:03d}.jpg") for i in range(n)]


def test_import_batches_in_flight_and_resume() -> None:
    server = FakeServer(delay=0.02)
    todo = items(30)
    with client(server) as c:
        report = import_items(c, todo[:13], workers=3)
        assert (report.sent, report.skipped, report.batch, report.gallery_size) == (13, 0, 4, 13)
        sizes = sorted(len(r[3]["items"]) for r in server.paths("/v1/gallery"))
        assert sizes == [1, 4, 4, 4]  # the server's images per model run
        assert server.max_in_flight == 3
        seen: list[tuple[int, int]] = []
        report = import_items(c, todo, batch=6, workers=2, on_start=lambda a, b: seen.append((a, b)))
        assert (report.sent, report.skipped, report.total) == (17, 13, 30) and seen == [(17, 13)]
    assert sorted(server.gallery) == [it.id for it in todo]
    assert server.gallery["p005"]["camera"] == "c1" and server.gallery["p005"]["metadata"] == {"pid": 5}
    assert base64.b64decode(server.gallery["p007"]["image"]) == bytes([7]) * 10
    resent = [it["id"] for r in server.paths("/v1/gallery")[4:] for it in r[3]["items"]]
    assert sorted(resent) == [it.id for it in todo[13:]]  # what was there was not sent again
    assert all(len(r[3]["ids"]) <= LIMITS["max_items"] for r in server.paths("/v1/gallery/exists"))
    with client(server) as c:
        report = import_items(c, todo[:3], skip_existing=False)
    assert report.sent == 3 and report.skipped == 0


def test_import_splits_a_batch_above_the_body_limit() -> None:
    server = FakeServer()
    with client(server) as c:
        report = import_items(c, items(4, size=6000), batch=4, workers=1)
        assert report.sent == 4
        assert sorted(len(r[3]["items"]) for r in server.paths("/v1/gallery")) == [2, 2]
        assert all(r[2] <= LIMITS["max_body_bytes"] for r in server.requests)
        with pytest.raises(GalleryImportError, match="big.jpg: the image is too large"):
            import_items(c, [ImportItem("big", b"\1" * 16_000, label="big.jpg")])


def test_import_stops_at_a_refused_item_naming_its_file() -> None:
    server = FakeServer(refuse="p006")
    with client(server) as c:
        with pytest.raises(GalleryImportError) as info:
            import_items(c, items(12), batch=4, workers=1)
    text = str(info.value)
    assert text.startswith("p006.jpg: POST /v1/gallery: 422 items[2].image is not a JPEG")
    assert "4 items were stored before it" in text and "run the same command again" in text
    assert len(server.gallery) == 4


def test_import_refuses_duplicate_ids(tmp_path: Path) -> None:
    with client(FakeServer()) as c, pytest.raises(GalleryImportError, match="both be item 'p000'"):
        import_items(c, items(2) + items(1))


def test_numpy_images_travel_as_png() -> None:
    server = FakeServer()
    with client(server) as c:
        import_items(c, [ImportItem("a", np.zeros((4, 3), np.uint8))])
    assert base64.b64decode(server.gallery["a"]["image"]).startswith(b"\x89PNG")


def test_an_interrupted_import_reports_what_was_stored_and_resumes() -> None:
    server = FakeServer(delay=0.05)
    calls: list[int] = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with client(server) as c:
        with pytest.raises(KeyboardInterrupt):
            import_items(c, items(40), batch=4, workers=3, on_progress=progress)
        stored = len(server.gallery)
        assert sum(calls) == stored and 4 <= stored < 40  # the requests in flight finished and were counted
        report = import_items(c, items(40), batch=4)
    assert (report.skipped, report.sent) == (stored, 40 - stored) and len(server.gallery) == 40
