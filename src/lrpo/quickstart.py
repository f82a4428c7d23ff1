"""``lrpo quickstart``: a complete small run on a CPU, with embedded faces or the user's own.

Embedded default data: the face of scikit-image's ``astronaut`` photograph (NASA, public domain),
cropped FFHQ-style and augmented (shifts, zoom, small rotations, mirror, exposure), so the command
runs on a fresh machine with no downloads. ``--data DIR`` uses a folder of aligned faces instead.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .config import PretrainConfig, load_config
from .data.images import list_images, save_rgb

# FFHQ-like square crop of the astronaut's face (row0, row1, col0, col1) in the 512x512 photo:
# eyes near rows 105, columns 195 and 250, so a crop about 4x the eye distance centred on the face.
ASTRONAUT_FACE_BOX = (20, 240, 112, 332)
CONFIG_DIR = Path(__file__).parent / "configs"


def embedded_faces(out_dir: Path, count: int = 48, size: int = 128, seed: int = 0) -> list[Path]:
    """Write ``count`` augmented public-domain face crops as PNG into ``out_dir``; return paths."""
    import cv2
    from skimage import data as skdata

    photo = skdata.astronaut()  # RGB uint8 512x512, public domain
    r0, r1, c0, c1 = ASTRONAUT_FACE_BOX
    cy, cx, half = (r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0) / 2
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        zoom = rng.uniform(0.9, 1.1)
        angle = rng.uniform(-8, 8)
        dy, dx = rng.uniform(-0.05, 0.05, size=2) * 2 * half
        # similarity transform that maps the jittered crop onto size x size
        scale = size / (2 * half * zoom)
        m = cv2.getRotationMatrix2D((cx + dx, cy + dy), angle, scale)
        m[:, 2] += size / 2 - np.array([cx + dx, cy + dy])
        face = cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101)
        if rng.random() < 0.5:
            face = face[:, ::-1]
        gain = rng.uniform(0.85, 1.15)
        face = np.clip(face.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        path = out_dir / f"astronaut_{i:03d}.png"
        save_rgb(path, np.ascontiguousarray(face))
        paths.append(path)
    return paths


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB uint8 images (rows x columns) with a white gap."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid


def run_quickstart(args: argparse.Namespace) -> int:
    from .data.datasets import FaceImageSet
    from .degradation.paired import make_paired_set
    from .eval.metrics import psnr, ssim
    from .inference.restorer import Restorer
    from .pretrain.trainer import Pretrainer

    out = Path(args.out)
    t0 = time.time()
    if args.data:
        source = Path(args.data)
        print(f"[1/4] using faces from {source}")
    else:
        source = out / "embedded_faces"
        embedded_faces(source, seed=args.seed)
        print(f"[1/4] wrote {len(list_images(source))} embedded public-domain faces to {source}")
    faces = FaceImageSet(source, resolution=None, skip_bad=True)  # fails early when nothing is usable
    if len(faces) < 4:
        raise ValueError(f"{source}: only {len(faces)} usable face image(s); quickstart needs at least 4")
    val_count = max(2, min(8, len(faces) // 5))

    cfg: PretrainConfig = load_config(
        PretrainConfig,
        CONFIG_DIR / "cpu-quickstart.yaml",
        [
            f"data.hq={source}",
            f"data.val_count={val_count}",
            "data.skip_bad=true",
            f"out_dir={out / 'pretrain'}",
            f"seed={args.seed}",
            f"time_budget_min={args.minutes}",
        ],
    )
    print(f"[2/4] pretraining a {cfg.policy.resolution}px pixel policy for up to {args.minutes:g} min")
    result = Pretrainer(cfg, progress=not args.no_progress).run()

    print("[3/4] degrading the held-out faces (mild preset, seed 0) and restoring them")
    val_files = sorted(faces.paths)[:val_count]
    val_list = out / "heldout.txt"
    val_list.parent.mkdir(parents=True, exist_ok=True)
    val_list.write_text("".join(f"{p.resolve()}\n" for p in val_files))
    from .config import DEGRADATION_PRESETS

    pairs = out / "heldout_pairs"
    make_paired_set(val_list, pairs, size=cfg.data.resolution, seed=0, cfg=DEGRADATION_PRESETS["mild"], overwrite=True, progress=False)
    restorer = Restorer.from_checkpoint(out / "pretrain", steps=50, eta=0.0, device=cfg.device)
    from .data.datasets import PairedSet
    from .data.images import to_uint8

    pair_set = PairedSet(pairs)
    lq = torch.stack([pair_set[i]["lq"] for i in range(len(pair_set))])
    hq = torch.stack([pair_set[i]["hq"] for i in range(len(pair_set))])
    restored = restorer.restore([to_uint8(x) for x in lq], seeds=list(range(len(lq))))
    restored_t = torch.stack([torch.from_numpy(r).permute(2, 0, 1).float() / 255 for r in restored])
    metrics = {
        "lq_bicubic": {"psnr": float(psnr(lq, hq).mean()), "ssim": float(ssim(lq, hq).mean())},
        "policy": {"psnr": float(psnr(restored_t, hq).mean()), "ssim": float(ssim(restored_t, hq).mean())},
        "pretrain_steps": result["step"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    grid = image_grid([[to_uint8(a), r, to_uint8(b)] for a, r, b in zip(lq, restored, hq)])
    save_rgb(out / "grid.png", grid)
    print(f"[4/4] done in {math.ceil(time.time() - t0)} s")
    print(
        f"held-out faces ({len(lq)}): LQ PSNR {metrics['lq_bicubic']['psnr']:.2f} SSIM {metrics['lq_bicubic']['ssim']:.3f}"
        f" -> policy PSNR {metrics['policy']['psnr']:.2f} SSIM {metrics['policy']['ssim']:.3f}"
    )
    print(f"grid (LQ | restored | GT): {out / 'grid.png'}")
    print(f"metrics: {out / 'metrics.json'}")
    print(f"checkpoint: {result['checkpoint']}")
    return 0
