"""Pooled per-layer capture over many captions, without ever holding a full activation cache.

For each batch we attach forward hooks to `blocks.0.hook_resid_pre` (the embedding output) and to
every `blocks.{l}.hook_resid_post`, and keep only the pooled vector per caption: the state at the
EOT position (what CLIP itself pools), and optionally the mean over real tokens up to EOT.
Captions run in length-sorted batches of at most `token_budget` tokens (probing.features.batching),
so that trimming removes most padding; the result does not depend on the batching.

Result: `[n_layers + 1, n_captions, d_model]`, index 0 = embedding output, l + 1 = block l.
With `out_dir`, arrays are `.npy` memory maps filled batch by batch, so 228k captions x 13 layers
x 512 (about 6 GB) never need to fit in memory; they are renamed into place when complete. With
`memory_budget`, a result larger than the budget streams the same way into a temporary folder whose
files are deleted as soon as they are mapped (POSIX keeps a deleted file's pages while it is mapped),
so nothing is left on disk.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from probing.clip.hooked import HookedCLIPText
from probing.features.batching import DEFAULT_TOKEN_BUDGET, token_batches
from probing.features.pixels import eval_mode
from probing.io import atomic_path, atomic_write_json

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
    token_budget: int | None = DEFAULT_TOKEN_BUDGET,
    batch_size: int | None = None,
    out_dir: str | os.PathLike | None = None,
    memory_budget: int | None = None,
    spill_dir: str | os.PathLike | None = None,
    progress: bool = True,
    dtype: np.dtype = np.float32,
    desc: str = "capture",
) -> np.ndarray | dict[str, np.ndarray]:
    """Pooled residual stream per layer for every caption, in the input order.

    hooked: a `HookedCLIPText` (or an open_clip model, which is wrapped).
    pools: "eot", "mean" or both; with one name an array is returned, with several a dict.
    token_budget, batch_size: at most this many tokens (captions x trimmed length) and captions per
    forward pass (see probing.features.batching.token_batches).
    out_dir: stream to `<out_dir>/<pool>.npy` memory maps instead of memory.
    memory_budget: bytes the arrays may take in memory; a larger result streams to deleted files in
    a temporary folder under `spill_dir` (default: the system's) and comes back memory-mapped.
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
    batches = token_batches(hooked.eot_positions(tokens) + 1, token_budget, batch_size)
    shape = (hooked.cfg.n_layers + 1, len(captions), hooked.cfg.d_model)
    nbytes = len(pool_names) * int(np.prod(shape)) * np.dtype(dtype).itemsize
    spill = out_dir is None and memory_budget is not None and nbytes > memory_budget
    folder = tempfile.mkdtemp(prefix="capture-", dir=spill_dir) if spill else out_dir
    outputs = {}
    try:
        outputs = {name: _allocate(shape, dtype, folder, name) for name in pool_names}
        device = hooked.positional_embedding.device
        names = resid_hook_names(hooked.cfg.n_layers)
        with torch.no_grad(), eval_mode(hooked):
            for index in tqdm(batches, desc=desc, unit="batch", disable=not progress):
                pooled = _pooled_batch(hooked, tokens[index].to(device), names, pool_names)
                for name in pool_names:
                    outputs[name][:, index] = pooled[name].cpu().numpy().astype(dtype)
        if folder is not None:
            outputs = {name: _finish(array, folder, name) for name, array in outputs.items()}
    except BaseException:  # an error or an interruption: no half-filled memory map stays behind
        if folder is not None and not spill:
            outputs.clear()
            for name in pool_names:
                _partial_path(folder, name).unlink(missing_ok=True)
        raise
    finally:
        if spill:
            shutil.rmtree(folder)  # the maps stay readable; their pages are freed when they are
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


def hook_names(n_layers: int) -> list[str]:
    """The TransformerLens hook point of each pooled layer index: 0 is the embedding output (the residual stream
    entering block 0), l + 1 the output of block l."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def save_activations(model, tokenizer: Callable[[Sequence[str]], torch.Tensor], caption_sets: dict[str, Sequence[str]],
                     folder: str | os.PathLike, *, batch_size: int | None = None, progress: bool = False) -> Path:
    """The EOT-pooled residual stream of every caption set at every layer, as `<folder>/<set>.safetensors` keyed by
    hook name ([n captions, d_model] each), and `<folder>/manifest.json` naming the files, hooks, pooling and the
    captions in row order. Returns the manifest's path. Written atomically."""


    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hooked = _as_hooked(model)
    names = hook_names(hooked.cfg.n_layers)
    manifest = {"pooling": "eot", "hooks": names, "d_model": hooked.cfg.d_model, "sets": {}}
    for name, captions in caption_sets.items():
        pooled = capture_pooled(hooked, tokenizer, list(captions), batch_size=batch_size, progress=progress,
                                desc=f"activations: {name}")
        path = folder / f"{name}.safetensors"
        with atomic_path(path) as tmp:
            save_file({hook: np.ascontiguousarray(pooled[layer]) for layer, hook in enumerate(names)}, str(tmp))
        manifest["sets"][name] = {"file": path.name, "n": len(captions), "captions": list(captions)}
    return atomic_write_json(folder / "manifest.json", manifest)
