"""The family checkpoints check_families.py evaluates: one per backend family groundlm serves (`BACKENDS`).

No weights can be downloaded here, so each family starts as the tiny random checkpoint of
tests/backend_models.py (`build_family`, the family's published layout and processor files). Random weights
answer garbage, and two scorers agreeing on garbage proves little, so every family groundlm can fine-tune
(`backends.TRAINABLE`) is trained through groundlm's own recipe path (`init_from: {kind: FAMILY, path: ...}`)
on ShapesWorld referring expressions until its answers are boxes in the family's own format; its recipe is
`family_rec_<family>.yaml` beside this file (CHECKPOINT stands for the random checkpoint's directory). A
trained model is kept in WORKDIR/<family>/train and reused while its recipe and tests/backend_models.py are
unchanged (check_lmms.trained_model). The other families are evaluated with their random weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

from check_lmms import log, trained_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
BUILDER = ROOT / "tests" / "backend_models.py"
SEED = 0
sys.path.insert(0, str(ROOT))  # for tests.backend_models, imported when first needed (it imports transformers)


def families() -> list[str]:
    """Every family tests/backend_models.py builds (check_families.py checks they cover `BACKENDS`)."""
    from tests.backend_models import FAMILIES

    return list(FAMILIES)


def uncovered(built: list[Path]) -> set[str]:
    """The model types the backends serve that none of the `built` checkpoints has."""
    from groundlm.backends import BACKENDS, family_of

    return set(BACKENDS) - {family_of(d) for d in built}


def recipe_of(family: str) -> Path | None:
    """The fine-tuning recipe of `family` (None for a family groundlm does not train); a trainable family
    without one is an error, so a family added to TRAINABLE is not silently left untrained here."""
    from groundlm.backends import TRAINABLE

    path = HERE / f"family_rec_{family}.yaml"
    if family in TRAINABLE and not path.is_file():
        raise SystemExit(f"FAIL: {family} is trainable (backends.TRAINABLE) but {path.name} is missing")
    if family not in TRAINABLE and path.is_file():
        raise SystemExit(f"FAIL: {path.name} exists but {family} is not in backends.TRAINABLE")
    return path if family in TRAINABLE else None


def random_checkpoint(family: str, directory: Path) -> Path:
    """The tiny random checkpoint of `family` (tests/backend_models.py, seed SEED), built afresh: it takes
    seconds and is the same every time for the same builder."""
    from tests.backend_models import build_family

    if directory.exists():
        for f in directory.iterdir():
            f.unlink()
    return build_family(family, directory, seed=SEED)


def family_model(family: str, base: Path, workdir: Path, timeout: float) -> tuple[Path, str]:
    """The model directory check_families.py evaluates for `family`, whose random checkpoint is `base`
    (`random_checkpoint`), and how it was made ("fine-tuned" or "random weights")."""
    recipe = recipe_of(family)
    if recipe is None:
        log(f"{family}: groundlm does not fine-tune it; evaluating its random weights ({base})")
        return base, "random weights"
    written = workdir / family / recipe.name
    written.write_text(recipe.read_text().replace("CHECKPOINT", str(base)))
    model = trained_model(written, workdir / family / "train", timeout,
                          depends_on=BUILDER.read_bytes() + str(SEED).encode())
    return model, "fine-tuned"
