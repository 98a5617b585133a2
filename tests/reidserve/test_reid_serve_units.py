"""Unit tests of the service's parts that need no server: image decoding, tokens, metadata checks, filters,
store URLs and the micro-batcher."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import stat
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from export.metadata import ExportMetadata
from reidserve.imageio import read_image
from reidserve.service.auth import AuthError, TokenChecker, TokenError, load_tokens, resolve_tokens
from reidserve.service.backends import parse_store_url
from reidserve.service.embedder import Embedder, EmbedError, LoadedModel
from reidserve.service.milvus_store import filter_expression
from reidserve.service.preprocess import ImageError, ImageTooLarge, decode_base64, decode_image, to_batch
from reidserve.service.store import GalleryError, SearchFilter, StoreError, check_metadata
from tests.support.images import exif_oriented, pfm_float, pgm16, png16_grey, png48_rgb
from tests.support.serving import png_bytes, random_images


def _meta(c: int = 3, h: int = 8, w: int = 4, dim: int = 5) -> ExportMetadata:
    return ExportMetadata(arch="x", spec={}, spec_hash="h", input_shape=(c, h, w), mean=(0.5,) * c, std=(0.25,) * c,
                          output_kind="embedding", output_dim=dim, color="RGB" if c == 3 else "L")


# -- images -------------------------------------------------------------------------------------------------------
def test_decode_resizes_and_converts() -> None:
    img = random_images(1, 40, 20)[0]
    out = decode_image(png_bytes(img), (8, 4), "RGB", max_pixels=10_000)
    assert out.size == (4, 8) and out.mode == "RGB"
    gray = decode_image(png_bytes(img), (28, 28), "L", max_pixels=10_000)
    assert gray.size == (28, 28) and gray.mode == "L"
    jpeg = decode_image(png_bytes(img, "JPEG"), (40, 20), "RGB", max_pixels=10_000)
    assert jpeg.size == (20, 40)
    rgba = Image.fromarray(np.dstack([img, np.full(img.shape[:2], 128, np.uint8)]), "RGBA")
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), (8, 4), "RGB", max_pixels=10_000).mode == "RGB"


def test_to_batch_matches_export_preprocessing() -> None:
    img = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(8, 4, 3)
    x = to_batch([Image.fromarray(img)], _meta())
    assert x.shape == (1, 3, 8, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 1, 2, 3], (img[2, 3, 1] / 255.0 - 0.5) / 0.25, rtol=1e-6)
    g = to_batch([Image.fromarray(img[..., 0], "L")] * 2, _meta(c=1))
    assert g.shape == (2, 1, 8, 4)


def test_bad_images_are_refused_with_reasons() -> None:
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", (8, 4), "RGB", max_pixels=100)
    with pytest.raises(ImageError, match="not a JPEG, PNG"):
        decode_image(b"hello world, not an image", (8, 4), "RGB", max_pixels=100)
    truncated = png_bytes(random_images(1, 64, 64)[0])[:200]
    with pytest.raises(ImageError, match="truncated or corrupt|cannot be read"):
        decode_image(truncated, (8, 4), "RGB", max_pixels=100_000)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")  # a format outside the allowed list
    with pytest.raises(ImageError, match="not a JPEG, PNG"):
        decode_image(buf.getvalue(), (8, 4), "RGB", max_pixels=100_000)


def test_pixel_bomb_is_refused_before_decoding() -> None:
    # a 6000 x 6000 single-colour PNG compresses to ~40 kB but would decode to 108 MB as RGB
    bomb = png_bytes(np.zeros((6000, 6000), np.uint8))
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, (8, 4), "RGB", max_pixels=4_000_000)
    small = png_bytes(np.zeros((30, 30, 3), np.uint8))
    with pytest.raises(ImageTooLarge, match="900 pixels, above the limit of 899"):
        decode_image(small, (8, 4), "RGB", max_pixels=899)


def test_base64_variants() -> None:
    data = bytes(range(256)) * 3
    std = base64.b64encode(data).decode()
    assert decode_base64(std) == data
    assert decode_base64(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert decode_base64("data:image/png;base64," + std) == data
    assert decode_base64(std[:40] + "\n" + std[40:]) == data
    for bad in ("", "   ", "@@@@", "abc$"):
        with pytest.raises(ImageError):
            decode_base64(bad)


# -- tokens -------------------------------------------------------------------------------------------------------
def test_tokens_from_file_and_env(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# ops team\n\n" + "a" * 20 + "\n  " + "b" * 24 + "  \n")
    env = {"REIDSERVE_TOKENS": "c" * 16 + ", " + "d" * 16}
    assert load_tokens(f, env) == ["a" * 20, "b" * 24, "c" * 16, "d" * 16]
    assert load_tokens(None, {}) == []
    f.write_text("short\n")
    with pytest.raises(TokenError, match=r"line 1.*too easy to guess"):
        load_tokens(f, {})
    f.write_text("# nothing\n")
    with pytest.raises(TokenError, match="holds no token"):
        load_tokens(f, {})
    with pytest.raises(TokenError, match="cannot be read"):
        load_tokens(tmp_path / "missing", {})
    with pytest.raises(TokenError, match="printable ASCII"):
        load_tokens(None, {"REIDSERVE_TOKENS": "é" * 20})


def test_token_generated_once_in_the_data_dir(tmp_path: Path) -> None:
    tokens, note = resolve_tokens("mutating", None, tmp_path, env={})
    assert len(tokens) == 1 and len(tokens[0]) >= 32 and "generated" in note
    mode = stat.S_IMODE(os.stat(tmp_path / "token").st_mode)
    assert mode == 0o600
    again, note2 = resolve_tokens("all", None, tmp_path, env={})
    assert again == tokens and "using the token" in note2
    assert resolve_tokens("none", None, tmp_path, env={}) == ([], None)
    given, note3 = resolve_tokens("all", None, tmp_path, env={"REIDSERVE_TOKENS": "x" * 30})
    assert given == ["x" * 30] and note3 is None


def test_checker() -> None:
    c = TokenChecker(["t" * 20, "u" * 20])
    c.check("Bearer " + "u" * 20)
    c.check("bearer  " + "t" * 20 + " ")
    for header, reason in ((None, "missing"), ("", "missing"), ("Basic abc", "malformed"), ("Bearer", "malformed"),
                           ("Bearer " + "t" * 19, "invalid"), ("Bearer " + "t" * 21, "invalid"),
                           ("Bearer tëst", "invalid")):
        with pytest.raises(AuthError) as info:
            c.check(header)
        assert info.value.reason == reason
    with pytest.raises(TokenError):
        TokenChecker([])


# -- metadata, filters, URLs --------------------------------------------------------------------------------------
def test_check_metadata() -> None:
    assert check_metadata({"a": 1, "b.c": "x", "d": None, "e": True, "f": 1.5}) == {"a": 1, "b.c": "x", "d": None,
                                                                                    "e": True, "f": 1.5}
    for bad, msg in (({"bad key": 1}, "key"), ({"a": 2**63}, "64 bits"), ({"a": float("nan")}, "finite"),
                     ({"a": "x" * 1025}, "1024"), ({"a": [1]}, "values must be"), ({"a": "\ud800"}, "surrogate"),
                     ({f"k{i}": i for i in range(33)}, "at most 32")):
        with pytest.raises(GalleryError, match=msg):
            check_metadata(bad)


def test_search_filter() -> None:
    f = SearchFilter(cameras=frozenset({"c1", "c2"}), exclude_ids=frozenset({"p1"}), time_min=5.0)
    assert f.matches("p2", "c1", 5.0)
    assert not f.matches("p1", "c1", 6.0) and not f.matches("p2", "c3", 6.0) and not f.matches("p2", "c1", None)
    assert SearchFilter().empty and not f.empty
    with pytest.raises(GalleryError, match="after time_max"):
        SearchFilter(time_min=2, time_max=1)
    with pytest.raises(GalleryError, match="camera"):
        SearchFilter(exclude_cameras=frozenset({'x" or 1=1'}))


def test_milvus_filter_expression() -> None:
    assert filter_expression(None) == "" and filter_expression(SearchFilter()) == ""
    expr = filter_expression(SearchFilter(cameras=frozenset({"b", "a"}), exclude_cameras=frozenset({"c"}),
                                          time_min=1.0, exclude_ids=frozenset({"p:1"})))
    assert expr == ('camera in ["a", "b"] and (camera is null or camera not in ["c"]) and id not in ["p:1"] and '
                    '(ts is not null and ts >= 1.0)')


def test_parse_store_url() -> None:
    assert parse_store_url(None).scheme == "sqlite" and parse_store_url("sqlite").scheme == "sqlite"
    lite = parse_store_url("milvus-lite:///srv/g.db")
    assert (lite.scheme, lite.target) == ("milvus-lite", "/srv/g.db")
    assert parse_store_url("milvus-lite://rel/g.db").target == "rel/g.db"
    srv = parse_store_url("milvus://db.local:1234/people")
    assert (srv.target, srv.collection) == ("http://db.local:1234", "people")
    assert parse_store_url("milvus+https://db.local").target == "https://db.local:19530"
    for bad in ("milvus://", "milvus://h/bad-name", "s3://x", "milvus-lite:///x.sqlite"):
        with pytest.raises(StoreError):
            parse_store_url(bad)


# -- micro-batching -----------------------------------------------------------------------------------------------
class FakeRunner:
    """Returns, per image, [sum of pixels, 1, 0, 0, 0] (so rows can be traced back) and records batch sizes."""

    providers = ["fake"]

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.delay, self.fail = delay, fail
        self.threads: set[str] = set()

    def run(self, x: np.ndarray) -> np.ndarray:
        import time

        self.threads.add(threading.current_thread().name)
        self.batches.append(len(x))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        out = np.zeros((len(x), 5), np.float32)
        out[:, 0] = x.reshape(len(x), -1).sum(axis=1)
        out[:, 1] = 1.0
        return out

    def info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _model(runner: FakeRunner, max_batch: int = 8) -> LoadedModel:
    return LoadedModel(runner, _meta(), Path("fake.onnx"), "fake", "id", max_batch)


def test_concurrent_requests_share_batches() -> None:
    runner = FakeRunner(delay=0.02)

    async def main() -> list[np.ndarray]:
        emb = Embedder(_model(runner), max_wait_ms=20)
        await emb.start()
        try:
            inputs = [np.full((1 + i % 3, 3, 8, 4), float(i + 1), np.float32) for i in range(12)]
            outs = await asyncio.gather(*(emb.embed(x) for x in inputs))
            assert emb.stats()["images"] == sum(len(x) for x in inputs)
            return [np.asarray(o) for o in [*outs, *inputs]]
        finally:
            await emb.stop()

    res = asyncio.run(main())
    outs, inputs = res[:12], res[12:]
    assert sum(runner.batches) == sum(len(x) for x in inputs)
    assert max(runner.batches) <= 8 and len(runner.batches) < 12  # batched, never above max_batch
    assert runner.threads == {next(iter(runner.threads))} and "reidserve-infer" in next(iter(runner.threads))
    for x, y in zip(inputs, outs, strict=True):  # each caller gets its own rows back, L2-normalised
        s = x.reshape(len(x), -1).sum(axis=1)
        want = np.stack([s, np.ones_like(s)], axis=1) / np.sqrt(s**2 + 1)[:, None]
        np.testing.assert_allclose(y[:, :2], want, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)


def test_large_request_is_split_and_failures_reach_callers() -> None:
    runner = FakeRunner()

    async def main() -> None:
        emb = Embedder(_model(runner, max_batch=4), max_wait_ms=0)
        await emb.start()
        y = await emb.embed(np.ones((10, 3, 8, 4), np.float32))
        assert y.shape == (10, 5) and max(runner.batches) <= 4
        runner.fail = True
        with pytest.raises(EmbedError, match="boom"):
            await emb.embed(np.ones((1, 3, 8, 4), np.float32))
        runner.fail = False
        assert (await emb.embed(np.ones((1, 3, 8, 4), np.float32))).shape == (1, 5)  # still serving
        await emb.stop()
        with pytest.raises(EmbedError, match="not running"):
            await emb.embed(np.ones((1, 3, 8, 4), np.float32))

    asyncio.run(main())


def test_wrong_model_output_is_an_embed_error() -> None:
    class Bad(FakeRunner):
        def run(self, x: np.ndarray) -> np.ndarray:
            return np.full((len(x), 3), np.nan, np.float32)

    async def main() -> None:
        emb = Embedder(_model(Bad()), max_wait_ms=0)
        await emb.start()
        with pytest.raises(EmbedError, match=r"shape \[1, 3\]"):
            await emb.embed(np.ones((1, 3, 8, 4), np.float32))
        await emb.stop()

    asyncio.run(main())


# -- bit depth and orientation (issue 17: 16-bit images embedded as white, EXIF orientation ignored) ----------------
def _pixels(data: bytes, size: tuple[int, int], mode: str) -> np.ndarray:
    return np.asarray(decode_image(data, size, mode, max_pixels=10_000_000))


HIGH_BIT_DEPTH = {
    "16-bit grey PNG (I;16)": lambda rng: png16_grey(rng.integers(0, 65536, (40, 24), dtype=np.uint16)),
    "16-bit PGM (I)": lambda rng: pgm16(rng.integers(0, 65536, (40, 24), dtype=np.uint16)),
    "32-bit float PFM (F)": lambda rng: pfm_float(rng.random((40, 24)).astype(np.float32)),
    "dark 16-bit grey PNG": lambda rng: png16_grey(rng.integers(0, 4096, (40, 24), dtype=np.uint16)),
}


@pytest.mark.parametrize("kind", sorted(HIGH_BIT_DEPTH))
@pytest.mark.parametrize("mode, size", [("L", (28, 28)), ("RGB", (40, 24)), ("RGB", (20, 12))])
def test_high_bit_depth_decodes_like_its_8bit_copy(kind: str, mode: str, size: tuple[int, int]) -> None:
    data, eight = HIGH_BIT_DEPTH[kind](np.random.default_rng(7))
    got = _pixels(data, size, mode)
    want = _pixels(png_bytes(eight), size, mode)
    np.testing.assert_array_equal(got, want)
    assert got.std() > 1 and 1 < got.mean() < 200  # a texture, not a flat white (or black) image


def test_48bit_rgb_png_decodes_like_its_8bit_copy() -> None:
    x = np.random.default_rng(8).integers(0, 65536, (40, 24, 3), dtype=np.uint16)
    data, eight = png48_rgb(x)
    got = _pixels(data, (40, 24), "RGB").astype(int)
    assert np.abs(got - eight.astype(int)).max() <= 1  # PIL keeps the high byte: within one level of v / 257


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = random_images(1, 40, 24, seed=orientation)[0]
    tagged = exif_oriented(upright, orientation)
    want = _pixels(png_bytes(upright), (40, 24), "RGB")
    np.testing.assert_array_equal(_pixels(tagged, (40, 24), "RGB"), want)
    np.testing.assert_array_equal(read_image(io.BytesIO(tagged)), upright)  # the training / evaluation reader
    gray = _pixels(tagged, (28, 28), "L")
    np.testing.assert_array_equal(gray, _pixels(png_bytes(upright), (28, 28), "L"))


def test_exif_orientation_of_a_downscaled_jpeg() -> None:
    """A sideways JPEG is decoded at a reduced DCT scale chosen for its upright size, then turned upright."""
    upright = random_images(1, 256, 128, seed=3)[0]
    tagged = exif_oriented(upright, 6, fmt="JPEG")
    got = _pixels(tagged, (64, 32), "RGB").astype(float)
    want = _pixels(png_bytes(upright), (64, 32), "RGB").astype(float)
    sideways = np.asarray(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).resize((32, 64)), float)
    assert np.abs(got - want).mean() < 3.0 < np.abs(got - sideways).mean()


def test_read_image_matches_the_service_and_reads_paths(tmp_path: Path) -> None:
    data, eight = png16_grey(np.random.default_rng(1).integers(0, 65536, (16, 8), dtype=np.uint16))
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", "L"), eight)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), np.dstack([eight] * 3))
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
