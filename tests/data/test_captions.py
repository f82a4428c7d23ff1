"""Captions: tables (CSV / JSONL), sidecar .txt files, the default, and the missing-caption report."""

from __future__ import annotations

import json

import pytest

from lrpo.data.captions import CaptionError, Captions, read_caption_table, require_captions, sidecar_path


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in names:
        p = folder / n
        p.write_bytes(b"")  # captions never open the image itself
        paths.append(p)
    return paths


def test_sidecar_path_replaces_the_extension(tmp_path):
    assert sidecar_path(tmp_path / "00017.png") == tmp_path / "00017.txt"
    assert sidecar_path("a/b.face.jpg").name == "b.face.txt"


def test_csv_table_keys_by_stem_and_keeps_commas(tmp_path):
    p = tmp_path / "caps.csv"
    p.write_text('name,caption\n00017.png,"a smiling woman, short hair"\n00018, an old man \n')
    assert read_caption_table(p) == {"00017": "a smiling woman, short hair", "00018": "an old man"}


def test_jsonl_table(tmp_path):
    p = tmp_path / "caps.jsonl"
    p.write_text(json.dumps({"name": "a.png", "caption": "x"}) + "\n\n" + json.dumps({"name": "b", "caption": "y"}) + "\n")
    assert read_caption_table(p) == {"a": "x", "b": "y"}


@pytest.mark.parametrize(
    "suffix, text, words",
    [
        (".csv", "file,text\na,b\n", "header row must name the columns 'name' and 'caption'"),
        (".csv", "name,caption\na,x\na.png,y\n", "caps.csv:3: 'a.png' already has a caption (line 2)"),
        (".csv", "name,caption\na,\n", "caps.csv:2: empty caption for 'a'"),
        (".csv", "name,caption\n", "holds no captions"),
        (".jsonl", '{"name": "a"}\n', "caps.jsonl:1: expected an object with keys 'name' and 'caption'"),
        (".jsonl", "{oops\n", "caps.jsonl:1: not valid JSON"),
        (".txt", "a,b\n", "unknown format '.txt'"),
    ],
)
def test_table_errors_name_the_file_and_line(tmp_path, suffix, text, words):
    p = tmp_path / f"caps{suffix}"
    p.write_text(text)
    with pytest.raises(CaptionError) as err:
        read_caption_table(p)
    assert words in str(err.value)


def test_missing_table_is_named(tmp_path):
    with pytest.raises(CaptionError, match=r"nope.csv does not exist"):
        Captions.from_sources(tmp_path / "nope.csv")


def test_order_table_then_sidecar_then_default(tmp_path):
    a, b, c = _images(tmp_path / "faces", ["a.png", "b.png", "c.png"])
    sidecar_path(a).write_text("sidecar a\n")
    sidecar_path(b).write_text("sidecar b")
    sidecar_path(c).write_text("   \n")  # an empty sidecar is no caption
    table = tmp_path / "t.csv"
    table.write_text("name,caption\nb.png,table b\n")
    assert Captions.from_sources(table).for_images([a, b, c]) == ["sidecar a", "table b", None]
    assert Captions.from_sources(table, default="a face").for_images([a, b, c]) == ["sidecar a", "table b", "a face"]
    assert Captions.from_sources(sidecars=False).for_images([a]) == [None]


def test_require_captions_lists_the_first_missing_and_the_ways_to_give_one(tmp_path):
    paths = _images(tmp_path / "faces", [f"{i:02d}.png" for i in range(8)])
    sidecar_path(paths[0]).write_text("ok")
    with pytest.raises(CaptionError) as err:
        require_captions(paths, Captions(), "reward term 'face_reward'", what="training images")
    msg = str(err.value)
    assert "reward term 'face_reward' needs a caption for every image, but 7 of 8 training images have none" in msg
    assert "01.png, 02.png, 03.png, 04.png, 05.png ... and 2 more" in msg
    assert "NAME.txt" in msg and "data.captions=FILE" in msg and "data.default_caption" in msg
    assert require_captions(paths, Captions(default="a face"), "x") == ["ok"] + ["a face"] * 7


def test_dotted_stems_and_spreadsheet_csv(tmp_path):
    # 'img.01' is a stem, not a name with extension '.01'; Excel's CSV starts with a byte-order mark
    p = tmp_path / "caps.csv"
    p.write_bytes("\ufeffname,caption\nimg.01,dotted\nimg.02.png,with extension\n".encode("utf-8"))
    assert read_caption_table(p) == {"img.01": "dotted", "img.02": "with extension"}
    a, b = _images(tmp_path / "faces", ["img.01.png", "img.02.png"])
    assert Captions.from_sources(p).for_images([a, b]) == ["dotted", "with extension"]
