"""Every face of a photo: OpenCV's YuNet (``cv2.FaceDetectorYN``), its box, score and five landmarks.

YuNet returns per face a box (x, y, w, h: top-left corner and size), five landmarks in the order eye
on the image's left, eye on the right, nose tip, left and right mouth corners (OpenCV pixel
coordinates, centres at integers) and a score. Photos larger than ``max_side`` are shrunk (area
filter) for detection only, and the results scaled back to the photo's pixels, so a 6000 x 4000
photo costs what a 2048 x 1365 one does; faces YuNet can still find there (about 10 px across at
detection scale) are faces of 30 px and more in such a photo.

Face size, the measure ``--min-face-size`` compares against: the distance between the two eye
landmarks in photo pixels (it does not change with rotation, unlike the box, and is what the
alignment scales by: the template's eyes are 126 px apart in a 512 px crop).

Which detections are faces (calibrated on ../shared/data/whole and scikit-image photos, annotated in
bench/results/face_detections_annotated.json; docs/restoring-photos.md has the figures). YuNet lists
candidates from ``SCORE_THRESHOLD`` up; a candidate is restored only when it passes two checks,
else it is listed in faces.jsonl as doubtful, with its score and why:

1. score >= ``RESTORE_THRESHOLD`` (``--det-threshold``): no annotated non-face scored above 0.73
   (a light patch 0.73, a windmill 0.70); the issue's dog heads and clock scored 0.65-0.77.
2. landmark geometry: the RMS distance, in 512 px template pixels, between the five landmarks
   after the alignment's similarity fit and the template (:func:`landmark_residual`) is at most
   ``MAX_LANDMARK_RESIDUAL``. Frontal faces fit within 22 px (99 % within 19.3 px over the 199 detections
   scoring >= 0.8); a profile (37 px) or a hand or galaxy YuNet half-believes (30-52 px) does not,
   and its aligned crop would be a distorted face anyway.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import cv2
import numpy as np

from .. import weights
from .align import alignment_matrix, apply_affine, template_for

__all__ = ["DetectedFace", "FaceDetector", "landmark_residual", "select_faces"]

# Candidate threshold, as the identity reward and the landmark metric use it: YuNet's candidates from
# 0.5 are listed in faces.jsonl (blurred background faces score 0.36-0.53, non-faces up to 0.73).
# Boxes overlapping above IoU 0.3 are merged; at most 5000 candidates enter NMS.
SCORE_THRESHOLD = 0.5
RESTORE_THRESHOLD = 0.8  # score a candidate needs to be restored (--det-threshold); see the module docstring
MAX_LANDMARK_RESIDUAL = 30.0  # px of a 512 px crop: landmark_residual above this is not a frontal face
NMS_THRESHOLD = 0.3
TOP_K = 5000
MAX_SIDE = 2048  # longest side detection runs at; larger photos are shrunk for detection only


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x, y, w, h in photo pixels
    landmarks: np.ndarray  # [5, 2] float64 (x, y) in photo pixels
    score: float

    @property
    def eye_distance(self) -> float:
        """Pixels between the two eye landmarks: the face size ``--min-face-size`` refers to."""
        return float(np.hypot(*(self.landmarks[1] - self.landmarks[0])))

    @property
    def residual(self) -> float:
        """:func:`landmark_residual` of the landmarks: how far they are from a frontal face's."""
        return landmark_residual(self.landmarks)

    @property
    def centre(self) -> np.ndarray:
        x, y, w, h = self.box
        return np.array([x + w / 2, y + h / 2])


class FaceDetector:
    """YuNet through OpenCV; ``detect(rgb)`` -> faces, largest box first.

    Args:
        path: the ONNX file or a folder holding it; None looks up the registry's ``yunet``
            ($LRPO_WEIGHTS, the cache) and raises MissingWeightsError naming the file.
    """

    def __init__(self, path: str | os.PathLike | None = None, score_threshold: float = SCORE_THRESHOLD,
                 nms_threshold: float = NMS_THRESHOLD, max_side: int = MAX_SIDE):
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"detection score threshold must be in (0, 1), got {score_threshold}")
        if max_side < 32:
            raise ValueError(f"detection max side must be >= 32 px, got {max_side}")
        self.path = weights.resolve("yunet", path)
        self.max_side = int(max_side)
        self._net = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), score_threshold, nms_threshold, TOP_K)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """RGB uint8 ``H x W x 3`` -> every face found, sorted by box area (largest first)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"FaceDetector expects RGB uint8 HxWx3, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = image
        if s < 1.0:
            small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / w, small.shape[0] / h
        bgr = np.ascontiguousarray(small[..., ::-1])
        self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = self._net.detect(bgr)
        faces = []
        for row in [] if rows is None else rows:
            row = row.astype(np.float64)
            # back to photo pixels: the inverse of p -> (p + 0.5) s - 0.5 (see align.scale_matrix)
            lm = row[4:14].reshape(5, 2)
            lm = (lm + 0.5) / np.array([sx, sy]) - 0.5
            x, y = (row[0] + 0.5) / sx - 0.5, (row[1] + 0.5) / sy - 0.5
            box = (float(x), float(y), float(row[2] / sx), float(row[3] / sy))
            if not np.isfinite(lm).all() or box[2] <= 0 or box[3] <= 0:
                continue
            faces.append(DetectedFace(box, lm, float(row[14])))
        faces.sort(key=lambda f: -f.box[2] * f.box[3])
        return faces

    def __repr__(self) -> str:
        return f"FaceDetector(path={str(self.path)!r}, max_side={self.max_side})"


def landmark_residual(landmarks: np.ndarray) -> float:
    """RMS distance (px of a 512 px crop) between the five landmarks mapped by their alignment
    (least-squares similarity) and the FFHQ template: 0 for a face shaped like the template."""
    m = alignment_matrix(landmarks, 512)
    return float(np.sqrt(((apply_affine(m, landmarks) - template_for(512)) ** 2).sum(1).mean()))


def doubt(face: DetectedFace, threshold: float = RESTORE_THRESHOLD, max_residual: float = MAX_LANDMARK_RESIDUAL) -> str | None:
    """Why a candidate is doubtful as a face (None: it passes both checks of the module docstring)."""
    if face.score < threshold:
        shown = math.floor(face.score * 100 + 1e-9) / 100  # rounded down: 0.798 is not shown as 0.80 < 0.8
        return f"doubtful face: score {shown:.2f} < --det-threshold {threshold:g}"
    if face.residual > max_residual:
        return (f"doubtful face: its landmarks do not fit a frontal face (residual {face.residual:.0f} px of 512 "
                f"> {max_residual:g}; a profile or not a face)")
    return None


def select_faces(
    faces: list[DetectedFace], image_shape: tuple[int, ...], min_face_size: float = 0.0,
    only_center_face: bool = False, max_faces: int | None = None, threshold: float = 0.0,
    max_residual: float = float("inf"),
) -> list[str | None]:
    """Which faces to restore: None for a face to restore, else the reason it is left alone.

    In this order: faces whose eye distance is below ``min_face_size`` (or 1 px) and doubtful faces
    (:func:`doubt`: score below ``threshold``, landmark residual above ``max_residual``) are left alone;
    of the rest, ``only_center_face`` keeps the one whose box centre is nearest the photo's centre;
    ``max_faces`` then keeps the first N of ``faces``' order (largest first).
    """
    reasons: list[str | None] = [None] * len(faces)
    for i, f in enumerate(faces):
        if f.eye_distance < 1.0:  # no similarity can be fitted to it, whatever the threshold
            reasons[i] = f"degenerate landmarks (eyes {f.eye_distance:.2f} px apart)"
        elif doubt(f, threshold, max_residual):
            reasons[i] = doubt(f, threshold, max_residual)
        elif f.eye_distance < min_face_size:
            reasons[i] = f"smaller than --min-face-size ({f.eye_distance:.1f} < {min_face_size:g} px between the eyes)"
    kept = [i for i, r in enumerate(reasons) if r is None]
    if only_center_face and kept:
        centre = np.array([image_shape[1] / 2, image_shape[0] / 2])
        best = min(kept, key=lambda i: float(np.linalg.norm(faces[i].centre - centre)))
        for i in kept:
            if i != best:
                reasons[i] = "not the centre face (--only-center-face)"
        kept = [best]
    if max_faces is not None:
        for i in kept[max_faces:]:
            reasons[i] = f"beyond --max-faces {max_faces}"
    return reasons
