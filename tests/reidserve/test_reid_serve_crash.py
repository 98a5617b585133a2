"""Crash test: concurrent writers, SIGKILL of the server mid-way, restart. Every acknowledged add is there and
searchable exactly once, every acknowledged delete stays deleted, writes in flight are all-or-nothing, and the
index holds exactly the store's items."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest

for _module in ("fastapi", "uvicorn", "multipart", "prometheus_client", "httpx"):
    pytest.importorskip(_module, reason=f"the service needs {_module}: pip install 'pruneopt[serve]'")
import httpx  # noqa: E402

from reidserve.service.process import ServerProcess  # noqa: E402
from tests.support.serving import export_models  # noqa: E402

TOKEN = "crash-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRITERS = 6
DIM = 64


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_models(tmp_path_factory.getbasetemp() / "reid-serve-models")


def vector(item_id: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM)
    return (v / np.linalg.norm(v)).tolist()


class Writer(threading.Thread):
    """Adds batches of 1-3 new ids, sometimes deletes one of its acknowledged ids; records what was acknowledged
    and what was in flight when the server died."""

    def __init__(self, url: str, n: int) -> None:
        super().__init__(daemon=True)
        self.url, self.n = url, n
        self.acked_present: set[str] = set()
        self.acked_deleted: set[str] = set()
        self.in_flight: list[str] = []  # the ids of the one request without an answer (all or none)
        self.requests = 0

    def run(self) -> None:
        rng = np.random.default_rng(self.n)
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as c:
            i = 0
            while True:
                if self.acked_present and rng.random() < 0.2:
                    victim = sorted(self.acked_present)[int(rng.integers(len(self.acked_present)))]
                    self.in_flight = [victim]
                    try:
                        r = c.delete(f"/v1/gallery/{victim}")
                    except httpx.HTTPError:
                        return
                    assert r.status_code == 200, r.text
                    self.acked_present.discard(victim)
                    self.acked_deleted.add(victim)
                else:
                    ids = [f"w{self.n}-{i + j}" for j in range(int(rng.integers(1, 4)))]
                    i += len(ids)
                    self.in_flight = ids
                    items = [{"id": x, "embedding": vector(x), "camera": f"c{self.n}"} for x in ids]
                    try:
                        r = c.post("/v1/gallery", json={"items": items})
                    except httpx.HTTPError:
                        return
                    assert r.status_code == 200, r.text
                    assert [it["id"] for it in r.json()["items"]] == ids
                    self.acked_present.update(ids)
                self.in_flight = []
                self.requests += 1


def test_sigkill_loses_no_acknowledged_write(models: dict[str, Path], tmp_path: Path) -> None:
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path / "gallery"),
            "--snapshot-interval", "0.3", "--threads", "1"]
    srv = ServerProcess(args, tokens=[TOKEN]).start()
    writers = [Writer(srv.url, n) for n in range(WRITERS)]
    try:
        for w in writers:
            w.start()
        deadline = time.monotonic() + 20
        while sum(w.requests for w in writers) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.13)  # kill at an arbitrary point, not right after a count check
        srv.kill()
        for w in writers:
            w.join(timeout=30)
    finally:
        srv.kill()
        srv.close()
    assert not any(w.is_alive() for w in writers)
    acked = set().union(*(w.acked_present for w in writers))
    deleted = set().union(*(w.acked_deleted for w in writers))
    assert len(acked) >= 200 and deleted, (len(acked), len(deleted))

    with ServerProcess(args, tokens=[TOKEN]) as again, httpx.Client(base_url=again.url, timeout=30) as c:
        st = c.get("/v1/stats").json()["gallery"]
        assert st["items"] == st["store_rows"] == st["index"]["ntotal"]
        start = st["startup"]  # the restart loaded a snapshot and replayed the writes made after it
        assert start["snapshot_seq"] is not None and start["replayed"] > 0 and not start["rebuilt"]
        assert start["snapshot_seq"] + start["replayed"] <= start["seq"]
        # what was in flight at the kill: a new batch of ids (all or none may exist), or the delete of an
        # acknowledged id (it may or may not have happened)
        adds = [w.in_flight for w in writers if w.in_flight and w.in_flight[0] not in w.acked_present]
        pending_deletes = [w.in_flight[0] for w in writers if w.in_flight and w.in_flight[0] in w.acked_present]
        added = 0
        for ids in adds:
            flags = [c.get(f"/v1/gallery/{x}").status_code == 200 for x in ids]
            assert all(flags) or not any(flags), (ids, flags)  # one request is one transaction
            added += sum(flags)
        gone = sum(c.get(f"/v1/gallery/{x}").status_code == 404 for x in pending_deletes)
        assert st["items"] == len(acked) - gone + added
        for x in sorted(acked):
            if x in pending_deletes:
                continue
            hits = c.post("/v1/search", json={"embedding": vector(x), "k": 3}).json()["hits"]
            assert hits[0]["id"] == x and hits[0]["score"] == pytest.approx(1.0, abs=1e-4), (x, hits)
            assert [h["id"] for h in hits].count(x) == 1
        for x in sorted(deleted):
            assert c.get(f"/v1/gallery/{x}").status_code == 404
            hits = c.post("/v1/search", json={"embedding": vector(x), "k": 1}).json()["hits"]
            assert not hits or hits[0]["id"] != x
        # the restarted server keeps accepting writes on top of the replayed state
        r = c.post("/v1/gallery", json={"items": [{"id": "after", "embedding": vector("after")}]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["gallery_size"] == st["items"] + 1
