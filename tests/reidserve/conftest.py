"""Shared fixtures for the reidserve tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from reidserve.data.synth import SynthConfig, SynthResult, generate  # noqa: E402

SMALL_SYNTH = SynthConfig(ids=8, cams=3, seed=3, imgs_per_id=(2, 3), size=(64, 32), distractors=5, junk=2)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthResult, SynthConfig]:
    """A tiny synthetic dataset shared by several tests (read-only!): folder, counts, config."""
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, generate(SMALL_SYNTH, root), SMALL_SYNTH
