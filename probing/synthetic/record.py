"""Which synthetic world goes with a model: the one its checkpoint records, else a default one.

A model trained on the synthetic world must be fine-tuned and evaluated on scenes drawn the same
way (image size, object sizes). A 48-pixel model shown the default world (64-pixel scenes, smaller
objects, resized) loses accuracy for reasons that have nothing to do with negation, and nothing
would say so. So checkpoints record their world under `WORLD_KEY` in the safetensors metadata (the
embedded build and every fine-tuned model do), and the commands read it back.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

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


def checkpoint_world(pretrained: str | Path | None) -> SyntheticWorld | None:
    """The world recorded in a local .safetensors checkpoint; None for tags, other formats or no record.
    A record that cannot be read back is a ModelLoadError naming the file."""
    if pretrained is None or Path(pretrained).suffix != ".safetensors" or not Path(pretrained).is_file():
        return None
    from probing.models.loading import ModelLoadError, checkpoint_metadata

    try:
        return world_from_metadata(checkpoint_metadata(pretrained))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"checkpoint file {pretrained} has damaged metadata: its {WORLD_KEY!r} record cannot be "
                             f"read ({type(error).__name__}: {str(error)[:120]})") from None


def world_for_model(
    model, pretrained: str | Path | None = None, seed: int = 0
) -> tuple[SyntheticWorld | None, str | None]:
    """(world, None), or (None, why not): the world `pretrained` records, else the default world at
    the model's image size, checked to render there (every command asks this one function)."""
    recorded = checkpoint_world(pretrained)
    if recorded is not None:
        return recorded, None
    from probing.models.loading import image_size

    size = image_size(model)
    if size is None:
        return None, "the model's image size is unknown, so the synthetic world cannot be rendered for it"
    world = default_world(size, seed)
    try:
        world.examples(2, "test", seed)  # renders: fails here if the size is too small for the scenes
    except ValueError as error:
        return None, f"the synthetic world cannot be rendered at {size}x{size} ({error})"
    return world, None


def default_world(image_size: int, seed: int) -> SyntheticWorld:
    """The default synthetic world rendered at `image_size` (for models that record none)."""
    return SyntheticWorld(WorldConfig(image_size=image_size), seed=seed)
