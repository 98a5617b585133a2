"""The in-batch loss arms (tmp, single-neg, single-mask) against hand-computed values and independent references,
and the injected label noise of the mechanism test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidserve.train import (
    LOSSES,
    ReidTrainConfig,
    TrainError,
    compute_loss,
    dense_labels,
    inject_label_noise,
    single_positive_masked_loss,
)
from reidserve.train.losses import image_index

torch.set_num_threads(1)


def loop_loss(z: torch.Tensor, y: torch.Tensor, tau: float, arm: str) -> torch.Tensor:
    """Independent reference, one row at a time: rows i and i + B are the two views of image i."""
    n = len(z)
    b = n // 2
    losses = []
    for i in range(n):
        partner = (i + b) % n
        keys, positives = [], []
        for j in range(n):
            if j == i:
                continue
            same = bool(y[j] == y[i])
            if arm == "single-mask" and same and j != partner:
                continue  # neither positive nor negative
            keys.append(j)
            positives.append(j == partner if arm != "tmp" else same)
        logp = torch.log_softmax(torch.stack([z[i] @ z[j] for j in keys]) / tau, dim=0)
        pos = torch.tensor(positives)
        losses.append(-logp[pos].mean())
    return torch.stack(losses).mean()


def test_hand_computed_two_images_same_label() -> None:
    # two images of one identity; views: rows 0, 1 (view 1 of images 0, 1), rows 2, 3 (view 2)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.int64)
    # every row: similarity 1 to its other view, 0 to the two rows of the other image; softmax over 3 keys
    log_z = math.log(2 + math.e)
    got = {arm: float(compute_loss(z, y, None, loss=arm, tau=1.0)["loss"]) for arm in ("tmp", "single-neg",
                                                                                       "single-mask")}
    assert got["tmp"] == pytest.approx(log_z - 1 / 3, abs=1e-12)  # three positives, mean log-probability
    assert got["single-neg"] == pytest.approx(log_z - 1, abs=1e-12)  # the other image's rows are negatives
    assert got["single-mask"] == pytest.approx(0.0, abs=1e-12)  # ... or masked: the softmax holds the partner only


def test_hand_computed_two_identities() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    # every image its own label: the three arms are the same loss
    expected = math.log(2 + math.e) - 1
    for arm in ("tmp", "single-neg", "single-mask"):
        assert float(compute_loss(z, y, None, loss=arm, tau=1.0)["loss"]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("arm", ["tmp", "single-neg", "single-mask"])
def test_arms_match_the_loop_reference(arm: str) -> None:
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(16, 6, generator=g, dtype=torch.float64), dim=1)
    y8 = torch.tensor([0, 0, 1, 1, 0, 2, 2, 3])  # 8 images, 4 labels (label 3 has one image: its other view)
    y = torch.cat([y8, y8])
    got = compute_loss(z, y, None, loss=arm, tau=0.2)
    torch.testing.assert_close(got["loss"], loop_loss(z, y, 0.2, arm))
    torch.testing.assert_close(got["loss_batch"], got["loss"])


def test_arms_differ_when_images_share_labels() -> None:
    g = torch.Generator().manual_seed(2)
    z = F.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    values = {arm: float(compute_loss(z, y, None, loss=arm, tau=0.5)["loss"]) for arm in ("tmp", "single-neg",
                                                                                         "single-mask")}
    assert len({round(v, 9) for v in values.values()}) == 3
    # masking removes terms from every row's denominator: the masked loss is below the instance loss
    assert values["single-mask"] < values["single-neg"]


def test_single_mask_gradient_and_float32() -> None:
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 0, 0, 1])
    assert torch.autograd.gradcheck(lambda t: single_positive_masked_loss(t, y, 0.3), (z,))
    z32 = z.detach().float()
    out = single_positive_masked_loss(z32, y, 0.3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), single_positive_masked_loss(z.detach(), y, 0.3), atol=1e-5, rtol=1e-5)
    with pytest.raises(TrainError, match="even"):
        single_positive_masked_loss(z.detach()[:5], y[:5], 0.3)


def test_single_neg_ignores_labels_and_memory_adds() -> None:
    g = torch.Generator().manual_seed(4)
    z = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    y1, y2 = torch.tensor([0, 0, 1, 1] * 2), torch.tensor([0, 1, 2, 3] * 2)
    a = compute_loss(z, y1, None, loss="single-neg", tau=0.1)["loss"]
    torch.testing.assert_close(a, compute_loss(z, y2, None, loss="single-neg", tau=0.1)["loss"])
    memory = F.normalize(torch.randn(2, 4, generator=g), dim=1)
    both = compute_loss(z, y1, memory, loss="single-mask", tau=0.1, memory_weight=0.5)
    alone = compute_loss(z, y1, None, loss="single-mask", tau=0.1)["loss"]
    torch.testing.assert_close(both["loss"], alone + 0.5 * F.cross_entropy(z @ memory.T / 0.1, y1))
    assert image_index(6).tolist() == [0, 1, 2, 0, 1, 2]


def test_config_knows_the_arms() -> None:
    assert LOSSES == ("tmp", "single-neg", "single-mask", "centroid")
    for arm in LOSSES:
        ReidTrainConfig(data="x", loss=arm).validate()  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="loss must be one of"):
        ReidTrainConfig(data="x", loss="single").validate()  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="label_noise is for the true labels"):
        ReidTrainConfig(data="x", label_noise=0.2).validate()
    with pytest.raises(TrainError, match="label_noise"):
        ReidTrainConfig(data="x", labels="true", label_noise=1.5).validate()
    with pytest.raises(TrainError, match="labels must be one of"):
        ReidTrainConfig(data="x", labels="gt").validate()  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="color_jitter"):
        ReidTrainConfig(data="x", color_jitter=1.0).validate()
    # the new fields at their defaults stay out of a run's identity (older run folders still resume) ...
    ident = ReidTrainConfig(data="x").identity()
    assert not {"labels", "label_noise", "color_jitter"} & set(ident)
    # ... and count when set
    assert ReidTrainConfig(data="x", labels="true", label_noise=0.2).identity()["label_noise"] == 0.2


# ----------------------------------------------------------------------------------------------
# label noise
# ----------------------------------------------------------------------------------------------


def test_dense_labels() -> None:
    assert dense_labels(np.array([7, 3, 7, 12, 3])).tolist() == [1, 0, 1, 2, 0]


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.4, 1.0])
def test_label_noise_exact_fraction_and_seeded(fraction: float) -> None:
    labels = np.repeat(np.arange(25), 8)  # 200 images of 25 identities
    noisy = inject_label_noise(labels, fraction, seed=5)
    changed = noisy != labels
    assert int(changed.sum()) == round(fraction * labels.size)  # exactly, never a "random other" equal to itself
    assert noisy.min() >= 0 and noisy.max() < 25 and noisy.dtype == np.int64
    np.testing.assert_array_equal(noisy, inject_label_noise(labels, fraction, seed=5))
    if 0 < fraction < 1:
        other = inject_label_noise(labels, fraction, seed=6)
        assert not np.array_equal(np.flatnonzero(other != labels), np.flatnonzero(changed))


def test_label_noise_targets_are_spread_over_the_other_ids() -> None:
    labels = np.zeros(3000, dtype=np.int64)
    labels[1500:] = np.arange(1500) % 4 + 1  # ids 0..4
    noisy = inject_label_noise(labels, 1.0, seed=0)
    moved = noisy[:1500]  # every id-0 image moves to one of 1..4, each about a quarter of the time
    counts = np.bincount(moved, minlength=5)
    assert counts[0] == 0 and all(abs(c - 375) < 75 for c in counts[1:])


def test_label_noise_bad_input() -> None:
    with pytest.raises(TrainError, match="fraction"):
        inject_label_noise(np.arange(4), 1.2, seed=0)
    with pytest.raises(TrainError, match="two identities"):
        inject_label_noise(np.zeros(4, dtype=np.int64), 0.5, seed=0)
    with pytest.raises(TrainError, match=">= 0"):
        inject_label_noise(np.array([-1, 0, 1]), 0.5, seed=0)
    unchanged = inject_label_noise(np.zeros(4, dtype=np.int64), 0.0, seed=0)
    assert unchanged.tolist() == [0, 0, 0, 0]
