"""Pooled per-layer capture over many captions, without ever holding a full activation cache.

For each batch we attach forward hooks to `blocks.0.hook_resid_pre` (the embedding output) and to
every `blocks.{l}.hook_resid_post`, and keep only the pooled vector per caption: the state at the
EOT position (what CLIP itself pools), and optionally the mean over real tokens up to EOT.
Captions are processed in order of token length so that trimming removes most padding.

Result: `[n_layers + 1, n_captions, d_model]`, index 0 = embedding output, l + 1 = block l.
With `out_dir`, arrays are `.npy` memory maps filled batch by batch, so 228k captions x 13 layers
x 512 (about 6 GB) never need to fit in memory; they are renamed into place when complete.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from probing.measure.encode import eval_mode

POOLS = ("eot", "mean")


def resid_hook_names(n_layers: int) -> list[str]:
    """Hook names of the pooled layers: embedding output, then every block's output."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def layer_labels(n_layers: int) -> list[str]:
    return ["embed"] + [f"block {layer}" for layer in range(n_layers)]


def capture_pooled(
    hooked,
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    captions: Sequence[str],
    *,
    pools: str | Sequence[str] = "eot",
    batch_size: int = 128,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dtype: np.dtype = np.float32,
    desc: str = "capture",
) -> np.ndarray | dict[str, np.ndarray]:
    """Pooled residual stream per layer for every caption.

    hooked: a `HookedCLIPText` (or an open_clip model, which is wrapped).
    pools: "eot", "mean" or both; with one name an array is returned, with several a dict.
    out_dir: stream to `<out_dir>/<pool>.npy` memory maps instead of memory.
    desc: the progress bar's label (what is captured).
    """
    hooked = _as_hooked(hooked)
    pool_names = (pools,) if isinstance(pools, str) else tuple(pools)
    unknown = set(pool_names) - set(POOLS)
    if unknown:
        raise ValueError(f"unknown pooling {sorted(unknown)}; choose from {POOLS}")
    if len(captions) == 0:
        raise ValueError("no captions to capture")

    tokens = tokenizer(list(captions))
    eot = hooked.eot_positions(tokens)
    order = torch.argsort(eot, stable=True)  # similar lengths together -> little padding per batch
    shape = (hooked.cfg.n_layers + 1, len(captions), hooked.cfg.d_model)
    outputs = {name: _allocate(shape, dtype, out_dir, name) for name in pool_names}

    device = hooked.positional_embedding.device
    names = resid_hook_names(hooked.cfg.n_layers)
    try:
        with torch.no_grad(), eval_mode(hooked):
            for start in tqdm(range(0, len(captions), batch_size), desc=desc, unit="batch", disable=not progress):
                index = order[start:start + batch_size]
                pooled = _pooled_batch(hooked, tokens[index].to(device), names, pool_names)
                for name in pool_names:
                    outputs[name][:, index.numpy()] = pooled[name].cpu().numpy().astype(dtype)
    except BaseException:  # an error or an interruption: no half-filled memory map stays behind
        if out_dir is not None:
            outputs.clear()
            for name in pool_names:
                _partial_path(out_dir, name).unlink(missing_ok=True)
        raise

    if out_dir is not None:
        outputs = {name: _finish(array, out_dir, name) for name, array in outputs.items()}
    return outputs[pool_names[0]] if len(pool_names) == 1 else outputs


def _pooled_batch(hooked, tokens: torch.Tensor, names: list[str], pools: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Run one batch with pooling hooks; returns {pool: [n_layers + 1, batch, d_model]}."""
    eot = hooked.eot_positions(tokens)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    length = int(eot.max()) + 1
    # real tokens are positions 0..EOT inclusive
    real = (torch.arange(length, device=tokens.device)[None, :] <= eot[:, None]).float()
    collected: dict[str, list[torch.Tensor]] = {pool: [None] * len(names) for pool in pools}

    def make_hook(slot: int):
        def hook(resid: torch.Tensor, hook) -> None:  # resid: [batch, positions, d_model]
            if "eot" in collected:
                collected["eot"][slot] = resid[rows, eot].float()
            if "mean" in collected:
                weights = real[:, : resid.shape[1], None]
                collected["mean"][slot] = (resid.float() * weights).sum(1) / weights.sum(1)
        return hook

    hooked.run_with_hooks(tokens, fwd_hooks=[(name, make_hook(slot)) for slot, name in enumerate(names)])
    return {pool: torch.stack(layers) for pool, layers in collected.items()}


def _as_hooked(model):
    from probing.models.hooked import HookedCLIPText

    return model if isinstance(model, HookedCLIPText) else HookedCLIPText(model)


def _partial_path(out_dir, name: str) -> Path:
    return Path(out_dir) / f".{name}.npy.partial"


def _allocate(shape, dtype, out_dir, name: str) -> np.ndarray:
    if out_dir is None:
        return np.zeros(shape, dtype=dtype)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(_partial_path(out_dir, name), mode="w+", dtype=dtype, shape=shape)


def _finish(array: np.memmap, out_dir, name: str) -> np.ndarray:
    """Flush the memory map and rename it into place, then reopen read-only."""
    array.flush()
    del array
    final = Path(out_dir) / f"{name}.npy"
    os.replace(_partial_path(out_dir, name), final)
    return np.load(final, mmap_mode="r")
