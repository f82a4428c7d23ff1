"""lrpo.rewards.identity: alignment geometry, embedding plumbing, and SFace on real faces.

The real-face tests read $LRPO_SHARED (default: the `shared` folder beside the repository) and skip
with a reason when the SFace / YuNet files or the faces are absent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrpo import weights
from lrpo.rewards import RewardInput, build_reward
from lrpo.data.geometry import similarity_transform
from lrpo.rewards.identity import (
    ARCFACE_TEMPLATE,
    FaceEmbedder,
    IdentityReward,
    align_faces,
    ffhq_landmarks,
    warp_affine,
)

SHARED = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
WEIGHTS = SHARED / "weights"
FACES = SHARED / "data" / "faces-hq"
# Two photos each of two people (checked by eye; SFace cosine 0.93 and 0.97 at 512 px), and the
# two people are different (cosine -0.04 between 00029 and 00106).
PERSON_A = ("ALAE__dataset_samples_faces_realign1024x1024_00029.jpg", "ALAE__dataset_samples_faces_realign1024x1024_00085.jpg")
PERSON_B = ("ALAE__dataset_samples_faces_realign1024x1024_00106.jpg", "ALAE__dataset_samples_faces_realign1024x1024_00121.jpg")


def _smooth(size=128, seed=0):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def test_ffhq_template_maps_near_the_arcface_template():
    # the fixed transform is a least-squares fit: the mean FFHQ landmarks land within 3 px of the
    # ArcFace points (measured: 2.5 px at most, the nose and mouth of YuNet's FFHQ mean sitting a
    # little wider and lower than ArcFace's), with no rotation to speak of (both are upright); a
    # swapped or mis-scaled landmark would miss by tens of pixels
    src = ffhq_landmarks(512, 512)
    m = similarity_transform(src, ARCFACE_TEMPLATE)
    mapped = src @ m[:, :2].T + m[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 3.0
    assert abs(math.degrees(math.atan2(m[1, 0], m[0, 0]))) < 1.5


def test_warp_affine_integer_translation_is_exact():
    x = _smooth(32)
    m = torch.tensor([[[1.0, 0.0, -3.0], [0.0, 1.0, -2.0]]])  # output(u, v) = input(u + 3, v + 2)
    out = warp_affine(x, m, out_size=20)
    torch.testing.assert_close(out, x[:, :, 2:22, 3:23])


def test_warp_affine_matches_opencv():
    x = _smooth(128)
    m = similarity_transform(ffhq_landmarks(128, 128), ARCFACE_TEMPLATE)
    ours = warp_affine(x, torch.from_numpy(m)[None])[0].permute(1, 2, 0).numpy()
    ref = cv2.warpAffine(x[0].permute(1, 2, 0).numpy(), m, (112, 112), flags=cv2.INTER_LINEAR)
    # OpenCV rounds sample positions to 1/32 px: errors up to (gradient <= 0.2/px) * 1/64 px
    assert np.abs(ours - ref).max() < 5e-3
    assert np.abs(ours - ref).mean() < 1e-3


def test_align_faces_shape_and_range_for_any_resolution():
    for size in (64, 128, 512):
        crops = align_faces(_smooth(size))
        assert crops.shape == (1, 3, 112, 112)
        assert crops.min() >= 0 and crops.max() <= 1


# ---------------------------------------------------------------------------------------------
# embedding plumbing with a torch module (no model file needed)
# ---------------------------------------------------------------------------------------------
class _Recorder(torch.nn.Module):
    def forward(self, x):
        self.last = x
        return x.mean((2, 3)) + torch.tensor([1.0, 2.0, 3.0])


def test_torch_embedder_applies_arcface_normalisation():
    module = _Recorder()
    emb = FaceEmbedder(module=module, normalisation="arcface")
    crops = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    out = emb.embed_crops(crops)
    torch.testing.assert_close(module.last, (crops * 255 - 127.5) / 127.5)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_identity_reward_caches_gt_embeddings_by_name_and_size():
    emb = FaceEmbedder(module=_Recorder(), normalisation=(0.0, 255.0))
    calls = []
    original = emb.embed
    emb.embed = lambda images: calls.append(images.shape[0]) or original(images)
    reward = IdentityReward(embedder=emb)
    gt = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    meta = [{"name": "a"}, {"name": "b"}, {}]
    reward(RewardInput(gt, gt=gt, meta=meta))
    assert calls == [3, 3]  # outputs, then all three GTs
    out = reward(RewardInput(gt, gt=gt, meta=meta))
    assert calls == [3, 3, 3, 1]  # the GT without a name is embedded again
    torch.testing.assert_close(out.scores, torch.ones(3))
    reward(RewardInput(F.interpolate(gt, size=32), gt=F.interpolate(gt, size=32), meta=meta))
    assert calls[-1] == 3  # another resolution: another cache key


def test_missing_sface_file_names_both_registry_entries(tmp_path):
    with pytest.raises(weights.MissingWeightsError, match="face_recognition_sface_2021dec.onnx.*face_recognition_sface_2021dec_int8bq.onnx"):
        IdentityReward(path=tmp_path)


def test_align_mode_is_validated():
    with pytest.raises(ValueError, match="align must be 'fixed' or 'detect'"):
        FaceEmbedder(module=_Recorder(), align="guess")


# ---------------------------------------------------------------------------------------------
# real faces with SFace
# ---------------------------------------------------------------------------------------------
def _require_shared():
    if not (WEIGHTS / "face_recognition_sface_2021dec_int8bq.onnx").is_file():
        pytest.skip(f"SFace weights not found at {WEIGHTS} (set LRPO_SHARED)")
    if not FACES.is_dir():
        pytest.skip(f"faces-hq not found at {FACES} (set LRPO_SHARED)")


def _load(names, size=128):
    images = []
    for name in names:
        bgr = cv2.imread(str(FACES / name))
        if bgr is None:
            pytest.skip(f"{FACES / name} not found")
        images.append(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1].copy())
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def sface_reward():
    _require_shared()
    return build_reward("identity", path=WEIGHTS, cache_key=None)


@pytest.mark.shared_data
def test_sface_self_blur_and_identity(sface_reward):
    faces = _load(PERSON_A + PERSON_B)  # a1, a2, b1, b2
    # a face against itself: cosine 1
    torch.testing.assert_close(sface_reward(RewardInput(faces, gt=faces)).scores, torch.ones(4), atol=1e-5, rtol=0)
    # a mildly blurred face (sigma 1 px at 128 px) keeps its identity
    blurred = torch.from_numpy(np.stack([cv2.GaussianBlur(f.permute(1, 2, 0).numpy(), (0, 0), 1.0) for f in faces]))
    assert (sface_reward(RewardInput(blurred.permute(0, 3, 1, 2), gt=faces)).scores > 0.8).all()
    # same person, other photo vs another person
    pairs = sface_reward(RewardInput(faces[[0, 2, 0, 1]], gt=faces[[1, 3, 2, 3]])).scores
    same_a, same_b, diff_ab, diff_ab2 = pairs.tolist()
    assert min(same_a, same_b) > 0.6, pairs
    assert max(diff_ab, diff_ab2) < 0.3, pairs
    assert min(same_a, same_b) > max(diff_ab, diff_ab2) + 0.4, pairs


@pytest.mark.shared_data
def test_sface_detect_alignment_agrees_with_fixed(sface_reward):
    faces = _load(PERSON_A)
    detect = build_reward("identity", path=WEIGHTS, align="detect", detector_path=WEIGHTS, cache_key=None)
    out = detect(RewardInput(faces[[0]], gt=faces[[1]]))
    torch.testing.assert_close(out.details["detected"], torch.ones(1))
    fixed = sface_reward(RewardInput(faces[[0]], gt=faces[[1]])).scores
    # both alignments see the same person: similar cosines
    assert abs(out.scores.item() - fixed.item()) < 0.1
