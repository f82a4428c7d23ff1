"""The run-folder rules (lrpo.runs): what --overwrite clears, what a resume may change."""

from __future__ import annotations

import pytest

from lrpo.runs import RunFolderError, claim_run_dir, config_changes


def _fake_checkpoint(run, name="step_000001"):
    (run / name).mkdir(parents=True)
    for f in ("model.safetensors", "meta.json"):
        (run / name / f).write_text("{}")
    (run / "latest").write_text(name + "\n")


def test_overwrite_clears_the_run_and_only_the_run(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run)
    (run / "log.jsonl").write_text("{}\n")
    (run / ".step_000002.tmp-abc").mkdir()  # a killed checkpoint writer's leftover
    for keep in (".delta_notes", ".older", "notes.txt"):  # the user's own files
        (run / keep).mkdir() if keep.startswith(".") else (run / keep).write_text("mine")
    with pytest.raises(RunFolderError, match="already holds a run"):
        claim_run_dir(run, resume=False)
    claim_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".delta_notes", ".older", "notes.txt"]


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
