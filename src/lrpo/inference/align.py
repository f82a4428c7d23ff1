"""Face alignment to the FFHQ five-point template, and the affine warps between photo and crop.

Conventions (the same as OpenCV's ``warpAffine``): images are ``H x W x C``; a point is (x, y) with
pixel centres at integer coordinates, so pixel (0, 0) covers [-0.5, 0.5] x [-0.5, 0.5]. A 2x3
matrix ``m`` maps a source point p to ``m[:, :2] @ p + m[:, 2]``.

Notation used below:
  M    photo -> crop (the alignment): least-squares similarity from the five detected landmarks
       to the template, estimated once per face.
  M^-1 crop -> photo.
  S_u  photo -> photo upscaled by u: p -> (p + 0.5) u - 0.5 (pixel centres move with the scale).
  A    crop -> output = S_u M^-1, the paste-back warp.

Warps never touch the whole photo: each one cuts the region it reads from (the footprint of the
crop, plus a margin), shrinks it with an area filter first when the warp would minify (a bilinear
warp that shrinks aliases), and composes the matrices accordingly. Memory is per face.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..data.geometry import similarity_transform

__all__ = [
    "FFHQ_TEMPLATE_512",
    "alignment_matrix",
    "affine_scale",
    "apply_affine",
    "compose",
    "crop_face",
    "footprint_box",
    "invert_affine",
    "scale_matrix",
    "template_for",
    "warp_region",
]

# The standard five-point template of a 512 x 512 FFHQ-aligned face, as facexlib (and so GFPGAN and
# CodeFormer) use it: eye on the image's left, eye on the right, nose tip, left and right mouth
# corners, in OpenCV pixel coordinates. The order is YuNet's landmark order.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)
TEMPLATE_SIZE = 512


def template_for(size: int) -> np.ndarray:
    """[5, 2] template for a ``size x size`` crop.

    Measured from the image's top-left edge, a pixel centre x sits at x + 0.5; resizing by
    s = size / 512 multiplies that distance by s, so the centre lands at (x + 0.5) s - 0.5.
    facexlib multiplies by s alone, which is off by 0.5 (1 - s) px: 0.44 px at 64, 0 at 512.
    """
    s = size / TEMPLATE_SIZE
    return (FFHQ_TEMPLATE_512 + 0.5) * s - 0.5


def as3x3(m: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2] = m
    return out


def compose(*mats: np.ndarray) -> np.ndarray:
    """``compose(a, b, c)`` applies c first, then b, then a (matrix product order); 2x3 result."""
    out = np.eye(3)
    for m in mats:
        out = out @ as3x3(m)
    return out[:2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(as3x3(m))[:2]


def scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """S: the pixel map of an image resized by (sx, sy): p -> (p + 0.5) s - 0.5."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N, 2] points through a 2x3 matrix."""
    points = np.asarray(points, np.float64)
    return points @ m[:, :2].T + m[:, 2]


def affine_scale(m: np.ndarray) -> float:
    """The linear scale of a similarity (sqrt |det|); for a general affine the geometric mean."""
    return math.sqrt(abs(float(np.linalg.det(m[:, :2]))))


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """M: the least-squares similarity (Umeyama) mapping the five photo landmarks to the template."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
        raise ValueError(f"alignment needs 5 finite (x, y) landmarks, got {landmarks.shape}")
    return similarity_transform(landmarks, template_for(size))


def footprint_box(m: np.ndarray, src_w: int, src_h: int, dst_w: int, dst_h: int, margin: float = 2.0) -> tuple[int, int, int, int] | None:
    """Integer box (x0, y0, x1, y1), x1/y1 exclusive, of the destination pixels the source rectangle
    ``src_w x src_h`` covers under ``m``, grown by ``margin`` px and clipped to the destination.
    None when it misses the destination."""
    corners = np.array([[-0.5, -0.5], [src_w - 0.5, -0.5], [-0.5, src_h - 0.5], [src_w - 0.5, src_h - 0.5]])
    pts = apply_affine(m, corners)
    x0 = max(0, math.floor(pts[:, 0].min() - margin))
    y0 = max(0, math.floor(pts[:, 1].min() - margin))
    x1 = min(dst_w, math.ceil(pts[:, 0].max() + margin) + 1)
    y1 = min(dst_h, math.ceil(pts[:, 1].max() + margin) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def warp_region(src: np.ndarray, m: np.ndarray, out_w: int, out_h: int, border: str = "reflect", fill: float = 0.0) -> np.ndarray:
    """``cv2.warpAffine(src, m, (out_w, out_h))`` that reads only what it needs and does not alias.

    The source pixels the output can see (the preimage of the output rectangle, plus the
    interpolation margin) are cut out first; when ``m`` shrinks (scale < 1) that region is resized
    by the scale with an area filter before the (then scale-1) warp. Enlarging warps use bicubic
    interpolation. ``border``: "reflect" (mirror at the source's edges, without repeating the edge
    pixel), "replicate" or "constant" (``fill``).
    """
    borders = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
    if border not in borders:
        raise ValueError(f"border must be one of {sorted(borders)}, got {border!r}")
    h, w = src.shape[:2]
    inv = invert_affine(m)
    box = footprint_box(inv, out_w, out_h, w, h, margin=4.0 / min(1.0, affine_scale(m)))
    if box is None:  # the output sees only the border
        shape = (out_h, out_w) + src.shape[2:]
        if border == "constant":
            return np.full(shape, fill, src.dtype)
        box = (0, 0, w, h)
    x0, y0, x1, y1 = box
    # reflecting at a cut that is not the source's own edge would be wrong; the box reaches the
    # source's edge whenever the output's preimage does, so only the true edges ever reflect
    region = src[y0:y1, x0:x1]
    m = compose(m, translation(x0, y0))
    scale = affine_scale(m)
    if scale < 1.0:
        rh, rw = region.shape[:2]
        nw, nh = max(1, round(rw * scale)), max(1, round(rh * scale))
        region = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
        m = compose(m, invert_affine(scale_matrix(nw / rw, nh / rh)))
        flags = cv2.INTER_LINEAR
    else:
        flags = cv2.INTER_CUBIC if scale > 1.05 else cv2.INTER_LINEAR
    out = cv2.warpAffine(np.ascontiguousarray(region), m, (out_w, out_h), flags=flags, borderMode=borders[border],
                         borderValue=(fill, fill, fill, fill))
    if src.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[..., None]
    return out


def crop_face(image: np.ndarray, landmarks: np.ndarray, size: int, border: str = "reflect") -> tuple[np.ndarray, np.ndarray]:
    """The aligned ``size x size`` crop of one face and its alignment matrix M (photo -> crop)."""
    m = alignment_matrix(landmarks, size)
    return warp_region(image, m, size, size, border=border), m
