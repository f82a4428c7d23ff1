"""Hostile-input sweep: run folders, model files and output folders built to run code, escape or destroy.

    python bench/hostile_files.py                 # every (command, case) as a subprocess (python -m lrpo.cli)
    python bench/hostile_files.py --in-process    # the same through lrpo.cli.main in this process (faster)
    python bench/hostile_files.py --commands restore demo --cases state_pt_pickle latest_abs

Every payload, if it ever ran, only makes an entry in its own marker folder (``os.mkdir`` or
``numpy.save`` of a path there: no shell, nothing else), so "executed" is the marker folder being
non-empty. The run folders are real: a 2-step ``lrpo pretrain`` and a 1-epoch ``lrpo train`` on
six 32 px synthetic faces (bench/bad_inputs.py's corpus and tiny 16 px policy), copied and then
corrupted per case; a hostile folder's author writes its meta.json too, so every edited file is
re-signed there (sizes and sha256 updated) and only the data-not-code rules stand in the way.

Cases (classes): pickle payloads in state.pt (torch zip, raw pickle, the optimiser entry, a payload
dressed as numpy bookkeeping), a state.pt of plain data with impossible values (a data order naming
faces the run has not, an epoch counter that is a string), model/ema.safetensors replaced by pickles, a checkpoint policy section
naming .ckpt/.pth/.bin payloads with trust_pickle: true, !!python tags in config.yaml and in a policy
YAML, a policy YAML naming a payload .ckpt, latest naming /elsewhere and ../other, meta.json naming
/etc/hostname and ../x, links out of the checkpoint (state.pt, a step folder), OUT a link, links
inside an earlier OUT pointing at user files, user files in OUT (with and without --overwrite),
250-character and control-character (newline, ESC [31m) input names.

Commands: lrpo train --resume, lrpo pretrain --resume --allow-changes, lrpo restore, lrpo evaluate,
lrpo train init_checkpoint=, lrpo demo (started with --port 0; "served" when it prints its address;
with --in-process the server is replaced by that one line, after the model has loaded).

Per (command, case): executed (marker), user files deleted or changed (sha256 of every user file
before and after), exit code, a Python traceback on stdout/stderr, a raw ESC byte in the output,
whether a case that must be refused was, and the last line. Writes bench/results/hostile_files.json;
exit status 1 on any execution, loss, traceback, raw control byte or accepted hostile folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs import MODEL_SIZE, Runner, RunResult, pretrain_argv, synthetic_face, write_good  # noqa: E402

from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "hostile_files.json"
TRACE = "Traceback (most recent call last)"
STEPS_PRE = 2  # the pretraining run's steps (ckpt_every=2: one checkpoint, step_000002)


# ----------------------------------------------------------------------------------------------
# payloads: objects whose unpickling would make an entry in a marker folder, and nothing else
# ----------------------------------------------------------------------------------------------
class MkdirPayload:
    """Unpickled with full pickle: ``os.mkdir(marker)`` (pickled as posix.mkdir)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


class NumpyPayload:
    """Dressed as numpy bookkeeping (the prefix lrpo.model_files lets through as inert placeholders):
    ``numpy.save(marker, array)`` writes ``marker.npy`` if it ever runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return np.save, (self.marker, np.zeros(1))


def torch_zip_payload(path: Path, marker: Path, payload=MkdirPayload, wrap: bool = True) -> None:
    """A torch.save zip whose pickle holds the payload (in a dict of a tensor, as a state dict would)."""
    obj = {"weight": torch.zeros(1), "extra": payload(marker)} if wrap else payload(marker)
    torch.save(obj, path)


def raw_pickle_payload(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"step": 1, "extra": MkdirPayload(marker)}, protocol=2))


def executed(marker_dir: Path) -> bool:
    return marker_dir.exists() and any(marker_dir.iterdir())


# ----------------------------------------------------------------------------------------------
# the run folders and how a hostile author edits them
# ----------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_of(run: Path) -> Path:
    return run / (run / "latest").read_text().strip()


def resign(ckpt: Path, *names: str) -> None:
    """Record the edited files' sizes and digests in meta.json, as the folder's author would."""
    meta_path = ckpt / "meta.json"
    meta = json.loads(meta_path.read_text())
    files = meta.setdefault("files", {})
    for name in names:
        f = ckpt / name
        files[name] = {"bytes": f.stat().st_size, "sha256": sha256(f)}
    meta_path.write_text(json.dumps(meta, indent=1))


def hostile_policy_section(marker: Path, kind: str, payload_dir: Path) -> dict:
    """A latent-policy section naming one payload model file (.ckpt SD file, .pth ControlNet or .bin
    SwinIR), with trust_pickle: true, as a checkpoint's config.yaml might carry it."""
    payload_dir.mkdir(parents=True, exist_ok=True)
    sd_folder = payload_dir / "sd_diffusers"  # a folder: the SD file is not read, so the next file is
    sd_folder.mkdir(exist_ok=True)
    target = payload_dir / f"payload.{kind}"
    torch_zip_payload(target, marker)
    section = {"kind": "sd21_controlnet", "resolution": 64, "trust_pickle": True, "stage1": "none",
               "sd_checkpoint": str(sd_folder), "controlnet_checkpoint": "", "swinir_checkpoint": ""}
    key = {"ckpt": "sd_checkpoint", "pth": "controlnet_checkpoint", "bin": "swinir_checkpoint"}[kind]
    section[key] = str(target)
    if kind == "bin":
        section["stage1"] = "swinir"
    return section


@dataclass
class Setup:
    """What a case is given: its folder, the run it corrupts (a copy), its marker folder."""

    case_dir: Path
    run: Path  # the run folder (copy) the command reads; a case may replace it by a policy YAML
    marker: Path  # payloads write here
    user: Path  # the user's own files outside the run (hashed before and after)
    source: Path | None = None  # what the command is given instead of ``run`` (a policy YAML)
    out: Path | None = None  # the output folder, when the case prepares one
    overwrite: bool = False  # pass --overwrite
    data: Path | None = None  # training faces / restore inputs instead of the shared ones
    user_files: list[Path] = field(default_factory=list)  # user files inside OUT or the run
    earlier: Path | None = None  # an earlier output of the same command (out_link_inside)
    command: str = ""


def _edit_state(s: Setup, make: Callable[[Path, Path], None]) -> None:
    ck = checkpoint_of(s.run)
    make(ck / "state.pt", s.marker / "ran")
    resign(ck, "state.pt")


def case_state_pt_pickle(s: Setup) -> None:
    _edit_state(s, lambda p, m: torch_zip_payload(p, m))


def case_state_pt_raw_pickle(s: Setup) -> None:
    _edit_state(s, raw_pickle_payload)


def case_optimizer_payload(s: Setup) -> None:
    """The real state.pt with only its optimiser entry replaced by a payload."""
    ck = checkpoint_of(s.run)
    state = torch.load(ck / "state.pt", weights_only=True)
    state["optimizer"] = MkdirPayload(s.marker / "ran")
    torch.save(state, ck / "state.pt")
    resign(ck, "state.pt")


def case_numpy_disguised_state(s: Setup) -> None:
    _edit_state(s, lambda p, m: torch_zip_payload(p, m, payload=NumpyPayload))


def case_state_pt_bad_values(s: Setup) -> None:
    """A state.pt of plain data (weights_only reads it) whose data order names faces the run has not."""
    ck = checkpoint_of(s.run)
    state = torch.load(ck / "state.pt", weights_only=True)
    if "perm" in state:
        state["perm"] = torch.arange(1000, 1000 + len(state["perm"]))
    if "perm" not in state:  # an LRPO state: its epoch counter a string
        state["epoch"] = "two"
    torch.save(state, ck / "state.pt")
    resign(ck, "state.pt")


def _replace_weights(s: Setup, name: str) -> None:
    ck = checkpoint_of(s.run)
    torch_zip_payload(ck / name, s.marker / "ran")
    resign(ck, name)


def case_model_safetensors_pickle(s: Setup) -> None:
    _replace_weights(s, "model.safetensors")


def case_ema_safetensors_pickle(s: Setup) -> None:
    _replace_weights(s, "ema.safetensors")


def _config_policy(s: Setup, kind: str) -> None:
    ck = checkpoint_of(s.run)
    cfg = yaml.safe_load((ck / "config.yaml").read_text())
    cfg["policy"] = hostile_policy_section(s.marker / "ran", kind, s.user / "models")
    (ck / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    resign(ck, "config.yaml")


def case_trust_pickle_ckpt(s: Setup) -> None:
    _config_policy(s, "ckpt")


def case_trust_pickle_pth(s: Setup) -> None:
    _config_policy(s, "pth")


def case_trust_pickle_bin(s: Setup) -> None:
    _config_policy(s, "bin")


def python_tag(marker: Path) -> str:
    return f"!!python/object/apply:os.mkdir [{json.dumps(str(marker))}]"


def case_config_python_tag(s: Setup) -> None:
    ck = checkpoint_of(s.run)
    text = (ck / "config.yaml").read_text()
    (ck / "config.yaml").write_text(f"hostile: {python_tag(s.marker / 'ran')}\n" + text)
    resign(ck, "config.yaml")


def case_policy_yaml_python_tag(s: Setup) -> None:
    s.source = s.user / "policy-hostile.yaml"
    s.source.write_text(f"policy:\n  kind: {python_tag(s.marker / 'ran')}\ndiffusion: {{}}\n")


def case_policy_yaml_payload_ckpt(s: Setup) -> None:
    """The user's own policy YAML (no trust_pickle) naming a payload .ckpt: read as tensors only."""
    section = hostile_policy_section(s.marker / "ran", "ckpt", s.user / "models")
    section["trust_pickle"] = False
    s.source = s.user / "policy-payload.yaml"
    s.source.write_text(yaml.safe_dump({"policy": section, "diffusion": {}}))


def _outside_checkpoint(s: Setup) -> Path:
    """A complete, valid checkpoint outside the run folder (following a link there would 'work')."""
    other = s.user / "elsewhere"
    shutil.copytree(checkpoint_of(s.run), other, symlinks=True)
    return other


def case_latest_abs(s: Setup) -> None:
    (s.run / "latest").write_text(f"{_outside_checkpoint(s)}\n")


def case_latest_dotdot(s: Setup) -> None:
    shutil.copytree(checkpoint_of(s.run), s.case_dir / "other", symlinks=True)
    (s.run / "latest").write_text("../other\n")


def _meta_names(s: Setup, name: str, target: Path) -> None:
    ck = checkpoint_of(s.run)
    meta = json.loads((ck / "meta.json").read_text())
    meta.setdefault("files", {})[name] = {"bytes": target.stat().st_size, "sha256": sha256(target)}
    (ck / "meta.json").write_text(json.dumps(meta, indent=1))


def case_meta_abs(s: Setup) -> None:
    target = Path("/etc/hostname") if Path("/etc/hostname").is_file() else Path("/etc/passwd")
    _meta_names(s, str(target), target)


def case_meta_dotdot(s: Setup) -> None:
    x = s.case_dir / "run_parent_x"
    x.write_text("a file beside the run\n")
    shutil.move(str(x), str(s.run.parent / "x")) if not (s.run.parent / "x").exists() else None
    _meta_names(s, "../x", s.run.parent / "x")


def case_link_state_out(s: Setup) -> None:
    """state.pt a link to a (valid) state.pt outside the checkpoint."""
    ck = checkpoint_of(s.run)
    outside = s.user / "state.pt"
    shutil.copy2(ck / "state.pt", outside)
    (ck / "state.pt").unlink()
    os.symlink(outside, ck / "state.pt")


def case_link_step_out(s: Setup) -> None:
    """The step folder latest names is a link to a (valid) checkpoint outside the run."""
    ck = checkpoint_of(s.run)
    other = _outside_checkpoint(s)
    shutil.rmtree(ck)
    os.symlink(other, ck)


CASES: dict[str, Callable[[Setup], None]] = {
    "state_pt_pickle": case_state_pt_pickle,
    "state_pt_raw_pickle": case_state_pt_raw_pickle,
    "optimizer_payload": case_optimizer_payload,
    "numpy_disguised_state": case_numpy_disguised_state,
    "state_pt_bad_values": case_state_pt_bad_values,
    "model_safetensors_pickle": case_model_safetensors_pickle,
    "ema_safetensors_pickle": case_ema_safetensors_pickle,
    "trust_pickle_ckpt": case_trust_pickle_ckpt,
    "trust_pickle_pth": case_trust_pickle_pth,
    "trust_pickle_bin": case_trust_pickle_bin,
    "config_python_tag": case_config_python_tag,
    "policy_yaml_python_tag": case_policy_yaml_python_tag,
    "policy_yaml_payload_ckpt": case_policy_yaml_payload_ckpt,
    "latest_abs": case_latest_abs,
    "latest_dotdot": case_latest_dotdot,
    "meta_abs": case_meta_abs,
    "meta_dotdot": case_meta_dotdot,
    "link_state_out": case_link_state_out,
    "link_step_out": case_link_step_out,
}
PAYLOAD_CASES = {"state_pt_pickle", "state_pt_raw_pickle", "optimizer_payload", "numpy_disguised_state",
                 "model_safetensors_pickle", "ema_safetensors_pickle", "trust_pickle_ckpt", "trust_pickle_pth",
                 "trust_pickle_bin", "config_python_tag", "policy_yaml_python_tag", "policy_yaml_payload_ckpt"}
# cases whose folder is fine to use once the hostile part is ignored (the checkpoint's trust_pickle
# is ignored, so its latent section is then read as tensors and fails on the empty SD folder)
MUST_REFUSE = set(CASES) - {"state_pt_pickle", "state_pt_raw_pickle", "optimizer_payload", "numpy_disguised_state"}
STATE_ONLY = {"state_pt_pickle", "state_pt_raw_pickle", "optimizer_payload", "numpy_disguised_state", "state_pt_bad_values"}
TRUST_CASES = {"trust_pickle_ckpt", "trust_pickle_pth", "trust_pickle_bin"}


# ----------------------------------------------------------------------------------------------
# output folders and input names (the folder a command writes: OUT, or the run for a resume)
# ----------------------------------------------------------------------------------------------
def _user_file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _written_folder(s: Setup, earlier: Path | None) -> Path:
    """The folder the command writes: the run for a resume, else OUT (a copy of ``earlier``)."""
    if earlier is not None:
        shutil.copytree(earlier, s.out, symlinks=True)
    return s.out


# a user's file at a name the command itself writes (a resume keeps its own config.yaml: notes only)
COLLIDING = {"train_init": "config.yaml", "restore": "config.yaml", "evaluate": "metrics.json"}


def _user_files_in(s: Setup, folder: Path) -> None:
    s.user_files.append(_user_file(folder, "notes.txt", "my notes\n"))
    if s.command in COLLIDING:
        s.user_files.append(_user_file(folder, COLLIDING[s.command], '{"mine": true}\n'))


def case_out_user_files(s: Setup, overwrite: bool = False) -> None:
    _user_files_in(s, _written_folder(s, None))
    s.overwrite = overwrite


def case_out_user_files_overwrite(s: Setup) -> None:
    case_out_user_files(s, overwrite=True)


def case_out_is_link(s: Setup) -> None:
    """OUT is a link to a folder of the user's (with --overwrite)."""
    target = s.user / "linked_out"
    _user_files_in(s, target)
    if s.command not in RESUMES:
        os.symlink(target, s.out)
    else:  # a resume: the run folder's files moved into the user's folder, the run a link to it
        for p in list(s.out.iterdir()):
            shutil.move(str(p), str(target / p.name))
        s.out.rmdir()
        os.symlink(target, s.out)
    s.overwrite = True


def case_out_link_inside(s: Setup) -> None:
    """An earlier output of the same command whose recorded files are links to the user's files
    (--overwrite must neither delete nor write through them)."""
    w = _written_folder(s, s.earlier)
    linked = 0
    for f in sorted(p for p in w.rglob("*") if p.is_file() and not p.is_symlink() and not p.name.startswith(".")):
        if f.suffix in (".png", ".json", ".jsonl", ".csv", ".txt") and linked < 3:
            target = _user_file(s.user, f"mine_{linked}{f.suffix}", f"user file {linked}\n")
            s.user_files.append(target)
            f.unlink()
            os.symlink(target, f)
            linked += 1
    s.overwrite = True


LONG_STEM = "x" * 246  # + ".png" = 250 bytes (ext4 allows 255)
CTRL_STEMS = ("face\nnewline", "face\x1b[31mred")


def _faces_named(folder: Path, stems: tuple[str, ...], seed: int) -> Path:
    write_good(folder, tuple(f"{stem}.png" for stem in stems), seed=seed)
    write_good(folder, ("good_00.png", "good_01.png"), seed=seed + 50)
    return folder


def case_long_names(s: Setup) -> None:
    s.data = _faces_named(s.case_dir / "faces", (LONG_STEM,), 300)


def case_ctrl_names(s: Setup) -> None:
    s.data = _faces_named(s.case_dir / "faces", CTRL_STEMS, 320)


OUT_CASES: dict[str, Callable[[Setup], None]] = {
    "out_user_files": case_out_user_files,
    "out_user_files_overwrite": case_out_user_files_overwrite,
    "out_is_link": case_out_is_link,
    "out_link_inside": case_out_link_inside,
}
NAME_CASES: dict[str, Callable[[Setup], None]] = {"long_names": case_long_names, "ctrl_names": case_ctrl_names}
ALL_CASES = {**CASES, **OUT_CASES, **NAME_CASES}
# cases a resume command reads state.pt for; the others read no state.pt (weights only)
RESUMES = ("train_resume", "pretrain_resume")


def must_refuse(command: str, case: str) -> bool:
    """Whether (command, case) must end in a refusal (non-zero exit; the demo: not serving)."""
    if case in STATE_ONLY:
        return command in RESUMES  # only a resume reads state.pt
    if case in TRUST_CASES and command in RESUMES:
        return False  # a resume rebuilds the policy from the command line's settings, not the checkpoint's
    if case in OUT_CASES:  # (a resume may go on beside a user's notes; starting over there may not)
        return not (case == "out_user_files" and command in RESUMES)
    return case in CASES


# ----------------------------------------------------------------------------------------------
# the commands
# ----------------------------------------------------------------------------------------------
@dataclass
class Context:
    """The clean material every case starts from (built once by :func:`prepare`)."""

    root: Path
    faces: Path  # six training faces
    pretrain_run: Path  # 2 steps
    train_run: Path  # 1 epoch from pretrain_run
    paired: Path  # hq/ + lq/ for evaluate
    earlier: dict[str, Path] = field(default_factory=dict)  # command -> an earlier output of it
    runner: Runner | None = None
    in_process: bool = False


def lrpo_train_argv(hq: Path, out: Path, init: Path | str, epochs: int) -> list[str]:
    return ["train", "--no-progress", "--eval-every", "0", f"init_checkpoint={init}", f"data.hq={hq}", f"out_dir={out}",
            "device=cpu", "reward.device=cpu", f"epochs={epochs}", "group_size=2", "groups_per_epoch=1",
            "rollout_groups_per_batch=1", "sample_steps=2", "minibatch_size=2", "train_fraction=1", "reg_weight=0",
            f"data.resolution={MODEL_SIZE}", "data.val_count=1", "degradation.kernel_size=7", "reward.preset=",
            "reward.terms={brightness: {weight: 1.0}}"]


def _start(s: Setup) -> list[str]:
    """--resume, or --overwrite when the case starts over."""
    return ["--overwrite"] if s.overwrite else ["--resume"]


def argv_train_resume(s: Setup, c: Context) -> list[str]:
    return [*lrpo_train_argv(s.data or c.faces, s.run, c.pretrain_run, epochs=2), *_start(s)]


def argv_pretrain_resume(s: Setup, c: Context) -> list[str]:
    return [*pretrain_argv(s.data or c.faces, s.run, steps=STEPS_PRE + 2), *_start(s), "--allow-changes"]


def _model(s: Setup) -> Path:
    return s.source or s.run


def argv_restore(s: Setup, c: Context) -> list[str]:
    ow = ["--overwrite"] if s.overwrite else []
    return ["restore", str(s.data or c.faces), str(s.out), "--aligned", "--checkpoint", str(_model(s)), "--steps", "2",
            "--device", "cpu", "--no-progress", *ow]


def argv_evaluate(s: Setup, c: Context) -> list[str]:
    paired = c.paired if s.data is None else _paired_from(s.data)
    return ["evaluate", "--paired", str(paired), "--method", f"tiny=ckpt:{_model(s)}", "--steps", "2", "--out", str(s.out),
            "--device", "cpu", "--reward-preset", "none", "--no-progress"]


def argv_train_init(s: Setup, c: Context) -> list[str]:
    return [*lrpo_train_argv(s.data or c.faces, s.out, _model(s), epochs=1), *(["--overwrite"] if s.overwrite else [])]


def argv_demo(s: Setup, c: Context) -> list[str]:
    return ["demo", "--checkpoint", str(_model(s)), "--port", "0", "--device", "cpu", "--detector", str(c.root / "no_detector")]


COMMANDS: dict[str, Callable[[Setup, Context], list[str]]] = {
    "train_resume": argv_train_resume,
    "pretrain_resume": argv_pretrain_resume,
    "restore": argv_restore,
    "evaluate": argv_evaluate,
    "train_init": argv_train_init,
    "demo": argv_demo,
}


def applies(command: str, case: str) -> bool:
    if command == "demo":
        return case in CASES  # the demo reads a model; it writes no folder and takes no input folder
    if case.startswith("policy_yaml"):
        return command not in RESUMES  # a resume reads a run folder, never a policy YAML
    if command == "evaluate" and case == "out_user_files_overwrite":
        return False  # evaluate has no --overwrite
    return True


def _paired_from(folder: Path) -> Path:
    """A paired set whose hq/ and lq/ hold ``folder``'s names (hq: other faces of the same names)."""
    root = folder.parent / "paired"
    if not root.exists():
        shutil.copytree(folder, root / "lq")
        (root / "hq").mkdir()
        for i, p in enumerate(sorted(folder.iterdir())):
            Image.fromarray(synthetic_face(700 + i)).save(root / "hq" / p.name)
    return root


# ----------------------------------------------------------------------------------------------
# running and recording
# ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    command: str
    case: str
    executed: bool
    user_files_lost: list[str]  # deleted or changed
    user_files: int
    rc: int | None
    traceback: bool
    raw_control: bool  # an ESC byte reached the output unescaped
    must_refuse: bool
    refused: bool
    seconds: float
    message: str


def snapshot(paths: list[Path]) -> dict[str, str]:
    return {str(p): sha256(p) for p in paths}


def user_paths(s: Setup, c: Context) -> list[Path]:
    """Every file that is the user's: the inputs, the user's folder, the user's files in OUT."""
    found = [p for p in (*c.faces.rglob("*"), *c.paired.rglob("*"), *s.user.rglob("*")) if p.is_file()]
    if s.data is not None:
        found += [p for p in s.data.rglob("*") if p.is_file()]
    return sorted(set(found) | set(s.user_files))


def lost(before: dict[str, str], after_paths: list[str]) -> list[str]:
    out = []
    for name in after_paths:
        p = Path(name)
        if not p.is_file():
            out.append(f"{name}: deleted")
        elif sha256(p) != before[name]:
            out.append(f"{name}: changed")
    return out


def last_line(result: RunResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip() or "(no output)").splitlines()
    return lines[-1][:300].encode("unicode_escape").decode("ascii")


def run_demo(argv: list[str], c: Context) -> RunResult:
    """Start ``lrpo demo``; "served" (rc None -> 0 here) once it prints its address, then stopped."""
    t0 = time.perf_counter()
    if c.in_process:
        import lrpo.demo.app as app

        saved = app.serve
        app.serve = lambda service, *a, **k: print(f"lrpo demo: serving {service.source}", flush=True)
        try:
            r = c.runner(argv)
        finally:
            app.serve = saved
        return r
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lrpo.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    out_lines = []
    try:
        for raw in proc.stdout:
            out_lines.append(raw.decode("utf-8", "backslashreplace"))
            if "serving" in out_lines[-1] or time.perf_counter() - t0 > 180:
                break
    finally:
        served = proc.poll() is None
        if served:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    rc = 0 if served and any("serving" in line for line in out_lines) else (proc.returncode or 1)
    return RunResult(rc, "".join(out_lines), err.decode("utf-8", "backslashreplace"), round(time.perf_counter() - t0, 2))


def run_case(c: Context, command: str, case: str) -> Outcome:
    case_dir = Path(tempfile.mkdtemp(dir=c.root, prefix=f"{command}-{case}-"))
    base = c.train_run if command == "train_resume" else c.pretrain_run
    run = case_dir / "run"
    shutil.copytree(base, run, symlinks=True)
    s = Setup(case_dir=case_dir, run=run, marker=case_dir / "marker", user=case_dir / "user", command=command)
    s.marker.mkdir()
    s.user.mkdir()
    if command in RESUMES:
        s.out = s.run
    else:
        s.out = case_dir / "out"
        s.earlier = c.earlier.get(command)
    ALL_CASES[case](s)
    argv = COMMANDS[command](s, c)
    paths = user_paths(s, c)
    before = snapshot(paths)
    result = run_demo(argv, c) if command == "demo" else c.runner(argv, env={"LRPO_WEIGHTS": str(c.root / "no_weights")})
    text = result.stdout + result.stderr
    refuse = must_refuse(command, case)
    return Outcome(command, case, executed(s.marker), lost(before, list(before)), len(paths), result.rc, TRACE in text,
                   "\x1b" in text, refuse, result.rc != 0, result.seconds, last_line(result))


# ----------------------------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------------------------
def _must(result: RunResult, what: str) -> None:
    if result.rc != 0:
        raise RuntimeError(f"{what} failed (exit {result.rc}): {result.stderr.strip()[-2000:]}")


def prepare(root: Path, runner: Runner, in_process: bool, commands: list[str]) -> Context:
    """The clean runs and sets (2-step pretrain, 1-epoch train), and an earlier output of each command."""
    faces = root / "faces"
    write_good(faces, tuple(f"face_{i:02d}.png" for i in range(6)), seed=200)
    c = Context(root=root, faces=faces, pretrain_run=root / "pretrain_run", train_run=root / "train_run",
                paired=_paired_from(write_good(root / "eval_faces", ("a.png", "b.png"), seed=400)[0].parent),
                runner=runner, in_process=in_process)
    (root / "no_weights").mkdir()
    (root / "no_detector").mkdir()
    _must(runner(pretrain_argv(faces, c.pretrain_run, steps=STEPS_PRE)), "the tiny pretraining run")
    _must(runner(lrpo_train_argv(faces, c.train_run, c.pretrain_run, epochs=1)), "the tiny LRPO run")
    c.earlier["train_init"] = c.train_run
    s = Setup(case_dir=root, run=c.pretrain_run, marker=root, user=root)
    if "restore" in commands:
        s.out = root / "earlier_restore"
        _must(runner(argv_restore(s, c)), "the earlier restore")
        c.earlier["restore"] = s.out
    if "evaluate" in commands:
        s.out = root / "earlier_evaluate"
        _must(runner(argv_evaluate(s, c)), "the earlier evaluate")
        c.earlier["evaluate"] = s.out
    return c


def sweep(c: Context, commands: list[str], cases: list[str], log=print) -> list[Outcome]:
    outcomes = []
    for command in commands:
        for case in cases:
            if not applies(command, case):
                continue
            o = run_case(c, command, case)
            outcomes.append(o)
            log(row(o))
    return outcomes


def problems(o: Outcome) -> list[str]:
    found = []
    if o.executed:
        found.append("EXECUTED")
    if o.user_files_lost:
        found.append(f"LOST {len(o.user_files_lost)}")
    if o.traceback:
        found.append("TRACEBACK")
    if o.raw_control:
        found.append("RAW ESC")
    if o.must_refuse and not o.refused:
        found.append("ACCEPTED")
    return found


def row(o: Outcome) -> str:
    verdict = ", ".join(problems(o)) or ("refused" if o.refused else "ran")
    return f"{o.command:16s} {o.case:26s} rc={o.rc!s:4s} {o.seconds:6.1f}s {verdict:10s} {o.message[:150]}"


def totals(outcomes: list[Outcome]) -> dict[str, int]:
    return {
        "runs": len(outcomes),
        "payload_runs": sum(o.case in PAYLOAD_CASES for o in outcomes),
        "executed": sum(o.executed for o in outcomes),
        "user_files_checked": sum(o.user_files for o in outcomes),
        "user_files_lost": sum(len(o.user_files_lost) for o in outcomes),
        "tracebacks": sum(o.traceback for o in outcomes),
        "raw_control_output": sum(o.raw_control for o in outcomes),
        "must_refuse": sum(o.must_refuse for o in outcomes),
        "refused_as_required": sum(o.must_refuse and o.refused for o in outcomes),
        "accepted_hostile": sum(o.must_refuse and not o.refused for o in outcomes),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--in-process", action="store_true", help="run lrpo.cli.main in this process (faster)")
    ap.add_argument("--commands", nargs="*", default=list(COMMANDS), choices=list(COMMANDS))
    ap.add_argument("--cases", nargs="*", default=list(ALL_CASES), choices=list(ALL_CASES))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    ap.add_argument("--append", action="store_true",
                    help="merge into --out's outcomes (same command and case replaced): a sweep run a command at a time")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lrpo-hostile-"))
    t0 = time.perf_counter()
    runner = Runner(in_process=args.in_process)
    try:
        c = prepare(root, runner, args.in_process, args.commands)
        outcomes = sweep(c, args.commands, args.cases)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.append and args.out.is_file():
        fresh = {(o.command, o.case) for o in outcomes}
        kept = [Outcome(**o) for o in json.loads(args.out.read_text())["outcomes"] if (o["command"], o["case"]) not in fresh]
        outcomes = kept + outcomes
    tot = totals(outcomes)
    print(json.dumps(tot))
    report = {"command": "python bench/hostile_files.py" + (" --in-process" if args.in_process else ""),
              "mode": "in-process" if args.in_process else "subprocess", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
              "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1), "totals": tot,
              "outcomes": [asdict(o) for o in outcomes]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(problems(o) for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
