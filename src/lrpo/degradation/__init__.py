"""BFR degradation (SPEC section 7): Gaussian kernels, batched torch ops, the pipeline, paired sets."""

import importlib

# where each public name lives; the submodules load on first use (start-up time: the pipeline imports
# torch, and `lrpo --help` builds the degrade parser from lrpo.degradation.arguments without it)
_HOME = {
    "kernels": ("gaussian_kernel", "gaussian_kernels"),
    "ops": ("add_gaussian_noise", "blur", "jpeg_decode_rgb", "jpeg_encode_rgb", "jpeg_roundtrip", "quantize_uint8",
            "reflect101_pad", "resize_bilinear", "scaled_size"),
    "paired": ("PairedSetSummary", "image_seed", "make_paired_set", "read_params_jsonl", "run_degrade"),
    "arguments": ("add_degrade_arguments",),
    "pipeline": ("DegradationParams", "degrade", "degrade_cv2", "degrade_group", "gaussian_kernel_np", "sample_params"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


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
