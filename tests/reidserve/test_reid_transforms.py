"""Augmentations and the torch Dataset wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidserve.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Item,
    ReidImageDataset,
    TestTransform,
    TrainTransform,
    hflip,
    load_image,
    normalize,
    pad_random_crop,
    random_erasing,
    resize,
)
from reidserve.data.transforms import ColorJitter
from reidserve.errors import ReidserveError


def _image(h: int = 40, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_test_transform_shape_and_values() -> None:
    out = TestTransform((32, 16))(_image())
    assert out.shape == (3, 32, 16) and out.dtype == np.float32
    # an image of the ImageNet mean colour normalises to ~0 everywhere
    mean_img = np.tile(np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8), (10, 6, 1))
    assert np.abs(TestTransform((10, 6))(mean_img)).max() < 0.02
    white = TestTransform((10, 6))(np.full((10, 6, 3), 255, np.uint8))
    expected = (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(white[:, 0, 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(TestTransform((32, 16))(_image()), out)  # deterministic


def test_resize_and_pil_input() -> None:
    img = _image(50, 30)
    assert resize(img, (20, 10)).shape == (20, 10, 3)
    assert resize(img, (50, 30)) is img
    np.testing.assert_array_equal(resize(Image.fromarray(img), (20, 10)), resize(img, (20, 10)))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        resize(np.zeros((5, 5)), (2, 2))
    with pytest.raises(ValueError, match="positive"):
        TestTransform((0, 4))


def test_train_transform_shape_and_determinism() -> None:
    tf = TrainTransform((32, 16), pad=4)
    img = _image()
    a = tf(img, np.random.default_rng(7))
    b = tf(img, np.random.default_rng(7))
    assert a.shape == (3, 32, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    outs = [tf(img, np.random.default_rng(s)) for s in range(8)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="Generator"):
        tf(img)


def test_train_transform_without_randomness_equals_test_transform() -> None:
    img = _image()
    tf = TrainTransform((32, 16), flip_p=0.0, pad=0, erase_p=0.0)
    np.testing.assert_array_equal(tf(img, np.random.default_rng(0)), TestTransform((32, 16))(img))
    flipped = TrainTransform((32, 16), flip_p=1.0, pad=0, erase_p=0.0)(img, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, TestTransform((32, 16))(img)[:, :, ::-1])


def test_hflip_and_pad_crop() -> None:
    img = _image(6, 4)
    np.testing.assert_array_equal(hflip(img)[:, 0], img[:, -1])
    crops = [pad_random_crop(img, 2, np.random.default_rng(s)) for s in range(20)]
    assert all(c.shape == img.shape for c in crops)
    # every crop is the image shifted by at most 2 pixels with zero fill
    for c in crops:
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = np.zeros_like(img)
                ys, yd = slice(max(0, dy), 6 + min(0, dy)), slice(max(0, -dy), 6 + min(0, -dy))
                xs, xd = slice(max(0, dx), 4 + min(0, dx)), slice(max(0, -dx), 4 + min(0, -dx))
                shifted[yd, xd] = img[ys, xs]
                found |= np.array_equal(shifted, c)
        assert found
    assert len({c.tobytes() for c in crops}) > 1
    assert pad_random_crop(img, 0, np.random.default_rng(0)) is img


def test_random_erasing() -> None:
    x = np.ones((3, 40, 20), np.float32)
    assert np.array_equal(random_erasing(x, np.random.default_rng(0), p=0.0), x)
    erased = random_erasing(x, np.random.default_rng(0), p=1.0)
    zero = erased[0] == 0
    assert zero.any() and not zero.all()
    rows, cols = np.nonzero(zero)  # the erased region is one rectangle, the same on every channel
    assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert (erased[1] == 0).sum() == zero.sum() and np.array_equal(x, np.ones_like(x))  # input untouched
    noisy = random_erasing(x, np.random.default_rng(0), p=1.0, fill="random")
    assert not np.array_equal(noisy, x) and (noisy != 1).sum() == zero.sum() * 3
    with pytest.raises(ValueError, match="fill"):
        random_erasing(x, np.random.default_rng(0), fill="bogus")


def test_normalize_layout() -> None:
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255
    out = normalize(img, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert out.shape == (3, 2, 3)
    assert (out[0] == 1).all() and (out[1:] == 0).all()


@pytest.fixture()
def image_items(tmp_path: Path) -> list[Item]:
    items = []
    for i in range(4):
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(_image(48, 24, seed=i)).save(p)
        items.append(Item(str(p), 10 + i % 2, i % 3))
    return items


def test_reid_image_dataset(image_items: list[Item]) -> None:
    ds = ReidImageDataset(image_items, TrainTransform((32, 16)), seed=5)
    x, pid, camid, idx = ds[2]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 16) and x.dtype == torch.float32
    assert (pid, camid, idx) == (10, 2, 2)
    # the augmentation of an item depends on (seed, epoch, index) only, not on access order
    first = [ds[i][0] for i in range(4)]
    again = [ds[i][0] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], first[2])
    other_seed = ReidImageDataset(image_items, TrainTransform((32, 16)), seed=6)
    assert not torch.equal(other_seed[2][0], first[2])
    ds.set_labels([0, 1, -1, 1])
    assert ds[2][1] == -1 and ds[-1][3] == 3
    with pytest.raises(ValueError, match="4 items"):
        ds.set_labels([0, 1])
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="seed"):
        ReidImageDataset(image_items, seed=-1)
    with pytest.raises(ValueError, match="at least one item"):
        ReidImageDataset([])


def test_reid_image_dataset_default_transform_and_cache(image_items: list[Item]) -> None:
    ds = ReidImageDataset(image_items, cache=True)
    x = ds[0][0]
    assert x.shape == (3, 256, 128)
    Path(image_items[0].path).unlink()  # served from the cache now
    assert torch.equal(ds[0][0], x)
    rest = ReidImageDataset(image_items[1:], TestTransform((16, 8)))
    loader = torch.utils.data.DataLoader(rest, batch_size=3)
    xb, pids, cams, idx = next(iter(loader))
    assert xb.shape == (3, 3, 16, 8) and pids.tolist() == [11, 10, 11] and idx.tolist() == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(image_items[0].path)


def test_training_reader_decodes_like_the_service(tmp_path: Path) -> None:
    """load_image (training and evaluation) applies EXIF orientation and scales 16-bit samples, as serving does."""
    from reidserve.imageio import read_image
    from tests.support.images import exif_oriented, png16_grey, png48_rgb

    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, size=(12, 7, 3), dtype=np.uint8)
    for orientation in (3, 6, 8):
        path = tmp_path / f"o{orientation}.png"
        path.write_bytes(exif_oriented(upright, orientation))
        assert np.array_equal(load_image(path), upright), orientation  # upright, not the stored sideways pixels
    grey16 = rng.integers(0, 65536, size=(9, 5), dtype=np.uint16)
    data, want = png16_grey(grey16)
    (tmp_path / "g16.png").write_bytes(data)
    assert np.array_equal(load_image(tmp_path / "g16.png"), np.repeat(want[..., None], 3, axis=2))
    rgb16 = rng.integers(0, 65536, size=(6, 4, 3), dtype=np.uint16)
    data, want = png48_rgb(rgb16)
    (tmp_path / "c48.png").write_bytes(data)
    got = load_image(tmp_path / "c48.png")  # Pillow reduces 16-bit RGB itself (v >> 8): within 1 of v / 257
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    for name in ("o6.png", "g16.png", "c48.png"):
        assert np.array_equal(load_image(tmp_path / name), read_image(tmp_path / name, "RGB"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ReidserveError, match="cannot read image"):
        load_image(tmp_path / "broken.png")


# ----------------------------------------------------------------------------------------------
# colour jitter
# ----------------------------------------------------------------------------------------------


def _old_pipeline(img: np.ndarray, size: tuple[int, int], pad: int, rng: np.random.Generator) -> np.ndarray:
    """The training transform as it was before the colour-jitter option, from the public pieces."""
    x = resize(img, size)
    if rng.random() < 0.5:
        x = hflip(x)
    return random_erasing(normalize(pad_random_crop(x, pad, rng)), rng, p=0.5)


def test_train_transform_without_colour_jitter_is_unchanged() -> None:
    img = _image()
    for tf in (TrainTransform((32, 16), pad=4), TrainTransform((32, 16), pad=4, color=ColorJitter())):
        for seed in range(12):
            np.testing.assert_array_equal(tf(img, np.random.default_rng(seed)),
                                          _old_pipeline(img, (32, 16), 4, np.random.default_rng(seed)))


def test_colour_jitter_on_a_grey_image_is_brightness_times_gain() -> None:
    jitter = ColorJitter(brightness=0.2, contrast=0.3, saturation=0.4, gain=0.1)
    grey = np.full((4, 3, 3), 100, np.uint8)
    out = jitter(grey, np.random.default_rng(3))
    draws = np.random.default_rng(3)
    b = draws.uniform(0.8, 1.2)
    draws.uniform(0.7, 1.3)  # contrast: nothing to stretch in a flat image
    draws.uniform(0.6, 1.4)  # saturation: nothing to saturate in a grey image
    g = draws.uniform(0.9, 1.1, size=3)
    expected = np.round(100 * b * g).astype(np.uint8)
    assert np.abs(out.astype(int) - expected[None, None, :]).max() <= 1
    assert (out == out[0, 0]).all()


def test_colour_jitter_contrast_and_saturation() -> None:
    two = np.array([[[50, 50, 50], [150, 150, 150]]], np.uint8)  # mean grey 100
    out = ColorJitter(contrast=0.5)(two, np.random.default_rng(0))
    draws = np.random.default_rng(0)
    draws.uniform(1.0, 1.0)  # brightness draw (amount 0)
    c = draws.uniform(0.5, 1.5)
    np.testing.assert_allclose(out[0, :, 0], [100 - 50 * c, 100 + 50 * c], atol=1)
    red = np.array([[[200, 100, 0]]], np.uint8)  # grey level 100
    draws = np.random.default_rng(1)
    draws.uniform(1, 1), draws.uniform(1, 1)
    s = draws.uniform(0.5, 1.5)
    out = ColorJitter(saturation=0.5)(red, np.random.default_rng(1))
    np.testing.assert_allclose(out[0, 0], np.clip([100 + 100 * s, 100, 100 - 100 * s], 0, 255), atol=1)


def test_colour_jitter_options() -> None:
    assert ColorJitter.of_strength(0.4) == ColorJitter(0.4, 0.4, 0.4, 0.2)
    assert not ColorJitter().active and ColorJitter(gain=0.1).active
    with pytest.raises(ValueError, match="saturation"):
        ColorJitter(saturation=1.0)
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=-0.1)
    img = _image()
    tf = TrainTransform((32, 16), pad=4, color=ColorJitter.of_strength(0.4))
    a, b = tf(img, np.random.default_rng(2)), tf(img, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)  # still a function of the generator
    assert not np.array_equal(a, TrainTransform((32, 16), pad=4)(img, np.random.default_rng(2)))


def test_reid_train_transform_with_colour_jitter() -> None:
    from reidserve.train import train_transform

    assert train_transform((64, 32)).color is None
    assert train_transform((64, 32), 0.3).color == ColorJitter.of_strength(0.3)
