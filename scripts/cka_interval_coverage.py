"""How often the CKA intervals of analysis.compare.states cover the expected CKA of n captions: a simulation.

Draws X [n, d] with a decaying spectrum and Y = X W + noise (W orthogonal), many times, to get E[CKA_n];
then, for fresh draws, the percentile bootstrap interval and the bias-corrected one (what cka_interval
returns) and whether each covers E[CKA_n]. The numbers quoted in analysis/compare/states.py came from this
script at its defaults (seed 0, 40 draws, 200 resamples; a few minutes on one core):

    python scripts/cka_interval_coverage.py
"""
from __future__ import annotations

import argparse

import numpy as np

from analysis.compare.states import _cka_from_grams, _percentiles, linear_cka

SETTINGS = ((200, 32, 0.3), (200, 32, 3.0), (200, 64, 10.0))  # (captions, dimensions, noise)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for n, d, sigma in SETTINGS:
        scales = 1 / np.sqrt(np.arange(1, d + 1))
        rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]

        def draw():
            x = rng.normal(size=(n, d)) * scales
            return x, x @ rotation + sigma * rng.normal(size=(n, d)) * scales

        expected = float(np.mean([linear_cka(*draw()) for _ in range(200)]))
        percentile = corrected = 0
        for _ in range(args.draws):
            x, y = draw()
            point, k, l = linear_cka(x, y), x @ x.T, y @ y.T
            boot = np.array([_cka_from_grams(k[np.ix_(i, i)], l[np.ix_(i, i)])
                             for i in (rng.integers(0, n, n) for _ in range(args.boot))])
            low, high = _percentiles(boot, 0.95)
            shift = boot.mean() - point
            percentile += low <= expected <= high
            corrected += low - shift <= expected <= high - shift
        print(f"n={n} d={d} noise={sigma}: E[CKA]={expected:.3f}; covered by the percentile interval in "
              f"{percentile}/{args.draws} draws, by the bias-corrected one in {corrected}/{args.draws}")


if __name__ == "__main__":
    main()
