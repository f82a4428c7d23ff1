"""The embedded public-domain sample (scikit-image's astronaut photograph): the faces the quickstart
trains on when the user brings none, and the demo's example images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .images import save_rgb


def astronaut_photo() -> np.ndarray:
    """RGB uint8 512 x 512, public domain (scikit-image ships it; imported here only: it is slow to import)."""
    from skimage import data as skdata  # noqa: PLC0415 (start-up time)

    return skdata.astronaut()


# FFHQ-like square crop of the astronaut's face (row0, row1, col0, col1) in the 512x512 photo:
# eyes near rows 105, columns 195 and 250, so a crop about 4x the eye distance centred on the face.
ASTRONAUT_FACE_BOX = (20, 240, 112, 332)


def embedded_faces(out_dir: Path, count: int = 48, size: int = 128, seed: int = 0) -> list[Path]:
    """Write ``count`` augmented public-domain face crops as PNG into ``out_dir``; return paths."""
    photo = astronaut_photo()
    r0, r1, c0, c1 = ASTRONAUT_FACE_BOX
    cy, cx, half = (r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0) / 2
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        zoom = rng.uniform(0.9, 1.1)
        angle = rng.uniform(-8, 8)
        dy, dx = rng.uniform(-0.05, 0.05, size=2) * 2 * half
        # similarity transform that maps the jittered crop onto size x size
        scale = size / (2 * half * zoom)
        m = cv2.getRotationMatrix2D((cx + dx, cy + dy), angle, scale)
        m[:, 2] += size / 2 - np.array([cx + dx, cy + dy])
        face = cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101)
        if rng.random() < 0.5:
            face = face[:, ::-1]
        gain = rng.uniform(0.85, 1.15)
        face = np.clip(face.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        path = out_dir / f"astronaut_{i:03d}.png"
        save_rgb(path, np.ascontiguousarray(face))
        paths.append(path)
    return paths
