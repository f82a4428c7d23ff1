"""`lrpo demo` in a real browser: the server in a subprocess on a free loopback port, headless
Debian Chromium driven by Playwright (its pip package only: no browser is downloaded, the system
Chromium is launched through ``executable_path``).

The page must restore an uploaded photo (whole photo when the YuNet file is found, else an aligned
face) at the expected size, show it before | after (before on the left) in a large comparison that
zooms (to a face when one is clicked) with face crops at a readable size, offer the models of the
server's list (switching to a run under --runs by name), list G scored candidates in the Group tab
(the upload taken as already degraded unless a degradation is chosen), show a refusal as a message,
and draw the curves and the sample grid of a run in the Run tab.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrpo.demo import served_port

from tests.photo_scenes import yunet_dir
from tests.demo.test_safety import write_fake_run

CHROMIUM_NAMES = ("chromium", "chromium-browser")
START_TIMEOUT_S = 90


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if found:
            return found
    pytest.skip("chromium is not installed (CI installs it with apt-get install chromium)")


def _start_demo(args: list[str], env: dict) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``lrpo demo`` and return the process, its URL (read from its first line) and its output
    so far (the list grows while it runs: a failing test prints it)."""
    proc = subprocess.Popen([sys.executable, "-m", "lrpo.cli", "demo", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        port = served_port(line)
        if port is not None:
            threading.Thread(target=_drain, args=(lines, seen), daemon=True).start()
            return proc, f"http://127.0.0.1:{port}/", seen
    proc.kill()
    pytest.fail(f"lrpo demo did not start within {START_TIMEOUT_S} s:\n{''.join(seen)}")


def _drain(lines: queue.Queue, into: list[str]) -> None:
    """Move the demo's output lines into ``into`` for as long as it runs (a daemon thread)."""
    while True:
        into.append(lines.get())


def _wait_until(page, fn: str, timeout_s: float = 60.0) -> None:
    """Poll ``fn`` (a JavaScript function) until it returns true. Not wait_for_function: that one
    evaluates a string, which the page's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(fn):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {fn}")
        time.sleep(0.1)


def _check_comparison(page, faces: bool) -> None:
    """Before on the left of the slider's line, a view at least 500 px, zoom by button and by a face."""
    geometry = page.evaluate("""() => {
      const box = document.getElementById('restore-compare').getBoundingClientRect();
      const tag = (c) => document.querySelector('.tag.' + c).getBoundingClientRect().left;
      return {width: box.width, height: box.height, clip: document.getElementById('restore-before-layer').style.clipPath,
              before: tag('before'), after: tag('after'), scale: Number(document.getElementById('restore-compare').dataset.scale)};
    }""")
    assert geometry["clip"] == "inset(0px 50% 0px 0px)", geometry  # the before layer is cut on its right: it shows on the left
    assert geometry["before"] < geometry["after"] and max(geometry["width"], geometry["height"]) >= 500, geometry
    fit = geometry["scale"]
    page.click("#restore-zoom-in")
    assert float(page.get_attribute("#restore-compare", "data-scale")) == pytest.approx(fit * 1.5, rel=1e-3)
    page.click("#restore-zoom-fit")
    assert float(page.get_attribute("#restore-compare", "data-scale")) == pytest.approx(fit, rel=1e-3)
    if faces:
        assert page.locator("#restore-faces tbody tr").count() >= 1
        assert "yes" in page.inner_text("#restore-faces tbody tr >> nth=0")
        crop = page.locator("#restore-faces img.crop >> nth=0").bounding_box()
        assert crop["width"] >= 192 and crop["height"] >= 192, crop  # readable, not a thumbnail
        page.click("#restore-boxes .face-box >> nth=0")  # click the face in the picture: the view zooms to it
        zoomed = float(page.get_attribute("#restore-compare", "data-scale"))
        assert zoomed > 2 * fit, (zoomed, fit)
        box = page.locator("#restore-boxes .face-box >> nth=0").bounding_box()
        view = page.locator("#restore-compare").bounding_box()
        centre = (box["x"] + box["width"] / 2 - view["x"], box["y"] + box["height"] / 2 - view["y"])
        assert centre == pytest.approx((view["width"] / 2, view["height"] / 2), abs=2)  # centred on the face
        page.click("#restore-zoom-fit")
        page.click("#restore-faces img.crop >> nth=1")  # or its crop in the table
        assert float(page.get_attribute("#restore-compare", "data-scale")) == pytest.approx(zoomed, rel=1e-3)


def test_demo_in_headless_chromium(tiny_run: Path, tmp_path: Path):
    browser_path = _chromium()
    playwright = pytest.importorskip("playwright.sync_api", reason='the browser test needs playwright (pip install "lrpo[test]")')

    detector = yunet_dir()
    runs = write_fake_run(tmp_path / "runs" / "lrpo")
    shutil.copytree(tiny_run, runs.parent / "tiny")  # a second model in the selector: run:tiny
    shutil.copytree(tiny_run, runs.parent / 'x"<b>y')  # a folder name with markup: shown as text
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LRPO_WEIGHTS": str(detector or tmp_path / "none")}
    args = ["--checkpoint", str(tiny_run), "--port", "0", "--runs", str(runs.parent), "--device", "cpu"]
    if detector is not None:
        args += ["--detector", str(detector)]

    # the photo to upload: the public-domain astronaut, shrunk (whole photo) or its face (aligned)
    from skimage import data as skdata

    photo = skdata.astronaut()
    if detector is not None:
        upload, aligned, upscale = Image.fromarray(photo).resize((200, 200), Image.LANCZOS), False, 2
        expected = (400, 400)
    else:
        upload, aligned, upscale = Image.fromarray(photo[20:240, 112:332]).resize((48, 48), Image.LANCZOS), True, 1
        expected = (48, 48)
    photo_path = tmp_path / "upload.jpg"
    upload.save(photo_path, quality=85)
    bad_path = tmp_path / "notes.png"
    bad_path.write_bytes(b"this is text, not a picture")

    proc, url, log = _start_demo(args, env)
    shot = tmp_path / "demo.png"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)

            # the model selector: the start model, the run with a checkpoint, the published names
            options = page.evaluate("[...document.querySelectorAll('#model-select option')].map(o => [o.value, o.disabled])")
            names = [n for n, _ in options]
            assert names[:2] == ["start", "run:tiny"] and {"policy:lrpo-fidelity", "policy:lrpo-perception"} <= set(names)
            assert page.input_value("#model-select") == "start"
            assert page.text_content('#model-select option[value="run:x\\"<b>y"]') == 'x"<b>y (run, step_000004)'
            assert page.locator("#model-select b").count() == 0  # not parsed as markup
            if dict(options)["policy:lrpo-fidelity"]:  # disabled: the reason is on the page
                assert "lrpo weights fetch" in page.text_content("#model-missing-list")

            # Restore: upload, options, wait for the restored image, check its size
            page.set_input_files("#restore-file", str(photo_path))
            page.set_checked("#restore-aligned", aligned)
            page.select_option("#restore-upscale", str(upscale))
            page.fill("#restore-steps", "4")
            page.click("#restore-run")
            _wait_until(page, "() => document.getElementById('restore-result').naturalWidth > 0")
            size = page.evaluate("[document.getElementById('restore-result').naturalWidth, "
                                 "document.getElementById('restore-result').naturalHeight]")
            assert tuple(size) == expected
            assert page.get_attribute("#restore-download", "href").startswith("data:image/png;base64,")
            _check_comparison(page, faces=not aligned)
            assert page.inner_text("#restore-summary").startswith("model ") and "given at start" in page.inner_text("#restore-summary")
            page.screenshot(path=str(tmp_path / "restore.png"), full_page=True)

            # switching the model by name: the result says which model made it
            page.select_option("#model-select", "run:tiny")
            page.click("#restore-run")
            _wait_until(page, "() => document.getElementById('restore-summary').textContent.startsWith('model tiny (run')")
            assert page.inner_text("#restore-after-tag") == "after · tiny (run, step_000004)"
            _wait_until(page, "() => document.getElementById('model-info').textContent.startsWith('loaded: tiny (run')", 10)

            # a file that is not an image: a message in the page, never a traceback
            page.set_input_files("#restore-file", str(bad_path))
            page.click("#restore-run")
            page.wait_for_selector("#restore-error:not([hidden])", timeout=30_000)
            message = page.inner_text("#restore-error")
            assert "not an image the demo opens" in message and "Traceback" not in message

            # Group, by default: the upload is the LQ as it is, no GT, GT terms n/a
            page.click("#tab-group")
            page.set_input_files("#group-file", str(photo_path))
            assert page.input_value("#group-degradation") == "none"
            page.fill("#group-G", "2")
            page.fill("#group-steps", "2")
            page.click("#group-run")
            page.wait_for_selector(".candidate", timeout=60_000)
            titles = page.locator(".card .title").all_inner_texts()
            assert titles[0] == "LQ (your upload, real)" and not any(t.startswith("GT") for t in titles), titles
            first = page.inner_text(".candidate >> nth=0")
            assert "sharpness" in first and "n/a (no GT)" in first and "tiny (run" in first

            # Group with a degradation: the upload is the GT; G candidates, each with its terms, total and advantage
            page.fill("#group-G", "3")
            page.fill("#group-steps", "3")
            page.select_option("#group-degradation", "mild")
            page.click("#group-run")
            page.wait_for_selector(".candidate", timeout=60_000)
            _wait_until(page, "() => document.querySelectorAll('.candidate').length === 3")
            assert page.locator(".card .title").all_inner_texts()[:2] == ["LQ (degraded, group seed)", "GT (your upload)"]
            totals = [float(t) for t in page.locator(".candidate .score-total").all_inner_texts()]
            assert len(totals) == 3 and all(np.isfinite(totals))
            advantages = page.locator(".candidate .advantage").all_inner_texts()
            assert len(advantages) == 3 and all(a.startswith("advantage ") for a in advantages)
            assert sum(float(a.split()[1]) for a in advantages) == pytest.approx(0.0, abs=2e-3)  # centred on the group
            for term in ("dwt", "ssim", "sharpness"):  # the no_weights preset: no model file needed
                assert term in page.inner_text(".candidate >> nth=0")
            assert "Not available" in page.inner_text("#group-terms-note")
            page.screenshot(path=str(shot), full_page=True)

            # Run: curves and the latest sample grid of the run folder
            page.click("#tab-run")
            page.wait_for_selector("#run-curves img", timeout=60_000)
            _wait_until(page, "() => document.getElementById('run-grid').naturalWidth > 0", 30)
            assert page.locator("#run-curves img").count() >= 2
            assert "rolled back to epoch 1" in page.inner_text("#run-events")
            page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
            assert not errors, errors
            browser.close()
    except Exception:
        print("lrpo demo's output:\n" + "".join(log[-60:]), file=sys.stderr)  # pytest shows it with the failure
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert shot.is_file() and shot.stat().st_size > 10_000
