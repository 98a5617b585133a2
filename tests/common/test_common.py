"""pruneopt.common: atomic writes, the lock file, thread contexts, parsers, the CLI error policy."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import threading
from pathlib import Path

import click
import pytest

from pruneopt.common.cli import run_cli
from pruneopt.common.files import ExclusiveLock, LockBusy, atomic_write, atomic_write_json
from pruneopt.common.params import HW, RANGE, ParamError, parse_int_list, parse_pair, parse_range, parse_shape
from pruneopt.common.threads import torch_threads
from pruneopt.errors import PruneoptError


def test_atomic_write_kinds_mode_and_no_leftovers(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write(p, "text é")
    assert p.read_text(encoding="utf-8") == "text é"
    atomic_write(p, lambda fh: fh.write(b"from a writer"), mode=0o600)
    assert p.read_bytes() == b"from a writer" and stat.S_IMODE(p.stat().st_mode) == 0o600
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin", "a.json"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    p = tmp_path / "keep.txt"
    atomic_write(p, "old")

    def broken(fh) -> None:  # noqa: ANN001
        fh.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(p, broken)
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["keep.txt"]


def test_concurrent_atomic_writes_of_one_path_never_collide(tmp_path: Path) -> None:
    p, errors = tmp_path / "shared.bin", []

    def writer(i: int) -> None:
        try:
            for _ in range(50):
                atomic_write(p, bytes([i]) * 4096, fsync=False)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = p.read_bytes()
    assert len(data) == 4096 and len(set(data)) == 1  # one whole write, never a mix


def _hold(path: str, ready, release) -> None:  # noqa: ANN001
    with ExclusiveLock(path):
        ready.set()
        release.wait(10)


def test_exclusive_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(path), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockBusy) as info:
            ExclusiveLock(path)
        assert info.value.holder == f"pid {proc.pid}"
    finally:
        release.set()
        proc.join(30)
    with ExclusiveLock(path) as lock:
        assert lock.held and path.read_text() == f"pid {os.getpid()}"
    assert not lock.held


def test_torch_threads_restores() -> None:
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_parsers() -> None:
    assert parse_pair("256x128") == (256, 128) == parse_pair("256*128") == parse_pair((256, 128))
    assert parse_shape("3x224x224") == (3, 224, 224) == parse_shape("3,224,224")
    assert parse_shape("28x28", default_channels=1) == (1, 28, 28)
    assert parse_range("8") == (8, 8) and parse_range("6-10") == (6, 10)
    assert parse_int_list("1,8,32") == (1, 8, 32)
    for bad in ("256", "256x", "axb", "0x5", "1x2x3"):
        with pytest.raises(ParamError, match="size"):
            parse_pair(bad)
    with pytest.raises(ParamError):
        parse_range("10-6")
    with pytest.raises(KeyError):  # the caller's own error class
        parse_pair("nope", error=KeyError)
    assert issubclass(ParamError, PruneoptError) and issubclass(ParamError, ValueError)


@click.command()
@click.option("--size", type=HW, default="16x8")
@click.option("--per", type=RANGE, default="2")
@click.option("--boom", is_flag=True)
@click.option("--known", is_flag=True)
def _cmd(size: tuple[int, int], per: tuple[int, int], boom: bool, known: bool) -> None:
    if boom:
        raise RuntimeError("a bug")
    if known:
        raise PruneoptError("you asked for\nsomething impossible")
    click.echo(f"{size} {per}")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        run_cli(_cmd, "prog", argv, (PruneoptError,))
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def test_click_types_and_the_cli_error_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run([], capsys)[:2] == (0, "(16, 8) (2, 2)\n")
    code, _, err = _run(["--size", "12y4"], capsys)
    assert code == 2 and err.startswith("prog: error:") and "HxW" in err and err.count("\n") == 1
    code, _, err = _run(["--known"], capsys)
    assert code == 2 and err == "prog: error: you asked for something impossible\n"
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback (exit status 1)
        run_cli(_cmd, "prog", ["--boom"], (PruneoptError,))
