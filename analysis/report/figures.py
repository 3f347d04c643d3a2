"""Figures of the per-layer measurements and of the null-calibrated evidence, sized for a paper
column (3.5 in), written as PNG and PDF.

One function per figure (`draw_<name>`); each takes the measurements (a `LayerMeasurements`, whose tables are
DataFrames) or the selection and returns a matplotlib Figure. `save_figures` writes figures as
`<out_dir>/<name>.png` and `.pdf`; `draw_all` draws every figure whose data was measured and `plot_all` writes them.
Curves over residual-stream layers (0 = embeddings, l = after block l - 1) shade the selected
blocks: block b spans layers b to b + 1, the step it adds. Bands are the confidence intervals stored
with the measurements; the null models (randomly initialised towers) appear as their mean and the
range they span.

matplotlib runs on the Agg backend (no display needed); it and seaborn are imported on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.colors as mcolors  # matplotlib itself, not pyplot: no backend is chosen here
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from analysis.planning.selection import describe_blocks
from probing.io import atomic_path
from probing.measure.keys import TRAINED, is_null
from probing.measure.tasks import HELDOUT_SPLITS, IN_DISTRIBUTION

COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper
CHANCE = 0.5  # balanced accuracy of a binary probe that guesses
SELECTED_COLOUR = "#f2c14e"
NULL_COLOUR = "#7f8c8d"
EDIT_COLOURS = {"presence": "#c0392b", "absence": "#2471a3", "control": "#7f8c8d"}
COMPONENT_COLOURS = {"probe": "#1f4e79", "sensitivity": "#c0392b", "gradnorm": "#27ae60", "patching": "#8e44ad"}
COMPONENT_LABELS = {"all": "all", "attention": "attn", "mlp": "mlp", "layernorms": "LN", "layerscale": "LS"}
LAYER_AXIS = "layer (0 = embeddings, L = output of block L-1)"


def _pyplot():
    import matplotlib  # on first use: the backend is chosen before pyplot loads (and --help stays fast)

    if "inline" not in matplotlib.get_backend() and "ipykernel" not in matplotlib.get_backend():
        matplotlib.use("Agg")  # files only; but never take a notebook's inline backend away
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"savefig.dpi": 300, "pdf.fonttype": 42, "legend.fontsize": 6.5, "axes.titlesize": 8})
    return plt


def save_figures(figures: dict, out_dir: str | Path, *, dpi: int | None = None) -> dict[str, list[Path]]:
    """Write each figure as <name>.png and <name>.pdf (atomically), close it; name -> [png, pdf]. The draw_*
    functions return figures, so a caller draws what it needs and writes them all here in one place."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    written = {}
    for name, fig in figures.items():
        written[name] = []
        for suffix in (".png", ".pdf"):
            path = out_dir / f"{name}{suffix}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=suffix[1:], bbox_inches="tight", **({} if dpi is None else {"dpi": dpi}))
            written[name].append(path)
        plt.close(fig)
    return written


def shade_blocks(ax, blocks: Sequence[int], *, label: bool = True) -> None:
    """Shade each selected block as the layer step it adds (layer b to b + 1)."""
    for i, b in enumerate(sorted(blocks)):
        ax.axvspan(b, b + 1, color=SELECTED_COLOUR, alpha=0.35, lw=0,
                   label=f"selected blocks ({describe_blocks(blocks)})" if label and i == 0 else None)


def _layer_axis(ax, n_layers: int) -> None:
    ax.set_xlim(-0.2, n_layers + 0.2)
    ax.set_xticks(range(0, n_layers + 1, 2 if n_layers > 8 else 1))
    ax.set_xlabel(LAYER_AXIS)


def _runs(blocks) -> list[tuple[int, int]]:
    """Sorted blocks as (first, last) runs of consecutive indices."""
    runs: list[list[int]] = []
    for b in sorted(blocks):
        if runs and b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return [tuple(r) for r in runs]


def _legend_below(fig, ax, ncol: int = 2) -> None:
    """One legend under the panels, so that it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False)


def _curve(rows: pd.DataFrame, n_points: int, value: str = "accuracy"):
    """Mean value and CI bounds per layer over the given rows (several splits: each averaged over them)."""
    if rows.empty:
        return None
    means = rows.groupby("layer")[[value, "ci_low", "ci_high"]].mean().reindex(range(n_points))
    return means[value].to_numpy(), means["ci_low"].to_numpy(), means["ci_high"].to_numpy()


def _null_band(ax, rows: pd.DataFrame, n_points: int, label: str, value: str = "accuracy") -> None:
    """The null models: the mean of their curves and the range the curves span."""
    if rows.empty:
        return
    per_model = rows.groupby(["model", "layer"])[value].mean().unstack("layer").reindex(columns=range(n_points))
    x = np.arange(n_points)
    ax.plot(x, per_model.mean().to_numpy(), ":", color=NULL_COLOUR, lw=1.2, label=f"{label} (mean of {len(per_model)})")
    ax.fill_between(x, per_model.min().to_numpy(), per_model.max().to_numpy(), color=NULL_COLOUR, alpha=0.15, lw=0)


def _plot_band(ax, curve, label: str, colour: str, style: str = "-") -> None:
    if curve is None:
        return
    mean, low, high = curve
    x = np.arange(len(mean))
    ax.plot(x, mean, style, color=colour, lw=1.2, marker="o", ms=2.2, label=label)
    ax.fill_between(x, low, high, color=colour, alpha=0.18, lw=0)


def draw_probe_accuracy(measurements, blocks: Sequence[int] = (), *,
                        probe: str = "logistic"):
    """Held-out probe accuracy per layer against the null models, the in-distribution split and control labels."""
    table = measurements.probes
    rows = table[table.probe == probe]
    tasks = [t for t in ("negation", "scope") if (rows.task == t).any()]
    if not tasks:
        raise ValueError("no probe rows to plot")
    plt = _pyplot()
    n_layers = measurements.n_layers
    fig, axes = plt.subplots(len(tasks), 1, figsize=(COLUMN_WIDTH, 2.0 * len(tasks) + 0.4), sharex=True, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        mine = rows[rows.task == task]
        held = mine.split.isin(HELDOUT_SPLITS)
        shade_blocks(ax, blocks)
        _plot_band(ax, _curve(mine[(mine.model == TRAINED) & (mine.labels == "task") & held], n_layers + 1),
                   "held-out splits", "#1f4e79")
        _plot_band(ax, _curve(mine[(mine.model == TRAINED) & (mine.labels == "task") & (mine.split == IN_DISTRIBUTION)],
                              n_layers + 1), "in-distribution", "#5dade2", "--")
        _null_band(ax, mine[mine.model.map(is_null) & (mine.labels == "task") & held], n_layers + 1,
                   "null models, held-out")
        _plot_band(ax, _curve(mine[(mine.model == TRAINED) & (mine.labels == "control")], n_layers + 1),
                   "control labels", "#a569bd", "-.")
        ax.axhline(CHANCE, color="black", lw=0.6, alpha=0.6)
        ax.set_ylabel(f"{task} probe accuracy")
        ax.set_title(f"{task}: {probe} probe (balanced accuracy, 95% CI)")
        ax.set_ylim(0.3, 1.02)
        _layer_axis(ax, n_layers)
    for ax in axes[:-1, 0]:
        ax.set_xlabel("")
    _legend_below(fig, axes[0, 0])
    return fig


def draw_selectivity(measurements, blocks: Sequence[int] = ()):
    """Selectivity (task minus control accuracy, in-distribution) per layer; band from the two CIs."""
    rows = measurements.selectivity
    if rows.empty:
        raise ValueError("no selectivity rows to plot")
    probes = measurements.probes
    probes = probes[(probes.model == TRAINED) & (probes.split == IN_DISTRIBUTION)]
    intervals = probes.set_index(["task", "probe", "layer", "labels"])[["ci_low", "ci_high"]]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    shade_blocks(ax, blocks)
    colours = {"negation": "#1f4e79", "scope": "#c0392b"}
    for (task, probe), chosen in rows.sort_values("layer").groupby(["task", "probe"]):
        x = chosen.layer.to_numpy()
        style = "-" if probe == "logistic" else "--"
        ax.plot(x, chosen.selectivity.to_numpy(), style, color=colours.get(task, "black"), lw=1.2, marker="o", ms=2.2,
                label=f"{task}, {probe}")
        if probe == "logistic":  # conservative band: task interval minus control interval, end to end
            try:
                task_ci = intervals.loc[[(task, probe, layer, "task") for layer in x]].to_numpy()
                control_ci = intervals.loc[[(task, probe, layer, "control") for layer in x]].to_numpy()
            except KeyError:
                continue
            ax.fill_between(x, task_ci[:, 0] - control_ci[:, 1], task_ci[:, 1] - control_ci[:, 0],
                            color=colours.get(task, "black"), alpha=0.12, lw=0)
    ax.axhline(0, color="black", lw=0.6, alpha=0.6)
    ax.set_ylabel("selectivity (task - control)")
    ax.set_title("probe selectivity (in-distribution)")
    _layer_axis(ax, measurements.n_layers)
    _legend_below(fig, ax)
    return fig


def draw_sensitivity(measurements, blocks: Sequence[int] = ()):
    """Standardised sensitivity per layer for presence, absence and control edits, the null models' beside."""
    rows = measurements.sensitivity
    if rows.empty:
        raise ValueError("no sensitivity rows to plot")
    plt = _pyplot()
    n_layers = measurements.n_layers
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    shade_blocks(ax, blocks)
    for edit in ("presence", "absence", "control"):
        chosen = rows[(rows.edit == edit) & (rows.model == TRAINED)]
        _plot_band(ax, _curve(chosen, n_layers + 1, "sensitivity"), f"{edit} edit",
                   EDIT_COLOURS[edit], "-" if edit != "control" else "--")
    _null_band(ax, rows[(rows.edit == "presence") & rows.model.map(is_null)], n_layers + 1,
               "null models, presence edit", "sensitivity")
    ax.set_ylabel("sensitivity\n(edit distance / caption distance)")
    ax.set_title("how far an edit moves the caption (95% CI)")
    ax.set_ylim(bottom=0)
    _layer_axis(ax, n_layers)
    _legend_below(fig, ax)
    return fig


def draw_gradnorm_heatmap(measurements, blocks: Sequence[int] = ()):
    """The model's relative gradient norm ||g||/||w|| per block (rows) and component (columns), one panel per loss."""
    table = measurements.gradnorms
    rows = table[table.model == TRAINED]
    if rows.empty:
        raise ValueError("no gradient-norm rows to plot")
    plt = _pyplot()
    losses = list(dict.fromkeys(rows.loss))
    components = [c for c in ("all", "attention", "mlp", "layernorms", "layerscale") if (rows.component == c).any()]
    n_layers = measurements.n_layers
    ncols = min(2, len(losses))
    nrows = -(-len(losses) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 2.5 * nrows + 0.3), squeeze=False,
                             gridspec_kw={"wspace": 0.35, "hspace": 0.3})
    values = rows.relative_norm[rows.relative_norm > 0].to_numpy()
    norm = mcolors.LogNorm(vmin=values.min(), vmax=values.max()) if len(values) else None
    image = None
    selected = set(blocks)
    for ax, loss in zip(axes.flat, losses):
        grid = rows[rows.loss == loss].pivot_table(index="layer", columns="component", values="relative_norm")
        grid = grid.reindex(index=range(n_layers), columns=components).to_numpy()
        image = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap="viridis", norm=norm)
        ax.set_title(loss)
        ax.set_xticks(range(len(components)))
        ax.set_xticklabels([COMPONENT_LABELS.get(c, c) for c in components], fontsize=6)
        ax.set_yticks(range(n_layers))
        ax.set_yticklabels([f"{b}*" if b in selected else str(b) for b in range(n_layers)], fontsize=5.5)
        ax.grid(False)
        for first, last in _runs(selected):  # outline each run of selected blocks
            ax.add_patch(Rectangle((-0.5, first - 0.5), len(components), last - first + 1, fill=False,
                                   ec=SELECTED_COLOUR, lw=1.5))
    for ax in axes[:, 0]:
        ax.set_ylabel("block")
    for ax in list(axes.flat)[len(losses):]:
        ax.set_visible(False)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.03)
        bar.set_label("relative grad norm ||g||/||w|| (log)", fontsize=6.5)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle("gradient norms per block (* = selected)", fontsize=8)
    return fig


def draw_evidence(selection):
    """Per component: each block's excess over the null models with its interval and the family-wise
    threshold (filled = significant); below, the combined score and how often each block is selected."""
    evidence = selection.evidence
    components = list(evidence.components.values())
    plt = _pyplot()
    fig, axes = plt.subplots(len(components) + 1, 1, figsize=(COLUMN_WIDTH, 1.45 * (len(components) + 1) + 0.4),
                             sharex=True, squeeze=False)
    blocks = np.arange(evidence.n_layers)
    for ax, component in zip(axes[:-1, 0], components):
        colour = COMPONENT_COLOURS.get(component.name, "black")
        excess = np.asarray(component.excess)
        ax.errorbar(blocks, excess, yerr=[excess - np.asarray(component.low), np.asarray(component.high) - excess],
                    fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.6)
        significant = np.asarray(component.significant)
        ax.plot(blocks[significant], excess[significant], "o", color=colour, ms=3.5, label="significant")
        ax.plot(
            blocks[~significant], excess[~significant], "o", mfc="white", mec=colour, ms=3.5, label="not significant"
        )
        ax.step(np.append(blocks, blocks[-1] + 1) - 0.5, np.append(component.threshold, component.threshold[-1]),
                where="post", color="black", lw=0.7, ls="--", label="family-wise threshold")
        ax.axhline(0, color="black", lw=0.5, alpha=0.5)
        ax.set_ylabel(f"{component.name}\nexcess", fontsize=7)
    ax = axes[-1, 0]
    colours = ["#e67e22" if b in selection.plan.blocks else "#95a5a6" for b in blocks]
    ax.bar(blocks, evidence.combined, color=colours, width=0.7, label="combined score (orange = selected)")
    ax.plot(blocks, selection.stability, "k.-", lw=0.8, ms=3, label="selected in bootstrap replicates")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(blocks)
    ax.set_xlabel("block")
    ax.set_ylabel("share", fontsize=7)
    axes[0, 0].set_title(f"evidence beyond {components[0].n_null if components else 0} null models; "
                         f"plan: {describe_blocks(selection.plan.blocks)}")
    handles, labels = [], []
    for axis in (axes[0, 0], ax):
        h, l = axis.get_legend_handles_labels()
        handles += h
        labels += l
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return fig


def draw_all(measurements, selection=None) -> dict:
    """Every figure whose data was measured: name -> matplotlib Figure (save_figures writes them)."""
    blocks = [] if selection is None else list(selection.plan.blocks)
    figures = {}
    if not measurements.probes.empty:
        figures["probe_accuracy"] = draw_probe_accuracy(measurements, blocks)
    if not measurements.selectivity.empty:
        figures["selectivity"] = draw_selectivity(measurements, blocks)
    if not measurements.sensitivity.empty:
        figures["sensitivity"] = draw_sensitivity(measurements, blocks)
    if not measurements.gradnorms.empty:
        figures["gradnorms"] = draw_gradnorm_heatmap(measurements, blocks)
    if selection is not None and selection.evidence.components:
        figures["evidence"] = draw_evidence(selection)
    return figures


def plot_all(measurements, selection=None, out_dir: str | Path = ".") -> dict[str, list[Path]]:
    """Every figure whose data was measured, written to out_dir; name -> [png, pdf]."""
    return save_figures(draw_all(measurements, selection), out_dir)
