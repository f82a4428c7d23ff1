"""CLIP: published key layouts, file formats, the BPE tokenizer, and CLIP-IQA.

The real files (OpenAI RN50.pt, OpenCLIP ViT-H-14) cannot be downloaded here; the full-size
architectures are checked on the meta device against the published layouts and parameter counts,
and small random models in the same layouts are saved in the publishers' formats and loaded.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lrpo.rewards.base import RewardInput
from lrpo.model_files import StateDictMismatchError
from lrpo.nets.clip import QuickGELU
from lrpo.rewards.clip_models import (
    CLIP,
    OPENAI_RN50,
    OPENCLIP_VIT_H_14,
    AttentionPool2d,
    build_clip_from_state_dict,
    clip_config_from_state_dict,
    clip_preprocess,
    load_clip,
)
from lrpo.rewards.clip_tokenizer import BPE_VOCAB, CLIPTokenizer, bytes_to_unicode, find_bpe_vocab, pretokenize
from lrpo.rewards.clipiqa import CLIPIQA, CLIPIQA_PROMPT_PAIRS, CLIPIQAReward, antonym_pair_probabilities
from lrpo.standins import clip_layout, random_state_dict, save_torchscript_archive, write_merges_file
from lrpo.weights import MissingWeightsError, sha256_of

# Merges of the synthetic vocabulary, rank 0 first. Ids: 0-255 byte characters, 256-511 the same
# with "</w>", then 512 "lo</w>", 513 "he", 514 "llo</w>", 515 "hello</w>", 516 "bc</w>", 517 "ab",
# 518 <|startoftext|>, 519 <|endoftext|>.
MERGES = [("l", "o</w>"), ("h", "e"), ("l", "lo</w>"), ("he", "llo</w>"), ("b", "c</w>"), ("a", "b")]
SOT, EOT = 518, 519


def byte_id(ch: str, end: bool = False) -> int:
    """Id of a one-byte character: its position in GPT-2's byte table (+256 with "</w>")."""
    return list(bytes_to_unicode().values()).index(ch) + (256 if end else 0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = write_merges_file(tmp_path_factory.mktemp("bpe") / "merges.txt.gz", MERGES)
    return CLIPTokenizer.from_file(path)


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------
def test_byte_table_positions():
    # '!' is the first printable byte; 'a' (97) is 97 - 33 = 64; 'é' is UTF-8 c3 a9, i.e. the
    # Latin-1 characters 'Ã' (195: 94 + 12 + (195 - 174) = 127) and '©' (169: 94 + (169 - 161) = 102).
    table = list(bytes_to_unicode().values())
    assert len(set(table)) == 256
    assert (byte_id("!"), byte_id("a"), byte_id("Ã"), byte_id("©")) == (0, 64, 127, 102)


def test_merges_apply_in_rank_order(tok):
    assert tok.vocab_size == 520 and (tok.sot_id, tok.eot_id) == (SOT, EOT)
    # hello: h e l l o</w> -> (l, o</w>) r0 -> (h, e) r1 -> (l, lo</w>) r2 -> (he, llo</w>) r3.
    assert tok.encode("hello") == [515]
    # abc: (b, c</w>) has rank 4 < rank 5 of (a, b), so "bc</w>" forms first and "ab" never does.
    assert tok.encode("abc") == [byte_id("a"), 516]
    # ab: the merge is (a, b), not (a, b</w>), so nothing applies to the word "ab".
    assert tok.encode("ab") == [byte_id("a"), byte_id("b", end=True)]


def test_cleanup_pretokenisation_and_bytes(tok):
    # lower-cased, whitespace collapsed, HTML unescaped; "," is its own piece.
    assert pretokenize("hello, world's 42") == ["hello", ",", "world", "'s", "4", "2"]
    assert tok.encode("  HELLO,\n\t World ") == tok.encode("hello, world")
    assert tok.encode("&amp;") == [byte_id("&", end=True)]
    assert tok.encode("é") == [127, 256 + 102]
    assert tok.encode("<|endoftext|>") == [EOT]
    assert tok.decode(tok(["Hello, abc é"])[0]) == "hello , abc é"


def test_start_end_padding_and_truncation(tok):
    out = tok(["hello", "a " * 100])
    assert out.shape == (2, 77) and out.dtype == torch.long
    assert out[0, :3].tolist() == [SOT, 515, EOT] and not out[0, 3:].any()
    # 100 pieces "a</w>" + SOT + EOT = 102 > 77: keep SOT and 75 pieces, EOT in the last slot.
    assert out[1].tolist() == [SOT] + [byte_id("a", end=True)] * 75 + [EOT]
    with pytest.raises(ValueError, match="more than the context length"):
        tok("a " * 100, truncate=False)


def test_published_vocabulary_ids():
    try:
        path = find_bpe_vocab()
    except MissingWeightsError as err:
        pytest.skip(f"CLIP vocabulary not available: {err}")
    if sha256_of(path) != BPE_VOCAB.sha256:
        pytest.skip(f"{path} is not the published vocabulary (a stand-in?)")
    real = CLIPTokenizer.from_file(path)
    assert real.vocab_size == 49408 and (real.sot_id, real.eot_id) == (49406, 49407)

    def ids(text):
        row = real(text)[0]
        return row[: int((row != 0).sum())].tolist()

    # Published reference tokenisations (public CLIP tokenizer test fixtures).
    assert ids("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids("A Photo of a TREE!") == [49406, 320, 1125, 539, 320, 2677, 256, 49407]
    assert ids("it's a cat's toy, running   fast") == [49406, 585, 568, 320, 2368, 568, 5988, 267, 2761, 1953, 49407]
    assert ids("2 dogs and 3 cats") == [49406, 273, 3255, 537, 274, 3989, 49407]
    assert ids("a photo of a face") == [49406, 320, 1125, 539, 320, 1710, 49407]


# ----------------------------------------------------------------------------------------------
# architecture and files
# ----------------------------------------------------------------------------------------------
TINY_RN = dict(embed_dim=16, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8, patch_size=None,
               context_length=77, vocab_size=520, text_width=32, text_layers=2)
TINY_VIT = dict(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=32, patch_size=8,
                context_length=77, vocab_size=520, text_width=32, text_layers=2)


@pytest.mark.parametrize(
    "cfg, layout, mparams, image_mparams",
    [
        # open_clip docs/model_profile.csv: RN50 102.01 M (image 38.32 M); ViT-H-14 986.11 M (image 632.08 M)
        (OPENAI_RN50, dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64, patch_size=None,
                           context_length=77, vocab_size=49408, text_width=512, text_layers=12), 102.01, 38.32),
        (OPENCLIP_VIT_H_14, dict(embed_dim=1024, image_resolution=224, vision_layers=32, vision_width=1280, patch_size=14,
                                 context_length=77, vocab_size=49408, text_width=1024, text_layers=24), 986.11, 632.08),
    ],
)
def test_full_size_models_match_published_layouts(cfg, layout, mparams, image_mparams):
    with torch.device("meta"):
        model = CLIP(cfg)
    sd = model.state_dict()
    expected = clip_layout(**layout)
    assert set(sd) == set(expected)
    assert {k: (tuple(v.shape), v.dtype) for k, v in sd.items()} == {k: (e.shape, e.dtype) for k, e in expected.items()}
    total = sum(p.numel() for p in model.parameters()) / 1e6
    image = sum(p.numel() for p in model.visual.parameters()) / 1e6
    assert (round(total, 2), round(image, 2)) == (mparams, image_mparams)
    # Hyper-parameters come back from shapes alone (ViT-H-14's head width from the known table).
    assert clip_config_from_state_dict(sd, quick_gelu=cfg.quick_gelu) == cfg
    assert (cfg.vision_heads, cfg.text_heads) == ((32, 8) if cfg is OPENAI_RN50 else (16, 16))


@pytest.fixture(scope="module")
def rn_state_dict():
    return random_state_dict(clip_layout(**TINY_RN), torch.Generator().manual_seed(0))


def test_all_file_formats_load_the_same_weights(rn_state_dict, tmp_path):
    sd = rn_state_dict
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    # OpenAI ships float16 TorchScript archives; the model is rebuilt in float32.
    extras = {"input_resolution": 64, "context_length": 77, "vocab_size": 520}  # attributes OpenAI's archives hold
    save_torchscript_archive({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "RN50.pt", extras)
    models = {name: load_clip(tmp_path / name, quick_gelu=True, text_head_width=16)
              for name in ("plain.pt", "wrapped.pt", "model.safetensors", "RN50.pt")}
    for name, model in models.items():
        assert model.config == models["plain.pt"].config
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        loaded = model.state_dict()
        for k, v in sd.items():
            ref = v.half().float() if name == "RN50.pt" and v.is_floating_point() else v
            assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], ref), (name, k)
    assert isinstance(models["plain.pt"].transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_mismatches_are_clear_errors(rn_state_dict):
    bad = dict(rn_state_dict)
    bad["visual.attnpool.query_proj.weight"] = bad.pop("visual.attnpool.q_proj.weight")
    with pytest.raises(StateDictMismatchError) as err:
        build_clip_from_state_dict(bad, quick_gelu=True, text_head_width=16, source="my.pt")
    assert "missing keys (1): visual.attnpool.q_proj.weight" in str(err.value)
    assert "unexpected keys (1): visual.attnpool.query_proj.weight" in str(err.value)
    with pytest.raises(ValueError, match="text width 32 is not a multiple of the head width 64"):
        build_clip_from_state_dict(rn_state_dict, quick_gelu=True)
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        build_clip_from_state_dict({"a": torch.zeros(1)}, quick_gelu=True)
    # BatchNorm step counters are optional (unused in eval mode).
    no_counters = {k: v for k, v in rn_state_dict.items() if not k.endswith("num_batches_tracked")}
    build_clip_from_state_dict(no_counters, quick_gelu=True, text_head_width=16)


@pytest.fixture(scope="module")
def rn_clip(rn_state_dict):
    return build_clip_from_state_dict(rn_state_dict, quick_gelu=True, text_head_width=16)


def test_attention_pool_matches_multi_head_attention():
    # OpenAI's formulation: full multi-head attention over [mean; tokens] + positions, output 0.
    gen = torch.Generator().manual_seed(4)
    pool = AttentionPool2d(spacial_dim=2, embed_dim=8, num_heads=2, output_dim=5)
    for p in pool.parameters():
        p.data = torch.randn(p.shape, generator=gen)
    x = torch.randn(3, 8, 2, 2, generator=gen)
    seq = x.flatten(2).permute(2, 0, 1)
    seq = torch.cat([seq.mean(dim=0, keepdim=True), seq]) + pool.positional_embedding[:, None]
    ref, _ = F.multi_head_attention_forward(
        seq, seq, seq, 8, 2, None, torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
        pool.c_proj.weight, pool.c_proj.bias, use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight, need_weights=False,
    )
    with torch.no_grad():
        assert torch.allclose(pool(x), ref[0], atol=1e-5)
        with pytest.raises(ValueError, match="2x2 grid"):
            pool(torch.randn(1, 8, 3, 3))
        assert pool(torch.randn(1, 8, 3, 3), use_positional_embedding=False).shape == (1, 5)


def test_text_encoder_drops_padding_exactly(rn_clip, tok):
    tokens = tok(["hello abc", "ab"])
    with torch.no_grad():
        got = rn_clip.encode_text(tokens)
        # Reference without trimming: all 77 positions under the full causal mask.
        m = rn_clip
        x = m.token_embedding(tokens) + m.positional_embedding
        mask = torch.full((77, 77), float("-inf")).triu_(1)
        x = m.ln_final(m.transformer(x, mask))
        ref = x[torch.arange(2), tokens.argmax(-1)] @ m.text_projection
    assert got.shape == (2, 16)
    assert torch.allclose(got, ref, atol=1e-5)


def test_clip_preprocess_resize_crop_and_normalise():
    x = torch.full((1, 3, 40, 60), 0.5)
    out = clip_preprocess(x, 20)
    assert out.shape == (1, 3, 20, 20)  # shorter side 40 -> 20, longer 60 -> 30, centre crop 20
    expected = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(out[0, :, 0, 0], expected, atol=1e-6)
    ramp = torch.linspace(0, 1, 60).expand(1, 3, 40, 60)
    # the crop keeps the middle: columns 5..24 of the 30-wide resized ramp
    assert torch.allclose(clip_preprocess(ramp, 20, mode="bilinear", antialias=False), clip_preprocess(
        F.interpolate(ramp, size=(20, 30), mode="bilinear", align_corners=False)[..., 5:25], None), atol=1e-6)
    assert clip_preprocess(x, None).shape == (1, 3, 40, 60)  # size=None keeps the resolution


# ----------------------------------------------------------------------------------------------
# CLIP-IQA
# ----------------------------------------------------------------------------------------------
def test_pair_probabilities_by_hand():
    # Image feature e = (1, 0). Pair 1: cos+ = 0.5, cos- = 0.3 -> sigmoid(100 * 0.2) = sigmoid(20).
    # Pair 2: both cosines 0.3 -> 0.5. Features need not be unit length (scaled by 2 and 3 here).
    e = torch.tensor([[2.0, 0.0]])
    u = torch.tensor([[0.5, math.sqrt(0.75)], [0.3, math.sqrt(0.91)], [0.3, math.sqrt(0.91)], [0.3, -math.sqrt(0.91)]]) * 3
    p = antonym_pair_probabilities(e, u, 100.0)
    s20 = 1 / (1 + math.exp(-20))
    assert p.shape == (1, 2)
    assert p[0, 0].item() == pytest.approx(s20, abs=1e-6) and p[0, 1].item() == pytest.approx(0.5, abs=1e-6)


def test_clipiqa_prompts_are_pyiqa_five_pairs():
    assert len(CLIPIQA_PROMPT_PAIRS) == 5
    assert CLIPIQA_PROMPT_PAIRS[0] == ("Good image", "bad image")
    assert CLIPIQA_PROMPT_PAIRS[-1] == ("Noise-free image", "noisy image")


def test_clipiqa_equals_manual_cosine_softmax(rn_clip, tok):
    iqa = CLIPIQA(rn_clip, tok)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 96, 96, generator=gen)  # native resolution: 96 is not the model's 64
    with torch.no_grad():
        score, probs = iqa(x)
        again, _ = iqa(x)
        img = F.normalize(rn_clip.encode_image((x - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
                                               / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1),
                                               use_positional_embedding=False), dim=-1)
        prompts = [t for pair in CLIPIQA_PROMPT_PAIRS for t in pair]
        txt = F.normalize(rn_clip.encode_text(tok(prompts)), dim=-1)
    cos = img @ txt.T  # [3, 10]
    manual = torch.sigmoid(100.0 * (cos[:, 0::2] - cos[:, 1::2]))  # softmax of a pair = sigmoid of the gap
    assert score.shape == (3,) and probs.shape == (3, 5)
    assert torch.allclose(probs, manual, atol=1e-5)
    assert torch.allclose(score, manual.mean(dim=1), atol=1e-5)
    assert ((score > 0) & (score < 1)).all()
    assert torch.equal(score, again)


def test_clipiqa_with_clip_preprocessing(rn_clip, tok):
    iqa = CLIPIQA(rn_clip, tok, image_size=64)  # the tiny model's resolution stands in for 224
    x = torch.rand(2, 3, 80, 100, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        score, _ = iqa(x)
        feats = rn_clip.encode_image(clip_preprocess(x, 64), use_positional_embedding=True)
        ref = antonym_pair_probabilities(feats, iqa.text_features, 100.0).mean(dim=1)
    assert torch.allclose(score, ref, atol=1e-6)


def test_clipiqa_reward(rn_clip, tok):
    reward = CLIPIQAReward(CLIPIQA(rn_clip, tok))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    out = reward(RewardInput(x))
    assert out.scores.shape == (2,) and out.scores.dtype == torch.float32
    assert sorted(out.details) == sorted(["good_image", "sharp_image", "sharp_edges", "high_resolution_image", "noise-free_image"])
    stacked = torch.stack([out.details[k] for k in reward.detail_names], dim=1)
    assert torch.allclose(out.scores, stacked.mean(dim=1), atol=1e-6)


def test_bf16_autocast_runs_and_stays_close(rn_clip, tok):
    # CPU autocast applies the casting rules of CUDA autocast (linear/conv in bf16, layer norm and
    # softmax in float32); this guards the dtype handling of the attention masks and pools.
    # bf16 keeps 8 mantissa bits; probabilities are sigmoids of 100x cosine gaps, hence 0.03.
    iqa = CLIPIQA(rn_clip, tok)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref, _ = iqa(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = iqa(x)
            text = rn_clip.encode_text(tok(["hello abc"]))
    assert low.dtype == torch.float32 and text.dtype == torch.bfloat16
    assert torch.allclose(low, ref, atol=0.03)
