"""lrpo.data.datasets: HQ face sets (validation up front, skip_bad, split), paired and LQ-only sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lrpo.data.datasets import FaceImageSet, LQOnlySet, PairedSet
from lrpo.data.images import ImageLoadError, load_rgb, resize_square, save_rgb, to_tensor

SHARED = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _faces(folder: Path, names: list[str], size: int = 24) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for i, name in enumerate(names):
        images[name] = _noise(size, size + 4, seed=i)  # not square: resize_square must square it
        save_rgb(folder / f"{name}.png", images[name])
    return images


def _truncated_jpeg(path: Path) -> None:
    Image.fromarray(_noise(64, 64, seed=99)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------
# FaceImageSet
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [True, False])
def test_face_set_items(tmp_path, cache):
    images = _faces(tmp_path, ["c", "a", "b"])
    ds = FaceImageSet(tmp_path, resolution=16, cache=cache)
    assert len(ds) == 3
    assert ds.names == ["a", "b", "c"]  # sorted by path
    assert ds.paths == [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    item = ds[1]
    assert item.dtype == torch.float32 and item.shape == (3, 16, 16)
    assert 0.0 <= item.min() and item.max() <= 1.0
    torch.testing.assert_close(item, to_tensor(resize_square(images["b"], 16)), rtol=0, atol=0)
    assert torch.equal(ds[-1], ds[2])
    with pytest.raises(IndexError, match="out of range"):
        ds[3]


def test_face_set_native_resolution(tmp_path):
    images = _faces(tmp_path, ["a"], size=10)
    ds = FaceImageSet(tmp_path, resolution=None)
    assert ds[0].shape == (3, 10, 14)
    torch.testing.assert_close(ds[0], to_tensor(images["a"]), rtol=0, atol=0)


def test_face_set_batches_through_a_dataloader(tmp_path):
    _faces(tmp_path, ["a", "b", "c", "d"])
    batch = next(iter(DataLoader(FaceImageSet(tmp_path, resolution=8), batch_size=3)))
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == torch.float32


@pytest.mark.parametrize("cache", [True, False])
def test_face_set_validates_at_construction(tmp_path, cache):
    _faces(tmp_path, ["a", "b"])
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    # also with cache=False the bad file is found now, not when a DataLoader worker reaches it
    with pytest.raises(ImageLoadError) as info:
        FaceImageSet(tmp_path, resolution=16, cache=cache)
    assert info.value.path == str(bad) and str(bad) in str(info.value)


@pytest.mark.parametrize("cache", [True, False])
def test_face_set_skip_bad(tmp_path, cache):
    images = _faces(tmp_path, ["a", "c"])
    text = tmp_path / "b.jpg"
    text.write_text("not an image")
    half = tmp_path / "d.jpg"
    _truncated_jpeg(half)

    ds = FaceImageSet(tmp_path, resolution=16, skip_bad=True, cache=cache)
    assert ds.names == ["a", "c"]
    assert [e.path for e in ds.skipped] == [str(text), str(half)]
    assert all(isinstance(e, ImageLoadError) for e in ds.skipped)
    torch.testing.assert_close(ds[1], to_tensor(resize_square(images["c"], 16)), rtol=0, atol=0)
    summary = ds.summary()
    assert "2 image(s)" in summary and "2 skipped" in summary
    assert str(text) in summary and str(half) in summary and "truncated" in summary


def test_face_set_all_bad_names_the_source(tmp_path):
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="no readable images") as info:
        FaceImageSet(tmp_path, resolution=16, skip_bad=True)
    assert str(tmp_path) in str(info.value)


def test_face_set_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images found") as info:
        FaceImageSet(tmp_path, resolution=16)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        FaceImageSet([], resolution=16)
    with pytest.raises(ValueError, match="no image source"):
        FaceImageSet("", resolution=16)


def test_face_set_from_file_list_with_relative_paths(tmp_path):
    images = _faces(tmp_path / "img", ["a", "b", "c"])
    listing = tmp_path / "lists" / "hq.txt"
    listing.parent.mkdir()
    # written out of order: the set sorts, so split() does not depend on how the list was written
    listing.write_text("../img/c.png\n# comment\n../img/a.png\n")
    ds = FaceImageSet(str(listing), resolution=16)
    assert ds.names == ["a", "c"]
    torch.testing.assert_close(ds[1], to_tensor(resize_square(images["c"], 16)), rtol=0, atol=0)


def test_face_set_from_path_list(tmp_path):
    _faces(tmp_path, ["a", "b", "c"])
    ds = FaceImageSet([tmp_path / "c.png", str(tmp_path / "b.png")], resolution=16)
    assert ds.names == ["b", "c"]


def test_face_set_rejects_duplicates(tmp_path):
    _faces(tmp_path, ["a", "b"])
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="more than once"):
        FaceImageSet([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / ".." / "a.png"], resolution=16)


@pytest.mark.parametrize("resolution", [0, -8, 16.0, True])
def test_face_set_rejects_bad_resolution(tmp_path, resolution):
    _faces(tmp_path, ["a"])
    with pytest.raises(ValueError, match="resolution"):
        FaceImageSet(tmp_path, resolution=resolution)


def test_split_holds_out_first_files_in_sorted_order(tmp_path):
    names = [f"face{i:02d}" for i in range(7)]
    images = _faces(tmp_path, names[::-1])
    ds = FaceImageSet(tmp_path, resolution=8)
    train, val = ds.split(3)
    assert val.names == names[:3]
    assert train.names == names[3:]
    assert len(train) + len(val) == len(ds)
    torch.testing.assert_close(val[2], to_tensor(resize_square(images["face02"], 8)), rtol=0, atol=0)
    torch.testing.assert_close(train[0], to_tensor(resize_square(images["face03"], 8)), rtol=0, atol=0)
    # the same files whatever the order of a file list
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(f"{n}.png" for n in reversed(names)))
    _, val_from_list = FaceImageSet(listing, resolution=8).split(3)
    assert val_from_list.names == val.names


def test_split_edges(tmp_path):
    _faces(tmp_path, ["a", "b", "c"])
    ds = FaceImageSet(tmp_path, resolution=8, cache=False)
    train, val = ds.split(0)
    assert len(val) == 0 and train.names == ["a", "b", "c"]
    train, val = ds.split(2)
    assert val.names == ["a", "b"] and train.names == ["c"]
    torch.testing.assert_close(train[0], ds[2], rtol=0, atol=0)  # lazy subsets decode too
    with pytest.raises(ValueError, match="leaves no training images"):
        ds.split(3)
    with pytest.raises(ValueError, match="non-negative"):
        ds.split(-1)


def test_split_keeps_skipped_report(tmp_path):
    _faces(tmp_path, ["a", "b", "c"])
    (tmp_path / "x.jpg").write_text("not an image")
    train, val = FaceImageSet(tmp_path, resolution=8, skip_bad=True).split(1)
    assert [e.path for e in train.skipped] == [str(tmp_path / "x.jpg")]
    assert "[train]" in train.summary() and "[val]" in val.summary()


@pytest.mark.shared_data
def test_face_set_on_shared_faces():
    folder = SHARED / "data" / "faces-hq"
    if not folder.is_dir():
        pytest.skip(f"shared faces not found at {folder} (set LRPO_SHARED)")
    ds = FaceImageSet(folder, resolution=32)
    assert len(ds) > 20 and not ds.skipped
    train, val = ds.split(20)
    assert len(val) == 20 and len(train) == len(ds) - 20
    assert val[0].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# PairedSet / LQOnlySet
# ---------------------------------------------------------------------------------------------
def test_paired_set_from_root(tmp_path):
    hq = _faces(tmp_path / "hq", ["00001", "00000", "00002"], size=16)
    lq = {n: 255 - img for n, img in hq.items()}
    (tmp_path / "lq").mkdir()
    for n, img in lq.items():
        save_rgb(tmp_path / "lq" / f"{n}.png", img)
    ds = PairedSet(tmp_path)
    assert len(ds) == 3 and ds.names == ["00000", "00001", "00002"]
    item = ds[1]
    assert item["name"] == "00001"
    assert item["lq"].shape == item["hq"].shape == (3, 16, 20)
    torch.testing.assert_close(item["hq"], to_tensor(hq["00001"]), rtol=0, atol=0)
    torch.testing.assert_close(item["lq"], to_tensor(lq["00001"]), rtol=0, atol=0)
    resized = PairedSet(tmp_path, resolution=8)[0]
    assert resized["lq"].shape == resized["hq"].shape == (3, 8, 8)


def test_paired_set_from_two_folders_matches_stems_across_formats(tmp_path):
    _faces(tmp_path / "gt", ["a", "b"])
    (tmp_path / "deg").mkdir()
    for i, n in enumerate(["a", "b"]):
        Image.fromarray(_noise(24, 28, seed=10 + i)).save(tmp_path / "deg" / f"{n}.jpg", quality=90)
    ds = PairedSet((tmp_path / "deg", tmp_path / "gt"))
    assert ds.names == ["a", "b"]
    assert ds.lq_paths[0].suffix == ".jpg" and ds.hq_paths[0].suffix == ".png"


def test_paired_set_unmatched_names_are_listed(tmp_path):
    _faces(tmp_path / "hq", [f"h{i}" for i in range(8)] + ["shared"], size=8)
    _faces(tmp_path / "lq", ["shared", "lonely"], size=8)
    with pytest.raises(ValueError, match="unmatched") as info:
        PairedSet(tmp_path)
    msg = str(info.value)
    assert "1 in" in msg and "lonely" in msg
    # 8 HQ-only names: the first 5 are shown, then the rest counted
    assert "8 in" in msg and "h0, h1, h2, h3, h4 ... and 3 more" in msg
    assert "h5" not in msg


def test_paired_set_missing_subfolder(tmp_path):
    _faces(tmp_path / "hq", ["a"])
    with pytest.raises(FileNotFoundError, match="lq/ and hq/"):
        PairedSet(tmp_path)


def test_paired_set_rejects_ambiguous_stems(tmp_path):
    _faces(tmp_path / "hq", ["a"])
    _faces(tmp_path / "lq", ["a"])
    Image.fromarray(_noise(8, 8, seed=5)).save(tmp_path / "lq" / "a.jpg")
    with pytest.raises(ValueError, match="share a name"):
        PairedSet(tmp_path)


def test_lq_only_set(tmp_path):
    images = _faces(tmp_path, ["w2", "w1"], size=12)
    ds = LQOnlySet(tmp_path)
    assert len(ds) == 2 and ds.names == ["w1", "w2"]
    item = ds[0]
    assert set(item) == {"name", "lq"} and item["name"] == "w1"
    torch.testing.assert_close(item["lq"], to_tensor(images["w1"]), rtol=0, atol=0)
    assert LQOnlySet(tmp_path, resolution=8)[1]["lq"].shape == (3, 8, 8)


def test_lq_only_set_bad_file_names_itself_on_access(tmp_path):
    _faces(tmp_path, ["a"])
    bad = tmp_path / "b.jpg"
    bad.write_text("nope")
    ds = LQOnlySet(tmp_path)
    with pytest.raises(ImageLoadError) as info:
        ds[1]
    assert info.value.path == str(bad)
    assert load_rgb(ds.paths[0]).shape == (24, 28, 3)
