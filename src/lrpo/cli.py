"""The ``lrpo`` command line: quickstart, degrade, pretrain, restore, weights, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import fetch as fetching
from . import weights
from .config import ConfigError, load_config
from .degradation.arguments import add_degrade_arguments
from .eval.cli import add_evaluate_arguments
from .faults import install as install_faults
from .manifest import ascii_name
from .outputs import one_line, output_folder
from .runs import Interrupted

DESCRIPTION = """\
lrpo: blind face restoration improved with online reinforcement learning (LRPO).

Typical flow:
  lrpo quickstart                               # a complete small run on embedded faces (CPU)
  lrpo degrade HQ_DIR OUT_DIR --seed 0          # make a CelebA-Test-style paired set
  lrpo pretrain --config configs/pixel-64.yaml data.hq=FACES   # supervised base policy
  lrpo train --config configs/lrpo-cpu.yaml init_checkpoint=runs/pretrain data.hq=FACES  # LRPO
  lrpo restore PHOTOS OUT --checkpoint runs/lrpo               # restore every face of photos (--aligned: crops)
  lrpo demo --checkpoint runs/lrpo --runs runs                 # web page on 127.0.0.1:7860: restore, group, run
  lrpo evaluate --paired SET --method base=ckpt:runs/pretrain --method lrpo=ckpt:runs/lrpo --out EVAL
  lrpo weights list                             # model files lrpo knows and where to get them
"""


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="supervised diffusion training of the base policy",
        description="Train the pixel policy on online-degraded HQ faces. Every config key can be overridden as "
        "section.key=value, e.g. data.hq=../shared/data/faces-hq optim.lr=5e-4 steps=3000.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config: a path, or a shipped preset by name (pixel-64, cpu-quickstart, "
                   "pixel-512); defaults are used for missing keys")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume exactly from a checkpoint folder, or (no value) from out_dir's latest (a run stopped "
                   "before its first checkpoint starts again from the beginning)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an out_dir that holds another run: the files lrpo recorded writing there are "
                   "deleted first, and nothing else (a folder holding other files is refused, naming them)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue although settings differ from the checkpoint's (recorded in the log)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="LRPO: online RL of a pretrained policy with a composite face reward",
        description="Roll out groups of candidates per degraded face, score them with the composite reward, and "
        "update the policy with group-relative, noise-level-weighted PPO-clip plus the GT-guided likelihood "
        "term (SPEC sections 2-6). Override any key as key=value, e.g. init_checkpoint=runs/pretrain "
        "data.hq=FACES reward.preset=offline reg_weight=0. Multi-GPU: torchrun --nproc_per_node N -m lrpo.cli train ...",
    )
    p.add_argument("--config", help="YAML config: a path, or a shipped preset by name (lrpo-cpu, lrpo-reference, "
                   "lrpo-quickstart)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume exactly from an LRPO checkpoint, or (no value) from out_dir's latest (a run stopped "
                   "before its first checkpoint starts again from the beginning)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an out_dir that holds another run: the files lrpo recorded writing there are "
                   "deleted first, and nothing else (a folder holding other files is refused, naming them)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: continue although settings differ from the checkpoint's (recorded in the log)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate held-out faces every N epochs (0 = never)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="restore the faces of photos (or, with --aligned, aligned face crops)",
        description="Whole photos (default): detect every face (YuNet, `lrpo weights`), align it to the FFHQ "
        "template at the policy's resolution, restore it, paste it back through a feathered mask. Writes "
        "OUT/restored_imgs/<name>.png, cropped_faces/, restored_faces/, cmp/<name>.png (input | restored) and faces.jsonl "
        "(one line per detected face, with why one was left alone). Faces larger than the policy's resolution keep "
        "their own detail above it (--face-policy; docs/restoring-photos.md). Face j of a photo (largest first) uses seed SEED+j. --aligned: IN holds "
        "aligned face crops, restored into OUT/<name>.png at the input's size (cmp/: input | restored); image i (sorted) "
        "uses seed SEED+i. "
        "IN is an image, a folder or a text file listing images; unreadable files are named and skipped.",
    )
    p.add_argument("in_dir", metavar="IN", help="an image, a folder of images, or a text file listing image paths "
                   "(a name starting with '-': ./-NAME, or -- before IN)")
    p.add_argument("out_dir", metavar="OUT", help="output folder: new, empty, or one lrpo restore wrote before (with "
                   "--overwrite); lrpo records what it writes there and never replaces other files")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier lrpo restore in OUT (only the "
                   "files it recorded, unchanged, are deleted)")
    _hint_dash_names(p)
    src = p.add_mutually_exclusive_group()  # one of them is required: cmd_restore says where a model comes from
    src.add_argument("--checkpoint", help="checkpoint folder, a run folder (its latest checkpoint), or a policy YAML")
    src.add_argument("--policy", metavar="NAME", help="a published policy by name: 'lrpo-fidelity' or 'lrpo-perception' "
                     "(the LRPO release's models), 'sd21-diffbir' (DiffBIR v1 face on SD 2.1, the base); model files "
                     "from `lrpo weights`, see configs/policy-NAME.yaml")
    p.add_argument("--aligned", action="store_true", help="IN holds aligned face crops (no detection, no paste-back)")
    p.add_argument("--steps", type=int, default=None,
                   help="DDIM steps (default: the checkpoint's diffusion.sample_steps, 50 for lrpo pretrain runs)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM eta, 0 = deterministic (default: the checkpoint's diffusion.eta; 0.8 in policy-sd21-diffbir)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="faces per forward pass, across photos (default 8)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="network precision: auto = bf16 where the processor has bf16 units, else fp32 (default auto)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--face-policy", choices=["auto", "always", "never-larger"], default="auto",
                   help="faces larger than the policy's resolution: auto = restore at it and keep their own finer detail "
                   "(default); always = shrink, restore, enlarge back; never-larger = leave them alone")
    photo = p.add_argument_group("whole photos (not with --aligned)")
    photo.add_argument("--min-face-size", type=float, default=None, metavar="PX",
                       help="leave faces alone whose eyes are fewer than PX pixels apart in the input (default 8)")
    photo.add_argument("--only-center-face", action="store_true", help="restore only the face nearest the photo's centre")
    photo.add_argument("--max-faces", type=int, default=None, metavar="N", help="restore at most the N largest faces")
    photo.add_argument("-s", "--upscale", type=float, default=None, metavar="S",
                       help="output scale of the whole photo (default 1); the background is enlarged by Lanczos")
    photo.add_argument("--bg-upsampler", metavar="MODULE:FUNC", default=None,
                       help="background upsampler instead of Lanczos: FUNC(rgb_uint8, scale) -> rgb_uint8, from a module "
                       "or a file.py")
    photo.add_argument("--color-match", action="store_true", help="match each restored face's colour to its input")
    photo.add_argument("--draw-box", action="store_true", help="outline detected faces in restored_imgs (green: restored)")
    photo.add_argument("--mask", choices=["ellipse", "square"], default=None, help="paste mask shape (default ellipse)")
    photo.add_argument("--det-threshold", type=float, default=None, metavar="T",
                       help="YuNet score a face needs to be restored (default 0.8); lower-scoring faces from 0.5 (or T) up "
                       "are listed in faces.jsonl as doubtful")
    photo.add_argument("--detector", metavar="PATH", default=None,
                       help="YuNet ONNX file or its folder (default: registry 'yunet' via $LRPO_WEIGHTS / the cache)")


DASH_HINT = "a file name starting with '-' is read as an option: write it as ./-NAME, or put -- before the file names"


def _hint_dash_names(parser: argparse.ArgumentParser) -> None:
    """A file name starting with '-' (``lrpo restore -rf.png OUT``) is taken for an option, and argparse
    then says a positional is missing: its message says why and what to type."""
    plain_error = parser.error

    def error(message: str):
        if "arguments are required" in message:
            message = f"{message} ({DASH_HINT})"
        plain_error(message)

    parser.error = error


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, locate, verify or fetch known model files",
                       description="Model files are looked up in $LRPO_WEIGHTS (folders), the cache "
                       "($LRPO_CACHE, default ~/.cache/lrpo) and, for files on the Hugging Face Hub, the Hub cache "
                       "($HF_HUB_CACHE). Nothing is downloaded except by 'fetch'.")
    wsub = p.add_subparsers(dest="weights_cmd", required=True)
    wsub.add_parser("list", help="every known file, its licence, how it is verified and whether it is found locally")
    for name, text in (("path", "print the local path of a file"), ("verify", "check a file's sha256")):
        q = wsub.add_parser(name, help=text)
        q.add_argument("name")
        q.add_argument("--path", help="explicit file or folder to check instead of the search folders")
    q = wsub.add_parser("fetch", help="download files (Hub files through huggingface_hub) and verify them",
                        description="Hub-hosted files go to the Hub cache through huggingface_hub (progress bar, "
                        "retries, HF_ENDPOINT, HF_HUB_OFFLINE, HF_TOKEN); others stream into the lrpo cache and "
                        "resume when run again. A wrong sha256, size or file type is refused (exit 2).")
    q.add_argument("name", nargs="*", help="registry names (see `lrpo weights list`)")
    q.add_argument("--all-for", choices=["paper", "restore"], default=None,
                   help="every file of a set: 'paper' (the paper's run), 'restore' (restoring with the LRPO model); "
                   "files already in $LRPO_WEIGHTS are not fetched")
    q.add_argument("--no-progress", action="store_true")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a local web page: restore photos, score a group of candidates, read a run's curves",
        description="Serve the demo page (pip install \"lrpo[demo]\"). Tabs: Restore (a photo or an aligned face), "
        "Group (G candidates of one face with every reward term, the total and the advantage), Run (curves and sample "
        "grids of the runs under --runs, read-only). A model selector offers the --checkpoint, every run under --runs with a "
        "checkpoint and the published policies whose model files are here. Listens on loopback unless --host says "
        "otherwise; one job at a time.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder, a run folder (its latest checkpoint), or a policy YAML")
    src.add_argument("--policy", metavar="NAME", help="a published policy by name: 'lrpo-fidelity', 'lrpo-perception' or "
                     "'sd21-diffbir' (model files from `lrpo weights`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                   "0.0.0.0 opens the demo to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one and prints it)")
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="a Host name the demo answers to besides localhost, the loopback addresses and --host itself "
                   "(any IP address for 0.0.0.0); repeatable. Other names are refused (DNS rebinding)")
    p.add_argument("--runs", metavar="DIR", default=None,
                   help="training out_dir (or a folder of them) the Run tab may read and whose checkpoints the model selector "
                   "offers (default: the --checkpoint run folder)")
    p.add_argument("--detector", metavar="PATH", default=None,
                   help="YuNet ONNX file or its folder (default: registry 'yunet' via $LRPO_WEIGHTS / the cache)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="network precision: auto = bf16 where the processor has bf16 units, else fp32 (default auto)")
    p.add_argument("--compile", choices=["auto", "off", "on"], default="auto",
                   help="the one-face sampling forward through torch.compile (about a third faster on a CPU; compiling "
                   "takes about half a minute): auto = in the background while the demo serves eager, where a C++ "
                   "compiler is found; on = before serving; off = never (default auto)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=36.0, help="largest upload in megapixels (default 36)")
    p.add_argument("--queue", type=int, default=4, help="jobs that may wait behind the running one (default 4)")


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        help="a complete small run on embedded faces (CPU, a few minutes)",
        description="On embedded public-domain faces (or --data DIR): pretrain a small pixel policy, improve it "
        "with LRPO, evaluate base vs LRPO on held-out degraded faces and write a self-contained report.html "
        "(metrics, reward curves, before/after grids). Prints the report's path. 200 pretraining steps and 4 LRPO "
        "epochs (the CPU preset's update): about 3 minutes on 2 CPU cores with bf16 units (precision auto), longer in fp32.",
    )
    p.add_argument("--data", help="folder of aligned HQ faces to use instead of the embedded ones")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--minutes", type=float, default=3.0, help="pretraining time cap in minutes; it stops earlier after its 200 steps (default 3)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="network precision of every stage: auto = bf16 where the processor has bf16 units (default auto)")
    p.add_argument("--rl-minutes", type=float, default=3.0, help="LRPO time cap in minutes; it stops earlier after its 4 epochs (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start over in an --out folder that holds an earlier quickstart")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrpo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_quickstart(sub)
    _hint_dash_names(add_degrade_arguments(sub.add_parser(
        "degrade",
        help="make a CelebA-Test-style paired set (hq/, lq/, params.jsonl)",
        description="Degrade every HQ face with the BFR pipeline (blur, downsample, noise, JPEG, resize back; "
        "SPEC section 7). Byte-for-byte reproducible for the same seed.",
    )))
    add_evaluate_arguments(sub.add_parser(
        "evaluate",
        help="score methods side by side: metrics.json, per_image.csv, report.html",
        description="Score checkpoints of ours and folders of other methods' outputs on a paired set (from "
        "lrpo degrade) or on real LQ faces; writes metrics.json, per_image.csv and a self-contained report.html.",
    ))
    _add_pretrain(sub)
    _add_train(sub)
    _add_restore(sub)
    _add_weights(sub)
    _add_demo(sub)
    return parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretrain.trainer import Pretrainer, load_pretrain_config  # start-up time: lrpo --help stays fast

    cfg = load_pretrain_config(args.config, args.overrides)
    if not cfg.data.hq:
        raise ConfigError("data.hq is empty: pass data.hq=FOLDER (aligned HQ faces) or set it in the config")
    resume, overwrite = _resume_target(args, cfg.out_dir)
    result = Pretrainer(cfg, resume=resume, progress=not args.no_progress, overwrite=overwrite,
                        allow_changes=args.allow_changes).run()
    if result.get("nothing_to_do"):
        print(f"lrpo pretrain: {cfg.out_dir} is complete ({result['step']} of {cfg.steps} steps); raise steps=N to continue")
    print(json.dumps(result, indent=1))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import shutdown  # start-up time: lrpo --help stays fast
    from .rl.config import LRPOConfig  # start-up time: lrpo --help stays fast
    from .rl.trainer import LRPOTrainer  # start-up time: lrpo --help stays fast

    cfg = load_config(LRPOConfig, args.config, args.overrides)
    if not cfg.data.hq:
        raise ConfigError("data.hq is empty: pass data.hq=FOLDER (aligned HQ faces) or set it in the config")
    resume, overwrite = _resume_target(args, cfg.out_dir)
    if resume is None and _elastic_restart():  # torchrun --max-restarts brought the job back
        if _has_checkpoint(cfg.out_dir):
            resume = cfg.out_dir  # continue from the last checkpoint
        else:
            overwrite = True  # it failed before its first checkpoint: its own log is all there is
    trainer = LRPOTrainer(cfg, resume=resume, progress=not args.no_progress, overwrite=overwrite,
                          allow_changes=args.allow_changes)
    started = trainer.epoch
    trainer.run(eval_every=args.eval_every)
    shutdown(trainer.ctx)  # (not after a failure: the others may be inside a collective; the launcher stops them)
    print("\n".join(train_summary(trainer, started)))
    skipped = trainer.train_set.skipped  # data.skip_bad: name what was left out, as lrpo pretrain does
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):\n" + "\n".join(f"  {e}" for e in skipped))
    return 0


def _elastic_restart() -> bool:
    """True in a job that torchrun restarted after a failure (it counts restarts in this variable)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def _has_checkpoint(out_dir: str) -> bool:
    """True when out_dir holds a checkpoint, intact or not (a damaged one is reported on resume, never cleared)."""
    from . import checkpoint as ckpt_io  # start-up time: lrpo --help stays fast

    run = Path(out_dir)
    return bool(ckpt_io.list_checkpoints(run)) or (run / "latest").is_file() or (run / "model.safetensors").is_file()


def _resume_target(args: argparse.Namespace, out_dir: str) -> tuple[str | None, bool]:
    """(resume, overwrite): a bare --resume continues out_dir's latest checkpoint; a run killed before
    its first checkpoint left only its config and log there, so it starts again from the beginning.
    (An empty or missing out_dir holds no run: find_checkpoint says there is nothing to resume.)"""
    run = Path(out_dir)
    if args.resume != "auto":
        return args.resume, args.overwrite
    if _has_checkpoint(out_dir) or not any((run / name).is_file() for name in ("config.yaml", "log.jsonl")):
        return out_dir, args.overwrite
    print(f"lrpo {args.cmd}: {out_dir} holds no checkpoint yet; starting the run from the beginning", file=sys.stderr)
    return None, True


def train_summary(trainer, started: int) -> list[str]:
    """The few lines `lrpo train` ends with: where the model is, what ran, held-out figures, guards."""
    from . import checkpoint as ckpt_io  # start-up time: lrpo --help stays fast

    cfg, hist = trainer.cfg, trainer.history
    out = Path(cfg.out_dir)
    if started >= cfg.epochs:
        return [f"lrpo train: {out} is complete ({started} of {cfg.epochs} epochs); nothing to do (raise epochs=N to continue)"]
    ran = trainer.epoch - started
    lines = [f"lrpo train: {ran} epoch(s) run, now at epoch {trainer.epoch} of {cfg.epochs}"
             + (f" (resumed from epoch {started})" if started else "")]
    try:
        lines.append(f"  model: {ckpt_io.find_checkpoint(out)} (what `latest` names; lrpo restore --checkpoint {out})")
    except ckpt_io.CheckpointError:
        pass
    evals = [r for r in hist if "eval_reward" in r]
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        keys = [k for k in ("eval_reward", "eval_psnr", "eval_ssim") if k in first and k in last]
        lines.append(f"  held-out (epoch {first['epoch']} -> {last['epoch']}): "
                     + ", ".join(f"{k[5:]} {first[k]:.4g} -> {last[k]:.4g}" for k in keys))
    guard = [r for r in hist if r.get("guard_violations")]
    back = [r for r in hist if "rolled_back_to_epoch" in r]
    if guard:
        lines.append(f"  guard: {len(guard)} violation(s), first at epoch {guard[0]['epoch']}: {'; '.join(guard[0]['guard_violations'])}"
                     + (f"; rolled back to epoch {back[-1]['rolled_back_to_epoch']}" if back else ""))
    lines.append(f"  numerics: {trainer.numerics_note()}")
    lines.append(f"  log: {out / 'log.jsonl'}")
    return lines


NO_MODEL = ("lrpo restore needs a model: --checkpoint RUN_OR_CHECKPOINT (`lrpo quickstart` makes one: --checkpoint "
            "runs/quickstart/lrpo) or --policy NAME (a published model, e.g. sd21-diffbir; its files: `lrpo weights list`)")


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        return _restore(args)
    except (OSError, ValueError) as e:  # names in the message are the user's: one escaped line
        raise ConfigError(one_line(e)) from None


def _restore(args: argparse.Namespace) -> int:
    from .data.images import input_paths  # start-up time: lrpo --help stays fast
    from .inference.restorer import Restorer, restore_folder  # start-up time: lrpo --help stays fast

    if args.batch_size < 1 or (args.steps is not None and args.steps < 1) or (args.eta is not None and args.eta < 0):
        raise ConfigError("--batch-size and --steps must be >= 1 and --eta >= 0")
    photo_flags = {"--min-face-size": args.min_face_size, "--only-center-face": args.only_center_face or None,
                   "--max-faces": args.max_faces, "--upscale": args.upscale, "--bg-upsampler": args.bg_upsampler,
                   "--color-match": args.color_match or None, "--draw-box": args.draw_box or None, "--mask": args.mask,
                   "--det-threshold": args.det_threshold, "--detector": args.detector}
    if args.aligned and any(v is not None for v in photo_flags.values()):
        given = [k for k, v in photo_flags.items() if v is not None]
        raise ConfigError(f"{', '.join(given)} apply to whole photos, not to --aligned crops")
    if not args.checkpoint and not args.policy:
        raise ConfigError(NO_MODEL)
    source = _policy_source(args.policy) if args.policy else args.checkpoint
    out = output_folder(args.in_dir, input_paths(args.in_dir), args.out_dir, args.overwrite)  # checked before the model loads
    if args.aligned:
        restorer = Restorer.from_checkpoint(source, args.steps, args.eta, args.device, args.precision, ema=not args.no_ema)
        summary = restore_folder(restorer, args.in_dir, out, args.batch_size, args.seed, progress=not args.no_progress,
                                 face_policy=args.face_policy)
        out_name = ascii_name(str(args.out_dir))
        print(f"restored {len(summary.written)} image(s) into {out_name}; look at {out_name}/cmp (input | restored)"
              if summary.written else f"no image was written to {out_name}")
        if summary.larger:
            how = {"auto": "restored at it, their own detail above it kept", "always": "shrunk to it, restored and enlarged back",
                   "never-larger": "copied as they are"}[args.face_policy]
            print(f"note: {summary.larger} input(s) are larger than the policy's {restorer.resolution} px: {how} "
                  f"(--face-policy {args.face_policy})")
        if summary.not_square:
            print(f"note: {len(summary.not_square)} input(s) are not square (first: {ascii_name(summary.not_square[0])}); aligned "
                  "crops are. Without --aligned, the faces of whole photos are detected, aligned and pasted back")
        _print_failed(summary.failed, summary.unwritten)
        return 1 if summary.failed or summary.unwritten else 0  # skipped files are a failure a script must see
    from .inference.detect import RESTORE_THRESHOLD, SCORE_THRESHOLD, FaceDetector  # start-up time: lrpo --help stays fast
    from .inference.photo import MIN_FACE_SIZE, PhotoOptions, load_upsampler, restore_photos, summary_lines  # start-up time: lrpo --help stays fast

    options = PhotoOptions(
        min_face_size=MIN_FACE_SIZE if args.min_face_size is None else args.min_face_size, only_center_face=args.only_center_face,
        max_faces=args.max_faces, upscale=1.0 if args.upscale is None else args.upscale, color_match=args.color_match,
        draw_box=args.draw_box, mask=args.mask or "ellipse", face_policy=args.face_policy,
        det_threshold=RESTORE_THRESHOLD if args.det_threshold is None else args.det_threshold,
        background_upsampler=load_upsampler(args.bg_upsampler) if args.bg_upsampler else None,
    ).validate()
    detector = FaceDetector(args.detector, min(SCORE_THRESHOLD, options.det_threshold))  # doubtful candidates are listed too
    restorer = Restorer.from_checkpoint(source, args.steps, args.eta, args.device, args.precision, ema=not args.no_ema)
    restorer.detector = detector
    summary = restore_photos(restorer, args.in_dir, out, options, args.batch_size, args.seed, progress=not args.no_progress)
    print("\n".join(summary_lines(summary, args.out_dir)))
    _print_failed(summary.failed, summary.unwritten)
    return 1 if summary.failed or summary.unwritten else 0


def _print_failed(failed, unwritten=()) -> None:
    if failed:
        print(f"{len(failed)} file(s) could not be read and were skipped (exit code 1):")
        for e in failed:
            print(f"  {ascii_name(str(e))}")
    if unwritten:
        print(f"{len(unwritten)} output(s) could not be written; the other inputs went on (exit code 1):")
        for line in unwritten:
            print(f"  {line}")


def cmd_weights(args: argparse.Namespace) -> int:
    if args.weights_cmd == "list":
        _list_weights()
        return 0
    if args.weights_cmd == "path":
        print(weights.shown(weights.resolve(args.name, args.path)))
        return 0
    if args.weights_cmd == "verify":
        found = weights.verify(args.name, args.path)
        print(found.message())
        return 1 if found.status == "mismatch" else 0
    if bool(args.name) == bool(args.all_for):
        raise ValueError("lrpo weights fetch takes registry names or --all-for paper|restore (one of the two)")
    progress = not args.no_progress
    if args.all_for:
        problems = fetching.fetch_set(args.all_for, progress=progress)
    else:
        problems = []
        for name in args.name:
            try:
                print(weights.shown(fetching.fetch(name, progress=progress)))
            except (weights.FetchError, weights.MissingWeightsError) as e:
                problems.append(str(e))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} file(s) not fetched", file=sys.stderr)
    return 2 if problems else 0


def _list_weights() -> None:
    print(f"search folders: {', '.join(weights.shown(d) for d in weights.search_dirs())}; Hub cache: "
          f"{weights.shown(weights.hub_cache_dir())}")
    trusted = weights.read_trusted()
    for w in sorted(weights.load_catalog().values(), key=lambda w: w.name):
        try:
            found = weights.resolve(w.name)
            where = "shipped with lrpo" if found == weights.shipped_path(w) else weights.shown(found)
        except weights.MissingWeightsError:
            where = "missing"
        pin = "sha256 pinned" if w.sha256 else f"sha256 {w.sha256_prefix}..." if w.sha256_prefix else "sha256 unknown"
        print(f"{w.name:22s} {w.filename:45s} {w.licence:14s} {pin:18s} {where}\n{'':22s} {w.description}\n"
              f"{'':22s} {w.source}")
        if not w.sha256:
            first = trusted.get(w.name, {}).get("sha256")
            print(f"{'':22s} sha256 not pinned: {w.unpinned_reason}; "
                  + (f"first verified download recorded: {first}" if first else "the first verified download's sha256 "
                     "will be recorded and later files compared with it (trust on first use)"))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # start-up time: lrpo --help stays fast
    from .demo.safety import HostAllowList, UploadLimits  # start-up time: lrpo --help stays fast

    if not 0 <= args.port <= 65535 or args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.queue < 0:
        raise ConfigError("--port must be in [0, 65535], --max-upload-mb and --max-megapixels > 0, --queue >= 0")
    HostAllowList.for_bind(args.host, args.allow_host)  # a bad --allow-host fails before the model loads
    source = _policy_source(args.policy) if args.policy else args.checkpoint
    runs = args.runs
    if runs is None and args.checkpoint and Path(args.checkpoint).is_dir():
        ckpt = Path(args.checkpoint)
        runs = ckpt.parent if (ckpt / "model.safetensors").is_file() else ckpt  # a checkpoint's run folder
    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6))
    run_demo(source, args.host, args.port, allow_hosts=tuple(args.allow_host), device=args.device, precision=args.precision,
             detector_path=args.detector, runs_root=runs, limits=limits, max_waiting=args.queue, compile=args.compile)
    return 0


def _policy_source(name: str) -> Path:
    from .policies.published import published_policy_config  # start-up time: lrpo --help stays fast

    return published_policy_config(name)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart  # start-up time: lrpo --help stays fast

    return run_quickstart(args)


def _reclaim_override_from_resume(args: argparse.Namespace) -> None:
    """``--resume key=value``: argparse hands the override to the optional flag as its value; the user
    meant a bare ``--resume`` (the run's latest) followed by an override."""
    resume = getattr(args, "resume", None)
    if resume and resume != "auto" and "=" in resume and not Path(resume).exists() and hasattr(args, "overrides"):
        args.overrides.insert(0, resume)
        args.resume = "auto"


def _escape_unencodable_output() -> None:
    """File names that are not UTF-8 (undecodable bytes, held as surrogates) are printed with
    backslash escapes instead of failing the whole command in the middle of its summary."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _escape_unencodable_output()
    parser = build_parser()
    # key=value overrides may also follow the options (`lrpo train --config X --no-progress lr=1e-5`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            named_files = [e for e in extra if e.startswith("-") and Path(e).exists()]  # lrpo restore in -rf.png ...
            parser.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({DASH_HINT})" if named_files else ""))
    _reclaim_override_from_resume(args)
    handlers = {
        "pretrain": cmd_pretrain,
        "train": cmd_train,
        "restore": cmd_restore,
        "weights": cmd_weights,
        "quickstart": cmd_quickstart,
        "demo": cmd_demo,
    }
    try:
        install_faults(args.cmd)  # inert unless LRPO_FAULT_AT / LRPO_FAULT_LOG are set (bench/fault_sweep.py)
        if args.cmd == "degrade":
            from .degradation.paired import run_degrade  # start-up time: lrpo --help stays fast

            return run_degrade(args)
        if args.cmd == "evaluate":
            from .eval.cli import run_evaluate  # start-up time: lrpo --help stays fast

            return run_evaluate(args)
        return handlers[args.cmd](args)
    except (ConfigError, FileNotFoundError, ValueError, KeyError, RuntimeError, FloatingPointError) as e:
        # user-facing errors: one clear line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"lrpo {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"lrpo {args.cmd}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"lrpo {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
