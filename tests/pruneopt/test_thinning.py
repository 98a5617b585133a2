from __future__ import annotations

import numpy as np
import pytest
import torch

from pruneopt.checkpoint import load_subnet, save_subnet
from pruneopt.complexity import count, count_module
from pruneopt.errors import SpecError
from pruneopt.models import build, default_spec, get_arch
from pruneopt.space import PruningSpace, Regime
from pruneopt.thinning import channel_importance, keep_indices, thin
from tests.support.models import randomise_bn

ARCHS = ["resnet20", "resnet56", "resnet18", "resnet50", "mobilenetv2"]


def parent_of(arch: str, **options: object):
    return randomise_bn(build(get_arch(arch).default_spec(**options))).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "resnet50" else a for a in ARCHS])
def test_full_width_thinning_reproduces_the_parent(arch: str) -> None:
    parent = parent_of(arch)
    child = thin(parent, parent.spec).eval()
    x = torch.randn(2, 3, 48, 32)
    assert torch.equal(parent(x), child(x))
    for (k, a), (k2, b) in zip(parent.state_dict().items(), child.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_thinned_models_are_physically_smaller_and_count_as_their_spec(arch: str) -> None:
    parent = parent_of(arch)
    a = get_arch(arch)
    samples = PruningSpace(parent.spec).sample(1 if a.style == "imagenet" else 3, Regime(0.5, 0.02), seed=1)
    for spec in samples.specs():
        child = thin(parent, spec)
        shape = a.default_input if a.style == "cifar" else (3, 96, 64)
        assert count_module(child, shape) == count(spec, shape[1:])
        assert sum(p.numel() for p in child.parameters()) < sum(p.numel() for p in parent.parameters())
        assert child.spec == spec


def test_keeps_the_filters_with_the_largest_l1_norm() -> None:
    parent = parent_of("resnet20")
    slot = "layer2.1.conv1"  # a block-internal group: scored by its own conv alone
    with torch.no_grad():
        w = parent.layer2[1].conv1.weight
        w.mul_(0.01)
        w[[3, 17, 9]] *= 1000.0  # three filters now dominate
    spec = parent.spec.with_widths({**parent.spec.width_map(), slot: 3})
    assert keep_indices(parent, spec)[slot].tolist() == [3, 9, 17]
    child = thin(parent, spec)
    assert torch.equal(child.layer2[1].conv1.weight, parent.layer2[1].conv1.weight[[3, 9, 17]])
    assert torch.equal(child.layer2[1].bn1.running_mean, parent.layer2[1].bn1.running_mean[[3, 9, 17]])
    # the next layer's input channels follow
    assert torch.equal(child.layer2[1].conv2.weight, parent.layer2[1].conv2.weight[:, [3, 9, 17]])


def test_tied_group_scores_each_channel_over_all_member_layers() -> None:
    parent = parent_of("resnet20")
    scores = channel_importance(parent)["layer2"]
    writers = [parent.layer2[0].conv2, parent.layer2[0].downsample[0], parent.layer2[1].conv2,
               parent.layer2[2].conv2]
    expected = sum(m.weight.detach().double().abs().flatten(1).sum(1) for m in writers)
    assert torch.allclose(scores, expected)
    # a channel that is weak in one block but strong over the stage is kept
    with torch.no_grad():
        for m in writers:
            m.weight.mul_(0.01)
        parent.layer2[2].conv2.weight[5] *= 1e4
        parent.layer2[0].conv2.weight[5] *= 1e-6
    spec = parent.spec.with_widths({**parent.spec.width_map(), "layer2": 1})
    assert keep_indices(parent, spec)["layer2"].tolist() == [5]


def test_bn_and_l2_criteria() -> None:
    parent = parent_of("resnet20")
    with torch.no_grad():
        parent.layer1[0].bn1.weight.copy_(torch.arange(16.0) - 7.5)  # |gamma| largest at index 0 and 15
    spec = parent.spec.with_widths({**parent.spec.width_map(), "layer1.0.conv1": 2})
    assert keep_indices(parent, spec, "bn")["layer1.0.conv1"].tolist() == [0, 15]
    assert len(keep_indices(parent, spec, "l2")["layer1.0.conv1"]) == 2
    with pytest.raises(SpecError, match="criterion"):
        thin(parent, spec, "taylor")


def test_thinning_errors() -> None:
    parent = parent_of("resnet20")
    wider = parent.spec.with_widths([w + 1 for w in parent.spec.widths])
    with pytest.raises(SpecError, match="wider than the parent"):
        thin(parent, wider)
    with pytest.raises(SpecError, match="resnet18"):
        thin(parent, default_spec("resnet18"))
    with pytest.raises(SpecError, match="num_classes"):
        thin(parent, default_spec("resnet20", num_classes=3))
    with pytest.raises(SpecError, match="model.spec"):
        thin(torch.nn.Linear(2, 2), parent.spec)


@pytest.mark.slow
def test_thinned_model_runs_in_onnx_runtime(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    parent = parent_of("resnet20", in_chans=1)
    spec = next(PruningSpace(parent.spec).sample(1, Regime(0.5, 0.02), seed=2).specs())
    child = thin(parent, spec).eval()
    path = tmp_path / "child.onnx"
    torch.onnx.export(child, (torch.randn(1, 1, 28, 28),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, dynamo=True,
                      verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, 1, 28, 28)
        got = sess.run(None, {"input": x.numpy()})[0]
        want = child(x).detach().numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("arch", ["resnet56", "mobilenetv2"])
def test_save_load_round_trip_is_bit_identical(arch: str, tmp_path) -> None:
    parent = parent_of(arch, num_classes=10)
    spec = next(PruningSpace(parent.spec).sample(1, Regime(0.4, 0.02), seed=3).specs())
    child = thin(parent, spec).eval()
    save_subnet(child, tmp_path / "sub")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["spec.json", "weights.safetensors"]
    again = load_subnet(tmp_path / "sub")
    assert again.spec == spec
    for (k, a), (k2, b) in zip(child.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(child(x), again(x))


def test_load_errors(tmp_path) -> None:
    parent = parent_of("resnet20")
    save_subnet(parent, tmp_path / "a")
    (tmp_path / "a" / "weights.safetensors").unlink()
    with pytest.raises(SpecError, match="weights.safetensors is missing"):
        load_subnet(tmp_path / "a")
    save_subnet(parent, tmp_path / "b")
    narrow = parent.spec.with_widths([max(1, w // 2) for w in parent.spec.widths])
    narrow.save(tmp_path / "b" / "spec.json")
    with pytest.raises(SpecError, match="does not fit"):
        load_subnet(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "spec.json").write_text(parent.spec.to_json())
    (tmp_path / "c" / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SpecError, match="cannot read weights"):
        load_subnet(tmp_path / "c")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_subnet(tmp_path / "nowhere")
