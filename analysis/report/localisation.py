"""Figures and report sentences for the localisation measurements (probing.measure.localise).

Figures (column width, PNG + PDF, drawn with analysis.report.figures' helpers):
    patching_<kind>   layer x role heatmap of the patching effect, one panel per component and direction
    heads             per-head patching effect and attention from EOT to the cue (minus uniform attention)
    lens              held-out metrics per layer under the plain lens, the tuned lens beside it
    steering          change of each held-out metric per steering layer, one line per alpha and probe

Sentences are computed from the tables, never written by hand: where the patching effect is, which
heads carry it, what the lens reads per layer, whether steering helps, and how the picture compares
with the published findings on real CLIP (REFERENCE.md): causal tracing on VALSE existence
(Quantmeyer, Mosteiro and Gatt 2024: early and late blocks, a shift to later positions around block
4 of 12, negator-attending heads mostly in block 4, most of the effect at EOT) and negation steering
(Sammani et al. 2026: probes >= 99 % from block 4, every block steered at alpha 0.13).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from analysis.report.figures import (
    COLUMN_WIDTH,
    LAYER_AXIS,
    _layer_axis,
    _legend_below,
    _plot_band,
    _pyplot,
    save_figures,
)
from probing.measure.patching import preferred_method, top_heads
from probing.measure.roles import ROLES
from probing.measure.scoring import RETRIEVAL

PATCH_COMPONENTS = ("resid", "attn", "mlp")
COMPONENT_TITLES = {"resid": "residual stream\nlayer (entering block)", "attn": "attention output\nblock",
                    "mlp": "MLP output\nblock"}
PAIR_METRICS = {"ccneg_accuracy": "CC-Neg-style acc.", "scope_accuracy": "scope acc."}
QUANTMEYER_SHIFT_BLOCK = 4  # of 12: where causal tracing sees negation move to later positions, and its heads
REFERENCE_DEPTH = 12
SAMMANI_ALPHA = 0.13
SELECTIVE = 2.0  # a head attends selectively to the cue when its weight is at least this many times uniform


def metric_label(metric: str) -> str:
    return PAIR_METRICS.get(metric) or f"R@1 among {metric.removeprefix(RETRIEVAL)}"


def chance(metric: str) -> float:
    return 0.5 if metric in PAIR_METRICS else 1 / int(metric.removeprefix(RETRIEVAL))


def _metrics(table: pd.DataFrame) -> list[str]:
    """The metrics of a table: the two pair metrics first, then retrieval."""
    present = list(dict.fromkeys(table["metric"]))
    return [m for m in PAIR_METRICS if m in present] + [m for m in present if m.startswith(RETRIEVAL)]


def _retrieval(table: pd.DataFrame) -> str | None:
    return next((m for m in _metrics(table) if m.startswith(RETRIEVAL)), None)


# ---- figures ---------------------------------------------------------------------------------------


def draw_patching(localisation, kind: str, *, method: str | None = None):
    """Layer x role heatmaps of the effect for one kind of pair: rows = components, columns = directions."""
    table = localisation.patching
    method = method or preferred_method(table)
    rows = table[(table["kind"] == kind) & (table["method"] == method) & table["component"].isin(PATCH_COMPONENTS)]
    if rows.empty:
        raise ValueError(f"no {method} patching rows for {kind} pairs")
    plt = _pyplot()
    components = [c for c in PATCH_COMPONENTS if (rows["component"] == c).any()]
    directions = [d for d in ("denoise", "noise") if (rows["direction"] == d).any()]
    fig, axes = plt.subplots(len(components), len(directions), figsize=(COLUMN_WIDTH, 1.6 * len(components) + 0.7),
                             squeeze=False, sharex=True, sharey=True)
    image = None
    for i, component in enumerate(components):
        for j, direction in enumerate(directions):
            ax = axes[i, j]
            part = rows[(rows["component"] == component) & (rows["direction"] == direction)]
            grid = part.pivot_table(index="layer", columns="role", values="effect").reindex(columns=list(ROLES))
            image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
            ax.set_xticks(range(len(ROLES)))
            ax.set_xticklabels(ROLES, fontsize=5.5, rotation=45, ha="right")
            step = 2 if len(grid) > 8 else 1
            ax.set_yticks(range(0, len(grid), step))
            ax.set_yticklabels(grid.index[::step])
            ax.tick_params(axis="y", labelsize=5.5)
            ax.grid(False)
            if i == 0:
                ax.set_title({"denoise": "denoising", "noise": "noising"}[direction], fontsize=7)
        axes[i, 0].set_ylabel(COMPONENT_TITLES[component], fontsize=6)
    fig.subplots_adjust(right=0.8, hspace=0.12, wspace=0.08)
    bar = fig.colorbar(image, cax=fig.add_axes([0.84, 0.25, 0.03, 0.5]))
    bar.set_label("effect (share of the clean-corrupted gap)", fontsize=6)
    bar.ax.tick_params(labelsize=5.5)
    fig.suptitle(f"{kind} pairs: {method} patching", fontsize=8)
    return fig


def draw_heads(localisation, *, n_top: int = 3):
    """Per-head denoising effect (mean over pair kinds) and EOT->cue attention above uniform; top heads boxed."""
    table = localisation.patching
    heads = table[(table["component"] == "head") & (table["direction"] == "denoise")
                  & (table["method"] == preferred_method(table))]
    if heads.empty:
        raise ValueError("no head patching rows")
    plt = _pyplot()
    effect = heads.groupby(["layer", "head"])["effect"].mean().unstack("head")
    panels = [("patching effect (denoise)", effect, "RdBu_r", (-1, 1))]
    attention = localisation.attention
    if not attention.empty:
        eot = attention[attention["query"] == "eot"]
        above = (eot["attention"] - eot["uniform"]).groupby([eot["layer"], eot["head"]]).mean().unstack("head")
        limit = max(0.05, float(np.nanmax(np.abs(above.to_numpy()))))
        panels.append(("EOT->cue attention - uniform", above, "PuOr_r", (-limit, limit)))
    fig, axes = plt.subplots(1, len(panels), figsize=(COLUMN_WIDTH, 2.6), squeeze=False)
    top = top_heads(table, n_top)
    for ax, (title, grid, cmap, (low, high)) in zip(axes[0], panels):
        image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=cmap, vmin=low, vmax=high, origin="lower")
        for layer, head in top:
            if layer in grid.index:  # rows are the patched blocks
                row = list(grid.index).index(layer)
                ax.add_patch(Rectangle((head - 0.5, row - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
        ax.set_xticks(range(grid.shape[1]))
        step = 2 if len(grid) > 8 else 1
        ax.set_yticks(range(0, len(grid), step))
        ax.set_yticklabels(grid.index[::step])
        ax.set_xlabel("head")
        ax.set_title(title, fontsize=6.5)
        ax.grid(False)
        bar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.03)
        bar.ax.tick_params(labelsize=5.5)
    axes[0, 0].set_ylabel("block")
    fig.suptitle(f"heads (boxed: top {len(top)} by patching effect)", fontsize=8)
    fig.tight_layout()
    return fig


def draw_lens(localisation):
    """Held-out metrics per layer: plain lens (solid), tuned lens (dashed), with 95% intervals."""
    table = localisation.lens
    if table.empty:
        raise ValueError("no lens rows")
    plt = _pyplot()
    metrics = _metrics(table)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(COLUMN_WIDTH, 1.6 * len(metrics) + 0.5), sharex=True,
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for lens, colour, style in (("plain", "#1f4e79", "-"), ("tuned", "#c0392b", "--")):
            rows = table[(table["lens"] == lens) & (table["metric"] == metric)].sort_values("layer")
            if not rows.empty:
                curve = tuple(rows[c].to_numpy(dtype=float) for c in ("value", "ci_low", "ci_high"))
                _plot_band(ax, curve, f"{lens} lens", colour, style)
        ax.axhline(chance(metric), color="black", lw=0.6, alpha=0.6)
        ax.set_ylabel(metric_label(metric), fontsize=6.5)
        _layer_axis(ax, localisation.n_layers)
        ax.set_xlabel("")
    axes[-1, 0].set_xlabel(LAYER_AXIS)
    axes[0, 0].set_title("joint-space lens: the tower stopped at each layer")
    _legend_below(fig, axes[0, 0])
    return fig


def draw_steering(localisation):
    """Change of each held-out metric against the unsteered model, per steering layer (right: every layer)."""
    table = localisation.steering
    if table.empty:
        raise ValueError("no steering rows")
    plt = _pyplot()
    metrics = _metrics(table)
    alphas = sorted(table["alpha"].unique())
    colours = plt.cm.viridis(np.linspace(0.1, 0.85, len(alphas)))
    styles = {"logistic": "-", "diffmeans": "--"}
    n = localisation.n_layers
    fig, axes = plt.subplots(len(metrics), 1, figsize=(COLUMN_WIDTH, 1.6 * len(metrics) + 0.6), sharex=True,
                             squeeze=False)
    probes = list(table["probe"].unique())
    offsets = np.linspace(-0.35, 0.35, len(probes) * len(alphas))  # the every-layer markers side by side
    for ax, metric in zip(axes[:, 0], metrics):
        for p, probe in enumerate(probes):
            for a, (alpha, colour) in enumerate(zip(alphas, colours)):
                rows = table[(table["metric"] == metric) & (table["probe"] == probe) & (table["alpha"] == alpha)]
                per_layer = rows[rows["layer"].notna()].sort_values("layer")
                x = per_layer["layer"].to_numpy(dtype=float)
                ax.plot(x, per_layer["change"], styles.get(probe, ":"), color=colour, lw=1.0, marker="o", ms=1.8,
                        label=f"{probe}, alpha {alpha:g}")
                ax.fill_between(x, per_layer["ci_low"].to_numpy(dtype=float),
                                per_layer["ci_high"].to_numpy(dtype=float), color=colour, alpha=0.08, lw=0)
                every = rows[rows["layer"].isna()]
                if not every.empty:
                    spread = [every["change"] - every["ci_low"], every["ci_high"] - every["change"]]
                    ax.errorbar([n + 1.2 + offsets[p * len(alphas) + a]], every["change"], yerr=spread,
                                fmt="s" if probe == "logistic" else "D", color=colour, ms=2.5, lw=0.8)
        ax.axhline(0, color="black", lw=0.6, alpha=0.6)
        ax.set_ylabel(f"change in\n{metric_label(metric)}", fontsize=6.5)
        ax.set_xlim(-0.3, n + 1.8)
        ax.set_xticks([*range(0, n + 1, 2 if n > 8 else 1), n + 1.2])
        ax.set_xticklabels([*map(str, range(0, n + 1, 2 if n > 8 else 1)), "all"])
    axes[-1, 0].set_xlabel("steered layer (0 = embeddings; all = every layer)")
    axes[0, 0].set_title("steering along the negation direction (95% CI)")
    _legend_below(fig, axes[0, 0], ncol=2)
    return fig


def draw_localisation(localisation) -> dict:
    """Every figure whose data was measured: name -> matplotlib Figure (figures.save_figures writes them)."""
    figures = {}
    if not localisation.patching.empty:
        for kind in localisation.patching["kind"].unique():
            figures[f"patching_{kind}"] = draw_patching(localisation, kind)
        if (localisation.patching["component"] == "head").any():
            figures["heads"] = draw_heads(localisation)
    if not localisation.lens.empty:
        figures["lens"] = draw_lens(localisation)
    if not localisation.steering.empty:
        figures["steering"] = draw_steering(localisation)
    return figures


def plot_localisation(localisation, out_dir: str | Path = ".") -> dict[str, list[Path]]:
    """Every figure whose data was measured, written to out_dir; name -> [png, pdf]."""
    return save_figures(draw_localisation(localisation), out_dir)


# ---- sentences -------------------------------------------------------------------------------------


def _ci(row) -> str:
    return f"{row['effect' if 'effect' in row else 'change']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def localisation_sentences(localisation) -> list[str]:
    """Plain sentences computed from the tables (empty tables give no sentence)."""
    sentences = _pair_sentences(localisation.pairs)
    if not localisation.patching.empty:
        for kind in localisation.patching["kind"].unique():
            sentences += _patching_sentences(localisation, kind)
        sentences += _agreement_sentences(localisation.agreement)
    sentences += _head_sentences(localisation)
    sentences += _lens_sentences(localisation)
    sentences += _steering_sentences(localisation)
    sentences += comparison_sentences(localisation)
    return [s for s in sentences if s]


def _pair_sentences(pairs: pd.DataFrame) -> list[str]:
    return [f"On {r['n_pairs']} {r['kind']} pairs the model scores the true caption above the false one for "
            f"{_pct(r['accuracy'])} of images (mean similarity gap {r['mean_gap']:+.4f}"
            + (f"; {r['n_skipped']} pairs could not be aligned" if r["n_skipped"] else "") + ")."
            for _, r in pairs.iterrows()]


def residual_profile(localisation, kind: str, direction: str = "denoise") -> pd.DataFrame:
    """Per residual layer: the role with the largest effect, that effect, and the EOT effect."""
    table = localisation.patching
    rows = table[(table["kind"] == kind) & (table["component"] == "resid") & (table["direction"] == direction)
                 & (table["method"] == preferred_method(table))]
    grid = rows.pivot_table(index="layer", columns="role", values="effect")
    profile = pd.DataFrame({"best_role": grid.idxmax(axis=1), "best": grid.max(axis=1),
                            "eot": grid["eot"] if "eot" in grid else np.nan})
    return profile.reset_index()


def eot_shift_layer(profile: pd.DataFrame) -> int | None:
    """The first residual layer from which the EOT position carries the largest effect at every later layer."""
    is_eot = (profile["best_role"] == "eot").to_numpy()
    for i in range(len(is_eot)):
        if is_eot[i:].all():
            return int(profile["layer"].iloc[i])
    return None


def _patching_sentences(localisation, kind: str) -> list[str]:
    table = localisation.patching
    method = preferred_method(table)
    profile = residual_profile(localisation, kind)
    out = []
    if not profile.empty:
        shift = eot_shift_layer(profile)
        early = profile[profile["layer"] < (shift if shift is not None else len(profile))]
        early_roles = early["best_role"].value_counts()
        text = f"{kind.capitalize()} pairs, {method} patching of the residual stream (denoising): "
        if shift is None:
            text += "the EOT position never carries the largest effect for the remaining layers"
        elif shift == 0:
            text += "the EOT position carries the largest effect at every layer"
        else:
            layers = "layer 0" if shift == 1 else f"layers 0-{shift - 1}"
            text += (f"the effect sits mostly at the {early_roles.index[0]} positions in {layers} "
                     f"and at the EOT position from layer {shift} on")
        out.append(text + ".")
    rows = table[(table["kind"] == kind) & (table["method"] == method) & (table["direction"] == "denoise")
                 & table["component"].isin(["attn", "mlp"])]
    if not rows.empty:
        parts = []
        for component in ("attn", "mlp"):
            part = rows[rows["component"] == component]
            if not part.empty:
                best = part.loc[part["effect"].idxmax()]
                parts.append(f"the {'attention' if component == 'attn' else 'MLP'} output of block {best['layer']} "
                             f"at the {best['role']} position(s) restores {_ci(best)} of the gap")
        out.append(f"Among block outputs ({kind} pairs), " + " and ".join(parts) + ".")
    return out


def _agreement_sentences(agreement: pd.DataFrame) -> list[str]:
    overall = agreement[agreement["component"] == "all"]
    if overall.empty:
        return []
    parts = [f"{r['kind']} {r['direction']} rho = {r['spearman']:.2f} over {r['n_cells']} cells"
             for _, r in overall.iterrows()]
    weakest = agreement.loc[agreement["spearman"].idxmin()]
    return ["Attribution patching ranks the cells as exact patching does (Spearman " + "; ".join(parts) + "); "
            f"it agrees least for {weakest['component']} ({weakest['kind']}, {weakest['direction']}: "
            f"rho = {weakest['spearman']:.2f})."]


def selective_heads(attention: pd.DataFrame, query: str = "eot") -> pd.DataFrame:
    """Heads whose attention to the cue is at least SELECTIVE times uniform with its interval above uniform."""
    rows = attention[attention["query"] == query]
    return rows[(rows["attention"] >= SELECTIVE * rows["uniform"]) & (rows["ci_low"] > rows["uniform"])]


def _head_sentences(localisation) -> list[str]:
    out = []
    table = localisation.patching
    if not table.empty and (table["component"] == "head").any():
        heads = table[(table["component"] == "head") & (table["method"] == preferred_method(table))]
        mean = heads.groupby(["layer", "head"])["effect"].mean().sort_values(ascending=False)
        named = ", ".join(f"L{l}H{h} ({e:+.2f})" for (l, h), e in mean.head(3).items())
        out.append(f"The heads with the largest patching effect (mean over pair kinds and directions) are {named}.")
    ablation = localisation.ablation
    if not ablation.empty:
        joint = ablation[ablation["heads"].str.len() == ablation["heads"].str.len().max()]
        for ablation_kind in ("zero", "mean"):
            part = joint[joint["ablation"] == ablation_kind].set_index("metric")
            if {"scope_accuracy", "ccneg_accuracy"} <= set(part.index):
                out.append(f"{ablation_kind.capitalize()}-ablating {part['heads'].iloc[0]} changes scope accuracy by "
                           f"{_ci(part.loc['scope_accuracy'])} and CC-Neg-style accuracy by "
                           f"{_ci(part.loc['ccneg_accuracy'])}.")
    attention = localisation.attention
    if not attention.empty:
        selective = selective_heads(attention)
        if selective.empty:
            out.append(f"No head attends from EOT to the cue at {SELECTIVE:g} times uniform attention or more.")
        else:
            blocks = selective.groupby("layer")["head"].nunique().sort_values(ascending=False)
            k = selective[["layer", "head"]].drop_duplicates().shape[0]
            out.append(f"{k} head{'s attend' if k != 1 else ' attends'} from EOT to the cue at "
                       f"{SELECTIVE:g}x uniform or more, most of them in block {blocks.index[0]} "
                       f"({blocks.iloc[0]} of {localisation.n_heads} heads there).")
    return out


def lens_reach(lens: pd.DataFrame, name: str, metric: str, tolerance: float = 0.02) -> int | None:
    """The first layer whose value under lens `name` is within `tolerance` of the last layer's (and stays so)."""
    rows = lens[(lens["lens"] == name) & (lens["metric"] == metric)].sort_values("layer")
    if rows.empty:
        return None
    close = (rows["value"] >= rows["value"].iloc[-1] - tolerance).to_numpy()
    return next(int(rows["layer"].iloc[i]) for i in range(len(close)) if close[i:].all())


def _lens_sentences(localisation) -> list[str]:
    lens = localisation.lens
    out = []
    for metric in _metrics(lens):
        final = lens[(lens["metric"] == metric) & (lens["layer"] == lens["layer"].max()) & (lens["lens"] == "plain")]
        if final.empty:
            continue
        reach = {name: lens_reach(lens, name, metric) for name in ("plain", "tuned")}
        label = metric_label(metric)
        text = (f"{label[0].upper() + label[1:]} of the final features is {final['value'].iloc[0]:.2f}; "
                f"read through the plain lens it is within 0.02 of that from layer {reach['plain']}")
        if reach["tuned"] is not None:
            text += f", through the tuned lens from layer {reach['tuned']}"
        out.append(text + ".")
    return out


def _steering_sentences(localisation) -> list[str]:
    steering = localisation.steering
    scope = steering[steering["metric"] == "scope_accuracy"]
    if scope.empty:
        return []
    key = lambda row: (row["probe"], None if pd.isna(row["layer"]) else int(row["layer"]), row["alpha"])
    retrieval_metric = _retrieval(steering)
    retrieval = {key(row): row for _, row in steering.iterrows() if row["metric"] == retrieval_metric}
    best = scope.loc[scope["change"].idxmax()]
    where = f"layer {best['layer']}" if pd.notna(best["layer"]) else "every layer"
    text = (f"The best steering setting for scope accuracy ({best['probe']} direction at {where}, "
            f"alpha {best['alpha']:g}) changes it by {_ci(best)} from {best['baseline']:.2f}")
    if key(best) in retrieval:
        text += f", and R@1 by {_ci(retrieval[key(best)])}"
    raised = scope[scope["ci_low"] > 0]
    free = [1 for _, row in raised.iterrows() if key(row) not in retrieval or retrieval[key(row)]["ci_high"] >= 0]
    if raised.empty:
        text += "; no setting raises scope accuracy with an interval above zero: steering does not help scope."
    else:
        text += (f"; {len(raised)} of {len(scope)} settings raise scope accuracy with an interval above zero, "
                 f"{len(free)} of them without a retrieval loss whose interval excludes zero.")
    return [text]


def comparison_sentences(localisation) -> list[str]:
    """The embedded model's picture beside Quantmeyer et al.'s and Sammani et al.'s findings on real CLIP."""
    out = []
    n = localisation.n_layers
    expected = QUANTMEYER_SHIFT_BLOCK * n / REFERENCE_DEPTH
    table = localisation.patching
    if not table.empty and (table["component"] == "resid").any():
        for kind in table["kind"].unique():
            profile = residual_profile(localisation, kind)
            shift = eot_shift_layer(profile)
            share = profile["eot"].clip(lower=0).sum() / profile["best"].clip(lower=0).sum()
            where = f"from layer {shift}" if shift is not None else "at no stable layer"
            out.append(f"Quantmeyer et al. see negation move to later positions around block {QUANTMEYER_SHIFT_BLOCK} "
                       f"of {REFERENCE_DEPTH} in real CLIP (block {expected:.1f} at this depth of {n}); here "
                       f"({kind} pairs) the EOT position carries the largest effect {where}, and it holds "
                       f"{_pct(share)} of the summed per-layer maxima ({'most' if share > 0.5 else 'not most'} of the "
                       "effect, where they find most).")
    attention = localisation.attention
    if not attention.empty:
        selective = selective_heads(attention)
        if not selective.empty:
            block = int(selective.groupby("layer")["head"].nunique().idxmax())
            out.append(f"Their negator-attending heads are mostly in block {QUANTMEYER_SHIFT_BLOCK} "
                       f"(of {REFERENCE_DEPTH}); here the most such heads are in block {block} (of {n}).")
    steering = localisation.steering
    every = steering[steering["layer"].isna() & np.isclose(steering["alpha"], SAMMANI_ALPHA)]
    if (every["probe"] == "logistic").any():  # their probe is a logistic regression
        every = every[every["probe"] == "logistic"]
    if not every.empty:
        parts = [f"{metric_label(m)} {_ci(every[every['metric'] == m].iloc[0])}" for m in _metrics(every)]
        out.append(f"Sammani et al. steer every block at alpha {SAMMANI_ALPHA:g} on real CLIP; the same setting "
                   f"({every['probe'].iloc[0]} direction) changes " + ", ".join(parts) + " here.")
    return out
