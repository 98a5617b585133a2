"""The input pipeline: Fashion-MNIST fed exactly as before, decoded images the same whichever loader process decodes
them, bad images stopped or skipped, and the training step's CUDA code paths (autocast, gradient scaler) on the
CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pruneopt.data.fashion_mnist import MEAN, STD
from pruneopt.data.image_folder import scan_folder
from pruneopt.data.images import BadImageError
from pruneopt.data.splits import Split
from pruneopt.devices import Precision
from pruneopt.loader import FASHION_MNIST, Feed, batches, in_order, materialise, skipped_images, to_input
from pruneopt.models import build, default_spec
from pruneopt.train import Stepper, TrainConfig, _generator, top1_error, train

from .imagedata import make_image_folder

FEED = Feed(3, (32, 32), (0.3, 0.4, 0.5), (0.2, 0.25, 0.3), "pad-crop", 4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "f", classes=3, per_class=16, held_out=4,
                             size=(32, 32))


def test_fashion_mnist_is_fed_as_it_always_was() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    old = torch.from_numpy(images).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)
    assert torch.equal(to_input(images), old) and torch.equal(to_input(images, FASHION_MNIST), old)


def test_colour_arrays_are_normalised_per_channel_and_resized() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = to_input(images, FEED)
    want = (torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255 - torch.tensor(FEED.mean)[:, None, None]) \
        / torch.tensor(FEED.std)[:, None, None]
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x, want, atol=1e-6)
    grey = to_input(images[..., 0], Feed(3, (40, 40), (0.5,) * 3, (0.5,) * 3))  # grey -> RGB, resized
    assert grey.shape == (2, 3, 40, 40) and torch.equal(grey[:, 0], grey[:, 2])


def collect(split, feed: Feed, train: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches(split, 8, _generator(3, 0), train=train, feed=feed))


def test_decoded_batches_do_not_depend_on_the_loader_processes(folder: Path) -> None:
    split = scan_folder(folder).train
    inline = collect(split, FEED)
    two = collect(split, Feed(**{**FEED.__dict__, "loader_workers": 2}))
    assert len(inline) == 6 and all(x.shape == (8, 3, 32, 32) for x, _ in inline)
    for (x1, y1), (x2, y2) in zip(inline, two, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(inline[0][0], collect(split, FEED)[1][0])  # shuffled, augmented
    evaluated = collect(split, FEED, train=False)
    again = list(in_order(split, 10, FEED))
    assert sum(len(y) for _, y in again) == 48 and torch.equal(again[0][1], torch.from_numpy(split.labels[:10]))
    cached = materialise(split, FEED)
    assert cached.images.shape == (48, 32, 32, 3)
    from_cache = list(in_order(cached, 10, FEED))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, from_cache, strict=True))
    assert evaluated[0][0].shape == (8, 3, 32, 32)


def test_a_bad_image_stops_naming_it_or_is_skipped_and_counted(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "f", classes=2, per_class=8, held_out=2, size=(32, 32))
    bad = root / "train" / "c1" / "003.png"
    bad.write_bytes(b"garbage")
    split = scan_folder(root).train
    for workers in (0, 2):
        with pytest.raises(BadImageError) as info:
            collect(split, Feed(**{**FEED.__dict__, "loader_workers": workers}))
        msg = str(info.value)
        assert msg.startswith(f"{bad}: cannot decode") and "--skip-bad-images" in msg and "\n" not in msg
    out = collect(split, Feed(**{**FEED.__dict__, "skip_bad": True}))
    assert sum(len(y) for _, y in out) == 15  # 16 images, one left out of its batch
    assert any(line.startswith(str(bad)) for line in skipped_images())


def test_the_cuda_step_paths_run_on_the_cpu() -> None:
    """bf16 autocast, and fp16 autocast with a gradient scaler, through the same Stepper a GPU uses."""
    images = Split(np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8), np.arange(32) % 10)
    for precision in (Precision(torch.bfloat16), Precision(torch.float16, scaler=True)):
        torch.manual_seed(0)  # a small network: float16 on the CPU is slow
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
        before = model[-1].weight.detach().clone()
        train(model, images, TrainConfig(epochs=2, batch_size=16, warmup_steps=0), 0, precision=precision)
        assert not torch.equal(before, model[-1].weight) and torch.isfinite(model[-1].weight).all()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        step = Stepper(model, opt, FASHION_MNIST, precision)
        assert (step.scaler is not None) == precision.scaler
        x, y = next(iter(batches(images, 16, _generator(0))))
        with step.autocast():
            assert model(x).dtype == precision.dtype
        assert torch.isfinite(step(x, y))
    assert Precision().name == "float32" and Precision(torch.bfloat16).name == "bfloat16"


def test_head_only_training_freezes_the_rest() -> None:
    images = Split(np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8), np.arange(64) % 10)
    torch.manual_seed(0)
    model = build(default_spec("resnet20", in_chans=1, num_classes=10))
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    head = model.fc.weight.detach().clone()
    train(model, images, TrainConfig(epochs=1, batch_size=16, warmup_steps=0), 0, only="fc")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())  # batch-norm statistics included
    assert not torch.equal(head, model.fc.weight)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards
    assert 0 <= top1_error(model, images) <= 1
