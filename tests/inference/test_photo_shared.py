"""Whole photos from ../shared/data/whole (real, unaligned, third-party: read in place, outputs go to
tmp only). Skipped with a reason when the folder or the YuNet file is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrpo.data.images import list_images, load_rgb
from lrpo.inference.detect import MAX_LANDMARK_RESIDUAL, RESTORE_THRESHOLD, FaceDetector, landmark_residual
from lrpo.inference.photo import MIN_FACE_SIZE, PhotoOptions, restore_photos
from lrpo.inference.restorer import Restorer

from tests.conftest import single_thread
from tests.photo_scenes import SHARED, require_yunet

WHOLE = SHARED / "data" / "whole"
pytestmark = pytest.mark.shared_data


def _photos():
    if not WHOLE.is_dir():
        pytest.skip(f"whole photos not found at {WHOLE} (set LRPO_SHARED)")
    return list_images(WHOLE)


def _check(out, summary, paths):
    assert not summary.failed and len(summary.written) == len(paths)
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == sorted(f"{p.stem}.png" for p in paths)
    lines = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    assert len(lines) == summary.faces_found
    # every face the detector found at or above the size threshold was restored, unless doubtful (detect.doubt)
    doubtful = [d for d in lines if d["reason"] and d["reason"].startswith("doubtful face")]
    assert all(d["score"] < RESTORE_THRESHOLD or landmark_residual(np.array(d["landmarks"])) > MAX_LANDMARK_RESIDUAL for d in doubtful)
    assert all(d["restored"] for d in lines if d["size"] >= MIN_FACE_SIZE and d not in doubtful)
    assert all(not d["restored"] and "--min-face-size" in d["reason"] for d in lines if d["size"] < MIN_FACE_SIZE and d not in doubtful)
    for p in paths:
        assert load_rgb(out / "restored_imgs" / f"{p.stem}.png").shape == load_rgb(p).shape
    return lines


def test_a_group_photo(tiny_run, tmp_path):
    paths = [p for p in _photos() if p.name in ("VQFR__inputs_whole_imgs_example.jpg", "SimSwap__demo_file_multi_people.jpg")]
    if len(paths) != 2:
        pytest.skip("the two group photos this test uses are not in the shared folder")
    restorer = Restorer.from_checkpoint(tiny_run, steps=2, device="cpu")
    restorer.detector = FaceDetector(require_yunet())
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    with single_thread():
        summary = restore_photos(restorer, listing, tmp_path / "out", PhotoOptions(), progress=False)
    lines = _check(tmp_path / "out", summary, paths)
    assert summary.faces_restored == 6 and all(d["restored"] for d in lines)
    seams = np.array([d["seam"] for d in lines])
    assert np.isfinite(seams).all() and seams.max() < 2.5


@pytest.mark.slow
def test_every_shared_photo(tiny_run, tmp_path):
    paths = _photos()
    restorer = Restorer.from_checkpoint(tiny_run, steps=2, device="cpu")
    restorer.detector = FaceDetector(require_yunet())
    with single_thread():
        summary = restore_photos(restorer, WHOLE, tmp_path / "out", PhotoOptions(), batch_size=16, progress=False)
    _check(tmp_path / "out", summary, paths)
    assert summary.faces_restored > len(paths)  # group photos: more faces than photos
