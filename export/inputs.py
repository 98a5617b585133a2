"""Inputs for verification and benchmarks: random, generated-realistic, and real images (numpy + PIL, no torch).

* :func:`random_inputs` -- i.i.d. standard normal tensors, the harshest numeric test (values far outside what a
  normalised image holds);
* :func:`realistic_inputs` -- synthetic "images": smooth colour fields with edges and texture, clipped to
  [0, 1] and normalised with the model's mean/std, so activations have the statistics of real photos;
* :func:`load_calibration` -- real data: a folder of ``.jpg``/``.png`` images (resized bilinearly to the input
  size, scaled to [0, 1], normalised), or a ``.npy`` array already shaped ``[N, C, H, W]`` (float, used as is) or
  ``[N, H, W, C]`` ``uint8`` images at the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pruneopt.common.params import parse_int_list
from pruneopt.common.params import parse_shape as parse_params_shape
from pruneopt.preprocess import standardise

from .errors import ExportError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_shape(text: str | Sequence[int]) -> tuple[int, int, int]:
    """``"3x256x128"`` (or a sequence) -> ``(3, 256, 128)``; :class:`ExportError` when it is not three positive
    integers (:func:`pruneopt.common.params.parse_shape`)."""
    return parse_params_shape(text, "--input", error=ExportError)


def parse_batches(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,7,64"`` -> ``(1, 7, 64)``; every batch size must be >= 1
    (:func:`pruneopt.common.params.parse_int_list`)."""
    return parse_int_list(text, "batch sizes", "1,8,32", error=ExportError)


def random_inputs(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``[n, C, H, W]`` float32 standard-normal values."""
    return np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)


def _normalise(x01: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] -> ``(x - mean) / std`` per channel, float32."""
    return np.ascontiguousarray(standardise(x01, mean, std, channel_axis=1))


def _upsample(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of ``[..., h0, w0]`` to ``[..., h, w]`` (separable linear interpolation)."""
    h0, w0 = x.shape[-2:]
    ys = np.linspace(0, h0 - 1, h)
    xs = np.linspace(0, w0 - 1, w)
    y0 = np.floor(ys).astype(int).clip(0, h0 - 1)
    x0 = np.floor(xs).astype(int).clip(0, w0 - 1)
    y1 = np.minimum(y0 + 1, h0 - 1)
    x1 = np.minimum(x0 + 1, w0 - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = x[..., y0, :][..., :, x0] * (1 - fx) + x[..., y0, :][..., :, x1] * fx
    bot = x[..., y1, :][..., :, x0] * (1 - fx) + x[..., y1, :][..., :, x1] * fx
    return top * (1 - fy) + bot * fy


def realistic_inputs(n: int, shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                     seed: int = 0) -> np.ndarray:
    """``[n, C, H, W]`` synthetic images with photo-like statistics, normalised like real inputs.

    Each image is a smooth random colour field (a coarse grid upsampled), a vertical "figure" band of another
    colour with hard edges, and mild pixel noise, clipped to [0, 1].
    """
    c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.1, 0.9, size=(n, c, max(2, h // 32), max(2, w // 32)))
    img = _upsample(coarse, h, w)
    for i in range(n):  # a person-like band with sharp borders
        left = int(rng.integers(0, max(1, w // 2)))
        width = int(rng.integers(max(1, w // 4), max(2, w // 2)))
        top = int(rng.integers(0, max(1, h // 8)))
        img[i, :, top:, left:left + width] = rng.uniform(0.0, 1.0, size=(c, 1, 1))
    img += rng.normal(0.0, 0.03, size=img.shape)
    return _normalise(np.clip(img, 0.0, 1.0), mean, std)


def load_images(folder: str | Path, shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                limit: int = 64) -> np.ndarray:
    """Up to ``limit`` images of ``folder`` (sorted by name), resized to the input size and normalised."""
    from PIL import Image, UnidentifiedImageError  # lazy: Pillow only for image inputs

    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ExportError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images or a .npy")
    c, h, w = shape
    mode = "RGB" if c == 3 else "L" if c == 1 else None
    if mode is None:
        raise ExportError(f"images can only feed 1- or 3-channel inputs, the model has {c} channels; use a .npy")
    out = np.empty((len(files), h, w, c), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR), np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise ExportError(f"cannot read calibration image {f}: {exc}") from exc
        out[i] = arr.reshape(h, w, c)
    return _normalise(out.transpose(0, 3, 1, 2) / 255.0, mean, std)


def load_calibration(path: str | Path, shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float],
                     limit: int = 64) -> np.ndarray:
    """Real inputs from a folder of images or a ``.npy`` file (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        return load_images(p, shape, mean, std, limit)
    if not p.is_file():
        raise ExportError(f"calibration data {p} does not exist (give a folder of images or a .npy file)")
    if p.suffix != ".npy":
        raise ExportError(f"calibration data {p} must be a folder of images or a .npy file")
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {p}: {exc}") from exc
    c, h, w = shape
    if arr.ndim == 4 and arr.dtype == np.uint8 and arr.shape[1:] == (h, w, c):
        return _normalise(arr[:limit].transpose(0, 3, 1, 2) / 255.0, mean, std)
    if arr.ndim == 4 and arr.shape[1:] == (c, h, w) and np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr[:limit], dtype=np.float32)
    raise ExportError(f"{p} holds an array {arr.dtype}{list(arr.shape)}; expected float [N, {c}, {h}, {w}] "
                      f"(preprocessed) or uint8 [N, {h}, {w}, {c}] (images)")


def take(data: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of ``data``, cycling when it holds fewer."""
    if len(data) >= n:
        return np.ascontiguousarray(data[:n])
    return np.ascontiguousarray(np.resize(data, (n, *data.shape[1:])))
