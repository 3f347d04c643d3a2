"""The ablation figure: one paper column, two panels, 95 % t-intervals over seeds.

(a) per variant (frozen, selected, front, middle, back, all, and Omni-NegCLIP's groups when run): scope
    accuracy on held-out objects and on held-out templates, CC-Neg-style accuracy and image->text R@1
    among 100 (retention), each a point with its interval;
(b) the single-layer sweep: scope accuracy against the one block that trained, with interval
    bands, the frozen model as a reference line and the front / middle / back blocks marked; the
    y axis is zoomed to the data (differences between layers are the point of this panel).

Built on a bare `matplotlib.figure.Figure` (no pyplot state, no display needed).
"""
from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from analysis.ablation.validity import headline
from analysis.ablation.variants import GROUP_VARIANTS, OMNI_VARIANTS, block_variants, sweep_layer

COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper
PANEL_A_METRICS = (
    ("object/scope_accuracy", "scope, held-out objects", "#1b6ca8", "o"),
    ("template/scope_accuracy", "scope, held-out templates", "#5fa8d3", "s"),
    ("object/ccneg_accuracy", "CC-Neg-style", "#d1495b", "^"),
    ("object/image_to_text_R@1_among_100", "I→T R@1 among 100 (retention)", "#3a3a3a", "D"),
)
PANEL_B_METRICS = (
    ("object/scope_accuracy", "held-out objects", "#1b6ca8"),
    ("template/scope_accuracy", "held-out templates", "#5fa8d3"),
    ("cue/scope_accuracy", "held-out cues", "#8a5fbf"),
)
FONT = {"font.size": 7, "axes.labelsize": 7, "axes.titlesize": 7.5, "legend.fontsize": 6, "xtick.labelsize": 6.5,
        "ytick.labelsize": 6.5}


def _errors(values: list[dict[str, float]]) -> np.ndarray:
    """[2, n] distances below and above the mean, as errorbar wants them."""
    return np.array([[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]])


def _panel_variants(ax, summary: dict[str, Any]) -> None:
    entries = [entry for entry in summary["variants"] if entry["variant"] in GROUP_VARIANTS + tuple(OMNI_VARIANTS)]
    if not entries:
        ax.text(0.5, 0.5, "no group variants run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    x = np.arange(len(entries))
    offsets = np.linspace(-0.27, 0.27, len(PANEL_A_METRICS))
    for (key, label, colour, marker), offset in zip(PANEL_A_METRICS, offsets):
        present = [(i, entry["metrics"][key]) for i, entry in enumerate(entries) if key in entry["metrics"]]
        if not present:
            continue
        xs = np.array([i for i, _ in present]) + offset
        values = [value for _, value in present]
        ax.errorbar(xs, [v["mean"] for v in values], yerr=_errors(values), fmt=marker, color=colour, markersize=3.2,
                    elinewidth=0.9, capsize=1.8, label=label)
    ax.axhline(0.5, color="0.6", linestyle=":", linewidth=0.8, label="chance (scope)")
    ax.set_xticks(x, [entry["variant"] for entry in entries])
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fine-tuned blocks (variant)")
    ax.set_ylabel("accuracy / R@1")
    ax.set_title("(a) negation and retention per variant")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False, handletextpad=0.3,
              columnspacing=1.0)


def _panel_sweep(ax, summary: dict[str, Any]) -> None:
    sweep = sorted(((sweep_layer(entry["variant"]), entry) for entry in summary["variants"]
                    if sweep_layer(entry["variant"]) is not None), key=lambda pair: pair[0])
    if not sweep:
        ax.text(0.5, 0.5, "no single-layer sweep run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    layers = np.array([layer for layer, _ in sweep])
    for key, label, colour in PANEL_B_METRICS:
        values = [entry["metrics"].get(key) for _, entry in sweep]
        if any(v is None for v in values):
            continue
        ax.plot(
            layers, [v["mean"] for v in values], marker="o", markersize=2.5, linewidth=1.0, color=colour, label=label
        )
        ax.fill_between(layers, [v["low"] for v in values], [v["high"] for v in values], color=colour, alpha=0.2,
                        linewidth=0)
    shown = [
        v
        for key, _, _ in PANEL_B_METRICS
        for _, entry in sweep
        for v in ([entry["metrics"][key]["low"], entry["metrics"][key]["high"]] if key in entry["metrics"] else [])
    ]
    frozen = next((entry for entry in summary["variants"] if entry["variant"] == "frozen"), None)
    if frozen is not None and "object/scope_accuracy" in frozen["metrics"]:
        level = frozen["metrics"]["object/scope_accuracy"]["mean"]
        ax.axhline(level, color="0.35", linestyle="--", linewidth=0.8, label="frozen (held-out objects)")
        shown.append(level)
    low, high = min(shown), max(shown)
    if low - 0.1 <= 0.5 <= high + 0.1:  # chance only when it is near the data; the axis label says where we are
        ax.axhline(0.5, color="0.6", linestyle=":", linewidth=0.8, label="chance")
        low, high = min(low, 0.5), max(high, 0.5)
    # Zoomed to the data, so that differences between layers are visible; the top third of the
    # axes is left for the front / middle / back brackets.
    span = max(high - low, 0.05)
    ax.set_ylim(max(0.0, low - 0.1 * span), min(1.0, high + 0.1 * span) + 0.45 * span)
    _mark_groups(ax, summary["n_layers"])
    ax.set_xticks(np.arange(summary["n_layers"]))
    ax.set_xlim(-0.5, summary["n_layers"] - 0.5)
    ax.set_xlabel("the one text block fine-tuned")
    ax.set_ylabel("scope accuracy (chance 0.5)")
    ax.set_title("(b) single-layer sweep (y axis zoomed to the data)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False, handletextpad=0.3,
              columnspacing=1.0)


def _mark_groups(ax, n_layers: int) -> None:
    """Brackets above the curves for the blocks of front, middle and back (middle overlaps both)."""
    transform = blended_transform_factory(ax.transData, ax.transAxes)  # x in blocks, y in axes fractions
    groups = block_variants(n_layers)
    # (group, bar height, label above or below the bar, colour); the middle bar sits lower, as it overlaps
    for name, height, above, colour in (("front", 0.93, True, "#2a9d8f"), ("back", 0.93, True, "#e76f51"),
                                        ("middle", 0.85, False, "#e9c46a")):
        blocks = groups[name]
        ax.plot([blocks[0] - 0.4, blocks[-1] + 0.4], [height, height], color=colour, linewidth=2.2,
                transform=transform, solid_capstyle="butt")
        ax.text((blocks[0] + blocks[-1]) / 2, height + (0.015 if above else -0.015), name, ha="center",
                va="bottom" if above else "top", fontsize=5.5, color="0.2", transform=transform)


def ablation_figure(summary: dict[str, Any]) -> Figure:
    """The two-panel figure of an ablation summary (see analysis.ablation.summarize_runs)."""

    with matplotlib.rc_context(FONT):
        figure = Figure(figsize=(COLUMN_WIDTH_IN, 5.0), layout="constrained")
        top, bottom = figure.subplots(2, 1)
        _panel_variants(top, summary)
        _panel_sweep(bottom, summary)
        header = summary["header"]
        figure.suptitle(f"Layer ablation on the synthetic world ({header['loss']}, {header['steps']} steps, "
                        f"{len(header['seeds'])} seeds, 95 % CI)", fontsize=6.5)
    return figure


def validity_figure(results: dict, evidence: dict) -> Figure:
    """Evidence against gain per block, one panel per kind of evidence (and the combined score): each
    block a labelled point at (its excess over the null models, its single-block scope gain averaged over
    held-out objects and templates, with the bootstrap interval), Spearman's rho in the title."""
    validity = headline(results)
    scores = {name: component["excess"] for name, component in evidence["components"].items()}
    scores["combined"] = evidence["combined"]

    with matplotlib.rc_context(FONT):
        figure = Figure(figsize=(COLUMN_WIDTH_IN, 1.6 * ((len(scores) + 1) // 2) + 0.3))
        axes = figure.subplots((len(scores) + 1) // 2, 2, squeeze=False)
        gains = np.asarray(validity.gains)
        errors = np.array([gains - np.asarray(validity.gain_low), np.asarray(validity.gain_high) - gains])
        for ax, (name, score) in zip(axes.flat, scores.items()):
            ax.errorbar(score, gains, yerr=errors, fmt="o", ms=2.5, color="#1b6ca8", ecolor="#9ecae1", elinewidth=0.7)
            for block, (x, y) in enumerate(zip(score, gains)):
                ax.annotate(str(block), (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
            rho = validity.rho[name]
            ax.set_title(f"{name}\nrho {rho:+.2f} [{validity.rho_low[name]:+.2f}, {validity.rho_high[name]:+.2f}]"
                         if np.isfinite(rho) else f"{name}: rho undefined")
            ax.set_xlabel("excess over null" if name != "combined" else "combined score")
            ax.set_ylabel("scope gain")
        for ax in list(axes.flat)[len(scores):]:
            ax.set_visible(False)
        figure.tight_layout()
    return figure


def frontier_figure(results: dict, selectors: dict[str, str] | None = None,
                    panels: tuple[str, ...] = ("scope", "retrieval")) -> Figure:
    """Gain against trainable parameters, one panel per target (the headline scope gain, and retention): every plan
    the study ran as a point with its bootstrap interval, the frontier (the plans no plan beats with no more
    parameters) as a line, the selected plan in red, and each selector's plan labelled with its name.
    selectors: selector -> the variant that holds its plan (analysis.ablation.selector_table.plan_variant)."""
    panels = tuple(name for name in panels if name in results and results[name].plans)
    labels = {}
    for selector, variant in (selectors or {}).items():
        labels.setdefault(variant, []).append(selector)
    with matplotlib.rc_context(FONT):
        figure = Figure(figsize=(COLUMN_WIDTH_IN * 2, 2.4))
        axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
        for ax, name in zip(axes, panels):
            v = results[name]
            plans = {p: r for p, r in v.plans.items() if not r.get("expected") and r["trainable"] > 0}
            xs = np.array([plans[p]["trainable"] for p in plans], float)
            ys = np.array([plans[p]["gain"] for p in plans])
            errors = np.array([[plans[p]["gain"] - plans[p]["low"] for p in plans],
                               [plans[p]["high"] - plans[p]["gain"] for p in plans]])
            ax.errorbar(xs, ys, yerr=errors, fmt="o", ms=2.2, color="#7a7a7a", ecolor="#c9c9c9", elinewidth=0.6,
                        zorder=2)
            frontier = [p for p in v.frontier if p in plans]
            ax.plot([plans[p]["trainable"] for p in frontier], [plans[p]["gain"] for p in frontier], "-",
                    color="#1b6ca8", lw=0.9, zorder=1, label="frontier")
            if "selected" in plans:
                ax.errorbar([plans["selected"]["trainable"]], [plans["selected"]["gain"]],
                            yerr=[[plans["selected"]["gain"] - plans["selected"]["low"]],
                                  [plans["selected"]["high"] - plans["selected"]["gain"]]],
                            fmt="o", ms=4, color="#d1495b", ecolor="#d1495b", elinewidth=0.9, zorder=3,
                            label="selected plan")
            span, below = float(np.ptp(ys)) or 1.0, {}
            for (x, y), names in sorted(_merged_labels(labels, plans, span), key=lambda spot: -spot[0][1]):
                # a label close below another of the same size goes one line further down
                previous = below.get(x)
                shift = previous[1] + 8 if previous is not None and previous[0] - y < 0.25 * span else 0
                below[x] = (y, shift)
                ax.annotate("/".join(names), (x, y), fontsize=5, xytext=(3, -6 - shift), textcoords="offset points",
                            color="#333333")
            ax.set_xscale("log")
            ax.axhline(0, color="0.6", lw=0.6, ls=":")
            ax.set_xlabel("trainable parameters")
            ax.set_ylabel("gain over the frozen model")
            ax.set_title(v.target.label, fontsize=6.5)
            ax.legend(loc="best", frameon=False)
        figure.tight_layout()
    return figure


def _merged_labels(labels: dict[str, list[str]], plans: dict[str, dict], span: float
                   ) -> list[tuple[tuple[float, float], list[str]]]:
    """The selectors' labels, one per spot: plans of the same size whose gains lie within 3 % of the panel's range
    of each other share one label (the toolkit's plan and a selector that picked the same blocks, or two selectors
    a hair apart), which would otherwise be printed over each other."""
    spots: list[tuple[tuple[float, float], list[str]]] = []
    for variant, names in sorted(labels.items(), key=lambda item: (item[0] != "selected", item[0])):
        if variant not in plans:
            continue
        x, y = plans[variant]["trainable"], plans[variant]["gain"]
        near = next((spot for spot in spots if spot[0][0] == x and abs(spot[0][1] - y) < 0.03 * span), None)
        if near is None:
            spots.append(((x, y), list(names)))
        else:
            near[1].extend(n for n in names if n not in near[1])
    return spots
