"""Measurement orchestration on a tiny model and the synthetic world; probing tasks' construction."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from probing.clip.loading import load_clip
from probing.measure.layers import LayerMeasurements, MeasureConfig, measure_layers, swap_first_colour
from probing.measure.tasks import synthetic_negation_task, synthetic_scope_task
from probing.synthetic.world import SyntheticWorld, WorldConfig


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(WorldConfig(image_size=32), seed=0)


def test_scope_pairs_have_identical_words_and_opposite_labels(world):
    task = synthetic_scope_task(world, n_train=200, n_test=40)
    for i in range(0, len(task.train), 2):
        a, b = task.captions[task.train[i]], task.captions[task.train[i + 1]]
        words = lambda text: Counter("a" if w == "an" else w for w in text.replace(",", "").split())
        assert words(a) == words(b)
        assert task.labels[task.train[i]] != task.labels[task.train[i + 1]]
        assert task.control_labels[task.train[i]] == task.control_labels[task.train[i + 1]]
    assert 0.4 < task.labels.mean() < 0.6


def test_negation_task_splits_hold_out_cues(world):
    task = synthetic_negation_task(world, n_train=400, n_test=100)
    held = set(world.config.heldout_cues)
    train_text = " ".join(task.captions[i] for i in task.train)
    assert "never" not in train_text.split() and "none" not in train_text.split()
    held_text = [task.captions[i] for i in task.tests["heldout_cue"] if task.labels[i] == 1]
    assert all(any(cue in caption for cue in held) for caption in held_text)
    assert set(task.tests) == {"in_distribution", "heldout_cue", "heldout_object", "heldout_template"}


def test_swap_first_colour():
    assert swap_first_colour("a red circle, a blue square", ["red", "blue"]) == "a blue circle, a blue square"
    with pytest.raises(ValueError, match="no colour"):
        swap_first_colour("a circle", ["red"])


def test_measure_layers_end_to_end_with_null_models(world, write_config, tmp_path):
    from finetune.losses import make_loss_fn
    from probing.measure.null import null_tower

    config_path = write_config("tiny-measure", layers=3)
    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(config_path)
    tasks = [
        synthetic_negation_task(world, n_train=200, n_test=60),
        synthetic_scope_task(world, n_train=200, n_test=60),
    ]
    config = MeasureConfig(seeds=(0, 1), null_seeds=(0,), n_sensitivity=40, n_causal=100, grad_batches=2,
                           grad_batch_size=8)
    losses = {"clip": make_loss_fn("clip"), "conclip": make_loss_fn("conclip")}
    built = []
    nulls = {f"null:{s}": (lambda s=s: built.append(s) or null_tower(model, config_path.stem, s)) for s in (7, 8)}
    result = measure_layers(model, preprocess, tokenizer, tasks, world=world, null_models=nulls,
                            loss_fns=losses, config=config, progress=False)
    assert built == [7, 8] and result.null_models == ["null:7", "null:8"]
    probes = result.probes
    assert set(probes.model) == {"trained", "null:7", "null:8"} and set(probes.labels) == {"task", "control"}
    assert set(probes[probes.labels == "control"].model) == {"trained"}  # controls are about the model
    assert (
        len(probes[(probes.task == "negation") & (probes.model == "trained") & (probes.labels == "task")]) == 4 * 4 * 2
    )
    assert set(probes[probes.model == "null:7"].n_seeds) == {1}  # null models use their own probe seeds
    # a negation probe trained and tested on the same cues finds the cue token somewhere
    in_dist = probes[(probes.split == "in_distribution") & (probes.labels == "task") & (probes.task == "negation")
                     & (probes.model == "trained")]
    assert in_dist.accuracy.max() > 0.75
    row = result.selectivity.iloc[0]
    assert row.selectivity == pytest.approx(row.task_accuracy - row.control_accuracy)
    assert set(result.sensitivity.edit) == {"presence", "absence", "control"}
    assert set(result.sensitivity.model) == set(result.gradnorms.model) == {"trained", "null:7", "null:8"}
    grads = result.gradnorms
    assert set(grads.loss) == {"clip", "conclip"} and set(grads.layer) == {0, 1, 2}
    assert len(result.causal) == 4 * 4 and set(result.causal.layer) == {0, 1, 2, 3}
    # per-item values agree with the tables computed from them
    labels = result.items["probes/scope/heldout_cue/labels"]
    hits = result.items["probes/scope/heldout_cue/trained"].astype(float)
    balanced = np.mean([hits[:, labels == c].mean(axis=1) for c in (0, 1)], axis=0)
    table = probes[(probes.task == "scope") & (probes.split == "heldout_cue") & (probes.model == "trained")
                   & (probes.labels == "task") & (probes.probe == "logistic")].sort_values("layer")
    assert balanced == pytest.approx(table.accuracy.to_numpy(), abs=1e-6)
    per_batch = result.items["gradnorms/clip/null:8"]
    mean = grads[(grads.model == "null:8") & (grads.loss == "clip") & (grads.component == "all")].sort_values("layer")
    assert per_batch.shape == (2, 3) and per_batch.mean(axis=0) == pytest.approx(
        mean.relative_norm.to_numpy(), rel=1e-5
    )
    distances = result.items["sensitivity/presence/trained"]
    sens = result.sensitivity[(result.sensitivity.model == "trained") & (result.sensitivity.edit == "presence")]
    assert distances.mean(axis=1) == pytest.approx(sens.sort_values("layer").sensitivity.to_numpy(), rel=1e-5)

    path = result.save(tmp_path / "out")
    again = LayerMeasurements.load(path)
    pd.testing.assert_frame_equal(again.probes, result.probes, check_dtype=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "causal.csv", "fisher.csv", "gradnorms.csv", "items.npz", "measurements.json", "probes.csv",
        "selectivity.csv", "sensitivity.csv"]


def test_null_tower_reinitialises_only_the_text_tower(write_config):
    from probing.clip.text_tower import TextTower
    from probing.measure.null import null_tower

    config_path = write_config("tiny-null", layers=2)
    torch.manual_seed(0)
    model, _, _ = load_clip(config_path)
    with torch.no_grad():  # a structural zero: an attention sublayer switched off
        TextTower.from_model(model).blocks[1].attn.out_proj.weight.zero_()
    null = null_tower(model, config_path.stem, seed=5)
    again = null_tower(model, config_path.stem, seed=5)
    for (name, p), (_, q), (_, r) in zip(model.named_parameters(), null.named_parameters(), again.named_parameters()):
        assert torch.equal(q, r), name  # seeded
        if name.startswith("visual.") or name == "logit_scale":
            assert torch.equal(p, q), name  # the image tower and the scale are the model's
        elif "resblocks.1.attn.out_proj.weight" in name:
            assert not q.any()  # structural zeros stay zero
        elif p.numel() > 1 and float(p.std()) > 0:  # randomly initialised (not the constant LayerNorm gains)
            assert not torch.equal(p, q), name


def test_measure_layers_streams_captures_over_the_memory_budget(world, write_config, monkeypatch):
    import probing.measure.layers as layers

    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(write_config("tiny-measure-budget", layers=2))
    tasks = [synthetic_negation_task(world, n_train=60, n_test=20)]
    captured, options = [], []
    real = layers.capture_pooled
    monkeypatch.setattr(layers, "capture_pooled",
                        lambda *a, **k: options.append(k) or captured.append(real(*a, **k)) or captured[-1])

    def probes(**budgets):
        config = MeasureConfig(seeds=(0,), measurements=("probes",), **budgets)
        return measure_layers(model, preprocess, tokenizer, tasks, config=config, progress=False).probes

    in_memory = probes()
    assert not isinstance(captured[-1], np.memmap)
    assert probes(memory_budget=1).equals(in_memory)  # the same numbers from memory-mapped features
    assert isinstance(captured[-1], np.memmap)
    assert options[-1]["token_budget"] is None  # batches of batch_size, as recorded measurements were made
    probes(token_budget=64)
    assert options[-1]["token_budget"] == 64


def test_a_task_whose_control_labels_hold_one_class_says_it_has_no_control_probe(world, write_config):
    """A real file whose caption types all share a control label (e.g. CC-Neg captions with one first word) gives no
    control probe: the run's record says so (the report prints meta["skipped"]), instead of the selectivity silently
    missing; a task with both classes gets its control probe and no such note."""
    import dataclasses

    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(write_config("tiny-measure-control", layers=2))
    task = synthetic_negation_task(world, n_train=60, n_test=20)
    constant = dataclasses.replace(task, name="constant", control_labels=np.zeros_like(task.control_labels))
    config = MeasureConfig(seeds=(0,), measurements=("probes",))
    result = measure_layers(model, preprocess, tokenizer, [task, constant], config=config, progress=False)
    control = result.probes[result.probes.labels == "control"]
    assert set(control.task) == {"negation"} and set(result.selectivity.task) == {"negation"}
    assert list(result.meta["skipped"]) == ["probes/constant/control"]
    assert "no control probe" in result.meta["skipped"]["probes/constant/control"]
