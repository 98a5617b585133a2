"""Bulk work against a real server: ``reidserve query import`` of a Market-1501 layout, a flat folder and a CSV
(micro-batched, resumable, stopping at a bad file that it names), ``/v1/limits`` and ``/v1/gallery/exists``, and
``reidserve query eval``, whose figures must equal the Market-1501 scoring of the service's own embeddings."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

for _module in ("fastapi", "uvicorn", "multipart", "httpx"):
    pytest.importorskip(_module, reason=f"the service needs {_module}: pip install 'pruneopt[serve]'")
import httpx  # noqa: E402

from reidserve.cli import cli  # noqa: E402
from reidserve.client import ReidClient, ReidClientError  # noqa: E402
from reidserve.data import read_market1501  # noqa: E402
from reidserve.data.synth import SynthResult  # noqa: E402
from reidserve.metrics import evaluate_features  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from tests.support.serving import export_models, png_bytes, random_images  # noqa: E402

TOKEN = "bulk-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedding model; 4 images per model run, 8 per request, 6 items per request (cheap to exceed)."""
    models = export_models(tmp_path_factory.getbasetemp() / "reid-serve-models")
    data = tmp_path_factory.mktemp("serve-bulk")
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(data), "--max-batch", "4", "--max-images", "8",
            "--max-items", "6", "--max-k", "40", "--threads", "1", "--max-wait-ms", "5"]
    with ServerProcess(args, tokens=[TOKEN]) as srv:
        yield srv


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def query_args(server: ServerProcess, *more: str) -> list[str]:
    return ["query", "--url", server.url, "--token", TOKEN, *more]


def clear(server: ServerProcess) -> None:
    """Empty the gallery (searches return at most --max-k items at a time)."""
    with ReidClient(server.url, TOKEN) as c:
        while hits := c.search(embedding=[1.0] * 64, k=40):
            for h in hits:
                c.delete(h["id"])


def test_limits_and_exists_endpoints(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/limits").json() == {"max_k": 40, "max_images": 8, "max_items": 6,
                                                 "max_body_bytes": 16 * 2**20, "max_pixels": 4_000_000,
                                                 "max_batch": 4}
        schema = http.get("/openapi.json").json()
        assert {"/v1/limits", "/v1/gallery/exists"} <= set(schema["paths"])
        assert set(schema["components"]["schemas"]["LimitsResponse"]["properties"]) == {
            "max_k", "max_images", "max_items", "max_body_bytes", "max_pixels", "max_batch"}
        r = http.post("/v1/gallery", headers=AUTH, json={"items": [{"id": "e1", "embedding": [1.0] * 64},
                                                                    {"id": "e2", "embedding": [0.5] * 64}]})
        assert r.status_code == 200
        r = http.post("/v1/gallery/exists", json={"ids": ["zz", "e2", "e1", "nope"]})  # a read: no token needed
        assert r.json() == {"present": ["e2", "e1"], "missing": ["zz", "nope"]}
        r = http.post("/v1/gallery/exists", json={"ids": [f"x{i}" for i in range(7)]})
        assert r.status_code == 413 and "at most 6" in r.json()["detail"]
        assert http.post("/v1/gallery/exists", json={"ids": ["a b"]}).status_code == 422
        assert http.post("/v1/gallery/exists", content=b"ids=a").status_code == 422
        assert http.get("/v1/gallery/exists").status_code == 404  # the item route: no item of that id
    with ReidClient(server.url, TOKEN) as c:
        assert c.existing(["e1", "e2", *[f"y{i}" for i in range(9)]]) == {"e1", "e2"}  # two requests
        with pytest.raises(ReidClientError, match="k=41 is above the server's limit of 40"):
            c.search(embedding=[1.0] * 64, k=41)
        assert c.embed(random_images(11, 64, 32, seed=4)).shape == (11, 64)  # split: at most 8 per request
    clear(server)


def test_import_a_market_layout_then_resume(server: ServerProcess,
                                            small_synth: tuple[Path, SynthResult, object]) -> None:
    root, res, _ = small_synth
    files = sorted(p.name for p in (root / "bounding_box_test").iterdir())
    code, out, err = run(*query_args(server, "import", str(root)))
    assert code == 0, err
    assert f"bounding_box_test: {len(files)} images" in err
    assert re.search(rf"imported {len(files)} of {len(files)} items in [\d.]+ s \([\d.]+ items/s\); gallery size "
                     rf"{len(files)} \[4 per request, 4 in flight\]", out), out
    with ReidClient(server.url, TOKEN) as c:
        name = next(f for f in files if not f.startswith(("-1_", "0000_")))  # a person, 0005_c2s1_000012_01.jpg
        item = c.get(name.rsplit(".", 1)[0])
        assert item["camera"] == "c" + name.split("_c")[1][0]
        assert item["metadata"] == {"pid": int(name.split("_")[0]), "file": name}
        junk = [f for f in files if f.startswith("-1_")]
        assert junk and c.get(junk[0].rsplit(".", 1)[0])["metadata"]["pid"] == -1
        code, out, err = run(*query_args(server, "import", str(root)))
        assert code == 0 and f"imported 0 of {len(files)} items; {len(files)} already in the gallery" in out
        for f in files[:3]:
            c.delete(f.rsplit(".", 1)[0])
    code, out, err = run(*query_args(server, "import", str(root), "--workers", "2", "--batch", "2"))
    assert code == 0 and f"imported 3 of {len(files)} items" in out and "[2 per request, 2 in flight]" in out
    assert f"{len(files) - 3} already in the gallery (skipped)" in err


def test_eval_through_the_service_equals_scoring_its_embeddings(
        server: ServerProcess, small_synth: tuple[Path, SynthResult, object]) -> None:
    root, _, _ = small_synth
    code, _, err = run(*query_args(server, "import", str(root)))
    assert code == 0, err
    code, out, err = run(*query_args(server, "eval", str(root), "--json"))
    assert code == 0, err
    got = json.loads(out)
    ds = read_market1501(root)
    with ReidClient(server.url, TOKEN) as c:
        q = c.embed([i.path for i in ds.query])
        g = c.embed([i.path for i in ds.gallery])
    want = evaluate_features(q, g, [i.pid for i in ds.query], [i.pid for i in ds.gallery],
                             [i.camid for i in ds.query], [i.camid for i in ds.gallery], metric="euclidean")
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert got[key] == pytest.approx(getattr(want, key), abs=1e-6), key
    assert got["queries"] == want.num_valid_queries == len(ds.query)
    assert got["truncated"] is False and got["k"] == got["gallery_size"]
    code, out, _ = run(*query_args(server, "eval", str(root), "-k", "3", "--json"))
    cut = json.loads(out)
    assert cut["truncated"] is True and cut["k"] == 3 and cut["rank1"] == pytest.approx(want.rank1, abs=1e-9)
    code, out, _ = run(*query_args(server, "eval", str(root)))
    assert code == 0 and "through the service" in out and f"({len(ds.query)} queries)" in out
    clear(server)


def test_import_a_flat_folder_with_a_csv(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(random_images(5, 80, 40, seed=8)):
        (folder / f"shot {i}.png").write_bytes(png_bytes(im))
    code, out, err = run(*query_args(server, "import", str(folder)))
    assert code == 0 and "imported 5 of 5 items" in out, err
    with ReidClient(server.url, TOKEN) as c:
        three = c.get("shot_3")
        assert (three["camera"], three["time"], three["metadata"]) == (None, None, {"file": "shot 3.png"})
    (folder / "index.csv").write_text("file,id,camera,time,pid,track,note\nshot 1.png,p-1,cam2,1700000000.5,7,3,"
                                      "left door\nshot 4.png,,cam9,,,,\n")
    code, out, err = run(*query_args(server, "import", str(folder), "--csv", str(folder / "index.csv")))
    assert code == 0 and "imported 1 of 2 items" in out and "1 already in the gallery" in out, err
    with ReidClient(server.url) as c:
        assert c.get("shot_4")["camera"] is None  # skipped, not replaced
    code, out, err = run(*query_args(server, "import", str(folder), "--csv", str(folder / "index.csv"),
                                     "--overwrite"))
    assert code == 0 and "imported 2 of 2 items" in out, err
    with ReidClient(server.url, TOKEN) as c:
        one = c.get("p-1")
        assert (one["camera"], one["time"]) == ("cam2", 1700000000.5)
        assert one["metadata"] == {"pid": 7, "track": 3, "note": "left door", "file": "shot 1.png"}
        assert c.get("shot_4")["camera"] == "cam9"  # replaced by --overwrite
    code, _, err = run(*query_args(server, "import", str(folder), "--split", "query"))
    assert code == 2 and "not in the Market-1501 layout" in err
    clear(server)


def test_import_stops_at_a_bad_file_and_resumes_once_it_is_gone(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, im in enumerate(random_images(9, 64, 32, seed=2)):
        (folder / f"{i:02d}.png").write_bytes(png_bytes(im))
    (folder / "05.png").write_bytes(b"not an image at all")
    code, out, err = run(*query_args(server, "import", str(folder), "--workers", "1"))
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("reidserve: error: 05.png: POST /v1/gallery: 422") and "not a JPEG, PNG" in line
    assert "4 items were stored before it" in line and "run the same command again" in line
    (folder / "05.png").unlink()
    code, out, err = run(*query_args(server, "import", str(folder)))
    assert code == 0 and "imported 4 of 8 items" in out and "4 already in the gallery" in out, out + err
    clear(server)


def test_demo_gallery_imports_a_folder(server: ServerProcess, small_synth: tuple[Path, SynthResult, object],
                                       tmp_path: Path) -> None:
    root, _, _ = small_synth
    folder = tmp_path / "some"
    folder.mkdir()
    for p in sorted((root / "bounding_box_test").iterdir())[:7]:
        shutil.copy(p, folder / p.name)
    code, out, err = run("demo-gallery", "--url", server.url, "--token", TOKEN, "--images", str(folder), "--count",
                         "5")
    assert code == 0 and "added 5 items" in out, err
    assert "imported 5 of 5 items" in err
    code, out, err = run("demo-gallery", "--url", server.url, "--token", TOKEN, "--images", str(folder))
    assert code == 0 and "added 2 items" in out and "5 already in the gallery" in err
    clear(server)


def test_import_without_a_server_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    code, _, err = run("query", "--url", "http://127.0.0.1:9", "import", str(tmp_path))
    assert code == 2 and "cannot reach" in err and len(err.strip().splitlines()) == 1
    code, _, err = run("query", "--url", "http://127.0.0.1:9", "import", str(tmp_path / "nothing"))
    assert code == 2 and "does not exist" in err


def test_the_bulk_client_side_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, reidserve.cli, reidserve.cli.bulk_cmds, reidserve.gallery_import, reidserve.remote_eval; "
            "from reidserve.cli import cli; cli.main(['query', '--help'], standalone_mode=False); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "import datasets/market1501" in out.stdout and "eval datasets/market1501" in out.stdout  # query --help
