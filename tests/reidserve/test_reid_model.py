"""The re-ID embedding model: GeM, BNNeck, normalisation, save/load, backbones from pruned winners."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pruneopt.checkpoint import save_subnet
from pruneopt.models import build, default_spec
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, read_preprocess
from reidserve.model import (
    GeM,
    HeadConfig,
    ModelError,
    ReidModel,
    backbone_from_module,
    backbone_from_subnet,
    build_reid_model,
    load_reid_model,
    reid_spec,
    resolve_model_folder,
    save_reid_model,
)

torch.set_num_threads(1)


def test_gem_pooling() -> None:
    x = torch.rand(2, 5, 4, 3) + 0.1
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))
    gem3 = GeM()
    assert gem3.p.item() == 3.0 and gem3.p.requires_grad
    torch.testing.assert_close(gem3(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3))
    big = GeM(p=60.0)(x)
    torch.testing.assert_close(big, x.amax(dim=(2, 3)), atol=0.05 * float(x.max()), rtol=0)
    with pytest.raises(ValueError):
        GeM(p=0)


def test_forward_is_normalised_and_neck_bias_frozen() -> None:
    model = build_reid_model("resnet20", seed=0)
    assert model.spec.features_only and model.spec.last_stride == 1 and model.embed_dim == 64
    x = torch.randn(6, 3, 64, 32)
    z = model(x)
    assert z.shape == (6, 64)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(6))
    assert not model.neck.bias.requires_grad
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    z[:, 0].sum().backward()
    assert model.pool.p.grad is not None
    opt.step()
    assert torch.count_nonzero(model.neck.bias) == 0
    model.eval()
    ze = model(x)
    torch.testing.assert_close(ze.norm(dim=1), torch.ones(6))


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_reid_model("resnet20", seed=5)
    after = torch.rand(1)
    b = build_reid_model("resnet20", seed=5)
    c = build_reid_model("resnet20", seed=6)
    assert torch.equal(before, after)
    assert torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)


def test_save_load_round_trip(tmp_path: Path) -> None:
    head = HeadConfig(input_size=(64, 32))
    model = build_reid_model("resnet20", head, seed=1)
    with torch.no_grad():
        model.pool.p.fill_(2.5)
        model.neck.running_mean.uniform_(-0.1, 0.1)
    folder = save_reid_model(model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "preprocess.json", "reid.json",
                                                        "spec.json"]
    meta = json.loads((folder / "reid.json").read_text())
    assert meta["embed_dim"] == 64 and meta["input_size"] == [64, 32] and meta["pooling"]["type"] == "gem"
    pre = read_preprocess(folder)  # what export and serving read: RGB 3x64x32, ImageNet statistics, L2 embedding
    assert pre == Preprocess((3, 64, 32), IMAGENET_MEAN, IMAGENET_STD, output="embedding", normalized=True)
    loaded = load_reid_model(folder)
    assert not loaded.training
    x = torch.randn(3, 3, 64, 32)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.head.input_size == (64, 32)
    # a run folder holding model/ resolves to it
    run = tmp_path / "run"
    save_reid_model(model, run / "model")
    assert resolve_model_folder(run) == run / "model"


def test_eval_forward_is_plain_torch_ops() -> None:
    model = build_reid_model("resnet20", seed=0).eval()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(graph(x), model(x))
    modules = dict(graph.named_modules())
    called = {type(modules[n.target]) for n in graph.graph.nodes if n.op == "call_module"}
    assert called <= {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Identity}
    funcs = {n.target for n in graph.graph.nodes if n.op == "call_function"}
    assert F.normalize in funcs
    assert all(getattr(f, "__module__", "").startswith(("torch", "_operator")) or f is getattr for f in funcs)
    methods = {n.target for n in graph.graph.nodes if n.op == "call_method"}
    assert methods <= {"clamp", "pow", "mean"}


def test_backbone_from_pruned_winner(tmp_path: Path) -> None:
    spec = default_spec("resnet20", in_chans=3, num_classes=10)
    widths = [max(4, w // 2) for w in spec.widths]
    pruned = build(spec.with_widths(widths)).eval()
    save_subnet(pruned, tmp_path / "winner")
    backbone = backbone_from_subnet(tmp_path / "winner")
    assert backbone.spec.features_only and backbone.spec.last_stride == 1
    assert backbone.spec.widths == tuple(widths)
    # the conv weights are the winner's
    torch.testing.assert_close(backbone.conv1.weight, pruned.conv1.weight)
    torch.testing.assert_close(backbone.layer3[0].conv2.weight, pruned.layer3[0].conv2.weight)
    model = ReidModel(backbone)
    assert model.embed_dim == widths[spec.slots.index("layer3")]


def test_grey_winner_gets_an_equivalent_rgb_stem(tmp_path: Path) -> None:
    spec = default_spec("resnet20", in_chans=1, num_classes=10)
    grey = build(spec).eval()
    save_subnet(grey, tmp_path / "grey")
    rgb = backbone_from_subnet(tmp_path / "grey").eval()
    assert rgb.spec.in_chans == 3 and rgb.conv1.weight.shape[1] == 3
    img = torch.rand(2, 1, 32, 32)
    ref = build(reid_spec(spec))
    ref.load_state_dict({k: v for k, v in grey.state_dict().items() if not k.startswith("fc.")})
    ref.eval()
    torch.testing.assert_close(rgb(img.repeat(1, 3, 1, 1)), ref(img), atol=1e-5, rtol=1e-4)
    # and from an in-memory module, for the search
    from_module = backbone_from_module(grey)
    torch.testing.assert_close(from_module.conv1.weight, rgb.conv1.weight)


def test_bad_model_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_reid_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a re-ID model folder"):
        load_reid_model(tmp_path / "empty")
    model = build_reid_model("resnet20", seed=0)
    folder = save_reid_model(model, tmp_path / "m")
    other = dataclasses.replace(model.spec, widths=tuple(w + 1 for w in model.spec.widths))
    (folder / "spec.json").write_text(other.to_json())
    with pytest.raises(ModelError, match="does not fit"):
        load_reid_model(folder)
    with pytest.raises(ModelError, match="features_only"):
        ReidModel(build(default_spec("resnet20")))
    with pytest.raises(ModelError, match="missing"):
        (tmp_path / "w").mkdir()
        default_spec("resnet20").save(tmp_path / "w" / "spec.json")
        backbone_from_subnet(tmp_path / "w")


def test_backbone_and_model_folders_share_the_subnetwork_reader(tmp_path: Path) -> None:
    """Both folder kinds are read by pruneopt.checkpoint.read_subnet; its errors arrive as ModelError."""
    winner = save_subnet(build(default_spec("resnet20", num_classes=10)), tmp_path / "winner")
    (winner / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read weights"):
        backbone_from_subnet(winner)
    narrow = default_spec("resnet20", num_classes=10)
    save_subnet(build(narrow.with_widths([w // 2 for w in narrow.widths])), tmp_path / "narrow")
    narrow.save(tmp_path / "narrow" / "spec.json")  # full-width spec, half-width weights
    with pytest.raises(ModelError, match="weights.safetensors does not fit"):
        backbone_from_subnet(tmp_path / "narrow")
    folder = save_reid_model(build_reid_model("resnet20", seed=0), tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "preprocess.json", "reid.json",
                                                        "spec.json"]
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_reid_model(folder)


def test_normalisation_matches_functional() -> None:
    model = build_reid_model("resnet20", seed=2).eval()
    x = torch.randn(2, 3, 64, 32)
    feat = model.neck(model.pool(model.backbone(x)))
    torch.testing.assert_close(model(x), F.normalize(feat, dim=1))
