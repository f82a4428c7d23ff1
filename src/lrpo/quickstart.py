"""``lrpo quickstart``: a complete small run on a CPU, with embedded faces or the user's own.

Embedded default data: the face of scikit-image's ``astronaut`` photograph (NASA, public domain),
cropped FFHQ-style and augmented (shifts, zoom, small rotations, mirror, exposure), so the command
runs on a fresh machine with no downloads. ``--data DIR`` uses a folder of aligned faces instead.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from . import manifest, weights
from .config import DEGRADATION_PRESETS, SHIPPED_CONFIG_DIR, PretrainConfig, load_config
from .data.datasets import FaceImageSet
from .data.images import list_images
from .data.samples import embedded_faces
from .degradation.paired import check_unique_stems, make_paired_set
from .eval.evaluate import EvalOptions, MethodSpec, evaluate_paired
from .pretrain.trainer import Pretrainer
from .rewards.composite import PRESETS
from .rl.config import LRPOConfig
from .rl.trainer import LRPOTrainer
from .runs import Interrupted, RunFolderError, claim_run_dir, clear_run_dir


# what the base -> lrpo rows do not show: which of LRPO's two terms made the change
CONTROL_NOTE = ("lrpo - base is the whole method (policy-gradient + GT-guided term), not the RL alone: at this scale the "
                "GT-guided term accounts for the gain (docs/results-cpu.md, 'Does the RL add?'); the control without the "
                "policy-gradient term (pg_weight=0) was not run here; bench/lrpo_cpu.py --arms standard runs it")


EMBEDDED_NOTE = ("the embedded held-out faces are crops of the same public-domain photograph as the training faces "
                 "(same person): this shows the pipeline works, not that it generalises; use --data FOLDER for a real split")


# What the reward's terms are called in the quickstart's output (keys of rewards.composite.PRESETS).
REWARD_TERM_WORDS = {"dwt": "DT-CWT fidelity", "ssim": "SSIM", "identity": "SFace identity", "sharpness": "sharpness",
                     "ms_ssim": "MS-SSIM", "psnr": "PSNR", "lpips": "1 - LPIPS", "clipiqa": "CLIP-IQA",
                     "face_reward": "face reward"}
SFACE_NAMES = ("sface-int8", "sface")  # the identity term takes either file


def _found(name: str) -> bool:
    try:
        weights.resolve(name)
        return True
    except weights.MissingWeightsError:
        return False


def offline_reward_preset() -> str:
    """``offline`` when an SFace identity model is found (weights registry), else ``no_weights``."""
    return "offline" if any(_found(n) for n in SFACE_NAMES) else "no_weights"


def reward_in_words(preset: str) -> str:
    """``'offline' reward (0.3 DT-CWT fidelity + 0.25 SSIM + ...)``, from the preset's weights."""
    terms = " + ".join(f"{spec['weight']:g} {REWARD_TERM_WORDS.get(k, k)}" for k, spec in PRESETS[preset].items())
    return f"'{preset}' reward ({terms})"


def missing_weights_note() -> str | None:
    """One line naming the SFace/YuNet files that are not found, what they add and how to get them."""
    missing = []
    if not any(_found(n) for n in SFACE_NAMES):
        missing.append(("sface-int8", "SFace (face_recognition_sface_2021dec_int8bq.onnx or "
                        "face_recognition_sface_2021dec.onnx)", "the identity reward term and ID columns"))
    if not _found("yunet"):
        missing.append(("yunet", "YuNet (face_detection_yunet_2023mar.onnx)", "the landmark (LMD) column"))
    if not missing:
        return None
    files = " and ".join(m[1] for m in missing)
    adds = " and ".join(m[2] for m in missing)
    names = " ".join(m[0] for m in missing)
    return (f"      not found: {files}, which add {adds}; get them with `lrpo weights fetch {names}` "
            "or put the files in a folder on $LRPO_WEIGHTS (see `lrpo weights list`)")


def claim_quickstart(out: Path, data: str | None, overwrite: bool) -> list[Path]:
    """Refuse ``out`` when quickstart would clear or write over a file lrpo did not write there; the
    run folders ``--overwrite`` must clear (after this returns, nothing is deleted yet)."""
    stale = []
    for part in ("pretrain", "lrpo"):  # before anything runs: both stages would refuse the folder later
        try:
            if claim_run_dir(out / part, resume=False, overwrite=overwrite):
                stale.append(out / part)
        except RunFolderError as e:
            if overwrite or e.files:
                raise
            raise ValueError(f"{out} holds an earlier quickstart ({out / part} has checkpoints); "
                             f"use --overwrite to start over there, or another --out") from None
    if not data:
        try:
            manifest.claim_folder(out / "embedded_faces", what="--out")
        except manifest.ForeignFilesError as e:
            raise ValueError(str(e)) from None
    for name in manifest.unrecorded(out, ["heldout.txt"]):
        raise ValueError(f"{out / name} was not written by lrpo quickstart, which would replace it; move it elsewhere "
                         f"or choose another --out")
    return stale


def _usable_faces(source: Path):
    """The faces in ``source``: at least 8 readable ones, no two with the same stem."""
    faces = FaceImageSet(source, resolution=None, skip_bad=True)  # fails early when nothing is usable
    if len(faces) < 8:
        raise ValueError(f"{source}: only {len(faces)} usable face image(s); quickstart needs at least 8")
    check_unique_stems(faces.paths)  # outputs are named by stem: a.jpg and a.png would collide at evaluation
    return faces


def run_quickstart(args: argparse.Namespace) -> int:
    """Pretrain -> LRPO -> evaluate base vs LRPO -> report.html, on a CPU in a few minutes."""
    try:
        return _quickstart(args)
    except Interrupted as e:  # quickstart has no --resume: its stages are minutes long, start over
        raise Interrupted(f"interrupted ({e.checkpoint} kept); run `lrpo quickstart --overwrite` to start over",
                          e.checkpoint) from None


def _quickstart(args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.time()
    source, faces = _faces(args, out)
    val_count = max(4, min(16, len(faces) // 5))
    precision = getattr(args, "precision", "auto")
    common = [f"data.hq={source}", f"data.val_count={val_count}", "data.skip_bad=true", f"seed={args.seed}", f"precision={precision}"]
    pre_cfg = _pretrain(args, out, common)
    preset = _lrpo(args, out, common)

    print("[4/5] degrading the held-out faces (mild preset, seed 0)")
    val_files = sorted(faces.paths)[:val_count]  # the faces both trainings held out
    val_list = out / "heldout.txt"
    val_list.write_text("".join(f"{p.resolve()}\n" for p in val_files))
    manifest.record(out, [val_list])
    pairs = out / "heldout_pairs"
    make_paired_set(val_list, pairs, size=pre_cfg.data.resolution, seed=0, cfg=DEGRADATION_PRESETS["mild"], overwrite=True, progress=False)

    print("[5/5] evaluating base vs LRPO")
    result = evaluate_paired(
        pairs,
        [MethodSpec("base", "checkpoint", str(out / "pretrain"), precision=precision),
         MethodSpec("lrpo", "checkpoint", str(out / "lrpo"), precision=precision)],
        out / "eval",
        EvalOptions(device=pre_cfg.device, reward_preset=preset, logs={"lrpo": str(out / "lrpo" / "log.jsonl")},
                    progress=not args.no_progress, notes=[] if args.data else [EMBEDDED_NOTE]),
    )
    print(f"done in {math.ceil(time.time() - t0)} s")
    _print_summary(args, result)
    return 0


def _faces(args: argparse.Namespace, out: Path) -> tuple[Path, FaceImageSet]:
    """Step 1: the faces to train on (``--data``, or the embedded ones written under ``out``)."""
    # before anything is written or deleted: every folder quickstart would clear or write over is
    # lrpo's (a refusal names the user's files); the old runs are cleared once the faces are good
    stale = claim_quickstart(out, args.data, getattr(args, "overwrite", False))
    if args.data:
        source = Path(args.data)
        print(f"[1/5] using faces from {source}")
        faces = _usable_faces(source)  # before the old runs are cleared
    for run in stale:
        clear_run_dir(run)
    if not args.data:
        source = out / "embedded_faces"
        manifest.record(source, embedded_faces(source, seed=args.seed))
        print(f"[1/5] wrote {len(list_images(source))} embedded public-domain faces to {source}")
        faces = _usable_faces(source)
    return source, faces


def _pretrain(args: argparse.Namespace, out: Path, common: list[str]) -> PretrainConfig:
    """Step 2: the supervised base policy, in out/pretrain."""
    pre_cfg: PretrainConfig = load_config(
        PretrainConfig, SHIPPED_CONFIG_DIR / "cpu-quickstart.yaml",
        [*common, f"out_dir={out / 'pretrain'}", f"time_budget_min={args.minutes}"],
    )
    print(f"[2/5] pretraining a {pre_cfg.policy.resolution}px pixel policy ({pre_cfg.steps} steps, at most {args.minutes:g} min)")
    Pretrainer(pre_cfg, progress=not args.no_progress).run()
    return pre_cfg


def _lrpo(args: argparse.Namespace, out: Path, common: list[str]) -> str:
    """Step 3: LRPO from the base policy, in out/lrpo; returns the reward preset it used."""
    preset = offline_reward_preset()
    rl_cfg: LRPOConfig = load_config(
        LRPOConfig, SHIPPED_CONFIG_DIR / "lrpo-quickstart.yaml",
        [*common, f"init_checkpoint={out / 'pretrain'}", f"out_dir={out / 'lrpo'}", f"time_budget_min={args.rl_minutes}",
         f"reward.preset={preset}"],
    )
    print(f"[3/5] LRPO with the {reward_in_words(preset)}, {rl_cfg.epochs} epochs, at most {args.rl_minutes:g} min")
    note = missing_weights_note()
    if note:
        print(note)
    LRPOTrainer(rl_cfg, progress=not args.no_progress).run(eval_every=1)
    return preset


def _print_summary(args: argparse.Namespace, result) -> None:
    """The held-out figures of input, base and LRPO, and where the report is."""
    summary = result.summary
    if not args.data:
        print(f"  note: {EMBEDDED_NOTE}")
    for method in ("input", "base", "lrpo"):
        row = summary.get(method) or {}
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in ("reward/total", "psnr", "ssim", "id_cos") if isinstance(row.get(k), float))
        print(f"  {method:6s} {shown}")
    print(f"  ({CONTROL_NOTE})")
    print(f"report: {result.report_path}")
