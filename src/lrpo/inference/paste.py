"""Paste restored faces back into the photo: feathered masks, colour matching, gray, the seam figure.

The mask is built once in crop coordinates and warped with the face, so its erosion and blur are
fractions of the crop side and scale with the face on the photo: a face 40 px across gets a
feather of a few pixels, one 1000 px across a feather of about 60.

Seam figure (ours): the mean absolute difference between neighbouring pixels (horizontal and
vertical pairs) across the mask's transition band, divided by the mean of the same measure inside
the face and in the background around it::

    seam = mean_{pairs in band} |I_p - I_q| / ((mean_{pairs inside} |I_p - I_q| + mean_{pairs outside} |I_p - I_q|) / 2)

A pair is "inside" when both its pixels have mask >= 0.95, "outside" when both have mask <= 0.05,
and in the band otherwise (one pixel within (0.05, 0.95), or the pair straddles the mask edge).
Measured over the face's box on the output only. A seam (an edge the paste adds) raises the band's
figure: a hard paste of a face 5 x brighter than the texture's own steps gives about 5; about 1 or
less means the band looks like its surroundings.
"""

from __future__ import annotations

import cv2
import numpy as np

from .align import compose, footprint_box, translation, warp_region

__all__ = [
    "centre_figures",
    "color_match",
    "draw_box",
    "face_mask",
    "is_gray",
    "paste_face",
    "seam_ratio",
    "to_gray",
]

# Mask geometry as fractions of the crop side. The ellipse covers the face, forehead and the hair
# next to it in an FFHQ-aligned crop (eyes at 47 %, mouth at 73 % of the height); erosion moves
# its edge inwards, the Gaussian blur (sigma) feathers it. Centre + semi-axis - erosion + 3 sigma
# = 0.5 + 0.46 - 0.03 + 0.09 = 1.02: the mask is below 2e-3 at the crop's edges, and a last
# 2 px ramp there makes it exactly 0, so the crop's square outline never shows.
ELLIPSE_CENTRE = (0.5, 0.5)
ELLIPSE_AXES = (0.42, 0.46)  # semi-axes (x, y)
MASK_ERODE = 0.03
MASK_BLUR = 0.03
MASK_SHAPES = ("ellipse", "square")
BAND = (0.05, 0.95)  # mask values bounding the seam figure's transition band


def face_mask(size: int, shape: str = "ellipse", erode: float = MASK_ERODE, blur: float = MASK_BLUR) -> np.ndarray:
    """Soft paste mask ``[size, size]`` float32 in [0, 1], 1 over the face, 0 at the crop's edges.

    "ellipse": the ellipse of :data:`ELLIPSE_AXES`; "square": the whole crop (what facexlib uses).
    Either is eroded by ``erode * size`` px (elliptic structuring element) and blurred with a
    Gaussian of sigma ``blur * size`` px.
    """
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape must be one of {MASK_SHAPES}, got {shape!r}")
    if erode < 0 or blur < 0:
        raise ValueError(f"mask erosion and blur must be >= 0, got {erode}, {blur}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres, from the top-left edge
    if shape == "ellipse":
        (cx, cy), (ax, ay) = ELLIPSE_CENTRE, ELLIPSE_AXES
        binary = ((xx / size - cx) / ax) ** 2 + ((yy / size - cy) / ay) ** 2 <= 1.0
    else:
        binary = np.ones((size, size), bool)
    mask = binary.astype(np.float32)
    r = round(erode * size)
    if r > 0:
        # pad with zeros so the square's outer edge erodes too
        padded = cv2.copyMakeBorder(mask, r, r, r, r, cv2.BORDER_CONSTANT, value=0.0)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.erode(padded, kernel)[r:-r, r:-r]
    if blur > 0:
        sigma = blur * size
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    edge = np.minimum(np.minimum(xx, size - xx), np.minimum(yy, size - yy)) - 0.5  # 0 on the outer ring
    return np.clip(mask * np.clip(edge / 2.0, 0.0, 1.0), 0.0, 1.0).astype(np.float32)


def is_gray(image: np.ndarray, tolerance: float = 2.0) -> bool:
    """True when the channels are the same to within ``tolerance`` grey levels on average
    (mean |R - G| and mean |G - B|): gray scans, also ones saved as RGB JPEGs."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 250_000)))  # ~250k pixels suffice
    sub = image[::step, ::step].astype(np.int16)
    return bool(np.abs(sub[..., 0] - sub[..., 1]).mean() <= tolerance and np.abs(sub[..., 1] - sub[..., 2]).mean() <= tolerance)


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> its luma (ITU-R BT.601 weights, as OpenCV and PIL) in all three channels."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def color_match(face: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean and std of ``face`` matched to ``reference`` (both ``S x S x 3`` uint8),
    both measured with ``mask`` as weights: the restored face takes the colour of its input."""
    w = mask.astype(np.float64)[..., None]
    total = w.sum()
    if total <= 0:
        return face
    x, ref = face.astype(np.float64), reference.astype(np.float64)
    mu_x, mu_r = (w * x).sum((0, 1)) / total, (w * ref).sum((0, 1)) / total
    sd_x = np.sqrt((w * (x - mu_x) ** 2).sum((0, 1)) / total)
    sd_r = np.sqrt((w * (ref - mu_r) ** 2).sum((0, 1)) / total)
    gain = np.where(sd_x > 1e-6, sd_r / np.maximum(sd_x, 1e-6), 1.0)
    return np.clip(np.round((x - mu_x) * gain + mu_r), 0, 255).astype(np.uint8)


def paste_face(canvas: np.ndarray, face: np.ndarray, mask: np.ndarray, crop_to_canvas: np.ndarray, keep_region: bool = False,
               reference: np.ndarray | None = None) -> tuple | None:
    """Blend one restored crop into ``canvas`` (uint8, modified in place) through its soft mask.

    With ``reference`` (the aligned input crop the face was restored from) only the policy's
    correction is pasted: canvas + alpha A(face - reference). The correction holds the frequencies
    the crop resolves; whatever finer detail the canvas has (a face larger than the crop, an
    upscaled background) stays. Without it the face replaces the canvas: canvas + alpha (A(face) - canvas).

    Args:
        canvas: ``H x W x 3`` uint8, the photo (already upscaled) being assembled.
        face: ``S x S x 3`` uint8, the restored crop.
        mask: ``[S, S]`` float32 in [0, 1] (:func:`face_mask`).
        crop_to_canvas: 2x3, A = S_u M^-1 (see :mod:`lrpo.inference.align`).
        keep_region: also return the region as it was before the paste (for the seam reference).
        reference: ``S x S x 3`` uint8 or None (see above).
    Returns:
        (box, warped mask[, region before]) of the canvas region touched, box = (x0, y0, x1, y1),
        or None when the face lies outside the canvas. Only that region is ever converted to float.
    """
    h, w = canvas.shape[:2]
    s = face.shape[0]
    box = footprint_box(crop_to_canvas, s, s, w, h, margin=2.0)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    m = compose(translation(-x0, -y0), crop_to_canvas)
    # the crop's outer pixels are replicated outwards; the mask is 0 there, so nothing of that shows
    source = face if reference is None else face.astype(np.float32) - reference.astype(np.float32)
    warped = warp_region(source, m, x1 - x0, y1 - y0, border="replicate").astype(np.float32)
    alpha = warp_region(mask, m, x1 - x0, y1 - y0, border="constant", fill=0.0)
    alpha = np.clip(alpha.reshape(y1 - y0, x1 - x0), 0.0, 1.0)[..., None]
    before = canvas[y0:y1, x0:x1].copy() if keep_region else None
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    # region + alpha (face - region), or region + alpha correction, in place: a face box of a big photo can be hundreds of MB
    if reference is None:
        warped -= region
    warped *= alpha
    region += warped
    np.clip(np.rint(region, out=region), 0, 255, out=region)
    canvas[y0:y1, x0:x1] = region
    return (box, alpha[..., 0], before) if keep_region else (box, alpha[..., 0])


def seam_ratio(image: np.ndarray, mask: np.ndarray, band: tuple[float, float] = BAND) -> float:
    """The seam figure of the module docstring for ``image`` (``h x w [x c]``) and its paste mask
    (``[h, w]`` in [0, 1]); NaN when the region has no band, no inside or no outside pairs."""
    lo, hi = band
    img = image.astype(np.float32)  # float32 sums of |differences| <= 255: exact enough, half the memory
    if img.ndim == 2:
        img = img[..., None]
    sums = {"band": 0.0, "inside": 0.0, "outside": 0.0}
    counts = dict.fromkeys(sums, 0)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        diff = np.subtract(img[tuple(a)], img[tuple(b)])
        np.abs(diff, out=diff)
        diff = diff.mean(-1, dtype=np.float64)
        ma, mb = mask[tuple(a)], mask[tuple(b)]
        inside = (ma >= hi) & (mb >= hi)
        outside = (ma <= lo) & (mb <= lo)
        for name, sel in (("inside", inside), ("outside", outside), ("band", ~(inside | outside))):
            sums[name] += float(diff[sel].sum())
            counts[name] += int(sel.sum())
    if min(counts.values()) == 0:
        return float("nan")
    mean = {k: sums[k] / counts[k] for k in sums}
    reference = (mean["inside"] + mean["outside"]) / 2
    return float(mean["band"] / reference) if reference > 0 else float("nan")


def centre_figures(output: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(sharpness, colour shift) of a face centre: ``output`` and ``reference`` (the input at the
    output's size) are the same ``h x w x 3`` uint8 region.

    sharpness = var(L(output)) / var(L(reference)), L the 4-neighbour Laplacian of the luma: 1 as
    sharp as the input, < 1 softer. colour shift = the CIE76 distance (Delta E) between the regions'
    mean L*a*b* colours: about 2 is just visible side by side. NaN sharpness on a flat reference.
    """
    def lap_var(x: np.ndarray) -> float:
        luma = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return float(cv2.Laplacian(luma, cv2.CV_32F, ksize=1)[1:-1, 1:-1].var())

    def mean_lab(x: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(x.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)

    ref = lap_var(reference)
    sharp = lap_var(output) / ref if ref > 1e-6 else float("nan")
    return sharp, float(np.linalg.norm(mean_lab(output) - mean_lab(reference)))


def draw_box(canvas: np.ndarray, box: tuple[float, float, float, float], scale: tuple[float, float], restored: bool) -> None:
    """Outline a face's detection box (photo pixels, scaled by ``scale`` = (sx, sy) to the canvas)
    in place: green for a restored face, orange for one left alone."""
    x, y, w, h = box
    sx, sy = scale
    p0 = (int(round((x + 0.5) * sx - 0.5)), int(round((y + 0.5) * sy - 0.5)))
    p1 = (int(round((x + w + 0.5) * sx - 0.5)), int(round((y + h + 0.5) * sy - 0.5)))
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    cv2.rectangle(canvas, p0, p1, (0, 200, 0) if restored else (255, 140, 0), thickness)

