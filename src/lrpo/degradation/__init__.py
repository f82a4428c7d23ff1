"""BFR degradation (SPEC section 7): Gaussian kernels, batched torch ops, the pipeline, paired sets."""

from lrpo.degradation.kernels import gaussian_kernel, gaussian_kernels
from lrpo.degradation.ops import (
    add_gaussian_noise,
    blur,
    jpeg_decode_rgb,
    jpeg_encode_rgb,
    jpeg_roundtrip,
    quantize_uint8,
    reflect101_pad,
    resize_bilinear,
    scaled_size,
)
from lrpo.degradation.paired import (
    PairedSetSummary,
    add_degrade_arguments,
    image_seed,
    make_paired_set,
    read_params_jsonl,
    run_degrade,
)
from lrpo.degradation.pipeline import (
    DegradationParams,
    degrade,
    degrade_cv2,
    degrade_group,
    gaussian_kernel_np,
    sample_params,
)

__all__ = [
    "gaussian_kernel",
    "gaussian_kernels",
    "add_gaussian_noise",
    "blur",
    "jpeg_encode_rgb",
    "jpeg_decode_rgb",
    "jpeg_roundtrip",
    "quantize_uint8",
    "reflect101_pad",
    "resize_bilinear",
    "scaled_size",
    "DegradationParams",
    "sample_params",
    "degrade",
    "degrade_group",
    "degrade_cv2",
    "gaussian_kernel_np",
    "PairedSetSummary",
    "image_seed",
    "make_paired_set",
    "read_params_jsonl",
    "add_degrade_arguments",
    "run_degrade",
]
