"""Captions from the release's archive (issue 24 item 5): ``data.captions=ffhq_captions.tar.gz`` and
``lrpo evaluate --captions`` read the archive's NAME.txt members in place, extracting nothing."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lrpo.data.captions import MAX_CAPTION_BYTES, CaptionError, Captions, read_caption_table


def _archive(path: Path, members: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def test_release_layout_is_read_in_place(tmp_path, monkeypatch):
    path = _archive(tmp_path / "ffhq_captions.tar.gz", {
        "ffhq_captions/00000.txt": b"a young woman with long brown hair, smiling\n",
        "ffhq_captions/00017.txt": "an old man with a white beard \u00e9\n".encode(),
        "ffhq_captions/README.md": b"not a caption",
        "ffhq_captions/._00000.txt": b"\x00\x05\x16\x07 macOS metadata",
        "../../escape.txt": b"a member whose name points outside",
    }, links={"ffhq_captions/link.txt": "/etc/passwd"})
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    table = read_caption_table(path)
    # members by stem; README, the ._ companion and the link are passed over; nothing is written
    assert table == {"00000": "a young woman with long brown hair, smiling", "00017": "an old man with a white beard \u00e9",
                     "escape": "a member whose name points outside"}
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path.parent.parent / "escape.txt").exists()
    caps = Captions.from_sources(path)
    assert caps.lookup(tmp_path / "faces" / "00017.png") == "an old man with a white beard \u00e9"
    assert caps.lookup(tmp_path / "faces" / "00001.png") is None


def test_plain_tar_and_tgz(tmp_path):
    for name, mode in (("c.tar", "w"), ("c.tgz", "w:gz")):
        assert read_caption_table(_archive(tmp_path / name, {"a.txt": b"x"}, mode)) == {"a": "x"}


@pytest.mark.parametrize("members, words", [
    ({"a/1.txt": b"one", "b/1.txt": b"two"}, "members 'a/1.txt' and 'b/1.txt' both caption '1'"),
    ({"1.txt": b"  \n"}, "member '1.txt' holds an empty caption"),
    ({"1.txt": b"x" * (MAX_CAPTION_BYTES + 1)}, f"member '1.txt' holds {MAX_CAPTION_BYTES + 1} bytes"),
    ({"notes.md": b"x"}, "holds no NAME.txt members"),
])
def test_archive_errors_name_the_archive_and_member(tmp_path, members, words):
    path = _archive(tmp_path / "caps.tar.gz", members)
    with pytest.raises(CaptionError) as err:
        read_caption_table(path)
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_not_an_archive_is_one_line(tmp_path):
    path = tmp_path / "caps.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(64))  # a gzip header, then garbage
    with pytest.raises(CaptionError, match=r"captions archive .*caps\.tar\.gz cannot be read as a tar\(\.gz\) archive"):
        read_caption_table(path)
