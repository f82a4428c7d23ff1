"""bench/sd_throughput.py and bench/gpu_check.py: the attention FLOP formula, the FLOP count's two
parts, and the tiny CPU runs of both scripts (every code path but CUDA memory)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench_module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sdt():
    return _bench_module("sd_throughput")


def test_attention_flops_formula(sdt):
    # SD 2.1 level-0 self-attention of one 512 face: latent 64 x 64, so Lq = Lk = 4096; 320
    # channels = 5 heads of 64. Q K^T: 2 * 1 * 5 * 4096 * 4096 * 64 = 10,737,418,240; A V the same.
    assert sdt.attention_flops(1, 5, 4096, 4096, 64) == 2 * 10_737_418_240
    # cross-attention on the 77 prompt tokens, batch 2, values of 32 per head:
    # Q K^T 2 * 2 * 5 * 4096 * 77 * 64 = 403,701,760; A V 2 * 2 * 5 * 4096 * 77 * 32 = 201,850,880
    assert sdt.attention_flops(2, 5, 4096, 77, 64, v_dim=32) == 403_701_760 + 201_850_880


def test_full_size_attention_flops_match_the_hand_count(sdt):
    """The module walk on the real sizes (meta device: shapes only) against a count by hand.

    Per 512 face, transformers per level: UNet down 2 + up 3 + ControlNet down 2 = 7 at each of the
    three attention levels, and 2 in the middle (UNet, ControlNet); each has a self- and a cross-
    attention (Lk = 77); d = 64, heads = channels / 64. With 4 h Lq Lk d per attention:
      level 0 (L 4096, 5 heads):  7 * (21,474,836,480 + 403,701,760)
      level 1 (L 1024, 10 heads): 7 * (2,684,354,560 + 201,850,880)
      level 2 (L 256, 20 heads):  7 * (335,544,320 + 100,925,440)
      middle  (L 64, 20 heads):   2 * (20,971,520 + 25,231,360)
    sum: 171,505,090,560 self + 4,995,809,280 cross = 176,500,899,840.
    """
    f = sdt.meta_flops("full")
    assert f["attention_calls"] == 2 * (3 * 7 + 2)
    assert f["attention_self_flops"] == 171_505_090_560
    assert f["attention_cross_flops"] == 4_995_809_280
    assert f["attention_analytic"] == 176_500_899_840
    assert f["counter_non_attention"] > 0 and "aten.bmm" not in f["counter_by_op"]  # the stub kept attention out
    assert 1.0 < f["total_tflop_per_face"] < 1.15  # SPEC section 9: about 1.09


def test_analytic_attention_equals_the_counted_math_attention(sdt):
    """On the CPU the counter misses the fused attention kernel; through SDPA's math backend it
    counts attention as bmm: that count must equal the stub's figure plus the analytic one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lrpo.policies.latent import LatentPolicy
    from lrpo.policies.latent_config import LatentPolicyConfig

    torch.manual_seed(0)
    policy = LatentPolicy(LatentPolicyConfig.preset("tiny", random_init=True))
    f = sdt.forward_flops(policy, torch.device("cpu"))
    x = torch.randn(1, 4, policy.cfg.latent_size, policy.cfg.latent_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        policy(x, torch.tensor([500]), x)
    assert f["attention_analytic"] > 0
    assert f["total"] > f["counter_non_attention"]
    assert counter.get_total_flops() == f["total"]
    assert f["counter_default"] in (f["counter_non_attention"], f["total"])  # CPU: no attention counted


def _run(script: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--tiny", "--device", "cpu", "--out", str(out), *args],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert json.loads(proc.stdout[: proc.stdout.rindex("}") + 1]) == doc  # the same document on stdout
    return doc


def _positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def _check_first_step(u: dict) -> None:
    first = u["first_step"]
    assert first["clip_fraction"] == 0, u
    assert first["max_abs_log_ratio"] < 1e-6, u  # fp32 on the CPU: the ratio is 1 up to rounding
    for probe in u.get("ratio_probe_before_first_step", {}).values():
        assert probe["clip_fraction"] == 0 and probe["max_abs_log_ratio"] < 1e-5


def _check_common(doc: dict, rollout_batches: list[int], micro_batches: list[int]) -> None:
    assert doc["config"] == "tiny" and doc["device"] == "cpu" and doc["precision"] == "fp32"
    f = doc["flops"]
    assert _positive(f["attention_analytic"], f["counter_non_attention"]) and f["total"] > f["counter_non_attention"]
    assert [r["batch"] for r in doc["rollout"]] == rollout_batches
    assert all(_positive(r["faces_per_s"], r["seconds"]) for r in doc["rollout"])
    assert _positive(doc["collect"]["faces_per_s"])
    settings = [(u["micro_batch"], u["checkpointing"]) for u in doc["update"]]
    assert settings == [(m, c) for c in (True, False) for m in micro_batches]
    for u in doc["update"]:
        assert _positive(u["sample_steps_per_s"], u["seconds_per_step"], u["first_step_seconds"])
        assert u["peak_gib"] is None  # CUDA only
        _check_first_step(u)
    assert all(p["status"] == "done" for p in doc["phases"].values()), doc["phases"]


@pytest.mark.slow
def test_sd_throughput_tiny(tmp_path):
    doc = _run("sd_throughput", tmp_path, "--steps", "4", "--iters", "2", "--rollout-batches", "9", "18",
               "--micro-batches", "6", "12", "--collect-groups", "1")
    _check_common(doc, [9, 18], [6, 12])
    assert _positive(doc["trainer_update"]["sample_steps_per_s"])
    assert doc["trainer_update"]["first_step"]["max_abs_log_ratio"] < 1e-6
    assert "compile" not in doc  # only with --compile


@pytest.mark.slow
def test_gpu_check_tiny(tmp_path):
    doc = _run("gpu_check", tmp_path, "--steps", "4", "--iters", "2", "--rollout-batches", "9", "18",
               "--micro-batches", "6", "12", "--collect-groups", "1", "--compile-micro-batches", "12",
               "--compile-backend", "eager")
    _check_common(doc, [9, 18], [6, 12])
    comp = doc["compile"]
    first, second = comp["updates"][0], comp["second_epoch"]
    assert first["dynamo"]["frames_compiled"] > 0 and first["compile_seconds"] >= 0
    assert second["graph_reused"] and second["dynamo"]["frames_compiled"] == 0
    for u in (first, second, comp["compiled_rollout_epoch"]):
        assert _positive(u["sample_steps_per_s"])
        _check_first_step(u)
    assert _positive(comp["rollout"]["faces_per_s"])
    s = doc["summary"]
    assert not s["targets_apply"]
    for key, (target, floor) in (("update_sample_steps_per_s", (130, 90)), ("rollout_faces_per_s", (6.5, 4))):
        assert _positive(s[key]["best"]) and (s[key]["target"], s[key]["floor"]) == (target, floor)
    assert s["first_step_ratio"]["all_unclipped"] and s["first_step_ratio"]["worst_max_abs_log_ratio"] < 1e-6
    assert len(s["first_step_ratio"]["per_setting"]) == 2 * 2 + 3


def test_gpu_check_out_of_budget_still_writes_its_json(tmp_path):
    """A budget spent before the first phase: every phase is skipped or stopped, the JSON is valid."""
    doc = _run("gpu_check", tmp_path, "--steps", "2", "--collect-groups", "1", "--budget-s", "0.001")
    assert doc["phases"] and not any(p["status"] == "done" for p in doc["phases"].values())
    assert doc["summary"]["update_sample_steps_per_s"]["best"] is None
