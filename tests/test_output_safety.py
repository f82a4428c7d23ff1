"""lrpo deletes and overwrites only what it wrote (lrpo.outputs; `lrpo degrade`, `lrpo restore`).

Each test plants the user's files (and links to files outside OUT) and checks, byte for byte, that
they are still there afterwards, and that every refusal is one line naming the file.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lrpo.cli import main
from lrpo.data.images import load_rgb, save_rgb
from lrpo.degradation.paired import add_degrade_arguments, make_paired_set, run_degrade
from lrpo.inference.photo import PhotoOptions, restore_photos, summary_lines
from lrpo.manifest import MANIFEST_NAME, read_manifest, record, sha256_file
from lrpo.outputs import KIND_FILE, NAME_MAX_BYTES, OutputError, OutputFolder, fit_name

from tests.conftest import single_thread, write_tiny_faces
from tests.photo_scenes import FakeDetector, Placement, identity_restore, make_photo


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file bytes, or 'link -> target' for links (not followed)."""
    out: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def _degrade(*argv: str) -> int:
    args = add_degrade_arguments(argparse.ArgumentParser(prog="lrpo degrade")).parse_args([*argv, "--size", "16", "--no-progress"])
    return run_degrade(args)


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    write_tiny_faces(tmp_path / "faces", count=3, seed=1)
    return tmp_path / "faces"


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
def test_fit_name_keeps_short_names_and_cuts_long_ones_with_a_hash():
    assert fit_name("a.png") == "a.png"
    exact = "x" * (NAME_MAX_BYTES - 4) + ".png"
    assert fit_name(exact) == exact  # 255 bytes fit
    long_a, long_b = "x" * 300 + "a.png", "x" * 300 + "b.png"
    cut_a, cut_b = fit_name(long_a), fit_name(long_b)
    assert len(os.fsencode(cut_a)) == NAME_MAX_BYTES and cut_a.endswith(".png")
    assert cut_a != cut_b  # the hash suffix keeps names that share their start apart
    assert fit_name(long_a) == cut_a  # and is the same on every run
    # a multi-byte character is never split: the cut name is still valid UTF-8 within the limit
    wide = fit_name("é" * 200 + ".png")
    assert len(wide.encode()) <= NAME_MAX_BYTES and wide.encode().decode() == wide and wide.startswith("é")


# ---------------------------------------------------------------------------------------------
# lrpo degrade
# ---------------------------------------------------------------------------------------------
def test_degrade_refuses_an_output_folder_holding_its_input(tmp_path, capsys):
    # the reviewer's two cases: OUT above the input folder (with the user's files in hq/ and lq/),
    # and the input folder being OUT/hq itself
    ds = tmp_path / "ds"
    write_tiny_faces(ds / "faces", count=2)
    (ds / "hq").mkdir()
    (ds / "hq" / "thesis.docx").write_bytes(b"the user's thesis")
    (ds / "lq").mkdir()
    (ds / "lq" / "notes.txt").write_bytes(b"the user's notes")
    ds2 = tmp_path / "ds2"
    write_tiny_faces(ds2 / "hq", count=2)
    before, before2 = _tree(ds), _tree(ds2)
    assert _degrade(str(ds / "faces"), str(ds), "--overwrite") == 1
    _one_line_error(capsys, "contains the input")
    assert _degrade(str(ds2 / "hq"), str(ds2), "--overwrite") == 1
    _one_line_error(capsys, "contains the input")
    assert _tree(ds) == before and _tree(ds2) == before2


def test_degrade_overwrite_refuses_a_folder_with_files_lrpo_did_not_write(faces, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "hq").mkdir(parents=True)
    (out / "hq" / "thesis.docx").write_bytes(b"thesis")
    (out / "notes.txt").write_bytes(b"notes")
    before = _tree(out)
    assert _degrade(str(faces), str(out), "--overwrite") == 1
    _one_line_error(capsys, "(hq/, notes.txt)", "did not write")  # a folder lrpo did not make is named once
    assert _tree(out) == before


def test_degrade_overwrite_removes_exactly_the_earlier_set(faces, tmp_path):
    out = tmp_path / "out"
    make_paired_set(faces, out, size=16, progress=False)
    first = read_manifest(out)
    assert sorted(first) == [KIND_FILE, "hq/face_00.png", "hq/face_01.png", "hq/face_02.png", "lq/face_00.png", "lq/face_01.png",
                             "lq/face_02.png", "params.jsonl"]
    (faces / "face_02.png").unlink()  # the new set has two faces: the third pair of the old one goes too
    make_paired_set(faces, out, size=16, progress=False, overwrite=True)
    assert sorted(_tree(out)) == [MANIFEST_NAME, KIND_FILE, "hq/face_00.png", "hq/face_01.png", "lq/face_00.png", "lq/face_01.png",
                                  "params.jsonl"]
    assert sorted(read_manifest(out)) == [KIND_FILE, "hq/face_00.png", "hq/face_01.png", "lq/face_00.png", "lq/face_01.png", "params.jsonl"]


def test_degrade_missing_input_unreadable_first_input_and_file_as_out(tmp_path, capsys):
    out = tmp_path / "out"
    assert _degrade(str(tmp_path / "facse"), str(out)) == 1
    _one_line_error(capsys, "facse: does not exist")
    pdf = tmp_path / "pdf"
    pdf.mkdir()
    (pdf / "scan.jpg").write_bytes(b"%PDF-1.4 not an image")  # a PDF renamed .jpg
    assert _degrade(str(pdf), str(out)) == 1
    _one_line_error(capsys, "scan.jpg")
    assert _degrade(str(pdf), str(out), "--skip-bad") == 1
    _one_line_error(capsys, "none of the 1 input image(s) can be read")
    assert not out.exists()  # no folder is made before an input is known to be readable
    out.write_bytes(b"a file")
    write_tiny_faces(tmp_path / "faces", count=1)
    assert _degrade(str(tmp_path / "faces"), str(out)) == 1
    _one_line_error(capsys, "is a file, not a folder")
    assert out.read_bytes() == b"a file"


def test_degrade_prints_control_characters_escaped(faces, tmp_path, capsys):
    (faces / "bad\x1b[2J\nname.png").write_bytes(b"not a png")
    assert _degrade(str(faces), str(tmp_path / "out\x07"), "--skip-bad") == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    assert "bad\\x1b[2J\\nname.png" in printed and "out\\x07" in printed
    assert printed.count("\n") == 3  # wrote ..., skipped 1 ..., the one skipped file


# ---------------------------------------------------------------------------------------------
# lrpo restore --aligned (the tiny run of conftest)
# ---------------------------------------------------------------------------------------------
def _restore(in_path, out, ckpt, *extra: str) -> int:
    return main(["restore", str(in_path), str(out), "--checkpoint", str(ckpt), "--aligned", "--steps", "1", "--device", "cpu",
                 "--no-progress", *extra])


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    write_tiny_faces(tmp_path / "in", count=2, size=16, seed=2)
    return tmp_path / "in"


def test_restore_refuses_a_folder_with_the_users_files(tiny_run, crops, tmp_path, capsys):
    # a restore into a folder holding only the user's files is refused, with or without --overwrite:
    # the user's face_00.png has the name an output would take, and nothing of theirs is replaced
    out = tmp_path / "out"
    out.mkdir()
    (out / "face_00.png").write_bytes(b"the user's own picture")
    (out / "ok.png").write_bytes(b"the user's")
    for extra in ((), ("--overwrite",)):
        with single_thread():
            assert _restore(crops, out, tiny_run, *extra) == 2
        _one_line_error(capsys, "face_00.png", "ok.png", "did not write")
    assert _tree(out) == {"face_00.png": b"the user's own picture", "ok.png": b"the user's"}


def test_restore_refuses_earlier_outputs_unless_overwrite(tiny_run, crops, tmp_path, capsys):
    out = tmp_path / "out"
    with single_thread():
        assert _restore(crops, out, tiny_run) == 0
        recorded = read_manifest(out)
        assert sorted(recorded) == [KIND_FILE, "cmp/face_00.png", "cmp/face_01.png", "face_00.png", "face_01.png"]
        assert (out / KIND_FILE).read_text() == "lrpo restore\n"
        assert all(e.sha256 == sha256_file(out / p) for p, e in recorded.items())
        first = _tree(out)
        assert _restore(crops, out, tiny_run) == 2
        _one_line_error(capsys, "earlier lrpo restore", "--overwrite")
        assert _tree(out) == first
        assert _restore(crops, out, tiny_run, "--overwrite") == 0
        assert _tree(out) == first  # the same outputs again (seeds are fixed), nothing else
        # an earlier output the user changed is theirs now: named and kept, even with --overwrite
        (out / "face_01.png").write_bytes(b"edited by the user")
        assert _restore(crops, out, tiny_run, "--overwrite") == 2
        _one_line_error(capsys, "face_01.png")
    assert (out / "face_01.png").read_bytes() == b"edited by the user"


def test_overwrite_never_clears_another_commands_files(tiny_run, crops, faces, tmp_path, capsys):
    # a training run's folder: its files are recorded in the same manifest, but are no restore's outputs
    run = tmp_path / "runs" / "lrpo"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights")
    record(run, ["model.safetensors"])
    with single_thread():
        assert _restore(crops, run, tiny_run, "--overwrite") == 2
    _one_line_error(capsys, "another lrpo command (a training run?)")
    assert (run / "model.safetensors").read_bytes() == b"weights"
    # and a restore's outputs are no degrade's
    with single_thread():
        assert _restore(crops, tmp_path / "r", tiny_run) == 0
    before = _tree(tmp_path / "r")
    assert _degrade(str(faces), str(tmp_path / "r"), "--overwrite") == 1
    _one_line_error(capsys, "files lrpo restore wrote, not outputs of lrpo degrade")
    assert _tree(tmp_path / "r") == before


def test_restore_never_writes_through_links_in_out(tiny_run, crops, tmp_path, capsys):
    # the reviewer's case: links planted in an OUT of earlier outputs, pointing at the user's files
    out = tmp_path / "out"
    with single_thread():
        assert _restore(crops, out, tiny_run) == 0
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"the user's notes")
    (out / "face_00.png").unlink()
    (out / "face_00.png").symlink_to(notes)
    (out / "faces.jsonl").symlink_to(tmp_path / "other.jsonl")
    with single_thread():
        assert _restore(crops, out, tiny_run, "--overwrite") == 2
    _one_line_error(capsys, "face_00.png", "faces.jsonl")
    assert notes.read_bytes() == b"the user's notes" and not (tmp_path / "other.jsonl").exists()
    assert (out / "face_00.png").is_symlink()


def test_output_folder_write_replaces_neither_a_link_nor_its_target(tmp_path):
    # below the folder check (a link made while lrpo runs): the write fails, the link and its target stay
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside OUT")
    folder = OutputFolder(tmp_path / "out", command="test")
    folder.write_image("sub/a.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "out" / "sub" / "b.png").symlink_to(outside)
    with pytest.raises(FileExistsError):
        folder.write_image("sub/b.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="not a folder lrpo made"):
        folder.write_image("linked/c.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FileExistsError):
        (tmp_path / "out" / "log.jsonl").symlink_to(outside)
        folder.open_log("log.jsonl")
    assert outside.read_bytes() == b"outside OUT" and not any((tmp_path / "elsewhere").iterdir())
    assert (tmp_path / "out" / "sub" / "b.png").is_symlink()
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["a.png", "b.png"]  # no temporary left


def test_restore_out_is_a_file_or_holds_the_input(tiny_run, crops, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"a file")
    assert _restore(crops, out, tiny_run) == 2
    _one_line_error(capsys, "is a file, not a folder")
    assert out.read_bytes() == b"a file"
    # restoring an earlier output folder into itself (--overwrite would delete the inputs)
    with single_thread():
        assert _restore(crops, tmp_path / "r1", tiny_run) == 0
        before = _tree(tmp_path / "r1")
        assert _restore(tmp_path / "r1", tmp_path / "r1" / "..", tiny_run, "--overwrite") == 2
    _one_line_error(capsys, "contains the input")
    assert _tree(tmp_path / "r1") == before


def test_restore_input_and_model_messages(tiny_run, crops, tmp_path, capsys):
    out = tmp_path / "out"
    assert _restore(tmp_path / "inn", out, tiny_run) == 2
    _one_line_error(capsys, "inn: does not exist")
    assert main(["restore", str(crops), str(out)]) == 2
    _one_line_error(capsys, "lrpo quickstart", "--policy NAME", "lrpo weights")
    pdf = tmp_path / "pdf"
    pdf.mkdir()
    (pdf / "scan.jpg").write_bytes(b"%PDF-1.4 not an image")
    with single_thread():
        assert _restore(pdf, out, tiny_run) == 1  # named and skipped
        assert f"no image was written to {out}" in capsys.readouterr().out
        assert main(["restore", str(pdf), str(out), "--checkpoint", str(tiny_run), "--steps", "1", "--device", "cpu",
                     "--no-progress", "--detector", str(tmp_path / "none.onnx")]) == 2  # whole photos: no detector
    capsys.readouterr()
    assert not out.exists()  # nothing was written, so no folder was made


def test_restore_file_names_starting_with_a_dash(tiny_run, crops, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(crops)
    with pytest.raises(SystemExit):
        main(["restore", "-face_00.png", "OUT", "--checkpoint", str(tiny_run)])
    last = capsys.readouterr().err.splitlines()[-1]  # argparse's usage, then its one error line
    assert last.startswith("lrpo restore: error:") and "./-NAME" in last and "put -- before" in last
    (crops / "face_00.png").rename(crops / "-rf.png")
    with single_thread():
        assert main(["restore", "--checkpoint", str(tiny_run), "--aligned", "--steps", "1", "--device", "cpu", "--no-progress",
                     "--", "-rf.png", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "-rf.png").is_file()


# ---------------------------------------------------------------------------------------------
# whole photos (a stand-in detector and an identity restorer: only the writing is under test)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    return make_photo(200, 240, [Placement((120, 110), 40, 0)])


def _photos(restorer_size: int, folder: Path, out: Path, detector, **kw):
    restorer = SimpleNamespace(policy=SimpleNamespace(resolution=restorer_size), restore=identity_restore)
    return restore_photos(restorer, folder, out, PhotoOptions(min_face_size=8), progress=False, detector=detector, **kw)


def test_long_names_are_shortened_and_every_photo_is_written(tmp_path, scene):
    photo, truth = scene
    folder = tmp_path / "in"
    long_stem = "p" * 250  # <stem>_00.png would be 257 bytes: more than a file name may hold
    for stem in ("a", long_stem, "z"):
        save_rgb(folder / f"{stem}.png", photo)
    out = tmp_path / "out"
    summary = _photos(16, folder, out, FakeDetector(truth))
    assert len(summary.written) == 3 and not summary.unwritten and summary.faces_restored == 3
    faces = sorted(p.name for p in (out / "cropped_faces").iterdir())
    assert faces[0] == "a_00.png" and faces[2] == "z_00.png"
    assert faces[1].startswith("p" * 200) and len(faces[1].encode()) == NAME_MAX_BYTES
    # every file lrpo wrote is in the manifest with its digest; faces.jsonl digested once complete
    recorded = read_manifest(out)
    on_disk = {k for k, v in _tree(out).items() if isinstance(v, bytes)} - {MANIFEST_NAME}
    assert set(recorded) == on_disk and all(e.sha256 == sha256_file(out / p) for p, e in recorded.items())


def test_a_photo_that_cannot_be_written_is_named_and_the_others_go_on(tmp_path, scene, monkeypatch):
    photo, truth = scene
    folder = tmp_path / "in"
    for stem in ("a", "b", "c"):
        save_rgb(folder / f"{stem}.png", photo)
    real = OutputFolder.write_image

    def disk_full_for_b(self, rel, image, alpha=None):
        if rel.startswith("cropped_faces/b_"):
            raise OSError(28, "No space left on device")
        return real(self, rel, image, alpha)

    monkeypatch.setattr(OutputFolder, "write_image", disk_full_for_b)
    summary = _photos(16, folder, tmp_path / "out", FakeDetector(truth))
    assert [p.name for p in summary.written] == ["a.png", "c.png"]
    assert len(summary.unwritten) == 1 and summary.unwritten[0].startswith("b.png: ")
    assert "No space left on device" in summary.unwritten[0] and "cropped_faces/b_00.png" in summary.unwritten[0]
    lines = (tmp_path / "out" / "faces.jsonl").read_text().splitlines()
    assert [line.split('"photo": ')[1][:7] for line in lines] == ['"a.png"', '"c.png"']


def test_nothing_is_created_when_no_photo_can_be_read(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "report.jpg").write_bytes(b"%PDF-1.4 a PDF under an image name")
    summary = _photos(16, folder, tmp_path / "out", FakeDetector([]))
    assert len(summary.failed) == 1 and not summary.written
    assert not (tmp_path / "out").exists()
    assert summary_lines(summary, tmp_path / "out")[0] == f"no photo was written to {tmp_path / 'out'}"


def test_summary_lines_escape_control_characters(tmp_path):
    folder = tmp_path / "in"
    save_rgb(folder / "wall\x1b[31m\nred.png", np.full((30, 40, 3), 200, np.uint8))
    out = tmp_path / "out\r"
    summary = _photos(16, folder, out, FakeDetector([]))
    lines = summary_lines(summary, out)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\r" not in text and len(text.splitlines()) == len(lines)
    assert "wall\\x1b[31m\\nred.png" in text and "out\\r" in text
    assert load_rgb(out / "restored_imgs" / "wall\x1b[31m\nred.png").shape == (30, 40, 3)  # the file keeps its name
