"""``lrpo restore`` and the command line (lrpo.cli, lrpo.inference.restorer, lrpo.policies.sampling).

Restoration uses the shared 4-step tiny run of conftest (``tiny_run``); its output layer has moved
away from zero, so outputs depend on the network and on each image's seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrpo.checkpoint import find_checkpoint, load_state
from lrpo.cli import main
from lrpo.data.images import load_rgb, save_rgb
from lrpo.inference.restorer import Restorer
from lrpo.policies.loading import load_policy
from lrpo.precision import autocast_context
from lrpo.manifest import MANIFEST_NAME
from lrpo.outputs import KIND_FILE

from tests.conftest import single_thread, tiny_overrides, write_tiny_faces

# (height, width) of the good inputs: smaller, equal to and larger than the 16 px model, non-square
SIZES = [(16, 16), (24, 20), (40, 40), (12, 30)]


@pytest.fixture
def lq_folder(tmp_path: Path) -> Path:
    faces = write_tiny_faces(tmp_path / "src", count=len(SIZES), seed=7)
    folder = tmp_path / "lq"
    folder.mkdir()
    for i, ((h, w), path) in enumerate(zip(SIZES, faces)):
        save_rgb(folder / f"img_{i}.png", cv2.resize(load_rgb(path), (w, h), interpolation=cv2.INTER_AREA))
    (folder / "img_2b_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")  # sorts among the good ones
    return folder


def _restore(in_dir: Path, out_dir: Path, ckpt: Path, *extra: str) -> int:
    """``lrpo restore --aligned``: folders of aligned crops."""
    return main(["restore", str(in_dir), str(out_dir), "--checkpoint", str(ckpt), "--aligned", "--steps", "2", "--device", "cpu",
                 "--no-progress", *extra])


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    # lrpo's records and cmp/ (input | restored) aside
    return {p.name: load_rgb(p) for p in sorted(folder.iterdir()) if not p.name.startswith(".lrpo-") and p.name != "cmp"}


# ---------------------------------------------------------------------------------------------
# lrpo restore
# ---------------------------------------------------------------------------------------------
def test_restore_folder_keeps_sizes_and_reports_the_corrupt_file(tiny_run, lq_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert _restore(lq_folder, out, tiny_run) == 1  # the corrupt file was skipped
    printed = capsys.readouterr().out
    restored = _outputs(out)
    assert sorted(restored) == [f"img_{i}.png" for i in range(len(SIZES))]
    for i, (h, w) in enumerate(SIZES):
        img = restored[f"img_{i}.png"]
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
    assert f"restored {len(SIZES)} image(s)" in printed
    assert "note: 2 input(s) are not square (first: img_1.png)" in printed  # 24 x 20 and 12 x 30
    assert "1 file(s) could not be read and were skipped (exit code 1)" in printed and "img_2b_corrupt.jpg" in printed


def test_restore_is_independent_of_batch_size(tiny_run, lq_folder, tmp_path, capsys):
    assert _restore(lq_folder, tmp_path / "b1", tiny_run, "--batch-size", "1") == 1  # the corrupt file was skipped
    assert _restore(lq_folder, tmp_path / "b3", tiny_run, "--batch-size", "3") == 1  # the corrupt file was skipped
    one, three = _outputs(tmp_path / "b1"), _outputs(tmp_path / "b3")
    assert one.keys() == three.keys()
    for name in one:
        assert np.array_equal(one[name], three[name]), name
    # the comparison means something: image i's output depends on its seed (seed + i)
    assert _restore(lq_folder, tmp_path / "s1", tiny_run, "--batch-size", "3", "--seed", "1") == 1  # the corrupt file was skipped
    shifted = _outputs(tmp_path / "s1")
    assert not np.array_equal(shifted["img_0.png"], one["img_0.png"])


def test_restore_in_bf16_stays_close_to_fp32(tiny_run, lq_folder, tmp_path):
    assert _restore(lq_folder, tmp_path / "fp32", tiny_run) == 1  # the corrupt file was skipped
    assert _restore(lq_folder, tmp_path / "bf16", tiny_run, "--precision", "bf16") == 1  # the corrupt file was skipped
    fp32, bf16 = _outputs(tmp_path / "fp32"), _outputs(tmp_path / "bf16")
    assert fp32.keys() == bf16.keys()
    for k in fp32:
        # only the network runs in bf16 (8 mantissa bits) and its output is small after 4 training
        # steps; observed differences are at most 1 grey level, 4 leaves room across CPUs
        assert np.abs(fp32[k].astype(int) - bf16[k].astype(int)).max() <= 4, k


def test_restore_uses_ema_weights_unless_told_not_to(tiny_run, lq_folder, tmp_path):
    # the tiny run's EMA (decay 0.5) differs from its raw weights, so the outputs differ
    assert _restore(lq_folder, tmp_path / "ema", tiny_run) == 1  # the corrupt file was skipped
    assert _restore(lq_folder, tmp_path / "raw", tiny_run, "--no-ema") == 1  # the corrupt file was skipped
    ema, raw = _outputs(tmp_path / "ema"), _outputs(tmp_path / "raw")
    assert any(not np.array_equal(ema[k], raw[k]) for k in ema)


def test_restore_keeps_inputs_that_share_a_stem_apart(tiny_run, tmp_path):
    folder = tmp_path / "in"
    faces = write_tiny_faces(tmp_path / "src", count=2, seed=3)
    save_rgb(folder / "face.png", load_rgb(faces[0]))
    cv2.imwrite(str(folder / "face.jpg"), load_rgb(faces[1])[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    save_rgb(folder / "other.png", load_rgb(faces[1]))
    assert _restore(folder, tmp_path / "out", tiny_run) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST_NAME, KIND_FILE, "cmp", "face_jpg.png", "face_png.png", "other.png"]


def test_restore_refuses_to_overwrite_its_inputs(tiny_run, lq_folder, capsys):
    before = {p.name: p.read_bytes() for p in lq_folder.iterdir()}
    assert _restore(lq_folder, lq_folder / ".." / lq_folder.name, tiny_run) == 2
    assert "OUT_DIR is IN_DIR" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in lq_folder.iterdir()} == before


def test_restore_with_only_unreadable_files_fails(tiny_run, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    assert _restore(folder, tmp_path / "out", tiny_run) == 1
    assert "a.png" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "0"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_restore_rejects_bad_options(tiny_run, lq_folder, tmp_path, capsys, args, words):
    assert _restore(lq_folder, tmp_path / "out", tiny_run, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrpo restore: error:") and words in err and err.count("\n") == 1


def test_restore_with_a_missing_checkpoint_is_a_one_line_error(lq_folder, tmp_path, capsys):
    assert _restore(lq_folder, tmp_path / "out", tmp_path / "no_run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_run" in err and "no such checkpoint" in err


def test_restorer_api_returns_input_sizes(tiny_run):
    restorer = Restorer.from_checkpoint(tiny_run, steps=2, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    out = restorer.restore(images, seeds=list(range(len(images))))
    assert [o.shape for o in out] == [(h, w, 3) for h, w in SIZES]
    assert restorer.policy.unet.channels_last  # a restorer's policy is inference_only (it never trains)
    # seeds, not positions in the batch, decide each output
    again = restorer.restore(images[::-1], seeds=list(range(len(images)))[::-1])
    for a, b in zip(out, again[::-1]):
        assert np.array_equal(a, b)


def test_compile_auto_stays_off_where_the_restoring_forward_is_as_fast_eager(tiny_run):
    """On the CPU at batch > 1 the channels-last eager forward is as fast as a compiled one, so `auto`
    does not compile however long the job; `on` does, and batch 1 (the demo's case) keeps the rule."""
    restorer = Restorer.from_checkpoint(tiny_run, steps=50, device="cpu", precision="bf16")
    note = restorer.compile_for(faces=10_000, batch_size=8, setting="auto")
    assert restorer.forward is None and "as fast eager" in note
    assert restorer.compile_for(faces=10_000, batch_size=8, setting="on") == "compile: on" and restorer.forward is not None
    fp32 = Restorer.from_checkpoint(tiny_run, steps=50, device="cpu", precision="fp32")
    assert "as fast eager" in fp32.compile_for(faces=10_000, batch_size=8, setting="auto") and fp32.forward is None
    assert "as fast eager" not in fp32.compile_for(faces=10_000, batch_size=1, setting="auto")


def test_load_policy_rebuilds_from_the_checkpoint_alone(tiny_run):
    policy, diffusion, ckpt = load_policy(tiny_run)
    assert ckpt == find_checkpoint(tiny_run)
    assert policy.cfg.resolution == 16 and policy.cfg.base_channels == 8
    assert not policy.training
    assert diffusion.train_timesteps == 1000
    assert policy.unet.out.weight.abs().sum() > 0  # trained away from the zero initialisation


def test_autocast_context_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        autocast_context(torch.device("cpu"), "fp16")


# ---------------------------------------------------------------------------------------------
# lrpo restore on whole photos
# ---------------------------------------------------------------------------------------------
def _restore_photos(in_path: Path, out_dir: Path, ckpt: Path, *extra: str) -> int:
    return main(["restore", str(in_path), str(out_dir), "--checkpoint", str(ckpt), "--steps", "2", "--device", "cpu", "--no-progress", *extra])


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    from tests.photo_scenes import Placement, make_photo

    folder = tmp_path / "photos"
    photo, _ = make_photo(360, 480, [Placement((150, 150), 50, 0), Placement((340, 170), 40, -10)])
    save_rgb(folder / "group.png", photo)
    save_rgb(folder / "wall.png", np.full((60, 80, 3), 200, np.uint8))  # no face
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return folder


@pytest.mark.shared_data
def test_restore_photos_writes_the_usual_layout(tiny_run, photo_folder, tmp_path, capsys, monkeypatch):
    from tests.photo_scenes import require_yunet

    monkeypatch.setenv("LRPO_WEIGHTS", str(require_yunet()))
    out = tmp_path / "out"
    with single_thread():
        assert _restore_photos(photo_folder, out, tiny_run, "-s", "2", "--draw-box") == 1  # the corrupt file was skipped
    printed = capsys.readouterr().out
    assert "restored 2 of 2 detected face(s) in 2 photo(s)" in printed
    assert "1 photo(s) without a face, copied as they are: wall.png" in printed
    assert "broken.jpg" in printed and "could not be read" in printed
    assert "seam figure" in printed and "detect" in printed and "paste" in printed
    assert load_rgb(out / "restored_imgs" / "group.png").shape == (720, 960, 3)
    assert load_rgb(out / "restored_imgs" / "wall.png").shape == (120, 160, 3)  # upscaled too
    assert sorted(p.name for p in (out / "restored_faces").iterdir()) == ["group_00.png", "group_01.png"]
    lines = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    assert [(d["photo"], d["restored"]) for d in lines] == [("group.png", True), ("group.png", True)]


@pytest.mark.shared_data
def test_restore_one_photo_file(tiny_run, photo_folder, tmp_path, monkeypatch):
    from tests.photo_scenes import require_yunet

    monkeypatch.setenv("LRPO_WEIGHTS", str(require_yunet()))
    with single_thread():
        assert _restore_photos(photo_folder / "group.png", tmp_path / "out", tiny_run, "--max-faces", "1") == 0
    assert [p.name for p in (tmp_path / "out" / "restored_imgs").iterdir()] == ["group.png"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert [d["restored"] for d in lines] == [True, False] and lines[1]["reason"] == "beyond --max-faces 1"


def test_restore_aligned_crops_of_a_single_file(tiny_run, lq_folder, tmp_path):
    assert _restore(lq_folder / "img_0.png", tmp_path / "out", tiny_run) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST_NAME, KIND_FILE, "cmp", "img_0.png"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--aligned", "--upscale", "2", "--draw-box"], "--upscale, --draw-box apply to whole photos"),
        (["--max-faces", "0"], "--max-faces"),
        (["--upscale", "0"], "--upscale"),
        (["--bg-upsampler", "no_such_module_xyz:fn"], "cannot import 'no_such_module_xyz'"),
        (["--bg-upsampler", "nocolon"], "MODULE:FUNCTION"),
        (["--det-threshold", "1.5"], "score threshold"),
    ],
)
def test_restore_photos_rejects_bad_options(tiny_run, photo_folder, tmp_path, capsys, monkeypatch, args, words):
    from tests.photo_scenes import yunet_dir

    if yunet_dir() is not None:
        monkeypatch.setenv("LRPO_WEIGHTS", str(yunet_dir()))
    assert _restore_photos(photo_folder, tmp_path / "out", tiny_run, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrpo restore: error:") and words in err and err.count("\n") == 1, err


def test_restore_photos_without_the_detector_file_names_it(tiny_run, photo_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    assert _restore_photos(photo_folder, tmp_path / "out", tiny_run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "face_detection_yunet_2023mar.onnx" in err


def test_bg_upsampler_from_a_file(tmp_path):
    from lrpo.inference.photo import load_upsampler

    script = tmp_path / "my_upsampler.py"
    script.write_text("import numpy as np\ndef double(img, scale):\n    return np.repeat(np.repeat(img, 2, 0), 2, 1)\n")
    fn = load_upsampler(f"{script}:double")
    assert fn(np.zeros((3, 4, 3), np.uint8), 2.0).shape == (6, 8, 3)
    with pytest.raises(ValueError, match="no callable 'triple'"):
        load_upsampler(f"{script}:triple")


# ---------------------------------------------------------------------------------------------
# help texts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, words",
    [
        (["--help"], ["quickstart", "degrade", "pretrain", "restore", "weights"]),
        (["pretrain", "--help"], ["--config", "--resume", "key=value", "optim.lr"]),
        (["restore", "--help"], ["IN", "OUT", "--checkpoint", "--aligned", "--steps", "--eta", "--seed", "--batch-size", "--no-ema",
                                 "--min-face-size", "--only-center-face", "--max-faces", "--upscale", "--bg-upsampler",
                                 "--color-match", "--draw-box", "cropped_faces", "faces.jsonl"]),
        (["quickstart", "--help"], ["--data", "--out", "--minutes"]),
        (["degrade", "--help"], ["HQ_DIR", "OUT_DIR", "--seed", "--size", "--preset"]),
        (["weights", "--help"], ["list", "path", "verify", "fetch"]),
    ],
)
def test_help(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    for w in words:
        assert w in text, w


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: lrpo" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# lrpo pretrain
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, words",
    [
        (["policy.base_chanels=16", "data.hq=x"], "base_chanels"),
        (["steps=many", "data.hq=x"], "steps must be an integer"),
        (["steps"], "must look like key=value"),
        ([], "data.hq is empty"),
    ],
)
def test_pretrain_bad_config_is_a_one_line_error(overrides, words, capsys):
    assert main(["pretrain", "--no-progress", *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("lrpo pretrain: error:") and captured.err.count("\n") == 1
    assert words in captured.err


def test_pretrain_missing_config_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["pretrain", "--config", str(tmp_path / "nope.yaml"), "data.hq=x"]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and err.count("\n") == 1


def _copy_of_tiny_run(tiny_run: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    overrides = tiny_overrides(tiny_run.parent / "faces", run) + ["steps=4", "optim.warmup_steps=0", "optim.lr=1e-2", "ema_decay=0.5"]
    return run, overrides


@pytest.mark.parametrize("flag_first", [False, True])
def test_pretrain_resume_from_the_latest_checkpoint(tiny_run, tmp_path, capsys, flag_first):
    # the copied run already reached steps=4: resuming validates, saves and reports without training
    run, overrides = _copy_of_tiny_run(tiny_run, tmp_path)
    # `--resume steps=4 ...` hands "steps=4" to --resume; it must still count as an override
    argv = ["pretrain", "--no-progress", "--resume", *overrides] if flag_first else ["pretrain", "--no-progress", *overrides, "--resume"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["step"] == 4 and result["checkpoint"] == str(run / "step_000004")
    assert load_state(run)["step"] == 4


def test_pretrain_resume_from_a_missing_folder_is_an_error(tiny_run, tmp_path, capsys):
    _, overrides = _copy_of_tiny_run(tiny_run, tmp_path)
    assert main(["pretrain", "--no-progress", "--resume", str(tmp_path / "elsewhere"), *overrides]) == 2
    assert "elsewhere" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# lrpo quickstart
# ---------------------------------------------------------------------------------------------
def test_image_grid_layout():
    from lrpo.data.images import image_grid

    a = np.zeros((4, 5, 3), np.uint8)
    b = np.full((4, 5, 3), 100, np.uint8)
    grid = image_grid([[a, b], [b]], pad=2)
    # 2 rows of height 4 and 2 columns of width 5, with 2 px gaps around and between: 2+4+2+4+2, 2+5+2+5+2
    assert grid.shape == (14, 16, 3) and grid.dtype == np.uint8
    assert (grid[2:6, 2:7] == 0).all() and (grid[2:6, 9:14] == 100).all() and (grid[8:12, 2:7] == 100).all()
    assert (grid[8:12, 9:14] == 255).all()  # the missing cell stays white
    assert (grid[:2] == 255).all() and (grid[6:8] == 255).all() and (grid[:, 7:9] == 255).all()


def test_embedded_faces_are_deterministic(tmp_path):
    from lrpo.data.samples import embedded_faces

    first = embedded_faces(tmp_path / "a", count=3, size=32, seed=1)
    again = embedded_faces(tmp_path / "b", count=3, size=32, seed=1)
    other = embedded_faces(tmp_path / "c", count=3, size=32, seed=2)
    assert [p.name for p in first] == ["astronaut_000.png", "astronaut_001.png", "astronaut_002.png"]
    for p, q, r in zip(first, again, other):
        img = load_rgb(p)
        assert img.shape == (32, 32, 3) and img.std() > 10  # a picture, not a flat fill
        assert np.array_equal(img, load_rgb(q))
    assert any(not np.array_equal(load_rgb(p), load_rgb(r)) for p, r in zip(first, other))


@pytest.mark.slow
def test_quickstart_end_to_end_on_tiny_faces(tiny_faces, tmp_path, capsys):
    (tiny_faces / "zz_broken.png").write_bytes(b"nope")
    out = tmp_path / "qs"
    with single_thread():
        argv = ["quickstart", "--data", str(tiny_faces), "--out", str(out), "--minutes", "0.0001", "--rl-minutes", "0.0001", "--no-progress"]
        assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"input", "base", "lrpo"} <= set(metrics["summary"])
    for method in ("base", "lrpo"):
        assert np.isfinite(metrics["summary"][method]["psnr"])
    html = (out / "eval" / "report.html").read_text()
    assert "lrpo" in html and "base" in html and "data:image/png;base64" in html
    assert find_checkpoint(out / "pretrain").name.startswith("step_")
    assert find_checkpoint(out / "lrpo").name.startswith("step_")
    assert f"report: {out / 'eval' / 'report.html'}" in printed
    assert "not the RL alone" in printed and "pg_weight=0" in printed  # the summary credits the method, not the RL
    assert "GT-guided term accounts for the gain" in printed  # and says where the gain comes from at this scale


def test_overrides_may_follow_the_options(monkeypatch):
    """`lrpo train --config X --no-progress lr=1e-5` and `lrpo train lr=1e-5 --no-progress` parse alike."""
    from lrpo.cli import build_parser

    seen = []
    monkeypatch.setattr("lrpo.cli.cmd_train", lambda args: seen.append(args.overrides) or 0)
    assert main(["train", "--no-progress", "lr=1e-5", "epochs=2"]) == 0
    assert main(["train", "lr=1e-5", "--no-progress", "epochs=2"]) == 0
    assert seen == [["lr=1e-5", "epochs=2"], ["lr=1e-5", "epochs=2"]]
    with pytest.raises(SystemExit):
        main(["train", "--no-progress", "--bogus"])
    assert build_parser() is not None


def test_restorer_defaults_come_from_the_checkpoint(tiny_run, tmp_path):
    """No --steps/--eta: the sampler follows the checkpoint's diffusion section."""
    import yaml

    from lrpo.checkpoint import find_checkpoint
    from lrpo.inference.restorer import Restorer

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg_file = find_checkpoint(run) / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["diffusion"].update(sample_steps=7, eta=0.3)  # not the CLI's former fixed defaults
    cfg_file.write_text(yaml.safe_dump(cfg))
    meta_file = cfg_file.parent / "meta.json"  # edited on purpose: drop its digest, or the checkpoint is refused
    meta = json.loads(meta_file.read_text())
    del meta["files"]["config.yaml"]
    meta_file.write_text(json.dumps(meta))
    r = Restorer.from_checkpoint(run, steps=None, eta=None, device="cpu")
    assert (len(r.sampler), r.sampler.eta) == (7, 0.3)
    r = Restorer.from_checkpoint(run, steps=3, eta=0.5, device="cpu")
    assert (len(r.sampler), r.sampler.eta) == (3, 0.5)
