"""lrpo.manifest: what lrpo wrote, and only that, is deleted."""

import os

import pytest

from lrpo.manifest import (
    MANIFEST_NAME, ForeignFilesError, claim_folder, foreign_files, read_manifest, record, remove_written, safe_relative,
)


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_safe_relative_keeps_paths_inside():
    assert safe_relative("a/b.png") == "a/b.png"
    assert safe_relative("./a//b.png") == "a/b.png"  # PurePosixPath drops "." and doubled slashes
    for bad in ("/etc/hostname", "../x", "a/../../x", "", "a\x00b", "..", "a\\..\\x", None, 3):
        assert safe_relative(bad) is None, bad


def test_remove_written_deletes_only_recorded_unchanged_files(tmp_path):
    ours = _write(tmp_path / "samples" / "000.png", "ours")
    log = _write(tmp_path / "log.jsonl", "{}\n")
    changed = _write(tmp_path / "best" / "model.safetensors", "v1")
    record(tmp_path, [ours, changed])
    record(tmp_path, ["log.jsonl"], digest=False)
    log.write_text("{}\n{}\n")  # a log grows after it is recorded: still lrpo's
    changed.write_text("v2 by the user")
    user = _write(tmp_path / "best" / "holiday.jpg", "user's")
    notes = _write(tmp_path / "notes.txt", "user's")

    removal = remove_written(tmp_path)

    assert sorted(removal.removed) == ["log.jsonl", "samples/000.png"]
    assert "best/model.safetensors" in removal.kept
    assert user.read_text() == "user's" and notes.read_text() == "user's" and changed.read_text() == "v2 by the user"
    assert not (tmp_path / "samples").exists()  # emptied and removed
    assert set(read_manifest(tmp_path)) == {"best/model.safetensors"}  # what is kept stays recorded


def test_manifest_paths_outside_the_folder_are_ignored(tmp_path):
    outside = _write(tmp_path / "elsewhere" / "precious.txt", "keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / MANIFEST_NAME).write_text(
        '{"path": "../elsewhere/precious.txt", "bytes": null, "sha256": null}\n'
        f'{{"path": "{outside}", "bytes": null, "sha256": null}}\n'
        'not json\n')
    assert read_manifest(run) == {}
    remove_written(run)
    assert outside.read_text() == "keep"


def test_links_are_never_followed_or_deleted(tmp_path):
    target = _write(tmp_path / "home" / "notes.txt", "keep")
    run = tmp_path / "run"
    _write(run / "real" / "a.png")
    record(run, [run / "real" / "a.png"])
    os.rename(run / "real", run / "moved")
    os.symlink(tmp_path / "home", run / "real")  # the recorded path now leads outside through a link
    (tmp_path / "home" / "a.png").write_text("x")  # same size and digest as what lrpo wrote
    removal = remove_written(run)
    assert removal.removed == [] and "link" in removal.kept["real/a.png"]
    assert (tmp_path / "home" / "a.png").exists() and target.read_text() == "keep"


def test_claim_folder_names_foreign_files(tmp_path):
    ours = _write(tmp_path / "lq" / "0.png")
    record(tmp_path, [ours])
    claim_folder(tmp_path, what="OUT_DIR")  # only lrpo's files: fine
    _write(tmp_path / "hq" / "thesis.docx")
    _write(tmp_path / "lq" / "notes\nx.txt")
    with pytest.raises(ForeignFilesError) as e:
        claim_folder(tmp_path, what="OUT_DIR")
    assert e.value.files == ["hq/", "lq/notes\nx.txt"]
    assert "hq/" in str(e.value) and "notes\\nx.txt" in str(e.value) and "\n" not in str(e.value)


def test_foreign_files_counts_changed_and_linked_files(tmp_path):
    a = _write(tmp_path / "a.png", "a")
    record(tmp_path, [a])
    assert foreign_files(tmp_path) == []
    a.write_text("b")
    os.symlink("/etc", tmp_path / "etc")
    assert foreign_files(tmp_path) == ["a.png", "etc"]


def test_record_refuses_a_manifest_that_is_a_link(tmp_path):
    target = _write(tmp_path / "victim.txt", "keep")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(target, run / MANIFEST_NAME)
    f = _write(run / "x.png")
    with pytest.raises(OSError):
        record(run, [f])
    assert target.read_text() == "keep"
