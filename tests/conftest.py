"""Shared fixtures: tiny synthetic faces and a tiny pretraining config that runs in seconds on a CPU."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from lrpo.config import PretrainConfig, load_config
from lrpo.data.images import save_rgb


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``slow`` tests unless a marker expression is given (``-m slow``, ``-m "slow or not slow"``),
    as pyproject's marker text and the Makefile's ``test`` / ``test-all`` targets intend."""
    if config.option.markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow (make test runs it)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


TINY_FACE_COUNT = 12
TINY_FACE_SIZE = 32


def write_tiny_faces(folder: Path, count: int = TINY_FACE_COUNT, size: int = TINY_FACE_SIZE, seed: int = 0) -> list[Path]:
    """Write ``count`` synthetic 'face-like' RGB PNGs (size x size) into ``folder``; return their paths.

    Each image is a smooth colour gradient (skin/background), an ellipse (the face) with two dark
    dots (eyes) and a little random texture, all drawn from one seeded numpy Generator, so the set
    is identical on every machine and has both smooth regions and high frequencies to restore.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    paths = []
    for i in range(count):
        img = np.empty((size, size, 3))
        for c in range(3):
            img[..., c] = rng.uniform(0.2, 0.8) + rng.uniform(-0.3, 0.3) * xx + rng.uniform(-0.3, 0.3) * yy
        cy, cx = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)
        ry, rx = rng.uniform(0.28, 0.38), rng.uniform(0.2, 0.3)
        face = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        img[face] = 0.5 * img[face] + 0.5 * rng.uniform(0.4, 0.9, size=3)
        for ex in (cx - rx / 2.5, cx + rx / 2.5):
            eye = ((yy - (cy - ry / 4)) ** 2 + (xx - ex) ** 2) < (0.05**2)
            img[eye] = 0.1
        img += rng.normal(0.0, 0.03, size=img.shape)
        path = folder / f"face_{i:02d}.png"
        save_rgb(path, (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8))
        paths.append(path)
    return paths


def tiny_overrides(hq: Path, out_dir: Path) -> list[str]:
    """Overrides for a pretraining run of a few seconds: 16 px (the 32 px faces are resized), an 8-channel
    two-level UNet, 6 steps."""
    return [
        f"data.hq={hq}",
        "data.resolution=16",
        "data.val_count=2",
        "policy.resolution=16",
        "policy.base_channels=8",
        "policy.channel_mults=[1,2]",
        "policy.stage1_channels=8",
        "policy.stage1_blocks=1",
        "degradation.kernel_size=7",  # 41-tap kernels on 16 px faces only cost time
        "batch_size=4",
        "steps=6",
        "val_steps=2",
        "val_every=0",
        "log_every=2",
        "ckpt_every=3",
        "keep_last=0",
        "optim.warmup_steps=2",
        "device=cpu",
        f"out_dir={out_dir}",
    ]


@contextlib.contextmanager
def demo_server(service, allowed=None, limits=None) -> Iterator[int]:
    """``lrpo demo``'s server for ``service`` on a free loopback port, in a thread; yields the port.
    ``allowed``: a HostAllowList (None: the loopback defaults); ``limits``: ConnectionLimits (None: defaults)."""
    import threading
    import time

    from lrpo.demo.app import bind, make_server
    from lrpo.demo.safety import HostAllowList

    sock = bind("127.0.0.1", 0)
    srv = make_server(service, allowed or HostAllowList.for_bind("127.0.0.1"), limits)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """A module's tests on one torch thread (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny tensors, where thread start-up and contention on a shared 2-core machine cost 100x the work."""
    with single_thread():
        yield


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the previous count.

    The tiny models here spend their time in thread start-up and spin-waits, not arithmetic: on a
    busy 2-core machine a 4-step run takes ~1 s on one thread and 5-30 s on two.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def tiny_faces(tmp_path: Path) -> Path:
    """A folder of 12 synthetic 32x32 face-like PNGs."""
    folder = tmp_path / "faces"
    write_tiny_faces(folder)
    return folder


@pytest.fixture
def tiny_pretrain_cfg(tiny_faces: Path, tmp_path: Path) -> Callable[..., PretrainConfig]:
    """``make(*extra_overrides, out="run")`` -> a validated tiny PretrainConfig on ``tiny_faces``."""

    def make(*extra: str, out: str = "run") -> PretrainConfig:
        return load_config(PretrainConfig, None, tiny_overrides(tiny_faces, tmp_path / out) + list(extra))

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step tiny pretraining run folder (shared by the restore tests; do not modify)."""
    from lrpo.pretrain.trainer import Pretrainer

    root = tmp_path_factory.mktemp("tiny_run")
    write_tiny_faces(root / "faces")
    # a high LR and no warm-up move the zero-initialised output layer away from zero in 4 steps,
    # so restored images depend on the network and batch-size tests mean something
    cfg = load_config(
        PretrainConfig,
        None,
        tiny_overrides(root / "faces", root / "run") + ["steps=4", "optim.warmup_steps=0", "optim.lr=1e-2", "ema_decay=0.5"],
    )
    with single_thread():
        Pretrainer(cfg, progress=False).run()
    return root / "run"


class CaptionLengthReward:
    """A reward term that needs captions (like the face reward): caption length / 100. Records the
    captions it was given in ``seen`` and fails on a sample without one."""

    name = "caption_length"
    needs_gt = False
    needs_caption = True
    seen: list[list[str]] = []

    def __call__(self, inp):
        import torch

        from lrpo.rewards import RewardOutput

        caps = [inp.meta_value(i, "caption") for i in range(inp.batch_size)]
        if any(c is None for c in caps):
            raise AssertionError(f"a sample reached the reward without a caption: {inp.meta}")
        CaptionLengthReward.seen.append(caps)
        return RewardOutput(torch.tensor([len(c) / 100 for c in caps]) + 0 * inp.images.mean(dim=(1, 2, 3)).cpu())


def _caption_length_factory(device: str = "cpu") -> CaptionLengthReward:
    return CaptionLengthReward()


def register_caption_length_reward() -> str:
    """Register :class:`CaptionLengthReward` as ``test_caption_length``; returns the name."""
    from lrpo.rewards.registry import register_reward

    register_reward("test_caption_length", _caption_length_factory)
    return "test_caption_length"


class GatedBrightness:
    """Brightness, except a constant 0.5 for the faces named in ``constant_for``: their groups have
    all-equal rewards and are dropped (for tests of uneven kept samples across processes)."""

    name = "gated_brightness"
    needs_gt = False

    def __init__(self, constant_for=()):
        self.constant_for = set(constant_for)

    def __call__(self, inp):
        import torch

        from lrpo.rewards import RewardOutput

        score = inp.images.float().mean(dim=(1, 2, 3)).cpu()
        gated = torch.tensor([inp.meta_value(i, "name") in self.constant_for for i in range(inp.batch_size)])
        return RewardOutput(torch.where(gated, torch.full_like(score, 0.5), score))


def _gated_brightness_factory(constant_for=(), device: str = "cpu") -> GatedBrightness:
    return GatedBrightness(constant_for)


def _register_test_rewards() -> None:
    from lrpo.rewards.registry import register_reward

    register_reward("test_gated_brightness", _gated_brightness_factory)


_register_test_rewards()  # at import, so processes spawned by the tests know it too
