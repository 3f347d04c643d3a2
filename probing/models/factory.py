"""One factory for every model the toolkit runs on: `create_model(name, pretrained)`.

    name                               what is loaded
    "embedded" or "embedded:default"   the embedded default model, shipped in probing/models/shipped/
    "embedded:small"                   its smoke-test build (for tests and quick runs)
    an open_clip model name            "ViT-B-32", "ViT-B-32-quickgelu", this package's "negclip-tiny", ...
    an open_clip config JSON file      registered under its file stem
    a Hugging Face CLIPModel folder    its config.json and weights, converted (probing.models.huggingface);
                                       also as `pretrained`, or a weights file with config.json beside it
    pretrained                         None (random weights, seeded by `seed`), an open_clip tag
                                       (needs internet) or a local checkpoint file

The embedded models are small CLIPs pretrained on the synthetic negation world (how: finetune.embedded);
they load through `load_clip` like any local checkpoint, which checks their SHA-256.

A `ModelBundle` carries the model with everything the commands need beside it: preprocessing,
tokenizer, the synthetic world that goes with the model (the one its checkpoint records, else the
default world at its image size: probing.synthetic.record.world_for_model), and the metrics its
build recorded. Every command resolves its model here and nowhere else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from probing.vocabulary import EMBEDDED, EMBEDDED_VARIANTS

SHIPPED = Path(__file__).parent / "shipped"


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


def is_embedded(name: str | Path) -> bool:
    """'embedded' or 'embedded:<variant>'."""
    text = str(name)
    return text == EMBEDDED or text.startswith(EMBEDDED + ":")


def embedded_variant(name: str | Path) -> str:
    """'embedded' -> 'default', 'embedded:small' -> 'small'; a ValueError names the known variants."""
    variant = str(name).partition(":")[2] or "default"
    if variant not in EMBEDDED_VARIANTS:
        raise ValueError(f"unknown embedded model {variant!r}; known: {', '.join(EMBEDDED_VARIANTS)}")
    return variant


def embedded_checkpoint(variant: str = "default") -> Path:
    """The shipped file of an embedded variant."""
    from probing.models.loading import ModelLoadError

    path = SHIPPED / EMBEDDED_VARIANTS[variant]
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file {path} is missing from this installation "
                             "(reinstall the package, or build one with `build-embedded --rebuild`)")
    return path


def create_model(name: str | Path = EMBEDDED, pretrained: str | Path | None = None, *, device: str = "cpu",
                 seed: int = 0) -> ModelBundle:
    """Load `name` (+ `pretrained`) on `device`; see the module docstring for what names mean.

    seed: the random init of a model without pretrained weights, and the default synthetic world's seed.
    """
    import torch

    from probing.models import huggingface
    from probing.models.loading import ModelLoadError, checkpoint_metadata, load_clip, resolve_device
    from probing.synthetic.record import checkpoint_world, world_for_model

    device = resolve_device(device)
    hugging_face = None if is_embedded(name) else huggingface.resolve(name, pretrained)
    if is_embedded(name):
        if pretrained is not None:
            raise ModelLoadError(f"--pretrained does not go with the embedded model ({name}): it ships its own weights")
        try:
            variant = embedded_variant(name)
        except ValueError as error:
            raise ModelLoadError(str(error)) from None
        checkpoint = embedded_checkpoint(variant)
        arch = checkpoint_metadata(checkpoint).get("open_clip_model")
        if not arch:
            raise ModelLoadError(f"checkpoint file {checkpoint} does not record its architecture (open_clip_model)")
        label = f"{EMBEDDED}:{variant}"
    elif hugging_face is not None:  # a Hugging Face checkpoint: its config.json is the architecture
        arch, checkpoint, label = huggingface.register(hugging_face.config), hugging_face.checkpoint, hugging_face.label
    else:
        arch = Path(name).stem if str(name).endswith(".json") else str(name)
        checkpoint = Path(pretrained) if pretrained is not None and Path(str(pretrained)).is_file() else None
        label = arch + (f" + {Path(str(pretrained)).name}" if pretrained is not None else " (random weights)")
    torch.manual_seed(seed)  # a model without pretrained weights starts from a seeded init
    model, preprocess, tokenizer = load_clip(name if not is_embedded(name) else arch,
                                             checkpoint if is_embedded(name) else pretrained, device=device)
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
    from probing.models.loading import ModelLoadError, checkpoint_metadata

    metadata = checkpoint_metadata(checkpoint) if metadata is None else metadata
    if "metrics" not in metadata:
        return None
    try:
        metrics = json.loads(metadata["metrics"])
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"checkpoint file {checkpoint} has damaged metadata: 'metrics' is not JSON "
                             f"({error})") from None
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise ModelLoadError(f"checkpoint file {checkpoint} has damaged metadata: 'metrics' is not a table of numbers")
    return metrics
