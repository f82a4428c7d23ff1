"""bench/lrpo_cpu.py's pure parts: variant specs, the seed table with missing values, and the gains
at equal CPU time with their ratio to the reference."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("lrpo_cpu_bench", BENCH / "lrpo_cpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lrpo_cpu_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_variant_specs_keep_values_with_a_plus_whole(bench):
    assert bench.variant_overrides("config") == [] and bench.variant_overrides("0") == ["reg_weight=0.0"]
    assert bench.variant_overrides("train_timesteps=random:2+reg+update_mode=accumulate+lr=5e-5") == [
        "train_timesteps=random:2+reg", "update_mode=accumulate", "lr=5e-5"]
    with pytest.raises(ValueError, match=r"'oops' is not KEY=VALUE"):
        bench.variant_overrides("oops+lr=1")
    runs = bench.parse_variants("ref=config,best=lr=5e-5+time_budget_min=25")
    assert runs == {"ref": [], "best": ["lr=5e-5", "time_budget_min=25"]}
    assert bench.budget_of(runs["best"], 8.0) == 25.0 and bench.budget_of(runs["ref"], 8.0) == 8.0
    for bad, words in (("ref=config,", "expected NAME=SPEC"), ("a=config,a=0", "given twice"), ("=0", "expected NAME=SPEC")):
        with pytest.raises(ValueError, match=words):
            bench.parse_variants(bad)


def test_seed_table_uses_one_set_of_faces_per_metric_and_gives_up_below_two(bench):
    nan = float("nan")
    base = {"psnr": np.array([20.0, 21.0, 22.0]), "lmd": np.array([10.0, nan, 12.0]), "rare": np.array([1.0, nan, nan])}
    seeds = [{"psnr": np.array([21.0, 22.0, 23.0]), "lmd": np.array([9.0, 8.0, nan]), "rare": np.array([2.0, 2.0, 2.0])},
             {"psnr": np.array([21.0, 22.0, 23.0]), "lmd": np.array([11.0, 8.0, 11.0]), "rare": np.array([2.0, 2.0, 2.0])}]
    t = bench.seed_table({"v": seeds}, base)
    # psnr: every face, each seed +1 dB on every face -> mean 22, std 0, minus base exactly +1
    assert t["v"]["psnr"]["mean"] == 22.0 and t["v"]["psnr"]["std"] == 0.0 and t["v"]["psnr"]["minus_base"] == 1.0
    assert t["v"]["psnr"]["ci95"] == [1.0, 1.0] and "faces" not in t["v"]["psnr"]
    # lmd: finite everywhere only on face 0 (face 1 lacks the base, face 2 seed 0) -> one face: no figures
    assert t["v"]["lmd"]["faces"] == 1 and t["v"]["lmd"]["minus_base"] is None and t["base"]["lmd"]["faces"] == 1
    assert t["v"]["rare"]["mean"] is None and t["v"]["rare"]["ci95"] == [None, None]


def test_seed_table_means_and_differences_come_from_the_same_faces(bench):
    nan = float("nan")
    base = {"lmd": np.array([10.0, 20.0, nan, 30.0])}
    seeds = [{"lmd": np.array([9.0, 19.0, 1.0, 29.0])}]
    t = bench.seed_table({"v": seeds}, base)
    # faces 0, 1, 3: base mean (10 + 20 + 30) / 3 = 20, variant (9 + 19 + 29) / 3 = 19, difference -1
    assert t["base"]["lmd"]["mean"] == 20.0 and t["v"]["lmd"]["mean"] == 19.0 and t["v"]["lmd"]["minus_base"] == -1.0
    assert t["v"]["lmd"]["faces"] == 3


def test_gains_at_equal_cpu_and_ratios_only_to_a_positive_reference(bench):
    xs = np.array([0.0, 2.0, 4.0])
    curves = {"ref": [(xs, np.array([0.0, 0.01, 0.02]))] * 2,
              "fast": [(xs, np.array([0.0, 0.04, 0.05])), (xs, np.array([0.0, 0.02, 0.05]))],
              "short": [(np.array([0.0, 1.0]), np.array([0.0, 0.01]))]}
    g = bench.gains_at(curves, 2.0, "ref")
    # at 2 min: ref 0.01 (both seeds); fast (0.04 + 0.02) / 2 = 0.03 with std 0.01 -> 3x, +0.02;
    # short ends at 1 min: no seed reaches 2 -> no figures
    assert g["ref"]["gain"] == 0.01 and g["ref"]["ratio_to_reference"] == 1.0 and g["ref"]["gain_per_cpu_min"] == 0.005
    assert g["fast"]["gain"] == 0.03 and g["fast"]["std"] == 0.01 and g["fast"]["ratio_to_reference"] == 3.0
    assert g["fast"]["minus_reference"] == 0.02 and g["fast"]["seeds"] == 2
    assert g["short"]["seeds"] == 0 and g["short"]["gain"] is None and g["short"]["ratio_to_reference"] is None
    # a reference that lost reward: differences, but no ratio
    worse = {"ref": [(xs, np.array([0.0, -0.01, 0.0]))], "fast": curves["fast"]}
    g = bench.gains_at(worse, 2.0, "ref")
    assert g["fast"]["ratio_to_reference"] is None and g["fast"]["minus_reference"] == 0.04


def test_seed_table_compares_each_variant_with_the_control_face_by_face(bench):
    base = {"psnr": np.array([20.0, 21.0, 22.0])}
    control = [{"psnr": np.array([21.0, 21.0, 22.0])}, {"psnr": np.array([21.0, 23.0, 22.0])}]  # seed mean: 21, 22, 22
    lrpo = [{"psnr": np.array([21.5, 22.5, 22.5])}]
    t = bench.seed_table({"ctrl": control, "lrpo": lrpo}, base, control="ctrl")
    # lrpo - control per face: 0.5, 0.5, 0.5 -> +0.5 with a degenerate interval [0.5, 0.5]
    assert t["lrpo"]["psnr"]["minus_control"] == 0.5 and t["lrpo"]["psnr"]["ci95_control"] == [0.5, 0.5]
    assert "minus_control" not in t["ctrl"]["psnr"]  # the control is not compared with itself
    # minus base: (1.5 + 1.5 + 0.5) / 3 = 1.1667
    assert t["lrpo"]["psnr"]["minus_base"] == pytest.approx(3.5 / 3, abs=1e-4)


def test_the_standard_arms_name_the_controls_and_the_supervised_arm_resumes_the_base(bench, tiny_run, tmp_path):
    runs = bench.parse_variants(bench.STANDARD_ARMS)
    assert runs == {"lrpo": [], "pg0": ["pg_weight=0"], "reg0": ["reg_weight=0"], "sft": [bench.PRETRAIN_ARM]}
    assert bench.variant_overrides("pretrain+optim.lr=5e-5") == [bench.PRETRAIN_ARM, "optim.lr=5e-5"]
    cmd = bench.pretrain_command(str(tiny_run), "faces", tmp_path / "sft", 12.0, ["optim.lr=5e-5"])
    at = cmd.index("--resume")
    assert cmd[at + 1] == str(tiny_run) and "--allow-changes" in cmd and cmd[cmd.index("--config") + 1].endswith("config.yaml")
    # stopped on its own CPU time at a constant lr; the variant's own override comes last and wins
    assert {"time_budget_min=12.0", "time_budget_clock=cpu", "optim.lr_schedule=constant"} <= set(cmd)
    assert cmd[-1] == "optim.lr=5e-5"


def test_a_finished_run_is_skipped_only_with_the_same_settings(bench, tmp_path):
    run = tmp_path / "pg0" / "seed_0"
    settings = bench.run_settings("base", "faces", 5.0, ["pg_weight=0", "seed=0"], "lrpo-cpu.yaml", 3, 1)
    assert not bench.is_finished(run, settings)  # nothing there yet
    run.mkdir(parents=True)
    assert not bench.is_finished(run, settings)  # a folder without the marker: an interrupted run, trained again
    bench.finished_marker(run).write_text(__import__("json").dumps(settings))
    assert bench.finished_marker(run) == tmp_path / "pg0" / "seed_0.finished.json"
    assert bench.is_finished(run, settings)
    longer = bench.run_settings("base", "faces", 60.0, ["pg_weight=0", "seed=0"], "lrpo-cpu.yaml", 3, 1)
    assert not bench.is_finished(run, longer)  # more minutes asked: not the run that finished
    wider = bench.run_settings("base", "faces", 5.0, ["pg_weight=0", "seed=0"], "lrpo-cpu.yaml", 3, 2)
    assert not bench.is_finished(run, wider)  # a CPU-minute on 2 threads is another amount of work
    bench.finished_marker(run).write_text("{not json")
    assert not bench.is_finished(run, settings)
