"""The paper-style table: column order, best/second marks, published rows apart, LaTeX escaping."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrpo.eval.table import latex_table, markdown_table, rank_marks, read_published, table_columns


def test_rank_marks_direction_ties_and_missing():
    # higher is better: 5 (b, c) best, 3 (a) second; lower is better: 1 (d) best, 3 (a) second
    vals = {"a": 3.0, "b": 5.0, "c": 5.0, "d": 1.0, "e": None, "f": float("nan")}
    assert rank_marks(vals, True) == {"a": "second", "b": "best", "c": "best", "d": None, "e": None, "f": None}
    assert rank_marks(vals, False) == {"a": "second", "b": None, "c": None, "d": "best", "e": None, "f": None}
    assert rank_marks({"only": 1.0}, True) == {"only": "best"}


def test_columns_follow_the_field_and_keep_one_identity_column():
    assert table_columns(["fid", "ssim", "psnr", "id_deg", "lmd", "lpips", "ms_ssim"], paired=True) == [
        "psnr", "ssim", "lpips", "id_deg", "lmd", "fid"]
    assert table_columns(["id_deg", "arcface_deg", "psnr"], paired=True) == ["psnr", "arcface_deg"]  # ArcFace wins
    assert table_columns(["sharpness", "clipiqa", "id_deg_lq", "noise"], paired=False) == ["clipiqa", "sharpness", "noise", "id_deg_lq"]


SUMMARY = {
    "input": {"psnr": 24.0, "lpips": 0.5},
    "base": {"psnr": 25.1234, "lpips": 0.40},
    "lrpo": {"psnr": 25.5, "lpips": 0.38},
    "other": {"psnr": 24.9, "lpips": None},
}


def test_markdown_marks_best_and_second_leaves_the_baseline_and_published_rows_unranked():
    md = markdown_table(SUMMARY, ["psnr", "lpips"], published={"PMRF": {"psnr": 99.0}})
    lines = md.splitlines()
    assert lines[0] == "| method | PSNR↑ | LPIPS↓ |"
    assert lines[2] == "| input (LQ) | 24.00 | 0.5000 |"  # 24 < all, and never marked
    assert lines[3] == "| base | <u>25.12</u> | <u>0.4000</u> |"
    assert lines[4] == "| lrpo | **25.50** | **0.3800** |"
    assert lines[5] == "| other | 24.90 | – |"
    assert lines[6] == "| *PMRF* † | *99.00* | *–* |"  # higher than ours, not bold: published rows are apart
    assert "† as published by their authors" in md


def test_latex_escapes_names_and_marks():
    tex = latex_table({"a_b & c": {"psnr": 1.0}, "d": {"psnr": 2.0}}, ["psnr"], baseline=None)
    assert r"a\_b \& c & \underline{1.00} \\" in tex and r"d & \textbf{2.00} \\" in tex
    assert r"PSNR$\uparrow$" in tex and tex.startswith(r"\begin{tabular}{lc}")


def test_read_published_and_its_errors(tmp_path: Path):
    p = tmp_path / "pub.csv"
    p.write_text("method,psnr,ssim,lpips,arcface_deg,lmd,fid\nDiffBIR,25.39,0.6536,0.3878,32.94,2.006,59.06\nX,,0.5,,,,\n")
    pub = read_published(p)
    assert pub["DiffBIR"]["fid"] == 59.06 and pub["X"] == {"ssim": 0.5}
    p.write_text("method,psnr,wow\nA,1,2\n")
    with pytest.raises(ValueError, match=r"unknown metric column\(s\) \['wow'\]"):
        read_published(p)
    p.write_text("method,psnr\nA,abc\n")
    with pytest.raises(ValueError, match=r"pub.csv:2: psnr='abc' is not a number"):
        read_published(p)
    with pytest.raises(FileNotFoundError, match="--published"):
        read_published(tmp_path / "none.csv")
