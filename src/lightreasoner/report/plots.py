"""The report's figures, as PNG files: matplotlib's object API on the Agg canvas (no pyplot state, no global
backend switch); each function draws one figure into ``path`` (written atomically) and returns ``path``."""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..utils import atomic_write

COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4", "sft": "#ff7f0e"}  # eval/<name> -> bar colour


def new_figure(width: float = 6.4, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    return path


def plot_accuracy(accs: dict[str, dict[str, tuple[int, int]]], benches: list[str], means: dict[str, float | None],
                  labels: dict[str, str], path: Path) -> Path:
    """Grouped bars: accuracy per benchmark and the average, one bar per evaluated model (``labels``: names)."""
    import numpy as np

    fig = new_figure(max(5.0, 1.3 * (len(benches) + 1) + 2), 3.6)
    ax = fig.add_subplot()
    groups = benches + ["average"]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(accs))
    for k, (name, acc) in enumerate(accs.items()):
        vals = [100 * acc[b][0] / acc[b][1] if b in acc and acc[b][1] else np.nan for b in benches]
        vals.append(means[name] if means[name] is not None else np.nan)
        bars = ax.bar(x + (k - (len(accs) - 1) / 2) * width, vals, width, label=labels[name], color=COLORS[name])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 118)
    ax.legend(fontsize=8, loc="upper center", ncols=len(accs), frameon=False)
    ax.set_title("Accuracy before and after")
    return save(fig, path)


def plot_kl_histogram(kls: list[float], beta: float | None, kept_share: float, path: Path,
                      floor: float = 1e-4) -> Path:
    """Histogram of the per-step KL on a log scale (values below ``floor`` shown at it), ``beta`` marked."""
    import numpy as np

    vals = np.clip(np.asarray(kls, dtype=float), floor, None)
    hi = max(float(vals.max()), floor * 10)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.hist(vals, bins=np.geomspace(floor, hi * 1.0001, 60), color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("KL(p_E || p_A)  [nats, log scale]")
    ax.set_ylabel("steps")
    if beta is not None and beta > 0:
        above = float(np.mean(np.asarray(kls) >= beta))
        ax.axvline(beta, color="#c44e52", linestyle="--", linewidth=1.5)
        ax.text(0.98, 0.95, f"beta = {beta}\nKL >= beta: {100 * above:.1f}%\nkept: {100 * kept_share:.1f}%",
                transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "#cccccc"})
    ax.set_title("Expert-amateur KL per step")
    return save(fig, path)


def kept_rate_by_position(records: list[dict], max_bins: int = 64) -> tuple[list[int], list[float], int]:
    """``(bin starts, kept rate per bin, bin width)``: kept steps / running trajectories, positions binned."""
    length = max((len(r["kl"]) for r in records), default=0)
    width = max(1, math.ceil(length / max_bins))
    nb = max(1, math.ceil(length / width))
    alive, kept = [0] * nb, [0] * nb
    for r in records:
        for t in range(len(r["kl"])):
            alive[t // width] += 1
        for s in r["steps"]:
            kept[s["pos"] // width] += 1
    starts = [b * width for b in range(nb) if alive[b]]
    rates = [kept[b] / alive[b] for b in range(nb) if alive[b]]
    return starts, rates, width


def plot_kept_rate(records: list[dict], path: Path) -> Path:
    """:func:`kept_rate_by_position` as a line, in percent."""
    starts, rates, width = kept_rate_by_position(records)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(starts, [100 * r for r in rates], marker="o", markersize=3, color="#55a868")
    ax.set_xlabel(f"position in the expert's trajectory (token{'s, bins of ' + str(width) if width > 1 else ''})")
    ax.set_ylabel("kept steps (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Kept-step rate by position")
    return save(fig, path)


def plot_set_sizes(sizes: list[int], path: Path) -> Path:
    """Bars: how many kept steps have each plausible-set size."""
    counts = Counter(sizes)
    xs = sorted(counts)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.bar(xs, [counts[x] for x in xs], color="#8172b2")
    ax.set_xlabel("plausible-set size |V_t| (tokens)")
    ax.set_ylabel("kept steps")
    if len(xs) <= 20:
        ax.set_xticks(xs)
    ax.set_title("Plausible-set size of kept steps")
    return save(fig, path)


def plot_training_loss(points: list[tuple[int, float]], path: Path) -> Path:
    """The loss per logged update (``(update, loss)`` pairs)."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 40 else None, markersize=3,
            color="#1f77b4")
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("loss: KL(soft label || p_expert)")
    ax.set_title("Training loss")
    return save(fig, path)


def plot_perplexity(points: list[tuple[int, float]], path: Path) -> Path:
    """Gold-answer perplexity per checkpoint (``(update, perplexity)`` pairs, update 0 = the base expert)."""
    fig = new_figure(5.0, 3.2)
    ax = fig.add_subplot()
    ax.plot([s for s, _ in points], [v for _, v in points], marker="o", color="#c44e52")
    ax.set_xlabel("optimizer update (0 = base expert)")
    ax.set_ylabel("gold-answer perplexity")
    ax.set_title("Gold-answer perplexity")
    return save(fig, path)
