"""The Run tab: what ``lrpo train`` (or ``lrpo pretrain``) wrote in a run folder, read-only.

The folder is chosen on the command line (``lrpo demo --runs DIR``: one run, or a folder of runs).
The browser names a run and a sample grid relative to it; both go through
:func:`~lrpo.demo.safety.resolve_inside`, and only ``log.jsonl`` and ``samples/epoch_NNNN.png``
are ever opened. Curves come from :func:`lrpo.eval.report.curve_groups` (reward terms, held-out
evaluation, losses) plus the guard metrics (``guard_*``) with the epochs where a guard fired.
"""

from __future__ import annotations

import base64
import math
import re
import threading
from pathlib import Path

from ..eval.report import curve_groups, plot_curve_group, read_log
from .safety import DemoError, resolve_inside

__all__ = ["RunBrowser", "MAX_LOG_BYTES", "MAX_GRID_BYTES"]

MAX_LOG_BYTES = 64 * 2**20
MAX_GRID_BYTES = 32 * 2**20
GRID_NAME = re.compile(r"^epoch_\d{1,8}\.png$")
MAX_DEPTH = 2  # runs/<name>/ and runs/<group>/<name>/ are found under the root
_PLOT_LOCK = threading.Lock()  # pyplot keeps global state: one figure at a time


class RunBrowser:
    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"--runs {root}: no such folder (give a training out_dir or a folder of them)")
        self.root = root.resolve()
        self._cache: dict[tuple, dict] = {}

    def list_runs(self) -> list[str]:
        """Run folders under the root (the root itself is "."), those holding a log or sample grids."""
        found = []

        def visit(folder: Path, rel: str, depth: int) -> None:
            if (folder / "log.jsonl").is_file() or (folder / "samples").is_dir():
                found.append(rel)
            if depth >= MAX_DEPTH:
                return
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                return
            for child in children:
                if child.is_symlink():  # never followed: it may point anywhere
                    continue
                visit(child, child.name if rel == "." else f"{rel}/{child.name}", depth + 1)

        visit(self.root, ".", 0)
        return found

    def run_dir(self, name: str) -> Path:
        folder = resolve_inside(self.root, name or ".", "run")
        if not folder.is_dir() or name not in self.list_runs():
            raise DemoError(f"run {name!r} is not a run folder under {self.root}", 404)
        return folder

    def _file(self, name: str, relative: str, limit: int) -> Path:
        folder = self.run_dir(name)
        path = resolve_inside(folder, relative, "file")
        if not path.is_file():
            raise DemoError(f"{relative} does not exist in run {name!r}", 404)
        if path.stat().st_size > limit:
            raise DemoError(f"{relative} in run {name!r} is larger than {limit // 2**20} MB; not shown", 413)
        return path

    def grid(self, name: str, file: str) -> bytes:
        """The PNG bytes of ``samples/<file>`` (``epoch_NNNN.png`` only)."""
        if not GRID_NAME.match(file or ""):
            raise DemoError(f"{file!r} is not a sample grid name (epoch_NNNN.png)", 403)
        return self._file(name, f"samples/{file}", MAX_GRID_BYTES).read_bytes()

    def grids(self, name: str) -> list[str]:
        folder = self.run_dir(name) / "samples"
        if not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(p.name for p in folder.iterdir() if GRID_NAME.match(p.name) and p.is_file() and not p.is_symlink())

    def summary(self, name: str) -> dict:
        """Curves (PNG data URIs), guard events and sample grid names of one run."""
        folder = self.run_dir(name)
        grids = self.grids(name)
        base = {"name": name, "grids": grids, "curves": [], "guard_events": [], "records": 0, "notes": []}
        if not (folder / "log.jsonl").exists():
            base["notes"].append("this run has no log.jsonl yet")
            return base
        log = self._file(name, "log.jsonl", MAX_LOG_BYTES)
        stat = log.stat()
        key = (str(log), stat.st_mtime_ns, stat.st_size, tuple(grids))
        if key not in self._cache:
            self._cache = {key: self._read(log, base)}  # keep one: a run being written changes often
        return self._cache[key]

    @staticmethod
    def _read(log: Path, base: dict) -> dict:
        try:
            records = read_log(log)
        except ValueError as e:
            raise DemoError(f"log.jsonl cannot be read: {e}") from None
        x_key, groups = curve_groups(records)
        guard = _guard_series(records)
        if guard:
            groups = {"reward terms": groups.pop("reward terms", {}), "guard": guard, **groups}
            groups = {k: v for k, v in groups.items() if v}
        curves = []
        try:
            with _PLOT_LOCK:
                for title, series in groups.items():
                    curves.append({"title": title, "image": _png_uri(plot_curve_group(title, x_key, series))})
        except ImportError:
            base["notes"].append("curves need matplotlib (pip install matplotlib)")
        events = []
        for r in records:
            if r.get("guard_violations"):
                events.append({"epoch": r.get("epoch"), "text": "; ".join(map(str, r["guard_violations"]))})
            if "rolled_back_to_epoch" in r:
                events.append({"epoch": r.get("epoch"), "text": f"rolled back to epoch {r['rolled_back_to_epoch']}"})
            if "interrupted" in r:
                events.append({"epoch": r.get("epoch"), "text": f"interrupted ({r['interrupted']})"})
        last = next((r for r in reversed(records) if x_key in r), {})
        return dict(base, curves=curves, guard_events=events, records=len(records), x_key=x_key, last=last.get(x_key))


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _guard_series(records) -> dict[str, tuple[list[float], list[float]]]:
    """``guard_<metric>`` values per epoch: the held-out figures the guard compares with the start."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        x = r.get("epoch")
        if not isinstance(x, (int, float)):
            continue
        for k, v in r.items():
            if k.startswith("guard_") and isinstance(v, float) and math.isfinite(v):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(float(x))
                ys.append(v)
    return series
