"""Face data: robust image IO, datasets, and the group sampler (SPEC sections 3 and 7)."""

from lrpo.data.datasets import FaceImageSet, LQOnlySet, PairedSet
from lrpo.data.groups import Group, GroupSampler, derive_seed, make_group_lq, plan_epoch, shard_groups
from lrpo.data.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    list_images,
    load_many,
    load_rgb,
    resize_square,
    save_rgb,
    to_tensor,
    to_uint8,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "list_images",
    "load_many",
    "load_rgb",
    "resize_square",
    "save_rgb",
    "to_tensor",
    "to_uint8",
    "FaceImageSet",
    "PairedSet",
    "LQOnlySet",
    "Group",
    "GroupSampler",
    "derive_seed",
    "plan_epoch",
    "shard_groups",
    "make_group_lq",
]
