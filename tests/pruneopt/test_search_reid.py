"""``pruneopt search --task reid`` end to end on a tiny synthetic re-ID dataset: candidates scored by 1 - val mAP
after a short unsupervised fine-tune, finals by test mAP, resume, --val-data, and one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pruneopt.baselines import FINAL_BAND, FINAL_LABELS
from pruneopt.checkpoint import load_subnet, save_subnet
from pruneopt.cli import cli, main
from pruneopt.complexity import count
from pruneopt.models import ModelSpec, build, default_spec
from pruneopt.search_config import SearchConfig
from pruneopt.seeds import derive_seed
from pruneopt.store import Store
from pruneopt.tasks.registry import get_task
from pruneopt.thinning import thin

pytest.importorskip("faiss")

from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, read_preprocess  # noqa: E402
from reidserve.cluster import ClusterConfig  # noqa: E402
from reidserve.data import load_dataset  # noqa: E402
from reidserve.data.synth import SynthConfig, generate  # noqa: E402
from reidserve.model import load_reid_model  # noqa: E402
from reidserve.search_task import ReidSettings  # noqa: E402
from reidserve.train import finetune_and_score  # noqa: E402
from reidserve.train.images import DecodedImages  # noqa: E402
from reidserve.train.recalibrate import recalibrate_bn  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = SynthConfig(ids=16, cams=3, seed=1, imgs_per_id=(3, 4), size=(64, 32), distractors=4)
CLUSTER = ClusterConfig(k1=6, k2=2, eps=0.4, outliers="singleton")
FT = {"batch": (4, 2), "cluster": CLUSTER, "threads": 1}  # what CLI_TINY asks of every fine-tune
BN_BATCHES = 4  # the default --bn-batches: each candidate's batch norm is recalibrated on 4 batches of P x K images
CLI_TINY = ["--samples", "4", "--refined-samples", "4", "--band", "0.05", "--finetune-steps", "2",
            "--reid-batch", "4x2", "--k1", "6", "--k2", "2", "--cluster-eps", "0.4", "--outliers", "singleton",
            "--final-steps", "4", "--final-rounds", "2", "--workers", "1", "--threads", "1", "--no-progress",
            "--noise-specs", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reid") / "data"
    generate(TINY, root)
    return root


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet20 classification network (RGB stem, 10-class head): the search makes a re-ID backbone of it."""
    torch.manual_seed(0)
    return save_subnet(build(default_spec("resnet20", in_chans=3, num_classes=10)), tmp_path_factory.mktemp("p"))


def search_args(data: Path, parent: Path, out: Path, *extra: str) -> list[str]:
    return ["search", "--task", "reid", "--data", str(data), "--parent", str(parent), "--size", "64x32",
            "--out", str(out), *CLI_TINY, *extra]


@pytest.fixture(scope="module")
def run(tiny: Path, parent: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reid"
    before = torch.get_num_threads()
    r = CliRunner().invoke(cli, search_args(tiny, parent, out))
    torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    assert "test mAP" in r.output and "test accuracy" not in r.output
    return out


def recalibrated(model: torch.nn.Module, data: Path, size: tuple[int, int], seed: int) -> torch.nn.Module:
    """What a candidate gets after thinning: its batch norm recalibrated on P x K training images of ``data``."""
    images = DecodedImages(load_dataset(data).train, size, cache=True)
    return recalibrate_bn(model, images, BN_BATCHES, 4 * 2, derive_seed(seed, "bn"))


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def candidates(run: Path) -> list[dict]:
    with Store.open(run, None, readonly=True) as s:
        return s.rows()


@pytest.mark.slow
def test_summary_has_map_finals_and_a_loadable_winner_in_the_regime(run: Path) -> None:
    s = summary(run)
    assert s["task"] == "reid" and s["metric"] == "mAP" and s["candidates"] == {"done": 8}
    assert set(s["finals"]) == set(FINAL_LABELS)
    for f in s["finals"].values():
        assert 0.0 <= f["test_map"] <= 1.0 and f["test_error"] == pytest.approx(1 - f["test_map"], abs=1e-12)
        assert abs(f["flops_fraction"] - 0.5) <= 0.05 + 1e-9
    rows = candidates(run)
    near = [r for r in rows if abs(r["flops_fraction"] - 0.5) <= FINAL_BAND] or rows  # the winner's band
    assert s["winner"]["error"] == min(r["error"] for r in near)
    parent = load_subnet(run / "parent")  # stored as the re-ID backbone: RGB, features only, last stride 1
    assert parent.spec.in_chans == 3 and parent.spec.features_only and parent.spec.last_stride == 1
    winner = load_reid_model(run / "winner")  # the whole fine-tuned winner: backbone, GeM, BNNeck, L2
    assert winner.spec.to_dict() == s["finals"]["winner"]["spec"]
    frac = count(winner.spec, (64, 32)).macs / count(parent.spec, (64, 32)).macs
    assert frac == pytest.approx(s["finals"]["winner"]["flops_fraction"]) and abs(frac - 0.5) <= 0.05 + 1e-9
    reid_model = load_reid_model(run / "final" / "winner" / "run" / "model")  # the fine-tuned winner with its head
    assert winner.state_dict().keys() == reid_model.state_dict().keys()
    for k, v in winner.state_dict().items():
        assert torch.equal(v, reid_model.state_dict()[k]), k
    # each folder records what it is: the parent a backbone (exported alone: an unnormalised embedding), the
    # winner a whole re-ID model (an L2-normalised embedding), both on ImageNet-normalised RGB at --size
    backbone = Preprocess((3, 64, 32), IMAGENET_MEAN, IMAGENET_STD, output="embedding")
    assert read_preprocess(run / "parent") == backbone
    assert read_preprocess(run / "final" / "winner" / "init") == backbone
    assert read_preprocess(run / "winner") == Preprocess((3, 64, 32), IMAGENET_MEAN, IMAGENET_STD,
                                                         output="embedding", normalized=True)
    report = (run / "report.md").read_text()
    assert "test mAP" in report and "accuracy" not in report and "top-1" not in report
    assert s["selection"]["same_query_gallery"] and "optimistically biased" in report
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["task"] == "reid" and cfg["size"] == [64, 32] and "final_epochs" not in cfg
    assert SearchConfig.from_dict(cfg).to_dict() == cfg


@pytest.mark.slow
def test_candidate_errors_are_one_minus_the_recomputed_map(run: Path, tiny: Path) -> None:
    rows = candidates(run)
    assert len(rows) == 8 and all(0.0 <= r["error"] <= 1.0 for r in rows)
    row = rows[-1]  # a refined candidate
    spec = ModelSpec.from_json(row["spec"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = ReidSettings(parent_dir=str(run / "parent"), data=str(tiny), steps=2, size=(64, 32), batch=(4, 2),
                                k1=6, k2=2, cluster_eps=0.4, outliers="singleton")
        assert get_task("reid").make_evaluator(settings.to_dict()).evaluate(spec, row["seed"]).error == row["error"]
        model = recalibrated(thin(load_subnet(run / "parent"), spec), tiny, (64, 32), row["seed"])
        m_ap = finetune_and_score(model, tiny, 2, row["seed"], size=(64, 32), **FT)
    finally:
        torch.set_num_threads(before)
    assert row["error"] == 1.0 - m_ap


@pytest.mark.slow
def test_the_winners_final_is_finetune_and_score_with_the_final_budget(run: Path, tiny: Path) -> None:
    s = summary(run)
    spec = ModelSpec.from_dict(s["finals"]["winner"]["spec"])
    m_ap = finetune_and_score(thin(load_subnet(run / "parent"), spec), tiny, 4, derive_seed(0, "final"), rounds=2,
                              size=(64, 32), **FT)
    assert s["finals"]["winner"]["test_map"] == m_ap


@pytest.mark.slow
def test_rerun_resumes_and_a_changed_config_is_refused(run: Path, tiny: Path, parent: Path, capsys) -> None:
    before = summary(run)
    r = CliRunner().invoke(cli, search_args(tiny, parent, run))
    assert r.exit_code == 0, r.output
    with Store.open(run, None, readonly=True) as s:
        assert set(s.evaluation_counts().values()) == {1}  # nothing evaluated twice
    after = summary(run)
    assert after["finals"] == before["finals"] and after["winner"] == before["winner"]
    code, err = run_cli(capsys, *search_args(tiny, parent, run, "--final-steps", "6"))
    assert code == 2 and err.count("\n") == 1 and "different config" in err and "final_steps" in err


@pytest.mark.slow
def test_a_local_process_pool_gives_the_same_candidates(run: Path, tiny: Path, parent: Path, tmp_path: Path) -> None:
    """Spawned workers import the re-ID evaluator on demand and score every candidate exactly as in-process."""
    out = tmp_path / "pool"
    r = CliRunner().invoke(cli, [*search_args(tiny, parent, out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    key = ("space", "regime", "idx", "seed", "spec_hash", "error")
    assert [[c[k] for k in key] for c in candidates(out)] == [[c[k] for k in key] for c in candidates(run)]
    assert len({c["worker"] for c in candidates(out)}) >= 2
    assert summary(out)["finals"] == summary(run)["finals"]


@pytest.mark.slow
def test_val_data_scores_the_candidates_and_the_finals_use_data(tiny: Path, parent: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    generate(SynthConfig(ids=12, cams=3, seed=7, imgs_per_id=(3, 4), size=(64, 32), distractors=2), val)
    out = tmp_path / "run"
    before = torch.get_num_threads()
    r = CliRunner().invoke(cli, [*search_args(tiny, parent, out, "--val-data", str(val)), "--size", "32x16"])
    assert r.exit_code == 0, r.output
    assert "optimistically" not in r.output
    s = summary(out)
    assert s["selection"] == {"candidates_scored_on": str(val.resolve()), "finals_scored_on": str(tiny.resolve()),
                              "same_query_gallery": False, "note": s["selection"]["note"]}
    assert "optimistically" not in (out / "report.md").read_text()
    row = candidates(out)[0]
    torch.set_num_threads(1)
    try:
        model = recalibrated(thin(load_subnet(out / "parent"), ModelSpec.from_json(row["spec"])), val, (32, 16),
                             row["seed"])
        m_ap = finetune_and_score(model, val, 2, row["seed"], size=(32, 16), **FT)
    finally:
        torch.set_num_threads(before)
    assert row["error"] == 1.0 - m_ap
    assert s["parent"]["val_map"] != s["parent"]["test_map"]  # scored on two different query/gallery splits


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, capsys.readouterr().err


def test_missing_parent_is_one_line(capsys, tiny: Path, tmp_path: Path) -> None:
    code, err = run_cli(capsys, "search", "--task", "reid", "--data", str(tiny), "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("pruneopt: error: ")
    assert "needs --parent" in err and "bench/tmp_train.py pretrain" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,match", [
    (["--task", "reid", "--data", "{empty}"], "no re-ID dataset found"),
    (["--task", "reid", "--data", "{missing}"], "not a folder"),
    (["--task", "reid"], "needs --data DIR"),
    (["--task", "reid", "--data", "fashion-mnist"], "needs --data DIR"),
    (["--task", "reid", "--data", "{tiny}", "--val-data", "{empty}"], "--val-data .*no re-ID dataset found"),
    (["--task", "reid", "--data", "{tiny}", "--size", "64"], "--size must look like HxW"),
    (["--task", "reid", "--data", "{tiny}", "--reid-batch", "1x4"], "--reid-batch needs P >= 2"),
    (["--task", "reid", "--data", "{tiny}", "--val-size", "100"], "--val-size applies to --task classification"),
    (["--task", "reid", "--data", "{tiny}", "--arch", "resnet56"], "pass --arch resnet20"),
    (["--data", "{tiny}"], r"looks like a re-ID dataset .*--task reid"),
    (["--val-data", "{tiny}"], "--val-data applies to --task reid only"),
    (["--final-steps", "9"], "--final-steps applies to --task reid only"),
])
def test_bad_reid_input_is_one_line_and_exit_2(capsys, tiny: Path, parent: Path, tmp_path: Path, argv, match) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "tiny": tiny}
    argv = [a.format(**paths) for a in argv]
    if "--task" in argv:
        argv += ["--parent", str(parent)]
    code, err = run_cli(capsys, "search", *argv, "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and err.startswith("pruneopt: error: "), err
    assert re.search(match, err), err


def test_help_describes_the_reid_task() -> None:
    r = CliRunner().invoke(cli, ["search", "--help"])
    assert r.exit_code == 0
    for option in ("--task", "--val-data", "--size", "--reid-batch", "--final-steps", "--cluster-eps", "--outliers"):
        assert option in r.output, option
    assert "mAP" in r.output


def test_config_round_trip_and_classification_configs_unchanged() -> None:
    reid = SearchConfig.quick(task="reid", data="/d", parent="/p", size=(64, 32))
    assert reid.section.finetune_steps == 20 and reid.section.reid_batch == (8, 4)
    assert reid.section.finetune_lr == 3.5e-4
    assert SearchConfig.from_dict(json.loads(json.dumps(reid.to_dict()))) == reid
    cls = SearchConfig().to_dict()
    assert cls["finetune_steps"] == 60 and cls["finetune_lr"] == 0.01
    assert not {"size", "val_data", "reid_batch", "final_steps", "k1"} & set(cls)  # old runs still resume


@pytest.mark.slow
def test_importing_pruneopt_does_not_import_reidserve() -> None:
    code = ("import sys, pruneopt, pruneopt.search, pruneopt.evaluate, pruneopt.cli, pruneopt.pools; "
            "from pruneopt.tasks.registry import get_task; get_task('classification'); "
            "bad = [m for m in ('reidserve', 'faiss', 'reidserve.search_task') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


# -- the joints of a re-ID search (issue 15) -------------------------------------------------------------------------
@pytest.mark.slow
def test_the_winner_folder_is_what_every_consumer_takes(run: Path, tiny: Path, tmp_path: Path) -> None:
    """winner/ is the scored model: `reidserve eval --model` gives the final's test mAP, `pruneopt export` exports
    it whole, `reidserve train --backbone` and a later search's --parent start from its backbone."""
    from reidserve.cli import cli as reidserve_main
    from reidserve.search_task import _load_parent

    s = summary(run)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = CliRunner().invoke(reidserve_main, ["eval", "--model", str(run / "winner"), "--data", str(tiny),
                                                "--json", "--threads", "1"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["mAP"] == pytest.approx(s["finals"]["winner"]["test_map"], abs=1e-6)
        r = CliRunner().invoke(cli, ["export", str(run / "winner"), "--out", str(tmp_path / "w.onnx"),
                                     "--exporter", "legacy", "--verify-batches", "1,3", "--json"])
        assert r.exit_code == 0, r.output
        meta = json.loads(r.stdout.strip().splitlines()[-1])["metadata"]
        winner = load_reid_model(run / "winner")
        assert json.loads(meta["pruneopt.input_shape"]) == [3, 64, 32] and meta["pruneopt.normalized"] == "true"
        assert json.loads(meta["pruneopt.output_dim"]) == winner.embed_dim  # the BNNeck's width, not a pooled map
        r = CliRunner().invoke(reidserve_main, ["train", "--data", str(tiny), "--backbone", str(run / "winner"),
                                                "--out", str(tmp_path / "t"), "--size", "64x32", "--epochs", "1",
                                                "--iters", "1", "--batch", "4x2", "--k1", "6", "--k2", "2",
                                                "--eps", "0.4", "--outliers", "singleton", "--threads", "1"])
        assert r.exit_code == 0, r.output
    finally:
        torch.set_num_threads(before)
    assert get_task("reid").from_command_line({"data": str(tiny), "parent": str(run / "winner")})["arch"] == "resnet20"
    for parent in (_load_parent(str(run / "winner"), "resnet20"), load_reid_model(tmp_path / "t").backbone):
        assert parent.spec == winner.spec
    for k, v in _load_parent(str(run / "winner"), "resnet20").state_dict().items():
        assert torch.equal(v, winner.backbone.state_dict()[k]), k


@pytest.mark.slow
def test_a_training_run_folder_is_a_parent(tiny: Path, parent: Path, tmp_path: Path) -> None:
    """--parent takes what `reidserve eval --model` takes: a `reidserve train` run folder too."""
    from reidserve.search_task import _load_parent
    from reidserve.train import finetune_config, train_reid

    cfg = finetune_config(tiny, 1, 0, size=(64, 32), batch=(4, 2), cluster=CLUSTER, threads=1, backbone=parent)
    train_reid(cfg, tmp_path / "t1", log=lambda line: None)
    values = get_task("reid").from_command_line({"data": str(tiny), "parent": str(tmp_path / "t1")})
    assert values["arch"] == "resnet20"
    backbone = _load_parent(str(tmp_path / "t1"), "resnet20")
    trained = load_reid_model(tmp_path / "t1")
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, trained.backbone.state_dict()[k]), k


@pytest.mark.slow
def test_search_finetunes_fall_back_to_every_image_as_an_identity(tiny: Path, parent: Path, tmp_path: Path) -> None:
    """DBSCAN with the default settings finds 2 big clusters and no outliers on the tiny data: `reidserve train`
    stops (its fallback, outliers as singletons, adds none), the search's fine-tunes train on every image as its
    own identity; a batch larger than the data fails naming the search's option."""
    from reidserve.train import TrainError, finetune_config, train_reid
    from reidserve.train.finetune import SearchTrainer

    cfg = finetune_config(tiny, 2, 0, size=(64, 32), batch=(4, 2), cluster=ClusterConfig(), threads=1,
                          backbone=parent)
    with pytest.raises(TrainError, match="fewer than P=4"):
        train_reid(cfg, tmp_path / "train", log=lambda line: None)
    lines: list[str] = []
    res = train_reid(cfg, tmp_path / "search", log=lines.append, trainer_cls=SearchTrainer)
    assert res.records[0]["fallback"] == "all_singletons" and 0.0 < res.records[-1]["val"]["mAP"] <= 1.0
    assert any("its own identity" in line for line in lines)
    log = [json.loads(line) for line in (tmp_path / "search" / "log.jsonl").read_text().splitlines()]
    assert log[0]["fallback"] == "all_singletons"
    m_ap = finetune_and_score(load_subnet(parent), tiny, 2, 0, size=(64, 32), batch=(4, 2), cluster=ClusterConfig(),
                              threads=1)
    assert 0.0 < m_ap <= 1.0
    with pytest.raises(TrainError, match="--reid-batch") as info:
        finetune_and_score(load_subnet(parent), tiny, 1, 0, size=(64, 32), batch=(80, 1), cluster=CLUSTER, threads=1)
    assert "--batch" not in str(info.value) and "--eps" not in str(info.value)


@pytest.mark.slow
def test_bn_batches_zero_skips_the_recalibration(run: Path, tiny: Path) -> None:
    row = candidates(run)[0]
    spec = ModelSpec.from_json(row["spec"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kw = dict(parent_dir=str(run / "parent"), data=str(tiny), steps=2, size=(64, 32), batch=(4, 2), k1=6, k2=2,
                  cluster_eps=0.4, outliers="singleton")
        plain = get_task("reid").make_evaluator(ReidSettings(**kw, bn_batches=0).to_dict()).evaluate(spec, row["seed"])
        m_ap = finetune_and_score(thin(load_subnet(run / "parent"), spec), tiny, 2, row["seed"], size=(64, 32), **FT)
    finally:
        torch.set_num_threads(before)
    assert plain.error == 1.0 - m_ap
