"""Issue-3 benchmark: LRPO on the CPU from the pretrained 64x64 policy, with and without the
GT-guided likelihood regulariser, evaluated on the 20 held-out faces.

    python bench/lrpo_cpu.py --base runs/bench_pretrain/run --faces ../shared/data/faces-hq \
        --minutes 25 --out runs/bench_lrpo [--weights ../shared/weights]

Trains runs from the same base with configs/lrpo-cpu.yaml (offline reward preset), by default (b)
reg_weight as configured and (c) reg_weight=0 (--variants adds others, e.g. a strong regulariser),
one after the other or side by side (--parallel J, one thread each), each with --seeds N seeds. Then restores the held-out faces (the first 20 in sorted order; never trained
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


def train(base: str, faces: str, out: Path, minutes: float, extra: list[str], config: str, threads: int) -> subprocess.Popen:
    over = [f"init_checkpoint={base}", f"data.hq={faces}", f"out_dir={out}", f"time_budget_min={minutes}", "epochs=1000", *extra]
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
    row = {"reward": res.scores}
    row.update({k: v for k, v in res.details.items() if "/" not in k and k != "total"})
    row.update(psnr=psnr(out, hq), ssim=ssim(out, hq))
    return {k: v.double().cpu().numpy() for k, v in row.items()}  # one value per face


def variant_overrides(spec: str) -> list[str]:
    """'config' or '' -> none; a number -> reg_weight=NUMBER; else KEY=VALUE pairs joined by '+'."""
    spec = spec.strip()
    if spec in ("", "config"):
        return []
    try:
        return [f"reg_weight={float(spec)}"]
    except ValueError:
        return [item for item in spec.split("+") if item]


def seed_table(per_face: dict[str, list[dict]], base: dict) -> dict:
    """Per variant and metric: mean and std over seeds of the held-out mean, and a paired bootstrap
    95 % interval over faces of (variant, averaged over its seeds) minus base."""
    from lrpo.eval.stats import mean_std, paired_bootstrap_ci

    table = {"base": {k: {"mean": round(float(v.mean()), 4)} for k, v in base.items()}}
    for name, seeds in per_face.items():
        row = {}
        for k in base:
            m, sd = mean_std([float(s[k].mean()) for s in seeds])
            diff, low, high = paired_bootstrap_ci(sum(s[k] for s in seeds) / len(seeds), base[k])
            row[k] = {"mean": round(m, 4), "std": round(sd, 4), "minus_base": round(diff, 4), "ci95": [round(low, 4), round(high, 4)]}
        table[name] = row
    return table


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
    ap.add_argument("--parallel", type=int, nargs="?", const=3, default=1, metavar="J",
                    help="train J runs side by side, one thread each (bare: 3)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--seeds", type=int, default=1, help="train each variant with seeds 0 .. N-1 (the table gives mean, std "
                    "and a paired bootstrap 95 %% interval over faces of variant minus base)")
    ap.add_argument("--variants", default="lrpo_reg=config,lrpo_noreg=0",
                    help="NAME=SPEC pairs: SPEC is 'config' (the config as it is), a number (reg_weight) or KEY=VALUE "
                    "overrides joined by '+', e.g. sel2=train_timesteps=random:2+update_mode=accumulate")
    args = ap.parse_args()
    os.environ.setdefault("LRPO_WEIGHTS", args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for item in args.variants.split(","):
        name, _, spec = item.partition("=")
        runs[name.strip()] = variant_overrides(spec)
    jobs = [(name, seed) for name in runs for seed in range(args.seeds)]
    run_dir = (lambda name, seed: out / name) if args.seeds == 1 else (lambda name, seed: out / name / f"seed_{seed}")
    if not args.skip_train:
        threads = 1 if args.parallel > 1 else torch.get_num_threads()
        for start in range(0, len(jobs), args.parallel):
            procs = []
            for name, seed in jobs[start : start + args.parallel]:
                run_dir(name, seed).parent.mkdir(parents=True, exist_ok=True)
                extra = runs[name] + ([f"seed={seed}"] if args.seeds > 1 else [])
                procs.append((name, train(args.base, args.faces, run_dir(name, seed), args.minutes, extra, args.config, threads)))
            for name, p in procs:
                if p.wait():
                    print(f"{name} failed; see its .log beside the run", file=sys.stderr)
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
    base_faces = evaluate(Path(args.base), hq, lq, reward)
    per_face = {name: [evaluate(run_dir(name, seed), hq, lq, reward) for seed in range(args.seeds)] for name in runs}
    table = seed_table(per_face, base_faces)
    summary = {
        "bench": "lrpo_cpu",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "config": os.path.relpath(args.config, ROOT),
        "minutes_per_run": args.minutes,
        "parallel": args.parallel,
        "seeds": args.seeds,
        "variants": {name: extra for name, extra in runs.items()},
        "heldout_faces": len(hq),
        "results": table,
        "timing": {name: epoch_timing(run_dir(name, 0) / "log.jsonl") for name in runs},
    }
    print(json.dumps(summary, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
