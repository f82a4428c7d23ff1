"""One photo through detect -> align -> restore -> paste (lrpo.inference.photo.restore_photo), with
a detector that returns known faces and simple stand-in restorers, so nothing here needs model files."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from lrpo.inference.photo import PhotoOptions, restore_photo

from tests.photo_scenes import FakeDetector, Placement, identity_restore, make_photo, require_yunet

PLACES = [Placement((120, 130), 50, 0), Placement((300, 150), 36, 15), Placement((210, 270), 12, -10)]


@pytest.fixture(scope="module")
def scene():
    return make_photo(480, 420, PLACES)


def _run(scene, restore=identity_restore, size=128, **options):
    photo, truth = scene
    return restore_photo(photo, restore, FakeDetector(truth), size, PhotoOptions(**options))


def _face_region(truth, shape, radius=1.2):
    """Pixels within radius x eye distance of each face's landmark centre."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    sel = np.zeros(shape[:2], bool)
    for lm in truth:
        c, e = lm.mean(0), np.hypot(*(lm[1] - lm[0]))
        sel |= (xx - c[0]) ** 2 + (yy - c[1]) ** 2 < (radius * e) ** 2
    return sel


def test_identity_restoration_puts_every_face_back_in_place(scene):
    photo, truth = scene
    # slightly smoothed, so that resampling twice (into the 512 crop and back) is near lossless
    photo = cv2.GaussianBlur(photo, (0, 0), 1.0)
    result = restore_photo(photo, identity_restore, FakeDetector(truth), 512, PhotoOptions())
    assert result.image.shape == photo.shape and result.image.dtype == np.uint8
    assert result.restored_count == 3 and [f.seed for f in result.faces] == [0, 1, 2]
    faces = _face_region(truth, photo.shape)
    diff = np.abs(result.image.astype(int) - photo.astype(int)).mean(-1)
    # crop at 512 then warp back: resampling only, under 1 grey level. A paste 1 px off would differ
    # like the photo does from itself shifted by 1 px, several times more
    shifted = np.abs(np.roll(photo, 1, axis=1).astype(int) - photo.astype(int)).mean(-1)
    assert diff[faces].mean() < 1.0 and shifted[faces].mean() > 3 * diff[faces].mean()
    # outside the pasted regions nothing changes
    far = ~_face_region(truth, photo.shape, radius=3.5)
    assert np.array_equal(result.image[far], photo[far])
    assert set(result.cropped_faces) == set(result.restored_faces) == {0, 1, 2}
    assert all(c.shape == (512, 512, 3) for c in result.cropped_faces.values())
    assert set(result.timings) == {"detect", "align", "restore", "paste"}


def test_seam_figure_is_reported_for_restored_faces(scene):
    result = _run(scene)
    seams = np.array([f.seam for f in result.faces])
    inputs = np.array([f.seam_input for f in result.faces])
    assert np.isfinite(seams).all() and np.isfinite(inputs).all()
    # identity restoration: the band looks as it did in the input (whose own figure is not 1: the
    # band crosses the face's outline and hair)
    np.testing.assert_allclose(seams, inputs, rtol=0.1)

    def brighter(crops, seeds):
        return [np.clip(c.astype(int) + 60, 0, 255).astype(np.uint8) for c in crops]

    # a face 60 levels off is blended over the feather: the figure rises, yet stays well below a
    # hard paste's (see test_paste)
    worse = np.array([f.seam for f in _run(scene, restore=brighter).faces])
    assert (worse > seams).all()


def test_options_choose_the_faces(scene):
    photo, truth = scene
    result = _run(scene, min_face_size=20)
    small = result.faces[2]
    assert small.size == pytest.approx(12, abs=1e-6) and not small.restored and "--min-face-size" in small.reason
    assert small.seed is None and small.seam is None and 2 not in result.restored_faces
    result = _run(scene, max_faces=1)
    assert [f.restored for f in result.faces] == [True, False, False]
    assert result.faces[1].reason == "beyond --max-faces 1"
    # the photo's centre (210, 240) is nearest the third face's box centre
    result = _run(scene, only_center_face=True)
    assert [f.restored for f in result.faces] == [False, False, True]


def test_gray_photo_stays_gray_with_a_colour_policy(scene):
    photo, truth = scene
    gray = np.repeat(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)

    def colourise(crops, seeds):
        return [np.clip(c.astype(int) + [60, -20, -40], 0, 255).astype(np.uint8) for c in crops]

    result = restore_photo(gray, colourise, FakeDetector(truth), 64, PhotoOptions())
    assert result.gray
    img = result.image.astype(int)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    # and a colour photo does take the policy's colours
    colour = _run(scene, restore=colourise, size=64)
    assert not colour.gray and (colour.image[..., 0].astype(int) - colour.image[..., 2]).max() > 50


def test_color_match_keeps_the_input_colour(scene):
    photo, truth = scene

    def tinted(crops, seeds):
        return [np.clip(c.astype(int) + [50, 0, -50], 0, 255).astype(np.uint8) for c in crops]

    faces = _face_region(truth, photo.shape, radius=0.8)
    plain = _run(scene, restore=tinted).image
    matched = _run(scene, restore=tinted, color_match=True).image
    err_plain = np.abs(plain[faces].astype(float).mean(0) - photo[faces].astype(float).mean(0)).max()
    err_matched = np.abs(matched[faces].astype(float).mean(0) - photo[faces].astype(float).mean(0)).max()
    assert err_plain > 20 and err_matched < 5


def test_upscale_uses_lanczos_or_the_given_upsampler(scene):
    photo, truth = scene
    empty = restore_photo(photo, identity_restore, FakeDetector([]), 64, PhotoOptions(upscale=2))
    assert empty.faces == [] and np.array_equal(empty.image, cv2.resize(photo, (840, 960), interpolation=cv2.INTER_LANCZOS4))
    calls = []

    def flat(image, scale):
        calls.append((image.shape, scale))
        return np.full((image.shape[0] * 2 + 3, image.shape[1] * 2 + 3, 3), 7, np.uint8)  # a little off: refitted

    result = restore_photo(photo, identity_restore, FakeDetector(truth), 64, PhotoOptions(upscale=2, background_upsampler=flat))
    assert calls == [(photo.shape, 2.0)] and result.image.shape == (960, 840, 3)
    assert (result.image[-5:, -5:] == 7).all()  # far from every face: the upsampler's background
    with pytest.raises(ValueError, match="background upsampler must return RGB uint8"):
        restore_photo(photo, identity_restore, FakeDetector([]), 64,
                      PhotoOptions(upscale=2, background_upsampler=lambda im, s: np.zeros((4, 4), np.float32)))


def test_upscaled_faces_land_on_the_upscaled_photo(scene):
    photo, truth = scene
    result = _run(scene, size=512, upscale=1.5)
    h, w = photo.shape[:2]
    assert result.image.shape == (round(h * 1.5), round(w * 1.5), 3)
    reference = cv2.resize(photo, (result.image.shape[1], result.image.shape[0]), interpolation=cv2.INTER_LANCZOS4)
    big_truth = [(lm + 0.5) * 1.5 - 0.5 for lm in truth]
    faces = _face_region(big_truth, result.image.shape)
    diff = np.abs(result.image.astype(int) - reference.astype(int)).mean(-1)
    assert diff[faces].mean() < 2.0


def test_restorations_of_another_size_are_fitted_to_the_crop(scene):
    photo, truth = scene

    def double(crops, seeds):
        return [cv2.resize(c, (2 * c.shape[1], 2 * c.shape[0]), interpolation=cv2.INTER_CUBIC) for c in crops]

    same = _run(scene, size=64).image.astype(int)
    fitted = _run(scene, restore=double, size=64).image.astype(int)
    assert np.abs(same - fitted).mean() < 0.5  # upsampled then fitted back: nearly the crop itself
    with pytest.raises(ValueError, match="restored faces must be RGB uint8"):
        _run(scene, restore=lambda crops, seeds: [c.astype(np.float32) for c in crops])


def test_draw_box_outlines_faces(scene):
    photo, truth = scene
    boxed = _run(scene, draw_box=True, min_face_size=20).image
    plain = _run(scene, min_face_size=20).image
    changed = np.any(boxed != plain, axis=-1)
    assert changed.sum() > 100
    green = (boxed[..., 0] == 0) & (boxed[..., 1] == 200) & (boxed[..., 2] == 0)
    orange = (boxed[..., 0] == 255) & (boxed[..., 1] == 140) & (boxed[..., 2] == 0)
    assert green.any() and orange.any()  # two restored faces, one too small


def test_bad_options_are_refused(scene):
    photo, truth = scene
    for bad, words in [({"max_faces": 0}, "--max-faces"), ({"upscale": 0}, "--upscale"), ({"min_face_size": -1}, "--min-face-size"),
                       ({"mask": "hull"}, "--mask")]:
        with pytest.raises(ValueError, match=words):
            restore_photo(photo, identity_restore, FakeDetector(truth), 64, PhotoOptions(**bad))


@pytest.mark.parametrize("detector", ["fake", pytest.param("yunet", marks=pytest.mark.shared_data)])
def test_a_6000x4000_photo_is_restored_face_by_face(detector):
    h, w = 4000, 6000
    places = [Placement((1500, 1200), 300, 5), Placement((4200, 2000), 150, -10), Placement((3000, 3300), 60, 0)]
    photo, truth = make_photo(h, w, places)
    if detector == "yunet":
        from lrpo.inference.detect import FaceDetector

        det = FaceDetector(require_yunet())
    else:
        det = FakeDetector(truth)
    tracemalloc.start()
    try:
        result = restore_photo(photo, identity_restore, det, 64, PhotoOptions())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.image.shape == (h, w, 3) and result.restored_count == 3
    # the output canvas is one uint8 copy (72 MB); every warp and blend works on one face's box
    # (the 300 px face: a 1230 px box, 18 MB per float32 copy). A float32 copy of the photo is 288 MB
    assert peak < 72e6 + 80e6, f"peak {peak / 1e6:.0f} MB"  # measured: 72 + 55 MB
