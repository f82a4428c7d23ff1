"""``lrpo restore`` as a new user meets it (issue 23 items 3 and 5): one line per mistake, no output
folder before an input is known to be readable, cmp/ for --aligned, the face policy for aligned
crops larger than the policy; a command-line override is blamed for its own bad value."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lrpo.cli import main
from lrpo.config import ConfigError, PretrainConfig, load_config
from lrpo.data.images import load_rgb, save_rgb

from tests.conftest import single_thread, write_tiny_faces


def _restore(in_path: Path, out: Path, ckpt: Path, *extra: str) -> int:
    return main(["restore", str(in_path), str(out), "--checkpoint", str(ckpt), "--steps", "2", "--device", "cpu", "--no-progress", *extra])


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    return err


def test_a_mistyped_input_does_not_exist(tiny_run, tmp_path, capsys):
    assert _restore(tmp_path / "photso", tmp_path / "out", tiny_run) == 2
    _one_line_error(capsys, "photso: does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("aligned", [False, True])
def test_a_pdf_renamed_jpg_is_named_and_no_output_folder_is_made(tiny_run, tmp_path, capsys, monkeypatch, aligned):
    from tests.photo_scenes import yunet_dir

    if not aligned and yunet_dir() is None:
        pytest.skip("whole photos need the YuNet file")
    monkeypatch.setenv("LRPO_WEIGHTS", str(yunet_dir() or tmp_path))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "scan.jpg").write_bytes(b"%PDF-1.4 not an image")
    assert _restore(folder, tmp_path / "out", tiny_run, *(["--aligned"] if aligned else [])) == 1
    printed = capsys.readouterr().out
    assert "scan.jpg: cannot read image (not a recognised image format)" in printed
    assert f"no {'image' if aligned else 'photo'} was written" in printed
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_line(tiny_run, tmp_path, capsys):
    faces = write_tiny_faces(tmp_path / "in", count=1)
    (tmp_path / "out.png").write_bytes(b"x")
    assert _restore(faces[0].parent, tmp_path / "out.png", tiny_run, "--aligned") == 2
    _one_line_error(capsys, "out.png", "not a folder")


def test_an_unknown_face_policy_is_one_line(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _restore(tmp_path, tmp_path / "out", tiny_run, "--face-policy", "sometimes")
    err = capsys.readouterr().err
    assert "--face-policy: invalid choice: 'sometimes'" in err


def test_a_bad_override_value_is_blamed_on_the_command_line():
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, "cpu-quickstart", ["optim.lr=abc"])
    assert str(e.value) == "command-line override 'optim.lr=abc': optim.lr must be a number, got 'abc'"
    with pytest.raises(ConfigError, match="^command-line override 'optim.lr=-1': optim.lr must be > 0"):
        load_config(PretrainConfig, "cpu-quickstart", ["optim.lr=-1"])


def test_a_bad_value_in_the_file_is_still_blamed_on_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: optim.lr must be a number"):
        load_config(PretrainConfig, bad, ["steps=3"])


# ---------------------------------------------------------------------------------------------
# --aligned: cmp/ and faces larger than the policy
# ---------------------------------------------------------------------------------------------
def _textured(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 0.7)


def _lap_var(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F).var())


def test_aligned_writes_cmp_and_keeps_the_detail_of_large_crops(tiny_run, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    big = _textured(64, 1)  # 4 x the tiny run's 16 px
    save_rgb(folder / "big.png", big)
    with single_thread():
        assert _restore(folder, tmp_path / "auto", tiny_run, "--aligned") == 0
        printed = capsys.readouterr().out
        assert _restore(folder, tmp_path / "always", tiny_run, "--aligned", "--face-policy", "always") == 0
        assert _restore(folder, tmp_path / "never", tiny_run, "--aligned", "--face-policy", "never-larger") == 0
    assert "look at" in printed and "/cmp (input | restored)" in printed
    assert "1 input(s) are larger than the policy's 16 px: restored at it, their own detail above it kept" in printed
    auto, always = load_rgb(tmp_path / "auto" / "big.png"), load_rgb(tmp_path / "always" / "big.png")
    cmp = load_rgb(tmp_path / "auto" / "cmp" / "big.png")
    assert cmp.shape == (64, 128, 3) and np.array_equal(cmp[:, :64], big) and np.array_equal(cmp[:, 64:], auto)
    # always: a 16 px restoration enlarged 4 x holds no detail above 16 px; auto keeps the input's
    assert _lap_var(always) < 0.3 * _lap_var(big) and _lap_var(auto) >= 0.9 * _lap_var(big)
    assert np.array_equal(load_rgb(tmp_path / "never" / "big.png"), big)
