"""Captions of face images, for reward terms that score an image against its text (the face reward).

Where a caption comes from, first match wins:
  1. a captions table the user names (``data.captions=FILE`` / ``--captions FILE``): CSV with a
     header row ``name,caption`` or JSONL with one ``{"name": ..., "caption": ...}`` per line; a
     name matches an image by file name (``00017.png``) or stem (``00017``). A ``.tar.gz`` / ``.tgz``
     / ``.tar`` of ``NAME.txt`` files (the release's ``ffhq_captions.tar.gz``) is read in place, each
     member by its stem, without extracting anything (:func:`read_caption_archive`);
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
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .datasets import _preview  # the first names of a list, "... and N more"
from .images import IMAGE_EXTENSIONS

__all__ = ["CaptionError", "Captions", "read_caption_archive", "read_caption_table", "require_captions", "sidecar_path"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_CAPTION_BYTES = 64 * 1024  # one NAME.txt member (FFHQ captions are a few hundred bytes)
MAX_ARCHIVE_TEXT_BYTES = 512 * 1024 * 1024  # all members read from one archive together


class CaptionError(ValueError):
    """A captions table is malformed, or images that need a caption have none."""


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """``faces/00017.png`` -> ``faces/00017.txt``."""
    return Path(image_path).with_suffix(".txt")


def _key(name: str) -> str:
    """Table keys and image names meet at the file stem: '00017.png' and '00017' are one image
    (only an image extension is dropped: 'img.01' stays 'img.01')."""
    p = Path(str(name).strip())
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else p.name


def read_caption_table(path: str | os.PathLike) -> dict[str, str]:
    """Read a CSV (header ``name,caption``) or JSONL captions table; returns stem -> caption.

    Errors name the file and line: a missing column, an empty name or caption, a name given twice.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CaptionError(f"captions table {path} does not exist (expected a CSV with columns name,caption, a JSONL file "
                           f"or a .tar.gz of NAME.txt files)")
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return read_caption_archive(path)
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
        raise CaptionError(f"captions table {path}: unknown format {path.suffix!r}; use .csv (name,caption), .tsv, .jsonl "
                           f"or a .tar.gz of NAME.txt files")
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


def read_caption_archive(path: str | os.PathLike) -> dict[str, str]:
    """Captions from a tar archive (gzip or plain) of ``NAME.txt`` files; returns stem -> caption.

    Members are read in place (streamed out of the archive, never extracted: no file is written and
    no member name is used as a path). Only regular ``.txt`` members count; folders, links, other
    files and macOS ``._NAME.txt`` companions are passed over. Errors name the archive and the
    member: a caption over :data:`MAX_CAPTION_BYTES`, an empty one, one stem in two members.
    """
    path = Path(path).expanduser()
    table: dict[str, str] = {}
    member_of: dict[str, str] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or not base.lower().endswith(".txt") or base.startswith("._"):
                    continue
                if member.size > MAX_CAPTION_BYTES:
                    raise CaptionError(f"{path}: member {member.name!r} holds {member.size} bytes; a caption file is at most "
                                       f"{MAX_CAPTION_BYTES} (is it a captions archive?)")
                total += member.size
                if total > MAX_ARCHIVE_TEXT_BYTES:
                    raise CaptionError(f"{path}: its .txt members hold over {MAX_ARCHIVE_TEXT_BYTES} bytes; not a captions archive")
                data = archive.extractfile(member)
                text = (data.read(MAX_CAPTION_BYTES + 1) if data is not None else b"").decode("utf-8", errors="replace").strip()
                key = _key(base[: -len(".txt")])
                if not text:
                    raise CaptionError(f"{path}: member {member.name!r} holds an empty caption")
                if key in table:
                    raise CaptionError(f"{path}: members {member_of[key]!r} and {member.name!r} both caption {key!r}")
                table[key], member_of[key] = text, member.name
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # a truncated or corrupt gzip stream
        raise CaptionError(f"captions archive {path} cannot be read as a tar(.gz) archive: {e}") from None
    if not table:
        raise CaptionError(f"captions archive {path} holds no NAME.txt members")
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
            "(data.captions=FILE, CSV 'name,caption', JSONL or a .tar.gz of NAME.txt files such as "
            "ffhq_captions.tar.gz; `--captions FILE` for lrpo evaluate), "
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
