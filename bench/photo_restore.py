"""Issue-9 benchmark: restore every face of a folder of ordinary photos, as `lrpo restore` does.

    python bench/photo_restore.py --checkpoint runs/pixel64 --photos ../shared/data/whole --out runs/bench_photos

Runs :func:`lrpo.inference.photo.restore_photos` with the command's defaults (YuNet candidates from score
0.5, restored from 0.8 with the landmark check, faces with eyes >= 8 px apart, --face-policy auto,
ellipse mask, upscale 1) on the CPU, then prints a JSON summary (the face policy's sharpness per
face size: bench/face_policy.py):
photos/s and faces/s over the whole run, the split of the time per stage (detection, alignment,
restoration, paste-back, file I/O), the seam figure over every restored face (see
lrpo.inference.paste: band / surroundings on the output, and the same on the input as reference),
and the round-trip landmark error on the real faces: each face's aligned crop (512 px, no
restoration) pasted alone onto a blank canvas, YuNet run there, mean distance of the five landmarks
to those found in the photo, in photo pixels.

Writes under --out the usual layout plus figure.png (input | restored for the photos with the most
faces) and zoom.png (the largest faces' surroundings, input | restored, enlarged 2x). Both are made
from third-party photos: look at them, keep them out of the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in items:
        out[k] = out.get(k, 0) + 1
    return out


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def round_trip_errors(photos: Path, lines: list[dict], detector, names: dict[str, Path]) -> list[float]:
    from lrpo.data.images import load_rgb
    from lrpo.inference.align import crop_face, invert_affine
    from lrpo.inference.paste import face_mask, paste_face

    errors = []
    square = face_mask(512, "square", erode=0.0, blur=0.0)
    by_photo: dict[str, list[dict]] = {}
    for d in lines:
        if d["restored"]:
            by_photo.setdefault(d["photo"], []).append(d)
    for name, faces in by_photo.items():
        image = load_rgb(names[name])
        for d in faces:
            lm = np.array(d["landmarks"])
            crop, m = crop_face(image, lm, 512)
            canvas = np.full_like(image, 128)
            paste_face(canvas, crop, square, invert_affine(m))
            found = detector.detect(canvas)
            if not found:
                errors.append(float("nan"))
                continue
            back = min(found, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - lm.mean(0)))
            errors.append(float(np.linalg.norm(back.landmarks - lm, axis=1).mean()))
    return errors


def figures(out: Path, lines: list[dict], names: dict[str, Path], count: int = 4) -> None:
    import cv2

    from lrpo.data.images import load_rgb, save_rgb
    from lrpo.data.images import output_names

    restored_name = dict(zip(names, output_names(list(names.values()))))
    per_photo: dict[str, int] = {}
    for d in lines:
        per_photo[d["photo"]] = per_photo.get(d["photo"], 0) + int(d["restored"])
    chosen = sorted(per_photo, key=lambda n: (-per_photo[n], n))[:count]
    rows = []
    for name in chosen:
        a, b = load_rgb(names[name]), load_rgb(out / "restored_imgs" / restored_name[name])
        scale = 384 / a.shape[0]
        size = (round(a.shape[1] * scale), 384)
        rows.append(np.concatenate([cv2.resize(a, size, interpolation=cv2.INTER_AREA), np.full((384, 8, 3), 255, np.uint8),
                                    cv2.resize(b, size, interpolation=cv2.INTER_AREA)], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    save_rgb(out / "figure.png", np.concatenate(rows, axis=0))
    # zoom: the surroundings of the largest restored faces, where a seam would show
    largest = sorted((d for d in lines if d["restored"]), key=lambda d: -d["size"])[:3]
    tiles = []
    for d in largest:
        a, b = load_rgb(names[d["photo"]]), load_rgb(out / "restored_imgs" / restored_name[d["photo"]])
        x, y, w, h = d["box"]
        cx, cy, half = x + w / 2, y + h / 2, 0.9 * max(w, h)
        x0, y0 = max(0, int(cx - half)), max(0, int(cy - half))
        x1, y1 = min(a.shape[1], int(cx + half)), min(a.shape[0], int(cy + half))
        pair = [cv2.resize(im[y0:y1, x0:x1], (256, 256), interpolation=cv2.INTER_CUBIC) for im in (a, b)]
        tiles.append(np.concatenate([pair[0], np.full((256, 8, 3), 255, np.uint8), pair[1]], axis=1))
    if tiles:
        save_rgb(out / "zoom.png", np.concatenate([np.pad(t, ((0, 8), (0, 0), (0, 0)), constant_values=255) for t in tiles], axis=0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a run or checkpoint folder (e.g. a 64 px pixel policy)")
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "whole"), help="a folder or a text file listing photos")
    ap.add_argument("--out", default="runs/bench_photos")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1)")
    ap.add_argument("--no-round-trip", action="store_true")
    args = ap.parse_args()
    photos = Path(args.photos)
    if not photos.exists():
        print(f"photos not found: {photos} (a folder, or a text file listing photos)", file=sys.stderr)
        return 2
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from lrpo.inference.photo import STAGES, PhotoOptions, restore_photos
    from lrpo.data.images import input_paths
    from lrpo.inference.restorer import Restorer

    restorer = Restorer.from_checkpoint(args.checkpoint, steps=args.steps, eta=None, device="cpu")
    out = Path(args.out)
    t0 = time.perf_counter()
    summary = restore_photos(restorer, photos, out, PhotoOptions(), batch_size=args.batch_size, progress=False)
    wall = time.perf_counter() - t0
    lines = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    names = {p.name: p for p in input_paths(photos)}
    seams = np.array([d["seam"] for d in lines if d["seam"] is not None])
    seams_in = np.array([d["seam_input"] for d in lines if d["seam"] is not None and d["seam_input"] is not None])
    t = summary.timings
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)",
        "date": time.strftime("%Y-%m-%d"),
        "checkpoint": str(args.checkpoint),
        "resolution": restorer.resolution,
        "ddim_steps": len(restorer.sampler),
        "photos": len(names),
        "written": len(summary.written),
        "unreadable": [str(e) for e in summary.failed],
        "without_face": len(summary.no_face),
        "faces_found": summary.faces_found,
        "faces_restored": summary.faces_restored,
        "faces_left_alone": _count(d["reason"].split(" (")[0].split(":")[0] for d in lines if d["reason"]),
        "sharpness_median_larger_than_policy": _median([d["sharpness"] for d in lines if d["sharpness"] is not None and d["scale"] > 1]),
        "wall_s": round(wall, 1),
        "photos_per_s": round(len(summary.written) / wall, 3),
        "faces_per_s": round(summary.faces_restored / wall, 3),
        "stage_s": {k: round(t[k], 2) for k in (*STAGES, "io")},
        "stage_share": {k: round(t[k] / sum(t.values()), 4) for k in (*STAGES, "io")},
        "ms_per_face": {k: round(1000 * t[k] / max(1, summary.faces_restored), 2) for k in ("align", "restore", "paste")},
        "ms_per_photo_detect": round(1000 * t["detect"] / max(1, len(summary.written)), 1),
        "seam": {"median": round(float(np.median(seams)), 3), "p90": round(float(np.percentile(seams, 90)), 3),
                 "max": round(float(seams.max()), 3), "input_median": round(float(np.median(seams_in)), 3),
                 "median_output_over_input": round(float(np.median(seams / seams_in)), 3)} if len(seams) else None,
    }
    if not args.no_round_trip:
        from lrpo.inference.detect import FaceDetector

        errs = np.array(round_trip_errors(photos, lines, FaceDetector(), names))
        eyes = np.array([d["size"] for d in lines if d["restored"]])
        result["round_trip_px"] = {}
        # a lone small face on a blank canvas is often not found again: report sizes apart
        for label, sel in (("eyes >= 20 px", eyes >= 20), ("eyes < 20 px", eyes < 20)):
            e, ok = errs[sel], np.isfinite(errs[sel])
            if not ok.any():
                continue
            result["round_trip_px"][label] = {
                "faces": int(sel.sum()), "not_found_again": int((~ok).sum()), "median": round(float(np.median(e[ok])), 2),
                "p90": round(float(np.percentile(e[ok], 90)), 2), "max": round(float(e[ok].max()), 2),
                "median_over_eye_distance": round(float(np.median(e[ok] / eyes[sel][ok])), 4)}
    figures(out, lines, names)
    result["figures"] = [str(out / "figure.png"), str(out / "zoom.png")]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
