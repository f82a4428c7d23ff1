"""Faults: SIGKILL at any moment (lrpo.faults + bench/fault_sweep.py), a full disk while a checkpoint
is written, damaged checkpoints met on resume, and what killed writers leave behind."""

from __future__ import annotations

import errno
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lrpo.checkpoint as ckpt_io
from lrpo import faults
from lrpo.manifest import record
from lrpo.checkpoint import CorruptCheckpointError, DiskFullError, find_checkpoint, save_checkpoint

from tests.conftest import single_thread

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench():
    if "fault_sweep" in sys.modules:
        return sys.modules["fault_sweep"]
    spec = importlib.util.spec_from_file_location("fault_sweep", BENCH / "fault_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_sweep"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


class Tiny(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.lin = nn.Linear(width, 2)


def _model(seed: int) -> Tiny:
    m = Tiny()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in m.state_dict().values():
            v.copy_(torch.randn(v.shape, generator=gen))
    return m


def _save(run: Path, step: int, **kw) -> Path:
    return save_checkpoint(run, step, _model(step), {"seed": 0}, {"step": step, "t": torch.arange(3)}, ema=_model(100 + step), **kw)


def _same(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _hidden(run: Path) -> list[str]:
    """Hidden leftovers (the manifest of what lrpo wrote, lrpo.manifest, is not one)."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lrpo-manifest.jsonl")


# ---------------------------------------------------------------------------------------------
# the fault hook
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fault_env(monkeypatch):
    monkeypatch.delenv("LRPO_FAULT_AT", raising=False)
    monkeypatch.delenv("LRPO_FAULT_LOG", raising=False)
    faults.reset()
    yield monkeypatch
    faults.reset()


def test_fault_log_lists_every_checkpoint_fault_point(fault_env, tmp_path):
    fault_env.setenv("LRPO_FAULT_LOG", str(tmp_path / "hits.txt"))
    _save(tmp_path / "run", 1)
    lines = (tmp_path / "hits.txt").read_text().splitlines()
    # halfway through model, ema, config, state, meta; the rename; halfway through latest; latest replaced
    assert lines == [
        "checkpoint 1 model.safetensors: half written", "checkpoint 2 ema.safetensors: half written",
        "checkpoint 3 config.yaml: half written", "checkpoint 4 state.pt: half written", "checkpoint 5 meta.json: half written",
        "checkpoint 6 step_000001: renamed into place", "checkpoint 7 latest: half written",
        "checkpoint 8 step_000001: latest replaced",
    ]


def test_fault_point_is_inert_without_the_variables(fault_env, tmp_path):
    faults.fault_point("checkpoint")
    assert faults._counts == {}


@pytest.mark.parametrize("value", ["rollout", "rollout:0", "nowhere:3", "update:x"])
def test_a_malformed_fault_spec_is_a_clear_error(fault_env, value):
    fault_env.setenv("LRPO_FAULT_AT", value)
    with pytest.raises(ValueError, match=r"LRPO_FAULT_AT=.*expected PHASE:N with N >= 1 and PHASE one of .*checkpoint"):
        faults.fault_point("checkpoint")


def test_fault_at_kills_the_process_at_the_nth_visit(tmp_path):
    code = "from lrpo.faults import fault_point\nfor i in range(3):\n    print(i, flush=True)\n    fault_point('score')\nprint('alive')"
    env = {**os.environ, "LRPO_FAULT_AT": "score:2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and proc.stdout.split() == ["0", "1"]


def test_install_wraps_the_trainer_seams_once(fault_env, tmp_path):
    import lrpo.pretrain.trainer as pre
    import lrpo.rl.trainer as rl
    from lrpo.ema import EMA

    seams = {"train": [(rl, "sample_trajectories"), (rl.LRPOTrainer, "score"), (rl.LRPOTrainer, "optimizer_step")],
             "pretrain": [(pre, "degrade"), (EMA, "update"), (pre.Pretrainer, "validate")]}
    originals = {(o, n): getattr(o, n) for pairs in seams.values() for o, n in pairs}
    faults.install("train")  # no variable set: nothing is wrapped
    assert all(getattr(o, n) is f for (o, n), f in originals.items())
    fault_env.setenv("LRPO_FAULT_LOG", str(tmp_path / "hits.txt"))
    try:
        for command, pairs in seams.items():
            faults.install(command)
            faults.install(command)  # idempotent
            for owner, name in pairs:
                fn = getattr(owner, name)
                assert fn.__wrapped__ is originals[(owner, name)]
                assert getattr(fn, "__lrpo_fault__") in faults.PHASES[command]
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


# ---------------------------------------------------------------------------------------------
# the sweep, reduced: 3 kills of one `lrpo train` run, resumed each time, against an uninterrupted run
# ---------------------------------------------------------------------------------------------
def test_reduced_sweep_on_train_resumes_to_the_same_state(tmp_path):
    fs = _bench()
    # checkpoints at epochs 2 and 3: kills before the first exercise a --resume that must start over
    cmd = fs.prepare(tmp_path, epochs=3, train_ckpt_every=2)["train"]
    res = fs.sweep_command(cmd, tmp_path, faults=3, per_run=3, seed=0)
    assert len(res["faults"]) == 3 and len(res["trials"]) == 1
    assert sorted(f["phase"] for f in res["faults"]) == sorted(fs.plan_phases(cmd, 3, fs.random.Random("0:train")))
    for f in res["faults"]:
        assert f["fired"], f  # died by SIGKILL at the drawn moment
        assert not f["damaged"], f  # every checkpoint on disk complete after the kill
        assert 0 <= f["lost"] <= cmd.interval, f  # at most one checkpoint interval of work lost
    trial = res["trials"][0]
    assert trial["completed"] and trial["resumes"] == 3
    assert trial["weights_equal"] and trial["optimizer_equal"] and trial["state_equal"] and trial["log_equal"], trial
    summary = fs.summarise({"train": res})["totals"]
    assert summary["faults"] == summary["fired"] == 3 and summary["within_one_interval"]


def test_remaining_hits_start_after_the_checkpoint_resumed_from():
    fs = _bench()
    cmd = fs.Command("pretrain", "step", 1, 2, Path("x.yaml"), startup_hits=1)
    timeline = [("data", ""), ("data", ""), ("update", ""), ("checkpoint", "step_000001: latest replaced"),
                ("data", ""), ("update", ""), ("checkpoint", "step_000002: latest replaced")]
    assert fs.remaining_hits(cmd, timeline, None) == timeline
    assert fs.remaining_hits(cmd, timeline, "step_000001") == [("data", ""), ("data", ""), ("update", ""), timeline[-1]]
    assert fs.draw_moment(fs.random.Random(0), fs.remaining_hits(cmd, timeline, "step_000002"), "update") is None
    n, where = fs.draw_moment(fs.random.Random(0), timeline, "checkpoint")
    assert (n, where) in [(1, "step_000001: latest replaced"), (2, "step_000002: latest replaced")]


# ---------------------------------------------------------------------------------------------
# a full disk while a checkpoint is written
# ---------------------------------------------------------------------------------------------
def _first_and_sizes(run: Path) -> tuple[Path, dict[str, int]]:
    first = _save(run, 1)
    return first, {f.name: f.stat().st_size for f in first.iterdir()}


@pytest.mark.parametrize("where", ["nothing", "model.safetensors", "state.pt", "meta.json"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, where):
    fs = _bench()
    run = tmp_path / "run"
    first, sizes = _first_and_sizes(run)
    order = ["model.safetensors", "ema.safetensors", "config.yaml", "state.pt", "meta.json"]
    free = 0 if where == "nothing" else sum(sizes[n] for n in order[: order.index(where)]) + sizes[where] // 2
    with fs.full_disk(free):
        with pytest.raises(DiskFullError) as err:
            _save(run, 2)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{run / 'step_000002'}: the disk is full")
    assert f"nothing of the previous checkpoint {first} was lost" in msg and "--resume" in msg
    if where != "nothing":
        assert f"while writing {where}" in msg
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    # the previous checkpoint is untouched, `latest` still names it, nothing partial is left
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step_000001"]
    assert (run / "latest").read_text() == "step_000001\n" and _hidden(run) == []
    assert find_checkpoint(run) == first and ckpt_io.checkpoint_problem(first) is None
    fresh = Tiny()
    ckpt_io.load_weights(fresh, run)
    assert _same(fresh, _model(1)) and ckpt_io.load_state(run)["step"] == 1
    _save(run, 2)  # space freed: the next save works
    assert find_checkpoint(run).name == "step_000002"


def test_a_full_disk_while_replacing_latest_leaves_a_complete_checkpoint(tmp_path):
    fs = _bench()
    run = tmp_path / "run"
    _first_and_sizes(run)
    with fs.full_disk(sum(f.stat().st_size for f in (run / "step_000001").iterdir()) + 3):  # 3 bytes of latest fit
        with pytest.raises(DiskFullError, match=r"step_000002: the disk is full \(no space left while replacing .*latest\); the "
                           r"checkpoint is complete, latest still names step_000001 and nothing of it was lost"):
            _save(run, 2)
    assert (run / "latest").read_text() == "step_000001\n" and _hidden(run) == []  # no stray .latest.* file
    assert [ckpt_io.checkpoint_problem(p) for p in ckpt_io.list_checkpoints(run)] == [None, None]


def test_enospc_given_as_a_bare_number_counts_as_a_full_disk(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _save(run, 1)

    def no_space(path, data, label=None):
        raise OSError(errno.ENOSPC)  # errno stays None; the number is args[0]

    def io_error(path, data, label=None):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(ckpt_io, "_write_file", no_space)
    with pytest.raises(DiskFullError, match="the disk is full"):
        _save(run, 2)
    monkeypatch.setattr(ckpt_io, "_write_file", io_error)
    with pytest.raises(OSError, match="disk on fire") as err:  # other OS errors pass through unchanged
        _save(run, 2)
    assert not isinstance(err.value, DiskFullError) and _hidden(run) == []


def test_a_full_disk_stops_lrpo_pretrain_with_one_line_and_resume_reaches_the_same_state(tmp_path):
    fs = _bench()
    cmd = fs.prepare(tmp_path, steps=6, pretrain_ckpt_every=3)["pretrain"]
    ref = tmp_path / "reference"
    assert fs.run_in_process(cmd.argv(ref))[0] == 0
    res = fs.disk_full_check(cmd, ref, tmp_path)
    assert res["ok"], res
    assert res["message"].startswith(f"lrpo pretrain: error: {tmp_path / 'pretrain-disk-full' / 'step_000006'}: the disk is full")


# ---------------------------------------------------------------------------------------------
# damaged checkpoints
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def three(tmp_path) -> Path:
    run = tmp_path / "run"
    for step in (1, 2, 3):
        _save(run, step)
    return run


@pytest.mark.parametrize("kind, why", [
    ("truncated", r"model.safetensors is truncated \(\d+ of \d+ bytes\)"),
    ("shapes", r"model.safetensors differs from what was written \(sha256 mismatch\)"),
    ("garbage", r"state.pt differs from what was written \(sha256 mismatch\)"),
])
def test_a_damaged_latest_checkpoint_is_refused_by_name_and_the_one_before_is_offered(three, kind, why):
    fs = _bench()
    fs.damage(three / "step_000003", kind)
    before = three / "step_000002"
    for path in (three, three / "step_000003"):  # the run folder, or the checkpoint named directly
        with pytest.raises(CorruptCheckpointError, match=why) as err:
            find_checkpoint(path)
        msg = str(err.value)
        assert msg.startswith(f"{three / 'step_000003'} is damaged and was not loaded: ")
        assert msg.endswith(f"The checkpoint before it, {before}, is intact: continue from it with --resume {before}")
        assert err.value.checkpoint == three / "step_000003"
    for load in (ckpt_io.load_state, ckpt_io.load_config_dict, ckpt_io.load_meta, lambda p: ckpt_io.load_weights(Tiny(), p)):
        with pytest.raises(CorruptCheckpointError):
            load(three)
    assert find_checkpoint(before) == before and ckpt_io.load_state(before)["step"] == 2
    assert find_checkpoint(three, verify=False) == three / "step_000003"


def test_the_offer_skips_damaged_earlier_checkpoints_and_says_when_none_is_left(three):
    fs = _bench()
    fs.damage(three / "step_000003", "garbage")
    fs.damage(three / "step_000002", "truncated")
    with pytest.raises(CorruptCheckpointError, match=f"The checkpoint before it, {three / 'step_000001'}, is intact"):
        find_checkpoint(three)
    fs.damage(three / "step_000001", "shapes")
    with pytest.raises(CorruptCheckpointError, match=r"holds no intact checkpoint before it: start the run over with --overwrite"):
        find_checkpoint(three)


@pytest.mark.parametrize("text, why", [("{not json", "meta.json is not valid JSON"), ("[1, 2]", "meta.json is not a JSON object")])
def test_a_garbage_meta_file_is_refused(three, text, why):
    (three / "step_000003" / "meta.json").write_text(text)
    with pytest.raises(CorruptCheckpointError, match=why):
        find_checkpoint(three)


def test_config_yaml_is_covered_by_the_digests_and_must_parse(three):
    (three / "step_000003" / "config.yaml").write_text("seed: 1  # edited by hand\n")
    with pytest.raises(CorruptCheckpointError, match=r"config.yaml has \d+ bytes, \d+ were written \(edited since"):
        ckpt_io.load_config_dict(three)
    (three / "step_000003" / "config.yaml").write_text("seed: [1,\n")
    with pytest.raises(CorruptCheckpointError, match="config.yaml is not valid YAML"):
        find_checkpoint(three)


def test_checkpoints_without_recorded_digests_are_checked_by_structure_and_on_load(three):
    import json

    for p in ckpt_io.list_checkpoints(three):  # as written before meta.json recorded the files
        meta = json.loads((p / "meta.json").read_text())
        del meta["files"]
        (p / "meta.json").write_text(json.dumps(meta))
    assert find_checkpoint(three) == three / "step_000003"
    (three / "step_000003" / "state.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CorruptCheckpointError, match=r"state.pt cannot be read .*The checkpoint before it, .*step_000002, is intact"):
        ckpt_io.load_state(three)
    f = three / "step_000002" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CorruptCheckpointError, match=r"ema.safetensors is truncated"):
        find_checkpoint(three / "step_000002")
    f.write_bytes(b"\x05")
    assert "ema.safetensors is not a safetensors file" in ckpt_io.checkpoint_problem(three / "step_000002")


def test_a_checkpoint_edited_on_purpose_passes_once_its_files_entry_is_removed(three):
    import json

    sd = load_file(str(three / "step_000003" / "model.safetensors"))
    save_file({k: v * 0 for k, v in sd.items()}, str(three / "step_000003" / "model.safetensors"))
    with pytest.raises(CorruptCheckpointError):
        find_checkpoint(three)
    meta = json.loads((three / "step_000003" / "meta.json").read_text())
    del meta["files"]
    (three / "step_000003" / "meta.json").write_text(json.dumps(meta))
    assert find_checkpoint(three) == three / "step_000003"


def test_lrpo_pretrain_resume_refuses_each_damage_and_the_offered_checkpoint_resumes_exactly(tmp_path):
    fs = _bench()
    cmd = fs.prepare(tmp_path, steps=6, pretrain_ckpt_every=3)["pretrain"]
    ref = tmp_path / "reference"
    assert fs.run_in_process(cmd.argv(ref))[0] == 0
    results = fs.corruption_check(cmd, ref, tmp_path)
    assert [r["damage"] for r in results] == list(fs.DAMAGES)
    for r in results:
        assert r["ok"], r
        assert r["message"].startswith("lrpo pretrain: error: ") and "is damaged and was not loaded" in r["message"]
    assert results[-1]["weights_equal"] and results[-1]["optimizer_equal"] and results[-1]["state_equal"]


# ---------------------------------------------------------------------------------------------
# --resume of a run killed before its first checkpoint; leftovers; permissions
# ---------------------------------------------------------------------------------------------
def test_resume_of_a_run_without_a_checkpoint_starts_it_from_the_beginning(tmp_path):
    fs = _bench()
    cmd = fs.prepare(tmp_path, steps=3, pretrain_ckpt_every=3)["pretrain"]
    out = tmp_path / "killed-early"
    out.mkdir()
    (out / "config.yaml").write_text("steps: 3\n")  # what a run killed before its first checkpoint leaves
    (out / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    record(out, ["config.yaml"])  # ... and recorded as lrpo's (lrpo.manifest)
    record(out, ["log.jsonl"], digest=False)
    rc, err = fs.run_in_process(cmd.argv(out, resume="auto"))
    assert rc == 0, err
    assert f"{out} holds no checkpoint yet; starting the run from the beginning" in err
    assert find_checkpoint(out).name == "step_000003" and cmd.completed(out) == 3


def test_a_damaged_checkpoint_still_counts_as_a_checkpoint_for_the_cli(three):
    from lrpo.cli import _has_checkpoint

    _bench().damage(three / "step_000003", "truncated")
    for p in ckpt_io.list_checkpoints(three):
        _bench().damage(p, "garbage")
    assert _has_checkpoint(str(three))  # so `--resume` reports it and the elastic restart does not clear it


def test_a_save_removes_what_killed_writers_left_but_keeps_other_replaced_copies(tmp_path):
    run = tmp_path / "run"
    _save(run, 1)
    # the names lrpo's mkdtemp/mkstemp give them: the prefix lrpo chose + 8 characters
    for name in (".step_000002.tmp-abc_1234", ".step_000007.tmp-x0000000", ".step_000001.del-y0000000",
                 ".step_000002.old-z0000000", ".best.old-q0000000"):
        (run / name).mkdir()
        (run / name / "model.safetensors").write_bytes(b"x" * 100)
    (run / ".latest.k3j00000").write_text("step_0")
    # a user's folders and file whose names only resemble them (issue-19 review): kept
    for name in (".latest.backup", ".step_000003.old-keep", ".step_000002.tmp-mine"):
        (run / name).mkdir()
        (run / name / "thesis.docx").write_text("the user's")
    (run / "log.jsonl.tmp").write_text("the user's")
    _save(run, 2)
    # `.best.old-...` is the only copy of `best` if a re-save of it was killed
    assert _hidden(run) == [".best.old-q0000000", ".latest.backup", ".step_000002.tmp-mine", ".step_000003.old-keep"]
    assert (run / "log.jsonl.tmp").read_text() == "the user's"


def test_checkpoint_folders_and_latest_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = _save(tmp_path / "run", 1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~ckpt_io._UMASK
    assert stat.S_IMODE((tmp_path / "run" / "latest").stat().st_mode) == 0o666 & ~ckpt_io._UMASK
