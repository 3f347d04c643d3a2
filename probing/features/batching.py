"""Token-budget batching: captions sorted by length, cut into batches of at most `token_budget` tokens.

A text batch runs only up to its longest caption (trimming, exact under the causal mask), so its
cost is about `batch size x longest length`. Fixed-size batches waste that cost twice: unsorted, one
long caption pads the whole batch; sorted, the last batches still hold the long tail, padded to its
longest. Sorting by length and closing a batch as soon as `size x longest` would pass the budget
keeps the padding small and every batch about the same size in tokens (memory and time per batch
stay flat however long the captions are).

Results do not depend on the batching beyond float rounding: every caption's features are computed
from its own tokens only, so a caller that puts them back in input order gets the same numbers as
one caption at a time (tests check this for capture, encoding and the causal check).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# 1,280 tokens = 64 captions of 20 tokens, or 16 of the full 77. On CPU (README, Development:
# Performance; ViT-B-32 text tower, one thread) 1,280 computed at the same share of the matmul rate as
# 2,560 and fixed batches of 128 (86-89 %), with less padding (89 % of the FLOPs useful, against 80 and
# 79 %). A GPU needs far larger batches to be busy: pass a budget of tens of thousands of tokens there.
DEFAULT_TOKEN_BUDGET = 1280


def token_batches(lengths: Sequence[int] | np.ndarray, token_budget: int | None = DEFAULT_TOKEN_BUDGET,
                  max_batch: int | None = None) -> list[np.ndarray]:
    """Indices into `lengths`, sorted by length (stable) and cut into consecutive batches.

    A batch closes before `(size + 1) x length` of the next caption would exceed `token_budget`, or
    at `max_batch` captions. A caption longer than the budget gets a batch of its own. With
    `token_budget=None` the batches are `max_batch` captions each (sorted all the same).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be at least 1, got {token_budget}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if token_budget is None and max_batch is None:
        raise ValueError("give a token_budget, a max_batch or both")
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order].tolist()
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        last = end == len(order)
        full = max_batch is not None and end - start == max_batch
        over = not last and token_budget is not None and (end - start + 1) * sorted_lengths[end] > token_budget
        if last or full or over:
            batches.append(order[start:end])
            start = end
    return batches

