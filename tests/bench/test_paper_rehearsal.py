"""The paper's run rehearsed end to end on tiny stand-ins (bench/paper_rehearsal.py, 64 px).

The same script runs at 512 px with real-size stand-ins (README, "The paper's run"); here every
step of it must work: lrpo train with the reference config and the `paper` reward, a SIGKILL in
epoch 2's update and two resumes that end bit-identical to the uninterrupted run, lrpo evaluate,
lrpo restore and the memory account.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_tiny_faces

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_paper_rehearsal(tmp_path):
    from lrpo.standins import write_standins

    write_standins(tmp_path / "weights", scale="tiny")
    write_tiny_faces(tmp_path / "faces", count=4, size=64)
    out = tmp_path / "rehearsal"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paper_rehearsal.py"), "--weights", str(tmp_path / "weights"), "--faces",
         str(tmp_path / "faces"), "--resolution", "64", "--out", str(out), "--threads", "1", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["resume_exact"] == {**res["resume_exact"], "bitwise_equal": True, "same_keys": True, "same_log": True}
    assert res["phases"]["kill"]["killed_at"] == "epoch 2/2 update" and res["phases"]["kill"]["exit_code"] == -9
    log = res["training_log"]
    last = log[-1]
    # all four paper terms were scored and logged, the GT term ran, the first step's ratio was 1
    for term in ("face_reward", "lpips", "clipiqa", "dwt"):
        assert f"reward/{term}_mean" in last and f"eval_{term}" in last
    assert "reg" in last and last["first_clip_fraction"] == 0.0 and last["first_max_abs_log_ratio"] < 1e-4
    assert "guard_psnr" in last and log[0]["epoch"] == 0  # the guard's baseline
    assert set(res["evaluate_summary"]) == {"input", "base", "lrpo"} and "reward/total" in res["evaluate_summary"]["lrpo"]
    assert len(list((out / "restored_lrpo").glob("*.png"))) == len(list((out / "paired" / "lq").glob("*.png"))) == 3
    mem = res["memory"]
    assert mem["frozen_dtype"] == "torch.bfloat16" and mem["trainable"]["adamw_states_gib"] == pytest.approx(2 * mem["trainable"]["weights_gib"], abs=1e-3)
    assert set(mem["predicted_gib"]["no_checkpointing"]) == {"6", "24", "48"}
