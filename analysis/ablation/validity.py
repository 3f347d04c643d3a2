"""Predictive validity: did the layer evidence predict where fine-tuning works?

Inputs: the runs of an ablation study (analysis.ablation.runner) that include the frozen model, the
single-layer sweep (layer_<b>: block b alone), the selected plan and the windows of its size
(window_<a>_<b>: every contiguous run of as many blocks), all at the same budget; and the evidence
the plan was chosen from (the `evidence` of probe-layers' layer_plan.json).

    gain[b]     mean over seeds of the held-out scope accuracy of layer_b minus the frozen model's
                (held-out objects, held-out templates, and their mean)
    rho_c       Spearman correlation between component c's per-block excess over the null models
                (and the combined score) and gain[b]
    regret      best gain among the plans with as many blocks as the selected one (every contiguous
                window, and front / middle / back / all when their size matches) minus the selected
                plan's gain; `ratio` = selected gain / best gain

Intervals: a bootstrap that resamples each variant's seeds and the evaluation items (paired: every
run is scored on the same items), so rho's interval holds the optimisation noise and the finite
test set. The ratio gets one too: in each replicate, the selected plan's gain over the best gain
among the equal-size plans of that replicate; `target_share` is the fraction of replicates where
it reaches TARGET_RATIO, so a miss by a few points can be told from a miss beyond the noise. The
verdict sentence is computed from these numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from analysis.ablation.variants import sweep_layer, window_blocks, window_name
from analysis.selection import describe_blocks

AXES = ("object", "template")  # held-out axes the target is judged on
TARGET_RATIO = 0.95


@dataclass
class Validity:
    axis: str  # "object", "template" or "mean" (of the two)
    gains: list[float]  # per block
    gain_low: list[float]
    gain_high: list[float]
    rho: dict[str, float]  # component (and "combined") -> Spearman rho with the gains
    rho_low: dict[str, float]
    rho_high: dict[str, float]
    selected: list[int]
    selected_gain: float
    best_plan: str
    best_blocks: list[int]
    best_gain: float
    regret: float
    ratio: float
    candidates: dict[str, float] = field(default_factory=dict)  # equal-size plan -> gain
    # the ratio's 95% bootstrap interval and the share of replicates reaching TARGET_RATIO (NaN in
    # records written before they were computed)
    ratio_low: float = float("nan")
    ratio_high: float = float("nan")
    target_share: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scope_items(run: dict, axis: str) -> np.ndarray:
    items = run.get("items", {}).get(f"{axis}/scope")
    if items is None:
        raise KeyError(f"run {run['variant']} seed {run['seed']} has no per-item scope results for {axis}")
    return np.asarray(items, dtype=float)


def _runs_by_variant(runs: Sequence[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["variant"], []).append(run)
    return grouped


def assess(runs: Sequence[dict], evidence: dict, selected: Sequence[int], *, n_layers: int,
           groups: dict[str, list[int]] | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Validity]:
    """Validity per axis (object, template, mean). `evidence` is a plan's recorded evidence dict
    (components -> {"excess": [...]}, "combined"); `groups` the named block groups (front, ...)."""
    grouped = _runs_by_variant(runs)
    sweep = {sweep_layer(v): v for v in grouped if sweep_layer(v) is not None}
    missing = [b for b in range(n_layers) if b not in sweep]
    if "frozen" not in grouped or missing:
        raise ValueError(f"validity needs the frozen model and the whole single-layer sweep (missing blocks {missing})")
    k = len(selected)
    candidates = {v: window_blocks(v) for v in grouped if window_blocks(v) is not None and len(window_blocks(v)) == k}
    candidates.update({name: blocks for name, blocks in (groups or {}).items() if len(blocks) == k and name in grouped})
    candidates.setdefault("selected", list(selected))
    expected = [window_name(a, a + k - 1) for a in range(n_layers - k + 1)]
    absent = [name for name in expected if name not in grouped]
    if absent:
        raise ValueError(f"validity needs every window of {k} blocks at the same budget; missing {', '.join(absent)}")
    scores = {name: np.asarray(component["excess"], dtype=float) for name, component in evidence["components"].items()}
    scores["combined"] = np.asarray(evidence["combined"], dtype=float)

    rng = np.random.default_rng(seed)
    variants = ["frozen"] + [sweep[b] for b in range(n_layers)] + list(candidates)
    if "selected" not in grouped:
        raise ValueError("validity needs the runs of the selected plan (variant 'selected')")
    per_axis = {axis: {v: np.stack([_scope_items(run, axis) for run in grouped[v]]) for v in dict.fromkeys(variants)}
                for axis in AXES}
    variants = list(dict.fromkeys(variants))
    point = _gains(per_axis, variants, sweep, candidates, None, None)
    replicates = []
    for _ in range(n_boot):  # each variant's seeds and the (shared) items resampled
        seed_draws = {v: rng.integers(0, len(per_axis[AXES[0]][v]), len(per_axis[AXES[0]][v])) for v in variants}
        item_draws = {a: rng.integers(0, per_axis[a]["frozen"].shape[1], per_axis[a]["frozen"].shape[1]) for a in AXES}
        replicates.append(_gains(per_axis, variants, sweep, candidates, seed_draws, item_draws))
    results = {}
    for axis in (*AXES, "mean"):
        sweep_gain, plan_gain = point[axis]
        vector = np.array([sweep_gain[b] for b in range(n_layers)])
        boot_gains = np.stack([[replicate[axis][0][b] for b in range(n_layers)] for replicate in replicates])
        boot_rho = {name: [_spearman(score, gains) for gains in boot_gains] for name, score in scores.items()}
        best = max(plan_gain, key=lambda name: (plan_gain[name], name == "selected"))
        chosen = plan_gain["selected"]
        boot_ratio = np.array([_ratio(replicate[axis][1]) for replicate in replicates])
        results[axis] = Validity(
            axis, vector.tolist(), np.quantile(boot_gains, 0.025, axis=0).tolist(),
            np.quantile(boot_gains, 0.975, axis=0).tolist(),
            {name: _spearman(score, vector) for name, score in scores.items()},
            {name: float(np.nanquantile(values, 0.025)) for name, values in boot_rho.items()},
            {name: float(np.nanquantile(values, 0.975)) for name, values in boot_rho.items()},
            list(selected), chosen, best, list(candidates[best]), plan_gain[best], plan_gain[best] - chosen,
            _ratio(plan_gain), dict(plan_gain), float(np.nanquantile(boot_ratio, 0.025)),
            float(np.nanquantile(boot_ratio, 0.975)), float(np.mean(boot_ratio >= TARGET_RATIO - 1e-12)))
    return results


def _ratio(plan_gain: dict[str, float]) -> float:
    """The selected plan's gain over the best equal-size plan's (NaN when no plan gains)."""
    best = max(plan_gain.values())
    return plan_gain["selected"] / best if best > 0 else float("nan")


def _gains(per_axis: dict, variants: list[str], sweep: dict[int, str], candidates: dict[str, list[int]],
           seed_draws: dict[str, np.ndarray] | None, item_draws: dict[str, np.ndarray] | None) -> dict[str, tuple]:
    """axis -> ({block: single-block gain}, {equal-size plan: gain}) over frozen, on (resampled) seeds and items."""
    means = {}
    for axis in AXES:
        for variant in variants:
            rows = per_axis[axis][variant]  # [seeds, items]
            rows = rows if seed_draws is None else rows[seed_draws[variant]]
            means[axis, variant] = float(rows.mean() if item_draws is None else rows[:, item_draws[axis]].mean())
    for variant in variants:
        means["mean", variant] = float(np.mean([means[axis, variant] for axis in AXES]))
    out = {}
    for axis in (*AXES, "mean"):
        frozen = means[axis, "frozen"]
        out[axis] = ({b: means[axis, name] - frozen for b, name in sweep.items()},
                     {name: means[axis, name] - frozen for name in candidates})
    return out


def _spearman(score: np.ndarray, gains: np.ndarray) -> float:
    if np.allclose(score, score[0]) or np.allclose(gains, gains[0]):
        return float("nan")
    return float(stats.spearmanr(score, gains).statistic)


def from_json(record: dict) -> dict[str, Validity]:
    """The per-axis results of a validity.json (as AblationStudy writes them: `Validity.to_dict` per axis)."""
    return {axis: Validity(**fields) for axis, fields in record["axes"].items()}


def verdict(results: dict[str, Validity]) -> list[str]:
    """Plain sentences: did the evidence predict the ablation, and does the plan meet the target?"""
    sentences = []
    mean = results["mean"]
    order = sorted(mean.rho, key=lambda name: -np.nan_to_num(mean.rho[name], nan=-2))
    parts = []
    for name in order:
        rho, low, high = mean.rho[name], mean.rho_low[name], mean.rho_high[name]
        if np.isnan(rho):
            parts.append(f"{name}: undefined (constant)")
        else:
            parts.append(f"{name} rho = {rho:+.2f} [{low:+.2f}, {high:+.2f}]")
    predicted = [name for name in mean.rho if not np.isnan(mean.rho_low[name]) and mean.rho_low[name] > 0]
    sentences.append("Spearman correlation of each kind of evidence with the single-block gains (mean of held-out "
                     "objects and templates, 95% bootstrap interval over seeds and items): " + "; ".join(parts) + ".")
    others = [name for name in predicted if name != "combined"]
    if "combined" in predicted:  # the score the plan was chosen by
        sentences.append("The evidence predicted where fine-tuning works: the combined score the plan was chosen by "
                         "correlates positively with the per-block gains beyond the bootstrap noise"
                         + (f" (so do: {', '.join(others)})." if others else "."))
    elif others:
        sentences.append("The combined score the plan was chosen by did not predict the per-block gains (its interval "
                         f"includes 0 or lies below it); of its parts, {', '.join(others)} did, beyond the bootstrap "
                         "noise.")
    else:
        sentences.append("No kind of evidence predicted the per-block gains: every correlation's interval includes 0 "
                         "or lies below it.")
    met = []
    for axis in AXES:
        v = results[axis]
        ok = v.ratio >= TARGET_RATIO - 1e-12
        met.append(ok)
        sentences.append(f"Held-out {axis}s: the selected plan (blocks {describe_blocks(v.selected)}) gains "
                         f"{v.selected_gain:+.3f} scope accuracy; the best plan of {len(v.selected)} block(s) is "
                         f"{v.best_plan} (blocks {describe_blocks(v.best_blocks)}, {v.best_gain:+.3f}); ratio "
                         f"{format_ratio(v)}{_target_share(v)} ({'meets' if ok else 'misses'} the "
                         f"{TARGET_RATIO:.0%} target).")
    return sentences


def format_ratio(v: Validity) -> str:
    """The ratio with its bootstrap interval ("0.93 [0.75, 1.00]"; the ratio alone in older records)."""
    interval = "" if np.isnan(v.ratio_low) else f" [{v.ratio_low:.2f}, {v.ratio_high:.2f}]"
    return f"{v.ratio:.2f}{interval}"


def _target_share(v: Validity) -> str:
    if np.isnan(v.target_share):
        return ""
    return f"; the bootstrap reaches {TARGET_RATIO:.0%} in {v.target_share:.0%} of replicates"
