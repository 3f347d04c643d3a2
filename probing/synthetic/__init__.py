"""The synthetic negation world: seeded scenes of coloured shapes with captions true or false by
construction, and its evaluation suite.

    world.py     WorldConfig, SyntheticWorld (examples, scope_pairs, minimal_pairs, probe_captions,
                 class_prompts, classification_set, pretraining_pairs), ScopePair, MinimalPair, ProbeCaption
    scenes.py    Scene, SceneObject, rendering
    captions.py  the caption grammar: cues, frames, templates, CaptionSpec, caption_truth, parse_caption
    record.py    the world a checkpoint was trained on, recorded in its metadata and read back
    suite.py     SyntheticSuite: the synthetic evaluation (zero-shot, R@1 among 100, CC-Neg-style,
                 scope, absence), imported on first use (it needs torch)
"""
from __future__ import annotations

from probing.captions import CaptionSpec, Mention, caption_truth, parse_caption
from probing.lazy import lazy_exports
from probing.synthetic.scenes import Scene, SceneObject
from probing.synthetic.world import MinimalPair, ProbeCaption, ScopePair, SyntheticWorld, WorldConfig

__getattr__, __dir__ = lazy_exports("probing.synthetic", {"SyntheticSuite": "probing.synthetic.suite"}, globals())

__all__ = ["WorldConfig", "SyntheticWorld", "ScopePair", "MinimalPair", "ProbeCaption", "Scene", "SceneObject",
           "CaptionSpec", "Mention", "caption_truth", "parse_caption", "SyntheticSuite"]
