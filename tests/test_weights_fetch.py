"""`lrpo weights fetch`: verified downloads through the Hub (huggingface_hub) and plain URLs.

Every download is served by a small HTTP server on 127.0.0.1 that answers the Hub's resolve URLs
(HEAD and GET on /{repo}/resolve/{revision}/{file} with X-Repo-Commit, ETag / X-Linked-Etag,
X-Linked-Size and Range requests) and plain paths; HF_ENDPOINT points huggingface_hub at it. No test
reaches the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lrpo import fetch as fetching
from lrpo import weights
from lrpo.cli import main

REPO = "someone/models"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _torch_zip(n_bytes: int, seed: int = 0) -> bytes:
    """A zip archive (the torch.save container) of about n_bytes of incompressible data."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data/0", hashlib.shake_256(str(seed).encode()).digest(n_bytes))
    return buf.getvalue()


HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Google Drive</body></html>\n"


# ----------------------------------------------------------------------------------------------
# the local server
# ----------------------------------------------------------------------------------------------
class Stub:
    """What the server serves: {url path: bytes}, its log of (method, path, Range), and faults."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}  # a stated sha256 other than the file's (a lying mirror)
        self.cut: dict[str, int] = {}  # path -> bytes sent by the next GET before the connection drops
        self.no_length: set[str] = set()  # paths streamed without Content-Length
        self.log: list[tuple[str, str, str | None]] = []
        self.auth: list[str | None] = []  # Authorization header of each request

    def hub(self, repo: str, filename: str, data: bytes, revision: str = "main") -> str:
        path = f"/{repo}/resolve/{revision}/{filename}"
        self.files[path] = data
        return path

    def gets(self, path: str) -> list[str | None]:
        return [rng for method, p, rng in self.log if method == "GET" and p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a stuck client cannot hold a server thread for long

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        stub: Stub = self.server.stub
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        stub.log.append((self.command, path, self.headers.get("Range")))
        stub.auth.append(self.headers.get("Authorization"))
        data = stub.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        etag = stub.etags.get(path, _sha(data))
        for k, v in (("X-Repo-Commit", COMMIT), ("ETag", f'"{etag}"'), ("X-Linked-Etag", f'"{etag}"'),
                     ("X-Linked-Size", str(len(data))), ("Accept-Ranges", "bytes")):
            self.send_header(k, v)
        if path in stub.no_length and not head:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        cut = stub.cut.pop(path, None)
        self.wfile.write(body[:cut] if cut is not None else body)
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True  # fewer bytes than Content-Length, then the connection drops


@pytest.fixture
def server(tmp_path, monkeypatch):
    """The stub on 127.0.0.1 with HF_ENDPOINT, the Hub cache and the lrpo cache pointed at it / tmp."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.stub = Stub()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "lrpo"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("LRPO_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    httpd.stub.base = base
    yield httpd.stub
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _entry(monkeypatch, name: str, **fields) -> weights.WeightFile:
    """Register a test entry (removed after the test)."""
    entry = weights.WeightFile(name, fields.pop("filename", f"{name}.pth"), fields.pop("url", "unused"), "test",
                               "a test file", **fields)
    monkeypatch.setitem(weights.KNOWN_FILES, name, entry)
    return entry


def _hub_entry(monkeypatch, name: str, filename: str, **fields) -> weights.WeightFile:
    entry = weights.hub_file(name, REPO, filename, "test", "a test file", **fields)
    monkeypatch.setitem(weights.KNOWN_FILES, name, entry)
    return entry


BOUNDS = dict(min_mb=0.001, max_mb=1.0, container="torch", unpinned_reason="a test file")


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------
def test_every_entry_is_pinned_or_says_why_and_has_bounds_and_a_container():
    catalog = weights.load_catalog()
    assert len(catalog) >= 22
    for w in catalog.values():
        assert w.container in fetching.CONTAINERS, w.name
        lo, hi = w.size_bounds()
        assert hi > 0, f"{w.name}: no size cap"
        if w.sha256 is None:
            # not pinned: a documented reason, and bounds that exclude a few-kB HTML page unless the file is that small
            assert w.unpinned_reason and len(w.unpinned_reason) > 20, w.name
            assert lo > 0 and lo < hi, w.name
        if w.on_hub:
            in_repo = w.hub_filename or w.filename
            assert w.url == f"https://huggingface.co/{w.hub_repo}/resolve/{w.revision}/{urllib.parse.quote(in_repo)}"
            assert w.revision == "main" or len(w.revision) == 40  # "main" where the publisher's commit is unknown


def test_reference_release_entries_are_on_its_hub_repository():
    ref = "wubin1928/BFR_RL"
    expected = {"lrpo-fidelity": "lrpo_fidelity.pth", "lrpo-perception": "lrpo_perception.pth",
                "face-reward-model": "FaceRewardModel.pth", "ffhq-captions": "ffhq_captions.tar.gz"}
    for name, filename in expected.items():
        w = weights.get_entry(name)
        assert (w.hub_repo, w.hub_filename or w.filename, w.revision) == (ref, filename, "main")
    assert weights.get_entry("lrpo-fidelity").licence == weights.get_entry("lrpo-perception").licence == "Apache-2.0"
    assert weights.get_entry("ffhq-captions").container == "tar.gz"
    hub = {n: weights.get_entry(n).hub_repo for n in ("sd21-base", "diffbir-v1-face", "diffbir-swinir-face",
                                                       "openclip-vit-h-14", "musiq-koniq", "maniqa-koniq",
                                                       "topiq-nr-koniq", "clipiqa-plus-prompts")}
    assert hub["sd21-base"] == "stabilityai/stable-diffusion-2-1-base"
    assert hub["diffbir-v1-face"] == "lxq007/DiffBIR-v2" and hub["diffbir-swinir-face"] == "lxq007/DiffBIR"
    assert {hub[n] for n in ("musiq-koniq", "maniqa-koniq", "topiq-nr-koniq", "clipiqa-plus-prompts")} == {
        "chaofengc/IQA-PyTorch-Weights"}
    for names in fetching.FETCH_SETS.values():
        assert all(weights.get_entry(n) for n in names)


@pytest.mark.parametrize("container,good", [
    ("torch", _torch_zip(100)),
    ("torch", b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02"),  # legacy torch.save
    ("safetensors", (14).to_bytes(8, "little") + b'{"__meta": {}}'),
    ("onnx", b"\x08\x07\x12\x08pytorch"),
    ("gzip", gzip.compress(b"merges")),
    ("npz", _torch_zip(10)),
    ("libsvm", b"svm_type epsilon_svr\nkernel_type rbf\n"),
])
def test_containers_accept_their_files_and_refuse_a_web_page(tmp_path, monkeypatch, container, good):
    entry = _entry(monkeypatch, "t-container", container=container)
    for data, ok in ((good, True), (HTML, False), (b"", False)):
        p = tmp_path / "f"
        p.write_bytes(data)
        if ok:
            fetching.check_container(entry, p, "src")
        else:
            with pytest.raises(weights.ContainerError, match="not "):
                fetching.check_container(entry, p, "src")


# ----------------------------------------------------------------------------------------------
# plain URLs
# ----------------------------------------------------------------------------------------------
def test_html_page_is_never_saved_as_a_model(server, monkeypatch, capsys):
    # the issue: a Google Drive page stored as FaceRewardModel.pth with exit 0
    server.files["/drive/view"] = HTML
    _entry(monkeypatch, "t-page", filename="FaceRewardModel.pth", url=server.base + "/drive/view", **BOUNDS)
    with pytest.raises(weights.ContainerError, match="an HTML page"):
        fetching.fetch("t-page", progress=False)
    assert not list((Path(os.environ["LRPO_CACHE"])).glob("*FaceRewardModel*"))  # nothing kept, no partial
    assert main(["weights", "fetch", "t-page", "--no-progress"]) == 2
    assert "an HTML page" in capsys.readouterr().err
    # the same page from the Hub is refused too and leaves nothing in the Hub cache
    server.hub(REPO, "FaceRewardModel.pth", HTML * 20)
    _hub_entry(monkeypatch, "t-page-hub", "FaceRewardModel.pth", **BOUNDS)
    with pytest.raises(weights.ContainerError, match="an HTML page"):
        fetching.fetch("t-page-hub", progress=False)
    with pytest.raises(weights.MissingWeightsError):
        weights.resolve("t-page-hub")


def test_a_prefix_mismatch_is_an_error(server, monkeypatch):
    data = _torch_zip(5000)
    server.files["/m/model-abcdef12.pth"] = data
    prefix = "0" * 8 if not _sha(data).startswith("0" * 8) else "f" * 8  # not this file's prefix
    _entry(monkeypatch, "t-prefix", filename="model.pth", url=server.base + "/m/model-abcdef12.pth",
           sha256_prefix=prefix, **BOUNDS)
    with pytest.raises(weights.ChecksumError, match=f"does not start with {prefix}"):
        fetching.fetch("t-prefix", progress=False)
    assert not (Path(os.environ["LRPO_CACHE"]) / "model.pth").exists()
    # the right prefix passes
    _entry(monkeypatch, "t-prefix", filename="model.pth", url=server.base + "/m/model-abcdef12.pth",
           sha256_prefix=_sha(data)[:8], **BOUNDS)
    assert weights.sha256_of(fetching.fetch("t-prefix", progress=False)) == _sha(data)


def test_size_cap(server, monkeypatch):
    big = _torch_zip(30_000)
    server.files["/big.pth"] = big
    # cap 0.02 MB = 20 000 bytes < 30 000 + zip overhead: refused from Content-Length, before reading the body
    _entry(monkeypatch, "t-big", url=server.base + "/big.pth", sha256=_sha(big), max_mb=0.02, container="torch")
    with pytest.raises(weights.ContainerError, match="over the 20000-byte cap"):
        fetching.fetch("t-big", progress=False)
    # without a Content-Length the stream is cut at the cap
    server.no_length.add("/big.pth")
    with pytest.raises(weights.ContainerError, match="more than the 20000-byte cap"):
        fetching.fetch("t-big", progress=False)
    assert not list(Path(os.environ["LRPO_CACHE"]).glob("*t-big*"))
    # too small for its bounds (a truncated or wrong file), pinned or not
    _entry(monkeypatch, "t-small", url=server.base + "/big.pth", min_mb=0.1, max_mb=1.0, container="torch",
           unpinned_reason="test")
    with pytest.raises(weights.ContainerError, match="size bounds"):
        fetching.fetch("t-small", progress=False)
    # the Hub announces the size (X-Linked-Size): refused before any GET
    path = server.hub(REPO, "big.pth", big)
    _hub_entry(monkeypatch, "t-big-hub", "big.pth", sha256=_sha(big), max_mb=0.02, container="torch")
    with pytest.raises(weights.ContainerError, match="size bounds"):
        fetching.fetch("t-big-hub", progress=False)
    assert server.gets(path) == []


def test_plain_url_download_resumes_after_an_interruption(server, monkeypatch):
    data = _torch_zip(200_000)
    server.files["/files/model.pth"] = data
    server.cut["/files/model.pth"] = 120_000
    _entry(monkeypatch, "t-resume", url=server.base + "/files/model.pth", sha256=_sha(data), container="torch",
           max_mb=1.0)
    with pytest.raises(weights.FetchError, match="stopped after 120000 bytes.*run the same command again to resume"):
        fetching.fetch("t-resume", progress=False)
    part = Path(os.environ["LRPO_CACHE"]) / ".t-resume.pth.part"
    assert part.stat().st_size == 120_000
    target = fetching.fetch("t-resume", progress=False)
    assert target.read_bytes() == data and not part.exists()
    assert server.gets("/files/model.pth") == [None, "bytes=120000-"]  # the second run asked for the rest only


# ----------------------------------------------------------------------------------------------
# the Hub (huggingface_hub against the local server)
# ----------------------------------------------------------------------------------------------
def test_hub_full_fetch_records_the_first_digest(server, monkeypatch, capsys):
    data = _torch_zip(50_000)
    path = server.hub(REPO, "lrpo_fidelity.pth", data)
    _hub_entry(monkeypatch, "t-hub", "lrpo_fidelity.pth", **BOUNDS)
    monkeypatch.setenv("HF_TOKEN", "hf_localtesttoken")  # a gated repository's token reaches the Hub
    assert main(["weights", "fetch", "t-hub", "--no-progress"]) == 0
    assert set(server.auth) == {"Bearer hf_localtesttoken"}
    out = capsys.readouterr().out
    got = weights.resolve("t-hub")
    assert got.read_bytes() == data and str(got).startswith(os.environ["HF_HUB_CACHE"])
    assert f"recorded its sha256 {_sha(data)}" in out and "trust on first use" in out
    record = json.loads(weights.trust_file().read_text())  # plain JSON
    assert record["t-hub"]["sha256"] == _sha(data) and record["t-hub"]["bytes"] == len(data)
    assert [m for m, p, _ in server.log if p == path] == ["HEAD", "HEAD", "GET"]  # size check, download
    assert weights.verify("t-hub").status == "ok"
    # a second fetch finds it in the Hub cache: no GET
    fetching.fetch("t-hub", progress=False)
    assert len(server.gets(path)) == 1


def test_hub_fetch_interrupted_is_resumed(server, monkeypatch):
    # huggingface_hub writes whole chunks (10 MB); 16 kB chunks here so that a 300 kB file resumes
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 16384)
    monkeypatch.setattr("time.sleep", lambda s: None)  # its pause before retrying
    data = _torch_zip(300_000)
    path = server.hub(REPO, "v1_face.pth", data)
    server.cut[path] = 100_000  # the first GET drops after 100 000 bytes
    _hub_entry(monkeypatch, "t-hub-cut", "v1_face.pth", sha256=_sha(data), container="torch", max_mb=1.0)
    got = fetching.fetch("t-hub-cut", progress=False)
    assert got.read_bytes() == data
    # huggingface_hub resumed with a Range request from its last whole chunk: 6 x 16384 = 98304 <= 100 000
    assert server.gets(path) == [None, "bytes=98304-"]


def test_hub_wrong_digest_is_refused_and_not_kept(server, monkeypatch):
    data = _torch_zip(20_000)
    path = server.hub(REPO, "FaceRewardModel.pth", data)
    _hub_entry(monkeypatch, "t-hub-pin", "FaceRewardModel.pth", sha256="ab" * 32, container="torch", max_mb=1.0)
    # the Hub states the file's sha256 (LFS ETag) in its answer to HEAD: refused before any GET
    with pytest.raises(weights.ChecksumError, match=f"states sha256 {_sha(data)} .*not the pinned {'ab' * 32}"):
        fetching.fetch("t-hub-pin", progress=False)
    assert server.gets(path) == []
    # a server stating no sha256 (a git blob id as ETag): downloaded, then refused on its bytes
    server.etags[path] = "0" * 40
    with pytest.raises(weights.ChecksumError, match=f"has sha256 {_sha(data)}, not the pinned {'ab' * 32}"):
        fetching.fetch("t-hub-pin", progress=False)
    assert len(server.gets(path)) == 1
    with pytest.raises(weights.MissingWeightsError):  # neither lrpo nor diffusers will find it
        weights.resolve("t-hub-pin")
    assert not [p for p in Path(os.environ["HF_HUB_CACHE"]).rglob("*") if p.is_file() and p.stat().st_size == len(data)]
    # the Hub states another sha256 (ETag) than the bytes served: refused as well
    other = server.hub(REPO, "other.pth", data)
    server.etags[other] = "cd" * 32
    _hub_entry(monkeypatch, "t-hub-etag", "other.pth", **BOUNDS)
    with pytest.raises(weights.ChecksumError, match="the Hub states"):
        fetching.fetch("t-hub-etag", progress=False)


def test_trust_on_first_use_refuses_a_later_different_file(server, monkeypatch):
    first, second = _torch_zip(20_000, seed=1), _torch_zip(20_000, seed=2)
    server.files["/f.pth"] = first
    _entry(monkeypatch, "t-tofu", url=server.base + "/f.pth", **BOUNDS)
    target = fetching.fetch("t-tofu", progress=False)
    assert weights.recorded_sha256("t-tofu") == _sha(first)
    target.unlink()
    server.files["/f.pth"] = second  # the publisher's file changed (or a mirror serves another one)
    with pytest.raises(weights.ChecksumError, match=f"not the {_sha(first)} recorded at its first verified download"):
        fetching.fetch("t-tofu", progress=False)
    assert not target.exists() and weights.recorded_sha256("t-tofu") == _sha(first)
    # verify compares a local file with the recorded digest
    local = Path(os.environ["LRPO_CACHE"]) / "t-tofu.pth"
    local.write_bytes(second)
    found = weights.verify("t-tofu")
    assert found.status == "mismatch" and "not the file first downloaded" in found.message()
    local.write_bytes(first)
    assert weights.verify("t-tofu").status == "ok"
    weights.trust_file().write_text("not json")
    with pytest.raises(weights.ChecksumError, match="not a readable trust-on-first-use record"):
        weights.recorded_sha256("t-tofu")


def _restore_set(server, monkeypatch) -> dict[str, bytes]:
    """The real `restore` entries (their Hub repositories and files), shrunk to small test files."""
    served = {}
    for i, name in enumerate(fetching.FETCH_SETS["restore"]):
        real = weights.get_entry(name)
        data = _torch_zip(10_000, seed=i) if real.container != "onnx" else b"\x08\x08\x12\x04test" + bytes(10_000)
        if real.on_hub:
            server.hub(real.hub_repo, real.hub_filename or real.filename, data, real.revision)
            small = dataclasses.replace(real, min_mb=0.005, max_mb=1.0, sha256=None)
        else:
            server.files[f"/plain/{real.filename}"] = data
            small = dataclasses.replace(real, url=f"{server.base}/plain/{real.filename}", sha256=_sha(data))
        monkeypatch.setitem(weights.KNOWN_FILES, name, small)
        served[name] = data
    return served


def test_all_for_restore_fetches_the_set(server, monkeypatch, capsys):
    served = _restore_set(server, monkeypatch)
    assert set(served) == {"sd21-base", "diffbir-swinir-face", "lrpo-fidelity", "yunet"}
    assert main(["weights", "fetch", "--all-for", "restore", "--no-progress"]) == 0
    for name, data in served.items():
        assert weights.resolve(name).read_bytes() == data
    assert "/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.ckpt" in {p for _, p, _ in server.log}
    assert "/wubin1928/BFR_RL/resolve/main/lrpo_fidelity.pth" in {p for _, p, _ in server.log}


def test_offline_mode_names_the_missing_files(server, monkeypatch, capsys):
    served = _restore_set(server, monkeypatch)
    fetching.fetch("lrpo-fidelity", progress=False)  # one file is in the Hub cache already
    n_requests = len(server.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", "fetch", "--all-for", "restore", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert len(server.log) == n_requests  # offline: not one request
    for name in ("sd21-base", "diffbir-swinir-face", "yunet"):
        filename = weights.get_entry(name).filename
        assert f"{name}: {filename} is missing: offline (HF_HUB_OFFLINE)" in err
    assert "3 file(s) not fetched" in err and "lrpo-fidelity" not in err
    assert weights.resolve("lrpo-fidelity").read_bytes() == served["lrpo-fidelity"]  # the cached one is used


def test_hub_environment_variables_in_a_fresh_process(server, tmp_path):
    # HF_ENDPOINT and HF_HUB_OFFLINE as a user sets them (huggingface_hub reads some at import time)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        blob = hashlib.shake_256(b"captions").digest(600_000)  # incompressible: over the 0.5 MB lower bound
        info = tarfile.TarInfo("00000.txt")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))
    server.hub("wubin1928/BFR_RL", "ffhq_captions.tar.gz", buf.getvalue())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    run = lambda *a, **e: subprocess.run([sys.executable, "-m", "lrpo.cli", "weights", *a], env={**env, **e},
                                         capture_output=True, text=True, timeout=120)
    offline = run("fetch", "ffhq-captions", "--no-progress", HF_HUB_OFFLINE="1")
    assert offline.returncode == 2 and "ffhq_captions.tar.gz is missing: offline" in offline.stderr
    done = run("fetch", "ffhq-captions", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip().splitlines()[-1]).read_bytes() == buf.getvalue()
    assert run("path", "ffhq-captions", HF_HUB_OFFLINE="1").stdout.strip() == done.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------
def test_names_are_printed_escaped(tmp_path, monkeypatch, capsys):
    odd = tmp_path / "we\nights\x1b[31m"
    odd.mkdir()
    (odd / "face_detection_yunet_2023mar.onnx").write_bytes(b"\x08\x07")
    monkeypatch.setenv("LRPO_WEIGHTS", str(odd))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    assert main(["weights", "path", "yunet"]) == 0
    out = capsys.readouterr().out
    assert out == str(odd).replace("\n", "\\n").replace("\x1b", "\\x1b") + "/face_detection_yunet_2023mar.onnx\n"
    assert main(["weights", "verify", "yunet"]) == 1
    assert capsys.readouterr().out.count("\n") == 1
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "\x1b" not in listing and "we\\nights\\x1b[31m" in listing
    (odd / "face_detection_yunet_2023mar.onnx").unlink()
    with pytest.raises(weights.MissingWeightsError) as e:
        weights.resolve("yunet")
    assert "\n" not in str(e.value) and "we\\nights" in str(e.value)
    assert weights.shown("a\\b\tc\u202ed") == "a\\\\b\\tc\\u202ed"  # bidi override escaped too


def test_niqe_pristine_is_listed_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LRPO_WEIGHTS", raising=False)
    assert weights.resolve("niqe-pristine") == weights.shipped_path(weights.get_entry("niqe-pristine"))
    assert main(["weights", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("niqe-pristine"))
    assert line.endswith("shipped with lrpo") and "missing" not in line


def test_a_file_missing_on_the_hub_is_one_line(server, monkeypatch, capsys):
    _hub_entry(monkeypatch, "t-absent", "absent.pth", **BOUNDS)
    assert main(["weights", "fetch", "t-absent", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[0].startswith("t-absent: could not download") and f"{REPO}/absent.pth @ main" in lines[0]
    assert lines[1:] == ["1 file(s) not fetched"] and "Traceback" not in err
