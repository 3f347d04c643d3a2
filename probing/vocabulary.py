"""Names that command-line `--help` shows, kept free of heavy imports (torch, open_clip).

The modules that implement these names import them from here and check their own registries
against them at import time, so the two cannot drift apart.
"""
from __future__ import annotations

# per-layer measurements of probing.measure.layers (on the model and its null models), in the order they run
LAYER_MEASUREMENTS: tuple[str, ...] = ("probes", "sensitivity", "gradnorms", "causal")
# where negation is computed (probing.measure.localise, on the model)
LOCALISATION_MEASUREMENTS: tuple[str, ...] = ("patching", "heads", "lens", "steering")
MEASUREMENTS: tuple[str, ...] = LAYER_MEASUREMENTS + LOCALISATION_MEASUREMENTS
NEEDS_IMAGES: tuple[str, ...] = ("sensitivity", "gradnorms", "causal", "lens", "steering")

# the kinds of real data file probing.data.load_dataset reads (its READERS)
DATA_KINDS: tuple[str, ...] = ("ccneg", "negbench_mcq", "negbench_retrieval", "sugarcrepe", "valse_existence",
                               "coco_captions", "coco_instances", "negrefcocog")
