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
    FOLDER_FORMAT,
    GeM,
    HeadConfig,
    ModelError,
    ReidModel,
    backbone_from_module,
    backbone_from_subnet,
    backbone_spec,
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


# -- the re-ID model folder as a pruneopt model format (issue 15) ----------------------------------------------------
def _trained_like(seed: int = 3) -> ReidModel:
    """A re-ID model at 64x32 with a non-trivial head (GeM p, neck statistics), as training leaves it."""
    model = build_reid_model("resnet20", HeadConfig(input_size=(64, 32)), seed=seed)
    with torch.no_grad():
        model.pool.p.fill_(2.2)
        model.neck.running_mean.uniform_(-0.1, 0.1)
        model.neck.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_a_reid_model_exports_whole(tmp_path: Path) -> None:
    """export_onnx(load_reid_model(run)) -- an IndexError before -- gives backbone + GeM + BNNeck + L2."""
    from export.onnx import export_onnx
    from export.runners import make_runner

    model = _trained_like()
    save_reid_model(model, tmp_path / "run" / "model")
    loaded = load_reid_model(tmp_path / "run")
    res = export_onnx(loaded, tmp_path / "m.onnx", (3, 64, 32), exporter="legacy", batches=(1, 3))
    assert res.verification is not None and res.verification.passed
    meta = res.metadata
    assert meta.output_kind == "embedding" and meta.normalized and meta.output_dim == model.embed_dim
    x = torch.randn(4, 3, 64, 32)
    got = make_runner("ort-cpu", tmp_path / "m.onnx", threads=1).run(x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    assert float(abs(got - want).max()) <= 1e-5


def test_the_folder_format_reads_model_and_run_folders(tmp_path: Path) -> None:
    from pruneopt.model_formats import find_format, load_model_folder

    model = _trained_like()
    run = tmp_path / "run"
    folder = save_reid_model(model, run / "model")
    winner = save_subnet(build(default_spec("resnet20", num_classes=10)), tmp_path / "winner")
    assert FOLDER_FORMAT.recognises(folder) and FOLDER_FORMAT.recognises(run)
    assert not FOLDER_FORMAT.recognises(winner) and find_format(winner).name == "subnetwork"
    loaded = load_model_folder(run)
    assert loaded.format == "reid" and loaded.folder == folder and isinstance(loaded.model, ReidModel)
    assert loaded.preprocess == Preprocess((3, 64, 32), IMAGENET_MEAN, IMAGENET_STD, output="embedding",
                                           normalized=True)
    (folder / "preprocess.json").unlink()  # a folder written before the record: reid.json implies it
    assert load_model_folder(folder).preprocess == loaded.preprocess


def test_backbone_folders_may_be_reid_models_or_runs(tmp_path: Path) -> None:
    model = _trained_like()
    save_reid_model(model, tmp_path / "run" / "model")
    for path in (tmp_path / "run", tmp_path / "run" / "model"):
        backbone = backbone_from_subnet(path)
        assert backbone.spec == model.spec
        for k, v in backbone.state_dict().items():
            assert torch.equal(v, model.backbone.state_dict()[k]), k
    assert backbone_spec(tmp_path / "run") == model.spec


def test_saving_as_the_model_writes_a_reid_folder_whose_record_fits(tmp_path: Path) -> None:
    """save_subnet (what the search calls for its winner) hands a ReidModel to save_reid_model."""
    model = _trained_like()
    task_record = Preprocess.for_channels((3, 64, 32), IMAGENET_MEAN, IMAGENET_STD, output="embedding")
    folder = save_subnet(model, tmp_path / "winner", task_record)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "preprocess.json", "reid.json",
                                                        "spec.json"]
    assert read_preprocess(folder) == dataclasses.replace(task_record, normalized=True)
    with pytest.raises(ModelError, match="does not fit the model's head: input_shape"):
        save_subnet(model, tmp_path / "other", dataclasses.replace(task_record, input_shape=(3, 128, 64)))


def test_pruneopt_export_and_bench_take_reid_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.bench import describe_model
    from export.metadata import read_metadata
    from pruneopt.cli import main

    save_reid_model(_trained_like(), tmp_path / "t1" / "model")
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path / "t1" / "model"), "--exporter", "legacy", "--verify-batches", "1"])
    assert info.value.code == 0, capsys.readouterr().err
    meta = read_metadata(tmp_path / "t1" / "model" / "model.onnx")
    assert meta.input_shape == (3, 64, 32) and meta.normalized and meta.extra["model_format"] == "reid"
    bm = describe_model(tmp_path / "t1")
    assert bm.input_shape == (3, 64, 32) and bm.normalize and bm.folder == tmp_path / "t1" / "model"
