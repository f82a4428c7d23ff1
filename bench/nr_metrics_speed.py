"""Seconds per image of the no-reference metrics lrpo evaluate runs by default (NIQE, PIQE) and
BRISQUE when its model file is found, on a 512 px face.

    python bench/nr_metrics_speed.py [--brisque-model allmodel] [--repeats 5]

The image is the embedded public-domain photo (skimage astronaut) resized to 512 x 512; each metric
runs once to warm up, then --repeats times; the median is printed (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brisque-model", default=None, help="the LIVE BRISQUE model file (default: the registry's brisque-live)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    from lrpo.eval import nr_metrics

    image = np.asarray(Image.fromarray(skdata.astronaut()).resize((512, 512), Image.BICUBIC))
    metrics = {"niqe": nr_metrics.niqe, "piqe": nr_metrics.piqe}
    try:
        model = nr_metrics.load_brisque_model(args.brisque_model)
    except Exception as e:  # no model file: say so, time the others
        print(f"brisque: not timed ({str(e).splitlines()[0]})", file=sys.stderr)
        model = None
    if model is not None:
        metrics["brisque"] = lambda img: nr_metrics.brisque(img, model)
    rows = {}
    for name, fn in metrics.items():
        value = fn(image)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn(image)
            times.append(time.perf_counter() - start)
        rows[name] = {"value": round(float(value), 4), "median_s": round(statistics.median(times), 4)}
    print(json.dumps({"bench": "nr_metrics_speed", "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
                      f"{os.cpu_count()} cores", "size": 512, "repeats": args.repeats, "metrics": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
