"""Probes: sklearn's estimator contract, directions in residual coordinates, planted signal and pure
noise, and the sweep's statistics against sklearn and a brute-force bootstrap."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from probing.measure.probes import (
    DiffMeansProbe,
    LogisticProbe,
    _balanced,
    bootstrap_balanced_accuracy,
    mean_ci,
    probe_layers,
)


def planted(n=1000, d=32, layers=6, signal_layer=3, strength=1.5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scales = np.arange(1, layers + 1)[:, None, None] * 3.0  # norms grow with depth, as in real models
    features = rng.normal(size=(layers, n, d)) * scales
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    features[signal_layer] += np.outer(2 * labels - 1, direction) * strength * scales[signal_layer]
    return features, labels, direction


def test_estimator_conventions():
    probe = LogisticProbe(C=0.5)
    assert probe.get_params() == {"C": 0.5, "max_iter": 2000, "random_state": 0}
    assert clone(probe).C == 0.5
    X, y, _ = planted(layers=1, signal_layer=0)
    assert probe.fit(X[0], y) is probe
    assert hasattr(probe, "coef_") and hasattr(probe, "direction_")
    with pytest.raises(ValueError, match="exactly two classes"):
        DiffMeansProbe().fit(X[0], np.zeros(len(y)))


@parametrize_with_checks([LogisticProbe(), DiffMeansProbe()])
def test_sklearn_estimator_checks(estimator, check):
    """Every check of sklearn's check_estimator, with the probes' binary-only tag honoured."""
    check(estimator)


@pytest.mark.parametrize("probe_class", [LogisticProbe, DiffMeansProbe])
def test_direction_recovers_planted_direction(probe_class):
    features, labels, direction = planted(layers=1, signal_layer=0, strength=2.0)
    probe = probe_class().fit(features[0], labels)
    assert abs(probe.direction_ @ direction) > 0.9
    assert probe.score(features[0], labels) > 0.9


def test_planted_layer_wins_and_noise_is_chance():
    features, labels, _ = planted(layers=21)
    index = np.arange(len(labels))
    train, test = index[:500], index[500:]
    sweep = probe_layers(features, labels, train, test, seeds=range(5))
    summary = pd.DataFrame(sweep.summary).set_index(["probe", "layer"])
    assert len(sweep.per_seed) == 21 * 2 * 5 and set(summary.split) == {"test"}
    for probe in ("logistic", "diffmeans"):
        accuracy = summary.loc[probe].accuracy
        assert accuracy.idxmax() == 3 and accuracy[3] > 0.9
        noise = summary.loc[probe].drop(index=3)  # 20 pure-noise layers
        covered = ((noise.ci_low <= 0.5) & (0.5 <= noise.ci_high)).mean()
        assert covered >= 0.85, (probe, covered)  # 95 % intervals include chance nearly always
        assert abs(noise.accuracy.mean() - 0.5) < 0.02
    assert summary.loc[("logistic", 3)].direction_cosine > 0.8  # both probes find the planted direction
    assert sweep.directions["logistic"].shape == (21, 32)


def test_several_test_splits_share_one_fit():
    features, labels, direction = planted(layers=2, signal_layer=1)
    index = np.arange(len(labels))
    sweep = probe_layers(features, labels, index[:500], {"a": index[500:700], "b": index[700:]}, seeds=range(2))
    summary = pd.DataFrame(sweep.summary)
    assert sorted(set(summary.split)) == ["a", "b"] and len(summary) == 2 * 2 * 2
    assert abs(sweep.directions["diffmeans"][1] @ direction) > 0.9


def test_overlapping_split_is_refused():
    features, labels, _ = planted(layers=1, signal_layer=0)
    with pytest.raises(ValueError, match="overlap"):
        probe_layers(features, labels, np.arange(10, 300), np.arange(250, 400))


def test_mean_ci_matches_t_interval():
    interval = mean_ci([0.5, 0.6, 0.7, 0.8, 0.9])
    # mean 0.7, sd 0.1581, t(0.975, 4) = 2.776 -> half-width 0.1963
    assert interval.mean == pytest.approx(0.7)
    assert interval.high - interval.mean == pytest.approx(0.19632, abs=1e-4)


def test_bootstrap_interval_covers_test_sampling():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    correct = np.repeat(rng.random((1, 400)) < 0.7, 5, axis=0)  # seeds that agree on every item
    interval = bootstrap_balanced_accuracy(correct, labels)
    # 400 items at p=0.7: standard error ~0.023, so the 95 % interval is about +-0.045 around ~0.7
    assert 0.66 < interval.mean < 0.74
    assert 0.03 < interval.high - interval.mean < 0.06


def brute_force_bootstrap(correct, labels, n_boot, confidence, seed):
    """The textbook percentile bootstrap: resample n items with replacement, balanced accuracy of each."""
    per_item = correct.mean(0)

    def balanced(values, classes):
        return np.mean([values[classes == label].mean() for label in np.unique(classes)])

    draws = np.random.default_rng(seed).integers(0, len(labels), size=(n_boot, len(labels)))
    boot = [balanced(per_item[draw], labels[draw]) for draw in draws]
    alpha = (1 - confidence) / 2
    return balanced(per_item, labels), np.quantile(boot, alpha), np.quantile(boot, 1 - alpha)


@pytest.mark.parametrize("n, minority, n_seeds", [(300, 0.5, 5), (80, 0.05, 5), (200, 0.3, 1)])
@pytest.mark.parametrize("confidence", [0.95, 0.5])
def test_bootstrap_matches_item_resampling(n, minority, n_seeds, confidence):
    rng = np.random.default_rng(n)
    labels = np.where(rng.random(n) < minority, "negated", "plain")
    skill = np.where(labels == "negated", 0.6, 0.85)
    correct = rng.random((n_seeds, n)) < rng.beta(4 * skill, 4 * (1 - skill))  # items differ; seeds disagree
    interval = bootstrap_balanced_accuracy(correct, labels, n_boot=4000, confidence=confidence)
    point, low, high = brute_force_bootstrap(correct, labels, 4000, confidence, seed=1)
    assert interval.mean == pytest.approx(point, abs=1e-12)
    # two Monte-Carlo estimates of the same quantiles: over 10 data seeds they differed by at most 0.0064
    assert interval.low == pytest.approx(low, abs=0.01) and interval.high == pytest.approx(high, abs=0.01)
    assert interval.low < interval.mean < interval.high


def test_bootstrap_resample_missing_a_class_uses_the_other():
    # one negated item out of 20, always wrong; every plain item right: a resample scores 0.5 when it
    # draws the negated item and 1.0 when it misses it (probability 0.95^20 = 0.36)
    labels = np.array(["negated"] + ["plain"] * 19)
    correct = np.repeat((labels == "plain")[None], 3, axis=0)
    interval = bootstrap_balanced_accuracy(correct, labels)
    assert (interval.mean, interval.low, interval.high) == (0.5, 0.5, 1.0)
    assert brute_force_bootstrap(correct, labels, 1000, 0.95, seed=0) == (0.5, 0.5, 1.0)


def test_bootstrap_cost_does_not_grow_with_items_times_resamples():
    rng = np.random.default_rng(0)
    n = 200_000
    labels = rng.integers(0, 2, n)
    correct = rng.random((5, n)) < 0.8
    tracemalloc.start()
    started = time.perf_counter()
    interval = bootstrap_balanced_accuracy(correct, labels)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * n  # a few copies of the n items; gathering 1000 x n items would take 8000 * n bytes
    assert elapsed < 1.0
    assert interval.low < interval.mean < interval.high and interval.high - interval.low < 0.01


def test_per_seed_accuracy_is_sklearns_balanced_accuracy():
    rng = np.random.default_rng(0)
    for n_classes in (2, 3):
        for _ in range(20):
            y_true = rng.integers(0, n_classes, int(rng.integers(5, 500)))
            y_pred = rng.integers(0, n_classes, len(y_true))
            assert _balanced(y_pred == y_true, y_true) == pytest.approx(
                balanced_accuracy_score(y_true, y_pred), abs=1e-15
            )
    # in the sweep, balanced accuracy is linear in per-item correctness (class sizes fixed), so the summary's
    # seed-averaged accuracy is the mean of the per-seed rows
    features, labels, _ = planted(layers=2, signal_layer=1, strength=0.3)
    index = np.arange(len(labels))
    sweep = probe_layers(features, labels, index[:600], index[600:], seeds=range(3))
    per_seed = pd.DataFrame(sweep.per_seed).groupby(["layer", "probe"]).accuracy.mean()
    summary = pd.DataFrame(sweep.summary).set_index(["layer", "probe"]).accuracy
    assert np.allclose(per_seed.sort_index(), summary.sort_index(), atol=1e-12)
    assert 0.5 < summary[(1, "logistic")] < 1.0  # a real, non-degenerate accuracy
