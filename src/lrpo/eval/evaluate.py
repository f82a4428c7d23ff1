"""Evaluation runs: restore (or read) every test face with each method, score it, write the results.

Two kinds of test set (SPEC section 8):

* **paired** (:func:`evaluate_paired`): a folder with ``lq/`` and ``hq/`` as written by
  ``lrpo degrade`` (CelebA-Test style). Full-reference metrics against the GT: PSNR, SSIM,
  MS-SSIM, LPIPS (VGG, when its two files are given), identity cosine and degree (SFace, offline;
  ArcFace when given), landmark distance (LMD, YuNet), FID against the HQ set (when the Inception
  file is given), every term of the composite reward and its total.
* **LQ only** (:func:`evaluate_lq_only`): real degraded faces without GT. No-reference scores that
  work offline (the ``sharpness`` detail score and the noise estimate; CLIP-IQA when its files are
  given), identity cosine to the LQ input, the reward terms that need no GT.

Methods (:class:`MethodSpec`) are checkpoints of ours (restored here with fixed per-image seeds,
image ``i`` of the sorted set using ``seed + i`` so results do not depend on the batch size) or
folders of another method's outputs matched by file stem (CodeFormer, GFPGAN, DiffBIR results
produced elsewhere). The LQ input itself is scored as the baseline row ``input`` (not ranked).

Every output is compared at the evaluation resolution (the GT's size by default): outputs of
another size are resized (area filter when shrinking, bicubic when growing) and counted in the
notes. Outputs pass through 8-bit RGB, as files of other methods do, so all are scored alike.

Written into ``out_dir``: ``metrics.json`` (per-method means, FID, metric directions, settings,
notes, image paths), ``per_image.csv`` (one row per method and image), ``outputs/<method>/`` (our
checkpoints' restorations as PNG) and ``report.html`` (see :mod:`lrpo.eval.report`).

The scoring itself (metric columns, the models they need, the per-batch scorer) is
:mod:`lrpo.eval.scorers`; the file names and the per-image CSV are :mod:`lrpo.eval.results`; the
settings are :class:`lrpo.eval.options.EvalOptions`. :func:`evaluate_sets` runs several named test
sets (:mod:`lrpo.eval.testsets`) in one go.

Which optional model files are used: a file whose path is given explicitly must load (an error
otherwise); a file looked up in the registry (SFace, YuNet) that is missing only drops its metrics,
with a note saying so in ``metrics.json`` and the report.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import manifest
from ..config import resolve_device
from ..data.captions import CaptionError, Captions
from ..data.datasets import LQOnlySet, PairedSet
from ..data.images import list_images, load_rgb, resize_square, save_rgb, to_tensor, to_uint8
from ..inference.restorer import Restorer
from ..policies.published import published_policy_config
from ..weights import cache_dir
from .fid import ReferenceStats, feature_statistics, load_reference_stats, save_reference_stats
from .options import EvalOptions
from .report import build_sets_report_html, write_report
from .results import INPUT_METHOD, METRICS_FILE, OUTPUTS_DIR, PER_IMAGE_FILE, REPORT_FILE, TABLE_FILES, write_per_image_csv
from .scorers import (
    BatchScorer,
    Scorers,
    build_scorers,
    column_order,
    fid_against,
    inception_features,
    metric_definitions,
    metric_info,
    scoring_protocol,
    summarise,
)
from .table import definitions_markdown, latex_table, markdown_table, read_published, table_columns
from .testsets import FoundSet

__all__ = [
    "EvalOptions",
    "EvalResult",
    "MethodSpec",
    "MultiEvalResult",
    "evaluate_lq_only",
    "evaluate_paired",
    "evaluate_sets",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ---------------------------------------------------------------------------------------------
# methods and options
# ---------------------------------------------------------------------------------------------
# "policy:NAME" is a published policy (lrpo.policies.published): its shipped YAML, restored as a checkpoint
_KIND_ALIASES = {"ckpt": "checkpoint", "checkpoint": "checkpoint", "folder": "folder", "dir": "folder", "policy": "checkpoint"}


@dataclass(frozen=True)
class MethodSpec:
    """One method to evaluate.

    kind: "checkpoint" (a checkpoint or run folder of ours, restored here with DDIM ``steps``,
    ``eta`` and base ``seed``), "folder" (another method's outputs, one file per test image with
    the same stem) or "input" (the LQ input itself; added automatically as the baseline).
    """

    name: str
    kind: str
    path: str = ""
    steps: int = 50
    eta: float = 0.0
    seed: int = 0
    precision: str = "auto"  # lrpo.precision
    ema: bool = True

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name or ""):
            raise ValueError(
                f"method name {self.name!r} must start with a letter or digit and use only letters, digits and . _ + - "
                f"(it names a folder and a report column)"
            )
        if self.kind not in ("checkpoint", "folder", "input"):
            raise ValueError(f"method {self.name!r}: kind must be 'checkpoint', 'folder' or 'input', got {self.kind!r}")
        if self.kind != "input" and not str(self.path).strip():
            raise ValueError(f"method {self.name!r}: no path given")
        if self.steps < 1 or self.eta < 0:
            raise ValueError(f"method {self.name!r}: steps must be >= 1 and eta >= 0, got steps={self.steps}, eta={self.eta}")

    @classmethod
    def parse(cls, text: str, steps: int = 50, eta: float = 0.0, seed: int = 0, precision: str = "auto", ema: bool = True) -> "MethodSpec":
        """``NAME=KIND:PATH[#key=value,...]`` -> MethodSpec.

        KIND is ``ckpt``/``checkpoint`` or ``folder``; ``NAME=`` may be left out (the path's last
        part is used). Optional per-method settings after ``#``: ``steps``, ``eta``, ``seed``,
        e.g. ``ours-eta0.8=ckpt:runs/lrpo#eta=0.8``. The other arguments are the defaults.
        """
        m = re.match(r"^(?:(?P<name>[^=:#]+)=)?(?P<kind>[A-Za-z]+):(?P<rest>.+)$", text.strip())
        if not m or m.group("kind").lower() not in _KIND_ALIASES:
            raise ValueError(
                f"--method {text!r}: expected NAME=ckpt:PATH, NAME=folder:PATH or NAME=policy:PUBLISHED "
                f"(optionally #steps=N,eta=X,seed=S)"
            )
        kind = _KIND_ALIASES[m.group("kind").lower()]
        path, settings = m.group("rest"), {}
        head, sep, tail = path.rpartition("#")
        if sep and tail and all(re.match(r"^\s*(steps|eta|seed)\s*=\s*[-+0-9.eE]+\s*$", part) for part in tail.split(",")):
            path = head
            for part in tail.split(","):
                key, value = (s.strip() for s in part.split("="))
                settings[key] = float(value) if key == "eta" else int(value)
        name = (m.group("name") or Path(path.rstrip("/\\")).name).strip()
        if m.group("kind").lower() == "policy":
            path = str(published_policy_config(path.strip()))
        args = dict(steps=steps, eta=eta, seed=seed, precision=precision, ema=ema)
        args.update(settings)
        return cls(name, kind, path, **args)


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict[str, dict[str, float | None]]  # method -> metric -> value (None: NaN / not computed)
    rows: list[dict[str, Any]]  # per image: {"method", "name", metric: value, ...}
    notes: list[str]
    metrics_path: Path
    per_image_path: Path
    report_path: Path | None


def _by_stem(folder: str | os.PathLike) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in files:
            raise ValueError(f"{folder}: two output files share the name {path.stem!r} ({files[path.stem].name}, {path.name})")
        files[path.stem] = path
    return files


def _preview(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" ... and {len(names) - n} more" if len(names) > n else "")


# ---------------------------------------------------------------------------------------------
# methods' outputs
# ---------------------------------------------------------------------------------------------
class _MethodRunner:
    """Yields a method's outputs (RGB uint8 at the evaluation resolution) batch by batch."""

    def __init__(self, spec: MethodSpec, names: list[str], resolution: int, device: torch.device, out_dir: Path,
                 batch_size: int = 8, compile: str = "off"):
        self.spec, self.resolution = spec, resolution
        self.resized = 0
        self.restorer = None
        self.files: dict[str, Path] = {}
        self.save_dir: Path | None = None
        if spec.kind == "folder":
            files = _by_stem(spec.path)
            missing = [n for n in names if n not in files]
            if missing:
                raise ValueError(
                    f"method {spec.name!r}: {len(missing)} of {len(names)} test image(s) have no output in {spec.path} "
                    f"(outputs are matched by file stem): {_preview(missing)}"
                )
            self.files = {n: files[n] for n in names}
        elif spec.kind == "checkpoint":
            self.restorer = Restorer.from_checkpoint(spec.path, spec.steps, spec.eta, str(device), spec.precision, ema=spec.ema)
            self.restorer.compile_for(len(names), batch_size, compile)
            self.save_dir = out_dir / OUTPUTS_DIR / spec.name
            self.out_dir = out_dir
            self.save_dir.mkdir(parents=True, exist_ok=True)

    def outputs(self, names: list[str], indices: list[int], lq_u8: list[np.ndarray], lq_paths: list[Path]) -> tuple[list[np.ndarray], list[str]]:
        """(outputs, paths of the files shown in the report) for one batch."""
        if self.spec.kind == "input":
            return [self._fit(im) for im in lq_u8], [str(p) for p in lq_paths]
        if self.spec.kind == "folder":
            images = [self._fit(load_rgb(self.files[n])) for n in names]
            return images, [str(self.files[n]) for n in names]
        seeds = [self.spec.seed + i for i in indices]
        images = [self._fit(im) for im in self.restorer.restore(lq_u8, seeds)]
        paths = []
        for n, im in zip(names, images):
            target = self.save_dir / f"{n}.png"
            save_rgb(target, im)
            manifest.record(self.out_dir, [target])
            paths.append(str(target))
        return images, paths

    def _fit(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.resolution, self.resolution):
            self.resized += 1
            return resize_square(image, self.resolution)
        return image


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def evaluate_paired(
    data: str | os.PathLike | tuple[str | os.PathLike, str | os.PathLike],
    methods: Sequence[MethodSpec],
    out_dir: str | os.PathLike,
    options: EvalOptions | None = None,
) -> EvalResult:
    """Evaluate ``methods`` on a paired set (a folder with ``lq/`` and ``hq/``, or ``(lq_dir, hq_dir)``)."""
    options = options or EvalOptions()
    probe = PairedSet(data)
    resolution = options.resolution or _side(probe.hq_paths[0])
    dataset = PairedSet(data, resolution=resolution)
    info = {"kind": "paired", "lq_dir": str(dataset.lq_dir), "hq_dir": str(dataset.hq_dir)}
    return _evaluate(dataset, dataset.lq_paths, dataset.hq_paths, info, methods, out_dir, options, resolution)


def evaluate_lq_only(
    data: str | os.PathLike,
    methods: Sequence[MethodSpec],
    out_dir: str | os.PathLike,
    options: EvalOptions | None = None,
) -> EvalResult:
    """Evaluate ``methods`` on real LQ faces without GT (a folder or a file listing images)."""
    options = options or EvalOptions()
    probe = LQOnlySet(data)
    resolution = options.resolution or _side(probe.paths[0])
    dataset = LQOnlySet(data, resolution=resolution)
    info = {"kind": "lq_only", "lq_dir": str(dataset.folder)}
    return _evaluate(dataset, dataset.paths, None, info, methods, out_dir, options, resolution)


def _captions(names, lq_paths, gt_paths, scorers: Scorers, options: EvalOptions) -> dict[str, str | None]:
    """Each image's caption (table, sidecar beside the GT then the LQ, default); an error before any
    restoration when a caption-scoring reward term is on and some image has none."""
    source = Captions.from_sources(options.captions or "")  # the default only after both sidecars
    default = (options.default_caption or "").strip() or None
    found = {}
    for i, name in enumerate(names):
        caption = source.lookup(gt_paths[i]) if gt_paths is not None else None
        found[name] = caption or source.lookup(lq_paths[i]) or default
    terms = [k for k, r in scorers.rewards.items() if getattr(r, "needs_caption", False)]
    missing = [n for n, c in found.items() if c is None]
    if terms and missing:
        raise CaptionError(
            f"reward term {', '.join(map(repr, terms))} needs a caption for every image, but {len(missing)} of {len(names)} "
            f"have none: {_preview(missing)}. Give sidecar NAME.txt files beside the {'GT' if gt_paths is not None else 'LQ'} images, "
            f"--captions FILE (CSV 'name,caption' or JSONL), --default-caption TEXT, or a --reward-preset without that term."
        )
    return found


def _side(path: Path) -> int:
    h, w = load_rgb(path).shape[:2]
    if max(h, w) < 16:  # the same floor as an explicit --resolution (SSIM's 11-pixel window)
        raise ValueError(f"{path}: {w}x{h} is too small to set the evaluation resolution (the first image's side, "
                         f"at least 16); pass --resolution N")
    return max(h, w)


@dataclass
class _Run:
    """One evaluation of one set: what is fixed before the first method runs."""

    dataset: Any  # PairedSet or LQOnlySet at the evaluation resolution
    lq_paths: list[Path]
    gt_paths: list[Path] | None  # None: an LQ-only set
    names: list[str]  # the images evaluated (the first ``count`` of the sorted set)
    resolution: int
    out_dir: Path
    options: EvalOptions
    device: torch.device
    scorers: Scorers
    batch_scorer: BatchScorer
    fid_ref: ReferenceStats | None  # None: no FID
    notes: list[str]

    @property
    def paired(self) -> bool:
        return self.gt_paths is not None

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass
class _Scores:
    """What scoring the methods gave: per-image rows, the files shown, FID and time per method."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    image_paths: dict[str, list[str]] = field(default_factory=dict)
    fid: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _evaluate(dataset, lq_paths, gt_paths, info, methods, out_dir, options: EvalOptions, resolution: int) -> EvalResult:
    """Score every method on the set, then write metrics.json, per_image.csv, the tables and the report."""
    paired = gt_paths is not None
    published = read_published(options.published) if options.published else None  # a bad file fails before any work
    out_dir = Path(out_dir)
    methods = _with_input(methods, options.include_input)
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    names = list(dataset.names[:count])
    _check_out(out_dir, names, methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    t_start = time.perf_counter()
    scorers, reward_label = build_scorers(options, paired, device, resolution)
    notes = list(options.notes) + list(scorers.notes)
    captions = _captions(names, lq_paths[:count], gt_paths[:count] if paired else None, scorers, options)
    batch_scorer = BatchScorer(scorers, paired, captions)
    fid_info = _reference_stats(dataset, count, options, scorers, paired)
    run = _Run(dataset, list(lq_paths[:count]), list(gt_paths[:count]) if paired else None, names, resolution, out_dir,
               options, device, scorers, batch_scorer, fid_info["stats"] if fid_info else None, notes)
    scores = _score_methods(run, methods)
    keys = column_order(scores.rows)
    summary = {spec.name: summarise([r for r in scores.rows if r["method"] == spec.name], keys) for spec in methods}
    for name, value in scores.fid.items():
        summary[name]["fid"] = value
    record = _record(run, info, methods, summary, scores, reward_label, fid_info)
    record["seconds"] = {"total": round(time.perf_counter() - t_start, 2), **scores.seconds}
    return _write_results(run, record, scores.rows, keys, published)


def _score_methods(run: _Run, methods: list[MethodSpec]) -> _Scores:
    """Every method's outputs, scored batch by batch; one method's model is loaded at a time."""
    scores = _Scores()
    bar = tqdm(total=run.count * len(methods), desc="evaluate", unit="img", disable=not run.options.progress, dynamic_ncols=True)
    for spec in methods:
        t0 = time.perf_counter()
        _score_method(run, spec, bar, scores)
        scores.seconds[spec.name] = round(time.perf_counter() - t0, 2)
    bar.close()
    ref = run.fid_ref
    if ref is not None and min(run.count, ref.count or run.count) < 2048:
        run.notes.append(f"FID from {run.count} output(s) and {ref.count or 'an unknown number of'} reference image(s): "
                         f"biased upwards at this N; compare only at equal N")
    return scores


def _score_method(run: _Run, spec: MethodSpec, bar, scores: _Scores) -> None:
    # the previous method's runner died with its call: free its model before loading the next (two SD policies do not fit)
    gc.collect()
    options, device = run.options, run.device
    runner = _MethodRunner(spec, run.names, run.resolution, device, run.out_dir, options.batch_size, options.compile)
    feats: list[np.ndarray] = []
    paths: list[str] = []
    for start in range(0, run.count, options.batch_size):
        indices = list(range(start, min(start + options.batch_size, run.count)))
        items = [run.dataset[i] for i in indices]
        batch_names = [it["name"] for it in items]
        lq = torch.stack([it["lq"] for it in items])
        gt = torch.stack([it["hq"] for it in items]).to(device) if run.paired else None
        bar.set_postfix_str(spec.name)
        images, shown = runner.outputs(batch_names, indices, [to_uint8(x) for x in lq], [run.lq_paths[i] for i in indices])
        out = torch.stack([to_tensor(im) for im in images]).to(device)
        cols = run.batch_scorer(batch_names, out, lq.to(device), gt)
        for j, n in enumerate(batch_names):
            scores.rows.append({"method": spec.name, "name": n, **{k: float(v[j]) for k, v in cols.items()}})
        if run.fid_ref is not None:
            feats.append(inception_features(run.scorers.inception, out))
        paths.extend(shown)
        bar.update(len(indices))
    scores.image_paths[spec.name] = paths
    if run.fid_ref is not None:
        scores.fid[spec.name] = fid_against(np.concatenate(feats), run.fid_ref)
    if runner.resized:
        run.notes.append(f"{spec.name}: {runner.resized} output(s) were not {run.resolution}x{run.resolution} and were resized to it")


def _record(run: _Run, info: dict[str, Any], methods: list[MethodSpec], summary: dict[str, dict[str, float | None]],
            scores: _Scores, reward_label: str, fid_info: dict | None) -> dict[str, Any]:
    """The content of metrics.json (without ``seconds``)."""
    options, scorers, fid_ref = run.options, run.scorers, run.fid_ref
    summary_keys = column_order(scores.rows) + (["fid"] if scores.fid else [])
    return {
        "kind": info["kind"],
        "dataset": {**info, "count": run.count, "resolution": run.resolution},
        "methods": [asdict(m) for m in methods],
        "baseline": INPUT_METHOD if options.include_input else None,
        "metrics": summary_keys,
        "metric_info": {k: asdict(metric_info(k)) for k in summary_keys},
        "summary": summary,
        "reward": {"preset": reward_label, "weights": scorers.reward_weights, "total": scorers.reward_total},
        "definitions": metric_definitions(summary_keys, options),
        "protocol": scoring_protocol(options, scorers),
        "fid_reference": None if fid_ref is None else {
            "source": fid_info.get("source", fid_ref.source if fid_ref.source != "GT" else info.get("hq_dir")),
            "count": fid_ref.count, "resolution": fid_ref.resolution, "from_cache": fid_info["cached"],
        },
        "notes": run.notes,
        "images": {
            "names": run.names,
            "lq": [str(p) for p in run.lq_paths],
            "gt": [str(p) for p in run.gt_paths] if run.paired else None,
            "outputs": scores.image_paths,
        },
        "logs": {k: str(v) for k, v in options.logs.items()},
        "figures": {k: str(Path(v).resolve()) for k, v in options.figures.items()},  # write_report may run elsewhere
        "device": str(run.device),
    }


def _write_results(run: _Run, record: dict[str, Any], rows: list[dict[str, Any]], keys: list[str], published) -> EvalResult:
    """metrics.json, per_image.csv, table.md/.tex (with --table or --published) and report.html, each recorded."""
    out_dir, options = run.out_dir, run.options
    metrics_path = out_dir / METRICS_FILE
    metrics_path.write_text(json.dumps(record, indent=1, allow_nan=False))
    per_image_path = write_per_image_csv(out_dir / PER_IMAGE_FILE, rows, keys)
    manifest.record(out_dir, [metrics_path, per_image_path])
    summary = record["summary"]
    if options.table or published:
        cols = table_columns(record["metrics"], run.paired)
        baseline = INPUT_METHOD if options.include_input else None
        (out_dir / "table.md").write_text(markdown_table(summary, cols, baseline=baseline, published=published)
                                          + "\n" + definitions_markdown(record["definitions"], cols))
        (out_dir / "table.tex").write_text(latex_table(summary, cols, baseline=baseline, published=published))
        manifest.record(out_dir, list(TABLE_FILES))
    report_path = None
    if options.report:
        report_path = write_report(out_dir, grid_count=options.grid_count, worst_count=options.worst_count)
        manifest.record(out_dir, [report_path])
    return EvalResult(out_dir, summary, rows, run.notes, metrics_path, per_image_path, report_path)


def _check_out(out_dir: Path, names: list[str], methods: list[MethodSpec]) -> None:
    """Refuse, before anything is written, an --out holding a file or link at a name this evaluation
    writes that an earlier ``lrpo evaluate`` did not write there (unchanged, by its manifest): lrpo
    never writes over or through a file of the user's."""
    planned = [METRICS_FILE, PER_IMAGE_FILE, REPORT_FILE, *TABLE_FILES]
    planned += [f"{OUTPUTS_DIR}/{m.name}/{n}.png" for m in methods if m.kind == "checkpoint" for n in names]
    # a folder on the way that is a link would take the new files elsewhere (mkdir and save follow it)
    linked = sorted({d for rel in planned for d in map(str, PurePosixPath(rel).parents)
                     if d != "." and (out_dir / d).is_symlink()})
    if linked:
        raise ValueError(f"--out {manifest.ascii_name(str(out_dir))}: {manifest.describe(linked)} is a symbolic link, and "
                         f"lrpo evaluate writes only inside --out; nothing was written: choose another --out or move it")
    taken = manifest.unrecorded(out_dir, planned)
    if taken:
        raise ValueError(f"--out {manifest.ascii_name(str(out_dir))} holds {manifest.describe(taken)}, which an earlier lrpo "
                         f"evaluate did not write there (or which changed since); nothing was written: choose another "
                         f"--out or move them")


def _with_input(methods: Sequence[MethodSpec], include_input: bool) -> list[MethodSpec]:
    methods = list(methods)
    if not methods and not include_input:
        raise ValueError("no method to evaluate: give at least one --method (or keep the input baseline)")
    seen: set[str] = set()
    for m in methods:
        if m.name in seen or (include_input and m.name == INPUT_METHOD):
            raise ValueError(f"method name {m.name!r} is used twice (the LQ baseline is called {INPUT_METHOD!r})")
        seen.add(m.name)
    return ([MethodSpec(INPUT_METHOD, "input")] if include_input else []) + methods


# ---------------------------------------------------------------------------------------------
# the FID reference: the GT set, or a folder of HQ faces whose statistics are cached
# ---------------------------------------------------------------------------------------------
def _reference_stats(dataset, count: int, options: EvalOptions, scorers: Scorers, paired: bool) -> dict | None:
    """FID reference statistics: ``fid_reference`` (a folder or list of HQ faces, whose statistics are
    computed once and cached under ``$LRPO_CACHE/fid_stats/``, or a ``.npz`` of mu/sigma), else the GT set.
    Returns {"stats": ReferenceStats, "cached": bool, ...} or None (no FID)."""
    if scorers.inception is None:
        return None
    resolution = dataset.resolution
    ref = options.fid_reference
    if ref and Path(ref).suffix == ".npz":
        return {"stats": load_reference_stats(ref), "cached": False}
    if ref:
        paths = list_images(ref)
        cache = _fid_cache_path(paths, resolution, options.inception_path)
        if cache.is_file():
            return {"stats": load_reference_stats(cache), "cached": True, "source": str(ref)}
        features = _features_of(scorers, options.batch_size, len(paths),
                                lambda i: to_tensor(resize_square(load_rgb(paths[i]), resolution)))
        stats = ReferenceStats(*feature_statistics(features), len(features), resolution, str(ref))
        save_reference_stats(cache, stats)
        return {"stats": stats, "cached": False, "cache": str(cache)}
    if not paired:
        return None
    features = _features_of(scorers, options.batch_size, count, lambda i: dataset[i]["hq"])
    return {"stats": ReferenceStats(*feature_statistics(features), len(features), resolution, "GT"), "cached": False}


def _features_of(scorers: Scorers, batch_size: int, n: int, image: Callable[[int], Tensor]) -> np.ndarray:
    feats = []
    for start in range(0, n, batch_size):
        batch = torch.stack([image(i) for i in range(start, min(start + batch_size, n))]).to(scorers.device)
        feats.append(inception_features(scorers.inception, batch))
    return np.concatenate(feats)


def _fid_cache_path(paths: Sequence[Path], resolution: int, inception_path: str | None) -> Path:
    """One cache file per (reference files as they are now, resolution, Inception file)."""
    h = hashlib.sha256(f"{resolution}|{inception_path}|".encode())
    if inception_path and Path(inception_path).is_file():
        st = Path(inception_path).stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}|".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return cache_dir() / "fid_stats" / f"{h.hexdigest()[:32]}.npz"


# ---------------------------------------------------------------------------------------------
# several named test sets in one run (lrpo.eval.testsets recognises their folders)
# ---------------------------------------------------------------------------------------------
@dataclass
class MultiEvalResult:
    out_dir: Path
    results: dict[str, Any]  # set name -> EvalResult
    metrics_path: Path
    report_path: Path | None
    notes: list[str] = field(default_factory=list)


def _method_for_set(spec, found: FoundSet, several: bool):
    """The method with its folder for this set (see :mod:`lrpo.eval.testsets`); checkpoints unchanged."""
    if spec.kind != "folder":
        return spec
    base = str(spec.path)
    if "{set}" in base:
        return dataclasses.replace(spec, path=base.replace("{set}", found.name))
    root = Path(base)
    candidates = [root / found.name, root / found.title]
    hit = next((c for c in candidates if c.is_dir()), None)
    if hit is not None:
        return dataclasses.replace(spec, path=str(hit))
    if not several:
        return spec
    raise ValueError(
        f"method {spec.name!r}: with several sets its folder must hold one folder of outputs per set; for {found.name} "
        f"none of {', '.join(str(c) for c in candidates)} exists (or give the path with {{set}} in it)"
    )


def evaluate_sets(sets: Sequence[FoundSet], methods, out_dir: str | os.PathLike, options=None) -> MultiEvalResult:
    """Evaluate every method on every set; one folder per set plus the combined files (see :mod:`lrpo.eval.testsets`)."""
    options = options or EvalOptions()
    if not sets:
        raise ValueError("evaluate_sets: no set given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    several = len(sets) > 1
    if several and options.published:
        raise ValueError("--published holds one test set's published figures: give it with a single --set")
    results: dict[str, Any] = {}
    for found in sets:
        specs = [_method_for_set(m, found, several) for m in methods]
        set_options = dataclasses.replace(options, notes=list(options.notes) + [found.describe()])
        target = out_dir / found.name
        if found.paired:
            results[found.name] = evaluate_paired((found.lq_dir, found.hq_dir), specs, target, set_options)
        else:
            results[found.name] = evaluate_lq_only(found.lq_dir, specs, target, set_options)
    record = combined_record(sets, results, out_dir)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    metrics_path = out_dir / METRICS_FILE
    metrics_path.write_text(json.dumps(record, indent=1, allow_nan=False))
    if options.table or options.published:
        _write_tables(record, out_dir, options)
    report_path = None
    if options.report:
        report_path = out_dir / REPORT_FILE
        report_path.write_text(build_sets_report_html(record), encoding="utf-8")
    return MultiEvalResult(out_dir, results, metrics_path, report_path)


def combined_record(sets: Sequence[FoundSet], results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """OUT/metrics.json: a section per set (its summary, columns, definitions and notes, read back
    from the set's own metrics.json) and the union of the definitions."""
    sections: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    for found in sets:
        res = results[found.name]
        own = json.loads(Path(res.metrics_path).read_text())
        sections[found.name] = {
            "title": found.title,
            "found": found.to_dict(),
            "dir": found.name,
            "files": {"metrics": f"{found.name}/{Path(res.metrics_path).name}",
                      "report": f"{found.name}/{Path(res.report_path).name}" if res.report_path else None},
            **{k: own.get(k) for k in ("kind", "dataset", "baseline", "metrics", "metric_info", "summary", "definitions",
                                       "notes", "fid_reference", "reward")},
        }
        definitions.update(own.get("definitions") or {})
        methods = own.get("methods")
    return {"kind": "sets", "sets": sections, "methods": methods, "definitions": definitions}


def _write_tables(record: dict[str, Any], out_dir: Path, options) -> None:
    published = read_published(options.published) if options.published else None
    md, tex, shown = [], [], []
    for name, sec in record["sets"].items():
        cols = table_columns(sec["metrics"], sec["kind"] == "paired")
        shown += [c for c in cols if c not in shown]
        md.append(markdown_table(sec["summary"], cols, baseline=sec["baseline"], published=published,
                                 title=f"{sec['title']} ({sec['found']['lq_count']} images)"))
        tex.append(f"% {sec['title']}\n" + latex_table(sec["summary"], cols, baseline=sec["baseline"], published=published))
    md.append(definitions_markdown(record["definitions"], shown))
    (out_dir / "table.md").write_text("\n".join(md))
    (out_dir / "table.tex").write_text("\n".join(tex))
