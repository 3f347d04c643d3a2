"""Negation and retrieval metrics on L2-normalised features (REFERENCE.md, "Evaluation protocols"):
the one place every score is computed, for the synthetic suite, the benchmarks and the causal checks.

Every function refuses unnormalised features: a published benchmark computed similarities on raw
features, which silently changes the ranking.

The tie rule, the same in every scorer: an item counts as correct only when its answer STRICTLY
beats every competitor: a pair when the true caption scores more than the false one, a
multiple-choice item (NegBench MCQ, zero-shot classes, NegRefCOCOg regions) when the correct
option scores more than every other option, a retrieval query at k when fewer than k wrong
candidates score at least as much as its best correct one. The papers define correctness by a
strict inequality, but the authors' code takes argmax, which breaks a tie towards the first
index: NegBench's and NegRefCOCOg's correct answer is always option 0, so a collapsed text tower
(every option equal) would score 100 %. Here it scores 0, and its items are counted as ties. Two
scores within TIE_TOLERANCE (1e-6) are equal: identical features give identical cosines only up
to float32 rounding, which a matrix product does not do the same way at every position.

The key vocabulary, shared by every evaluator: `score_*` return Metrics, {name: {"value", "n",
"ties"}}: value, the number of items behind it, and how many of them a tie decided (items the
argmax rule would count as correct and the strict rule does not; for a metric derived from
others, such as the prompt gap or a mean over folds, the ties of the metrics it is derived from).
Names such as "ccneg_accuracy", "scope_accuracy", "mcq_accuracy", "image_to_text_R@1",
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
_QUERY_CHUNK = 1024  # retrieval queries ranked at once (bounds the memory of the comparison masks)
TIE_TOLERANCE = 1e-6  # cosines this close are a tie (float32 rounding of identical features is ~1e-7)


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


# --- outcomes: per item, right (strictly) and tied ------------------------------------------------


def choice_outcomes(scores: torch.Tensor, correct: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `scores` [n, k]: (right, tied) booleans [n].

    right: scores[i, correct[i]] exceeds every other entry of row i by more than TIE_TOLERANCE; tied:
    it is within TIE_TOLERANCE of the best other entry (the argmax rule would break that tie one way
    or the other). Entries of -inf are padding (rows with fewer options): they never tie.
    """
    correct = torch.as_tensor(correct, dtype=torch.long, device=scores.device)
    if scores.ndim != 2 or scores.shape[1] < 2 or correct.shape != (scores.shape[0],):
        raise ValueError(f"need scores [n, k >= 2] and one correct index per row, got {tuple(scores.shape)} "
                         f"and {tuple(correct.shape)}")
    if ((correct < 0) | (correct >= scores.shape[1])).any():
        raise ValueError(f"correct indices must lie in 0..{scores.shape[1] - 1}")
    right_score = scores.gather(1, correct[:, None]).squeeze(1)
    best_other = scores.scatter(1, correct[:, None], float("-inf")).max(dim=1).values
    gap = right_score - best_other
    return gap > TIE_TOLERANCE, (gap.abs() <= TIE_TOLERANCE) & torch.isfinite(right_score)


def pair_outcomes(image: torch.Tensor, positive: torch.Tensor,
                  negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (<image, positive> > <image, negative>, the two equal)."""
    for tensor, name in ((image, "image"), (positive, "positive"), (negative, "negative")):
        check_normalized(tensor, name)
    if not image.shape == positive.shape == negative.shape:
        raise ValueError(f"shapes differ: image {tuple(image.shape)}, positive {tuple(positive.shape)}, "
                         f"negative {tuple(negative.shape)}")
    return choice_outcomes(torch.stack([(image * positive).sum(-1), (image * negative).sum(-1)], dim=1),
                           torch.zeros(len(image), dtype=torch.long))


def pair_wins(image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Per-row booleans behind `pair_accuracy`, for breakdowns by cue word or K."""
    return pair_outcomes(image, positive, negative)[0]


def pair_accuracy(image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Fraction of rows i with <image_i, positive_i> > <image_i, negative_i> (strictly).

    CC-Neg-style accuracy uses (true caption, presence-negated caption); scope accuracy uses the
    shortcut-proof pair (correct "A and no X", wrong "A and no B"); SugarCREPE and VALSE use
    (caption, negative caption / foil).
    """
    return float(pair_wins(image, positive, negative).float().mean())


def zero_shot_outcomes(image: torch.Tensor, class_text: torch.Tensor,
                       labels: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (its class prompt strictly beats every other class prompt, it ties the best other)."""
    check_normalized(image, "image")
    check_normalized(class_text, "class_text")
    return choice_outcomes(image @ class_text.T, labels)


def zero_shot_accuracy(image: torch.Tensor, class_text: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Top-1 accuracy of classifying each image by its most similar class prompt (a tie is wrong)."""
    return float(zero_shot_outcomes(image, class_text, labels)[0].float().mean())


def _same_text_pairs(owner: torch.Tensor, texts: Sequence[str] | None) -> tuple[list[int], list[int]]:
    """(images, captions) of the extra correct pairs that identical caption texts make: a caption
    written word for word for several images describes each of them (the synthetic world, and some
    real datasets, repeat captions); a retrieval of one of them is right, not a tie."""
    if texts is None:
        return [], []
    if len(texts) != len(owner):
        raise ValueError(f"{len(texts)} caption texts for {len(owner)} captions")
    by_text: dict[str, list[int]] = defaultdict(list)
    for j, text in enumerate(texts):
        by_text[text].append(j)
    images, captions = [], []
    for group in by_text.values():
        owners = {int(owner[j]) for j in group}
        if len(owners) > 1:
            for j in group:
                for i in owners - {int(owner[j])}:
                    images.append(i)
                    captions.append(j)
    return images, captions


def _rank_outcomes(
    similarity: torch.Tensor, correct: torch.Tensor, ks: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query (row) and k: (hit, tie) under the tie rule. A query's best correct candidate ranks behind
    every wrong candidate scoring at least as much (within TIE_TOLERANCE): a hit at k when fewer than k
    such wrong candidates exist; a tie when that fails but fewer than k wrong candidates score strictly more."""
    best = similarity.masked_fill(~correct, float("-inf")).max(dim=1, keepdim=True).values
    wrong_at_least = ((similarity >= best - TIE_TOLERANCE) & ~correct).sum(1)
    wrong_above = ((similarity > best + TIE_TOLERANCE) & ~correct).sum(1)
    hit = torch.stack([wrong_at_least < k for k in ks], dim=1)
    tie = torch.stack([(wrong_above < k) for k in ks], dim=1) & ~hit
    return hit.long().cpu(), tie.long().cpu()


def among_outcomes(images: torch.Tensor, captions: torch.Tensor, group: int,
                   texts: Sequence[str] | None = None) -> torch.Tensor:
    """Per scene of the whole groups: 1 when its own caption (or one with the same text) is the most similar
    of its group of `group` (image -> text R@1 among `group`, the tie rule as `recall_among`)."""
    check_normalized(images, "images")
    check_normalized(captions, "captions")
    outcomes = []
    for g in range(len(images) // group):
        part = slice(g * group, (g + 1) * group)
        owner = torch.arange(group)
        correct = owner[None, :] == owner[:, None]
        extra_images, extra_captions = _same_text_pairs(owner, None if texts is None else texts[part])
        correct[extra_images, extra_captions] = True
        hit, _ = _rank_outcomes(images[part] @ captions[part].T, correct.to(images.device), (1,))
        outcomes.append(hit[:, 0])
    return torch.cat(outcomes) if outcomes else torch.zeros(0, dtype=torch.long)


def _recall_counts(image: torch.Tensor, text: torch.Tensor, text_to_image: Sequence[int] | torch.Tensor | None,
                   ks: Sequence[int], texts: Sequence[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """name -> (hits, ties, queries) for image->text and text->image R@k under the tie rule.

    A query's best correct candidate ranks behind every wrong candidate scoring at least as much
    (ties, within TIE_TOLERANCE, broken against the query): a hit at k when fewer than k such wrong
    candidates exist; a tie when that fails but fewer than k wrong candidates score strictly more.
    Correct pairs: caption j and the image text_to_image[j]; with `texts` (the caption strings) also
    every image that has a caption with the same text.
    """
    check_normalized(image, "image")
    check_normalized(text, "text")
    owner = torch.arange(len(text)) if text_to_image is None else torch.as_tensor(text_to_image, dtype=torch.long)
    if len(owner) != len(text):
        raise ValueError(f"text_to_image has {len(owner)} entries for {len(text)} captions")
    extra_images, extra_captions = (torch.tensor(v, dtype=torch.long, device=image.device)
                                    for v in _same_text_pairs(owner, texts))
    owner = owner.to(image.device)
    counts: dict[str, list[int]] = {}
    for direction, queries, keys in (("image_to_text", image, text), ("text_to_image", text, image)):
        hits, ties = torch.zeros(len(ks), dtype=torch.long), torch.zeros(len(ks), dtype=torch.long)
        for start in range(0, len(queries), _QUERY_CHUNK):
            stop = min(start + _QUERY_CHUNK, len(queries))
            rows = torch.arange(start, stop, device=image.device)
            similarity = queries[rows] @ keys.T
            if direction == "image_to_text":  # image queries: any of the image's captions is correct
                correct = owner[None, :] == rows[:, None]
                query, key = extra_images, extra_captions
            else:  # caption queries: the image it describes
                correct = torch.arange(len(keys), device=image.device)[None, :] == owner[rows][:, None]
                query, key = extra_captions, extra_images
            inside = (query >= start) & (query < stop)
            correct[query[inside] - start, key[inside]] = True
            hit, tie = _rank_outcomes(similarity, correct, ks)
            hits += hit.sum(0)
            ties += tie.sum(0)
        for i, k in enumerate(ks):
            counts[f"{direction}_R@{k}"] = [int(hits[i]), int(ties[i]), len(queries)]
    order = [f"{d}_R@{k}" for k in ks for d in ("image_to_text", "text_to_image")]
    return {name: tuple(counts[name]) for name in order}


def recall_at_k(
    image: torch.Tensor,
    text: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    texts: Sequence[str] | None = None,
) -> dict[str, float]:
    """Image->text and text->image recall@k.

    text_to_image[j] is the index of the image that caption j describes (default: j, one caption
    per image). An image query counts as a hit when any of its captions is in the top k, ties with
    wrong candidates broken against it. texts: the caption strings, so that a caption repeated word
    for word for several images is right for each of them.
    """
    return {name: hits / n for name, (hits, _, n) in _recall_counts(image, text, text_to_image, ks, texts).items()}


def _among_counts(image: torch.Tensor, caption: torch.Tensor, group: int,
                  texts: Sequence[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """name -> (hits, ties, scored rows) of R@1 among `group`, over the whole groups of `group` rows."""
    n_groups = len(image) // group
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for g in range(n_groups):
        part = slice(g * group, (g + 1) * group)
        for name, counts in _recall_counts(image[part], caption[part], None, (1,),
                                           None if texts is None else texts[part]).items():
            totals[f"{name}_among_{group}"] = [a + b for a, b in zip(totals[f"{name}_among_{group}"], counts)]
    return {name: tuple(counts) for name, counts in totals.items()}


def recall_among(images: torch.Tensor, captions: torch.Tensor, group: int,
                 texts: Sequence[str] | None = None) -> dict[str, float]:
    """R@1 with `group` candidates: the mean over consecutive groups of `group` image-caption pairs
    (the groups are equal, so the mean of their R@1 is the hits over all scored rows)."""
    if len(images) < group:
        raise ValueError(f"need at least {group} scenes for R@1 among {group}, got {len(images)}")
    return {name: hits / n for name, (hits, _, n) in _among_counts(images, captions, group, texts).items()}


# --- scores in the shared vocabulary ---------------------------------------------------------------


def metric(value: float, n: int, ties: int = 0) -> dict[str, float | int]:
    """One metric entry: its value, the items behind it, and how many of them a tie decided."""
    return {"value": float(value), "n": int(n), "ties": int(ties)}


def breakdown(name: str, hits: torch.Tensor, groups: dict[str, Sequence],
              ties: torch.Tensor | None = None) -> Metrics:
    """`name` = mean of `hits` over all rows, and `name/<group>=<value>` over the rows of each value;
    every entry counts its rows whose outcome a tie decided (`ties`, per row; none when None).

    A group whose values are all None (a source without K, say) gives no breakdown; otherwise
    rows with None are reported as `<group>=unknown`, so that a breakdown always adds up to `n`.
    """
    hits = hits.bool().cpu()
    ties = torch.zeros_like(hits) if ties is None else ties.bool().cpu()
    metrics = {name: metric(hits.double().mean(), len(hits), int(ties.sum()))}
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
            chosen = torch.tensor(rows[value])
            metrics[f"{name}/{group}={value}"] = metric(hits[chosen].double().mean(), len(chosen),
                                                        int(ties[chosen].sum()))
    return metrics


def score_pairs(name: str, image: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                groups: dict[str, Sequence] | None = None) -> Metrics:
    """Fraction of rows with <image, positive> > <image, negative> (strictly), with breakdowns."""
    hits, ties = pair_outcomes(image, positive, negative)
    return breakdown(name, hits, groups or {}, ties)


def score_negation(image: torch.Tensor, caption: torch.Tensor, presence: torch.Tensor,
                   groups: dict[str, Sequence] | None = None, *, absence: torch.Tensor | None = None,
                   absence_rows: Sequence[int] | None = None) -> Metrics:
    """The two pair metrics of negation examples (REFERENCE.md), with breakdowns by `groups` (cue, K):

        ccneg_accuracy    s(I, caption) > s(I, presence-negated caption), every row
        absence_accuracy  s(I, absence-negated caption) > s(I, presence-negated caption), on `absence_rows`
                          (default: every row) whose absence-negated captions' features are `absence`

    The one scorer of CC-Neg-style accuracy: the synthetic suite, the causal check on real data and the
    evaluation of negation files all call it."""
    metrics = score_pairs("ccneg_accuracy", image, caption, presence, groups)
    if absence is not None:
        rows = (torch.arange(len(image)) if absence_rows is None
                else torch.tensor(list(absence_rows), dtype=torch.long))
        if len(rows):
            chosen = {key: [values[i] for i in rows.tolist()] for key, values in (groups or {}).items()}
            metrics.update(score_pairs("absence_accuracy", image[rows], absence, presence[rows], chosen))
    return metrics


def score_choices(name: str, scores: torch.Tensor, correct: Sequence[int] | torch.Tensor,
                  groups: dict[str, Sequence] | None = None) -> Metrics:
    """Multiple choice on precomputed scores [n, k] (-inf pads rows with fewer options): an item is
    right when its correct option strictly beats every other; with breakdowns."""
    hits, ties = choice_outcomes(scores, correct)
    return breakdown(name, hits, groups or {}, ties)


def score_mcq(image: torch.Tensor, options: torch.Tensor, correct: Sequence[int] | torch.Tensor,
              templates: Sequence[str | None]) -> Metrics:
    """NegBench MCQ: an item is right when its correct option strictly beats every other option;
    overall and by the template type of the correct answer. image [n, d], options [n, k, d]."""
    check_normalized(image, "image")
    check_normalized(options, "options")
    return score_choices("mcq_accuracy", torch.einsum("nd,nkd->nk", image, options), correct,
                         {"template": templates})


def score_retrieval(image: torch.Tensor, text: torch.Tensor, text_to_image: Sequence[int],
                    ks: Sequence[int] = (1, 5, 10), texts: Sequence[str] | None = None) -> Metrics:
    """Image->text and text->image R@k (REFERENCE.md retrieval); n = queries of each direction.
    texts: the caption strings (a caption repeated for several images is right for each)."""
    counts = _recall_counts(image, text, text_to_image, ks, texts)
    return {name: metric(hits / n, n, ties) for name, (hits, ties, n) in counts.items()}


def score_recall_among(image: torch.Tensor, caption: torch.Tensor, group: int = 100,
                       texts: Sequence[str] | None = None) -> Metrics:
    """Image->text and text->image R@1 among `group` candidates: the mean over consecutive groups of
    `group` image-caption pairs (the retrieval that negation fine-tuning must not lose). Rows past the
    last whole group are not scored; n counts the scored rows; fewer than `group` rows give no metric.
    texts: the caption strings (a caption repeated for several scenes is right for each)."""
    counts = _among_counts(image, caption, group, texts)
    return {name: metric(hits / n, n, ties) for name, (hits, ties, n) in counts.items()}


def score_prompt_gap(image: torch.Tensor, affirmative: torch.Tensor, negated: torch.Tensor,
                     labels: Sequence[int], *, classes: str | None = None) -> Metrics:
    """Negated class prompts (REFERENCE.md): top-1 with the affirmative prompts minus top-1 with the
    negated prompts, over the same images. A model that ignores "not" has a gap near 0.
    `classes` names a class set other than the main one ("shape" -> "zero_shot_affirmative/classes=shape")."""
    labels = torch.as_tensor(labels)
    positive, positive_ties = zero_shot_outcomes(image, affirmative, labels)
    negative, negative_ties = zero_shot_outcomes(image, negated, labels)
    n, suffix = len(labels), "" if classes is None else f"/classes={classes}"
    p_ties, n_ties = int(positive_ties.sum()), int(negative_ties.sum())
    p_value, n_value = float(positive.double().mean()), float(negative.double().mean())
    return {f"zero_shot_affirmative{suffix}": metric(p_value, n, p_ties),
            f"zero_shot_negated{suffix}": metric(n_value, n, n_ties),
            f"negated_prompt_gap{suffix}": metric(p_value - n_value, n, p_ties + n_ties)}


def score_regions(phrase: torch.Tensor, regions: Sequence[torch.Tensor], correct: Sequence[int],
                  groups: dict[str, Sequence] | None = None) -> Metrics:
    """NegRefCOCOg (NegationCLIP): pick the region a referring phrase describes among the image's
    candidate boxes. phrase [n, d]; regions[i] [k_i, d] (one feature per candidate crop). An item is
    right when its referred region's crop strictly beats every other crop."""
    check_normalized(phrase, "phrase")
    if len(regions) != len(phrase) or len(correct) != len(phrase):
        raise ValueError(f"{len(phrase)} phrases, {len(regions)} region sets, {len(correct)} answers")
    width = max(len(r) for r in regions)
    scores = torch.full((len(phrase), width), float("-inf"))
    for i, crops in enumerate(regions):
        check_normalized(crops, "regions")
        scores[i, :len(crops)] = (crops @ phrase[i]).float().cpu()
    return score_choices("negrefcocog_accuracy", scores, correct, groups)


def flatten(sections: Mapping[str, Metrics]) -> dict[str, float]:
    """{name: value} over every section (names are unique across a result's sections)."""
    flat: dict[str, float] = {}
    for section, metrics in sections.items():
        for name, entry in metrics.items():
            if name in flat:
                raise ValueError(f"metric {name!r} appears in two sections (the second in {section!r})")
            flat[name] = float(entry["value"])
    return flat
