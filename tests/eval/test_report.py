"""Evaluation runs and report.html: files written, values, HTML structure, offline rendering."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CaptionLengthReward, register_caption_length_reward, write_tiny_faces
from lrpo.data.images import load_rgb, resize_square, save_rgb
from lrpo.eval.cli import add_evaluate_arguments, run_evaluate
from lrpo.eval.evaluate import EvalOptions, MethodSpec, evaluate_lq_only, evaluate_paired
from lrpo.eval.scorers import metric_info
from lrpo.eval.report import best_per_column, curve_groups, image_data_uri, read_log, worst_cases, write_report

SHARED = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[3] / "shared"))
WEIGHTS = SHARED / "weights"
FACES = SHARED / "data" / "faces-hq"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
class _Page(HTMLParser):
    """Collects tags, attributes and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _paired_set(root: Path, count: int = 4) -> tuple[Path, Path, Path]:
    """(paired dir with hq/ lq/, a folder of GT copies, a folder of 64 px bicubic upscales of the LQ)."""
    faces = write_tiny_faces(root / "faces", count=count, size=32, seed=3)
    for p in faces:
        hq = load_rgb(p)
        lq = resize_square(resize_square(hq, 8), 32)
        save_rgb(root / "paired" / "hq" / p.name, hq)
        save_rgb(root / "paired" / "lq" / p.name, lq)
        save_rgb(root / "gtcopy" / p.name, hq)
        save_rgb(root / "upscaled" / f"{p.stem}.png", resize_square(lq, 64))
    return root / "paired", root / "gtcopy", root / "upscaled"


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty weights registry: SFace and YuNet are not found (the hermetic, offline-CI case)."""
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "no_cache"))


def _fast(**kw) -> EvalOptions:
    return EvalOptions(**{"batch_size": 3, "device": "cpu", "reward_preset": "no_weights", "progress": False, **kw})


# ---------------------------------------------------------------------------------------------
# pure pieces of the report
# ---------------------------------------------------------------------------------------------
def test_best_per_column_respects_direction_ties_and_baseline():
    summary = {
        "input": {"psnr": 40.0, "lpips": 0.01, "fid": None},
        "a": {"psnr": 25.0, "lpips": 0.30, "fid": 50.0},
        "b": {"psnr": 27.0, "lpips": 0.30, "fid": float("nan")},
        "c": {"psnr": 26.0, "lpips": 0.40, "fid": 60.0},
    }
    best = best_per_column(summary, ["psnr", "lpips", "fid"], {"psnr": True, "lpips": False, "fid": False}, exclude=["input"])
    # input would win both columns but is not ranked; a and b tie on LPIPS; NaN FID is not ranked
    assert best == {"psnr": {"b"}, "lpips": {"a", "b"}, "fid": {"a"}}
    assert best_per_column({"a": {"x": None}}, ["x"], {}) == {"x": set()}


def test_worst_cases_follow_the_metric_direction_with_failures_first():
    rows = [
        {"method": "m", "name": "a", "psnr": 30.0, "lmd": 2.0},
        {"method": "m", "name": "b", "psnr": 20.0, "lmd": float("nan")},
        {"method": "m", "name": "c", "psnr": 25.0, "lmd": 9.0},
        {"method": "other", "name": "a", "psnr": 1.0, "lmd": 99.0},
    ]
    assert [r["name"] for r in worst_cases(rows, "m", "psnr", True, 2)] == ["b", "c"]
    assert [r["name"] for r in worst_cases(rows, "m", "lmd", False, 3)] == ["b", "c", "a"]


def test_curve_groups_of_lrpo_and_pretrain_logs():
    lrpo = [
        {"epoch": 0, "eval_psnr": 20.0, "eval_ssim": 0.5},
        {"epoch": 1, "reward_mean": 0.5, "reward_std": 0.1, "reward/dwt_mean": 0.6, "reward/dwt_std": 0.0,
         "pg_loss": 0.01, "approx_kl": 1e-5, "time_update_s": 3.0},
        {"epoch": 2, "reward_mean": 0.6, "reward/dwt_mean": 0.7, "eval_psnr": 21.0, "pg_loss": 0.02},
    ]
    x, groups = curve_groups(lrpo)
    assert x == "epoch"
    assert groups["reward terms"] == {"total": ([1.0, 2.0], [0.5, 0.6]), "dwt": ([1.0, 2.0], [0.6, 0.7])}
    assert groups["evaluation"]["eval_psnr"] == ([0.0, 2.0], [20.0, 21.0])
    assert set(groups["losses"]) == {"pg_loss", "approx_kl"}  # timings are not curves
    pretrain = [{"step": 2, "epoch": 0, "loss": 0.8, "elapsed_s": 1.0}, {"step": 4, "val_psnr": 16.4}]
    x, groups = curve_groups(pretrain)
    assert x == "step" and groups == {"evaluation": {"val_psnr": ([4.0], [16.4])}, "losses": {"loss": ([2.0], [0.8])}}


def test_read_log_ignores_a_torn_last_line_only(tmp_path: Path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "reward_mean": 0.5}\n\n{"epoch": 2, "rew')
    assert read_log(log) == [{"epoch": 1, "reward_mean": 0.5}]
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_log(log)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log(tmp_path / "missing.jsonl")


def test_image_data_uri_round_trips():
    import base64
    import io

    from PIL import Image

    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:] = 255
    uri = image_data_uri(img, fmt="PNG")
    assert uri.startswith("data:image/png;base64,")
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    np.testing.assert_array_equal(back, img)


# ---------------------------------------------------------------------------------------------
# whole runs
# ---------------------------------------------------------------------------------------------
def test_evaluate_paired_with_checkpoint_and_folder_methods(tmp_path: Path, tiny_run: Path, no_weights):
    paired, gtcopy, upscaled = _paired_set(tmp_path)
    methods = [
        MethodSpec("ours", "checkpoint", str(tiny_run), steps=3, eta=0.0, seed=5),
        MethodSpec("gtcopy", "folder", str(gtcopy)),
        MethodSpec("upscaled", "folder", str(upscaled)),
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "reward_mean": 0.1 * e, "reward/dwt_mean": 0.2 * e, "eval_psnr": 20 + e}) + "\n" for e in range(1, 4)))
    out = tmp_path / "eval"
    result = evaluate_paired(paired, methods, out, _fast(logs={"ours": str(log)}))

    record = json.loads((out / "metrics.json").read_text())
    assert record["kind"] == "paired" and record["dataset"]["count"] == 4 and record["dataset"]["resolution"] == 32
    assert list(record["summary"]) == ["input", "ours", "gtcopy", "upscaled"]
    for key in ("psnr", "ssim", "ms_ssim", "sharpness", "noise", "reward/dwt", "reward/ssim", "reward/sharpness", "reward/total"):
        assert key in record["metrics"], key
    # without model files the identity and landmark metrics are dropped, and the notes say why
    assert "id_cos" not in record["metrics"] and "lmd" not in record["metrics"]
    notes = " ".join(record["notes"])
    assert "identity (SFace)" in notes and "LMD (YuNet)" in notes and "LPIPS" in notes and "FID" in notes
    assert "upscaled: 4 output(s) were not 32x32" in notes

    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 4
    for r in rows:
        # the composite total is the preset's weighted sum (no_weights: 0.4 dwt + 0.45 ssim + 0.15 sharpness)
        total = 0.4 * float(r["reward/dwt"]) + 0.45 * float(r["reward/ssim"]) + 0.15 * float(r["reward/sharpness"])
        assert float(r["reward/total"]) == pytest.approx(total, abs=1e-6)
        # two SSIM implementations documented to match skimage agree with each other
        assert float(r["reward/ssim"]) == pytest.approx(float(r["ssim"]), abs=1e-5)
    copy_rows = [r for r in rows if r["method"] == "gtcopy"]
    assert all(float(r["ssim"]) == pytest.approx(1.0, abs=1e-6) and float(r["psnr"]) > 100 for r in copy_rows)
    assert result.summary["gtcopy"]["ms_ssim"] == pytest.approx(1.0, abs=1e-6)

    # our restorations are saved and named after the inputs
    saved = sorted(p.name for p in (out / "outputs" / "ours").iterdir())
    assert saved == sorted(p.name for p in (paired / "hq").iterdir())

    page = _parse(out / "report.html")
    text = " ".join(page.text)
    for name in ("input", "ours", "gtcopy", "upscaled"):
        assert name in text
    for key in record["metrics"]:
        assert metric_info(key).label in text, key
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) > 4 * 5  # grid: LQ, 3 methods, GT per image, plus worst cases and curves
    assert all(a["src"].startswith("data:image/") for a in imgs)
    assert any(a["src"].startswith("data:image/png") for a in imgs)  # the training curves
    # nothing is fetched from elsewhere: no external src/href
    assert not [a for _, a in page.tags for k in ("src", "href") if k in a and not a[k].startswith(("data:", "#"))]
    best = [t for t, a in page.tags if t == "td" and a.get("class") == "best"]
    assert best  # GT copies hold PSNR/SSIM/MS-SSIM, so they are marked
    assert result.report_path == out / "report.html"


def test_checkpoint_outputs_do_not_depend_on_batch_size(tmp_path: Path, tiny_run: Path, no_weights):
    paired, _, _ = _paired_set(tmp_path, count=3)
    method = [MethodSpec("ours", "checkpoint", str(tiny_run), steps=2, eta=1.0, seed=0)]
    opts = dict(include_input=False, reward_preset=None, report=False)
    a = evaluate_paired(paired, method, tmp_path / "a", _fast(batch_size=1, **opts))
    b = evaluate_paired(paired, method, tmp_path / "b", _fast(batch_size=3, **opts))
    for name in ("face_00", "face_01", "face_02"):
        assert (tmp_path / "a" / "outputs" / "ours" / f"{name}.png").read_bytes() == (tmp_path / "b" / "outputs" / "ours" / f"{name}.png").read_bytes()
    assert a.summary == b.summary


def test_evaluate_lq_only_reports_no_reference_scores(tmp_path: Path, no_weights):
    paired, _, upscaled = _paired_set(tmp_path, count=3)
    out = tmp_path / "eval"
    result = evaluate_lq_only(paired / "lq", [MethodSpec("up", "folder", str(upscaled))], out, _fast())
    record = json.loads((out / "metrics.json").read_text())
    assert record["kind"] == "lq_only" and record["images"]["gt"] is None
    assert "psnr" not in record["metrics"] and "sharpness" in record["metrics"] and "noise" in record["metrics"]
    # of the no_weights preset only the no-reference term is left; no total without every term
    assert [k for k in record["metrics"] if k.startswith("reward/")] == ["reward/sharpness"]
    assert any("reward term 'dwt'" in n and "GT" in n for n in result.notes)
    page = _parse(out / "report.html")
    assert "GT" not in [d.strip() for d in page.text]  # no GT column
    assert all(a["src"].startswith("data:image/") for t, a in page.tags if t == "img")


def test_folder_method_with_missing_outputs_is_refused(tmp_path: Path, no_weights):
    paired, gtcopy, _ = _paired_set(tmp_path, count=3)
    (gtcopy / "face_01.png").unlink()
    with pytest.raises(ValueError, match="1 of 3 test image.*face_01"):
        evaluate_paired(paired, [MethodSpec("cf", "folder", str(gtcopy))], tmp_path / "eval", _fast())


def test_identity_and_lmd_on_real_faces(tmp_path: Path):
    sface, yunet = WEIGHTS / "face_recognition_sface_2021dec_int8bq.onnx", WEIGHTS / "face_detection_yunet_2023mar.onnx"
    names = ["ALAE__dataset_samples_faces_realign1024x1024_00087.jpg", "ALAE__dataset_samples_faces_realign1024x1024_00041.jpg"]
    for p in [sface, yunet] + [FACES / n for n in names]:
        if not p.exists():
            pytest.skip(f"{p.name} not found at {p} (set LRPO_SHARED to the shared folder)")
    for n in names:
        hq = resize_square(load_rgb(FACES / n), 128)
        save_rgb(tmp_path / "paired" / "hq" / f"{Path(n).stem}.png", hq)
        save_rgb(tmp_path / "paired" / "lq" / f"{Path(n).stem}.png", resize_square(resize_square(hq, 16), 128))
    # the "swapped" method returns the other person's face for each input
    save_rgb(tmp_path / "swapped" / f"{Path(names[0]).stem}.png", load_rgb(tmp_path / "paired" / "hq" / f"{Path(names[1]).stem}.png"))
    save_rgb(tmp_path / "swapped" / f"{Path(names[1]).stem}.png", load_rgb(tmp_path / "paired" / "hq" / f"{Path(names[0]).stem}.png"))
    methods = [MethodSpec("copy", "folder", str(tmp_path / "paired" / "hq")), MethodSpec("swapped", "folder", str(tmp_path / "swapped"))]
    opts = _fast(sface_path=str(sface), yunet_path=str(yunet), reward_preset="offline", grid_count=2, worst_count=1)
    result = evaluate_paired(tmp_path / "paired", methods, tmp_path / "eval", opts)
    s = result.summary
    assert s["copy"]["id_cos"] == pytest.approx(1.0, abs=1e-5) and s["copy"]["id_deg"] == pytest.approx(0.0, abs=0.3)
    assert s["copy"]["lmd"] == 0.0 and s["copy"]["lmd_fail"] == 0.0
    assert s["swapped"]["id_cos"] < 0.4 and s["swapped"]["id_deg"] > 66
    # the identity reward term scores the same SFace cosine as the metric
    assert s["copy"]["reward/identity"] == pytest.approx(s["copy"]["id_cos"], abs=1e-6)
    assert s["swapped"]["reward/identity"] == pytest.approx(s["swapped"]["id_cos"], abs=1e-6)
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["reward"]["total"] is True and "reward/total" in record["metrics"]


def test_cli_runs_and_rejects_bad_methods(tmp_path: Path, no_weights, capsys: pytest.CaptureFixture):
    paired, gtcopy, _ = _paired_set(tmp_path, count=3)
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="lrpo evaluate"))
    args = parser.parse_args(
        ["--paired", str(paired), "--method", f"cf=folder:{gtcopy}", "--out", str(tmp_path / "eval"),
         "--reward-preset", "none", "--batch-size", "2", "--device", "cpu", "--no-progress", "--grid-count", "2"]
    )
    assert run_evaluate(args) == 0
    printed = capsys.readouterr().out
    assert "cf" in printed and "report.html" in printed
    assert (tmp_path / "eval" / "per_image.csv").is_file() and (tmp_path / "eval" / "report.html").is_file()
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert not any(k.startswith("reward/") for k in record["metrics"])
    with pytest.raises(SystemExit):  # --paired and --lq are exclusive
        parser.parse_args(["--paired", "a", "--lq", "b", "--out", "o"])
    bad = parser.parse_args(["--paired", str(paired), "--method", "cf=zip:x", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="NAME=ckpt:PATH"):
        run_evaluate(bad)


def test_report_regenerates_with_training_curves(tmp_path: Path, no_weights):
    pytest.importorskip("matplotlib", reason="training curves need matplotlib")
    paired, gtcopy, _ = _paired_set(tmp_path, count=2)
    out = tmp_path / "eval"
    evaluate_paired(paired, [MethodSpec("cf", "folder", str(gtcopy))], out, _fast(report=False))
    assert not (out / "report.html").exists()
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1 / s, "val_psnr": 20 + s}) + "\n" for s in (1, 2, 3)))
    page = _parse(write_report(out, logs={"pretrain": str(log)}))
    pngs = [a for t, a in page.tags if t == "img" and a["src"].startswith("data:image/png")]
    assert len(pngs) == 2  # evaluation and losses groups
    assert "Training curves" in " ".join(page.text)


def test_cli_figures_are_embedded_and_a_bad_one_is_named(tmp_path: Path, no_weights, capsys: pytest.CaptureFixture):
    """--figure TITLE=PNG: a PNG file is embedded under its title; a file that is not a PNG and a
    missing file are each named in a note; a spec without '=' is refused with the expected form."""
    from PIL import Image

    paired, gtcopy, _ = _paired_set(tmp_path, count=2)
    png = tmp_path / "plot.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(png)
    (tmp_path / "fake.png").write_text("not an image")
    parser = add_evaluate_arguments(argparse.ArgumentParser(prog="lrpo evaluate"))
    args = parser.parse_args(
        ["--paired", str(paired), "--method", f"cf=folder:{gtcopy}", "--out", str(tmp_path / "eval"), "--reward-preset", "none",
         "--device", "cpu", "--no-progress", "--figure", f"reward per CPU-minute={png}", "--figure", f"fake={tmp_path / 'fake.png'}",
         "--figure", f"gone={tmp_path / 'gone.png'}"]
    )
    assert run_evaluate(args) == 0
    page = _parse(tmp_path / "eval" / "report.html")
    text = " ".join(page.text)
    embedded = [a for t, a in page.tags if t == "img" and a.get("alt") == "reward per CPU-minute"]
    assert len(embedded) == 1 and embedded[0]["src"].startswith("data:image/png;base64,")
    assert "Figures" in text and "is not a PNG file" in text and "gone.png" in text
    bad = parser.parse_args(["--paired", str(paired), "--method", f"cf=folder:{gtcopy}", "--out", str(tmp_path / "o"), "--figure", "plot.png"])
    with pytest.raises(ValueError, match=r"--figure 'plot.png': expected TITLE=PATH"):
        run_evaluate(bad)


def test_report_renders_in_headless_chromium(tmp_path: Path, no_weights):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not on PATH (CI installs it with apt-get install chromium)")
    from PIL import Image

    paired, gtcopy, upscaled = _paired_set(tmp_path, count=3)
    out = tmp_path / "eval"
    methods = [MethodSpec("cf", "folder", str(gtcopy)), MethodSpec("up", "folder", str(upscaled))]
    evaluate_paired(paired, methods, out, _fast())
    shot = tmp_path / "shot.png"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}", "--window-size=1200,2000", (out / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    assert shot.stat().st_size > 20_000  # a blank 1200x2000 page compresses to a few KB
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1200)
    colours = np.unique(img.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 500  # text, tables and face thumbnails, not a single-colour page
    assert math.isclose(img.mean(), 255, abs_tol=80)  # mostly a light page with content on it


def test_captions_reach_caption_reward_terms_and_missing_ones_stop_first(tmp_path: Path, no_weights, monkeypatch):
    """Sidecars beside the GT, a table and a default feed a caption-scoring term; without captions
    the run stops before any method is restored, naming the images."""
    from lrpo.data.captions import CaptionError
    from lrpo.eval import evaluate as evaluate_mod

    paired, gtcopy, _ = _paired_set(tmp_path, count=3)
    spec = {register_caption_length_reward(): {"weight": 1.0}}
    method = [MethodSpec("cf", "folder", str(gtcopy))]
    monkeypatch.setattr(evaluate_mod._MethodRunner, "outputs", lambda *a: pytest.fail("restored before the caption check"))
    with pytest.raises(CaptionError, match=r"3 of 3 have none: face_00, face_01, face_02.*--captions FILE"):
        evaluate_paired(paired, method, tmp_path / "e0", _fast(reward_preset=spec))
    monkeypatch.undo()
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))
    (paired / "hq" / "face_00.txt").write_text("sidecar zero")
    table = tmp_path / "caps.jsonl"
    table.write_text('{"name": "face_01.png", "caption": "from the table"}\n')
    CaptionLengthReward.seen.clear()
    result = evaluate_paired(paired, method, tmp_path / "e1", _fast(reward_preset=spec, captions=str(table), default_caption="a face"))
    assert CaptionLengthReward.seen[0] == ["sidecar zero", "from the table", "a face"]
    # the score is the caption length / 100, so the mean proves which captions were used
    assert result.summary["cf"]["reward/total"] == pytest.approx((12 + 14 + 6) / 300)


def test_table_files_follow_the_run(tmp_path: Path, no_weights):
    paired, gtcopy, upscaled = _paired_set(tmp_path, count=3)
    pub = tmp_path / "pub.csv"
    pub.write_text("method,psnr,ssim\nDiffBIR,25.39,0.6536\n")
    methods = [MethodSpec("gt", "folder", str(gtcopy)), MethodSpec("up", "folder", str(upscaled))]
    evaluate_paired(paired, methods, tmp_path / "eval", _fast(table=True, published=str(pub)))
    md = (tmp_path / "eval" / "table.md").read_text().splitlines()
    assert md[0].startswith("| method | PSNR↑ | SSIM↑ |")
    assert md[3].startswith("| gt | **120.00** | **1.0000** |")  # GT copies win every column (PSNR capped at 120 dB)
    assert md[4].startswith("| up | <u>")
    assert any(line.startswith("| *DiffBIR* † | *25.39* | *0.6536* |") for line in md)
    assert (tmp_path / "eval" / "table.tex").read_text().startswith(r"\begin{tabular}")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,psnr\n")
    with pytest.raises(ValueError, match="first column must be 'method'"):
        evaluate_paired(paired, methods, tmp_path / "eval2", _fast(published=str(bad)))
    assert not (tmp_path / "eval2").exists()  # refused before any work


def test_fid_reference_statistics_are_cached_and_reusable(tmp_path: Path, no_weights, monkeypatch):
    """A reference folder's statistics are computed once (the same as computing them directly),
    cached, reused on the next run, and a saved .npz gives the same FID."""
    import json

    import numpy as np
    import torch

    from lrpo.eval import evaluate as evaluate_mod
    from lrpo.eval.fid import InceptionFeatures, feature_statistics, load_reference_stats
    from lrpo.standins import write_standin

    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    inception = write_standin("inception-fid", tmp_path / "w", scale="tiny")
    paired, gtcopy, upscaled = _paired_set(tmp_path, count=4)
    ref = tmp_path / "ref"
    write_tiny_faces(ref, count=5, size=32, seed=9)
    methods = [MethodSpec("up", "folder", str(upscaled))]
    opts = dict(inception_path=str(inception), fid_reference=str(ref), report=False)
    first = evaluate_paired(paired, methods, tmp_path / "e1", _fast(**opts))
    rec = json.loads((tmp_path / "e1" / "metrics.json").read_text())["fid_reference"]
    assert rec == {"source": str(ref), "count": 5, "resolution": 32, "from_cache": False}
    cached = list((tmp_path / "cache" / "fid_stats").glob("*.npz"))
    assert len(cached) == 1
    # the cached statistics are those of the reference images' Inception features
    model = InceptionFeatures.from_file(inception)
    imgs = torch.stack([evaluate_mod.to_tensor(evaluate_mod.load_rgb(p)) for p in sorted(ref.glob("*.png"))])
    with torch.no_grad():
        mu, sigma = feature_statistics(model(imgs).double().numpy())
    stats = load_reference_stats(cached[0])
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-4, atol=1e-6)
    # the second run reads no reference image
    monkeypatch.setattr(evaluate_mod, "_features_of", lambda *a: pytest.fail("recomputed the cached reference"))
    second = evaluate_paired(paired, methods, tmp_path / "e2", _fast(**opts))
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["fid_reference"]["from_cache"] is True
    assert second.summary["up"]["fid"] == first.summary["up"]["fid"]
    monkeypatch.undo()
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path / "no_weights"))
    third = evaluate_paired(paired, methods, tmp_path / "e3", _fast(**{**opts, "fid_reference": str(cached[0])}))
    assert third.summary["up"]["fid"] == pytest.approx(first.summary["up"]["fid"], rel=1e-9)
