"""The demo's safety parts without a browser: upload limits and bombs, path containment, the Host
check, one job at a time, the run folder reader, and the HTTP layer's refusals."""

from __future__ import annotations

import http.client
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import demo_server

from lrpo.demo.safety import DemoError, JobGate, UploadLimits, decode_upload, host_allowed, is_loopback, resolve_inside


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) and whose data is one empty deflate
    stream: a few dozen bytes that would decode to width * height * 3 bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------
def test_decode_upload_reads_png_and_jpeg_as_rgb_uint8():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    out = decode_upload(_png(img))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, img)
    buf = io.BytesIO()
    Image.fromarray(img).convert("L").save(buf, format="JPEG")
    gray = decode_upload(buf.getvalue())
    assert gray.shape == (20, 30, 3)  # gray becomes 3 equal channels


def test_decode_upload_refuses_bytes_over_the_limit_before_decoding():
    data = _png(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DemoError, match="accepts files up to") as e:
        decode_upload(data, UploadLimits(max_bytes=len(data) - 1))
    assert e.value.status == 413
    decode_upload(data, UploadLimits(max_bytes=len(data)))  # exactly at the limit is fine


def test_decode_upload_refuses_a_decompression_bomb_from_its_header():
    bomb = _png_header_only(8_000, 8_000)  # 192 MB of pixels in under 100 bytes
    assert len(bomb) < 100
    with pytest.raises(DemoError, match=r"8000 x 8000 pixels \(64.0 megapixels\).*decompression bomb") as e:
        decode_upload(bomb)  # default limit: 36 megapixels
    assert e.value.status == 413
    # above Pillow's own threshold (~179 MP) Pillow refuses at open; that refusal is ours too, whatever our limit
    for limits in (UploadLimits(), UploadLimits(max_pixels=10**12)):
        with pytest.raises(DemoError, match="decompression bomb") as e:
            decode_upload(_png_header_only(50_000, 50_000), limits)
        assert e.value.status == 413


def test_decode_upload_pixel_limit_counts_width_times_height():
    data = _png(np.zeros((100, 100, 3), np.uint8))
    assert decode_upload(data, UploadLimits(max_pixels=10_000)).shape == (100, 100, 3)
    with pytest.raises(DemoError, match="at most 0 megapixels"):
        decode_upload(data, UploadLimits(max_pixels=9_999))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"hello, not an image", "not an image the demo opens"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image the demo opens"),  # never reaches Ghostscript
    ],
)
def test_decode_upload_refuses_what_is_not_an_allowed_image(data, message):
    with pytest.raises(DemoError, match=message):
        decode_upload(data)


def test_decode_upload_refuses_gif_truncated_and_tiny_files():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="GIF")
    with pytest.raises(DemoError, match="PNG, JPEG, WebP, BMP or TIFF"):
        decode_upload(buf.getvalue())
    data = _png(np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    with pytest.raises(DemoError, match="corrupt or truncated"):
        decode_upload(data[: len(data) // 2])
    with pytest.raises(DemoError, match="at least 8 px a side"):
        decode_upload(_png(np.zeros((4, 40, 3), np.uint8)))


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def test_resolve_inside_keeps_paths_in_the_folder(tmp_path: Path):
    root = tmp_path / "run"
    (root / "samples").mkdir(parents=True)
    (root / "samples" / "epoch_0001.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    assert resolve_inside(root, "samples/epoch_0001.png") == (root / "samples" / "epoch_0001.png").resolve()
    assert resolve_inside(root, ".") == root.resolve()
    assert resolve_inside(root, "samples/../samples/epoch_0001.png").name == "epoch_0001.png"  # stays inside
    for bad in ("../secret.txt", "samples/../../secret.txt", "/etc/passwd", str(tmp_path / "secret.txt"),
                "samples\\..\\..\\secret.txt", "a\x00b", "C:/windows"):
        with pytest.raises(DemoError) as e:
            resolve_inside(root, bad)
        assert e.value.status == 403


def test_resolve_inside_refuses_symlinks_that_leave_but_not_those_that_stay(tmp_path: Path):
    root = tmp_path / "run"
    (root / "samples").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    (root / "samples" / "epoch_0002.png").symlink_to(outside)
    (root / "samples" / "epoch_0003.png").write_bytes(b"y")
    (root / "samples" / "epoch_0004.png").symlink_to(root / "samples" / "epoch_0003.png")
    (root / "escape").symlink_to(tmp_path)
    with pytest.raises(DemoError, match="leaves the run folder"):
        resolve_inside(root, "samples/epoch_0002.png")
    with pytest.raises(DemoError, match="leaves the run folder"):
        resolve_inside(root, "escape/outside.png")
    assert resolve_inside(root, "samples/epoch_0004.png").name == "epoch_0003.png"


def test_host_check_accepts_loopback_names_only():
    allowed = ("127.0.0.1", "localhost", "::1")
    for ok in ("127.0.0.1:7860", "localhost", "LOCALHOST:80", "[::1]:7860", "127.0.0.1"):
        assert host_allowed(ok, allowed), ok
    for bad in ("evil.example:7860", "127.0.0.1.evil.example", "", None, "[::2]:80", "localhost.:80"):
        assert not host_allowed(bad, allowed), bad
    assert host_allowed("anything:1", ("*",))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


# ---------------------------------------------------------------------------------------------
# one job at a time
# ---------------------------------------------------------------------------------------------
def test_job_gate_runs_one_job_at_a_time_and_refuses_beyond_the_queue():
    gate = JobGate(max_waiting=1)
    release = threading.Event()
    started = threading.Event()
    running = []
    overlap = []

    def job(tag):
        def fn():
            running.append(tag)
            if len(running) > 1:
                overlap.append(tuple(running))
            started.set()
            release.wait(5)
            running.remove(tag)
            return tag

        return fn

    results = []
    first = threading.Thread(target=lambda: results.append(gate.run(job("a"))))
    first.start()
    assert started.wait(5)
    second = threading.Thread(target=lambda: results.append(gate.run(job("b"))))
    second.start()
    deadline = time.monotonic() + 5
    while gate.admitted < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gate.admitted == 2 and gate.full  # one running, one waiting: the web layer refuses before reading a body
    with pytest.raises(DemoError, match="busy") as e:
        gate.run(lambda: "c")
    assert e.value.status == 503
    release.set()
    first.join(5)
    second.join(5)
    assert sorted(results) == ["a", "b"] and not overlap
    assert gate.admitted == 0 and not gate.full
    assert gate.run(lambda: "d") == "d"  # free again


def test_job_gate_frees_its_place_when_a_job_fails():
    gate = JobGate(max_waiting=0)
    with pytest.raises(ZeroDivisionError):
        gate.run(lambda: 1 / 0)
    assert gate.admitted == 0 and gate.run(lambda: 5) == 5


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------
def write_fake_run(folder: Path, epochs: int = 3) -> Path:
    """A run folder as `lrpo train` leaves it: log.jsonl with reward terms and guard metrics, and
    sample grids (synthetic pictures made here)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in range(1, epochs + 1):
        rec = {"epoch": e, "reward_mean": 0.4 + 0.05 * e, "reward/dwt_mean": 0.3 + 0.02 * e, "reward/ssim_mean": 0.5 + 0.01 * e,
               "loss": 1.0 / e, "eval_reward": 0.41 + 0.04 * e, "guard_psnr": 24.0 - 0.5 * e, "guard_identity": 0.8}
        if e == epochs:
            rec["guard_violations"] = [f"psnr {rec['guard_psnr']:.2f} < start 23.50 - tolerance"]
        lines.append(json.dumps(rec))
    lines.append(json.dumps({"epoch": epochs, "rolled_back_to_epoch": 1}))
    (folder / "log.jsonl").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    (folder / "samples").mkdir(exist_ok=True)
    for e in (1, epochs):
        grid = rng.integers(0, 256, size=(36, 110, 3), dtype=np.uint8)
        Image.fromarray(grid).save(folder / "samples" / f"epoch_{e:04d}.png")
    return folder


def test_run_browser_lists_runs_reads_curves_and_guard_events(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from lrpo.demo.runview import RunBrowser

    root = tmp_path / "runs"
    write_fake_run(root / "lrpo")
    write_fake_run(root / "sweep" / "lr1e-5", epochs=2)
    (root / "empty").mkdir()
    elsewhere = write_fake_run(tmp_path / "elsewhere")
    (root / "linked").symlink_to(elsewhere)  # a symlinked run is never listed nor opened
    runs = RunBrowser(root)
    assert runs.list_runs() == ["lrpo", "sweep/lr1e-5"]
    s = runs.summary("lrpo")
    assert s["records"] == 4 and s["grids"] == ["epoch_0001.png", "epoch_0003.png"]
    titles = [c["title"] for c in s["curves"]]
    assert titles[:2] == ["reward terms", "guard"] and "evaluation" in titles
    assert all(c["image"].startswith("data:image/png;base64,") for c in s["curves"])
    assert [ev["text"] for ev in s["guard_events"]] == ["psnr 22.50 < start 23.50 - tolerance", "rolled back to epoch 1"]
    assert runs.grid("lrpo", "epoch_0003.png")[:8] == b"\x89PNG\r\n\x1a\n"
    for outside in ("linked", "../elsewhere", str(elsewhere)):
        with pytest.raises(DemoError) as e:
            runs.summary(outside)
        assert e.value.status == 403
    with pytest.raises(DemoError) as e:
        runs.summary("empty")  # inside, but not a run
    assert e.value.status == 404
    for bad in ("../log.jsonl", "epoch_0001.png/../../log.jsonl", "epoch_1.jpg", ""):
        with pytest.raises(DemoError) as e:
            runs.grid("lrpo", bad)
        assert e.value.status == 403
    with pytest.raises(DemoError) as e:
        runs.grid("lrpo", "epoch_0002.png")
    assert e.value.status == 404


def test_run_browser_refuses_a_grid_symlinked_out_of_the_run(tmp_path: Path):
    from lrpo.demo.runview import RunBrowser

    run = write_fake_run(tmp_path / "run")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    (run / "samples" / "epoch_0009.png").symlink_to(secret)
    runs = RunBrowser(run)
    assert runs.list_runs() == ["."]
    assert "epoch_0009.png" not in runs.grids(".")
    with pytest.raises(DemoError, match="leaves the run folder"):
        runs.grid(".", "epoch_0009.png")


# ---------------------------------------------------------------------------------------------
# request options
# ---------------------------------------------------------------------------------------------
def test_request_options_are_checked_with_messages():
    from lrpo.demo.service import GroupRequest, RestoreRequest

    r = RestoreRequest.from_params({"aligned": "1", "upscale": "2", "steps": "8", "eta": "0.5", "seed": "3"})
    assert (r.aligned, r.only_center_face, r.upscale, r.steps, r.eta, r.seed) == (True, False, 2.0, 8, 0.5, 3)
    assert RestoreRequest.from_params({}) == RestoreRequest()
    for params, message in [({"upscale": "16"}, r"upscale must be in \[1.0, 4.0\]"), ({"steps": "x"}, "steps must be an integer"),
                            ({"eta": "nan"}, "eta must be finite"), ({"aligned": "maybe"}, "aligned must be true or false")]:
        with pytest.raises(DemoError, match=message):
            RestoreRequest.from_params(params)
    g = GroupRequest.from_params({"G": "3", "weights": "dwt:1, ssim:3", "degradation": "mild"})
    assert (g.group_size, g.weights, g.degradation, g.preset) == (3, {"dwt": 1.0, "ssim": 3.0}, "mild", None)
    for params, message in [({"G": "1"}, r"G must be in \[2, 16\]"), ({"weights": "dwt"}, "term:weight"),
                            ({"weights": "dwt:-1"}, "weight must be in"), ({"preset": "offline", "weights": "dwt:1"}, "not both")]:
        with pytest.raises(DemoError, match=message):
            GroupRequest.from_params(params)


# ---------------------------------------------------------------------------------------------
# the service and the HTTP layer on a tiny checkpoint (no browser)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tiny_run: Path, tmp_path_factory):
    pytest.importorskip("starlette", reason='the demo needs pip install "lrpo[demo]"')
    from tests.conftest import register_caption_length_reward, single_thread
    from lrpo.demo.service import DemoService

    caption_term = register_caption_length_reward()

    runs = write_fake_run(tmp_path_factory.mktemp("demo_runs") / "lrpo")
    with single_thread():
        yield DemoService(tiny_run, device="cpu", detector_path=str(tmp_path_factory.mktemp("no_detector")), runs_root=runs.parent,
                          limits=UploadLimits(max_bytes=200_000, max_pixels=1_000_000), max_waiting=0,
                          reward_names=["dwt", "ssim", "sharpness", "identity", caption_term])


def test_service_group_scores_each_candidate_and_uses_group_advantages(service):
    import torch

    from lrpo.data.groups import derive_seed
    from lrpo.demo.service import GroupRequest
    from lrpo.rl.advantages import group_advantages

    face = np.random.default_rng(3).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    r = service.group(face, GroupRequest(group_size=3, seed=5, degradation="mild", weights={"dwt": 1, "ssim": 3}, steps=3))
    assert r["weights"] == {"dwt": 0.25, "ssim": 0.75}  # normalised to sum 1
    assert len(r["candidates"]) == 3 and r["gt"] is not None
    totals = torch.tensor([c["total"] for c in r["candidates"]])
    for c in r["candidates"]:
        assert c["total"] == pytest.approx(0.25 * c["terms"]["dwt"] + 0.75 * c["terms"]["ssim"], abs=1e-6)
    expected = group_advantages(totals, torch.zeros(3, dtype=torch.long)).advantages
    np.testing.assert_allclose([c["advantage"] for c in r["candidates"]], expected.numpy(), atol=1e-5)
    assert [c["seed"] for c in r["candidates"]] == [str(derive_seed(5, j)) for j in range(3)]
    again = service.group(face, GroupRequest(group_size=3, seed=5, degradation="mild", weights={"dwt": 1, "ssim": 3}, steps=3))
    assert [c["total"] for c in again["candidates"]] == [c["total"] for c in r["candidates"]]  # seeded


def test_service_refuses_unavailable_or_gt_terms_without_gt(service):
    from lrpo.demo.service import GroupRequest

    face = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(DemoError, match="needs no ground truth|compares with the undegraded face"):
        service.group(face, GroupRequest(degradation="none", weights={"ssim": 1}))
    with pytest.raises(DemoError, match="unknown reward term 'lpips'"):
        service.group(face, GroupRequest(weights={"lpips": 1}))
    with pytest.raises(DemoError, match="sum to 0"):
        service.group(face, GroupRequest(weights={"dwt": 0}))
    r = service.group(face, GroupRequest(group_size=2, degradation="none", weights={"sharpness": 1}, steps=2))
    assert r["gt"] is None and r["terms"] == ["sharpness"]


def test_service_group_gives_the_caption_to_caption_terms(service):
    from lrpo.demo.service import GroupRequest

    face = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(DemoError, match="against its caption: type one"):
        service.group(face, GroupRequest(group_size=2, degradation="none", weights={"test_caption_length": 1}, steps=2))
    r = service.group(face, GroupRequest(group_size=2, degradation="none", weights={"test_caption_length": 1}, steps=2,
                                         caption="a smiling astronaut"))
    assert [c["total"] for c in r["candidates"]] == pytest.approx([0.19, 0.19])
    assert r["dropped"] and all(c["advantage"] == 0 for c in r["candidates"])  # equal rewards: no signal
    assert any("no learning signal" in n for n in r["notes"])


def test_service_restore_aligned_keeps_the_size_and_photos_need_a_detector(service):
    from lrpo.demo.service import RestoreRequest

    face = np.random.default_rng(4).integers(0, 256, size=(24, 30, 3), dtype=np.uint8)
    r = service.restore(face, RestoreRequest(aligned=True, steps=2))
    assert (r["width"], r["height"]) == (30, 24) and r["image"].startswith("data:image/png;base64,")
    assert any("not square" in n for n in r["notes"])
    with pytest.raises(DemoError, match="no face detector.*aligned face"):
        service.restore(face, RestoreRequest(aligned=False))


def test_service_compile_on_restores_through_the_compiled_batch1_forward(service, tiny_run, tmp_path):
    """compile=on compiles the one-face forward before serving; a restore then goes through it and
    gives the eager restore (fp32: the same image within a grey level); info() says it is ready."""
    from lrpo.demo.service import DemoService, RestoreRequest
    from lrpo.policies.compiled import CompiledForward

    compiled = DemoService(tiny_run, device="cpu", detector_path=str(tmp_path), compile="on")
    forward = compiled.compiled_forward()
    assert isinstance(forward, CompiledForward) and forward.policy is compiled.policy and forward.batch_size == 1
    assert compiled.info()["compile"].startswith("ready (compiled in ")
    assert service.compile_status() == "off" and service.compiled_forward() is None
    calls = []
    real = forward._compiled
    forward._compiled = lambda *a: calls.append(1) or real(*a)
    face = np.random.default_rng(5).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    request = RestoreRequest(aligned=True, steps=3)
    import torch._dynamo

    with torch._dynamo.config.patch(error_on_recompile=True):  # the graph traced in the background serves as it is
        a = _decode(compiled.restore(face, request)["image"])
    b = _decode(service.restore(face, request)["image"])
    assert len(calls) == 3  # one compiled forward per step
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def _decode(data_uri: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def server(service):
    """The app on a free loopback port, served in a thread as `lrpo demo` serves it (make_server)."""
    with demo_server(service) as port:
        yield port


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers={"X-LRPO-Demo": "1", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def test_http_layer_refuses_with_messages_not_tracebacks(server):
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and b"lrpo demo" in body and "script-src 'self'" in headers["content-security-policy"]
    status, _, body = _request(server, "GET", "/", headers={"Host": "rebound.example:80"})
    assert status == 421
    face = _png(np.random.default_rng(5).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    status, _, body = _request(server, "POST", "/api/restore?aligned=1&steps=2", face, {"X-LRPO-Demo": "0"})
    assert status == 403 and b"demo's own page" in body
    status, _, body = _request(server, "POST", "/api/restore?aligned=1&steps=2", face)
    assert status == 200 and json.loads(body)["width"] == 32
    cases = [
        ("/api/restore?aligned=1", b"not an image at all", 400, "not an image the demo opens"),
        ("/api/restore?aligned=1", _png_header_only(30_000, 30_000), 413, "decompression bomb"),
        ("/api/restore?aligned=1", b"\0" * 300_000, 413, "accepts files up to"),
        ("/api/restore?aligned=1&upscale=9", face, 400, "upscale must be in"),
        ("/api/group?weights=lpips:1", face, 400, "unknown reward term"),
    ]
    for path, data, want_status, message in cases:
        status, _, body = _request(server, "POST", path, data)
        text = json.loads(body)["error"]
        assert status == want_status and message in text, (path, status, text)
        assert "Traceback" not in text
    status, _, body = _request(server, "GET", "/api/run/grid?name=lrpo&file=../../../../etc/passwd")
    assert status == 403
    status, _, body = _request(server, "GET", "/api/run?name=../../")
    assert status == 403 and "leaves the run folder" in json.loads(body)["error"]
    status, headers, body = _request(server, "GET", "/api/run/grid?name=lrpo&file=epoch_0001.png")
    assert status == 200 and headers["content-type"] == "image/png" and body[:4] == b"\x89PNG"


def test_examples_are_the_embedded_public_domain_face(server):
    from lrpo.demo.app import example_image

    photo, face, clean = (example_image(n) for n in ("photo.png", "face.png", "face-hq.png"))
    assert photo.shape == (256, 256, 3) and face.shape == clean.shape == (128, 128, 3)
    assert np.abs(face.astype(int) - clean.astype(int)).mean() > 2  # the Restore examples are degraded
    status, headers, body = _request(server, "GET", "/api/example/face-hq.png")
    assert status == 200 and headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), clean)
    for bad in ("/api/example/secret.png", "/api/example/..%2F..%2Fetc%2Fpasswd"):
        assert _request(server, "GET", bad)[0] == 404


def test_http_layer_stops_reading_a_body_without_length_past_the_limit(server):
    """A chunked upload (no Content-Length) is cut off at the limit, not read to its end."""
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)

    def chunks():
        for _ in range(100):  # 100 x 64 kB = 6.4 MB offered, limit 200 kB
            yield b"\0" * 65536

    try:
        conn.request("POST", "/api/restore?aligned=1", body=chunks(), headers={"X-LRPO-Demo": "1"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        assert "larger than 0 MB, the demo's limit" in json.loads(resp.read())["error"]
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before all chunks were sent: also a refusal
    finally:
        conn.close()


def test_cli_demo_help_and_bad_arguments(capsys):
    from lrpo.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "127.0.0.1" in out and "--runs" in out
    assert main(["demo", "--policy", "nope"]) == 2
    assert "--policy 'nope' is not known" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", "x", "--port", "70000"]) == 2
