"""bench/bad_inputs.py on a reduced corpus, through the same code: no crash, no valid input refused,
no partial output; plus the loader, config and launcher checks the sweep led to.

The image sweeps call ``lrpo.cli.main`` in this process with byte streams as a UTF-8 terminal has
them (stdout strict, stderr backslashreplace); the slow test runs a few real subprocesses.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from lrpo.config import ConfigError, from_dict, launcher_world_size
from lrpo.rl.config import LRPOConfig
from lrpo.data.images import ImageLoadError, list_images, load_rgb

from tests.conftest import single_thread

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench():
    if "bad_inputs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bad_inputs", BENCH / "bad_inputs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bad_inputs"] = module
        spec.loader.exec_module(module)
    return sys.modules["bad_inputs"]


bi = _bench()
QUIET = lambda line: None  # noqa: E731
# every broken kind and the odd valid ones most likely to break a loader
REDUCED = ["empty", "truncated_png", "text_as_png", "bomb_png", "no_permission", "symlink_loop", "bad_non_utf8_name",
           "jpeg_as_png", "cmyk_jpeg", "gray16_png", "gray_alpha_png", "animated_gif", "exif_rotated", "non_utf8_name"]


def _items(keys):
    return [it for it in bi.ITEMS if it.key in keys]


def _failures(outcomes) -> str:
    return "\n".join(bi._row(o) for o in outcomes if o.status in bi.FAILURES)


def _by_key(outcomes) -> dict[tuple[str, str, str], object]:
    return {(o.command, o.run, o.item): o for o in outcomes}


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
    """(root, runner, context): the tiny 4-step checkpoint every restore/train/evaluate run uses."""
    root = tmp_path_factory.mktemp("bad_inputs")
    runner = bi.Runner(in_process=True, env={"LRPO_CACHE": str(root / "cache"), "LRPO_WEIGHTS": ""})
    with single_thread():
        ctx = bi.prepare_context(root, runner, None)
    yield root, runner, ctx
    bi.make_writable(root)


def test_image_corpus_through_degrade_and_restore(sweep_env):
    root, runner, ctx = sweep_env
    commands = [c for c in bi.COMMANDS if c.name in ("degrade", "restore-aligned", "restore-list")]
    with single_thread():
        outcomes = bi.sweep_images(root / "images", runner, ctx, commands, _items(REDUCED), log=QUIET)
    assert not _failures(outcomes), _failures(outcomes)
    got = _by_key(outcomes)
    # every item was tried by every command, strict and mixed (good faces beside the bad ones too)
    for cmd in ("degrade", "restore-aligned", "restore-list"):
        for key in REDUCED:
            assert got[(cmd, "strict", key)].status in ("clear error", "processed", "not applicable"), (cmd, key)
        assert got[(cmd, "mixed", "zgood_00")].status == "processed"
    # regressions: each was a crash, a silently dropped file or a refused valid one before
    bomb = got[("degrade", "strict", "bomb_png")]
    assert bomb.status == "clear error" and "too many pixels" in bomb.detail  # was DecompressionBombError, a traceback
    loop = got[("degrade", "mixed", "symlink_loop")]
    assert loop.status == "clear error" and "symbolic link loop" in loop.detail  # was left out of the folder unseen
    assert got[("degrade", "mixed", "animated_gif")].status == "processed"  # .gif was not an image extension
    # a name that is not UTF-8, printed in the skip list (was UnicodeEncodeError after the set was written)
    assert got[("degrade", "mixed", "bad_non_utf8_name")].status == "clear error"
    assert "\\udcff" in got[("degrade", "mixed", "bad_non_utf8_name")].detail
    # a list file naming such a file (was "not a text file listing image paths")
    assert got[("restore-list", "strict", "non_utf8_name")].status == "processed"
    exif = got[("restore-aligned", "strict", "exif_rotated")]
    assert exif.status == "processed"  # and at the size shown once rotated, 24 x 32 (checked by the sweep)
    perm = got[("degrade", "strict", "no_permission")]
    assert perm.status == ("not applicable" if os.geteuid() == 0 else "clear error"), perm


def test_evaluate_odd_first_images_and_names(sweep_env):
    root, runner, ctx = sweep_env
    commands = [c for c in bi.COMMANDS if c.name == "evaluate"]
    with single_thread():
        outcomes = bi.sweep_images(root / "evaluate", runner, ctx, commands, _items(["one_pixel", "non_utf8_name", "bomb_png"]),
                                   mixed=False, log=QUIET)
    assert not _failures(outcomes), _failures(outcomes)
    got = _by_key(outcomes)
    # a 1x1 first image set the resolution to 1 and failed inside SSIM without naming a file
    assert "one_pixel.png: 1x1 is too small" in got[("evaluate", "strict", "one_pixel")].detail
    # per_image.csv could not hold a name that is not UTF-8: metrics.json was left without it
    assert got[("evaluate", "strict", "non_utf8_name")].status == "processed"


def test_training_commands_skip_and_name_bad_files(sweep_env):
    root, runner, ctx = sweep_env
    commands = [c for c in bi.COMMANDS if c.name in ("pretrain", "train")]
    items = _items(["empty", "symlink_loop", "bomb_png", "cmyk_jpeg"])
    with single_thread():
        outcomes = []
        for cmd in commands:
            outcomes += bi._mixed_run(root / "training", runner, ctx, cmd, items, QUIET)
    assert not _failures(outcomes), _failures(outcomes)
    got = _by_key(outcomes)
    # lrpo train with data.skip_bad=true left bad files out without a word; a link loop stopped both
    # commands (Path.resolve raised "Symlink loop from ...") although skip_bad was set
    for cmd in ("pretrain", "train"):
        assert got[(cmd, "mixed", "empty")].status == "clear error"
        assert got[(cmd, "mixed", "symlink_loop")].status == "clear error"
        assert got[(cmd, "mixed", "cmyk_jpeg")].status == "processed"


def test_bad_configs_flags_and_launcher_settings(sweep_env):
    root, runner, ctx = sweep_env
    with single_thread():
        outcomes = bi.sweep_configs(root / "configs_sweep", runner, ctx, bi.CONFIG_CASES, log=QUIET)
    assert not _failures(outcomes), _failures(outcomes)
    assert len(outcomes) == len(bi.CONFIG_CASES) and all(o.status == "clear error" for o in outcomes)
    got = {o.item: o.detail for o in outcomes if o.command in ("train", "evaluate")}
    # was: KeyError 'RANK' printed as "lrpo train: error: RANK" (or, with RANK set, a wait for rank 1)
    assert "groups_per_epoch=3 (global) is not divisible by WORLD_SIZE=2" in got["groups not divisible by WORLD_SIZE=2"]
    assert "RANK is not" in got["WORLD_SIZE=2 without RANK"]
    # was: "Eigenvalues did not converge" (NaN) or matmul warnings (inf), naming no file
    assert "ref.npz: 'mu' holds 1 NaN or infinite" in got["NaN in FID mu (.npz)"]
    assert "'sigma' holds 1 NaN or infinite" in got["inf in FID sigma (.npz)"]


# ----------------------------------------------------------------------------------------------
# the pieces, one at a time
# ----------------------------------------------------------------------------------------------
def test_header_claiming_more_pixels_than_the_limit_is_refused_before_decoding(tmp_path):
    # 10000 x 10000 = 100 MP: over Pillow's 89.5 MP limit, under the 179 MP at which Pillow itself
    # refuses; before, Pillow warned and then tried to decode
    path = tmp_path / "big.png"
    path.write_bytes(bi.header_only_png(10000, 10000))
    with pytest.raises(ImageLoadError, match=r"big.png: cannot read image \(10000x10000 is 100 megapixels, over the limit"):
        load_rgb(path)
    path.write_bytes(bi.header_only_png(20000, 20000))
    with pytest.raises(ImageLoadError, match="too many pixels"):
        load_rgb(path)


def test_link_loops_and_broken_links_are_listed_and_named(tmp_path):
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    (tmp_path / "folder.png").mkdir()  # a folder with an image's name is no input
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    assert [p.name for p in list_images(tmp_path)] == ["dangling.png", "loop.png", "ok.png"]
    with pytest.raises(ImageLoadError, match="symbolic link loop"):
        load_rgb(tmp_path / "loop.png")
    with pytest.raises(ImageLoadError, match="broken symbolic link to .*gone.png"):
        load_rgb(tmp_path / "dangling.png")
    with pytest.raises(FileNotFoundError, match=r"loop.png: neither a folder .* \(symbolic link loop\)"):
        list_images(tmp_path / "loop.png")


def test_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    # as root chmod 000 changes nothing, so the refusal is made by hand
    path = tmp_path / "face.png"
    Image.new("RGB", (4, 4)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageLoadError, match="face.png: cannot read image \\(permission denied"):
        load_rgb(path)


def test_broken_zlib_stream_is_a_load_error(tmp_path):
    # a PNG whose IDAT is not deflate data: Pillow may raise zlib.error, not an OSError
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    path = tmp_path / "bad_idat.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bi._chunk(b"IHDR", ihdr) + bi._chunk(b"IDAT", b"not deflate" * 4) + bi._chunk(b"IEND", b""))
    with pytest.raises(ImageLoadError, match="bad_idat.png"):
        load_rgb(path)


def test_animated_gif_is_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert list_images(tmp_path) == [tmp_path / "a.gif"]
    rgb = load_rgb(tmp_path / "a.gif")
    assert rgb.shape == (8, 8, 3) and rgb[..., 0].mean() > 150 > rgb[..., 1].mean()


def test_world_size_check_at_config_time(monkeypatch):
    raw = dict(init_checkpoint="runs/x", groups_per_epoch=3, group_size=2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launcher_world_size() == 1
    from_dict(LRPOConfig, raw).validate()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"groups_per_epoch=3 \(global\) is not divisible by WORLD_SIZE=2 .* such as 2 or 4"):
        from_dict(LRPOConfig, raw).validate()
    from_dict(LRPOConfig, {**raw, "groups_per_epoch": 4}).validate()
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("WORLD_SIZE", bad)
        with pytest.raises(ConfigError, match=f"WORLD_SIZE='{bad}' must be a positive integer"):
            launcher_world_size()


def test_world_size_without_rank_is_a_clear_error(monkeypatch):
    from lrpo.distributed import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 is set but RANK is not"):
        init_from_env()


def test_the_classifier_can_fail(tmp_path):
    """A traceback, a zero-byte output, an output for a bad item and a silent skip are all caught."""
    cmd = next(c for c in bi.COMMANDS if c.name == "restore-aligned")
    bad = next(it for it in bi.ITEMS if it.key == "empty")
    good = next(it for it in bi.ITEMS if it.key == "cmyk_jpeg")
    out = tmp_path / "out"
    out.mkdir()
    tb = bi.RunResult(1, "", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", 0.0)
    assert bi.classify(cmd, bad, tb, out, "strict")[0] == "crash"
    silent = bi.RunResult(0, "restored 2 image(s)\n", "", 0.0)
    assert bi.classify(cmd, bad, silent, out, "strict")[0] == "crash"
    assert bi.classify(cmd, good, silent, out, "strict")[0] == "refused"
    (out / "empty.png").write_bytes(b"")
    assert bi.classify(cmd, good, silent, out, "strict")[0] == "partial output"
    (out / "empty.png").write_bytes(zlib.compress(b"x"))
    named = bi.RunResult(1, f"skipping {tmp_path}/empty.png: cannot read image (empty file)\n", "", 0.0)
    assert bi.classify(cmd, bad, named, out, "strict") == ("partial output", "empty.png: undecodable (UnidentifiedImageError: "
                                                           f"cannot identify image file '{out / 'empty.png'}')")
    (out / "empty.png").unlink()
    assert bi.classify(cmd, bad, named, out, "strict")[0] == "clear error"


@pytest.mark.slow
def test_real_subprocesses(tmp_path):
    """The same sweep with each run a real ``python -m lrpo.cli`` process (what a user gets)."""
    runner = bi.Runner(in_process=False, env={"LRPO_CACHE": str(tmp_path / "cache"), "LRPO_WEIGHTS": ""})
    commands = [c for c in bi.COMMANDS if c.name in ("degrade", "restore-aligned")]
    items = _items(["bomb_png", "symlink_loop", "bad_non_utf8_name", "cmyk_jpeg", "non_utf8_name"])
    cases = [c for c in bi.CONFIG_CASES if c.key in ("groups not divisible by WORLD_SIZE=2", "group size 1")]
    try:
        outcomes = bi.sweep(tmp_path, runner, commands, items, None, configs=False, log=QUIET)
        ctx = bi.Context(tmp_path / "ckpt_run", None)
        outcomes += bi.sweep_configs(tmp_path, runner, ctx, cases, log=QUIET)
    finally:
        bi.make_writable(tmp_path)
    assert not _failures(outcomes), _failures(outcomes)
    assert sum(o.status == "processed" for o in outcomes) >= 8
