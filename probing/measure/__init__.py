"""Per-layer measurement of negation, and the metrics everything is scored with.

    batching.py     token-budget batches: captions sorted by length, at most N tokens per forward pass
    capture.py      pooled per-layer capture [n_layers + 1, n, d] (EOT / mean), in memory or on disk
    encode.py       batched, trimmed text and image encoding; eval_mode
    metrics.py      scoring on normalised features (pair wins, MCQ, recall@k, zero-shot, breakdowns)
    tasks.py        probing tasks: captions, labels, control labels, held-out splits
    probes.py       logistic and difference-of-means probes (scikit-learn estimators), per-layer sweeps
    sensitivity.py  how far an edit moves a caption's pooled state, per layer
    gradnorms.py    relative gradient norms per block under a fine-tuning loss (passed in)
    causal.py       project a probe direction out of the residual stream and measure what breaks
                    (each ablation runs only the blocks after its layer)
    layers.py       measure_layers: all of the above on one model -> LayerMeasurements

Where negation is computed (localise.py runs them all -> Localisation):
    roles.py        patching pairs (negation twins, scope swaps, real records) and token roles
    patching.py     exact and attribution patching by (block, role) and per head, normalised effects
    heads.py        attention from EOT / the negated noun to the cue; zero- and mean-ablation of heads
    scoring.py      held-out CC-Neg-style, scope and retrieval outcomes of text-side interventions
    lens.py         the joint-space lens per layer, plain and tuned
    steering.py     training-free steering along probe directions, per layer and alpha
"""
from __future__ import annotations

from probing.lazy import lazy_exports

_EXPORTS = {
    "token_batches": "probing.features.batching",
    "capture_pooled": "probing.measure.capture",
    "encode_captions": "probing.features.encode",
    "encode_images": "probing.features.encode",
    "LogisticProbe": "probing.measure.probes",
    "DiffMeansProbe": "probing.measure.probes",
    "probe_layers": "probing.measure.probes",
    "measure_layers": "probing.measure.layers",
    "MeasureConfig": "probing.measure.layers",
    "LayerMeasurements": "probing.measure.layers",
    "measure_localisation": "probing.measure.localise",
    "LocaliseConfig": "probing.measure.localise",
    "Localisation": "probing.measure.localise",
}

__getattr__, __dir__ = lazy_exports("probing.measure", _EXPORTS, globals())

__all__ = list(_EXPORTS)
