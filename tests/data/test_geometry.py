"""lrpo.data.geometry: the least-squares similarity transform between two point sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrpo.data.geometry import similarity_transform


def test_similarity_transform_recovers_a_known_one():
    angle, scale, t = math.radians(10), 0.8, np.array([5.0, -3.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    src = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])  # five landmarks, ArcFace-like
    dst = src @ rot.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-12)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-10)


def test_similarity_transform_rejects_bad_points():
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        similarity_transform(np.zeros((5, 3)), np.zeros((5, 3)))
