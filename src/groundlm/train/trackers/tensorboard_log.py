"""`log_with: tensorboard`: event files under OUT/tensorboard through torch.utils.tensorboard.

Needs the `tensorboard` package (`pip install groundlm[trackers]`). A resumed run purges the events logged
after its checkpoint's step (SummaryWriter's `purge_step`), as metrics.jsonl is rewound.
"""

from __future__ import annotations

from pathlib import Path


class TensorBoardTracker:
    def __init__(self, out: Path, run_name: str, config: dict, resume_at: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RuntimeError(
                "log_with: tensorboard needs the tensorboard package: pip install 'groundlm[trackers]'"
            ) from err
        purge = resume_at + 1 if resume_at is not None else None
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"), purge_step=purge)
        self.writer.add_text("recipe", f"run {run_name}")

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
