"""Paste-back (lrpo.inference.paste): masks, the seam figure, colour matching, gray handling, and
where a pasted crop lands for upscale 1, 1.5 and 2."""

from __future__ import annotations

import numpy as np
import pytest

from lrpo.inference.align import compose, invert_affine, scale_matrix
from lrpo.inference.paste import (
    ELLIPSE_AXES,
    color_match,
    draw_box,
    face_mask,
    is_gray,
    paste_face,
    seam_ratio,
    to_gray,
)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def test_ellipse_mask_shape_range_and_feather():
    s = 256
    m = face_mask(s)
    assert m.shape == (s, s) and m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1
    assert m[s // 2, s // 2] == pytest.approx(1.0, abs=1e-6)
    # the outer ring is exactly 0: the crop's square outline can never show
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    np.testing.assert_allclose(m, m[:, ::-1], atol=1e-6)  # symmetric about the vertical axis
    row = m[s // 2, s // 2 :]
    assert (np.diff(row) <= 1e-6).all()  # falls monotonically towards the edge
    # ellipse edge (from the left image edge): (0.5 + 0.42) * 256 = 235.5, eroded by round(0.03 * 256)
    # = 8 px -> 227.5, i.e. between pixel centres 227 and 228. A Gaussian-blurred straight edge is 0.5
    # there; the ellipse's curvature (radius 0.46^2 / 0.42 * 256 = 129 px >> sigma 7.7) moves it little
    edge = (0.5 + ELLIPSE_AXES[0]) * s - round(0.03 * s)
    assert 0.4 < np.interp(edge - 0.5, np.arange(s), m[s // 2]) < 0.6


def test_square_mask_and_scaling_with_size():
    small, big = face_mask(64, "square"), face_mask(512, "square")
    # the feather is a fixed fraction of the side: both profiles agree at the same relative position
    rel = np.linspace(0.06, 0.5, 23)  # past the last 2 px ramp, which is in pixels, not a fraction
    a = np.interp(rel * 64 - 0.5, np.arange(64), small[32])
    b = np.interp(rel * 512 - 0.5, np.arange(512), big[256])
    assert np.abs(a - b).max() < 0.06
    assert big[256, 256] == pytest.approx(1.0, abs=1e-6)


def test_mask_rejects_unknown_shapes():
    with pytest.raises(ValueError, match="mask shape"):
        face_mask(64, "hull")


# ---------------------------------------------------------------------------------------------
# seam figure
# ---------------------------------------------------------------------------------------------
def _checker(h: int, w: int, step: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.where((xx + yy) % 2 == 0, step / 2, -step / 2)


def test_seam_ratio_hard_paste_is_the_step_over_the_texture():
    # texture: a 1 px checkerboard, every neighbour pair differs by a = 10. Face (left half) 50 brighter.
    # Inside and outside pairs: |+-10| = 10. The only band pairs are the horizontal ones across the
    # edge: (150 +- 5) - (100 -+ 5) = 50 +- 10 -> 60 or 40 in equal numbers, mean 50. Seam = 50 / 10 = 5.
    h, w = 40, 40
    mask = np.zeros((h, w), np.float32)
    mask[:, :20] = 1
    image = 100 + _checker(h, w, 10) + 50 * mask
    assert seam_ratio(image, mask) == pytest.approx(5.0, rel=1e-9)


def test_seam_ratio_feathered_paste_is_one():
    # the same 50 step spread over a ramp of 0.1 per column: horizontal band pairs differ by
    # |+-10 - 5| = 15 or 5 (mean 10), vertical ones by 10: band mean 10 = inside = outside -> 1
    h, w = 40, 60
    x = np.arange(w)
    mask = np.broadcast_to(np.clip(1 - (x - 20) / 10, 0, 1), (h, w)).astype(np.float64)
    image = 100 + _checker(h, w, 10) + 50 * mask
    assert seam_ratio(image, mask) == pytest.approx(1.0, rel=1e-9)


def test_seam_ratio_without_band_or_background_is_nan():
    assert np.isnan(seam_ratio(np.zeros((8, 8, 3)), np.ones((8, 8), np.float32)))


# ---------------------------------------------------------------------------------------------
# colour, gray
# ---------------------------------------------------------------------------------------------
def test_color_match_takes_the_reference_moments():
    rng = np.random.default_rng(0)
    face = rng.integers(40, 120, (32, 32, 3)).astype(np.uint8)
    ref = rng.normal([150, 90, 60], [20, 10, 5], (32, 32, 3)).clip(0, 255).astype(np.uint8)
    out = color_match(face, ref, np.ones((32, 32), np.float32)).astype(float)
    # rounding to integers moves the moments by at most about half a level
    np.testing.assert_allclose(out.mean((0, 1)), ref.astype(float).mean((0, 1)), atol=0.6)
    np.testing.assert_allclose(out.std((0, 1)), ref.astype(float).std((0, 1)), atol=0.6)


def test_gray_detection_and_conversion():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 256, (50, 60), dtype=np.uint8)
    gray = np.repeat(g[..., None], 3, axis=2)
    assert is_gray(gray)
    almost = gray.astype(int) + rng.integers(-1, 2, gray.shape)  # JPEG-like channel wobble of 1 level
    assert is_gray(almost.clip(0, 255).astype(np.uint8))
    colour = gray.copy()
    colour[..., 0] = 255 - colour[..., 0]
    assert not is_gray(colour)
    # BT.601: 0.299 * 255 = 76.2 -> 76; 0.587 * 255 = 149.7 -> 150; 0.114 * 255 = 29.1 -> 29
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert to_gray(rgb)[0, :, 0].tolist() == [76, 150, 29]
    assert (to_gray(rgb) == to_gray(rgb)[..., :1]).all()


# ---------------------------------------------------------------------------------------------
# paste-back geometry
# ---------------------------------------------------------------------------------------------
def _blob(size: int, x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    g = 250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(g[..., None], 3, axis=2).round().astype(np.uint8)


@pytest.mark.parametrize("u", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("m_scale", [0.25, 2.0])  # the face 4x larger / 2x smaller in the photo than in the crop
def test_pasted_crop_lands_where_the_inverse_alignment_says(u, m_scale):
    s = 64
    th = np.radians(20)
    m = np.array([[m_scale * np.cos(th), -m_scale * np.sin(th), 5.0], [m_scale * np.sin(th), m_scale * np.cos(th), -20.0]])
    bx, by = 30.0, 36.0
    face = _blob(s, bx, by, sigma=2.5 if m_scale < 1 else 5.0)
    h, w = 300, 400
    canvas = np.zeros((round(h * u), round(w * u), 3), np.uint8)
    a = compose(scale_matrix(canvas.shape[1] / w, canvas.shape[0] / h), invert_affine(m))
    mask = np.ones((s, s), np.float32)
    mask[[0, -1]] = 0
    mask[:, [0, -1]] = 0
    box, alpha = paste_face(canvas, face, mask, a)
    g = canvas[..., 0].astype(float)
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    found = np.array([(g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()])
    # an affine map carries the blob's centroid with it: A (30, 36)
    expected = a[:, :2] @ [bx, by] + a[:, 2]
    np.testing.assert_allclose(found, expected, atol=0.1)
    x0, y0, x1, y1 = box
    assert alpha.shape == (y1 - y0, x1 - x0)


def test_paste_leaves_pixels_outside_its_box_alone():
    rng = np.random.default_rng(3)
    canvas = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    before = canvas.copy()
    m = np.array([[1.0, 0.0, -50.0], [0.0, 1.0, -30.0]])  # crop = photo shifted by (50, 30)
    box, _ = paste_face(canvas, np.full((32, 32, 3), 255, np.uint8), face_mask(32), invert_affine(m))
    x0, y0, x1, y1 = box
    assert x0 >= 47 and y0 >= 27 and x1 <= 50 + 32 + 3 and y1 <= 30 + 32 + 3
    outside = np.ones(canvas.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(canvas[outside], before[outside])
    assert (canvas[30 + 16, 50 + 16] == 255).all()  # the face centre is the face
    assert paste_face(canvas, np.zeros((32, 32, 3), np.uint8), face_mask(32), invert_affine(m) + [[0, 0, 900], [0, 0, 0]]) is None


def test_draw_box_colours():
    canvas = np.zeros((100, 100, 3), np.uint8)
    draw_box(canvas, (10, 10, 30, 30), (1.0, 1.0), restored=True)
    draw_box(canvas, (50, 50, 30, 30), (1.0, 1.0), restored=False)
    assert tuple(canvas[10, 20]) == (0, 200, 0) and tuple(canvas[50, 60]) == (255, 140, 0)
