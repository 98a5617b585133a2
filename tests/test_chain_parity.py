"""The chain train -> export -> serve, end to end through the real service: what the service embeds and ranks is
what evaluation scored.

* re-ID: a tiny ``reidserve train`` run on synthetic data is exported with ``pruneopt export RUN`` (no flags: the
  model folder's preprocess.json gives the input) and served by ``reidserve serve`` in a subprocess. The service's
  preprocessing equals the evaluation transform, ``/v1/embed`` on the query and gallery files equals the features
  ``reidserve eval`` computes (max abs <= 1e-4), and a gallery built through the service, searched with every
  query, gives ``reidserve eval``'s mAP and rank-1 (to 1e-6).
* classification: a thinned Fashion-MNIST-shaped network saved as a search saves its winner (with the task's
  preprocess.json) is exported without flags and served; every query's top-1 neighbour in the served gallery is the
  one the torch model's own embeddings give.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

for _module in ("fastapi", "uvicorn", "httpx", "faiss", "onnxruntime"):
    pytest.importorskip(_module, reason=f"the chain needs {_module}")
import httpx  # noqa: E402

from export.metadata import read_metadata  # noqa: E402
from pruneopt.checkpoint import save_subnet  # noqa: E402
from pruneopt.cli import cli as pruneopt_cli  # noqa: E402
from pruneopt.models import build, default_spec  # noqa: E402
from pruneopt.search_config import SearchConfig  # noqa: E402
from pruneopt.space import PruningSpace, Regime  # noqa: E402
from pruneopt.tasks.registry import get_task  # noqa: E402
from pruneopt.thinning import thin  # noqa: E402
from pruneopt.train import to_input  # noqa: E402
from reidserve.cli import cli as reidserve_cli  # noqa: E402
from reidserve.data import TestTransform, load_dataset, load_image, resize  # noqa: E402
from reidserve.data.synth import SynthConfig, generate  # noqa: E402
from reidserve.metrics import evaluate  # noqa: E402
from reidserve.model import load_reid_model  # noqa: E402
from reidserve.service.preprocess import decode_image, to_batch  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from reidserve.train import extract_features  # noqa: E402
from tests.support.serving import png_bytes, random_images  # noqa: E402

TOKEN = "chain-parity-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DATA = SynthConfig(ids=16, cams=3, seed=1, imgs_per_id=(3, 4), size=(64, 32), distractors=4)
TRAIN = ["--arch", "resnet20", "--size", "64x32", "--epochs", "1", "--iters", "3", "--batch", "4x2", "--k1", "6",
         "--k2", "2", "--eps", "0.4", "--outliers", "singleton", "--threads", "1", "--eval-batch", "64", "--seed", "3"]
SERVE = ["--threads", "1", "--max-wait-ms", "1", "--max-images", "64", "--index", "flat"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def invoke(group, argv: list[str]) -> str:  # noqa: ANN001 - a click group
    before = torch.get_num_threads()
    r = CliRunner().invoke(group, argv, catch_exceptions=False)
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread in this process (the training and the service use one too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chain") / "data"
    generate(DATA, root)
    return root


@pytest.fixture(scope="module")
def run(data: Path) -> Path:
    """``reidserve train`` -> ``pruneopt export RUN`` (both command lines, no preprocessing flags)."""
    out = data.parent / "run"
    invoke(reidserve_cli, ["train", "--data", str(data), "--out", str(out), *TRAIN])
    invoke(pruneopt_cli, ["export", str(out), "--out", str(out / "model.onnx"), "--verify-batches", "1,5"])
    return out


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[ServerProcess]:
    with ServerProcess(["--model", str(run / "model.onnx"), "--data-dir", str(run / "gallery"), *SERVE],
                       tokens=[TOKEN]) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def served_embeddings(http: httpx.Client, paths: list[str]) -> np.ndarray:
    out = []
    for start in range(0, len(paths), 32):
        files = [b64(Path(p).read_bytes()) for p in paths[start:start + 32]]
        r = http.post("/v1/embed", json={"images": files})
        assert r.status_code == 200, r.text
        out.append(np.asarray(r.json()["embeddings"], np.float32))
    return np.concatenate(out)


@pytest.mark.slow
def test_the_export_is_the_whole_model_with_the_folders_preprocessing(run: Path) -> None:
    meta = read_metadata(run / "model.onnx")
    model = load_reid_model(run)
    assert meta.input_shape == (3, 64, 32) and meta.color == "RGB" and meta.output_kind == "embedding"
    assert meta.normalized and meta.output_dim == model.embed_dim and meta.extra["model_format"] == "reid"
    assert meta.mean == model.head.mean and meta.std == model.head.std


@pytest.mark.slow
def test_service_preprocessing_equals_the_evaluation_transform(run: Path, data: Path) -> None:
    meta = read_metadata(run / "model.onnx")
    ds = load_dataset(data)
    transform = TestTransform(meta.input_shape[1:])
    worst = 0.0
    for item in (*ds.query, *ds.gallery):
        im = decode_image(Path(item.path).read_bytes(), meta.input_shape[1:], meta.color, max_pixels=10**7)
        served = to_batch([im], meta)[0]
        evaluated = transform(load_image(item.path))
        assert served.shape == evaluated.shape == meta.input_shape
        worst = max(worst, float(np.abs(served - evaluated).max()))
    # x * float32(1/255) (the metadata's pixel scale) vs x / 255 (training): the last bit of float32 at most
    assert worst <= 1e-6, worst


def test_service_preprocessing_equals_evaluation_when_it_downscales(data: Path) -> None:
    """A model whose input is half the images' size (a 64x32 crop served to a 32x16 model)."""
    ds = load_dataset(data)
    size = (32, 16)
    worst = 0.0
    for item in ds.query:
        im = decode_image(Path(item.path).read_bytes(), size, "RGB", max_pixels=10**7)
        served = np.asarray(im, np.float32)
        evaluated = resize(load_image(item.path), size).astype(np.float32)  # the resize of TestTransform(size)
        worst = max(worst, float(np.abs(served - evaluated).max()))
    assert worst == 0.0, f"pixels differ by up to {worst:.0f} levels"


@pytest.mark.slow
def test_served_embeddings_equal_eval_features(run: Path, data: Path, http: httpx.Client) -> None:
    ds = load_dataset(data)
    items = [*ds.query, *ds.gallery]
    model = load_reid_model(run)
    with torch.inference_mode():
        want = extract_features(model, items, size=model.head.input_size)  # what `reidserve eval` embeds
    got = served_embeddings(http, [it.path for it in items])
    diff = float(np.abs(got - want).max())
    print(f"\nre-ID /v1/embed vs reidserve eval features: max abs difference {diff:.2e} over {len(items)} images")
    assert got.shape == want.shape and diff <= 1e-4


@pytest.mark.slow
def test_a_gallery_built_through_the_service_gives_evals_map(run: Path, data: Path, http: httpx.Client) -> None:
    ds = load_dataset(data)
    items = [{"id": f"g{i:05d}", "image": b64(Path(g.path).read_bytes()), "camera": f"c{g.camid}"}
             for i, g in enumerate(ds.gallery)]
    for start in range(0, len(items), 32):  # within the server's --max-images per request
        r = http.post("/v1/gallery", json={"items": items[start:start + 32]}, headers=AUTH)
        assert r.status_code == 200, r.text
    assert r.json()["gallery_size"] == len(ds.gallery)
    ranks = np.zeros((len(ds.query), len(ds.gallery)), np.float64)
    for qi, q in enumerate(ds.query):
        r = http.post("/v1/search", json={"image": b64(Path(q.path).read_bytes()), "k": len(ds.gallery)})
        assert r.status_code == 200, r.text
        order = [int(h["id"][1:]) for h in r.json()["hits"]]
        assert sorted(order) == list(range(len(ds.gallery)))
        ranks[qi, order] = np.arange(len(order))  # the service's ranking as a distance matrix
    served = evaluate(ranks, [q.pid for q in ds.query], [g.pid for g in ds.gallery], [q.camid for q in ds.query],
                      [g.camid for g in ds.gallery])
    scored = json.loads(invoke(reidserve_cli, ["eval", "--model", str(run), "--data", str(data), "--json"]))
    print(f"\nmAP through the service {served.mAP:.8f} vs reidserve eval {scored['mAP']:.8f}; rank-1 "
          f"{served.rank1:.6f} vs {scored['rank1']:.6f}")
    assert abs(served.mAP - scored["mAP"]) <= 1e-6 and abs(served.rank1 - scored["rank1"]) <= 1e-6


# -- a classification winner ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A Fashion-MNIST-shaped winner: resnet20 on grey 28x28, thinned to half its FLOPs, saved with the
    classification task's preprocessing record, exported by `pruneopt export WINNER` without flags."""
    root = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    parent = build(default_spec("resnet20", in_chans=1, num_classes=10))
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for m in parent.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    spec = PruningSpace(parent.spec, input_hw=(28, 28)).sample(1, Regime(0.5, 0.05), seed=0).spec(0)
    winner = thin(parent.eval(), spec).eval()
    folder = save_subnet(winner, root / "winner", get_task("classification").preprocess(SearchConfig()))
    invoke(pruneopt_cli, ["export", str(folder), "--out", str(root / "winner.onnx"), "--verify-batches", "1,3"])
    return winner, root / "winner.onnx"


@pytest.mark.slow
def test_classification_winner_served_top1_neighbours_match_torch(classifier: tuple[torch.nn.Module, Path],
                                                                  tmp_path: Path) -> None:
    from pruneopt.data.fashion_mnist import MEAN, STD

    model, onnx_path = classifier
    meta = read_metadata(onnx_path)
    assert meta.input_shape == (1, 28, 28) and meta.color == "L" and meta.output_kind == "logits"
    assert meta.mean == (MEAN,) and meta.std == (STD,)
    gallery = np.stack(random_images(40, 28, 28, channels=1, seed=5))
    queries = np.stack(random_images(12, 28, 28, channels=1, seed=6))
    with torch.inference_mode():  # the classification task's own input transform and embeddings
        g = torch.nn.functional.normalize(model(to_input(gallery)), dim=1).numpy()
        q = torch.nn.functional.normalize(model(to_input(queries)), dim=1).numpy()
    sims = q @ g.T
    want, want_scores = sims.argmax(1), sims.max(1)
    with ServerProcess(["--model", str(onnx_path), "--data-dir", str(tmp_path / "gallery"), *SERVE],
                       tokens=[TOKEN]) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        items = [{"id": f"g{i:03d}", "image": b64(png_bytes(im))} for i, im in enumerate(gallery)]
        r = http.post("/v1/gallery", json={"items": items}, headers=AUTH)
        assert r.status_code == 200, r.text
        got, scores = [], []
        for im in queries:
            r = http.post("/v1/search", json={"image": b64(png_bytes(im)), "k": 1})
            assert r.status_code == 200, r.text
            hit = r.json()["hits"][0]
            got.append(int(hit["id"][1:]))
            scores.append(hit["score"])
    print(f"\nclassification: {int((np.asarray(got) == want).sum())}/{len(want)} served top-1 neighbours equal "
          f"torch's; max score difference {float(np.abs(np.asarray(scores) - want_scores).max()):.2e}")
    assert got == want.tolist()
    np.testing.assert_allclose(scores, want_scores, atol=1e-4)
