"""Where did a fine-tune change CLIP's text tower? Base against tuned checkpoints: weights, states, probes.

    compare_checkpoints(base_bundle, tuned_bundles, tasks=None, *, captions=None, config=CompareConfig())
        -> Comparison (typed; its tables are pandas DataFrames)          core.py (the types: result.py)
    plan_from_comparison(comparison_json, k, *, model=None) -> LayerPlan  plan.py
    write_outputs(comparison, out)                                        report.py (what compare-checkpoints writes)

    weights.py   relative weight change per tensor, sub-module, block; bitwise identity; shape problems
    states.py    linear CKA and cosine of EOT states, bootstrap intervals over captions
    decoding.py  per-layer probes of every model on the same splits; paired differences
    report.py    sentences, Markdown, CSV / JSON files      figures.py   heat map, CKA and probe curves

The command is analysis/cli/compare_checkpoints.py (`compare-checkpoints`); docs/COMPARE.md explains both.
Names are imported on first use (torch, pandas), so importing this package is instant.
"""
from __future__ import annotations

from probing.lazy import lazy_exports

_EXPORTS = {
    "compare_checkpoints": "analysis.compare.core",
    "Comparison": "analysis.compare.result",
    "CompareConfig": "analysis.compare.result",
    "plan_from_comparison": "analysis.compare.plan",
    "write_outputs": "analysis.compare.report",
    "linear_cka": "analysis.compare.states",
    "compare_weights": "analysis.compare.weights",
    "NO_WEIGHT_DIFFERS": "analysis.compare.weights",
}

__getattr__, __dir__ = lazy_exports("analysis.compare", _EXPORTS, globals())

__all__ = list(_EXPORTS)
