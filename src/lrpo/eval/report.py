"""``report.html``: one self-contained page summarising an evaluation run (opens offline).

Built from the files an evaluation writes (``metrics.json``, ``per_image.csv`` and the images they
name), so it can be regenerated at any time with :func:`write_report`. Contents:

1. the metrics table, one row per method, the best value of each column marked (direction aware:
   PSNR higher, LPIPS lower, ...; the LQ ``input`` baseline row is shown but not ranked), and a
   second table with every reward term;
2. image grids, LQ | each method | GT, for the first images of the set;
3. per-method worst cases by a chosen metric (identity cosine by default);
4. figures the caller names (PNG files, e.g. the reward-per-CPU-minute plot of bench/lrpo_cpu.py);
5. curves of every reward term, the fidelity metrics and the losses over training, from
   ``log.jsonl`` files of ``lrpo train`` / ``lrpo pretrain`` (matplotlib, imported only here).

Every image is embedded as a base64 data URI (JPEG thumbnails, PNG plots); the page loads nothing
from anywhere else.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import ImageLoadError, load_rgb, resize_square
from .results import METRICS_FILE, PER_IMAGE_FILE, REPORT_FILE, read_per_image_csv

__all__ = [
    "best_per_column",
    "build_report_html",
    "build_sets_report_html",
    "definitions_html",
    "curve_groups",
    "figures_html",
    "image_data_uri",
    "read_log",
    "worst_cases",
    "write_report",
]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ccc;padding-bottom:4px}
.meta{color:#555;font-size:.9em} .notes li{color:#7a4b00;font-size:.9em}
table.metrics{border-collapse:collapse;font-size:.9em;margin:8px 0}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:4px 8px;text-align:right}
table.metrics th{background:#f2f2f2} table.metrics td.name{text-align:left;font-weight:600}
table.metrics tr.baseline td{color:#777;font-style:italic}
td.best{background:#d7f0d7;font-weight:700}
.grid{border-collapse:collapse} .grid td{padding:3px;vertical-align:top;text-align:center;font-size:.75em}
.grid th{font-size:.8em;padding:3px} .grid img{display:block;border:1px solid #ddd}
.caption{color:#444;max-width:170px;overflow-wrap:anywhere}
.curves img{max-width:100%;border:1px solid #eee;margin:6px 0}
.worst{display:inline-block;vertical-align:top;margin:0 28px 12px 0}
dl.defs{font-size:.85em;max-width:1100px} dl.defs dt{font-weight:600;margin-top:6px} dl.defs dd{margin-left:18px;color:#333}
"""


# ---------------------------------------------------------------------------------------------
# pure pieces
# ---------------------------------------------------------------------------------------------
def best_per_column(
    summary: Mapping[str, Mapping[str, float | None]],
    metrics: Sequence[str],
    higher_is_better: Mapping[str, bool],
    exclude: Sequence[str] = (),
    rel_tol: float = 1e-9,
) -> dict[str, set[str]]:
    """Methods holding the best value of each metric; ties are all marked.

    Args:
        summary: method -> metric -> value (None or NaN: not ranked).
        higher_is_better: metric -> direction (missing: higher is better).
        exclude: methods never ranked (the LQ baseline).
    Returns:
        metric -> set of method names (empty when no method has a value).
    """
    best: dict[str, set[str]] = {}
    for key in metrics:
        values = {
            m: float(v[key])
            for m, v in summary.items()
            if m not in exclude and v.get(key) is not None and math.isfinite(float(v[key]))
        }
        if not values:
            best[key] = set()
            continue
        pick = max if higher_is_better.get(key, True) else min
        target = pick(values.values())
        best[key] = {m for m, v in values.items() if math.isclose(v, target, rel_tol=rel_tol, abs_tol=1e-12)}
    return best


def worst_cases(rows: Sequence[Mapping[str, Any]], method: str, key: str, higher_is_better: bool, count: int) -> list[Mapping[str, Any]]:
    """The ``count`` rows of ``method`` with the worst ``key`` (NaN counts as worst: a failure)."""

    def badness(r: Mapping[str, Any]) -> float:
        v = r.get(key)
        if v is None or not math.isfinite(float(v)):
            return math.inf
        return -float(v) if higher_is_better else float(v)

    mine = [r for r in rows if r["method"] == method and r.get(key, None) is not None]
    return sorted(mine, key=badness, reverse=True)[:count]


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``log.jsonl``; a torn last line (a run still writing) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist (expected the log.jsonl of an lrpo run)")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1}: not JSON ({e})") from None
        if isinstance(rec, dict):
            records.append(rec)
    return records


# keys of training logs that are bookkeeping, not curves
_NOT_CURVES = ("epoch", "step", "elapsed_s", "trajectories", "pos")


def curve_groups(records: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, dict[str, tuple[list[float], list[float]]]]]:
    """Split a training log into plot groups.

    The x axis is ``step`` when records have one (``lrpo pretrain``), else ``epoch`` (``lrpo train``).
    Groups (each series a list of (x, y) over the records that hold the key):

    * ``"reward terms"``: ``reward_mean`` (as ``total``) and every ``reward/<term>_mean``;
    * ``"evaluation"``: held-out fidelity and reward terms (``eval_*``, ``val_*``);
    * ``"losses"``: every key containing ``loss`` and the PPO statistics (``approx_kl``,
      ``clip_frac``, ``reg``, ``kl_ref``);
    * ``"update balance"``: the gradient norms of the PG and lambda x GT terms, their cosine and the
      PG share (``diag_grad_*``, ``diag_pg_share``, lrpo.rl.diagnostics);
    * ``"reward signal"``: the epoch's within-group reward spread, its noise and their ratio (``diag_*``).

    Returns:
        (x_key, {group: {series: (xs, ys)}}); empty groups are left out.
    """
    x_key = "step" if any("step" in r for r in records) else "epoch"
    groups: dict[str, dict[str, tuple[list[float], list[float]]]] = {"reward terms": {}, "evaluation": {}, "losses": {},
                                                                     "update balance": {}, "reward signal": {}}
    for rec in records:
        x = rec.get(x_key)
        if not isinstance(x, (int, float)):
            continue
        for key, value in rec.items():
            if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            group, series = _classify(key)
            if group is None:
                continue
            xs, ys = groups[group].setdefault(series, ([], []))
            xs.append(float(x))
            ys.append(float(value))
    return x_key, {g: s for g, s in groups.items() if s}


def _classify(key: str) -> tuple[str | None, str]:
    if key == "reward_mean":
        return "reward terms", "total"
    if key.startswith("reward/") and key.endswith("_mean"):
        return "reward terms", key[len("reward/") : -len("_mean")]
    if key.startswith(("eval_", "val_")):
        return "evaluation", key
    if "loss" in key or key in ("approx_kl", "clip_frac", "clipfrac", "reg", "kl_ref"):
        return "losses", key
    if key.startswith("diag_grad") or key == "diag_pg_share":
        return "update balance", key[len("diag_"):]
    if key.startswith("diag_"):
        return "reward signal", key[len("diag_"):]
    return None, key


def image_data_uri(image: np.ndarray, size: int | None = None, fmt: str = "JPEG", quality: int = 88) -> str:
    """RGB uint8 ``H x W x 3`` (resized to ``size`` square if given) -> ``data:image/...;base64,...``."""
    if size is not None:
        image = resize_square(image, size)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _png_data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


# ---------------------------------------------------------------------------------------------
# plots (matplotlib, lazily)
# ---------------------------------------------------------------------------------------------
def plot_curve_group(title: str, x_key: str, series: Mapping[str, tuple[list[float], list[float]]], columns: int = 3) -> bytes:
    """Small multiples, one panel per series, as PNG bytes."""
    import matplotlib  # start-up time: matplotlib loads only when a curve is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # start-up time, and only after the backend is chosen (Agg: no display)
    from matplotlib.ticker import MaxNLocator  # start-up time, as above

    names = list(series)
    cols = min(columns, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.7 * rows), dpi=80, squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = series[name]
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.4, color="#1f77b4")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are whole numbers
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _metrics_table(record: Mapping[str, Any], keys: Sequence[str], title: str) -> str:
    info = record["metric_info"]
    summary = record["summary"]
    baseline = record.get("baseline")
    directions = {k: info[k]["higher_is_better"] for k in keys}
    best = best_per_column(summary, keys, directions, exclude=[baseline] if baseline else [])
    head = "".join(
        f'<th title="{html.escape(info[k]["description"])}">{html.escape(info[k]["label"])} '
        f'{"&uarr;" if info[k]["higher_is_better"] else "&darr;"}</th>'
        for k in keys
    )
    body = []
    for method in summary:
        cls = ' class="baseline"' if method == baseline else ""
        cells = []
        for k in keys:
            mark = method in best[k]
            text = _fmt(summary[method].get(k), info[k]["digits"])
            cells.append(f'<td class="best" title="best">{text}</td>' if mark else f"<td>{text}</td>")
        body.append(f'<tr{cls}><td class="name">{html.escape(method)}</td>{"".join(cells)}</tr>')
    return (
        f"<h3>{html.escape(title)}</h3><table class=\"metrics\"><thead><tr><th>method</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


class _Thumbs:
    """Thumbnails as data URIs, loaded on demand (a missing or unreadable file becomes a placeholder)."""

    def __init__(self, size: int):
        self.size = size
        self.cache: dict[str, str] = {}

    def __call__(self, path: str | None) -> str:
        if path is None:
            return ""
        if path not in self.cache:
            try:
                uri = image_data_uri(load_rgb(path), self.size)
                self.cache[path] = f'<img src="{uri}" width="{self.size}" height="{self.size}" alt="{html.escape(Path(path).name)}">'
            except ImageLoadError as e:
                self.cache[path] = f'<div style="width:{self.size}px">missing: {html.escape(str(e))}</div>'
        return self.cache[path]


def _value_caption(row: Mapping[str, Any] | None, keys: Sequence[str], info: Mapping[str, Any]) -> str:
    if row is None:
        return ""
    parts = [f"{info[k]['label']} {_fmt(row.get(k), info[k]['digits'])}" for k in keys if row.get(k) is not None]
    return html.escape(" · ".join(parts))


def _caption_keys(record: Mapping[str, Any]) -> list[str]:
    wanted = ["psnr", "lpips", "id_cos", "lmd"] if record["kind"] == "paired" else ["id_cos_lq", "sharpness", "clipiqa"]
    return [k for k in wanted if k in record["metric_info"]]


def _grid(record, rows_by, thumbs: _Thumbs, indices: Sequence[int], methods: Sequence[str], caption_keys) -> str:
    images = record["images"]
    info = record["metric_info"]
    gt = images.get("gt")
    head = "<th>LQ</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + ("<th>GT</th>" if gt else "")
    out = [f'<table class="grid"><thead><tr><th>image</th>{head}</tr></thead><tbody>']
    for i in indices:
        name = images["names"][i]
        cells = [f'<td class="caption">{html.escape(name)}</td>', f"<td>{thumbs(images['lq'][i])}</td>"]
        for m in methods:
            row = rows_by.get((m, name))
            cells.append(f'<td>{thumbs(images["outputs"][m][i])}<div class="caption">{_value_caption(row, caption_keys, info)}</div></td>')
        if gt:
            cells.append(f"<td>{thumbs(gt[i])}</td>")
        out.append(f"<tr>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _worst_section(record, rows, rows_by, thumbs: _Thumbs, methods, count: int, key: str, caption_keys) -> str:
    images = record["images"]
    info = record["metric_info"]
    index = {n: i for i, n in enumerate(images["names"])}
    gt = images.get("gt")
    direction = info[key]["higher_is_better"]
    parts = [f"<p class=\"meta\">The {count} worst images of each method by {html.escape(info[key]['label'])} "
             f"({'lowest' if direction else 'highest'} first; failures first).</p>"]
    for m in methods:
        worst = worst_cases(rows, m, key, direction, count)
        if not worst:
            continue
        parts.append(f"<div class=\"worst\"><h3>{html.escape(m)}</h3><table class=\"grid\"><thead><tr><th>image</th><th>LQ</th><th>{html.escape(m)}</th>"
                     + ("<th>GT</th>" if gt else "") + "</tr></thead><tbody>")
        for r in worst:
            i = index[r["name"]]
            cells = [f'<td class="caption">{html.escape(r["name"])}</td>', f"<td>{thumbs(images['lq'][i])}</td>",
                     f'<td>{thumbs(images["outputs"][m][i])}<div class="caption">{_value_caption(rows_by.get((m, r["name"])), caption_keys, info)}</div></td>']
            if gt:
                cells.append(f"<td>{thumbs(gt[i])}</td>")
            parts.append(f"<tr>{''.join(cells)}</tr>")
        parts.append("</tbody></table></div>")
    return "".join(parts)


def _curves_section(logs: Mapping[str, str]) -> tuple[str, list[str]]:
    notes: list[str] = []
    parts: list[str] = []
    for name, path in logs.items():
        try:
            records = read_log(path)
        except (FileNotFoundError, ValueError) as e:
            notes.append(f"training log {name!r}: {e}")
            continue
        x_key, groups = curve_groups(records)
        if not groups:
            notes.append(f"training log {name!r} ({path}): no curves found")
            continue
        parts.append(f"<h3>{html.escape(name)}</h3><p class=\"meta\">{html.escape(str(path))}, {len(records)} records</p>")
        for title, series in groups.items():
            try:
                png = plot_curve_group(f"{name}: {title}", x_key, series)
            except ImportError:
                notes.append("training curves need matplotlib (pip install matplotlib); they were left out")
                return "", notes
            parts.append(f'<div class="curves"><img src="{_png_data_uri(png)}" alt="{html.escape(title)}"></div>')
    return "".join(parts), notes


def figures_html(figures: Mapping[str, str]) -> tuple[str, list[str]]:
    """``<img>`` blocks for PNG files (title -> path), embedded; a note for each that cannot be read."""
    parts, notes = [], []
    for title, path in figures.items():
        try:
            png = Path(path).read_bytes()
        except OSError as e:
            notes.append(f"figure {title!r}: cannot read {path}: {e.strerror or e}")
            continue
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            notes.append(f"figure {title!r}: {path} is not a PNG file; it was left out")
            continue
        parts.append(f"<h3>{html.escape(title)}</h3><p class=\"meta\">{html.escape(str(path))}</p>"
                     f'<div class="curves"><img src="{_png_data_uri(png)}" alt="{html.escape(title)}"></div>')
    return "".join(parts), notes


def build_report_html(
    record: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    logs: Mapping[str, str] | None = None,
    grid_count: int = 8,
    worst_count: int = 4,
    worst_by: str | None = None,
    thumb_size: int = 160,
    title: str | None = None,
) -> str:
    """The report page as a string, from a ``metrics.json`` record and the per-image rows."""
    info = record["metric_info"]
    keys = [k for k in record["metrics"] if not k.startswith("reward/")]
    reward_keys = [k for k in record["metrics"] if k.startswith("reward/")]
    methods = [m for m in record["summary"] if m != record.get("baseline")]
    rows_by = {(r["method"], r["name"]): r for r in rows}
    thumbs = _Thumbs(thumb_size)
    caption_keys = _caption_keys(record)
    ds = record["dataset"]
    title = title or f"lrpo evaluation: {Path(ds['lq_dir']).parent.name if record['kind'] == 'paired' else Path(ds['lq_dir']).name}"
    curves_html, curve_notes = _curves_section(dict(logs if logs is not None else record.get("logs", {})))
    figs_html, fig_notes = figures_html(dict(record.get("figures", {})))
    notes = list(record.get("notes", [])) + curve_notes + fig_notes

    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=\"meta\">{'Paired (synthetic, with GT)' if record['kind'] == 'paired' else 'Real LQ, no GT'}: "
        f"{ds['count']} image(s) from {html.escape(ds['lq_dir'])}"
        + (f" and {html.escape(ds['hq_dir'])}" if ds.get("hq_dir") else "")
        + f", compared at {ds['resolution']}x{ds['resolution']}. Reward preset: {html.escape(str(record['reward']['preset']))}. "
        f"Device {html.escape(str(record.get('device', '?')))}. Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
        "<p class=\"meta\">Methods: " + "; ".join(
            html.escape(f"{m['name']} ({m['kind']}{': ' + m['path'] if m['path'] else ''}"
                        + (f", {m['steps']} steps, eta {m['eta']}, seed {m['seed']}" if m["kind"] == "checkpoint" else "") + ")")
            for m in record["methods"]
        ) + "</p>",
    ]
    if notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Metrics</h2><p class=\"meta\">&uarr; higher is better, &darr; lower is better; the best value of each "
                 "column is highlighted (ties: all). The <i>input</i> row scores the LQ image itself and is not ranked. "
                 "Hover a header for its definition.</p>")
    if keys:
        parts.append(_metrics_table(record, keys, "Quality and fidelity"))
    if reward_keys:
        weights = record["reward"].get("weights", {})
        parts.append(_metrics_table(record, reward_keys, "Reward terms"))
        if weights:
            parts.append("<p class=\"meta\">Weights of these terms in the composite: " + html.escape(", ".join(f"{k} {w:g}" for k, w in weights.items())) + "</p>")
    if record.get("definitions"):
        parts.append(definitions_html(record["definitions"], keys, info))
    names = record["images"]["names"]
    shown = list(range(min(grid_count, len(names))))
    if shown:
        parts.append(f"<h2>Examples</h2><p class=\"meta\">The first {len(shown)} images (sorted by name).</p>")
        parts.append(_grid(record, rows_by, thumbs, shown, methods, caption_keys))
    worst_by = worst_by or next((k for k in ("id_cos", "id_cos_lq", "psnr", "reward/total", "sharpness") if k in info), None)
    if worst_by and methods and worst_count > 0:
        parts.append("<h2>Worst cases</h2>")
        parts.append(_worst_section(record, rows, rows_by, thumbs, methods, worst_count, worst_by, caption_keys))
    if figs_html:
        parts.append("<h2>Figures</h2>" + figs_html)
    if curves_html:
        parts.append("<h2>Training curves</h2>" + curves_html)
    parts.append("</body></html>")
    return "\n".join(parts)


_COMPARABLE = {"yes": "comparable with the field's tables", "partly": "comparable only partly", "no": "not comparable with the field's tables"}


def definitions_html(definitions: Mapping[str, Mapping[str, str]], keys: Sequence[str], info: Mapping[str, Any] | None = None) -> str:
    """The definitions list: how each column is computed and whether the field's numbers measure the same."""
    items = []
    for k in keys:
        d = definitions.get(k)
        if not d:
            continue
        label = (info or {}).get(k, {}).get("label", k)
        note = f": {d['note']}" if d.get("note") else ""
        items.append(f"<dt>{html.escape(label)}</dt><dd>{html.escape(d['definition'])}. "
                     f"<i>{html.escape(_COMPARABLE.get(d.get('comparable', ''), d.get('comparable', '')))}</i>{html.escape(note)}.</dd>")
    return "<h3>Definitions</h3><dl class=\"defs\">" + "".join(items) + "</dl>" if items else ""


def build_sets_report_html(record: Mapping[str, Any], title: str = "lrpo evaluation: test sets") -> str:
    """OUT/report.html of a run over several named sets: a metrics table per set (with what was
    found and its notes), a link to each set's own report (images, worst cases), then the definitions."""
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=\"meta\">{len(record['sets'])} set(s); methods: "
        + html.escape(", ".join(m["name"] for m in record.get("methods") or [])) + f". Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
        "&uarr; higher is better, &darr; lower is better; the best value of each column is highlighted; the <i>input</i> row "
        "scores the LQ image itself and is not ranked.</p>",
    ]
    shown: list[str] = []
    for name, sec in record["sets"].items():
        keys = [k for k in sec["metrics"] if not k.startswith("reward/")]
        shown += [k for k in keys if k not in shown]
        link = sec["files"].get("report")
        parts.append(f"<h2>{html.escape(sec['title'])}</h2><p class=\"meta\">{html.escape(sec['found']['description'])}"
                     + (f' &middot; <a href="{html.escape(link)}">full report</a>' if link else "") + "</p>")
        notes = [n for n in sec.get("notes") or [] if n != sec["found"]["description"]]
        if notes:
            parts.append("<ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
        if keys:
            parts.append(_metrics_table(sec, keys, "Quality and fidelity"))
    info = {k: v for sec in record["sets"].values() for k, v in (sec.get("metric_info") or {}).items()}
    if record.get("definitions"):
        parts.append(definitions_html(record["definitions"], shown, info))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    out_dir: str | os.PathLike,
    logs: Mapping[str, str] | None = None,
    grid_count: int = 8,
    worst_count: int = 4,
    worst_by: str | None = None,
    thumb_size: int = 160,
    title: str | None = None,
) -> Path:
    """Read ``out_dir/metrics.json`` and ``out_dir/per_image.csv``; write ``out_dir/report.html``.

    ``logs`` (name -> log.jsonl) replaces the logs recorded in metrics.json when given.
    """
    out_dir = Path(out_dir)
    metrics_path = out_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} does not exist: run an evaluation into {out_dir} first")
    record = json.loads(metrics_path.read_text())
    rows = read_per_image_csv(out_dir / PER_IMAGE_FILE)
    page = build_report_html(record, rows, logs, grid_count, worst_count, worst_by, thumb_size, title)
    target = out_dir / REPORT_FILE
    target.write_text(page, encoding="utf-8", errors="backslashreplace")  # file names that are not UTF-8
    return target
