"""Named test sets (lrpo.eval.testsets): layouts recognised, mismatches refused, several sets per run.

Every folder here is made by the test (tiny synthetic faces), laid out as the releases unpack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_faces
from lrpo.data.images import load_rgb, resize_square, save_rgb
from lrpo.eval.cli import add_evaluate_arguments, run_evaluate
from lrpo.eval.evaluate import EvalOptions, MethodSpec, evaluate_sets
from lrpo.eval.testsets import KNOWN_SETS, parse_set_arg, recognise_set, recognise_sets


def _faces(folder: Path, count: int = 3, size: int = 32, seed: int = 0, suffix: str = ".png") -> list[Path]:
    paths = write_tiny_faces(folder, count=count, size=size, seed=seed)
    if suffix != ".png":
        for p in paths:
            save_rgb(p.with_suffix(suffix), load_rgb(p))
            p.unlink()
    return sorted(folder.iterdir())


def _release_celeba(root: Path, count: int = 3, size: int = 32) -> Path:
    """root/celeba_512_validation/ (HQ) + root/celeba_512_validation_lq/ (LQ), as the release unpacks."""
    for p in _faces(root / "faces", count=count, size=size, seed=1):
        hq = load_rgb(p)
        save_rgb(root / "celeba_512_validation" / p.name, hq)
        save_rgb(root / "celeba_512_validation_lq" / p.name, resize_square(resize_square(hq, size // 4), size))
    return root


# ---------------------------------------------------------------------------------------------
# recognition
# ---------------------------------------------------------------------------------------------
def test_celeba_release_layout_from_the_parent_or_either_folder(tmp_path: Path):
    root = _release_celeba(tmp_path / "data")
    for where in (root, root / "celeba_512_validation_lq", root / "celeba_512_validation"):
        found = recognise_set("celeba-test", where)
        assert found.paired and found.lq_dir.name == "celeba_512_validation_lq" and found.hq_dir.name == "celeba_512_validation"
        assert (found.lq_count, found.hq_count) == (3, 3)
        assert found.lq_sizes == {"32x32": 3} and found.hq_sizes == {"32x32": 3}
        assert any("release has 3000" in n for n in found.notes)  # a subset is noted, not refused
        assert any("512x512" in n for n in found.notes)
    text = found.describe()
    assert "paired, 3 LQ + 3 HQ" in text and "32x32 (3)" in text


def test_lq_hq_subfolders_and_a_set_of_ones_own(tmp_path: Path):
    for p in _faces(tmp_path / "faces", count=2):
        save_rgb(tmp_path / "mine" / "lq" / p.name, load_rgb(p))
        save_rgb(tmp_path / "mine" / "hq" / p.name, load_rgb(p))
    found = recognise_set("celeba-test", tmp_path / "mine")
    assert found.paired and found.layout.startswith("lq/ + hq/")
    own = recognise_set("my-faces", tmp_path / "mine")  # an unknown name: paired because the layout is
    assert own.paired and own.release_count is None and own.notes == ()
    lq_only = recognise_set("my-real", tmp_path / "mine" / "lq")
    assert not lq_only.paired and lq_only.lq_count == 2


def test_lq_only_sets_nested_as_the_releases(tmp_path: Path):
    _faces(tmp_path / "LFW-Test" / "cropped_faces", count=2, suffix=".jpg")
    _faces(tmp_path / "WebPhoto-Test" / "WebPhoto-Test", count=3)
    lfw = recognise_set("lfw-test", tmp_path / "LFW-Test")
    assert not lfw.paired and lfw.lq_dir == tmp_path / "LFW-Test" / "cropped_faces" and lfw.lq_count == 2
    assert any("release has 1711" in n for n in lfw.notes)
    web = recognise_set("webphoto-test", tmp_path / "WebPhoto-Test")
    assert web.lq_dir.name == "WebPhoto-Test" and web.lq_dir.parent.name == "WebPhoto-Test" and web.lq_count == 3
    assert {s.name for s in KNOWN_SETS.values()} == {"celeba-test", "lfw-test", "webphoto-test", "wider-test", "celebchild-test"}


def test_a_paired_set_given_lq_only_images_is_refused_with_what_was_expected(tmp_path: Path):
    _faces(tmp_path / "only_lq", count=2)
    with pytest.raises(ValueError, match=r"paired set.*Expected DIR/lq/ \+ DIR/hq/.*celeba_512_validation_lq.*Found: 2 image"):
        recognise_set("celeba-test", tmp_path / "only_lq")


def test_an_lq_only_set_given_a_paired_folder_is_refused(tmp_path: Path):
    root = _release_celeba(tmp_path / "x")
    with pytest.raises(ValueError, match="LQ-only set.*paired layout"):
        recognise_set("wider-test", root)


def test_a_folder_named_for_another_set_is_refused(tmp_path: Path):
    _faces(tmp_path / "WebPhoto-Test", count=2)
    with pytest.raises(ValueError, match=r"names webphoto-test \(WebPhoto-Test\), not LFW-Test"):
        recognise_set("lfw-test", tmp_path / "WebPhoto-Test")
    assert recognise_set("webphoto-test", tmp_path / "WebPhoto-Test").lq_count == 2


def test_unmatched_lq_and_hq_names_are_refused(tmp_path: Path):
    root = _release_celeba(tmp_path / "d")
    next((root / "celeba_512_validation_lq").iterdir()).rename(root / "celeba_512_validation_lq" / "stray.png")
    with pytest.raises(ValueError, match="unmatched LQ/HQ pairs"):
        recognise_set("celeba-test", root)


def test_empty_or_missing_folders_say_what_is_there(tmp_path: Path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(ValueError, match=r"no images found.*subfolders a/ \(0 images\), b/ \(0 images\)"):
        recognise_set("lfw-test", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        recognise_set("lfw-test", tmp_path / "nope")


def test_set_arguments(tmp_path: Path):
    assert parse_set_arg("CelebA-Test=/x/y") == ("celeba-test", Path("/x/y"))  # known names are case-insensitive
    assert parse_set_arg("Mine=/x") == ("Mine", Path("/x"))
    for bad in ("celeba-test", "=dir", "a b=dir"):
        with pytest.raises(ValueError, match="--set"):
            parse_set_arg(bad)
    _faces(tmp_path / "lq", count=1)
    with pytest.raises(ValueError, match="given twice"):
        recognise_sets([f"a={tmp_path / 'lq'}", f"a={tmp_path / 'lq'}"])


# ---------------------------------------------------------------------------------------------
# several sets in one run
# ---------------------------------------------------------------------------------------------
def _two_sets(root: Path, size: int) -> tuple[Path, Path, Path]:
    """A CelebA-style paired set, an LFW-style LQ set and a method folder with outputs per set."""
    celeba = _release_celeba(root / "celeba", count=2, size=size)
    lfw = root / "LFW-Test" / "cropped_faces"
    for p in _faces(root / "lfw_faces", count=2, size=size, seed=5):
        save_rgb(lfw / p.name, load_rgb(p))
    method = root / "results" / "upscale"
    for src, dst in ((celeba / "celeba_512_validation_lq", "celeba-test"), (lfw, "LFW-Test")):
        for p in src.iterdir():
            save_rgb(method / dst / p.name, resize_square(resize_square(load_rgb(p), size // 2), size))
    return celeba, root / "LFW-Test", method


def test_evaluate_sets_writes_a_section_and_a_table_per_set(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))  # no SFace / YuNet: the offline case
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "no_cache"))
    celeba, lfw, method = _two_sets(tmp_path, size=192)  # 192 px: 2 x 2 NIQE blocks
    found = recognise_sets([f"celeba-test={celeba}", f"lfw-test={lfw}"])
    options = EvalOptions(batch_size=2, device="cpu", reward_preset=None, progress=False, table=True, psnr_space="y")
    result = evaluate_sets(found, [MethodSpec("up", "folder", str(method))], tmp_path / "out", options)
    record = json.loads(result.metrics_path.read_text())
    assert record["kind"] == "sets" and list(record["sets"]) == ["celeba-test", "lfw-test"]
    cel, lq = record["sets"]["celeba-test"], record["sets"]["lfw-test"]
    assert cel["kind"] == "paired" and lq["kind"] == "lq_only"
    assert {"psnr", "ssim", "niqe", "piqe"} <= set(cel["metrics"]) and "psnr" not in lq["metrics"]
    assert all(np.isfinite(cel["summary"]["up"][k]) for k in ("psnr", "niqe", "piqe"))
    assert "Y channel" in cel["definitions"]["psnr"]["definition"] and record["definitions"]["niqe"]["comparable"] == "yes"
    assert (tmp_path / "out" / "celeba-test" / "report.html").is_file() and (tmp_path / "out" / "lfw-test" / "metrics.json").is_file()
    page = result.report_path.read_text()
    assert page.count("<table class=\"metrics\">") == 2 and "CelebA-Test" in page and "LFW-Test" in page
    assert "Definitions" in page and 'href="celeba-test/report.html"' in page
    md = (tmp_path / "out" / "table.md").read_text()
    assert "**CelebA-Test (2 images)**" in md and "**LFW-Test (2 images)**" in md and "NIQE↓" in md
    defs = md.split("Definitions:")[1]
    assert "**PIQE↓** PIQE (Venkatanath" in defs and "*not comparable with the field's tables*: an lrpo score" in defs
    # the set's own files carry the definitions and the settings too
    assert "Definitions:" in (tmp_path / "out" / "celeba-test" / "table.md").read_text()
    assert "<h3>Definitions</h3>" in (tmp_path / "out" / "celeba-test" / "report.html").read_text()
    own = json.loads((tmp_path / "out" / "celeba-test" / "metrics.json").read_text())
    assert own["protocol"]["psnr_space"] == "y" and own["protocol"]["nr_metrics"] == ["niqe", "piqe"]
    assert "shipped copy of BasicSR 1.4.2" in own["protocol"]["niqe_params"]


def test_a_folder_method_needs_a_folder_per_set_when_there_are_several(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "no_cache"))
    celeba, lfw, method = _two_sets(tmp_path, size=32)
    found = recognise_sets([f"celeba-test={celeba}", f"lfw-test={lfw}"])
    options = EvalOptions(batch_size=2, device="cpu", reward_preset=None, progress=False, report=False)
    flat = MethodSpec("flat", "folder", str(method / "celeba-test"))
    with pytest.raises(ValueError, match="one folder of outputs per set"):
        evaluate_sets(found, [flat], tmp_path / "out", options)
    templated = MethodSpec("t", "folder", str(method / "{set}"))  # {set} is the set's name
    (method / "LFW-Test").rename(method / "lfw-test")
    result = evaluate_sets(found, [templated], tmp_path / "out2", options)
    assert set(result.results) == {"celeba-test", "lfw-test"}
    assert any("NIQE: not computed" in n for n in result.results["lfw-test"].notes)  # 32 px < 96 px blocks


def test_cli_sets(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "no_cache"))
    celeba, lfw, method = _two_sets(tmp_path, size=32)
    parser = add_evaluate_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--set", f"celeba-test={celeba}", "--set", f"lfw-test={lfw}", "--method", f"up=folder:{method}",
                              "--out", str(tmp_path / "out"), "--reward-preset", "none", "--no-progress", "--device", "cpu",
                              "--nr-metrics", "piqe"])
    assert run_evaluate(args) == 0
    out = capsys.readouterr().out
    assert "found celeba-test (CelebA-Test): paired, 2 LQ + 2 HQ" in out and "found lfw-test (LFW-Test): LQ only, 2 LQ" in out
    assert "== lfw-test ==" in out
    with pytest.raises(SystemExit):  # --set and --paired exclude each other
        parser.parse_args(["--set", f"a={celeba}", "--paired", str(celeba), "--out", "x"])


def test_parent_folders_above_the_named_one_do_not_count(tmp_path: Path):
    # /.../wider_runs/mine/{lq,hq}: "wider_runs" lies above the folder given, so it names nothing
    for p in _faces(tmp_path / "faces", count=1):
        save_rgb(tmp_path / "wider_runs" / "mine" / "lq" / p.name, load_rgb(p))
        save_rgb(tmp_path / "wider_runs" / "mine" / "hq" / p.name, load_rgb(p))
    assert recognise_set("celeba-test", tmp_path / "wider_runs" / "mine").paired
