"""Memory accounting: saved-activation bytes, the linear fit, the prediction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpo.memory import fit_activation_bytes, module_bytes, predict_bytes, saved_activation_bytes, trainable_state_bytes


def test_linear_saves_its_input_only():
    # y = x W^T + b saves x (for dW) and W (for dx); W is a parameter and excluded:
    # x is [B, 16] float32 = B * 16 * 4 bytes
    lin = nn.Linear(16, 8)
    for b in (1, 3):
        x = torch.randn(b, 16, requires_grad=True)
        assert saved_activation_bytes(lambda: lin(x), exclude=lin.parameters()) == b * 16 * 4


def test_views_count_once_and_chains_add_up():
    # relu saves its output; two relus of [4, 10] float32 save 2 * 160 bytes; x.t() is a view of x
    # saved by mm (for the grad of w): one storage of 160 bytes. Total 480.
    x = torch.randn(4, 10, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)

    def fn():
        a = torch.relu(x)
        b = torch.relu(a * 1.0)  # mul by a Python scalar saves nothing
        return x.t() @ w + 0 * b.sum()

    # x.t() @ w saves x.t() (storage of x, 160 B) and w (48 B)
    assert saved_activation_bytes(fn) == 160 + 160 + 160 + 48


def test_fit_and_prediction():
    # bytes = 100 + 30 m  ->  at m = 1: 130, m = 2: 160; predicted at m = 6 with 1000 static: 1280
    fit = fit_activation_bytes(1, 130, 2, 160)
    assert (fit.fixed, fit.per_sample) == (100, 30)
    assert predict_bytes(1000, fit, 6) == 1000 + 100 + 180
    with pytest.raises(ValueError):
        fit_activation_bytes(2, 1, 2, 1)


def test_module_and_trainable_bytes():
    # Linear(16, 8): 16*8 + 8 = 136 fp32 parameters = 544 bytes; bf16 copy: 272
    lin = nn.Linear(16, 8)
    assert module_bytes(lin) == 544
    assert module_bytes(lin.to(torch.bfloat16)) == 272
    acc = trainable_state_bytes(nn.Linear(16, 8).parameters())
    assert acc == {"weights": 544, "gradients": 544, "adamw_states": 1088}


class _Checkpointed(nn.Module):
    """diffusers' pattern: a block called through _gradient_checkpointing_func when enabled."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
        self.gradient_checkpointing = True

        def run(block, x):
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)

        self._gradient_checkpointing_func = run

    def forward(self, x):
        return self._gradient_checkpointing_func(self.block, x) * 1.0


def test_checkpointed_blocks_count_their_inputs_not_their_insides():
    # without checkpointing the block saves x (B*16*4 B for the first Linear), the ReLU output and
    # the second Linear's input (B*64*4 B each, one storage: ReLU's output is that input) -> B*(64+256);
    # checkpointed, only its input x is kept: B*16*4 = 64 B per sample
    m = _Checkpointed()
    x = torch.randn(3, 16, requires_grad=True)
    params = list(m.parameters())
    assert saved_activation_bytes(lambda: m(x), exclude=params, checkpointed=[m]) == 3 * 64
    m.gradient_checkpointing = False
    assert saved_activation_bytes(lambda: m.block(x), exclude=params) == 3 * (64 + 256)
