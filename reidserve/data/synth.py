"""A procedural, deliberately hard, synthetic person re-ID dataset in the Market-1501 layout.

The world model
===============

**People.** Each identity (pid) is a fixed set of attributes drawn once from its own random stream
(so pid 7 looks the same whatever ``--ids`` is): body height and build (shoulder and hip width,
head size, torso/leg proportions), skin tone, hair colour and length, a top (colour, sleeve
length, pattern: solid, horizontal or vertical stripes, checks, two-tone, or a chest logo that is
only visible from the front, sometimes a long coat), a bottom (trousers, shorts or skirt), shoe
colour, and optional accessories: a hat, a backpack (a big coloured block seen from the back, a
side bump in profile, only two straps from the front) and a shoulder bag (strap across the body,
bag on one hip). Clothing colours come from a small, realistic palette that is heavy in black,
grey, navy and white, with slight per-person shade variation, so many people look alike and the
identity lies in *combinations* of attributes, as in real re-ID data.

**Cameras.** Each camera has its own look that applies to everyone it sees: a textured
background (tiles, bricks, foliage-like noise, lane stripes or a plain wall, with a floor),
illumination (brightness, gamma, contrast, saturation, a colour cast and a light gradient),
optics (blur and a resolution drop: downscale then upscale), sensor noise, JPEG quality, typical
viewpoints (a corridor camera sees mostly fronts and backs, another mostly profiles) and
occluders (poles, boxes/benches/cars from the bottom, passers-by at the border) with their own
colours and frequency.

**Images.** A detection of a person by a camera picks a viewpoint from the camera's distribution
(front, back, left or right profile), a walking phase (legs and arms swing), bounding-box
misalignment (scale and offset jitter, sometimes cutting the head or feet), a background window,
an occluder, per-image brightness and blur jitter. The person is drawn at twice the output size
with PIL, lit with a cylinder-like shading, composed over the background, then passed through
the camera (downscale to the output size, resolution drop, blur, colour, noise, JPEG).

**Why it is hard.** The camera's look (background, colour cast, viewpoint) dominates raw pixels,
so images of *different* people under the same camera are closer than the same person across
cameras: untrained features score low mAP, and cross-camera retrieval is harder than
same-camera retrieval. **Why it is learnable.** Clothing colours, patterns, body shape and
accessories are constant per identity; a model that learns colour constancy and viewpoint
invariance can re-identify people.

**Splits (Market-1501 layout).** Identities ``1..N`` are split in half: the first ``N // 2``
(at least one) form ``bounding_box_train/``, the rest the test set. Each identity is seen by a
random subset of at least ``min_cams`` cameras, with ``imgs_per_id`` images per camera. For each
test identity one image per camera is moved to ``query/`` for about 70% of its cameras (never
all, so every query has a cross-camera match); the remaining test images, plus ``distractors``
images of one-off people (pid ``0``) and ``junk`` background crops (pid ``-1``), form
``bounding_box_test/``. File names follow Market-1501: ``PPPP_cCs1_FFFFFF_01.jpg`` with a per-camera
frame counter. A ``synth.json`` file records the parameters and counts.

Everything is a pure function of ``seed`` (each image has its own random stream), so the same
seed gives byte-identical files, in any order and with any number of worker processes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

__all__ = ["SynthConfig", "SynthResult", "generate", "parse_size", "parse_range"]

_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_DISTRACTOR, _TAG_JUNK, _TAG_LAYOUT = 1, 2, 3, 4, 5, 6

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
_VIEWS = ("front", "back", "left", "right")


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``'128x64'`` -> ``(128, 64)`` (height x width)."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. 128x64, got {text!r}")
    h, w = int(parts[0]), int(parts[1])
    if not (32 <= h <= 1024 and 16 <= w <= 512):
        raise ValueError(f"size {h}x{w} out of range: height 32..1024, width 16..512")
    return h, w


def parse_range(text: str | int) -> tuple[int, int]:
    """``'8'`` -> ``(8, 8)``; ``'6-10'`` -> ``(6, 10)``."""
    s = str(text).strip()
    parts = s.split("-") if "-" in s else [s, s]
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected a count N or a range MIN-MAX, e.g. 8 or 6-10, got {text!r}")
    lo, hi = int(parts[0]), int(parts[1])
    if lo < 1 or hi < lo:
        raise ValueError(f"range {text!r} must satisfy 1 <= MIN <= MAX")
    return lo, hi


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of :func:`generate` (see the module docstring for their meaning)."""

    ids: int = 100
    cams: int = 6
    seed: int = 0
    imgs_per_id: tuple[int, int] = (6, 10)  # images per identity per camera, inclusive range
    min_cams: int = 2  # each identity is seen by a random subset of min_cams..cams cameras
    size: tuple[int, int] = (128, 64)  # height, width
    distractors: int | None = None  # pid-0 gallery images; None = one per identity
    junk: int = 0  # pid -1 gallery images (background crops)
    jpeg_quality: int | None = None  # None = per-camera quality (60..95)

    def validate(self) -> SynthConfig:
        if not 2 <= self.ids <= 9999:
            raise ValueError(f"ids must be in 2..9999 (half train, half test), got {self.ids}")
        if not 2 <= self.cams <= 9:
            raise ValueError(
                f"cams must be in 2..9 (Market-1501 names have one camera digit), got {self.cams}"
            )
        if not 2 <= self.min_cams <= self.cams:
            raise ValueError(f"min_cams must be in 2..cams={self.cams}, got {self.min_cams}")
        lo, hi = self.imgs_per_id
        if not 1 <= lo <= hi <= 99:
            raise ValueError(f"imgs_per_id must be a range within 1..99, got {lo}-{hi}")
        parse_size(f"{self.size[0]}x{self.size[1]}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if (self.distractors is not None and self.distractors < 0) or self.junk < 0:
            raise ValueError("distractors and junk must be >= 0")
        if self.jpeg_quality is not None and not 30 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 30..100, got {self.jpeg_quality}")
        return self

    @property
    def num_distractors(self) -> int:
        return self.ids if self.distractors is None else self.distractors


@dataclass(frozen=True)
class SynthResult:
    root: str
    num_train: int
    num_query: int
    num_gallery: int
    num_train_ids: int
    num_test_ids: int


# ----------------------------------------------------------------------------------------------
# the world: identities and cameras
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: float) -> RGB:
    out = np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return int(out[0]), int(out[1]), int(out[2])


def _cloth_colour(rng: np.random.Generator, avoid: RGB | None = None) -> RGB:
    weights = np.array([w for _, _, w in _CLOTH_PALETTE])
    for _ in range(8):
        idx = int(rng.choice(len(_CLOTH_PALETTE), p=weights / weights.sum()))
        base = _CLOTH_PALETTE[idx][1]
        if avoid is None or sum(abs(a - b) for a, b in zip(base, avoid, strict=True)) > 90:
            break
    return _jitter(rng, base, 9.0)


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


def _make_identity(rng: np.random.Generator) -> Identity:
    top = _cloth_colour(rng)
    pattern = str(
        rng.choice(
            ["solid", "hstripes", "vstripes", "checks", "twotone", "logo"],
            p=[0.42, 0.14, 0.07, 0.11, 0.1, 0.16],
        )
    )
    bottom_kind = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.68, 0.17, 0.15]))
    bottom = _cloth_colour(rng)
    return Identity(
        height=float(rng.uniform(0.83, 0.95)),
        shoulder=float(rng.uniform(0.105, 0.15)),
        hip_ratio=float(rng.uniform(0.72, 0.95)),
        head=float(rng.uniform(0.115, 0.14)),
        torso=float(rng.uniform(0.28, 0.34)),
        skin=_jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 6.0),
        hair=_jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 6.0),
        long_hair=bool(rng.random() < 0.3),
        top=top,
        top2=_cloth_colour(rng, avoid=top),
        pattern=pattern,
        period=float(rng.uniform(0.03, 0.07)),
        long_sleeves=bool(rng.random() < 0.6),
        coat=bool(rng.random() < 0.15),
        bottom=bottom,
        bottom_kind=bottom_kind,
        shoes=_cloth_colour(rng),
        logo_shape=str(rng.choice(["circle", "square", "triangle", "bar"])),
        logo=_cloth_colour(rng, avoid=top),
        hat=_cloth_colour(rng) if rng.random() < 0.2 else None,
        backpack=_cloth_colour(rng) if rng.random() < 0.3 else None,
        bag=_cloth_colour(rng) if rng.random() < 0.22 else None,
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
        _jitter(
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
    other = np.array(_jitter(rng, base * rng.uniform(0.5, 1.4), 30), dtype=np.float32)
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
        _jitter(rng, rng.choice([[100, 100, 100], [140, 130, 115], [70, 70, 75], [160, 160, 155]]), 20),
        dtype=np.float32,
    )
    img[horizon:] = floor * (0.85 + 0.3 * rng.random((h - horizon, w, 1)).astype(np.float32) * 0.3)
    # structures: windows / doors / signs
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, max(horizon - 10, 1)))
        bw, bh2 = int(rng.integers(w // 12, w // 4)), int(rng.integers(h // 10, h // 3))
        colour = 0.5 * base + 0.5 * np.array(_jitter(rng, rng.integers(20, 235, 3), 10), dtype=np.float32)
        img[y0 : y0 + bh2, x0 : x0 + bw] = colour
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_camera(rng: np.random.Generator, canvas: tuple[int, int]) -> Camera:
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
        occluder=_jitter(rng, rng.integers(40, 200, 3), 5),
        background=Image.fromarray(_background(rng, int(hc * 1.4), int(wc * 3))),
        gradient=_gradient(hc // 2, wc // 2, (math.cos(ang), math.sin(ang)), light_strength),
    )


def _gradient(h: int, w: int, direction: tuple[float, float], strength: float) -> np.ndarray:
    yy = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * direction[1]
    xx = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * direction[0]
    return (1.0 + strength * (xx + yy)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------


class _Painter:
    """Draws opaque shapes onto an RGB person layer and its alpha mask."""

    def __init__(self, hc: int, wc: int) -> None:
        self.rgb = Image.new("RGB", (wc, hc))
        self.alpha = Image.new("L", (wc, hc))
        self.d_rgb = ImageDraw.Draw(self.rgb)
        self.d_alpha = ImageDraw.Draw(self.alpha)
        self.size = (hc, wc)

    def polygon(self, pts: Sequence[tuple[float, float]], fill: RGB) -> None:
        self.d_rgb.polygon(list(pts), fill=fill)
        self.d_alpha.polygon(list(pts), fill=255)

    def ellipse(self, box: Sequence[float], fill: RGB) -> None:
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            return
        self.d_rgb.ellipse([x0, y0, x1, y1], fill=fill)
        self.d_alpha.ellipse([x0, y0, x1, y1], fill=255)

    def line(self, pts: Sequence[tuple[float, float]], fill: RGB, width: float) -> None:
        self.d_rgb.line(list(pts), fill=fill, width=max(1, int(round(width))), joint="curve")
        self.d_alpha.line(list(pts), fill=255, width=max(1, int(round(width))), joint="curve")

    def textured_polygon(self, pts: Sequence[tuple[float, float]], texture: Image.Image) -> None:
        mask = Image.new("L", self.rgb.size)
        ImageDraw.Draw(mask).polygon(list(pts), fill=255)
        self.rgb.paste(texture, (0, 0), mask)
        self.alpha.paste(255, (0, 0), mask)


def _pattern_texture(who: Identity, hc: int, wc: int, cx: float, top: float, ph: float) -> Image.Image | None:
    """Full-canvas texture of the top's pattern in person-local coordinates (None = solid colour)."""
    if who.pattern in ("solid", "logo"):
        return None
    v = ((np.arange(hc, dtype=np.float32) - top) / ph)[:, None]  # person-local coordinates
    u = ((np.arange(wc, dtype=np.float32) - cx) / ph)[None, :]
    if who.pattern == "hstripes":
        m = (v / who.period) % 1.0 < 0.45
    elif who.pattern == "vstripes":
        m = (u / who.period) % 1.0 < 0.45
    elif who.pattern == "checks":
        m = ((np.floor(u / who.period) + np.floor(v / who.period)) % 2) == 0
    else:  # twotone: upper chest one colour, the rest the other
        m = v < 0.33
    m = np.broadcast_to(m, (hc, wc))
    out = np.where(m[..., None], np.array(who.top2, np.uint8), np.array(who.top, np.uint8))
    return Image.fromarray(out.astype(np.uint8))


def _darker(c: RGB, f: float = 0.75) -> RGB:
    return int(c[0] * f), int(c[1] * f), int(c[2] * f)


def _draw_person(
    p: _Painter, who: Identity, view: str, cx: float, feet: float, ph: float, phase: float
) -> None:
    """Draw ``who`` seen from ``view`` with feet at (cx, feet) and height ph (canvas pixels)."""
    hc, wc = p.size
    side = view in ("left", "right")
    top = feet - ph
    head_h = who.head * ph
    head_w = head_h * (0.72 if side else 0.8)
    sh_y = top + head_h + 0.025 * ph
    hip_y = sh_y + who.torso * ph
    sw = who.shoulder * ph * (0.5 if side else 1.0)
    hw = sw * who.hip_ratio if not side else sw * 0.95
    shoe_h = 0.035 * ph
    leg_bottom = feet - shoe_h
    leg_w = max(hw * (0.95 if not side else 1.3), 2.0)
    arm_w = 0.052 * ph
    swing = math.sin(2 * math.pi * phase)
    texture = _pattern_texture(who, hc, wc, cx, top, ph)
    # in profile the person faces left; 'right' is drawn mirrored by the caller.
    # The near side of a left-facing profile is the person's left (+1) for 'left', right (-1) for 'right'.
    near = 1 if view == "left" else -1
    facing_away = view == "back"

    def torso_pts(lower: float) -> list[tuple[float, float]]:
        return [(cx - sw, sh_y + 0.01 * ph), (cx + sw, sh_y + 0.01 * ph), (cx + hw, lower), (cx - hw, lower)]

    # long hair behind the body (front view)
    if who.long_hair and not facing_away and not side:
        p.polygon(
            [
                (cx - head_w * 0.55, top + head_h * 0.4),
                (cx + head_w * 0.55, top + head_h * 0.4),
                (cx + head_w * 0.6, sh_y + 0.06 * ph),
                (cx - head_w * 0.6, sh_y + 0.06 * ph),
            ],
            who.hair,
        )
    # far arm / bag / backpack behind the body in profile
    if side:
        p.line([(cx, sh_y + 0.03 * ph), (cx + swing * 0.08 * ph, hip_y + 0.04 * ph)], _darker(who.top), arm_w)
        if who.backpack is not None:
            p.polygon(
                [
                    (cx + sw * 0.6, sh_y + 0.02 * ph),
                    (cx + sw + 0.07 * ph, sh_y + 0.04 * ph),
                    (cx + sw + 0.07 * ph, hip_y - 0.05 * ph),
                    (cx + sw * 0.6, hip_y - 0.03 * ph),
                ],
                who.backpack,
            )
        if who.bag is not None and who.bag_side != near:
            p.polygon(
                [
                    (cx - 0.02 * ph, hip_y - 0.06 * ph),
                    (cx + 0.09 * ph, hip_y - 0.06 * ph),
                    (cx + 0.09 * ph, hip_y + 0.05 * ph),
                    (cx - 0.02 * ph, hip_y + 0.05 * ph),
                ],
                _darker(who.bag),
            )

    # legs
    knee_y = hip_y + 0.45 * (leg_bottom - hip_y)
    if side:
        stride = 0.14 * ph * swing
        legs = [(cx - 0.3 * leg_w, cx - stride, True), (cx + 0.3 * leg_w, cx + stride, False)]
    else:
        spread = 0.025 * ph * abs(swing)
        legs = [
            (cx - hw * 0.5, cx - hw * 0.55 - spread, False),
            (cx + hw * 0.5, cx + hw * 0.55 + spread, False),
        ]
    lw = leg_w * (0.5 if side else 0.48)
    for x_top, x_bot, far in legs:
        trouser = _darker(who.bottom, 0.8) if far else who.bottom
        skin = _darker(who.skin, 0.85) if far else who.skin
        full = [
            (x_top - lw, hip_y - 0.01 * ph),
            (x_top + lw, hip_y - 0.01 * ph),
            (x_bot + lw * 0.8, leg_bottom),
            (x_bot - lw * 0.8, leg_bottom),
        ]
        if who.bottom_kind == "trousers":
            p.polygon(full, trouser)
        else:
            p.polygon(full, skin)
            xk = x_top + (x_bot - x_top) * 0.45
            if who.bottom_kind == "shorts":
                p.polygon([full[0], full[1], (xk + lw * 0.95, knee_y), (xk - lw * 0.95, knee_y)], trouser)
        shoe_dx = -0.035 * ph if side else 0.0
        p.ellipse(
            [x_bot - lw * 1.1 + shoe_dx, leg_bottom - shoe_h * 0.4, x_bot + lw * 1.1 + shoe_dx * 0.3, feet],
            _darker(who.shoes, 0.8) if far else who.shoes,
        )
    if who.bottom_kind == "skirt":
        p.polygon(
            [
                (cx - hw * 1.02, hip_y - 0.02 * ph),
                (cx + hw * 1.02, hip_y - 0.02 * ph),
                (cx + hw * 1.45, knee_y),
                (cx - hw * 1.45, knee_y),
            ],
            who.bottom,
        )

    # torso (coat reaches the knees)
    lower = knee_y if who.coat else hip_y + 0.01 * ph
    pts = torso_pts(lower)
    if texture is not None:
        p.textured_polygon(pts, texture)
    else:
        p.polygon(pts, who.top)

    # logo (front only), backpack (back: big block, front: straps)
    if view == "front" and who.pattern == "logo":
        lx, ly, r = cx, sh_y + 0.11 * ph, 0.045 * ph
        if who.logo_shape == "circle":
            p.ellipse([lx - r, ly - r, lx + r, ly + r], who.logo)
        elif who.logo_shape == "square":
            p.polygon([(lx - r, ly - r), (lx + r, ly - r), (lx + r, ly + r), (lx - r, ly + r)], who.logo)
        elif who.logo_shape == "triangle":
            p.polygon([(lx, ly - r), (lx + r, ly + r), (lx - r, ly + r)], who.logo)
        else:
            p.polygon(
                [
                    (cx - sw * 0.9, ly - r * 0.5),
                    (cx + sw * 0.9, ly - r * 0.5),
                    (cx + sw * 0.9, ly + r * 0.5),
                    (cx - sw * 0.9, ly + r * 0.5),
                ],
                who.logo,
            )
    if who.backpack is not None and not side:
        if facing_away:
            bw = sw * 0.8
            p.polygon(
                [
                    (cx - bw, sh_y + 0.03 * ph),
                    (cx + bw, sh_y + 0.03 * ph),
                    (cx + bw * 1.05, hip_y - 0.03 * ph),
                    (cx - bw * 1.05, hip_y - 0.03 * ph),
                ],
                who.backpack,
            )
            p.polygon(
                [
                    (cx - bw * 0.7, hip_y - 0.12 * ph),
                    (cx + bw * 0.7, hip_y - 0.12 * ph),
                    (cx + bw * 0.7, hip_y - 0.05 * ph),
                    (cx - bw * 0.7, hip_y - 0.05 * ph),
                ],
                _darker(who.backpack),
            )
        else:
            for sx in (-1, 1):
                p.line(
                    [(cx + sx * sw * 0.55, sh_y + 0.01 * ph), (cx + sx * sw * 0.5, sh_y + 0.16 * ph)],
                    who.backpack,
                    0.025 * ph,
                )

    # arms
    if side:
        arm_pts = [(cx, sh_y + 0.03 * ph), (cx - swing * 0.08 * ph, hip_y + 0.04 * ph)]
        sleeve_end = 1.0 if who.long_sleeves else 0.4
        elbow = (
            arm_pts[0][0] + (arm_pts[1][0] - arm_pts[0][0]) * sleeve_end,
            arm_pts[0][1] + (arm_pts[1][1] - arm_pts[0][1]) * sleeve_end,
        )
        if not who.long_sleeves:
            p.line([elbow, arm_pts[1]], who.skin, arm_w * 0.85)
        p.line([arm_pts[0], elbow], who.top, arm_w)
        p.ellipse(
            [
                arm_pts[1][0] - arm_w * 0.5,
                arm_pts[1][1] - arm_w * 0.3,
                arm_pts[1][0] + arm_w * 0.5,
                arm_pts[1][1] + arm_w * 0.7,
            ],
            who.skin,
        )
    else:
        for sx in (-1, 1):
            x0 = cx + sx * (sw + arm_w * 0.35)
            x1 = cx + sx * (sw + arm_w * 0.6) + sx * 0.01 * ph * swing
            y0, y1 = sh_y + 0.025 * ph, hip_y + 0.05 * ph
            if who.long_sleeves:
                p.line([(x0, y0), (x1, y1)], who.top, arm_w)
            else:
                ym = y0 + 0.4 * (y1 - y0)
                p.line([(x0 + (x1 - x0) * 0.4, ym), (x1, y1)], who.skin, arm_w * 0.85)
                p.line([(x0, y0), (x0 + (x1 - x0) * 0.4, ym)], who.top, arm_w)
            p.ellipse([x1 - arm_w * 0.45, y1 - arm_w * 0.2, x1 + arm_w * 0.45, y1 + arm_w * 0.7], who.skin)

    # shoulder bag: strap across the body, bag on the hip
    if who.bag is not None:
        if side:
            if who.bag_side == near:
                p.line(
                    [(cx + sw * 0.3, sh_y), (cx - 0.01 * ph, hip_y - 0.04 * ph)],
                    _darker(who.bag, 0.6),
                    0.015 * ph,
                )
                p.polygon(
                    [
                        (cx - 0.06 * ph, hip_y - 0.05 * ph),
                        (cx + 0.05 * ph, hip_y - 0.05 * ph),
                        (cx + 0.05 * ph, hip_y + 0.06 * ph),
                        (cx - 0.06 * ph, hip_y + 0.06 * ph),
                    ],
                    who.bag,
                )
        else:
            # seen from the front, the person's left (+1) is on the viewer's right
            bx = cx + (who.bag_side if not facing_away else -who.bag_side) * (hw + 0.04 * ph)
            p.line(
                [(cx - (bx - cx) * 0.8, sh_y + 0.005 * ph), (bx, hip_y - 0.03 * ph)],
                _darker(who.bag, 0.6),
                0.016 * ph,
            )
            p.polygon(
                [
                    (bx - 0.05 * ph, hip_y - 0.05 * ph),
                    (bx + 0.05 * ph, hip_y - 0.05 * ph),
                    (bx + 0.055 * ph, hip_y + 0.05 * ph),
                    (bx - 0.055 * ph, hip_y + 0.05 * ph),
                ],
                who.bag,
            )

    # neck and head
    p.polygon(
        [
            (cx - head_w * 0.2, top + head_h * 0.8),
            (cx + head_w * 0.2, top + head_h * 0.8),
            (cx + head_w * 0.22, sh_y + 0.01 * ph),
            (cx - head_w * 0.22, sh_y + 0.01 * ph),
        ],
        who.skin,
    )
    hx0, hx1 = cx - head_w / 2, cx + head_w / 2
    if facing_away:
        p.ellipse([hx0, top, hx1, top + head_h], who.hair)
        if who.long_hair:
            p.polygon(
                [
                    (hx0, top + head_h * 0.5),
                    (hx1, top + head_h * 0.5),
                    (hx1 + 0.01 * ph, sh_y + 0.07 * ph),
                    (hx0 - 0.01 * ph, sh_y + 0.07 * ph),
                ],
                who.hair,
            )
    elif side:
        p.ellipse([hx0, top, hx1, top + head_h], who.skin)
        p.ellipse(
            [
                cx - head_w * 0.15,
                top - 0.003 * ph,
                hx1 + 0.005 * ph,
                top + head_h * (0.9 if who.long_hair else 0.6),
            ],
            who.hair,
        )
        if who.long_hair:
            p.polygon(
                [
                    (cx, top + head_h * 0.5),
                    (hx1, top + head_h * 0.5),
                    (hx1, sh_y + 0.06 * ph),
                    (cx + head_w * 0.1, sh_y + 0.06 * ph),
                ],
                who.hair,
            )
    else:
        p.ellipse([hx0, top, hx1, top + head_h], who.hair)
        p.ellipse(
            [hx0 + head_w * 0.08, top + head_h * 0.22, hx1 - head_w * 0.08, top + head_h * 1.02], who.skin
        )
    if who.hat is not None:
        p.ellipse([hx0 - 0.003 * ph, top - 0.012 * ph, hx1 + 0.003 * ph, top + head_h * 0.55], who.hat)
        brim_l = hx0 - (0.04 * ph if side else 0.006 * ph)
        brim_r = hx1 + (0.0 if side else 0.006 * ph)
        p.polygon(
            [
                (brim_l, top + head_h * 0.28),
                (brim_r, top + head_h * 0.28),
                (brim_r, top + head_h * 0.38),
                (brim_l, top + head_h * 0.38),
            ],
            _darker(who.hat, 0.85),
        )


# ----------------------------------------------------------------------------------------------
# one image
# ----------------------------------------------------------------------------------------------


def _scene(rng: np.random.Generator, cam: Camera, hc: int, wc: int) -> Image.Image:
    bw, bh = cam.background.size
    y0 = int(rng.integers(0, bh - hc + 1))
    x0 = int(rng.integers(0, bw - wc + 1))
    return cam.background.crop((x0, y0, x0 + wc, y0 + hc))


def _occlude(rng: np.random.Generator, img: Image.Image, cam: Camera) -> None:
    wc, hc = img.size
    d = ImageDraw.Draw(img)
    colour = _jitter(rng, cam.occluder, 18)
    kind = str(rng.choice(["pole", "box", "passerby"], p=[0.35, 0.4, 0.25]))
    if kind == "pole":
        w = rng.uniform(0.06, 0.14) * wc
        x = rng.uniform(0, wc - w)
        d.rectangle([x, 0, x + w, hc], fill=colour)
    elif kind == "box":
        h = rng.uniform(0.18, 0.42) * hc
        w = rng.uniform(0.45, 1.1) * wc
        x = rng.uniform(-0.3 * wc, wc - 0.5 * w)
        d.rectangle([x, hc - h, x + w, hc], fill=colour)
        d.rectangle([x, hc - h, x + w, hc - h + 0.04 * hc], fill=_darker(colour, 0.7))
    else:
        sx = rng.choice([-1, 1])
        w = rng.uniform(0.25, 0.45) * wc
        x0 = -w * 0.4 if sx < 0 else wc - w * 0.6
        body = _cloth_colour(rng)
        d.rectangle([x0, 0.2 * hc, x0 + w, hc], fill=body)
        d.ellipse([x0 + w * 0.15, 0.06 * hc, x0 + w * 0.85, 0.2 * hc], fill=_jitter(rng, (200, 160, 130), 30))


def _render(
    rng: np.random.Generator, who: Identity | None, cam: Camera, size: tuple[int, int], quality: int | None
) -> Image.Image:
    """One camera detection of ``who`` (``None``: background-only junk crop), as an output-size image."""
    h, w = size
    hc, wc = 2 * h, 2 * w
    img = _scene(rng, cam, hc, wc)
    if who is not None:
        view = _VIEWS[int(rng.choice(4, p=np.asarray(cam.views)))]
        p = _Painter(hc, wc)
        scale = cam.distance * float(rng.uniform(0.93, 1.06))
        ph = min(who.height * scale, 1.02) * hc
        cx = wc / 2 + rng.normal(0, cam.misalign) * wc
        feet = hc * (0.985 + rng.normal(0, cam.misalign * 0.6))
        # a right profile is a left profile (with the other side near the camera) mirrored
        _draw_person(p, who, view, cx if view != "right" else wc - cx, feet, ph, float(rng.random()))
        person, alpha = p.rgb, p.alpha
        if view == "right":
            person = person.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            alpha = alpha.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # cylinder-like shading across the body and a little light from the camera's side
        xx = (np.arange(wc, dtype=np.float32) - cx) / (0.16 * ph)
        shade = 1.0 - 0.22 * np.clip(xx, -1.5, 1.5) ** 2 / 2.25 + 0.06 * cam.light_dir[0] * np.clip(xx, -1, 1)
        shade_row = np.clip(shade / 1.06 * 255.0 + 0.5, 0, 255).astype(np.uint8)
        shade_img = Image.fromarray(np.repeat(shade_row[None, :, None], 3, axis=2)).resize(
            (wc, hc), Image.Resampling.NEAREST
        )
        img.paste(ImageChops.multiply(person, shade_img), (0, 0), alpha)
    if rng.random() < cam.occlusion:
        _occlude(rng, img, cam)
    # camera optics: to output size, resolution drop, blur
    img = img.resize((w, h), Image.Resampling.BOX)
    f = float(rng.uniform(*cam.res_drop))
    if f < 0.95:
        small = (max(8, int(round(w * f))), max(16, int(round(h * f))))
        img = img.resize(small, Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BILINEAR)
    radius = max(0.0, cam.blur + float(rng.normal(0, 0.25)))
    if radius > 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius * w / 64))
    # camera colour: saturation, cast, brightness, light gradient, contrast, gamma, noise
    x = np.asarray(img, dtype=np.float32) / 255.0
    grey = x.mean(axis=2, keepdims=True)
    x = grey + cam.saturation * (x - grey)
    gain = np.asarray(cam.gains, dtype=np.float32) * cam.brightness * float(rng.uniform(0.88, 1.12))
    x = x * gain * cam.gradient[..., None]
    x = np.clip((x - 0.5) * cam.contrast + 0.5, 0.0, 1.0) ** cam.gamma
    x = x * 255.0 + rng.normal(0.0, cam.noise, x.shape)
    out = Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))
    out.info["quality"] = quality if quality is not None else cam.jpeg
    return out


# ----------------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    path: str
    kind: str  # person, distractor, junk
    key: tuple[int, ...]
    cam: int


def _plan(cfg: SynthConfig) -> list[tuple[str, int, int, tuple[int, ...], str]]:
    """Every image to write: (split folder, pid, camera, rng key, kind), in a fixed order."""
    layout = _rng(cfg.seed, _TAG_LAYOUT)
    n_train = max(1, cfg.ids // 2)
    plan: list[tuple[str, int, int, tuple[int, ...], str]] = []
    lo, hi = cfg.imgs_per_id
    for pid in range(1, cfg.ids + 1):
        n_cams = int(layout.integers(cfg.min_cams, cfg.cams + 1))
        cams = sorted(int(c) for c in layout.choice(cfg.cams, size=n_cams, replace=False))
        counts = [int(layout.integers(lo, hi + 1)) for _ in cams]
        if pid <= n_train:
            for cam, n in zip(cams, counts, strict=True):
                plan += [
                    ("bounding_box_train", pid, cam, (_TAG_IMAGE, pid, cam, k), "person") for k in range(n)
                ]
            continue
        n_query = max(1, int(round(0.7 * n_cams)))  # < n_cams for n_cams >= 2
        qcams = {int(c) for c in layout.choice(cams, size=n_query, replace=False)}
        for cam, n in zip(cams, counts, strict=True):
            for k in range(n):
                split = "query" if (cam in qcams and k == 0) else "bounding_box_test"
                plan.append((split, pid, cam, (_TAG_IMAGE, pid, cam, k), "person"))
    for j in range(cfg.num_distractors):
        plan.append(
            ("bounding_box_test", 0, int(layout.integers(cfg.cams)), (_TAG_DISTRACTOR, j), "distractor")
        )
    for j in range(cfg.junk):
        plan.append(("bounding_box_test", -1, int(layout.integers(cfg.cams)), (_TAG_JUNK, j), "junk"))
    return plan


_WORKER_STATE: dict[str, object] = {}


def _init_worker(cfg: SynthConfig) -> None:
    _WORKER_STATE["cfg"] = cfg
    _WORKER_STATE["cameras"] = _cameras(cfg)
    _WORKER_STATE["identities"] = {}


def _cameras(cfg: SynthConfig) -> list[Camera]:
    canvas = (2 * cfg.size[0], 2 * cfg.size[1])
    return [_make_camera(_rng(cfg.seed, _TAG_CAMERA, c), canvas) for c in range(cfg.cams)]


def _write_one(job: _Job) -> None:
    cfg: SynthConfig = _WORKER_STATE["cfg"]  # type: ignore[assignment]
    cams: list[Camera] = _WORKER_STATE["cameras"]  # type: ignore[assignment]
    ids: dict[int, Identity] = _WORKER_STATE["identities"]  # type: ignore[assignment]
    rng = _rng(cfg.seed, *job.key)
    who: Identity | None
    if job.kind == "person":
        pid = job.key[1]
        if pid not in ids:
            ids[pid] = _make_identity(_rng(cfg.seed, _TAG_IDENTITY, pid))
        who = ids[pid]
    elif job.kind == "distractor":
        who = _make_identity(rng)
    else:
        who = None
    img = _render(rng, who, cams[job.cam], cfg.size, cfg.jpeg_quality)
    img.save(job.path, format="JPEG", quality=int(img.info["quality"]))


def generate(
    cfg: SynthConfig, out: str | os.PathLike[str], *, workers: int = 1, overwrite: bool = False
) -> SynthResult:
    """Write the synthetic dataset to ``out`` (Market-1501 layout) and return its counts.

    ``out`` must not exist or be empty unless ``overwrite`` (then existing ``.jpg`` files in the
    three split folders are deleted first). ``workers > 1`` renders in parallel processes
    (:mod:`concurrent.futures`, the platform's default start method: where that is spawn or
    forkserver, call from under ``if __name__ == "__main__":``); the files are identical either way.
    """
    cfg.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(f"output {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {root} is not empty (choose a new folder, or allow replacing its images "
                "with --overwrite / overwrite=True)"
            )
        for split in ("bounding_box_train", "bounding_box_test", "query"):
            if (root / split).is_dir():
                for f in (root / split).iterdir():
                    if f.suffix.lower() == ".jpg":
                        f.unlink()
    plan = _plan(cfg)
    frame_counter = [0] * cfg.cams
    jobs: list[_Job] = []
    for split, pid, cam, key, kind in plan:
        frame_counter[cam] += 1
        frame = frame_counter[cam] * 7 + cam  # a plausible, unique frame number per camera
        name = (
            f"{pid:04d}_c{cam + 1}s1_{frame:06d}_01.jpg"
            if pid >= 0
            else f"-1_c{cam + 1}s1_{frame:06d}_01.jpg"
        )
        jobs.append(_Job(str(root / split / name), kind, key, cam))
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        (root / split).mkdir(parents=True, exist_ok=True)
    if workers == 1:
        _init_worker(cfg)
        for job in jobs:
            _write_one(job)
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
            list(pool.map(_write_one, jobs, chunksize=64))
    counts = {
        s: sum(1 for p in plan if p[0] == s) for s in ("bounding_box_train", "query", "bounding_box_test")
    }
    n_train = max(1, cfg.ids // 2)
    result = SynthResult(
        root=str(root.resolve()),
        num_train=counts["bounding_box_train"],
        num_query=counts["query"],
        num_gallery=counts["bounding_box_test"],
        num_train_ids=n_train,
        num_test_ids=cfg.ids - n_train,
    )
    meta = {
        "generator": "reidserve.data.synth",
        "version": 1,
        "config": asdict(cfg),
        "counts": asdict(result),
    }
    meta["counts"].pop("root")
    (root / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result
