"""How each reward term responds to degradations of known strength (prints tables; not a test).

For every face of a folder (default: $LRPO_SHARED/data/faces-hq, evenly spaced files), at 64 and
128 px, degrade with one OpenCV operation at increasing strength and score the result against the
clean face. A useful fidelity/quality term falls monotonically with every kind of degradation; a
term that rises with one of them (a sharpness term with noise) can be gamed by a policy that
produces it, so the composite must still fall.

Degradations (strengths in units of a 128 px face; blur sigmas halved at 64 px):
  blur      Gaussian sigma in px
  down      downscale factor (area) then bicubic back up; factors divide 64 and 128 exactly, so
            the round trip does not also shift the image
  noise     Gaussian noise std, in 1/255
  jpeg      JPEG quality (100 = the clean face re-encoded at q100)
Probes of what a policy could produce on purpose:
  sharpen   unsharp-mask amount (halos)
  bright    brightness offset added to every pixel
  mix       blend weight of another person's face (identity swap)

Columns: the mean score over faces at each strength, then "mono": the fraction of faces whose
score never rises by more than 1e-3 as the strength grows. The last table gives each term's
spread (std over all degraded samples of blur/down/noise/jpeg, mild to medium strengths) and its
share of the composite's spread for each preset: how much each term decides the ranking within a
group once the trainer normalises rewards by their std.

Usage:
    python bench/reward_sensitivity.py [--faces DIR] [--count 24] [--sizes 64 128] [--weights DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from lrpo.data.images import list_images, load_rgb
from lrpo.rewards import RewardInput, build_reward
from lrpo.rewards.composite import PRESETS

DEGRADATIONS: dict[str, list[float]] = {
    "blur": [0, 0.5, 1, 1.5, 2, 3, 4],
    "down": [1, 4 / 3, 2, 8 / 3, 4, 16 / 3, 8],
    "noise": [0, 2, 5, 10, 15, 25, 40],
    "jpeg": [100, 90, 70, 50, 30, 20, 10],
    "sharpen": [0, 0.5, 1, 2, 3],
    "bright": [0, 0.02, 0.05, 0.1, 0.2],
    "mix": [0, 0.25, 0.5, 0.75, 1.0],
}
# mild-to-medium strengths (indices into DEGRADATIONS) used for the spread table
SPREAD_RANGE = {"blur": slice(1, 5), "down": slice(1, 5), "noise": slice(1, 5), "jpeg": slice(1, 5)}
TERMS = ["dwt", "dwt_haar", "ssim", "ms_ssim", "psnr", "identity", "sharpness", "brightness"]
SHOWN_PRESETS = ("offline", "no_weights")
RISE_TOLERANCE = 1e-3


def degrade(img: np.ndarray, kind: str, strength: float, size: int, rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """img, other: uint8 HxWx3 RGB at ``size``; returns uint8 of the same shape."""
    s = size / 128.0
    x = img.astype(np.float32) / 255.0
    if kind == "blur":
        if strength > 0:
            x = cv2.GaussianBlur(x, (0, 0), sigmaX=strength * s, borderType=cv2.BORDER_REFLECT)
    elif kind == "down":
        if strength > 1:
            small = max(4, round(size / strength))
            x = cv2.resize(x, (small, small), interpolation=cv2.INTER_AREA)
            x = cv2.resize(x, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == "noise":
        x = x + rng.standard_normal(x.shape).astype(np.float32) * strength / 255.0
    elif kind == "jpeg":
        _, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(strength)])
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    elif kind == "sharpen":
        if strength > 0:
            x = x + strength * (x - cv2.GaussianBlur(x, (0, 0), sigmaX=1.0 * s))
    elif kind == "bright":
        x = x + strength
    elif kind == "mix":
        x = (1 - strength) * x + strength * other.astype(np.float32) / 255.0
    else:
        raise ValueError(f"unknown degradation {kind!r}")
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 list -> [B, 3, H, W] float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def monotone_fraction(values: np.ndarray) -> float:
    """values [faces, strengths]: fraction of faces whose score never rises by > RISE_TOLERANCE."""
    return float(np.mean(np.all(np.diff(values, axis=1) <= RISE_TOLERANCE, axis=1)))


def preset_total(name: str, scores: dict[str, np.ndarray]) -> np.ndarray:
    return sum(term["weight"] * scores[key] for key, term in PRESETS[name].items())


def run_size(size: int, hq: list[np.ndarray], names: list[str], rewards: dict, seed: int) -> None:
    clean = [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in hq]
    others = clean[1:] + clean[:1]  # a different face for the "mix" probe
    gt = to_batch(clean)
    meta = [{"name": n} for n in names]
    timings = {t: 0.0 for t in TERMS}
    calls = 0
    spread_samples: dict[str, list[np.ndarray]] = {t: [] for t in TERMS}
    print(f"\n=== {size} px, {len(clean)} faces: mean score per strength; mono = fraction of faces never rising ===")
    for kind, strengths in DEGRADATIONS.items():
        rng = np.random.default_rng(seed)
        per_term: dict[str, list[np.ndarray]] = {t: [] for t in TERMS}
        for strength in strengths:
            out = to_batch([degrade(im, kind, strength, size, rng, o) for im, o in zip(clean, others)])
            inp = RewardInput(out, gt=gt, meta=meta)
            calls += 1
            for t, r in rewards.items():
                t0 = time.perf_counter()
                per_term[t].append(r(inp).scores.numpy())
                timings[t] += time.perf_counter() - t0
        table = {t: np.stack(v, axis=1) for t, v in per_term.items()}  # [faces, strengths]
        for p in SHOWN_PRESETS:
            table[p] = preset_total(p, table)
        if kind in SPREAD_RANGE:
            for t in TERMS:
                spread_samples[t].append(table[t][:, SPREAD_RANGE[kind]].ravel())
        print(f"\n{kind:8s}    " + " ".join(f"{s:>7.3g}" for s in strengths) + "   mono")
        for t, values in table.items():
            mono = "   -" if kind in ("bright", "mix") and t == "brightness" else f"{monotone_fraction(values):5.2f}"
            print(f"  {t:10s} " + " ".join(f"{v:7.4f}" for v in values.mean(0)) + f"   {mono}")
    print(f"\ntime per batch of {len(clean)} at {size} px (this machine): "
          + ", ".join(f"{t} {timings[t] / calls * 1000:.0f} ms" for t in TERMS))
    std = {t: float(np.concatenate(v).std()) for t, v in spread_samples.items()}
    print("\nspread (std over mild-medium blur/down/noise/jpeg samples) and share of each preset's spread:")
    print("  term        std   " + " ".join(f"{p:>12s}" for p in SHOWN_PRESETS))
    for t in TERMS:
        shares = []
        for p in SHOWN_PRESETS:
            weights = {k: v["weight"] for k, v in PRESETS[p].items()}
            denom = sum(w * std[k] for k, w in weights.items())
            shares.append(f"{weights[t] * std[t] / denom:12.2f}" if t in weights else f"{'-':>12s}")
        print(f"  {t:10s} {std[t]:6.4f} " + " ".join(shares))


def main() -> None:
    shared = Path(os.environ.get("LRPO_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=shared / "data" / "faces-hq")
    ap.add_argument("--count", type=int, default=24, help="number of faces (evenly spaced in sorted order)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--weights", type=Path, default=shared / "weights", help="folder holding the SFace ONNX file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    os.environ.setdefault("LRPO_WEIGHTS", str(args.weights))
    files = list_images(args.faces)
    files = [files[i] for i in np.linspace(0, len(files) - 1, min(args.count, len(files))).round().astype(int)]
    hq = [load_rgb(f) for f in files]
    print(f"{len(files)} faces from {args.faces}")
    rewards = {t: build_reward(t) for t in TERMS}
    for size in args.sizes:
        run_size(size, hq, [f.name for f in files], rewards, args.seed)
    print("\npresets:", {p: {k: v["weight"] for k, v in PRESETS[p].items()} for p in SHOWN_PRESETS})


if __name__ == "__main__":
    main()
