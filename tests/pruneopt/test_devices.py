"""The device plumbing, on a machine without a GPU: --device auto|cpu|cuda resolved (never silently the wrong one),
one evaluation worker per GPU each pinned to its own device (a faked device count), Ray actors requesting a GPU,
the autocast policy, and the settings stored as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pruneopt import devices
from pruneopt.cli import main, search_cmds
from pruneopt.errors import PruneoptError
from pruneopt.pools import actor_options, make_evaluation_pool, on_device
from pruneopt.search_config import SearchConfig
from pruneopt.store import CandidateJob

from .test_tasks import add_entry_points


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "visible_gpus", lambda: 2)


def test_devices_are_resolved_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "visible_gpus", lambda: 0)
    assert devices.resolve_device("auto") == "cpu" and devices.resolve_device("CPU") == "cpu"
    for text in ("cuda", "cuda:0"):
        with pytest.raises(PruneoptError, match=f"--device {text}: torch sees no CUDA device"):
            devices.resolve_device(text)
    with pytest.raises(PruneoptError, match="--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        devices.resolve_device("gpu")
    monkeypatch.setattr(devices, "visible_gpus", lambda: 2)
    assert devices.resolve_device("auto") == "cuda" and devices.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(PruneoptError, match=r"torch sees 2 CUDA device\(s\), cuda:0 to cuda:1"):
        devices.resolve_device("cuda:2")


def test_one_worker_per_gpu_each_on_its_own(two_gpus: None) -> None:
    assert devices.default_workers("cuda") == 2 and devices.default_workers("cpu") == 1
    assert devices.default_workers("cuda:1") == 1
    assert devices.worker_devices("cuda", 2) == ["cuda:0", "cuda:1"]
    assert devices.worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert devices.worker_devices("cuda:1", 2) == ["cuda:1", "cuda:1"]
    assert devices.worker_devices("cpu", 4) is None


def test_precision_follows_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices.precision_for("cpu") == devices.FLOAT32
    monkeypatch.setattr(devices, "bf16_supported", lambda: True)
    assert devices.precision_for("cuda:0") == devices.Precision(torch.bfloat16, scaler=False)
    monkeypatch.setattr(devices, "bf16_supported", lambda: False)
    assert devices.precision_for("cuda") == devices.Precision(torch.float16, scaler=True)


def test_settings_follow_each_workers_device() -> None:
    settings = {"parent_dir": "/p", "device": "cuda"}
    assert on_device(settings, "cuda:1") == {"parent_dir": "/p", "device": "cuda:1"}
    assert on_device(settings, None) is settings and on_device({"x": 1}, "cuda:1") == {"x": 1}
    assert actor_options(2, gpus=True) == {"num_cpus": 2, "num_gpus": 1}
    assert actor_options(3, gpus=False) == {"num_cpus": 3}


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_entry_points(tmp_path / "site", monkeypatch, "toy = tests.pruneopt.toy_task:TASK")


@pytest.mark.slow
def test_spawned_workers_are_pinned_to_distinct_devices(toy: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker process takes the next device as it starts (checked on the initializer itself, then through two
    spawned processes, whose every result names a device of the list)."""
    from multiprocessing import get_context

    from pruneopt import pools
    from pruneopt.checkpoint import save_subnet
    from pruneopt.models import build, default_spec
    from pruneopt.space import PruningSpace, Regime

    parent = build(default_spec("resnet20"))
    save_subnet(parent, tmp_path / "parent")
    settings = {"parent_dir": str(tmp_path / "parent"), "target_ratio": 100.0, "noise": 0.0, "device": "cuda"}
    built: list[dict[str, Any]] = []
    real = pools.make_evaluator

    def recording(task: str, s: dict[str, Any], device: str | None = None) -> Any:
        built.append(pools.on_device(s, device))
        return real(task, s, device)

    monkeypatch.setattr(pools, "make_evaluator", recording)
    counter = get_context("spawn").Value("i", 0)
    names = []
    before = torch.get_num_threads()
    for _ in range(3):
        pools._init_worker("toy", settings, 1, ["cuda:0", "cuda:1"], counter)
        names.append(pools._WORKER[1])  # type: ignore[index]
    torch.set_num_threads(before)
    assert [n.rsplit(":", 2)[1:] for n in names] == [["cuda", "0"], ["cuda", "1"], ["cuda", "0"]]
    assert [b["device"] for b in built] == ["cuda:0", "cuda:1", "cuda:0"]  # each evaluator built for its device
    monkeypatch.undo()
    add_entry_points(tmp_path / "site2", monkeypatch, "toy = tests.pruneopt.toy_task:TASK")
    specs = PruningSpace(parent.spec).sample(6, Regime(0.5, 0.05)).specs()
    jobs = [CandidateJob(i, s.to_json(), i) for i, s in enumerate(specs)]
    seen: dict[int, str] = {}
    with make_evaluation_pool("local", "toy", settings, 2, threads=1, devices=["cuda:0", "cuda:1"]) as pool:
        pool.map(jobs, lambda j, w: None, lambda o: seen.__setitem__(o.job.candidate_id, o.worker))
    assert len(seen) == 6 and all(w.endswith((":cuda:0", ":cuda:1")) for w in seen.values())
    with make_evaluation_pool("local", "toy", settings, 1, threads=1, devices=["cuda:1"]) as pool:
        assert pool.worker.endswith(":cuda:1")  # type: ignore[attr-defined]
    with pytest.raises(PruneoptError, match="2 workers need 2 devices, got 1"):
        make_evaluation_pool("local", "toy", settings, 2, devices=["cuda:0"])


def test_the_command_line_runs_one_worker_per_gpu(two_gpus: None, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    got: dict[str, Any] = {}

    def fake_run_search(cfg: SearchConfig, out: Path, **kw: Any) -> dict[str, Any]:
        got.update(cfg=cfg, **kw)
        return {"task": cfg.task}

    monkeypatch.setattr(search_cmds, "run_search", fake_run_search)
    cases = ((["--device", "cuda"], "cuda", 2), (["--device", "cuda", "--workers", "1"], "cuda", 1),
             ([], "cuda", 2), (["--device", "cpu"], "cpu", 1))
    for argv, device, workers in cases:
        with pytest.raises(SystemExit) as info:
            main(["search", *argv, "--out", "never-created"])
        assert info.value.code == 0, capsys.readouterr().err
        assert (got["device"], got["workers"]) == (device, workers), argv
    assert got["loader_workers"] >= 1 and got["force"] is False


def test_the_search_help_shows_every_form(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for example in ("pruneopt search --data ~/data/flowers --arch resnet18",
                    "pruneopt search --data cifar10 --data-dir", "--parent resnet18-f37072fd.pth --head-epochs 2",
                    "--device cuda --regimes 0.5",
                    "--loader-workers", "--skip-bad-images", "--val-fraction", "--input CxHxW", "--force"):
        assert example in text, example


def test_settings_added_later_are_stored_only_when_set() -> None:
    default = SearchConfig().to_dict()
    assert not {"val_fraction", "input", "mean", "std", "head_epochs", "skip_bad_images"} & set(default)
    cfg = SearchConfig(val_fraction=0.1, input=(3, 32, 32), mean=(0.5,), head_epochs=3, skip_bad_images=True)
    stored = cfg.to_dict()
    assert stored["val_fraction"] == 0.1 and stored["input"] == [3, 32, 32] and stored["mean"] == [0.5]
    assert stored["head_epochs"] == 3 and stored["skip_bad_images"] is True and "std" not in stored
    assert SearchConfig.from_dict(stored) == cfg and SearchConfig.from_dict(default) == SearchConfig()
