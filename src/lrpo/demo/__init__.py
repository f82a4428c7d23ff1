"""``lrpo demo``: a local web page to restore photos, look at a group's rewards and read a run.

A model selector (a name from the server's list: the start model, the runs under ``--runs`` with
a checkpoint, the published policies) and three tabs (see README, "Web demo"): Restore (a photo or
an aligned face, with the restore command's options), Group (G candidates of one face with every reward term, the total and the
group-relative advantage) and Run (a training run's curves and sample grids, read-only).

Needs ``pip install "lrpo[demo]"`` (Starlette and uvicorn). Layout:

    safety.py    upload limits and decoding, path containment, Host allow-list, one job at a time
    connections.py  header and body deadlines, the connection cap (a uvicorn protocol)
    service.py   the work: DemoService (policy, detector, reward terms), restore, group
    models.py    the model selector: runs under --runs and published policies, by name only
    runview.py   the Run tab's reading of a run folder
    app.py       routes, the page, serving
    static/      the page: index.html, demo.js, demo.css (no external resources)
"""

from __future__ import annotations

import importlib
import re

from ..optional import MissingDependencyError
from .service import DemoService

__all__ = ["require_demo_packages", "run_demo", "served_port"]

PACKAGES = ("starlette", "uvicorn")


def served_port(line: str) -> int | None:
    """The port in the line ``lrpo demo`` prints once it serves (``lrpo demo: serving SOURCE on
    http://HOST:PORT/ ...``, :func:`lrpo.demo.app.serve`), or None for any other line: how a script
    that started ``lrpo demo --port 0`` learns where to connect."""
    found = re.search(r"^lrpo demo: serving .* on http://(?:\[[^\]]*\]|[^:/\s]+):(\d+)/", line)
    return int(found.group(1)) if found else None


def require_demo_packages() -> None:
    """Raise :class:`MissingDependencyError` naming the extra unless Starlette and uvicorn import."""
    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"lrpo demo needs {' and '.join(missing)}, which are not installed: "
                                     'pip install "lrpo[demo]"')


def run_demo(source, host: str = "127.0.0.1", port: int = 7860, allow_hosts: tuple[str, ...] = (), **service_kwargs) -> None:
    """Load ``source`` (checkpoint, run folder or policy YAML) and serve the demo until Ctrl-C;
    ``allow_hosts``: Host names to answer besides the defaults (``--allow-host``)."""
    require_demo_packages()
    from .app import serve  # optional: starlette, uvicorn (the demo extra, checked just above)

    print(f"lrpo demo: loading {source} ...", flush=True)
    serve(DemoService(source, **service_kwargs), host, port, allow_hosts)
