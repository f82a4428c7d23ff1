"""Scoring restored faces: what each metric column means, the models the metrics need (built once
per run) and the per-batch scorer that turns outputs into one value per image and metric.

Nothing here restores an image: the run (:mod:`lrpo.eval.evaluate`) hands this module batches of
outputs, LQ inputs and (paired sets) GT, all [B, 3, R, R] in [0, 1].
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import Tensor

from ..rewards import PRESETS, RewardInput, build_reward, check_weights, reward_factory
from ..rewards.identity import FaceEmbedder, IdentityReward
from ..rewards.lpips import LPIPS, LPIPSReward
from ..rewards.simple import ms_ssim, noise_sigma, sharpness_score
from ..weights import MissingWeightsError
from .fid import InceptionFeatures, feature_statistics, frechet_distance
from .iqa import IQA_METRICS, build_iqa_scorers
from .landmarks import LandmarkDetector, landmark_distances
from .metrics import METRIC_DEFINITIONS, MetricDefinition, definitions_for, psnr, ssim
from .nr_metrics import NoReferenceScorer, load_brisque_model
from .options import EvalOptions

__all__ = [
    "BatchScorer",
    "COUNT_KEYS",
    "METRIC_INFO",
    "MetricInfo",
    "Scorers",
    "build_scorers",
    "column_order",
    "fid_against",
    "identity_degrees",
    "inception_features",
    "metric_definitions",
    "metric_info",
    "scoring_protocol",
    "summarise",
]


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
    # model-based no-reference metrics (MUSIQ, MANIQA, TOPIQ-NR, CLIP-IQA+: lrpo.eval.iqa), all higher is better
    **{m.key: MetricInfo(m.label, True, m.description, m.digits) for m in IQA_METRICS.values()},
}
COUNT_KEYS = ("lmd_fail",)  # set-level counts, not means


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


# ---------------------------------------------------------------------------------------------
# scorers: every model the metrics need, built once
# ---------------------------------------------------------------------------------------------
@dataclass
class Scorers:
    """Every model the metrics and reward terms of one run need, and the notes on what was left out."""

    device: torch.device
    sface: Any = None  # FaceEmbedder
    arcface: Any = None
    landmarks: Any = None  # LandmarkDetector
    lpips: Any = None  # LPIPS module
    inception: Any = None  # InceptionFeatures
    clipiqa: Any = None  # CLIPIQAReward
    iqa: dict[str, Any] = field(default_factory=dict)  # key -> lrpo.eval.iqa.IQAScorer
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


def _build_rewards(options: EvalOptions, paired: bool, scorers: Scorers) -> str:
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
            reward = LPIPSReward(scorers.lpips, device=scorers.device)  # share the metric's VGG
        elif (
            name == "identity"
            and scorers.sface is not None
            and set(kwargs) <= {"path", "device"}
            and kwargs.get("path") in (None, options.sface_path)
        ):
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


def build_scorers(options: EvalOptions, paired: bool, device: torch.device, resolution: int | None = None) -> tuple[Scorers, str]:
    s = Scorers(device=device, psnr_space=options.psnr_space, crop_border=options.crop_border)
    s.nr = _nr_scorer(options, resolution, s.notes)

    def embedder(**kw):
        return FaceEmbedder(device=device, **kw)

    s.sface = _optional("identity (SFace)", options.sface_path is not None, lambda: embedder(path=options.sface_path), s.notes)
    if options.arcface_path:
        s.arcface = embedder(path=options.arcface_path, normalisation="arcface")
    if paired:
        s.landmarks = _optional("LMD (YuNet)", options.yunet_path is not None, lambda: LandmarkDetector(options.yunet_path), s.notes)
        if options.lpips_vgg_path:
            s.lpips = LPIPS.from_files(options.lpips_vgg_path, options.lpips_lin_path).to(device)
        else:
            s.notes.append("LPIPS: not computed (give --lpips-vgg and --lpips-lin; the VGG files are not available offline)")
    if options.inception_path:
        if paired or options.fid_reference:
            s.inception = InceptionFeatures.from_registry(options.inception_path).to(device)
        else:
            s.notes.append("FID: not computed, an LQ-only set needs --fid-ref (a folder of HQ faces)")
    else:
        s.notes.append("FID: not computed (give --inception pt_inception-2015-12-05-6726825d.pth)")
    if options.clipiqa_path:
        s.clipiqa = build_reward("clipiqa", path=options.clipiqa_path, vocab_path=options.clip_vocab_path, device=str(device))
    s.iqa, iqa_notes = build_iqa_scorers(options.iqa, device, clip_path=options.clipiqa_path, vocab_path=options.clip_vocab_path)
    s.notes.extend(iqa_notes)
    label = _build_rewards(options, paired, s)
    return s, label


def _nr_scorer(options: EvalOptions, resolution: int | None, notes: list[str]):
    """NIQE / BRISQUE / PIQE; NIQE needs 96 px (its block) and BRISQUE its model file, else a note."""
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


class BatchScorer:
    """Computes every per-image metric of one batch of outputs."""

    def __init__(self, scorers: Scorers, paired: bool, captions: Mapping[str, str | None] | None = None):
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
            lmd = landmark_distances(s.landmarks.detect_batch(out), self.ref_landmarks.get(names, gt))
            cols["lmd"] = lmd
            cols["lmd_fail"] = np.isnan(lmd).astype(np.float64)
        cols["sharpness"] = np_(sharpness_score(out)[0])
        cols["noise"] = np_(noise_sigma(out) * 255.0)
        if s.clipiqa is not None:
            cols["clipiqa"] = np_(s.clipiqa(RewardInput(out)).scores)
        if s.nr is not None:  # network-free no-reference metrics (lrpo.eval.nr_metrics)
            cols.update(s.nr(out))
        # model-based no-reference metrics (MUSIQ, MANIQA, TOPIQ, CLIP-IQA+: lrpo.eval.iqa)
        for key, scorer in s.iqa.items():
            cols[key] = np_(scorer.score(out))
        cols.update(self._rewards(names, out, lq, gt))
        return cols

    def _rewards(self, names: list[str], out: Tensor, lq: Tensor, gt: Tensor | None) -> dict[str, np.ndarray]:
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
# what the record says about the columns
# ---------------------------------------------------------------------------------------------
def metric_definitions(keys: Sequence[str], options: EvalOptions) -> dict[str, dict[str, Any]]:
    """How each column is defined and whether it is comparable with published tables (lrpo.eval.metrics)."""
    # columns without an entry in lrpo.eval.metrics (model-based NR metrics, lrpo.eval.iqa) are
    # defined by their MetricInfo description until they add one
    extra = {k: MetricDefinition(METRIC_INFO[k].description, "partly",
                                 "a learnt model: comparable with published numbers only with the same weights and input size")
             for k in keys if k in METRIC_INFO and k not in METRIC_DEFINITIONS}
    return definitions_for(keys, space=options.psnr_space, crop_border=options.crop_border,
                           niqe_channel=options.niqe_channel, extra=extra)


def scoring_protocol(options: EvalOptions, scorers: Scorers) -> dict[str, Any]:
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


def column_order(rows: list[dict[str, Any]]) -> list[str]:
    """The metric columns present in ``rows``: known metrics first, then others, the reward terms, their total."""
    present = {k for r in rows for k in r if k not in ("method", "name")}
    known = [k for k in METRIC_INFO if k in present]
    rewards = sorted(k for k in present if k.startswith("reward/") and k != "reward/total")
    total = ["reward/total"] if "reward/total" in present else []
    other = sorted(present - set(known) - set(rewards) - set(total))
    return known + other + rewards + total


# ---------------------------------------------------------------------------------------------
# FID of a method's outputs
# ---------------------------------------------------------------------------------------------
def inception_features(model, images: Tensor) -> np.ndarray:
    """Inception pool features [B, D] float64 of images [B, 3, R, R] in [0, 1]."""
    with torch.no_grad():
        return model(images).double().cpu().numpy()


def fid_against(features: np.ndarray, reference) -> float | None:
    """FID of output features [N, D] against reference statistics (needs N >= 2 on both sides)."""
    if len(features) < 2 or reference.count and reference.count < 2:
        return None
    mu, sigma = feature_statistics(features)
    value = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    return value if math.isfinite(value) else None
