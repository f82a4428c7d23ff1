"""The published models side by side (issue 24 item 6): lrpo-fidelity, lrpo-perception and the
base they start from, sd21-diffbir, on the field's test sets by name, in one command.

    python bench/published_models.py --set celeba-test=DIR --set lfw-test=DIR --table --out runs/published
    python bench/published_models.py --set celeba-test=DIR --out runs/published -- --lpips-vgg V --lpips-lin L --inception I
    python bench/published_models.py --tiny --out /tmp/published     # stand-ins, synthetic sets, 64 px (the tests)

Every model samples as the release's inference does (configs/policy-NAME.yaml: 50 DDIM steps, eta 0.8,
cfg 1.0, the empty prompt, SwinIR stage 1, the wavelet colour fix), image i with seed SEED + i, in
--precision (auto: bf16 where the device has bf16 units, as the release). It runs

    lrpo evaluate --set NAME=DIR ... --method M=policy:M#steps=50,eta=0.8 (for each model M) [--table] --out OUT

(arguments after `--` are passed on to lrpo evaluate). The model files are checked first: missing
ones are named in one line with the command that fetches them, before anything runs.

--tiny writes tiny stand-ins of the five files (lrpo.standins) and two synthetic sets (a paired
"celeba-test" and an LQ-only "lfw-test") into a temporary folder outside the repository, and runs
the same command on copies of the shipped policy YAMLs at the stand-ins' 64 px with 2 steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

from lrpo import weights
from lrpo.cli import main as lrpo_main
from lrpo.policies.published import published_policy_config

MODELS = ("lrpo-fidelity", "lrpo-perception", "sd21-diffbir")
RELEASE_STEPS, RELEASE_ETA = 50, 0.8  # the release's inference (SPEC section 8)
TINY_RESOLUTION, TINY_STEPS = 64, 2


def registry_names(policy_yaml: Path) -> list[str]:
    """The registry files a policy YAML names (``registry:NAME`` values of its policy section)."""
    section = yaml.safe_load(policy_yaml.read_text())["policy"]
    return [v.split(":", 1)[1] for v in section.values() if isinstance(v, str) and v.startswith("registry:")]


def missing_files(models: tuple[str, ...]) -> list[str]:
    """Registry names the models need that are not on this machine (``lrpo weights path`` fails)."""
    return weights.missing(dict.fromkeys(n for m in models for n in registry_names(published_policy_config(m))))


def evaluate_argv(sets: list[str], methods: dict[str, str], out: str, *, steps: int, eta: float, seed: int,
                  precision: str, device: str, table: bool, extra: list[str]) -> list[str]:
    """``lrpo evaluate`` arguments; ``methods``: name -> ``policy:NAME`` or ``ckpt:PATH``."""
    argv = ["evaluate", *(a for s in sets for a in ("--set", s))]
    for name, source in methods.items():
        argv += ["--method", f"{name}={source}#steps={steps},eta={eta}"]
    argv += ["--seed", str(seed), "--precision", precision, "--device", device, "--out", out]
    return argv + (["--table"] if table else []) + list(extra)


def tiny_setup(root: Path) -> tuple[list[str], dict[str, str]]:
    """Stand-ins on $LRPO_WEIGHTS, 64 px copies of the shipped YAMLs, a paired and an LQ-only set."""
    from lrpo.data.images import save_rgb
    from lrpo.standins import write_standins

    import numpy as np

    names = sorted({n for m in MODELS for n in registry_names(published_policy_config(m))})
    write_standins(root / "weights", "tiny", only=names)
    os.environ["LRPO_WEIGHTS"] = str(root / "weights")
    os.environ.setdefault("LRPO_CACHE", str(root / "cache"))
    methods = {}
    for m in MODELS:
        raw = yaml.safe_load(published_policy_config(m).read_text())
        raw["policy"]["resolution"] = TINY_RESOLUTION
        path = root / "policies" / f"policy-{m}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(raw))
        methods[m] = f"ckpt:{path}"
    rng = np.random.default_rng(0)
    for i in range(3):
        hq = (rng.random((TINY_RESOLUTION, TINY_RESOLUTION, 3)) * 255).astype(np.uint8)
        save_rgb(root / "celeba-test" / "hq" / f"{i:05d}.png", hq)
        save_rgb(root / "celeba-test" / "lq" / f"{i:05d}.png", (hq // 2 + 64).astype(np.uint8))
    for i in range(2):
        save_rgb(root / "lfw-test" / f"face_{i}.png", (rng.random((TINY_RESOLUTION, TINY_RESOLUTION, 3)) * 255).astype(np.uint8))
    return [f"celeba-test={root / 'celeba-test'}", f"lfw-test={root / 'lfw-test'}"], methods


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", action="append", default=[], metavar="NAME=DIR", help="a test set by name (repeatable), as lrpo evaluate --set")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="which models (default: all three)")
    p.add_argument("--out", default="runs/published", help="output folder (default runs/published)")
    p.add_argument("--table", action="store_true", help="also write table.md / table.tex in the field's column order")
    p.add_argument("--steps", type=int, default=RELEASE_STEPS, help=f"DDIM steps (default {RELEASE_STEPS}, the release's)")
    p.add_argument("--eta", type=float, default=RELEASE_ETA, help=f"DDIM eta (default {RELEASE_ETA}, the release's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="stand-ins and synthetic sets in a temporary folder (seconds, CPU)")
    return p.parse_args(own), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    models = tuple(args.models)
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="lrpo-published-") as tmp:
            sets, methods = tiny_setup(Path(tmp))
            methods = {m: methods[m] for m in models}
            return lrpo_main(evaluate_argv(sets, methods, args.out, steps=TINY_STEPS, eta=args.eta, seed=args.seed,
                                           precision=args.precision, device=args.device, table=args.table,
                                           extra=["--no-progress", *extra]))
    if not args.set:
        print("published_models: give at least one --set NAME=DIR (e.g. --set celeba-test=data/celeba), or --tiny", file=sys.stderr)
        return 2
    missing = missing_files(models)
    if missing:
        print(f"published_models: model files missing: {', '.join(missing)}; fetch them with "
              f"`lrpo weights fetch {' '.join(missing)}` (or put them on $LRPO_WEIGHTS); nothing was run", file=sys.stderr)
        return 2
    methods = {m: f"policy:{m}" for m in models}
    return lrpo_main(evaluate_argv(args.set, methods, args.out, steps=args.steps, eta=args.eta, seed=args.seed,
                                   precision=args.precision, device=args.device, table=args.table, extra=extra))


if __name__ == "__main__":
    sys.exit(main())
