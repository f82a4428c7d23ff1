"""Issue-3 benchmark: LRPO on the CPU from the pretrained 64x64 policy, with and without the
GT-guided likelihood regulariser, evaluated on the 20 held-out faces.

    python bench/lrpo_cpu.py --base runs/bench_pretrain/run --faces ../shared/data/faces-hq \
        --minutes 25 --out runs/bench_lrpo [--weights ../shared/weights]

Trains runs from the same base with configs/lrpo-cpu.yaml (offline reward preset), by default (b)
reg_weight as configured and (c) reg_weight=0 (--variants adds others, e.g. a strong regulariser),
one after the other or side by side (--parallel, one thread each). Then restores the held-out faces (the first 20 in sorted order; never trained
on), degraded once with seed 0 (mild preset, as trained), with DDIM eta=0, 50 steps, and reports for
(a) base, (b), (c): the composite reward and each term, PSNR, SSIM and the SFace identity cosine to
GT. Also prints the per-epoch time split (rollout / reward / update) and the update's sample-steps/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train(base: str, faces: str, out: Path, minutes: float, reg: float | None, config: str, threads: int) -> subprocess.Popen:
    over = [f"init_checkpoint={base}", f"data.hq={faces}", f"out_dir={out}", f"time_budget_min={minutes}", "epochs=1000"]
    if reg is not None:
        over.append(f"reg_weight={reg}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "lrpo.cli", "train", "--config", config, "--eval-every", "5", "--no-progress", *over]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


@torch.no_grad()
def evaluate(ckpt: Path, hq: torch.Tensor, lq: torch.Tensor, reward) -> dict[str, float]:
    from lrpo.eval.metrics import psnr, ssim
    from lrpo.inference.restorer import Restorer
    from lrpo.inference.sampling import restore_images
    from lrpo.rewards import RewardInput

    r = Restorer.from_checkpoint(ckpt, steps=50, eta=0.0, device="cpu")
    out = restore_images(r.policy, r.sampler, lq, seeds=list(range(len(lq))))
    res = reward(RewardInput(images=out, gt=hq, lq=lq))
    row = {"reward": float(res.scores.mean())}
    row.update({k: float(v.mean()) for k, v in res.details.items() if "/" not in k and k != "total"})
    row.update(psnr=float(psnr(out, hq).mean()), ssim=float(ssim(out, hq).mean()))
    return {k: round(v, 4) for k, v in row.items()}


def epoch_timing(log_path: Path) -> dict[str, float]:
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    recs = [r for r in recs if "time_update_s" in r]
    if not recs:
        return {}
    mean = lambda k: round(sum(r[k] for r in recs) / len(recs), 2)  # noqa: E731
    return {
        "epochs": len(recs),
        "rollout_s": mean("time_rollout_s"),
        "reward_s": mean("time_reward_s"),
        "update_s": mean("time_update_s"),
        "update_sample_steps_per_s": mean("update_sample_steps_per_s"),
        "reward_first_epoch": round(recs[0]["reward_mean"], 4),
        "reward_last_epoch": round(recs[-1]["reward_mean"], 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="pretrained policy (run folder or checkpoint)")
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces-hq"))
    ap.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights"), help="folder with the SFace/YuNet ONNX files")
    ap.add_argument("--minutes", type=float, default=25.0, help="training budget per run (at most 30)")
    ap.add_argument("--out", default="runs/bench_lrpo")
    ap.add_argument("--config", default=str(ROOT / "configs" / "lrpo-cpu.yaml"))
    ap.add_argument("--parallel", action="store_true", help="train (b) and (c) side by side, one thread each")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--variants", default="lrpo_reg=config,lrpo_noreg=0",
                    help="NAME=REG_WEIGHT pairs ('config' keeps the config's reg_weight), e.g. lrpo_reg1=1.0")
    args = ap.parse_args()
    os.environ.setdefault("LRPO_WEIGHTS", args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for item in args.variants.split(","):
        name, _, reg = item.partition("=")
        runs[name.strip()] = None if reg.strip() in ("", "config") else float(reg)  # None: the config's
    if not args.skip_train:
        threads = 1 if args.parallel else torch.get_num_threads()
        procs = []
        for name, reg in runs.items():
            p = train(args.base, args.faces, out / name, args.minutes, reg, args.config, threads)
            if args.parallel:
                procs.append((name, p))
            elif p.wait():
                print(f"{name} failed; see {out / (name + '.log')}", file=sys.stderr)
                return 1
        for name, p in procs:
            if p.wait():
                print(f"{name} failed; see {out / (name + '.log')}", file=sys.stderr)
                return 1

    from lrpo.config import DEGRADATION_PRESETS, LRPOConfig, load_config
    from lrpo.data.datasets import FaceImageSet
    from lrpo.degradation import degrade
    from lrpo.rewards import build_composite

    cfg = load_config(LRPOConfig, args.config, [f"init_checkpoint={args.base}", f"data.hq={args.faces}"])
    faces = FaceImageSet(args.faces, resolution=cfg.data.resolution)
    _, val = faces.split(cfg.data.val_count)
    hq = torch.stack([val[i] for i in range(len(val))])
    lq, _ = degrade(hq, DEGRADATION_PRESETS["mild"], torch.Generator().manual_seed(0))
    reward = build_composite(cfg.reward.preset, device="cpu")
    table = {"base": evaluate(Path(args.base), hq, lq, reward)}
    for name in runs:
        table[name] = evaluate(out / name, hq, lq, reward)
    summary = {
        "bench": "lrpo_cpu",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "config": os.path.relpath(args.config, ROOT),
        "minutes_per_run": args.minutes,
        "parallel": args.parallel,
        "heldout_faces": len(hq),
        "results": table,
        "timing": {name: epoch_timing(out / name / "log.jsonl") for name in runs},
    }
    print(json.dumps(summary, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
