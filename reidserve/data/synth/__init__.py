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

Modules: :mod:`.config` (parameters), :mod:`.world` (identities and cameras), :mod:`.person` (drawing a person),
:mod:`.render` (one image) and :mod:`.dataset` (the plan, the files, ``generate``).
"""

from __future__ import annotations

from .config import SynthConfig, SynthError, SynthResult, parse_range, parse_size
from .dataset import generate

__all__ = ["SynthConfig", "SynthError", "SynthResult", "generate", "parse_range", "parse_size"]
