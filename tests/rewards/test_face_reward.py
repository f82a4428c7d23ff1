"""Face Reward Model: an OpenCLIP ViT checkpoint stored as {"state_dict": ...}, scored by cosine.

A small random ViT in the OpenCLIP layout stands in for FaceRewardModel.pth (ViT-H-14, not
downloadable here); the full-size layout is checked in test_clip.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrpo.rewards.base import RewardInput
from lrpo.model_files import StateDictMismatchError
from lrpo.rewards.clip_models import clip_preprocess
from lrpo.rewards.face_reward import FaceReward, FaceRewardModel, MissingCaptionError, caption_cosine
from lrpo.standins import clip_layout, random_state_dict, write_merges_file

TINY_VIT = dict(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=32, patch_size=8,
                context_length=77, vocab_size=520, text_width=32, text_layers=2)
MERGES = [("l", "o</w>"), ("h", "e"), ("l", "lo</w>"), ("he", "llo</w>"), ("b", "c</w>"), ("a", "b")]  # 520 ids


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frm")
    sd = random_state_dict(clip_layout(**TINY_VIT), torch.Generator().manual_seed(0))
    # HPSv2-style checkpoint; keys written as a DistributedDataParallel run saves them
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, folder / "FaceRewardModel.pth")
    write_merges_file(folder / "bpe.txt.gz", MERGES)
    return folder, sd


@pytest.fixture(scope="module")
def model(files):
    folder, _ = files
    # the tiny ViT sees 32 px images: image_size stands in for the real 224
    return FaceRewardModel.from_checkpoint(
        folder / "FaceRewardModel.pth", folder / "bpe.txt.gz", vision_head_width=16, text_head_width=16, image_size=32
    )


def test_checkpoint_loads_strictly_with_exact_gelu(files, model):
    _, sd = files
    loaded = model.clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert type(model.clip.visual.transformer.resblocks[0].mlp.gelu) is nn.GELU
    assert (model.clip.config.vision_heads, model.clip.config.text_heads) == (2, 2)


def test_wrong_checkpoint_is_a_clear_error(files, tmp_path):
    _, sd = files
    bad = {k: v for k, v in sd.items() if k != "visual.ln_post.bias"}
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(StateDictMismatchError, match=r"missing keys \(1\): visual.ln_post.bias"):
        FaceRewardModel.from_checkpoint(tmp_path / "bad.pth", files[0] / "bpe.txt.gz", vision_head_width=16, text_head_width=16)


def test_caption_cosine_by_hand():
    # image (3, 4) -> (0.6, 0.8); captions (1, 0) and (0, 2) -> (1, 0), (0, 1): cosines 0.6 and 0.8.
    img = torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(caption_cosine(img, txt, torch.tensor([0, 1])), torch.tensor([0.6, 0.8]), atol=1e-7)


def test_score_is_cosine_of_embeddings(model):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 48, 48, generator=gen)
    captions = ["hello", "abc", "hello"]
    with torch.no_grad():
        got = model(x, captions)
        img = model.clip.encode_image(clip_preprocess(x, 32, mode="bilinear", antialias=False))
        txt = model.clip.encode_text(model.tokenizer(captions))
    ref = F.cosine_similarity(img, txt, dim=-1)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-6)
    assert ((got >= -1) & (got <= 1)).all()
    assert got[0] != got[2]  # same caption, different images


def test_reward_reads_captions(model):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reward = FaceReward(model)
    out = reward(RewardInput(x, meta=[{"caption": "hello"}, {"caption": "abc"}]))
    with torch.no_grad():
        assert torch.allclose(out.scores, model(x, ["hello", "abc"]), atol=1e-7)
    with pytest.raises(MissingCaptionError, match=r"sample 1 \(b.png\)"):
        reward(RewardInput(x, meta=[{"caption": "hello"}, {"name": "b.png"}]))
    with pytest.raises(MissingCaptionError):
        reward(RewardInput(x))
    fallback = FaceReward(model, default_caption="hello")
    out2 = fallback(RewardInput(x, meta=[{"caption": "hello"}, {}]))
    with torch.no_grad():
        assert torch.allclose(out2.scores, model(x, ["hello", "hello"]), atol=1e-7)
    long_caption = "hello " * 200  # truncated to 77 tokens, as OpenCLIP's tokenizer does
    assert FaceReward(model)(RewardInput(x, meta=[{"caption": long_caption}] * 2)).scores.shape == (2,)


def test_bf16_autocast_runs_and_stays_close(model):
    # CPU autocast follows CUDA autocast's casting rules; cosines are taken in float32.
    # bf16 keeps 8 mantissa bits, so cosines of O(1)-norm embeddings agree to ~0.03.
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x, ["hello", "abc"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, ["hello", "abc"])
    assert low.dtype == torch.float32
    assert torch.allclose(low, ref, atol=0.03)
