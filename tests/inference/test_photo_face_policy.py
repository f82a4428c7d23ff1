"""Restoring a photo never makes it worse (issue 23): the face policy (faces larger than the
policy keep their own detail), doubtful detections left alone, cmp/ at the input's size, the
summary's lines. Synthetic photos of the astronaut's face (photo_scenes); YuNet tests skip without the file."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lrpo.inference.detect import FaceDetector, doubt, landmark_residual, select_faces, DetectedFace
from lrpo.inference.align import FFHQ_TEMPLATE_512
from lrpo.inference.paste import centre_figures
from lrpo.inference.photo import PhotoOptions, PhotoSummary, comparison, restore_photo, summary_lines

from tests.photo_scenes import FakeDetector, Placement, identity_restore, make_photo, require_yunet

R = 32  # policy resolution in these tests: its crop holds eyes 126 x 32 / 512 = 7.9 px apart
BIG = Placement((200, 190), 60, 5)  # scale 60 / 7.9 = 7.6: far larger than the policy
SMALL = Placement((330, 120), 6, 0)  # scale 0.76: smaller than the policy


@pytest.fixture(scope="module")
def scene():
    return make_photo(320, 420, [BIG, SMALL])


def blur_restore(crops, seeds):
    """A policy that returns a soft face: what a 64 px policy does to detail it cannot hold."""
    return [cv2.GaussianBlur(c, (0, 0), 1.5) for c in crops]


def brighter_restore(crops, seeds):
    return [np.clip(c.astype(np.int16) + 40, 0, 255).astype(np.uint8) for c in crops]


def _run(scene, restore, **options):
    photo, truth = scene
    return restore_photo(photo, restore, FakeDetector(truth), R, PhotoOptions(min_face_size=1, **options))


def _centre(image, lm, half):
    cx, cy = np.round(np.asarray(lm).mean(0)).astype(int)
    return image[cy - half:cy + half + 1, cx - half:cx + half + 1]


def test_a_policy_that_changes_nothing_changes_nothing_on_a_large_face():
    big_only = make_photo(320, 420, [BIG])
    photo, _ = big_only
    # auto pastes restored - input crop for a face larger than the policy: zero for the identity
    auto = _run(big_only, identity_restore)
    assert np.array_equal(auto.image, photo) and auto.restored_count == 1
    # always pastes the crop itself: the big face, shrunk to 32 px and enlarged back, loses its detail
    always = _run(big_only, identity_restore, face_policy="always")
    big = next(f for f in always.faces if f.scale > 1)
    assert not np.array_equal(always.image, photo) and big.sharpness < 0.5


def test_faces_larger_than_the_policy_stay_as_sharp(scene):
    auto, always = _run(scene, blur_restore), _run(scene, blur_restore, face_policy="always")
    big_auto, big_always = (next(f for f in r.faces if f.scale > 1) for r in (auto, always))
    assert big_auto.scale == pytest.approx(60 / (125.92 * R / 512), rel=1e-3)
    assert big_auto.paste == "correction" and big_always.paste == "whole"
    assert big_auto.sharpness >= 0.9 and big_always.sharpness < 0.3
    assert big_auto.color_shift < 3.0  # a blur moves the centre's mean colour only by what it spreads across its edge


def test_upscaled_faces_are_at_least_as_sharp_as_lanczos(scene):
    photo, truth = scene
    auto = _run(scene, blur_restore, upscale=2)
    always = _run(scene, blur_restore, upscale=2, face_policy="always")
    lanczos = cv2.resize(photo, (photo.shape[1] * 2, photo.shape[0] * 2), interpolation=cv2.INTER_LANCZOS4)
    lm = (truth[0] + 0.5) * 2 - 0.5
    ref = _centre(lanczos, lm, 60)
    assert centre_figures(_centre(auto.image, lm, 60), ref)[0] >= 0.9
    assert centre_figures(_centre(always.image, lm, 60), ref)[0] < 0.5


def test_small_faces_come_back_as_the_restoration(scene):
    # at scale < 1 the crop holds all the face's detail: auto pastes the restoration whole, as always does
    auto, always = _run(scene, brighter_restore), _run(scene, brighter_restore, face_policy="always")
    small = next(f for f in auto.faces if f.scale < 1)
    assert small.paste == "whole"
    a, b = _centre(auto.image, small.landmarks, 3), _centre(always.image, small.landmarks, 3)
    assert np.array_equal(a, b) and a.mean() > _centre(scene[0], small.landmarks, 3).mean() + 30


def test_never_larger_leaves_large_faces_alone(scene):
    photo, truth = scene
    result = _run(scene, brighter_restore, face_policy="never-larger")
    big, small = sorted(result.faces, key=lambda f: -f.scale)
    assert not big.restored and "--face-policy never-larger" in big.reason and small.restored
    assert np.array_equal(_centre(result.image, truth[0], 40), _centre(photo, truth[0], 40))


def test_bad_face_policy_and_threshold_are_refused(scene):
    with pytest.raises(ValueError, match="--face-policy must be one of auto, always, never-larger"):
        _run(scene, identity_restore, face_policy="sometimes")
    with pytest.raises(ValueError, match="--det-threshold is a score threshold in"):
        _run(scene, identity_restore, det_threshold=1.5)


# ---------------------------------------------------------------------------------------------
# only faces
# ---------------------------------------------------------------------------------------------
def test_landmark_residual_is_zero_for_the_template_and_similarity_invariant():
    assert landmark_residual(FFHQ_TEMPLATE_512) == pytest.approx(0, abs=1e-6)
    a = np.deg2rad(30)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * 0.3
    assert landmark_residual(FFHQ_TEMPLATE_512 @ rot.T + [40, 7]) == pytest.approx(0, abs=1e-6)
    # mouth above the eyes (a face upside down is a rotation; this is a mirror image in y only): no similarity fits it
    flipped = FFHQ_TEMPLATE_512 * [1, -1]
    assert landmark_residual(flipped) > 30


def test_doubtful_faces_are_listed_not_restored(scene):
    photo, truth = scene
    det = FakeDetector(truth, scores=[0.92, 0.65])
    result = restore_photo(photo, identity_restore, det, R, PhotoOptions(min_face_size=1))
    low = next(f for f in result.faces if f.score < 0.8)
    assert not low.restored and low.doubtful and low.reason == "doubtful face: score 0.65 < --det-threshold 0.8"
    assert restore_photo(photo, identity_restore, det, R, PhotoOptions(min_face_size=1, det_threshold=0.6)).restored_count == 2
    # a score just below the threshold is shown rounded down: "0.80 < 0.8" would read as a contradiction
    near = DetectedFace((0, 0, 50, 50), FFHQ_TEMPLATE_512 / 5, 0.798)
    assert doubt(near) == "doubtful face: score 0.79 < --det-threshold 0.8"
    bent = DetectedFace((0, 0, 50, 50), FFHQ_TEMPLATE_512 * [1, -1] / 5 + [100, 200], 0.95)
    assert "do not fit a frontal face" in doubt(bent)
    assert "do not fit" in select_faces([bent], (400, 400, 3), threshold=0.8, max_residual=30)[0]


def test_no_face_in_photos_without_people():
    from skimage import data

    det = FaceDetector(require_yunet())
    for name in ("chelsea", "coffee", "rocket"):
        photo = getattr(data, name)()
        result = restore_photo(photo, identity_restore, det, 64)
        assert result.restored_count == 0, name
    astronaut = restore_photo(data.astronaut(), identity_restore, det, 64)
    assert astronaut.restored_count == 1


# ---------------------------------------------------------------------------------------------
# what the user is shown
# ---------------------------------------------------------------------------------------------
def test_comparison_is_the_input_and_the_output_at_the_input_size(scene):
    photo, _ = scene
    result = _run(scene, brighter_restore, upscale=2, draw_box=True)
    both = comparison(photo, result)
    h, w = photo.shape[:2]
    assert both.shape == (h, 2 * w, 3) and np.array_equal(both[:, :w], photo)
    boxed = comparison(photo, result, boxes=True)
    x, y, _, _ = (int(round(v)) for v in result.faces[0].box)
    assert tuple(boxed[y, x]) == (0, 200, 0) and tuple(boxed[y, x + w]) == (0, 200, 0)  # green: restored, both halves


def test_summary_names_cmp_doubtful_faces_and_sharpness():
    s = PhotoSummary(written=["x"], faces_found=3, faces_restored=2, doubtful=["a.jpg face 2 (score 0.65)"], larger=1,
                     sharpness=[(3.0, 0.98), (0.5, 1.1)], face_policy="auto", resolution=64)
    text = "\n".join(summary_lines(s, "out"))
    assert "look at out/cmp" in text
    assert "1 doubtful face(s) left alone" in text and "a.jpg face 2 (score 0.65)" in text
    assert "1 face(s) larger than the policy's 64 px: restored at its resolution; their own detail above it kept" in text
    assert "median 1.04, min 0.98 over 2 face(s)" in text  # median of 0.98 and 1.1
