"""LRPO on the CPU from the pretrained 64x64 policy: variants side by side at equal CPU time, with
several seeds, evaluated on the 20 held-out faces (issues 3 and 12).

    python bench/lrpo_cpu.py --base runs/bench_pretrain/run --faces ../shared/data/faces-hq \
        --minutes 25 --out runs/bench_lrpo [--seeds 3 --parallel 2] [--variants NAME=SPEC,...]

Trains each variant from the same base with configs/lrpo-cpu.yaml (offline reward preset) and the
overrides of its SPEC, with seeds 0 .. N-1, J runs side by side (--parallel J, one thread each; a
SPEC may set its own time_budget_min, e.g. a longer run of the best variant).
Every run stops after --minutes of its own CPU time (time_budget_clock=cpu: its evaluations and
checkpoints count; checked between epochs, so a run ends up to one epoch later), so runs sharing
cores get equal compute; summary.json gives each run's training CPU (the curves' x) beside it.
Every --eval-every epochs a run scores the held-out faces (the first 20 in
sorted order, never trained on; mild preset, degraded once with seed 0; DDIM eta 0, the training
sampler's steps) and logs each epoch's CPU seconds: from these the bench draws the held-out reward
gain over the base against CPU-minutes (mean and min-max band over seeds; reward_vs_cpu.png) and
reads every variant's gain at the compute all runs reached, as a ratio to the reference variant's
(--reference, default the first).

At the end it restores the held-out faces with every final policy (DDIM eta 0, 50 steps) and
reports, for the base and each variant: the composite reward and each term, PSNR, SSIM, SFace
identity and LMD (YuNet, px of a 512 face): mean and std over seeds, and a paired bootstrap 95 %
interval over faces of (variant averaged over its seeds) minus base. It writes summary.json,
reward_vs_cpu.png, heldout_grid.png (LQ | base | each variant, seed 0 | GT | 8x |the first variant
that is not the reference - base|) and report.html (table, plot, grid) under --out. The grid is made from
third-party photos: keep --out out of the repository. Re-running the same command skips the runs that
finished with the same settings (RUN.finished.json beside each run folder) and starts the others over,
so a long comparison can be completed in parts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


PRETRAIN_ARM = "<pretrain>"  # first item of a variant's overrides: continued supervised pretraining, not lrpo train
# the controls a claim about the RL needs, from one base at equal CPU time (--arms standard)
STANDARD_ARMS = "lrpo=config,pg0=pg_weight=0,reg0=reg_weight=0,sft=pretrain"


def pretrain_command(base: str, faces: str, out: Path, minutes: float, extra: list[str]) -> list[str]:
    """``lrpo pretrain --resume BASE`` into ``out`` at a constant small learning rate, stopped on CPU time."""
    from lrpo.checkpoint import find_checkpoint

    config = find_checkpoint(base) / "config.yaml"
    over = [f"data.hq={faces}", f"out_dir={out}", f"time_budget_min={minutes}", "time_budget_clock=cpu", "steps=1000000",
            "optim.lr_schedule=constant", "optim.warmup_steps=0", "optim.lr=1e-4", "val_every=0", *extra]
    return [sys.executable, "-m", "lrpo.cli", "pretrain", "--config", str(config), "--resume", str(base), "--allow-changes",
            "--no-progress", *over]


def run_settings(base: str, faces: str, minutes: float, extra: list[str], config: str, eval_every: int, threads: int) -> dict:
    """What a run is trained with: a finished run with the same settings is not trained again. The
    threads count too: a CPU-minute buys another amount of work on another number of threads."""
    return {"base": str(base), "faces": str(faces), "minutes": minutes, "overrides": list(extra), "config": str(config),
            "eval_every": eval_every, "threads": threads}


def finished_marker(out: Path) -> Path:
    """Written beside a run folder when its training ended normally (holds its run_settings)."""
    return out.parent / f"{out.name}.finished.json"


def is_finished(out: Path, settings: dict) -> bool:
    """True when ``out`` holds a run that finished with ``settings``: re-running the bench skips it,
    so a long comparison completes in parts (an unfinished run starts over: its CPU budget counts one
    invocation)."""
    try:
        return json.loads(finished_marker(out).read_text()) == settings and out.is_dir()
    except (OSError, ValueError):
        return False


def train(base: str, faces: str, out: Path, minutes: float, extra: list[str], config: str, threads: int, eval_every: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    finished_marker(out).unlink(missing_ok=True)
    # an unfinished run of an earlier invocation: start it over (the pretraining arm resumes the base
    # into its folder, where the new checkpoints and log supersede what was left)
    again = ["--overwrite"] if out.exists() else []
    if extra[:1] == [PRETRAIN_ARM]:
        cmd = pretrain_command(base, faces, out, minutes, extra[1:]) + again
    else:
        over = [f"init_checkpoint={base}", f"data.hq={faces}", f"out_dir={out}", f"time_budget_min={minutes}", "time_budget_clock=cpu",
                "epochs=1000", *extra]
        cmd = [sys.executable, "-m", "lrpo.cli", "train", "--config", config, "--eval-every", str(eval_every), "--no-progress", *again, *over]
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


@torch.no_grad()
def evaluate(ckpt: Path, hq: torch.Tensor, lq: torch.Tensor, reward, landmarks) -> tuple[dict[str, "np.ndarray"], torch.Tensor]:
    """Per-face figures of one policy (DDIM eta 0, 50 steps) and its outputs."""
    from lrpo.eval.landmarks import lmd_batch
    from lrpo.eval.metrics import psnr, ssim
    from lrpo.inference.restorer import Restorer
    from lrpo.policies.sampling import restore_images
    from lrpo.rewards import RewardInput

    r = Restorer.from_checkpoint(ckpt, steps=50, eta=0.0, device="cpu")
    out = restore_images(r.policy, r.sampler, lq, seeds=list(range(len(lq))))
    res = reward(RewardInput(images=out, gt=hq, lq=lq))
    row = {"reward": res.scores}
    row.update({k: v for k, v in res.details.items() if "/" not in k and k != "total"})
    row.update(psnr=psnr(out, hq), ssim=ssim(out, hq))
    row = {k: v.double().cpu().numpy() for k, v in row.items()}
    if landmarks is not None:
        detector, gt_points = landmarks
        row["lmd"] = lmd_batch(detector, out, gt_points)
    return row, out


def variant_overrides(spec: str) -> list[str]:
    """'config' or '' -> none; a number -> reg_weight=NUMBER; 'pretrain[+KEY=VALUE...]' -> continued
    supervised pretraining (:data:`PRETRAIN_ARM` first, then the pretrain overrides); else KEY=VALUE
    pairs joined by '+' (a '+' splits only where a new KEY= follows, so values such as random:2+reg stay whole)."""
    spec = spec.strip()
    if spec in ("", "config"):
        return []
    if spec == "pretrain" or spec.startswith("pretrain+"):
        return [PRETRAIN_ARM, *variant_overrides(spec[len("pretrain+"):])] if spec != "pretrain" else [PRETRAIN_ARM]
    try:
        return [f"reg_weight={float(spec)}"]
    except ValueError:
        pass
    items = [item for item in re.split(r"\+(?=[A-Za-z_][\w.]*=)", spec) if item]
    bad = [item for item in items if "=" not in item]
    if bad:
        raise ValueError(f"variant spec {spec!r}: {bad[0]!r} is not KEY=VALUE (expected 'config', a number or KEY=VALUE+KEY=VALUE)")
    return items


def budget_of(overrides: list[str], default: float) -> float:
    """The CPU-minute budget a variant runs with: its own time_budget_min override, else the default."""
    own = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("time_budget_min=")]
    return own[-1] if own else default


def parse_variants(text: str) -> dict[str, list[str]]:
    """'NAME=SPEC,NAME=SPEC' -> {name: overrides}; names must be non-empty and distinct."""
    runs: dict[str, list[str]] = {}
    for item in text.split(","):
        name, _, spec = item.partition("=")
        name = name.strip()
        if not name or not re.fullmatch(r"[\w.-]+", name):
            raise ValueError(f"--variants item {item!r}: expected NAME=SPEC with a NAME of letters, digits, '_', '.' or '-'")
        if name in runs:
            raise ValueError(f"--variants: the name {name!r} is given twice")
        runs[name] = variant_overrides(spec)
    return runs


def seed_table(per_face: dict[str, list[dict]], base: dict, control: str | None = None) -> dict:
    """Per variant and metric: mean and std over seeds of the held-out mean, and a paired bootstrap
    95 % interval over faces of (variant, averaged over its seeds) minus base; with ``control`` (a
    variant: the comparison a claim needs, e.g. pg_weight=0 for the RL, fp32 for bf16) also minus the
    control averaged over its seeds ("minus_control", "ci95_control"). Faces where a metric
    is NaN (LMD: no face detected) in the base or any run are left out of that metric in every row
    (the count is given as "faces"); with fewer than 2 left the metric's figures are None."""
    import numpy as np

    from lrpo.eval.stats import mean_std, paired_bootstrap_ci

    # one set of faces per metric for every row: those where it is finite for the base and every run
    ok = {k: np.isfinite(v) & np.all([np.isfinite(s[k]) for seeds in per_face.values() for s in seeds], axis=0) for k, v in base.items()}
    table = {"base": {k: {"mean": round(float(v[ok[k]].mean()), 4) if ok[k].any() else None} for k, v in base.items()}}
    for k in base:
        if not ok[k].all():
            table["base"][k]["faces"] = int(ok[k].sum())
    for name, seeds in per_face.items():
        row = {}
        for k in base:
            if ok[k].sum() < 2:  # no interval from fewer than 2 faces
                row[k] = {"mean": None, "std": None, "minus_base": None, "ci95": [None, None], "faces": int(ok[k].sum())}
                continue
            m, sd = mean_std([float(s[k][ok[k]].mean()) for s in seeds])
            avg = sum(s[k][ok[k]] for s in seeds) / len(seeds)
            diff, low, high = paired_bootstrap_ci(avg, base[k][ok[k]])
            row[k] = {"mean": round(m, 4), "std": round(sd, 4), "minus_base": round(diff, 4), "ci95": [round(low, 4), round(high, 4)]}
            if control is not None and name != control:
                ctrl = sum(s[k][ok[k]] for s in per_face[control]) / len(per_face[control])
                diff, low, high = paired_bootstrap_ci(avg, ctrl)
                row[k].update(minus_control=round(diff, 4), ci95_control=[round(low, 4), round(high, 4)])
            if not ok[k].all():
                row[k]["faces"] = int(ok[k].sum())
        table[name] = row
    return table


def epoch_timing(recs: list[dict]) -> dict[str, float]:
    recs = [r for r in recs if "time_update_s" in r]
    if not recs:
        return {}
    mean = lambda k: round(sum(r.get(k, 0.0) for r in recs) / len(recs), 2)  # noqa: E731
    return {
        "epochs": len(recs),
        "cpu_s": mean("time_cpu_s"),
        "rollout_s": mean("time_rollout_s"),
        "reward_s": mean("time_reward_s"),
        "update_s": mean("time_update_s"),
        "update_sample_steps_per_s": mean("update_sample_steps_per_s"),
        "clip_fraction": round(sum(r.get("clip_fraction", 0.0) for r in recs) / len(recs), 3),
        "approx_kl": float(f"{sum(r.get('approx_kl', 0.0) for r in recs) / len(recs):.3g}"),
    }


def gain_curves(logs: dict[str, list[list[dict]]]) -> dict[str, list[tuple]]:
    """Per variant, per seed: (CPU minutes, held-out reward minus the run's own start)."""
    from lrpo.eval.stats import cpu_curve

    out = {}
    for name, seeds in logs.items():
        out[name] = []
        for recs in seeds:
            xs, ys = cpu_curve(recs)
            out[name].append((xs, ys - ys[0]) if len(ys) else (xs, ys))
    return out


def gains_at(curves: dict[str, list[tuple]], minutes: float, reference: str) -> dict[str, dict]:
    """Each variant's held-out gain at ``minutes`` of training CPU: mean and std over the seeds whose
    curve reaches it (``seeds``), per CPU-minute, minus the reference's, and as a ratio to the
    reference's gain (only when that is positive: a ratio to a loss or to nothing says nothing)."""
    import numpy as np

    from lrpo.eval.stats import curve_at, mean_std

    def clean(x, digits):
        return None if x is None or not math.isfinite(x) else round(x, digits)

    raw = {}
    for name, seeds in curves.items():
        values = [float(curve_at(xs, ys, minutes)) for xs, ys in seeds if len(xs)]
        values = [v for v in values if np.isfinite(v)]
        raw[name] = (*mean_std(values), len(values)) if values else (float("nan"), float("nan"), 0)
    ref = raw[reference][0]
    res = {}
    for name, (m, sd, n) in raw.items():
        res[name] = {"gain": clean(m, 5), "std": clean(sd, 5), "seeds": n,
                     "gain_per_cpu_min": clean(m / minutes, 6) if minutes > 0 else None,
                     "minus_reference": clean(m - ref, 5),
                     "ratio_to_reference": clean(m / ref, 2) if math.isfinite(ref) and ref > 0 else None}
    return res


def plot_curves(curves: dict[str, list[tuple]], path: Path, at: float, threads: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from lrpo.eval.stats import curve_at

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for name, seeds in curves.items():
        seeds = [(xs, ys) for xs, ys in seeds if len(xs) > 1]
        if not seeds:
            continue
        grid = np.linspace(0.0, min(xs[-1] for xs, _ in seeds), 60)
        vals = np.stack([curve_at(xs, ys, grid) for xs, ys in seeds])
        (line,) = ax.plot(grid, vals.mean(axis=0), label=f"{name} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
        ax.fill_between(grid, vals.min(axis=0), vals.max(axis=0), color=line.get_color(), alpha=0.18, linewidth=0)
    ax.axhline(0.0, color="#888", linewidth=0.8)
    ax.axvline(at, color="#bbb", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"CPU-minutes of training (rollout + reward + update; {threads} thread{'s' if threads > 1 else ''} per run)")
    ax.set_ylabel("held-out reward minus base")
    ax.set_title("LRPO on the CPU: held-out reward gain per compute (mean, min-max over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def heldout_grid(lq, base_out, outputs: dict[str, torch.Tensor], hq, diff_of: str | None) -> "np.ndarray":
    """LQ | base | each variant | GT | 8 x |diff_of - base| (what LRPO changed, amplified)."""
    from lrpo.data.images import to_uint8
    from lrpo.data.images import image_grid

    import numpy as np
    from PIL import Image, ImageDraw

    rows = []
    for i in range(len(lq)):
        row = [to_uint8(lq[i]), to_uint8(base_out[i]), *[to_uint8(o[i]) for o in outputs.values()], to_uint8(hq[i])]
        if diff_of is not None:
            row.append(to_uint8(((outputs[diff_of][i] - base_out[i]).abs() * 8).clamp(0, 1)))
        rows.append(row)
    grid = image_grid(rows)
    # a header naming each column (the images are 64 px: names are cut to fit)
    names = ["LQ", "base", *outputs, "GT", *(["8x change"] if diff_of is not None else [])]
    size = rows[0][0].shape[1]
    head = Image.new("RGB", (grid.shape[1], 14), "white")
    draw = ImageDraw.Draw(head)
    for j, name in enumerate(names):
        draw.text((2 + j * (size + 2) + 1, 1), name[: max(1, size // 6)], fill=(0, 0, 0))
    return np.concatenate([np.asarray(head), grid], axis=0)


def report_page(summary: dict, figures: dict[str, str]) -> str:
    import html

    from lrpo.eval.report import _CSS, figures_html

    def num(x, spec="%.4f"):
        return "&ndash;" if x is None else spec % x

    res = summary["results"]
    keys = list(res["base"])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    base_cells = "".join(f"<td>{num(res['base'][k]['mean'])}</td>" for k in keys)
    rows = [f"<tr><td class='name'>base</td>{base_cells}</tr>"]
    for name in summary["variants"]:
        cells = "".join(f"<td>{num(r['mean'])} &plusmn; {num(r['std'])}<br>{num(r['minus_base'], '%+.4f')} "
                        f"[{num(r['ci95'][0], '%+.4f')}, {num(r['ci95'][1], '%+.4f')}]</td>" for r in (res[name][k] for k in keys))
        rows.append(f"<tr><td class='name'>{html.escape(name)}</td>{cells}</tr>")
    at = summary["equal_cpu"]
    gains = "".join(f"<li>{html.escape(n)}: {num(g['gain'], '%+.4f')} &plusmn; {num(g['std'])} ({g['seeds']} seeds), "
                    f"{num(g['ratio_to_reference'], '%.2fx')} the reference's gain</li>" for n, g in at["gains"].items())
    budgets = ", ".join(f"{html.escape(n)} {m:g}" for n, m in summary["minutes_per_run"].items())
    figs, notes = figures_html(figures)
    return "\n".join([
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>LRPO on the CPU</title>",
        f"<style>{_CSS}</style></head><body><h1>LRPO on the CPU: variants at equal CPU time</h1>",
        f"<p class='meta'>{html.escape(summary['machine'])}, {summary['date']}; {summary['seeds']} seed(s) per variant, "
        f"CPU-minutes per run (budget, evaluations included): {budgets}; {summary['heldout_faces']} held-out faces; config "
        f"{html.escape(summary['config'])}</p>",
        "<h2>Held-out figures (DDIM eta 0, 50 steps)</h2><p class='meta'>mean &plusmn; std over seeds; minus base with a "
        "paired bootstrap 95 % interval over faces</p>",
        f"<table class='metrics'><tr><th>policy</th>{head}</tr>{''.join(rows)}</table>",
        f"<h2>Gain at {at['cpu_min']:.2f} CPU-minutes (all runs reached it)</h2><ul>{gains}</ul>",
        "<h2>Figures</h2>" + figs, *(f"<p class='meta'>{html.escape(n)}</p>" for n in notes), "</body></html>"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="pretrained policy (run folder or checkpoint)")
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "data" / "faces-hq"))
    ap.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights"), help="folder with the SFace/YuNet ONNX files")
    ap.add_argument("--minutes", type=float, default=25.0, help="CPU-minutes of training per run (each run's own CPU time)")
    ap.add_argument("--out", default="runs/bench_lrpo")
    ap.add_argument("--config", default=str(ROOT / "configs" / "lrpo-cpu.yaml"))
    ap.add_argument("--parallel", type=int, nargs="?", const=2, default=1, metavar="J",
                    help="train J runs side by side, one thread each (bare: 2, one per core here)")
    ap.add_argument("--eval-every", type=int, default=2, help="held-out evaluation every N epochs (the curve's points)")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the runs already in --out")
    ap.add_argument("--seeds", type=int, default=1, help="train each variant with seeds 0 .. N-1 (the table gives mean, std "
                    "and a paired bootstrap 95 %% interval over faces of variant minus base)")
    ap.add_argument("--variants", default="lrpo_reg=config,lrpo_noreg=0",
                    help="NAME=SPEC pairs: SPEC is 'config' (the config as it is), a number (reg_weight) or KEY=VALUE "
                    "overrides joined by '+', e.g. sel2=train_timesteps=random:2+update_mode=accumulate")
    ap.add_argument("--arms", choices=["standard"], default=None,
                    help=f"standard: the controls a claim about the RL needs, {STANDARD_ARMS!r}, with pg0 as --control "
                    "(replaces --variants; sft continues the base's supervised training at lr 1e-4, constant)")
    ap.add_argument("--reference", default=None, help="the variant the others' gains are divided by (default: the first)")
    ap.add_argument("--control", default=None, help="a variant every other one is also compared with, face by face (a "
                    "paired 95 %% interval of variant minus control): pg_weight=0 for a claim about the RL, an fp32 run "
                    "for a claim about bf16")
    args = ap.parse_args()
    os.environ.setdefault("LRPO_WEIGHTS", args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_every < 1 or args.seeds < 1 or args.parallel < 1:
        ap.error("--eval-every, --seeds and --parallel must be >= 1 (the curves are made of the held-out evaluations)")
    if args.arms == "standard":
        args.variants, args.control = STANDARD_ARMS, args.control or "pg0"
    try:
        runs = parse_variants(args.variants)
    except ValueError as e:
        ap.error(str(e))
    reference = args.reference or next(iter(runs))
    if reference not in runs:
        ap.error(f"--reference {reference!r}: not one of the variants ({', '.join(runs)})")
    if args.control is not None and args.control not in runs:
        ap.error(f"--control {args.control!r}: not one of the variants ({', '.join(runs)})")
    jobs = [(name, seed) for name in runs for seed in range(args.seeds)]
    run_dir = (lambda name, seed: out / name) if args.seeds == 1 else (lambda name, seed: out / name / f"seed_{seed}")
    if not args.skip_train:
        threads = 1 if args.parallel > 1 else torch.get_num_threads()
        settings = {job: run_settings(args.base, args.faces, args.minutes, runs[job[0]] + ([f"seed={job[1]}"] if args.seeds > 1 else []),
                                      args.config, args.eval_every, threads) for job in jobs}
        waiting, running = [j for j in jobs if not is_finished(run_dir(*j), settings[j])], []
        if len(waiting) < len(jobs):
            print(f"{len(jobs) - len(waiting)} run(s) finished earlier with the same settings: not trained again", file=sys.stderr)
        while waiting or running:  # a pool: a core that frees up takes the next run at once
            while waiting and len(running) < args.parallel:
                name, seed = waiting.pop(0)
                run_dir(name, seed).parent.mkdir(parents=True, exist_ok=True)
                extra = runs[name] + ([f"seed={seed}"] if args.seeds > 1 else [])
                running.append((name, seed, train(args.base, args.faces, run_dir(name, seed), args.minutes, extra, args.config,
                                                  threads, args.eval_every)))
            time.sleep(2)
            for job in [j for j in running if j[2].poll() is not None]:
                running.remove(job)
                if not job[2].returncode:
                    finished_marker(run_dir(job[0], job[1])).write_text(json.dumps(settings[job[:2]]))
                if job[2].returncode:
                    for _, _, p in running:
                        p.terminate()
                    print(f"{job[0]} seed {job[1]} failed; see {run_dir(job[0], job[1])}.log", file=sys.stderr)
                    return 1

    import numpy as np

    from lrpo.config import DEGRADATION_PRESETS, load_config
    from lrpo.rl.config import LRPOConfig
    from lrpo.data.datasets import FaceImageSet
    from lrpo.data.images import save_rgb
    from lrpo.degradation import degrade
    from lrpo.eval.landmarks import LandmarkDetector
    from lrpo.rewards import build_composite
    from lrpo.weights import MissingWeightsError

    cfg = load_config(LRPOConfig, args.config, [f"init_checkpoint={args.base}", f"data.hq={args.faces}"])
    faces = FaceImageSet(args.faces, resolution=cfg.data.resolution)
    _, val = faces.split(cfg.data.val_count)
    hq = torch.stack([val[i] for i in range(len(val))])
    lq, _ = degrade(hq, DEGRADATION_PRESETS["mild"], torch.Generator().manual_seed(0))
    reward = build_composite(cfg.reward.preset, device="cpu")
    try:
        detector = LandmarkDetector()
        landmarks = (detector, detector.detect_batch(hq))
    except MissingWeightsError as e:
        print(f"LMD left out: {e}", file=sys.stderr)
        landmarks = None
    base_faces, base_out = evaluate(Path(args.base), hq, lq, reward, landmarks)
    per_face, outputs = {}, {}
    for name in runs:
        per_face[name] = []
        for seed in range(args.seeds):
            row, images = evaluate(run_dir(name, seed), hq, lq, reward, landmarks)
            per_face[name].append(row)
            if seed == 0:
                outputs[name] = images
    table = seed_table(per_face, base_faces, args.control)

    from lrpo.eval.report import read_log  # tolerates a torn last line

    logs = {name: [read_log(run_dir(name, seed) / "log.jsonl") for seed in range(args.seeds)] for name in runs}
    curves = gain_curves(logs)
    ends = [float(xs[-1]) for seeds in curves.values() for xs, _ in seeds if len(xs) > 1]
    if not ends:
        print(f"no run in {out} logged held-out evaluations after training began: no curves, no gains at equal CPU", file=sys.stderr)
    # the compute every run reached (its last held-out evaluation), where the gains are compared
    common = min(ends) if ends else 0.0
    gains = gains_at(curves, common, reference) if ends else {}
    threads = 1 if args.parallel > 1 else torch.get_num_threads()
    if ends:
        plot_curves(curves, out / "reward_vs_cpu.png", common, threads)
    changed = next((n for n in runs if n != reference), reference)  # the first variant that is not the reference
    save_rgb(out / "heldout_grid.png", heldout_grid(lq, base_out, outputs, hq, changed))

    summary = {
        "bench": "lrpo_cpu",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "config": os.path.relpath(args.config, ROOT),
        "base": str(args.base),
        "minutes_per_run": {name: budget_of(extra, args.minutes) for name, extra in runs.items()},
        "clock": "cpu",
        "parallel": args.parallel,
        "seeds": args.seeds,
        "eval_every": args.eval_every,
        "reference": reference,
        "control": args.control,
        "variants": {name: extra for name, extra in runs.items()},
        "heldout_faces": len(hq),
        "results": table,
        "threads_per_run": threads,
        "equal_cpu": {"cpu_min": round(common, 3), "eval": "in-training held-out reward (DDIM eta 0, the training sampler's steps)",
                      "gains": gains},
        # each run's training CPU (the curves' x): the budget also counts evaluations and checkpoints
        "train_cpu_min": {name: [round(sum(r.get("time_cpu_s", 0.0) for r in recs) / 60, 2) for recs in logs[name]] for name in runs},
        "curves": {name: [{"cpu_min": [round(float(x), 3) for x in xs], "gain": [round(float(y), 5) for y in ys]} for xs, ys in seeds]
                   for name, seeds in curves.items()},
        "timing": {name: epoch_timing(logs[name][0]) for name in runs},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "curves"}, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    figures = {"held-out reward gain against CPU-minutes": str(out / "reward_vs_cpu.png"),
               f"held-out faces: LQ | base | variants (seed 0) | GT | 8x |{changed} - base|": str(out / "heldout_grid.png")}
    (out / "report.html").write_text(report_page(summary, figures), encoding="utf-8")
    print(f"wrote {out / 'summary.json'}, {out / 'reward_vs_cpu.png'}, {out / 'heldout_grid.png'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
