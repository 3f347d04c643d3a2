"""Pixels as the image tower takes them, and a module's eval mode: what every image-feature path shares."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image


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
