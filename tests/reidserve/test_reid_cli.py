"""The ``reidserve`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reidserve.cli import cli, main
from reidserve.data import read_market1501

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--ids", "4", "--cams", "2", "--imgs-per-id", "2", "--size", "64x32", "--distractors", "1"]


def test_synth_writes_a_readable_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    r = CliRunner().invoke(cli, ["synth", "--out", str(out), "--seed", "2", *SMALL])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and r.stderr == ""
    ds = read_market1501(out)
    assert ds.num_train_pids == 2 and ds.num_query_pids == 2
    assert sum(1 for i in ds.gallery if i.pid == 0) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["synth", "--ids", "4"], "Missing option '--out'"),
        (["synth", "--out", "{tmp}/a", "--size", "12x4"], "Invalid value for '--size'"),
        (["synth", "--out", "{tmp}/a", "--size", "big"], "HEIGHTxWIDTH"),
        (["synth", "--out", "{tmp}/a", "--ids", "1"], "Invalid value for '--ids'"),
        (["synth", "--out", "{tmp}/a", "--imgs-per-id", "5-2"], "MIN <= MAX"),
        (["synth", "--out", "{tmp}/a", "--cams", "3", "--min-cams", "4"], "larger than --cams"),
        (["synth", "--out", "{tmp}/full", *SMALL], "not empty"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("occupied")
    r = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reidserve: error: ") and message in lines[0]
    assert "Traceback" not in r.output
    assert not (tmp_path / "a").exists()


def test_help_and_no_command() -> None:
    r = CliRunner().invoke(cli, [])
    assert r.exit_code == 0 and "synth" in r.stdout
    r = CliRunner().invoke(cli, ["synth", "--help"])
    assert r.exit_code == 0 and "--imgs-per-id" in r.stdout


def test_group_is_extensible(tmp_path: Path) -> None:
    @cli.command("_probe_cmd")
    @click.argument("path")
    def _probe(path: str) -> None:
        from reidserve.data import load_dataset

        load_dataset(path)  # raises DatasetError (a ValueError) for a bad folder

    try:
        r = CliRunner().invoke(cli, ["_probe_cmd", str(tmp_path / "missing")])
        assert r.exit_code == 2
        assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    finally:
        cli.commands.pop("_probe_cmd")


@pytest.mark.slow
def test_real_process_exit_codes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "reidserve.cli", "synth", "--out", str(tmp_path / "p"), *SMALL]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr


# -- the error policy: known errors are one line (exit 2), bugs keep their traceback (exit 1) ---------------------
def test_main_runs_the_group_under_the_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("occupied")
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", str(tmp_path / "full"), *SMALL])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith("reidserve: error: ") and "not empty" in err
    with pytest.raises(SystemExit) as info:
        main(["synth", "--out", str(tmp_path / "ok"), *SMALL])
    assert info.value.code == 0 and "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["synth", "--out", "{tmp}/a", "--imgs-per-id", "5-200"], "imgs_per_id"),  # SynthConfig's own check
    (["synth", "--out", "{tmp}/file.txt"], "is a file"),
    (["query", "--url", "http://127.0.0.1:9", "--token-file", "{tmp}/missing", "stats"], "--token-file"),
    (["query", "--url", "http://127.0.0.1:9", "--token-file", "{tmp}/empty", "stats"], "holds no token"),
    (["demo-gallery", "--url", "http://127.0.0.1:9", "--token-file", "{tmp}/empty", "--fashion-mnist"],
     "holds no token"),
])
def test_user_errors_once_caught_as_value_or_os_errors(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("a file")
    (tmp_path / "empty").write_text("# no token here\n\n")
    r = CliRunner().invoke(cli, [a.replace("{tmp}", str(tmp_path)) for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("reidserve: error: ") and message in lines[0], lines
    assert "Traceback" not in r.output


@pytest.mark.parametrize("error", [RuntimeError("a bug"), OSError("an unexpected OS error"), ValueError("bug")])
def test_other_exceptions_keep_their_traceback(error: Exception) -> None:
    @cli.command("_bug_cmd")
    def _bug() -> None:
        raise error

    try:
        r = CliRunner().invoke(cli, ["_bug_cmd"])
        assert r.exit_code == 1 and r.exception is error  # not turned into a one-line "user error"
        assert "reidserve: error" not in r.stderr
    finally:
        cli.commands.pop("_bug_cmd")


def test_bug_in_a_real_process_prints_a_traceback(tmp_path: Path) -> None:
    script = ("import sys, click\nfrom reidserve.cli import cli, main\n"
              "cli.add_command(click.Command('boom', callback=lambda: 1 / 0))\nmain(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", script, "boom"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr
