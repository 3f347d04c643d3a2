"""Batched feature extraction: trimmed text encoding and image encoding, L2-normalised."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from probing.clip.text_tower import TextTower
from probing.features.batching import DEFAULT_TOKEN_BUDGET, token_batches


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run `module` in eval mode and put every submodule back as it was, even on an error.

    Feature extraction needs it: a ResNet image tower in train mode would normalise with batch
    statistics and overwrite its running ones. Each submodule gets its own flag back (not the root's):
    a hooked view shares its modules with the model, whose modes must come back unchanged.
    """
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


@torch.no_grad()
def encode_captions(
    model: torch.nn.Module,
    tokenizer: Callable,
    captions: Sequence[str],
    *,
    batch_size: int | None = 256,
    token_budget: int | None = DEFAULT_TOKEN_BUDGET,
    normalize: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Text features [n, embed_dim] in the input order; length-sorted batches of at most `batch_size`
    captions and `token_budget` tokens, each trimmed to its longest caption (exact)."""
    tower = TextTower.from_model(model)
    device = tower.positional_embedding.device
    tokens = tokenizer(list(captions))
    features = None
    for index in tqdm(token_batches(tower.eot_positions(tokens) + 1, token_budget, batch_size), desc="text",
                      disable=not progress):
        index = torch.from_numpy(index)
        batch = tower.encode(tokens[index].to(device), trim=True, normalize=normalize).float().cpu()
        if features is None:
            features = torch.empty(len(captions), batch.shape[1])
        features[index] = batch
    return features


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    preprocess: Callable,
    images: Sequence,
    *,
    batch_size: int = 256,
    normalize: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    autocast: bool = False,
    origins: Sequence[tuple[str | None, object]] | None = None,
) -> torch.Tensor:
    """Image features [n, embed_dim] as float32, on `device` (default: the CPU).

    images: paths, PIL images or uint8 arrays [H, W, 3]. A path that is missing or unreadable is a
    `DataError` naming it, and `origins[i] = (source, row)` if given (the record it came from).
    The model runs in eval mode (see `eval_mode`); `autocast` runs it in bfloat16 on CUDA.
    """
    from probing.data.reading import load_image

    model_device = next(model.parameters()).device
    chunks = []
    with eval_mode(model):
        for start in tqdm(range(0, len(images), batch_size), desc="images", disable=not progress):
            batch = []
            for index in range(start, min(start + batch_size, len(images))):
                image = images[index]
                if isinstance(image, (str, Path)):
                    source, row = origins[index] if origins is not None else (None, None)
                    image = load_image(image, source=source, row=row)
                batch.append(image)
            pixels = images_to_tensor(model, preprocess, batch).to(model_device)
            with torch.autocast(model_device.type, dtype=torch.bfloat16, enabled=autocast):
                features = model.encode_image(pixels)
            features = features.float()
            chunks.append(F.normalize(features, dim=-1) if normalize else features)
    out = torch.cat(chunks)
    return out.to(device) if device is not None else out.cpu()


def images_to_tensor(model: torch.nn.Module, preprocess: Callable, images: Sequence) -> torch.Tensor:
    """Pixel tensor [n, 3, H, W] as `preprocess` makes it.

    uint8 arrays already at the model's input size (the synthetic world renders them so) skip the
    PIL round trip: resizing to the same size and centre-cropping are then identities, so only
    scaling and normalisation remain, done here on the whole batch at once.
    """
    size = _input_size(model)
    if size and all(isinstance(i, np.ndarray) and i.shape == (size, size, 3) and i.dtype == np.uint8 for i in images):
        mean, std = _normalisation(model)
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        return (pixels - mean[None, :, None, None]) / std[None, :, None, None]
    return torch.stack([preprocess(as_pil(image)) for image in images])


def _input_size(model: torch.nn.Module) -> int | None:
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        return size[0] if size[0] == size[1] else None
    return size


def _normalisation(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    config = getattr(model.visual, "preprocess_cfg", {}) or {}
    return (torch.tensor(config.get("mean", OPENAI_DATASET_MEAN)), torch.tensor(config.get("std", OPENAI_DATASET_STD)))


def as_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    raise TypeError(f"cannot use {type(image).__name__} as an image")
