"""Model-based no-reference IQA: MUSIQ, MANIQA, TOPIQ-NR and CLIP-IQA+ as pyiqa defines them.

One network per module: :mod:`.musiq`, :mod:`.maniqa`, :mod:`.topiq` (TOPIQ-NR and its ResNet-50),
:mod:`.clipiqa_plus`; :mod:`.shared` reads pyiqa's files and holds the layers they share, and
:mod:`.scoring` is the metric table ``lrpo evaluate`` uses (``--iqa``, :func:`build_iqa_scorers`).

BFR papers report these through pyiqa (IQA-PyTorch, chaofengc/IQA-PyTorch); each model here is
rebuilt in plain torch with the parameter names of pyiqa's published weight file for the default
metric, so that file loads strictly (every key used, no key left over) with no renaming:

  metric (pyiqa name)  registry name         file                                    container
  musiq                musiq-koniq           musiq_koniq_ckpt-e95806b9.pth           raw state dict
  maniqa               maniqa-koniq          ckpt_koniq10k.pt                        raw state dict
  topiq_nr             topiq-nr-koniq        cfanet_nr_koniq_res50-9a73138b.pth      {"params": state dict}
  clipiqa+             clipiqa-plus-prompts  CLIP-IQA+_learned_prompts-603f3273.pth  the context tensor itself
                       (+ clip-rn50 RN50.pt and clip-bpe-vocab, as CLIP-IQA)

(pyiqa 0.1.16: ``pyiqa/archs/{musiq,maniqa,topiq,clipiqa}_arch.py`` ``default_model_urls`` and
their ``load_pretrained_network(..., weight_keys)`` calls; ``default_model_configs.py`` for the
metric options.) The ImageNet backbones (MANIQA's ViT-B/8, TOPIQ's ResNet-50) are stored inside
those files, so no separate backbone file is needed; CLIP-IQA+ uses OpenAI's RN50 (registry
``clip-rn50``) and learns only the prompt context.

Every model takes images [N, 3, H, W] in [0, 1] (RGB) and returns a score [N]; **higher is better
for all four**. Preprocessing is part of each model, as in pyiqa:

* MUSIQ: x -> 2x - 1; multi-scale patches of 32 px from the image resized (bicubic, aspect kept)
  to longer sides 224 and 384 plus the native resolution; KonIQ MOS scale, about 0..100.
* MANIQA: x -> (x - 0.5) / 0.5; 20 crops of 224 px on a uniform grid (upscaled first when the
  shorter side is <= 224); the per-patch scores of all crops pooled with learned weights; ~0..1.
* TOPIQ-NR: ImageNet mean/std normalisation, the image at its native resolution; ~0..1.
* CLIP-IQA+: CLIP normalisation at native resolution without the attention pool's positional
  embedding; softmax of 100 x cosine over the learned ("good photo", "bad photo") prompt pair; (0, 1).

Hyper-parameters are read from tensor shapes where the file shows them, so small models saved in
the same layout load too (tests); what shapes cannot show (attention heads, MANIQA's residual
scale, the crop count) comes from the config defaults, which are pyiqa's for these files.

Cost of one 512 x 512 image at full size on a busy 2-core CPU (measured with random weights):
MUSIQ ~4 s, CLIP-IQA+ ~7 s (RN50), TOPIQ-NR ~9 s, MANIQA ~3.5-4.5 min (20 ViT-B/8 crops of 785 tokens); use a GPU for
MANIQA on more than a few images.
"""


# imported in the order their files register (`lrpo weights list`)
from .musiq import MUSIQ, MUSIQ_KONIQ_WEIGHTS, MUSIQConfig, load_musiq, musiq_config_from_state_dict, musiq_multiscale_tokens
from .maniqa import MANIQA, MANIQA_KONIQ_WEIGHTS, MANIQAConfig, load_maniqa, maniqa_config_from_state_dict
from .topiq import TOPIQ_NR_KONIQ_WEIGHTS, TOPIQNR, ResNetFeatures, TOPIQConfig, load_topiq_nr, topiq_config_from_state_dict
from .clipiqa_plus import CLIPIQA_PLUS_WEIGHTS, CLIPIQAPlus, load_clipiqa_plus, read_prompt_context
from .scoring import IQA_METRICS, IQAMetric, IQAScorer, build_iqa_scorers, parse_iqa_requests, score_images
from .shared import read_pyiqa_state_dict

__all__ = [
    "CLIPIQAPlus",
    "CLIPIQA_PLUS_WEIGHTS",
    "IQA_METRICS",
    "IQAMetric",
    "IQAScorer",
    "MANIQA",
    "MANIQAConfig",
    "MANIQA_KONIQ_WEIGHTS",
    "MUSIQ",
    "MUSIQConfig",
    "MUSIQ_KONIQ_WEIGHTS",
    "ResNetFeatures",
    "TOPIQNR",
    "TOPIQConfig",
    "TOPIQ_NR_KONIQ_WEIGHTS",
    "build_iqa_scorers",
    "load_clipiqa_plus",
    "load_maniqa",
    "load_musiq",
    "load_topiq_nr",
    "maniqa_config_from_state_dict",
    "musiq_config_from_state_dict",
    "musiq_multiscale_tokens",
    "parse_iqa_requests",
    "read_prompt_context",
    "read_pyiqa_state_dict",
    "score_images",
    "topiq_config_from_state_dict",
]
