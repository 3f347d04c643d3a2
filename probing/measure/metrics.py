"""Negation and retrieval metrics on L2-normalised features (REFERENCE.md, "Evaluation protocols").

Every function refuses unnormalised features: a published benchmark computed similarities on raw
features, which silently changes the ranking.
"""
from __future__ import annotations

from typing import Sequence

import torch


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


def multiple_choice_accuracy(image: torch.Tensor, options: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Per-item correctness: image [n, d], options [n, k, d], correct [n] option index."""
    check_normalized(image, "image")
    check_normalized(options, "options")
    scores = torch.einsum("nd,nkd->nk", image, options)
    return scores.argmax(dim=1) == correct


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
