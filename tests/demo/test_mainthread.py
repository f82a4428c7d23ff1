"""Handing the demo's jobs to the main thread (lrpo.demo.mainthread)."""

from __future__ import annotations

import threading

import pytest

from lrpo.demo.mainthread import MainThreadJobs
from lrpo.demo.safety import JobGate


def test_jobs_sent_from_other_threads_run_on_the_serving_thread_and_return_or_raise():
    jobs = MainThreadJobs(poll_s=0.01)
    gate = JobGate(max_waiting=4)
    gate.executor = jobs.execute
    results: dict[str, object] = {}

    def fail():
        raise ValueError("bad job")

    def client(name, fn):
        try:
            results[name] = gate.run(fn)
        except ValueError as e:
            results[name] = e

    clients = [threading.Thread(target=client, args=("where", lambda: threading.current_thread().name)),
               threading.Thread(target=client, args=("sum", lambda: 2 + 3)),
               threading.Thread(target=client, args=("fail", fail))]
    for c in clients:
        c.start()
    jobs.serve_until(lambda: not any(c.is_alive() for c in clients))
    assert results["where"] == threading.current_thread().name  # run here, not on the client's thread
    assert results["sum"] == 5
    assert isinstance(results["fail"], ValueError) and str(results["fail"]) == "bad job"
    assert gate.admitted == 0


def test_serving_stops_when_told_and_ctrl_c_in_a_job_fails_its_request_and_stops():
    jobs = MainThreadJobs(poll_s=0.01)
    jobs.serve_until(lambda: True)  # returns at once: nothing to run
    seen = []

    def interrupted():
        raise KeyboardInterrupt

    client = threading.Thread(target=lambda: seen.append(_outcome(jobs, interrupted)))
    client.start()
    with pytest.raises(KeyboardInterrupt):
        jobs.serve_until(lambda: False)
    client.join(5)
    assert seen == ["KeyboardInterrupt"]


def _outcome(jobs, fn):
    try:
        jobs.execute(fn)
    except BaseException as e:  # noqa: BLE001
        return type(e).__name__
    return "returned"


def test_lrpo_demo_restores_on_its_main_thread_and_stops_on_sigterm(tiny_run, tmp_path):
    """The real `lrpo demo` process, whose server thread hands jobs to the main thread: a restore
    request is answered, and SIGTERM ends the process cleanly within seconds."""
    pytest.importorskip("starlette", reason='the demo needs pip install "lrpo[demo]"')
    import http.client
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from lrpo.demo import served_port

    lrpo = Path(sys.executable).with_name("lrpo")
    proc = subprocess.Popen([str(lrpo), "demo", "--checkpoint", str(tiny_run), "--port", "0", "--compile", "off",
                             "--detector", str(tmp_path / "none.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        port = next((p for p in map(served_port, proc.stdout) if p is not None), None)
        assert port, "lrpo demo did not print its address"
        face = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        path = tmp_path / "face.png"
        Image.fromarray(face).save(path)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/api/restore?aligned=1&steps=2", body=path.read_bytes(), headers={"X-LRPO-Demo": "1"})
        reply = json.loads(conn.getresponse().read())
        conn.close()
        assert reply.get("image", "").startswith("data:image/png;base64,"), reply
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_from_another_thread_keeps_the_server_on_that_thread(tiny_run, tmp_path, monkeypatch):
    """run_demo called from a thread of the caller's: no signal handler (only the main thread may set
    one), no hand-over; the server runs where it was called and its jobs run there."""
    pytest.importorskip("starlette", reason='the demo needs pip install "lrpo[demo]"')
    from lrpo.demo import app
    from lrpo.demo.service import DemoService

    ran = []

    class _Server:
        def run(self, sockets):
            ran.append(threading.current_thread().name)

    monkeypatch.setattr(app, "make_server", lambda service, allowed: _Server())
    service = DemoService(tiny_run, device="cpu", detector_path=str(tmp_path))
    caller = threading.Thread(target=app.serve, args=(service, "127.0.0.1", 0), name="callers-thread")
    caller.start()
    caller.join(30)
    assert ran == ["callers-thread"] and service.gate.executor is None


def test_the_start_line_gives_the_port_and_other_lines_none():
    from lrpo.demo import served_port

    assert served_port("lrpo demo: serving runs/q/lrpo/step_000008 on http://127.0.0.1:41235/ (Ctrl-C stops)\n") == 41235
    assert served_port("lrpo demo: serving /a b/c on http://[::1]:7860/ (Ctrl-C stops)") == 7860  # a path with a space, IPv6
    assert served_port("lrpo demo: loading http://127.0.0.1:9/ ...") is None  # not the serving line
    assert served_port("lrpo demo: warning: --host 0.0.0.0 is not loopback; see http://127.0.0.1:80/") is None
