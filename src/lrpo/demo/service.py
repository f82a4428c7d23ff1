"""The demo's work, apart from the web: restore a photo, sample and score a group, read a run.

:class:`DemoService` loads the policy once and answers three kinds of job. Images enter and leave
as RGB uint8 ``H x W x 3`` arrays; tensors are float ``[B, 3, R, R]`` in [0, 1] at the policy's
resolution ``R``. Every user-facing refusal is a :class:`~lrpo.demo.safety.DemoError`.

Restore   ``Restorer.restore_photo`` (whole photos: detect, align, restore, paste back) or
          ``Restorer.restore`` (an aligned crop at its own size), with the restore command's options.
Group     what one rollout of ``lrpo train`` does for one face: degrade it once with the group seed
          s, sample G candidates with seeds ``derive_seed(s, j)`` and the stochastic sampler, score
          every term of the composite reward against the face, and the group-relative advantages
          of :func:`lrpo.rl.advantages.group_advantages` (one group: its std is the batch std).
Run       :mod:`lrpo.demo.runview`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_config_dict
from ..config import DEGRADATION_PRESETS, ConfigError, DegradationConfig, DiffusionConfig, from_dict, resolve_device
from ..data.groups import derive_seed
from ..data.images import resize_square, to_tensor, to_uint8
from ..degradation.pipeline import degrade_group
from ..diffusion.ddim import DDIMSampler
from ..eval.report import image_data_uri
from ..inference.detect import FaceDetector
from ..inference.photo import PhotoOptions
from ..inference.restorer import Restorer
from ..policies.compiled import AUTO_MIN_FORWARDS, BackgroundCompile, compile_decision
from ..policies.loading import load_policy
from ..policies.sampling import sample_generators, sample_trajectories
from ..rewards import PRESETS, CompositeReward, RewardInput, available_rewards, build_composite, check_weights
from ..rl.advantages import group_advantages
from ..weights import MissingWeightsError
from .models import MAX_MODEL_NAME, ModelCatalog
from .runview import RunBrowser
from .safety import DemoError, JobGate, UploadLimits

__all__ = ["DemoService", "GroupRequest", "RestoreRequest", "RewardTerm", "check_restore_size", "image_uri",
           "probe_reward_terms"]

MAX_UPSCALE = 4.0  # the restore command allows 16; a browser tab holding a 16x photo does not
# The work of a restoration grows with the pixels it writes (resize, paste-back, PNG, base64), not with
# the upload's bytes: a 4 kB PNG of 5999 x 5999 took 17.7 s and 1.4 GB as an aligned face. Refused from
# the header, before decoding (check_restore_size).
MAX_OUTPUT_PIXELS = 16_000_000  # a restored whole photo, after upscaling (a 12 MP phone photo at 1x fits)
MAX_ALIGNED_OUTPUT_PIXELS = 2048 * 2048  # an aligned face comes back at its own size
MAX_GROUP_SIZE = 16
MAX_STEPS = 1000
DEFAULT_GROUP_SIZE = 4  # when the checkpoint is not an lrpo run (which has its own group_size)
MAX_CAPTION = 300  # characters


def image_uri(image: np.ndarray) -> str:
    """RGB uint8 -> a PNG data URI (lossless: the page shows and downloads exactly what was made)."""
    return image_data_uri(np.ascontiguousarray(image), fmt="PNG")


# ---------------------------------------------------------------------------------------------
# options as the page sends them (query strings), checked with messages
# ---------------------------------------------------------------------------------------------
def _flag(params: Mapping[str, str], key: str) -> bool:
    value = str(params.get(key, "")).strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise DemoError(f"{key} must be true or false, got {value!r}")


def _number(params: Mapping[str, str], key: str, kind: type, default, low=None, high=None):
    raw = params.get(key)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = kind(str(raw).strip())
    except ValueError:
        raise DemoError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise DemoError(f"{key} must be finite, got {raw!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise DemoError(f"{key} must be in [{low}, {high}], got {value}")
    return value


@dataclass(frozen=True)
class RestoreRequest:
    aligned: bool = False
    only_center_face: bool = False
    upscale: float = 1.0
    steps: int | None = None  # None: the checkpoint's diffusion.sample_steps
    eta: float | None = None  # None: the checkpoint's diffusion.eta
    seed: int = 0
    model: str | None = None  # a name from the demo's model list; None: the loaded one

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "RestoreRequest":
        return cls(
            aligned=_flag(params, "aligned"),
            only_center_face=_flag(params, "only_center_face"),
            upscale=_number(params, "upscale", float, 1.0, 1.0, MAX_UPSCALE),
            steps=_number(params, "steps", int, None, 1, MAX_STEPS),
            eta=_number(params, "eta", float, None, 0.0, 2.0),
            seed=_number(params, "seed", int, 0, 0, 2**62),
            model=_model_name(params),
        )


def _model_name(params: Mapping[str, str]) -> str | None:
    """The ``model`` parameter as sent (checked against the list in the job, where the model loads)."""
    name = str(params.get("model", ""))
    if len(name) > MAX_MODEL_NAME:
        raise DemoError(f"model must be a name from the demo's list (at most {MAX_MODEL_NAME} characters)")
    return name or None


def check_restore_size(width: int, height: int, req: RestoreRequest) -> None:
    """Refuse (413) a restoration whose output would exceed the demo's caps; needs only the header's size."""
    if req.aligned:
        pixels, cap = width * height, MAX_ALIGNED_OUTPUT_PIXELS
        if pixels > cap:
            raise DemoError(f"the aligned face is {width} x {height} ({pixels / 1e6:.1f} megapixels) and comes back at "
                            f"that size; the demo restores aligned faces of at most {cap / 1e6:.1f} megapixels "
                            f"({math.isqrt(cap)} x {math.isqrt(cap)}): crop or shrink it, or untick 'aligned face'", 413)
        return
    pixels, cap = round(width * req.upscale) * round(height * req.upscale), MAX_OUTPUT_PIXELS
    if pixels > cap:
        raise DemoError(f"{width} x {height} upscaled {req.upscale:g}x is {pixels / 1e6:.1f} megapixels; the demo writes "
                        f"at most {cap / 1e6:.0f} megapixels: lower the upscale or shrink the photo", 413)


@dataclass(frozen=True)
class GroupRequest:
    group_size: int | None = None  # None: the run's group_size (4 for other checkpoints)
    seed: int = 0
    # "none" (the default: the upload is already degraded, a real LQ face; there is no GT), or a degradation
    # that makes the upload the GT: "run" (the checkpoint's training degradation) or a DEGRADATION_PRESETS name
    degradation: str = "none"
    preset: str | None = None  # a composite preset; or
    weights: dict[str, float] | None = None  # term -> weight (normalised to sum 1)
    steps: int | None = None
    eta: float | None = None
    caption: str | None = None  # what caption-scoring terms (the face reward) compare the face with
    model: str | None = None  # a name from the demo's model list; None: the loaded one

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "GroupRequest":
        weights = None
        spec = str(params.get("weights", "")).strip()
        if spec:
            weights = {}
            for part in spec.split(","):
                name, sep, value = part.partition(":")
                if not sep or not name.strip():
                    raise DemoError(f"weights must read term:weight,term:weight; got {part!r}")
                weights[name.strip()] = _number({"weight": value}, "weight", float, 0.0, 0.0, 1e6)
        preset = str(params.get("preset", "")).strip() or None
        if preset and weights:
            raise DemoError("give a reward preset or weights, not both")
        caption = str(params.get("caption", "")).strip() or None
        if caption is not None and len(caption) > MAX_CAPTION:
            raise DemoError(f"the caption is {len(caption)} characters; at most {MAX_CAPTION}")
        return cls(
            group_size=_number(params, "G", int, None, 2, MAX_GROUP_SIZE),
            seed=_number(params, "seed", int, 0, 0, 2**62),
            degradation=str(params.get("degradation", "none")).strip() or "none",
            preset=preset,
            weights=weights,
            steps=_number(params, "steps", int, None, 1, MAX_STEPS),
            eta=_number(params, "eta", float, None, 0.0, 2.0),
            caption=caption,
            model=_model_name(params),
        )


# ---------------------------------------------------------------------------------------------
# reward terms: which ones this machine can build
# ---------------------------------------------------------------------------------------------
@dataclass
class RewardTerm:
    name: str
    reward: Any = None  # the built term, None when unavailable
    needs_gt: bool = False
    error: str | None = None  # why it is unavailable (a missing model file, ...)

    @property
    def available(self) -> bool:
        return self.reward is not None


def probe_reward_terms(device: torch.device | str = "cpu", names: list[str] | None = None) -> dict[str, RewardTerm]:
    """Build every registered reward term once (``names``: a subset); the ones whose model files are
    missing come back with the reason, so the page can say which terms this machine has."""
    terms = {}
    for name in names or available_rewards():
        try:
            built = build_composite({name: {"weight": 1.0}}, device=str(device)).components[name][0]
            terms[name] = RewardTerm(name, built, bool(getattr(built, "needs_gt", False)))
        except (MissingWeightsError, ImportError, RuntimeError, ValueError, TypeError, KeyError, OSError) as e:
            terms[name] = RewardTerm(name, None, False, _first_line(e))
    return terms


def _release_memory(device: torch.device) -> None:
    """Give back the memory of a model just let go (its tensors are freed once unreferenced)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _first_line(e: BaseException) -> str:
    text = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)) or type(e).__name__
    return str(text).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# the service
# ---------------------------------------------------------------------------------------------
@dataclass
class Defaults:
    steps: int
    eta: float
    group_size: int
    group_steps: int
    group_eta: float


class DemoService:
    """The loaded policy and everything the three tabs need.

    Args:
        source: checkpoint or run folder, or a policy YAML (``--policy``), as ``lrpo restore`` takes.
        detector_path: YuNet file or folder (None: the weights registry); missing -> whole photos
            are refused with a message, aligned faces still work.
        runs_root: the run folder (or folder of runs) the Run tab may read; None: no Run tab.
        reward_names: the terms to offer (None: every registered one).
    """

    def __init__(
        self, source: str | Path, device: str = "auto", precision: str = "fp32", detector_path: str | None = None,
        runs_root: str | Path | None = None, limits: UploadLimits = UploadLimits(), max_waiting: int = 4,
        reward_names: list[str] | None = None, ema: bool = True, compile: str = "off",
    ):
        self.device = resolve_device(device)
        self.precision = precision
        self.compile = compile  # auto | off | on: the batch-1 sampling forward (lrpo.policies.compiled.BackgroundCompile)
        self.compiling: BackgroundCompile | None = None
        self.ema = ema
        self.limits = limits
        self.gate = JobGate(max_waiting)
        self.runs = None
        if runs_root is not None:
            self.runs = RunBrowser(runs_root)
        self._load(source)
        self.models = ModelCatalog(self.source, self.runs)
        self.model_name = self.models.start_name
        self._loaded_key: tuple[str, str] = (self.model_name, str(Path(self.source).resolve()))  # as ModelChoice.key
        self.detector, self.detector_error = self._make_detector(detector_path)
        self.terms = probe_reward_terms(self.device, reward_names)

    # -- the model: one loaded at a time, switched by name in the job worker ---------------------
    def _load(self, source: str | Path) -> None:
        """Load ``source`` and set everything that depends on the model (attributes set after it loaded)."""
        policy, diffusion, resolved = load_policy(source, self.device, ema=self.ema, precision=self.precision)
        policy.inference_only()  # the demo never trains it (before its forward is compiled)
        degradation, defaults = self._read_run_settings(resolved, diffusion)
        self.policy, self.diffusion, self.source = policy, diffusion, resolved
        self.resolution = policy.resolution
        self.train_degradation, self.defaults = degradation, defaults
        self.compiling = self._start_compile(policy)

    def _start_compile(self, policy) -> BackgroundCompile | None:
        """``compile`` on: compile the batch-1 forward now (before the demo serves); auto: in a thread
        while it serves eager (a server runs for long, so only the C++ compiler is asked for); off: never."""
        # (the forward count does not limit a server: it runs as long as it is up)
        if not policy.compilable or not compile_decision(self.compile, AUTO_MIN_FORWARDS, self.device)[0]:
            return None
        job = BackgroundCompile(policy, self.device, self.precision)
        if self.compile == "on":
            job.wait()
        return job

    def compiled_forward(self):
        """The loaded model's compiled batch-1 forward when it is ready, else None (eager). Every load
        starts its own compile (:meth:`_load`), so :attr:`compiling` is always the loaded model's."""
        return self.compiling.ready() if self.compiling is not None else None

    def compile_status(self) -> str:
        if self.compiling is None:
            return "off" if self.compile == "off" or self.policy is None or not self.policy.compilable else "off (no C++ compiler)"
        return self.compiling.status()

    def use_model(self, name: str | None) -> None:
        """Make the model called ``name`` (from :attr:`models`' list; None: the current one) the loaded one.

        Called inside the job gate, so one job loads at a time and none runs on a half-switched
        model. The model loaded last stays loaded: a request for it (same checkpoint) loads nothing.
        The previous model is let go before the next loads (two SD models need not fit at once; a
        compile of a pixel model still running in the background holds it until it ends);
        when the next fails to load, the previous is loaded again and the failure is one line.
        """
        if name is None:
            return
        choice = self.models.lookup(name)
        if choice.key == self._loaded_key:
            return
        previous = (self.model_name, self._loaded_key, self.source)
        self.policy, self.compiling = None, None
        _release_memory(self.device)
        try:
            self._load(choice.source)
        except (CheckpointError, ConfigError, MissingWeightsError, ValueError, RuntimeError, OSError, KeyError) as e:
            self._load(previous[2])
            raise DemoError(f"model {name!r} could not be loaded ({_first_line(e)}); still using {previous[0]!r}") from None
        self.model_name, self._loaded_key = choice.name, choice.key

    @staticmethod
    def _read_run_settings(source: Path, diffusion: DiffusionConfig) -> tuple[DegradationConfig | None, Defaults]:
        """The run's training degradation and rollout settings, when the checkpoint is an lrpo run."""
        raw: dict = {}
        if source.is_dir():
            try:
                raw = load_config_dict(source) or {}
            except CheckpointError:
                raw = {}
        lrpo = raw.get("lrpo") if isinstance(raw.get("lrpo"), dict) else {}
        section = lrpo.get("degradation", raw.get("degradation"))
        degradation = None
        if isinstance(section, dict):
            try:
                degradation = from_dict(DegradationConfig, section, prefix="degradation")
            except ConfigError:
                degradation = None
        defaults = Defaults(
            steps=int(diffusion.sample_steps), eta=float(diffusion.eta),
            group_size=int(lrpo.get("group_size", DEFAULT_GROUP_SIZE)),
            group_steps=int(lrpo.get("sample_steps", diffusion.sample_steps)),
            group_eta=float(lrpo.get("eta", 1.0)),  # rollouts are stochastic (SPEC: eta = 1)
        )
        return degradation, defaults

    @staticmethod
    def _make_detector(path: str | None):
        try:
            return FaceDetector(path), None
        except MissingWeightsError as e:
            return None, (f"no face detector: {_first_line(e)}. Tick 'aligned face' to restore a face crop, or put "
                          "the YuNet file on $LRPO_WEIGHTS (lrpo weights fetch yunet) and restart the demo")

    # -- what the page shows before any job ----------------------------------------------------
    def info(self) -> dict:
        available = [t.name for t in self.terms.values() if t.available]
        presets = {name: {"terms": {k: float(v["weight"]) for k, v in spec.items()},
                          "available": all(self.terms.get(k) is not None and self.terms[k].available for k in spec)}
                   for name, spec in PRESETS.items()}
        default_preset = self.default_preset()
        # "none" first: an upload is a real LQ face unless the user picks a degradation
        degradations = ["none"] + (["run"] if self.train_degradation is not None else []) + sorted(DEGRADATION_PRESETS)
        return {
            "model": self.model_name,
            "models": [c.to_json() for c in self.models.choices()],
            "source": str(self.source),
            "resolution": self.resolution,
            "device": str(self.device),
            "compile": self.compile_status(),
            "defaults": vars(self.defaults),
            "detector": self.detector_error is None,
            "detector_error": self.detector_error,
            "terms": {t.name: {"available": t.available, "needs_gt": t.needs_gt, "error": t.error} for t in self.terms.values()},
            "available_terms": available,
            "presets": presets,
            "default_preset": default_preset,
            "degradations": degradations,
            "limits": {"max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels,
                       "text": self.limits.describe(), "max_upscale": MAX_UPSCALE, "max_group_size": MAX_GROUP_SIZE,
                       "max_output_pixels": MAX_OUTPUT_PIXELS, "max_aligned_output_pixels": MAX_ALIGNED_OUTPUT_PIXELS},
            "runs": self.runs.list_runs() if self.runs is not None else None,
            "runs_root": str(self.runs.root) if self.runs is not None else None,
        }

    # -- Restore ---------------------------------------------------------------------------
    def restorer(self, steps: int | None, eta: float | None) -> Restorer:
        sampler = DDIMSampler.from_config(self.diffusion, eta=eta, num_steps=steps)
        return Restorer(self.policy, sampler, self.device, self.precision, detector=self.detector, forward=self.compiled_forward())

    def restore(self, image: np.ndarray, req: RestoreRequest) -> dict:
        """One photo (or aligned crop) -> the restored image, its faces and the time taken."""
        self.use_model(req.model)
        h, w = image.shape[:2]
        steps = self.defaults.steps if req.steps is None else req.steps
        eta = self.defaults.eta if req.eta is None else req.eta
        if steps > self.diffusion.train_timesteps:
            raise DemoError(f"steps must be at most the schedule's {self.diffusion.train_timesteps} timesteps, got {steps}")
        check_restore_size(w, h, req)
        restorer = self.restorer(steps, eta)
        t0 = time.perf_counter()
        notes = []
        if req.aligned:
            out = restorer.restore([image], [req.seed])[0]
            faces = []
            if max(h, w) > 1.1 * min(h, w):
                notes.append(f"the input is {w} x {h}, not square: aligned faces are; untick 'aligned face' for a whole photo")
            timings = {"restore": time.perf_counter() - t0}
        else:
            if self.detector is None:
                raise DemoError(self.detector_error)
            options = PhotoOptions(only_center_face=req.only_center_face, upscale=req.upscale)
            result = restorer.restore_photo(image, seed=req.seed, options=options)
            out, timings = result.image, result.timings
            faces = [dict(f.to_json("upload"), crop=image_uri(result.cropped_faces[f.index]) if f.index in result.cropped_faces else None,
                          restored_crop=image_uri(result.restored_faces[f.index]) if f.index in result.restored_faces else None)
                     for f in result.faces]
            if not result.faces:
                notes.append("no face was found: the photo is returned as it is" + (" (upscaled)" if req.upscale != 1 else ""))
        seconds = time.perf_counter() - t0
        return {
            "image": image_uri(out),
            "width": int(out.shape[1]), "height": int(out.shape[0]),
            "input_width": int(w), "input_height": int(h),
            "faces": faces,
            "restored_faces": sum(bool(f["restored"]) for f in faces),
            "timings": {k: round(float(v), 3) for k, v in timings.items()},
            "seconds": round(seconds, 3),
            "steps": steps, "eta": eta, "seed": req.seed,
            "model": self.model_name,
            "notes": notes,
        }

    # -- Group -----------------------------------------------------------------------------
    def composite(self, req: GroupRequest, has_gt: bool):
        """The composite reward the request asks for, from the terms built at start, and the terms left
        out for want of a GT (name -> why).

        Without a GT (the upload is a real LQ face) the terms that compare with one are left out and
        the others' weights normalised to sum 1 again; when none is left, the request is refused.
        """
        weights = self._requested_weights(req)
        components, left_out = {}, {}
        for key, w in weights.items():
            term = self.terms.get(key)
            if term is None:
                raise DemoError(f"unknown reward term {key!r}; this demo offers {', '.join(sorted(self.terms))}")
            if not term.available:
                raise DemoError(f"reward term {key!r} is not available here: {term.error}")
            if term.needs_gt and not has_gt:
                left_out[key] = "needs a GT: the upload is treated as already degraded (choose a degradation to make it the GT)"
                continue
            components[key] = (term.reward, w)
        if not components:
            names = ", ".join(left_out)
            raise DemoError(f"{names} {'compares' if len(left_out) == 1 else 'compare'} with the undegraded face, and an "
                            "upload treated as already degraded (real LQ) has none: choose a degradation (the upload then "
                            "is the GT), or terms that need no ground truth (e.g. sharpness)")
        total = math.fsum(w for _, w in components.values())
        components = {k: (r, w / total) for k, (r, w) in components.items()}
        try:
            check_weights({k: w for k, (_, w) in components.items()})
        except ValueError as e:
            raise DemoError(str(e)) from None
        return CompositeReward(components), left_out

    def _requested_weights(self, req: GroupRequest) -> dict[str, float]:
        """The weights of the request's preset, or its own weights normalised to sum 1."""
        if req.weights:
            total = math.fsum(req.weights.values())
            if total <= 0:
                raise DemoError("the reward weights sum to 0; give at least one term a weight above 0")
            return {k: v / total for k, v in req.weights.items() if v > 0}  # normalised: they must sum to 1
        name = req.preset or self.default_preset()
        if name is None:
            raise DemoError("no reward preset can be built here; give weights for the available terms")
        if name not in PRESETS:
            raise DemoError(f"unknown reward preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return {k: float(v["weight"]) for k, v in PRESETS[name].items()}

    def default_preset(self) -> str | None:
        """``offline`` when its files are here, else ``no_weights`` (as the quickstart chooses)."""
        for name in ("offline", "no_weights"):
            if all(k in self.terms and self.terms[k].available for k in PRESETS[name]):
                return name
        return None

    def _group_degradation(self, name: str) -> DegradationConfig | None:
        """The degradation that makes the upload the GT; None for "none" (the upload is the LQ itself)."""
        if name == "run":
            return self.train_degradation or DEGRADATION_PRESETS["spec"]
        if name == "none" or name in DEGRADATION_PRESETS:
            return DEGRADATION_PRESETS.get(name)
        raise DemoError(f"degradation must be none, run or one of {', '.join(sorted(DEGRADATION_PRESETS))}; got {name!r}")

    def group(self, image: np.ndarray, req: GroupRequest) -> dict:
        """G candidates for one face, each scored by every term, the total and the advantage."""
        self.use_model(req.model)
        G = self.defaults.group_size if req.group_size is None else req.group_size
        steps = self.defaults.group_steps if req.steps is None else req.steps
        eta = self.defaults.group_eta if req.eta is None else req.eta
        if not 2 <= G <= MAX_GROUP_SIZE:
            raise DemoError(f"G must be in [2, {MAX_GROUP_SIZE}], got {G}")
        if steps > self.diffusion.train_timesteps:
            raise DemoError(f"steps must be at most the schedule's {self.diffusion.train_timesteps} timesteps, got {steps}")
        cfg = self._group_degradation(req.degradation)
        has_gt = cfg is not None
        reward, left_out = self.composite(req, has_gt)  # before any sampling: a bad choice costs nothing
        if reward.caption_terms and not req.caption:
            raise DemoError(f"{', '.join(reward.caption_terms)} scores the face against its caption: type one "
                            "(e.g. 'a smiling woman with short brown hair')")
        meta = [{"caption": req.caption}] * G if req.caption else []

        t0 = time.perf_counter()
        face, notes = _square_face(image, self.resolution)
        hq = to_tensor(face)  # [3, R, R] in [0, 1]
        params = None
        if has_gt:
            lq, params = degrade_group(hq, G, cfg, torch.Generator().manual_seed(req.seed))
        else:
            lq = hq[None].expand(G, -1, -1, -1).contiguous()
        seeds = [derive_seed(req.seed, member) for member in range(G)]  # as collect() seeds a group's members
        sampler = DDIMSampler.from_config(self.diffusion, eta=eta, num_steps=steps)
        with torch.no_grad():
            lq_d = lq.to(self.device)
            cond = self.policy.condition(lq_d)
            traj = sample_trajectories(self.policy, sampler, cond, sample_generators(seeds), record=False, precision=self.precision)
            images = self.policy.decode(traj.sample, cond).float().clamp(0, 1)
            gt = hq[None].expand(G, -1, -1, -1).to(self.device) if has_gt else None
            out = reward(RewardInput(images=images, gt=gt, lq=lq_d, meta=meta))
        adv = group_advantages(out.scores.cpu(), torch.zeros(G, dtype=torch.long))
        term_names = list(reward.components)
        candidates = []
        for j in range(G):
            candidates.append({
                "member": j, "seed": str(seeds[j]),  # 63-bit: a string, JavaScript numbers hold 53 bits
                "image": image_uri(to_uint8(images[j].cpu())),
                "terms": {k: float(out.details[k][j]) for k in term_names},
                "total": float(out.scores[j]),
                "advantage": float(adv.advantages[j]),
            })
        notes += _group_notes(left_out, reward.weights, bool(adv.num_dropped_groups))
        return {
            "lq": image_uri(to_uint8(lq[0])), "gt": image_uri(face) if has_gt else None,
            "upload_is": "gt" if has_gt else "lq", "unavailable_terms": left_out, "model": self.model_name,
            "degradation": req.degradation, "degradation_params": _params_dict(params[0] if isinstance(params, list) else params),
            "weights": reward.weights, "terms": term_names, "candidates": candidates,
            "std": adv.std, "dropped": bool(adv.num_dropped_groups),
            "group_size": G, "steps": steps, "eta": eta, "seed": req.seed,
            "seconds": round(time.perf_counter() - t0, 3), "notes": notes,
        }


def _group_notes(left_out: dict[str, str], weights: dict[str, float], dropped: bool) -> list[str]:
    notes = []
    if left_out:
        total = " + ".join(f"{w:.3g} x {k}" for k, w in weights.items())
        notes.append(f"no GT (the upload is treated as already degraded): {', '.join(left_out)} not available; "
                     f"the total is {total} (weights normalised to sum 1)")
    if dropped:
        notes.append("every candidate scored the same: the group carries no learning signal and training would drop it")
    return notes


def _square_face(image: np.ndarray, size: int) -> tuple[np.ndarray, list[str]]:
    """An aligned face at the policy's resolution; a non-square input is centre-cropped first (and said)."""
    h, w = image.shape[:2]
    notes = []
    if h != w:
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        image = image[y0 : y0 + side, x0 : x0 + side]
        notes.append(f"the face was {w} x {h}; its centre square was used (aligned faces are square)")
    return resize_square(np.ascontiguousarray(image), size), notes


def _params_dict(params) -> dict | None:
    if params is None:
        return None
    if dataclasses.is_dataclass(params):
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(params).items()}
    return None
