"""Metrics checked against hand-computed values and against plain-Python loops (the second way),
ties included: a tie is a failure and is counted, so a collapsed tower scores 0, not 100 %."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probing.metrics import (
    breakdown,
    flatten,
    pair_accuracy,
    pair_wins,
    recall_at_k,
    score_mcq,
    score_pairs,
    score_prompt_gap,
    score_recall_among,
    score_regions,
    score_retrieval,
    zero_shot_accuracy,
)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


POOL = F.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(12345)), dim=-1)


def tied_features(n: int, seed: int = 0) -> torch.Tensor:
    """Normalised rows drawn from the same 3 vectors, so that equal scores (ties) are common and exact."""
    return POOL[torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))]


# --- the second way: loops over Python floats -------------------------------------------------------

TOL = 1e-6  # scores this close are equal (float32 rounding of identical features)


def loop_choice(scores: list[float], right: int) -> tuple[bool, bool]:
    """(right strictly beats every other option, right ties the best other option)."""
    others = [s for i, s in enumerate(scores) if i != right]
    return all(scores[right] > s + TOL for s in others), abs(scores[right] - max(others)) <= TOL


def dot(a, b) -> float:
    return float(sum(x * y for x, y in zip(a.tolist(), b.tolist())))


def loop_rate(outcomes: list[tuple[bool, bool]]) -> tuple[float, int]:
    return sum(hit for hit, _ in outcomes) / len(outcomes), sum(tie and not hit for hit, tie in outcomes)


def loop_recall(sim: np.ndarray, owner: list[int], k: int) -> tuple[float, int, float, int]:
    """(image->text R@k, its ties, text->image R@k, its ties): a query's best correct candidate is
    ranked behind every wrong candidate scoring at least as much (ties against the query)."""
    def rank(scores, correct):
        best = max(scores[j] for j in correct)
        at_least = sum(1 for j, s in enumerate(scores) if j not in correct and s >= best - TOL)
        above = sum(1 for j, s in enumerate(scores) if j not in correct and s > best + TOL)
        return at_least < k, above < k and not at_least < k

    images = [rank(list(sim[i]), {j for j, o in enumerate(owner) if o == i}) for i in range(sim.shape[0])]
    texts = [rank(list(sim[:, j]), {owner[j]}) for j in range(sim.shape[1])]
    return (sum(h for h, _ in images) / len(images), sum(t for _, t in images),
            sum(h for h, _ in texts) / len(texts), sum(t for _, t in texts))


# --- values ---------------------------------------------------------------------------------------------

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
    metrics = score_mcq(image, options, torch.tensor([0, 0, 1]), ["positive", "negative", "negative"])
    assert metrics["mcq_accuracy"] == {"value": pytest.approx(2 / 3), "n": 3, "ties": 0}
    assert metrics["mcq_accuracy/template=negative"] == {"value": 0.5, "n": 2, "ties": 0}


# --- every changed metric, a second way, ties included --------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_and_breakdown_equal_a_loop_with_ties(seed):
    image, positive, negative = (tied_features(40, seed=seed + s) for s in (0, 10, 20))
    cues = [("no", "not", "without")[i % 3] for i in range(40)]
    metrics = score_pairs("ccneg_accuracy", image, positive, negative, {"cue": cues})
    outcomes = [loop_choice([dot(i, p), dot(i, n)], 0) for i, p, n in zip(image, positive, negative)]
    value, ties = loop_rate(outcomes)
    assert ties > 0  # the draw plants equal scores
    assert metrics["ccneg_accuracy"] == {"value": pytest.approx(value), "n": 40, "ties": ties}
    for cue in ("no", "not", "without"):
        rows = [o for o, c in zip(outcomes, cues) if c == cue]
        value, ties = loop_rate(rows)
        assert metrics[f"ccneg_accuracy/cue={cue}"] == {"value": pytest.approx(value), "n": len(rows), "ties": ties}


@pytest.mark.parametrize("seed", [0, 1])
def test_mcq_zero_shot_and_regions_equal_a_loop_with_ties(seed):
    n, k = 30, 4
    image = tied_features(n, seed=seed)
    options = tied_features(n * k, seed=seed + 5).view(n, k, -1)
    correct = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    templates = [("positive", "negative", "hybrid")[i % 3] for i in range(n)]
    metrics = score_mcq(image, options, correct, templates)
    outcomes = [loop_choice([dot(image[i], o) for o in options[i]], int(correct[i])) for i in range(n)]
    value, ties = loop_rate(outcomes)
    assert ties > 0
    assert metrics["mcq_accuracy"] == {"value": pytest.approx(value), "n": n, "ties": ties}
    for template in ("positive", "negative", "hybrid"):
        rows = [o for o, t in zip(outcomes, templates) if t == template]
        assert metrics[f"mcq_accuracy/template={template}"]["ties"] == loop_rate(rows)[1]

    # zero-shot over 3 class prompts (two of them equal), the prompt gap's parts and its ties
    classes, negated = tied_features(3, seed=seed + 7), tied_features(3, seed=seed + 8)
    labels = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed + 1))
    gap = score_prompt_gap(image, classes, negated, labels)
    affirmative = loop_rate([loop_choice([dot(image[i], c) for c in classes], int(labels[i])) for i in range(n)])
    negative = loop_rate([loop_choice([dot(image[i], c) for c in negated], int(labels[i])) for i in range(n)])
    assert gap["zero_shot_affirmative"] == {"value": pytest.approx(affirmative[0]), "n": n, "ties": affirmative[1]}
    assert gap["zero_shot_negated"] == {"value": pytest.approx(negative[0]), "n": n, "ties": negative[1]}
    assert gap["negated_prompt_gap"] == {"value": pytest.approx(affirmative[0] - negative[0]), "n": n,
                                         "ties": affirmative[1] + negative[1]}

    # NegRefCOCOg: a different number of candidate regions per phrase
    regions = [tied_features(2 + i % 3, seed=seed + 30 + i) for i in range(n)]
    right = [i % len(r) for i, r in enumerate(regions)]
    scored = score_regions(image, regions, right)
    value, ties = loop_rate([loop_choice([dot(image[i], c) for c in regions[i]], right[i]) for i in range(n)])
    assert scored["negrefcocog_accuracy"] == {"value": pytest.approx(value), "n": n, "ties": ties}


@pytest.mark.parametrize("seed", [0, 3])
def test_retrieval_equals_a_loop_with_ties(seed):
    image, text = tied_features(7, seed=seed), tied_features(12, seed=seed + 1)
    owner = [j % 7 for j in range(12)]
    metrics = score_retrieval(image, text, owner, ks=(1, 2, 5))
    sim = np.array([[dot(i, t) for t in text] for i in image])
    planted = 0
    for k in (1, 2, 5):
        i2t, i2t_ties, t2i, t2i_ties = loop_recall(sim, owner, k)
        planted += i2t_ties + t2i_ties
        assert metrics[f"image_to_text_R@{k}"] == {"value": pytest.approx(i2t), "n": 7, "ties": i2t_ties}
        assert metrics[f"text_to_image_R@{k}"] == {"value": pytest.approx(t2i), "n": 12, "ties": t2i_ties}
    assert planted > 0
    # R@1 among groups: equal groups, so the mean of the groups' R@1 is the hits over all scored rows
    images, captions = tied_features(10, seed=seed + 2), tied_features(10, seed=seed + 3)
    among = score_recall_among(images, captions, group=5)
    per_group = [loop_recall(np.array([[dot(i, t) for t in captions[g:g + 5]] for i in images[g:g + 5]]),
                             list(range(5)), 1) for g in (0, 5)]
    assert among["image_to_text_R@1_among_5"] == {"value": pytest.approx(np.mean([g[0] for g in per_group])),
                                                  "n": 10, "ties": sum(g[1] for g in per_group)}
    assert among["text_to_image_R@1_among_5"]["ties"] == sum(g[3] for g in per_group)


def test_a_collapsed_tower_scores_zero_with_every_item_a_tie():
    """Every option equal: NegBench's answer is always option 0, so argmax would score 100 %."""
    n, k, d = 5, 4, 8
    image = F.normalize(torch.randn(n, d), dim=-1)
    same = F.normalize(torch.randn(d), dim=-1)
    options = same.expand(n, k, d).clone()
    argmax_rule = (torch.einsum("nd,nkd->nk", image, options).argmax(1) == 0).double().mean().item()
    assert argmax_rule == 1.0  # the authors' rule
    assert score_mcq(image, options, torch.zeros(n, dtype=torch.long), ["positive"] * n)["mcq_accuracy"] == {
        "value": 0.0, "n": n, "ties": n}
    assert score_pairs("ccneg_accuracy", image, same.expand(n, d), same.expand(n, d))["ccneg_accuracy"] == {
        "value": 0.0, "n": n, "ties": n}
    gap = score_prompt_gap(image, same.expand(3, d), same.expand(3, d), [0, 1, 2, 0, 1])
    assert gap["zero_shot_affirmative"] == {"value": 0.0, "n": n, "ties": n}
    assert score_regions(image, [same.expand(2, d)] * n, [0] * n)["negrefcocog_accuracy"] == {
        "value": 0.0, "n": n, "ties": n}
    retrieval = score_retrieval(image, same.expand(n, d), list(range(n)), ks=(1, n))
    assert retrieval["image_to_text_R@1"] == {"value": 0.0, "n": n, "ties": n}
    assert retrieval[f"image_to_text_R@{n}"] == {"value": 1.0, "n": n, "ties": 0}  # every caption is in the top n


def test_breakdown_counts_ties_per_group_and_flatten_keeps_values():
    hits = torch.tensor([True, False, False, True])
    ties = torch.tensor([False, True, False, False])
    metrics = breakdown("x", hits, {"k": [1, 1, 2, None]}, ties)
    assert metrics == {"x": {"value": 0.5, "n": 4, "ties": 1}, "x/k=1": {"value": 0.5, "n": 2, "ties": 1},
                       "x/k=2": {"value": 0.0, "n": 1, "ties": 0}, "x/k=unknown": {"value": 1.0, "n": 1, "ties": 0}}


def test_one_vocabulary_flattens_and_refuses_a_name_twice():
    sections = {"a": {"x": {"value": 1.0, "n": 2, "ties": 0}}, "b": {"y/cue=no": {"value": 0.5, "n": 2, "ties": 1}}}
    assert flatten(sections) == {"x": 1.0, "y/cue=no": 0.5}
    with pytest.raises(ValueError, match="appears in two sections"):
        flatten({**sections, "c": {"x": {"value": 0.0, "n": 1, "ties": 0}}})


def test_a_caption_repeated_for_several_images_is_right_for_each():
    """Identical caption texts describe each of their images: retrieving either is a hit, not a tie;
    without the texts the scorer only knows indices and counts the other image's copy as a tie."""
    image = unit([1, 0, 0], [0.9, 0.1, 0], [0, 0, 1])
    text = unit([1, 0, 0], [1, 0, 0], [0, 0, 1])  # captions 0 and 1 are the same sentence, for images 0 and 1
    texts = ["a red circle", "a red circle", "a blue square"]
    by_text = score_retrieval(image, text, [0, 1, 2], ks=(1,), texts=texts)
    by_index = score_retrieval(image, text, [0, 1, 2], ks=(1,))
    assert by_text["image_to_text_R@1"] == {"value": 1.0, "n": 3, "ties": 0}
    assert by_text["text_to_image_R@1"] == {"value": 1.0, "n": 3, "ties": 0}  # caption 1 finds image 0: right too
    assert by_index["image_to_text_R@1"] == {"value": pytest.approx(1 / 3), "n": 3, "ties": 2}
    assert by_index["text_to_image_R@1"] == {"value": pytest.approx(2 / 3), "n": 3, "ties": 0}
