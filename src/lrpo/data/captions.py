"""Captions of face images, for reward terms that score an image against its text (the face reward).

Where a caption comes from, first match wins:
  1. a captions table the user names (``data.captions=FILE`` / ``--captions FILE``): CSV with a
     header row ``name,caption`` or JSONL with one ``{"name": ..., "caption": ...}`` per line; a
     name matches an image by file name (``00017.png``) or stem (``00017``);
  2. a sidecar ``NAME.txt`` beside the image (the reference's dataset reads
     ``gt_path.replace('.png', '.txt')``; DiffusionReward ships FFHQ captions that way);
  3. the default caption, only when the user set one (``data.default_caption``).
An image with none of these has no caption. Runs whose reward needs captions check every image
before the first rollout (:func:`require_captions`), so a missing caption never stops a run hours in.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .datasets import _preview  # the first names of a list, "... and N more"

__all__ = ["CaptionError", "Captions", "read_caption_table", "require_captions", "sidecar_path"]


class CaptionError(ValueError):
    """A captions table is malformed, or images that need a caption have none."""


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """``faces/00017.png`` -> ``faces/00017.txt``."""
    return Path(image_path).with_suffix(".txt")


def _key(name: str) -> str:
    """Table keys and image names meet at the file stem: '00017.png' and '00017' are one image
    (only an image extension is dropped: 'img.01' stays 'img.01')."""
    from .images import IMAGE_EXTENSIONS

    p = Path(str(name).strip())
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else p.name


def read_caption_table(path: str | os.PathLike) -> dict[str, str]:
    """Read a CSV (header ``name,caption``) or JSONL captions table; returns stem -> caption.

    Errors name the file and line: a missing column, an empty name or caption, a name given twice.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CaptionError(f"captions table {path} does not exist (expected a CSV with columns name,caption or a JSONL file)")
    rows: list[tuple[int, object, object]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected {{\"name\": ..., \"caption\": ...}}") from None
                if not isinstance(obj, dict) or "name" not in obj or "caption" not in obj:
                    raise CaptionError(f"{path}:{lineno}: expected an object with keys 'name' and 'caption', got {line.strip()[:80]!r}")
                rows.append((lineno, obj["name"], obj["caption"]))
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheets write a byte-order mark
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "name" not in fields or "caption" not in fields:
                raise CaptionError(f"{path}: the header row must name the columns 'name' and 'caption', got {fields}")
            reader.fieldnames = fields
            for row in reader:
                rows.append((reader.line_num, row.get("name"), row.get("caption")))
    else:
        raise CaptionError(f"captions table {path}: unknown format {path.suffix!r}; use .csv (name,caption), .tsv or .jsonl")
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, name, caption in rows:
        name = "" if name is None else str(name)
        caption = "" if caption is None else str(caption).strip()
        if not name.strip():
            raise CaptionError(f"{path}:{lineno}: empty name")
        if not caption:
            raise CaptionError(f"{path}:{lineno}: empty caption for {name!r}")
        key = _key(name)
        if key in table:
            raise CaptionError(f"{path}:{lineno}: {name!r} already has a caption (line {first_line[key]})")
        table[key], first_line[key] = caption, lineno
    if not table:
        raise CaptionError(f"captions table {path} holds no captions")
    return table


@dataclass
class Captions:
    """The caption sources of one data set (see the module docstring for the order)."""

    table: dict[str, str] = field(default_factory=dict)
    table_path: str = ""
    default: str = ""
    sidecars: bool = True

    @classmethod
    def from_sources(cls, table: str | os.PathLike | None = "", default: str = "", sidecars: bool = True) -> "Captions":
        return cls(read_caption_table(table) if table else {}, str(table or ""), default.strip(), sidecars)

    def lookup(self, image_path: str | os.PathLike) -> str | None:
        """The caption of one image, or None when it has none."""
        key = _key(Path(image_path).name)
        if key in self.table:
            return self.table[key]
        if self.sidecars:
            side = sidecar_path(image_path)
            if side.is_file():
                text = side.read_text(encoding="utf-8", errors="replace").strip()
                if text:
                    return text
        return self.default or None

    def for_images(self, paths: Sequence[str | os.PathLike]) -> list[str | None]:
        return [self.lookup(p) for p in paths]

    def how_to_give(self) -> str:
        return (
            "give one caption per image as a sidecar NAME.txt beside each image, as a table "
            "(data.captions=FILE, CSV 'name,caption' or JSONL; `--captions FILE` for lrpo evaluate), "
            "or one caption for all with data.default_caption=\"...\" (`--default-caption`)"
        )


def require_captions(paths: Sequence[str | os.PathLike], captions: Captions, needed_by: str, what: str = "images") -> list[str]:
    """Every image's caption; a :class:`CaptionError` naming the first images without one otherwise."""
    found = captions.for_images(paths)
    missing = [Path(p).name for p, c in zip(paths, found) if c is None]
    if missing:
        looked = f"table {captions.table_path}, " if captions.table_path else ""
        raise CaptionError(
            f"{needed_by} needs a caption for every image, but {len(missing)} of {len(paths)} {what} have none "
            f"(looked in: {looked}sidecar .txt files): {_preview(missing)}. To fix it, {captions.how_to_give()}."
        )
    return [c for c in found if c is not None]
