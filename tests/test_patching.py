"""Activation and attribution patching: a planted head is found and nothing else, exact normalisation,
agreement with TransformerLens's own patching and between the two methods on a trained model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from probing.clip.hooked import HookedCLIPText
from probing.features.encode import encode_images
from probing.measure.heads import ablate_heads_hook, attention_to_cue
from probing.measure.patching import (
    PairBatch,
    agreement,
    block_effects,
    patch_batch,
    patch_cells,
    ratio_of_sums,
    summarise,
    top_heads,
)
from probing.measure.roles import RoleFinder, synthetic_negation_pairs, synthetic_scope_pairs
from probing.models.factory import create_model
from tests.planted import N_HEADS, N_LAYERS, PLANTED, image_features, planted_model, planted_pairs


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import json

    from tests.conftest import tiny_config

    folder = tmp_path_factory.mktemp("planted")

    def write_config(name, **kwargs):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(tiny_config(**kwargs)))
        return path

    model, tokenizer = planted_model(write_config)
    hooked = HookedCLIPText(model, tokenizer)
    aligned, skipped = RoleFinder(tokenizer, hooked.eot_positions).align(planted_pairs())
    assert not skipped
    batch = PairBatch.build(aligned, image_features(len(aligned)), "cpu")
    cells = patch_cells(N_LAYERS, N_HEADS, ["resid", "attn", "mlp", "head"])
    table = summarise(patch_batch(hooked, batch, cells), "negation", n_boot=200)
    return hooked, aligned, batch, table


def test_the_planted_model_reads_the_cue(planted):
    _, _, batch, table = planted
    hooked = planted[0]
    with torch.no_grad():
        clean, corrupted = batch.metric(hooked(batch.true_tokens)), batch.metric(hooked(batch.false_tokens))
    assert (clean > corrupted + 0.05).all()  # "with" scores above "without" for every pair


@pytest.mark.parametrize("method, floor", [("exact", 0.999), ("attribution", 0.9)])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patching_finds_the_planted_head_and_no_other(planted, method, direction, floor):
    table = planted[3]
    rows = table[(table["method"] == method) & (table["direction"] == direction)]
    layer, head = PLANTED
    expected = {("head", layer, "all", head), ("attn", layer, "eot", -1)}
    expected |= {("resid", l, "cue", -1) for l in range(layer + 1)}  # the cue's own stream, until the head reads it
    for row in rows.itertuples():
        key = (row.component, row.layer, row.role, -1 if row.head is pd.NA else row.head)
        if key not in expected:
            assert abs(row.effect) < 1e-4, key
        elif method == "exact" or key[:2] != ("resid", 0):
            # attribution is a first-order estimate: at the embeddings the cue's change passes the
            # planted head's saturated softmax, so only exact patching is held to 1 there
            assert floor <= row.effect <= 2 - floor, (key, row.effect)
    assert top_heads(rows, 1) == [PLANTED]
    assert int(block_effects(rows, direction).set_index("block")["best"].idxmax()) == layer


def test_head_analysis_finds_the_planted_head(planted):
    hooked, aligned, batch, _ = planted
    attention = attention_to_cue(hooked, aligned, "negation")
    eot = attention[attention["query"] == "eot"].set_index(["layer", "head"])
    assert eot["attention"].idxmax() == PLANTED and eot.loc[PLANTED, "attention"] > 0.9
    assert eot.drop(PLANTED)["attention"].max() < 0.6  # random heads may glance at the cue, not fix on it
    assert eot.loc[PLANTED, "uniform"] == pytest.approx(eot["uniform"].iloc[0])  # a property of the captions
    # zero-ablating the planted head makes the two captions indistinguishable; any other head leaves the gap
    gap = lambda hooks: (batch.metric(hooked.run_with_hooks(batch.true_tokens, fwd_hooks=hooks))
                         - batch.metric(hooked.run_with_hooks(batch.false_tokens, fwd_hooks=hooks)))
    with torch.no_grad():
        intact = gap([])
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                ablated = gap([(f"blocks.{layer}.attn.hook_z", ablate_heads_hook([head], None))])
                if (layer, head) == PLANTED:
                    assert ablated.abs().max() < 1e-5
                else:  # other heads change the content (so the gap's size), never which caption wins
                    assert (ablated > 0.01).all() and (intact > 0.05).all()


@pytest.fixture(scope="module")
def small():
    bundle = create_model("embedded:small")
    return bundle, HookedCLIPText(bundle.model, bundle.tokenizer)


def _batch(bundle, hooked, pairs):
    aligned, _ = RoleFinder(bundle.tokenizer, hooked.eot_positions).align(pairs)
    images = encode_images(bundle.model, bundle.preprocess, [a.pair.image for a in aligned])
    return aligned, PairBatch.build(aligned, images, "cpu")


def test_clean_run_scores_one_and_corrupted_run_zero_exactly(small):
    bundle, hooked = small
    pairs = [p for p in synthetic_negation_pairs(bundle.world, 40) if p.cue not in ("not", "isn't")]  # same lengths
    aligned, batch = _batch(bundle, hooked, pairs)
    assert all(len(a.true_tokens) == len(a.false_tokens) for a in aligned)
    last = hooked.cfg.n_layers - 1
    cells = patch_cells(hooked.cfg.n_layers, hooked.cfg.n_heads, ["resid"], roles=("all", "negated"))
    cells = cells[cells["layer"].isin([0, last])].reset_index(drop=True)
    table = summarise(patch_batch(hooked, batch, cells, methods=("exact",)), "negation").set_index(
        ["direction", "layer", "role"])
    for layer in (0, last):  # patching every position = the other run itself
        assert table.loc[("denoise", layer, "all"), "score"] == 1.0
        assert table.loc[("noise", layer, "all"), "score"] == 0.0
        assert table.loc[("noise", layer, "all"), "effect"] == 1.0
    # the negated noun's embedding is the same in both captions: patching it is no patch at all
    assert table.loc[("denoise", 0, "negated"), "score"] == 0.0
    assert table.loc[("noise", 0, "negated"), "score"] == 1.0


def test_exact_patching_matches_transformer_lens_generic_patching(small):
    """Our start_at_layer runs against TransformerLens's own get_act_patch_resid_pre, on pairs sharing EOT."""
    from transformer_lens.patching import get_act_patch_resid_pre

    bundle, hooked = small
    pairs = synthetic_scope_pairs(bundle.world, 40)
    aligned, _ = RoleFinder(bundle.tokenizer, hooked.eot_positions).align(pairs)
    length = max(len(a.true_tokens) for a in aligned)
    aligned = [a for a in aligned if len(a.true_tokens) == length][:6]
    images = encode_images(bundle.model, bundle.preprocess, [a.pair.image for a in aligned])
    batch = PairBatch.build(aligned, images, "cpu")
    cells = patch_cells(hooked.cfg.n_layers, hooked.cfg.n_heads, ["resid"], roles=("eot",))
    runs = patch_batch(hooked, batch, cells, methods=("exact",), directions=("denoise",))
    ours = runs.deltas[("exact", "denoise")].mean(1) + runs.corrupted.mean()
    _, clean_cache = hooked.run_with_cache(batch.true_tokens)
    theirs = get_act_patch_resid_pre(hooked, batch.false_tokens, clean_cache, lambda f: batch.metric(f).mean())
    assert np.allclose(ours, theirs[:, length - 1].numpy(), atol=1e-6)


def test_attribution_agrees_with_exact_patching_on_a_trained_model(small):
    bundle, hooked = small
    tables = []
    for kind, make in (("negation", synthetic_negation_pairs), ("scope", synthetic_scope_pairs)):
        _, batch = _batch(bundle, hooked, make(bundle.world, 16))
        cells = patch_cells(hooked.cfg.n_layers, hooked.cfg.n_heads, ["resid", "attn", "mlp", "head"])
        tables.append(summarise(patch_batch(hooked, batch, cells), kind, n_boot=100))
    rho = agreement(pd.concat(tables, ignore_index=True)).set_index(["kind", "direction", "component"])["spearman"]
    assert rho[("negation", "denoise", "all")] > 0.85 and rho[("scope", "denoise", "all")] > 0.85
    assert rho[("scope", "noise", "all")] > 0.6 and rho[("negation", "noise", "all")] > 0.6


def test_ratio_of_sums_pools_pairs_and_skips_masked_ones():
    x = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    g = np.array([2.0, 2.0, 4.0])
    mask = np.array([[True, True, True], [True, False, True], [False, False, False]])
    point, low, high = ratio_of_sums(x, g, mask, n_boot=500)
    assert point[0] == pytest.approx(6 / 8) and point[1] == pytest.approx(4 / 6)
    assert np.isnan(point[2]) and np.isnan(low[2]) and np.isnan(high[2])
    assert low[0] <= point[0] <= high[0] and low[1] <= point[1] <= high[1]
    same = np.tile(g, (2, 1))  # x = g for every pair: the ratio is 1 in every resample
    point, low, high = ratio_of_sums(same, g, np.ones_like(same, dtype=bool), n_boot=200)
    assert (point == 1.0).all() and (low == 1.0).all() and (high == 1.0).all()
