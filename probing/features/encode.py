"""Batched feature extraction: trimmed text encoding and image encoding, L2-normalised."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from probing.clip.text_tower import TextTower
from probing.features.batching import DEFAULT_TOKEN_BUDGET, token_batches
from probing.features.cache import encode_image_features


def encode_tokens(tower: TextTower, tokens: torch.Tensor, token_budget: int | None = None, *,
                  max_batch: int | None = None, normalize: bool = False, progress: bool = False) -> torch.Tensor:
    """Text features of `tokens` [n, context] in their order, gradients kept (callers that need none wrap it in
    torch.no_grad): one pass trimmed to the longest caption, or length-sorted batches of at most `token_budget`
    tokens and `max_batch` captions, each trimmed to its own longest caption (exact under the causal mask:
    probing.features.batching)."""
    if token_budget is None and max_batch is None:
        return tower.encode(tokens, trim=True, normalize=normalize)
    batches = [torch.from_numpy(index).to(tokens.device)
               for index in token_batches(tower.eot_positions(tokens).cpu() + 1, token_budget, max_batch)]
    features = torch.cat([tower.encode(tokens[index], trim=True, normalize=normalize)
                          for index in tqdm(batches, desc="text", disable=not progress)])
    return features[torch.argsort(torch.cat(batches))]


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
    """Text features [n, embed_dim] (float32, on the CPU) in the input order: `encode_tokens` with length-sorted
    batches of at most `batch_size` captions and `token_budget` tokens."""
    tower = TextTower.from_model(model)
    tokens = tokenizer(list(captions)).to(tower.positional_embedding.device)
    return encode_tokens(tower, tokens, token_budget, max_batch=batch_size, normalize=normalize,
                         progress=progress).float().cpu()


def encode_images(
    model: torch.nn.Module,
    preprocess: Callable,
    images: Sequence,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    autocast: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "image features",
    origins: Sequence[tuple[str | None, object]] | None = None,
    cache=True,
    failed: dict | None = None,
) -> torch.Tensor:
    """L2-normalised image features [len(images), d] as float32, on `device` (default: the CPU): the one image-feature
    path of the toolkit (probing.features.cache.encode_image_features: each distinct image encoded once, the disk
    cache of image features unless `cache` is False, DataLoader workers that decode image files).

    images: paths, uint8 arrays [H, W, 3] or PIL images. A path that is missing or unreadable is a `DataError`
    naming it and `origins[i] = (source, row)` if given; with `failed` (a dict) its row is NaN instead and
    path -> (path, row, problem) goes to `failed`. The model runs in eval mode; `autocast` runs it in bfloat16 on
    CUDA.
    """
    return encode_image_features(model, preprocess, images, batch_size=batch_size, device=device, autocast=autocast,
                                 num_workers=num_workers, progress=progress, desc=desc, origins=origins, cache=cache,
                                 failed=failed)
