"""The GPU recipe bench/imagenet.sh, checked against the command line without a GPU or ImageNet (its dry run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dry_run(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "bench" / "imagenet.sh")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, **env})


@pytest.mark.slow
def test_every_step_of_the_imagenet_recipe_parses() -> None:
    r = dry_run()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("would search into") == 2 and out.count("would run: pruneopt export") == 2
    for regime in ("0.5", "0.25"):
        assert f'"regimes": [{regime}]' in out
    assert '"arch": "resnet50"' in out and '"backend": "ray"' in out and '"device": "cuda"' in out
    assert '"val_fraction": 0.02' in out and '"workers": 8' in out


@pytest.mark.slow
def test_a_bad_option_in_the_recipe_fails_its_dry_run() -> None:
    r = dry_run(SEARCH_ARGS="--no-such-option 3")
    assert r.returncode == 2 and "No such option '--no-such-option'" in r.stderr
    r = dry_run(SEARCH_ARGS="--samples 2")  # parses, but the config is refused as a run would refuse it
    assert r.returncode == 2 and "--samples must be at least 4" in r.stderr
