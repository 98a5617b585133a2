"""pruneopt.preprocess: the one pixel normalisation, and its three users giving the numbers they gave before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from export.inputs import load_calibration
from export.metadata import ExportMetadata
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels, standardise, to_unit_range
from reidserve.data.transforms import normalize

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)


def every_pixel_value() -> np.ndarray:
    """A 16 x 16 x 3 uint8 image holding each of the 256 values in every channel."""
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.stack([v, v[::-1], v.T], axis=-1)


def test_both_pixel_scalings_are_the_float32_formulas_they_name() -> None:
    img = every_pixel_value()
    divided = to_unit_range(img)
    multiplied = to_unit_range(img, 1.0 / 255.0)
    assert divided.dtype == multiplied.dtype == np.float32
    assert np.array_equal(divided, img.astype(np.float32) / np.float32(255.0))
    assert np.array_equal(multiplied, img.astype(np.float32) * np.float32(1.0 / 255.0))
    assert not np.array_equal(divided, multiplied)  # why both exist: they differ in the last bit


def test_standardise_along_any_channel_axis() -> None:
    x = np.random.default_rng(0).random((2, 3, 4, 5))
    nchw = standardise(x, (0.1, 0.2, 0.3), (0.5, 2.0, 4.0), channel_axis=1)
    nhwc = standardise(x.transpose(0, 2, 3, 1), (0.1, 0.2, 0.3), (0.5, 2.0, 4.0))
    assert nchw.dtype == np.float32 and np.array_equal(nchw, nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(nchw[:, 2], (x[:, 2] - 0.3) / 4.0, rtol=1e-6)


def test_training_transform_numbers_are_unchanged() -> None:
    img = every_pixel_value()
    before = ((img.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)  # the formula it replaced
    out = normalize(img)
    assert out.dtype == np.float32 and out.flags.c_contiguous and np.array_equal(out, before)
    assert np.array_equal(out, normalise_pixels(img, IMAGENET_MEAN, IMAGENET_STD).transpose(2, 0, 1))


def test_exported_model_preprocessing_numbers_are_unchanged() -> None:
    img = np.stack([every_pixel_value(), every_pixel_value()[::-1]])
    meta = ExportMetadata(arch="resnet20", spec={}, spec_hash="", input_shape=(3, 16, 16), mean=(0.5, 0.4, 0.3),
                          std=(0.2, 0.25, 0.3), output_kind="logits", output_dim=10)
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    before = (img.astype(np.float32) * np.float32(meta.pixel_scale) - mean) / std
    assert np.array_equal(meta.preprocess(img), before.transpose(0, 3, 1, 2))
    grey = ExportMetadata(arch="resnet20", spec={}, spec_hash="", input_shape=(1, 16, 16), mean=(0.5,), std=(0.25,),
                          output_kind="logits", output_dim=10)
    g = img.mean(axis=-1, keepdims=True)  # RGB images fed to a grey model are averaged first
    before = (g.astype(np.float32) * np.float32(grey.pixel_scale) - np.float32(0.5)) / np.float32(0.25)
    assert np.array_equal(grey.preprocess(img), before.transpose(0, 3, 1, 2))


def test_export_calibration_numbers_are_unchanged(tmp_path: Path) -> None:
    images = np.stack([every_pixel_value(), every_pixel_value()[:, ::-1]])
    np.save(tmp_path / "calib.npy", images)
    x = load_calibration(tmp_path / "calib.npy", (3, 16, 16), IMAGENET_MEAN, IMAGENET_STD)
    x01 = images.transpose(0, 3, 1, 2) / 255.0  # float64, then the formula it replaced
    before = ((x01.astype(np.float32) - MEAN.reshape(1, -1, 1, 1)) / STD.reshape(1, -1, 1, 1)).astype(np.float32)
    assert x.dtype == np.float32 and x.flags.c_contiguous and np.array_equal(x, before)


def test_importing_it_loads_neither_torch_nor_pil() -> None:
    code = "import sys, pruneopt.preprocess; print('torch' in sys.modules, 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_preprocess_record_round_trips_and_is_checked(tmp_path) -> None:  # noqa: ANN001
    import json

    import pytest

    from pruneopt.checkpoint import load_subnet, save_subnet
    from pruneopt.errors import PruneoptError, SpecError
    from pruneopt.models import build, default_spec
    from pruneopt.preprocess import Preprocess, read_preprocess

    grey = Preprocess.for_channels((1, 28, 28), (0.286,), (0.353,))
    assert grey.color == "L" and grey.output == "logits" and grey.input_shape == (1, 28, 28)
    model = build(default_spec("resnet20", in_chans=1))
    folder = save_subnet(model, tmp_path / "m", grey)
    assert read_preprocess(folder) == grey and load_subnet(folder).spec == model.spec
    assert json.loads((folder / "preprocess.json").read_text())["format"] == "pruneopt.preprocess/1"
    assert read_preprocess(tmp_path) is None  # a folder without a record
    with pytest.raises(SpecError, match="3 channel"):
        save_subnet(model, tmp_path / "bad", Preprocess.for_channels((3, 32, 32), (0.5,) * 3, (0.2,) * 3))
    rgb = Preprocess.for_channels((3, 256, 128), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), output="embedding",
                                  normalized=True)
    assert rgb.differences(grey)[0].startswith("input_shape") and not rgb.differences(rgb)
    for bad in ({"input_shape": (3, 32, 32), "mean": (0.5,), "std": (0.5,)},
                {"input_shape": (1, 28, 28), "mean": (0.5,), "std": (0.0,)},
                {"input_shape": (1, 28, 28), "mean": (0.5,), "std": (0.5,), "color": "RGB"},
                {"input_shape": (3, 28, 28), "mean": (0.5,) * 3, "std": (0.5,) * 3, "output": "boxes"}):
        with pytest.raises(PruneoptError, match="preprocessing"):
            Preprocess(**bad)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "preprocess.json").write_text("{not json")
    with pytest.raises(PruneoptError, match="cannot read"):
        read_preprocess(tmp_path / "x")
