"""Five facial landmarks (YuNet) and the landmark distance (LMD) between a restoration and its GT.

Landmarks: the registry's ``yunet`` detector (OpenCV Zoo ``face_detection_yunet_2023mar.onnx``,
run by ``cv2.FaceDetectorYN``) returns, for each face, a box, a score and five points in this
order: eye on the image's left, eye on the image's right, nose tip, left and right mouth corners.
When several faces are found the largest box is used (the aligned crop's own face).

LMD convention (ours; papers differ and rarely say):

* Both images are resized to ``LMD_SIZE x LMD_SIZE`` = 512 x 512 (bicubic when growing, area
  filter when shrinking) before detection, so the detector sees every method's output at one
  scale and the distance is **in pixels of a 512 x 512 face** whatever the evaluation resolution.
  A 4 px error on a 256 px face is an LMD of 8.
* LMD = mean over the 5 landmarks of the Euclidean distance between the output's and the GT's
  landmark: ``mean_k ||p_k(out) - p_k(gt)||_2``.
* No face found in the output or in the GT: LMD is NaN for that image. Set-level LMD is the
  mean over the images where both were found, reported together with the number of failures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .. import weights
from ..data.images import resize_square, to_uint8

__all__ = ["LMD_SIZE", "LandmarkDetector", "landmark_distance", "landmark_distances", "lmd_batch"]

LMD_SIZE = 512  # side of the square image that landmarks and LMD are measured on
# Detection settings: the same score threshold as the identity reward's YuNet (0.5, a little more
# permissive than OpenCV Zoo's demo, 0.9, because restorations of hard inputs are often unusual
# faces that still have to be measured); boxes overlapping above IoU 0.3 are merged; at most 5000
# candidates enter non-maximum suppression.
SCORE_THRESHOLD = 0.5
NMS_THRESHOLD = 0.3
TOP_K = 5000


def landmark_distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Mean Euclidean distance between corresponding points of two ``[5, 2]`` landmark sets.

    Either set None (no face found) gives NaN.
    """
    if a is None or b is None:
        return math.nan
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"landmark_distance needs two [N, 2] point sets of one shape, got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b, axis=1).mean())


def landmark_distances(a: Sequence[np.ndarray | None], b: Sequence[np.ndarray | None]) -> np.ndarray:
    """Per-pair :func:`landmark_distance` of two equally long lists -> ``[N]`` float64, NaN on failure."""
    if len(a) != len(b):
        raise ValueError(f"landmark_distances: {len(a)} vs {len(b)} landmark sets")
    return np.array([landmark_distance(x, y) for x, y in zip(a, b)], dtype=np.float64)


class LandmarkDetector:
    """YuNet 5-point landmarks of the largest face, in pixels of the image resized to ``size``.

    Args:
        path: the ONNX file (or a folder holding it); None looks it up through the weights
            registry (``$LRPO_WEIGHTS``, the cache) and raises MissingWeightsError naming the file.
        size: side the image is resized to before detection (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike | None = None, size: int = LMD_SIZE, score_threshold: float = SCORE_THRESHOLD):
        import cv2  # start-up time: OpenCV (~0.15 s) loads when a detector is built, not for `lrpo --help`

        self.path = weights.resolve("yunet", path)
        self.size = size
        self._detector = cv2.FaceDetectorYN.create(str(self.path), "", (size, size), score_threshold, NMS_THRESHOLD, TOP_K)

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """RGB uint8 ``H x W x 3`` -> ``[5, 2]`` float64 (x, y) at ``size`` scale, or None (no face).

        Pixel centres are at integer coordinates, as OpenCV reports them.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"LandmarkDetector expects RGB uint8 HxWx3, got {image.dtype} {image.shape}")
        bgr = np.ascontiguousarray(resize_square(image, self.size)[..., ::-1])
        _, faces = self._detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        largest = faces[np.argmax(faces[:, 2] * faces[:, 3])]
        return largest[4:14].reshape(5, 2).astype(np.float64)

    def detect_batch(self, images: Tensor) -> list[np.ndarray | None]:
        """``[B, 3, H, W]`` float RGB in [0, 1] -> one landmark set (or None) per image."""
        return [self.detect(to_uint8(img)) for img in images]

    def __repr__(self) -> str:
        return f"LandmarkDetector(path={str(self.path)!r}, size={self.size})"


def lmd_batch(detector: LandmarkDetector, outputs: Tensor, gt_landmarks: Sequence[np.ndarray | None]) -> np.ndarray:
    """LMD of each output ``[B, 3, H, W]`` in [0, 1] to already detected GT landmarks -> ``[B]``."""
    return landmark_distances(detector.detect_batch(outputs), gt_landmarks)

