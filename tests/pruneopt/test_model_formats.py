"""pruneopt.model_formats: model folders by format (built-in subnetwork folder, plug-ins by entry point), and the
checkpoint's one-line state-dict mismatch messages."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import pruneopt.model_formats as mf
from pruneopt.checkpoint import load_state_strict, load_subnet, save_subnet, state_mismatch
from pruneopt.errors import PruneoptError, SpecError
from pruneopt.models import build, default_spec
from pruneopt.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[2]


def test_a_subnetwork_folder_loads_with_its_record(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build(default_spec("resnet20")).eval()
    pre = Preprocess.for_channels((3, 32, 32), (0.5,) * 3, (0.25,) * 3)
    folder = save_subnet(model, tmp_path / "w", pre)
    loaded = mf.load_model_folder(folder / "spec.json")  # a spec.json names its folder
    assert loaded.format == "subnetwork" and loaded.folder == folder and loaded.preprocess == pre
    assert loaded.spec == model.spec and not loaded.model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    assert mf.load_model_folder(save_subnet(model, tmp_path / "bare")).preprocess is None


def test_registered_formats_come_before_the_subnetwork_folder() -> None:
    names = [f.name for f in mf.available_formats()]
    assert names[-1] == "subnetwork" and "reid" in names  # reidserve's entry point of pruneopt.model_formats
    assert all(isinstance(f, mf.ModelFormat) for f in mf.available_formats())


def test_unknown_folders_are_one_line_naming_every_format(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(PruneoptError, match="is not a model folder; give a subnetwork folder") as info:
            mf.load_model_folder(path)
        assert "re-ID model folder" in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "half").mkdir()
    default_spec("resnet20").save(tmp_path / "half" / "spec.json")  # the subnetwork format says what is missing
    with pytest.raises(SpecError, match=r"weights\.safetensors is missing"):
        mf.load_model_folder(tmp_path / "half")


def test_a_broken_plug_in_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mf, "_loaded", {})
    monkeypatch.setattr(mf, "_entry_points", lambda: {"bad": EntryPoint("bad", "no_such_module:FORMAT", mf.GROUP)})
    with pytest.raises(PruneoptError, match="model format 'bad' .* cannot be loaded"):
        mf.available_formats()
    monkeypatch.setattr(mf, "_entry_points", lambda: {"odd": EntryPoint("odd", "pruneopt.models:build", mf.GROUP)})
    with pytest.raises(PruneoptError, match="is not a model format named 'odd'"):
        mf.available_formats()


@pytest.mark.slow
def test_importing_the_registry_loads_no_format() -> None:
    code = ("import sys, pruneopt.model_formats, pruneopt.cli; "
            "bad = [m for m in ('reidserve', 'reidserve.model', 'torch') if m in sys.modules]; "
            "assert bad in ([], ['torch']), bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_a_state_dict_mismatch_names_the_first_keys_and_shapes(tmp_path: Path) -> None:
    spec = default_spec("resnet20")
    half = build(spec.with_widths([max(1, w // 2) for w in spec.widths])).state_dict()
    half.pop("fc.bias")
    half["extra.weight"] = torch.zeros(1)
    model = build(spec)
    text = state_mismatch(model, half)
    assert text is not None and "\n" not in text
    assert text.startswith("106 of 128 tensors differ in shape (")
    assert "conv1.weight: saved [8, 3, 3, 3] vs model [16, 3, 3, 3]" in text
    assert "1 missing (fc.bias)" in text and "1 unexpected (extra.weight)" in text
    assert text.count(" vs model ") == 3 and "; ..." in text  # the first three, then an ellipsis
    assert state_mismatch(model, model.state_dict()) is None
    with pytest.raises(SpecError, match=r"^w\.safetensors does not fit spec\.json: 106 of 128 tensors differ"):
        load_state_strict(model, half, "w.safetensors does not fit spec.json")
    folder = save_subnet(build(spec.with_widths([max(1, w // 2) for w in spec.widths])), tmp_path / "narrow")
    spec.save(folder / "spec.json")  # full-width spec, half-width weights
    with pytest.raises(SpecError, match=r"does not fit .*spec\.json: \d+ of \d+ tensors differ in shape \(conv1"):
        load_subnet(folder)
