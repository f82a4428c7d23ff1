"""DiffBIR's stage-1 SwinIR: window maths by hand, the published key layout, strict loading."""

import pytest
import torch

from lrpo.policies.sd_loaders import WeightsMismatchError, load_swinir
from lrpo.policies.swinir import (
    SwinIR,
    SwinIRArch,
    relative_position_index,
    shifted_window_mask,
    window_merge,
    window_partition,
)

TINY = SwinIRArch(img_size=8, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4, num_feat=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (tests/conftest.py)


def _tiny(seed: int = 0) -> SwinIR:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SwinIR(TINY)
        for p in model.parameters():  # non-trivial biases and norms (defaults are 0 and 1)
            p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_relative_position_index_by_hand():
    # window 2: tokens (0,0), (0,1), (1,0), (1,1); index = (dh + 1) * 3 + (dw + 1), d = query - key.
    # query (0,0): keys give d = (0,0), (0,-1), (-1,0), (-1,-1) -> 4, 3, 1, 0
    # query (1,1): d = (1,1), (1,0), (0,1), (0,0) -> 8, 7, 5, 4
    idx = relative_position_index(2)
    assert idx[0].tolist() == [4, 3, 1, 0]
    assert idx[3].tolist() == [8, 7, 5, 4]


def test_shifted_window_mask_by_hand():
    # 4x4 map, window 2, shift 1: row/column regions [0,1], [2], [3] -> 9 labels. The top-left window
    # lies in one region (mask all 0); the bottom-right window holds 4 different regions (-100
    # everywhere except the diagonal).
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert torch.count_nonzero(mask[0]) == 0
    expected = torch.full((4, 4), -100.0).fill_diagonal_(0.0)
    torch.testing.assert_close(mask[3], expected, rtol=0, atol=0)


def test_window_partition_roundtrip():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).view(2, 8, 8, 3)
    w = window_partition(x, 4)
    assert w.shape == (8, 16, 3)
    torch.testing.assert_close(w[1, 0], x[0, 0, 4])  # second window of image 0 starts at column 4
    torch.testing.assert_close(window_merge(w, 4, 8, 8), x)


def _naive_window_attention(attn, x, mask):
    # DiffBIR's formula written out: softmax(q k^T / sqrt(d) + bias [+ mask]) v, then proj
    bw, n, c = x.shape
    h = attn.heads
    qkv = attn.qkv(x).reshape(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // h) ** -0.5, qkv[1], qkv[2]
    logits = q @ k.transpose(-2, -1)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)
    logits = logits + bias[None]
    if mask is not None:
        nw = mask.shape[0]
        logits = (logits.view(bw // nw, nw, h, n, n) + mask[None, :, None]).view(bw, h, n, n)
    return attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


def test_window_attention_matches_the_written_out_formula():
    model = _tiny()
    block = model.layers[0].residual_group.blocks[1]  # a shifted block
    assert block.shift == 2 and block.attn_mask is not None
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2 * 4, 16, 16, generator=g)  # 2 images x 4 windows of 4x4 tokens
    ours = block.attn(x, block.attn_mask)
    ref = _naive_window_attention(block.attn, x, block.attn_mask)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_forward_shapes_and_range():
    model = _tiny()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 64, 64) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 48, 48))


def test_key_layout_of_the_face_model():
    # Literal names and shapes of DiffBIR's face SwinIR (XPixelGroup/DiffBIR diffbir/model/swinir.py
    # with configs/inference/swinir.yaml: embed 180, 8 x 6 blocks, 6 heads, window 8, sf 8,
    # pixel-unshuffle 8, num_feat 64). Built on the meta device: no memory, no time.
    with torch.device("meta"):
        sd = SwinIR(SwinIRArch()).state_dict()
    expected = {
        "conv_first.1.weight": (180, 3 * 64, 3, 3),  # PixelUnshuffle(8) then Conv2d(192, 180)
        "patch_embed.norm.weight": (180,),
        "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": ((2 * 8 - 1) ** 2, 6),
        "layers.0.residual_group.blocks.0.attn.relative_position_index": (64, 64),
        "layers.0.residual_group.blocks.0.attn.qkv.weight": (540, 180),
        "layers.0.residual_group.blocks.0.mlp.fc1.weight": (360, 180),  # mlp_ratio 2
        "layers.7.residual_group.blocks.5.attn_mask": (64, 64, 64),  # (64/8)^2 windows of 64 tokens
        "layers.7.conv.weight": (180, 180, 3, 3),
        "norm.weight": (180,),
        "conv_after_body.weight": (180, 180, 3, 3),
        "conv_before_upsample.0.weight": (64, 180, 3, 3),
        "conv_up1.weight": (64, 64, 3, 3),
        "conv_up3.weight": (64, 64, 3, 3),
        "conv_hr.weight": (64, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    # unshifted blocks register attn_mask = None: not in the file
    assert "layers.0.residual_group.blocks.0.attn_mask" not in sd
    assert "mean" not in sd  # a plain attribute in DiffBIR, not saved
    n_blocks = 8 * 6
    # per block: norm1 (2), bias table, index, qkv (2), proj (2), norm2 (2), fc1 (2), fc2 (2) = 14, + mask on odd blocks
    per_group_conv = 2
    fixed = 2 + 2 + 2 + 2 + 2 + 2 * 4 + 2  # conv_first, patch norm, norm, after_body, before_up, up1-3 + hr, last
    assert len(sd) == n_blocks * 14 + n_blocks // 2 + 8 * per_group_conv + fixed


def test_strict_loading_of_a_diffbir_style_file(tmp_path):
    source = _tiny(seed=3)
    # DiffBIR's loader accepts {"state_dict": ...} and strips a "module." prefix
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 7}, tmp_path / "swinir.ckpt")
    model = SwinIR(TINY).eval()
    load_swinir(tmp_path / "swinir.ckpt", model)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)

    bad = dict(source.state_dict())
    bad["layers.0.conv.weightt"] = bad.pop("layers.0.conv.weight")
    torch.save(bad, tmp_path / "renamed.pth")
    with pytest.raises(WeightsMismatchError) as err:
        load_swinir(tmp_path / "renamed.pth", SwinIR(TINY))
    assert "layers.0.conv.weight" in str(err.value) and "layers.0.conv.weightt" in str(err.value)

    bad = dict(source.state_dict())
    bad["conv_last.weight"] = torch.zeros(3, 16, 1, 1)
    torch.save(bad, tmp_path / "reshaped.pth")
    with pytest.raises(WeightsMismatchError, match=r"conv_last.weight: file \(3, 16, 1, 1\) vs model \(3, 16, 3, 3\)"):
        load_swinir(tmp_path / "reshaped.pth", SwinIR(TINY))

