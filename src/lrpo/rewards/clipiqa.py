"""CLIP-IQA (Wang, Chan, Loy, AAAI 2023) as defined by pyiqa's ``clipiqa`` metric.

For an image x in [0, 1] and P antonym prompt pairs (t_k^+, t_k^-):
  e(x)      = CLIP image embedding of (x - CLIP_MEAN) / CLIP_STD          (RN50, OpenAI weights)
  u_k^±     = CLIP text embedding of t_k^±
  c_k^±     = cos(e(x), u_k^±)
  p_k       = softmax([s c_k^+, s c_k^-])[0] = sigmoid(s (c_k^+ - c_k^-)),  s = exp(logit_scale) = 100
  CLIPIQA(x) = (1 / P) sum_k p_k            in (0, 1), higher is better

Defaults follow pyiqa (IQA-PyTorch, ``pyiqa/archs/clipiqa_arch.py``), the implementation BFR papers
report as CLIPIQA: the five pairs below, RN50, the image fed **at its own resolution** with the
attention pool's positional embedding **switched off** (``pos_embedding=False``). ``image_size=224``
gives CLIP's own preprocessing instead (shorter side resized to 224, bicubic, centre crop, with the
positional embedding); scores then differ from pyiqa's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..weights import resolve
from .base import BaseReward, RewardInput, RewardOutput
from ..model_files import freeze
from ..precision import autocast_factory
from .clip_models import CLIP, CLIP_RN50_WEIGHTS, clip_preprocess, load_clip
from .clip_tokenizer import CLIPTokenizer
from .registry import register_reward

__all__ = ["CLIPIQA", "CLIPIQAReward", "CLIPIQA_PROMPT_PAIRS", "antonym_pair_probabilities"]

# (positive, negative) prompts of pyiqa's "clipiqa" metric, in its order.
CLIPIQA_PROMPT_PAIRS: tuple[tuple[str, str], ...] = (
    ("Good image", "bad image"),
    ("Sharp image", "blurry image"),
    ("sharp edges", "blurry edges"),
    ("High resolution image", "low resolution image"),
    ("Noise-free image", "noisy image"),
)


def antonym_pair_probabilities(image_features: Tensor, text_features: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Probability of the positive prompt of each pair; returns [B, P] float32.

    image_features: [B, D]; text_features: [2P, D] ordered (pos_1, neg_1, pos_2, neg_2, ...);
    neither needs to be normalised. logit_scale is the multiplier s (already exponentiated).
    """
    if text_features.shape[0] % 2:
        raise ValueError(f"text_features must hold (positive, negative) pairs, got {text_features.shape[0]} rows")
    # float32 even under a caller's bf16 autocast: p_k depends on small cosine differences times 100
    with torch.autocast(image_features.device.type, enabled=False):
        img = F.normalize(image_features.float(), dim=-1)
        txt = F.normalize(text_features.float(), dim=-1)
        logits = logit_scale * img @ txt.T  # [B, 2P]
    return logits.view(logits.shape[0], -1, 2).softmax(dim=-1)[..., 0]


class CLIPIQA(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1]) -> (score [B], per-pair probabilities [B, P]).

    The prompt embeddings are computed once here and kept as a buffer.
    image_size: None (pyiqa: native resolution, no positional embedding) or a side in pixels.
    """

    def __init__(
        self,
        clip: CLIP,
        tokenizer: CLIPTokenizer,
        prompt_pairs: Sequence[tuple[str, str]] = CLIPIQA_PROMPT_PAIRS,
        image_size: int | None = None,
    ):
        super().__init__()
        if not prompt_pairs:
            raise ValueError("CLIPIQA needs at least one (positive, negative) prompt pair")
        self.clip = freeze(clip)
        self.prompt_pairs = tuple((str(p), str(n)) for p, n in prompt_pairs)
        self.image_size = image_size
        prompts = [text for pair in self.prompt_pairs for text in pair]
        with torch.no_grad():
            text_features = self.clip.encode_text(tokenizer(prompts).to(clip.logit_scale.device)).float()
        self.register_buffer("text_features", text_features, persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = clip_preprocess(images, self.image_size)
        features = self.clip.encode_image(x, use_positional_embedding=self.image_size is not None)
        probs = antonym_pair_probabilities(features, self.text_features, self.clip.logit_scale.exp().float())
        return probs.mean(dim=1), probs


class CLIPIQAReward(BaseReward):
    """No-reference quality score CLIPIQA(x) in (0, 1) (SPEC section 4).

    details: one [B] entry per prompt pair, keyed by its positive prompt (e.g. ``"good_image"``).
    """

    name = "clipiqa"
    needs_gt = False

    def __init__(self, model: CLIPIQA, device: torch.device | str = "cpu", precision: str = "fp32"):
        super().__init__(device)
        self.autocast = autocast_factory(self.device, precision)
        self.model = freeze(model.to(self.device))
        self.detail_names = [pos.lower().replace(" ", "_") for pos, _ in model.prompt_pairs]

    @classmethod
    def from_registry(
        cls,
        path: str | os.PathLike | None = None,
        vocab_path: str | os.PathLike | None = None,
        image_size: int | None = None,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> "CLIPIQAReward":
        """OpenAI RN50 (registry ``clip-rn50``) and the CLIP vocabulary (``clip-bpe-vocab``)."""
        clip = load_clip(resolve(CLIP_RN50_WEIGHTS.name, path), quick_gelu=True)
        model = CLIPIQA(clip, CLIPTokenizer.from_file(vocab_path), image_size=image_size)
        return cls(model, device=device, precision=precision)

    def score(self, inp: RewardInput) -> RewardOutput:
        with self.autocast():
            score, probs = self.model(inp.images.clamp(0, 1))
        details = {name: probs[:, k].float() for k, name in enumerate(self.detail_names)}
        return RewardOutput(score.float(), details)


register_reward("clipiqa", CLIPIQAReward.from_registry)
