"""Issue-2 benchmark: pretrain the 64x64 pixel policy on our CPU, then compare it with the LQ input.

    python bench/pretrain_cpu.py --faces ../shared/data/faces-hq --minutes 20 --out runs/bench_pretrain

Trains with configs/pixel-64.yaml (20 faces held out: the first 20 in sorted order), then degrades
the held-out faces with seed 0 under the SPEC ranges and under the mild preset, and reports PSNR/SSIM
of (a) the LQ as the pipeline delivers it (resized back to 64 px; "bicubic" column), (b) the
stage-1 CNN alone, (c) the policy, DDIM eta=0, 50 steps, EMA weights. Writes a grid
LQ | stage-1 | policy | GT per preset under --out (derived from third-party photos: keep it out of
the repository). Prints a JSON summary with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from lrpo.config import DEGRADATION_PRESETS, PretrainConfig, load_config
from lrpo.data.datasets import FaceImageSet
from lrpo.data.images import save_rgb, to_uint8
from lrpo.degradation import degrade
from lrpo.eval.metrics import psnr, ssim
from lrpo.inference.restorer import Restorer
from lrpo.pretrain.trainer import Pretrainer
from lrpo.data.images import image_grid

ROOT = Path(__file__).resolve().parents[1]


def evaluate(restorer: Restorer, hq: torch.Tensor, preset: str, seed: int) -> tuple[dict, list]:
    lq, _ = degrade(hq, DEGRADATION_PRESETS[preset], torch.Generator().manual_seed(seed))
    policy = restorer.policy
    with torch.no_grad():
        out = torch.stack([torch.from_numpy(o).permute(2, 0, 1).float() / 255 for o in restorer.restore([to_uint8(x) for x in lq], list(range(len(lq))))])
        stage1 = ((policy.stage1_restore(lq) + 1) / 2).clamp(0, 1)
        stage1 = (stage1 * 255).round() / 255  # same uint8 quantisation as the policy output
    row = {}
    for name, img in (("lq", lq), ("stage1", stage1), ("policy", out)):
        row[name] = {"psnr": round(float(psnr(img, hq).mean()), 3), "ssim": round(float(ssim(img, hq).mean()), 4)}
    grid_rows = [[to_uint8(a), to_uint8(b), to_uint8(c), to_uint8(d)] for a, b, c, d in zip(lq, stage1, out, hq)]
    return row, grid_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces-hq"))
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", default="runs/bench_pretrain")
    ap.add_argument("--config", default=str(ROOT / "configs" / "pixel-64.yaml"))
    ap.add_argument("--skip-train", action="store_true", help="evaluate an existing run in --out")
    args = ap.parse_args()
    if not Path(args.faces).is_dir():
        print(f"faces folder not found: {args.faces}", file=sys.stderr)
        return 2
    out = Path(args.out)
    cfg: PretrainConfig = load_config(
        PretrainConfig, args.config, [f"data.hq={args.faces}", f"out_dir={out / 'run'}", f"time_budget_min={args.minutes}"]
    )
    t0 = time.time()
    if not args.skip_train:
        Pretrainer(cfg).run()
    train_s = time.time() - t0
    restorer = Restorer.from_checkpoint(out / "run", steps=50, eta=0.0, device="cpu")
    faces = FaceImageSet(args.faces, resolution=cfg.data.resolution)
    _, val = faces.split(cfg.data.val_count)
    hq = torch.stack([val[i] for i in range(len(val))])
    history = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()]
    steps = max(r.get("step", 0) for r in history)
    results = {}
    for preset in ("spec", "mild"):
        row, grid = evaluate(restorer, hq, preset, seed=0)
        results[preset] = row
        save_rgb(out / f"grid_{preset}.png", image_grid(grid[:10]))
    summary = {
        "bench": "pretrain_cpu",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "config": os.path.relpath(args.config, ROOT),
        "train_steps": steps,
        "train_minutes": round(train_s / 60, 1),
        "heldout_faces": len(hq),
        "results": results,
        "grids": [str(out / "grid_spec.png"), str(out / "grid_mild.png")],
    }
    print(json.dumps(summary, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
