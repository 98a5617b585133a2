"""The dataset: which images to write (a fixed plan from the seed), rendering them (in parallel) into the
Market-1501 layout, and ``synth.json``."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pruneopt.common.files import atomic_write

from .config import SynthConfig, SynthError, SynthResult
from .render import render
from .world import Camera, Identity, make_camera, make_identity, random_stream, soften_camera

__all__ = ["generate"]

# random stream tags: every random choice is drawn from random_stream(seed, TAG, ...)
_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_DISTRACTOR, _TAG_JUNK, _TAG_LAYOUT = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class _Job:
    path: str
    kind: str  # person, distractor, junk
    key: tuple[int, ...]
    cam: int


def _plan(cfg: SynthConfig) -> list[tuple[str, int, int, tuple[int, ...], str]]:
    """Every image to write: (split folder, pid, camera, rng key, kind), in a fixed order."""
    layout = random_stream(cfg.seed, _TAG_LAYOUT)
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
    cams = [make_camera(random_stream(cfg.seed, _TAG_CAMERA, c), canvas) for c in range(cfg.cams)]
    if cfg.camera_strength != 1.0:  # the full look is the camera as drawn (and the bytes as before the option)
        cams = [soften_camera(cam, cfg.camera_strength) for cam in cams]
    return cams


def _write_one(job: _Job) -> None:
    cfg: SynthConfig = _WORKER_STATE["cfg"]  # type: ignore[assignment]
    cams: list[Camera] = _WORKER_STATE["cameras"]  # type: ignore[assignment]
    ids: dict[int, Identity] = _WORKER_STATE["identities"]  # type: ignore[assignment]
    rng = random_stream(cfg.seed, *job.key)
    who: Identity | None
    if job.kind == "person":
        pid = job.key[1]
        if pid not in ids:
            ids[pid] = make_identity(random_stream(cfg.seed, _TAG_IDENTITY, pid))
        who = ids[pid]
    elif job.kind == "distractor":
        who = make_identity(rng)
    else:
        who = None
    img = render(rng, who, cams[job.cam], cfg.size, cfg.jpeg_quality)
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
        raise SynthError(f"workers must be >= 1, got {workers}")
    root = Path(out).expanduser()
    if root.exists() and not root.is_dir():
        raise SynthError(f"output {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise SynthError(
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
    meta: dict[str, Any] = {
        "generator": "reidserve.data.synth",
        "version": 1,
        "config": asdict(cfg),
        "counts": asdict(result),
    }
    meta["counts"].pop("root")
    if cfg.camera_strength == 1.0:  # files of a default dataset stay byte-identical to those before the option
        meta["config"].pop("camera_strength")
    atomic_write(root / "synth.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return result
