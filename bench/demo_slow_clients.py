"""How `lrpo demo` holds up under misbehaving clients: the figures of README's "Web demo".

Starts ``lrpo demo --checkpoint CKPT --port 0`` in a subprocess (whatever ``lrpo`` the environment's
PYTHONPATH gives, so the same script measures an older checkout too) and, with real sockets on
127.0.0.1, measures:

* idle: with N sockets open that send nothing (held open throughout), the time until a normal
  ``GET /api/info`` is answered 200, polling every 0.25 s for at most --wait seconds;
* slow header / slow body: a request whose header, or whose declared 100 kB body, comes at 10 B/s:
  the time until the server closes the connection (at most --wait s);
* leave: a client that sends 1 kB of a declared 50 kB upload and closes: lines the server logs;
* big aligned: a PNG of 5999 x 5999 (under the 36 MP upload limit) sent with aligned=1: status, time,
  and the growth of the server's peak memory (VmHWM);
* at the caps: an aligned face of 2048 x 2048 and (with --detector) a 4000 x 4000 photo at 1x: time
  (median of 3 after a warm-up) and peak memory growth.

    python bench/demo_slow_clients.py --checkpoint RUN [--detector DIR] [--out bench/results/demo_slow_clients.json]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lrpo.demo import served_port

START_TIMEOUT_S = 120


def start_demo(checkpoint: str, detector: str | None) -> tuple[subprocess.Popen, int, queue.Queue]:
    args = [sys.executable, "-m", "lrpo.cli", "demo", "--checkpoint", checkpoint, "--port", "0", "--device", "cpu"]
    if detector:
        args += ["--detector", detector]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        port = served_port(line)
        if port is not None:
            return proc, port, lines
    proc.kill()
    raise SystemExit("lrpo demo did not start")


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"X-LRPO-Demo": "1"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def time_to_close(sock: socket.socket, trickle: bytes, wait: float) -> float | None:
    """Send ``trickle`` at 10 B/s until the server closes ``sock``; seconds, or None if it never did."""
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < wait:
        try:
            if i < len(trickle):
                sock.send(trickle[i : i + 1])
                i += 1
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and sock.recv(4096) == b"":
                return round(time.monotonic() - t0, 2)
        except (ConnectionResetError, BrokenPipeError):
            return round(time.monotonic() - t0, 2)
    return None


def idle(port: int, n: int, wait: float) -> dict:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
    time.sleep(0.3)
    t0, statuses = time.monotonic(), []
    try:
        while time.monotonic() - t0 < wait:
            try:
                status, _ = request(port, "GET", "/api/info", timeout=5)
            except OSError as e:
                status = type(e).__name__
            statuses.append(status)
            if status == 200:
                return {"idle_sockets": n, "seconds_to_200": round(time.monotonic() - t0, 3), "answers": statuses[:8]}
            time.sleep(0.25)
        return {"idle_sockets": n, "seconds_to_200": None, "answers": sorted(set(map(str, statuses)))}
    finally:
        for s in socks:
            s.close()


def slow(port: int, wait: float, body: bool) -> float | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if body:
            s.sendall(b"POST /api/restore?aligned=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-LRPO-Demo: 1\r\nContent-Length: 100000\r\n\r\n")
            return time_to_close(s, b"\0" * 100_000, wait)
        return time_to_close(s, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000 + b"\r\n\r\n", wait)


def leave(port: int, lines: queue.Queue) -> int:
    while not lines.empty():
        lines.get()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /api/restore?aligned=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-LRPO-Demo: 1\r\nContent-Length: 50000\r\n\r\n"
                  + b"\0" * 1000)
        time.sleep(0.2)
    time.sleep(2.0)
    count = 0
    while not lines.empty():
        lines.get()
        count += 1
    return count


def image_file(side_w: int, side_h: int, kind: str = "blank") -> bytes:
    """``blank``: an all-black PNG (small file, many pixels); ``noise``: a PNG of noise (a large file);
    ``photo``: a JPEG of a gradient with mild noise (a photo's size on disk)."""
    rng = np.random.default_rng(0)
    if kind == "noise":
        img = rng.integers(0, 256, (side_h, side_w, 3), dtype=np.uint8)
    elif kind == "photo":
        ramp = np.linspace(40, 200, side_w, dtype=np.float32)[None, :, None]
        img = np.clip(ramp + rng.normal(0, 6, (side_h, side_w, 3)), 0, 255).astype(np.uint8)
    else:
        img = np.zeros((side_h, side_w, 3), np.uint8)
    buf = io.BytesIO()
    if kind == "photo":
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
    else:
        Image.fromarray(img).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_post(port: int, path: str, body: bytes, pid: int, repeats: int = 1) -> dict:
    """POST ``body``: status, seconds (the median of ``repeats`` after the first when ``repeats`` > 1)
    and the growth of the server's peak memory over the first."""
    before = peak_rss_mb(pid)
    times = []
    for _ in range(1 + (repeats if repeats > 1 else 0)):
        t0 = time.perf_counter()
        status, data = request(port, "POST", path, body)
        times.append(time.perf_counter() - t0)
    error = json.loads(data).get("error") if status != 200 else None
    seconds = float(np.median(times[1:] if repeats > 1 else times))
    return {"bytes": len(body), "status": status, "seconds": round(seconds, 3), "repeats": repeats,
            "peak_rss_growth_mb": round(peak_rss_mb(pid) - before, 1), "error": error}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--detector", default=None, help="YuNet file or folder: also time a 4000 x 4000 photo")
    ap.add_argument("--wait", type=float, default=15.0, help="longest wait for each figure, s (default 15)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    proc, port, lines = start_demo(args.checkpoint, args.detector)
    try:
        assert request(port, "GET", "/api/info")[0] == 200
        out = {"idle": [idle(port, n, args.wait) for n in (64, 200)]}
        out["slow_header_closed_after_s"] = slow(port, args.wait, body=False)
        out["slow_body_closed_after_s"] = slow(port, args.wait, body=True)
        out["log_lines_for_a_client_leaving_mid_upload"] = leave(port, lines)
        # at the caps first (one warm-up, the median of 3), so that the 5999 x 5999 request's memory does not hide theirs
        out["aligned_2048"] = timed_post(port, "/api/restore?aligned=1&steps=2", image_file(2048, 2048, "noise"), proc.pid, 3)
        if args.detector:
            out["photo_4000"] = timed_post(port, "/api/restore?steps=2", image_file(4000, 4000, "photo"), proc.pid, 3)
        out["aligned_5999"] = timed_post(port, "/api/restore?aligned=1&steps=2", image_file(5999, 5999), proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
