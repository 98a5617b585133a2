"""The synthetic re-ID generator."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from reidserve.data import SynthConfig, TestTransform, generate, load_dataset, load_image, read_market1501
from reidserve.data.synth import parse_range, parse_size
from reidserve.metrics import evaluate, pairwise_distance


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_readable_by_market_reader_with_the_right_counts(small_synth) -> None:
    root, res, cfg = small_synth
    ds = load_dataset(root)
    assert ds.name == "synth"
    assert {i.pid for i in ds.train} == set(range(1, cfg.ids // 2 + 1))
    assert {i.pid for i in ds.query} == set(range(cfg.ids // 2 + 1, cfg.ids + 1))
    gallery_pids = Counter(i.pid for i in ds.gallery)
    assert gallery_pids[0] == cfg.distractors
    assert set(gallery_pids) == {0} | set(range(cfg.ids // 2 + 1, cfg.ids + 1))
    assert len(ds.train) == res.num_train
    assert len(ds.query) == res.num_query
    assert len(ds.gallery) == res.num_gallery - cfg.junk  # junk (pid -1) is dropped by the reader
    assert len(list((root / "bounding_box_test").glob("-1_*.jpg"))) == cfg.junk
    assert {i.camid for i in ds.train + ds.query + ds.gallery} <= set(range(cfg.cams))
    img = load_image(ds.query[0].path)
    assert img.shape == (*cfg.size, 3)
    meta = json.loads((root / "synth.json").read_text())
    assert meta["config"]["seed"] == cfg.seed and meta["counts"]["num_query"] == res.num_query


def test_split_structure(small_synth) -> None:
    root, _, cfg = small_synth
    ds = read_market1501(root)
    lo, hi = cfg.imgs_per_id
    per_id_cam = Counter((i.pid, i.camid) for i in ds.train + ds.query + ds.gallery if i.pid > 0)
    assert all(lo <= n <= hi for n in per_id_cam.values())
    cams_per_id = Counter(pid for pid, _ in per_id_cam)
    assert min(cams_per_id.values()) >= cfg.min_cams
    # at most one query per id and camera, and every query has a cross-camera match in the gallery
    assert max(Counter((q.pid, q.camid) for q in ds.query).values()) == 1
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    # the evaluation protocol accepts every query
    n_q, n_g = len(ds.query), len(ds.gallery)
    m = evaluate(
        np.random.default_rng(0).random((n_q, n_g)),
        [q.pid for q in ds.query],
        [g.pid for g in ds.gallery],
        [q.camid for q in ds.query],
        [g.camid for g in ds.gallery],
    )
    assert m.num_valid_queries == n_q


def test_same_seed_same_bytes_different_seed_different(small_synth, tmp_path: Path) -> None:
    root, _, cfg = small_synth
    again = tmp_path / "again"
    generate(cfg, again, workers=2)  # parallel rendering must not change anything
    first = _files(root)
    assert len(first) > 50 and first == _files(again)
    other = tmp_path / "other"
    generate(replace(cfg, seed=cfg.seed + 1), other)
    second = _files(other)
    assert first != second
    shared = [k for k in set(first) & set(second) if k.endswith(".jpg")]
    assert all(first[k] != second[k] for k in shared)


def test_identity_appearance_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    cfg = SynthConfig(ids=4, cams=2, seed=1, imgs_per_id=(1, 1), size=(64, 32), distractors=0)
    generate(cfg, tmp_path / "a")
    generate(replace(cfg, ids=6), tmp_path / "b")
    a = _files(tmp_path / "a" / "bounding_box_train")
    b = _files(tmp_path / "b" / "bounding_box_train")
    pid1_a = {k: v for k, v in a.items() if k.startswith("0001_")}
    pid1_b = {k: v for k, v in b.items() if k.startswith("0001_")}
    assert pid1_a and pid1_a == pid1_b


def test_cross_camera_harder_than_same_camera(tmp_path: Path) -> None:
    root = tmp_path / "d"
    generate(SynthConfig(ids=24, cams=3, seed=0, imgs_per_id=(3, 4), size=(64, 32), distractors=0), root)
    ds = read_market1501(root)
    tf = TestTransform((32, 16))

    def feats(items):
        x = np.stack([tf(load_image(i.path)).ravel() for i in items])
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    d = pairwise_distance(feats(ds.query), feats(ds.gallery))
    args = ([i.pid for i in ds.query], [i.pid for i in ds.gallery], [i.camid for i in ds.query])
    g_cams = [i.camid for i in ds.gallery]
    same = evaluate(d, *args, g_cams, protocol="same_camera")
    cross = evaluate(d, *args, g_cams, protocol="cross_camera")
    market = evaluate(d, *args, g_cams)
    assert cross.mAP < same.mAP - 0.1
    assert market.mAP < 0.3  # raw pixels do not solve it


def test_bad_configs(tmp_path: Path) -> None:
    for bad, msg in [
        (SynthConfig(ids=1), "ids must be"),
        (SynthConfig(cams=1), "cams must be"),
        (SynthConfig(cams=3, min_cams=4), "min_cams"),
        (SynthConfig(imgs_per_id=(3, 2)), "imgs_per_id"),
        (SynthConfig(size=(10, 10)), "out of range"),
        (SynthConfig(seed=-1), "seed"),
        (SynthConfig(distractors=-1), "distractors"),
    ]:
        with pytest.raises(ValueError, match=msg):
            generate(bad, tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        generate(SynthConfig(ids=2, cams=2, imgs_per_id=(1, 1)), tmp_path / "full")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        generate(SynthConfig(ids=2, cams=2, imgs_per_id=(1, 1)), tmp_path / "file")


def test_overwrite(tmp_path: Path) -> None:
    cfg = SynthConfig(ids=2, cams=2, imgs_per_id=(1, 1), size=(64, 32), distractors=0)
    generate(cfg, tmp_path / "o")
    generate(replace(cfg, seed=5), tmp_path / "o", overwrite=True)
    fresh = tmp_path / "fresh"
    generate(replace(cfg, seed=5), fresh)
    assert _files(tmp_path / "o") == _files(fresh)


def test_bad_input_is_a_reidserve_error(tmp_path: Path) -> None:
    """The CLIs print these as one line (exit 2) rather than a traceback."""
    from reidserve.data.synth import SynthError
    from reidserve.errors import ReidserveError

    assert issubclass(SynthError, ReidserveError)
    for call in (lambda: parse_size("8x4"), lambda: parse_range("5-2"), lambda: SynthConfig(cams=1).validate(),
                 lambda: generate(SynthConfig(ids=2), tmp_path / "x", workers=0)):
        with pytest.raises(SynthError):
            call()


def test_parse_helpers() -> None:
    assert parse_size("128x64") == (128, 64) and parse_size("256X128") == (256, 128)
    assert parse_range("8") == (8, 8) and parse_range("6-10") == (6, 10) and parse_range(3) == (3, 3)
    for bad in ("128", "axb", "128x64x3", "8x4"):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("0", "5-2", "a-b", "1-2-3"):
        with pytest.raises(ValueError):
            parse_range(bad)


# sha256 over (relative path, bytes) of every file of SMALL_SYNTH, pinned before the generator was split into
# modules; the JPEG bytes depend on Pillow's encoder, so the pin holds for the Pillow of constraints.txt
SMALL_SYNTH_DIGEST = ("13.0.0", "e222fabdbc9a01109dd9a2197656d986861d12b2be6d3bc30923f35aa590b67e")


def test_generated_files_are_pinned(small_synth) -> None:
    import hashlib

    import PIL

    root, _, _ = small_synth
    pillow, digest = SMALL_SYNTH_DIGEST
    if PIL.__version__ != pillow:
        pytest.skip(f"the digest was taken with Pillow {pillow}, this is {PIL.__version__}")
    h = hashlib.sha256()
    for name, data in _files(root).items():
        h.update(name.encode() + b"\0" + data + b"\0")
    assert h.hexdigest() == digest


# ----------------------------------------------------------------------------------------------
# camera_strength: easier cameras (the default, 1, is the full look and leaves every byte as it was)
# ----------------------------------------------------------------------------------------------


def test_default_camera_strength_is_not_recorded(small_synth) -> None:
    root, _, cfg = small_synth
    assert cfg.camera_strength == 1.0
    assert "camera_strength" not in json.loads((root / "synth.json").read_text())["config"]


def test_soften_camera_interpolates_to_a_neutral_camera() -> None:
    from reidserve.data.synth.world import make_camera, random_stream, soften_camera

    cam = make_camera(random_stream(0, 2, 1), (128, 64))
    same = soften_camera(cam, 1.0)
    for name in ("gains", "brightness", "gamma", "contrast", "saturation", "blur", "noise", "views", "occlusion"):
        np.testing.assert_allclose(getattr(same, name), getattr(cam, name), rtol=1e-12)
    assert same.jpeg == cam.jpeg and np.array_equal(np.asarray(same.background), np.asarray(cam.background))
    neutral = soften_camera(cam, 0.0)
    assert neutral.gains == (1.0, 1.0, 1.0) and neutral.gamma == 1.0
    assert (neutral.brightness, neutral.contrast, neutral.saturation) == (1.0, 1.0, 1.0)
    assert (neutral.blur, neutral.noise, neutral.occlusion, neutral.misalign, neutral.light_strength) == (0, 0, 0, 0, 0)
    assert neutral.res_drop == (1.0, 1.0) and neutral.jpeg == 95 and neutral.views == (0.25, 0.25, 0.25, 0.25)
    assert (np.asarray(neutral.background) == 128).all() and (neutral.gradient == 1.0).all()
    half = soften_camera(cam, 0.5)
    assert half.contrast == pytest.approx((1.0 + cam.contrast) / 2)
    assert half.gains[0] == pytest.approx(cam.gains[0] ** 0.5)


def test_weaker_cameras_make_cross_camera_retrieval_easier(tmp_path: Path) -> None:
    def cross_map(strength: float) -> float:
        root = tmp_path / f"s{strength}"
        cfg = SynthConfig(ids=24, cams=3, seed=0, imgs_per_id=(3, 4), size=(64, 32), distractors=0,
                          camera_strength=strength)
        generate(cfg, root)
        meta = json.loads((root / "synth.json").read_text())["config"]
        assert meta["camera_strength"] == strength  # recorded when not the default
        ds = read_market1501(root)
        tf = TestTransform((32, 16))

        def feats(items):
            x = np.stack([tf(load_image(i.path)).ravel() for i in items])
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        d = pairwise_distance(feats(ds.query), feats(ds.gallery))
        return evaluate(d, [i.pid for i in ds.query], [i.pid for i in ds.gallery], [i.camid for i in ds.query],
                        [i.camid for i in ds.gallery], protocol="cross_camera").mAP

    assert cross_map(0.0) > cross_map(0.999) + 0.05


def test_camera_strength_must_be_a_fraction(tmp_path: Path) -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="camera_strength"):
            generate(SynthConfig(ids=2, cams=2, camera_strength=bad), tmp_path / "x")
