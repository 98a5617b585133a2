"""Market-1501 / DukeMTMC-reID / MSMT17 readers and dataset discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidserve.data import (
    DatasetError,
    Item,
    find_dataset,
    load_dataset,
    read_dukemtmc,
    read_market1501,
    read_msmt17,
    relabel,
)


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def make_market(root: Path, extra_train: tuple[str, ...] = ()) -> Path:
    _touch(
        root / "bounding_box_train",
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c6s2_001051_02.JPG",  # upper-case extension is still an image
        "-1_c1s1_000001_01.jpg",  # junk: dropped
        "0000_c3s1_000100_01.jpg",  # distractor: not a training identity
        "Thumbs.db",
        ".DS_Store",
        "readme.txt",
        "0002_c1s1_000999_01.png",  # not a jpg: ignored
        *extra_train,
    )
    (root / "bounding_box_train" / "subfolder.jpg").mkdir()  # a folder, not an image
    _touch(
        root / "query",
        "0010_c1s1_000151_01.jpg",
        "0011_c2s3_000151_01.jpg",
        "-1_c2s1_000151_02.jpg",
        "0000_c2s1_000151_03.jpg",  # distractors make no sense as queries
    )
    _touch(
        root / "bounding_box_test",
        "0010_c3s1_000200_01.jpg",
        "0011_c1s1_000300_01.jpg",
        "0000_c4s1_000400_01.jpg",  # distractor: kept in the gallery
        "-1_c5s1_000500_01.jpg",  # junk: dropped
        "info.txt",
    )
    return root


def test_market_layout(tmp_path: Path) -> None:
    ds = read_market1501(make_market(tmp_path / "m"))
    assert ds.name == "market1501"
    train = {(Path(i.path).name, i.pid, i.camid) for i in ds.train}
    assert train == {
        ("0002_c1s1_000451_03.jpg", 2, 0),
        ("0002_c2s1_000551_01.jpg", 2, 1),
        ("0007_c6s2_001051_02.JPG", 7, 5),
    }
    assert [(i.pid, i.camid) for i in ds.query] == [(10, 0), (11, 1)]
    assert sorted((i.pid, i.camid) for i in ds.gallery) == [(0, 3), (10, 2), (11, 0)]
    assert all(Path(i.path).is_absolute() and Path(i.path).exists() for i in ds.train + ds.gallery)
    assert (ds.num_train_pids, ds.num_query_pids, ds.num_gallery_pids, ds.num_cams) == (2, 2, 3, 5)
    assert ds.skipped == ()
    assert "train" in ds.summary()


def test_market_bad_name_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m", extra_train=("0003_c1_000001.jpg",))
    with pytest.raises(DatasetError, match="0003_c1_000001.jpg"):
        read_market1501(root)
    ds = read_market1501(root, strict=False)
    assert [Path(p).name for p in ds.skipped] == ["0003_c1_000001.jpg"]
    assert ds.num_train_pids == 2


@pytest.mark.parametrize("bad", ["abcd_c1s1_000001_01.jpg", "0003_c0s1_000001_01.jpg", "photo.jpg"])
def test_market_unparseable_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DatasetError, match=bad):
        read_market1501(make_market(tmp_path / "m", extra_train=(bad,)))


def test_market_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_market1501(tmp_path / "nowhere")
    root = make_market(tmp_path / "m")
    for f in (root / "query").iterdir():
        f.unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetError, match="missing query/"):
        read_market1501(root)


def test_market_empty_gallery_or_query(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    for f in (root / "bounding_box_test").iterdir():
        if f.name != "-1_c5s1_000500_01.jpg":  # only junk left
            f.unlink()
    with pytest.raises(DatasetError, match="gallery split has no usable image"):
        read_market1501(root)
    root = make_market(tmp_path / "m2")
    for f in (root / "query").iterdir():
        if f.name.startswith("00"):
            f.unlink()
    with pytest.raises(DatasetError, match="query split has no usable image"):
        read_market1501(root)


def test_relabel() -> None:
    items = [Item("a", 30, 0), Item("b", 4, 1), Item("c", 30, 2), Item("d", 17, 0)]
    out, mapping = relabel(items)
    assert mapping == {4: 0, 17: 1, 30: 2}
    assert [i.pid for i in out] == [2, 0, 2, 1]
    assert [(i.path, i.camid) for i in out] == [(i.path, i.camid) for i in items]


def test_relabeled_train(tmp_path: Path) -> None:
    ds = read_market1501(make_market(tmp_path / "m"))
    assert sorted({i.pid for i in ds.relabeled_train()}) == [0, 1]
    assert ds.train_pid_map() == {2: 0, 7: 1}
    with pytest.raises(AttributeError):
        ds.name = "x"  # type: ignore[misc]


def make_duke(root: Path) -> Path:
    train = ("0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0005_c8_f0000001.jpg")
    _touch(root / "bounding_box_train", *train)
    _touch(root / "query", "0003_c1_f0044158.jpg", "notes.txt")
    _touch(root / "bounding_box_test", "0003_c4_f0047234.jpg", "0000_c1_f0000100.jpg", "-1_c2_f0000003.jpg")
    return root


def test_dukemtmc_layout(tmp_path: Path) -> None:
    ds = read_dukemtmc(make_duke(tmp_path / "DukeMTMC-reID"))
    assert ds.name == "dukemtmc"
    assert sorted((i.pid, i.camid) for i in ds.train) == [(1, 1), (1, 4), (5, 7)]
    assert [(i.pid, i.camid) for i in ds.query] == [(3, 0)]
    assert sorted((i.pid, i.camid) for i in ds.gallery) == [(0, 0), (3, 3)]
    with pytest.raises(DatasetError, match=r"unexpected file name .*_c1s1_.*\.jpg: dukemtmc names look like"):
        read_dukemtmc(make_market(tmp_path / "m"))  # Market names are not Duke names


def make_msmt(root: Path, v2: bool = False) -> Path:
    train_dir, test_dir = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    train = [
        "0000/0000_000_01_0303morning_0015_0.jpg 0",
        "0000/0000_001_03_0303morning_0020_1.jpg 0",
        "0001/0001_000_15_0303noon_0100_0.jpg 1",
    ]
    val = ["0001/0001_004_02_0303noon_0105_0.jpg 1"]
    query = ["0000/0000_000_07_0303afternoon_0001_0.jpg 0"]
    gallery = ["0000/0000_003_02_0303afternoon_0050_0.jpg 0", "0005/0005_000_07_0303afternoon_0060_0.jpg 5"]
    for folder, lines in ((train_dir, train + val), (test_dir, query + gallery)):
        for line in lines:
            rel = line.split()[0]
            (root / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / rel).write_bytes(b"")
    for name, lines in (("train", train), ("val", val), ("query", query), ("gallery", gallery)):
        (root / f"list_{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("v2", [False, True])
def test_msmt17_layout(tmp_path: Path, v2: bool) -> None:
    ds = read_msmt17(make_msmt(tmp_path / ("MSMT17_V2" if v2 else "MSMT17_V1"), v2=v2))
    assert ds.name == "msmt17"
    assert sorted((i.pid, i.camid) for i in ds.train) == [(0, 0), (0, 2), (1, 1), (1, 14)]
    assert [(i.pid, i.camid) for i in ds.query] == [(0, 6)]
    assert sorted((i.pid, i.camid) for i in ds.gallery) == [(0, 1), (5, 6)]
    assert all(("mask_test_v2" if v2 else "test") in i.path for i in ds.gallery)
    assert len(read_msmt17(tmp_path / ("MSMT17_V2" if v2 else "MSMT17_V1"), use_val=False).train) == 3


def test_msmt17_errors(tmp_path: Path) -> None:
    root = make_msmt(tmp_path / "MSMT17_V1")
    (root / "list_query.txt").write_text("0000/0000_000_07_0303afternoon_0001_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query.txt:1: expected 'relative/path.jpg pid'"):
        read_msmt17(root)
    (root / "list_query.txt").write_text("0000/garbage.jpg 0\n")
    with pytest.raises(DatasetError, match="unexpected file name 'garbage.jpg'"):
        read_msmt17(root)
    (root / "list_query.txt").write_text("0000/0000_000_07_0303afternoon_0999_0.jpg 0\n")
    with pytest.raises(DatasetError, match="does not exist"):
        read_msmt17(root)
    (root / "list_query.txt").unlink()
    with pytest.raises(DatasetError, match="missing MSMT17 list file"):
        read_msmt17(root)
    with pytest.raises(DatasetError, match="train/ and test/"):
        read_msmt17(tmp_path)


def test_load_dataset_recognises_layouts(tmp_path: Path) -> None:
    assert load_dataset(make_market(tmp_path / "a")).name == "market1501"
    assert load_dataset(make_duke(tmp_path / "b")).name == "dukemtmc"
    assert load_dataset(make_msmt(tmp_path / "c")).name == "msmt17"


def test_load_dataset_standard_folder_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "datasets"
    make_market(data / "Market-1501-v15.09.15")
    make_duke(data / "DukeMTMC-reID")
    make_msmt(data / "MSMT17_V2", v2=True)
    assert load_dataset(data).name == "market1501"  # the first known dataset found
    assert load_dataset(data, "dukemtmc").name == "dukemtmc"
    assert load_dataset(data, "MSMT17").name == "msmt17"
    assert find_dataset(data, "market1501") == data / "Market-1501-v15.09.15"
    # discovery through $REID_DATA and ~/.cache/reidserve
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REID_DATA", str(data))
    assert load_dataset(name="duke").root == str((data / "DukeMTMC-reID").resolve())
    monkeypatch.delenv("REID_DATA")
    make_market(tmp_path / "home" / ".cache" / "reidserve" / "market1501")
    assert load_dataset().root == str((tmp_path / "home/.cache/reidserve/market1501").resolve())


def test_load_dataset_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no re-ID dataset found"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="unknown dataset name 'cuhk03'"):
        load_dataset(tmp_path, "cuhk03")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REID_DATA", raising=False)
    with pytest.raises(DatasetError, match=r"set \$REID_DATA"):
        load_dataset()
    root = tmp_path / "weird"
    _touch(root / "bounding_box_train", "x.jpg")
    _touch(root / "query", "y.jpg")
    _touch(root / "bounding_box_test", "z.jpg")
    with pytest.raises(DatasetError, match="named like Market-1501"):
        load_dataset(root)
    assert issubclass(DatasetError, ValueError)
