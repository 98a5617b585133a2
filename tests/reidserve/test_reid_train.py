"""TMP training and evaluation: losses, batches, resume after a kill, 2-process DDP, the CLI and its errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from pruneopt.checkpoint import save_subnet
from pruneopt.models import build, default_spec
from reidserve.cli import cli as main
from reidserve.data.synth import SynthConfig, generate
from reidserve.model import load_reid_model
from reidserve.train import (
    DecodedImages,
    ReidTrainConfig,
    TrainError,
    TwoViewSet,
    compute_loss,
    finetune_and_score,
    parse_batch,
    update_memory,
)
from reidserve.train.trainer import epoch_batches

REPO = Path(__file__).resolve().parents[2]
TINY = SynthConfig(ids=16, cams=3, seed=1, imgs_per_id=(3, 4), size=(64, 32), distractors=4)
EVAL_KEYS = {"mAP", "rank1", "rank5", "rank10", "mINP"}

torch.set_num_threads(1)


def train_args(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--out", str(out), "--arch", "resnet20", "--size", "64x32",
        "--epochs", str(epochs), "--iters", "2", "--batch", "4x2", "--threads", "1", "--seed", "3",
        "--k1", "6", "--k2", "2", "--eps", "0.4", "--outliers", "singleton", "--eval-batch", "64", *extra,
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(TINY, root)
    return root


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run (used as the reference of the resume test, and by eval tests)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    r = CliRunner().invoke(main, train_args(tiny, out, 2))
    assert r.exit_code == 0, r.output
    return out


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def strip_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("seconds", "train_images_per_s")}


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------


def test_parse_batch() -> None:
    assert parse_batch("16x8") == (16, 8) and parse_batch("4*2") == (4, 2)
    for bad in ("16", "1x4", "ax2", "4x0"):
        with pytest.raises(TrainError):
            parse_batch(bad)


def manual_tmp(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows of -mean_{p: y_p == y_i, p != i} log softmax_{j != i}(z_i . z_j / tau)."""
    n = len(z)
    losses = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        logp = torch.log_softmax(z[i] @ z[others].T / tau, dim=0)
        pos = torch.tensor([bool(y[j] == y[i]) for j in others])
        if pos.any():
            losses.append(-logp[pos].mean())
    return torch.stack(losses).mean()


def test_tmp_loss_takes_all_positives_and_centroid_loss_one() -> None:
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1).float()
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 3])  # two views of 6 images; label 3 has no positive
    memory = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    tmp = compute_loss(z, y, None, loss="tmp", tau=0.1)
    torch.testing.assert_close(tmp["loss"], manual_tmp(z, y, 0.1).float(), atol=1e-5, rtol=1e-5)
    cen = compute_loss(z, y, memory, loss="centroid", tau=0.1)
    torch.testing.assert_close(cen["loss"], F.cross_entropy(z @ memory.T / 0.1, y), atol=1e-5, rtol=1e-5)
    both = compute_loss(z, y, memory, loss="tmp", tau=0.1, memory_weight=0.5)
    torch.testing.assert_close(both["loss"], tmp["loss"] + 0.5 * cen["loss"], atol=1e-5, rtol=1e-5)
    # gradients reach the embeddings, not the memory
    zz = z.clone().requires_grad_(True)
    compute_loss(zz, y, memory, loss="tmp")["loss"].backward()
    assert zz.grad is not None and torch.isfinite(zz.grad).all() and zz.grad.abs().sum() > 0
    with pytest.raises(TrainError, match="memory"):
        compute_loss(z, y, None, loss="centroid")


def test_update_memory() -> None:
    memory = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    before = memory.clone()
    z = F.normalize(torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]), dim=1)
    update_memory(memory, z, torch.tensor([0, 0, 1]), momentum=0.2)
    torch.testing.assert_close(memory[0], F.normalize(torch.tensor([0.2, 0.8]), dim=0))
    torch.testing.assert_close(memory[1], F.normalize(torch.tensor([0.8, 0.2]), dim=0))
    torch.testing.assert_close(memory[2], before[2])  # not in the batch: unchanged


def test_epoch_batches_are_deterministic_and_shard_cleanly() -> None:
    labels = np.repeat(np.arange(6), 5)
    camids = np.tile(np.arange(5), 6)
    cfg = ReidTrainConfig(data="x", p=3, k=2, seed=4)
    a = epoch_batches(labels, camids, cfg, epoch=2, count=7)  # more than one pass (6 // 3 = 2 per pass)
    assert a == epoch_batches(labels, camids, cfg, epoch=2, count=7)
    assert a != epoch_batches(labels, camids, cfg, epoch=3, count=7)
    assert len(a) == 7 and all(len(b) == 6 for b in a)
    assert [k[1] for b in a for k in b] == [g for g in range(7) for _ in range(6)]
    for b in a:
        assert sorted(np.unique(labels[[k[0] for k in b]], return_counts=True)[1].tolist()) == [2, 2, 2]
    world = 2
    shards = [a[r::world] for r in range(world)]
    assert sum(len(s) for s in shards) == 7 and not {id(b) for b in shards[0]} & {id(b) for b in shards[1]}


def test_two_views_differ_and_are_reproducible(tiny: Path) -> None:
    from reidserve.data import TrainTransform, load_dataset

    ds = load_dataset(tiny)
    views = TwoViewSet(DecodedImages(ds.train, (64, 32), cache=True), TrainTransform((64, 32)), seed=1)
    views.labels = np.arange(len(ds.train))
    v1, v2, lab = views[(5, 0, 0)]
    assert lab == 5 and v1.shape == (3, 64, 32) and not torch.equal(v1, v2)
    w1, w2, _ = views[(5, 0, 0)]
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    x1, _, _ = views[(5, 0, 1)]  # same image in another slot: another augmentation
    assert not torch.equal(v1, x1)


# ----------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_folder_and_log(trained: Path) -> None:
    assert {p.name for p in trained.iterdir()} >= {"config.json", "log.jsonl", "checkpoint.pt", "model"}
    recs = log_records(trained)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert r["clusters"] >= 0 and r["outliers"] >= 0 and r["identities"] >= 4
        assert 0.0 <= r["nmi"] <= 1.0 and -1.0 <= r["ari"] <= 1.0
        assert r["steps"] == 2 and r["world_size"] == 1 and math.isfinite(r["loss"])
        assert set(r["val"]) >= EVAL_KEYS and 0.0 <= r["val"]["mAP"] <= 1.0
    model = load_reid_model(trained)
    assert model.head.input_size == (64, 32) and model.spec.arch == "resnet20"
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tiny: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reidserve.cli", *train_args(tiny, out, 2)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in log_records(out)] == [1]

    r = CliRunner().invoke(main, [*train_args(tiny, out, 2), "--resume"])
    assert r.exit_code == 0, r.output
    assert "after epoch 1" in r.stdout and "epoch 2/2" in r.stdout and "epoch 1/2" not in r.stdout
    assert [rec["epoch"] for rec in log_records(out)] == [1, 2]
    assert [strip_timing(a) for a in log_records(out)] == [strip_timing(b) for b in log_records(trained)]
    resumed = load_file(str(out / "model" / "model.safetensors"))
    reference = load_file(str(trained / "model" / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)

    # a finished run is not trained again; --epochs 3 continues it by one epoch
    r = CliRunner().invoke(main, train_args(tiny, out, 2))
    assert r.exit_code == 0 and "nothing to do" in r.stdout
    r = CliRunner().invoke(main, train_args(tiny, out, 3))
    assert r.exit_code == 0 and "epoch 3/3" in r.stdout
    assert [rec["epoch"] for rec in log_records(out)] == [1, 2, 3]


def pruned_winner(folder: Path, in_chans: int = 1) -> Path:
    """A half-width resnet20 classifier saved like a pruneopt search winner (grey input by default)."""
    spec = default_spec("resnet20", in_chans=in_chans, num_classes=10)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return save_subnet(build(spec.with_widths([max(4, w // 2) for w in spec.widths])), folder)


@pytest.mark.slow
def test_ddp_two_process_gloo_from_a_pruned_winner(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    winner = pruned_winner(tmp_path / "winner")
    args = [a for a in train_args(tiny, out, 1) if a not in ("--arch", "resnet20")]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "reidserve.cli", *args, "--backbone", str(winner),
    ]  # fmt: skip
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = log_records(out)
    assert len(recs) == 1 and recs[0]["world_size"] == 2 and recs[0]["steps"] == 2
    assert set(recs[0]["val"]) >= EVAL_KEYS
    assert r.stdout.count("epoch 1/1") == 1  # only rank 0 reports
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    model = load_reid_model(out)
    assert model.spec.in_chans == 3 and model.embed_dim == 32  # the winner's half-width last stage


@pytest.mark.slow
def test_eval_json(trained: Path, tiny: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["eval", "--model", str(trained), "--data", str(tiny), "--json", "--threads", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert set(res) == EVAL_KEYS and all(0.0 <= v <= 1.0 for v in res.values())
    assert res["mAP"] == pytest.approx(log_records(trained)[-1]["val"]["mAP"], abs=1e-6)
    r = CliRunner().invoke(main, ["eval", "--model", str(trained / "model"), "--data", str(tiny), "--rerank"])
    assert r.exit_code == 0 and "mAP" in r.stdout
    r = CliRunner().invoke(
        main, ["eval", "--arch", "resnet20", "--random", "--size", "64x32", "--data", str(tiny), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == EVAL_KEYS
    winner = pruned_winner(tmp_path / "winner", in_chans=3)
    r = CliRunner().invoke(
        main, ["eval", "--backbone", str(winner), "--size", "64x32", "--data", str(tiny), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == EVAL_KEYS


@pytest.mark.slow
def test_finetune_and_score_is_deterministic(tiny: Path) -> None:
    backbone = build(default_spec("resnet20", num_classes=10))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    kw = {"steps": 2, "size": (64, 32), "batch": (4, 2), "threads": 1}
    from reidserve.cluster import ClusterConfig

    cl = ClusterConfig(k1=6, k2=2, eps=0.4, outliers="singleton")
    a = finetune_and_score(backbone, tiny, seed=1, cluster=cl, **kw)
    b = finetune_and_score(backbone, tiny, seed=1, cluster=cl, **kw)
    assert 0.0 < a <= 1.0 and a == b
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def assert_one_line_error(r, message: str) -> None:  # noqa: ANN001 - click Result
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reidserve: error: "), r.stderr
    assert message in lines[0], lines[0]


@pytest.mark.slow
def test_bad_input_exit_2(tiny: Path, trained: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert_one_line_error(runner.invoke(main, train_args(tmp_path / "missing", tmp_path / "o", 1)), "does not exist")
    no_gallery = tmp_path / "no_gallery"
    shutil.copytree(tiny, no_gallery)
    for f in (no_gallery / "bounding_box_test").iterdir():
        f.unlink()
    assert_one_line_error(runner.invoke(main, train_args(no_gallery, tmp_path / "o", 1)), "gallery split has no")
    assert_one_line_error(
        runner.invoke(main, ["eval", "--model", str(trained), "--data", str(no_gallery)]), "gallery split has no"
    )
    shutil.rmtree(no_gallery / "query")
    assert_one_line_error(runner.invoke(main, train_args(no_gallery, tmp_path / "o", 1)), "no re-ID dataset found")
    # a run folder with another configuration
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    r = runner.invoke(main, [*train_args(tiny, copy, 2), "--lr", "0.001"])
    assert_one_line_error(r, "different configuration (lr: run has 0.00035, now 0.001)")
    assert_one_line_error(runner.invoke(main, [*train_args(tiny, tmp_path / "fresh", 1), "--resume"]), "nothing to")
    assert not (tmp_path / "fresh" / "checkpoint.pt").exists()
    assert_one_line_error(
        runner.invoke(main, [*train_args(tiny, tmp_path / "o", 1), "--backbone", str(tmp_path / "nope")]),
        "exactly one of --arch",
    )
    no_arch = [a for a in train_args(tiny, tmp_path / "o", 1) if a not in ("--arch", "resnet20")]
    r = runner.invoke(main, [*no_arch, "--backbone", str(tmp_path / "nope")])
    assert_one_line_error(r, "does not exist")
    assert_one_line_error(runner.invoke(main, [*train_args(tiny, tmp_path / "o", 1), "--batch", "16"]), "PxK")
    assert_one_line_error(runner.invoke(main, ["eval", "--data", str(tiny)]), "one of --model PATH")
    assert_one_line_error(runner.invoke(main, ["eval", "--data", str(tiny), "--model", str(tmp_path)]), "neither")
    assert_one_line_error(runner.invoke(main, ["eval", "--data", str(tiny), "--random"]), "one of --model PATH")
    assert_one_line_error(runner.invoke(main, ["eval", "--data", str(tiny), "--arch", "resnet20"]), "--random goes")
    assert_one_line_error(
        runner.invoke(main, ["eval", "--data", str(tiny), "--arch", "resnet7", "--random"]), "unknown architecture"
    )


def test_too_few_pseudo_identities_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    # 74 images cannot fill a batch of 80 identities even as singletons
    r = CliRunner().invoke(main, [*train_args(tiny, tmp_path / "o", 1), "--batch", "80x2"])
    assert_one_line_error(r, "fewer than P=80")


@pytest.mark.slow
def test_too_few_clusters_falls_back_to_singletons_for_the_epoch(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reidserve.train as train_mod
    import reidserve.train.trainer as trainer_mod
    from reidserve.cluster import ClusterResult

    def two_clusters(features: np.ndarray, config: object, **kw: object) -> ClusterResult:
        labels = np.full(len(features), -1, dtype=np.int64)
        labels[:10], labels[10:20] = 0, 1
        return ClusterResult(labels, 2, len(features) - 20, {})

    monkeypatch.setattr(trainer_mod, "cluster_features", two_clusters)
    lines: list[str] = []
    cfg = ReidTrainConfig(
        data=str(tiny), arch="resnet20", epochs=1, iters=1, p=4, k=2, size=(64, 32), threads=1, eval_batch=64
    )
    result = train_mod.train_reid(cfg, tmp_path / "run", log=lines.append)
    rec = result.last
    assert rec is not None and rec["fallback"] == "singleton"
    assert rec["clusters"] == 2 and rec["identities"] == 2 + rec["outliers"]
    assert any("only 2 clusters" in line for line in lines)


def test_decoded_images_are_shared_between_runs_of_a_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search worker fine-tunes many candidates on the same data: the second run decodes nothing, a changed
    file is decoded again, and a zero limit keeps images per run only."""
    from PIL import Image

    import reidserve.train.images as tr
    from reidserve.data import Item

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 10, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    items = [Item(path=str(p), pid=i, camid=0) for i, p in enumerate(paths)]
    decoded: list[str] = []
    real = tr.load_image

    def counting(path: object) -> np.ndarray:
        decoded.append(str(path))
        return real(path)

    monkeypatch.setattr(tr, "load_image", counting)
    tr.clear_shared_image_cache()
    first = tr.DecodedImages(items, (8, 4), cache=True)
    a = [first.get(i) for i in range(3)]
    assert len(decoded) == 3 and not a[1].flags.writeable  # shared arrays cannot be changed in place
    again = tr.DecodedImages(items, (8, 4), cache=True)
    assert all(np.array_equal(again.get(i), a[i]) for i in range(3)) and len(decoded) == 3
    assert tr.DecodedImages(items, (16, 8), cache=True).get(0).shape == (16, 8, 3) and len(decoded) == 4  # other size
    Image.fromarray(np.full((20, 10, 3), 200, np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(time.time_ns(), time.time_ns() + 10**9))
    assert int(tr.DecodedImages(items, (8, 4), cache=True).get(2)[0, 0, 0]) == 200 and len(decoded) == 5
    assert len(tr.DecodedImages(items, (8, 4), cache=False).get(0).shape) == 3 and len(decoded) == 6  # no cache: decode
    tr.clear_shared_image_cache()
    monkeypatch.setenv("REIDSERVE_IMAGE_CACHE_MB", "0")
    run = tr.DecodedImages(items, (8, 4), cache=True)
    run.get(0)
    run.get(0)  # still once per run
    tr.DecodedImages(items, (8, 4), cache=True).get(0)
    assert len(decoded) == 8 and len(tr.SHARED_IMAGES) == 0 and tr.SHARED_IMAGES.nbytes == 0
