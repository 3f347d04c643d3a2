"""Metrics checked against hand-computed values, and refusal of unnormalised features."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probing.measure.metrics import flatten, pair_accuracy, pair_wins, recall_at_k, score_mcq, zero_shot_accuracy


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_pair_accuracy_counts_every_row():
    image = unit([1, 0], [0, 1], [1, 1], [1, -1])
    positive = unit([1, 0.1], [0, 1], [0, 1], [1, 0])
    negative = unit([0, 1], [1, 0], [1, 1], [0, 1])
    # rows: win, win, lose (0.707 < 1.0), win
    assert pair_wins(image, positive, negative).tolist() == [True, True, False, True]
    assert pair_accuracy(image, positive, negative) == 0.75


def test_unnormalised_features_are_rejected():
    good = unit([1, 0])
    with pytest.raises(ValueError, match="positive is not L2-normalised"):
        pair_accuracy(good, torch.tensor([[2.0, 0.0]]), good)


def test_recall_at_k_with_several_captions_per_image():
    image = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    # captions 0,1 -> image 0; caption 2 -> image 1; caption 3 -> image 2 (but closest to image 0)
    text = unit([1, 0.1, 0], [0.9, 0, 0.1], [0, 1, 0], [1, 0, 0.5])
    recall = recall_at_k(image, text, text_to_image=[0, 0, 1, 2], ks=(1, 2))
    assert recall["image_to_text_R@1"] == 1.0  # each image's most similar caption is one of its own
    assert recall["text_to_image_R@1"] == pytest.approx(3 / 4)  # caption 3 is closer to image 0
    assert recall["text_to_image_R@2"] == 1.0
    swapped = recall_at_k(image, text, text_to_image=[0, 0, 2, 1], ks=(1,))
    assert swapped["image_to_text_R@1"] == pytest.approx(1 / 3)


def test_zero_shot_and_multiple_choice():
    image = unit([1, 0], [0, 1], [1, 0.2])
    classes = unit([1, 0], [0, 1])
    assert zero_shot_accuracy(image, classes, [0, 1, 1]) == pytest.approx(2 / 3)
    options = torch.stack([classes, classes.flip(0), classes])
    metrics, ties = score_mcq(image, options, torch.tensor([0, 0, 1]), ["positive", "negative", "negative"])
    assert metrics["mcq_accuracy"] == {"value": pytest.approx(2 / 3), "n": 3} and ties == 0
    assert metrics["mcq_accuracy/template=negative"] == {"value": 0.5, "n": 2}


def test_one_vocabulary_flattens_and_refuses_a_name_twice():
    sections = {"a": {"x": {"value": 1.0, "n": 2}}, "b": {"y/cue=no": {"value": 0.5, "n": 2}}}
    assert flatten(sections) == {"x": 1.0, "y/cue=no": 0.5}
    with pytest.raises(ValueError, match="appears in two sections"):
        flatten({**sections, "c": {"x": {"value": 0.0, "n": 1}}})
