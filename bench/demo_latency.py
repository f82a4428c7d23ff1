"""Time per restored photo through `lrpo demo`'s endpoint, as the page sends it.

    LRPO_WEIGHTS=../shared/weights python bench/demo_latency.py --checkpoint runs/quickstart/lrpo [--compile off,auto]

For each --compile setting, starts `lrpo demo --port 0 --compile SETTING`, waits until /api/info says
the compiled forward is ready (auto compiles in the background while the demo serves eager), posts the
embedded public-domain photo (skimage astronaut, 512 x 512, one face) to /api/restore with the
checkpoint's own steps and with --steps, once to warm up and then --repeats times, and prints JSON:
per setting the start-up seconds, the seconds until the compiled forward was ready, and per step
count the median server time, the median round trip and the server's split (detection, restoration)
of the last request. Then, in this process, the same photo through `Restorer.restore_photo` (what
`lrpo restore` runs per photo, file I/O left out) on the main thread and on a worker thread, as the
demo's server runs its jobs: torch's CPU ops are slower on a thread that is not the main one.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from lrpo.demo import served_port


def post(port: int, path: str, body: bytes) -> tuple[dict, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers={"X-LRPO-Demo": "1"})  # the header the page sends
    reply = json.loads(conn.getresponse().read())
    conn.close()
    return reply, time.perf_counter() - start


def get_info(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/info", headers={"X-LRPO-Demo": "1"})
    reply = json.loads(conn.getresponse().read())
    conn.close()
    return reply


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run folder or checkpoint the demo serves")
    ap.add_argument("--steps", type=int, default=50, help="a second setting besides the checkpoint's own steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", default="off,auto", help="the demo's --compile settings to time, comma-separated")
    args = ap.parse_args()

    from PIL import Image
    from skimage import data as skdata

    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, format="PNG")
    photo = buf.getvalue()
    settings = {}
    for setting in args.compile.split(","):
        result = time_setting(args, setting, photo)
        if result is None:
            return 1
        settings[setting] = result
    threads = in_process(args.checkpoint, skdata.astronaut(), args.repeats)
    print(json.dumps({"bench": "demo_latency", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
                      f"{os.cpu_count()} cores", "checkpoint": args.checkpoint, "repeats": args.repeats, "compile": settings,
                      "in_process_eager_checkpoint_steps": threads}, indent=1))
    return 0


def in_process(checkpoint: str, photo, repeats: int) -> dict:
    """Median seconds of ``Restorer.restore_photo`` (eager, auto precision, the checkpoint's steps) on
    the main thread and on one worker thread, after two warm-up calls on each."""
    import threading

    from lrpo.inference.restorer import Restorer

    restorer = Restorer.from_checkpoint(checkpoint, steps=None, eta=0.0, device="cpu", precision="auto")

    def median() -> float:
        for _ in range(2):
            restorer.restore_photo(photo)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            restorer.restore_photo(photo)
            times.append(time.perf_counter() - start)
        return round(statistics.median(times), 3)

    main = median()
    worker: list[float] = []
    thread = threading.Thread(target=lambda: worker.append(median()))
    thread.start()
    thread.join()
    return {"steps": restorer.sampler.num_steps, "main_thread_s": main, "worker_thread_s": worker[0]}


def time_setting(args: argparse.Namespace, setting: str, photo: bytes) -> dict | None:
    """Start the demo with ``--compile setting``, wait for its compiled forward, time the restores."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lrpo.cli", "demo", "--checkpoint", args.checkpoint, "--port", "0", "--compile", setting],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = next((p for p in map(served_port, proc.stdout) if p is not None), None)
        if port is None:
            print(f"lrpo demo --compile {setting} did not start", file=sys.stderr)
            return None
        startup = time.perf_counter() - started
        status = get_info(port)["compile"]
        while status.startswith("compiling"):
            time.sleep(0.5)
            status = get_info(port)["compile"]
        ready = time.perf_counter() - started
        results = {}
        for steps in (None, args.steps):
            path = "/api/restore" + (f"?steps={steps}" if steps else "")
            post(port, path, photo)  # warm-up
            runs = [post(port, path, photo) for _ in range(args.repeats)]
            if "error" in runs[0][0]:
                print(f"{path}: {runs[0][0]['error']}", file=sys.stderr)
                return None
            results[str(runs[0][0]["steps"])] = {
                "server_s": round(statistics.median(r["seconds"] for r, _ in runs), 3),
                "round_trip_s": round(statistics.median(t for _, t in runs), 3),
                "split_s": runs[-1][0].get("timings"),
            }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"startup_s": round(startup, 1), "compiled_ready_s": round(ready, 1), "status": status, "steps": results}


if __name__ == "__main__":
    sys.exit(main())
