"""The demo's model selector and its Group tab's treatment of an upload, without a browser.

Runs under one ``--runs`` folder, all tiny 16 px copies of the shared tiny run: ``a`` (its latest,
step 4), ``b`` (the same run with ``latest`` naming step 3: other weights), a run whose checkpoint is
damaged, a run with a log but no checkpoint, a symlinked run, and one with markup in its name.
The published policies' model files are looked for in empty folders (unavailable) unless a test
puts files of the registry's names there (available; never loaded here).
"""

from __future__ import annotations

import http.client
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.demo.test_safety import _png, write_fake_run
from tests.conftest import demo_server

pytest.importorskip("starlette", reason='the demo needs pip install "lrpo[demo]"')

from lrpo.demo.safety import DemoError  # noqa: E402
from lrpo.demo.service import GroupRequest, RestoreRequest  # noqa: E402

ODD = 'x"<b>&y'  # a run folder name with markup: listed as it is, shown as text by the page
PUBLISHED = ["policy:lrpo-fidelity", "policy:lrpo-perception", "policy:sd21-diffbir"]


@pytest.fixture(scope="module")
def runs(tiny_run: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_models") / "runs"
    for name in ("a", "b", "broken", ODD):
        shutil.copytree(tiny_run, root / name)
    (root / "b" / "latest").write_text("step_000003")
    model = root / "broken" / "step_000004" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-64])  # listed (not verified when listed), refused when loaded
    write_fake_run(root / "logonly")  # a log and sample grids, no checkpoint: not a model
    (root / "linked").symlink_to(root / "a")  # never followed
    return root


@pytest.fixture(scope="module")
def service(runs: Path, tmp_path_factory):
    from tests.conftest import single_thread
    from lrpo.demo.service import DemoService

    empty = tmp_path_factory.mktemp("no_weights")
    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setenv("LRPO_WEIGHTS", str(empty))
        mp.setenv("LRPO_CACHE", str(empty))
        mp.setenv("HF_HUB_CACHE", str(empty))
        yield DemoService(runs / "a", device="cpu", detector_path=str(empty / "no_detector"), runs_root=runs,
                          max_waiting=0, reward_names=["dwt", "ssim", "sharpness"])


def _face(seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# the list
# ---------------------------------------------------------------------------------------------
def test_selector_lists_runs_with_a_checkpoint_and_every_published_policy(service):
    info = service.info()
    names = [m["name"] for m in info["models"]]
    # runs in the RunBrowser's (sorted) order; logonly has no checkpoint, linked is a symlink
    assert names == ["run:a", "run:b", "run:broken", f"run:{ODD}", *PUBLISHED], names
    assert info["model"] == "run:a"  # the --checkpoint given is run a's latest: named as that run
    by_name = {m["name"]: m for m in info["models"]}
    assert by_name["run:b"]["available"] and by_name["run:b"]["label"] == "b (run, step_000003)"
    assert by_name[f"run:{ODD}"]["label"].startswith(ODD)  # verbatim in JSON; the page sets it as text
    fidelity = by_name["policy:lrpo-fidelity"]
    assert not fidelity["available"]
    assert fidelity["reason"].startswith("model files not found: sd21-base, lrpo-fidelity, diffbir-swinir-face")
    assert "lrpo weights fetch sd21-base lrpo-fidelity diffbir-swinir-face" in fidelity["reason"]
    assert all("/" not in m["name"] or m["kind"] == "run" for m in info["models"])


def test_a_published_policy_is_available_when_its_files_resolve(service, tmp_path, monkeypatch):
    from lrpo import weights

    for name in ("sd21-base", "lrpo-fidelity", "diffbir-swinir-face"):  # lrpo-fidelity's three files, as files
        (tmp_path / weights.get_entry(name).filename).write_bytes(b"")
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path))
    by_name = {m["name"]: m for m in service.info()["models"]}
    assert by_name["policy:lrpo-fidelity"]["available"] and by_name["policy:lrpo-fidelity"]["reason"] is None
    assert not by_name["policy:lrpo-perception"]["available"]  # its own ControlNet file is missing
    assert by_name["policy:lrpo-perception"]["reason"].startswith("model files not found: lrpo-perception")


def test_start_names_a_published_policy_or_a_checkpoint_outside_the_runs(tiny_run, runs):
    from lrpo.demo.models import ModelCatalog
    from lrpo.policies.published import published_policy_config

    assert ModelCatalog(published_policy_config("sd21-diffbir")).start_name == "policy:sd21-diffbir"
    from lrpo.demo.runview import RunBrowser

    step3 = tiny_run / "step_000003"  # run a's latest is step 4: step 3 of it is not a listed model
    catalog = ModelCatalog(step3, RunBrowser(runs))
    assert catalog.start_name == "start" and catalog.choices()[0].name == "start"
    assert catalog.choices()[0].label == "run/step_000003 (given at start)" and catalog.choices()[0].available
    assert ModelCatalog(runs / "b" / "step_000003", RunBrowser(runs)).start_name == "run:b"


# ---------------------------------------------------------------------------------------------
# switching by name
# ---------------------------------------------------------------------------------------------
def test_switching_by_name_loads_that_model_once(service):
    loads = []
    original = service._load
    service._load = lambda source: (loads.append(Path(source).name), original(source))[1]
    try:
        face = _face(1)
        req = dict(aligned=True, steps=2, seed=3)
        a = service.restore(face, RestoreRequest(**req, model="run:a"))
        b = service.restore(face, RestoreRequest(**req, model="run:b"))
        b2 = service.restore(face, RestoreRequest(**req, model="run:b"))
        current = service.restore(face, RestoreRequest(**req))  # no model: the loaded one (b)
        a3 = service.restore(face, RestoreRequest(**req, model="run:a"))
    finally:
        service._load = original
    assert loads == ["b", "a"]  # a was loaded at start; b once; asking for the loaded one loads nothing
    assert [r["model"] for r in (a, b, b2, current, a3)] == ["run:a", "run:b", "run:b", "run:b", "run:a"]
    assert a["image"] != b["image"]  # step 4 and step 3 weights restore differently
    assert b2["image"] == b["image"] == current["image"] and a3["image"] == a["image"]  # seeded: same model, same image
    assert service.info()["model"] == "run:a"


def test_names_not_listed_and_paths_are_refused_without_loading(service, runs, tiny_run):
    before = (service.model_name, service.policy)
    for name in ("run:logonly", "run:linked", "run:../a", "run:/etc", str(runs / "b"), str(tiny_run), "/etc/passwd",
                 "../a", "b", "policy:nope", "policy:../../x", "start", "x" * 301):
        with pytest.raises(DemoError, match="not one of this demo's models|a name from the demo's list") as e:
            service.use_model(name)
        assert e.value.status in (400, 404), name
    with pytest.raises(DemoError, match="'policy:lrpo-fidelity' is not available here: model files not found: sd21-base"):
        service.use_model("policy:lrpo-fidelity")
    assert (service.model_name, service.policy) == before  # nothing was let go or loaded
    with pytest.raises(DemoError, match="a name from the demo's list"):
        RestoreRequest.from_params({"model": "x" * 301})


def test_a_model_that_fails_to_load_leaves_the_previous_one(service):
    service.use_model("run:a")
    with pytest.raises(DemoError, match=r"model 'run:broken' could not be loaded \(.*\); still using 'run:a'") as e:
        service.use_model("run:broken")
    assert "\n" not in e.value.message
    r = service.restore(_face(2), RestoreRequest(aligned=True, steps=2))
    assert r["model"] == "run:a" and r["width"] == 24


# ---------------------------------------------------------------------------------------------
# the Group tab: an upload is a real LQ face unless a degradation is chosen
# ---------------------------------------------------------------------------------------------
def test_group_default_treats_the_upload_as_already_degraded(service):
    from lrpo.data.images import resize_square
    from lrpo.demo.service import image_uri

    assert GroupRequest.from_params({}).degradation == "none" and GroupRequest().degradation == "none"
    face = _face(4, size=16)  # the policy's own 16 px: used as it is
    r = service.group(face, GroupRequest(group_size=2, steps=2, model="run:a"))  # default preset no_weights
    assert r["degradation"] == "none" and r["upload_is"] == "lq" and r["gt"] is None
    assert r["lq"] == image_uri(resize_square(face, 16))  # not degraded again
    # no_weights = dwt 0.4 + ssim 0.45 + sharpness 0.15: the GT terms are left out, sharpness alone weighs 1
    assert r["terms"] == ["sharpness"] and r["weights"] == {"sharpness": 1.0}
    assert set(r["unavailable_terms"]) == {"dwt", "ssim"} and "needs a GT" in r["unavailable_terms"]["dwt"]
    assert all(set(c["terms"]) == {"sharpness"} and c["total"] == pytest.approx(c["terms"]["sharpness"]) for c in r["candidates"])
    assert any("dwt, ssim not available" in n for n in r["notes"]) and r["model"] == "run:a"


def test_group_with_a_degradation_makes_the_upload_the_gt(service):
    face = _face(5, size=16)
    r = service.group(face, GroupRequest(group_size=2, steps=2, degradation="mild"))
    assert r["upload_is"] == "gt" and r["gt"] is not None and r["lq"] != r["gt"]
    assert r["terms"] == ["dwt", "ssim", "sharpness"] and r["unavailable_terms"] == {}
    assert r["weights"] == pytest.approx({"dwt": 0.4, "ssim": 0.45, "sharpness": 0.15})


# ---------------------------------------------------------------------------------------------
# over HTTP
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(service):
    with demo_server(service) as port:
        yield port


def _call(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"X-LRPO-Demo": "1"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_http_switches_by_name_and_refuses_paths(server, runs):
    from urllib.parse import quote

    status, info = _call(server, "GET", "/api/info")
    assert status == 200 and [m["name"] for m in info["models"]][:2] == ["run:a", "run:b"]
    face = _png(_face(6))
    status, r = _call(server, "POST", "/api/restore?aligned=1&steps=2&model=run%3Ab", face)
    assert status == 200 and r["model"] == "run:b"
    assert _call(server, "GET", "/api/info")[1]["model"] == "run:b"
    for bad in (str(runs / "a"), "../../etc", "run:../b"):
        status, r = _call(server, "POST", f"/api/restore?aligned=1&steps=2&model={quote(bad, safe='')}", face)
        assert status == 404 and "never a path" in r["error"] and "Traceback" not in r["error"], (bad, r)
    status, r = _call(server, "POST", "/api/group?G=2&steps=2&model=run%3Aa", face)
    assert status == 200 and r["upload_is"] == "lq" and r["gt"] is None and r["model"] == "run:a"


def test_the_start_model_reached_through_a_link_is_not_loaded_again(runs, tmp_path):
    """--checkpoint runs/linked (a link to run a) is run a: asking for run:a by name loads nothing."""
    from lrpo.demo.service import DemoService

    service = DemoService(runs / "linked", device="cpu", detector_path=str(tmp_path / "no_detector"), runs_root=runs,
                          reward_names=["sharpness"])
    assert service.model_name == "run:a"
    loads = []
    service._load = lambda source: loads.append(source)
    service.use_model("run:a")
    assert loads == []
    service.use_model("run:b")
    assert loads == [runs / "b"]


def test_a_published_policy_loads_by_name_and_back(service, tmp_path, monkeypatch):
    """policy:lrpo-fidelity on tiny stand-ins of its three files: the shipped YAML, read as the
    release reads it (controlnet_format reference), its own sampling defaults; then back to run a."""
    pytest.importorskip("diffusers")
    from lrpo.standins import write_standins

    write_standins(tmp_path, "tiny", only=("sd21-base", "diffbir-swinir-face", "lrpo-fidelity"))
    monkeypatch.setenv("LRPO_WEIGHTS", str(tmp_path))
    service.use_model("policy:lrpo-fidelity")
    info = service.info()
    assert info["model"] == "policy:lrpo-fidelity" and service.policy.cfg.controlnet_format == "reference"
    assert (info["resolution"], info["defaults"]["steps"], info["defaults"]["eta"]) == (512, 50, 0.8)  # the YAML's
    service.use_model("run:a")
    assert service.model_name == "run:a" and service.resolution == 16
