"""A tiny run of ``bench/claims.py tmp``: it writes its results, table and plot, resumes, and refuses other settings;
and its statistics on hand-checkable numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import claims  # bench/ is on the tests' path (pythonpath in pyproject.toml's [tool.pytest.ini_options])
import pytest
from claims_stats import paired_interval, verdict

TINY = [
    "--ids", "8", "--cams", "3", "--imgs-per-id", "2-3", "--pretrain-steps", "2", "--batch", "4x2",
    "--seeds", "0,1", "--noise", "0.4", "--arms", "tmp,single-mask", "--mech-epochs", "1", "--mech-iters", "1",
    "--db-epochs", "1", "--db-iters", "1", "--k1", "6", "--k2", "2", "--no-centroid",
]  # fmt: skip


def test_paired_interval_and_verdict() -> None:
    iv = paired_interval([0.3, 0.5, 0.4], [0.1, 0.2, 0.3])  # differences 0.2, 0.3, 0.1: mean 0.2, SD 0.1
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 df)
    assert iv["diff"] == pytest.approx(0.2) and iv["lo"] == pytest.approx(0.2 - half)
    assert iv["hi"] == pytest.approx(0.2 + half) and iv["n"] == 3
    assert verdict(iv, "up", "down", "?") == "?"  # 0.2 +- 0.25 contains 0
    assert verdict(paired_interval([0.30, 0.32, 0.31], [0.1, 0.1, 0.1]), "up", "down", "?") == "up"
    assert verdict(paired_interval([0.1, 0.1, 0.1], [0.30, 0.32, 0.31]), "up", "down", "?") == "down"
    assert verdict(paired_interval([0.1, 0.5], [0.3, 0.2]), "up", "down", "?") == "?"
    assert math.isinf(paired_interval([0.1], [0.2])["lo"])


@pytest.mark.slow
def test_claims_tmp_writes_its_table_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "claims"
    claims.main(["tmp", "--out", str(out), "--jobs", "1", *TINY])
    printed = capsys.readouterr().out
    assert "8 cells: 0 done before, 8 to run" in printed and "| labels | arm | mAP |" in printed
    for name in ("results.json", "table.md", "tmp.png", "settings.json", "source.json", "source/spec.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 8
    conditions = {c["condition"] for c in results["summary"]["comparisons"]}
    assert conditions == {"true ids, 40% noise", "DBSCAN"}
    assert {c["comparison"] for c in results["summary"]["comparisons"]} == {"tmp - single-mask"}
    assert all(c["verdict"] in ("more positives helped", "more positives hurt", "could not be told apart")
               for c in results["summary"]["comparisons"])
    table = (out / "table.md").read_text()
    assert "tmp - single-mask" in table and "source backbone, before training" in table
    assert not (out / "cells" / "mech_n40_tmp_s0" / "checkpoint.pt").exists()  # deleted once the cell is done
    assert (out / "cells" / "mech_n40_tmp_s0" / "log.jsonl").is_file()

    # resume: only the cells without a result run again (here in two spawned processes), with the same figures
    for name in ("mech_n40_tmp_s1", "dbscan_single-mask_s0"):
        (out / "cells" / name / "result.json").unlink()
    claims.main(["tmp", "--out", str(out), "--jobs", "2", *TINY])
    printed = capsys.readouterr().out
    assert "8 cells: 6 done before, 2 to run with 2 process(es)" in printed
    again = json.loads((out / "results.json").read_text())
    for name, cell in results["cells"].items():
        for metric in ("mAP", "rank1", "mINP"):
            assert again["cells"][name][metric] == pytest.approx(cell[metric], abs=1e-9), (name, metric)

    # another setting into the same folder is refused
    with pytest.raises(SystemExit, match="other settings"):
        claims.main(["tmp", "--out", str(out), "--jobs", "1", *TINY[:-1], "--centroid"])
