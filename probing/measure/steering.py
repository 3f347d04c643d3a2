"""Training-free steering: add alpha x a negation direction to the residual stream at inference.

    direction u_l  the unit probe direction at layer l (LogisticProbe or DiffMeansProbe `direction_`,
                   residual coordinates, pointing towards "negated"), fitted on the TRAINING captions
                   of the synthetic negation task (tasks.py) - no other training;
    scale s_l      the mean norm of the EOT state at layer l over those captions, so that alpha is in
                   units of the layer's own residual norm (norms grow with depth);
    steered run    r_l(p) <- r_l(p) + alpha s_l u_l at every position p, at one layer l (capture.py's
                   layers: 0 = embeddings, l + 1 = block l: the stream entering block l) or at every
                   layer at once (Sammani et al. 2026 steer every block along its probe direction,
                   alpha 0.13).

Each setting is scored on a HeldOutSet against the unsteered model (alpha = 0): value, baseline,
change with a paired interval over items. Steering that helps raises scope accuracy (the
shortcut-proof metric) without costing retrieval.

`steered(model, vectors)` applies the same additions to the open_clip model itself (forward hooks
on its text blocks), so that code that only calls the model - the ablation's evaluation - scores a
steered model; `steering_vectors` gives Sammani et al.'s setting (every layer, alpha 0.13).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probing.clip.hooked import HookedCLIPText
from probing.clip.text_tower import TextTower
from probing.measure.capture import capture_pooled, resid_hook_names
from probing.measure.probes import PROBES
from probing.measure.scoring import HeldOutSet, change_rows
from probing.measure.tasks import synthetic_negation_task

STEERING_COLUMNS = ("probe", "layer", "alpha", "metric", "value", "baseline", "change", "ci_low", "ci_high", "n")


def negation_directions(hooked, tokenizer, world, *, n_train: int = 1000,
                        probes: Sequence[str] = ("logistic", "diffmeans"), seed: int = 0, batch_size: int = 128,
                        progress: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({probe: unit directions [L + 1, d]}, EOT norms [L + 1]) from the negation task's training captions."""
    task = synthetic_negation_task(world, n_train=n_train, n_test=2, seed=seed)
    captions = [task.captions[i] for i in task.train]
    states = capture_pooled(hooked, tokenizer, captions, batch_size=batch_size, progress=progress)
    labels = task.labels[task.train]
    directions = {name: np.stack([PROBES[name]().fit(layer, labels).direction_ for layer in states]) for name in probes}
    return directions, np.linalg.norm(states, axis=-1).mean(1)


def steering_hook(vector: np.ndarray | torch.Tensor):
    """A TransformerLens hook adding `vector` [d] at every position of the residual stream."""
    v = torch.as_tensor(np.asarray(vector), dtype=torch.float32)

    def hook(resid: torch.Tensor, hook) -> torch.Tensor:  # [batch, positions, d_model]
        return resid + v.to(device=resid.device, dtype=resid.dtype)

    return hook


def steering_rows(hooked, tokenizer: Callable[[Sequence[str]], torch.Tensor], held_out: HeldOutSet,
                  directions: dict[str, np.ndarray], scales: np.ndarray, alphas: Sequence[float], *,
                  layers: Sequence[int] | None = None, every_layer: bool = True, batch_size: int = 128,
                  progress: bool = False) -> pd.DataFrame:
    """Held-out metrics per (probe, layer, alpha); layer <NA> = steering at every layer at once."""
    n_layers = hooked.cfg.n_layers
    names = resid_hook_names(n_layers)
    layers = range(n_layers + 1) if layers is None else layers
    settings = [(probe, alpha) for probe in directions for alpha in alphas]
    vector = lambda probe, alpha, l: steering_hook(alpha * scales[l] * directions[probe][l])
    baseline = held_out.score_variants(hooked, tokenizer, [[]], start_layer=n_layers, batch_size=batch_size)[0]
    rows = []
    for layer in tqdm([*layers, *([None] if every_layer else [])], desc="steering", disable=not progress):
        if layer is None:
            variants = [[(names[l], vector(probe, alpha, l)) for l in range(n_layers + 1)] for probe, alpha in settings]
            start = 0
        else:  # the stream entering block `layer` (after the last block: the stream ln_final reads)
            start, name = (layer, f"blocks.{layer}.hook_resid_pre") if layer < n_layers else (n_layers - 1, names[-1])
            variants = [[(name, vector(probe, alpha, layer))] for probe, alpha in settings]
        outcomes = held_out.score_variants(hooked, tokenizer, variants, start_layer=start, batch_size=batch_size)
        for (probe, alpha), steered in zip(settings, outcomes):
            rows += [{"probe": probe, "layer": layer, "alpha": alpha, **row} for row in change_rows(baseline, steered)]
    table = pd.DataFrame(rows, columns=list(STEERING_COLUMNS))
    table["layer"] = table["layer"].astype("Int64")
    return table


PUBLISHED_ALPHA = 0.13  # Sammani et al. 2026: every layer, along its logistic probe direction


def steering_vectors(model, tokenizer, world, *, alpha: float = PUBLISHED_ALPHA, probe: str = "logistic",
                     n_train: int = 1000, seed: int = 0) -> np.ndarray:
    """[L + 1, d] vectors alpha s_l u_l for steering every layer at once (layer 0 = embeddings), fitted on the
    negation task's training captions of `world` (seed picks them) through the hooked view of `model`."""

    hooked = HookedCLIPText(model, tokenizer)  # the capture runs without autograd
    directions, scales = negation_directions(hooked, tokenizer, world, n_train=n_train, probes=(probe,), seed=seed)
    return alpha * scales[:, None] * directions[probe]


@contextlib.contextmanager
def steered(model, vectors: np.ndarray | torch.Tensor) -> Iterator[None]:
    """Within the block, `model`'s text tower adds vectors[l] to the residual stream entering block l
    (l = 0 .. L - 1) and vectors[L] to the last block's output, at every position: the additions
    `steering_rows` makes at the hook points of `resid_hook_names` (blocks.l.hook_resid_pre is
    blocks.(l-1).hook_resid_post). The hooks are removed on exit, also after an error."""

    blocks = TextTower.from_model(model).blocks
    vectors = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    if vectors.shape[0] != len(blocks) + 1:
        raise ValueError(f"steering needs {len(blocks) + 1} vectors (embeddings and every block), "
                         f"got {vectors.shape[0]}")

    def add(vector: torch.Tensor):
        return lambda x: x + vector.to(device=x.device, dtype=x.dtype)

    handles = []
    try:
        for layer, block in enumerate(blocks):
            shift = add(vectors[layer])
            handles.append(block.register_forward_pre_hook(
                lambda module, args, shift=shift: (shift(args[0]), *args[1:])))
        last = add(vectors[-1])
        handles.append(blocks[-1].register_forward_hook(lambda module, args, output: last(output)))
        yield
    finally:
        for handle in handles:
            handle.remove()
