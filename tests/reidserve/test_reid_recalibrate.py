"""Batch-norm recalibration of thinned re-ID candidates (reidserve.train.recalibrate)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pruneopt.models import build, default_spec
from reidserve.data import TestTransform, load_dataset
from reidserve.model import reid_spec
from reidserve.train.images import DecodedImages
from reidserve.train.recalibrate import recalibrate_bn


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread: OpenMP's spin-waiting threads crawl on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(small_synth: tuple) -> DecodedImages:
    root = small_synth[0]
    return DecodedImages(load_dataset(root).train, (64, 32), cache=False)


def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(reid_spec(default_spec("resnet20")))
    with torch.no_grad():  # statistics that are wrong for these images, as thinning leaves them
        model.bn1.running_mean.fill_(5.0)
        model.bn1.running_var.fill_(9.0)
    return model.eval()


def test_statistics_are_re_estimated_on_the_drawn_images(images: DecodedImages) -> None:
    model = backbone()
    momentum = model.bn1.momentum
    out = recalibrate_bn(model, images, batches=3, batch_size=8, seed=7)
    assert out is model and not model.training and model.bn1.momentum == momentum
    # the stem's statistics are the average, over the three batches, of its input's batch statistics
    order = np.resize(np.random.default_rng(7).permutation(len(images)), 24)
    transform = TestTransform((64, 32))
    x = torch.from_numpy(np.stack([transform(images.get(int(i))) for i in order]))
    with torch.no_grad():
        y = model.conv1(x)
    means = torch.stack([y[i:i + 8].mean(dim=(0, 2, 3)) for i in range(0, 24, 8)]).mean(0)
    torch.testing.assert_close(model.bn1.running_mean, means, atol=1e-5, rtol=1e-5)
    assert float(model.bn1.running_var.mean()) < 9.0


def test_recalibration_is_seeded_and_zero_batches_change_nothing(images: DecodedImages) -> None:
    a = recalibrate_bn(backbone(), images, 2, 8, seed=1).state_dict()
    b = recalibrate_bn(backbone(), images, 2, 8, seed=1).state_dict()
    c = recalibrate_bn(backbone(), images, 2, 8, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["bn1.running_mean"], c["bn1.running_mean"])
    untouched = recalibrate_bn(backbone(), images, 0, 8, seed=1).state_dict()
    assert float(untouched["bn1.running_mean"][0]) == 5.0


def test_fewer_images_than_a_batch_are_cycled(small_synth: tuple) -> None:
    few = DecodedImages(list(load_dataset(small_synth[0]).train)[:5], (64, 32), cache=False)
    model = recalibrate_bn(backbone(), few, 2, 8, seed=0)
    assert torch.isfinite(model.bn1.running_mean).all() and float(model.bn1.running_mean[0]) != 5.0


def test_search_candidates_are_recalibrated(tmp_path: Path, small_synth: tuple) -> None:
    """ReidEvaluator.thinned: thinning, then the recalibration on P x K training images of the scoring data."""
    from pruneopt.checkpoint import save_subnet
    from pruneopt.space import PruningSpace, Regime
    from reidserve.search_task import ReidEvaluator, ReidSettings

    parent = backbone()
    save_subnet(parent, tmp_path / "parent")
    spec = PruningSpace(parent.spec, input_hw=(64, 32)).sample(1, Regime(0.5, 0.05), seed=0).spec(0)
    settings = ReidSettings(parent_dir=str(tmp_path / "parent"), data=str(small_synth[0]), size=(64, 32),
                            batch=(4, 2), bn_batches=2)
    model = ReidEvaluator(settings).thinned(spec, seed=3)
    assert model.spec == spec and float(model.bn1.running_mean[0]) != 5.0
    plain = ReidEvaluator(ReidSettings(**{**settings.to_dict(), "bn_batches": 0})).thinned(spec, seed=3)
    assert float(plain.bn1.running_mean[0]) == 5.0
