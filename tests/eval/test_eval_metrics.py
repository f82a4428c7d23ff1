"""Evaluation metrics: FID maths and the Inception loader, landmarks/LMD, identity, method specs.

Real faces and model files come from $LRPO_SHARED (default: ../shared beside the repository);
tests that need them skip with the reason when absent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lrpo.eval.evaluate import MethodSpec
from lrpo.eval.scorers import identity_degrees, summarise
from lrpo.eval.fid import (
    INCEPTION_FID_WEIGHTS,
    InceptionFeatures,
    _avg_pool_3x3,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    psd_sqrt,
)
from lrpo.eval.landmarks import LMD_SIZE, landmark_distance, landmark_distances
from lrpo.model_files import StateDictMismatchError
from lrpo.weights import MissingWeightsError

SHARED = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
FACES = SHARED / "data" / "faces-hq"
WEIGHTS = SHARED / "weights"
YUNET = WEIGHTS / "face_detection_yunet_2023mar.onnx"
SFACE = WEIGHTS / "face_recognition_sface_2021dec_int8bq.onnx"
# Two photos of one person and a photo of another (faces-hq): SFace gives 0.925 for the first pair
# and 0.12 is the median over all pairs of the folder (measured).
SAME_A = "ALAE__dataset_samples_faces_realign1024x1024_00087.jpg"
SAME_B = "ALAE__dataset_samples_faces_realign1024x1024_00092.jpg"
OTHER = "ALAE__dataset_samples_faces_realign1024x1024_00041.jpg"


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.exists():
            pytest.skip(f"{p.name} not found at {p} (set LRPO_SHARED to the shared folder)")


def _face(name: str, size: int = 256) -> np.ndarray:
    from lrpo.data.images import load_rgb, resize_square

    _need(FACES / name)
    return resize_square(load_rgb(FACES / name), size)


# ---------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------
def test_frechet_1d_matches_closed_form():
    # N(1, 2^2) vs N(4, 3^2): (1 - 4)^2 + 4 + 9 - 2 sqrt(4 * 9) = 9 + 13 - 12 = 10
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([4.0]), np.array([[9.0]])) == pytest.approx(10.0, abs=1e-12)
    assert frechet_distance(1.0, 4.0, 4.0, 9.0) == pytest.approx(10.0, abs=1e-12)  # scalars accepted


def test_frechet_2d_diagonal():
    # |(0,0) - (1,2)|^2 = 5; tr S1 + tr S2 = 5 + 25; sqrt(S1 S2) = diag(3, 8) -> 11: 5 + 30 - 22 = 13
    value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([9.0, 16.0]))
    assert value == pytest.approx(13.0, abs=1e-10)


def test_frechet_2d_non_commuting_covariances():
    # S1 = diag(4, 1), S2 = [[2, 1], [1, 2]]: S1 S2 = [[8, 4], [1, 2]], trace 10, det 12. For a 2x2
    # matrix with eigenvalues l1, l2 >= 0, (sqrt l1 + sqrt l2)^2 = trace + 2 sqrt(det), so
    # tr sqrt(S1 S2) = sqrt(10 + 2 sqrt 12) = sqrt(10 + 4 sqrt 3). Equal means:
    # FID = 5 + 4 - 2 sqrt(10 + 4 sqrt 3) = 0.77118...
    s1, s2 = np.diag([4.0, 1.0]), np.array([[2.0, 1.0], [1.0, 2.0]])
    expected = 9 - 2 * math.sqrt(10 + 4 * math.sqrt(3))
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected, abs=1e-10)
    assert frechet_distance(np.zeros(2), s2, np.zeros(2), s1) == pytest.approx(expected, abs=1e-10)  # symmetric
    # S1 = I: tr sqrt(S2) = sqrt 3 + 1 (eigenvalues 3 and 1): FID = 2 + 4 - 2 (sqrt 3 + 1) = 4 - 2 sqrt 3
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), s2) == pytest.approx(4 - 2 * math.sqrt(3), abs=1e-10)


def test_psd_sqrt_squares_back():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 3))
    m = a @ a.T  # rank 3: singular, as covariances of few samples are
    r = psd_sqrt(m)
    np.testing.assert_allclose(r @ r, m, atol=1e-10)
    np.testing.assert_allclose(r, r.T, atol=1e-12)


def test_fid_from_features_identical_and_shifted_sets():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((50, 8))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # shifting every feature by c leaves the covariance alone: FID = |c|^2 = 8 * 0.5^2 = 2
    assert fid_from_features(f, f + 0.5) == pytest.approx(2.0, abs=1e-8)
    # fewer samples than dimensions: singular covariances, still finite and >= 0
    g = rng.standard_normal((5, 8))
    value = fid_from_features(g, g[::-1] * 2)
    assert math.isfinite(value) and value >= 0


def test_feature_statistics_uses_unbiased_covariance():
    f = np.array([[0.0], [2.0]])  # mean 1, squared deviations 1 + 1 over N - 1 = 1 -> variance 2
    mu, sigma = feature_statistics(f)
    assert mu.tolist() == [1.0] and sigma.tolist() == [[2.0]]
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(f[:1])


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ---------------------------------------------------------------------------------------------
# FID Inception v3
# ---------------------------------------------------------------------------------------------
def _random_inception(seed: int = 0) -> InceptionFeatures:
    # Kaiming-normal convolutions keep activations at unit scale through the 90+ layers; torch's
    # default init shrinks them into float denormals, which makes CPU convolutions ~10x slower.
    torch.manual_seed(seed)
    model = InceptionFeatures().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def test_inception_layout_matches_torchvision_inception3():
    model = InceptionFeatures()
    # torchvision's inception_v3 has 27,161,264 parameters; without its AuxLogits branch
    # (conv 768->128 1x1: 98,304 + BN 256; conv 128->768 5x5: 2,457,600 + BN 1,536; fc 768->1000:
    # 769,000; total 3,326,696) it has 23,834,568, and FID's 1008-way fc adds 2048 * 8 + 8 = 16,392.
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    sd = model.state_dict()
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6b.branch7x7dbl_2.conv.weight"].shape == (128, 128, 7, 1)
    assert sd["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert sd["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in sd)


def test_fid_pools_exclude_padding():
    # a constant map stays constant under a 3x3 average that ignores the zero padding; counting
    # the padding would give 4/9 in the corners
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(_avg_pool_3x3(x), x)


def test_inception_loads_a_file_in_the_published_layout(tmp_path: Path):
    model = _random_inception(0)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / INCEPTION_FID_WEIGHTS.filename
    torch.save(sd, path)
    loaded = InceptionFeatures.from_registry(path)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        out = loaded(x)
    assert out.shape == (1, 2048)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    # a file missing a key is refused with the key named
    del sd["Mixed_5b.branch1x1.conv.weight"]
    torch.save(sd, path)
    with pytest.raises(StateDictMismatchError, match="Mixed_5b.branch1x1.conv.weight"):
        InceptionFeatures.from_file(path)


def test_inception_missing_file_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures.from_registry()


# ---------------------------------------------------------------------------------------------
# landmarks and LMD
# ---------------------------------------------------------------------------------------------
def test_landmark_distance_is_mean_euclidean():
    a = np.zeros((5, 2))
    b = a + [3.0, 4.0]  # every point 5 px away
    assert landmark_distance(a, b) == 5.0
    c = a.copy()
    c[0] = [6.0, 8.0]  # one point 10 px away, four at 0: mean 2
    assert landmark_distance(a, c) == 2.0
    assert math.isnan(landmark_distance(a, None)) and math.isnan(landmark_distance(None, None))
    np.testing.assert_array_equal(np.isnan(landmark_distances([a, None], [b, a])), [False, True])
    with pytest.raises(ValueError, match="one shape"):
        landmark_distance(a, np.zeros((4, 2)))


@pytest.fixture(scope="module")
def detector():
    from lrpo.eval.landmarks import LandmarkDetector

    _need(YUNET)
    return LandmarkDetector(YUNET)


def _shift_right(image: np.ndarray, pixels: int) -> np.ndarray:
    out = np.repeat(image[:, :1], image.shape[1], axis=1)  # edge-replicated border, no black bar
    out[:, pixels:] = image[:, :-pixels]
    return out


def test_lmd_of_a_face_with_itself_is_zero(detector):
    face = _face(SAME_A, 512)
    points = detector.detect(face)
    assert points is not None and points.shape == (5, 2)
    # eyes above the nose, the nose above the mouth corners; left features on the left
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
    assert points[:2, 1].max() < points[2, 1] < points[3:, 1].min()
    assert landmark_distance(points, detector.detect(face.copy())) == 0.0


def test_lmd_is_measured_at_512_scale(detector):
    # Shifting a face right by 8 px at 512 moves every landmark by 8 px; at 256 px the same
    # motion is 4 px, which the 512-scale convention reports as 8 again. YuNet's landmark
    # regression jitters by about 1 px under translation (measured), hence the 2 px tolerance.
    face = _face(SAME_A, 512)
    assert landmark_distance(detector.detect(face), detector.detect(_shift_right(face, 8))) == pytest.approx(8.0, abs=2.0)
    small = _face(SAME_A, 256)
    assert landmark_distance(detector.detect(small), detector.detect(_shift_right(small, 4))) == pytest.approx(8.0, abs=2.0)
    assert LMD_SIZE == 512


def test_no_face_gives_none_and_nan(detector):
    grey = np.full((64, 64, 3), 128, np.uint8)
    assert detector.detect(grey) is None
    face = torch.from_numpy(_face(SAME_A, 128)).permute(2, 0, 1).float() / 255
    found = detector.detect_batch(torch.stack([face, torch.full_like(face, 0.5)]))
    assert found[0] is not None and found[1] is None


# ---------------------------------------------------------------------------------------------
# identity
# ---------------------------------------------------------------------------------------------
def test_identity_cosine_same_and_different_person():
    from lrpo.data.images import to_tensor
    from lrpo.rewards.identity import FaceEmbedder

    _need(SFACE)
    emb = FaceEmbedder(path=SFACE)
    faces = torch.stack([to_tensor(_face(n)) for n in (SAME_A, SAME_B, OTHER)])
    e = emb.embed(faces)
    assert float(e[0] @ emb.embed(faces[:1].clone())[0]) == pytest.approx(1.0, abs=1e-5)
    same, other = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert same > 0.8  # 0.925 measured for these two photos
    assert other < 0.4  # different people: 0.12 median over faces-hq
    assert identity_degrees(np.array([same]))[0] < identity_degrees(np.array([other]))[0]


def test_identity_degrees():
    # arccos: 1 -> 0, 0.5 -> 60, 0 -> 90, -1 -> 180; values outside [-1, 1] from rounding are clipped
    np.testing.assert_allclose(identity_degrees(np.array([1.0, 0.5, 0.0, -1.0, 1.0000001])), [0, 60, 90, 180, 0], atol=1e-9)


# ---------------------------------------------------------------------------------------------
# aggregation and method specs
# ---------------------------------------------------------------------------------------------
def test_summarise_ignores_nan_and_sums_failures():
    rows = [
        {"psnr": 20.0, "lmd": 2.0, "lmd_fail": 0.0},
        {"psnr": 30.0, "lmd": float("nan"), "lmd_fail": 1.0},
        {"psnr": 25.0, "lmd": 4.0, "lmd_fail": 0.0},
    ]
    s = summarise(rows, ["psnr", "lmd", "lmd_fail", "absent"])
    assert s == {"psnr": 25.0, "lmd": 3.0, "lmd_fail": 1.0, "absent": None}


def test_method_spec_parse():
    m = MethodSpec.parse("ours=ckpt:runs/lrpo", steps=20, eta=0.5, seed=3)
    assert (m.name, m.kind, m.path, m.steps, m.eta, m.seed) == ("ours", "checkpoint", "runs/lrpo", 20, 0.5, 3)
    m = MethodSpec.parse("cf=folder:/data/results/codeformer/")
    assert (m.name, m.kind, m.path) == ("cf", "folder", "/data/results/codeformer/")
    m = MethodSpec.parse("folder:/data/results/gfpgan")  # name from the path
    assert (m.name, m.kind) == ("gfpgan", "folder")
    m = MethodSpec.parse("ours-0.8=ckpt:runs/a#b#eta=0.8,steps=10")  # only a settings suffix is split off
    assert (m.path, m.eta, m.steps) == ("runs/a#b", 0.8, 10)
    with pytest.raises(ValueError, match="NAME=ckpt:PATH"):
        MethodSpec.parse("ours=model:runs/x")
    with pytest.raises(ValueError, match="method name"):
        MethodSpec.parse("a/b=folder:x")
