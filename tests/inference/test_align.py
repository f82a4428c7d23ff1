"""Alignment maths and warps (lrpo.inference.align): template scaling, the similarity, the
pixel-centre conventions of scaling, footprints, and antialiased region warps."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from lrpo.inference.align import (
    FFHQ_TEMPLATE_512,
    affine_scale,
    alignment_matrix,
    apply_affine,
    compose,
    crop_face,
    footprint_box,
    invert_affine,
    scale_matrix,
    template_for,
    translation,
    warp_region,
)
from lrpo.rewards.identity import FFHQ_LANDMARKS, ffhq_landmarks


def test_template_for_keeps_pixel_centres():
    np.testing.assert_allclose(template_for(512), FFHQ_TEMPLATE_512, atol=1e-12)
    # 64 px: (192.98138 + 0.5) * 64 / 512 - 0.5 = 23.6851725, (239.94708 + 0.5) / 8 - 0.5 = 29.555885
    np.testing.assert_allclose(template_for(64)[0], [23.6851725, 29.555885], atol=1e-9)
    # 1024 px: 2 x + 0.5 -> 2 * 192.98138 + 0.5 = 386.46276
    assert template_for(1024)[0, 0] == pytest.approx(386.46276, abs=1e-9)


def test_template_agrees_with_the_measured_ffhq_landmarks():
    # identity.FFHQ_LANDMARKS are YuNet's mean landmarks over the aligned faces-hq set, measured
    # independently; the standard template must sit within their spread (4-10 px at 512)
    diff = np.linalg.norm(template_for(512) - ffhq_landmarks(512, 512), axis=1)
    assert diff.max() < 5.0, diff
    assert FFHQ_LANDMARKS.shape == (5, 2)


def test_scale_matrix_moves_centres_and_keeps_edges():
    s2 = scale_matrix(2.0)
    # pixel 0 spans [-0.5, 0.5]; doubled it spans [-0.5, 1.5], centre 0.5; the left edge stays put
    np.testing.assert_allclose(apply_affine(s2, [[0, 0], [-0.5, -0.5], [3, 1]]), [[0.5, 0.5], [-0.5, -0.5], [6.5, 2.5]])
    np.testing.assert_allclose(compose(s2, scale_matrix(0.5)), compose(np.eye(3)[:2]), atol=1e-12)


def test_compose_and_invert():
    a = np.array([[0.8, -0.6, 3.0], [0.6, 0.8, -2.0]])
    b = translation(5, 7)
    p = np.array([[1.0, 2.0]])
    # compose(a, b) applies b first: a @ (p + (5, 7))
    np.testing.assert_allclose(apply_affine(compose(a, b), p), apply_affine(a, p + [5, 7]))
    np.testing.assert_allclose(apply_affine(invert_affine(a), apply_affine(a, p)), p, atol=1e-12)
    assert affine_scale(a) == pytest.approx(1.0) and affine_scale(2 * a) == pytest.approx(2.0)


def test_alignment_matrix_recovers_a_known_similarity():
    size = 64
    s, th, t = 0.3, math.radians(25), np.array([4.0, -9.0])
    true = np.array([[s * math.cos(th), -s * math.sin(th), t[0]], [s * math.sin(th), s * math.cos(th), t[1]]])
    landmarks = apply_affine(invert_affine(true), template_for(size))  # the face in the photo
    np.testing.assert_allclose(alignment_matrix(landmarks, size), true, atol=1e-9)


def test_alignment_matrix_is_the_least_squares_fit():
    rng = np.random.default_rng(0)
    landmarks = template_for(512) * 0.4 + [100, 50] + rng.normal(0, 3, (5, 2))
    m = alignment_matrix(landmarks, 512)

    def residual(mat):
        return float(((apply_affine(mat, landmarks) - template_for(512)) ** 2).sum())

    best = residual(m)
    # any small change of the four similarity parameters (a, b, tx, ty of [[a, -b], [b, a]]) fits worse
    for k in range(4):
        for eps in (1e-4, -1e-4):
            a, b, tx, ty = m[0, 0], m[1, 0], m[0, 2], m[1, 2]
            p = [a, b, tx, ty]
            p[k] += eps * (100 if k >= 2 else 1)
            a, b, tx, ty = p
            assert residual(np.array([[a, -b, tx], [b, a, ty]])) > best


@pytest.mark.parametrize("bad", [np.zeros((4, 2)), np.full((5, 2), np.nan)])
def test_alignment_rejects_bad_landmarks(bad):
    with pytest.raises(ValueError, match="5 finite"):
        alignment_matrix(bad, 64)


def test_footprint_box():
    # a 10 x 10 source spans [-0.5, 9.5]; floor(-0.5 - 0) = -1 -> clipped to 0; ceil(9.5) + 1 = 11
    assert footprint_box(np.eye(3)[:2], 10, 10, 100, 100, margin=0) == (0, 0, 11, 11)
    # shifted by (20, 30): [19.5, 29.5] x [29.5, 39.5] -> (19, 29, 31, 41)
    assert footprint_box(translation(20, 30), 10, 10, 100, 100, margin=0) == (19, 29, 31, 41)
    assert footprint_box(translation(500, 0), 10, 10, 100, 100) is None


def test_warp_region_integer_translation_is_exact():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    # photo -> crop: crop (u, v) = photo (u + 5, v + 7)
    out = warp_region(src, translation(-5, -7), 20, 30)
    assert np.array_equal(out, src[7:37, 5:25])


def test_warp_region_matches_a_whole_image_warp():
    rng = np.random.default_rng(2)
    src = cv2.GaussianBlur(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8), (0, 0), 2)
    th = math.radians(30)
    m = np.array([[1.5 * math.cos(th), -1.5 * math.sin(th), -60.0], [1.5 * math.sin(th), 1.5 * math.cos(th), -150.0]])
    ours = warp_region(src, m, 96, 96).astype(int)
    ref = cv2.warpAffine(src, m, (96, 96), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101).astype(int)
    # the same bicubic warp, only reading a cut-out (and reflecting at the photo's true edges)
    assert np.abs(ours - ref).max() <= 1


def test_warp_region_minifies_without_aliasing():
    # a 1 px checkerboard: every 4 x 4 block averages 127.5, so a 4x reduction is flat mid-gray;
    # a plain bilinear warp picks single pixels and keeps 0/255 speckle
    yy, xx = np.mgrid[0:400, 0:400]
    board = np.repeat((((xx + yy) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    th = math.radians(10)
    m = np.array([[0.25 * math.cos(th), -0.25 * math.sin(th), 10.0], [0.25 * math.sin(th), 0.25 * math.cos(th), 0.0]])
    ours = warp_region(board, m, 64, 64)[16:48, 16:48].astype(float)
    plain = cv2.warpAffine(board, m, (64, 64), flags=cv2.INTER_LINEAR)[16:48, 16:48].astype(float)
    assert abs(ours.mean() - 127.5) < 2 and ours.std() < 3
    assert plain.std() > 30


def test_crop_face_puts_the_landmarks_on_the_template():
    # a photo whose "landmarks" are bright dots: after alignment the dots sit on the template
    size = 128
    m_true = np.array([[0.5, -0.2, -40.0], [0.2, 0.5, -10.0]])  # photo -> crop
    landmarks = apply_affine(invert_affine(m_true), template_for(size))
    photo = np.zeros((400, 500, 3), np.float32)
    yy, xx = np.mgrid[0:400, 0:500]
    for x, y in landmarks:
        photo += 200 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 4.0**2))[..., None]
    crop, m = crop_face(np.clip(photo, 0, 255).astype(np.uint8), landmarks, size)
    np.testing.assert_allclose(m, m_true, atol=1e-9)
    g = crop[..., 0].astype(float)
    for x, y in template_for(size):
        # centroid of the dot within 4 px of its template position (dots are ~2 px wide at crop scale)
        sl = (slice(int(y) - 4, int(y) + 6), slice(int(x) - 4, int(x) + 6))
        w = g[sl]
        cy, cx = np.mgrid[sl]
        assert abs((w * cx).sum() / w.sum() - x) < 0.15 and abs((w * cy).sum() / w.sum() - y) < 0.15
