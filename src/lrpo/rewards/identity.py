"""Identity reward: cosine similarity of face-recognition embeddings of output and ground truth.

Pipeline for a batch of FFHQ-aligned faces [B, 3, H, W] in [0, 1]:

1. Alignment to the 112x112 crop recognition networks are trained on (the ArcFace 5-point
   template). ``align="fixed"`` (default) uses one similarity transform for every image: from the
   mean landmark positions of FFHQ-aligned faces (measured, see :data:`FFHQ_LANDMARKS`) to the
   template. It is deterministic and cannot fail on a bad restoration. ``align="detect"`` finds the
   5 landmarks of each image with YuNet and falls back to the fixed transform when no face is found.
2. Warping in torch for the whole batch, after an antialiased resize that makes the warp's scale
   about 1 (a 512 px face shrinks 3.5x into the crop; sampling it bilinearly would alias).
3. Embedding: SFace through OpenCV's dnn module (one image per forward pass: the published ONNX
   files give wrong results when batched in OpenCV 4.13), any other 112x112 ONNX model the same
   way, or a torch module (batched). Input normalisation is configurable: SFace takes RGB in
   [0, 255] as is (what ``cv2.FaceRecognizerSF.feature`` feeds it); ArcFace (insightface) takes
   (RGB - 127.5) / 127.5.
4. Score: cosine(embedding(output), embedding(GT)) in [-1, 1]. GT embeddings are cached by a key
   from ``meta`` (default ``meta[i]["name"]``), since the same GT is scored against every member
   of its group and across epochs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import weights
from ..data.geometry import similarity_transform
from .base import BaseReward, RewardInput, RewardOutput
from .registry import register_reward

__all__ = [
    "ARCFACE_TEMPLATE",
    "FFHQ_LANDMARKS",
    "FaceEmbedder",
    "IdentityReward",
    "NORMALISATION",
    "YuNetLandmarks",
    "align_faces",
    "ffhq_landmarks",
    "warp_affine",
]

# Mean YuNet (face_detection_yunet_2023mar) landmarks of the 181 FFHQ-style aligned 512x512 faces
# of shared/data/faces-hq (a face found in every image; the largest face taken), divided by 512
# after adding 0.5 (pixel centres at k + 0.5), so they apply to any resolution. Order as YuNet and
# ArcFace: eye on the image's left, eye on the right, nose tip, left and right mouth corners.
# Per-landmark spread over those faces: 4-10 px std at 512 px (about 1-2 % of the side).
FFHQ_LANDMARKS = np.array(
    [
        [0.37867, 0.47223],
        [0.62217, 0.47497],
        [0.50312, 0.61781],
        [0.38835, 0.72193],
        [0.60541, 0.72478],
    ]
)

# The standard ArcFace 5-point template of a 112x112 aligned crop (pixel coordinates).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
CROP_SIZE = 112

# (mean, std) applied to RGB in [0, 255] before the network: input = (rgb255 - mean) / std.
NORMALISATION: dict[str, tuple[float, float]] = {
    "sface": (0.0, 1.0),
    "arcface": (127.5, 127.5),
}


# ---------------------------------------------------------------------------------------------
# geometry (pure functions)
# ---------------------------------------------------------------------------------------------
def ffhq_landmarks(height: int, width: int) -> np.ndarray:
    """[5, 2] (x, y) pixel coordinates (pixel centres at integers) of the mean FFHQ landmarks."""
    return FFHQ_LANDMARKS * np.array([width, height]) - 0.5


def warp_affine(images: Tensor, matrices: Tensor, out_size: int = CROP_SIZE) -> Tensor:
    """Batched cv2.warpAffine (bilinear, zero border) in torch.

    Args:
        images: [B, C, H, W] float.
        matrices: [B, 2, 3] float, mapping input pixel (x, y) to output pixel (u, v); pixel centres
            at integer coordinates, as in OpenCV.
    Returns:
        [B, C, out_size, out_size].
    """
    b, _, h, w = images.shape
    m = matrices.to(torch.float64)
    lin_inv = torch.linalg.inv(m[:, :, :2])  # output -> input
    t = m[:, :, 2:]
    v, u = torch.meshgrid(torch.arange(out_size, dtype=torch.float64), torch.arange(out_size, dtype=torch.float64), indexing="ij")
    uv = torch.stack((u, v), -1).reshape(1, -1, 2, 1).to(m.device)  # [1, P, 2, 1]
    xy = (lin_inv[:, None] @ (uv - t[:, None]))[..., 0]  # [B, P, 2] input pixel coordinates
    # align_corners=False: pixel centre p sits at normalised (2p + 1) / size - 1
    grid = torch.stack(((2 * xy[..., 0] + 1) / w - 1, (2 * xy[..., 1] + 1) / h - 1), -1)
    grid = grid.reshape(b, out_size, out_size, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def align_faces(images: Tensor, landmarks: np.ndarray | None = None, out_size: int = CROP_SIZE) -> Tensor:
    """Aligned 112x112 crops of FFHQ-aligned faces.

    Args:
        images: [B, 3, H, W] float in [0, 1].
        landmarks: [B, 5, 2] pixel landmarks per image, or None for the fixed FFHQ template.
    Returns:
        [B, 3, out_size, out_size] float in [0, 1].
    """
    b, _, h, w = images.shape
    template = ARCFACE_TEMPLATE * (out_size / CROP_SIZE)
    if landmarks is None:
        landmarks = np.broadcast_to(ffhq_landmarks(h, w), (b, 5, 2))
    mats = np.stack([similarity_transform(lm, template) for lm in landmarks])
    # shrink first (antialiased) so the warp itself does not have to minify
    scale = float(np.median(np.hypot(mats[:, 0, 0], mats[:, 0, 1])))
    if scale < 1.0:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        images = F.interpolate(images, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        # input pixel p -> (p + 0.5) * n / size - 0.5 in the resized image
        sx, sy = nw / w, nh / h
        to_resized = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        mats = mats @ np.linalg.inv(to_resized)
    matrices = torch.from_numpy(mats).to(images.device)
    return warp_affine(images, matrices, out_size).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# landmark detection (YuNet through OpenCV)
# ---------------------------------------------------------------------------------------------
class YuNetLandmarks:
    """5-point landmarks of the largest face in an image, with OpenCV's YuNet detector."""

    def __init__(self, path: str | os.PathLike | None = None, score_threshold: float = 0.5):
        self.path = weights.resolve("yunet", path)
        self._detector = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), score_threshold, 0.3, 5000)

    def __call__(self, image: Tensor) -> np.ndarray | None:
        """image: [3, H, W] float RGB in [0, 1] -> [5, 2] pixel (x, y), or None when no face is found."""
        bgr = np.ascontiguousarray(_to_uint8_hwc(image)[..., ::-1])
        self._detector.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = self._detector.detect(bgr)
        if faces is None or len(faces) == 0:
            return None
        best = faces[np.argmax(faces[:, 2] * faces[:, 3])]
        return best[4:14].reshape(5, 2).astype(np.float64)


def _to_uint8_hwc(image: Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).mul(255).round().to("cpu", torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------
# embedding
# ---------------------------------------------------------------------------------------------
class FaceEmbedder:
    """Face images -> L2-normalised identity embeddings.

    Args:
        path: an ONNX file (or a folder holding the registry file). None: the registry's
            ``weights_name`` resolved through :func:`lrpo.weights.resolve` ($LRPO_WEIGHTS, cache).
        weights_name: registry name(s) tried in order when ``path`` is None. Default: the fp32
            SFace, then the int8 one.
        normalisation: a key of :data:`NORMALISATION` or an explicit (mean, std) on [0, 255] RGB.
        align: "fixed" (FFHQ template) or "detect" (YuNet landmarks, fixed as fallback).
        detector_path: YuNet file for ``align="detect"`` (registry "yunet" by default).
        module: a torch module mapping [B, 3, 112, 112] normalised RGB to [B, D]; replaces the ONNX.
        device: where the torch module and the warping run.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        weights_name: str | tuple[str, ...] = ("sface", "sface-int8"),
        normalisation: str | tuple[float, float] = "sface",
        align: str = "fixed",
        detector_path: str | os.PathLike | None = None,
        module: torch.nn.Module | None = None,
        device: str | torch.device = "cpu",
    ):
        if align not in ("fixed", "detect"):
            raise ValueError(f"FaceEmbedder: align must be 'fixed' or 'detect', got {align!r}")
        if isinstance(normalisation, str):
            if normalisation not in NORMALISATION:
                raise ValueError(f"FaceEmbedder: unknown normalisation {normalisation!r}; known: {sorted(NORMALISATION)}")
            normalisation = NORMALISATION[normalisation]
        self.mean, self.std = (float(v) for v in normalisation)
        self.align = align
        self.device = torch.device(device)
        self.detector = YuNetLandmarks(detector_path) if align == "detect" else None
        self.last_detected: Tensor | None = None  # [B] bool of the latest embed() in detect mode
        self.module = module.to(self.device).eval() if module is not None else None
        self.path: Path | None = None
        self._net = None
        if module is None:
            self.path = _resolve_first(weights_name, path)
            self._net = cv2.dnn.readNetFromONNX(str(self.path))

    def crops(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> aligned [B, 3, 112, 112] in [0, 1]."""
        images = images.to(self.device, torch.float32)
        landmarks = None
        if self.detector is not None:
            fixed = ffhq_landmarks(*images.shape[-2:])
            found = [self.detector(img) for img in images]
            self.last_detected = torch.tensor([lm is not None for lm in found])
            landmarks = np.stack([fixed if lm is None else lm for lm in found])
        return align_faces(images, landmarks)

    @torch.no_grad()
    def embed_crops(self, crops: Tensor) -> Tensor:
        """Aligned crops [B, 3, 112, 112] RGB in [0, 1] -> [B, D] float32 unit vectors."""
        x = (crops.to(self.device, torch.float32) * 255.0 - self.mean) / self.std
        if self.module is not None:
            feats = self.module(x).float()
        else:
            blobs = x.cpu().numpy().astype(np.float32)
            out = []
            for blob in blobs:  # see the module docstring: batched ONNX forwards are wrong in cv2
                self._net.setInput(blob[None])
                out.append(self._net.forward().reshape(-1).copy())
            feats = torch.from_numpy(np.stack(out)).to(self.device)
        if not torch.isfinite(feats).all():
            raise RuntimeError(f"face embedding model {self.path or type(self.module).__name__} returned non-finite values")
        return F.normalize(feats.flatten(1), dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """FFHQ-aligned faces [B, 3, H, W] RGB in [0, 1] -> [B, D] float32 unit vectors."""
        return self.embed_crops(self.crops(images))


def _resolve_first(names: str | tuple[str, ...], path) -> Path:
    names = (names,) if isinstance(names, str) else tuple(names)
    errors = []
    for name in names:
        try:
            return weights.resolve(name, path)
        except weights.MissingWeightsError as e:
            errors.append(str(e))
    raise weights.MissingWeightsError(" | ".join(errors))


# ---------------------------------------------------------------------------------------------
# reward
# ---------------------------------------------------------------------------------------------
class IdentityReward(BaseReward):
    """cos(embedding(output), embedding(GT)) per sample, in [-1, 1].

    GT embeddings are cached (LRU, ``cache_size`` entries) under (meta[i][cache_key], H, W); samples
    without that key are embedded every time. Details: ``detected`` (1/0) in ``align="detect"`` mode.
    """

    name, needs_gt = "identity", True

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        align: str = "fixed",
        normalisation: str | tuple[float, float] = "sface",
        weights_name: str | tuple[str, ...] = ("sface", "sface-int8"),
        detector_path: str | os.PathLike | None = None,
        cache_key: str | None = "name",
        cache_size: int = 4096,
        embedder: FaceEmbedder | None = None,
        device: str = "cpu",
    ):
        super().__init__(device)
        self.embedder = embedder or FaceEmbedder(
            path, weights_name, normalisation, align, detector_path, device=device
        )
        self.cache_key, self.cache_size = cache_key, cache_size
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def score(self, inp: RewardInput) -> RewardOutput:
        out_emb = self.embedder.embed(inp.images)
        details = {}
        if self.embedder.last_detected is not None:
            details["detected"] = self.embedder.last_detected.float().to(out_emb.device)
        gt_emb = self._gt_embeddings(inp).to(out_emb.device)
        cosine = (out_emb * gt_emb).sum(1).clamp(-1, 1)
        return RewardOutput(cosine, details)

    def _gt_embeddings(self, inp: RewardInput) -> Tensor:
        size = tuple(inp.gt.shape[-2:])
        keys = [self._key(inp, i, size) for i in range(inp.batch_size)]
        missing = [i for i, k in enumerate(keys) if k is None or k not in self._cache]
        fresh = self.embedder.embed(inp.gt[missing]) if missing else None
        rows: list[Tensor | None] = [None] * inp.batch_size
        for j, i in enumerate(missing):
            rows[i] = fresh[j]
            if keys[i] is not None:
                self._remember(keys[i], fresh[j])
        for i, k in enumerate(keys):
            if rows[i] is None:
                self._cache.move_to_end(k)
                rows[i] = self._cache[k]
        return torch.stack(rows)

    def _key(self, inp: RewardInput, i: int, size: tuple) -> tuple | None:
        if self.cache_key is None or self.cache_size <= 0:
            return None
        value = inp.meta_value(i, self.cache_key)
        return None if value is None else (str(value), *size)

    def _remember(self, key: tuple, emb: Tensor) -> None:
        self._cache[key] = emb.detach()
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


register_reward("identity", IdentityReward)
