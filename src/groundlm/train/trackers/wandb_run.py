"""`log_with: wandb`: a Weights & Biases run, offline unless told otherwise.

Offline by default (files under OUT/wandb, nothing sent; `wandb sync OUT/wandb/offline-run-*` uploads them
later), so a run never waits on, or fails for, the network. Set `WANDB_MODE=online` to log live. The project
is the recipe's name (or `WANDB_PROJECT`); the run's config is the resolved recipe. A resumed run keeps
logging into the same run id (kept in OUT/wandb-run-id); wandb itself ignores rows whose step is not newer
than the last one it holds.
"""

from __future__ import annotations

import os
from pathlib import Path


class WandbTracker:
    def __init__(self, out: Path, run_name: str, config: dict, resume_at: int | None = None):
        try:
            import wandb
        except ImportError as err:
            raise RuntimeError(
                "log_with: wandb needs the wandb package: pip install 'groundlm[trackers]'"
            ) from err
        out = Path(out)
        id_file = out / "wandb-run-id"
        run_id = id_file.read_text().strip() if resume_at is not None and id_file.is_file() else None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", run_name),
            name=out.name,
            dir=str(out),
            config=config,
            mode=os.environ.get("WANDB_MODE", "offline"),
            id=run_id,
            resume="allow" if run_id else None,
        )
        id_file.write_text(self.run.id)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()
