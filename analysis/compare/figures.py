"""Figures of a comparison, as PNG and PDF (the style of analysis.report.figures).

    comparison  left: heat map of the relative weight change, parts (embeddings, blocks, final LayerNorm,
                projection, logit scale) x tuned models; right: linear CKA with the base per layer, one
                line per tuned model, solid for affirmative and dashed for negated captions, with the
                bootstrap intervals as bands.
    probes      per task: probe accuracy per layer of the base and of every tuned model on the headline
                split (held-out cues where there is one), with the bootstrap intervals as bands.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.compare.decoding import headline_split
from analysis.report.figures import COLUMN_WIDTH, _pyplot, save_figures

if TYPE_CHECKING:
    from analysis.compare.result import Comparison

GROUP_STYLES = {"affirmative": "-", "negated": "--"}


def draw_comparison(comparison: "Comparison") -> dict:
    """The comparison's figures: name -> matplotlib Figure."""
    figures = {}
    if len(comparison.block_table()) or len(comparison.states):
        figures["comparison"] = draw_weights_and_states(comparison)
    if len(comparison.probes):
        figures["probes"] = draw_probes(comparison)
    return figures


def plot_comparison(comparison: "Comparison", out_dir: str | Path) -> dict[str, list[Path]]:
    """The comparison's figures written to out_dir; name -> [png, pdf]."""
    return save_figures(draw_comparison(comparison), out_dir)


def draw_weights_and_states(comparison: "Comparison"):
    plt = _pyplot()
    blocks = comparison.block_table()
    panels = int(bool(len(blocks))) + int(bool(len(comparison.states)))
    fig, axes = plt.subplots(1, panels, figsize=(COLUMN_WIDTH * panels, 0.22 * max(len(blocks), 12) + 1.0),
                             squeeze=False, layout="constrained")
    axes = list(axes[0])
    if len(blocks):
        ax = axes.pop(0)
        values = blocks.to_numpy(dtype=float)
        shown = np.where(np.isfinite(values), values, np.nan)
        image = ax.imshow(shown, aspect="auto", cmap="rocket_r", vmin=0,
                          vmax=max(float(np.nanmax(shown)) if np.isfinite(shown).any() else 0.0, 1e-12))
        ax.set_yticks(range(len(blocks.index)), blocks.index, fontsize=6)
        ax.set_xticks(range(len(blocks.columns)), blocks.columns, rotation=30, ha="right", fontsize=6)
        if values.size <= 120:
            for (row, col), value in np.ndenumerate(values):
                ax.text(col, row, "n/a" if not np.isfinite(value) else ("0" if value == 0 else f"{value:.2g}"),
                        ha="center", va="center", fontsize=5,
                        color="white" if np.isfinite(value) and value > 0.6 * np.nanmax(shown) else "black")
        ax.grid(False)
        ax.set_title("relative weight change ||ΔW|| / ||W_base||")
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    if len(comparison.states):
        ax = axes.pop(0)
        states = comparison.states
        palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for k, model in enumerate(dict.fromkeys(states["model"])):
            for group in dict.fromkeys(states["group"]):
                rows = states[(states["model"] == model) & (states["group"] == group)].sort_values("layer")
                colour = palette[k % len(palette)]
                ax.plot(rows["layer"], rows["cka"], GROUP_STYLES.get(group, ":"), color=colour, lw=1,
                        label=f"{model}, {group}")
                ax.fill_between(rows["layer"], rows["cka_low"], rows["cka_high"], color=colour, alpha=0.2, lw=0)
        labels = comparison.layer_labels
        ticks = [str(layer) for layer in range(len(labels) - 1)] + ["feat"]
        ax.set_xticks(range(len(labels)), ticks, fontsize=5.5)
        ax.set_xlabel("layer (0 = embeddings, l = output of block l-1, feat = text feature)")
        ax.ticklabel_format(axis="y", useOffset=False)  # values near 1: show them, not an offset
        ax.set_ylabel("linear CKA with the base")
        ax.set_title("EOT states: tuned vs base")
        ax.legend(loc="lower left")
    return fig


def draw_probes(comparison: "Comparison"):
    plt = _pyplot()
    probe = comparison.config.probes[0]
    probes = comparison.probes[comparison.probes["probe"] == probe]
    tasks = list(dict.fromkeys(probes["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(COLUMN_WIDTH * len(tasks), 2.6), squeeze=False,
                             layout="constrained")
    for ax, task in zip(axes[0], tasks):
        rows = probes[probes["task"] == task]
        split = headline_split(list(dict.fromkeys(rows["split"])))
        rows = rows[rows["split"] == split]
        for model in dict.fromkeys(rows["model"]):
            mine = rows[rows["model"] == model].sort_values("layer")
            style = "-" if model != comparison.base else "-k"
            line, = ax.plot(mine["layer"], mine["accuracy"], style, lw=1.2 if model == comparison.base else 1,
                            label=f"{model} (base)" if model == comparison.base else model)
            ax.fill_between(mine["layer"], mine["ci_low"], mine["ci_high"], color=line.get_color(), alpha=0.2, lw=0)
        ax.axhline(0.5, color="#7f8c8d", lw=0.8, ls=":", label="chance")
        ax.set_ylim(0.3, 1.02)
        ax.set_xlabel("layer (0 = embeddings, l = output of block l-1)")
        ax.set_ylabel("balanced accuracy")
        ax.set_title(f"{task}: {split.replace('_', ' ')} ({probe} probe)")
        ax.legend(loc="lower right")
    return fig
