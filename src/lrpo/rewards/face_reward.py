"""The Face Reward Model of DiffusionReward (Wu et al., arXiv 2505.17910) as a reward term.

The model is an OpenCLIP ViT-H-14 (LAION-2B weights) fine-tuned HPSv2-style on annotated faces;
its checkpoint (``FaceRewardModel.pth``) is ``{"state_dict": <open_clip CLIP state dict>}``, loaded
there strictly into ``create_model_and_transforms("ViT-H-14", ...)`` of HPSv2's open_clip.

Score of an image x in [0, 1] with caption c (SPEC section 4; DiffusionReward's ``train.py``):
  x' = Resize(224)(x), CLIP-normalised     (bilinear, no antialiasing: torchvision 0.15's tensor
                                            Resize, which DiffusionReward pins; centre crop if not square)
  S_face(x, c) = cos(E_img(x'), E_txt(tokens(c)))    in [-1, 1], no logit scale

The caption of each sample comes from ``meta["caption"]`` (DiffusionReward captions FFHQ faces;
one .txt per image). Captions longer than 77 tokens are truncated as OpenCLIP's tokenizer does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..weights import REFERENCE_HUB_REPO, hub_file, register, resolve
from .base import BaseReward, RewardInput, RewardOutput
from ..model_files import freeze
from ..precision import autocast_factory
from .clip_models import CLIP, clip_preprocess, load_clip
from .clip_tokenizer import CLIPTokenizer
from .registry import register_reward

__all__ = ["FaceReward", "FaceRewardModel", "MissingCaptionError", "caption_cosine"]

FACE_REWARD_WEIGHTS = register(
    hub_file(
        "face-reward-model",
        REFERENCE_HUB_REPO,
        "FaceRewardModel.pth",
        "no licence stated (github.com/01NeuralNinja/DiffusionReward)",
        "DiffusionReward Face Reward Model: OpenCLIP ViT-H-14 fine-tuned on faces, {'state_dict': ...} "
        "(also on Google Drive, file 1ugATjemF-70b4N1dQrQJ8J1cdmiVeqOR, a page rather than a download)",
        # ViT-H-14 is 986 M parameters: 3.9 GB in fp32, 2 GB in fp16
        min_mb=1000.0,
        max_mb=12000.0,
        container="torch",
        unpinned_reason=f"published in {REFERENCE_HUB_REPO} without a sha256 elsewhere; no copy was reachable here "
        "to hash (the Hub states it as the file's ETag at download: checked)",
    )
)
# One NNNNN.txt caption per FFHQ image (read by data.captions as the sidecar layout after extraction).
FFHQ_CAPTIONS = register(
    hub_file(
        "ffhq-captions",
        REFERENCE_HUB_REPO,
        "ffhq_captions.tar.gz",
        "as published in the reference release (no separate licence stated); describes FFHQ (CC BY-NC-SA 4.0)",
        "FFHQ captions for the face reward: a tar.gz of one NNNNN.txt per FFHQ image (70 000)",
        min_mb=0.5,
        max_mb=1000.0,
        container="tar.gz",
        unpinned_reason=f"published in {REFERENCE_HUB_REPO} without a sha256 elsewhere; no copy was reachable here "
        "to hash (the Hub states it as the file's ETag at download: checked)",
    )
)


class MissingCaptionError(ValueError):
    """The face reward needs a caption per image and none was given."""


def caption_cosine(image_features: Tensor, text_features: Tensor, caption_index: Tensor) -> Tensor:
    """cos(image_features[i], text_features[caption_index[i]]) for each i; returns [B] float32.

    image_features [B, D], text_features [U, D] (one row per distinct caption), caption_index [B].
    """
    with torch.autocast(image_features.device.type, enabled=False):
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        return (img * txt[caption_index]).sum(dim=-1)


class FaceRewardModel(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1], captions: B strings) -> [B] cosine similarities.

    Each distinct caption is encoded once (a group of G candidates shares its caption).
    """

    def __init__(
        self,
        clip: CLIP,
        tokenizer: CLIPTokenizer,
        image_size: int = 224,
        interpolation: str = "bilinear",
        antialias: bool = False,
    ):
        super().__init__()
        self.clip = freeze(clip)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.interpolation = interpolation
        self.antialias = antialias

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        vocab_path: str | os.PathLike | None = None,
        *,
        vision_head_width: int | None = None,
        text_head_width: int = 64,
        **kwargs,
    ) -> "FaceRewardModel":
        """Load ``FaceRewardModel.pth`` (or any OpenCLIP ViT checkpoint: a state dict or
        ``{"state_dict": ...}``). GELU, not QuickGELU: the model derives from LAION's ViT-H-14."""
        clip = load_clip(path, quick_gelu=False, vision_head_width=vision_head_width, text_head_width=text_head_width)
        return cls(clip, CLIPTokenizer.from_file(vocab_path), **kwargs)

    def forward(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        if len(captions) != images.shape[0]:
            raise ValueError(f"need one caption per image: {images.shape[0]} images, {len(captions)} captions")
        distinct = list(dict.fromkeys(captions))
        index = torch.tensor([distinct.index(c) for c in captions], device=images.device)
        tokens = self.tokenizer(distinct).to(images.device)
        x = clip_preprocess(images, self.image_size, mode=self.interpolation, antialias=self.antialias)
        return caption_cosine(self.clip.encode_image(x), self.clip.encode_text(tokens), index)


class FaceReward(BaseReward):
    """S_face (SPEC section 4): cosine of the Face Reward Model's image and caption embeddings.

    Reads ``meta[i]["caption"]``; ``default_caption`` (if set) stands in where it is missing,
    otherwise a missing caption is an error naming the sample.
    """

    name = "face_reward"
    needs_gt = False

    def __init__(
        self,
        model: FaceRewardModel,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        default_caption: str | None = None,
    ):
        super().__init__(device)
        self.autocast = autocast_factory(self.device, precision)
        self.model = freeze(model.to(self.device))
        self.default_caption = default_caption

    @classmethod
    def from_registry(
        cls,
        path: str | os.PathLike | None = None,
        vocab_path: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        default_caption: str | None = None,
    ) -> "FaceReward":
        model = FaceRewardModel.from_checkpoint(resolve(FACE_REWARD_WEIGHTS.name, path), vocab_path)
        return cls(model, device=device, precision=precision, default_caption=default_caption)

    @property
    def needs_caption(self) -> bool:  # a term-level default caption stands in for missing ones
        return not self.default_caption

    def captions(self, inp: RewardInput) -> list[str]:
        out = []
        for i in range(inp.batch_size):
            caption = inp.meta_value(i, "caption") or self.default_caption
            if not caption:
                name = inp.meta_value(i, "name")
                raise MissingCaptionError(
                    f"reward {self.name!r} needs meta['caption'] for every image; sample {i}"
                    + (f" ({name})" if name else "")
                    + " has none. Provide captions with the data, or set a default caption for this reward."
                )
            out.append(str(caption))
        return out

    def score(self, inp: RewardInput) -> RewardOutput:
        captions = self.captions(inp)
        with self.autocast():
            cos = self.model(inp.images.clamp(0, 1), captions)
        return RewardOutput(cos.float())


register_reward("face_reward", FaceReward.from_registry)
