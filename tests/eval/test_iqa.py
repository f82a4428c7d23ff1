"""MUSIQ, MANIQA, TOPIQ-NR and CLIP-IQA+ (lrpo.eval.iqa) against pyiqa's published layouts.

pyiqa's weight files cannot be downloaded here. The layouts below are written from pyiqa 0.1.16's
sources (``pyiqa/archs/musiq_arch.py``, ``maniqa_arch.py`` + ``maniqa_swin.py``, ``topiq_arch.py``
with timm's ``resnet50`` / ``vit_base_patch8_224`` names, ``clipiqa_arch.py``), independently of
the modules under test: full size on the meta device (names, shapes, parameter counts), and small
random files in the same layout and container that go through the real loaders.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lrpo import weights
from lrpo.eval import iqa
from lrpo.eval.iqa import clipiqa_plus as iqa_clipiqa_plus, maniqa as iqa_maniqa, musiq as iqa_musiq
from lrpo.eval.iqa import scoring as iqa_scoring, topiq as iqa_topiq
from lrpo.eval.iqa import (
    CLIPIQA_PLUS_WEIGHTS,
    IQA_METRICS,
    MANIQA,
    MUSIQ,
    TOPIQNR,
    MANIQAConfig,
    MUSIQConfig,
    ResNetFeatures,
    TOPIQConfig,
    build_iqa_scorers,
    load_clipiqa_plus,
    load_maniqa,
    load_musiq,
    load_topiq_nr,
    parse_iqa_requests,
    score_images,
)
from lrpo.model_files import CheckpointFormatError, StateDictMismatchError
from lrpo.rewards.clip_tokenizer import CLIPTokenizer
from lrpo.standins import Entry, clip_layout, random_state_dict, write_merges_file

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models on a busy 2-core machine: thread spin-waits cost more than the arithmetic
    from tests.conftest import single_thread

    with single_thread():
        yield


def _random(layout: dict[str, Entry], seed: int = 0) -> dict[str, torch.Tensor]:
    return random_state_dict(layout, torch.Generator().manual_seed(seed))


def _lin(out: dict, key: str, cin: int, cout: int, bias: bool = True) -> None:
    out[f"{key}.weight"] = Entry((cout, cin))
    if bias:
        out[f"{key}.bias"] = Entry((cout,))


def _norm(out: dict, key: str, c: int) -> None:
    out[f"{key}.weight"] = Entry((c,))
    out[f"{key}.bias"] = Entry((c,))


def _conv(out: dict, key: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
    out[f"{key}.weight"] = Entry((cout, cin, k, k))
    if bias:
        out[f"{key}.bias"] = Entry((cout,))


def _bn(out: dict, key: str, c: int) -> None:
    _norm(out, key, c)
    out[f"{key}.running_mean"] = Entry((c,))
    out[f"{key}.running_var"] = Entry((c,))
    out[f"{key}.num_batches_tracked"] = Entry((), torch.int64)


def _keys_and_shapes(sd) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _layout_shapes(layout) -> dict:
    return {k: e.shape for k, e in layout.items()}


# ----------------------------------------------------------------------------------------------
# layouts, from pyiqa's sources
# ----------------------------------------------------------------------------------------------
def musiq_layout(root=64, hidden=384, mlp=1152, layers=14, patch=32, grid=10, scales=3) -> dict:
    """MUSIQ(pretrained='koniq10k'): BiT root + one bottleneck, 14 pre-LN blocks, a 1-output head."""
    out: dict[str, Entry] = {}
    _conv(out, "conv_root", 3, root, 7, bias=False)
    _norm(out, "gn_root", root)
    for name, cin, cout, k in (("1", root, root, 1), ("2", root, root, 3), ("3", root, 4 * root, 1), ("_proj", root, 4 * root, 1)):
        _conv(out, f"block1.conv{name}", cin, cout, k, bias=False)
        _norm(out, f"block1.gn{name}", cout)
    _lin(out, "embedding", 4 * root * (patch // 4) ** 2, hidden)
    out["transformer_encoder.posembed_input.position_emb"] = Entry((1, grid * grid, hidden))
    out["transformer_encoder.scaleembed_input.scale_emb"] = Entry((scales, hidden))
    out["transformer_encoder.cls"] = Entry((1, 1, hidden))
    _norm(out, "transformer_encoder.encoder_norm", hidden)
    for i in range(layers):
        p = f"transformer_encoder.transformer.encoderblock_{i}"
        _norm(out, f"{p}.norm1", hidden)
        for n in ("query", "key", "value", "out"):
            _lin(out, f"{p}.attention.{n}", hidden, hidden)
        _norm(out, f"{p}.norm2", hidden)
        _lin(out, f"{p}.mlp.fc1", hidden, mlp)
        _lin(out, f"{p}.mlp.fc2", mlp, hidden)
    _lin(out, "head", hidden, 1)
    return out


def resnet_layout(prefix="", layers=(3, 4, 6, 3), stem=64, widths=(64, 128, 256, 512), expansion=4) -> dict:
    """timm resnet50 with features_only=True: no fc; downsample.0 / .1 in the first block of each stage."""
    out: dict[str, Entry] = {}
    _conv(out, f"{prefix}conv1", 3, stem, 7, bias=False)
    _bn(out, f"{prefix}bn1", stem)
    cin = stem
    for i, (blocks, w) in enumerate(zip(layers, widths)):
        for j in range(blocks):
            p = f"{prefix}layer{i + 1}.{j}"
            _conv(out, f"{p}.conv1", cin, w, 1, bias=False)
            _bn(out, f"{p}.bn1", w)
            _conv(out, f"{p}.conv2", w, w, 3, bias=False)
            _bn(out, f"{p}.bn2", w)
            _conv(out, f"{p}.conv3", w, w * expansion, 1, bias=False)
            _bn(out, f"{p}.bn3", w * expansion)
            if j == 0:
                _conv(out, f"{p}.downsample.0", cin, w * expansion, 1, bias=False)
                _bn(out, f"{p}.downsample.1", w * expansion)
            cin = w * expansion
    return out


def _mha(out: dict, key: str, d: int) -> None:
    out[f"{key}.in_proj_weight"] = Entry((3 * d, d))
    out[f"{key}.in_proj_bias"] = Entry((3 * d,))
    _lin(out, f"{key}.out_proj", d, d)


def topiq_layout(resnet: dict | None = None, dims=(64, 256, 512, 1024, 2048), inter=256, ff=1024, gate=64, grid=32) -> dict:
    """CFANet(use_ref=False, resnet50): gated pooling, 1x1 reductions, 5 self-attention blocks,
    4 cross-attention blocks (their unused self_attn included), attention pool, score MLP."""
    out: dict[str, Entry] = {}
    out.update(resnet if resnet is not None else resnet_layout("semantic_model."))
    for i, c in enumerate(dims):
        _conv(out, f"weight_pool.{i}.splitconv", c, 2 * c, 1)
        _conv(out, f"weight_pool.{i}.weight_blk.0", c, gate, 1)
        _conv(out, f"weight_pool.{i}.weight_blk.2", gate, gate, 3)
        _conv(out, f"weight_pool.{i}.weight_blk.4", gate, 1, 3)
        _conv(out, f"dim_reduce.{i}.0", c, inter, 1)

    def encoder(p: str) -> None:
        _mha(out, f"{p}.self_attn", inter)
        _lin(out, f"{p}.linear1", inter, ff)
        _lin(out, f"{p}.linear2", ff, inter)
        _norm(out, f"{p}.norm1", inter)
        _norm(out, f"{p}.norm2", inter)

    for i in range(len(dims)):
        encoder(f"sa_attn_blks.{i}.layers.0")
    for i in range(len(dims) - 1):
        p = f"attn_blks.{i}.layers.0"
        _mha(out, f"{p}.self_attn", inter)
        _mha(out, f"{p}.multihead_attn", inter)
        _lin(out, f"{p}.linear1", inter, ff)
        _lin(out, f"{p}.linear2", ff, inter)
        for n in (1, 2, 3):
            _norm(out, f"{p}.norm{n}", inter)
    encoder("attn_pool")
    for i in (0, 3):
        _norm(out, f"score_linear.{i}", inter)
    _lin(out, "score_linear.1", inter, inter)
    _lin(out, "score_linear.4", inter, inter)
    _lin(out, "score_linear.6", inter, 1)
    out["h_emb"] = Entry((1, inter // 2, grid, 1))
    out["w_emb"] = Entry((1, inter // 2, 1, grid))
    return out


def relative_position_index(w: int) -> torch.Tensor:
    """Swin's index, written out: tokens i = (y, x) row-major; index (dy + w - 1)(2w - 1) + dx + w - 1."""
    cells = [(y, x) for y in range(w) for x in range(w)]
    return torch.tensor([[(a[0] - b[0] + w - 1) * (2 * w - 1) + (a[1] - b[1] + w - 1) for b in cells] for a in cells])


def shift_mask(g: int, w: int, s: int) -> torch.Tensor:
    """Swin's shifted-window mask, written out: region of a row / column: 0 before g - w, 1 before
    g - s, else 2; a pair of tokens in one window gets 0 if in the same region, else -100."""
    def band(v: int) -> int:
        return 0 if v < g - w else 1 if v < g - s else 2

    masks = []
    for wy in range(g // w):
        for wx in range(g // w):
            cells = [(wy * w + y, wx * w + x) for y in range(w) for x in range(w)]
            label = [3 * band(y) + band(x) for y, x in cells]
            masks.append([[0.0 if a == b else -100.0 for b in label] for a in label])
    return torch.tensor(masks)


def maniqa_layout(d=768, depth=12, mlp=3072, classes=1000, patch=8, crop=224, swin_depths=(2, 2), heads=4, window=4, swin_mlp=768) -> dict:
    """MANIQA(train_dataset='koniq'): timm vit_base_patch8_224 under ``vit.`` (head and norm
    included), two TAB stages of 2, conv 4D -> D, Swin (with its unused downsample conv), conv D -> D/2, Swin, two heads."""
    out: dict[str, Entry] = {}
    g = crop // patch
    n = g * g
    out["vit.cls_token"] = Entry((1, 1, d))
    out["vit.pos_embed"] = Entry((1, n + 1, d))
    _conv(out, "vit.patch_embed.proj", 3, d, patch)
    for i in range(depth):
        p = f"vit.blocks.{i}"
        _norm(out, f"{p}.norm1", d)
        _lin(out, f"{p}.attn.qkv", d, 3 * d)
        _lin(out, f"{p}.attn.proj", d, d)
        _norm(out, f"{p}.norm2", d)
        _lin(out, f"{p}.mlp.fc1", d, mlp)
        _lin(out, f"{p}.mlp.fc2", mlp, d)
    _norm(out, "vit.norm", d)
    _lin(out, "vit.head", d, classes)

    def swin(prefix: str, dim: int) -> None:
        _conv(out, f"{prefix}.downsample", dim, dim, 3)
        for i, blocks in enumerate(swin_depths):
            _conv(out, f"{prefix}.layers.{i}.conv", dim, dim, 3)
            for j in range(blocks):
                p = f"{prefix}.layers.{i}.blocks.{j}"
                if j % 2:
                    out[f"{p}.attn_mask"] = Entry(((g // window) ** 2, window**2, window**2), value=shift_mask(g, window, window // 2))
                _norm(out, f"{p}.norm1", dim)
                out[f"{p}.attn.relative_position_bias_table"] = Entry(((2 * window - 1) ** 2, heads))
                out[f"{p}.attn.relative_position_index"] = Entry((window**2, window**2), torch.int64, relative_position_index(window))
                _lin(out, f"{p}.attn.qkv", dim, 3 * dim)
                _lin(out, f"{p}.attn.proj", dim, dim)
                _norm(out, f"{p}.norm2", dim)
                _lin(out, f"{p}.mlp.fc1", dim, swin_mlp)
                _lin(out, f"{p}.mlp.fc2", swin_mlp, dim)

    for t in (1, 2):
        for i in range(2):
            for q in ("c_q", "c_k", "c_v"):
                _lin(out, f"tablock{t}.{i}.{q}", n, n)
    _conv(out, "conv1", 4 * d, d, 1)
    swin("swintransformer1", d)
    _conv(out, "conv2", d, d // 2, 1)
    swin("swintransformer2", d // 2)
    for head in ("fc_score", "fc_weight"):
        _lin(out, f"{head}.0", d // 2, d // 2)
        _lin(out, f"{head}.3", d // 2, 1)
    return out


# tiny sizes: widths divisible by the fixed head counts (MUSIQ 6, TOPIQ 4, ViT-B 12), GroupNorm's 32
TINY_MUSIQ = dict(root=32, hidden=24, mlp=48, layers=2, patch=16, grid=4, scales=3)
TINY_MUSIQ_SCALES = MUSIQConfig(longer_side_lengths=(32, 48))
TINY_RESNET = dict(layers=(1, 1, 1, 1), stem=8, widths=(4, 8, 16, 32), expansion=4)
TINY_TOPIQ = dict(dims=(8, 16, 32, 64, 128), inter=16, ff=32, gate=8, grid=32)
TINY_MANIQA = dict(d=24, depth=10, mlp=48, classes=10, patch=8, crop=32, swin_depths=(2, 2), heads=2, window=2, swin_mlp=24)


def tiny_topiq_layout() -> dict:
    return topiq_layout(resnet_layout("semantic_model.", **TINY_RESNET), **TINY_TOPIQ)


# ----------------------------------------------------------------------------------------------
# full-size layouts and parameter counts
# ----------------------------------------------------------------------------------------------
def test_full_size_models_have_the_published_layouts():
    # MUSIQ: root 9408 + 128; block1 4096 + 36864 + 16384 + 16384 + GN 1280; embedding 16384 * 384 + 384;
    # encoder 100 * 384 + 3 * 384 + 384 + 768; per block 2 * 768 + 4 * 147840 + 443520 + 442752 = 1479168,
    # times 14; head 385: 27 125 825 (the MUSIQ paper's "27M").
    # ResNet-50 without fc: torchvision's 25 557 032 - (2048 * 1000 + 1000) = 23 508 032.
    # ViT-B/8 (timm vit_base_patch8_224): patch 148224, cls 768, pos 785 * 768, 12 blocks of 7 087 872,
    # norm 1536, head 769 000: 86 576 872 of MANIQA's total.
    with torch.device("meta"):
        musiq, topiq, maniqa, resnet = MUSIQ(MUSIQConfig()), TOPIQNR(TOPIQConfig()), MANIQA(MANIQAConfig()), ResNetFeatures()
    assert _keys_and_shapes(musiq.state_dict()) == _layout_shapes(musiq_layout())
    assert _keys_and_shapes(topiq.state_dict()) == _layout_shapes(topiq_layout())
    assert _keys_and_shapes(maniqa.state_dict()) == _layout_shapes(maniqa_layout())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(musiq) == 27_125_825
    assert count(resnet) == 23_508_032 and resnet.channels == [64, 256, 512, 1024, 2048]
    assert count(maniqa.vit) == 86_576_872


def test_registry_knows_the_files():
    names = {m.weights for m in IQA_METRICS.values()}
    catalog = weights.load_catalog()
    assert names <= set(catalog)
    files = {catalog[n].filename: catalog[n] for n in names}
    assert set(files) == {"musiq_koniq_ckpt-e95806b9.pth", "ckpt_koniq10k.pt", "cfanet_nr_koniq_res50-9a73138b.pth",
                          "CLIP-IQA+_learned_prompts-603f3273.pth"}
    for name, entry in files.items():
        assert entry.url.startswith("https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/")
        assert entry.sha256 is None  # never hashed here
        stem = name.rsplit(".", 1)[0]
        assert entry.sha256_prefix == (stem.rsplit("-", 1)[1] if "-" in stem else None)
    assert files["CLIP-IQA+_learned_prompts-603f3273.pth"].url.endswith("CLIP-IQA%2B_learned_prompts-603f3273.pth")


def test_verify_compares_the_name_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "musiq_koniq_ckpt-e95806b9.pth"
    path.write_bytes(b"not the published file")
    found = weights.verify("musiq-koniq", path)
    assert found.status == "mismatch" and "e95806b9" in found.message()
    entry = dataclasses.replace(weights.get_entry("musiq-koniq"), sha256_prefix=found.sha256[:8])
    monkeypatch.setitem(weights.KNOWN_FILES, "musiq-koniq", entry)
    assert weights.verify("musiq-koniq", path).status == "ok"


# ----------------------------------------------------------------------------------------------
# MUSIQ
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def musiq_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("musiq") / "musiq_koniq_ckpt-e95806b9.pth"
    torch.save(_random(musiq_layout(**TINY_MUSIQ)), path)  # raw state dict, as pyiqa's
    return path


def test_musiq_loads_strictly_and_scores(musiq_file: Path):
    model = load_musiq(musiq_file, TINY_MUSIQ_SCALES)
    cfg = model.config
    assert (cfg.patch_size, cfg.root_width, cfg.hidden_size, cfg.num_layers, cfg.spatial_grid) == (16, 32, 24, 2, 4)
    sd = torch.load(musiq_file)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    images = torch.rand(3, 3, 24, 64, generator=torch.Generator().manual_seed(1))
    scores = score_images(model, images, batch_size=2)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    torch.manual_seed(123)  # nothing random at inference: the seed does not matter
    assert torch.equal(score_images(model, images, batch_size=2), scores)
    alone = torch.cat([score_images(model, images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(alone, scores, rtol=1e-5, atol=1e-5)
    # the 1-output head's value is the MOS itself
    bad = dict(sd)
    bad["head.0.weight"] = bad.pop("head.weight")
    with pytest.raises(CheckpointFormatError, match="distribution head"):
        iqa.musiq_config_from_state_dict(bad)


def test_musiq_tokens_hash_positions_and_pad():
    # hashed rows for 12 patch rows on a 10-row grid: floor(i * 10 / 12) = 0 0 1 2 3 4 5 5 6 7 8 9
    assert iqa_musiq._hashed_index(10, 12).tolist() == [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    cfg = MUSIQConfig(patch_size=16, spatial_grid=4, longer_side_lengths=(48, 32))
    x = torch.rand(1, 3, 24, 64)
    patches, spatial, scale, mask = iqa.musiq_multiscale_tokens(x, cfg)
    # longer side 32: 12 x 32 -> 1 x 2 patches, padded to ceil(32/16)^2 = 4; 48: 18 x 48 -> 2 x 3 of 9;
    # native 24 x 64: 2 x 4 = 8 (not padded). Scales are numbered by sorted longer side.
    assert patches.shape == (1, 4 + 9 + 8, 3, 16, 16)
    assert mask[0].tolist() == [1, 1, 0, 0] + [1] * 6 + [0] * 3 + [1] * 8
    assert scale[0].tolist() == [0, 0, 0, 0] + [1] * 6 + [0] * 3 + [2] * 8
    # native scale: rows hash 2 -> 4 rows as (0, 2), columns 4 -> (0, 1, 2, 3): position = 4 row + column
    assert spatial[0, -8:].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    # 'SAME' padding: 24 rows pad to 32 with 4 zero rows on top; the first patch's top rows are zero
    assert torch.equal(patches[0, -8, :, :4], torch.zeros(3, 4, 16))
    assert torch.equal(patches[0, -8, :, 4:], x[0, :, :12, :16])


def test_musiq_padding_tokens_do_not_change_the_score(musiq_file: Path):
    # Padded tokens' logits are -1e3: exp(-1e3 - max) = 0 in float32, so the class token sees only
    # real tokens and the score equals the encoder run on the real tokens alone.
    model = load_musiq(musiq_file, TINY_MUSIQ_SCALES)
    x = torch.rand(1, 3, 24, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(x)
        patches, spatial, scale, mask = iqa.musiq_multiscale_tokens((x - 0.5) * 2, model.config)
        keep = mask[0]
        tokens = model.embed_patches(patches[:, keep])
        encoded = model.transformer_encoder(tokens, spatial[:, keep], scale[:, keep], mask[:, keep])
        real_only = model.head(encoded[:, 0]).squeeze(-1)
    assert (~keep).sum() == 5
    torch.testing.assert_close(full, real_only, rtol=1e-5, atol=1e-6)


def test_weight_standardised_conv_ignores_filter_scale_and_offset():
    # w' = (w - mean) / (std + 1e-5): a filter a * w + b (a > 0) standardises to the same w' up to
    # the 1e-5 in the denominator, so the output barely moves.
    conv = iqa_musiq.StdConv2d(3, 4, 3)
    torch.nn.init.normal_(conv.weight)
    x = torch.rand(2, 3, 9, 9)
    with torch.no_grad():
        y = conv(x)
        conv.weight.mul_(torch.tensor([2.0, 0.5, 3.0, 1.0]).view(4, 1, 1, 1)).add_(0.7)
        torch.testing.assert_close(conv(x), y, rtol=1e-4, atol=1e-4)
    assert y.shape == (2, 4, 9, 9)  # 'SAME'


# ----------------------------------------------------------------------------------------------
# TOPIQ-NR
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def topiq_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("topiq") / "cfanet_nr_koniq_res50-9a73138b.pth"
    torch.save({"params": _random(tiny_topiq_layout())}, path)  # pyiqa: weight_keys='params'
    return path


def test_topiq_loads_strictly_and_scores(topiq_file: Path):
    model = load_topiq_nr(topiq_file)
    cfg = model.config
    assert (cfg.backbone_layers, cfg.stem_width, cfg.backbone_widths, cfg.inter_dim, cfg.gate_width) == (
        (1, 1, 1, 1), 8, (4, 8, 16, 32), 16, 8)
    images = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    scores = score_images(model, images, batch_size=2)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    alone = torch.cat([score_images(model, images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(alone, scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(score_images(load_topiq_nr(topiq_file), images, batch_size=2), scores)


def test_topiq_file_must_match_exactly(topiq_file: Path, tmp_path: Path):
    sd = torch.load(topiq_file)["params"]
    extra = dict(sd, **{"semantic_model.fc.weight": torch.zeros(10, 128)})
    torch.save({"params": extra}, tmp_path / "extra.pth")
    with pytest.raises(StateDictMismatchError, match="semantic_model.fc.weight"):
        load_topiq_nr(tmp_path / "extra.pth")
    missing = {k: v for k, v in sd.items() if k != "attn_blks.0.layers.0.self_attn.in_proj_weight"}
    torch.save({"params": missing}, tmp_path / "missing.pth")
    with pytest.raises(StateDictMismatchError, match="attn_blks.0.layers.0.self_attn.in_proj_weight"):
        load_topiq_nr(tmp_path / "missing.pth")
    # BatchNorm counters may be absent; a DataParallel prefix is removed
    lean = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(lean, tmp_path / "lean.pth")
    load_topiq_nr(tmp_path / "lean.pth")


def test_topiq_gate_and_position_embedding_by_hand():
    # Gate with a zero last conv: weight = sigmoid(0) = 1/2 everywhere, so gate(x) = GELU(x1) / 2
    # where x1 is the first half of splitconv(x).
    gate = iqa_topiq._GatedConv(4, 8)
    with torch.no_grad():
        gate.weight_blk[4].weight.zero_()
        gate.weight_blk[4].bias.zero_()
        x = torch.randn(2, 4, 5, 5)
        torch.testing.assert_close(gate(x), F.gelu(gate.splitconv(x)[:, :4]) / 2)
    # The 2-D embedding: channels < D/2 depend on the row only, the others on the column only.
    model = TOPIQNR(TOPIQConfig(backbone_layers=(1, 1, 1, 1), stem_width=8, backbone_widths=(4, 8, 16, 32), inter_dim=16,
                                feedforward_dim=32, gate_width=8, pos_grid=4))
    with torch.no_grad():
        model.h_emb.copy_(torch.arange(32.0).view(1, 8, 4, 1))
        model.w_emb.copy_(-torch.arange(32.0).view(1, 8, 1, 4))
    pos = model.position_embedding()
    assert pos.shape == (1, 16, 4, 4)
    assert torch.equal(pos[0, 3, 2], torch.full((4,), 3 * 4 + 2.0)) and torch.equal(pos[0, 8 + 3, :, 1], torch.full((4,), -(3 * 4 + 1.0)))


# ----------------------------------------------------------------------------------------------
# MANIQA
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maniqa_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("maniqa") / "ckpt_koniq10k.pt"
    torch.save(_random(maniqa_layout(**TINY_MANIQA)), path)  # raw state dict (pyiqa: no weight key)
    return path


def test_maniqa_computed_buffers_match_swin():
    # the module computes Swin's index and shifted-window mask as the layout above writes them out
    block = iqa_maniqa._SwinBlock(8, grid=4, heads=2, window=2, shift=1, mlp=8)
    assert torch.equal(block.attn.relative_position_index, relative_position_index(2))
    assert torch.equal(block.attn_mask, shift_mask(4, 2, 1))
    assert torch.equal(iqa_maniqa._relative_position_index(4), relative_position_index(4))
    assert torch.equal(iqa_maniqa._shift_mask(28, 28, 4, 2), shift_mask(28, 4, 2))


def test_maniqa_loads_strictly_and_scores(maniqa_file: Path):
    model = load_maniqa(maniqa_file)
    cfg = model.config
    assert (cfg.vit_dim, cfg.vit_depth, cfg.crop_size, cfg.swin_window, cfg.swin_heads, cfg.crops) == (24, 10, 32, 2, (2, 2), 20)
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(4))
    scores = score_images(model, images, batch_size=1)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    torch.testing.assert_close(score_images(model, images, batch_size=2), scores, rtol=1e-5, atol=1e-5)
    # a side <= the crop size is upscaled first (bilinear, factor (32 + 1) / 32) instead of failing
    assert torch.isfinite(score_images(model, torch.rand(1, 3, 32, 32))).all()


def test_maniqa_uniform_crops_and_weighted_pooling(maniqa_file: Path):
    # 512 px, 20 crops of 224: step (512 - 224) // floor(sqrt 20) = 72, tops/lefts 0 72 144 216 288
    # on a 5 x 5 grid, row-major, the first 20 kept (the last row has lefts 0..216).
    x = torch.arange(512.0).view(1, 1, 1, 512).expand(1, 1, 512, 512) + 1000 * torch.arange(512.0).view(1, 1, 512, 1)
    crops = iqa_maniqa._uniform_crops(x, 224, 20)
    corners = [(int(c[0, 0, 0]) // 1000, int(c[0, 0, 0]) % 1000) for c in crops]
    assert corners == [(t, l) for t in (0, 72, 144, 216, 288) for l in (0, 72, 144, 216, 288)][:20]
    # With a zero last layer in fc_weight every token weighs sigmoid(0) = 1/2, so the quality is
    # sum(s / 2) / (n / 2 + 1e-8), the plain mean of the per-token scores over all crops.
    model = load_maniqa(maniqa_file)
    with torch.no_grad():
        model.fc_weight[3].weight.zero_()
        model.fc_weight[3].bias.zero_()
        images = torch.rand(1, 3, 40, 40)
        tokens = model.crop_tokens(iqa_maniqa._uniform_crops((images - 0.5) / 0.5, 32, 20))
        torch.testing.assert_close(model(images), model.fc_score(tokens).mean().view(1), rtol=1e-5, atol=1e-6)


def test_transposed_attention_reshapes_instead_of_transposing():
    # q = k = 0: attention is uniform over the C channels, so attn @ v has every row equal to the
    # channel mean m [N] of v; transposed to [N, C] and reshaped to [C, N], row c reads
    # m[(c * N + j) // C] for j < N: for C = 2, N = 3 the rows are (m0, m0, m1) and (m1, m2, m2).
    tab = iqa_maniqa._TABlock(3)
    with torch.no_grad():
        for lin in (tab.c_q, tab.c_k):
            lin.weight.zero_()
            lin.bias.zero_()
        x = torch.randn(1, 2, 3)
        m = tab.c_v(x)[0].mean(dim=0)
        expected = torch.stack([torch.stack([m[0], m[0], m[1]]), torch.stack([m[1], m[2], m[2]])])
        torch.testing.assert_close(tab(x)[0] - x[0], expected)


# ----------------------------------------------------------------------------------------------
# CLIP-IQA+
# ----------------------------------------------------------------------------------------------
MERGES = [("l", "o</w>"), ("h", "e"), ("l", "lo</w>"), ("he", "llo</w>"), ("b", "c</w>"), ("a", "b")]
TINY_CLIP = dict(embed_dim=16, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8, patch_size=None,
                 context_length=77, vocab_size=520, text_width=32, text_layers=2)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clipiqa_plus")
    torch.save(_random(clip_layout(**TINY_CLIP)), folder / "RN50.pt")
    vocab = write_merges_file(folder / "bpe_simple_vocab_16e6.txt.gz", MERGES)
    prompts = folder / CLIPIQA_PLUS_WEIGHTS.filename
    # the published file is the bare context tensor [n_ctx, width], shared by both prompts
    torch.save(0.02 * torch.randn(4, 32, generator=torch.Generator().manual_seed(5)), prompts)
    return {"prompts": prompts, "clip": folder / "RN50.pt", "vocab": vocab}


def _clipiqa_plus(files) -> iqa.CLIPIQAPlus:
    # RN50's text tower has 8 heads of 64; the tiny one 2 of 16, so load it through build_clip here
    from lrpo.rewards.clip_models import load_clip

    clip = load_clip(files["clip"], quick_gelu=True, text_head_width=16)
    return iqa.CLIPIQAPlus(clip, CLIPTokenizer.from_file(files["vocab"]), iqa.read_prompt_context(files["prompts"]))


def test_clipiqa_plus_prompts_put_the_class_between_context_halves(clip_files):
    # With the context set to the token embedding of "x" the learned prompt is the token sequence
    # SOT, x x, <3 class tokens>, x x, <rest of the prompt>, EOT: the text features must equal
    # CLIP's own text encoder on those ids.
    model = _clipiqa_plus(clip_files)
    tok = CLIPTokenizer.from_file(clip_files["vocab"])
    clip = model.clip
    x_id = tok.encode("X")[0]
    ctx = clip.token_embedding.weight[x_id].detach().expand(4, -1).clone()
    torch.save(ctx, clip_files["prompts"].with_name("x_context.pth"))
    as_x = iqa.CLIPIQAPlus(clip, tok, iqa.read_prompt_context(clip_files["prompts"].with_name("x_context.pth")))
    rows = []
    for text in iqa_clipiqa_plus.CLIPIQA_PLUS_CLASS_TEXTS:
        ids = tok("X X X X " + text)[0].tolist()
        cls = ids[5:8]
        rows.append(ids[:1] + [x_id] * 2 + cls + [x_id] * 2 + ids[8:])
    with torch.no_grad():
        expected = clip.encode_text(torch.tensor(rows)[:, :77])
    torch.testing.assert_close(as_x.text_features, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.text_features, expected)  # the learned context is used


def test_clipiqa_plus_score_is_softmax_of_100_cosines(clip_files, monkeypatch: pytest.MonkeyPatch):
    model = _clipiqa_plus(clip_files)
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(100.0))
    # e = (1, 0, ...); u_good at cos 0.99, u_bad at cos 0.98: P(good) = sigmoid(100 (0.99 - 0.98)) = sigmoid(1)
    e = torch.zeros(2, 16)
    e[:, 0] = torch.tensor([1.0, 3.0])  # the norm does not matter
    u = torch.zeros(2, 16)
    u[0, 0], u[0, 1] = 0.99, math.sqrt(1 - 0.99**2)
    u[1, 0], u[1, 2] = 0.98, math.sqrt(1 - 0.98**2)
    model.text_features = u
    monkeypatch.setattr(model.clip, "encode_image", lambda x, use_positional_embedding: e[: len(x)])
    scores = score_images(model, torch.rand(2, 3, 40, 56))
    torch.testing.assert_close(scores, torch.full((2,), 1 / (1 + math.exp(-1.0))), rtol=1e-5, atol=1e-6)


def test_clipiqa_plus_loads_from_the_registry_and_scores(clip_files, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(clip_files["prompts"].parent))
    # the tiny CLIP's text heads differ from RN50's; give load_clip the tiny head width
    from lrpo.rewards import clip_models

    real = clip_models.load_clip
    monkeypatch.setattr(clip_models, "load_clip", lambda p, **kw: real(p, **{**kw, "text_head_width": 16}))
    model = load_clipiqa_plus()
    images = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(6))
    scores = score_images(model, images, batch_size=2)
    assert scores.shape == (3,) and ((scores > 0) & (scores < 1)).all()
    torch.testing.assert_close(torch.cat([score_images(model, images[i : i + 1]) for i in range(3)]), scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointFormatError, match="prompt context"):
        torch.save({"something": torch.zeros(3)}, clip_files["prompts"].with_name("bad.pth"))
        iqa.read_prompt_context(clip_files["prompts"].with_name("bad.pth"))


# ----------------------------------------------------------------------------------------------
# what `lrpo evaluate` uses
# ----------------------------------------------------------------------------------------------
def test_iqa_requests_parse():
    assert parse_iqa_requests([]) is None  # auto: every metric whose file is found
    assert parse_iqa_requests(["none"]) == {}
    assert parse_iqa_requests(["musiq", "clipiqa+=/x/p.pth", "topiq-nr"]) == {"musiq": None, "clipiqa_plus": "/x/p.pth", "topiq_nr": None}
    assert parse_iqa_requests(["all"]) == dict.fromkeys(IQA_METRICS)
    with pytest.raises(ValueError, match="NAME or NAME=PATH"):
        parse_iqa_requests(["brisque"])
    # `lrpo evaluate --iqa ...` reaches EvalOptions.iqa
    import argparse

    from lrpo.eval.cli import add_evaluate_arguments, options_from_args

    parser = add_evaluate_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--lq", "x", "--out", "y", "--iqa", "musiq=/w/m.pth", "--iqa", "clipiqa+"])
    assert options_from_args(args).iqa == {"musiq": "/w/m.pth", "clipiqa_plus": None}
    assert options_from_args(parser.parse_args(["--lq", "x", "--out", "y"])).iqa is None


def test_missing_files_become_notes_and_found_ones_score(musiq_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LRPO_WEIGHTS", str(musiq_file.parent))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(iqa_scoring, "_LOADERS", {**iqa_scoring._LOADERS, "musiq": lambda p, **_: load_musiq(p, TINY_MUSIQ_SCALES)})
    scorers, notes = build_iqa_scorers(None, "cpu", clip_path=str(tmp_path / "nowhere" / "RN50.pt"))
    assert set(scorers) == {"musiq"}
    assert "MANIQA: not computed: file ckpt_koniq10k.pt not found (lrpo weights fetch maniqa-koniq)" in notes
    assert "TOPIQ-NR: not computed: file cfanet_nr_koniq_res50-9a73138b.pth not found (lrpo weights fetch topiq-nr-koniq)" in notes
    assert ("CLIP-IQA+: not computed: file CLIP-IQA+_learned_prompts-603f3273.pth not found "
            "(lrpo weights fetch clipiqa-plus-prompts)") in notes
    scores = scorers["musiq"].score(torch.rand(2, 3, 24, 64))
    assert scores.shape == (2,) and scores.dtype == torch.float32
    # an explicit path that does not exist is a note too; a file of the wrong layout is an error
    _, notes = build_iqa_scorers({"maniqa": str(tmp_path / "m.pt")})
    assert notes == [f"MANIQA: not computed: file {tmp_path / 'm.pt'} not found (lrpo weights fetch maniqa-koniq)"]
    with pytest.raises(CheckpointFormatError):
        build_iqa_scorers({"maniqa": str(musiq_file)})


def test_evaluate_reports_found_metrics_and_notes_missing_ones(musiq_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import json

    from tests.conftest import write_tiny_faces
    from lrpo.eval.evaluate import EvalOptions, MethodSpec, evaluate_lq_only

    monkeypatch.setenv("LRPO_WEIGHTS", str(musiq_file.parent))
    monkeypatch.setenv("LRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(iqa_scoring, "_LOADERS", {**iqa_scoring._LOADERS, "musiq": lambda p, **_: load_musiq(p, TINY_MUSIQ_SCALES)})
    faces = write_tiny_faces(tmp_path / "lq", count=2, size=32, seed=1)
    options = EvalOptions(batch_size=2, device="cpu", reward_preset=None, progress=False, iqa={"musiq": None, "maniqa": None})
    result = evaluate_lq_only(tmp_path / "lq", [MethodSpec("copy", "folder", str(faces[0].parent))], tmp_path / "eval", options)
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "musiq" in record["metrics"] and "maniqa" not in record["metrics"]
    assert record["metric_info"]["musiq"]["label"] == "MUSIQ" and record["metric_info"]["musiq"]["higher_is_better"]
    assert all(math.isfinite(record["summary"][m]["musiq"]) for m in ("input", "copy"))
    note = "MANIQA: not computed: file ckpt_koniq10k.pt not found (lrpo weights fetch maniqa-koniq)"
    assert note in record["notes"] and note in result.notes
    assert "not computed: file ckpt_koniq10k.pt not found" in (tmp_path / "eval" / "report.html").read_text()
