"""The loss curves of a run (`OUT/loss.png`): the overall loss and one curve per task, per step."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .monitor import read_metrics


def _smooth(values: list[float], window: int) -> list[float]:
    """A trailing moving average (raw per-step losses of small batches are too noisy to read)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(metrics: str | Path, png: str | Path, *, title: str = "") -> Path:
    """Draw the loss per step (thin: raw, thick: smoothed) and each task's smoothed loss into `png`.

    Stage boundaries are dashed vertical lines. Uses matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in read_metrics(metrics) if r.get("loss") is not None]
    if not rows:
        raise ValueError(f"{metrics}: no finite losses to plot")
    window = max(1, len(rows) // 40)
    steps = [r["step"] for r in rows]
    losses = [r["loss"] for r in rows]
    per_task: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for r in rows:
        for task, value in (r.get("task_loss") or {}).items():
            per_task[task][0].append(r["step"])
            per_task[task][1].append(value)

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    ax.plot(steps, losses, color="0.75", linewidth=0.6)
    ax.plot(steps, _smooth(losses, window), color="black", linewidth=2.0, label="all")
    for task in sorted(per_task):
        xs, ys = per_task[task]
        ax.plot(xs, _smooth(ys, max(1, len(ys) // 40)), linewidth=1.2, label=task)
    previous = None
    for r in rows:
        if previous is not None and r["stage"] != previous:
            ax.axvline(r["step"] - 0.5, color="0.5", linestyle="--", linewidth=0.8)
            ax.text(r["step"], ax.get_ylim()[1], f" {r['stage']}", va="top", fontsize=8, color="0.4")
        previous = r["stage"]
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per supervised token)")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, 2, 4 rather than 5x10^-1, 2x10^0
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_title(title or "training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png)
    plt.close(fig)
    return png


def draw_run(out: Path, title: str) -> None:
    """`OUT/loss.png` of a run from its metrics, or a line saying why there is none."""
    try:
        plot_losses(out / "metrics.jsonl", out / "loss.png", title=title)
    except ImportError:
        print("matplotlib is not installed: no loss.png (pip install matplotlib)", flush=True)
    except ValueError as err:
        print(f"no loss.png: {err}", flush=True)
