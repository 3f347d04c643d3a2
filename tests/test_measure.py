"""Measurement orchestration on a tiny model and the synthetic world; probing tasks' construction."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from probing.synthetic.world import SyntheticWorld, WorldConfig
from probing.measure.layers import LayerMeasurements, MeasureConfig, measure_layers, swap_first_colour
from probing.models.loading import load_clip
from probing.measure.tasks import real_negation_task, synthetic_negation_task, synthetic_scope_task


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


def test_measure_layers_end_to_end(world, write_config, tmp_path):
    from finetune.losses import make_loss_fn

    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(write_config("tiny-measure", layers=3))
    random_model, _, _ = load_clip(write_config("tiny-measure-random", layers=3))
    tasks = [synthetic_negation_task(world, n_train=200, n_test=60), synthetic_scope_task(world, n_train=200, n_test=60)]
    config = MeasureConfig(seeds=(0, 1), n_sensitivity=40, n_causal=100, grad_batches=2, grad_batch_size=8)
    losses = {"clip": make_loss_fn("clip"), "conclip": make_loss_fn("conclip")}
    result = measure_layers(model, preprocess, tokenizer, tasks, world=world, random_model=random_model,
                            loss_fns=losses, config=config, progress=False)
    probes = pd.DataFrame(result.probes)
    assert set(probes.model) == {"trained", "random"} and set(probes.labels) == {"task", "control"}
    assert len(probes[(probes.task == "negation") & (probes.model == "trained") & (probes.labels == "task")]) == 4 * 4 * 2
    # a negation probe trained and tested on the same cues finds the cue token somewhere
    in_dist = probes[(probes.split == "in_distribution") & (probes.labels == "task") & (probes.task == "negation")]
    assert in_dist.accuracy.max() > 0.75
    selectivity = pd.DataFrame(result.selectivity)
    row = selectivity.iloc[0]
    assert row.selectivity == pytest.approx(row.task_accuracy - row.control_accuracy)
    assert set(pd.DataFrame(result.sensitivity).edit) == {"presence", "absence", "control"}
    grads = pd.DataFrame(result.gradnorms)
    assert set(grads.loss) == {"clip", "conclip"} and set(grads.layer) == {0, 1, 2}
    causal = pd.DataFrame(result.causal)
    assert len(causal) == 4 * 4 and set(causal.layer) == {0, 1, 2, 3}

    path = result.save(tmp_path / "out")
    again = LayerMeasurements.load(path)
    assert again.probes == json.loads(json.dumps(result.probes))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "causal.csv", "gradnorms.csv", "measurements.json", "probes.csv", "selectivity.csv", "sensitivity.csv"]


def test_real_negation_task_from_generator(shared_data):
    from probing.data import generate_negations, load_coco_instances

    images = load_coco_instances(shared_data / "coco_mini/annotations/instances_val2017.json",
                                 shared_data / "coco_mini/val2017")
    examples = generate_negations(images, seed=0, per_image=3)
    task = real_negation_task(examples, train_cues=("no", "not"))
    assert len(task.train) and len(task.tests["heldout_cue"])
    held = {task.captions[i] for i in task.tests["heldout_cue"]}
    expected = {text for e in examples if e.cue not in ("no", "not")
                for text in (e.caption, e.presence_negated, e.absence_negated)}
    assert held == expected
    assert set(np.unique(task.labels[task.tests["heldout_cue"]])) == {0, 1}


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
    assert probes(memory_budget=1) == in_memory  # the same numbers from memory-mapped features
    assert isinstance(captured[-1], np.memmap)
    assert options[-1]["token_budget"] is None  # batches of batch_size, as recorded measurements were made
    probes(token_budget=64)
    assert options[-1]["token_budget"] == 64
