"""Issue-23 benchmark: does restoring a photo ever make its faces worse, and are only faces restored?

    OMP_NUM_THREADS=1 python bench/face_policy.py --checkpoint /work/runs/base700 --photos ../shared/data/whole \
        --weights ../shared/weights --json bench/results/face_policy.json

Part 1 (sharpness, needs --checkpoint): every photo's faces are detected and aligned as ``lrpo restore``
does with its defaults, restored once by the policy, and pasted back under each face policy
(``always``: the restoration replaces the face; ``auto``: only the policy's correction is added, see
lrpo.inference.photo), at upscale 1 and 2. Per face, in the face centre (a square of 1.5 x the eye
distance around the landmarks' mean): sharpness = Laplacian variance of the output / of the input
(at upscale 2, of the input enlarged by Lanczos: what ``-s 2`` gives without a policy), and colour
shift = Delta E of the mean L*a*b* colour (lrpo.inference.paste.centre_figures). Printed as a table
per face-size bucket (scale = photo pixels per crop pixel; > 1: the face is larger than the policy).

Part 2 (detection, no model): the annotated detections of bench/results/face_detections_annotated.json
(YuNet from score 0.3, labelled by eye; unannotated detections scoring >= 0.9 are faces) against
the restore decision (lrpo.inference.detect.doubt) at several thresholds, with and without the
landmark check: precision = restored faces / restored detections, recall = restored faces / faces.

Nothing is written but the JSON: the photos are third-party; no image made from them is kept.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = ROOT / "bench" / "results" / "face_detections_annotated.json"
BUCKETS = [(0.0, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, float("inf"))]  # scale ranges
VARIANTS = [("always", 1.0), ("auto", 1.0), ("always", 2.0), ("auto", 2.0)]


def load_photo(path: Path):
    from lrpo.data.images import ImageLoadError, load_rgb

    try:
        return load_rgb(path)
    except ImageLoadError:
        return None


def restore_once(restorer, detector, photos: list[Path], limit: int | None):
    """(name, prepared photo, restored crops) per photo with a face to restore."""
    from lrpo.inference.photo import PhotoOptions, prepare_photo

    options = PhotoOptions()
    done = []
    for path in photos[:limit]:
        image = load_photo(path)
        if image is None:
            continue
        prep = prepare_photo(image, detector, restorer.resolution, options)
        order = sorted(prep.crops)
        if not order:
            continue
        outs = restorer.restore([prep.crops[j] for j in order], [prep.faces[j].seed for j in order])
        done.append((path.name, prep, dict(zip(order, outs))))
    return done


def paste_variants(done) -> dict[str, list[dict]]:
    """Per variant name, one row per restored face: scale, eye distance, sharpness, colour shift."""
    from lrpo.inference.photo import PhotoOptions, finish_photo

    rows: dict[str, list[dict]] = {}
    for policy, upscale in VARIANTS:
        name = f"{policy} -s {upscale:g}"
        options = PhotoOptions(face_policy=policy, upscale=upscale)
        for photo, prep, restored in done:
            own = dataclasses.replace(prep, faces=[copy.copy(f) for f in prep.faces])
            for f in finish_photo(own, restored, options).faces:
                if f.restored and f.sharpness is not None:
                    rows.setdefault(name, []).append({"photo": photo, "face": f.index, "scale": f.scale, "eyes": f.size,
                                                      "sharpness": f.sharpness, "color_shift": f.color_shift})
    return rows


def bucket_table(rows: dict[str, list[dict]], resolution: int) -> list[dict]:
    eyes_per_scale = 125.92 * resolution / 512
    table = []
    for name, faces in rows.items():
        for lo, hi in BUCKETS:
            sel = [r for r in faces if lo < r["scale"] <= hi]
            if not sel:
                continue
            s = np.array([r["sharpness"] for r in sel])
            c = np.array([r["color_shift"] for r in sel])
            table.append({"variant": name, "scale": f"({lo:g}, {hi:g}]", "eyes_px": f"({lo * eyes_per_scale:.0f}, {hi * eyes_per_scale:.0f}]",
                          "faces": len(sel), "sharpness_median": round(float(np.median(s)), 3),
                          "sharpness_q10": round(float(np.quantile(s, 0.1)), 3), "share_below_0.9": round(float((s < 0.9).mean()), 3),
                          "color_shift_median": round(float(np.median(c)), 2)})
        s = np.array([r["sharpness"] for r in faces if r["scale"] > 1])
        if len(s):
            table.append({"variant": name, "scale": "(1, inf]", "eyes_px": f"({eyes_per_scale:.0f}, inf]", "faces": len(s),
                          "sharpness_median": round(float(np.median(s)), 3), "sharpness_q10": round(float(np.quantile(s, 0.1)), 3),
                          "share_below_0.9": round(float((s < 0.9).mean()), 3), "color_shift_median": None})
    return table


def detection_figures(photos_dir: Path, weights: Path, skimage_names: list[str]) -> list[dict]:
    """Precision / recall of the restore decision on the annotated detections (see the module docstring)."""
    from skimage import data as skdata

    from lrpo.inference.detect import MAX_LANDMARK_RESIDUAL, FaceDetector, doubt

    notes = json.loads(ANNOTATIONS.read_text())["detections"]
    labels = {(d["photo"], tuple(d["box"])): d["face"] for d in notes}
    detector = FaceDetector(weights, 0.3)
    found = []  # (score, residual, face?)
    names = [p.name for p in sorted(photos_dir.iterdir())] + [f"skimage:{n}" for n in skimage_names]
    for name in names:
        image = getattr(skdata, name.split(":")[1])() if name.startswith("skimage:") else load_photo(photos_dir / name)
        if image is None:
            continue
        image = np.ascontiguousarray(np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3])
        for f in detector.detect(image):
            key = (name, tuple(round(v, 1) for v in f.box))
            face = labels.get(key, True if f.score >= 0.9 else None)
            if face is None:
                raise SystemExit(f"{name}: detection {key[1]} (score {f.score:.2f}) is not annotated in {ANNOTATIONS.name}")
            found.append((f, face))
    out = []
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        for geometry in (False, True):
            limit = MAX_LANDMARK_RESIDUAL if geometry else float("inf")
            restored = [face for f, face in found if doubt(f, threshold, limit) is None]
            faces = sum(face for _, face in found)
            out.append({"det_threshold": threshold, "landmark_check": geometry, "restored": len(restored),
                        "false_faces": len(restored) - sum(restored), "precision": round(sum(restored) / max(1, len(restored)), 3),
                        "recall": round(sum(restored) / max(1, faces), 3), "faces": faces, "non_faces": len(found) - faces})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="the policy (part 1 is skipped without it)")
    p.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "whole"))
    p.add_argument("--weights", default=str(ROOT.parent / "shared" / "weights"), help="folder holding YuNet")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    p.add_argument("--limit", type=int, default=None, help="first N photos only")
    p.add_argument("--json", default=None, help="write the figures there")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from lrpo.inference.detect import FaceDetector
    from lrpo.inference.restorer import Restorer

    photos = sorted(Path(args.photos).iterdir())
    report = {"photos": args.photos, "command": " ".join(sys.argv)}
    t0 = time.perf_counter()
    report["detection"] = detection_figures(Path(args.photos), Path(args.weights), ["chelsea", "coffee", "rocket", "astronaut", "camera", "hubble_deep_field"])
    if args.checkpoint:
        from lrpo.checkpoint import find_checkpoint

        report["checkpoint"] = str(find_checkpoint(args.checkpoint))  # a run folder's `latest` moves while it trains
        restorer = Restorer.from_checkpoint(args.checkpoint, args.steps, None, "cpu", "auto")
        restorer.detector = FaceDetector(args.weights)
        done = restore_once(restorer, restorer.detector, photos, args.limit)
        report.update(resolution=restorer.resolution, steps=restorer.sampler.num_steps,
                      sharpness=bucket_table(paste_variants(done), restorer.resolution))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
