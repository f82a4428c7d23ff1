"""The metric table `lrpo evaluate` uses: which networks there are, ``--iqa`` parsing, loading them as scorers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...model_files import freeze
from ...weights import MissingWeightsError, get_entry, resolve
# in the order of the metric table, which is the order their files register (`lrpo weights list`)
from .musiq import MUSIQ_KONIQ_WEIGHTS, load_musiq
from .maniqa import MANIQA_KONIQ_WEIGHTS, load_maniqa
from .topiq import TOPIQ_NR_KONIQ_WEIGHTS, load_topiq_nr
from .clipiqa_plus import CLIPIQA_PLUS_WEIGHTS, load_clipiqa_plus


def score_images(model: nn.Module, images: Tensor, batch_size: int = 8) -> Tensor:
    """images [N, 3, H, W] in [0, 1] -> scores [N] float32 (no gradients, ``batch_size`` at a time)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] RGB, got {tuple(images.shape)}")
    with torch.no_grad():
        chunks = [model(images[i : i + batch_size].float().clamp(0, 1)).float() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else images.new_zeros(0)


@dataclass(frozen=True)
class IQAMetric:
    """One no-reference metric: its column in metrics.json, its model file and how to build it.

    batch_size: images per forward pass (MANIQA runs 20 ViT-B/8 crops per image, so one).
    """

    key: str
    label: str
    weights: str  # registry name of its own file
    description: str
    digits: int
    batch_size: int
    pyiqa_name: str


IQA_METRICS: dict[str, IQAMetric] = {
    m.key: m
    for m in [
        IQAMetric("musiq", "MUSIQ", MUSIQ_KONIQ_WEIGHTS.name,
                  "no-reference MUSIQ (KonIQ MOS, ~0..100; pyiqa 'musiq')", 2, 8, "musiq"),
        IQAMetric("maniqa", "MANIQA", MANIQA_KONIQ_WEIGHTS.name,
                  "no-reference MANIQA (KonIQ, ~0..1, 20 crops of 224 px; pyiqa 'maniqa')", 4, 1, "maniqa"),
        IQAMetric("topiq_nr", "TOPIQ-NR", TOPIQ_NR_KONIQ_WEIGHTS.name,
                  "no-reference TOPIQ (ResNet-50, KonIQ, ~0..1; pyiqa 'topiq_nr')", 4, 8, "topiq_nr"),
        IQAMetric("clipiqa_plus", "CLIP-IQA+", CLIPIQA_PLUS_WEIGHTS.name,
                  "no-reference CLIP-IQA+ (RN50, learned prompts, (0, 1); pyiqa 'clipiqa+')", 4, 8, "clipiqa+"),
    ]
}
# what `--iqa` accepts besides the keys: pyiqa's names and the registry names
_ALIASES = {alias: m.key for m in IQA_METRICS.values() for alias in (m.key, m.pyiqa_name, m.weights, m.key.replace("_", "-"))}


def parse_iqa_requests(items: Sequence[str]) -> dict[str, str | None] | None:
    """``--iqa`` values -> {metric key: explicit path or None (registry)}; None: none given (auto).

    Each item is ``all``, ``none``, ``NAME`` or ``NAME=PATH``; NAME is a key (musiq, maniqa,
    topiq_nr, clipiqa_plus), pyiqa's name (clipiqa+) or the registry name.
    """
    if not items:
        return None
    requests: dict[str, str | None] = {}
    for item in items:
        name, sep, path = (s.strip() for s in item.partition("="))
        if name.lower() in ("all", "none") and not sep:
            requests.update({k: None for k in IQA_METRICS} if name.lower() == "all" else {})
            continue
        key = _ALIASES.get(name.lower())
        if key is None or (sep and not path):
            raise ValueError(f"--iqa {item!r}: expected NAME or NAME=PATH with NAME one of {', '.join(IQA_METRICS)} (or all, none)")
        requests[key] = path or None
    return requests


class IQAScorer:
    """A loaded metric: ``score(images [N, 3, H, W] in [0, 1]) -> Tensor[N]`` on the CPU, float32."""

    def __init__(self, metric: IQAMetric, model: nn.Module, device: torch.device | str = "cpu"):
        self.metric = metric
        self.device = torch.device(device)
        self.model = freeze(model.to(self.device))

    def score(self, images: Tensor) -> Tensor:
        return score_images(self.model, images.to(self.device), self.metric.batch_size).cpu()


_LOADERS: dict[str, Callable[..., nn.Module]] = {
    "musiq": lambda path, **_: load_musiq(path),
    "maniqa": lambda path, **_: load_maniqa(path),
    "topiq_nr": lambda path, **_: load_topiq_nr(path),
    "clipiqa_plus": lambda path, clip_path=None, vocab_path=None: load_clipiqa_plus(path, clip_path, vocab_path),
}


def _missing_note(metric: IQAMetric, err: Exception, explicit: Mapping[str, str | None]) -> str:
    """'LABEL: not computed: file X not found (lrpo weights fetch NAME)' for the file that is
    missing (the metric's own, or CLIP-IQA+'s RN50 / vocabulary); X is the path given, if any."""
    name = next((n for n in explicit if str(err).startswith(f"{n}:")), metric.weights)
    return f"{metric.label}: not computed: file {explicit[name] or get_entry(name).filename} not found (lrpo weights fetch {name})"


def build_iqa_scorers(
    requests: Mapping[str, str | None] | None,
    device: torch.device | str = "cpu",
    *,
    clip_path: str | None = None,
    vocab_path: str | None = None,
) -> tuple[dict[str, IQAScorer], list[str]]:
    """Load the requested metrics; a missing file becomes a note instead of an error.

    requests: {key: path or None}; None means every metric, each looked up in the registry.
    A file that exists but does not fit its model (wrong layout, unreadable) is still an error.
    Returns ({key: scorer}, notes).
    """
    wanted = {k: None for k in IQA_METRICS} if requests is None else dict(requests)
    scorers, notes = {}, []
    for key, path in wanted.items():
        metric = IQA_METRICS[key]
        try:
            file = resolve(metric.weights, path)
            model = _LOADERS[key](file, clip_path=clip_path, vocab_path=vocab_path)
        except MissingWeightsError as err:
            notes.append(_missing_note(metric, err, {metric.weights: path, "clip-rn50": clip_path, "clip-bpe-vocab": vocab_path}))
            continue
        scorers[key] = IQAScorer(metric, model, device)
    return scorers, notes
