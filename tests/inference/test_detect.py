"""Face detection for whole photos (lrpo.inference.detect): which faces are restored, YuNet on
synthetic photos, detection of big photos at a reduced size. The YuNet tests skip without the file."""

from __future__ import annotations

import numpy as np
import pytest

from lrpo import weights
from lrpo.inference.detect import DetectedFace, FaceDetector, select_faces

from tests.photo_scenes import Placement, make_photo, require_yunet


def _face(x: float, y: float, eyes: float) -> DetectedFace:
    lm = np.array([[x - eyes / 2, y], [x + eyes / 2, y], [x, y + eyes / 2], [x - eyes / 3, y + eyes], [x + eyes / 3, y + eyes]])
    return DetectedFace((x - eyes, y - eyes, 2 * eyes, 2.5 * eyes), lm, 0.9)


def test_eye_distance_is_the_size():
    f = DetectedFace((0, 0, 10, 10), np.array([[0, 0], [3, 4], [1, 1], [0, 2], [2, 2]], float), 0.9)
    assert f.eye_distance == 5.0  # a 3-4-5 triangle
    assert f.centre.tolist() == [5.0, 5.0]


def test_select_faces_reasons():
    faces = [_face(100, 100, 50), _face(300, 200, 30), _face(500, 100, 20), _face(200, 300, 5)]
    assert select_faces(faces, (400, 600, 3)) == [None] * 4
    reasons = select_faces(faces, (400, 600, 3), min_face_size=10)
    assert reasons[:3] == [None] * 3 and "--min-face-size" in reasons[3] and "5.0 < 10" in reasons[3]
    # the photo's centre is (300, 200): face 1 sits on it
    reasons = select_faces(faces, (400, 600, 3), min_face_size=10, only_center_face=True)
    assert reasons[1] is None and all("--only-center-face" in reasons[i] for i in (0, 2)) and "--min-face-size" in reasons[3]
    reasons = select_faces(faces, (400, 600, 3), min_face_size=10, max_faces=2)
    assert reasons[:2] == [None, None] and reasons[2] == "beyond --max-faces 2"
    assert select_faces([], (10, 10, 3), only_center_face=True, max_faces=1) == []
    # landmarks on one point cannot be aligned, even with no size threshold
    assert "degenerate" in select_faces([_face(50, 50, 0.0)], (100, 100, 3))[0]


def test_missing_detector_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(weights.MissingWeightsError, match="face_detection_yunet_2023mar.onnx"):
        FaceDetector()


PLACES = [Placement((300, 300), 60, 0), Placement((850, 280), 45, 20), Placement((400, 700), 80, -25), Placement((950, 680), 35, 10)]


@pytest.fixture(scope="module")
def scene():
    return make_photo(900, 1200, PLACES)


@pytest.mark.shared_data
def test_yunet_finds_every_placed_face(scene):
    photo, truth = scene
    faces = FaceDetector(require_yunet()).detect(photo)
    assert len(faces) == len(PLACES)
    areas = [f.box[2] * f.box[3] for f in faces]
    assert areas == sorted(areas, reverse=True)
    for gt, p in zip(truth, PLACES):
        f = min(faces, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - gt.mean(0)))
        err = np.linalg.norm(f.landmarks - gt, axis=1).mean()
        # YuNet's own landmark error on these pastes: 3-8 px, up to 11 % of the eye distance
        assert err < 0.15 * p.eyes, (p, err)
        assert abs(f.eye_distance - p.eyes) < 0.2 * p.eyes


@pytest.mark.shared_data
def test_big_photos_are_detected_at_a_reduced_size(scene):
    photo, truth = scene
    half = FaceDetector(require_yunet(), max_side=600).detect(photo)  # 1200 -> 600: detection at half size
    assert len(half) == len(PLACES)
    for gt, p in zip(truth, PLACES):
        g = min(half, key=lambda g: np.linalg.norm(g.landmarks.mean(0) - gt.mean(0)))
        # back in photo pixels (without the back-scaling they would be off by half their position,
        # 150-475 px); YuNet's own error at this scale is 9-23 % of the eye distance (the 25-degree
        # face worst), against 8-13 % at full size
        assert np.linalg.norm(g.landmarks - gt, axis=1).mean() < 0.3 * p.eyes, p
        assert abs(g.eye_distance - p.eyes) < 0.2 * p.eyes


@pytest.mark.shared_data
def test_detector_rejects_non_rgb_uint8():
    det = FaceDetector(require_yunet())
    with pytest.raises(ValueError, match="RGB uint8"):
        det.detect(np.zeros((10, 10), np.uint8))
    assert det.detect(np.full((64, 64, 3), 128, np.uint8)) == []
