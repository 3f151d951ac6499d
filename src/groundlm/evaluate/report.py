"""`report.md`: the metrics table and pictures of the best and worst examples of every task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..images import ImageError, load_image
from ..tasks import get_task
from ..visualize import Drawable, draw
from .scoring import reference_pairs, row_score

EXAMPLES = 3  # best and worst per task


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(metrics: dict[str, dict]) -> str:
    """The Markdown table of headline scores per task."""
    lines = ["| task | metric | score | n |", "|---|---|---|---|"]
    for task, m in metrics.items():
        n = m.get("total", m.get("ground_truth", ""))
        lines.append(f"| {task} | {m['metric']} | {_fmt(m['score'])} | {n} |")
    return "\n".join(lines)


def _picture(row: dict, image_root: Path, path: Path) -> bool:
    try:
        image = load_image(image_root / row["image"])
    except (ImageError, TypeError):
        return False
    gt_boxes = [(p, b) for p, b in reference_pairs(row)]
    if not gt_boxes and get_task(row["task"]).draws_objects:
        gt_boxes = [(None, o["box"]) for o in row["objects"]]
    items = [Drawable(b, f"gt: {p}" if p else "gt", ground_truth=True) for p, b in gt_boxes]
    items += [Drawable(o["box"], o.get("phrase") or "pred") for o in row["prediction_objects"] if o.get("box")]
    draw(image, items).save(path)
    return True


def write_report(rows: Sequence[dict], metrics: dict[str, dict], out: Path, *, image_root: Path | None) -> Path:
    """Write `out/report.md` (and `out/examples/*.png` when the images can be read)."""
    parts = ["# Evaluation report", "", metrics_table(metrics), ""]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    pictures = image_root is not None
    if pictures:
        (out / "examples").mkdir(exist_ok=True)
    for task in sorted(by_task):
        ranked = sorted(by_task[task], key=row_score)
        chosen = {"best": ranked[::-1][:EXAMPLES], "worst": ranked[:EXAMPLES]}
        parts += [f"## {task}", ""]
        for kind, examples in chosen.items():
            parts.append(f"**{kind}**")
            parts.append("")
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
