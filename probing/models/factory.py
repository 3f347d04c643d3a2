"""One factory for every model the toolkit runs on: `create_model(name, pretrained)`.

    name                               what is loaded
    "embedded" or "embedded:default"   the embedded default model, shipped in probing/models/shipped/
    "embedded:<name>"                  any model of probing.models.embedded.REGISTRY: the smoke-test build
                                       ("small", shipped) and the validation models (seed2, depth6, late, ...),
                                       pretrained into the user's cache on first use (probing.models.build)
    an open_clip model name            "ViT-B-32", "ViT-B-32-quickgelu", this package's "negclip-tiny", ...
    an open_clip config JSON file      registered under its file stem
    a Hugging Face CLIPModel folder    its config.json and weights, converted (probing.clip.huggingface);
                                       also as `pretrained`, or a weights file with config.json beside it
    pretrained                         None (random weights, seeded by `seed`), an open_clip tag
                                       (needs internet) or a local checkpoint file

A `ModelBundle` carries the model with everything the commands need beside it: preprocessing,
tokenizer, the synthetic world that goes with the model (the one its checkpoint records, else the
default world at its image size: `world_for_model`), and the metrics its build recorded. Every
command resolves its model here and nowhere else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from probing.clip import huggingface
from probing.clip.loading import ModelLoadError, checkpoint_metadata, image_size, load_clip, resolve_device
from probing.models import SHIPPED
from probing.models.embedded import EMBEDDED, EmbeddedModel, embedded_model, is_embedded, no_pretrained
from probing.synthetic.record import WORLD_KEY, default_world, world_from_metadata
from probing.synthetic.world import SyntheticWorld


@dataclass
class ModelBundle:
    model: Any
    preprocess: Callable
    tokenizer: Callable
    name: str  # the open_clip architecture ("negclip-tiny", "ViT-B-32"), as checkpoints record it
    label: str  # for titles and reports: "embedded:default", "ViT-B-32 + openai.pt", "ViT-B-32 (random weights)"
    checkpoint: Path | None  # the local file the weights came from, if any
    world: Any | None  # the SyntheticWorld that goes with the model, or None (see world_note)
    world_note: str | None = None
    world_recorded: bool = False  # the checkpoint records the world (else it is the default world at the image size)
    metrics: dict | None = None  # held-out numbers recorded when the checkpoint was built (embedded models)
    info: dict[str, Any] = field(default_factory=dict)  # JSON-ready description for reports


def embedded_checkpoint(name: str | EmbeddedModel = "embedded", *, progress: bool = True) -> Path:
    """The weights file of an embedded model: the shipped file, or its build in the user's cache (pretrained
    now if it is not there yet: minutes, once)."""
    from probing.models.build import ensure_embedded_model  # pretraining needs torch: only when a build is due

    entry = name if isinstance(name, EmbeddedModel) else embedded_model(name)
    if entry.shipped is None:
        return ensure_embedded_model(entry.spec, progress=progress)
    path = SHIPPED / entry.shipped
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file {path} is missing from this installation "
                             "(reinstall the package, or build one with `build-embedded --rebuild`)")
    return path


def _reference_checkpoint(reference: str) -> Path:
    """A delta checkpoint's base named by reference ("embedded:default"): its weights file."""
    try:
        return embedded_checkpoint(reference)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None


def create_model(name: str | Path = EMBEDDED, pretrained: str | Path | None = None, *, device: str = "cpu",
                 seed: int = 0) -> ModelBundle:
    """Load `name` (+ `pretrained`) on `device`; see the module docstring for what names mean.

    seed: the random init of a model without pretrained weights, and the default synthetic world's seed.
    """

    device = resolve_device(device)
    hugging_face = None if is_embedded(name) else huggingface.resolve(name, pretrained)
    if is_embedded(name):
        if pretrained is not None:
            raise ModelLoadError(no_pretrained(name))
        try:
            entry = embedded_model(name)
        except ValueError as error:
            raise ModelLoadError(str(error)) from None
        checkpoint = embedded_checkpoint(entry)
        arch = checkpoint_metadata(checkpoint).get("open_clip_model")
        if not arch:
            raise ModelLoadError(f"checkpoint file {checkpoint} does not record its architecture (open_clip_model)")
        label, source, weights = entry.reference, arch, checkpoint
    elif hugging_face is not None:  # a Hugging Face checkpoint: its config.json is the architecture
        arch, checkpoint, label = huggingface.register(hugging_face.config), hugging_face.checkpoint, hugging_face.label
        source, weights = name, pretrained
    else:
        arch = Path(name).stem if str(name).endswith(".json") else str(name)
        checkpoint = Path(pretrained) if pretrained is not None and Path(str(pretrained)).is_file() else None
        label = arch + (f" + {Path(str(pretrained)).name}" if pretrained is not None else " (random weights)")
        source, weights = name, pretrained
    torch.manual_seed(seed)  # a model without pretrained weights starts from a seeded init
    model, preprocess, tokenizer = load_clip(source, weights, device=device, resolve_reference=_reference_checkpoint)
    world, note = world_for_model(model, checkpoint, seed)
    recorded = world is not None and checkpoint_world(checkpoint) is not None
    metadata = checkpoint_metadata(checkpoint) if checkpoint is not None and checkpoint.suffix == ".safetensors" else {}
    metrics = recorded_metrics(checkpoint, metadata) if metadata else None
    info = {"model": label, "architecture": arch, "pretrained": None if pretrained is None else str(pretrained),
            "checkpoint": None if checkpoint is None else str(checkpoint), "device": str(device),
            "sha256": metadata.get("state_sha256")}
    if hugging_face is not None:
        info.update(format="huggingface", config=str(hugging_face.config))
    return ModelBundle(model, preprocess, tokenizer, arch, label, checkpoint, world, note, recorded, metrics, info)


def recorded_metrics(checkpoint: str | Path, metadata: dict[str, str] | None = None) -> dict | None:
    """The metrics a build recorded in the metadata of its .safetensors checkpoint (None without); a
    ModelLoadError naming the file if they are damaged."""
    metadata = checkpoint_metadata(checkpoint) if metadata is None else metadata
    if "metrics" not in metadata:
        return None
    try:
        metrics = json.loads(metadata["metrics"])
    except (json.JSONDecodeError, RecursionError) as error:
        raise ModelLoadError(f"checkpoint file {checkpoint} has damaged metadata: 'metrics' is not JSON "
                             f"({error})") from None
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ModelLoadError(f"checkpoint file {checkpoint} has damaged metadata: 'metrics' is not a table of numbers")
    return metrics


# --- which synthetic world goes with a model ------------------------------------------------------

def checkpoint_world(pretrained: str | Path | None) -> SyntheticWorld | None:
    """The world recorded in a local .safetensors checkpoint (probing.synthetic.record); None for tags, other
    formats or no record. A record that cannot be read back is a ModelLoadError naming the file."""
    if pretrained is None or Path(pretrained).suffix != ".safetensors" or not Path(pretrained).is_file():
        return None
    try:
        return world_from_metadata(checkpoint_metadata(pretrained))
    except (json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"checkpoint file {pretrained} has damaged metadata: its {WORLD_KEY!r} record cannot be "
                             f"read ({type(error).__name__}: {str(error)[:120]})") from None


def world_for_model(model, pretrained: str | Path | None = None, seed: int = 0
                    ) -> tuple[SyntheticWorld | None, str | None]:
    """(world, None), or (None, why not): the world `pretrained` records, else the default world at
    the model's image size, checked to render there (every command asks this one function)."""
    recorded = checkpoint_world(pretrained)
    if recorded is not None:
        return recorded, None
    size = image_size(model)
    if size is None:
        return None, "the model's image size is unknown, so the synthetic world cannot be rendered for it"
    try:
        world = default_world(size, seed)  # WorldConfig refuses a size too small for the scenes
        world.examples(2, "test", seed)  # renders
    except ValueError as error:
        return None, f"the synthetic world cannot be rendered at {size}x{size} ({error})"
    return world, None
