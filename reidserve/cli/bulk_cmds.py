"""``reidserve query import`` (fill the gallery from a folder of images, many per request, several requests in
flight, resumable) and ``reidserve query eval`` (rank-1 / mAP of a dataset's queries measured through the
service). Both are clients only (no torch); progress goes to stderr as a bar when it is a terminal, the result
line to stdout."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..gallery_import import DEFAULT_WORKERS, import_items
from ..import_sources import SPLITS, list_items
from ..remote_eval import evaluate_service, query_images
from .query_cmds import bulk_client
from .train_cmds import EVAL_KEYS

__all__ = ["query_eval", "query_import"]

_SPLIT = click.Choice(sorted(SPLITS))


class _Rate(ProgressColumn):
    """Items per second of a task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} items/s" if speed else "", style="progress.data.speed")


@contextmanager
def _progress(enabled: bool | None, description: str) -> Iterator[tuple[Callable[[int], None],
                                                                      Callable[[int], None]]]:
    """(set_total, advance) callbacks of a progress bar on stderr, or of nothing when stderr is not a terminal (or
    ``enabled`` is False)."""
    console = Console(stderr=True)
    if not (enabled if enabled is not None else console.is_terminal):
        yield (lambda total: None), (lambda n: None)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task(description, total=None)
        yield (lambda total: bar.update(task, total=total)), (lambda n: bar.advance(task, n))


_PROGRESS = click.option("--progress/--no-progress", default=None,
                         help="a progress bar on stderr  [default: when stderr is a terminal]")


@click.command("import")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--split", type=_SPLIT, default=None,
              help="which split of a Market-1501 layout  [default: gallery, i.e. bounding_box_test/]")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="import the files this CSV lists: a 'file' column (relative to FOLDER) and optionally id, camera, "
                   "time, pid and metadata columns")
@click.option("--batch", type=click.IntRange(0, 4096), default=0, show_default=True,
              help="images per request (0: the server's images per model run, within its request limits)")
@click.option("--workers", type=click.IntRange(1, 64), default=DEFAULT_WORKERS, show_default=True,
              help="requests in flight at once")
@click.option("--overwrite", is_flag=True, help="send every image, replacing the items already in the gallery "
                                                "(default: skip them, which resumes an interrupted import)")
@_PROGRESS
@click.pass_context
def query_import(ctx: click.Context, folder: Path, split: str | None, csv_file: Path | None, batch: int,
                 workers: int, overwrite: bool, progress: bool | None) -> None:
    """Fill the gallery from a folder of images, many per request (resumable).

    FOLDER is a dataset in the Market-1501 layout (its gallery bounding_box_test/, or --split) or any folder of
    images. Each image is one item named after its file; Market-1501 names (0002_c1s1_000451_03.jpg) give its
    camera (c1) and person id (metadata pid), a --csv anything else. Items already in the gallery are skipped, so
    running the command again after an interruption sends only the rest. Prints items/s at the end.

    \b
    reidserve query --token-file DATA_DIR/token import datasets/market1501
    reidserve query import photos/ --csv photos/index.csv --workers 8
    """
    source, items = list_items(folder, split=split, csv_file=csv_file)

    def started(to_send: int, skipped: int) -> None:
        set_total(to_send)
        note = f", {skipped} already in the gallery (skipped)" if skipped else ""
        click.echo(f"{source}: {len(items)} images{note}", err=True)

    stored = 0

    def done(n: int) -> None:
        nonlocal stored
        stored += n
        advance(n)

    with bulk_client(ctx) as c, _progress(progress, "importing") as (set_total, advance):
        try:
            report = import_items(c, items, batch=batch, workers=workers, skip_existing=not overwrite,
                                  on_start=started, on_progress=done)
        except KeyboardInterrupt:
            click.echo(f"{stored} items were stored before the interruption; run the same command again to send "
                       "the rest", err=True)
            raise
    click.echo(f"{report.summary()} [{report.batch} per request, {report.workers} in flight]")


@click.command("eval")
@click.argument("data", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--split", type=_SPLIT, default=None, help="the split of a Market-1501 layout whose images are the "
                                                         "queries  [default: query]")
@click.option("-k", "--k", "k", type=click.IntRange(min=0), default=0, show_default=True,
              help="results per query (0: the whole gallery, up to the server's --max-k)")
@click.option("--workers", type=click.IntRange(1, 64), default=DEFAULT_WORKERS, show_default=True,
              help="searches in flight at once")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@_PROGRESS
@click.pass_context
def query_eval(ctx: click.Context, data: Path, split: str | None, k: int, workers: int, as_json: bool,
               progress: bool | None) -> None:
    """mAP and rank-1 through the service: search every query image of DATA in the gallery.

    DATA is a dataset in the Market-1501 layout (its query/) or a folder of query images with Market-1501 names.
    The gallery should hold the dataset's gallery, as `reidserve query import DATA` fills it. Scored like
    `reidserve eval` (Market-1501 protocol: same person and camera left out, junk left out), so the two can be
    compared.
    """
    queries = query_images(data, split)
    with bulk_client(ctx) as c, _progress(progress, "searching") as (set_total, advance):
        set_total(len(queries))
        res = evaluate_service(c, queries, k=k, workers=workers, on_progress=advance)
    if as_json:
        out = {key: getattr(res.metrics, key) for key in EVAL_KEYS}
        out.update(queries=res.metrics.num_valid_queries, k=res.k, gallery_size=res.gallery_size,
                   truncated=res.truncated)
        click.echo(json.dumps(out))
    else:
        click.echo(res.summary())
