"""Does the policy-gradient term carry signal at this scale? (issue 21)

    python bench/pg_signal.py --base RUN --faces FACES --epochs 20 --out runs/pg_signal [--lr 1e-4] [--set KEY=VALUE ...]

Three arms from one base, on the same faces, sequentially in one process (one thread each):

* ``pg``       the PPO term alone (``reg_weight=0``), the reward as shipped;
* ``flipped``  the same with every advantage's sign flipped (the policy is pushed *down* the reward);
* ``frozen``   no update at all (``pg_weight=0 reg_weight=0``, lr 1e-12, no weight decay).

Every epoch draws the same faces, degradations and sampler noise in all three (they are seeded by
epoch), so the training rewards of an epoch are paired. If the PPO term follows the reward, ``pg``
ends above ``flipped``; if its gradient is noise at this group size, both move away from ``frozen``
alike (a step from a supervised optimum in a random direction loses fidelity either way).
Prints and writes (``--out``/pg_signal.json) each arm's per-epoch training reward (the true reward,
also for ``flipped``) and the paired mean differences pg - frozen, flipped - frozen and pg - flipped
over epochs with a bootstrap 95 % interval. Use ``--faces`` with a list file of a few training faces
(``data.hq`` accepts a text file of paths), so every epoch revisits them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lrpo.config import load_config
from lrpo.eval.stats import paired_bootstrap_ci
from lrpo.rl.config import LRPOConfig
from lrpo.rl.trainer import LRPOTrainer

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "pg": ["reg_weight=0"],
    "flipped": ["reg_weight=0"],
    "frozen": ["reg_weight=0", "pg_weight=0", "lr=1e-12", "weight_decay=0"],
}


def flip_advantages(trainer: LRPOTrainer) -> None:
    """Score with the negated reward (so advantages flip sign) and keep the true total as a detail."""
    score = trainer.score

    def negated(batch, epoch):
        scores, details = score(batch, epoch)
        return -scores, {**details, "true_total": scores}

    trainer.score = negated


def true_rewards(history: list[dict], flipped: bool) -> list[float]:
    key = "reward/true_total_mean" if flipped else "reward_mean"
    return [float(r[key]) for r in history if key in r]


def run_arm(name: str, args: argparse.Namespace) -> list[float]:
    over = [f"init_checkpoint={args.base}", f"data.hq={args.faces}", "data.val_count=0", f"out_dir={args.out / name}",
            f"epochs={args.epochs}", "time_budget_min=0", "diagnostics=false", f"seed={args.seed}", *args.set, *ARMS[name]]
    if name != "frozen":
        over.append(f"lr={args.lr}")
    cfg = load_config(LRPOConfig, args.config, over)
    trainer = LRPOTrainer(cfg, progress=False, overwrite=True)
    if name == "flipped":
        flip_advantages(trainer)
    trainer.run()
    return true_rewards(trainer.history, flipped=name == "flipped")


def paired(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over the epochs both reached, with a bootstrap interval over epochs."""
    n = min(len(a), len(b))
    mean, lo, hi = paired_bootstrap_ci(np.array(a[:n]), np.array(b[:n]))
    return {"mean": round(mean, 5), "ci95": [round(lo, 5), round(hi, 5)], "epochs": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="pretrained policy (run folder or checkpoint)")
    ap.add_argument("--faces", required=True, help="a folder or a text file listing a few training faces")
    ap.add_argument("--config", default=str(ROOT / "configs" / "lrpo-cpu.yaml"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of the pg and flipped arms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for all three arms (repeatable), e.g. --set branch_step=14")
    ap.add_argument("--out", type=Path, default=Path("runs/pg_signal"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rewards = {}
    for name in ARMS:
        t0 = time.process_time()
        rewards[name] = run_arm(name, args)
        print(f"{name}: {len(rewards[name])} epochs, {(time.process_time() - t0) / 60:.1f} CPU-min, "
              f"mean training reward {np.mean(rewards[name]):.4f}", file=sys.stderr)
    summary = {
        "bench": "pg_signal", "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "base": str(args.base), "faces": str(args.faces), "config": os.path.relpath(args.config, ROOT),
        "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "set": args.set, "arms": ARMS,
        "train_reward": {k: [round(v, 5) for v in vs] for k, vs in rewards.items()},
        "pg_minus_frozen": paired(rewards["pg"], rewards["frozen"]),
        "flipped_minus_frozen": paired(rewards["flipped"], rewards["frozen"]),
        "pg_minus_flipped": paired(rewards["pg"], rewards["flipped"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pg_signal.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
