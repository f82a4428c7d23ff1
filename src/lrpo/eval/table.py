"""The results table as BFR papers print it: the field's column order, best bold, second underlined.

Paired sets (CelebA-Test style): PSNR, SSIM, LPIPS, identity Deg, LMD, FID. Real-LQ sets: FID,
CLIP-IQA, then our offline no-reference scores. Only columns that were computed appear. The
identity column is ArcFace's angle when ArcFace was given, else SFace's (named so: the two are not
comparable). Rows of other methods' *published* figures (``--published FILE``) are shown apart,
marked as taken from their papers, and never ranked against what was measured here.

``--published`` is a CSV with a header ``method,<metric>,...`` where each metric is one of our keys
(``psnr``, ``ssim``, ``lpips``, ``id_deg``, ``arcface_deg``, ``lmd``, ``fid``, ...); empty cells are
allowed, e.g.::

    method,psnr,ssim,lpips,arcface_deg,lmd,fid
    DiffBIR (PMRF's table),25.39,0.6536,0.3878,32.94,2.006,59.06
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["PAIRED_COLUMNS", "LQ_COLUMNS", "definitions_markdown", "latex_table", "markdown_table", "rank_marks",
           "read_published", "table_columns"]

PAIRED_COLUMNS = ("psnr", "ssim", "lpips", "arcface_deg", "id_deg", "lmd", "fid", "niqe")
LQ_COLUMNS = ("fid", "niqe", "brisque", "piqe", "clipiqa", "sharpness", "noise", "arcface_deg_lq", "id_deg_lq")
# the field's header for our keys; SFace's angle says which network measured it
HEADERS = {
    "psnr": "PSNR↑", "ssim": "SSIM↑", "lpips": "LPIPS↓", "arcface_deg": "Deg↓", "id_deg": "Deg (SFace)↓",
    "lmd": "LMD↓", "fid": "FID↓", "clipiqa": "CLIP-IQA↑", "sharpness": "Sharpness↑", "noise": "Noise↓",
    "arcface_deg_lq": "Deg to LQ↓", "id_deg_lq": "Deg to LQ (SFace)↓",
    "niqe": "NIQE↓", "brisque": "BRISQUE↓", "piqe": "PIQE↓",
}
HIGHER_IS_BETTER = {"psnr", "ssim", "clipiqa", "sharpness"}


def table_columns(available: Sequence[str], paired: bool) -> list[str]:
    """The field's columns that were computed, in its order; one identity column (ArcFace first)."""
    cols = [c for c in (PAIRED_COLUMNS if paired else LQ_COLUMNS) if c in available]
    for arc, sface in (("arcface_deg", "id_deg"), ("arcface_deg_lq", "id_deg_lq")):
        if arc in cols and sface in cols:
            cols.remove(sface)
    return cols


def rank_marks(values: Mapping[str, float | None], higher_is_better: bool) -> dict[str, str | None]:
    """'best' / 'second' / None per row; equal values share a mark; None and NaN are never marked.

    e.g. {a: 3, b: 5, c: 5, d: 1} higher-better -> b, c best (5), a second (3), d none.
    """
    finite = sorted({v for v in values.values() if v is not None and math.isfinite(v)}, reverse=higher_is_better)
    best = finite[0] if finite else None
    second = finite[1] if len(finite) > 1 else None
    return {k: "best" if v is not None and v == best else "second" if v is not None and v == second else None for k, v in values.items()}


def _fmt(v: float | None, key: str) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    digits = 2 if key in ("psnr", "fid", "noise", "brisque", "piqe") or key.endswith("deg") or key.endswith("deg_lq") else 4 if key != "lmd" else 3
    return f"{v:.{digits}f}"


def _rows(summary: Mapping[str, Mapping[str, float | None]], cols: list[str], baseline: str | None):
    ranked = [m for m in summary if m != baseline]
    marks = {c: rank_marks({m: summary[m].get(c) for m in ranked}, c in HIGHER_IS_BETTER) for c in cols}
    return ranked, marks


def markdown_table(
    summary: Mapping[str, Mapping[str, float | None]], cols: list[str], *, baseline: str | None = "input",
    published: Mapping[str, Mapping[str, float]] | None = None, title: str = "",
) -> str:
    """A Markdown table: measured rows (best **bold**, second <u>underlined</u>), the baseline row
    unranked, then published rows in italics with a dagger and a footnote."""
    ranked, marks = _rows(summary, cols, baseline)
    lines = ([f"**{title}**", ""] if title else []) + ["| method | " + " | ".join(HEADERS.get(c, c) for c in cols) + " |",
                                                      "|---|" + "---|" * len(cols)]
    if baseline in summary:
        lines.append(f"| {baseline} (LQ) | " + " | ".join(_fmt(summary[baseline].get(c), c) for c in cols) + " |")
    for m in ranked:
        cells = []
        for c in cols:
            text, mark = _fmt(summary[m].get(c), c), marks[c][m]
            cells.append(f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for m, row in (published or {}).items():
        lines.append(f"| *{m}* † | " + " | ".join(f"*{_fmt(row.get(c), c)}*" for c in cols) + " |")
    if published:
        lines += ["", "† as published by their authors (other protocol, data and code); not ranked against the rows measured here."]
    return "\n".join(lines) + "\n"


def definitions_markdown(definitions: Mapping[str, Mapping[str, str]], cols: Sequence[str]) -> str:
    """A definitions list for the table's columns: how each is computed and whether the field's
    published numbers measure the same thing (from metrics.json's "definitions")."""
    lines = ["Definitions:", ""]
    for c in cols:
        d = definitions.get(c)
        if not d:
            continue
        comparable = {"yes": "comparable with the field's tables", "partly": "comparable only partly",
                      "no": "not comparable with the field's tables"}.get(d.get("comparable", ""), d.get("comparable", ""))
        note = f": {d['note']}" if d.get("note") else ""
        lines.append(f"- **{HEADERS.get(c, c)}** {d['definition']}. *{comparable}*{note}.")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(a, b)
    return text


def latex_table(
    summary: Mapping[str, Mapping[str, float | None]], cols: list[str], *, baseline: str | None = "input",
    published: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The same as a LaTeX tabular (booktabs): \\textbf for best, \\underline for second."""
    ranked, marks = _rows(summary, cols, baseline)
    arrow = {"↑": r"$\uparrow$", "↓": r"$\downarrow$"}
    heads = []
    for c in cols:
        h = HEADERS.get(c, c)
        heads.append(_tex(h[:-1]) + arrow.get(h[-1], _tex(h[-1])))
    out = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule", "Method & " + " & ".join(heads) + r" \\", r"\midrule"]
    if baseline in summary:
        out.append(f"{_tex(baseline)} (LQ) & " + " & ".join(_fmt(summary[baseline].get(c), c) for c in cols) + r" \\")
    for m in ranked:
        cells = []
        for c in cols:
            text, mark = _fmt(summary[m].get(c), c), marks[c][m]
            cells.append(rf"\textbf{{{text}}}" if mark == "best" else rf"\underline{{{text}}}" if mark == "second" else text)
        out.append(f"{_tex(m)} & " + " & ".join(cells) + r" \\")
    if published:
        out.append(r"\midrule")
        for m, row in published.items():
            out.append(rf"\textit{{{_tex(m)}}}$^\dagger$ & " + " & ".join(_fmt(row.get(c), c) for c in cols) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if published:
        out.append(r"% \dagger: as published by their authors; not ranked against the rows measured here")
    return "\n".join(out) + "\n"


def read_published(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """method -> {metric key: value} from a CSV (see the module docstring); errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--published {path}: no such file (expected a CSV with a header method,psnr,ssim,...)")
    known = set(HEADERS) | {"ms_ssim", "id_cos", "arcface_cos"}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if not fields or fields[0] != "method":
            raise ValueError(f"{path}: the first column must be 'method', got {fields[:1]}")
        unknown = [c for c in fields[1:] if c not in known]
        if unknown:
            raise ValueError(f"{path}: unknown metric column(s) {unknown}; use our keys: {', '.join(sorted(known))}")
        reader.fieldnames = fields
        out: dict[str, dict[str, float]] = {}
        for row in reader:
            name = (row.get("method") or "").strip()
            if not name:
                raise ValueError(f"{path}:{reader.line_num}: empty method name")
            values = {}
            for c in fields[1:]:
                cell = (row.get(c) or "").strip()
                if cell:
                    try:
                        values[c] = float(cell)
                    except ValueError:
                        raise ValueError(f"{path}:{reader.line_num}: {c}={cell!r} is not a number") from None
            out[name] = values
    return out
