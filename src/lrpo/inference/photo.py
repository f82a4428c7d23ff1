"""Restore whole photos: detect every face, align it, restore it with the policy, paste it back.

One photo goes through four stages (each timed):

1. detect   YuNet boxes, scores and five landmarks (:mod:`.detect`); doubtful faces (score below
            ``det_threshold``, landmarks far from a frontal face's), faces below the size threshold,
            off-centre (``only_center_face``) or beyond ``max_faces`` are left alone, each with its reason.
2. align    M = least-squares similarity from the landmarks to the FFHQ template at the policy's
            resolution; the ``R x R`` crop is warped from the face's region only (:mod:`.align`).
3. restore  the policy on the crops, batched across photos by :func:`restore_photos`; face j of a
            photo uses seed ``seed + j`` (faces in detection order), so a photo restores the same
            alone or in a folder, at any batch size (up to float rounding).
4. paste    the background upscaled (Lanczos, or the user's upsampler), then each restored crop
            (gray when the photo is; optionally colour-matched to its input crop) warped back with
            A = S_u M^-1 through its feathered mask, faces in turn (:mod:`.paste`); the seam
            figure, sharpness and colour shift of each face measured there.

Face policy (``face_policy``; docs/restoring-photos.md). A policy of resolution R resolves a face
whose crop the alignment does not shrink: eyes at most 126 R / 512 px apart in the photo (16 px
for R = 64); ``scale`` = eye distance / that = photo pixels per crop pixel.

  auto          (default) a face at scale <= 1 is pasted whole: its crop holds all its detail. A
                larger one is restored at R and only the policy's correction is pasted, output =
                background + alpha A(restored - aligned input) (paste.paste_face with a reference):
                it keeps the input's (or the upsampler's) detail above what R resolves, so it is
                never shrunk to R and enlarged back. (Pasting the correction for small faces too
                would keep the input's top octave, which the crop's round trip blurs: the noise a
                restoration removes.)
  always        the restoration replaces the face whatever its size (GFPGAN's way): a face at
                scale s > 1 loses the detail between R and s R.
  never-larger  faces at scale > 1 are left alone, with the reason in faces.jsonl.

Output layout of :func:`restore_photos` (as GFPGAN and CodeFormer write it)::

    OUT/cropped_faces/<stem>_<jj>.png   aligned input crop of face jj
    OUT/restored_faces/<stem>_<jj>.png  its restoration, as pasted
    OUT/cmp/<stem>.png                  input | restored photo side by side, at the input's size
    OUT/restored_imgs/<stem>.png        the restored photo
    OUT/faces.jsonl                     one line per detected face, restored or not
    OUT/.lrpo-manifest.jsonl            what lrpo wrote there (names, sizes, sha256): see lrpo.outputs

OUT is created when the first photo is written; a photo whose outputs cannot be written is named in
the summary and the others go on.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..data.images import ImageLoadError, input_paths, load_rgb, output_names
from ..manifest import ascii_name
from ..outputs import OutputFolder, fit_name, one_line, output_folder
from .align import alignment_matrix, compose, invert_affine, scale_matrix, warp_region
from .align import FFHQ_TEMPLATE_512, TEMPLATE_SIZE, apply_affine
from .detect import MAX_LANDMARK_RESIDUAL, RESTORE_THRESHOLD, DetectedFace, select_faces
from .paste import MASK_SHAPES, centre_figures, color_match, draw_box, face_mask, is_gray, paste_face, seam_ratio, to_gray

__all__ = ["FaceRecord", "PhotoOptions", "PhotoResult", "PhotoSummary", "STAGES", "restore_photo", "restore_photos"]

STAGES = ("detect", "align", "restore", "paste")
FACE_POLICIES = ("auto", "always", "never-larger")
TEMPLATE_EYES = float(np.hypot(*(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0])))  # 125.92 px in a 512 px crop
CENTRE_HALF = 0.75  # face centre: a square of half-side 0.75 x the eye distance around the landmarks' mean (eyes to mouth)
MIN_FACE_SIZE = 8.0  # px between the eyes: the crop then spans ~32 px of the photo (template eyes: 126 of 512 px)

# restore_fn(crops, seeds) -> restored crops: R x R x 3 uint8 each (Restorer.restore)
RestoreFn = Callable[[list[np.ndarray], list[int]], list[np.ndarray]]
# background_upsampler(photo, scale) -> the photo enlarged by scale (RGB uint8); resized to the exact size after
BackgroundUpsampler = Callable[[np.ndarray, float], np.ndarray]


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...


@dataclass
class PhotoOptions:
    min_face_size: float = MIN_FACE_SIZE  # px between the eye landmarks, in the input photo
    only_center_face: bool = False
    max_faces: int | None = None  # None: every face
    upscale: float = 1.0  # output side / input side
    color_match: bool = False  # match each restored face's colour (mean, std) to its input crop
    draw_box: bool = False  # outline detected faces on restored_imgs (green restored, orange left alone)
    mask: str = "ellipse"  # "ellipse" | "square" (see paste.face_mask)
    background_upsampler: BackgroundUpsampler | None = None  # None: Lanczos
    face_policy: str = "auto"  # FACE_POLICIES, see the module docstring
    det_threshold: float = RESTORE_THRESHOLD  # score a face needs to be restored (detect.doubt)
    max_landmark_residual: float = MAX_LANDMARK_RESIDUAL  # px of 512: landmarks further from a frontal face are doubtful

    def validate(self) -> "PhotoOptions":
        if self.min_face_size < 0:
            raise ValueError(f"--min-face-size must be >= 0 px, got {self.min_face_size}")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"--max-faces must be >= 1, got {self.max_faces}")
        if not 0.05 <= self.upscale <= 16:
            raise ValueError(f"--upscale must be in [0.05, 16], got {self.upscale}")
        if self.mask not in MASK_SHAPES:
            raise ValueError(f"--mask must be one of {MASK_SHAPES}, got {self.mask!r}")
        if self.face_policy not in FACE_POLICIES:
            raise ValueError(f"--face-policy must be one of {', '.join(FACE_POLICIES)}, got {self.face_policy!r}")
        if not 0.0 < self.det_threshold < 1.0:
            raise ValueError(f"--det-threshold is a score threshold in (0, 1), got {self.det_threshold}")
        return self


@dataclass
class FaceRecord:
    """One detected face: what faces.jsonl holds (box x, y, w, h and landmarks in input pixels)."""

    index: int
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    size: float  # px between the eyes: what --min-face-size compares
    restored: bool
    reason: str | None = None  # why it was left alone
    seed: int | None = None
    seam: float | None = None  # paste.seam_ratio on the output; None when not restored or not measurable
    seam_input: float | None = None  # the same figure on the input (upscaled), same region and mask: the reference
    scale: float = 0.0  # photo px per crop px (eye distance / the template's at the policy's resolution); > 1: larger than the policy
    paste: str | None = None  # "correction" (the policy's correction over the input) | "whole" (the restoration replaces the face)
    sharpness: float | None = None  # paste.centre_figures: output / input in the face centre
    color_shift: float | None = None  # Delta E of the face centre's mean colour, output vs input

    @property
    def doubtful(self) -> bool:
        return bool(self.reason and self.reason.startswith("doubtful"))

    def to_json(self, photo: str) -> dict:
        return {
            "photo": photo,
            "face": self.index,
            "box": [round(v, 2) for v in self.box],
            "landmarks": np.round(self.landmarks, 2).tolist(),
            "score": round(self.score, 4),
            "size": round(self.size, 2),
            "restored": self.restored,
            "reason": self.reason,
            "seam": None if self.seam is None else round(self.seam, 4),
            "seam_input": None if self.seam_input is None else round(self.seam_input, 4),
            "seed": self.seed,
            "scale": round(self.scale, 3),
            "paste": self.paste,
            "sharpness": None if self.sharpness is None else round(self.sharpness, 4),
            "color_shift": None if self.color_shift is None else round(self.color_shift, 3),
        }


@dataclass
class PhotoResult:
    image: np.ndarray  # the restored photo, RGB uint8, input size x upscale
    faces: list[FaceRecord]  # every detected face, largest box first
    cropped_faces: dict[int, np.ndarray]  # face index -> aligned input crop (restored faces only)
    restored_faces: dict[int, np.ndarray]  # face index -> restored crop, as pasted
    gray: bool
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)

    @property
    def restored_count(self) -> int:
        return sum(f.restored for f in self.faces)


@dataclass
class PreparedPhoto:
    """A photo after detection and alignment, waiting for its faces' restorations."""

    image: np.ndarray
    faces: list[FaceRecord]
    matrices: dict[int, np.ndarray]  # face index -> M (photo -> crop)
    crops: dict[int, np.ndarray]
    gray: bool
    timings: dict[str, float]


def prepare_photo(image: np.ndarray, detector: Detector, size: int, options: PhotoOptions, seed: int = 0) -> PreparedPhoto:
    """Stages 1 and 2: detect, choose, align. ``image``: RGB uint8 ``H x W x 3``."""
    t0 = time.perf_counter()
    found = detector.detect(image)
    reasons = select_faces(found, image.shape, options.min_face_size, options.only_center_face, options.max_faces,
                           options.det_threshold, options.max_landmark_residual)
    t1 = time.perf_counter()
    faces, matrices, crops = [], {}, {}
    for j, (f, why) in enumerate(zip(found, reasons)):
        scale = f.eye_distance / (TEMPLATE_EYES * size / TEMPLATE_SIZE)
        if why is None and options.face_policy == "never-larger" and scale > 1.0:
            why = (f"larger than the policy's {size} px (eyes {f.eye_distance:.0f} px apart, it resolves up to "
                   f"{TEMPLATE_EYES * size / TEMPLATE_SIZE:.0f}; --face-policy never-larger)")
        faces.append(FaceRecord(j, f.box, f.landmarks, f.score, f.eye_distance, why is None, why, seed + j if why is None else None,
                                scale=scale))
        if why is None:
            m = alignment_matrix(f.landmarks, size)
            matrices[j] = m
            crops[j] = warp_region(image, m, size, size, border="reflect")
    t2 = time.perf_counter()
    return PreparedPhoto(image, faces, matrices, crops, is_gray(image), {"detect": t1 - t0, "align": t2 - t1})


def finish_photo(prep: PreparedPhoto, restored: dict[int, np.ndarray], options: PhotoOptions) -> PhotoResult:
    """Stage 4: upscale the background and paste every restored face back through its mask."""
    t0 = time.perf_counter()
    h, w = prep.image.shape[:2]
    out_w, out_h = max(1, round(w * options.upscale)), max(1, round(h * options.upscale))
    canvas = upscale_background(prep.image, out_w, out_h, options)
    s_u = scale_matrix(out_w / w, out_h / h)
    size = next(iter(prep.crops.values())).shape[0] if prep.crops else 0
    mask = face_mask(size, options.mask) if restored else None
    pasted = {}
    for j, face in restored.items():
        face = _fit(face, size)
        if options.color_match:
            face = color_match(face, prep.crops[j], mask)
        if prep.gray:
            face = to_gray(face)  # a gray photo stays gray whatever colours the policy invents
        pasted[j] = face
        record = prep.faces[j]
        record.paste = "whole" if options.face_policy == "always" or record.scale <= 1.0 else "correction"
        reference = None if record.paste == "whole" else prep.crops[j]
        touched = paste_face(canvas, face, mask, compose(s_u, invert_affine(prep.matrices[j])), keep_region=True, reference=reference)
        if touched is not None:
            (x0, y0, x1, y1), alpha, before = touched
            record.seam = _finite(seam_ratio(canvas[y0:y1, x0:x1], alpha))
            record.seam_input = _finite(seam_ratio(before, alpha))
            _measure_centre(record, canvas, before, (x0, y0), s_u)
    if options.draw_box:
        for f in prep.faces:
            draw_box(canvas, f.box, (out_w / w, out_h / h), f.restored)
    timings = dict(prep.timings, paste=time.perf_counter() - t0)
    return PhotoResult(canvas, prep.faces, {j: prep.crops[j] for j in restored}, pasted, prep.gray, timings)


def _measure_centre(record: FaceRecord, canvas: np.ndarray, before: np.ndarray, origin: tuple[int, int], s_u: np.ndarray) -> None:
    """The face centre's sharpness and colour shift (paste.centre_figures), output vs the region before the paste."""
    cx, cy = apply_affine(s_u, record.landmarks.mean(0, keepdims=True))[0] - np.array(origin)
    half = CENTRE_HALF * record.size * float(s_u[0, 0])
    h, w = before.shape[:2]
    x0, y0 = max(0, int(round(cx - half))), max(0, int(round(cy - half)))
    x1, y1 = min(w, int(round(cx + half)) + 1), min(h, int(round(cy + half)) + 1)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    ox, oy = origin
    sharp, shift = centre_figures(canvas[oy + y0:oy + y1, ox + x0:ox + x1], before[y0:y1, x0:x1])
    record.sharpness, record.color_shift = _finite(sharp), _finite(shift)


def _fit(face: np.ndarray, size: int) -> np.ndarray:
    """A restoration at another size than its crop (a restore_fn of another resolution) is resized to it."""
    if face.dtype != np.uint8 or face.ndim != 3 or face.shape[2] != 3:
        raise ValueError(f"restored faces must be RGB uint8 HxWx3, got {face.dtype} {face.shape}")
    if face.shape[:2] == (size, size):
        return face
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_CUBIC)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def upscale_background(image: np.ndarray, out_w: int, out_h: int, options: PhotoOptions) -> np.ndarray:
    """The photo at the output size: the user's upsampler (then fitted exactly), or Lanczos."""
    h, w = image.shape[:2]
    if options.background_upsampler is not None:
        up = np.asarray(options.background_upsampler(image, options.upscale))
        if up.dtype != np.uint8 or up.ndim != 3 or up.shape[2] != 3:
            raise ValueError(f"the background upsampler must return RGB uint8 HxWx3, got {up.dtype} {up.shape}")
        if up.shape[:2] != (out_h, out_w):
            interp = cv2.INTER_AREA if up.shape[0] > out_h else cv2.INTER_LANCZOS4
            up = cv2.resize(up, (out_w, out_h), interpolation=interp)
        return np.ascontiguousarray(up)
    if (out_h, out_w) == (h, w):
        return image.copy()
    interp = cv2.INTER_AREA if out_w < w else cv2.INTER_LANCZOS4
    return cv2.resize(image, (out_w, out_h), interpolation=interp)


def restore_photo(image: np.ndarray, restore_fn: RestoreFn, detector: Detector, size: int,
                  options: PhotoOptions | None = None, seed: int = 0) -> PhotoResult:
    """Restore every face of one RGB uint8 photo; see the module docstring."""
    options = (options or PhotoOptions()).validate()
    prep = prepare_photo(image, detector, size, options, seed)
    t0 = time.perf_counter()
    order = sorted(prep.crops)
    outs = restore_fn([prep.crops[j] for j in order], [prep.faces[j].seed for j in order]) if order else []
    restored = dict(zip(order, outs))
    restore_s = time.perf_counter() - t0
    result = finish_photo(prep, restored, options)
    result.timings["restore"] = restore_s
    return result


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------
@dataclass
class PhotoSummary:
    written: list[Path] = field(default_factory=list)  # restored_imgs/*
    failed: list[ImageLoadError] = field(default_factory=list)
    unwritten: list[str] = field(default_factory=list)  # one line per photo whose outputs could not be written
    no_face: list[str] = field(default_factory=list)  # photos copied as they are (upscaled if asked)
    faces_found: int = 0
    faces_restored: int = 0
    seams: list[float] = field(default_factory=list)
    doubtful: list[str] = field(default_factory=list)  # "photo face j (score s)" per doubtful face, left alone
    larger: int = 0  # restored faces larger than the policy's resolution (scale > 1)
    skipped_larger: int = 0  # faces left alone by --face-policy never-larger
    sharpness: list[tuple[float, float]] = field(default_factory=list)  # (scale, output / input) per restored face
    face_policy: str = "auto"
    resolution: int = 0  # the policy's
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES + ("io",), 0.0))


@dataclass
class _Pending:
    source: str  # the input's file name (faces.jsonl's "photo")
    name: str  # output file name (restored_imgs/<name>)
    stem: str
    prep: PreparedPhoto
    alpha: np.ndarray | None
    restored: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.restored) == len(self.prep.crops)


def restore_photos(
    restorer, source: str | Path, out_dir: str | Path | OutputFolder, options: PhotoOptions | None = None,
    batch_size: int = 8, seed: int = 0, progress: bool = True, detector: Detector | None = None,
    overwrite: bool = False,
) -> PhotoSummary:
    """Restore every photo of ``source`` (an image, a folder, or a file listing images) into the
    layout of the module docstring. Faces are batched across photos (``batch_size`` per forward
    pass); a photo is written and dropped as soon as its faces are back, so memory holds only the
    photos of the current batch. Unreadable files are named and skipped; photos without a face are
    copied (upscaled if asked) and listed in the summary. ``out_dir`` follows :mod:`lrpo.outputs`
    (earlier outputs need ``overwrite``)."""
    options = (options or PhotoOptions()).validate()
    detector = detector or restorer.face_detector()
    size = restorer.policy.resolution
    paths = input_paths(source)
    writer = _PhotoWriter(output_folder(source, paths, out_dir, overwrite), options,
                          PhotoSummary(face_policy=options.face_policy, resolution=size))
    summary = writer.summary
    photo_bar = tqdm(total=len(paths), desc="photos", unit="photo", disable=not progress, dynamic_ncols=True, position=0)
    face_bar = tqdm(total=0, desc="faces", unit="face", disable=not progress, dynamic_ncols=True, position=1)
    pending: list[_Pending] = []
    queue: list[tuple[_Pending, int]] = []

    def run_batch(n: int) -> None:
        batch, queue[:] = queue[:n], queue[n:]
        t0 = time.perf_counter()
        outs = restorer.restore([p.prep.crops[j] for p, j in batch], [p.prep.faces[j].seed for p, j in batch])
        summary.timings["restore"] += time.perf_counter() - t0
        for (p, j), o in zip(batch, outs):
            p.restored[j] = o
        face_bar.update(len(batch))

    def flush() -> None:
        while pending and pending[0].done:
            writer.write(pending.pop(0), photo_bar)
            photo_bar.update(1)

    try:
        for path, name in zip(paths, output_names(paths)):
            t0 = time.perf_counter()
            try:
                image = load_rgb(path)
                alpha = _read_alpha(path)
            except ImageLoadError as e:
                summary.failed.append(e)
                photo_bar.write(f"skipping {ascii_name(str(e))}")
                photo_bar.update(1)
                continue
            summary.timings["io"] += time.perf_counter() - t0
            prep = prepare_photo(image, detector, size, options, seed)
            for k in ("detect", "align"):
                summary.timings[k] += prep.timings[k]
            item = _Pending(path.name, name, Path(name).stem, prep, alpha)
            pending.append(item)
            queue.extend((item, j) for j in sorted(prep.crops))
            face_bar.total += len(prep.crops)
            face_bar.refresh()
            while len(queue) >= batch_size:
                run_batch(batch_size)
            flush()
        while queue:
            run_batch(batch_size)
        flush()
    finally:
        writer.close()
        photo_bar.close()
        face_bar.close()
    return summary


class _PhotoWriter:
    """Writes each finished photo's files into OUT (created on the first) and its faces.jsonl lines."""

    def __init__(self, out: OutputFolder, options: PhotoOptions, summary: PhotoSummary):
        self.out, self.options, self.summary = out, options, summary
        self.log = None  # faces.jsonl, opened with the first photo written

    def write(self, item: _Pending, bar) -> None:
        summary = self.summary
        result = finish_photo(item.prep, item.restored, self.options)
        summary.timings["paste"] += result.timings["paste"]
        t0 = time.perf_counter()
        if not self._write_files(item, result):
            bar.write(f"not written: {summary.unwritten[-1]}")
            return
        if self.log is None:
            self.log = self.out.open_log("faces.jsonl")
        for f in result.faces:
            self.log.write(json.dumps(f.to_json(item.source)) + "\n")
            self._count(item, f)
        self.log.flush()
        summary.faces_found += len(result.faces)
        summary.faces_restored += result.restored_count
        if not result.faces:
            summary.no_face.append(item.name)
        summary.timings["io"] += time.perf_counter() - t0

    def _count(self, item: _Pending, f: FaceRecord) -> None:
        summary = self.summary
        if f.seam is not None:
            summary.seams.append(f.seam)
        if f.doubtful:
            summary.doubtful.append(f"{ascii_name(item.source)} face {f.index} (score {math.floor(f.score * 100 + 1e-9) / 100:.2f})")
        if f.reason and "never-larger" in f.reason:
            summary.skipped_larger += 1
        if f.restored and f.scale > 1.0:
            summary.larger += 1
        if f.restored and f.sharpness is not None:
            summary.sharpness.append((f.scale, f.sharpness))

    def _write_files(self, item: _Pending, result: PhotoResult) -> bool:
        """The photo's image files, each recorded; False (and a line in the summary) when one fails."""
        files: list[tuple[str, np.ndarray, np.ndarray | None]] = [(f"restored_imgs/{item.name}", result.image, item.alpha)]
        for j, crop in result.cropped_faces.items():
            tag = fit_name(f"{item.stem}_{j:02d}.png")
            files += [(f"cropped_faces/{tag}", crop, None), (f"restored_faces/{tag}", result.restored_faces[j], None)]
        if result.faces:
            files.append((f"cmp/{item.name}", comparison(item.prep.image, result, self.options.draw_box), None))
        written = []
        try:
            for rel, image, alpha in files:
                written.append(self.out.write_image(rel, image, _fit_alpha(alpha, image)))
        except OSError as e:
            self.summary.unwritten.append(f"{ascii_name(item.source)}: {one_line(e, self.out.folder / rel)}")
            return False
        finally:
            self.out.record(written)
        self.summary.written.append(written[0])
        return True

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.out.record(["faces.jsonl"])  # complete now: its size and sha256 replace the name-only entry


def comparison(image: np.ndarray, result: PhotoResult, boxes: bool = False) -> np.ndarray:
    """``input | restored`` side by side at the input's size (the restored photo shrunk with an area
    filter when upscaled), the detected faces outlined on both halves when ``boxes``."""
    h, w = image.shape[:2]
    restored = result.image
    if restored.shape[:2] != (h, w):
        restored = cv2.resize(restored, (w, h), interpolation=cv2.INTER_AREA)
    both = np.concatenate([image, restored], axis=1)
    if boxes:
        for f in result.faces:
            x, y, bw, bh = f.box
            for dx in (0, w):
                draw_box(both, (x + dx, y, bw, bh), (1.0, 1.0), f.restored)
    return both


def _fit_alpha(alpha: np.ndarray | None, image: np.ndarray) -> np.ndarray | None:
    """The input's alpha plane at the output's size (upscaled photos), or None."""
    if alpha is None or alpha.shape == image.shape[:2]:
        return alpha
    return cv2.resize(alpha, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def _read_alpha(path: Path) -> np.ndarray | None:
    """The photo's alpha channel (EXIF orientation applied), or None when it has none or is opaque."""
    with Image.open(path) as img:
        if img.mode not in ("RGBA", "LA", "PA") and not (img.mode == "P" and "transparency" in img.info):
            return None
        img.load()
        alpha = np.asarray(ImageOps.exif_transpose(img).convert("RGBA"))[..., 3]
    return None if alpha.min() == 255 else alpha.copy()


def summary_lines(summary: PhotoSummary, out_dir: str | Path) -> list[str]:
    """What ``lrpo restore`` prints after a folder of photos."""
    out = ascii_name(str(out_dir))  # names are printed escaped: a control character in one cannot rewrite the terminal
    if not summary.written:
        lines = [f"no photo was written to {out}"]
    else:
        lines = [f"restored {summary.faces_restored} of {summary.faces_found} detected face(s) in {len(summary.written)} "
                 f"photo(s): {out}/restored_imgs (faces: {out}/faces.jsonl)",
                 f"look at {out}/cmp: each photo with a face, input | restored side by side at the input's size"]
    lines += _face_lines(summary)
    if summary.no_face:
        shown = ", ".join(ascii_name(n) for n in summary.no_face[:5]) + (
            f" and {len(summary.no_face) - 5} more" if len(summary.no_face) > 5 else "")
        lines.append(f"{len(summary.no_face)} photo(s) without a face, copied as they are: {shown}")
    if summary.seams:
        s = np.asarray(summary.seams)
        lines.append(f"seam figure (band / surroundings, ~1 = no seam): median {np.median(s):.2f}, max {s.max():.2f}")
    t = summary.timings
    total = sum(t.values())
    if total > 0:
        lines.append("time: " + ", ".join(f"{k} {t[k]:.1f} s" for k in (*STAGES, "io")) + f" ({total:.1f} s)")
    return lines


def _face_lines(summary: PhotoSummary) -> list[str]:
    """The summary's lines on doubtful faces, faces larger than the policy, and sharpness."""
    lines, r = [], summary.resolution
    if summary.doubtful:
        shown = ", ".join(summary.doubtful[:3]) + (f" and {len(summary.doubtful) - 3} more" if len(summary.doubtful) > 3 else "")
        lines.append(f"{len(summary.doubtful)} doubtful face(s) left alone (score below --det-threshold or not a frontal face; "
                     f"reasons in faces.jsonl): {shown}")
    if summary.skipped_larger:
        lines.append(f"{summary.skipped_larger} face(s) larger than the policy's {r} px left alone (--face-policy never-larger)")
    if summary.larger:
        how = {"auto": "restored at its resolution; their own detail above it kept (--face-policy auto)",
               "always": "shrunk to it, restored and enlarged back: they lose detail (--face-policy always)"}[summary.face_policy]
        lines.append(f"{summary.larger} face(s) larger than the policy's {r} px: {how}")
    if summary.sharpness:
        ratio = np.asarray([v for _, v in summary.sharpness])
        lines.append(f"sharpness of the face centres, output / input (1 = as sharp): median {np.median(ratio):.2f}, "
                     f"min {ratio.min():.2f} over {len(ratio)} face(s)")
    return lines


def load_upsampler(spec: str) -> BackgroundUpsampler:
    """``module:function`` or ``path/to/file.py:function`` -> the callable (``--bg-upsampler``)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"--bg-upsampler {spec!r}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"--bg-upsampler: {path} not found")
        module_spec = importlib.util.spec_from_file_location(f"lrpo_bg_upsampler_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"--bg-upsampler: cannot import {target!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--bg-upsampler: {target} has no callable {attr!r}")
    return fn
