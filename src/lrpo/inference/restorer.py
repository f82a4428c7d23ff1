"""Restore faces with a trained policy (``lrpo restore``): aligned crops here, whole photos in
:mod:`lrpo.inference.photo` (through :meth:`Restorer.restore_photo`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import resolve_device
from ..data.images import ImageLoadError, input_paths, load_rgb, output_names, to_tensor, to_uint8
from ..manifest import ascii_name
from ..diffusion.ddim import DDIMSampler
from ..outputs import OutputFolder, one_line, output_folder
from ..policies import Policy
from ..policies.compiled import CompiledForward, compile_decision
from ..policies.loading import load_policy
from ..precision import resolve_precision
from .detect import FaceDetector
from .photo import restore_photo


@dataclass
class Restorer:
    policy: Policy
    sampler: DDIMSampler
    device: torch.device
    precision: str = "auto"  # lrpo.precision: auto = bf16 where the processor has bf16 units
    detector: Any = None  # a FaceDetector (inference.detect) for whole photos; built on first use
    forward: Any = None  # a compiled sampling forward (compile_for), or None: the policy itself

    def compile_for(self, faces: int, batch_size: int, setting: str = "auto") -> str:
        """Compile the sampling forward for a job of ``faces`` faces in batches of ``batch_size``
        when ``setting`` (auto | off | on) says so (lrpo.policies.compiled); returns why."""
        if not self.policy.compilable:
            return "compile: off (the latent policy samples through its own code)"
        if setting == "auto" and self.device.type == "cpu" and batch_size > 1:
            self.forward = None  # bench/cpu_speed.py: as fast eager as compiled at batches of 8 and 24, fp32 and bf16
            return "compile: auto -> off (on the CPU the restoring policy's channels-last forward is as fast eager at batch > 1)"
        forwards = -(-faces // batch_size) * self.sampler.num_steps
        on, note = compile_decision(setting, forwards, self.device)
        self.forward = CompiledForward(self.policy, batch_size) if on else None
        return note

    @property
    def resolution(self) -> int:
        """Side of the faces the policy restores (the crops whole photos are aligned to)."""
        return self.policy.resolution

    def face_detector(self):
        """The YuNet detector for whole photos (registry ``yunet``), made on first use."""
        if self.detector is None:
            self.detector = FaceDetector()
        return self.detector

    def restore_photo(self, image: np.ndarray, seed: int = 0, options=None):
        """Restore every face of an ordinary RGB uint8 photo -> :class:`lrpo.inference.photo.PhotoResult`.

        ``options``: a :class:`lrpo.inference.photo.PhotoOptions` (None: the defaults). Face j (largest
        box first) uses seed ``seed + j``.
        """
        return restore_photo(image, self.restore, self.face_detector(), self.resolution, options, seed)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, steps: int | None = 50, eta: float | None = 0.0, device: str = "auto", precision: str = "fp32",
        ema: bool = True,
    ) -> "Restorer":
        """``steps`` / ``eta`` None: the checkpoint's (or policy file's) ``diffusion.sample_steps`` / ``eta``."""
        dev = resolve_device(device)
        policy, diffusion, _ = load_policy(checkpoint, dev, ema=ema, precision=precision)
        policy.inference_only()  # a restorer never trains its policy
        sampler = DDIMSampler.from_config(diffusion, eta=eta, num_steps=steps)
        return cls(policy, sampler, dev, resolve_precision(precision, dev))

    def restore(self, images: list[np.ndarray], seeds: list[int]) -> list[np.ndarray]:
        """RGB uint8 faces (any sizes) -> restored RGB uint8 faces at each input's size."""
        r, antialias = self.policy.resolution, self.policy.resize_antialias
        lq = torch.stack([_resize_tensor(to_tensor(im), r, antialias=antialias) for im in images]).to(self.device)
        out = self.policy.restore_faces(self.sampler, lq, seeds, self.precision, forward=self.forward).float().cpu()
        return [to_uint8(_resize_tensor(o, im.shape[0], im.shape[1], antialias=antialias)) for o, im in zip(out, images)]

    def keep_detail(self, images: list[np.ndarray], restored: list[np.ndarray]) -> list[np.ndarray]:
        """Restorations of faces larger than the policy with the input's own detail above its resolution:
        input + (restored - the input shrunk to the policy and enlarged back, as :meth:`restore` resizes).
        The policy's correction covers what it resolves; the input's finer band passes unchanged."""
        r, antialias = self.policy.resolution, self.policy.resize_antialias
        out = []
        for im, rest in zip(images, restored):
            x = to_tensor(im)
            round_trip = to_uint8(_resize_tensor(_resize_tensor(x, r, antialias=antialias), im.shape[0], im.shape[1],
                                                 antialias=antialias))
            out.append(np.clip(im.astype(np.int16) + rest.astype(np.int16) - round_trip.astype(np.int16), 0, 255).astype(np.uint8))
        return out


def _resize_tensor(x: torch.Tensor, h: int, w: int | None = None, antialias: bool | None = None) -> torch.Tensor:
    """Bicubic; ``antialias`` (a policy's ``resize_antialias``) None: only when shrinking. True in both
    directions is DiffBIR's resize (upscaling then uses PIL's bicubic, a = -0.5, not torch's plain a = -0.75)."""
    w = h if w is None else w
    if x.shape[-2:] == (h, w):
        return x
    smaller = h * w < x.shape[-2] * x.shape[-1]
    y = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False,
                      antialias=smaller if antialias is None else antialias)[0]
    return y.clamp(0, 1)


@dataclass
class RestoreSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[ImageLoadError] = field(default_factory=list)
    not_square: list[str] = field(default_factory=list)  # inputs more than 10 % off square: whole photos?
    unwritten: list[str] = field(default_factory=list)  # one line per output that could not be written
    larger: int = 0  # inputs larger than the policy's resolution (face_policy decides what they get)
    face_policy: str = "auto"


def restore_folder(
    restorer: Restorer, in_dir: str | Path, out_dir: str | Path | OutputFolder, batch_size: int = 8, seed: int = 0,
    progress: bool = True, overwrite: bool = False, face_policy: str = "auto",
) -> RestoreSummary:
    """Restore every aligned crop of ``in_dir`` (or the one image it names) into ``out_dir/<stem>.png``;
    unreadable files are reported and skipped. Image i uses seed ``seed + i`` (i in sorted order), so results do not depend on
    ``batch_size``. Inputs sharing a stem (``a.jpg``, ``a.png``) are written as ``a_jpg.png``, ``a_png.png``.
    ``out_dir`` follows :mod:`lrpo.outputs` (created on the first output; earlier outputs need ``overwrite``);
    ``cmp/<name>`` holds input | restored. Inputs larger than the policy's resolution (``face_policy``, as for
    photos): auto keeps their detail above it (:meth:`Restorer.keep_detail`), always shrinks, restores and
    enlarges back, never-larger copies them as they are."""
    paths = input_paths(in_dir)
    out = output_folder(in_dir, paths, out_dir, overwrite)
    out_names = output_names(paths)
    summary = RestoreSummary(face_policy=face_policy)
    bar = tqdm(total=len(paths), desc="restore", unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(paths), batch_size):
        batch, seeds, names = [], [], []
        for i, p in enumerate(paths[start : start + batch_size], start=start):
            try:
                batch.append(load_rgb(p))
                h, w = batch[-1].shape[:2]
                if max(h, w) > 1.1 * min(h, w):
                    summary.not_square.append(p.name)
            except ImageLoadError as e:
                summary.failed.append(e)
                bar.write(f"skipping {ascii_name(str(e))}")
                bar.update(1)
                continue
            seeds.append(seed + i)
            names.append(out_names[i])
        if batch:
            _write_crops(out, names, batch, _restore_aligned(restorer, batch, seeds, face_policy, summary), summary)
            bar.update(len(batch))
    bar.close()
    return summary


def _restore_aligned(restorer: Restorer, batch: list[np.ndarray], seeds: list[int], face_policy: str,
                     summary: RestoreSummary) -> list[np.ndarray]:
    """One batch of aligned crops under ``face_policy`` (see :func:`restore_folder`)."""
    larger = [max(im.shape[:2]) > restorer.resolution for im in batch]
    summary.larger += sum(larger)
    todo = [i for i, big in enumerate(larger) if not (big and face_policy == "never-larger")]
    outs = list(batch)
    restored = restorer.restore([batch[i] for i in todo], [seeds[i] for i in todo]) if todo else []
    for i, rest in zip(todo, restored):
        outs[i] = restorer.keep_detail([batch[i]], [rest])[0] if larger[i] and face_policy == "auto" else rest
    return outs


def _write_crops(out: OutputFolder, names: list[str], inputs: list[np.ndarray], images: list[np.ndarray], summary: RestoreSummary) -> None:
    """Write one batch's restorations and their cmp/ (input | restored); one that cannot be written is named in
    the summary, the rest go on."""
    written, restored = [], []
    for name, inp, img in zip(names, inputs, images):
        rel = name
        try:
            restored.append(out.write_image(rel, img))
            written.append(restored[-1])
            rel = f"cmp/{name}"
            written.append(out.write_image(rel, np.concatenate([inp, img], axis=1)))
        except OSError as e:
            summary.unwritten.append(one_line(e, out.folder / rel))
    out.record(written)
    summary.written.extend(restored)
