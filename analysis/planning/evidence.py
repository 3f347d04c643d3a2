"""Null-calibrated per-block evidence: what each block adds on the model beyond what the same block
adds on randomly initialised towers of the same architecture (the null models of probing.measure.null).

Components, each a per-block statistic G_m[b] computed the same way on the model (m = "trained")
and on every null model m = "null:<seed>" (layer index l: 0 = embeddings, l = output of block l-1):

    probe        A_m[l] = balanced accuracy of the logistic probe at layer l, averaged over the tasks
                 (negation, scope) and their held-out splits (cue, object, template), from per-item
                 correctness averaged over probe seeds;     G_m[b] = A_m[b+1] - A_m[b]
    sensitivity  S_m[l] = mean over captions of (negation-edit distance - control-edit distance), both
                 standardised by the layer's distance between different captions;
                                                            G_m[b] = S_m[b+1] - S_m[b]
    gradnorm     P_m[b] = relative gradient norm ||g|| / ||w|| of block b under each fine-tuning loss,
                 normalised to sum 1 over blocks, averaged over losses;      G_m[b] = P_m[b]
    patching     (optional) the largest exact denoising effect of block b's attention or MLP output,
                 in similarity units (probing.measure.layers.patching_profile); G_m[b] = that effect

No rule is front-loaded by construction: block 0's sensitivity gain starts from the embedding
layer like every other block's, and the gradient-norm profile of random towers (largest in the
first blocks for every loss) is subtracted. Excess of the model over its K null models:

    E[b] = G_trained[b] - mean_k G_null_k[b]

The test asks whether the model could be one more random tower: if it were, E[b] would be drawn
with variance s[b]^2 (1 + 1/K), s[b] the spread of the K null towers at block b (measured on the
same test items, captions and batches, so it holds the item noise and the tower-to-tower spread:
random towers differ by several probe points, which a fixed margin missed). The prediction statistic

    t[b] = E[b] / (s[b] sqrt(1 + 1/K))

follows Student's t with K - 1 degrees of freedom. A block's excess counts as evidence when t[b]
exceeds the t quantile at 1 - alpha / (blocks x components): Bonferroni over every block and
component, so that a model that learnt nothing shows any evidence at all with probability at most
alpha. With few null towers the quantile is large (K = 5: 5.6 at alpha 0.05 over 36 tests; K = 10:
4.1), which is the honest price of estimating the null's spread from K towers. The 95% interval
reported for E[b] is a bootstrap percentile interval: test items (within each class), captions,
gradient batches and null towers resampled. The same replicates, with the same test, give the
selection's stability (analysis.planning.selection).

Combined score: each component's significant positive excess, normalised to sum 1 over blocks
(a component without any is left out, with a note), weighted and summed (weights sum to 1 over the
components used). Nothing significant anywhere: no evidence, and the selector selects nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from analysis.planning.settings import EvidenceConfig
from probing.measure.keys import TRAINED, ItemKey
from probing.measure.layers import LayerMeasurements
from probing.measure.tasks import HELDOUT_SPLITS, IN_DISTRIBUTION


@dataclass
class ComponentEvidence:
    """One component's per-block numbers (lists indexed by block)."""

    name: str
    trained: list[float]  # G_trained[b]
    null_mean: list[float]  # mean_k G_null_k[b]
    excess: list[float]  # E[b]
    low: list[float]  # percentile interval of E[b] (items and null towers resampled)
    high: list[float]
    z: list[float]  # the prediction statistic t[b] = E[b] / (s[b] sqrt(1 + 1/K)); NaN where s[b] = 0 (untested)
    critical: float  # the Bonferroni t quantile it must exceed
    threshold: list[float]  # the excess a block needs to count: critical x s[b] sqrt(1 + 1/K) (NaN where s[b] = 0)
    significant: list[bool]
    n_null: int
    basis: str  # what the statistic was computed from, in words

    @property
    def evidence(self) -> list[float]:
        """Significant positive excess per block (0 elsewhere)."""
        return [e if s and e > 0 else 0.0 for e, s in zip(self.excess, self.significant)]


@dataclass
class BlockEvidence:
    n_layers: int
    components: dict[str, ComponentEvidence]
    weights: dict[str, float]  # of the components used in `combined` (sum 1)
    combined: list[float]  # per block, sums to 1, or all 0 when nothing is significant
    notes: list[str]
    config: EvidenceConfig
    # bootstrap replicates of the combined score [n_boot, n_layers] for selection stability
    replicates: np.ndarray | None = None

    @property
    def supported(self) -> bool:
        return sum(self.combined) > 0

    def table(self) -> list[dict]:
        rows = []
        for b in range(self.n_layers):
            row = {"block": b, "combined": self.combined[b]}
            for name, component in self.components.items():
                row.update({f"{name}_excess": component.excess[b], f"{name}_low": component.low[b],
                            f"{name}_high": component.high[b], f"{name}_z": component.z[b],
                            f"{name}_significant": component.significant[b]})
            rows.append(row)
        return rows

    def to_dict(self) -> dict:
        return {"n_layers": self.n_layers, "weights": self.weights, "combined": self.combined, "notes": self.notes,
                "components": {name: vars(c) for name, c in self.components.items()},
                "config": {k: v for k, v in vars(self.config).items()}, "per_block": self.table()}


# --- per-block statistics of every model, on a resample ---------------------------------------------

class _Statistic:
    """G_m[b] for every model m, on the full data (`point`) or on bootstrap replicates (`replicate`)."""

    basis = ""

    def models(self) -> list[str]:
        raise NotImplementedError

    def point(self) -> np.ndarray:  # [n_models, n_blocks]
        raise NotImplementedError

    def replicate(self, rng: np.random.Generator) -> np.ndarray:  # [n_models, n_blocks]
        raise NotImplementedError


class _ProbeStatistic(_Statistic):
    def __init__(self, measurements: LayerMeasurements, tasks: Sequence[str], models: list[str]):
        self._models = models
        self.parts = []  # (per-class item arrays [n_models, n_layers+1, n_c] per class)
        used = []
        for task in tasks:
            splits = [s for s in HELDOUT_SPLITS if measurements.has(ItemKey.probe_labels(task, s))]
            if not splits and measurements.has(ItemKey.probe_labels(task, IN_DISTRIBUTION)):
                splits = [IN_DISTRIBUTION]
            for split in splits:
                labels = measurements.item(ItemKey.probe_labels(task, split))
                stacked = np.stack([measurements.item(ItemKey.probe(task, split, m))
                                    for m in models]).astype(np.float64)
                self.parts.append([stacked[:, :, labels == c] for c in np.unique(labels)])
                used.append(f"{task}/{split}")
        if not self.parts:
            raise LookupError("no probe items")
        self.basis = "held-out probe accuracy (" + ", ".join(used) + ")"

    def models(self) -> list[str]:
        return self._models

    def _curves(self, class_means: list[list[np.ndarray]]) -> np.ndarray:
        accuracy = np.mean([np.mean(means, axis=0) for means in class_means], axis=0)  # [..., n_models, layers]
        return np.diff(accuracy, axis=-1)

    def point(self) -> np.ndarray:
        return self._curves([[c.mean(axis=-1) for c in part] for part in self.parts])

    def replicate(self, rng: np.random.Generator) -> np.ndarray:
        means = []
        for part in self.parts:
            means.append([c[:, :, rng.integers(0, c.shape[-1], c.shape[-1])].mean(axis=-1) for c in part])
        return self._curves(means)


class _SensitivityStatistic(_Statistic):
    def __init__(self, measurements: LayerMeasurements, edit: str, models: list[str]):
        self._models = models
        self.diff = np.stack([measurements.item(ItemKey.sensitivity(edit, m)).astype(np.float64)
                              - measurements.item(ItemKey.sensitivity("control", m))
                              for m in models])  # [n_models, n_layers+1, n]
        self.basis = f"{edit} negation minus a same-size control edit, standardised distances"

    def models(self) -> list[str]:
        return self._models

    def point(self) -> np.ndarray:
        return np.diff(self.diff.mean(axis=-1), axis=-1)

    def replicate(self, rng: np.random.Generator) -> np.ndarray:
        index = rng.integers(0, self.diff.shape[-1], self.diff.shape[-1])
        return np.diff(self.diff[:, :, index].mean(axis=-1), axis=-1)


class _GradnormStatistic(_Statistic):
    def __init__(self, measurements: LayerMeasurements, losses: Sequence[str], models: list[str]):
        self._models = models
        # per model [n_losses, n_batches, n_blocks]; null models may have fewer batches than the model
        self.values = [np.stack([measurements.item(ItemKey.gradnorms(loss, m)) for loss in losses]).astype(np.float64)
                       for m in models]
        self.basis = "relative gradient norms normalised over blocks (" + ", ".join(losses) + ")"

    def models(self) -> list[str]:
        return self._models

    @staticmethod
    def _profile(values: np.ndarray) -> np.ndarray:
        per_loss = values.mean(axis=1)  # [n_losses, n_blocks]
        return (per_loss / per_loss.sum(axis=-1, keepdims=True)).mean(axis=0)

    def point(self) -> np.ndarray:
        return np.stack([self._profile(v) for v in self.values])

    def replicate(self, rng: np.random.Generator) -> np.ndarray:
        return np.stack([self._profile(v[:, rng.integers(0, v.shape[1], v.shape[1])]) for v in self.values])


class _PatchingStatistic(_Statistic):
    """Block effects per model; resampled over models only (the pairs are few and shared)."""

    def __init__(self, measurements: LayerMeasurements, models: list[str]):
        self._models = models
        self.values = np.stack([measurements.item(ItemKey.patching(m)) for m in models]).astype(np.float64)
        self.basis = "exact activation patching, each block's largest attention or MLP effect (similarity units)"

    def models(self) -> list[str]:
        return self._models

    def point(self) -> np.ndarray:
        return self.values

    def replicate(self, rng: np.random.Generator) -> np.ndarray:
        return self.values


# --- the test --------------------------------------------------------------------------------------

def calibrate(statistic: _Statistic, name: str, critical: float, n_boot: int, rng: np.random.Generator
              ) -> tuple[ComponentEvidence, np.ndarray]:
    """(the component's null-calibrated evidence, its t statistic on each bootstrap replicate [n_boot, n_blocks])."""
    models = statistic.models()
    k = len(models) - 1
    point = statistic.point()
    trained, nulls = point[0], point[1:]
    excess = trained - nulls.mean(axis=0)
    inflation = np.sqrt(1 + 1 / k)
    spread = nulls.std(axis=0, ddof=1)
    t = _t(excess, spread, inflation)
    replicate_excess, replicate_t = [], []
    for _ in range(n_boot):
        values = statistic.replicate(rng)
        drawn = rng.integers(0, k, k)
        while len(np.unique(drawn)) < 2:  # one tower drawn k times has no spread (t would be infinite): draw again
            drawn = rng.integers(0, k, k)
        null = values[1:][drawn]
        replicate_excess.append(values[0] - null.mean(axis=0))
        replicate_t.append(_t(replicate_excess[-1], null.std(axis=0, ddof=1), inflation))
    low, high = np.quantile(np.stack(replicate_excess), [0.025, 0.975], axis=0)
    threshold = np.where(spread > 0, critical * spread * inflation, np.nan)
    component = ComponentEvidence(name, trained.tolist(), nulls.mean(axis=0).tolist(), excess.tolist(), low.tolist(),
                                  high.tolist(), t.tolist(), critical, threshold.tolist(),
                                  (np.nan_to_num(t, nan=-np.inf) > critical).tolist(), k, statistic.basis)
    return component, np.stack(replicate_t)


def _t(excess: np.ndarray, spread: np.ndarray, inflation: float) -> np.ndarray:
    """t = E / (s sqrt(1 + 1/K)); NaN where the null towers do not differ at all (s = 0, e.g. two towers at the same
    accuracy): there the null's spread is unknown, so the block is not tested and counts as no evidence (dividing by
    a floor instead made any excess, however small, an astronomically significant t)."""
    return np.divide(excess, spread * inflation, out=np.full(np.shape(excess), np.nan), where=spread > 0)


def block_evidence(measurements: LayerMeasurements, config: EvidenceConfig = EvidenceConfig()) -> BlockEvidence:
    """Every component's null-calibrated evidence and the combined score (formulas: module docstring)."""
    models = [TRAINED] + measurements.null_models
    rng = np.random.default_rng(config.seed)
    notes: list[str] = []
    statistics: dict[str, _Statistic] = {}
    if len(models) < 3:
        notes.append(f"only {len(models) - 1} null model(s) measured: no null distribution, so no evidence "
                     "(measure at least 2, better 5 or more)")
    else:
        try:
            statistics["probe"] = _ProbeStatistic(measurements, config.tasks, models)
        except (KeyError, LookupError):
            notes.append("probe: not measured on the model and its null models, left out")
        try:
            statistics["sensitivity"] = _SensitivityStatistic(measurements, config.sensitivity_edit, models)
        except KeyError:
            notes.append("sensitivity: not measured on the model and its null models, left out")
        losses = config.grad_losses or sorted({key.detail[0] for key in measurements.item_keys("gradnorms")})
        try:
            statistics["gradnorm"] = _GradnormStatistic(measurements, losses, models) if losses else None
        except KeyError:
            statistics["gradnorm"] = None
        if statistics["gradnorm"] is None:
            del statistics["gradnorm"]
            notes.append("gradnorm: not measured on the model and its null models, left out")
        if all(measurements.has(ItemKey.patching(m)) for m in models):
            statistics["patching"] = _PatchingStatistic(measurements, models)
    components, replicates = {}, {}
    n_tests = max(1, len(statistics)) * measurements.n_layers
    critical = float(stats.t.ppf(1 - config.alpha / n_tests, len(models) - 2)) if len(models) >= 3 else float("inf")
    for name, statistic in statistics.items():
        components[name], replicates[name] = calibrate(statistic, name, critical, config.n_boot, rng)
        untested = [b for b, t in enumerate(components[name].z) if np.isnan(t)]
        if untested:
            notes.append(f"{name}: the null models do not differ at block(s) {', '.join(map(str, untested))}, so "
                         "there is no null spread to test against and those blocks count as no evidence (measure "
                         "more null models)")
    n_blocks = measurements.n_layers
    shares, weights = {}, {}
    for name, component in components.items():
        positive = np.asarray(component.evidence)
        if config.weights.get(name, 0) == 0:
            notes.append(f"{name}: weight 0, left out of the combined score")
        elif positive.sum() <= 0:
            notes.append(f"{name}: no block's excess over the null models is significant "
                         f"(alpha {config.alpha:g} over all blocks and components); it adds no evidence")
        else:
            shares[name], weights[name] = positive / positive.sum(), config.weights[name]
    total = sum(weights.values())
    weights = {name: w / total for name, w in weights.items()}
    combined = sum((weights[name] * shares[name] for name in shares), np.zeros(n_blocks))
    result = BlockEvidence(n_blocks, components, weights, combined.tolist(), notes, config)
    result.replicates = _combined_replicates(components, replicates, config.weights) if components else None
    return result


def _combined_replicates(components: dict[str, ComponentEvidence], replicates: dict[str, np.ndarray],
                         weights: dict[str, float]) -> np.ndarray:
    """The combined score on each bootstrap replicate, each component's significance decided on the
    replicate by the same test: what the selection would see on another draw of test items, captions,
    gradient batches and null towers."""
    n_boot, n_blocks = next(iter(replicates.values())).shape
    combined, total = np.zeros((n_boot, n_blocks)), np.zeros(n_boot)
    for name, component in components.items():
        t = replicates[name]
        positive = np.where(t > component.critical, t, 0.0)
        sums = positive.sum(axis=1)
        used = sums > 0
        weight = weights.get(name, 0.0)
        combined[used] += weight * positive[used] / sums[used, None]
        total += weight * used
    return np.divide(combined, total[:, None], out=np.zeros_like(combined), where=total[:, None] > 0)
