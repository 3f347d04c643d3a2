"""Predictive validity: did the layer evidence predict where fine-tuning works, and is the plan the best advice?

Inputs: the runs of an ablation study (analysis.ablation.runner) that include the frozen model, the
single-layer sweep (layer_<b>: block b alone), the selected plan and the windows of its size
(window_<a>_<b>: every contiguous run of as many blocks), all at the same budget, plus whatever other plans
the study ran (windows of other sizes, top-k sets, the anchors, the plan with its own extras); and the
evidence the plan was chosen from (the `evidence` of probe-layers' layer_plan.json).

Every target (TARGETS) is a mean over test items of per-item outcomes the runs record ("<suite>/<outcome>"):
scope accuracy on held-out objects, templates and cues (and their object-template mean, "scope", the
headline), absence vs presence negation, the four-way multiple choice, and retention (image->text R@1 among
100, zero-shot). For each target:

    gain[v]     mean over seeds of variant v's target minus the frozen model's (per block b for layer_b)
    rho_c       Spearman correlation between component c's per-block excess over the null models (and the
                combined score) and the single-block gains
    ratio       selected gain / best gain among the plans with as many blocks and the study's extras (every
                contiguous window, top-k sets, front / middle / back / all when their size matches)
    ratio_any   selected gain / best gain of any plan the study ran (other sizes, the anchors with their
                extras, the plan with its own extras)
    frontier    gain against trainable parameters: the plans no other plan beats with no more parameters
                (point estimates); the selected plan is off it "beyond the noise" only when some plan with no
                more parameters gains more in 97.5 % of bootstrap replicates (`dominated_by`); `next_larger`
                is the next frontier point with more parameters (what a larger budget buys); `undominated`: every
                plan beaten so by none, the frontier within the noise. A plan in it on every target at once
                (`within_noise_everywhere`) is one a rule could pick and meet the frontier criterion on every
                target; when there is none, no rule that picks one plan can, whatever its evidence
    rho_headline  Spearman correlation, across the single blocks, between this target's gains and scope's:
                below 0, the blocks that learn scope best cost most here; with a bootstrap interval from the
                same replicates (positive by construction for the scope targets, which share its items)

BREAKDOWN splits the multiple choice by its correct answer's type (affirmative, negated, hybrid), so that a gain
or a cost there can be traced; `assess` computes it like a target, but the selector study judges TARGETS only.

Intervals: a bootstrap that resamples the seeds and the evaluation items, the same draws for every variant (paired:
seed s gives every variant the same data order, and every run is scored on the same items), so rho's interval holds
the optimisation noise and the finite test set, and two plans' difference is paired over both. The
ratios get one too: in each replicate the selected plan's gain over the best gain of that replicate;
`target_share` is the fraction of replicates where `ratio` reaches TARGET_RATIO, so a miss by a few points can
be told from a miss beyond the noise. Both lean low: a replicate divides by its best plan, and the best of several
noisy gains is high by the noise itself, so a plan truly best at its size, with others close behind, reaches the
target in well under all replicates; "meets the target" reads the point ratio (the same lean once: it is 1.00
whenever the plan comes out best). Retention targets are "gains" too
(usually negative: what fine-tuning lost), so a larger value is better for every target. The verdict sentences are
computed from these numbers.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from analysis.ablation.variants import sweep_layer, variant_blocks, window_name, windows_of
from analysis.planning.selection import describe_blocks

TARGET_RATIO = 0.95
HEADLINE_TARGET = "scope"
RANDOM_WINDOW_PREFIX = "random_window_"  # a plan record for the mean over every window of a size


@dataclass(frozen=True)
class Target:
    """A quantity a fine-tuning plan is judged on: the mean of per-item outcomes recorded under `items`."""

    name: str
    label: str
    items: tuple[str, ...]  # run item keys "<suite>/<outcome>"; several: the mean of their means
    retention: bool = False  # kept, not raised, by negation fine-tuning
    # (label key, value): only the items whose label under that run item key is the value (one answer type)
    subset: tuple[str, str] | None = None


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("scope", "scope accuracy, mean of held-out objects and templates", ("object/scope", "template/scope")),
    Target("scope_object", "scope accuracy, held-out objects", ("object/scope",)),
    Target("scope_template", "scope accuracy, held-out templates", ("template/scope",)),
    Target("scope_cue", "scope accuracy, held-out cues", ("cue/scope",)),
    Target("absence", "absence (true) vs presence (false) negated captions, held-out objects", ("object/absence",)),
    Target("mcq", "four-way multiple choice (positive / negative / hybrid answers), held-out objects",
           ("object/mcq",)),
    Target("retrieval", "image->text R@1 among 100 (retention)", ("object/image_to_text",), retention=True),
    Target("zero_shot", "zero-shot over 36 objects (retention)", ("object/zero_shot",), retention=True),
)}
# One target split by the multiple choice's answer type (NegBench's template types): a breakdown that says where a
# gain or a cost on the multiple choice comes from. Reported beside the targets, not judged as targets of their own.
BREAKDOWN: dict[str, Target] = {f"mcq_{kind}": Target(
    f"mcq_{kind}", f"four-way multiple choice, {label} correct answers, held-out objects", ("object/mcq",),
    subset=("object/mcq_template", kind)) for kind, label in (("positive", "affirmative"), ("negative", "negated"),
                                                              ("hybrid", "hybrid"))}
# records written before targets existed name the scope axes "object", "template" and their "mean"
_OLD_AXES = {"object": "scope_object", "template": "scope_template", "mean": "scope"}


@dataclass
class Validity:
    axis: str  # the target's name ("object", "template", "mean" in records written before TARGETS)
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
    # every plan the study ran: variant -> {"blocks", "trainable", "gain", "low", "high"} (empty in old records)
    plans: dict[str, dict] = field(default_factory=dict)
    best_any: str = ""
    best_any_gain: float = float("nan")
    ratio_any: float = float("nan")
    ratio_any_low: float = float("nan")
    ratio_any_high: float = float("nan")
    dominated_by: list[str] = field(default_factory=list)  # plans with no more parameters that gain more, beyond noise
    # every plan that no plan with no more parameters beats beyond the noise: the frontier within the intervals
    # (empty in records written before it was computed)
    undominated: list[str] = field(default_factory=list)
    # Spearman rho, across the single blocks, between this target's gains and the headline target's (scope): below
    # 0, the blocks that gain most on scope cost most here, under the loss the study trained; NaN for the headline
    # itself and in records written before it was computed
    rho_headline: float = float("nan")
    rho_headline_low: float = float("nan")
    rho_headline_high: float = float("nan")
    # whether a bootstrap replicate drew the same seeds for every plan (paired over seeds as well as items); False in
    # records written before it did, whose seeds were drawn for each plan on its own (wider difference intervals)
    paired_seeds: bool = False

    @property
    def frontier(self) -> list[str]:
        """The plans on the gain / trainable-parameter frontier by their means, by increasing parameters (read off
        `plans`, so that every record reads the same rule); empty when the selected plan trains nothing."""
        if not self.plans.get("selected", {}).get("trainable"):
            return []
        plans = {v: p for v, p in self.plans.items() if not p.get("expected") and "gain" in p}
        return _frontier({v: p["gain"] for v, p in plans.items()}, {v: p["trainable"] for v, p in plans.items()})

    @property
    def next_larger(self) -> str | None:
        """The next frontier plan with more trainable parameters than the selected one and a larger gain: what a
        larger budget buys (None when no larger plan gains more than the best plan of no more parameters)."""
        selected = self.plans.get("selected", {})
        return next((v for v in self.frontier if self.plans[v]["trainable"] > selected["trainable"]
                     and self.plans[v]["gain"] > selected["gain"]), None)

    @property
    def best_no_larger(self) -> str | None:
        """The frontier plan with the largest gain among those with no more parameters than the selected plan (the
        selected plan itself when it is on the frontier)."""
        cost = self.plans.get("selected", {}).get("trainable", 0)
        smaller = [v for v in self.frontier if self.plans[v]["trainable"] <= cost]
        return smaller[-1] if smaller else None

    @property
    def target(self) -> Target:
        name = _OLD_AXES.get(self.axis, self.axis)
        return TARGETS[name] if name in TARGETS else BREAKDOWN[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Source = tuple[str, tuple[str, str] | None]  # a run item key and the subset of its items a target reads


def _items(run: dict, source: Source) -> np.ndarray:
    key, subset = source
    items = run.get("items", {}).get(key)
    if items is None:
        raise KeyError(f"run {run['variant']} seed {run['seed']} has no per-item outcomes {key!r}")
    values = np.asarray(items, dtype=float)
    if subset is None:
        return values
    return values[np.asarray(run["items"][subset[0]]) == subset[1]]


def _runs_by_variant(runs: Sequence[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["variant"], []).append(run)
    return grouped


def available_targets(runs: Sequence[dict], targets: Mapping[str, Target] = TARGETS) -> dict[str, Target]:
    """The targets every run recorded the per-item outcomes (and the subset's labels) of (runs made before a target
    existed lack it); a subset that no item of a run falls in (e.g. an answer type that a few multiple-choice items
    never drew) has nothing to assess and is left out."""
    def recorded(target: Target, run: dict) -> bool:
        items = run.get("items", {})
        if not all(key in items for key in target.items + ((target.subset[0],) if target.subset else ())):
            return False
        return target.subset is None or target.subset[1] in items[target.subset[0]]

    return {name: target for name, target in targets.items() if all(recorded(target, run) for run in runs)}


def assess(runs: Sequence[dict], evidence: dict, selected: Sequence[int], *, n_layers: int,
           groups: dict[str, list[int]] | None = None, trainable: Mapping[str, int] | None = None,
           targets: Mapping[str, Target] | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Validity]:
    """Validity per target (module docstring). `evidence` is a plan's recorded evidence dict (components ->
    {"excess": [...]}, "combined"); `groups` the block lists of the other variants that train blocks with the
    study's extras (front, middle, ...; windows, layers and sets are read off their names): the equal-size
    candidates; `trainable` the trainable parameters of every trained variant (the plans of the frontier and
    of the any-size ratio). targets: default every target the runs recorded."""
    grouped = _runs_by_variant(runs)
    sweep = {sweep_layer(v): v for v in grouped if sweep_layer(v) is not None}
    missing = [b for b in range(n_layers) if b not in sweep]
    if "frozen" not in grouped or missing:
        raise ValueError(f"validity needs the frozen model and the whole single-layer sweep (missing blocks {missing})")
    if "selected" not in grouped:
        raise ValueError("validity needs the runs of the selected plan (variant 'selected')")
    k = len(selected)
    expected = [window_name(a, a + k - 1) for a in range(n_layers - k + 1)]
    absent = [name for name in expected if name not in grouped]
    if absent:
        raise ValueError(f"validity needs every window of {k} blocks at the same budget; missing {', '.join(absent)}")
    spans = {v: variant_blocks(v) for v in grouped if variant_blocks(v) is not None}  # windows, layers, sets
    block_plans = {name: list(blocks) for name, blocks in {**spans, **(groups or {})}.items() if name in grouped}
    block_plans["selected"] = list(selected)
    candidates = {name: blocks for name, blocks in block_plans.items() if len(blocks) == k}
    trainable = {v: int(n) for v, n in (trainable or {}).items() if v in grouped and n > 0}
    trainable.setdefault("selected", 0)
    targets = dict(targets) if targets is not None else available_targets(runs)
    if not targets:
        raise ValueError("the runs record the per-item outcomes of no target")
    scores = {name: np.asarray(component["excess"], dtype=float) for name, component in evidence["components"].items()}
    scores["combined"] = np.asarray(evidence["combined"], dtype=float)
    variants = list(dict.fromkeys(["frozen", *(sweep[b] for b in range(n_layers)), *candidates, *trainable,
                                   *block_plans]))
    keys = sorted({key for target in targets.values() for key in target.items})
    subsets = sorted({(key, t.subset) for t in targets.values() if t.subset for key in t.items}, key=str)
    sources: list[Source] = [(key, None) for key in keys] + subsets
    seeds = sorted({int(run["seed"]) for v in variants for run in grouped[v]})
    for v in variants:  # pairing by seed needs each plan's runs of the same seeds, in the same order
        grouped[v] = sorted(grouped[v], key=lambda run: int(run["seed"]))
        if [int(run["seed"]) for run in grouped[v]] != seeds:
            raise ValueError(f"validity pairs the plans' runs by seed: {v} has runs of seeds "
                             f"{describe_blocks([int(run['seed']) for run in grouped[v]])}, the study "
                             f"{describe_blocks(seeds)}")
    per_source = {source: {v: np.stack([_items(run, source) for run in grouped[v]]) for v in variants}
                  for source in sources}

    def means(seed_draw, item_draws) -> dict[str, dict[str, float]]:
        """target -> variant -> mean outcome on (resampled) seeds and items."""
        source_means = {}
        for source in sources:
            for v in variants:
                rows = per_source[source][v] if seed_draw is None else per_source[source][v][seed_draw]
                source_means[source, v] = float(rows.mean() if item_draws is None else
                                                rows[:, item_draws[source]].mean())
        return {name: {v: float(np.mean([source_means[(key, t.subset), v] for key in t.items])) for v in variants}
                for name, t in targets.items()}

    # the seeds and the items resampled, paired: seed s gives every variant the same data order and every run is
    # scored on the same items, so a replicate draws the same seeds and items for every variant. Each from its own
    # stream, which no variant enters: every interval stays the same when the study runs more variants (and a
    # subset's items, drawn from streams of their own, leave the other targets' draws as they were)
    item_rng = np.random.default_rng([seed, 0])
    subset_rngs = {source: np.random.default_rng([seed, 2, zlib.crc32(repr(source).encode())]) for source in subsets}
    seed_rng = np.random.default_rng([seed, 1])
    n_seeds = len(seeds)
    n_items = {source: per_source[source]["frozen"].shape[1] for source in sources}
    point = means(None, None)
    replicates = []
    for _ in range(n_boot):
        seed_draw = seed_rng.integers(0, n_seeds, n_seeds)
        item_draws = {(key, None): item_rng.integers(0, n_items[key, None], n_items[key, None]) for key in keys}
        item_draws.update({source: subset_rngs[source].integers(0, n_items[source], n_items[source])
                           for source in subsets})
        replicates.append(means(seed_draw, item_draws))
    headline = None
    if HEADLINE_TARGET in targets:  # the scope gain of every block, to which each target's is related
        headline = (_sweep_gains(point[HEADLINE_TARGET], sweep, n_layers),
                    np.array([_sweep_gains(r[HEADLINE_TARGET], sweep, n_layers) for r in replicates]))
    return {name: _validity(name, point[name], [r[name] for r in replicates], sweep, candidates, block_plans,
                            trainable, scores, list(selected), n_layers,
                            headline=None if name == HEADLINE_TARGET else headline) for name in targets}


def _sweep_gains(means: dict[str, float], sweep: dict[int, str], n_layers: int) -> np.ndarray:
    """Each block's gain when trained alone: its layer_<b> variant's mean minus the frozen model's."""
    return np.array([means[sweep[b]] - means["frozen"] for b in range(n_layers)])


def _validity(name: str, point: dict[str, float], replicates: list[dict[str, float]], sweep: dict[int, str],
              candidates: dict[str, list[int]], block_plans: dict[str, list[int]], trainable: dict[str, int],
              scores: dict[str, np.ndarray], selected: list[int], n_layers: int,
              headline: tuple[np.ndarray, np.ndarray] | None = None) -> Validity:
    def gains(means: dict[str, float]) -> dict[str, float]:
        out = {v: value - means["frozen"] for v, value in means.items()}
        for size, windows in complete_windows.items():  # a random window of that size: the mean over all of them
            out[f"{RANDOM_WINDOW_PREFIX}{size}"] = float(np.mean([out[w] for w in windows]))
        return out

    complete_windows = {size: windows_of(size, n_layers) for size in sorted({len(b) for b in block_plans.values()})
                        if all(w in block_plans for w in windows_of(size, n_layers))}
    g, boot = gains(point), [gains(r) for r in replicates]
    vector = np.array([g[sweep[b]] for b in range(n_layers)])
    boot_sweep = np.array([[r[sweep[b]] for b in range(n_layers)] for r in boot])
    boot_rho = {c: [_spearman(score, row) for row in boot_sweep] for c, score in scores.items()}
    equal = {v: g[v] for v in candidates}
    best = max(equal, key=lambda v: (equal[v], v == "selected"))
    plans = {v: g[v] for v in trainable}
    plans["selected"] = g["selected"]
    best_any = max(plans, key=lambda v: (plans[v], v == "selected"))
    boot_ratio = np.array([_ratio(r["selected"], [r[v] for v in candidates]) for r in boot])
    boot_ratio_any = np.array([_ratio(r["selected"], [r[v] for v in plans]) for r in boot])
    records = {v: _plan_record(v, g, boot, block_plans, plans, trainable) for v in plans}
    for size, windows in complete_windows.items():
        expected = f"{RANDOM_WINDOW_PREFIX}{size}"
        records[expected] = _plan_record(expected, g, boot, {**block_plans, expected: list(range(size))}, plans,
                                         {**trainable, expected: trainable.get(windows[0], 0)}, expected=True)
    cost = trainable.get("selected", 0)
    beaten = _beaten_by(plans, boot, trainable) if cost else {}
    dominated = beaten.get("selected", [])
    if headline is None:
        with_headline = (float("nan"),) * 3
    else:
        boot_with = [_spearman(h, row) for h, row in zip(headline[1], boot_sweep)]
        with_headline = (_spearman(headline[0], vector), _nanquantile(boot_with, 0.025),
                         _nanquantile(boot_with, 0.975))
    return Validity(
        name, vector.tolist(), np.quantile(boot_sweep, 0.025, axis=0).tolist(),
        np.quantile(boot_sweep, 0.975, axis=0).tolist(),
        {c: _spearman(score, vector) for c, score in scores.items()},
        {c: _nanquantile(values, 0.025) for c, values in boot_rho.items()},
        {c: _nanquantile(values, 0.975) for c, values in boot_rho.items()},
        selected, g["selected"], best, list(candidates[best]), equal[best], equal[best] - g["selected"],
        _ratio(g["selected"], equal.values()), dict(equal), _nanquantile(boot_ratio, 0.025),
        _nanquantile(boot_ratio, 0.975), float(np.mean(boot_ratio >= TARGET_RATIO - 1e-12)),
        plans=records,
        best_any=best_any, best_any_gain=plans[best_any], ratio_any=_ratio(g["selected"], plans.values()),
        ratio_any_low=_nanquantile(boot_ratio_any, 0.025),
        ratio_any_high=_nanquantile(boot_ratio_any, 0.975),
        dominated_by=dominated, undominated=[v for v in plans if not beaten[v]] if cost else [],
        rho_headline=with_headline[0], rho_headline_low=with_headline[1], rho_headline_high=with_headline[2],
        paired_seeds=True)


def _nanquantile(values, q: float) -> float:
    """np.nanquantile, NaN without a warning when every value is NaN (a ratio to a best gain that is not positive)."""
    values = np.asarray(values, dtype=float)
    return float("nan") if np.isnan(values).all() else float(np.nanquantile(values, q))


def _plan_record(v: str, g: dict[str, float], boot: list[dict[str, float]], block_plans: dict[str, list[int]],
                 plans: dict[str, float], trainable: dict[str, int], *, expected: bool = False) -> dict:
    """One plan's numbers: gain with interval, trainable parameters, its ratio to the best plan of its size (plans
    of whole blocks with the study's extras) and of any size, and its difference from the selected plan, each with
    a bootstrap interval. `expected`: the mean over every window of a size (a random window), not a plan."""
    size = len(block_plans[v]) if v in block_plans else None
    same = [w for w, blocks in block_plans.items() if size is not None and len(blocks) == size and w in g]

    def quantiles(values) -> tuple[float, float]:
        return _nanquantile(values, 0.025), _nanquantile(values, 0.975)

    record = {"blocks": block_plans.get(v, []) if not expected else [], "trainable": trainable.get(v, 0),
              "gain": g[v], "expected": expected}
    record["low"], record["high"] = quantiles([r[v] for r in boot])
    record["diff"] = g[v] - g["selected"]
    record["diff_low"], record["diff_high"] = quantiles([r[v] - r["selected"] for r in boot])
    record["ratio"] = _ratio(g[v], [g[w] for w in same]) if same else float("nan")
    record["ratio_low"], record["ratio_high"] = quantiles(
        [_ratio(r[v], [r[w] for w in same]) for r in boot]) if same else (float("nan"), float("nan"))
    record["ratio_any"] = _ratio(g[v], plans.values())
    record["ratio_any_low"], record["ratio_any_high"] = quantiles([_ratio(r[v], [r[w] for w in plans]) for r in boot])
    return record


def _beaten_by(plans: dict[str, float], boot: list[dict[str, float]], trainable: dict[str, int]
               ) -> dict[str, list[str]]:
    """For every plan, the plans with no more trainable parameters that gain more beyond the noise (their paired
    difference is above 0 in 97.5 % of bootstrap replicates); a plan beaten by none lies on the frontier within the
    intervals."""
    names = list(plans)
    draws = np.array([[r[v] for v in names] for r in boot])
    cost = np.array([trainable[v] for v in names])
    out = {}
    for i, v in enumerate(names):
        rivals = [j for j in range(len(names)) if j != i and cost[j] <= cost[i]]
        low = np.quantile(draws[:, rivals] - draws[:, [i]], 0.025, axis=0) if rivals else np.array([])
        out[v] = [names[j] for j, q in zip(rivals, low) if q > 0]
    return out


def _frontier(gains: dict[str, float], trainable: dict[str, int]) -> list[str]:
    """The plans no other plan beats with no more trainable parameters, by increasing parameters. Of plans equal in
    both, the selected plan stands for them all (e.g. a one-block plan and its layer_<b> variant: the same runs)."""
    order = sorted(gains, key=lambda v: (trainable[v], -gains[v], v != "selected"))
    frontier, best = [], -math.inf
    for v in order:
        if gains[v] > best:
            frontier.append(v)
            best = gains[v]
    return frontier


def _ratio(selected: float, gains) -> float:
    """The selected plan's gain over the best gain (NaN when no plan gains)."""
    best = max(gains)
    return selected / best if best > 0 else float("nan")


def _spearman(score: np.ndarray, gains: np.ndarray) -> float:
    if np.allclose(score, score[0]) or np.allclose(gains, gains[0]):
        return float("nan")
    return float(stats.spearmanr(score, gains).statistic)


def from_json(record: dict, *, breakdown: bool = False) -> dict[str, Validity]:
    """The per-target results of a validity.json (as the runner writes them: `Validity.to_dict` per target;
    records written before TARGETS hold "axes" object / template / mean); with `breakdown`, its multiple choice by
    answer type instead (empty in records written before it was computed)."""
    def read(values: dict) -> Validity:  # records written before the frontier was read off `plans` stored it
        return Validity(**{key: value for key, value in values.items() if key not in ("frontier", "next_larger")})

    if breakdown:
        return {name: read(values) for name, values in record.get("breakdown", {}).items()}
    fields = record.get("targets") or record["axes"]
    return {name: read(values) for name, values in fields.items()}


def headline(results: dict[str, Validity]) -> Validity:
    """The target the plan's summary sentence is about: mean scope accuracy (old records: "mean")."""
    return results.get(HEADLINE_TARGET) or results["mean"]


def verdict(results: dict[str, Validity]) -> list[str]:
    """Plain sentences: did the evidence predict the ablation, and does the plan meet the target?"""
    sentences = []
    mean = headline(results)
    order = sorted(mean.rho, key=lambda name: -np.nan_to_num(mean.rho[name], nan=-2))
    parts = []
    for name in order:
        rho, low, high = mean.rho[name], mean.rho_low[name], mean.rho_high[name]
        if np.isnan(rho):
            parts.append(f"{name}: undefined (constant)")
        else:
            parts.append(f"{name} rho = {with_interval(rho, low, high)}")
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
    for axis in ("scope_object", "scope_template", "object", "template"):
        if axis not in results:
            continue
        v = results[axis]
        ok = v.ratio >= TARGET_RATIO - 1e-12
        where = "objects" if axis.endswith("object") else "templates"
        sentences.append(f"Held-out {where}: the selected plan (blocks {describe_blocks(v.selected)}) gains "
                         f"{v.selected_gain:+.3f} scope accuracy; the best plan of {len(v.selected)} block(s) is "
                         f"{v.best_plan} (blocks {describe_blocks(v.best_blocks)}, {v.best_gain:+.3f}); ratio "
                         f"{format_ratio(v)}{_target_share(v)} (the point ratio {'meets' if ok else 'misses'} the "
                         f"{TARGET_RATIO:.0%} target).")
    if mean.plans:
        sentences.append(frontier_sentence(mean))
    trade = tradeoff_sentence(results)
    if trade:
        sentences.append(trade)
    reachable = reachability_sentence(results)
    if reachable:
        sentences.append(reachable)
    return sentences


def tradeoff_sentence(results: dict[str, Validity]) -> str | None:
    """The targets whose single-block gains run opposite to scope's beyond the noise (rho_headline's interval below
    0), in words: there the blocks that learn scope best cost most, under the loss the study trained."""
    against = [v for v in results.values() if not np.isnan(v.rho_headline_high) and v.rho_headline_high < 0]
    if not against:
        return None
    parts = [f"{v.target.label} (rho {with_interval(v.rho_headline, v.rho_headline_low, v.rho_headline_high)})"
             for v in against]
    return ("Across the single blocks, the gains on " + "; ".join(parts) + " run opposite to those on scope beyond "
            "the noise: under this loss, the blocks that learn scope best cost most there (a loss for that target "
            "too may change it).")


def within_noise_everywhere(results: dict[str, Validity]) -> tuple[list[str], list[str]]:
    """The plans that lie on the frontier within the noise on every target at once (on none is a plan with no more
    parameters better beyond the noise), by increasing parameters: the plans a rule that picks one plan could pick
    and meet the study's frontier criterion. When there are none, also the targets without which some plan would:
    the targets that pull the plans apart. A variant that trains the selected plan's blocks at its cost counts once,
    as "selected". Targets of older records (no `undominated`) are left out."""
    judged = {name: v for name, v in results.items() if v.undominated}
    if not judged:
        return [], []

    plans = next(iter(judged.values())).plans
    mine = (plans["selected"]["blocks"], plans["selected"]["trainable"])

    def common(names) -> list[str]:
        sets = [set(judged[name].undominated) for name in names]
        # a variant that trains the selected plan's blocks at its cost (its layer_<b> twin) is not another plan
        return sorted((p for p in set.intersection(*sets)
                       if p == "selected" or (plans[p]["blocks"], plans[p]["trainable"]) != mine),
                      key=lambda p: (plans[p]["trainable"], p != "selected", p)) if sets else []

    everywhere = common(judged)
    if everywhere or len(judged) < 2:
        return everywhere, []
    return [], [name for name in judged if common([other for other in judged if other != name])]


def reachability_sentence(results: dict[str, Validity]) -> str | None:
    """Whether any plan the study ran could have met the frontier criterion on every target, in words."""
    judged = [v for v in results.values() if v.undominated]
    if not judged:  # records written before the frontier within the noise was kept
        return None
    everywhere, blocking = within_noise_everywhere(results)
    if everywhere:
        plans = judged[0].plans
        where = ("is among them" if "selected" in everywhere else
                 f"is not among them ({plans['selected']['trainable']:,} parameters)")
        shown = ", ".join(f"{p} ({plans[p]['trainable']:,} parameters)" for p in everywhere[:4])
        more = f" and {len(everywhere) - 4} more" if len(everywhere) > 4 else ""
        return (f"On every target at once, {len(everywhere)} plan(s) the study ran lie on the gain / trainable-"
                f"parameter frontier within the noise (no plan with as many parameters or fewer beats them beyond "
                f"it on any target), smallest first: {shown}{more}; the selected plan {where}.")
    text = ("No plan the study ran lies on the frontier within the noise on every target at once (each is beaten "
            "beyond the noise, on some target, by a plan with as many parameters or fewer), so no rule that picks "
            "one plan could meet that criterion on this model")
    if blocking:
        labels = [results[name].target.label for name in blocking]
        text += f"; leaving out {' or '.join(labels)}, some plan would"
    return text + "."


def frontier_place(v: Validity, most: int | None = None) -> str:
    """Whether the selected plan is on the frontier: "yes" (by its mean), "no: <plans> gain more with no more
    parameters" (beyond the noise; the first `most` of them), or "within the noise"."""
    if "selected" in v.frontier:
        return "yes"
    if v.dominated_by:
        return "no: " + ", ".join(v.dominated_by[:most]) + " gain more with no more parameters"
    return "within the noise"


def next_point(v: Validity) -> str:
    """The next point on the frontier, with its parameters and gain, or why there is none."""
    if v.next_larger:
        nxt = v.plans[v.next_larger]
        return f"{v.next_larger}: {nxt['trainable']:,} parameters, {nxt['gain']:+.3f} [{nxt['low']:+.3f}, " \
               f"{nxt['high']:+.3f}]"
    return f"none ({_no_larger(v)})"


def _no_larger(v: Validity) -> str:
    """Why there is no next point: no larger plan gains more than the plan, or than the plan of no more parameters
    that beats it."""
    if "selected" in v.frontier or v.best_no_larger is None:
        return "no larger plan gains more"
    return f"no larger plan gains more than {v.best_no_larger}, which has no more parameters"


def frontier_sentence(v: Validity) -> str:
    """Where the selected plan stands on the gain / trainable-parameter frontier of one target, and what a larger
    budget buys."""
    selected = v.plans["selected"]
    where = ("lies on the gain / trainable-parameter frontier" if "selected" in v.frontier else
             "is not on the frontier by its mean" + ("" if v.dominated_by else
                                                      ", but no plan with as few parameters beats it beyond the noise"))
    text = (f"On {v.target.label}, the selected plan ({selected['trainable']:,} trainable parameters, "
            f"{selected['gain']:+.3f} [{selected['low']:+.3f}, {selected['high']:+.3f}]) {where}")
    if v.dominated_by:
        text += (f"; with no more parameters {', '.join(v.dominated_by)} gain(s) more beyond the bootstrap noise "
                 f"(best: {v.best_any if v.best_any in v.dominated_by else v.dominated_by[0]})")
    if v.next_larger:
        nxt = v.plans[v.next_larger]
        text += (f"; the next point on the frontier is {v.next_larger} ({nxt['trainable']:,} parameters, "
                 f"{nxt['gain']:+.3f} [{nxt['low']:+.3f}, {nxt['high']:+.3f}])")
    else:
        text += f"; {_no_larger(v)}"
    return text + "."


def with_interval(value, low, high, digits: int = 2, *, sign: bool = True, missing: str = "–") -> str:
    """"+0.332 [+0.239, +0.427]": a value and its interval, `missing` where the value is None or NaN, the value
    alone where the interval is."""
    if value is None or value != value:
        return missing
    form = f"{{:{'+' if sign else ''}.{digits}f}}"
    inner = "" if low is None or low != low else f" [{form.format(low)}, {form.format(high)}]"
    return form.format(value) + inner


def format_ratio(v: Validity, *, any_size: bool = False) -> str:
    """The ratio with its bootstrap interval ("0.93 [0.75, 1.00]"; the ratio alone in older records)."""
    ratio, low, high = (v.ratio_any, v.ratio_any_low, v.ratio_any_high) if any_size else (v.ratio, v.ratio_low,
                                                                                          v.ratio_high)
    interval = "" if np.isnan(low) else f" [{low:.2f}, {high:.2f}]"
    return f"{ratio:.2f}{interval}"


def _target_share(v: Validity) -> str:
    if np.isnan(v.target_share):
        return ""
    return f"; the bootstrap reaches {TARGET_RATIO:.0%} in {v.target_share:.0%} of replicates"
