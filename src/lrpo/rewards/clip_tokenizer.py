"""The CLIP text tokenizer: text cleanup, byte-level BPE, start/end tokens, fixed context length.

It reproduces the tokenizer of OpenAI CLIP and OpenCLIP (``SimpleTokenizer``):

1. cleanup: ``ftfy.fix_text`` when ftfy is installed (it only repairs broken Unicode, so plain
   text is unaffected without it), HTML unescaping (twice), whitespace runs -> one space, strip,
   lower-case;
2. pre-tokenisation into: the special tokens, the contractions 's 't 're 've 'm 'll 'd, runs of
   letters (Unicode category L*), single digits (category N*), runs of other non-space characters;
3. each piece is UTF-8 encoded, every byte mapped to a printable character (GPT-2's byte map), the
   last one marked with ``</w>``, and BPE merges applied lowest rank first until none applies;
4. ids: 256 byte characters, the same 256 with ``</w>``, one id per merge in rank order, then
   ``<|startoftext|>`` and ``<|endoftext|>`` (49406 and 49407 with the real 48 894 merges);
5. ``[SOT] + ids + [EOT]``, truncated to the context length (77) with EOT kept last, zero padded.

The vocabulary file ``bpe_simple_vocab_16e6.txt.gz`` (a version header, then one merge "a b" per
line) is found through the weights registry (entry ``clip-bpe-vocab``) or inside an installed
``open_clip_torch`` / OpenAI ``clip`` package (located without importing it).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ..weights import MissingWeightsError, WeightFile, register, resolve

__all__ = [
    "CLIPTokenizer",
    "CONTEXT_LENGTH",
    "bytes_to_unicode",
    "clean_text",
    "find_bpe_vocab",
    "pretokenize",
]

BPE_VOCAB = register(
    WeightFile(
        "clip-bpe-vocab",
        "bpe_simple_vocab_16e6.txt.gz",
        "https://github.com/mlfoundations/open_clip/raw/main/src/open_clip/bpe_simple_vocab_16e6.txt.gz",
        "MIT",
        "CLIP byte-level BPE merges (49408-token vocabulary), as shipped by OpenAI CLIP and OpenCLIP",
        # hashed here from the copy inside the open_clip_torch 3.3.0 wheel on PyPI
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
        1.36,
        container="gzip",
    )
)

CONTEXT_LENGTH = 77
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
# The real file holds more lines than CLIP uses: its vocabulary stops at 49152 - 256 - 2 merges.
MAX_MERGES = 49152 - 256 - 2
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# Packages known to ship the vocabulary file next to their tokenizer module.
_PACKAGES_WITH_VOCAB = ("open_clip", "clip")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable Unicode characters.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the other 68 bytes
    map to chr(256 + k) in byte order. The dict's order (printable first) is the id order.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """Cleanup before tokenisation (step 1 of the module docstring)."""
    try:
        import ftfy  # optional: ftfy (not a dependency; fixes mojibake when installed)

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def _is_other(ch: str) -> bool:
    return not (ch.isspace() or _is_letter(ch) or _is_number(ch))


def pretokenize(text: str) -> list[str]:
    """Split cleaned text into pieces, trying at each position, in order: a special token, a
    contraction, a run of letters, one digit, a run of other non-space characters; spaces are
    skipped. (The same alternation as CLIP's regular expression, written without ``regex``.)"""
    pieces = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        special = next((s for s in (SOT, EOT) if text.startswith(s, i)), None)
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if special or contraction:
            j = i + len(special or contraction)
        elif _is_letter(ch):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
        elif _is_number(ch):
            j = i + 1
        else:
            j = i + 1
            while j < n and _is_other(text[j]):
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def find_bpe_vocab(path: str | os.PathLike | None = None) -> Path:
    """The vocabulary file: ``path``, else the registry's search folders, else the copy inside an
    installed ``open_clip_torch`` or OpenAI ``clip`` package. Raises MissingWeightsError."""
    if path:
        return resolve(BPE_VOCAB.name, path)
    try:
        return resolve(BPE_VOCAB.name)
    except MissingWeightsError as err:
        for package in _PACKAGES_WITH_VOCAB:
            # find_spec of a top-level name locates the package without running its __init__
            # (open_clip's imports torchvision, which may not work here).
            spec = importlib.util.find_spec(package)
            for folder in (spec.submodule_search_locations or []) if spec else []:
                candidate = Path(folder) / BPE_VOCAB.filename
                if candidate.is_file():
                    return candidate
        raise MissingWeightsError(
            f"{err} It also ships inside the open_clip_torch wheel (`pip install --no-deps open_clip_torch` is enough)."
        ) from None


class CLIPTokenizer:
    """CLIP's BPE tokenizer. ``tok(["a photo"])`` -> LongTensor [N, 77].

    merges: BPE merges in rank order (rank 0 applies first), e.g. ``[("i", "n"), ("t", "h"), ...]``.
    """

    def __init__(self, merges: Sequence[tuple[str, str]], context_length: int = CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must leave room for the start and end tokens, got {context_length}")
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        chars = list(self.byte_encoder.values())
        vocab = chars + [c + END_OF_WORD for c in chars] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        if len(self.encoder) != len(vocab):
            raise ValueError("the BPE merges produce duplicate tokens; is this a CLIP merges file?")
        self.decoder = dict(enumerate(vocab))
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH) -> "CLIPTokenizer":
        """Read a merges file (``.txt`` or ``.txt.gz``): a header line, then "left right" per line."""
        path = find_bpe_vocab(path)
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = []
        for lineno, line in enumerate(lines[1 : 1 + MAX_MERGES], start=2):
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}, line {lineno}: expected a merge 'left right', got {line!r}")
            merges.append((parts[0], parts[1]))
        return cls(merges, context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> list[str]:
        """BPE of one pre-token (already byte-mapped): list of vocabulary tokens."""
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, k = [], 0
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        ids = []
        for piece in pretokenize(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (padding zeros and start/end tokens dropped); word ends become spaces."""
        tokens = "".join(self.decoder[int(i)] for i in ids if int(i) not in (0, self.sot_id, self.eot_id))
        # no token contains a literal space (byte 32 is mapped away), so spaces mark word ends
        raw = bytearray(32 if c == " " else self.byte_decoder[c] for c in tokens.replace(END_OF_WORD, " "))
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], truncate: bool = True) -> Tensor:
        """[N, context_length] int64: SOT, ids, EOT, zeros. Too-long texts are cut with EOT kept
        last (``truncate=True``, OpenCLIP's behaviour) or raise ValueError."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > self.context_length:
                if not truncate:
                    raise ValueError(f"text has {len(ids)} tokens, more than the context length {self.context_length}: {text[:80]!r}")
                ids = ids[: self.context_length - 1] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
