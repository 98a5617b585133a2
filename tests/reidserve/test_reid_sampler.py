"""The camera-aware P x K batch sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from reidserve.data import Item, PKSampler


def _toy(n_ids: int = 10, cams: int = 4, per_cam: int = 5) -> tuple[list[int], list[int]]:
    labels, camids = [], []
    for pid in range(n_ids):
        for c in range(cams):
            labels += [pid] * per_cam
            camids += [c] * per_cam
    return labels, camids


def test_batches_are_p_by_k() -> None:
    labels, camids = _toy()
    s = PKSampler(labels, camids, p=4, k=3, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 10 // 4
    for b in batches:
        assert len(b) == 12 and all(isinstance(i, int) for i in b)
        counts = Counter(labels[i] for i in b)
        assert len(counts) == 4 and set(counts.values()) == {3}
        assert len(set(b)) == 12  # enough instances: no repeats
    # one epoch never repeats an identity
    seen = [labels[b[0 + 3 * j]] for b in batches for j in range(4)]
    assert len(seen) == len(set(seen))


def test_prefers_other_cameras() -> None:
    labels, camids = _toy(n_ids=8, cams=4, per_cam=6)
    s = PKSampler(labels, camids, p=8, k=4, seed=1)
    for epoch in range(5):
        s.set_epoch(epoch)
        for b in s:
            for pid in set(labels[i] for i in b):
                cams = [camids[i] for i in b if labels[i] == pid]
                assert sorted(cams) == [0, 1, 2, 3]  # four instances from four different cameras
    # with k = 6 > 4 cameras every camera appears and none more than twice
    s6 = PKSampler(labels, camids, p=8, k=6, seed=1)
    for b in s6:
        for pid in set(labels[i] for i in b):
            counts = Counter(camids[i] for i in b if labels[i] == pid)
            assert len(counts) == 4 and max(counts.values()) == 2


def test_small_identities_sampled_with_replacement_and_outliers_excluded() -> None:
    labels = [0, 0, 1, -1, -1, 2, 2, 2, 2, 2, -1]
    camids = [0, 1, 0, 0, 1, 0, 1, 2, 0, 1, 2]
    s = PKSampler(labels, camids, p=3, k=4, seed=0)
    (batch,) = list(s)
    assert sorted(Counter(labels[i] for i in batch).items()) == [(0, 4), (1, 4), (2, 4)]
    assert [i for i in batch if labels[i] == 1] == [2, 2, 2, 2]
    assert {i for i in batch if labels[i] == 0} == {0, 1}
    assert all(labels[i] != -1 for i in batch)
    assert s.num_identities == 3


def test_deterministic_by_seed_and_epoch() -> None:
    labels, camids = _toy()
    a = PKSampler(labels, camids, p=2, k=4, seed=3)
    b = PKSampler(labels, camids, p=2, k=4, seed=3)
    e0a, e1a = list(a), list(a)  # consecutive iterations are consecutive epochs
    assert e0a == list(b) and e1a == list(b)
    assert e0a != e1a
    a.set_epoch(0)
    assert list(a) == e0a
    assert list(PKSampler(labels, camids, p=2, k=4, seed=4)) != e0a


def test_set_labels_rebuilds_from_pseudo_labels() -> None:
    labels, camids = _toy(n_ids=6, cams=2, per_cam=3)
    s = PKSampler(labels, camids, p=2, k=2, seed=0)
    assert len(s) == 3
    pseudo = [7 if i < 12 else (-1 if i < 30 else 9) for i in range(len(labels))]
    s.set_labels(pseudo)
    assert len(s) == 1 and s.num_identities == 2
    (batch,) = list(s)
    assert {pseudo[i] for i in batch} == {7, 9}
    with pytest.raises(ValueError, match="at least p=2 identities"):
        s.set_labels([-1] * len(labels))
    with pytest.raises(ValueError, match="equal length"):
        s.set_labels([0, 1])
    with pytest.raises(ValueError, match="-1 for outliers"):
        s.set_labels([-2] * len(labels))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="p and k"):
        PKSampler([0, 1], [0, 0], p=0, k=2)
    with pytest.raises(ValueError, match="at least p=3"):
        PKSampler([0, 1], [0, 0], p=3, k=2)


def test_works_as_a_dataloader_batch_sampler() -> None:
    items = [Item(f"{i}.jpg", pid, cam) for i, (pid, cam) in enumerate(zip(*_toy(6, 2, 2), strict=True))]
    s = PKSampler.from_items(items, p=3, k=2, seed=0)

    class _Ds(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(items)

        def __getitem__(self, i: int) -> tuple[int, int]:
            return items[i].pid, i

    batches = list(torch.utils.data.DataLoader(_Ds(), batch_sampler=s))
    assert len(batches) == 2
    pids, idx = batches[0]
    assert pids.shape == (6,) and len(set(pids.tolist())) == 3
    assert np.array_equal(pids.numpy(), np.array([items[i].pid for i in idx.tolist()]))
