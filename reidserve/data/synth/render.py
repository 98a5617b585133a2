"""One image: a camera's detection of a person (or a background-only junk crop), through the camera's optics."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .person import Painter, draw_person
from .world import VIEWS, Camera, Identity, cloth_colour, darker, jitter

__all__ = ["render"]


def _scene(rng: np.random.Generator, cam: Camera, hc: int, wc: int) -> Image.Image:
    bw, bh = cam.background.size
    y0 = int(rng.integers(0, bh - hc + 1))
    x0 = int(rng.integers(0, bw - wc + 1))
    return cam.background.crop((x0, y0, x0 + wc, y0 + hc))


def _occlude(rng: np.random.Generator, img: Image.Image, cam: Camera) -> None:
    wc, hc = img.size
    d = ImageDraw.Draw(img)
    colour = jitter(rng, cam.occluder, 18)
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
        d.rectangle([x, hc - h, x + w, hc - h + 0.04 * hc], fill=darker(colour, 0.7))
    else:
        sx = rng.choice([-1, 1])
        w = rng.uniform(0.25, 0.45) * wc
        x0 = -w * 0.4 if sx < 0 else wc - w * 0.6
        body = cloth_colour(rng)
        d.rectangle([x0, 0.2 * hc, x0 + w, hc], fill=body)
        d.ellipse([x0 + w * 0.15, 0.06 * hc, x0 + w * 0.85, 0.2 * hc], fill=jitter(rng, (200, 160, 130), 30))


def render(
    rng: np.random.Generator, who: Identity | None, cam: Camera, size: tuple[int, int], quality: int | None
) -> Image.Image:
    """One camera detection of ``who`` (``None``: background-only junk crop), as an output-size image."""
    h, w = size
    hc, wc = 2 * h, 2 * w
    img = _scene(rng, cam, hc, wc)
    if who is not None:
        view = VIEWS[int(rng.choice(4, p=np.asarray(cam.views)))]
        p = Painter(hc, wc)
        scale = cam.distance * float(rng.uniform(0.93, 1.06))
        ph = min(who.height * scale, 1.02) * hc
        cx = wc / 2 + rng.normal(0, cam.misalign) * wc
        feet = hc * (0.985 + rng.normal(0, cam.misalign * 0.6))
        # a right profile is a left profile (with the other side near the camera) mirrored
        draw_person(p, who, view, cx if view != "right" else wc - cx, feet, ph, float(rng.random()))
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
