"""State-dict parents (torchvision naming): the file formats, the architecture found from the keys, one-line errors
for files that do not fit, head replacement, and `pruneopt thin`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pruneopt.checkpoint import load_subnet, save_subnet
from pruneopt.cli import main
from pruneopt.errors import PruneoptError
from pruneopt.models import build, default_spec
from pruneopt.preprocess import Preprocess, read_preprocess
from pruneopt.pretrained import expected_shapes, head_name, inspect_state_dict, load_state_dict_parent, replace_head
from pruneopt.space import PruningSpace, Regime
from pruneopt.thinning import thin
from tests.support.models import randomise_bn


def state_of(arch: str, **options: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return randomise_bn(build(default_spec(arch, **options))).state_dict()  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenetv2", "resnet56"])
def test_expected_shapes_are_the_built_networks(arch: str) -> None:
    model = build(default_spec(arch, in_chans=1, num_classes=7))
    assert expected_shapes(model.spec) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_every_file_format_loads_the_same_network(tmp_path: Path) -> None:
    state = state_of("resnet18")
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    older = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # older torchvision files
    torch.save(older, tmp_path / "older.pth")
    for name in ("bare.pth", "wrapped.pt", "w.safetensors", "older.pth"):
        info = inspect_state_dict(tmp_path / name)
        assert info.arch == "resnet18" and info.spec.num_classes == 1000 and info.spec.in_chans == 3, name
        model = load_state_dict_parent(tmp_path / name)
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in older.items()), name
        assert not model.training


def test_the_architecture_is_found_from_the_keys(tmp_path: Path) -> None:
    for arch, options in (("resnet50", {}), ("mobilenetv2", {"num_classes": 10}), ("resnet20", {"in_chans": 1})):
        torch.save(state_of(arch, **options), tmp_path / f"{arch}.pth")
        info = inspect_state_dict(tmp_path / f"{arch}.pth")
        assert info.arch == arch and info.spec == default_spec(arch, **options)  # type: ignore[arg-type]


def one_line(exc: pytest.ExceptionInfo[PruneoptError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_files_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    state = state_of("resnet18")
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(PruneoptError) as info:
        inspect_state_dict(tmp_path / "r18.pth", "resnet50")
    msg = one_line(info)
    assert "does not fit a full-width resnet50" in msg and "missing (layer1.0.conv3.weight" in msg
    assert "it looks like a resnet18 (--arch resnet18)" in msg
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4.1.")}, tmp_path / "cut.pth")
    with pytest.raises(PruneoptError) as info:
        inspect_state_dict(tmp_path / "cut.pth")
    assert "fit none of" in one_line(info)
    with pytest.raises(PruneoptError) as info:
        inspect_state_dict(tmp_path / "cut.pth", "resnet18")
    assert "missing (layer4.1.conv1.weight, layer4.1.bn1.weight, layer4.1.bn1.bias, ...)" in one_line(info)
    torch.save({**state, "extra.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(PruneoptError) as info:
        inspect_state_dict(tmp_path / "extra.pth", "resnet18")
    assert "1 unexpected (extra.weight)" in one_line(info)
    torch.save({**state, "layer1.0.conv1.weight": torch.zeros(32, 64, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(PruneoptError) as info:
        inspect_state_dict(tmp_path / "shape.pth", "resnet18")
    assert "1 misshapen (layer1.0.conv1.weight (32, 64, 3, 3) vs (64, 64, 3, 3))" in one_line(info)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PruneoptError) as info:
        inspect_state_dict(tmp_path / "junk.pth")
    assert one_line(info).startswith(f"--parent {tmp_path / 'junk.pth'}: cannot read this state dict")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(PruneoptError, match="not a state dict"):
        inspect_state_dict(tmp_path / "nostate.pth")


def test_head_replacement_keeps_every_other_weight() -> None:
    torch.manual_seed(0)
    model = randomise_bn(build(default_spec("mobilenetv2")))
    torch.manual_seed(1)
    new = replace_head(model, 10)
    assert head_name(model.spec) == "classifier.1" and new.spec.num_classes == 10
    old, got = model.state_dict(), new.state_dict()
    assert got["classifier.1.weight"].shape == (10, 1280)
    assert all(torch.equal(got[k], v) for k, v in old.items() if not k.startswith("classifier.1."))


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture[str]):  # noqa: ANN201 - returns the runner
    def run(*args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out, err = capsys.readouterr()
        return int(info.value.code or 0), out + err

    return run


def test_thin_from_a_folder_keeps_its_preprocess_and_matches_thin(tmp_path: Path, invoke) -> None:
    torch.manual_seed(0)
    parent = randomise_bn(build(default_spec("resnet20", in_chans=1, num_classes=10)))
    pre = Preprocess.for_channels((1, 28, 28), (0.286,), (0.353,))
    save_subnet(parent, tmp_path / "parent", pre)
    samples = PruningSpace(parent.spec, input_hw=(28, 28)).sample(3, Regime(0.5, 0.05), seed=0)
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples.records()))
    code, out = invoke("thin", "--parent", str(tmp_path / "parent"), "--spec", str(tmp_path / "s.jsonl"),
                       "--line", "2", "--out", str(tmp_path / "sub"))
    assert code == 0, out
    frac = list(samples.records())[1]["flops_fraction"]
    assert f"({frac:.3f} of the parent)" in out and "at 28x28" in out and "preprocess.json copied" in out
    child = load_subnet(tmp_path / "sub")
    want = thin(parent, samples.spec(1))
    assert child.spec == samples.spec(1)
    assert all(torch.equal(v, want.state_dict()[k]) for k, v in child.state_dict().items())
    assert read_preprocess(tmp_path / "sub") == pre
    line = json.dumps(next(samples.records()))  # one line of `pruneopt sample` output, given inline
    code, out = invoke("thin", "--parent", str(tmp_path / "parent"), "--spec", line, "--out", str(tmp_path / "s1"))
    assert code == 0, out
    assert load_subnet(tmp_path / "s1").spec == samples.spec(0)


def test_thin_from_a_state_dict_and_its_errors(tmp_path: Path, invoke) -> None:
    torch.save(state_of("resnet18"), tmp_path / "r18.pth")
    spec = next(PruningSpace(default_spec("resnet18")).sample(1, Regime(0.5, 0.02)).specs())
    spec.save(tmp_path / "spec.json")
    code, out = invoke("thin", "--parent", str(tmp_path / "r18.pth"), "--spec", str(tmp_path / "spec.json"),
                       "--out", str(tmp_path / "half"))
    assert code == 0, out
    assert load_subnet(tmp_path / "half").spec == spec and read_preprocess(tmp_path / "half") is None
    (tmp_path / "two.jsonl").write_text(json.dumps(spec.to_dict()) + "\n" + json.dumps(spec.to_dict()) + "\n")
    for args, match in ((["--spec", str(tmp_path / "two.jsonl")], "holds 2 lines; pick one with --line N"),
                        (["--spec", str(tmp_path / "two.jsonl"), "--line", "3"], "--line 3: .* has 2 lines"),
                        (["--spec", "{not json"], "--spec: not JSON"),
                        (["--spec", str(tmp_path / "spec.json"), "--arch", "resnet50"], "does not fit a full-width")):
        code, out = invoke("thin", "--parent", str(tmp_path / "r18.pth"), *args, "--out", str(tmp_path / "x"))
        assert code == 2 and out.count("\n") == 1 and re.search(match, out), out
    wrong = default_spec("resnet18", num_classes=10)
    code, out = invoke("thin", "--parent", str(tmp_path / "r18.pth"), "--spec", wrong.to_json(), "--out",
                       str(tmp_path / "x"))
    assert code == 2 and "num_classes=10 differs from the parent's 1000" in out
    assert not (tmp_path / "x").exists()
