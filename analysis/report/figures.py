"""Figures of the per-layer measurements, sized for a paper column (3.5 in), written as PNG and PDF.

One function per figure; each takes the measurements (a `LayerMeasurements` or the dict in
measurements.json) and optionally the layer plan, writes `<out_dir>/<name>.png` and `.pdf`, and
returns both paths. Curves over residual-stream layers (0 = embeddings, l = after block l - 1)
shade the selected blocks: block b spans layers b to b + 1, the step it adds. Bands are the
confidence intervals stored with the measurements.

matplotlib runs on the Agg backend (no display needed); it and seaborn are imported on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from analysis.selection import CHANCE, describe_blocks
from probing.measure.tasks import HELDOUT_SPLITS, IN_DISTRIBUTION

COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper
SELECTED_COLOUR = "#f2c14e"
EDIT_COLOURS = {"presence": "#c0392b", "absence": "#2471a3", "control": "#7f8c8d"}
COMPONENT_LABELS = {"all": "all", "attention": "attn", "mlp": "mlp", "layernorms": "LN", "layerscale": "LS"}
LAYER_AXIS = "layer (0 = embeddings, L = output of block L-1)"


def _pyplot():
    import matplotlib

    if "inline" not in matplotlib.get_backend() and "ipykernel" not in matplotlib.get_backend():
        matplotlib.use("Agg")  # files only; but never take a notebook's inline backend away
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"savefig.dpi": 300, "pdf.fonttype": 42, "legend.fontsize": 6.5, "axes.titlesize": 8})
    return plt


def _rows(measurements, table: str) -> list[dict]:
    if isinstance(measurements, Mapping):
        return list(measurements.get(table) or [])
    return list(getattr(measurements, table) or [])


def _n_layers(measurements) -> int:
    return int(measurements["n_layers"] if isinstance(measurements, Mapping) else measurements.n_layers)


def _blocks(plan) -> list[int]:
    return [] if plan is None else list(plan.blocks)


def _save(fig, out_dir: str | Path, name: str) -> list[Path]:
    from probing.io import atomic_path

    out_dir = Path(out_dir)
    paths = []
    for suffix in (".png", ".pdf"):
        path = out_dir / f"{name}{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], bbox_inches="tight")
        paths.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return paths


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


def _curve(rows: list[dict], n_points: int, value: str = "accuracy") -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean value and CI bounds per layer over the given rows (several splits: the bounds are averaged)."""
    if not rows:
        return None
    out = np.full((3, n_points), np.nan)
    for layer in range(n_points):
        at = [r for r in rows if r["layer"] == layer]
        if at:
            out[:, layer] = [np.mean([r[value] for r in at]), np.mean([r["ci_low"] for r in at]),
                             np.mean([r["ci_high"] for r in at])]
    return out[0], out[1], out[2]


def _plot_band(ax, curve, label: str, colour: str, style: str = "-") -> None:
    if curve is None:
        return
    mean, low, high = curve
    x = np.arange(len(mean))
    ax.plot(x, mean, style, color=colour, lw=1.2, marker="o", ms=2.2, label=label)
    ax.fill_between(x, low, high, color=colour, alpha=0.18, lw=0)


def plot_probe_accuracy(measurements, plan=None, out_dir: str | Path = ".", *, probe: str = "logistic") -> list[Path]:
    """Held-out probe accuracy per layer with the in-distribution, control and random-model baselines."""
    rows = [r for r in _rows(measurements, "probes") if r["probe"] == probe]
    tasks = [t for t in ("negation", "scope") if any(r["task"] == t for r in rows)]
    if not tasks:
        raise ValueError("no probe rows to plot")
    plt = _pyplot()
    n_layers = _n_layers(measurements)
    fig, axes = plt.subplots(len(tasks), 1, figsize=(COLUMN_WIDTH, 2.0 * len(tasks) + 0.4), sharex=True, squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        pick = lambda model, labels, splits: [r for r in rows if r["task"] == task and r["model"] == model
                                              and r["labels"] == labels and r["split"] in splits]
        shade_blocks(ax, _blocks(plan))
        _plot_band(ax, _curve(pick("trained", "task", HELDOUT_SPLITS), n_layers + 1), "held-out splits", "#1f4e79")
        _plot_band(ax, _curve(pick("trained", "task", (IN_DISTRIBUTION,)), n_layers + 1), "in-distribution", "#5dade2", "--")
        _plot_band(ax, _curve(pick("random", "task", HELDOUT_SPLITS), n_layers + 1), "random model, held-out", "#7f8c8d", ":")
        _plot_band(ax, _curve(pick("trained", "control", (IN_DISTRIBUTION,)), n_layers + 1), "control labels", "#a569bd", "-.")
        ax.axhline(CHANCE, color="black", lw=0.6, alpha=0.6)
        ax.set_ylabel(f"{task} probe accuracy")
        ax.set_title(f"{task}: {probe} probe (balanced accuracy, 95% CI)")
        ax.set_ylim(0.3, 1.02)
        _layer_axis(ax, n_layers)
    for ax in axes[:-1, 0]:
        ax.set_xlabel("")
    _legend_below(fig, axes[0, 0])
    return _save(fig, out_dir, "probe_accuracy")


def plot_selectivity(measurements, plan=None, out_dir: str | Path = ".") -> list[Path]:
    """Selectivity (task minus control accuracy, in-distribution) per layer; band from the two CIs."""
    rows = _rows(measurements, "selectivity")
    if not rows:
        raise ValueError("no selectivity rows to plot")
    intervals = {(r["task"], r["probe"], r["layer"], r["labels"]): (r["ci_low"], r["ci_high"])
                 for r in _rows(measurements, "probes") if r["model"] == "trained" and r["split"] == IN_DISTRIBUTION}
    plt = _pyplot()
    n_layers = _n_layers(measurements)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    shade_blocks(ax, _blocks(plan))
    colours = {"negation": "#1f4e79", "scope": "#c0392b"}
    for (task, probe) in sorted({(r["task"], r["probe"]) for r in rows}):
        chosen = sorted((r for r in rows if r["task"] == task and r["probe"] == probe), key=lambda r: r["layer"])
        x = np.array([r["layer"] for r in chosen])
        y = np.array([r["selectivity"] for r in chosen])
        style = "-" if probe == "logistic" else "--"
        ax.plot(x, y, style, color=colours.get(task, "black"), lw=1.2, marker="o", ms=2.2, label=f"{task}, {probe}")
        # conservative band: task interval minus control interval, end to end
        bands = [(intervals.get((task, probe, l, "task")), intervals.get((task, probe, l, "control"))) for l in x]
        if probe == "logistic" and all(t is not None and c is not None for t, c in bands):  # one band per task
            ax.fill_between(x, [t[0] - c[1] for t, c in bands], [t[1] - c[0] for t, c in bands],
                            color=colours.get(task, "black"), alpha=0.12, lw=0)
    ax.axhline(0, color="black", lw=0.6, alpha=0.6)
    ax.set_ylabel("selectivity (task - control)")
    ax.set_title("probe selectivity (in-distribution)")
    _layer_axis(ax, n_layers)
    _legend_below(fig, ax)
    return _save(fig, out_dir, "selectivity")


def plot_sensitivity(measurements, plan=None, out_dir: str | Path = ".") -> list[Path]:
    """Standardised sensitivity per layer for presence, absence and control edits."""
    rows = _rows(measurements, "sensitivity")
    if not rows:
        raise ValueError("no sensitivity rows to plot")
    plt = _pyplot()
    n_layers = _n_layers(measurements)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
    shade_blocks(ax, _blocks(plan))
    for edit in ("presence", "absence", "control"):
        chosen = [r for r in rows if r["edit"] == edit]
        _plot_band(ax, _curve(chosen, n_layers + 1, "sensitivity"), f"{edit} edit",
                   EDIT_COLOURS[edit], "-" if edit != "control" else "--")
    ax.set_ylabel("sensitivity\n(edit distance / caption distance)")
    ax.set_title("how far an edit moves the caption (95% CI)")
    ax.set_ylim(bottom=0)
    _layer_axis(ax, n_layers)
    _legend_below(fig, ax)
    return _save(fig, out_dir, "sensitivity")


def plot_gradnorm_heatmap(measurements, plan=None, out_dir: str | Path = ".") -> list[Path]:
    """Relative gradient norm ||g||/||w|| per block (rows) and component (columns), one panel per loss."""
    rows = _rows(measurements, "gradnorms")
    if not rows:
        raise ValueError("no gradient-norm rows to plot")
    plt = _pyplot()
    import matplotlib.colors as mcolors
    from matplotlib.patches import Rectangle

    losses = list(dict.fromkeys(r["loss"] for r in rows))
    components = [c for c in ("all", "attention", "mlp", "layernorms", "layerscale") if any(r["component"] == c for r in rows)]
    n_layers = _n_layers(measurements)
    ncols = min(2, len(losses))
    nrows = -(-len(losses) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 2.5 * nrows + 0.3), squeeze=False,
                             gridspec_kw={"wspace": 0.35, "hspace": 0.3})
    values = np.array([r["relative_norm"] for r in rows if r["relative_norm"] > 0])
    norm = mcolors.LogNorm(vmin=values.min(), vmax=values.max()) if len(values) else None
    image = None
    selected = set(_blocks(plan))
    for ax, loss in zip(axes.flat, losses):
        grid = np.full((n_layers, len(components)), np.nan)
        for r in rows:
            if r["loss"] == loss and r["component"] in components:
                grid[r["layer"], components.index(r["component"])] = r["relative_norm"]
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
    return _save(fig, out_dir, "gradnorms")


def plot_block_scores(plan, out_dir: str | Path = ".") -> list[Path]:
    """The combined per-block score the rule used, its components' shares, and the chosen blocks."""
    table = plan.evidence.get("per_block") or []
    if not table:
        raise ValueError("the plan records no per-block evidence")
    plt = _pyplot()
    blocks = [row["block"] for row in table]
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.3))
    colours = ["#e67e22" if b in plan.blocks else "#95a5a6" for b in blocks]
    ax.bar(blocks, [row["combined"] for row in table], color=colours, width=0.7, label="combined score")
    markers = {"probe": ("o", "#1f4e79"), "gradnorm": ("s", "#27ae60"), "sensitivity": ("^", "#c0392b")}
    for name, (marker, colour) in markers.items():
        if f"{name}_share" in table[0]:
            ax.plot(blocks, [row[f"{name}_share"] for row in table], marker, color=colour, ms=3, ls="none",
                    label=f"{name} share")
    ax.set_xticks(blocks)
    ax.set_xlabel("block (orange = selected)")
    ax.set_ylabel("share of evidence")
    ax.set_title(plan.rule)
    _legend_below(fig, ax)
    return _save(fig, out_dir, "block_scores")


def plot_all(measurements, plan=None, out_dir: str | Path = ".") -> dict[str, list[Path]]:
    """Every figure whose data was measured; name -> [png, pdf]."""
    figures = {}
    if _rows(measurements, "probes"):
        figures["probe_accuracy"] = plot_probe_accuracy(measurements, plan, out_dir)
    if _rows(measurements, "selectivity"):
        figures["selectivity"] = plot_selectivity(measurements, plan, out_dir)
    if _rows(measurements, "sensitivity"):
        figures["sensitivity"] = plot_sensitivity(measurements, plan, out_dir)
    if _rows(measurements, "gradnorms"):
        figures["gradnorms"] = plot_gradnorm_heatmap(measurements, plan, out_dir)
    if plan is not None and plan.evidence.get("per_block"):
        figures["block_scores"] = plot_block_scores(plan, out_dir)
    return figures
