"""The log handler of both command lines (pruneopt.common.logs): one handler on the root logger, on stderr."""

from __future__ import annotations

import logging

import click
import pytest

from pruneopt.cli import cli as pruneopt_cli
from pruneopt.cli import main as pruneopt_main
from pruneopt.common.logs import StderrHandler, level_from_env, parse_level, setup_logging
from pruneopt.errors import PruneoptError
from reidserve.cli import cli as reidserve_cli
from reidserve.cli import main as reidserve_main


@click.command("warn-once")
def _warn_once() -> None:
    logging.getLogger("pruneopt.somewhere").warning("the gallery is nearly full")
    logging.getLogger("pruneopt.somewhere").info("an info line")


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_pruneopt_cli_handler", False)]


@pytest.mark.parametrize(("prog", "group", "main", "variable"), [
    ("pruneopt", pruneopt_cli, pruneopt_main, "PRUNEOPT_LOG"),
    ("reidserve", reidserve_cli, reidserve_main, "REIDSERVE_LOG")])
def test_a_cli_warning_arrives_on_stderr_through_the_handler(
        prog: str, group: click.Group, main: object, variable: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(group.commands, "warn-once", _warn_once)
    monkeypatch.delenv(variable, raising=False)
    for _ in range(2):  # a second run replaces the handler of the first
        with pytest.raises(SystemExit) as exit_:
            main(["warn-once"])  # type: ignore[operator]
        assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and all(" WARNING pruneopt.somewhere: the gallery is nearly full" in x for x in lines)
    assert len(_ours()) == 1 and isinstance(_ours()[0], StderrHandler)

    monkeypatch.setenv(variable, "info")
    with pytest.raises(SystemExit):
        main(["warn-once"])  # type: ignore[operator]
    assert " INFO pruneopt.somewhere: an info line" in capsys.readouterr().err

    monkeypatch.setenv(variable, "error")
    with pytest.raises(SystemExit):
        main(["warn-once"])  # type: ignore[operator]
    assert capsys.readouterr().err == ""

    monkeypatch.setenv(variable, "loud")
    with pytest.raises(SystemExit) as exit_:
        main(["warn-once"])  # type: ignore[operator]
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ${variable}: 'loud' is not a log level")
    assert len(err.splitlines()) == 1


def test_levels_and_their_errors() -> None:
    assert parse_level("DEBUG") == logging.DEBUG and parse_level("warning") == logging.WARNING
    assert parse_level("15") == 15 and parse_level(logging.ERROR) == logging.ERROR
    with pytest.raises(PruneoptError, match="'chatty' is not a log level: use one of debug, info, warning"):
        parse_level("chatty", error=PruneoptError)


def test_level_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X_LOG", raising=False)
    assert level_from_env("X_LOG") == logging.WARNING
    assert level_from_env("X_LOG", default="error") == logging.ERROR
    monkeypatch.setenv("X_LOG", " Debug ")
    assert level_from_env("X_LOG") == logging.DEBUG


def test_rich_layout_on_stderr_and_force(capsys: pytest.CaptureFixture[str]) -> None:
    foreign = logging.StreamHandler()
    logging.getLogger().addHandler(foreign)
    handler = setup_logging("info", rich=True)
    assert type(handler).__name__ == "RichHandler" and foreign in logging.getLogger().handlers
    logging.getLogger("reidserve.somewhere").info("rich says hello")
    assert "rich says hello" in capsys.readouterr().err
    handler = setup_logging("warning", force=True)  # not a terminal: the plain one-line layout
    assert logging.getLogger().handlers == [handler] and isinstance(handler, StderrHandler)
    assert logging.getLogger().level == logging.WARNING
