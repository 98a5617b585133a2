"""Check that a `pruneopt` command line is correct without running it: what a recipe's dry run uses.

    python scripts/check_command.py search --data DIR --parent R50.pth --arch resnet50 --regimes 0.5 --out RUN ...

Every command is parsed by the real command line (option names, types, choices). `search` goes further: its
config is built and validated exactly as a run would (presets, --quick, task checks), and its run-time options are
checked, but nothing is read beyond the command line and nothing is trained; the config is printed as JSON. Exit
status 0 when the command would start, 2 (one line on stderr) when it would be refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from pruneopt.cli import cli, main, search_cmds
from pruneopt.search_config import SearchConfig


def _no_search(cfg: SearchConfig, out: Path, **runtime: Any) -> dict[str, Any]:
    shown = {k: v for k, v in runtime.items() if k in ("workers", "backend", "device", "loader_workers", "data_dir")}
    click.echo(f"would search into {out}: {json.dumps(cfg.to_dict())} {json.dumps(shown)}")
    return {"task": cfg.task}


def check(argv: list[str]) -> None:
    if argv and argv[0] == "search":
        # the whole command line is checked, nothing runs
        setattr(search_cmds, "run_search", _no_search)  # noqa: B010 - replaces the real one on purpose
        setattr(search_cmds, "print_summary", lambda summary, out: None)  # noqa: B010
        main(argv)  # exits: 0, or 2 with one line
    if not argv or argv[0] not in cli.commands:
        raise click.UsageError(f"no such command {argv[0] if argv else ''!r}")
    cli.commands[argv[0]].make_context(argv[0], list(argv[1:]))
    click.echo(f"would run: pruneopt {' '.join(argv)}")


if __name__ == "__main__":
    try:
        check(sys.argv[1:])
    except click.ClickException as exc:
        print(f"pruneopt: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
