"""What a stage optimises: one small object per recipe `objective:`, so the loop (train/loop.py) names none.

`OBJECTIVES[stage.objective](stage, model, processor, seed)` builds a stage's objective once what trains is
set; `Objective` says what the loop asks of it. A new objective is one class here and an entry in
`OBJECTIVES`; its `check` validates its stage settings as a recipe is read (train/recipe.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..processor import IGNORE_INDEX
from .dense import HEAD, DenseTargets, build_dense_model, dense_losses
from .packing import OWNER, per_sample_sums
from .recipe import DenseSpec, RecipeError, StageSpec
from .soft_targets import coordinate_token_ids, soft_coordinate_losses
from .strategies import WHOLE_MODEL


class Objective(Protocol):
    """The loss of a stage, and what it needs besides the model's trained modules."""

    images_only: bool  # a sample needs only its image and objects, no conversation (train/sources.py)
    module: nn.Module  # what the strategy prepares and `losses` runs: the model, or a module of its own
    param_groups: list[dict]  # AdamW groups of its own, beyond the model's (params.configure_trainable)

    @staticmethod
    def check(stage: StageSpec, where: str) -> None:
        """Validate the stage's settings of this objective and fill their defaults; RecipeError names `where`."""

    def targets(self, samples: Sequence) -> dict[str, torch.Tensor]:
        """Tensors the loss needs beyond the padded batch, added to it before it moves to the device."""

    def tasks(self, samples: Sequence, source: str) -> list[str]:
        """The label each sample's loss is logged under in `task_loss` (`source`: the mixture's source name)."""

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss units per sample, [B], known before the forward: a step's loss is the mean over all units of
        all its micro-batches and processes."""

    def losses(
        self, module: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Each sample's summed loss, [B], and the fields this forward adds to the step's metrics row."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors a mid-stage checkpoint keeps beyond the model's (saved among its weights), for exact resume."""

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Restore `state_dict()`'s tensors from checkpoint `where` (empty: the stage's start); raise on others."""


# ------------------------------------------------------------------------------------------------------------
# lm


def forward(model: nn.Module, batch: dict[str, torch.Tensor]):
    """The model's output on a training batch; its labels stay out (the loss is taken here, per token)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", OWNER)}
    inputs["use_cache"] = False  # no generation here; a cache would only cost memory
    return model(**inputs)


def token_losses(
    logits: torch.Tensor, labels: torch.Tensor, soft: tuple[torch.Tensor, float] | None = None
) -> torch.Tensor:
    """Next-token cross-entropy per position, [B, T-1], zero where the label is -100.

    logits [B, T, V], labels [B, T]. Taken here rather than by the language model so the loop can weigh
    tokens across processes and report a loss per sample (per task). `soft` = (coordinate token ids, sigma)
    gives coordinate tokens Gaussian targets (train/soft_targets.py).
    """
    targets = labels[:, 1:]  # [B, T-1]
    if soft is not None:
        return soft_coordinate_losses(logits[:, :-1], targets, soft[0], soft[1], IGNORE_INDEX)
    return F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )


def lm_token_losses(
    model: nn.Module, batch: dict[str, torch.Tensor], soft: tuple[torch.Tensor, float] | None = None
) -> torch.Tensor:
    """`token_losses` of the model's forward on `batch`, [B, T-1]."""
    return token_losses(forward(model, batch).logits, batch["labels"], soft)


def _per_sample(per_position: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-position values [rows, T-1] summed per sample [B]: by row, or for packed rows by `OWNER`."""
    owner = batch.get(OWNER)
    if owner is None:
        return per_position.sum(1)
    return per_sample_sums(per_position, owner, int(owner.max()) + 1)


class LMObjective:
    """`lm`: next-token cross-entropy over the answers, one unit per supervised token.

    With the stage's `coordinate_sigma`, coordinate tokens get Gaussian targets (train/soft_targets.py). When
    the model's output carries location losses (the embedding codec's box, cycle and mask terms), they are
    added: those terms are means over boxes that the published recipe adds to the mean token loss, so each
    sample's share of them (`location_sample_losses`, summing to the batch's weighted location total) is
    multiplied by the batch's supervised-token count. After the loop divides by the step's token count, the
    step loss is `mean token CE + location total`: exactly so for one process without accumulation, the same
    weighting on average otherwise. The terms themselves go to the metrics row as `location_losses`.
    """

    images_only = False

    @staticmethod
    def check(stage: StageSpec, where: str) -> None:
        if stage.dense is not None:
            raise RecipeError(f"{where}.dense: only a dense_patches stage takes dense settings")

    def __init__(self, stage: StageSpec, model: nn.Module, processor, seed: int):
        self.module = model
        self.param_groups: list[dict] = []
        self.soft = None
        if stage.coordinate_sigma:
            self.soft = (coordinate_token_ids(processor), stage.coordinate_sigma)  # ids [K] in value order

    def targets(self, samples: Sequence) -> dict[str, torch.Tensor]:
        return {}

    def tasks(self, samples: Sequence, source: str) -> list[str]:
        return [s.meta.get("task") or source for s in samples]

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        supervised = batch["labels"][:, 1:] != IGNORE_INDEX  # [B, T-1] (packed: [R, L-1])
        return _per_sample(supervised.long(), batch)  # [B] supervised tokens

    def losses(
        self, module: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        out = forward(module, batch)
        per_sample = _per_sample(token_losses(out.logits, batch["labels"], self.soft), batch)  # [B]
        location = getattr(out, "location_sample_losses", None)  # [B] or None
        if location is None:
            return per_sample, {}
        n_tokens = self.units(batch).sum().clamp(min=1)
        terms = {k: float(v) for k, v in out.location_losses.items()}
        return per_sample + location * n_tokens, {"location_losses": terms}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        if state:
            raise ValueError(f"{where}: holds parameters this model does not have, e.g. {sorted(state)[:3]}")


# ------------------------------------------------------------------------------------------------------------
# dense_patches


class DenseObjective:
    """`dense_patches`: the vision tower learns what lies under each patch through a training-only head
    (train/dense.py), one unit per patch. Samples need only their image and objects; the head's weights are
    saved in the stage's checkpoints as `dense_head.*` and dropped when the stage ends."""

    images_only = True
    prefix = HEAD + "."  # of the head's parameters in checkpoints and in `module`

    @staticmethod
    def check(stage: StageSpec, where: str) -> None:
        if stage.packing:
            raise RecipeError(f"{where}.packing: a dense_patches stage has no token rows to pack")
        if stage.strategy not in WHOLE_MODEL:  # the head is a module of its own, beside the model
            raise RecipeError(
                f"{where}.strategy: a dense_patches stage runs with strategy: {' or '.join(WHOLE_MODEL)}"
            )
        if stage.dense is None:
            stage.dense = DenseSpec()
        if not 0.0 < stage.dense.min_cover <= 1.0:
            raise RecipeError(f"{where}.dense.min_cover: must be in (0, 1], got {stage.dense.min_cover}")

    def __init__(self, stage: StageSpec, model: nn.Module, processor, seed: int):
        spec = self.spec = stage.dense
        self.module = build_dense_model(model, spec, len(processor.tokenizer), seed=seed + 31)
        self.head = self.module.dense_head
        lr = spec.head_lr or max(stage.train.values(), default=stage.lora.lr if stage.lora else 1e-3)
        self.param_groups = []
        for decay in (True, False):  # as params.configure_trainable: weights decay, biases and norms do not
            members = [(n, p) for n, p in self.head.named_parameters() if (p.ndim >= 2) == decay]
            self.param_groups.append(
                {
                    "params": [p for _, p in members],
                    "names": [self.prefix + n for n, _ in members],
                    "lr": lr,
                    "weight_decay": stage.weight_decay if decay else 0.0,
                    "module": HEAD,
                }
            )
        cfg = model.config
        self.dense_targets = DenseTargets(
            processor.tokenizer, cfg.image_size, cfg.vision_config.patch_size, spec.min_cover
        )

    def targets(self, samples: Sequence) -> dict[str, torch.Tensor]:
        return self.dense_targets.batch(samples)

    def tasks(self, samples: Sequence, source: str) -> list[str]:
        return ["dense_patches"] * len(samples)  # the samples' conversations are not what this stage trains

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        fg = batch["dense_fg"]  # [B, P]
        return torch.full((fg.shape[0],), fg.shape[1], dtype=torch.long)

    def losses(
        self, module: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return dense_losses(module, batch, self.spec), {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {self.prefix + k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        if not state:  # a checkpoint from before the stage's first step: the head starts fresh
            return
        unknown = sorted(k for k in state if not k.startswith(self.prefix))
        if unknown:
            raise ValueError(f"{where}: holds parameters this model does not have, e.g. {unknown[:3]}")
        self.head.load_state_dict({k[len(self.prefix) :]: v for k, v in state.items()})


OBJECTIVES: dict[str, type[Objective]] = {"lm": LMObjective, "dense_patches": DenseObjective}

__all__ = [
    "OBJECTIVES",
    "DenseObjective",
    "LMObjective",
    "Objective",
    "forward",
    "lm_token_losses",
    "token_losses",
]
