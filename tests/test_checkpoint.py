"""Checkpoint folders (lrpo.checkpoint): round trips, `latest`, pruning, strict loading, crash safety; EMA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import lrpo.checkpoint as ckpt_io
from lrpo.checkpoint import (
    CheckpointError,
    check_state_dict,
    find_checkpoint,
    list_checkpoints,
    load_config_dict,
    load_meta,
    load_state,
    load_weights,
    save_checkpoint,
)
from lrpo.ema import EMA

CONFIG = {"policy": {"resolution": 16}, "seed": 3}


class Tiny(nn.Module):
    """Two layers and a float buffer, enough to exercise every kind of state entry."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.lin = nn.Linear(width, 2)
        self.register_buffer("running", torch.zeros(width))


def _model(seed: int, width: int = 4) -> Tiny:
    """A Tiny whose every entry (parameters and buffer) is drawn from a generator seeded with ``seed``."""
    m = Tiny(width)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in m.state_dict().values():
            v.copy_(torch.randn(v.shape, generator=gen))
    return m


def _assert_same_weights(a: nn.Module | dict, b: nn.Module | dict) -> None:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].cpu(), sb[k].cpu()), k


def _visible_entries(run: Path) -> set[str]:
    return {p.name for p in run.iterdir() if not p.name.startswith(".")}


# ---------------------------------------------------------------------------------------------
# round trip, latest, find
# ---------------------------------------------------------------------------------------------
def test_save_find_load_round_trip(tmp_path):
    model, other = _model(0), _model(1)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(42)
    state = {"step": 5, "generator": gen.get_state(), "nested": {"lr": 1e-3, "t": torch.arange(4)}}
    path = save_checkpoint(tmp_path / "run", 5, model, CONFIG, state, ema=ema, kind="test")

    assert path == tmp_path / "run" / "step_000005"
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "ema.safetensors", "config.yaml", "state.pt", "meta.json"}
    assert (tmp_path / "run" / "latest").read_text() == "step_000005\n"
    assert find_checkpoint(tmp_path / "run") == path
    assert find_checkpoint(path) == path

    load_weights(other, tmp_path / "run")
    _assert_same_weights(other, model)
    load_weights(other, path, ema=True)
    _assert_same_weights(other, ema)

    loaded = load_state(path)
    assert loaded["step"] == 5 and loaded["nested"]["lr"] == 1e-3
    assert torch.equal(loaded["nested"]["t"], torch.arange(4))
    assert torch.equal(loaded["generator"], gen.get_state())
    assert load_config_dict(path) == CONFIG
    meta = load_meta(tmp_path / "run")
    assert meta["kind"] == "test" and meta["step"] == 5 and meta["lrpo"]


def test_ema_may_be_a_module_and_is_optional(tmp_path):
    model, ema_model = _model(0), _model(1)
    with_ema = save_checkpoint(tmp_path / "a", 1, model, CONFIG, {}, ema=ema_model)
    _assert_same_weights(load_file(str(with_ema / "ema.safetensors")), ema_model)
    without = save_checkpoint(tmp_path / "b", 1, model, CONFIG, {})
    assert not (without / "ema.safetensors").exists()
    with pytest.raises(CheckpointError, match="ema.safetensors: missing"):
        load_weights(_model(2), without, ema=True)


def test_latest_follows_the_newest_save_and_named_checkpoints(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        save_checkpoint(run, step, _model(step), CONFIG, {"step": step})
    assert (run / "latest").read_text().strip() == "step_000003"
    named = save_checkpoint(run, 3, _model(9), CONFIG, {"step": 3}, name="final")
    assert named == run / "final"
    assert find_checkpoint(run) == named
    # named folders are not step checkpoints
    assert [p.name for p in list_checkpoints(run)] == ["step_000001", "step_000002", "step_000003"]


def test_list_checkpoints_sorts_numerically_and_ignores_other_folders(tmp_path):
    run = tmp_path / "run"
    for step in (10, 9, 100):
        save_checkpoint(run, step, _model(0), CONFIG, {})
    (run / "step_000050").mkdir()  # incomplete: no model.safetensors / meta.json
    (run / "notes").mkdir()
    assert [p.name for p in list_checkpoints(run)] == ["step_000009", "step_000010", "step_000100"]
    assert list_checkpoints(tmp_path / "nothing_here") == []


def test_keep_last_prunes_older_step_folders(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, 0, _model(0), CONFIG, {}, name="best")
    for step in range(1, 6):
        save_checkpoint(run, step, _model(step), CONFIG, {"step": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(run)] == ["step_000004", "step_000005"]
    assert _visible_entries(run) == {"best", "latest", "step_000004", "step_000005"}
    assert not [p for p in run.iterdir() if p.name.startswith(".") and p.is_dir()]  # nothing half-deleted
    _assert_same_weights(load_file(str(run / "step_000004" / "model.safetensors")), _model(4))


def test_keep_last_zero_keeps_everything(tmp_path):
    run = tmp_path / "run"
    for step in range(1, 5):
        save_checkpoint(run, step, _model(0), CONFIG, {}, keep_last=0)
    assert len(list_checkpoints(run)) == 4


def test_find_checkpoint_falls_back_when_latest_is_stale(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(run, step, _model(step), CONFIG, {})
    (run / "latest").write_text("step_000007\n")  # names a folder that is gone
    assert find_checkpoint(run) == run / "step_000002"
    (run / "latest").unlink()
    assert find_checkpoint(run) == run / "step_000002"


def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint or run folder"):
        find_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="contains no checkpoint"):
        find_checkpoint(tmp_path / "empty")


def test_missing_config_yaml_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "run", 1, _model(0), CONFIG, {})
    (path / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="config.yaml is missing"):
        load_config_dict(path)


def test_resaving_the_same_step_replaces_it(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, 3, _model(0), CONFIG, {"v": 0})
    save_checkpoint(run, 3, _model(1), CONFIG, {"v": 1})
    assert load_state(run)["v"] == 1
    _assert_same_weights(load_file(str(run / "step_000003" / "model.safetensors")), _model(1))
    assert _visible_entries(run) == {"latest", "step_000003"}
    assert not [p for p in run.iterdir() if p.is_dir() and p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# strict loading
# ---------------------------------------------------------------------------------------------
def test_load_weights_lists_missing_unexpected_and_shape_mismatches(tmp_path):
    path = save_checkpoint(tmp_path / "run", 1, _model(0), CONFIG, {})
    sd = load_file(str(path / "model.safetensors"))
    del sd["lin.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.weight"] = torch.zeros(5, 3, 3, 3)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(_model(0), sd, source="x.safetensors")
    msg = str(info.value)
    assert msg.startswith("x.safetensors does not match the model")
    assert "missing keys (1): lin.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "conv.weight: file (5, 3, 3, 3) vs model (4, 3, 3, 3)" in msg


def test_load_weights_into_a_wider_model_fails_and_leaves_it_untouched(tmp_path):
    path = save_checkpoint(tmp_path / "run", 1, _model(0, width=4), CONFIG, {})
    wide = _model(1, width=8)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"shape mismatches \(4\): .*conv.weight: file \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        load_weights(wide, path)
    _assert_same_weights(wide, before)


def test_check_state_dict_shortens_long_lists():
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(16)])  # 12 listed, 4 counted
    with pytest.raises(CheckpointError, match=r"missing keys \(16\): 0.weight, 1.weight, .*, \.\.\. \(4 more\)$"):
        check_state_dict(model, {}, source="f")


# ---------------------------------------------------------------------------------------------
# crash safety
# ---------------------------------------------------------------------------------------------
def _assert_only_previous(run: Path, model: nn.Module) -> None:
    assert [p.name for p in list_checkpoints(run)] == ["step_000001"]
    assert (run / "latest").read_text() == "step_000001\n"
    assert _visible_entries(run) == {"latest", "step_000001"}
    assert not [p for p in run.iterdir() if p.is_dir() and p.name.startswith(".")]  # temp folder cleaned up
    fresh = _model(5)
    load_weights(fresh, run)
    _assert_same_weights(fresh, model)
    assert load_state(run)["step"] == 1


def test_crash_while_writing_weights_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = _model(0)
    save_checkpoint(run, 1, first, CONFIG, {"step": 1}, keep_last=1)

    def torn_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)  # a partial file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_io, "save_file", torn_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(run, 2, _model(1), CONFIG, {"step": 2}, keep_last=1)
    _assert_only_previous(run, first)


def test_interrupt_while_writing_state_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = _model(0)
    save_checkpoint(run, 1, first, CONFIG, {"step": 1}, keep_last=1)

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # Ctrl-C is a BaseException, not an Exception

    monkeypatch.setattr(ckpt_io.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 2, _model(1), CONFIG, {"step": 2}, keep_last=1)
    _assert_only_previous(run, first)


def test_kill_while_pruning_never_leaves_a_half_deleted_checkpoint_listed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(run, step, _model(step), CONFIG, {"step": step})
    real_rmtree = ckpt_io.shutil.rmtree

    def killed_rmtree(path, ignore_errors=False):
        # the first files go, then the process dies; model.safetensors and meta.json are still there
        for name in ("state.pt", "config.yaml"):
            (Path(path) / name).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_io.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, 3, _model(3), CONFIG, {"step": 3}, keep_last=1)
    monkeypatch.setattr(ckpt_io.shutil, "rmtree", real_rmtree)
    # what is listed can be resumed from: step 1 lost files, so it must not look complete
    for ckpt in list_checkpoints(run):
        assert load_state(ckpt)["step"] == int(ckpt.name[5:])
        assert load_config_dict(ckpt) == CONFIG
    assert [p.name for p in list_checkpoints(run)] == ["step_000002", "step_000003"]
    assert find_checkpoint(run).name == "step_000003"


SAVE_LOOP = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from lrpo.checkpoint import save_checkpoint
    run = sys.argv[1]
    model = nn.Sequential(nn.Linear(128, 256), nn.Linear(256, 128))
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))  # every tensor of checkpoint N holds N: a torn mix is visible
        ema = {k: -v for k, v in model.state_dict().items()}
        save_checkpoint(run, step, model, {"step": step}, {"step": step}, ema=ema, keep_last=3)
    """
)


def _check_complete(ckpt: Path) -> None:
    step = int(ckpt.name.split("_")[1])
    for name, sign in (("model.safetensors", 1.0), ("ema.safetensors", -1.0)):
        for k, v in load_file(str(ckpt / name)).items():
            assert torch.all(v == sign * step), f"{ckpt}/{name}:{k}"
    assert load_state(ckpt)["step"] == step
    assert load_config_dict(ckpt) == {"step": step}
    assert load_meta(ckpt)["step"] == step


def test_sigkill_during_repeated_saves_leaves_only_complete_checkpoints(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # wait (bounded) until the loop is saving, then let it run ~1 s and kill it mid-whatever
        deadline = time.monotonic() + 30
        while not (run / "latest").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the save loop never wrote a checkpoint"
            time.sleep(0.02)
        time.sleep(1.0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    listed = list_checkpoints(run)
    assert 1 <= len(listed) <= 4  # keep_last=3, plus at most one being pruned when the kill came
    for ckpt in listed:
        _check_complete(ckpt)
    # `latest` is replaced only after its folder is in place, and pruning only removes older ones,
    # so it always names a complete checkpoint, whichever line the kill hit
    latest = find_checkpoint(run)
    assert latest.name == (run / "latest").read_text().strip()
    _check_complete(latest)
    # the run folder stays usable: the next save works despite leftovers of the killed one
    save_checkpoint(run, 10_000, nn.Linear(1, 1), {}, {})
    assert find_checkpoint(run).name == "step_010000"


# ---------------------------------------------------------------------------------------------
# EMA (its shadow is what ema.safetensors holds)
# ---------------------------------------------------------------------------------------------
class OneParam(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value]))
        self.register_buffer("count", torch.tensor(0))
        self.register_buffer("stat", torch.tensor([0.0]))


def test_ema_update_formula_by_hand():
    model = OneParam(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.w.fill_(2.0)
    ema.update(model)
    # s = 0.9 * 1 + 0.1 * 2 = 1.1
    assert ema.shadow["w"].item() == pytest.approx(1.1, abs=1e-7)
    with torch.no_grad():
        model.w.fill_(0.0)
    ema.update(model)
    # s = 0.9 * 1.1 + 0.1 * 0 = 0.99
    assert ema.shadow["w"].item() == pytest.approx(0.99, abs=1e-7)


def test_ema_copies_buffers_instead_of_averaging_them():
    model = OneParam(1.0)
    ema = EMA(model, decay=0.9)
    model.count.fill_(7)
    model.stat.fill_(5.0)  # a float buffer (a running statistic): copied, per the module's contract
    ema.update(model)
    assert ema.shadow["count"].item() == 7
    assert ema.shadow["stat"].item() == 5.0
    assert ema.shadow["w"].item() == pytest.approx(1.0)


def test_ema_decay_zero_tracks_the_model():
    model = OneParam(1.0)
    ema = EMA(model, decay=0.0)
    with torch.no_grad():
        model.w.fill_(3.0)
    ema.update(model)
    assert ema.shadow["w"].item() == 3.0


def test_ema_shadow_is_a_copy():
    model = OneParam(1.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.w.fill_(4.0)
    assert ema.shadow["w"].item() == 1.0


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_ema_rejects_bad_decay(decay):
    with pytest.raises(ValueError, match="decay"):
        EMA(OneParam(1.0), decay)


def test_ema_applied_to_swaps_and_restores():
    model = OneParam(1.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.w.fill_(3.0)
    ema.update(model)  # shadow 0.5 * 1 + 0.5 * 3 = 2
    with ema.applied_to(model) as m:
        assert m is model and model.w.item() == 2.0
    assert model.w.item() == 3.0
    # restored even when the body raises
    with pytest.raises(RuntimeError):
        with ema.applied_to(model):
            raise RuntimeError("boom")
    assert model.w.item() == 3.0
    assert model.w.requires_grad


def test_ema_state_dict_round_trip_and_missing_keys():
    model = OneParam(1.0)
    ema = EMA(model, decay=0.5)
    other = EMA(OneParam(9.0), decay=0.5)
    other.load_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    assert other.shadow["w"].item() == 1.0
    with pytest.raises(KeyError, match="w"):
        other.load_state_dict({"count": torch.tensor(0), "stat": torch.tensor([0.0])})


def test_ema_load_state_dict_rejects_wrong_shapes():
    ema = EMA(OneParam(1.0), decay=0.5)
    # a [1] tensor would otherwise broadcast silently into a wider shadow
    wide = EMA(nn.Linear(3, 1), decay=0.5)
    with pytest.raises(ValueError, match="weight"):
        wide.load_state_dict({"weight": torch.zeros(1), "bias": torch.zeros(1)})
    ema.load_state_dict({"w": torch.tensor([2.0]), "count": torch.tensor(1), "stat": torch.tensor([0.5])})
    assert ema.shadow["w"].item() == 2.0
