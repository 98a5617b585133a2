"""``reidserve synth``: a synthetic re-ID dataset in the Market-1501 layout."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from pruneopt.common.params import RANGE, ParsedParam

from ..data.synth import SynthConfig, generate, parse_size

__all__ = ["synth"]

SYNTH_SIZE = ParsedParam("HxW", parse_size)  # synth's own size range (height 32..1024, width 16..512)


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder without --overwrite before any work starts (click refuses a file)."""
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise click.BadParameter(f"output folder {out} is not empty (choose a new folder, or replace its images "
                                 "with --overwrite)", param_hint="'--out'")


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="output folder (new or empty)")
@click.option("--ids", type=click.IntRange(2, 9999), default=100, show_default=True,
              help="number of identities (first half train, second half test)")
@click.option("--cams", type=click.IntRange(2, 9), default=6, show_default=True, help="number of cameras")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="random seed")
@click.option("--imgs-per-id", type=RANGE, default="6-10", show_default=True,
              help="images per identity per camera it appears in: N or MIN-MAX")
@click.option("--min-cams", type=click.IntRange(min=2), default=2, show_default=True,
              help="each identity is seen by a random subset of MIN-CAMS..CAMS cameras")
@click.option("--size", type=SYNTH_SIZE, default="128x64", show_default=True, help="image HEIGHTxWIDTH")
@click.option("--distractors", type=click.IntRange(min=0), default=None,
              help="pid-0 distractor images in the gallery  [default: one per identity]")
@click.option("--junk", type=click.IntRange(min=0), default=0, show_default=True,
              help="pid -1 junk images (background crops) in the gallery")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="parallel processes (0 = one per CPU core); output is identical for any value")
@click.option("--overwrite", is_flag=True, help="replace images in a non-empty output folder")
def synth(out: Path, ids: int, cams: int, seed: int, imgs_per_id: tuple[int, int], min_cams: int,
          size: tuple[int, int], distractors: int | None, junk: int, workers: int, overwrite: bool) -> None:
    """Generate a synthetic re-ID dataset in the Market-1501 layout."""
    if min_cams > cams:
        raise click.BadParameter(f"--min-cams {min_cams} is larger than --cams {cams}", param_hint="'--min-cams'")
    cfg = SynthConfig(ids=ids, cams=cams, seed=seed, imgs_per_id=imgs_per_id, min_cams=min_cams, size=size,
                      distractors=distractors, junk=junk)
    try:
        cfg.validate()  # its ValueErrors are about the options given
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    res = generate(cfg, out, workers=workers or (os.cpu_count() or 1), overwrite=overwrite)
    total = res.num_train + res.num_query + res.num_gallery
    click.echo(f"wrote {total} images to {res.root} in {time.perf_counter() - t0:.1f}s: "
               f"train {res.num_train} ({res.num_train_ids} ids), query {res.num_query}, "
               f"gallery {res.num_gallery} ({res.num_test_ids} ids + distractors)")
