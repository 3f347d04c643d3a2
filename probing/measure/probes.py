"""Linear probes as scikit-learn estimators, and a per-layer sweep with seeds and confidence intervals.

Both probes standardise features first (residual norms grow with depth, so raw features are not
comparable across layers) and expose `direction_`: a unit vector in the ORIGINAL residual
coordinates, which is what the causal check projects out of the residual stream. They follow
scikit-learn's estimator contract (sklearn's own input validation, `classes_`, `n_features_in_`;
tests run check_estimator on them) and declare themselves binary-only through the estimator tags.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


class _StandardisedProbe(ClassifierMixin, BaseEstimator):
    """What both probes share: sklearn's input validation, standardisation, a binary decision rule.

    Subclasses implement `_fit_standardised(Z, y)`, which sets `coef_` (standardised coordinates)
    and `intercept_`; the decision is `Z @ coef_ + intercept_ > 0` -> classes_[1].
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # binary by design: one direction per probe
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError("Only binary classification is supported. Probes need y with exactly two classes, "
                             f"got {len(self.classes_)} class(es): {self.classes_.tolist()[:10]}")
        self.scaler_ = StandardScaler().fit(X)
        self._fit_standardised(self.scaler_.transform(X), y)
        self.direction_ = _unit(self.coef_ / self.scaler_.scale_)
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.scaler_.transform(X) @ self.coef_ + self.intercept_

    def predict(self, X):
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int)]

    def score(self, X, y, sample_weight=None):
        return balanced_accuracy_score(y, self.predict(X), sample_weight=sample_weight)


class LogisticProbe(_StandardisedProbe):
    """L2-regularised logistic regression on standardised features."""

    def __init__(self, C: float = 0.1, max_iter: int = 2000, random_state: int | None = 0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _fit_standardised(self, Z, y):
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state).fit(Z, y)
        self.n_iter_ = int(self.model_.n_iter_[0])
        self.coef_ = self.model_.coef_[0]  # in standardised coordinates
        self.intercept_ = float(self.model_.intercept_[0])


class DiffMeansProbe(_StandardisedProbe):
    """Difference of class means in standardised space; threshold halfway between the means."""

    def _fit_standardised(self, Z, y):
        mean_neg, mean_pos = (Z[y == label].mean(0) for label in self.classes_)
        self.coef_ = mean_pos - mean_neg
        self.intercept_ = -float(self.coef_ @ (mean_pos + mean_neg) / 2)


PROBES = {"logistic": LogisticProbe, "diffmeans": DiffMeansProbe}


@dataclass
class Interval:
    mean: float
    low: float
    high: float


def mean_ci(values, confidence: float = 0.95) -> Interval:
    """Mean with a Student-t confidence interval (for quantities measured once per seed)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2 or values.std(ddof=1) == 0:
        return Interval(mean, mean, mean)
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return Interval(mean, mean - half, mean + half)


def bootstrap_balanced_accuracy(correct: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000,
                                confidence: float = 0.95, seed: int = 0) -> Interval:
    """Balanced accuracy averaged over seeds, with a percentile bootstrap interval over test items.

    correct: [n_seeds, n_test] booleans. Resampling the test items (not the seeds) is what makes the
    interval honest: every seed is scored on the same finite test set, so seed-to-seed spread alone
    would understate the uncertainty.

    A resample of the n items matters only through how many items it takes from each cell (class,
    per-item correctness); averaged over S seeds, correctness takes at most S + 1 values. Drawing n
    items with replacement is therefore drawn as the cells' counts, one multinomial over the cells
    with the cells' shares as probabilities (class sizes multinomial, levels within a class
    multinomial given its size): the same distribution in O(n_boot x classes x (S + 1)) memory
    instead of O(n_boot x n). A class a resample misses drops out of that resample's mean.
    """
    per_item = np.asarray(correct, dtype=float).mean(0)
    labels = np.asarray(labels)
    point = _balanced(per_item, labels)
    classes, class_index = np.unique(labels, return_inverse=True)
    levels, level_index = np.unique(per_item, return_inverse=True)
    cells, cell_sizes = np.unique(class_index * len(levels) + level_index, return_counts=True)
    cell_class, cell_level = divmod(cells, len(levels))
    in_class = cell_class[:, None] == np.arange(len(classes))  # [n_cells, n_classes]
    counts = np.random.default_rng(seed).multinomial(len(labels), cell_sizes / len(labels), size=n_boot)
    with np.errstate(invalid="ignore"):
        recalls = (counts * levels[cell_level]) @ in_class / (counts @ in_class)  # [n_boot, n_classes]
    boot = np.nanmean(recalls, axis=1)
    alpha = (1 - confidence) / 2
    return Interval(float(point), float(np.nanquantile(boot, alpha)), float(np.nanquantile(boot, 1 - alpha)))


def _balanced(correct: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes in `labels` of the mean of `correct` within the class: for booleans,
    balanced accuracy (recall averaged over the true classes, as sklearn's balanced_accuracy_score)."""
    recalls = []
    for label in np.unique(labels):
        members = labels == label
        recalls.append((correct * members).sum() / members.sum())
    return float(np.mean(recalls))


@dataclass
class ProbeSweep:
    """Per-seed rows, per-layer summaries and mean probe directions of a sweep.

    directions: probe name -> [n_layers + 1, d] unit vectors in residual coordinates (the
    seeds' directions averaged, then normalised), for the causal check.
    """

    per_seed: list[dict]
    summary: list[dict]
    directions: dict[str, np.ndarray]
    # (split, probe name) -> [n_layers + 1, n_test] per-item correctness averaged over seeds, for tests
    # that resample test items (analysis.planning.evidence); labels[split] -> the test items' labels
    items: dict[tuple[str, str], np.ndarray]
    labels: dict[str, np.ndarray]


def probe_layers(
    features: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    tests: dict[str, np.ndarray] | np.ndarray,
    *,
    seeds=(0, 1, 2, 3, 4),
    probes=("logistic", "diffmeans"),
    train_fraction: float = 0.8,
    confidence: float = 0.95,
) -> ProbeSweep:
    """Fit probes at every layer on `train` items and score them on each held-out test split.

    features: [n_layers + 1, n, d]; labels: [n]; train: index array into n; tests: split name ->
    index array (or one index array, named "test"). Each seed fits on a stratified random
    `train_fraction` of the training items. Summary rows per (split, layer, probe) hold the
    seed-averaged balanced accuracy with a bootstrap interval over test items, and the mean cosine
    between the logistic and difference-of-means directions at that layer.
    """
    labels = np.asarray(labels)
    train = np.asarray(train)
    tests = {"test": np.asarray(tests)} if not isinstance(tests, dict) else {k: np.asarray(v) for k, v in tests.items()}
    for test in tests.values():
        _check_split(labels, train, test)
    n_layers = features.shape[0]
    per_seed: list[dict] = []
    correct = {(split, layer, name): [] for split in tests for layer in range(n_layers) for name in probes}
    cosines = {layer: [] for layer in range(n_layers)}
    direction_sums = {name: np.zeros((n_layers, features.shape[2])) for name in probes}
    for seed in seeds:
        fit_index = _stratified_subsample(labels, train, train_fraction, np.random.default_rng(seed))
        for layer in range(n_layers):
            X = features[layer]
            directions = {}
            for name in probes:
                probe = PROBES[name]().fit(X[fit_index], labels[fit_index])
                directions[name] = probe.direction_
                direction_sums[name][layer] += probe.direction_
                for split, test in tests.items():
                    hits = probe.predict(X[test]) == labels[test]
                    correct[(split, layer, name)].append(hits)
                    per_seed.append({"split": split, "layer": layer, "probe": name, "seed": seed,
                                     "accuracy": _balanced(hits, labels[test])})
            if {"logistic", "diffmeans"} <= set(directions):
                cosines[layer].append(float(directions["logistic"] @ directions["diffmeans"]))
    summary = []
    for (split, layer, name), hits in correct.items():
        interval = bootstrap_balanced_accuracy(np.stack(hits), labels[tests[split]], confidence=confidence)
        summary.append({"split": split, "layer": layer, "probe": name, "accuracy": interval.mean,
                        "ci_low": interval.low, "ci_high": interval.high, "n_seeds": len(hits),
                        "n_train": len(train), "n_test": len(tests[split]),
                        "direction_cosine": float(np.mean(cosines[layer])) if cosines[layer] else None})
    directions = {name: np.stack([_unit(v) for v in sums]) for name, sums in direction_sums.items()}
    items = {(split, name): np.stack([np.mean(correct[(split, layer, name)], axis=0) for layer in range(n_layers)])
             .astype(np.float32) for split in tests for name in probes}
    return ProbeSweep(per_seed, summary, directions, items, {split: labels[test] for split, test in tests.items()})


def _stratified_subsample(labels, index, fraction, rng) -> np.ndarray:
    chosen = []
    for label in np.unique(labels[index]):
        members = index[labels[index] == label]
        chosen.append(rng.choice(members, size=max(1, int(round(fraction * len(members)))), replace=False))
    return np.concatenate(chosen)


def _check_split(labels, train, test) -> None:
    if len(np.intersect1d(train, test)):
        raise ValueError("train and test items overlap")
    for name, index in (("train", train), ("test", test)):
        if len(np.unique(labels[index])) != 2:
            raise ValueError(f"the {name} split must contain both classes (has {np.unique(labels[index]).tolist()})")


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector
