"""Negation and retrieval metrics on L2-normalised features (REFERENCE.md, "Evaluation protocols"):
the one place every score is computed, for the synthetic suite, the benchmarks and the causal checks.

Every function refuses unnormalised features: a published benchmark computed similarities on raw
features, which silently changes the ranking. Ties count as failures everywhere: a pair is won only
with a strictly larger similarity, an MCQ item only when the correct caption strictly beats every
other (NegBench's correct answer is always option 0, so breaking ties towards the first option would
reward a model that gives every caption the same score).

The key vocabulary, shared by every evaluator: `score_*` return Metrics, {name: {"value", "n"}},
with names such as "ccneg_accuracy", "scope_accuracy", "mcq_accuracy", "image_to_text_R@1",
"image_to_text_R@1_among_100", "zero_shot_affirmative", "negated_prompt_gap"; a breakdown over a
group adds "<name>/<group>=<value>" (e.g. "scope_accuracy/cue=never", "mcq_accuracy/template=hybrid",
"zero_shot_affirmative/classes=shape"). `flatten` turns sections of Metrics into {name: value}.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import torch

Metrics = dict[str, dict[str, float | int]]


# Row norms may differ from 1 by this much: float32 rounding of a normalised vector is ~1e-7, half
# precision rounds each coordinate to ~3 significant digits, hence the looser bounds.
_NORM_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 2e-2}
_DEFAULT_TOLERANCE = 1e-3


def check_normalized(features: torch.Tensor, name: str) -> None:
    """Raise ValueError unless every row (last dimension) of `features` has unit L2 norm."""
    if not isinstance(features, torch.Tensor) or features.ndim < 1 or features.shape[-1] == 0:
        raise ValueError(f"{name} must be a non-empty feature tensor, got {type(features).__name__}")
    norms = features.detach().float().norm(dim=-1)
    tolerance = _NORM_TOLERANCE.get(features.dtype, _DEFAULT_TOLERANCE)
    worst = (norms - 1).abs().max() if norms.numel() else torch.tensor(0.0)
    if not torch.isfinite(norms).all() or worst > tolerance:
        raise ValueError(
            f"{name} is not L2-normalised: row norms range {norms.min().item():.4g}..{norms.max().item():.4g} "
            f"(allowed 1 +- {tolerance:g}); pass F.normalize(features, dim=-1). Similarities of "
            "unnormalised features are not cosine similarities."
        )


def pair_accuracy(image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Fraction of rows i with <image_i, positive_i> > <image_i, negative_i>.

    CC-Neg-style accuracy uses (true caption, presence-negated caption); scope accuracy uses the
    shortcut-proof pair (correct "A and no X", wrong "A and no B"); SugarCREPE and VALSE use
    (caption, negative caption / foil).
    """
    return float(pair_wins(image, positive, negative).float().mean())


def pair_wins(image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-row booleans behind `pair_accuracy`, for breakdowns by cue word or K."""
    for tensor, name in ((image, "image"), (positive, "positive"), (negative, "negative")):
        check_normalized(tensor, name)
    if not image.shape == positive.shape == negative.shape:
        raise ValueError(f"shapes differ: image {tuple(image.shape)}, positive {tuple(positive.shape)}, negative {tuple(negative.shape)}")
    return (image * positive).sum(-1) > (image * negative).sum(-1)


def recall_at_k(
    image: torch.Tensor,
    text: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image->text and text->image recall@k.

    text_to_image[j] is the index of the image that caption j describes (default: j, one caption
    per image). An image query counts as a hit when any of its captions is in the top k.
    """
    check_normalized(image, "image")
    check_normalized(text, "text")
    owner = torch.arange(len(text)) if text_to_image is None else torch.as_tensor(text_to_image)
    if len(owner) != len(text):
        raise ValueError(f"text_to_image has {len(owner)} entries for {len(text)} captions")
    similarity = image @ text.T  # [n_images, n_texts]
    results: dict[str, float] = {}
    for k in ks:
        top_texts = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # [n_images, k]
        image_hits = (owner[top_texts] == torch.arange(len(image))[:, None]).any(dim=1)
        top_images = similarity.T.topk(min(k, similarity.shape[0]), dim=1).indices  # [n_texts, k]
        text_hits = (top_images == owner[:, None]).any(dim=1)
        results[f"image_to_text_R@{k}"] = float(image_hits.float().mean())
        results[f"text_to_image_R@{k}"] = float(text_hits.float().mean())
    return results


def zero_shot_accuracy(image: torch.Tensor, class_text: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Top-1 accuracy of classifying each image by its most similar class prompt."""
    check_normalized(image, "image")
    check_normalized(class_text, "class_text")
    predictions = (image @ class_text.T).argmax(dim=1)
    return float((predictions == torch.as_tensor(labels)).float().mean())


def recall_among(images: torch.Tensor, captions: torch.Tensor, group: int) -> dict[str, float]:
    """R@1 with `group` candidates: the mean over consecutive groups of `group` image-caption pairs."""
    n_groups = len(images) // group
    if n_groups == 0:
        raise ValueError(f"need at least {group} scenes for R@1 among {group}, got {len(images)}")
    totals: dict[str, float] = defaultdict(float)
    for g in range(n_groups):
        part = slice(g * group, (g + 1) * group)
        for key, value in recall_at_k(images[part], captions[part], ks=(1,)).items():
            totals[f"{key}_among_{group}"] += value / n_groups
    return dict(totals)


# --- scores in the shared vocabulary ---------------------------------------------------------------


def metric(value: float, n: int) -> dict[str, float | int]:
    return {"value": float(value), "n": int(n)}


def breakdown(name: str, hits: torch.Tensor, groups: dict[str, Sequence]) -> Metrics:
    """`name` = mean of `hits` over all rows, and `name/<group>=<value>` over the rows of each value.

    A group whose values are all None (a source without K, say) gives no breakdown; otherwise
    rows with None are reported as `<group>=unknown`, so that a breakdown always adds up to `n`.
    """
    hits = hits.bool().cpu()
    metrics = {name: metric(hits.double().mean(), len(hits))}
    for group, values in groups.items():
        values = list(values)
        if len(values) != len(hits):
            raise ValueError(f"{group}: {len(values)} labels for {len(hits)} rows")
        if all(value is None for value in values):
            continue
        rows: dict[Any, list[int]] = defaultdict(list)
        for index, value in enumerate(values):
            rows["unknown" if value is None else value].append(index)
        for value in sorted(rows, key=lambda v: (isinstance(v, str), v)):
            chosen = hits[torch.tensor(rows[value])]
            metrics[f"{name}/{group}={value}"] = metric(chosen.double().mean(), len(chosen))
    return metrics


def score_pairs(name: str, image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                groups: dict[str, Sequence] | None = None) -> Metrics:
    """Fraction of rows with <image, positive> > <image, negative> (strictly), with breakdowns."""
    return breakdown(name, pair_wins(image, positive, negative), groups or {})


def score_mcq(image: torch.Tensor, options: torch.Tensor, correct: torch.Tensor,
              templates: Sequence[str | None]) -> tuple[Metrics, int]:
    """NegBench MCQ: an item is right when its correct option strictly beats every other option.

    image [n, d], options [n, k, d], correct [n]. Returns (metrics by template, number of items
    whose best score was tied between the correct option and another).
    """
    check_normalized(image, "image")
    check_normalized(options, "options")
    scores = torch.einsum("nd,nkd->nk", image, options)
    correct = torch.as_tensor(correct, dtype=torch.long)
    right_score = scores.gather(1, correct[:, None]).squeeze(1)
    others = scores.scatter(1, correct[:, None], float("-inf"))
    best_other = others.max(dim=1).values
    hits = right_score > best_other
    ties = int((right_score == best_other).sum())
    return breakdown("mcq_accuracy", hits, {"template": templates}), ties


def score_retrieval(image: torch.Tensor, text: torch.Tensor, text_to_image: Sequence[int],
                    ks: Sequence[int] = (1, 5, 10)) -> Metrics:
    """Image->text and text->image R@k (REFERENCE.md retrieval); n = queries of each direction."""
    recalls = recall_at_k(image, text, text_to_image, ks)
    return {name: metric(value, len(image) if name.startswith("image_to_text") else len(text))
            for name, value in recalls.items()}


def score_recall_among(image: torch.Tensor, caption: torch.Tensor, group: int = 100) -> Metrics:
    """Image->text and text->image R@1 among `group` candidates: the mean over consecutive groups of
    `group` image-caption pairs (the retrieval that negation fine-tuning must not lose). Rows past the
    last whole group are not scored; n counts the scored rows; fewer than `group` rows give no metric."""
    scored = len(image) // group * group
    if scored == 0:
        return {}
    return {name: metric(value, scored) for name, value in recall_among(image, caption, group).items()}


def score_prompt_gap(image: torch.Tensor, affirmative: torch.Tensor, negated: torch.Tensor,
                     labels: Sequence[int], *, classes: str | None = None) -> Metrics:
    """Negated class prompts (REFERENCE.md): top-1 with the affirmative prompts minus top-1 with the
    negated prompts, over the same images. A model that ignores "not" has a gap near 0.
    `classes` names a class set other than the main one ("shape" -> "zero_shot_affirmative/classes=shape")."""
    labels = torch.as_tensor(labels)
    positive = zero_shot_accuracy(image, affirmative, labels)
    negative = zero_shot_accuracy(image, negated, labels)
    n, suffix = len(labels), "" if classes is None else f"/classes={classes}"
    return {f"zero_shot_affirmative{suffix}": metric(positive, n), f"zero_shot_negated{suffix}": metric(negative, n),
            f"negated_prompt_gap{suffix}": metric(positive - negative, n)}


def flatten(sections: Mapping[str, Metrics]) -> dict[str, float]:
    """{name: value} over every section (names are unique across a result's sections)."""
    flat: dict[str, float] = {}
    for section, metrics in sections.items():
        for name, entry in metrics.items():
            if name in flat:
                raise ValueError(f"metric {name!r} appears in two sections (the second in {section!r})")
            flat[name] = float(entry["value"])
    return flat
