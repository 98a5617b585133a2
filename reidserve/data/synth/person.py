"""Drawing a person: body proportions and pose (:class:`Figure`), then the parts back to front.

A person is drawn at twice the output size onto an RGB layer and its alpha mask (:class:`Painter`). Parts are
drawn in a fixed order, each over the ones before: hair behind the body, far-side arm and bags (in profile),
legs and skirt, torso, logo and backpack, arms, shoulder bag, head and hat. In profile the person faces left; a
right profile is drawn as a left one and mirrored by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .world import RGB, Identity, darker

__all__ = ["Figure", "Painter", "draw_person"]


class Painter:
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


@dataclass(frozen=True)
class Figure:
    """Where the parts of one person go: the view, the pose and the body's key heights and widths (canvas
    pixels; ``ph`` is the person's height, ``feet`` the y of the soles, ``cx`` the body's centre line)."""

    view: str
    side: bool  # a profile
    near: int  # the person's side nearest the camera in profile: +1 their left ('left' view), -1 their right
    facing_away: bool
    cx: float
    feet: float
    top: float
    ph: float
    head_h: float
    head_w: float
    sh_y: float  # shoulders
    hip_y: float
    sw: float  # half shoulder width
    hw: float  # half hip width
    shoe_h: float
    leg_bottom: float
    leg_w: float
    arm_w: float
    swing: float  # walking phase: -1..1
    knee_y: float

    @classmethod
    def of(cls, who: Identity, view: str, cx: float, feet: float, ph: float, phase: float) -> Figure:
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
        return cls(
            view=view, side=side, near=1 if view == "left" else -1, facing_away=view == "back", cx=cx, feet=feet,
            top=top, ph=ph, head_h=head_h, head_w=head_w, sh_y=sh_y, hip_y=hip_y, sw=sw, hw=hw, shoe_h=shoe_h,
            leg_bottom=leg_bottom, leg_w=leg_w, arm_w=0.052 * ph, swing=math.sin(2 * math.pi * phase),
            knee_y=hip_y + 0.45 * (leg_bottom - hip_y),
        )  # fmt: skip

    def torso_pts(self, lower: float) -> list[tuple[float, float]]:
        """The torso's outline from the shoulders down to ``lower``."""
        cx, sw, hw, y = self.cx, self.sw, self.hw, self.sh_y + 0.01 * self.ph
        return [(cx - sw, y), (cx + sw, y), (cx + hw, lower), (cx - hw, lower)]


def draw_person(p: Painter, who: Identity, view: str, cx: float, feet: float, ph: float, phase: float) -> None:
    """Draw ``who`` seen from ``view`` with feet at (cx, feet) and height ph (canvas pixels)."""
    hc, wc = p.size
    f = Figure.of(who, view, cx, feet, ph, phase)
    texture = _pattern_texture(who, hc, wc, cx, f.top, ph)
    _hair_behind(p, who, f)
    _far_side(p, who, f)
    _legs(p, who, f)
    _torso(p, who, f, texture)
    _chest(p, who, f)
    _arms(p, who, f)
    _shoulder_bag(p, who, f)
    _head(p, who, f)


def _hair_behind(p: Painter, who: Identity, f: Figure) -> None:
    """Long hair behind the body (front view)."""
    side, facing_away, cx, top, ph = f.side, f.facing_away, f.cx, f.top, f.ph
    head_h, head_w, sh_y = f.head_h, f.head_w, f.sh_y
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


def _far_side(p: Painter, who: Identity, f: Figure) -> None:
    """In profile: the far arm, and the backpack and a far-side bag behind the body."""
    side, near, cx, ph, sh_y = f.side, f.near, f.cx, f.ph, f.sh_y
    hip_y, sw, arm_w, swing = f.hip_y, f.sw, f.arm_w, f.swing
    if side:
        p.line([(cx, sh_y + 0.03 * ph), (cx + swing * 0.08 * ph, hip_y + 0.04 * ph)], darker(who.top), arm_w)
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
                darker(who.bag),
            )


def _legs(p: Painter, who: Identity, f: Figure) -> None:
    """Legs (trousers, bare or shorts) and shoes, then a skirt over them."""
    side, cx, feet, ph, hip_y = f.side, f.cx, f.feet, f.ph, f.hip_y
    hw, shoe_h, leg_bottom, leg_w, swing = f.hw, f.shoe_h, f.leg_bottom, f.leg_w, f.swing
    knee_y = f.knee_y
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
        trouser = darker(who.bottom, 0.8) if far else who.bottom
        skin = darker(who.skin, 0.85) if far else who.skin
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
            darker(who.shoes, 0.8) if far else who.shoes,
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


def _torso(p: Painter, who: Identity, f: Figure, texture: Image.Image | None) -> None:
    """The top, plain or patterned (a coat reaches the knees)."""
    ph, hip_y, knee_y = f.ph, f.hip_y, f.knee_y
    lower = knee_y if who.coat else hip_y + 0.01 * ph
    pts = f.torso_pts(lower)
    if texture is not None:
        p.textured_polygon(pts, texture)
    else:
        p.polygon(pts, who.top)


def _chest(p: Painter, who: Identity, f: Figure) -> None:
    """A chest logo (front only); a backpack: a big block from the back, two straps from the front."""
    view, side, facing_away, cx, ph = f.view, f.side, f.facing_away, f.cx, f.ph
    sh_y, hip_y, sw = f.sh_y, f.hip_y, f.sw
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
                darker(who.backpack),
            )
        else:
            for sx in (-1, 1):
                p.line(
                    [(cx + sx * sw * 0.55, sh_y + 0.01 * ph), (cx + sx * sw * 0.5, sh_y + 0.16 * ph)],
                    who.backpack,
                    0.025 * ph,
                )


def _arms(p: Painter, who: Identity, f: Figure) -> None:
    """Arms with sleeves (long or short) and hands."""
    side, cx, ph, sh_y, hip_y = f.side, f.cx, f.ph, f.sh_y, f.hip_y
    sw, arm_w, swing = f.sw, f.arm_w, f.swing
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


def _shoulder_bag(p: Painter, who: Identity, f: Figure) -> None:
    """A shoulder bag: strap across the body, bag on the hip (in profile only on the near side)."""
    side, near, facing_away, cx, ph = f.side, f.near, f.facing_away, f.cx, f.ph
    sh_y, hip_y, sw, hw = f.sh_y, f.hip_y, f.sw, f.hw
    if who.bag is not None:
        if side:
            if who.bag_side == near:
                p.line(
                    [(cx + sw * 0.3, sh_y), (cx - 0.01 * ph, hip_y - 0.04 * ph)],
                    darker(who.bag, 0.6),
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
                darker(who.bag, 0.6),
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


def _head(p: Painter, who: Identity, f: Figure) -> None:
    """Neck, head and hair (seen from the back, in profile or from the front), then a hat."""
    side, facing_away, cx, top, ph = f.side, f.facing_away, f.cx, f.top, f.ph
    head_h, head_w, sh_y = f.head_h, f.head_w, f.sh_y
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
            darker(who.hat, 0.85),
        )
