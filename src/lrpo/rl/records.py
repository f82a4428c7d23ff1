"""What an LRPO run writes besides checkpoints: log.jsonl records, TensorBoard scalars, sample grids.

:class:`RunRecordMethods` holds these methods of :class:`~lrpo.rl.trainer.LRPOTrainer` (which
inherits them); they read the trainer's cfg, ctx, device, precision, compile_note, out_dir and
history. Every file written is recorded in the run folder's manifest, so ``--overwrite`` may remove it.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from ..data.images import image_grid, to_uint8
from ..precision import capability
from ..runlog import append_record, replace_file
from ..runs import record_written
from .types import RolloutBatch


class RunRecordMethods:
    """Log records, TensorBoard and sample grids of :class:`~lrpo.rl.trainer.LRPOTrainer`."""

    def numerics_note(self) -> str:
        """What the forwards ran in, for the log and the summary (``auto`` resolved, and why)."""
        how = f" (auto; {capability(self.device).describe()})" if self.cfg.precision == "auto" else ""
        return f"precision {self.precision}{how}; {self.compile_note}"

    def save_sample_grid(self, batch: RolloutBatch, epoch: int, max_groups: int = 4) -> Path:
        """One row per group: LQ | its G candidates | GT, as a PNG under out_dir/samples/."""
        G = self.cfg.group_size
        rows = []
        for start in range(0, min(len(batch.seeds), max_groups * G), G):
            rows.append([to_uint8(batch.lq[start])] + [to_uint8(x) for x in batch.images[start : start + G]] + [to_uint8(batch.hq[start])])
        path = self.out_dir / "samples" / f"epoch_{epoch:04d}.png"
        path.parent.mkdir(exist_ok=True)
        png = io.BytesIO()
        Image.fromarray(image_grid(rows)).save(png, format="PNG")
        replace_file(path, png.getvalue())  # a link planted at the name is replaced, not written through
        record_written(self.out_dir, path)
        return path

    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.ctx.is_main:
            append_record(self.out_dir / "log.jsonl", record)
            if self._tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        self._tb.add_scalar(k, v, record["epoch"])
                self._record_tb()

    def _record_tb(self) -> None:
        """Record TensorBoard's event files (which grow: by name) once each, so --overwrite may remove them."""
        tb = self.out_dir / "tb"
        new = [f for f in sorted(tb.rglob("*")) if f.is_file() and str(f) not in self._recorded_tb] if tb.is_dir() else []
        if new:
            record_written(self.out_dir, *new, grows=True)
            self._recorded_tb.update(str(f) for f in new)


def open_tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(out_dir / "tb"))
