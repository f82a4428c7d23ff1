"""Synthetic photos for the whole-photo tests: the public-domain astronaut face (scikit-image's
``astronaut``, NASA) pasted onto a textured background at known positions, sizes and angles, with
the landmark positions each paste carries it to. Also: where the YuNet file is, and a fake detector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lrpo.inference.detect import DetectedFace

SHARED = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[2] / "shared"))
YUNET_FILE = "face_detection_yunet_2023mar.onnx"

# YuNet's five landmarks of the astronaut photo (512 x 512; measured once with the registry's
# yunet file): eyes 47.0 px apart, score 0.93. The placements below carry these points.
ASTRONAUT_LANDMARKS = np.array([[200.12, 101.82], [247.13, 102.62], [220.37, 124.54], [198.61, 142.77], [239.67, 143.64]])
ASTRONAUT_EYES = float(np.hypot(*(ASTRONAUT_LANDMARKS[1] - ASTRONAUT_LANDMARKS[0])))


def yunet_dir() -> Path | None:
    """A folder holding the YuNet file: $LRPO_WEIGHTS entries first, then ../shared/weights."""
    dirs = [Path(p) for p in os.environ.get("LRPO_WEIGHTS", "").split(os.pathsep) if p] + [SHARED / "weights"]
    return next((d for d in dirs if (d / YUNET_FILE).is_file()), None)


def require_yunet() -> Path:
    found = yunet_dir()
    if found is None:
        pytest.skip(f"{YUNET_FILE} not found in $LRPO_WEIGHTS nor {SHARED / 'weights'} (`lrpo weights fetch yunet`)")
    return found


@dataclass(frozen=True)
class Placement:
    centre: tuple[float, float]  # where the midpoint between the eyes goes (x, y)
    eyes: float  # px between the eyes
    angle: float  # degrees, counter-clockwise as cv2.getRotationMatrix2D


def placement_matrix(p: Placement) -> np.ndarray:
    """2x3 astronaut -> photo similarity of a placement."""
    import cv2

    mid = (ASTRONAUT_LANDMARKS[0] + ASTRONAUT_LANDMARKS[1]) / 2
    m = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), p.angle, p.eyes / ASTRONAUT_EYES)
    m[:, 2] += np.asarray(p.centre) - mid
    return m


def background(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradient with mild noise (0-8 levels), RGB uint8; made at 1/8 size and a
    256 px noise tile, so a 6000 x 4000 photo costs little more than its own bytes."""
    import cv2

    rng = np.random.default_rng(seed)
    sh, sw = h // 8 + 2, w // 8 + 2
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    small = np.stack([80 + 60 * xx / sw, 100 + 40 * yy / sh, 140 - 50 * xx / sw], -1).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    tile = rng.integers(0, 9, (256, 256, 3), dtype=np.uint8)
    noise = np.tile(tile, (-(-h // 256), -(-w // 256), 1))[:h, :w]
    return cv2.add(img, noise)


def make_photo(h: int, w: int, placements: list[Placement], seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """An ``h x w`` RGB photo with one astronaut face per placement (soft-edged, so no square
    outline), and the [5, 2] landmark positions of each."""
    import cv2
    from skimage import data as skdata

    astro = skdata.astronaut()
    photo = background(h, w, seed)
    mid = (ASTRONAUT_LANDMARKS[0] + ASTRONAUT_LANDMARKS[1]) / 2
    alpha = np.zeros(astro.shape[:2], np.float32)
    cv2.ellipse(alpha, (int(mid[0]), int(mid[1] + 25)), (95, 125), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 8)
    truth = []
    for p in placements:
        m = placement_matrix(p)
        scale = p.eyes / ASTRONAUT_EYES
        # composite only inside the placement's box, so big photos stay cheap
        corners = np.array([[0, 0], [511, 0], [0, 511], [511, 511]], np.float64) @ m[:, :2].T + m[:, 2]
        x0, y0 = (max(0, int(np.floor(corners[:, i].min()))) for i in (0, 1))
        x1, y1 = min(w, int(np.ceil(corners[:, 0].max())) + 1), min(h, int(np.ceil(corners[:, 1].max())) + 1)
        mm = m.copy()
        mm[:, 2] -= (x0, y0)
        flags = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        face = cv2.warpAffine(astro, mm, (x1 - x0, y1 - y0), flags=flags).astype(np.float32)
        a = cv2.warpAffine(alpha, mm, (x1 - x0, y1 - y0))[..., None]
        region = a * face + (1 - a) * photo[y0:y1, x0:x1]
        photo[y0:y1, x0:x1] = np.clip(np.round(region), 0, 255).astype(np.uint8)
        truth.append(ASTRONAUT_LANDMARKS @ m[:, :2].T + m[:, 2])
    return photo, truth


class FakeDetector:
    """Returns the faces it was given (for tests that must not need the YuNet file)."""

    def __init__(self, landmarks: list[np.ndarray], scores: list[float] | None = None):
        self.faces = []
        for i, lm in enumerate(landmarks):
            lm = np.asarray(lm, np.float64)
            eyes = np.hypot(*(lm[1] - lm[0]))
            x0, y0 = lm[:, 0].min() - eyes * 0.6, lm[:, 1].min() - eyes
            box = (float(x0), float(y0), float(lm[:, 0].max() - lm[:, 0].min() + 1.2 * eyes), float(lm[:, 1].max() - y0 + 0.6 * eyes))
            self.faces.append(DetectedFace(box, lm, 0.9 if scores is None else scores[i]))
        self.faces.sort(key=lambda f: -f.box[2] * f.box[3])
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        self.calls += 1
        return list(self.faces)


def identity_restore(crops: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
    return [c.copy() for c in crops]
