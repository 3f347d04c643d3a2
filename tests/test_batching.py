"""Token-budget batching: the batches it makes, and text encoding through it equal to open_clip's own."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.clip.loading import load_clip
from probing.features.batching import token_batches
from probing.features.encode import encode_captions


def _check_partition(lengths, batches, budget, max_batch):
    lengths = np.asarray(lengths)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every caption exactly once
    assert np.all(np.diff(lengths[flat]) >= 0)  # sorted by length across and within batches
    for batch, following in zip(batches, batches[1:] + [None]):
        cost = len(batch) * lengths[batch].max()
        assert len(batch) == 1 or budget is None or cost <= budget
        assert max_batch is None or len(batch) <= max_batch
        if following is not None:  # greedy: a batch closes only when the next caption would not fit
            grown = (len(batch) + 1) * lengths[following[0]]
            assert (budget is not None and grown > budget) or len(batch) == max_batch


@pytest.mark.parametrize("budget, max_batch", [(64, None), (100, 4), (None, 7), (1, None), (10_000, None)])
def test_token_batches_partition_sorted_within_budget(budget, max_batch):
    lengths = np.random.default_rng(0).integers(3, 40, size=200)
    batches = token_batches(lengths, budget, max_batch)
    _check_partition(lengths, batches, budget, max_batch)


def test_token_batches_examples():
    # lengths 5, 5, 5, 20 with 16 tokens: two 5s fit (10), a third would need 15 <= 16, the 20 is alone
    assert [b.tolist() for b in token_batches([20, 5, 5, 5], 16)] == [[1, 2, 3], [0]]
    assert [b.tolist() for b in token_batches([20, 5, 5, 5], 14)] == [[1, 2], [3], [0]]
    assert [b.tolist() for b in token_batches([3, 1, 2], None, 2)] == [[1, 2], [0]]
    assert token_batches([], 10) == []
    with pytest.raises(ValueError, match="token_budget"):
        token_batches([1, 2], 0)
    with pytest.raises(ValueError, match="give a token_budget"):
        token_batches([1, 2], None)


CAPTIONS = ["a dog", "there is no cat on the mat next to the small brown dog and no bird in the sky above it",
            "not a red circle", "a photo of a blue square without a green star", "no", "a cat, but no dog"] * 3


@pytest.mark.parametrize("budget, batch_size", [(24, None), (60, 4), (None, 5), (None, 1)])
def test_encode_captions_equals_open_clip_encode_text(write_config, budget, batch_size):
    """Every batching gives open_clip's own untrimmed features (computed one caption at a time)."""
    torch.manual_seed(0)
    model, _, tokenizer = load_clip(write_config("tiny-batching"))
    with torch.no_grad():
        expected = torch.cat([model.encode_text(tokenizer([c]), normalize=True) for c in CAPTIONS])
    got = encode_captions(model, tokenizer, CAPTIONS, token_budget=budget, batch_size=batch_size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
