"""The synthetic world a checkpoint was trained on, recorded in its metadata and read back.

A model trained on the synthetic world must be fine-tuned and evaluated on scenes drawn the same
way (image size, object sizes). A 48-pixel model shown the default world (64-pixel scenes, smaller
objects, resized) loses accuracy for reasons that have nothing to do with negation, and nothing
would say so. So checkpoints record their world under `WORLD_KEY` in the safetensors metadata (the
embedded build and every fine-tuned model do), and the factory reads it back
(probing.models.factory.world_for_model, which also picks the default world for a model that records none).
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields

from probing.synthetic.world import SyntheticWorld, WorldConfig

WORLD_KEY = "synthetic_world"


def world_metadata(world: SyntheticWorld) -> dict[str, str]:
    """Checkpoint metadata that records `world` (pass it to `save_clip_checkpoint`)."""
    # no sort_keys: the order of the colours (a dict) decides which objects the world draws
    return {WORLD_KEY: json.dumps({"config": asdict(world.config), "seed": world.seed})}


def world_from_metadata(metadata: dict[str, str]) -> SyntheticWorld | None:
    """The world recorded in checkpoint metadata, or None if none is."""
    if WORLD_KEY not in metadata:
        return None
    record = json.loads(metadata[WORLD_KEY])
    config = {}
    for item in fields(WorldConfig):
        value = record["config"][item.name]
        if item.name == "colours":
            value = {name: tuple(rgb) for name, rgb in value.items()}
        elif isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        config[item.name] = value
    return SyntheticWorld(WorldConfig(**config), seed=record["seed"])


def default_world(image_size: int, seed: int) -> SyntheticWorld:
    """The default synthetic world rendered at `image_size` (for models that record none)."""
    return SyntheticWorld(WorldConfig(image_size=image_size), seed=seed)
