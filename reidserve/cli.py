"""``reidserve`` command line.

``main`` is a :class:`click.Group`; add commands with ``@main.command()`` in this module or
``main.add_command(cmd)`` elsewhere. User errors -- click usage errors, and ``ValueError`` /
``OSError`` raised by commands (e.g. :class:`reidserve.data.DatasetError`) -- are printed as one
line ``reidserve: error: ...`` on stderr with exit code 2, without a traceback. Set
``REIDSERVE_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["main", "ReidserveGroup", "EXIT_USAGE"]

EXIT_USAGE = 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ReidserveGroup(click.Group):
    """A click group that reports user errors as a single stderr line and exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        name = "reidserve"
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except click.exceptions.Abort:
            click.echo(f"{name}: aborted", err=True)
            rv, code = None, 1
        except click.ClickException as exc:
            click.echo(f"{name}: error: {_one_line(exc.format_message())}", err=True)
            rv, code = None, EXIT_USAGE
        except (ValueError, OSError) as exc:
            if os.environ.get("REIDSERVE_DEBUG"):
                raise
            click.echo(f"{name}: error: {_one_line(str(exc)) or type(exc).__name__}", err=True)
            rv, code = None, EXIT_USAGE
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return rv if code == 0 else code


@click.group(
    cls=ReidserveGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Person re-identification toolkit: data, training, evaluation and serving."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


class _SizeParam(click.ParamType):
    name = "HxW"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        from .data.synth import parse_size

        if isinstance(value, tuple):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _RangeParam(click.ParamType):
    name = "N|MIN-MAX"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        from .data.synth import parse_range

        if isinstance(value, tuple):
            return value
        try:
            return parse_range(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@main.command()
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="output folder (new or empty)"
)
@click.option(
    "--ids",
    type=click.IntRange(2, 9999),
    default=100,
    show_default=True,
    help="number of identities (first half train, second half test)",
)
@click.option("--cams", type=click.IntRange(2, 9), default=6, show_default=True, help="number of cameras")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="random seed")
@click.option(
    "--imgs-per-id",
    type=_RangeParam(),
    default="6-10",
    show_default=True,
    help="images per identity per camera it appears in: N or MIN-MAX",
)
@click.option(
    "--min-cams",
    type=click.IntRange(min=2),
    default=2,
    show_default=True,
    help="each identity is seen by a random subset of MIN-CAMS..CAMS cameras",
)
@click.option("--size", type=_SizeParam(), default="128x64", show_default=True, help="image HEIGHTxWIDTH")
@click.option(
    "--distractors",
    type=click.IntRange(min=0),
    default=None,
    help="pid-0 distractor images in the gallery  [default: one per identity]",
)
@click.option(
    "--junk",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="pid -1 junk images (background crops) in the gallery",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="parallel processes (0 = one per CPU core); output is identical for any value",
)
@click.option("--overwrite", is_flag=True, help="replace images in a non-empty output folder")
def synth(
    out: str,
    ids: int,
    cams: int,
    seed: int,
    imgs_per_id: tuple[int, int],
    min_cams: int,
    size: tuple[int, int],
    distractors: int | None,
    junk: int,
    workers: int,
    overwrite: bool,
) -> None:
    """Generate a synthetic re-ID dataset in the Market-1501 layout."""
    from .data.synth import SynthConfig, generate

    if min_cams > cams:
        raise click.BadParameter(
            f"--min-cams {min_cams} is larger than --cams {cams}", param_hint="'--min-cams'"
        )
    cfg = SynthConfig(
        ids=ids,
        cams=cams,
        seed=seed,
        imgs_per_id=imgs_per_id,
        min_cams=min_cams,
        size=size,
        distractors=distractors,
        junk=junk,
    )
    t0 = time.perf_counter()
    res = generate(cfg, out, workers=workers or (os.cpu_count() or 1), overwrite=overwrite)
    total = res.num_train + res.num_query + res.num_gallery
    click.echo(
        f"wrote {total} images to {res.root} in {time.perf_counter() - t0:.1f}s: "
        f"train {res.num_train} ({res.num_train_ids} ids), query {res.num_query}, "
        f"gallery {res.num_gallery} ({res.num_test_ids} ids + distractors)"
    )


if __name__ == "__main__":
    main()
