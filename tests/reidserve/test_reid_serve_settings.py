"""``reidserve serve``'s settings: one pydantic-settings object behind every flag and ``REIDSERVE_*`` variable,
the options generated from it, and what wins when both are given."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("pydantic_settings", reason="the service needs pydantic-settings: pip install 'pruneopt[serve]'")
from reidserve.cli import cli  # noqa: E402
from reidserve.service.settings import NO_FLAG, ServiceSettings, SettingsError  # noqa: E402

# the defaults of the former ServiceConfig dataclass and of the flags, pinned
DEFAULTS = {
    "host": "127.0.0.1", "port": 8080, "store": "sqlite", "runtime": "auto", "threads": None, "max_batch": 32,
    "max_wait_ms": 2.0, "index": "ivf", "ivf_threshold": 20_000, "nlist": 0, "nprobe": 0, "ivf_codec": "sq8",
    "hnsw_m": 0, "ef_search": 0, "faiss_threads": 0, "search_max_batch": 64, "search_max_wait_ms": 1.0,
    "faiss_gpu": "auto", "snapshot_interval": 60.0, "auth": "mutating", "token_file": None, "max_body_mb": 16.0,
    "max_images": 64, "max_items": 1024, "max_k": 1000, "max_pixels": 4_000_000, "header_timeout": 10.0,
    "body_timeout": 60.0, "accept_model_change": False, "input": None, "mean": None, "std": None, "colour": None,
    "log_level": "info", "access_log": False, "port_file": None, "tokens": (), "milvus_token": None,
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("REIDSERVE_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ServiceSettings]:
    """Replace the server by a recorder of the settings it would run with."""
    import reidserve.service.server as server

    seen: list[ServiceSettings] = []
    monkeypatch.setattr(server, "serve", lambda settings, announce: seen.append(settings))
    return seen


def test_defaults_are_pinned(clean_env: pytest.MonkeyPatch) -> None:
    s = ServiceSettings(model=Path("m.onnx"), data_dir=Path("d"))
    assert {k: v for k, v in s.model_dump().items() if k not in ("model", "data_dir")} == DEFAULTS
    assert s.max_body_bytes == 16 * 2**20
    assert s.limits() == {"max_body_bytes": 16 * 2**20, "max_images": 64, "max_items": 1024, "max_k": 1000,
                          "max_pixels": 4_000_000}


def test_help_lists_every_option_with_its_help_text() -> None:
    r = CliRunner().invoke(cli, ["serve", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.stdout.split())
    dense = "".join(r.stdout.split())  # help text wrapped anywhere, even inside --ivf-threshold
    for name, info in ServiceSettings.model_fields.items():
        assert info.description, name  # every setting says what it is
        flag = "--" + name.replace("_", "-")
        if name in NO_FLAG or name == "port_file":  # no flag / a hidden one
            assert flag not in text
            continue
        assert re.search(rf"{re.escape(flag)}\b", text), flag
        assert "".join(info.description.split()) in dense, flag
    assert "[default:1000;1<=x<=10000]" in dense  # --max-k: default and range from the field
    assert "REIDSERVE_" in text


def test_environment_fills_what_the_command_line_does_not(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                                          captured: list[ServiceSettings]) -> None:
    clean_env.setenv("REIDSERVE_MODEL", str(tmp_path / "env.onnx"))
    clean_env.setenv("REIDSERVE_MAX_K", "50")
    clean_env.setenv("REIDSERVE_INDEX", "hnsw")
    clean_env.setenv("REIDSERVE_ACCESS_LOG", "true")
    clean_env.setenv("REIDSERVE_TOKENS", "tok-aaaaaaaaaaaaaaaa, tok-bbbbbbbbbbbbbbbb")
    r = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path), "--max-k", "7", "--max-batch", "8"])
    assert r.exit_code == 0, r.output
    (s,) = captured
    assert s.model == tmp_path / "env.onnx" and s.data_dir == tmp_path  # environment / flag
    assert s.max_k == 7 and s.max_batch == 8  # the flag wins over REIDSERVE_MAX_K
    assert s.index == "hnsw" and s.access_log is True  # from the environment
    assert s.tokens == ("tok-aaaaaaaaaaaaaaaa", "tok-bbbbbbbbbbbbbbbb")
    assert s.nlist == 0 and s.auth == "mutating"  # neither: the defaults


@pytest.mark.parametrize("env, args, message", [
    ({"REIDSERVE_MAX_K": "lots"}, [], "--max-k / $REIDSERVE_MAX_K: Input should be a valid integer"),
    ({"REIDSERVE_MAX_K": "0"}, [], "--max-k / $REIDSERVE_MAX_K: Input should be greater than or equal to 1"),
    ({"REIDSERVE_AUTH": "sometimes"}, [], "--auth / $REIDSERVE_AUTH"),
    ({}, ["--model", "m.onnx"], "--data-dir / $REIDSERVE_DATA_DIR is required"),
    ({"REIDSERVE_DATA_DIR": "d"}, [], "--model / $REIDSERVE_MODEL is required"),
    ({}, ["--model", "m.onnx", "--data-dir", "d", "--max-k", "0"], "Invalid value for '--max-k'"),
    ({}, ["--model", "m.onnx", "--data-dir", "d", "--mean", "0.5", "--std", "0.2"],
     "--mean describes a model without pruneopt metadata: give --input CxHxW too"),
    ({"REIDSERVE_INPUT": "3x256"}, [], "--input / $REIDSERVE_INPUT: --input must look like three positive integers"),
    ({}, ["--model", "m.onnx", "--data-dir", "d", "--input", "3x8x8", "--mean", "0.1,0.2"],
     "--mean has 2 values for 3 input channels: give 1 or 3"),
    ({}, ["--model", "m.onnx", "--data-dir", "d", "--input", "1x8x8", "--std", "x"],
     "--std / $REIDSERVE_STD: expected numbers like 0.5"),
    ({}, ["--model", "m.onnx", "--data-dir", "d", "--colour", "BGR"], "Invalid value for '--colour'"),
])
def test_bad_settings_are_one_line(clean_env: pytest.MonkeyPatch, captured: list[ServiceSettings],
                                   env: dict[str, str], args: list[str], message: str) -> None:
    base = [] if args else ["--model", "m.onnx", "--data-dir", "d"]
    if "REIDSERVE_DATA_DIR" in env:
        base = []
    for k, v in env.items():
        clean_env.setenv(k, v)
    r = CliRunner().invoke(cli, ["serve", *base, *args])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and not captured, r.output
    assert len(lines) == 1 and lines[0].startswith("reidserve: error: ") and message in lines[0], lines


def test_model_input_from_flags_and_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path,
                                                captured: list[ServiceSettings]) -> None:
    clean_env.setenv("REIDSERVE_MEAN", "0.485, 0.456, 0.406")
    clean_env.setenv("REIDSERVE_STD", "0.25")
    r = CliRunner().invoke(cli, ["serve", "--model", "m.onnx", "--data-dir", str(tmp_path), "--input", "3x256x128"])
    assert r.exit_code == 0, r.output
    given = captured[0].model_input()
    assert given is not None and given.input_shape == (3, 256, 128) and given.colour is None
    assert given.mean == (0.485, 0.456, 0.406) and given.std == (0.25, 0.25, 0.25)  # one value: every channel
    clean_env.delenv("REIDSERVE_MEAN")
    clean_env.delenv("REIDSERVE_STD")
    assert ServiceSettings(model=Path("m.onnx"), data_dir=tmp_path).model_input() is None


def test_settings_load_reports_every_bad_value(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as info:
        ServiceSettings.load(data_dir="d", max_batch=0, auth="x")
    text = str(info.value)
    assert "--model / $REIDSERVE_MODEL is required" in text and "--max-batch" in text and "--auth" in text
    assert "\n" not in text
    assert isinstance(info.value, ValueError)  # a ReidserveError: the command line prints it as one line


def test_settings_are_frozen(clean_env: pytest.MonkeyPatch) -> None:
    s: Any = ServiceSettings(model=Path("m.onnx"), data_dir=Path("d"))
    with pytest.raises(Exception, match="frozen"):
        s.max_k = 3
