"""Bad-input sweep: every ``lrpo`` command against broken, odd and good files and bad settings.

    python bench/bad_inputs.py                # the whole sweep, 222 subprocesses (18 min on a busy 2-core CPU)
    python bench/bad_inputs.py --in-process   # the same through lrpo.cli.main in this process (under 1 min)
    python bench/bad_inputs.py --commands degrade restore-aligned --items empty bomb_png

The corpus is built in a temporary folder: broken files (empty, truncated PNG/JPEG, text named
.png, a 20000x20000 header-only PNG, no read permission, a symbolic link loop), odd but valid
ones (a JPEG named .png, 1x1, CMYK JPEG, palette PNG, 16-bit PNGs, gray+alpha, animated GIF,
EXIF-rotated JPEG, a file name that is not UTF-8) and good synthetic faces. Each item is tried
alone beside two good faces (the strict run: no skip flag), then all of them in one folder (the
mixed run: --skip-bad / data.skip_bad=true where the command has one). Bad configs, overrides,
flags, launcher variables and a NaN/inf FID statistics file go to the commands that take them (no
command reads a .npy; the one array file a command takes is `lrpo evaluate --fid-ref STATS.npz`).

Each (command, item) outcome is one of:
  clear error     non-zero exit, or skipped with a message; one line names the item (file, key or
                  value) and says what was wrong; no traceback
  processed       a valid item has its output (decodable, non-empty)
  crash           a traceback, or a bad item that no message names
  refused         a valid item was refused or has no output (counted as a failure)
  partial output  an empty or undecodable output file, an output for a bad item, a work folder
                  left behind, or files left by a run that failed as a whole
  not applicable  the item cannot be made here (e.g. no read permission when running as root)

Prints a table and the totals and writes bench/results/bad_inputs.json. Exit status 1 if any
crash, refusal or partial output was found.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "bad_inputs.json"
GOOD_SIZE = 32  # side of the synthetic good faces; the tiny policy works at 16 px
MODEL_SIZE = 16


# ----------------------------------------------------------------------------------------------
# the image corpus
# ----------------------------------------------------------------------------------------------
def synthetic_face(seed: int, size: int = GOOD_SIZE) -> np.ndarray:
    """A smooth face-like RGB uint8 picture (gradient, ellipse, two eyes, texture) from one seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    img = rng.uniform(0.2, 0.8, size=3) * (0.7 + 0.3 * yy[..., None])
    face = ((yy - 0.5) / 0.35) ** 2 + ((xx - 0.5) / 0.25) ** 2 < 1.0
    img[face] = 0.5 * img[face] + 0.5 * rng.uniform(0.4, 0.9, size=3)
    for ex in (0.4, 0.6):
        img[(yy - 0.42) ** 2 + (xx - ex) ** 2 < 0.05**2] = 0.1
    img += rng.normal(0.0, 0.03, size=img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_face(seed)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(seed: int, mode: str = "RGB", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_face(seed)).convert(mode).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR for ``width x height`` 8-bit RGB and IEND: no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _save(path: Path, img: Image.Image, **kw) -> None:
    img.save(path, **kw)


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _animated_gif(path: Path) -> None:
    frames = [Image.fromarray(synthetic_face(s)).convert("P", palette=Image.Palette.ADAPTIVE) for s in (20, 21, 22)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated(path: Path) -> None:
    # stored 32 wide x 24 high with orientation 6 (rotate 90 CW): shown 24 wide x 32 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(synthetic_face(30)[4:28, :]).save(path, format="JPEG", quality=90, exif=exif)


def _rgb16(path: Path) -> None:
    import cv2

    cv2.imwrite(str(path), synthetic_face(31)[..., ::-1].astype(np.uint16) * 257)  # 48-bit PNG (BGR order)


def _no_permission(path: Path) -> str:
    path.write_bytes(_png_bytes(40))
    path.chmod(0)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return ""
    # root (or CAP_DAC_OVERRIDE) reads it anyway: the case cannot be made here
    path.chmod(0o644)
    return "not applicable: this process reads files without read permission (root); the file was made readable"


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)  # a link to itself: ELOOP on open


@dataclass(frozen=True)
class Item:
    """One corpus entry. ``valid``: it must be processed; else refused with a message naming it.
    ``write(path)`` makes the file; a string it returns is a reason the case is not applicable."""

    key: str
    filename: str | bytes
    valid: bool
    write: Callable[[Path], object]
    what: str
    shown_size: tuple[int, int] | None = None  # (width, height) once EXIF orientation is applied, when it matters
    may_refuse: tuple[str, ...] = ()  # commands for which a clear refusal is right too (a 1x1 first image sets no resolution)

    @property
    def name(self) -> str:
        """The file name as Python sees it (undecodable bytes as surrogate escapes)."""
        return os.fsdecode(self.filename)

    @property
    def stem(self) -> str:
        return Path(self.name).stem


ITEMS: list[Item] = [
    Item("empty", "empty.png", False, _write_bytes(b""), "zero-byte file"),
    Item("truncated_png", "truncated_png.png", False, lambda p: p.write_bytes(_png_bytes(1)[:300]), "PNG cut after 300 bytes"),
    Item("truncated_jpeg", "truncated_jpeg.jpg", False, lambda p: p.write_bytes(_jpeg_bytes(2)[:400]), "JPEG cut after 400 bytes"),
    Item("jpeg_as_png", "jpeg_as_png.png", True, lambda p: p.write_bytes(_jpeg_bytes(3)), "a JPEG named .png"),
    Item("text_as_png", "text_as_png.png", False, _write_bytes(b"these are not the pixels you are looking for\n"), "text named .png"),
    Item("one_pixel", "one_pixel.png", True, lambda p: _save(p, Image.new("RGB", (1, 1), (120, 90, 80))), "1x1 image",
         may_refuse=("evaluate",)),
    Item("bomb_png", "bomb_png.png", False, _write_bytes(header_only_png(20000, 20000)), "20000x20000 header-only PNG"),
    Item("cmyk_jpeg", "cmyk_jpeg.jpg", True, lambda p: p.write_bytes(_jpeg_bytes(4, "CMYK")), "CMYK JPEG"),
    Item("palette_png", "palette_png.png", True,
         lambda p: _save(p, Image.fromarray(synthetic_face(5)).convert("P", palette=Image.Palette.ADAPTIVE)), "palette PNG"),
    Item("gray16_png", "gray16_png.png", True,
         lambda p: _save(p, Image.fromarray(synthetic_face(6)[..., 0].astype(np.uint16) * 257)), "16-bit grayscale PNG"),
    Item("rgb16_png", "rgb16_png.png", True, _rgb16, "16-bit RGB PNG (48 bits per pixel)"),
    Item("gray_alpha_png", "gray_alpha_png.png", True,
         lambda p: _save(p, Image.fromarray(synthetic_face(7)).convert("LA")), "gray + alpha PNG"),
    Item("animated_gif", "animated_gif.gif", True, _animated_gif, "animated GIF (3 frames)"),
    Item("exif_rotated", "exif_rotated.jpg", True, _exif_rotated, "JPEG with EXIF orientation 6", shown_size=(24, 32)),
    Item("no_permission", "no_permission.png", False, _no_permission, "chmod 000"),
    Item("symlink_loop", "symlink_loop.png", False, _symlink_loop, "symbolic link to itself"),
    Item("non_utf8_name", b"non_utf8_\xff\xfe.png", True, lambda p: p.write_bytes(_png_bytes(8)), "file name not UTF-8"),
    Item("bad_non_utf8_name", b"bad_non_utf8_\xff.png", False, _write_bytes(b"GIF89a"),
         "truncated GIF whose name is not UTF-8 (printed with escapes)"),
]
ITEM_KEYS = [it.key for it in ITEMS]
GOOD_NAMES = ("zgood_00.png", "zgood_01.png")  # sort after the items: an item is the first file a command sees


def write_good(folder: Path, names=GOOD_NAMES, seed: int = 100) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        Image.fromarray(synthetic_face(seed + i)).save(folder / name)
        paths.append(folder / name)
    return paths


def place(item: Item, folder: Path) -> str:
    """Write ``item`` into ``folder``; returns '' or why the case is not applicable here."""
    folder.mkdir(parents=True, exist_ok=True)
    note = item.write(folder / item.name)
    return note if isinstance(note, str) else ""


def make_writable(folder: Path) -> None:
    """Undo chmod 000 so the temporary folder can be deleted."""
    for p in folder.rglob("*"):
        if not p.is_symlink():
            with contextlib.suppress(OSError):
                p.chmod(0o755 if p.is_dir() else 0o644)


# ----------------------------------------------------------------------------------------------
# running a command
# ----------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float


class Runner:
    """Runs ``lrpo ARGV``: as a subprocess (what a user gets), or in this process through
    ``lrpo.cli.main`` with real byte streams (fast; for the test)."""

    def __init__(self, in_process: bool = False, env: dict[str, str] | None = None):
        self.in_process = in_process
        self.env = dict(env or {})

    def __call__(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> RunResult:
        extra = {**self.env, **(env or {})}
        t0 = time.perf_counter()
        if self.in_process:
            rc, out, err = _run_in_process(argv, extra, cwd)
        else:
            full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
            full_env = {k: v for k, v in full_env.items() if v is not None}
            proc = subprocess.run([sys.executable, "-m", "lrpo.cli", *argv], capture_output=True, env=full_env, cwd=cwd,
                                  timeout=300)
            rc = proc.returncode
            out = proc.stdout.decode("utf-8", "backslashreplace")
            err = proc.stderr.decode("utf-8", "backslashreplace")
        return RunResult(rc, out, err, round(time.perf_counter() - t0, 2))


def _run_in_process(argv: list[str], env: dict[str, str], cwd: Path | None) -> tuple[int, str, str]:
    from lrpo.cli import main

    # streams as a UTF-8 terminal has them: stdout strict, stderr backslashreplace (Python's defaults)
    out_buf, err_buf = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_buf, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_buf, encoding="utf-8", errors="backslashreplace", write_through=True)
    saved_env = {k: os.environ.get(k) for k in env}
    saved_cwd = os.getcwd()
    saved_streams = sys.stdout, sys.stderr
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cwd is not None:
            os.chdir(cwd)
        sys.stdout, sys.stderr = out, err
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 -- what the interpreter would print for an uncaught error
            err.write(traceback.format_exc())
            rc = 1
    finally:
        sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out.flush()
    err.flush()
    return int(rc or 0), out_buf.getvalue().decode("utf-8", "backslashreplace"), err_buf.getvalue().decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------------------------
# the commands
# ----------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What the commands share: the tiny checkpoint, the YuNet folder (None: no photo mode)."""

    checkpoint: Path
    detector_dir: Path | None


def _tiny_policy_overrides() -> list[str]:
    return [
        f"data.resolution={MODEL_SIZE}", f"policy.resolution={MODEL_SIZE}", "policy.base_channels=8", "policy.channel_mults=[1,2]",
        "policy.stage1_channels=8", "policy.stage1_blocks=1", "degradation.kernel_size=7", "batch_size=2", "val_steps=2",
        "val_every=0", "log_every=1", "ckpt_every=2", "keep_last=1", "optim.warmup_steps=0", "device=cpu",
    ]


def pretrain_argv(hq: Path, out: Path, steps: int = 2, skip_bad: bool = False) -> list[str]:
    return ["pretrain", "--no-progress", f"data.hq={hq}", f"out_dir={out}", "data.val_count=1", f"steps={steps}",
            *_tiny_policy_overrides(), *(["data.skip_bad=true"] if skip_bad else [])]


def train_argv(hq: Path, out: Path, checkpoint: Path, skip_bad: bool = False, *extra: str) -> list[str]:
    return ["train", "--no-progress", "--eval-every", "0", f"init_checkpoint={checkpoint}", f"data.hq={hq}", f"out_dir={out}",
            "device=cpu", "reward.device=cpu", "epochs=1", "group_size=2", "groups_per_epoch=1", "rollout_groups_per_batch=1",
            "sample_steps=2", "minibatch_size=2", "train_fraction=1", "reg_weight=0", f"data.resolution={MODEL_SIZE}",
            "data.val_count=1", "degradation.kernel_size=7", "reward.preset=", "reward.terms={brightness: {weight: 1.0}}",
            *(["data.skip_bad=true"] if skip_bad else []), *extra]


@dataclass
class Command:
    """How one command is run on a folder and where each input's output lands.

    argv(input, out, context, skip_bad) -> the arguments after ``lrpo``.
    whole: the command fails as a whole on a bad input without its skip flag (no files may be left);
    has_skip: it has a flag that skips bad inputs instead (--skip-bad, data.skip_bad=true).
    """

    name: str
    argv: Callable[[Path, Path, Context, bool], list[str]]
    outputs: Callable[[Path, str], list[Path]] | None  # (out, stem) -> files an input makes; None: no per-input file
    whole: bool = True
    has_skip: bool = True
    keeps_size: bool = False  # outputs have their input's size (then EXIF rotation can be checked)
    needs_detector: bool = False
    per_item_rows: Callable[[Path], set[str]] | None = None  # names an output table holds (evaluate)
    # (the folder holding the item and the good faces, the item or None for the mixed run) -> what
    # the command is given; None: the folder itself
    source: Callable[[Path, "Item | None"], Path] | None = None
    mixed: bool = True  # also run on the folder of every item


def _image_entries(folder: Path) -> list[Path]:
    from lrpo.data.images import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _as_paired(folder: Path, item: Item | None) -> Path:
    """A paired set: the folder's files as lq/ (a link to the folder), a good face as hq/<stem>.png for each."""
    root = folder.parent / "paired"
    (root / "hq").mkdir(parents=True, exist_ok=True)
    os.symlink(folder, root / "lq")
    for i, p in enumerate(_image_entries(folder)):
        Image.fromarray(synthetic_face(500 + i)).save(root / "hq" / f"{p.stem}.png")
    return root


def _as_method_folder(folder: Path, item: Item | None) -> Path:
    """The folder as another method's outputs; a good LQ face of the same stem for each (beside it, lq/)."""
    lq = folder.parent / "lq"
    lq.mkdir(exist_ok=True)
    for i, p in enumerate(_image_entries(folder)):
        Image.fromarray(synthetic_face(600 + i)).save(lq / f"{p.stem}.png")
    return folder


def _the_file(folder: Path, item: Item | None) -> Path:
    return folder / item.name


def _as_list_file(folder: Path, item: Item | None) -> Path:
    """A text file naming the folder's files (relative to the list), one per line."""
    listing = folder.parent / "inputs.txt"
    names = [os.fsencode(p.name) for p in _image_entries(folder)]
    listing.write_bytes(b"# inputs\n" + b"".join(b"in/" + n + b"\n" for n in names))
    return listing


def _evaluate_argv(*data: str) -> Callable[[Path, Path, Context, bool], list[str]]:
    def argv(i: Path, o: Path, c: Context, skip: bool) -> list[str]:
        given = [str(a).replace("{in}", str(i)).replace("{lq}", str(i.parent / "lq")) for a in data]
        method = ["--method", f"tiny=ckpt:{c.checkpoint}"] if "folder:" not in " ".join(given) else []
        return ["evaluate", *given, *method, "--steps", "2", "--out", str(o), "--device", "cpu", "--reward-preset", "none",
                "--no-progress"]

    return argv


def _restore_argv(aligned: bool = True) -> Callable[[Path, Path, Context, bool], list[str]]:
    def argv(i: Path, o: Path, c: Context, skip: bool) -> list[str]:
        mode = ["--aligned"] if aligned else ["--detector", str(c.detector_dir)]
        return ["restore", str(i), str(o), "--checkpoint", str(c.checkpoint), *mode, "--steps", "2", "--device", "cpu",
                "--no-progress"]

    return argv


def _csv_names(out: Path) -> set[str]:
    path = out / "per_image.csv"
    if not path.is_file():
        return set()
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {row["name"] for row in csv.DictReader(f)}


COMMANDS: list[Command] = [
    Command("degrade", lambda i, o, c, s: ["degrade", str(i), str(o), "--size", str(MODEL_SIZE), "--preset", "mild",
                                           "--no-progress", *(["--skip-bad"] if s else [])],
            lambda o, stem: [o / "hq" / f"{stem}.png", o / "lq" / f"{stem}.png"]),
    Command("restore-aligned", _restore_argv(), lambda o, stem: [o / f"{stem}.png"], whole=False, has_skip=False, keeps_size=True),
    Command("restore-photo", _restore_argv(aligned=False), lambda o, stem: [o / "restored_imgs" / f"{stem}.png"], whole=False,
            has_skip=False, keeps_size=True, needs_detector=True),
    Command("restore-file", _restore_argv(), lambda o, stem: [o / f"{stem}.png"], whole=False, has_skip=False, keeps_size=True,
            source=_the_file, mixed=False),
    Command("restore-list", _restore_argv(), lambda o, stem: [o / f"{stem}.png"], whole=False, has_skip=False, keeps_size=True,
            source=_as_list_file),
    Command("pretrain", lambda i, o, c, s: pretrain_argv(i, o, skip_bad=s), None),
    Command("train", lambda i, o, c, s: train_argv(i, o, c.checkpoint, s), None),
    Command("evaluate", _evaluate_argv("--lq", "{in}"), None, has_skip=False, per_item_rows=_csv_names),
    Command("evaluate-paired", _evaluate_argv("--paired", "{in}"), None, has_skip=False, per_item_rows=_csv_names, source=_as_paired),
    Command("evaluate-folder", _evaluate_argv("--lq", "{lq}", "--method", "other=folder:{in}"), None, has_skip=False,
            per_item_rows=_csv_names, source=_as_method_folder),
]
COMMAND_NAMES = [c.name for c in COMMANDS]


# ----------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    command: str
    item: str
    run: str  # "strict" (the item beside good faces) or "mixed" (every item in one folder)
    status: str  # clear error | processed | crash | refused | partial output | not applicable
    detail: str
    rc: int | None = None
    seconds: float = 0.0


FAILURES = ("crash", "refused", "partial output")


def _spellings(name: str) -> set[str]:
    """How a file name can appear in a message: as is, with escapes (stderr's backslashreplace,
    repr) -- names that are not UTF-8 cannot appear as is."""
    forms = {name, name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
             name.encode("utf-8", "backslashreplace").decode("ascii")}
    forms.add(repr(name)[1:-1])
    return forms


def naming_line(text: str, words: set[str]) -> str | None:
    """The first line of ``text`` that holds one of ``words``."""
    for line in text.splitlines():
        if any(w in line for w in words):
            return line.strip()
    return None


def has_traceback(result: RunResult) -> bool:
    return "Traceback (most recent call last)" in result.stderr or "Traceback (most recent call last)" in result.stdout


def _image_ok(path: Path) -> str:
    """'' if ``path`` is a complete, decodable image, else what is wrong with it."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file"
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # noqa: BLE001 -- any failure means a damaged output
        return f"undecodable ({type(e).__name__}: {e})"
    return ""


def damaged_outputs(out: Path) -> list[str]:
    """Zero-byte or undecodable files, and work folders, anywhere under ``out``."""
    found = []
    if not out.exists():
        return found
    for p in sorted(out.rglob("*")):
        rel = os.fsdecode(p.relative_to(out))
        if p.is_dir():
            if p.name.startswith(".partial") or p.name.endswith(".tmp"):
                found.append(f"{rel}: work folder left behind")
            continue
        if p.stat().st_size == 0 and p.suffix.lower() != ".jsonl":  # an empty .jsonl is a log of nothing (no face found)
            found.append(f"{rel}: zero-byte file")
        elif p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            problem = _image_ok(p)
            if problem:
                found.append(f"{rel}: {problem}")
    return found


def files_under(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()] if out.exists() else []


def classify(cmd: Command, item: Item, result: RunResult, out: Path, run: str) -> tuple[str, str]:
    """(status, detail) of one item in one run of ``cmd`` (see the module docstring)."""
    damaged = damaged_outputs(out)
    if has_traceback(result):
        last = (result.stderr or result.stdout).strip().splitlines()[-1]
        return "crash", f"traceback: {last}"
    if damaged:
        return "partial output", "; ".join(damaged[:3])
    if item.valid:
        return _classify_valid(cmd, item, result, out, run)
    return _classify_bad(cmd, item, result, out, run)


def _classify_valid(cmd: Command, item: Item, result: RunResult, out: Path, run: str) -> tuple[str, str]:
    said = naming_line(result.stderr + "\n" + result.stdout, _spellings(item.name))
    # a command that skips bad files exits 1 when it skipped any (restore); its outputs tell
    skipped_others = not cmd.whole and run == "mixed"
    if result.rc != 0 and not skipped_others:
        left = files_under(out) if cmd.whole else []
        if left:
            return "partial output", f"exit {result.rc} and {len(left)} file(s) left, e.g. {os.fsdecode(left[0].relative_to(out))}"
        if cmd.name in item.may_refuse and said:
            return "clear error", said
        return "refused", f"exit {result.rc}: {said or _last_line(result)}"
    if cmd.outputs is not None:
        files = cmd.outputs(out, item.stem)
        missing = [os.fsdecode(p.relative_to(out)) for p in files if not p.is_file()]
        if missing:
            return "refused", f"no output {missing[0]}" + (f" ({said})" if said else "")
        if cmd.keeps_size and item.shown_size is not None:
            with Image.open(files[0]) as img:
                if img.size != item.shown_size:
                    (w, h), (sw, sh) = img.size, item.shown_size
                    return "refused", f"output is {w}x{h}, the input as shown (EXIF orientation applied) is {sw}x{sh}"
        return "processed", f"wrote {os.fsdecode(files[0].relative_to(out))}"
    if cmd.per_item_rows is not None:
        if item.stem not in cmd.per_item_rows(out):
            return "refused", "no row in per_image.csv"
        return "processed", "scored in per_image.csv"
    if said and "skip" in said.lower():
        return "refused", said
    return "processed", "read into the training set (exit 0)"


def _classify_bad(cmd: Command, item: Item, result: RunResult, out: Path, run: str) -> tuple[str, str]:
    said = naming_line(result.stderr + "\n" + result.stdout, _spellings(item.name))
    if said is None:
        return "crash", f"exit {result.rc}, no message names {item.name!r}: {_last_line(result)}"
    if len(said) < len(item.name) + 12:
        return "crash", f"the message names the file but not what is wrong: {said}"
    if cmd.outputs is not None and any(p.exists() for p in cmd.outputs(out, item.stem)):
        return "partial output", f"an output was written for the bad item: {said}"
    if result.rc == 0 and not any(w in said.lower() for w in ("skip", "cannot", "unreadable")):
        return "crash", f"exit 0 and the message does not say it was skipped: {said}"
    if result.rc != 0 and cmd.whole and not (run == "mixed" and cmd.has_skip):
        left = files_under(out)
        if left:
            return "partial output", f"failed but left {len(left)} file(s), e.g. {os.fsdecode(left[0].relative_to(out))}"
    if result.rc != 0 and len(result.stderr.strip().splitlines()) > 1 and cmd.whole:
        return "crash", f"more than one line on stderr: {result.stderr.strip()[:200]}"
    return "clear error", said


def _last_line(result: RunResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip() or "(no output)").splitlines()
    return lines[-1][:200]


# ----------------------------------------------------------------------------------------------
# the sweeps
# ----------------------------------------------------------------------------------------------
def prepare_context(root: Path, runner: Runner, detector_dir: Path | None) -> Context:
    """Pretrain the tiny checkpoint every restore/train/evaluate run uses (4 steps, once)."""
    faces = root / "ckpt_faces"
    write_good(faces, [f"face_{i:02d}.png" for i in range(6)], seed=200)
    run = root / "ckpt_run"
    result = runner(pretrain_argv(faces, run, steps=4))
    if result.rc != 0:
        raise RuntimeError(f"the tiny pretraining run failed (exit {result.rc}): {result.stderr.strip()[-2000:]}")
    return Context(checkpoint=run, detector_dir=detector_dir)


def sweep_images(root: Path, runner: Runner, ctx: Context, commands: list[Command], items: list[Item],
                 mixed: bool = True, log=print) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for cmd in commands:
        if cmd.needs_detector and ctx.detector_dir is None:
            outcomes += [Outcome(cmd.name, it.key, "strict", "not applicable", "no YuNet file (--weights)") for it in items]
            continue
        for item in items:
            folder = root / "strict" / cmd.name / item.key
            note = place(item, folder / "in")
            write_good(folder / "in")
            if note:
                outcomes.append(Outcome(cmd.name, item.key, "strict", "not applicable", note))
                continue
            given = cmd.source(folder / "in", item) if cmd.source else folder / "in"
            result = runner(cmd.argv(given, folder / "out", ctx, False))
            status, detail = classify(cmd, item, result, folder / "out", "strict")
            outcomes.append(Outcome(cmd.name, item.key, "strict", status, detail, result.rc, result.seconds))
            log(_row(outcomes[-1]))
        if mixed and cmd.mixed:
            outcomes += _mixed_run(root, runner, ctx, cmd, items, log)
    return outcomes


def _mixed_run(root: Path, runner: Runner, ctx: Context, cmd: Command, items: list[Item], log) -> list[Outcome]:
    """Every item and the good faces in one folder, with the command's skip flag."""
    folder = root / "mixed" / cmd.name
    notes = {it.key: place(it, folder / "in") for it in items}
    goods = write_good(folder / "in")
    given = cmd.source(folder / "in", None) if cmd.source else folder / "in"
    result = runner(cmd.argv(given, folder / "out", ctx, True))
    if not cmd.has_skip and cmd.whole:
        return [_stopped_at_first_bad(cmd, items, notes, result, folder / "out", log)]
    outcomes = []
    good_items = [Item(p.stem, p.name, True, lambda p: None, "good face") for p in goods]
    for item in items + good_items:
        if notes.get(item.key):
            outcomes.append(Outcome(cmd.name, item.key, "mixed", "not applicable", notes[item.key]))
            continue
        status, detail = classify(cmd, item, result, folder / "out", "mixed")
        outcomes.append(Outcome(cmd.name, item.key, "mixed", status, detail, result.rc, result.seconds))
        log(_row(outcomes[-1]))
    return outcomes


def _stopped_at_first_bad(cmd: Command, items: list[Item], notes: dict[str, str], result: RunResult, out: Path, log) -> Outcome:
    """A command without a skip flag on the mixed folder: one outcome, a clear error naming one of
    the bad items (the first it met), no traceback, no files left."""
    bad = [it for it in items if not it.valid and not notes.get(it.key)]
    status, detail = "clear error", ""
    if has_traceback(result):
        status, detail = "crash", f"traceback: {_last_line(result)}"
    elif result.rc == 0:
        status, detail = "crash", f"exit 0 with {len(bad)} bad file(s) in the folder"
    elif files_under(out):
        status, detail = "partial output", f"failed but left {len(files_under(out))} file(s) in {out.name}/"
    else:
        named = [it for it in bad if naming_line(result.stderr, _spellings(it.name))]
        if not named or len(result.stderr.strip().splitlines()) != 1:
            status, detail = "crash", f"no single line names a bad file: {_last_line(result)}"
        else:
            detail = f"stops at {named[0].name}: {result.stderr.strip()}"
    outcome = Outcome(cmd.name, "(every item in one folder)", "mixed", status, detail, result.rc, result.seconds)
    log(_row(outcome))
    return outcome


@dataclass
class ConfigCase:
    """A bad setting: ``argv`` (from the case folder, the tiny checkpoint and a good face folder),
    the environment it needs, and the words the one-line error must hold."""

    key: str
    command: str
    argv: Callable[[Path, Context, Path], list[str]]
    words: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path, Context], None] | None = None


def _yaml_file(text: str) -> Callable[[Path, Context], None]:
    return lambda case, ctx: (case / "cfg.yaml").write_text(text)


def _nan_npz(key: str, value: float) -> Callable[[Path, Context], None]:
    """FID reference statistics (mu [D], sigma [D, D]) with one ``value`` in ``key``, and a tiny
    stand-in Inception whose D they match (FID is computed only with an Inception file)."""

    def setup(case: Path, ctx: Context) -> None:
        from lrpo.standins import write_standin

        inception = write_standin("inception-fid", case, scale="tiny")
        dim = _inception_dim(inception)
        stats = {"mu": np.zeros(dim), "sigma": np.eye(dim)}
        stats[key].flat[0] = value
        np.savez(case / "ref.npz", **stats)

    return setup


def _inception_dim(path: Path) -> int:
    from lrpo.eval.fid import InceptionFeatures

    return InceptionFeatures.from_file(path).feature_dim


def _pre(*extra: str) -> Callable[[Path, Context, Path], list[str]]:
    return lambda case, ctx, faces: pretrain_argv(faces, case / "out") + list(extra)


def _train(*extra: str) -> Callable[[Path, Context, Path], list[str]]:
    return lambda case, ctx, faces: train_argv(faces, case / "out", ctx.checkpoint, False, *extra)


def _eval(*extra: str) -> Callable[[Path, Context, Path], list[str]]:
    return lambda case, ctx, faces: ["evaluate", "--lq", str(faces), "--method", f"tiny=ckpt:{ctx.checkpoint}", "--steps", "2",
                                     "--out", str(case / "out"), "--device", "cpu", "--reward-preset", "none", "--no-progress",
                                     *extra]


def _restore(*extra: str) -> Callable[[Path, Context, Path], list[str]]:
    return lambda case, ctx, faces: ["restore", str(faces), str(case / "out"), "--checkpoint", str(ctx.checkpoint), "--aligned",
                                     "--device", "cpu", "--no-progress", *extra]


CONFIG_CASES: list[ConfigCase] = [
    ConfigCase("unknown key (override)", "pretrain", _pre("optim.learnig_rate=1e-3"), ("optim.learnig_rate",)),
    ConfigCase("unknown key (YAML file)", "pretrain", lambda c, x, f: pretrain_argv(f, c / "out") + ["--config", str(c / "cfg.yaml")],
               ("resolutoin",), setup=_yaml_file("data:\n  resolutoin: 16\n")),
    ConfigCase("wrong type (override)", "pretrain", _pre("steps=ten"), ("steps", "integer")),
    ConfigCase("wrong type (list for int)", "pretrain", _pre("batch_size=[2]"), ("batch_size",)),
    ConfigCase("wrong type (YAML file)", "pretrain", lambda c, x, f: pretrain_argv(f, c / "out") + ["--config", str(c / "cfg.yaml")],
               ("optim.lr", "number"), setup=_yaml_file("optim:\n  lr: fast\n")),
    ConfigCase("section given a value", "pretrain", _pre("optim=3"), ("optim", "mapping")),
    ConfigCase("negative count", "pretrain", _pre("steps=-5"), ("steps", ">= 1")),
    ConfigCase("negative val_count", "pretrain", _pre("data.val_count=-1"), ("data.val_count", ">= 0")),
    ConfigCase("val_count leaves nothing", "pretrain", _pre("data.val_count=3"), ("val_count=3",)),
    ConfigCase("NaN learning rate", "pretrain", _pre("optim.lr=.nan"), ("optim.lr",)),
    ConfigCase("unknown key (override)", "train", _train("group_sz=4"), ("group_sz",)),
    ConfigCase("wrong type", "train", _train("group_size=2.5"), ("group_size", "integer")),
    ConfigCase("negative count", "train", _train("groups_per_epoch=-1"), ("groups_per_epoch", ">= 1")),
    ConfigCase("negative epochs", "train", _train("epochs=-3"), ("epochs", ">= 1")),
    ConfigCase("group size 1", "train", _train("group_size=1"), ("group_size", ">= 2")),
    ConfigCase("groups not divisible by WORLD_SIZE=2", "train", _train("groups_per_epoch=3"), ("groups_per_epoch=3", "WORLD_SIZE=2"),
               env={"WORLD_SIZE": "2", "RANK": None}),  # no RANK: were the check missing, the run would fail, not wait for rank 1
    ConfigCase("WORLD_SIZE not a number", "train", _train(), ("WORLD_SIZE",), env={"WORLD_SIZE": "two"}),
    ConfigCase("WORLD_SIZE=2 without RANK", "train", _train("groups_per_epoch=2"), ("RANK",), env={"WORLD_SIZE": "2", "RANK": None}),
    ConfigCase("init_checkpoint missing", "train", lambda c, x, f: train_argv(f, c / "out", c / "nowhere"), ("nowhere",)),
    ConfigCase("steps 0", "evaluate", _eval("--steps", "0"), ("steps", "0")),
    ConfigCase("batch size -1", "evaluate", _eval("--batch-size", "-1"), ("--batch-size",)),
    ConfigCase("resolution 8", "evaluate", _eval("--resolution", "8"), ("resolution", "16")),
    ConfigCase("limit 0", "evaluate", _eval("--limit", "0"), ("limit",)),
    ConfigCase("bad --method", "evaluate", _eval("--method", "nonsense"), ("nonsense",)),
    ConfigCase("NaN in FID mu (.npz)", "evaluate",
               lambda c, x, f: _eval("--fid-ref", str(c / "ref.npz"), "--inception", str(c / "pt_inception-2015-12-05-6726825d.pth"))(c, x, f),
               ("ref.npz",), setup=_nan_npz("mu", float("nan"))),
    ConfigCase("inf in FID sigma (.npz)", "evaluate",
               lambda c, x, f: _eval("--fid-ref", str(c / "ref.npz"), "--inception", str(c / "pt_inception-2015-12-05-6726825d.pth"))(c, x, f),
               ("ref.npz",), setup=_nan_npz("sigma", float("inf"))),
    ConfigCase("steps 0", "restore", _restore("--steps", "0"), ("--steps",)),
    ConfigCase("batch size 0", "restore", _restore("--batch-size", "0"), ("--batch-size",)),
    ConfigCase("eta -1", "restore", _restore("--eta", "-1"), ("--eta",)),
    ConfigCase("checkpoint missing", "restore", lambda c, x, f: ["restore", str(f), str(c / "out"), "--checkpoint", str(c / "nowhere"),
                                                                   "--aligned", "--no-progress"], ("nowhere",)),
    ConfigCase("size 0", "degrade", lambda c, x, f: ["degrade", str(f), str(c / "out"), "--size", "0", "--no-progress"], ("size",)),
    ConfigCase("input folder missing", "degrade", lambda c, x, f: ["degrade", str(c / "nothing"), str(c / "out"), "--no-progress"],
               ("nothing",)),
]


def sweep_configs(root: Path, runner: Runner, ctx: Context, cases: list[ConfigCase], log=print) -> list[Outcome]:
    faces = root / "config_faces"
    write_good(faces, [f"face_{i:02d}.png" for i in range(3)], seed=300)
    outcomes = []
    for i, case in enumerate(cases):
        folder = root / "configs" / f"{i:02d}"
        folder.mkdir(parents=True)
        if case.setup is not None:
            case.setup(folder, ctx)
        result = runner(case.argv(folder, ctx, faces), env=case.env)
        status, detail = classify_config(case, result, folder / "out")
        outcomes.append(Outcome(case.command, case.key, "config", status, detail, result.rc, result.seconds))
        log(_row(outcomes[-1]))
    return outcomes


def classify_config(case: ConfigCase, result: RunResult, out: Path) -> tuple[str, str]:
    lines = result.stderr.strip().splitlines()
    if has_traceback(result):
        return "crash", f"traceback: {lines[-1] if lines else ''}"
    if result.rc == 0:
        return "crash", f"accepted (exit 0): {_last_line(result)}"
    if files_under(out):
        return "partial output", f"failed but left {len(files_under(out))} file(s) in the output folder"
    text = "\n".join(lines)
    missing = [w for w in case.words if w not in text]
    if missing or len(lines) != 1:
        return "crash", f"expected one line holding {list(case.words)}: {text[:300]}"
    return "clear error", lines[0]


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _row(o: Outcome) -> str:
    detail = o.detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{o.command:16s} {o.run:7s} {o.item[:38]:38s} {o.status:15s} {detail[:150]}"


def totals(outcomes: list[Outcome]) -> dict[str, int]:
    tried = [o for o in outcomes if o.status != "not applicable"]
    count = {s: sum(o.status == s for o in outcomes) for s in ("clear error", "processed", "crash", "refused", "partial output",
                                                                "not applicable")}
    return {"inputs tried": len(tried), "clear errors": count["clear error"], "processed": count["processed"],
            "crashes": count["crash"], "refused valid inputs": count["refused"], "partial outputs": count["partial output"],
            "not applicable": count["not applicable"]}


def sweep(root: Path, runner: Runner, commands: list[Command], items: list[Item], detector_dir: Path | None,
          configs: bool = True, mixed: bool = True, log=print) -> list[Outcome]:
    ctx = prepare_context(root, runner, detector_dir)
    outcomes = sweep_images(root, runner, ctx, commands, items, mixed=mixed, log=log)
    if configs:
        outcomes += sweep_configs(root, runner, ctx, CONFIG_CASES, log=log)
    return outcomes


def _default_detector_dir() -> Path | None:
    dirs = [Path(p) for p in os.environ.get("LRPO_WEIGHTS", "").split(os.pathsep) if p] + [ROOT.parent / "shared" / "weights"]
    return next((d for d in dirs if (d / "face_detection_yunet_2023mar.onnx").is_file()), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", nargs="+", choices=COMMAND_NAMES, default=COMMAND_NAMES)
    ap.add_argument("--items", nargs="+", choices=ITEM_KEYS, default=ITEM_KEYS)
    ap.add_argument("--no-configs", action="store_true", help="leave out the bad configs, flags and settings")
    ap.add_argument("--no-mixed", action="store_true", help="leave out the runs with every item in one folder")
    ap.add_argument("--in-process", action="store_true", help="call lrpo.cli.main here instead of a subprocess per run")
    ap.add_argument("--weights", type=Path, default=None, help="folder holding the YuNet ONNX file (restore without --aligned)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    commands = [c for c in COMMANDS if c.name in args.commands]
    items = [it for it in ITEMS if it.key in args.items]
    root = Path(tempfile.mkdtemp(prefix="lrpo_bad_inputs_"))
    runner = Runner(args.in_process, env={"LRPO_CACHE": str(root / "cache"), "LRPO_WEIGHTS": ""})
    if args.in_process:
        import torch

        torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        outcomes = sweep(root, runner, commands, items, args.weights or _default_detector_dir(),
                         configs=not args.no_configs, mixed=not args.no_mixed)
    finally:
        make_writable(root)
        shutil.rmtree(root, ignore_errors=True)
    summary = totals(outcomes)
    print()
    for k, v in summary.items():
        print(f"{k:22s} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"totals": summary, "seconds": round(time.perf_counter() - t0, 1), "runner": "in-process" if args.in_process else "subprocess",
              "root_was_euid_0": hasattr(os, "geteuid") and os.geteuid() == 0, "outcomes": [asdict(o) for o in outcomes]}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if any(o.status in FAILURES for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
