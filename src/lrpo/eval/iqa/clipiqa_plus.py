"""CLIP-IQA+ (Wang, Chan, Loy, AAAI 2023): a CoOp-style learned prompt context on OpenAI CLIP RN50, as
pyiqa's ``clipiqa_arch.py`` defines it; see :mod:`lrpo.eval.iqa`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ...model_files import CheckpointFormatError, freeze, load_torch_file
from ...rewards import clip_models  # a module, so that clip_models.load_clip is looked up at call time
from ...rewards.clip_models import clip_preprocess
from ...rewards.clip_tokenizer import CLIPTokenizer
from ...rewards.clipiqa import antonym_pair_probabilities
from ...weights import resolve
from .shared import pyiqa_file


CLIPIQA_PLUS_WEIGHTS = pyiqa_file(
    "clipiqa-plus-prompts", "CLIP-IQA+_learned_prompts-603f3273.pth",
    "CLIP-IQA+ learned prompt context [16, 512] for OpenAI CLIP RN50 (pyiqa metric 'clipiqa+'; needs clip-rn50)",
    "603f3273", (0.005, 5.0),  # a [16, 512] prompt context
)


# ----------------------------------------------------------------------------------------------
# CLIP-IQA+ (Wang, Chan, Loy, AAAI 2023): CoOp-style learned context on CLIP RN50
# ----------------------------------------------------------------------------------------------
# pyiqa's PromptLearner (following the official CLIP-IQA code): prompts "X X ... X Good photo.."
# and "... Bad photo..", whose n_ctx "X" embeddings are replaced by the learned context, split
# in two halves around the first 3 class tokens ("good", "photo", "..": a length pyiqa hard-codes).
CLIPIQA_PLUS_CLASS_TEXTS = ("Good photo..", "Bad photo..")
CLIPIQA_PLUS_CLASS_TOKENS = 3


def read_prompt_context(path: str | os.PathLike) -> Tensor:
    """The learned context in a CLIP-IQA+ file, float32 [n_ctx, D] (shared by both prompts, the
    published file) or [2, n_ctx, D]. The published file is the bare tensor; a ``{"params":
    {"prompt_learner.ctx": ...}}`` file (pyiqa's re-trained variants) is read too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = load_torch_file(path)
    except Exception as err:  # noqa: BLE001
        raise CheckpointFormatError(f"could not read {path} as a CLIP-IQA+ prompt file: {err}") from err
    if isinstance(obj, Mapping):
        obj = obj.get("params", obj)
        obj = next((obj[k] for k in ("prompt_learner.ctx", "ctx") if isinstance(obj, Mapping) and k in obj), obj)
    if not isinstance(obj, Tensor) or obj.ndim not in (2, 3) or (obj.ndim == 3 and obj.shape[0] != 2):
        what = f"a tensor of shape {tuple(obj.shape)}" if isinstance(obj, Tensor) else type(obj).__name__
        raise CheckpointFormatError(f"{path}: expected the prompt context [n_ctx, D] or [2, n_ctx, D], got {what}")
    return obj.detach().float()


def encode_text_embeddings(clip, embeddings: Tensor, eot: Tensor) -> Tensor:
    """CLIP's text tower from token embeddings [N, L, W] (instead of ids); eot [N] the end-token
    positions -> [N, embed_dim]. Causal attention: positions after the last EOT are cut."""
    length = int(eot.max()) + 1
    x = embeddings[:, :length] + clip.positional_embedding[:length].to(embeddings.dtype)
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu_(1)
    x = clip.ln_final(clip.transformer(x, causal))
    return x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection


class CLIPIQAPlus(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1]) -> P(good) [B] in (0, 1), higher is better.

    P(good) = softmax(s [cos(e, u_good), cos(e, u_bad)])[0], s = exp(logit_scale) = 100, e the RN50
    image embedding (native resolution, no positional embedding, as pyiqa's default), u the text
    embeddings of the two learned prompts (computed once here).
    """

    def __init__(self, clip, tokenizer, context: Tensor):
        super().__init__()
        if context.ndim == 2:
            context = context.unsqueeze(0).expand(len(CLIPIQA_PLUS_CLASS_TEXTS), -1, -1)
        n_ctx, width = context.shape[1:]
        if width != clip.token_embedding.weight.shape[1]:
            raise ValueError(f"prompt context of width {width} for a CLIP text tower of width {clip.token_embedding.weight.shape[1]}")
        self.clip = freeze(clip)
        ids = tokenizer(["X " * n_ctx + text for text in CLIPIQA_PLUS_CLASS_TEXTS]).to(clip.logit_scale.device)
        with torch.no_grad():
            emb = clip.token_embedding(ids)
            ctx = context.to(emb)
            k, half = CLIPIQA_PLUS_CLASS_TOKENS, n_ctx // 2
            prompts = torch.cat(
                [emb[:, :1], ctx[:, :half], emb[:, 1 + n_ctx : 1 + n_ctx + k], ctx[:, half:], emb[:, 1 + n_ctx + k :]], dim=1
            )
            text_features = encode_text_embeddings(clip, prompts, ids.argmax(dim=-1)).float()
        self.register_buffer("context", ctx.clone(), persistent=False)
        self.register_buffer("text_features", text_features, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        features = self.clip.encode_image(clip_preprocess(images, None), use_positional_embedding=False)
        probs = antonym_pair_probabilities(features, self.text_features, self.clip.logit_scale.exp().float())
        return probs.mean(dim=1)


def load_clipiqa_plus(
    path: str | os.PathLike | None = None,
    clip_path: str | os.PathLike | None = None,
    vocab_path: str | os.PathLike | None = None,
) -> CLIPIQAPlus:
    """The prompt file (registry ``clipiqa-plus-prompts``), OpenAI RN50 (``clip-rn50``) and the CLIP
    vocabulary (``clip-bpe-vocab``); each None is looked up in the registry (MissingWeightsError)."""
    context = read_prompt_context(resolve(CLIPIQA_PLUS_WEIGHTS.name, path))
    clip = clip_models.load_clip(resolve(clip_models.CLIP_RN50_WEIGHTS.name, clip_path), quick_gelu=True)
    return CLIPIQAPlus(clip, CLIPTokenizer.from_file(vocab_path), context)
