"""Hostile run folders, model files and output folders (issue 19 item 5): nothing runs, nothing of the
user's is lost, every refusal is one line. One representative command per class of
bench/hostile_files.py, in this process (the bench runs every pair, as subprocesses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import hostile_files as hf  # noqa: E402
from bad_inputs import Runner  # noqa: E402

from lrpo import checkpoint as ckpt_io  # noqa: E402
from lrpo.model_files import CheckpointFormatError, read_state_dict  # noqa: E402
from lrpo.policies.sd_loaders import read_checkpoint  # noqa: E402

# (command, case): one or two commands per class; every one must end with no execution, no user
# file lost, no traceback, no raw ESC, and (where the case is hostile to that command) a refusal
REPRESENTATIVES = [
    # pickle payloads in the files a resume reads (state.pt whole, its optimiser entry, dressed as numpy)
    ("pretrain_resume", "state_pt_pickle"),
    ("train_resume", "state_pt_raw_pickle"),
    ("train_resume", "optimizer_payload"),
    ("pretrain_resume", "numpy_disguised_state"),
    # weights replaced by pickles
    ("restore", "model_safetensors_pickle"),
    ("demo", "ema_safetensors_pickle"),
    # a checkpoint naming .ckpt / .pth / .bin payloads with trust_pickle: true
    ("evaluate", "trust_pickle_ckpt"),
    ("train_init", "trust_pickle_pth"),
    ("restore", "trust_pickle_bin"),
    # YAML tags; the user's policy YAML naming a payload
    ("restore", "config_python_tag"),
    ("demo", "policy_yaml_python_tag"),
    ("train_init", "policy_yaml_payload_ckpt"),
    # latest / meta.json escapes
    ("train_resume", "latest_abs"),
    ("evaluate", "latest_dotdot"),
    ("demo", "meta_abs"),
    ("restore", "meta_dotdot"),
    # links out of the checkpoint, OUT a link, links inside an earlier OUT
    ("pretrain_resume", "link_state_out"),
    ("train_init", "link_step_out"),
    ("restore", "out_is_link"),
    ("evaluate", "out_is_link"),
    ("evaluate", "out_link_inside"),
    ("train_init", "out_link_inside"),
    # user files in OUT, with and without --overwrite
    ("evaluate", "out_user_files"),
    ("pretrain_resume", "out_user_files_overwrite"),
    ("restore", "out_user_files_overwrite"),
    # over-long and control-character names; a state.pt of plain data with impossible values
    ("pretrain_resume", "long_names"),
    ("restore", "ctrl_names"),
    ("evaluate", "ctrl_names"),
    ("pretrain_resume", "state_pt_bad_values"),
    ("train_resume", "state_pt_bad_values"),
]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return hf.prepare(root, Runner(in_process=True), True, ["restore", "evaluate"])


def test_every_case_class_is_represented():
    # each case of the bench is tried here on at least one command
    assert {case for _, case in REPRESENTATIVES} == set(hf.ALL_CASES)


@pytest.mark.parametrize("command,case", REPRESENTATIVES, ids=[f"{c}-{k}" for c, k in REPRESENTATIVES])
def test_hostile_case(context, command, case):
    o = hf.run_case(context, command, case)
    assert not o.executed, f"a payload ran: {o.message}"
    assert o.user_files_lost == [], o.user_files_lost
    assert o.user_files > 0
    assert not o.traceback, o.message
    assert not o.raw_control, o.message
    if o.must_refuse:
        assert o.refused, f"accepted: {o.message}"
        assert o.message.startswith(f"lrpo {'demo' if command == 'demo' else command.split('_')[0]}: error: "), o.message


def test_payload_message_is_one_line(tmp_path):
    # torch explains a weights_only refusal over several lines; lrpo says it in one, naming the
    # global the pickle would have imported (posix.mkdir: os.mkdir as pickled on Linux)
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.pth"
    hf.torch_zip_payload(payload, marker / "ran")
    for read in (read_state_dict, read_checkpoint):
        with pytest.raises(CheckpointFormatError) as err:
            read(payload)
        text = str(err.value)
        assert "\n" not in text and "mkdir" in text and str(payload) in text
    assert not marker.exists()


def test_raw_pickle_model_file_is_one_line(tmp_path):
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.bin"
    hf.raw_pickle_payload(payload, marker / "ran")
    with pytest.raises(CheckpointFormatError) as err:
        read_checkpoint(payload)
    assert "\n" not in str(err.value) and "weights_only" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("entry,value,said", [
    ("epoch", "two", "'epoch' entry holds a str ('two')"),
    ("epoch", -1, "'epoch' entry holds a int (-1)"),
    ("torch_rng", torch.zeros(4), "'torch_rng' entry holds a Tensor"),
    ("optimizer", None, "'optimizer' entry holds a NoneType"),
])
def test_require_state_fields_names_entry(tmp_path, entry, value, said):
    state = {"epoch": 1, "torch_rng": torch.get_rng_state(), "optimizer": {}, entry: value}
    with pytest.raises(ckpt_io.CorruptCheckpointError) as err:
        ckpt_io.require_state_fields(state, tmp_path, {"epoch": int, "torch_rng": torch.Tensor, "optimizer": dict})
    assert said in str(err.value) and "\n" not in str(err.value)
    ckpt_io.require_state_fields({"epoch": 1, "torch_rng": torch.get_rng_state(), "optimizer": {}}, tmp_path,
                                 {"epoch": int, "torch_rng": torch.Tensor, "optimizer": dict})  # a good one passes
