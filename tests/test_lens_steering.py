"""The joint-space lens, the tuned lens, steering and the held-out scoring they share."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probing.clip.hooked import HookedCLIPText
from probing.measure.capture import capture_pooled
from probing.measure.lens import fit_tuned_lens, lens_features, lens_rows
from probing.measure.scoring import HeldOutSet, training_captions
from probing.measure.steering import negation_directions, steering_rows
from probing.metrics import pair_accuracy, recall_among
from probing.models.factory import create_model


@pytest.fixture(scope="module")
def small():
    bundle = create_model("embedded:small")
    hooked = HookedCLIPText(bundle.model, bundle.tokenizer)
    held_out = HeldOutSet.build(bundle.model, bundle.preprocess, bundle.world, n=100, seed=3)
    return bundle, hooked, held_out


def test_held_out_outcomes_match_the_suite_metrics(small):
    bundle, _, held_out = small
    with torch.no_grad():
        features = F.normalize(bundle.model.encode_text(bundle.tokenizer(held_out.texts)), dim=-1)
    outcomes = held_out.outcomes(features)
    n = len(held_out.captions)
    captions, presence, correct, wrong = torch.split(features, [n, n, n, n])
    ccneg = pair_accuracy(held_out.scene_features, captions, presence)
    assert outcomes["ccneg_accuracy"].mean() == pytest.approx(ccneg)
    assert outcomes["scope_accuracy"].mean() == pytest.approx(pair_accuracy(held_out.scope_features, correct, wrong))
    recall = recall_among(held_out.scene_features, captions, group=100, texts=held_out.captions)[
        "image_to_text_R@1_among_100"
    ]
    assert outcomes["image_to_text_R@1_among_100"].mean() == pytest.approx(recall)


def test_lens_at_the_last_layer_is_the_model_itself(small):
    bundle, hooked, held_out = small
    captions = held_out.texts[:40]
    states = capture_pooled(hooked, bundle.tokenizer, captions, progress=False)
    with torch.no_grad():
        expected = F.normalize(bundle.model.encode_text(bundle.tokenizer(captions)), dim=-1)
    plain = lens_features(hooked, states)
    tuned = lens_features(hooked, states, fit_tuned_lens(capture_pooled(
        hooked, bundle.tokenizer, training_captions(bundle.world, 40), progress=False)))
    assert plain.shape[0] == hooked.cfg.n_layers + 1
    assert torch.allclose(plain[-1], expected, atol=1e-5) and torch.allclose(tuned[-1], expected, atol=1e-5)
    assert not torch.allclose(plain[3], expected, atol=1e-2)  # an earlier layer is not the output


def test_tuned_lens_recovers_an_affine_map():
    rng = np.random.default_rng(0)
    final = rng.normal(size=(500, 8))
    mixing = rng.normal(size=(8, 8))
    earlier = (final - 0.5) @ np.linalg.inv(mixing)  # final = earlier @ mixing + 0.5
    weights, biases = fit_tuned_lens(np.stack([earlier, final]), ridge=1e-9)
    assert np.allclose(weights[0], mixing, atol=1e-4) and np.allclose(biases[0], 0.5, atol=1e-4)
    assert np.array_equal(weights[1], np.eye(8)) and np.array_equal(biases[1], np.zeros(8))


def test_lens_rows_score_every_layer_under_both_lenses(small):
    bundle, hooked, held_out = small
    rows = lens_rows(hooked, bundle.tokenizer, held_out, training_captions(bundle.world, 60))
    assert len(rows) == 2 * (hooked.cfg.n_layers + 1) * 3
    last = rows[rows["layer"] == hooked.cfg.n_layers].pivot_table(index="metric", columns="lens", values="value")
    assert np.allclose(last["plain"], last["tuned"])
    # both scope captions of a pair have the same length, and at the embeddings the EOT state sees only that
    first = rows[(rows["layer"] == 0) & (rows["metric"] == "scope_accuracy")]
    assert (first["value"] == 0.0).all()  # identical features tie, and a tie is never a win


def test_steering_with_alpha_zero_changes_nothing_and_other_alphas_do(small):
    bundle, hooked, held_out = small
    directions, scales = negation_directions(hooked, bundle.tokenizer, bundle.world, n_train=200)
    assert directions["logistic"].shape == (hooked.cfg.n_layers + 1, hooked.cfg.d_model)
    assert np.allclose(np.linalg.norm(directions["diffmeans"], axis=1), 1.0) and (np.diff(scales[1:]) != 0).any()
    table = steering_rows(hooked, bundle.tokenizer, held_out, directions, scales, (0.0, 2.0), layers=(0, 5, 12))
    zero = table[table["alpha"] == 0.0]
    assert len(zero) == 2 * 4 * 3 and (zero["change"] == 0.0).all() and (zero["value"] == zero["baseline"]).all()
    assert table["layer"].isna().sum() == 2 * 2 * 3  # every layer at once, per probe and alpha
    assert (table[table["alpha"] == 2.0]["change"] != 0).any()


def test_steering_at_one_layer_equals_a_hook_on_the_full_run(small):
    """score_variants starts at the steered block; the same hook on a run from the start gives the same outcome."""
    from probing.measure.steering import steering_hook

    bundle, hooked, held_out = small
    vector = np.random.default_rng(0).normal(size=hooked.cfg.d_model) * 3
    for layer in (0, 4, hooked.cfg.n_layers - 1):
        hooks = [[(f"blocks.{layer}.hook_resid_pre", steering_hook(vector))]]
        late = held_out.score_variants(hooked, bundle.tokenizer, hooks, start_layer=layer)[0]
        full = held_out.score_variants(hooked, bundle.tokenizer, hooks, start_layer=0)[0]
        for metric in late:
            assert np.array_equal(late[metric], full[metric])


def test_steering_the_open_clip_model_equals_steering_at_the_hook_points(small):
    """`steered` (forward hooks on open_clip's blocks, used by the ablation's evaluation) adds the same vectors
    as TransformerLens hooks at resid_hook_names do; the hooks are gone afterwards, also after an error."""
    from probing.measure.capture import resid_hook_names
    from probing.measure.steering import steered, steering_hook, steering_vectors

    bundle, hooked, held_out = small
    vectors = steering_vectors(bundle.model, bundle.tokenizer, bundle.world, alpha=0.5, n_train=200)
    n_layers = hooked.cfg.n_layers
    assert vectors.shape == (n_layers + 1, hooked.cfg.d_model)
    tokens = bundle.tokenizer(held_out.texts[:60])
    hooks = [(name, steering_hook(vector)) for name, vector in zip(resid_hook_names(n_layers), vectors)]
    with torch.no_grad():
        plain = bundle.model.encode_text(tokens)
        expected = hooked.run_with_hooks(tokens, fwd_hooks=hooks)
        with steered(bundle.model, vectors):
            steered_features = bundle.model.encode_text(tokens)
        after = bundle.model.encode_text(tokens)
        with pytest.raises(RuntimeError), steered(bundle.model, vectors):
            raise RuntimeError("interrupted")
        after_error = bundle.model.encode_text(tokens)
    assert torch.allclose(steered_features, expected, atol=1e-4)
    assert not torch.allclose(steered_features, plain, atol=1e-2)  # the vectors do move the features
    assert torch.equal(after, plain) and torch.equal(after_error, plain)
    with pytest.raises(ValueError, match="vectors"):
        with steered(bundle.model, vectors[:-1]):
            pass
