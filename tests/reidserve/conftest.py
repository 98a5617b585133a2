"""Shared fixtures for the reidserve tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidserve.data.synth import SynthConfig, SynthResult, generate

SMALL_SYNTH = SynthConfig(ids=8, cams=3, seed=3, imgs_per_id=(2, 3), size=(64, 32), distractors=5, junk=2)


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthResult, SynthConfig]:
    """A tiny synthetic dataset shared by several tests (read-only!): folder, counts, config."""
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, generate(SMALL_SYNTH, root), SMALL_SYNTH
