"""End-to-end searches on a tiny fake Fashion-MNIST: resume after SIGKILL, runner equivalence, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pruneopt.baselines import FINAL_BAND, FINAL_LABELS
from pruneopt.cli import main
from pruneopt.search import SearchConfig, run_search
from pruneopt.seeds import derive_seed
from pruneopt.store import Store

from .test_data import make_fake_dataset

TINY = dict(samples=4, refined_samples=4, band=0.01, parent_epochs=1, batch_size=64, bn_batches=2, finetune_steps=2,
            val_size=60, noise_specs=2, noise_seeds=2, final_epochs=1)
CLI_TINY = ["--samples", "4", "--refined-samples", "4", "--band", "0.01", "--parent-epochs", "1", "--batch-size", "64",
            "--bn-batches", "2", "--finetune-steps", "2", "--val-size", "60", "--noise-specs", "2",
            "--noise-seeds", "2", "--final-epochs", "1"]
DONE = 4 + 4 + 2 * 2  # initial, refined, noise floor (2 specs x 2 seeds)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    make_fake_dataset(root, n_train=300, n_test=120)
    return root


# the fake images are noise, so the parent is near chance by design: every search here goes on with force=True
def cfg(**kw) -> SearchConfig:
    return SearchConfig(**{**TINY, **kw})


def candidate_rows(run: Path) -> list[tuple]:
    with Store.open(run, None, readonly=True) as s:
        return [(r["space"], r["regime"], r["idx"], r["spec_hash"], r["seed"], r["error"], r["flops_fraction"])
                for r in s.rows()]


def winner(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["winner"]


FINAL_THINNING: list[str] = []  # the criterion of every thinning of a final model in the reference search


@pytest.fixture(scope="module")
def reference(fake_data, tmp_path_factory) -> Path:
    """An uninterrupted in-process search (one torch thread for the candidates)."""
    import pruneopt.tasks.classification as classification

    out = tmp_path_factory.mktemp("runs") / "reference"
    real_thin = classification.thin

    def spy(parent, spec, criterion="l1"):
        FINAL_THINNING.append(criterion)
        return real_thin(parent, spec, criterion)

    with pytest.MonkeyPatch.context() as mp:  # the finals run in this process; candidates call their own import
        mp.setattr(classification, "thin", spy)
        run_search(cfg(), out, workers=1, threads=1, data_dir=str(fake_data), show_progress=False, force=True)
    return out


@pytest.mark.slow
def test_search_produces_winner_report_and_database(reference) -> None:
    for name in ("report.md", "summary.json", "config.json", "edf_0.5.png", "error_vs_r_0.5.png",
                 "rstar_by_regime.png", "winner/spec.json", "winner/weights.safetensors", "parent/spec.json"):
        assert (reference / name).is_file(), name
    s = json.loads((reference / "summary.json").read_text())
    assert s["candidates"] == {"done": DONE}
    assert set(s["finals"]) == set(FINAL_LABELS)
    # network slimming keeps the largest-gamma channels; every other final the largest-L1 filters
    fine_tuned = [k for k, f in s["finals"].items() if not f.get("same_as")]
    assert sorted(FINAL_THINNING[-len(fine_tuned):]) == sorted("bn" if k == "bn_gamma" else "l1" for k in fine_tuned)
    for name, f in s["finals"].items():  # the winner and every baseline within +-0.005 of the regime
        assert f["in_final_band"] and abs(f["flops_fraction"] - 0.5) <= FINAL_BAND and 0 <= f["test_error"] <= 1
        assert f["label"] == FINAL_LABELS[name]
    rs = s["regimes"]["0.5"]["r_star"]
    assert rs["ci_low"] <= rs["r_star"] <= rs["ci_high"]
    assert s["config"]["val_size"] == 60 and s["parent"]["val_images"] == 50  # 1/6 of 300
    assert s["parent"]["candidate_val_images"] == 50  # --val-size 60 of a 50-image split: all of them
    searched = [r for r in candidate_rows(reference) if r[0] != "noise"]
    near = [r for r in searched if abs(r[-1] - 0.5) <= FINAL_BAND]
    assert near and s["winner"]["in_final_band"] and s["winner"]["error"] == min(r[-2] for r in near)
    report = (reference / "report.md").read_text()
    assert "Winner vs baselines" in report and FINAL_LABELS["bn_gamma"] in report
    # the parent and the winner record how their inputs are made (Fashion-MNIST: grey 28x28, its mean/std)
    from pruneopt.data.fashion_mnist import MEAN, STD
    from pruneopt.preprocess import read_preprocess

    for folder in ("parent", "winner"):
        pre = read_preprocess(reference / folder)
        assert pre is not None and pre.input_shape == (1, 28, 28) and pre.color == "L"
        assert pre.mean == (MEAN,) and pre.std == (STD,) and pre.output == "logits"


@pytest.mark.slow
def test_analyze_rerenders_from_the_database_alone(reference, capsys) -> None:
    for name in ("report.md", "summary.json", "edf_0.5.png"):
        (reference / name).unlink()
    with pytest.raises(SystemExit) as info:
        main(["analyze", str(reference), "--json"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["candidates"] == {"done": DONE}
    assert (reference / "report.md").is_file() and (reference / "edf_0.5.png").is_file()


@pytest.mark.slow
def test_rerunning_a_finished_search_evaluates_nothing(reference, fake_data) -> None:
    before = candidate_rows(reference)
    run_search(cfg(), reference, workers=1, threads=1, data_dir=str(fake_data), show_progress=False, force=True)
    assert candidate_rows(reference) == before
    with Store.open(reference, None, readonly=True) as s:
        assert set(s.evaluation_counts().values()) == {1}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(reference, fake_data, tmp_path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pruneopt", "search", "--data-dir", str(fake_data), "--out", str(out), *CLI_TINY,
           "--threads", "1", "--no-progress", "--force"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if (out / "search.db").is_file():
            try:
                with sqlite3.connect(out / "search.db", timeout=1) as db:
                    done = db.execute("SELECT COUNT(*) FROM candidates WHERE status = 'done'").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 2:
                break
    assert proc.poll() is None, f"search ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= done < DONE
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert candidate_rows(out) == candidate_rows(reference)
    assert winner(out) == winner(reference)
    with Store.open(out, None, readonly=True) as s:
        counts = s.evaluation_counts()
    assert len(counts) == DONE and set(counts.values()) == {1}  # no candidate evaluated twice


def test_every_candidate_shares_one_fine_tune_seed_and_a_new_seed_changes_the_scores(reference, fake_data,
                                                                                    tmp_path) -> None:
    rows = candidate_rows(reference)
    searched = [r for r in rows if r[0] != "noise"]
    assert {r[4] for r in searched} == {derive_seed(0, "eval")}  # common random numbers: one seed, one data order
    out = tmp_path / "seed1"
    run_search(cfg(seed=1), out, workers=1, threads=1, data_dir=str(fake_data), show_progress=False, force=True)
    other = candidate_rows(out)
    assert {r[4] for r in other if r[0] != "noise"} == {derive_seed(1, "eval")}
    assert [r[5] for r in other] != [r[5] for r in rows]


def test_the_noise_floor_re_evaluates_initial_specs_with_extra_seeds(reference) -> None:
    with Store.open(reference, None, readonly=True) as s:
        floor, initial = s.noise_floor(0.5), s.rows("initial", 0.5)
    seeds = [derive_seed(0, "noise", k) for k in range(2)]
    ranked = sorted(initial, key=lambda r: (r["error"], r["id"]))
    assert [(h, seed) for h, seed, _ in floor] == [(ranked[i]["spec_hash"], k) for i in (0, -1) for k in seeds]
    assert derive_seed(0, "eval") not in seeds and all(0 <= e <= 1 for _, _, e in floor)


@pytest.mark.slow
def test_local_pool_gives_the_same_results(reference, fake_data, tmp_path) -> None:
    out = tmp_path / "pool"
    run_search(cfg(), out, workers=2, threads=1, data_dir=str(fake_data), show_progress=False, force=True)
    assert candidate_rows(out) == candidate_rows(reference)
    assert winner(out) == winner(reference)


@pytest.mark.slow
def test_ray_backend_gives_the_same_results(reference, fake_data, tmp_path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    run_search(cfg(), out, workers=2, threads=1, backend="ray", data_dir=str(fake_data),
               show_progress=False, force=True)
    assert candidate_rows(out) == candidate_rows(reference)
    with Store.open(out, None, readonly=True) as s:
        assert all(r["worker"].startswith("ray:") for r in s.rows())


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_a_different_config_on_an_existing_run_is_refused(reference, fake_data, capsys) -> None:
    code, err = run_cli(capsys, "search", "--data-dir", str(fake_data), "--out", str(reference), *CLI_TINY[:-2],
                        "--final-epochs", "3", "--threads", "1", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "different config" in err and "final_epochs" in err


@pytest.mark.parametrize("argv,match", [
    (["--regimes", "0.5,abc"], "--regimes"),
    (["--regimes", "1.5"], r"\(0, 1\]"),
    (["--samples", "2"], "at least 4"),
    (["--arch", "vgg"], "unknown architecture"),
    (["--eps", "2"], "--eps"),
])
def test_bad_search_config(capsys, tmp_path, fake_data, argv, match) -> None:
    code, err = run_cli(capsys, "search", "--data-dir", str(fake_data), "--out", str(tmp_path / "x"), *argv)
    assert code == 2 and err.count("\n") == 1
    assert __import__("re").search(match, err), err


def test_missing_data_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    from pruneopt.data import fashion_mnist as fm

    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNEOPT_DATA", raising=False)
    code, err = run_cli(capsys, "search", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r"),
                        "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "Fashion-MNIST not found" in err
    assert not (tmp_path / "r").exists()  # nothing half-created


def test_analyze_of_a_non_run(capsys, tmp_path) -> None:
    code, err = run_cli(capsys, "analyze", str(tmp_path))
    assert code == 2 and "not a search run" in err


def test_candidate_latency_is_measured_in_onnx_runtime(fake_data, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import torch

    from pruneopt.checkpoint import save_subnet
    from pruneopt.models import build, default_spec
    from pruneopt.space import PruningSpace, Regime
    from pruneopt.tasks.classification import ClassificationEvaluator, ClassificationSettings, DataSettings

    parent = build(default_spec("resnet20", in_chans=1, num_classes=10))
    save_subnet(parent, tmp_path / "parent")
    spec = next(PruningSpace(parent.spec, input_hw=(28, 28)).sample(1, Regime(0.5, 0.05)).specs())
    ev = ClassificationEvaluator(ClassificationSettings(
        parent_dir=str(tmp_path / "parent"), data=DataSettings(data_dir=str(fake_data)), bn_batches=1,
        finetune_steps=1, val_size=20, latency=True, latency_batch=16))
    before = torch.get_num_threads()
    r = ev.evaluate(spec, seed=0)
    assert torch.get_num_threads() == before
    assert 0 < r.latency_b1_ms < r.latency_bn_ms


def test_candidates_are_scored_on_the_whole_validation_split_by_default(fake_data, tmp_path) -> None:
    from pruneopt.checkpoint import save_subnet
    from pruneopt.models import build, default_spec
    from pruneopt.tasks.classification import ClassificationEvaluator, ClassificationSettings, DataSettings

    assert SearchConfig().section.val_size is None and ClassificationSettings("p").val_size is None
    save_subnet(build(default_spec("resnet20", in_chans=1, num_classes=10)), tmp_path / "parent")
    data = DataSettings(data_dir=str(fake_data))
    whole = ClassificationEvaluator(ClassificationSettings(parent_dir=str(tmp_path / "parent"), data=data))
    assert len(whole.val) == len(data.load()[1]) == 50
    some = ClassificationEvaluator(ClassificationSettings(parent_dir=str(tmp_path / "parent"), data=data, val_size=20))
    assert len(some.val) == 20
