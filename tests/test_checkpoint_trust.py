"""Checkpoints are data, never code (issue 19, item 1).

A run folder may come from anyone, and whoever wrote it wrote its meta.json too: its digests guard
against damage, not against a hostile folder. So nothing in it may run code: ``state.pt`` is read
with ``weights_only=True``, a checkpoint's policy section cannot switch on full unpickling, and
``latest``, step folders and meta.json's names stay inside the folder. Each payload here would create
a marker file if it ran; every test checks that the marker never appears.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from lrpo import checkpoint as ckpt_io
from lrpo.checkpoint import CheckpointError, CorruptCheckpointError, UnsafeStateError, find_checkpoint, save_checkpoint
from lrpo.cli import main
from lrpo.config import DiffusionConfig, PolicyConfig, from_dict, to_dict
from lrpo.rl.config import LRPOConfig
from lrpo.policies.loading import load_policy
from lrpo.policies.pixel_unet import PixelPolicy
from lrpo.model_files import CheckpointFormatError
from lrpo.rl.trainer import LRPOTrainer
from lrpo.runs import RunFolderError

from tests.conftest import single_thread, tiny_overrides, write_tiny_faces

RES = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


class Payload:
    """Pickles as a call to ``os.system("touch MARKER")``: what a hostile state.pt or .ckpt holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _refresh_digests(ckpt: Path) -> None:
    """Rewrite meta.json's sizes and digests for the files as they are now (what an attacker does)."""
    meta = json.loads((ckpt / "meta.json").read_text())
    for name in meta["files"]:
        data = (ckpt / name).read_bytes()
        meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    ckpt_io._VERIFIED.clear()


def _plant_state(ckpt: Path, marker: Path) -> None:
    """state.pt keeps every real entry and gains one object whose unpickling runs the payload."""
    state = ckpt_io.load_state(ckpt)
    state["history"] = [*state["history"], {"note": Payload(marker)}]
    torch.save(state, ckpt / "state.pt")
    _refresh_digests(ckpt)


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


# ---------------------------------------------------------------------------------------------
# state.pt: data only
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def pretrain_run(tmp_path):
    faces = write_tiny_faces(tmp_path / "faces")[0].parent
    overrides = tiny_overrides(faces, tmp_path / "run")
    rc, err = _run_cli(["pretrain", *overrides, "--no-progress"])
    assert rc == 0, err
    return tmp_path / "run", overrides


def test_what_lrpo_pretrain_saves_reads_back_without_pickle(pretrain_run):
    run, _ = pretrain_run
    state = torch.load(run / "step_000006" / "state.pt", weights_only=True)  # raises if anything needs pickle
    assert state["step"] == 6 and state["generator"].dtype == torch.uint8 and state["perm"].dtype == torch.int64
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_pretrain_resume_refuses_a_pickled_payload_in_one_line_and_never_runs_it(pretrain_run, tmp_path):
    run, overrides = pretrain_run
    marker = tmp_path / "pwned"
    _plant_state(run / "step_000006", marker)
    # the reviewer's command: settings changed and allowed, so only state.pt stands between the payload and a run
    rc, err = _run_cli(["pretrain", *overrides, "steps=9", "optim.lr=2e-3", "--resume", "--allow-changes", "--no-progress"])
    assert not marker.exists()
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "state.pt holds Python objects that only full unpickling could rebuild (posix.system)" in err
    with pytest.raises(UnsafeStateError):
        ckpt_io.load_state(run)
    assert not marker.exists()


@pytest.fixture(scope="module")
def lrpo_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    faces = write_tiny_faces(root / "faces")[0].parent
    pcfg = PolicyConfig(resolution=RES, base_channels=8, channel_mults=(1, 2), stage1="none", prediction="v")
    torch.manual_seed(0)
    save_checkpoint(root / "base", 0, PixelPolicy(pcfg), {"policy": to_dict(pcfg), "diffusion": to_dict(DiffusionConfig(sample_steps=4))},
                    {}, kind="pretrain")
    return faces, root / "base"


def _lrpo_cfg(faces: Path, init: Path, out: Path, **over) -> LRPOConfig:
    raw = dict(init_checkpoint=str(init), out_dir=str(out), device="cpu", epochs=1, group_size=2, groups_per_epoch=2,
               rollout_groups_per_batch=2, sample_steps=4, train_fraction=1.0, minibatch_size=4, timesteps_per_forward=4,
               reg_weight=0.0, data=dict(hq=str(faces), resolution=RES, val_count=2),
               reward=dict(preset="", terms={"brightness": {"weight": 1.0}}))
    raw.update(over)
    cfg = from_dict(LRPOConfig, raw)
    cfg.validate()
    return cfg


def test_train_resume_checks_settings_first_and_refuses_a_pickled_payload(lrpo_setup, tmp_path):
    faces, base = lrpo_setup
    run, marker = tmp_path / "run", tmp_path / "pwned"
    LRPOTrainer(_lrpo_cfg(faces, base, run), progress=False).run()
    _plant_state(run / "step_000001", marker)
    # a changed setting is refused from config.yaml alone, before state.pt is opened
    with pytest.raises(RunFolderError, match="would change the run"):
        LRPOTrainer(_lrpo_cfg(faces, base, run, epochs=2, lr=5e-4), resume=run, progress=False)
    assert not marker.exists()
    # the reviewer's command line: the run's own config.yaml, out_dir=RUN, --resume
    rc, err = _run_cli(["train", "--config", str(run / "config.yaml"), f"out_dir={run}", "epochs=2", "--resume", "--no-progress"])
    assert not marker.exists()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "only full unpickling could rebuild" in err, err


# ---------------------------------------------------------------------------------------------
# a checkpoint's policy section cannot turn on pickle
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def hostile_latent_run(tmp_path):
    """The reviewer's folder: a checkpoint whose policy section sets trust_pickle and names a pickled
    file of the folder; the digests are consistent (the attacker wrote meta.json too)."""
    run, marker = tmp_path / "evil", tmp_path / "pwned"
    run.mkdir()
    torch.save({"state_dict": Payload(marker)}, run / "weights.ckpt")
    policy = {"kind": "sd21_controlnet", "trust_pickle": True, "sd_checkpoint": str(run / "weights.ckpt"), "stage1": "none",
              "resolution": 64}
    config = {"policy": policy, "diffusion": to_dict(DiffusionConfig(sample_steps=2))}
    save_checkpoint(run, 1, {"w": torch.zeros(1)}, config, {}, kind="lrpo")
    return run, marker


def test_trust_pickle_in_a_checkpoint_is_ignored_with_a_warning_naming_it(hostile_latent_run, capsys):
    run, marker = hostile_latent_run
    with pytest.raises(CheckpointFormatError, match="posix.system"):  # restore, evaluate, the demo: all through load_policy
        load_policy(run)
    assert not marker.exists()
    err = capsys.readouterr().err
    assert f"{run / 'step_000001' / 'config.yaml'} sets policy.trust_pickle: True; ignored" in err


def test_lrpo_restore_of_the_hostile_checkpoint_is_one_line_and_runs_nothing(hostile_latent_run, tmp_path):
    run, marker = hostile_latent_run
    faces = write_tiny_faces(tmp_path / "in", count=1)[0].parent
    rc, err = _run_cli(["restore", str(faces), str(tmp_path / "out"), "--checkpoint", str(run), "--aligned", "--no-progress"])
    assert not marker.exists()
    assert rc == 2 and "sets policy.trust_pickle: True; ignored" in err and "lrpo restore: error:" in err, err


def test_init_checkpoint_cannot_turn_on_pickle(hostile_latent_run, lrpo_setup, tmp_path):
    run, marker = hostile_latent_run
    faces, _ = lrpo_setup
    with pytest.raises(CheckpointFormatError, match="posix.system"):  # read as data: refused, not run
        LRPOTrainer(_lrpo_cfg(faces, run, tmp_path / "out"), progress=False)
    assert not marker.exists()


def test_a_python_tag_in_a_policy_yaml_is_one_line(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "policy.yaml"
    bad.write_text(f"policy: !!python/object/apply:os.system [\"touch '{marker}'\"]\ndiffusion: {{}}\n")
    with pytest.raises(CheckpointError, match=r"policy.yaml: not a policy YAML lrpo can read \(line 1\).*!!python") as e:
        load_policy(bad)
    assert "\n" not in str(e.value) and not marker.exists()
    faces = write_tiny_faces(tmp_path / "in", count=1)[0].parent
    rc, err = _run_cli(["restore", str(faces), str(tmp_path / "out"), "--checkpoint", str(bad), "--aligned", "--no-progress"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a policy YAML" in err, err
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# latest, step folders and meta.json stay inside the folder; config.yaml is digested
# ---------------------------------------------------------------------------------------------
def _tiny_run(run: Path, steps: int = 2) -> None:
    for step in range(1, steps + 1):
        save_checkpoint(run, step, {"w": torch.full((2,), float(step))}, {"policy": {"resolution": 16}}, {"step": step})


def test_latest_naming_a_folder_elsewhere_is_refused(tmp_path):
    run, evil = tmp_path / "run", tmp_path / "elsewhere" / "evil"
    _tiny_run(run)
    save_checkpoint(evil.parent, 7, {"w": torch.zeros(2)}, {}, {}, name="evil")
    for named in (str(evil), "../elsewhere/evil"):
        (run / "latest").write_text(named + "\n")
        with pytest.raises(CheckpointError, match=r"latest names '.*evil', which is not a checkpoint folder inside .*refused"):
            find_checkpoint(run)
    # a step folder that is a link to elsewhere is refused the same way
    (run / "latest").write_text("step_000009\n")
    os.symlink(evil, run / "step_000009")
    with pytest.raises(CheckpointError, match=r"step_000009.*resolves to .*evil, outside"):
        find_checkpoint(run)


def test_meta_json_naming_a_file_outside_is_refused(tmp_path):
    run = tmp_path / "run"
    _tiny_run(run, 1)
    outside = tmp_path / "hostname"
    outside.write_text("secret-host\n")
    ckpt = run / "step_000001"
    meta = json.loads((ckpt / "meta.json").read_text())
    data = outside.read_bytes()
    meta["files"][str(outside)] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # would match
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match=r"meta.json names '.*hostname', which is not a file of the checkpoint folder"):
        find_checkpoint(run)


def test_an_edited_config_yaml_is_detected(tmp_path):
    run = tmp_path / "run"
    _tiny_run(run, 1)
    cfg = run / "step_000001" / "config.yaml"
    text = yaml.safe_load(cfg.read_text())
    text["policy"]["resolution"] = 32  # same length: only the digest tells
    cfg.write_text(yaml.safe_dump(text, sort_keys=False))
    with pytest.raises(CorruptCheckpointError, match=r"config.yaml differs from what was written \(sha256 mismatch\) \(edited"):
        ckpt_io.load_config_dict(run)


def test_the_users_own_switch_is_obeyed(hostile_latent_run):
    """trust_pickle from the user (lrpo train trust_pickle=true, or load_policy's argument) still works:
    the file is then unpickled, which is what the marker shows."""
    run, marker = hostile_latent_run
    with contextlib.suppress(Exception):  # the payload is not an SD checkpoint: loading fails after it ran
        load_policy(run, trust_pickle=True)
    assert marker.exists()


def test_lrpo_evaluate_loads_through_the_same_guard(hostile_latent_run, capsys):
    """lrpo evaluate builds each checkpoint method with Restorer.from_checkpoint."""
    from lrpo.inference.restorer import Restorer

    run, marker = hostile_latent_run
    with pytest.raises(CheckpointFormatError):
        Restorer.from_checkpoint(run, steps=1, eta=0.0, device="cpu")
    assert not marker.exists() and "sets policy.trust_pickle: True; ignored" in capsys.readouterr().err
