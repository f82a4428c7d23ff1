"""Every CLI failure path is one clear line on stderr and a non-zero exit, never a Python traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lrpo.cli import main

from tests.conftest import write_tiny_faces


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faces")
    write_tiny_faces(folder, count=10)
    return folder


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def _train(faces: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "lrpo-cpu", "--no-progress", f"data.hq={faces}", "data.val_count=2", f"out_dir={out}",
            "init_checkpoint=runs/none", "reward.preset=no_weights", *extra]


@pytest.mark.parametrize(
    "make_argv, words",
    [
        (lambda f, t: _train(f, t / "r", "device=cuda"), "has no CUDA support; use device=cpu"),
        (lambda f, t: ["pretrain", "--no-progress", f"data.hq={f}", f"out_dir={t / 'p'}", "device=cuda"], "has no CUDA support"),
        (lambda f, t: _train(f, t / "r", "clip=0.1"), "command-line override 'clip=0.1': LRPOConfig has no key 'clip' (did you mean 'clip_range'"),
        (lambda f, t: _train(f, t / "r", "optim.lr=5e-4"), "(did you mean 'lr'?)"),
        (lambda f, t: _train(f / "face_00.png", t / "r"), "face_00.png is an image; expected a folder of images"),
        (lambda f, t: ["train", "--config", "no-such-preset", "init_checkpoint=x"], "config file not found: no-such-preset"),
        (lambda f, t: _train(f, t / "empty", "--resume"), "contains no checkpoint"),
        (lambda f, t: ["evaluate", "--lq", str(f / "face_00.png"), "--out", str(t / "e"), "--no-progress"], "is an image"),
        (lambda f, t: ["pretrain", "--no-progress", f"data.hq={t / 'missing'}", f"out_dir={t / 'p'}"], "missing"),
    ],
)
def test_failures_are_one_line_messages(capsys, faces, tmp_path, make_argv, words):
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, make_argv(faces, tmp_path))
    assert code != 0
    assert words in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_quickstart_finds_clashing_names_before_training(capsys, faces, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(faces, data)
    shutil.copy(data / "face_03.png", data / "face_03.jpg")
    monkeypatch.setattr("lrpo.pretrain.trainer.Pretrainer.run", lambda self: pytest.fail("trained before the name check"))
    code, err = _run(capsys, ["quickstart", "--data", str(data), "--out", str(tmp_path / "q"), "--no-progress"])
    assert code == 2 and "two inputs would both be written as face_03.png" in err and "face_03.jpg" in err and "face_03.png" in err


def test_quickstart_refuses_an_earlier_run_unless_overwrite(capsys, tmp_path, monkeypatch):
    (tmp_path / "q" / "lrpo" / "step_000001").mkdir(parents=True)
    for name in ("model.safetensors", "meta.json"):
        (tmp_path / "q" / "lrpo" / "step_000001" / name).write_text("{}")
    code, err = _run(capsys, ["quickstart", "--out", str(tmp_path / "q"), "--no-progress"])
    assert code == 2 and "holds an earlier quickstart" in err and "--overwrite" in err


def test_weights_fetch_without_network_is_a_message(capsys, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    code, err = _run(capsys, ["weights", "fetch", "sface"])
    assert code != 0 and "could not download" in err and "name resolution" in err and "$LRPO_WEIGHTS" in err
    assert not list((tmp_path / "cache").glob("*"))  # no partial file left


def test_a_torchrun_restart_resumes_from_the_last_checkpoint(capsys, tiny_run, tmp_path, monkeypatch):
    """After a failure, torchrun --max-restarts starts the same command again with
    TORCHELASTIC_RESTART_COUNT > 0: it continues the run instead of refusing its folder."""
    out = tmp_path / "run"
    argv = ["train", "--no-progress", f"init_checkpoint={tiny_run}", f"data.hq={tiny_run.parent / 'faces'}", "data.resolution=16",
            "data.val_count=2", "group_size=2", "groups_per_epoch=2", "rollout_groups_per_batch=2", "sample_steps=2",
            "minibatch_size=4", "reward.preset=", "reward.terms.brightness.weight=1.0", "device=cpu", f"out_dir={out}"]
    assert main([*argv, "epochs=1"]) == 0
    capsys.readouterr()
    code, err = _run(capsys, [*argv, "epochs=2"])
    assert code == 2 and "already holds a run" in err  # an ordinary re-run still refuses
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert main([*argv, "epochs=2"]) == 0
    assert "resumed from epoch 1" in capsys.readouterr().out


def test_quickstart_names_its_reward_and_the_missing_face_files(monkeypatch):
    """Without SFace and YuNet the quickstart falls back to `no_weights`; its output must name the
    reward's terms and the two files, what they add and the fetch command (before: only the preset name)."""
    from lrpo import quickstart, weights

    def absent(name, path=None):
        raise weights.MissingWeightsError(f"{name} not found")

    monkeypatch.setattr(weights, "resolve", absent)
    assert quickstart.offline_reward_preset() == "no_weights"
    # no_weights = 0.4 dwt + 0.45 ssim + 0.15 sharpness (rewards.composite.PRESETS)
    assert quickstart.reward_in_words("no_weights") == "'no_weights' reward (0.4 DT-CWT fidelity + 0.45 SSIM + 0.15 sharpness)"
    note = quickstart.missing_weights_note()
    assert note is not None and "\n" not in note
    for words in ("face_recognition_sface_2021dec", "face_detection_yunet_2023mar.onnx", "identity", "landmark",
                  "lrpo weights fetch sface-int8 yunet", "$LRPO_WEIGHTS"):
        assert words in note, (words, note)
    # with both files present nothing is said and the identity preset is chosen
    monkeypatch.setattr(weights, "resolve", lambda name, path=None: Path(f"/w/{name}.onnx"))
    assert quickstart.missing_weights_note() is None and quickstart.offline_reward_preset() == "offline"
