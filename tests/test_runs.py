"""The run-folder rules (lrpo.runs): what --overwrite clears, what a resume may change."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from lrpo import manifest
from lrpo.checkpoint import save_checkpoint
from lrpo.cli import main
from lrpo.runlog import append_record
from lrpo.runs import RunFolderError, claim_run_dir, clear_run_dir, config_changes

from tests.conftest import single_thread, tiny_overrides, write_tiny_faces


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file contents, None for a folder."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _pretrain(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), single_thread():
        rc = main(["pretrain", *argv, "--no-progress"])
    return rc, err.getvalue()


def test_the_reviewers_folder_is_refused_in_one_line_and_nothing_is_deleted(tmp_path):
    """Not a run lrpo wrote: best/holiday.jpg, samples/, tb/, config.yaml and notes.txt are the user's."""
    folder = tmp_path / "photos"
    (folder / "best").mkdir(parents=True)
    (folder / "best" / "holiday.jpg").write_bytes(b"\xff\xd8 a photo")
    (folder / "samples").mkdir()
    (folder / "tb").mkdir()
    (folder / "config.yaml").write_text("my: settings\n")
    (folder / "notes.txt").write_text("mine")
    before = _snapshot(folder)
    with pytest.raises(RunFolderError) as e:
        claim_run_dir(folder, resume=False, overwrite=True)
    assert {"best/holiday.jpg", "notes.txt", "config.yaml"} <= set(e.value.files)
    assert "best/holiday.jpg" in str(e.value) and "notes.txt" in str(e.value) and "nothing was deleted" in str(e.value)
    with pytest.raises(RunFolderError, match=r"holds files where a run writes its own \(best/holiday.jpg, config.yaml, samples/, tb/\)"):
        claim_run_dir(folder, resume=False)  # was an IndexError from runs.py
    # through the command line, data.hq missing: one line each, and still nothing deleted
    for flags in (["--overwrite"], []):
        rc, err = _pretrain([f"data.hq={tmp_path / 'no-such-faces'}", f"out_dir={folder}", *flags])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "holiday.jpg" in err, err
        assert _snapshot(folder) == before


def test_overwrite_clears_a_run_lrpo_wrote_but_refuses_first_when_a_user_file_was_added(tmp_path):
    faces = write_tiny_faces(tmp_path / "faces")[0].parent
    run = tmp_path / "run"
    argv = tiny_overrides(faces, run)
    assert _pretrain(argv)[0] == 0
    (run / "step_000003" / "notes.txt").write_text("the user's")
    before = _snapshot(run)
    rc, err = _pretrain([*argv, "steps=3", "--overwrite"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "step_000003/notes.txt" in err, err
    assert _snapshot(run) == before  # refused before anything was deleted
    (run / "step_000003" / "notes.txt").unlink()
    (tmp_path / "keep.txt").write_text("beside the run, not in it")
    rc, err = _pretrain([*argv, "steps=3", "--overwrite"])
    assert rc == 0, err
    # the old run is gone (step_000006 and its log records), the new one is complete
    assert sorted(p.name for p in run.glob("step_*")) == ["step_000003"] and (run / "latest").read_text() == "step_000003\n"
    # log_every=2: the losses at step 2, then the final validation at step 3; nothing of the old 6 steps
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [2, 3]
    assert (tmp_path / "keep.txt").is_file()
    # what the new run wrote is recorded, so the next --overwrite may clear it too
    assert manifest.foreign_files(run) == []


def test_a_bad_data_folder_deletes_nothing_even_with_overwrite(tmp_path):
    faces = write_tiny_faces(tmp_path / "faces")[0].parent
    run = tmp_path / "run"
    assert _pretrain(tiny_overrides(faces, run))[0] == 0
    before = _snapshot(run)
    rc, err = _pretrain([*tiny_overrides(tmp_path / "missing", run), "--overwrite"])
    assert rc == 2 and "missing" in err and _snapshot(run) == before, err


def test_leftovers_of_killed_writers_are_lrpos_and_cleared(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, 1, {"w": torch.zeros(1)}, {}, {})
    append_record(run / "log.jsonl", {"step": 1})
    # a killed checkpoint writer's leftovers, in the exact shapes mkdtemp/mkstemp give them
    tempfile.mkdtemp(dir=run, prefix=".step_000002.tmp-")
    fd, _ = tempfile.mkstemp(dir=run, prefix=".latest.")
    os.close(fd)
    assert claim_run_dir(run, resume=False, overwrite=True) is True
    clear_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == []


def test_resume_comparison_ignores_new_defaults_free_keys_and_path_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    saved = {"lr": 1e-3, "epochs": 3, "data": {"hq": "faces", "resolution": 64}}
    now = {"lr": 1e-3, "epochs": 9, "data": {"hq": str(tmp_path / "faces") + "/", "resolution": 64, "captions": ""}}
    defaults = {"data": {"captions": ""}}
    assert config_changes(saved, now, ["epochs"], defaults=defaults, paths=["data.hq"]) == {}
    # a key the checkpoint lacks, set to something else than its default, is a change
    now["data"]["captions"] = "caps.csv"
    assert config_changes(saved, now, ["epochs"], defaults=defaults, paths=["data.hq"]) == {"data.captions": ("<absent>", "caps.csv")}
    now["data"]["captions"] = ""
    now["data"]["hq"] = "other"
    assert config_changes(saved, now, ["epochs"], defaults=defaults, paths=["data.hq"]) == {"data.hq": ("faces", "other")}


def test_quickstart_refuses_to_write_over_a_users_files_before_anything_runs(tmp_path):
    from lrpo.quickstart import claim_quickstart

    out = tmp_path / "q"
    (out / "embedded_faces").mkdir(parents=True)
    (out / "embedded_faces" / "me.png").write_bytes(b"the user's face")
    with pytest.raises(ValueError, match=r"holds files lrpo did not write \(me.png\)"):
        claim_quickstart(out, None, overwrite=True)
    (out / "embedded_faces" / "me.png").unlink()
    (out / "heldout.txt").write_text("my list\n")
    with pytest.raises(ValueError, match=r"heldout.txt was not written by lrpo quickstart"):
        claim_quickstart(out, None, overwrite=True)
    manifest.record(out, ["heldout.txt"])  # as quickstart records it
    assert claim_quickstart(out, None, overwrite=True) == []
