"""The joints of ``reidserve serve``: an ONNX model without pruneopt metadata served from ``--input/--mean/--std``
(checked at start, embeddings equal to the same graph exported by pruneopt), mistakes that create nothing (a
missing model, a data folder without a parent), ``reidserve --version``, and log lines that keep their order when
they go to a file or a pipe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

for _module in ("fastapi", "uvicorn", "multipart", "httpx"):
    pytest.importorskip(_module, reason=f"the service needs {_module}: pip install 'pruneopt[serve]'")
import httpx  # noqa: E402

from pruneopt import __version__  # noqa: E402
from reidserve.cli import cli  # noqa: E402
from reidserve.client import ReidClient  # noqa: E402
from reidserve.service.embedder import load_model  # noqa: E402
from reidserve.service.model_input import ModelLoadError  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from reidserve.service.settings import ServiceSettings, SettingsError  # noqa: E402
from tests.support.serving import export_models, random_images  # noqa: E402

IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test models, plus ``plain.onnx``: the embedding model's graph without its pruneopt metadata."""
    out = export_models(tmp_path_factory.getbasetemp() / "reid-serve-models")
    model = onnx.load(str(out["embed.onnx"]))
    del model.metadata_props[:]
    model.producer_name = "someone-else"
    plain = tmp_path_factory.mktemp("plain") / "plain.onnx"
    onnx.save(model, str(plain))
    return {**out, "plain.onnx": plain}


def tiny_onnx(path: Path, op: str, dims: list[int | str]) -> Path:
    """A one-node model on ``dims`` input: ``Identity`` (4-D output) or ``Log`` then ``Flatten`` (NaN for negative
    inputs)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Identity", ["x"], ["y"])] if op == "identity" else \
        [helper.make_node("Log", ["x"], ["l"]), helper.make_node("Flatten", ["l"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args), env=env)
    return r.exit_code, r.stderr


def test_a_model_without_metadata_needs_the_flags_and_creates_nothing(models: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    data = tmp_path / "g"
    code, err = run("serve", "--model", str(models["plain.onnx"]), "--data-dir", str(data), "--port", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has no pruneopt metadata" in err and "--input CxHxW --mean" in err and "--std" in err
    assert "--colour RGB|L" in err and not data.exists()
    code, err = run("serve", "--model", str(models["plain.onnx"]), "--data-dir", str(data), "--port", "0",
                    "--input", "3x64x32", "--mean", "0.5")
    assert code == 2 and "missing: --std" in err and not data.exists()
    code, err = run("serve", "--model", str(models["plain.onnx"]), "--data-dir", str(data), "--mean", "0.5")
    assert code == 2 and "give --input CxHxW too" in err


@pytest.mark.slow
def test_a_model_without_metadata_is_served_like_its_pruneopt_export(models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    images = random_images(5, 100, 50, seed=11)
    plain = ["--model", str(models["plain.onnx"]), "--data-dir", str(tmp_path / "p"), "--auth", "none",
             "--input", "3x64x32", *IMAGENET, "--threads", "1"]
    with ServerProcess(plain) as srv, ReidClient(srv.url) as c:
        got = c.embed(images)
        model = c.stats()["model"]
        log = srv.log_tail()
    assert model["input_from"] == "command line" and model["output_dim"] == 64 and model["color"] == "RGB"
    assert model["mean"] == pytest.approx([0.485, 0.456, 0.406]) and model["input_shape"] == [3, 64, 32]
    assert "plain.onnx has no pruneopt metadata; assuming (from the command line) input 3x64x32, colour RGB" in log
    assert "mean 0.485,0.456,0.406, std 0.229,0.224,0.225; checked on a batch of 2: 64-d output" in log
    exported = ["--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path / "e"), "--auth", "none",
                "--threads", "1", "--input", "3x64x32"]  # flags that agree with the metadata are accepted
    with ServerProcess(exported) as srv, ReidClient(srv.url) as c:
        want = c.embed(images)
        assert c.stats()["model"]["input_from"] == "pruneopt metadata"
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_model_is_checked_on_one_batch_at_start(models: dict[str, Path], tmp_path: Path) -> None:
    def given(shape: str, *extra: str) -> object:
        return ServiceSettings.load(model=models["plain.onnx"], data_dir=tmp_path, input=shape, mean="0.5",
                                    std="0.25", **dict(zip(extra[::2], extra[1::2], strict=True))).model_input()

    with pytest.raises(ModelLoadError, match=r"takes input 3x64x32 \(C x H x W\) but --input says 3x128x64"):
        load_model(models["plain.onnx"], "ort-cpu", given=given("3x128x64"))  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="feeds RGB images to 3-channel models"):
        load_model(models["plain.onnx"], "ort-cpu", given=given("3x64x32", "colour", "L"))  # type: ignore[arg-type]
    four_d = tiny_onnx(tmp_path / "identity.onnx", "identity", ["n", 3, 8, 4])
    with pytest.raises(ModelLoadError, match=r"returned shape \[2, 3, 8, 4\] for a batch of 2 images"):
        load_model(four_d, "ort-cpu", given=given("3x8x4"))  # type: ignore[arg-type]
    nan = tiny_onnx(tmp_path / "log.onnx", "log", ["n", 1, 8, 4])
    with pytest.raises(ModelLoadError, match="NaN or infinite values"):
        load_model(nan, "ort-cpu", given=given("1x8x4"))  # type: ignore[arg-type]
    one = tiny_onnx(tmp_path / "one.onnx", "log", [1, 1, 8, 4])  # a fixed batch of 1 is probed with 1 image
    with pytest.raises(ModelLoadError, match="on a batch of 1 images"):
        load_model(one, "ort-cpu", given=given("1x8x4"))  # type: ignore[arg-type]
    fixed = tiny_onnx(tmp_path / "fixed.onnx", "identity", [4, 3, 8, 4])
    with pytest.raises(ModelLoadError, match="fixed batch size of 4"):
        load_model(fixed, "ort-cpu", given=given("3x8x4"))  # type: ignore[arg-type]
    ok = load_model(tiny_onnx(tmp_path / "flat.onnx", "log", ["n", 1, 8, 4]), "ort-cpu",
                    given=ServiceSettings.load(model="m.onnx", data_dir=tmp_path, input="1x8x4", mean="-1",
                                               std="1").model_input())
    try:
        assert ok.assumed and ok.meta.output_dim == 32 and ok.meta.color == "L" and ok.max_batch == 32
    finally:
        ok.runner.close()


def test_flags_that_contradict_the_metadata_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    code, err = run("serve", "--model", str(models["fmnist.onnx"]), "--data-dir", str(tmp_path / "d"), "--input",
                    "1x28x28", "--mean", "0.5", "--std", "0.3530")
    assert code == 2 and "--mean 0.5 contradicts the model's pruneopt metadata (mean 0.286)" in err
    assert not (tmp_path / "d").exists()
    code, err = run("serve", "--model", str(models["fmnist.onnx"]), "--data-dir", str(tmp_path / "d"), "--colour",
                    "RGB")
    assert code == 2 and "--colour RGB contradicts" in err


def test_mistakes_create_no_data_folder_nor_token(models: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "gallery"
    code, err = run("serve", "--model", str(tmp_path / "missing.onnx"), "--data-dir", str(data), "--port", "0")
    assert code == 2 and "missing.onnx does not exist" in err and not data.exists()
    deep = tmp_path / "no" / "such" / "gallery"
    code, err = run("serve", "--model", str(models["embed.onnx"]), "--data-dir", str(deep), "--port", "0")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"its parent folder {deep.parent} does not exist" in err and not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SettingsError, match="is not a folder"):
        from reidserve.service.settings import check_data_dir

        check_data_dir(tmp_path / "file")


def test_version() -> None:
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"reidserve, version {__version__}"


def buffered_env() -> dict[str, str]:
    """The environment without PYTHONUNBUFFERED: Python buffers a standard output that is not a terminal."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_stdout_is_line_buffered_when_it_is_not_a_terminal() -> None:
    script = textwrap.dedent("""
        import click
        from reidserve.cli import cli

        @cli.command("order")
        def order():  # print() does not flush (click.echo does): what a library prints on stdout
            print("one")
            click.echo("two", err=True)
            print("three")

        cli(["order"])
    """)
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         check=True, timeout=120, env=buffered_env()).stdout.decode()
    assert out.splitlines() == ["one", "two", "three"]


def test_server_log_lines_keep_their_order_in_a_file(models: dict[str, Path], tmp_path: Path) -> None:
    args = ["--model", str(models["embed.onnx"]), "--data-dir", str(tmp_path / "d"), "--auth", "none",
            "--access-log", "--threads", "1"]
    srv = ServerProcess(args, log_path=tmp_path / "server.log", env=buffered_env())
    with srv:
        assert httpx.get(srv.url + "/v1/limits", timeout=30).status_code == 200
        srv.stop()
        lines = (tmp_path / "server.log").read_text().splitlines()
    access = next(i for i, line in enumerate(lines) if '"GET /v1/limits HTTP/1.1" 200' in line)
    serving = next(i for i, line in enumerate(lines) if "reidserve: serving embed.onnx" in line)
    stopping = next(i for i, line in enumerate(lines) if "Shutting down" in line)
    assert serving < access < stopping
    assert " INFO uvicorn.access: " in lines[access]  # through the process's own log format
