"""lrpo.precision and lrpo.policies.compiled: which precision `auto` picks, when compiling pays,
and that a compiled, padded forward gives every row what the graph gives it at full batch."""

from __future__ import annotations

import pytest
import torch

from lrpo import precision as prec
from lrpo.config import PolicyConfig
from lrpo.policies import compiled
from lrpo.policies.compiled import AUTO_MIN_FORWARDS, CompiledForward, compile_decision
from lrpo.policies.pixel_unet import PixelPolicy


@pytest.mark.parametrize("flags, expected", [
    ({"avx512_bf16": True, "amx_bf16": False}, "bf16"),
    ({"avx512_bf16": False, "amx_bf16": True}, "bf16"),
    ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, "fp32"),  # bf16 would be emulated: slower
    ({}, "fp32"),  # torch could not read the processor: the safe choice
])
def test_auto_picks_bf16_only_with_bf16_units(monkeypatch, flags, expected):
    monkeypatch.setattr(prec, "_cpu_flags", lambda: flags)
    assert prec.resolve_precision("auto", "cpu") == expected
    ctx = prec.autocast_context("cpu", "auto")
    assert isinstance(ctx, torch.autocast) == (expected == "bf16")
    assert prec.resolve_precision("fp32", "cpu") == "fp32" and prec.resolve_precision("bf16", "cpu") == "bf16"


def test_capability_names_what_it_found(monkeypatch):
    monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx512_bf16": True, "amx_bf16": True})
    assert prec.capability("cpu").describe() == "cpu: bf16 units (amx_bf16, avx512_bf16)"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        prec.resolve_precision("fp16")


def test_bf16_autocast_keeps_outputs_float32_and_close():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)
    with prec.autocast_context("cpu", "bf16"):
        y = lin(x)
    assert y.dtype == torch.bfloat16  # autocast ran the matmul in bf16 ...
    with prec.autocast_context("cpu", "fp32"):
        y32 = lin(x)
    assert y32.dtype == torch.float32
    # ... which keeps 8 bits of mantissa: relative error about 2^-8 per rounding
    assert torch.allclose(y.float(), y32, rtol=3e-2, atol=3e-2)


def test_compile_decision_rule(monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: "/usr/bin/" + name)
    assert compile_decision("off", 10**9, "cpu")[0] is False
    assert compile_decision("on", 1, "cpu")[0] is True
    assert compile_decision("auto", AUTO_MIN_FORWARDS - 1, "cpu")[0] is False
    on, why = compile_decision("auto", AUTO_MIN_FORWARDS, "cpu")
    assert on and "auto -> on" in why
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    on, why = compile_decision("auto", 10**9, "cpu")
    assert not on and "no C++ compiler" in why
    with pytest.raises(ValueError, match="compile must be one of auto, off, on"):
        compile_decision("yes", 1, "cpu")


def _tiny_policy() -> PixelPolicy:
    torch.manual_seed(0)
    policy = PixelPolicy(PolicyConfig(resolution=16, base_channels=8, channel_mults=(1, 2), stage1="none", prediction="v"))
    with torch.no_grad():
        policy.unet.out.weight.normal_(0, 0.05)
    return policy.eval()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rows_do_not_depend_on_the_batch(precision):
    """What makes padding and the update's recomputation exact: every output row depends only on
    its own input row, in eager fp32 and bf16 alike (bit for bit)."""
    policy = _tiny_policy()
    x, c, t = torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16), torch.tensor([900, 700, 500, 300, 100, 1])
    with torch.no_grad(), prec.autocast_context("cpu", precision):
        full = policy(x, t, c)
        part = policy(x[2:5], t[2:5], c[2:5])
    assert torch.equal(full[2:5], part)


def test_compiled_forward_pads_and_chunks_without_recompiling():
    policy = _tiny_policy()
    fwd = CompiledForward(policy, batch_size=4)
    x, c = torch.randn(9, 3, 16, 16), torch.randn(9, 3, 16, 16)
    t = torch.full((9,), 500)
    with torch.no_grad():
        whole = fwd(x, t, c)  # chunks of 4, 4 and 1 (padded to 4)
        eager = policy(x, t, c)
        three = fwd(x[:3], torch.tensor(500), c[:3])  # a 0-dim timestep, padded rows
        four = fwd(x[:4], t[:4], c[:4])
    assert whole.shape == eager.shape
    assert torch.allclose(whole, eager, atol=1e-5)  # other kernels, the same maths
    assert torch.equal(three, four[:3])  # padding changes nothing in the real rows
    # the weights are read at each call: an optimiser step is seen without a recompile
    with torch.no_grad():
        policy.unet.out.bias.add_(1.0)
        moved = fwd(x[:4], t[:4], c[:4])
    assert torch.allclose(moved, four + 1.0, atol=1e-5)


def test_compiled_forward_refuses_an_empty_batch_size():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        CompiledForward(_tiny_policy(), 0)

