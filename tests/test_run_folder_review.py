"""Run folders are data (issue 19), the review's findings: links planted in a run folder are never
written through, look-alikes of lrpo's temporary names are the user's, a torch too old to load
files safely is refused, a checkpoint never turns trust_pickle on, and odd state or folders get one
line, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from lrpo import checkpoint as ckpt_io
from lrpo import manifest
from lrpo.checkpoint import CheckpointError, CorruptCheckpointError, save_checkpoint
from lrpo.cli import main
from lrpo.config import from_dict, save_config
from lrpo.rl.config import LRPOConfig
from lrpo.eval.evaluate import EvalOptions, MethodSpec, evaluate_paired
from lrpo.outputs import OutputError, OutputFolder
from lrpo.model_files import CheckpointFormatError, read_state_dict
from lrpo.runlog import append_record, rewrite_log
from lrpo.runs import RUN_ARTIFACTS, RunFolderError, claim_run_dir, clear_run_dir

from tests.conftest import single_thread, tiny_overrides, write_tiny_faces

ROOT = Path(__file__).resolve().parents[1]


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), single_thread():
        rc = main(argv)
    return rc, err.getvalue()


def _small_run(run: Path) -> Path:
    """A run lrpo wrote: one checkpoint, its log, all recorded in the manifest."""
    save_checkpoint(run, 1, {"w": torch.zeros(1)}, {}, {"step": 1})
    append_record(run / "log.jsonl", {"step": 1})
    return run


def _two_step_pretrain(tmp_path) -> tuple:
    """A finished 2-step `lrpo pretrain` run folder and the argv that made it (resume with it)."""
    faces = write_tiny_faces(tmp_path / "faces")[0].parent
    run = tmp_path / "run"
    argv = ["pretrain", *tiny_overrides(faces, run), "steps=2", "--no-progress"]
    assert _cli(argv)[0] == 0
    return run, argv


# ---------------------------------------------------------------------------------------------
# 1. links planted in a run folder
# ---------------------------------------------------------------------------------------------
def test_resume_refuses_a_run_folder_whose_names_are_links_and_leaves_the_victims(tmp_path):
    run, argv = _two_step_pretrain(tmp_path)
    victim = tmp_path / "victim_cfg.txt"
    victim.write_text("the user's")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(victim)
    rc, err = _cli([*argv[:-2], "steps=3", "--resume", str(run), "--no-progress"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "config.yaml is a symbolic link" in err, err
    assert victim.read_text() == "the user's" and (run / "config.yaml").is_symlink()
    # each name a run writes at the top of its folder is checked the same way
    for name in RUN_ARTIFACTS:
        other = tmp_path / f"other_{name}"
        with pytest.raises(RunFolderError, match=rf"{name} is a symbolic link"):
            fresh = _small_run(tmp_path / f"r_{name}")
            if os.path.lexists(fresh / name):
                os.replace(fresh / name, other)  # keep it, link to it
            else:
                other.mkdir()
            (fresh / name).symlink_to(other)
            claim_run_dir(fresh, resume=True)


def test_log_and_config_writers_replace_a_planted_link_and_never_write_through_it(tmp_path):
    run = _small_run(tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").symlink_to(victim)
    with pytest.raises(OSError):  # O_NOFOLLOW: an append through the link fails (ELOOP)
        append_record(run / "log.jsonl", {"step": 2})
    rewrite_log(run / "log.jsonl", [{"step": 1}])  # a fresh file renamed over the link
    assert victim.read_text() == "the user's" and not (run / "log.jsonl").is_symlink()
    assert (run / "log.jsonl").read_text() == '{"step": 1}\n'
    (run / "config.yaml").symlink_to(victim)
    save_config(LRPOConfig(), run / "config.yaml")
    assert victim.read_text() == "the user's" and not (run / "config.yaml").is_symlink()
    # no temporary file is left behind (mkstemp names, renamed into place)
    assert [p.name for p in run.iterdir() if p.name.startswith((".log", ".config"))] == []


# ---------------------------------------------------------------------------------------------
# 2. look-alikes of lrpo's temporary names are the user's
# ---------------------------------------------------------------------------------------------
def test_overwrite_names_the_users_look_alike_temp_names_and_deletes_nothing(tmp_path):
    run = _small_run(tmp_path / "run")
    (run / ".latest.backup").mkdir()
    (run / ".latest.backup" / "thesis.docx").write_text("chapter 1")
    (run / ".step_000003.old-keep").mkdir()
    (run / ".step_000003.old-keep" / "notes.txt").write_text("notes")
    (run / "log.jsonl.tmp").write_text("mine")
    with pytest.raises(RunFolderError) as e:
        claim_run_dir(run, resume=False, overwrite=True)
    assert {".latest.backup/thesis.docx", ".step_000003.old-keep/notes.txt", "log.jsonl.tmp"} <= set(e.value.files)
    for f in e.value.files:
        assert f in str(e.value)
    assert (run / ".latest.backup" / "thesis.docx").read_text() == "chapter 1" and (run / "log.jsonl.tmp").is_file()
    # the exact shapes a killed writer leaves (mkdtemp / mkstemp: the prefix + 8 characters) are lrpo's
    (run / ".latest.backup" / "thesis.docx").rename(tmp_path / "thesis.docx")
    for name in (".latest.backup", ".step_000003.old-keep"):
        for f in (run / name).iterdir():
            f.unlink()
        (run / name).rmdir()
    (run / "log.jsonl.tmp").unlink()
    (run / ".step_000002.tmp-ab_12xyz").mkdir()
    (run / ".log.jsonl.k2j4m9q0").write_text("{}")
    assert claim_run_dir(run, resume=False, overwrite=True) is True
    clear_run_dir(run)
    assert list(run.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 3. torch's floor for loading untrusted files
# ---------------------------------------------------------------------------------------------
def test_a_torch_older_than_2_6_is_refused_before_any_untrusted_file_is_loaded(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "run", 1, {"w": torch.zeros(1)}, {}, {"step": 1})
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pth")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(CheckpointError) as e:
        ckpt_io.load_state(ckpt)
    assert "torch 2.5.1+cu121" in str(e.value) and ">= 2.6" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointFormatError, match=r"torch 2\.5\.1\+cu121 is installed.*>= 2\.6"):
        read_state_dict(tmp_path / "model.pth")
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert ckpt_io.load_state(ckpt) == {"step": 1}
    deps = re.search(r"dependencies = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S).group(1)
    assert re.search(r'"torch>=2\.6"', deps)


# ---------------------------------------------------------------------------------------------
# 4. "." in a manifest or latest
# ---------------------------------------------------------------------------------------------
def test_a_dot_path_is_not_a_path_inside_the_folder(tmp_path):
    # PurePosixPath(".").parts is empty: the old check indexed parts[0] (IndexError)
    assert [manifest.safe_relative(x) for x in (".", "./", "./.", "a/./b", "./a")] == [None, None, None, "a/b", "a"]
    run = _small_run(tmp_path / "run")
    with open(run / manifest.MANIFEST_NAME, "a") as f:
        f.write(json.dumps({"path": ".", "bytes": 1, "sha256": "0"}) + "\n")
    assert "." not in manifest.read_manifest(run)
    (run / "latest").write_text(".\n")
    faces = write_tiny_faces(tmp_path / "in", count=1)[0].parent
    rc, err = _cli(["restore", str(faces), str(tmp_path / "out"), "--checkpoint", str(run), "--aligned", "--no-progress"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "latest names '.'" in err, err


# ---------------------------------------------------------------------------------------------
# 5. evaluate writes only inside --out
# ---------------------------------------------------------------------------------------------
def test_evaluate_refuses_a_linked_outputs_folder_before_writing(tmp_path, tiny_run, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))
    faces = write_tiny_faces(tmp_path / "faces", count=2)
    for p in faces:  # a paired set: the faces as both LQ and GT (the numbers do not matter here)
        for side in ("lq", "hq"):
            (tmp_path / "paired" / side).mkdir(parents=True, exist_ok=True)
            (tmp_path / "paired" / side / p.name).write_bytes(p.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "outputs").symlink_to(elsewhere)
    opts = EvalOptions(batch_size=2, device="cpu", reward_preset=None, progress=False, include_input=False, report=False)
    with pytest.raises(ValueError, match=r"outputs is a symbolic link.*nothing was written"):
        evaluate_paired(tmp_path / "paired", [MethodSpec("ours", "checkpoint", str(tiny_run), steps=2)], out, opts)
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["outputs"]


# ---------------------------------------------------------------------------------------------
# 6. trust_pickle is never a run folder's
# ---------------------------------------------------------------------------------------------
def test_a_run_saves_trust_pickle_as_false(tmp_path):
    cfg = from_dict(LRPOConfig, {"trust_pickle": True})
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["trust_pickle"] is False
    assert cfg.trust_pickle is True  # the run itself keeps the user's say
    # the checkpoint's lrpo section too (rl/checkpointing.py save): read from the source, no run needed
    src = (ROOT / "src" / "lrpo" / "rl" / "checkpointing.py").read_text()
    assert '"lrpo": {**to_dict(self.cfg), "trust_pickle": False}' in src


# ---------------------------------------------------------------------------------------------
# 7. state.pt's optional entries are type-checked
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("history", 5), ("history", [1, 2]), ("best", "x"), ("best", (1,)),
                                       ("best", (True, 0.5)), ("guard_baseline", [1.0]), ("guard_baseline", {"psnr": "a"})])
def test_state_entries_a_resume_reads_are_refused_in_one_line_when_malformed(tmp_path, key, value):
    ckpt = tmp_path / "run" / "step_000001"
    with pytest.raises(CorruptCheckpointError, match=rf"'{key}' entry holds .*expected") as e:
        ckpt_io.require_optional_state({key: value}, ckpt, (key,))
    assert "\n" not in str(e.value)


def test_a_pretrain_resume_of_a_state_with_history_5_is_one_line(tmp_path):
    run, argv = _two_step_pretrain(tmp_path)
    ckpt = run / "step_000002"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    torch.save({**state, "history": 5}, ckpt / "state.pt")
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["files"]  # a file replaced on purpose passes the digest check once its entry is gone
    (ckpt / "meta.json").write_text(json.dumps(meta))
    rc, err = _cli([*argv[:-2], "steps=3", "--resume", str(run), "--no-progress"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "'history' entry holds a int (5)" in err, err


def test_state_entries_lrpo_writes_pass():
    good = {"history": [{"epoch": 1}], "best": (3, 0.5), "guard_baseline": {"psnr": 30.0}}
    ckpt_io.require_optional_state(good, "run/step_000001", ("history", "best", "guard_baseline"))
    ckpt_io.require_optional_state({"best": None, "guard_baseline": None}, "x", ("history", "best", "guard_baseline"))


# ---------------------------------------------------------------------------------------------
# 8. a run written before the manifest
# ---------------------------------------------------------------------------------------------
def test_a_legacy_run_is_not_offered_overwrite_which_would_refuse(tmp_path):
    run = _small_run(tmp_path / "run")
    (run / manifest.MANIFEST_NAME).unlink()
    with pytest.raises(RunFolderError) as fresh:
        claim_run_dir(run, resume=False)
    assert "start over with --overwrite" not in str(fresh.value) and "delete it yourself" in str(fresh.value)
    with pytest.raises(RunFolderError) as over:
        claim_run_dir(run, resume=False, overwrite=True)
    assert "delete it yourself" in str(over.value) and "move" in str(over.value)


# ---------------------------------------------------------------------------------------------
# 9. what an interrupted degrade or restore left
# ---------------------------------------------------------------------------------------------
def test_an_interrupted_commands_leftover_is_named_as_such(tmp_path):
    out = tmp_path / "out"
    (out / ".lrpo-partial-ab12cd_3").mkdir(parents=True)  # mkdtemp(prefix=".lrpo-partial-")
    (out / ".lrpo-partial-ab12cd_3" / "x.png").write_bytes(b"x")
    (out / ".lrpo-tmp-0123456789ab").write_bytes(b"x")  # restore's f"{TMP_PREFIX}{token_hex(6)}"
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(OutputError) as e:
        OutputFolder(out, command="lrpo degrade")
    msg = str(e.value)
    assert ".lrpo-partial-ab12cd_3/ was left by an interrupted lrpo degrade: delete it" in msg, msg
    assert ".lrpo-tmp-0123456789ab was left by an interrupted lrpo restore: delete it" in msg, msg
    assert "files lrpo did not write (mine.txt)" in msg and "\n" not in msg
    assert (out / ".lrpo-partial-ab12cd_3" / "x.png").is_file()  # named, not deleted
    # a look-alike of another shape is just the user's
    (out / "mine.txt").unlink()
    (out / ".lrpo-tmp-0123456789ab").unlink()
    (out / ".lrpo-tmp-notmine").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"files lrpo did not write \(.lrpo-tmp-notmine\);.*; \.lrpo-partial-ab12cd_3/ was left"):
        OutputFolder(out, command="lrpo degrade")
