"""The demo's model selector: the models the page may switch to, each by a NAME from the server's list.

Names (the list is made again whenever it is shown or a name is looked up, so a run that writes its
first checkpoint while the demo runs appears; nothing of it comes from the browser)::

    run:REL        a run folder under ``--runs`` holding a checkpoint (REL relative to it; "." the folder
                   itself), loaded as ``lrpo restore --checkpoint`` loads it: its latest checkpoint
    policy:NAME    a published policy (``lrpo.policies.published``), listed always; available when every
                   ``registry:`` model file of its YAML resolves (``lrpo weights path``), else the reason
    start          the ``--checkpoint`` given at start, when it is neither of the above

The page sends a name; :meth:`ModelCatalog.lookup` finds it in the list or refuses it. A path typed
by a client is just a name not in the list: nothing the client sends is ever opened as a path.
Run folders are reached through :class:`~lrpo.demo.runview.RunBrowser` (symlinks never followed,
:func:`~lrpo.demo.safety.resolve_inside`), and their checkpoint must lie inside the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import weights
from ..checkpoint import CheckpointError, find_checkpoint
from ..policies.published import published_policies, published_policy_config
from .safety import DemoError, resolve_inside

__all__ = ["MAX_MODEL_NAME", "ModelCatalog", "ModelChoice", "registry_names"]

MAX_MODEL_NAME = 300  # characters of a name sent by the page
START = "start"


@dataclass(frozen=True)
class ModelChoice:
    name: str  # what the page sends back
    label: str  # what the page shows
    kind: str  # "run" | "policy" | "start"
    source: Path | None = None  # what load_policy takes (server side only); None when unavailable
    checkpoint: Path | None = None  # the checkpoint folder a run loads now (a new one means: load again)
    reason: str | None = None  # why it is unavailable

    @property
    def available(self) -> bool:
        return self.source is not None and self.reason is None

    @property
    def key(self) -> tuple[str, str]:
        """What the loaded model is compared with: the name and the files it loads."""
        return self.name, str(Path(self.checkpoint or self.source).resolve())

    def to_json(self) -> dict:
        return {"name": self.name, "label": self.label, "kind": self.kind, "available": self.available, "reason": self.reason}


def registry_names(section) -> list[str]:
    """The ``registry:NAME`` model files a policy YAML's mapping names (any depth), in order."""
    found: list[str] = []
    if isinstance(section, dict):
        for value in section.values():
            found += registry_names(value)
    elif isinstance(section, str) and section.startswith("registry:"):
        found.append(section.split(":", 1)[1])
    return found


def published_choice(name: str) -> ModelChoice:
    """A published policy: available when its YAML reads and every model file it names resolves."""
    label = f"{name} (published)"
    path = published_policy_config(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return ModelChoice(f"policy:{name}", label, "policy", reason=f"{path.name} cannot be read ({type(e).__name__})")
    missing = []
    for file in dict.fromkeys(registry_names(raw.get("policy") if isinstance(raw, dict) else None)):
        try:
            weights.resolve(file)
        except (weights.MissingWeightsError, KeyError, ValueError):
            missing.append(file)
    if missing:
        return ModelChoice(f"policy:{name}", label, "policy", reason=f"model files not found: {', '.join(missing)} "
                           f"(`lrpo weights fetch {' '.join(missing)}`, then restart the demo)")
    return ModelChoice(f"policy:{name}", label, "policy", source=path)


class ModelCatalog:
    """The models of one demo: the one given at start, the runs under ``runs`` and the published policies.

    ``start``: the source the demo loaded first, as :func:`~lrpo.policies.loading.load_policy`
    returned it (a checkpoint folder or a policy YAML); ``runs``: a RunBrowser or None.
    """

    def __init__(self, start: Path, runs=None, published: list[str] | None = None):
        self.start = Path(start)
        self.runs = runs
        self.published = published_policies() if published is None else list(published)
        self.start_name = self._name_of_start()

    def run_choices(self) -> list[ModelChoice]:
        """Run folders under the root with a checkpoint (the root's own folder walk; links never followed)."""
        if self.runs is None:
            return []
        found = []
        for rel in self.runs.list_runs():
            try:
                folder = resolve_inside(self.runs.root, rel, "run")
                ckpt = find_checkpoint(folder, verify=False)  # verified when loaded
                resolve_inside(self.runs.root, str(ckpt.resolve().relative_to(self.runs.root)), "checkpoint")
            except (CheckpointError, DemoError, ValueError, OSError):
                continue  # no checkpoint (yet), or one outside the run: not a model to offer
            label = f"{self.runs.root.name if rel == '.' else rel} (run, {ckpt.name})"
            found.append(ModelChoice(f"run:{rel}", label, "run", source=folder, checkpoint=ckpt.resolve()))
        return found

    def choices(self) -> list[ModelChoice]:
        """Every model, in the selector's order: the start (when not listed otherwise), runs, published."""
        runs = self.run_choices()
        listed = [published_choice(n) for n in self.published]
        head = []
        if self.start_name == START:
            short = self.start.name if self.start.is_file() else f"{self.start.parent.name}/{self.start.name}"
            head = [ModelChoice(START, f"{short} (given at start)", "start", source=self.start, checkpoint=self.start)]
        return head + runs + listed

    def lookup(self, name: str) -> ModelChoice:
        """The available model called ``name``; anything else (a path included) is refused in one line."""
        if not isinstance(name, str) or not name or len(name) > MAX_MODEL_NAME:
            raise DemoError(f"model must be a name from the demo's list (at most {MAX_MODEL_NAME} characters)")
        choices = self.choices()
        for choice in choices:
            if choice.name == name:
                if not choice.available:
                    raise DemoError(f"model {name!r} is not available here: {choice.reason}")
                return choice
        names = ", ".join(c.name for c in choices)
        raise DemoError(f"model {name!r} is not one of this demo's models ({names}); the page sends a name from "
                        "its list, never a path", 404)

    def _name_of_start(self) -> str:
        start = self.start.resolve()
        for name in self.published:
            if published_policy_config(name).resolve() == start:
                return f"policy:{name}"
        for choice in self.run_choices():
            if choice.checkpoint == start or Path(choice.source).resolve() == start:
                return choice.name
        return START
