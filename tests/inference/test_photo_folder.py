"""Folders of photos (lrpo.inference.photo.restore_photos): the output layout, faces.jsonl,
batching across photos, every kind of input file. Restoration uses conftest's tiny 16 px run; the
detector is a stand-in keyed by photo size, except in the tests marked shared_data (YuNet)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lrpo.data.images import load_rgb, save_rgb
from lrpo.inference.photo import PhotoOptions, restore_photos
from lrpo.inference.restorer import Restorer

from tests.conftest import single_thread
from tests.photo_scenes import FakeDetector, Placement, make_photo, require_yunet

PLACES = [Placement((110, 120), 40, 0), Placement((250, 130), 30, 10), Placement((180, 250), 6, 0)]


class SizeKeyedDetector:
    """The faces of the scene for photos of the scene's size; none for any other photo."""

    def __init__(self, shape, landmarks):
        self.shape, self.fake = tuple(shape[:2]), FakeDetector(landmarks)

    def detect(self, image):
        return self.fake.detect(image) if image.shape[:2] == self.shape else []


@pytest.fixture(scope="module")
def scene():
    return make_photo(320, 360, PLACES)


@pytest.fixture
def restorer(tiny_run):
    return Restorer.from_checkpoint(tiny_run, steps=2, device="cpu")


@pytest.fixture
def photos(tmp_path, scene) -> Path:
    photo, _ = scene
    folder = tmp_path / "photos"
    folder.mkdir()
    save_rgb(folder / "a.png", photo)
    return folder


def _run(restorer, source, out, detector, **kw):
    with single_thread():
        return restore_photos(restorer, source, out, PhotoOptions(min_face_size=8), progress=False, detector=detector, **kw)


def test_layout_and_faces_jsonl(restorer, tmp_path, scene):
    photo, truth = scene
    folder = tmp_path / "in"
    save_rgb(folder / "a.png", photo)
    save_rgb(folder / "c_empty.png", np.full((50, 70, 3), 90, np.uint8))
    out = tmp_path / "out"
    summary = _run(restorer, folder, out, SizeKeyedDetector(photo.shape, truth))
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == ["a.png", "c_empty.png"]
    assert summary.no_face == ["c_empty.png"] and summary.faces_found == 3 and summary.faces_restored == 2
    # the photo without a face is copied as it is
    assert np.array_equal(load_rgb(out / "restored_imgs" / "c_empty.png"), np.full((50, 70, 3), 90, np.uint8))
    assert load_rgb(out / "restored_imgs" / "a.png").shape == photo.shape
    for sub in ("cropped_faces", "restored_faces"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a_00.png", "a_01.png"], sub
    assert load_rgb(out / "cropped_faces" / "a_00.png").shape == (16, 16, 3)  # the policy's resolution
    # cmp/: the whole photo, input | restored at the input's size; only photos with a face
    assert sorted(p.name for p in (out / "cmp").iterdir()) == ["a.png"]
    cmp = load_rgb(out / "cmp" / "a.png")
    assert cmp.shape == (photo.shape[0], 2 * photo.shape[1], 3)
    assert np.array_equal(cmp[:, :photo.shape[1]], photo)
    assert np.array_equal(cmp[:, photo.shape[1]:], load_rgb(out / "restored_imgs" / "a.png"))
    lines = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert set(lines[0]) == {"photo", "face", "box", "landmarks", "score", "size", "restored", "reason", "seam", "seam_input", "seed",
                             "scale", "paste", "sharpness", "color_shift"}
    # 40 px between the eyes; a 16 px crop holds 126 x 16 / 512 = 3.94 px: scale 10.2
    assert lines[0]["scale"] == pytest.approx(40 / (125.92 * 16 / 512), abs=0.01) and lines[0]["paste"] == "correction"
    assert lines[0]["sharpness"] > 0 and lines[0]["color_shift"] >= 0 and lines[2]["sharpness"] is None
    assert [(d["photo"], d["face"], d["restored"], d["seed"]) for d in lines] == [("a.png", 0, True, 0), ("a.png", 1, True, 1), ("a.png", 2, False, None)]
    assert "--min-face-size" in lines[2]["reason"] and lines[2]["seam"] is None and lines[2]["size"] == pytest.approx(6, abs=0.01)
    assert len(lines[0]["box"]) == 4 and np.array(lines[0]["landmarks"]).shape == (5, 2)
    np.testing.assert_allclose(lines[0]["landmarks"], truth[0], atol=0.01)
    assert lines[0]["seam"] > 0 and lines[0]["size"] == pytest.approx(40, abs=0.01)


def test_batches_across_photos_change_nothing(restorer, tmp_path, scene):
    photo, truth = scene
    folder = tmp_path / "in"
    for i in range(3):
        save_rgb(folder / f"p{i}.png", photo)
    det = SizeKeyedDetector(photo.shape, truth)
    one = _run(restorer, folder, tmp_path / "b1", det, batch_size=1)
    three = _run(restorer, folder, tmp_path / "b3", det, batch_size=3)
    alone = _run(restorer, folder / "p2.png", tmp_path / "alone", det, batch_size=5)
    assert len(one.written) == len(three.written) == 3 and len(alone.written) == 1
    for i in range(3):
        a = load_rgb(tmp_path / "b1" / "restored_imgs" / f"p{i}.png")
        assert np.array_equal(a, load_rgb(tmp_path / "b3" / "restored_imgs" / f"p{i}.png"))
    # a photo restores the same alone as in its folder (face j of every photo: seed + j)
    assert np.array_equal(load_rgb(tmp_path / "alone" / "restored_imgs" / "p2.png"), load_rgb(tmp_path / "b1" / "restored_imgs" / "p2.png"))
    other_seed = _run(restorer, folder / "p2.png", tmp_path / "seed1", det, seed=1)
    assert len(other_seed.written) == 1
    assert not np.array_equal(load_rgb(tmp_path / "seed1" / "restored_faces" / "p2_00.png"), load_rgb(tmp_path / "alone" / "restored_faces" / "p2_00.png"))


def test_unreadable_files_are_named_and_skipped(restorer, tmp_path, scene):
    photo, truth = scene
    folder = tmp_path / "in"
    save_rgb(folder / "good.png", photo)
    (folder / "truncated.jpg").write_bytes(cv2.imencode(".jpg", photo)[1].tobytes()[:500])
    (folder / "text.png").write_text("not an image")
    (folder / "empty.webp").write_bytes(b"")
    summary = _run(restorer, folder, tmp_path / "out", SizeKeyedDetector(photo.shape, truth))
    assert [p.name for p in summary.written] == ["good.png"]
    assert sorted(Path(e.path).name for e in summary.failed) == ["empty.webp", "text.png", "truncated.jpg"]
    assert all("cannot read image" in str(e) for e in summary.failed)


def test_rgba_gray_and_16_bit_inputs(restorer, tmp_path, scene):
    photo, truth = scene
    folder = tmp_path / "in"
    folder.mkdir()
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0  # a transparent strip
    Image.fromarray(np.dstack([photo, alpha])).save(folder / "rgba.png")
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    Image.fromarray(gray).save(folder / "gray.jpg", quality=95)
    cv2.imwrite(str(folder / "gray16.png"), gray.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "rgb16.png"), photo[..., ::-1].astype(np.uint16) * 257)
    summary = _run(restorer, folder, tmp_path / "out", SizeKeyedDetector(photo.shape, truth), batch_size=3)
    assert not summary.failed and summary.faces_restored == 4 * 2
    res = tmp_path / "out" / "restored_imgs"
    with Image.open(res / "rgba.png") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[..., 3], alpha)
    for name in ("gray.png", "gray16.png"):
        img = load_rgb(res / name).astype(int)
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all(), name
    assert load_rgb(res / "rgb16.png").shape == photo.shape


def test_out_dir_must_not_be_the_input_folder(restorer, photos):
    with pytest.raises(ValueError, match="OUT_DIR is IN_DIR"):
        _run(restorer, photos, photos, FakeDetector([]))


@pytest.mark.shared_data
def test_exif_rotated_photo_is_restored_upright(restorer, tmp_path, scene):
    photo, _ = scene
    folder = tmp_path / "in"
    folder.mkdir()
    # stored sideways with EXIF orientation 6 ("rotate 90 clockwise to view"): upright once applied
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(photo, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "phone.jpg", exif=exif, quality=95)
    from lrpo.inference.detect import FaceDetector

    summary = _run(restorer, folder, tmp_path / "out", FaceDetector(require_yunet()))
    assert load_rgb(tmp_path / "out" / "restored_imgs" / "phone.png").shape == photo.shape
    assert summary.faces_restored == 2  # the two large faces, found because they are upright


def test_restorer_restore_photo_api(restorer, scene):
    photo, truth = scene
    restorer.detector = FakeDetector(truth)
    result = restorer.restore_photo(photo, seed=5, options=PhotoOptions(upscale=2))
    assert result.image.shape == (2 * photo.shape[0], 2 * photo.shape[1], 3)
    assert [f.seed for f in result.faces] == [5, 6, None] and result.restored_count == 2  # the third: eyes 6 px apart
    assert all(c.shape == (16, 16, 3) for c in result.restored_faces.values())
    again = restorer.restore_photo(photo, seed=5, options=PhotoOptions(upscale=2))
    assert np.array_equal(result.image, again.image)
