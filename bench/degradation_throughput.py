"""Throughput of the degradation pipeline: ours (batched torch FFT blur) vs per-image OpenCV.

Both run the same degradations (identical parameters, drawn once) on the same images in the
same process, interleaved repeat by repeat so that load from other processes hits both alike.
Prints a table, per-stage timings and a JSON record with machine information.

    python bench/degradation_throughput.py                  # 32 faces at 512 px, batches 8 and 32
    python bench/degradation_throughput.py --n 16 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lrpo.config import DegradationConfig
from lrpo.data.images import list_images, load_rgb, resize_square, to_tensor
from lrpo.degradation import (
    blur,
    degrade,
    degrade_cv2,
    gaussian_kernel_np,
    gaussian_kernels,
    jpeg_roundtrip,
    sample_params,
    scaled_size,
)
from lrpo.degradation.ops import reflect101_pad
from lrpo.degradation.pipeline import _small_lq_opencv


def shared_faces_dir() -> Path:
    root = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return root / "data" / "faces-hq"


def load_faces(n: int, size: int) -> tuple[torch.Tensor, str]:
    """``[n, 3, size, size]`` float32 in [0, 1]: real faces when available, else synthetic."""
    folder = shared_faces_dir()
    if folder.is_dir():
        faces = []
        for path in list_images(folder):
            try:
                faces.append(to_tensor(resize_square(load_rgb(path), size)))
            except ValueError:
                continue
            if len(faces) == n:
                break
        if len(faces) == n:
            return torch.stack(faces), f"{folder} (first {n} readable files)"
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.2 * torch.sin(6 * xx)])
    return (base + 0.2 * (torch.rand((n, 1, size, size), generator=g) - 0.5)).clamp(0, 1), "synthetic"


def run_ours(hq: torch.Tensor, cfg: DegradationConfig, params: list, batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    for s in range(0, hq.shape[0], batch):
        degrade(hq[s : s + batch], cfg, g, params=params[s : s + batch])


def run_opencv(images: list[np.ndarray], cfg: DegradationConfig, params: list) -> None:
    rng = np.random.default_rng(0)
    for img, p in zip(images, params):
        degrade_cv2(img, p, kernel_size=cfg.kernel_size, rng=rng)


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - start
        return now

    def per_image_ms(self, n: int) -> dict[str, float]:
        return {k: round(v / n * 1000, 2) for k, v in self.seconds.items()}


def stages_ours(hq: torch.Tensor, cfg: DegradationConfig, params: list, batch: int) -> dict[str, float]:
    """Same steps as ``degrade`` on the CPU, timed one by one."""
    clock, g, size = StageClock(), torch.Generator().manual_seed(0), hq.shape[-1]
    for s in range(0, hq.shape[0], batch):
        ps = params[s : s + batch]
        t = time.perf_counter()
        sig = torch.tensor([[p.sigma_x, p.sigma_y, p.angle] for p in ps], dtype=torch.float64)
        kernels = gaussian_kernels(cfg.kernel_size, sig[:, 0], sig[:, 1], sig[:, 2])
        t = clock.add("kernels", t)
        blurred = blur(hq[s : s + batch], kernels)
        t = clock.add("blur", t)
        out = np.empty(tuple(blurred.shape), dtype=np.float32)
        for b, p in enumerate(ps):
            small = _small_lq_opencv(blurred[b], p, g)
            t = clock.add("down+noise+quantise", t)
            decoded = jpeg_roundtrip(small, p.jpeg_quality).astype(np.float32) / np.float32(255.0)
            t = clock.add("jpeg", t)
            out[b] = cv2.resize(decoded, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
            t = clock.add("up", t)
        torch.from_numpy(out).clamp_(0.0, 1.0)
        clock.add("up", t)
    return clock.per_image_ms(hq.shape[0])


def stages_opencv(images: list[np.ndarray], cfg: DegradationConfig, params: list) -> dict[str, float]:
    clock, rng = StageClock(), np.random.default_rng(0)
    for img, p in zip(images, params):
        t = time.perf_counter()
        k = gaussian_kernel_np(cfg.kernel_size, p.sigma_x, p.sigma_y, p.angle)
        t = clock.add("kernels", t)
        x = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)
        t = clock.add("blur", t)
        h, w = scaled_size(*img.shape[:2], p.scale)
        x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
        x = np.clip(x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(p.noise_sigma / 255.0), 0, 1)
        u8 = np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.uint8)
        t = clock.add("down+noise+quantise", t)
        x = jpeg_roundtrip(u8, p.jpeg_quality).astype(np.float32) / np.float32(255.0)
        t = clock.add("jpeg", t)
        np.clip(cv2.resize(x, img.shape[1::-1], interpolation=cv2.INTER_LINEAR), 0, 1)
        clock.add("up", t)
    return clock.per_image_ms(len(images))


def blur_alternatives(hq: torch.Tensor, cfg: DegradationConfig, params: list, repeats: int) -> dict[str, float]:
    """ms per image of the batched blur: FFT (ours) vs grouped conv2d, best of ``repeats``."""
    ps = params[: hq.shape[0]]
    sig = torch.tensor([[p.sigma_x, p.sigma_y, p.angle] for p in ps], dtype=torch.float64)
    kernels = gaussian_kernels(cfg.kernel_size, sig[:, 0], sig[:, 1], sig[:, 2])
    b, c, h, w = hq.shape
    r = cfg.kernel_size // 2
    weight = kernels[:, None].repeat_interleave(c, dim=0)  # [B*3, 1, k, k]

    def conv() -> torch.Tensor:
        xp = reflect101_pad(hq, r).reshape(1, b * c, h + 2 * r, w + 2 * r)
        return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)

    out = {}
    for name, fn in (("fft", lambda: blur(hq, kernels)), ("grouped_conv2d", conv)):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = round(min(times) / b * 1000, 2)
    torch.testing.assert_close(blur(hq, kernels), conv(), atol=1e-5, rtol=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="images per timed pass")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (best and median reported)")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = ap.parse_args()

    cfg = DegradationConfig()
    load_before = os.getloadavg()
    hq, source = load_faces(args.n, args.size)
    images = [x.permute(1, 2, 0).numpy().copy() for x in hq]
    params = sample_params(cfg, torch.Generator().manual_seed(0), args.n)

    runs = {f"ours batch {b}": (lambda b=b: run_ours(hq, cfg, params, b)) for b in args.batch_sizes}
    runs["opencv per image"] = lambda: run_opencv(images, cfg, params)
    for fn in runs.values():  # warm-up: thread pools, FFT plans, first-call allocations
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)

    stage_ours = stages_ours(hq, cfg, params, min(args.batch_sizes))
    stage_cv = stages_opencv(images, cfg, params)
    blur_alt = blur_alternatives(hq[: min(8, args.n)], cfg, params, args.repeats)

    results = {
        name: {
            "images_per_s_best": round(args.n / min(ts), 2),
            "images_per_s_median": round(args.n / statistics.median(ts), 2),
            "ms_per_image_best": round(min(ts) / args.n * 1000, 1),
        }
        for name, ts in times.items()
    }
    print(f"\ndegradation throughput, {args.n} images of {args.size}x{args.size} from {source}")
    print(f"{'pipeline':<20} {'img/s best':>11} {'img/s median':>13} {'ms/img best':>12}")
    for name, r in results.items():
        print(f"{name:<20} {r['images_per_s_best']:>11.2f} {r['images_per_s_median']:>13.2f} {r['ms_per_image_best']:>12.1f}")
    print(f"\nstage ms per image (one pass; ours at batch {min(args.batch_sizes)})")
    print(f"{'stage':<22} {'ours':>8} {'opencv':>8}")
    for stage in stage_cv:
        print(f"{stage:<22} {stage_ours.get(stage, float('nan')):>8.2f} {stage_cv[stage]:>8.2f}")
    print(f"\nbatched blur alternatives, ms per image (batch {min(8, args.n)}, best of {args.repeats}): {blur_alt}")

    record = {
        "bench": "degradation_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "images": source,
        "n": args.n,
        "size": args.size,
        "repeats": args.repeats,
        "results": results,
        "stages_ms_per_image": {"ours": stage_ours, "opencv": stage_cv},
        "blur_ms_per_image": blur_alt,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "opencv_threads": cv2.getNumThreads(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "mkl": torch.backends.mkl.is_available(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    print("\n" + json.dumps(record, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
