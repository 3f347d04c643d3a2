"""What a fine-tune changed in what the text tower computes: base against tuned EOT states, layer by layer.

Both models run the same captions; at every layer (0 = embedding output, l = output of block l - 1, as
probing.measure.capture pools them) each caption gives one EOT state per model. Two numbers per layer:

- linear CKA (Kornblith et al. 2019) between the base's and the tuned model's states of the same captions,
  X and Y [n, d], each centred over the captions:

      CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

  1 when the tuned states are the base's up to rotation and overall scale; it falls as the geometry of the
  captions' states changes. The same quantity is HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the Gram
  matrices K = X X^T, L = Y Y^T, which is how the bootstrap computes it (each resample of captions is a
  resample of the Gram matrices' rows and columns: no features are copied).
- the mean cosine between the two models' states of the same caption (1: every state kept its direction);
  `cosine_change` = 1 - that mean.

Intervals: bootstrap over captions (the captions are the sampled thing; the models are fixed). For the
mean cosine, the percentile interval. For CKA, the percentile interval shifted by the bootstrap's estimate of
bias (mean of the resamples minus the estimate; Efron & Tibshirani 1993, ch. 10): a resample repeats some
captions, and each repeated caption is a pair of items that align perfectly in both models, so the
resamples' CKA sits above the sample's wherever CKA is well below 1 (0.05 above a CKA of 0.07 for
200 captions in 64 dimensions). Uncorrected, the interval then misses the estimate itself;
corrected, it covered the expected CKA of 200 captions in 39-40 of 40 simulated draws at CKA 0.07 and 0.15,
and in 34 of 40 at 0.97 (the percentile interval: 0, 9 and 35 of 40;
scripts/cka_interval_coverage.py). CKA itself is the usual (biased) linear
CKA, so that it is 1 for a model with itself and comparable with published values.
Affirmative and negated captions are compared separately, as groups. `identical` says whether the two models'
states of a layer are bitwise equal: both models run the same batches through the same code, so the layers
before the first changed weight give exactly the base's states, and the first layer that differs is exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from probing.measure.probes import Interval


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n items ([n, d1], [n, d2]; d1 and d2 may differ), by the
    feature-space formula. NaN when either has no variance across the items (nothing to compare)."""
    x, y = _centred(x), _centred(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same items in both: {x.shape[0]} vs {y.shape[0]} rows")
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if denominator == 0:
        return float("nan")
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator)


def _cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:
    """CKA from (uncentred) Gram matrices: centring H K H is done by removing row, column and grand means."""
    kc = k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()
    lc = l - l.mean(0, keepdims=True) - l.mean(1, keepdims=True) + l.mean()
    # <HKH, HLH> = <HKH, L>: one centred matrix suffices for the cross term
    cross, kk, ll = float((kc * lc).sum()), float((kc * kc).sum()), float((lc * lc).sum())
    return cross / np.sqrt(kk * ll) if kk > 0 and ll > 0 else float("nan")


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def cka_interval(x: np.ndarray, y: np.ndarray, *, n_boot: int = 200, confidence: float = 0.95,
                 rng: np.random.Generator | None = None) -> Interval:
    """Linear CKA with a bias-corrected percentile bootstrap interval over the items (rows)."""
    rng = rng or np.random.default_rng(0)
    point = linear_cka(x, y)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    k, l = x @ x.T, y @ y.T
    n = len(x)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        index = rng.integers(0, n, n)
        boot[b] = _cka_from_grams(k[np.ix_(index, index)], l[np.ix_(index, index)])
    if not n_boot or not np.isfinite(point):
        return Interval(point, point, point)
    low, high = _percentiles(boot, confidence)
    shift = float(np.nanmean(boot)) - point  # the inflation duplicated items bring (module docstring)
    return Interval(point, float(np.clip(low - shift, 0.0, 1.0)), float(np.clip(high - shift, 0.0, 1.0)))


def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine between row i of x and row i of y, for every i (0 where a row is all zero)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    dots = (x * y).sum(1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def mean_interval(values: np.ndarray, *, n_boot: int = 200, confidence: float = 0.95,
                  rng: np.random.Generator | None = None) -> Interval:
    """Mean with a percentile bootstrap interval over the items (multinomial resample counts)."""
    rng = rng or np.random.default_rng(0)
    values = np.asarray(values, dtype=np.float64)
    point = float(values.mean())
    if not n_boot:
        return Interval(point, point, point)
    counts = rng.multinomial(len(values), np.full(len(values), 1 / len(values)), size=n_boot)
    low, high = _percentiles(counts @ values / len(values), confidence)
    return Interval(point, low, high)


@dataclass
class StateSettings:
    n_boot: int = 200
    confidence: float = 0.95
    seed: int = 0


def compare_states(base: Sequence[np.ndarray], tuned: Sequence[np.ndarray], groups: dict[str, np.ndarray], *,
                   layer_labels: Sequence[str], settings: StateSettings = StateSettings()) -> list[dict]:
    """Rows (group, layer, label, CKA and cosine with intervals) for the states of both models: one [n, d] array
    per layer (a [n_layers, n, d] array does), the same n captions in both; groups: name -> caption indices."""
    if len(base) != len(tuned) or len(base) != len(layer_labels):
        raise ValueError(f"the two models' states cover other layers: {len(base)} vs {len(tuned)} "
                         f"({len(layer_labels)} labels)")
    if any(b.shape[0] != t.shape[0] for b, t in zip(base, tuned)):
        raise ValueError("the two models' states cover other captions")
    rows = []
    for group, index in groups.items():
        index = np.asarray(index)
        for layer in range(len(base)):
            # one generator per (group, layer): every layer's interval is reproducible on its own
            rng = np.random.default_rng([settings.seed, len(rows)])
            x, y = base[layer][index], tuned[layer][index]
            cka = cka_interval(x, y, n_boot=settings.n_boot, confidence=settings.confidence, rng=rng)
            cosine = mean_interval(cosines(x, y), n_boot=settings.n_boot, confidence=settings.confidence, rng=rng)
            rows.append({"group": group, "layer": layer, "label": layer_labels[layer], "n_captions": len(index),
                         "cka": cka.mean, "cka_low": cka.low, "cka_high": cka.high,
                         "cosine": cosine.mean, "cosine_low": cosine.low, "cosine_high": cosine.high,
                         "cosine_change": 1 - cosine.mean, "max_abs_difference": float(np.abs(x - y).max()),
                         "identical": bool(np.array_equal(x, y))})
    return rows
