"""`pruneopt search` on the user's own data and network: an image folder with a torchvision-named state-dict parent
(with and without head replacement), the stop on a parent near chance, and every check that must fail before any
training (each in seconds, before the run folder exists)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from pruneopt.baselines import FINAL_LABELS
from pruneopt.checkpoint import load_subnet, save_subnet
from pruneopt.cli import main
from pruneopt.models import build, default_spec
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, read_preprocess
from pruneopt.search import Context, ParentNearChance, check_parent

from .imagedata import make_image_folder
from .test_data import make_fake_dataset

TINY = ["--samples", "4", "--refined-samples", "4", "--band", "0.05", "--batch-size", "16", "--bn-batches", "2",
        "--finetune-steps", "2", "--val-size", "12", "--final-epochs", "1", "--threads", "1", "--no-progress",
        "--loader-workers", "0", "--noise-specs", "0"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "imgs", classes=3, per_class=30, held_out=6,
                             size=(32, 32))


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(build(default_spec("resnet18")).state_dict(), path)  # torchvision naming, a 1000-class head
    return path


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_a_state_dict_parent_on_an_image_folder_with_head_replacement(folder: Path, r18: Path, tmp_path: Path,
                                                                       capsys) -> None:
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "search", "--data", str(folder), "--parent", str(r18), "--head-epochs", "2",
                            "--out", str(out), *TINY)
    assert code == 0, err
    s = summary(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["arch"] == "resnet18" and cfg["parent"] == str(r18) and cfg["data"] == str(folder.resolve())
    assert cfg["head_epochs"] == 2 and "val_fraction" not in cfg  # later settings are stored when not default
    p = s["parent"]
    assert p["kind"] == "state dict" and p["source"] == str(r18)
    assert p["head"] == {"from_classes": 1000, "to_classes": 3, "epochs": 2, "module": "fc"}
    assert "image folder (train/val)" in p["data"] and "3 classes, 90 training and 18 test images" in p["data"]
    assert set(s["finals"]) == set(FINAL_LABELS) and s["candidates"] == {"done": 8}
    for folder_name in ("parent", "winner"):
        pre = read_preprocess(out / folder_name)
        assert pre is not None and pre.input_shape == (3, 32, 32) and pre.color == "RGB"
        assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD  # what torchvision's weights expect
        assert load_subnet(out / folder_name).spec.num_classes == 3
    report = (out / "report.md").read_text()
    assert "Head replacement: the parent's 1000-class classifier (fc) was replaced by a 3-class one" in report
    assert "Parent: val error" in report and all(f"| {label}" in report for label in FINAL_LABELS.values())
    assert "Data: image folder (train/val)" in report
    assert "note: the parent's 1000-class head was replaced by a 3-class one and trained 2 epoch(s)" in stdout
    assert "its 1000-class head replaced" in err


@pytest.mark.slow
def test_a_state_dict_parent_of_the_datas_classes_is_used_as_it_is(folder: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    weights = build(default_spec("resnet20", num_classes=3)).state_dict()
    torch.save({"state_dict": weights}, tmp_path / "r20.pt")
    out = tmp_path / "run"
    code, _, err = run(capsys, "search", "--data", str(folder), "--parent", str(tmp_path / "r20.pt"), "--mean", "0.5",
                       "--std", "0.25", "--out", str(out), *TINY, "--force")
    assert code == 0, err
    p = summary(out)["parent"]
    assert p["head"] is None and p["kind"] == "state dict" and "Head replacement" not in (out / "report.md").read_text()
    parent = load_subnet(out / "parent").state_dict()
    assert all(torch.equal(parent[k], v) for k, v in weights.items())  # nothing trained before the search
    pre = read_preprocess(out / "parent")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.25, 0.25, 0.25)  # --mean/--std, one value per channel


@pytest.mark.slow
def test_a_parent_near_chance_stops_the_search_until_forced(folder: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = build(default_spec("resnet20", num_classes=3))
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()  # every image gets class 0: error 2/3 on balanced classes, exactly a guess's
    save_subnet(model, tmp_path / "guesser")
    out = tmp_path / "run"
    argv = ["search", "--data", str(folder), "--parent", str(tmp_path / "guesser"), "--out", str(out), *TINY]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("pruneopt: error:") == 1 and err.splitlines()[-1].startswith("pruneopt: error:")
    assert re.search(r"the parent's validation error 0\.667 is near chance \(0\.667\): .*pass a parent trained on "
                     r"this data \(--parent\), or train one in the run .*--force goes on anyway", err), err
    weights = out / "parent" / "weights.safetensors"
    stamp = weights.stat().st_mtime_ns
    code, _, err = run(capsys, *argv)  # stopped again, from the recorded parent
    assert code == 2 and "near chance" in err
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert "going on (--force)" in err and weights.stat().st_mtime_ns == stamp  # the parent was not redone
    assert summary(out)["candidates"] == {"done": 8}


def test_the_advice_for_a_parent_trained_in_the_run(tmp_path: Path) -> None:
    from pruneopt.search import SearchConfig
    from pruneopt.store import Store

    cfg = SearchConfig()
    with Store.open(tmp_path / "r", cfg.to_dict()) as store:
        ctx = Context(cfg, tmp_path / "r", store)
        record = {"val_error": 0.85, "chance_error": 0.9,
                  "near_chance_advice": "train it longer (--parent-epochs N; it had 1) or pass a trained one"}
        with pytest.raises(ParentNearChance, match=r"0\.850 is near chance \(0\.900\): .*--parent-epochs N; it had 1"):
            check_parent(ctx, record)
        check_parent(ctx, {**record, "val_error": 0.80})  # removes more than 10% of a guess's errors: goes on
        check_parent(ctx, {"val_error": 0.99})  # a task that records no chance level is never stopped
        ctx.force = True
        check_parent(ctx, record)
        assert "going on (--force)" in ctx.log[-1]


# -- every check before training --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, folder: Path, r18: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    empty = make_image_folder(root / "empty", classes=2, per_class=3, held_out=1, size=(32, 32))
    (empty / "train" / "c9").mkdir()
    stray = make_image_folder(root / "stray", classes=2, per_class=3, held_out=1, size=(32, 32))
    (stray / "val" / "c1").rename(stray / "val" / "zebra")
    (root / "junk.pth").write_bytes(b"junk")
    (root / "notes.txt").write_text("x")
    save_subnet(build(default_spec("resnet20", num_classes=3)), root / "noweights")
    (root / "noweights" / "weights.safetensors").unlink()
    make_fake_dataset(root / "fmnist-elsewhere")
    (root / "no-fmnist").mkdir()
    return {"empty": empty, "stray": stray, "junk": root / "junk.pth", "txt": root / "notes.txt",
            "noweights": root / "noweights", "fmnist": root / "fmnist-elsewhere", "nofmnist": root / "no-fmnist"}


CASES = [
    ("ratios", ["--r-min", "0.9", "--r-max", "0.5"], r"keep ratios need 0 < r_min <= r_max <= 1"),
    ("rounding", ["--round-to", "0"], r"round_to must be >= 1"),
    ("unreachable band", ["--regimes", "0.05", "--r-min", "0.6"], r"regime 0.05 \+- 0.05 .* out of this space's reach"),
    ("tail band", ["--regimes", "0.99", "--band", "0.002", "--r-min", "0.2"], r"only \d+ of 4 subnetworks in regime"),
    ("empty class", ["--data", "{empty}"], r"c9: empty class folder"),
    ("val class not in train", ["--data", "{stray}"], r"class folder\(s\) zebra are not in"),
    ("no data folder", ["--data", "/no/such/data"], r"neither fashion-mnist, cifar10, cifar100 nor a folder"),
    ("data-dir with a folder", ["--data", "{folder}", "--data-dir", "{folder}"], r"--data-dir is for --data"),
    ("cifar without its folder", ["--data", "cifar10"], r"--data cifar10 needs --data-dir"),
    ("data-dir without the data", ["--data-dir", "{nofmnist}"], r"Fashion-MNIST not found in --data-dir"),
    ("parent suffix", ["--parent", "{txt}"], r"a state-dict file must end in .pth, .pt, .safetensors"),
    ("parent unreadable", ["--parent", "{junk}"], r"cannot read this state dict"),
    ("parent keys", ["--parent", "{r18}", "--arch", "resnet50"], r"does not fit a full-width resnet50.*missing"),
    ("parent weights", ["--parent", "{noweights}"], r"weights.safetensors is missing"),
    ("input channels", ["--parent", "{r18}", "--input", "1x32x32"], r"--input has 1 channel\(s\) but --parent"),
    ("mean values", ["--mean", "0.1,0.2"], r"--mean needs 1 or 3 values"),
    ("device", ["--device", "cuda:7"], r"--device cuda:7: torch sees"),
    ("val fraction", ["--val-fraction", "0.7"], r"--val-fraction must be in \(0, 0.5\)"),
    ("head epochs", ["--head-epochs", "0"], r"--head-epochs must be >= 1"),
    ("batch larger than the data", ["--batch-size", "100"], r"75 training images after holding out 15 .* needs 100"),
]


@pytest.mark.parametrize("name,argv,match", CASES, ids=[c[0] for c in CASES])
def test_every_bad_option_fails_in_seconds_before_training(name: str, argv: list[str], match: str, folder: Path,
                                                           r18: Path, broken: dict[str, Path], tmp_path: Path,
                                                           capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEOPT_DATA", str(broken["fmnist"]))  # a copy elsewhere must not be used for --data-dir
    paths = {**broken, "folder": folder, "r18": r18}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    if "--data" not in argv and "--data-dir" not in argv:
        argv = ["--data", str(folder), *argv]
    if name == "cifar without its folder":
        monkeypatch.delenv("PRUNEOPT_DATA")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    code, _, err = run(capsys, "search", *TINY, *argv, "--out", str(out))  # the case's options win
    elapsed = time.perf_counter() - t0
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(match, err), err
    assert not out.exists()  # nothing created, nothing trained
    assert elapsed < 20, f"{name}: {elapsed:.1f} s"
