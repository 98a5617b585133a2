"""``pruneopt export FOLDER`` reads the folder's preprocess.json: input size, mean/std, colour, output kind; a flag
that contradicts the record is a one-line error unless --override-preprocess; a folder without a record keeps the
old defaults and says which it assumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.metadata import read_metadata
from pruneopt.checkpoint import save_subnet
from pruneopt.cli import main
from pruneopt.models import build, default_spec
from pruneopt.preprocess import Preprocess

FMNIST = Preprocess.for_channels((1, 28, 28), (0.2860,), (0.3530,), output="logits")
EXPORT = ("--exporter", "legacy", "--verify-batches", "1")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture(scope="module")
def grey_winner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST-shaped classifier saved with its preprocessing record, as a search saves its winner."""
    torch.manual_seed(0)
    return save_subnet(build(default_spec("resnet20", in_chans=1, num_classes=10)),
                       tmp_path_factory.mktemp("w") / "winner", FMNIST)


@pytest.fixture(scope="module")
def bare_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    return save_subnet(build(default_spec("resnet20")), tmp_path_factory.mktemp("b") / "bare")


def test_the_record_gives_input_mean_std_and_colour(capsys: pytest.CaptureFixture[str], grey_winner: Path,
                                                    tmp_path: Path) -> None:
    code, out, err = run(capsys, "export", str(grey_winner), "--out", str(tmp_path / "w.onnx"), *EXPORT)
    assert code == 0, err
    meta = read_metadata(tmp_path / "w.onnx")
    assert meta.input_shape == (1, 28, 28) and meta.mean == (0.2860,) and meta.std == (0.3530,)
    assert meta.color == "L" and meta.output_kind == "logits" and not meta.normalized
    assert "input 1x28x28" in out and "preprocessing recorded" in out and "assumed" not in err


def test_flags_that_repeat_the_record_are_fine(capsys: pytest.CaptureFixture[str], grey_winner: Path,
                                               tmp_path: Path) -> None:
    code, _, err = run(capsys, "export", str(grey_winner), "--out", str(tmp_path / "w.onnx"), "--input", "1x28x28",
                       "--mean", "0.286", "--std", "0.353", *EXPORT)
    assert code == 0, err
    assert read_metadata(tmp_path / "w.onnx").input_shape == (1, 28, 28)


@pytest.mark.parametrize("flags, named", [
    (["--input", "1x32x32"], "--input 1x32x32 (recorded 1x28x28)"),
    (["--mean", "0.5", "--std", "0.3530"], "--mean 0.5 (recorded 0.286)"),
    (["--input", "1x32x32", "--mean", "0.485", "--std", "0.229"], "--std 0.229 (recorded 0.353)"),
])
def test_a_contradicting_flag_is_one_line_unless_overridden(capsys: pytest.CaptureFixture[str], grey_winner: Path,
                                                            tmp_path: Path, flags: list[str], named: str) -> None:
    out_path = tmp_path / "w.onnx"
    code, _, err = run(capsys, "export", str(grey_winner), "--out", str(out_path), *flags, *EXPORT)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pruneopt: error: "), err
    assert named in lines[0] and "preprocess.json" in lines[0] and "--override-preprocess" in lines[0]
    assert not out_path.exists()
    code, _, err = run(capsys, "export", str(grey_winner), "--out", str(out_path), *flags, "--override-preprocess",
                       *EXPORT)
    assert code == 0, err
    assert "overriding" in err and named in err
    meta = read_metadata(out_path)
    if "--input" in flags:
        assert meta.input_shape == (1, 32, 32)
    if "--mean" in flags:
        assert meta.mean == (float(flags[flags.index("--mean") + 1]),)


def test_a_folder_without_a_record_says_what_it_assumed(capsys: pytest.CaptureFixture[str], bare_folder: Path,
                                                       tmp_path: Path) -> None:
    code, out, err = run(capsys, "export", str(bare_folder), "--out", str(tmp_path / "b.onnx"), *EXPORT, "--json")
    assert code == 0, err
    assert "records no preprocessing" in err and "input 3x32x32 (the resnet20 default)" in err
    assert "mean 0.485,0.456,0.406 and std 0.229,0.224,0.225 (ImageNet's)" in err
    assert json.loads(out)["preprocess_source"] == "assumed"
    meta = read_metadata(tmp_path / "b.onnx")  # the old defaults, unchanged
    assert meta.input_shape == (3, 32, 32) and meta.mean == (0.485, 0.456, 0.406)
    code, _, err = run(capsys, "export", str(bare_folder), "--out", str(tmp_path / "c.onnx"), "--input", "3x40x40",
                       *EXPORT)
    assert code == 0 and "input 3x40x40" not in err and "(ImageNet's)" in err  # only what was not given


def test_a_record_that_does_not_belong_to_the_model(capsys: pytest.CaptureFixture[str], bare_folder: Path,
                                                    tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("spec.json", "weights.safetensors"):
        (folder / name).write_bytes((bare_folder / name).read_bytes())
    Preprocess.for_channels((3, 32, 32), (0.5,) * 3, (0.5,) * 3, output="embedding").save(folder)
    code, _, err = run(capsys, "export", str(folder), "--out", str(tmp_path / "o.onnx"), *EXPORT)
    assert code == 2 and "says the model outputs embedding" in err and err.count("\n") == 1
