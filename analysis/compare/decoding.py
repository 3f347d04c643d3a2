"""Where negation is decodable in each model: per-layer probes on the same held-out splits, and the paired
difference tuned - base.

Both models' probes are fitted and scored by probing.measure.probes.probe_layers on the same task (the same
captions, training items and test splits), so their per-item correctness can be compared item by item: the
difference of balanced accuracies gets a PAIRED percentile bootstrap over test items (one resample of the
test items scores both models), which is narrower than two separate intervals and honest about the test
set being finite. Each resample is drawn as multinomial counts over the items, so all layers of a split
are resampled at once.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from probing.clip.hooked import HookedCLIPText
from probing.measure.capture import capture_pooled
from probing.measure.probes import ProbeSweep, probe_layers
from probing.measure.tasks import HELDOUT_SPLITS, IN_DISTRIBUTION, ProbeTask


def capture_states(model, tokenizer: Callable, captions: Sequence[str], *, batch_size: int = 256,
                   progress: bool = False, desc: str = "capture") -> np.ndarray:
    """EOT states [n_layers + 1, n, d] of every caption (layer 0 = embedding output), through HookedCLIPText."""

    return capture_pooled(HookedCLIPText(model), tokenizer, list(captions), pools="eot", token_budget=None,
                          batch_size=batch_size, progress=progress, desc=desc)


def sweep(features: np.ndarray, task: ProbeTask, *, seeds: Sequence[int], probes: Sequence[str]) -> ProbeSweep:
    """The per-layer probe sweep of one model on one task (its own training items and test splits)."""
    return probe_layers(features, task.labels, task.train, task.tests, seeds=tuple(seeds), probes=tuple(probes))


def balanced_accuracy_counts(correct: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy of per-item correctness `correct` [n_layers, n] under resample counts [n_boot, n]:
    [n_boot, n_layers]. A class a resample misses drops out of that resample's mean."""
    recalls = []
    for label in np.unique(labels):
        member = (labels == label).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append((counts @ (correct * member).T) / (counts @ member)[:, None])
    return np.nanmean(np.stack(recalls), axis=0)


def paired_differences(tuned: ProbeSweep, base: ProbeSweep, *, n_boot: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> list[dict]:
    """Rows (split, layer, probe, tuned - base balanced accuracy, paired bootstrap interval) for every split and
    probe both sweeps hold; the sweeps must come from the same task (the same test items) and depth."""
    rows = []
    alpha = (1 - confidence) / 2
    for (split, probe), tuned_items in tuned.items.items():
        base_items = base.items.get((split, probe))
        if base_items is None or base_items.shape != tuned_items.shape:
            continue
        labels = base.labels[split]
        if not np.array_equal(labels, tuned.labels[split]):
            raise ValueError(f"split {split}: the two sweeps scored other test items")
        n = len(labels)
        rng = np.random.default_rng([seed, len(rows)])
        counts = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
        ones = np.ones((1, n))
        point = (balanced_accuracy_counts(tuned_items, labels, ones) - balanced_accuracy_counts(base_items, labels,
                                                                                                ones))[0]
        boot = balanced_accuracy_counts(tuned_items, labels, counts) - balanced_accuracy_counts(base_items, labels,
                                                                                               counts)
        low, high = np.nanquantile(boot, alpha, axis=0), np.nanquantile(boot, 1 - alpha, axis=0)
        for layer in range(tuned_items.shape[0]):
            rows.append({"split": split, "layer": layer, "probe": probe, "difference": float(point[layer]),
                         "ci_low": float(low[layer]), "ci_high": float(high[layer]), "n_test": n})
    return rows


def headline_split(splits: Sequence[str]) -> str:
    """The split the report's sentences speak of: held-out cues (a probe that only detects the token "no" fails
    there), else the first held-out split, else in-distribution."""
    for split in ("heldout_cue", *HELDOUT_SPLITS, IN_DISTRIBUTION):
        if split in splits:
            return split
    return list(splits)[0]
