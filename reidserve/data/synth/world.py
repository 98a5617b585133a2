"""The synthetic world: identities (what each person wears and carries) and cameras (how each one sees).

Both are drawn once from their own random streams (:func:`random_stream`), so an identity looks the same whatever
the dataset's size, and a camera's look applies to everyone it sees (see :mod:`reidserve.data.synth`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

__all__ = ["RGB", "VIEWS", "Camera", "Identity", "cloth_colour", "darker", "jitter", "make_camera", "make_identity",
           "random_stream", "soften_camera"]

RGB = tuple[int, int, int]

# name, rgb, weight: dark and neutral colours dominate, as in real pedestrian data
_CLOTH_PALETTE: tuple[tuple[str, RGB, float], ...] = (
    ("black", (28, 28, 30), 0.20),
    ("charcoal", (62, 62, 68), 0.10),
    ("grey", (125, 125, 128), 0.08),
    ("white", (222, 222, 216), 0.09),
    ("navy", (34, 44, 88), 0.09),
    ("blue", (48, 88, 168), 0.06),
    ("denim", (70, 98, 140), 0.06),
    ("lightblue", (140, 175, 210), 0.03),
    ("red", (168, 36, 40), 0.04),
    ("maroon", (100, 30, 40), 0.03),
    ("green", (48, 110, 62), 0.03),
    ("olive", (98, 102, 58), 0.03),
    ("brown", (98, 68, 44), 0.04),
    ("beige", (198, 178, 138), 0.04),
    ("yellow", (218, 188, 60), 0.02),
    ("pink", (218, 140, 168), 0.02),
    ("purple", (98, 60, 128), 0.02),
    ("orange", (218, 118, 40), 0.02),
)
_SKIN: tuple[RGB, ...] = ((236, 200, 170), (220, 176, 140), (190, 140, 100), (150, 100, 70), (105, 70, 50))
_HAIR: tuple[RGB, ...] = ((20, 18, 16), (58, 40, 28), (100, 70, 40), (190, 160, 100), (140, 140, 140))
VIEWS = ("front", "back", "left", "right")


def random_stream(seed: int, *keys: int) -> np.random.Generator:
    """The random stream of ``keys`` (a tag and indices) under ``seed``."""
    return np.random.default_rng([seed, *keys])


def jitter(rng: np.random.Generator, rgb: npt.ArrayLike, amount: float) -> RGB:
    out = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return int(out[0]), int(out[1]), int(out[2])


def cloth_colour(rng: np.random.Generator, avoid: RGB | None = None) -> RGB:
    weights = np.array([w for _, _, w in _CLOTH_PALETTE])
    for _ in range(8):
        idx = int(rng.choice(len(_CLOTH_PALETTE), p=weights / weights.sum()))
        base = _CLOTH_PALETTE[idx][1]
        if avoid is None or sum(abs(a - b) for a, b in zip(base, avoid, strict=True)) > 90:
            break
    return jitter(rng, base, 9.0)


@dataclass(frozen=True)
class Identity:
    height: float  # fraction of the frame height
    shoulder: float  # half shoulder width, fraction of person height
    hip_ratio: float
    head: float  # head height, fraction of person height
    torso: float  # shoulder-to-hip length, fraction of person height
    skin: RGB
    hair: RGB
    long_hair: bool
    top: RGB
    top2: RGB
    pattern: str  # solid, hstripes, vstripes, checks, twotone, logo
    period: float  # pattern period, fraction of person height
    long_sleeves: bool
    coat: bool
    bottom: RGB
    bottom_kind: str  # trousers, shorts, skirt
    shoes: RGB
    logo_shape: str
    logo: RGB
    hat: RGB | None
    backpack: RGB | None
    bag: RGB | None
    bag_side: int  # -1 = person's right, +1 = person's left


def make_identity(rng: np.random.Generator) -> Identity:
    top = cloth_colour(rng)
    pattern = str(
        rng.choice(
            ["solid", "hstripes", "vstripes", "checks", "twotone", "logo"],
            p=[0.42, 0.14, 0.07, 0.11, 0.1, 0.16],
        )
    )
    bottom_kind = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.68, 0.17, 0.15]))
    bottom = cloth_colour(rng)
    return Identity(
        height=float(rng.uniform(0.83, 0.95)),
        shoulder=float(rng.uniform(0.105, 0.15)),
        hip_ratio=float(rng.uniform(0.72, 0.95)),
        head=float(rng.uniform(0.115, 0.14)),
        torso=float(rng.uniform(0.28, 0.34)),
        skin=jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 6.0),
        hair=jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 6.0),
        long_hair=bool(rng.random() < 0.3),
        top=top,
        top2=cloth_colour(rng, avoid=top),
        pattern=pattern,
        period=float(rng.uniform(0.03, 0.07)),
        long_sleeves=bool(rng.random() < 0.6),
        coat=bool(rng.random() < 0.15),
        bottom=bottom,
        bottom_kind=bottom_kind,
        shoes=cloth_colour(rng),
        logo_shape=str(rng.choice(["circle", "square", "triangle", "bar"])),
        logo=cloth_colour(rng, avoid=top),
        hat=cloth_colour(rng) if rng.random() < 0.2 else None,
        backpack=cloth_colour(rng) if rng.random() < 0.3 else None,
        bag=cloth_colour(rng) if rng.random() < 0.22 else None,
        bag_side=int(rng.choice([-1, 1])),
    )


@dataclass(frozen=True)
class Camera:
    gains: tuple[float, float, float]
    brightness: float
    gamma: float
    contrast: float
    saturation: float
    light_dir: tuple[float, float]
    light_strength: float
    blur: float  # gaussian radius in output pixels
    res_drop: tuple[float, float]  # downscale factor range
    noise: float
    jpeg: int
    views: tuple[float, float, float, float]
    distance: float  # person scale multiplier
    misalign: float  # bounding-box jitter
    occlusion: float  # probability
    occluder: RGB
    background: Image.Image  # larger than the canvas
    gradient: np.ndarray  # output-size HxW light gradient factor


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured scene of size h x w: a wall/vegetation upper part and a floor."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.array(
        jitter(
            rng,
            rng.choice(
                [
                    [150, 150, 150],
                    [120, 110, 95],
                    [90, 110, 80],
                    [170, 160, 140],
                    [80, 85, 95],
                    [190, 185, 175],
                    [110, 90, 80],
                ]
            ),
            20,
        ),
        dtype=np.float32,
    )
    other = np.array(jitter(rng, base * rng.uniform(0.5, 1.4), 30), dtype=np.float32)
    kind = str(rng.choice(["tiles", "bricks", "foliage", "lanes", "plain"]))
    if kind == "tiles":
        s = rng.uniform(10, 28)
        m = ((xx // s + yy // s) % 2)[..., None]
    elif kind == "bricks":
        bh = rng.uniform(6, 14)
        row = yy // bh
        m = (((xx + (row % 2) * bh) % (2.2 * bh) < 1.5) | (yy % bh < 1.5))[..., None].astype(np.float32)
    elif kind == "foliage":
        small = rng.random((h // 8 + 2, w // 8 + 2)).astype(np.float32)
        big = np.asarray(
            Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        )
        m = (big[..., None] / 255.0).astype(np.float32)
    elif kind == "lanes":
        s = rng.uniform(12, 30)
        ang = rng.uniform(-0.6, 0.6)
        m = (((xx * math.cos(ang) + yy * math.sin(ang)) % s) < s * 0.35)[..., None].astype(np.float32)
    else:
        m = (yy / h)[..., None] * 0.5
    img = base * (1 - m) + other * m
    # floor
    horizon = int(h * rng.uniform(0.55, 0.8))
    floor = np.array(
        jitter(rng, rng.choice([[100, 100, 100], [140, 130, 115], [70, 70, 75], [160, 160, 155]]), 20),
        dtype=np.float32,
    )
    img[horizon:] = floor * (0.85 + 0.3 * rng.random((h - horizon, w, 1)).astype(np.float32) * 0.3)
    # structures: windows / doors / signs
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, max(horizon - 10, 1)))
        bw, bh2 = int(rng.integers(w // 12, w // 4)), int(rng.integers(h // 10, h // 3))
        colour = 0.5 * base + 0.5 * np.array(jitter(rng, rng.integers(20, 235, 3), 10), dtype=np.float32)
        img[y0 : y0 + bh2, x0 : x0 + bw] = colour
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_camera(rng: np.random.Generator, canvas: tuple[int, int]) -> Camera:
    main_view = int(rng.integers(4))
    views = np.full(4, 0.12)
    views[main_view] = 0.64
    if main_view in (0, 1):  # corridor: the opposite direction is common too
        views[1 - main_view] += 0.1
        views[2:] -= 0.05
    views = views / views.sum()
    gains = np.exp(rng.normal(0.0, 0.12, 3))
    ang = rng.uniform(0, 2 * math.pi)
    light_strength = float(rng.uniform(0.0, 0.35))
    hc, wc = canvas
    return Camera(
        gains=(float(gains[0]), float(gains[1]), float(gains[2])),
        brightness=float(rng.uniform(0.7, 1.2)),
        gamma=float(rng.uniform(0.8, 1.25)),
        contrast=float(rng.uniform(0.7, 1.1)),
        saturation=float(rng.uniform(0.65, 1.1)),
        light_dir=(math.cos(ang), math.sin(ang)),
        light_strength=light_strength,
        blur=float(rng.uniform(0.0, 1.1)),
        res_drop=(float(rng.uniform(0.4, 0.75)), 1.0),
        noise=float(rng.uniform(1.5, 7.0)),
        jpeg=int(rng.integers(60, 96)),
        views=(float(views[0]), float(views[1]), float(views[2]), float(views[3])),
        distance=float(rng.uniform(0.9, 1.05)),
        misalign=float(rng.uniform(0.03, 0.09)),
        occlusion=float(rng.uniform(0.12, 0.4)),
        occluder=jitter(rng, rng.integers(40, 200, 3), 5),
        background=Image.fromarray(_background(rng, int(hc * 1.4), int(wc * 3))),
        gradient=_gradient(hc // 2, wc // 2, (math.cos(ang), math.sin(ang)), light_strength),
    )


def soften_camera(cam: Camera, strength: float) -> Camera:
    """``cam`` moved towards a neutral camera: ``strength`` 1 keeps it, 0 makes it neutral.

    Neutral means unit colour gains, brightness, gamma, contrast and saturation, no light gradient, blur,
    resolution drop, sensor noise, box misalignment or occluders, JPEG quality 95, the four viewpoints
    equally likely, and a plain mid-grey background. In between, every property is interpolated (gains and
    gamma geometrically, the background by blending with the grey), so a camera's look shrinks with it.
    """
    s = float(strength)

    def lin(value: float, neutral: float) -> float:
        return neutral + s * (value - neutral)

    light = lin(cam.light_strength, 0.0)
    grey = Image.new("RGB", cam.background.size, (128, 128, 128))
    h, w = cam.gradient.shape
    return dataclasses.replace(
        cam,
        gains=(cam.gains[0] ** s, cam.gains[1] ** s, cam.gains[2] ** s),
        brightness=lin(cam.brightness, 1.0),
        gamma=cam.gamma**s,
        contrast=lin(cam.contrast, 1.0),
        saturation=lin(cam.saturation, 1.0),
        light_strength=light,
        blur=lin(cam.blur, 0.0),
        res_drop=(lin(cam.res_drop[0], 1.0), cam.res_drop[1]),
        noise=lin(cam.noise, 0.0),
        jpeg=int(round(lin(cam.jpeg, 95.0))),
        views=(lin(cam.views[0], 0.25), lin(cam.views[1], 0.25), lin(cam.views[2], 0.25), lin(cam.views[3], 0.25)),
        misalign=lin(cam.misalign, 0.0),
        occlusion=lin(cam.occlusion, 0.0),
        background=Image.blend(grey, cam.background, s),
        gradient=_gradient(h, w, cam.light_dir, light),
    )


def _gradient(h: int, w: int, direction: tuple[float, float], strength: float) -> np.ndarray:
    yy = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * direction[1]
    xx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * direction[0]
    return (1.0 + strength * (xx + yy)).astype(np.float32)


def darker(c: RGB, f: float = 0.75) -> RGB:
    """``c`` scaled by ``f`` (shadowed or far-side parts)."""
    return int(c[0] * f), int(c[1] * f), int(c[2] * f)
