from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pruneopt.cli import main
from pruneopt.models import default_spec
from pruneopt.space import PruningSpace, Regime


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_count_json_resnet50(capsys) -> None:
    code, out, _ = run(capsys, "count", "--arch", "resnet50", "--input", "3x224x224", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["macs"] == 4_089_184_256 and data["params"] == 25_557_032
    assert isinstance(data["macs"], int) and data["input"] == [3, 224, 224]


def test_count_spec_file_and_check(capsys, tmp_path) -> None:
    spec = next(PruningSpace(default_spec("resnet20", in_chans=1)).sample(1, Regime(0.5, 0.02)).specs())
    spec.save(tmp_path / "spec.json")
    code, out, _ = run(capsys, "count", "--spec", str(tmp_path), "--input", "1x28x28", "--check", "--json")
    assert code == 0 and json.loads(out)["spec_hash"] == spec.hash()


def test_space_json_lists_groups(capsys) -> None:
    code, out, _ = run(capsys, "space", "--arch", "resnet50", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 37
    assert {"name", "kind", "channels", "producers", "consumers", "r_min", "r_max"} <= set(rows[0])
    code, out, _ = run(capsys, "space", "--arch", "mobilenetv2")
    assert code == 0 and "features.5.expand" in out


def test_sample_writes_jsonl(capsys, tmp_path) -> None:
    out_file = tmp_path / "samples.jsonl"
    code, _, err = run(capsys, "sample", "--arch", "resnet50", "--regime", "0.5", "--band", "0.01", "-n", "100",
                       "--seed", "0", "--out", str(out_file))
    assert code == 0 and "acceptance" in err
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(lines) == 100
    assert all(0.49 <= rec["flops_fraction"] <= 0.51 for rec in lines)
    assert {"spec", "macs", "params", "ratio", "flops_fraction"} <= set(lines[0])
    code, _, _ = run(capsys, "sample", "--arch", "resnet50", "--regime", "0.5", "-n", "100", "--seed", "0",
                     "--out", str(tmp_path / "again.jsonl"))
    assert (tmp_path / "again.jsonl").read_text() == out_file.read_text()


@pytest.mark.parametrize("argv,match", [
    (["count", "--arch", "resnet9000"], "unknown architecture"),
    (["count"], "exactly one of --arch"),
    (["count", "--arch", "resnet50", "--input", "3xbig"], "--input"),
    (["sample", "--arch", "resnet50", "--regime", "1.5"], r"\(0, 1\]"),
    (["sample", "--arch", "resnet50", "--regime", "0"], r"\(0, 1\]"),
    (["sample", "--arch", "resnet50", "--regime", "0.01", "--band", "0.005"], "out of this space's reach"),
    (["sample", "--arch", "resnet50", "--regime", "0.5", "--band", "0"], "band"),
    (["count", "--arch", "resnet50", "--frobnicate"], "No such option"),
    (["sample", "--arch", "resnet50"], "--regime"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, match) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pruneopt: error: ")
    assert re.search(match, err), err


def test_malformed_spec_file(capsys, tmp_path) -> None:
    (tmp_path / "bad.json").write_text('{"arch": "resnet20", "widths": {"layer1": "wide"}}')
    code, _, err = run(capsys, "count", "--spec", str(tmp_path / "bad.json"))
    assert code == 2 and "integer" in err and err.count("\n") == 1
    (tmp_path / "trunc.json").write_text('{"arch": "resnet20", ')
    code, _, err = run(capsys, "count", "--spec", str(tmp_path / "trunc.json"))
    assert code == 2 and "not valid JSON" in err


@pytest.mark.slow
def test_console_script_end_to_end(tmp_path) -> None:
    """The installed entry point, as a user runs it: no traceback on bad input, JSON on good."""
    exe = [sys.executable, "-c", "from pruneopt.cli import main; main()"]
    good = subprocess.run([*exe, "count", "--arch", "resnet18", "--json"], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and json.loads(good.stdout)["params"] == 11_689_512
    bad = subprocess.run([*exe, "sample", "--arch", "resnet18", "--regime", "2"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
