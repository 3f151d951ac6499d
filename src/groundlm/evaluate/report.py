"""`report.md`: the metrics table and pictures of the best and worst examples of every task (the best among
those that scored above 0), the objects a question is about drawn apart from the scene's others."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..images import ImageError, load_image
from ..records import BOX_SLOT
from ..tasks import get_task
from ..visualize import Drawable, draw
from .scoring import reference_pairs, row_score

EXAMPLES = 3  # best and worst per task
LEGEND = ("In the pictures: white with a black inner line, the ground truth the question is about (the referent, "
          "the objects to find, the region asked about); thin grey, the scene's other objects; in colour, the "
          "model's answer.")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(metrics: dict[str, dict]) -> str:
    """The Markdown table of headline scores per task (REC also per expression kind, when known)."""
    lines = ["| task | metric | score | n |", "|---|---|---|---|"]
    for task, m in metrics.items():
        n = m.get("total", m.get("ground_truth", ""))
        lines.append(f"| {task} | {m['metric']} | {_fmt(m['score'])} | {n} |")
        for kind, k in m.get("by_kind", {}).items():
            lines.append(f"| {task}: {kind} | {m['metric']} | {_fmt(k['score'])} | {k['total']} |")
    return "\n".join(lines)


def _picture(row: dict, image_root: Path, path: Path) -> bool:
    try:
        image = load_image(image_root / row["image"])
    except (ImageError, TypeError):
        return False
    # The objects the question is about: the reference's slots (refer, grounding, detection) and the prompt's
    # (identify, region chat); a task that draws objects without slots (segmentation) is about all of them.
    about = {int(m.group(1)) for m in BOX_SLOT.finditer(row["reference"] + " " + row["prompt"])}
    phrases = {tuple(b): p for p, b in reference_pairs(row)}
    if not about and get_task(row["task"]).draws_objects:
        about = set(range(len(row["objects"])))
    items = []
    for i, o in enumerate(row["objects"]):
        if i in about:
            phrase = phrases.get(tuple(o["box"]))
            items.append(Drawable(o["box"], f"gt: {phrase}" if phrase else "gt", ground_truth=True))
        else:
            items.append(Drawable(o["box"], None, ground_truth=True, faint=True))
    items += [Drawable(o["box"], o.get("phrase") or "pred") for o in row["prediction_objects"] if o.get("box")]
    draw(image, items).save(path)
    return True


def _chosen(rows: list[dict]) -> dict[str, list[dict]]:
    """The best and worst EXAMPLES rows by score; the best only among rows that scored above 0."""
    ranked = sorted(rows, key=row_score)
    return {"best": [r for r in ranked[::-1] if row_score(r) > 0][:EXAMPLES], "worst": ranked[:EXAMPLES]}


def write_report(rows: Sequence[dict], metrics: dict[str, dict], out: Path, *, image_root: Path | None) -> Path:
    """Write `out/report.md` (and `out/examples/*.png` when the images can be read)."""
    parts = ["# Evaluation report", "", metrics_table(metrics), ""]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    pictures = image_root is not None
    if pictures:
        (out / "examples").mkdir(exist_ok=True)
        parts += [LEGEND, ""]
    for task in sorted(by_task):
        parts += [f"## {task}", ""]
        for kind, examples in _chosen(by_task[task]).items():
            parts.append(f"**{kind}**")
            parts.append("")
            if not examples:
                parts.append("- none: no prediction of this task scored above 0")
            for r in examples:
                parts.append(f"- `{r['id']}` score {row_score(r):.2f} — prompt: {r['prompt']!r} — "
                             f"reference: {r['reference']!r} — prediction: {r['prediction']!r}")
                name = f"examples/{task}-{kind}-{r['id']}.png"
                if pictures and r.get("image") and _picture(r, image_root, out / name):
                    parts.append(f"  ![{r['id']}]({name})")
            parts.append("")
    if not pictures:
        parts.append("_Pictures left out: the images were not available when this report was written._")
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
