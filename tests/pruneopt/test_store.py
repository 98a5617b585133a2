from __future__ import annotations

import pytest

from pruneopt.errors import PruneoptError
from pruneopt.store import RunConfigMismatch, RunInUse, Store


def rows(n: int, space: str = "initial", regime: float = 0.5) -> list[dict]:
    return [{"space": space, "regime": regime, "idx": i, "seed": 100 + i, "spec": f'{{"i": {i}}}', "spec_hash": str(i),
             "macs": 1000 + i, "params": 10, "ratio": 100.0 + i, "flops_fraction": 0.5} for i in range(n)]


def test_candidates_lifecycle(tmp_path) -> None:
    with Store.open(tmp_path / "run", {"a": 1}) as s:
        assert s.add_candidates(rows(3)) == 3
        assert s.add_candidates(rows(3)) == 0  # already there: ignored
        tasks = s.pending()
        assert [t.seed for t in tasks] == [100, 101, 102]
        s.mark_running(tasks[0].candidate_id, "w1")
        s.finish(tasks[0].candidate_id, 0.25, 1.5, "w1")
        s.mark_running(tasks[1].candidate_id, "w1")
        s.fail(tasks[1].candidate_id, "boom", "w1")
        s.mark_running(tasks[2].candidate_id, "w2")  # "crashes" while running
        assert s.counts() == {"done": 1, "failed": 1, "running": 1}
    with Store.open(tmp_path / "run", {"a": 1}) as s:
        # the crashed one is queued again; the failed one has attempts left; the finished one is never redone
        assert [t.seed for t in s.pending()] == [101, 102]
        done = s.rows()
        assert len(done) == 1 and done[0]["error"] == 0.25 and done[0]["worker"] == "w1"
        assert s.evaluation_counts() == {tasks[0].candidate_id: 1}


def test_failed_candidates_are_retried_a_bounded_number_of_times(tmp_path) -> None:
    with Store.open(tmp_path / "run", {}, max_attempts=2) as s:
        s.add_candidates(rows(1))
        (t,) = s.pending()
        for _ in range(2):
            s.mark_running(t.candidate_id, "w")
            s.fail(t.candidate_id, "ValueError: bad", "w")
        assert s.pending() == []
        (r,) = s.rows(status="failed")
        assert r["attempts"] == 2 and r["message"] == "ValueError: bad"


def test_mismatched_config_is_refused_once_a_candidate_finished(tmp_path) -> None:
    with Store.open(tmp_path / "run", {"samples": 64, "seed": 0}) as s:
        s.add_candidates(rows(2))
        (t, _) = s.pending()
        s.mark_running(t.candidate_id, "w")
        s.finish(t.candidate_id, 0.3, 1.0, "w")
    with pytest.raises(RunConfigMismatch, match="samples: 64 -> 32.* 1 of its candidates have finished"):
        with Store.open(tmp_path / "run", {"samples": 32, "seed": 0}):
            pass
    with Store.open(tmp_path / "run", {"samples": 64, "seed": 0}) as s:  # the original options resume it
        assert s.reused is None and len(s.rows()) == 1


def test_a_run_with_no_finished_candidate_is_reused_with_other_options(tmp_path) -> None:
    with Store.open(tmp_path / "run", {"samples": 64, "seed": 0}) as s:
        s.add_candidates(rows(3))
        s.set_stage("parent", {"val_error": 0.9})
        (t, *_) = s.pending()
        s.mark_running(t.candidate_id, "w")
        s.fail(t.candidate_id, "boom", "w")
    with Store.open(tmp_path / "run", {"samples": 32, "seed": 0}) as s:
        assert s.reused == "samples: 64 -> 32"
        assert s.config() == {"samples": 32, "seed": 0}
        assert s.stages() == {} and s.pending() == [] and s.rows(status=None) == []
    with Store.open(tmp_path / "run", {"samples": 32, "seed": 0}) as s:  # from now on it is a run of the new config
        assert s.reused is None


def test_one_driver_at_a_time(tmp_path) -> None:
    with Store.open(tmp_path / "run", {}):
        with pytest.raises(RunInUse, match="is being run by pid"):
            with Store.open(tmp_path / "run", {}):
                pass
        with Store.open(tmp_path / "run", None, readonly=True) as ro:  # readers are welcome
            assert ro.config() == {}


def test_stages_and_readonly_errors(tmp_path) -> None:
    with Store.open(tmp_path / "run", {"x": 1}) as s:
        assert s.stage("parent") is None
        s.set_stage("parent", {"val_error": 0.1})
        s.set_stage("parent", {"val_error": 0.09})
        assert s.stage("parent") == {"val_error": 0.09}
        assert s.stages() == {"parent": {"val_error": 0.09}}
        with pytest.raises(ValueError):
            with s.transaction():
                s.db.execute("INSERT INTO meta VALUES ('k', 'v')")
                raise ValueError("roll back")
        assert s.db.execute("SELECT COUNT(*) FROM meta WHERE key = 'k'").fetchone()[0] == 0
    with pytest.raises(PruneoptError, match="not a search run"):
        with Store.open(tmp_path / "nothing", None, readonly=True):
            pass
