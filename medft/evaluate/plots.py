"""Figures of the evaluation report and the comparison page, as inline PNG data URIs.

Matplotlib draws through its Agg canvas directly (no pyplot, no window, no global backend
switch), so reports render on servers and inside the review app alike. Colours are the
Okabe-Ito palette, which stays distinct under the common colour-vision deficiencies; every
plot that colours classes uses the same colour for the same class.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medft.evaluate.html import METRIC_NAMES
from medft.slices import class_hex

GREY = "#555555"
SITE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
DPI = 110

# Which way is better, shown on the axes so that nobody has to remember it.
HIGHER_IS_BETTER = {"dice": True, "sensitivity": True, "specificity": True, "hd95": False, "nsd": True}

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "savefig.facecolor": "white",
}


def to_data_uri(fig: Figure) -> str:
    """PNG of a figure as a ``data:image/png;base64,...`` URI (the figure is released)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


# --------------------------------------------------------------------------------------------
# Evaluation report
# --------------------------------------------------------------------------------------------
def distributions(values: dict[str, dict[str, list[tuple[float, str]]]], classes: list[tuple[int, str]],
                  metrics: list[str], sites: list[str], seed: int = 0) -> str:
    """Box plot per class with each case as a jittered point, one panel per metric.

    ``values[metric][class_name]`` lists (value, site) per case; NaN values are left out and
    each class label says how many cases it shows. Points are shaped by site.
    """
    rng = np.random.default_rng(seed)
    ncols = 3
    nrows = math.ceil((len(metrics) + 1) / ncols)
    with rc_context(STYLE):
        fig = _figure(3.1 * ncols, 2.7 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        marker_of = {site: SITE_MARKERS[i % len(SITE_MARKERS)] for i, site in enumerate(sites)}
        for ax, metric in zip(axes, metrics, strict=False):  # more panels than metrics: the last ones stay empty
            ticks = []
            for position, (index, name) in enumerate(classes, start=1):
                pairs = [(v, s) for v, s in values[metric][name] if v is not None and np.isfinite(v)]
                ticks.append(f"{name}\nn={len(pairs)}")
                if not pairs:
                    continue
                data = np.array([v for v, _ in pairs])
                box = ax.boxplot(data, positions=[position], widths=0.55, showfliers=False, patch_artist=True,
                                 medianprops={"color": "black", "linewidth": 1.4},
                                 whiskerprops={"color": GREY}, capprops={"color": GREY})
                for patch in box["boxes"]:
                    patch.set(facecolor=class_hex(index), alpha=0.45, edgecolor=GREY)
                jitter = rng.uniform(-0.17, 0.17, len(pairs))
                for (value, site), dx in zip(pairs, jitter, strict=True):
                    ax.plot(position + dx, value, marker=marker_of.get(site, "o"), color="black", alpha=0.75,
                            markersize=4, linestyle="none", markeredgewidth=0)
            ax.set_xticks(range(1, len(classes) + 1), ticks)
            ax.set_xlim(0.4, len(classes) + 0.6)
            ax.grid(axis="x", visible=False)
            better = "higher is better" if HIGHER_IS_BETTER.get(metric, True) else "lower is better"
            ax.set_title(f"{METRIC_NAMES.get(metric, metric)}  ({better})")
            shown = _finite([v for pairs in values[metric].values() for v, _ in pairs])
            if metric == "specificity" and shown.size and shown.min() > 0.9:
                # Close to 1 for any small structure: zoom in, and say so on the axis.
                low = max(0.0, shown.min() - 0.1 * (1 - shown.min()) - 1e-4)
                ax.set_ylim(low, 1 + 0.05 * (1 - low))
                ax.set_ylabel("zoomed in: all values near 1", fontsize=8, color=GREY)
            elif metric in ("dice", "sensitivity", "specificity", "nsd"):
                ax.set_ylim(-0.03, 1.03)
            else:
                ax.set_ylim(bottom=0)
        legend_ax = axes[len(metrics)]
        legend_ax.axis("off")
        handles = [Patch(facecolor=class_hex(i), alpha=0.45, edgecolor=GREY, label=n) for i, n in classes]
        handles.append(Line2D([], [], color="black", linewidth=1.4, label="median; box: quartiles"))
        if len(sites) > 1:
            handles += [Line2D([], [], marker=marker_of[s], color="black", linestyle="none", markersize=5,
                               label=f"site {s}") for s in sites]
        else:
            handles.append(Line2D([], [], marker="o", color="black", linestyle="none", markersize=4, label="one case"))
        legend_ax.legend(handles=handles, loc="center", fontsize=9)
        for ax in axes[len(metrics) + 1:]:
            ax.axis("off")
        return to_data_uri(fig)


def confusion(matrix: np.ndarray, class_names: list[str]) -> str:
    """Row-normalised voxel confusion matrix as a heat map, each cell with its percent and count."""
    matrix = np.asarray(matrix, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n = len(class_names)
    with rc_context(STYLE | {"axes.grid": False}):
        fig = _figure(1.4 + 1.25 * n, 1.0 + 1.05 * n)
        ax = fig.subplots()
        image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                colour = "white" if normalised[i, j] > 0.55 else "black"
                ax.text(j, i, f"{100 * normalised[i, j]:.1f}%\n{_count(matrix[i, j])}", ha="center", va="center",
                        color=colour, fontsize=8)
        labels = [f"{k} {name}" for k, name in enumerate(class_names)]
        ax.set_xticks(range(n), labels, rotation=30, ha="right")
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title("Voxels per true class (rows sum to 100%)")
        fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class's voxels")
        return to_data_uri(fig)


def _count(value: float) -> str:
    value = float(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def roc(curves: dict[str, dict], class_index: dict[str, int]) -> str:
    """One-vs-rest ROC curves per class, AUC in the legend: full range and low false-positive range."""
    with rc_context(STYLE):
        fig = _figure(9.0, 3.9)
        full, low = fig.subplots(1, 2)
        for name, curve in curves.items():
            fpr, tpr = np.asarray(curve["fpr"], dtype=float), np.asarray(curve["tpr"], dtype=float)
            colour = class_hex(class_index.get(name, 1))
            label = f"{name} (AUC {curve['auc']:.3f})" if curve.get("auc") is not None else name
            full.plot(fpr, tpr, color=colour, linewidth=1.8, label=label)
            keep = fpr > 0
            low.plot(fpr[keep], tpr[keep], color=colour, linewidth=1.8, label=label)
        full.plot([0, 1], [0, 1], linestyle=":", color=GREY, linewidth=1, label="chance")
        full.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate (1 − specificity)",
                 ylabel="True-positive rate (sensitivity)", title="ROC, one class against the rest")
        full.legend(loc="lower right")
        low.set_xscale("log")
        low.set(ylim=(0, 1.01), xlabel="False-positive rate, log scale", ylabel="True-positive rate",
                title="Low false-positive range")
        low.legend(loc="lower right")
        return to_data_uri(fig)


NO_CI_LABEL = "hollow: no CI (n < 2)"


def mark_without_ci(ax, points: list[tuple[float, float]], marker: str, colour: str) -> bool:
    """Hollow markers over the points that have no interval: a bare point would read as a precise mean."""
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker=marker, markersize=6, linestyle="none", markerfacecolor="white", markeredgecolor=colour,
                zorder=3)
    return bool(points)


def no_ci_handle() -> Line2D:
    return Line2D([], [], marker="o", markersize=6, linestyle="none", markerfacecolor="white", markeredgecolor=GREY,
                  label=NO_CI_LABEL)


SITE_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


def site_dice(per_site: dict[str, dict], classes: list[tuple[int, str]], mean_label: str) -> str:
    """Mean Dice per class (and foreground mean) per site, with 95% CI error bars."""
    sites = list(per_site)
    groups = [(name, name) for _, name in classes] + [("mean_foreground", mean_label)]
    width = 0.8 / max(len(sites), 1)
    without_ci = False
    with rc_context(STYLE):
        fig = _figure(max(5.5, 1.2 + 1.6 * len(groups)), 3.6)
        ax = fig.subplots()
        for k, site in enumerate(sites):
            xs, ys, err_low, err_high, bare = [], [], [], [], []
            for g, (key, _) in enumerate(groups):
                stats = ((per_site[site].get(key) or {}).get("dice")) or {}
                mean = stats.get("mean")
                if mean is None or not np.isfinite(mean):
                    continue
                lo, hi = (stats.get("ci95") or [None, None])[:2]
                xs.append(g + (k - (len(sites) - 1) / 2) * width)
                ys.append(mean)
                err_low.append(0.0 if lo is None else max(mean - lo, 0.0))
                err_high.append(0.0 if hi is None else max(hi - mean, 0.0))
                if lo is None or hi is None:
                    bare.append((xs[-1], mean))
            n = ((per_site[site].get("mean_foreground") or {}).get("dice") or {}).get("n")
            marker, colour = SITE_MARKERS[k % len(SITE_MARKERS)], SITE_COLOURS[k % len(SITE_COLOURS)]
            ax.errorbar(xs, ys, yerr=[err_low, err_high], fmt=marker, capsize=4, markersize=6, color=colour,
                        label=site + (f" (n={n})" if n is not None else ""))
            without_ci |= mark_without_ci(ax, bare, marker, colour)
        ax.set_xticks(range(len(groups)), [label for _, label in groups])
        ax.grid(axis="x", visible=False)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Mean Dice with 95% CI")
        ax.set_title("Dice per site")
        handles = ax.get_legend_handles_labels()[0] + ([no_ci_handle()] if without_ci else [])
        ax.legend(handles=handles, title="site", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over a point
        return to_data_uri(fig)


A_COLOUR, B_COLOUR = "#0072B2", "#D55E00"


def compare_means(groups: list[str], a: list[dict], b: list[dict], diff: list[dict], labels: tuple[str, str],
                  diff_title: str = "Paired difference, 95% CI") -> str:
    """Left: mean Dice of A and B per class with 95% CIs. Right: the difference B − A with its CI (titled diff_title)."""
    with rc_context(STYLE):
        fig = _figure(10.0, 3.8)
        left, right = fig.subplots(1, 2, width_ratios=[1.25, 1])
        without_ci = False
        for k, (stats, label, colour, marker) in enumerate(((a, labels[0], A_COLOUR, "o"), (b, labels[1], B_COLOUR, "s"))):
            xs, ys, lows, highs, bare = [], [], [], [], []
            for g, s in enumerate(stats):
                if s.get("mean") is None:
                    continue
                lo, hi = s.get("ci95") or (None, None)
                xs.append(g + (k - 0.5) * 0.28)
                ys.append(s["mean"])
                lows.append(max(s["mean"] - (s["mean"] if lo is None else lo), 0))
                highs.append(max((s["mean"] if hi is None else hi) - s["mean"], 0))
                if lo is None or hi is None:
                    bare.append((xs[-1], s["mean"]))
            left.errorbar(xs, ys, yerr=[lows, highs], fmt=marker, color=colour, capsize=4, markersize=6, label=label)
            without_ci |= mark_without_ci(left, bare, marker, colour)
        left.set_xticks(range(len(groups)), groups)
        left.grid(axis="x", visible=False)
        left.set(ylim=(-0.02, 1.02), ylabel="Mean Dice with 95% CI", title="Mean Dice")
        handles = left.get_legend_handles_labels()[0] + ([no_ci_handle()] if without_ci else [])
        left.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=len(handles))  # above the axes
        ys = np.arange(len(groups))[::-1]
        for y, d in zip(ys, diff, strict=True):
            if d.get("mean") is None:
                continue
            lo, hi = d["ci95"]
            colour = B_COLOUR if lo > 0 else (A_COLOUR if hi < 0 else GREY)
            right.errorbar([d["mean"]], [y], xerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="D", color=colour,
                           capsize=4, markersize=6)
        right.axvline(0, color="black", linewidth=0.9)
        right.set_yticks(ys, groups)
        right.grid(axis="y", visible=False)
        span = max([abs(v) for d in diff if d.get("mean") is not None for v in d["ci95"]] + [0.02]) * 1.25
        right.set_xlim(-span, span)
        right.set(xlabel=f"Dice difference ({labels[1]} − {labels[0]})", title=diff_title)
        return to_data_uri(fig)


def paired_cases(groups: list[str], pairs: list[list[tuple[str, float, float]]], labels: tuple[str, str]) -> str:
    """One panel per class: each common case's Dice under A joined by a line to its Dice under B."""
    ncols = min(len(groups), 4)
    nrows = math.ceil(len(groups) / ncols)
    with rc_context(STYLE):
        fig = _figure(2.6 * ncols + 0.4, 3.2 * nrows + 0.3)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
        for ax, group, cases in zip(axes[:len(groups)], groups, pairs, strict=True):
            better = worse = 0
            for _, va, vb in cases:
                colour = B_COLOUR if vb > va else (A_COLOUR if vb < va else GREY)
                better += vb > va
                worse += vb < va
                ax.plot([0, 1], [va, vb], color=colour, alpha=0.6, linewidth=1, marker="o", markersize=3)
            ax.set_xticks([0, 1], [_short(labels[0]), _short(labels[1])])
            ax.set_xlim(-0.25, 1.25)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(axis="x", visible=False)
            ax.set_title(f"{group}\n{better} up, {worse} down, n={len(cases)}")
        axes[0].set_ylabel("Dice per case")
        for ax in axes[len(groups):]:
            ax.axis("off")
        handles = [Line2D([], [], color=B_COLOUR, label=f"higher with {labels[1]}"),
                   Line2D([], [], color=A_COLOUR, label=f"higher with {labels[0]}")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2)
        return to_data_uri(fig)


def _short(text: str, limit: int = 18) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
