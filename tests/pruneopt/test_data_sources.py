"""The classification data sources on tiny generated data: image folders (both layouts, a corrupt image, an empty
class, a held-out class missing from train/), CIFAR pickles, the dispatch of --data, and the decoding transforms."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pruneopt.data import cifar
from pruneopt.data.image_folder import probe, scan_folder
from pruneopt.data.images import BadImageError, Transform, convert_array, decode, random_resized_box, style_for
from pruneopt.data.sources import data_facts, open_data
from pruneopt.errors import DataNotFoundError, PruneoptError

from .imagedata import make_cifar, make_image_folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "imgs", classes=3, per_class=12, held_out=4)


def test_train_val_layout_labels_follow_the_sorted_class_folders(folder: Path) -> None:
    (folder / "train" / "c1" / "notes.txt").write_text("not an image")
    (folder / "train" / ".hidden").mkdir()
    (folder / "train" / "c0" / "nested").mkdir()
    Image.new("RGB", (36, 40)).save(folder / "train" / "c0" / "nested" / "deep.JPG")
    data = scan_folder(folder)
    assert data.layout == "train/val" and data.classes == ("c0", "c1", "c2")
    assert len(data.train) == 37 and len(data.test) == 12  # the nested .JPG counts, the .txt does not
    assert np.bincount(data.train.labels).tolist() == [13, 12, 12]
    zero = [p for p, y in zip(data.train.paths, data.train.labels, strict=True) if y == 0]
    assert all(Path(p).parent.name in ("c0", "nested") for p in zero) and len(zero) == 13
    assert np.bincount(data.test.labels).tolist() == [4, 4, 4]


def test_one_tree_is_split_stratified_and_seeded(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "tree", classes=3, per_class=30, held_out=None)
    a, b, c = scan_folder(root, 0.2, seed=0), scan_folder(root, 0.2, seed=0), scan_folder(root, 0.2, seed=1)
    assert a.layout == "one tree" and np.bincount(a.test.labels).tolist() == [6, 6, 6]
    assert a.test.paths == b.test.paths and a.test.paths != c.test.paths
    assert not set(a.test.paths) & set(a.train.paths) and len(a.train) + len(a.test) == 90


def test_an_empty_class_folder_is_one_line_naming_it(folder: Path) -> None:
    (folder / "train" / "c3").mkdir()
    with pytest.raises(PruneoptError) as info:
        scan_folder(folder)
    msg = str(info.value)
    assert msg.startswith(f"{folder / 'train' / 'c3'}: empty class folder") and "\n" not in msg


def test_a_held_out_class_that_train_lacks_is_one_line(folder: Path) -> None:
    shutil.copytree(folder / "val" / "c2", folder / "val" / "zebra")
    with pytest.raises(PruneoptError, match=r"class folder\(s\) zebra are not in .*train") as info:
        scan_folder(folder)
    assert "\n" not in str(info.value)


def test_no_class_folders_and_no_folder(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataNotFoundError, match="holds no class folders"):
        scan_folder(tmp_path / "flat")
    with pytest.raises(DataNotFoundError, match="not a folder"):
        scan_folder(tmp_path / "nope")


def test_probe_finds_size_channels_and_statistics(tmp_path: Path) -> None:
    colour = scan_folder(make_image_folder(tmp_path / "rgb", size=(36, 40)))
    p = probe(colour.train)
    assert p.size == (36, 40) and p.channels == 3 and p.sample.shape == (72, 36, 40, 3)
    grey = probe(scan_folder(make_image_folder(tmp_path / "grey", grey=True, size=(28, 28))).train)
    assert grey.channels == 1 and grey.sample.shape[1:] == (28, 28)
    large = probe(scan_folder(make_image_folder(tmp_path / "big", per_class=3, size=(120, 160), suffix=".jpg")).train)
    assert large.size == (224, 224) and large.sample.shape == (9, 224, 224, 3)


def test_a_corrupt_image_names_its_file(folder: Path) -> None:
    bad = folder / "train" / "c1" / "005.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(BadImageError) as info:
        decode(bad)
    assert str(info.value).startswith(f"{bad}: cannot decode this image") and "\n" not in str(info.value)
    (folder / "train" / "c1" / "006.png").write_bytes(b"not a png at all")
    with pytest.raises(BadImageError, match="006.png"):
        decode(folder / "train" / "c1" / "006.png")
    assert len(scan_folder(folder).train) == 36  # scanning reads names only; probing skips what it cannot decode
    assert probe(scan_folder(folder).train).sample.shape[0] == 34


def write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def test_cifar10_and_cifar100_folders(tmp_path: Path) -> None:
    make_cifar(tmp_path / "c10", "cifar10")
    data = cifar.load_cifar(tmp_path / "c10")  # the parent of cifar-10-batches-py works too
    assert data.name == "cifar10" and data.train.images.shape == (100, 32, 32, 3) and len(data.test) == 20
    assert data.classes[:2] == ("k0", "k1") and data.train.labels.dtype == np.int64
    raw = pickle.loads((tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")
    first = raw[b"data"][0]
    assert np.array_equal(data.train.images[0][..., 0].ravel(), first[:1024])  # R plane, row-major
    assert np.array_equal(data.train.images[0][..., 2].ravel(), first[2048:])
    c100 = cifar.load_cifar(make_cifar(tmp_path / "c100", "cifar100", sub=False), "cifar100")
    assert c100.name == "cifar100" and len(c100.classes) == 100 and len(c100.train) == 20
    with pytest.raises(DataNotFoundError, match="does not hold cifar100"):
        cifar.load_cifar(tmp_path / "c10", "cifar100")


def test_a_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = make_cifar(tmp_path / "evil", "cifar10")

    class Boom:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    write_pickle(folder / "data_batch_3", {b"data": Boom(), b"labels": []})
    with pytest.raises(PruneoptError, match="data_batch_3: cannot read this CIFAR file .*refusing to load"):
        cifar.load_cifar(folder)
    assert not (tmp_path / "pwned").exists()
    write_pickle(folder / "data_batch_3", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(PruneoptError, match=r"'data' has shape \(2, 100\)"):
        cifar.load_cifar(folder)


def test_open_data_dispatch(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRUNEOPT_DATA", raising=False)
    make_cifar(tmp_path / "c10", "cifar10")
    assert open_data(str(tmp_path / "c10")).facts.kind == "cifar10"  # a CIFAR folder given as --data
    named = open_data("cifar10", str(tmp_path / "c10" / "cifar-10-batches-py"))
    assert named.facts is data_facts("cifar10") and named.num_classes == 10
    img = open_data(str(folder))
    assert img.facts.kind == "image folder" and img.facts.num_classes == 3 and "train/val" in img.describe()
    with pytest.raises(DataNotFoundError, match="--data cifar100 needs --data-dir"):
        open_data("cifar100")
    with pytest.raises(PruneoptError, match="--data-dir is for --data fashion-mnist, cifar10, cifar100"):
        open_data(str(folder), str(tmp_path))
    with pytest.raises(DataNotFoundError, match="neither fashion-mnist, cifar10, cifar100 nor a folder"):
        open_data(str(tmp_path / "nothing"))


def test_named_facts_need_no_files() -> None:
    f = data_facts("fashion-mnist")
    assert (f.size, f.channels, f.num_classes) == ((28, 28), 1, 10)
    assert f.stats(1) == ((0.2860,), (0.3530,)) and f.stats(3) == ((0.2860,) * 3, (0.3530,) * 3)
    c = data_facts("cifar100")
    assert c.num_classes == 100 and c.stats(3) == (cifar.MEAN["cifar100"], cifar.STD["cifar100"])
    mean, std = c.stats(1)  # the luma of the published colour statistics
    assert mean[0] == pytest.approx(float(np.dot((0.299, 0.587, 0.114), cifar.MEAN["cifar100"])))


def test_array_colour_conversion_is_pillows() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    luma = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb])
    assert np.array_equal(convert_array(rgb, 1), luma)
    grey = rng.integers(0, 256, (2, 5, 5), dtype=np.uint8)
    assert np.array_equal(convert_array(grey, 3), np.stack([np.asarray(Image.fromarray(g).convert("RGB"))
                                                            for g in grey]))


def test_transforms_are_seeded_and_sized() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    small = Transform((32, 32), "RGB", "pad-crop", 4)
    a = small.train(img, np.random.default_rng(5))
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, small.train(img, np.random.default_rng(5)))
    resized = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(small.eval(img), resized)
    large = Transform((64, 48), "L", "resized-crop")
    assert large.eval(img.convert("L")).shape == (1, 64, 48)
    assert large.train(img.convert("L"), np.random.default_rng(1)).shape == (1, 64, 48)
    for seed in range(50):
        left, top, right, bottom = random_resized_box(70, 50, np.random.default_rng(seed))
        assert 0 <= left < right <= 70 and 0 <= top < bottom <= 50
    assert style_for((32, 32)) == "pad-crop" and style_for((224, 224)) == "resized-crop"


def test_a_reid_dataset_is_not_taken_for_class_folders(tmp_path: Path) -> None:
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        (tmp_path / "market" / sub).mkdir(parents=True)
        Image.new("RGB", (8, 16)).save(tmp_path / "market" / sub / "0001_c1s1_000151_01.jpg")
    with pytest.raises(PruneoptError, match=r"looks like a re-ID dataset .*--task reid\)\?$"):
        scan_folder(tmp_path / "market")
