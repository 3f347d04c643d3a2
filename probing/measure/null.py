"""Null models: the same model with its text tower randomly initialised again.

A per-layer number is evidence about what a text tower LEARNT only if a tower that learnt nothing
does not produce it too. The null models are that comparison: copies of the model whose text tower
(token and positional embeddings, every block, final LayerNorm, projection) is re-initialised with
the architecture's own init under another seed, while the image tower and the logit scale stay the
trained ones, so that image-grounded measurements (sensitivity, gradient norms) see the same
images. Parameters that are identically zero in the model are structural (e.g. an attention
sublayer switched off by construction, see probing.models.build) and stay zero in its null models.
"""
from __future__ import annotations

import copy
import functools
from typing import Callable

import torch
from torch import nn

from probing.clip.loading import load_clip
from probing.clip.text_tower import TextTower
from probing.measure.keys import null_name


def null_tower(model: nn.Module, architecture: str, seed: int) -> nn.Module:
    """A copy of `model` whose text tower is re-initialised as `architecture` initialises it, seeded."""

    torch.manual_seed(seed)
    fresh, _, _ = load_clip(architecture, None)
    null = copy.deepcopy(model)
    source = dict(TextTower.from_model(fresh).parameters_by_part())
    target = dict(TextTower.from_model(null).parameters_by_part())
    if source.keys() != target.keys():
        raise ValueError(
            f"{architecture} does not build the text tower of this model ({sorted(source)} vs {sorted(target)})"
        )
    with torch.no_grad():
        for part, params in target.items():
            for param, init in zip(params, source[part]):
                if param.shape != init.shape:
                    raise ValueError(
                        f"{architecture} builds {part} as {tuple(init.shape)}, the model has {tuple(param.shape)}"
                    )
                structural_zero = not bool(param.any())
                param.copy_(torch.zeros_like(param) if structural_zero else init.to(param.device, param.dtype))
    return null.eval()


def null_builders(model: nn.Module, architecture: str, seeds) -> dict[str, Callable[[], nn.Module]]:
    """{null_name(seed): a function that builds that null model} for each seed: measure_layers builds them one at a
    time, so that several copies of a large model never sit in memory together."""
    return {null_name(seed): functools.partial(null_tower, model, architecture, seed) for seed in seeds}
