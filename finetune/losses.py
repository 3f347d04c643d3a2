"""Negation fine-tuning losses: the single definition used by training and by the probing code.

Notation (docs: /work/shared/REFERENCE.md): image features I, true caption c, presence-negated
caption c' (negates something the image shows: false), absence-negated caption a (negates
something the image lacks: true), distractor image I' (the subject without the negated object, so
c' is true for it). Every feature tensor is [M, d], row i of each describing example i, and must
be L2-normalised; t = exp(logit_scale) is the similarity scale, s(x, y) = t <x, y>. NegBench's MCQ
loss reads options [M, K, d] (the K candidate captions of image i) and the index of the right one.

CE(X -> [Y; Z]) is the mean row-wise softmax cross-entropy of the M x 2M similarity matrix
t X [Y; Z]^T with targets on the diagonal (row i's target is Y_i).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from finetune.vocabulary import (
    GRADNORM_LOSSES,
    LOSS_KEYWORDS,
    LOSS_NAMES,
    LOSS_OPTIONS,
    MCQ_LOSSES,
    MIX_OPTIONS,
    MIX_PARTS,
    OMNI_MARGIN,
)
from probing.contrastive import check_features, clip_loss, cross_entropy, infonce
from probing.metrics import check_normalized

Tensor = torch.Tensor

def _pair_ce(image: Tensor, true: Tensor, false: Tensor, scale: Tensor | float) -> Tensor:
    """mean_i of the 2-way cross-entropy over (s(I_i, true_i), s(I_i, false_i)), target true_i."""
    logits = scale * torch.stack([(image * true).sum(-1), (image * false).sum(-1)], dim=1)
    return F.cross_entropy(logits, torch.zeros(image.shape[0], dtype=torch.long, device=image.device))


def conclip_loss(
    image: Tensor,
    caption: Tensor,
    negated: Tensor,
    distractor: Tensor | None = None,
    *,
    scale: Tensor | float,
    terms: tuple[int, ...] = (1, 2, 3),
) -> Tensor:
    """CoN-CLIP (Singh et al.), `negated` = presence-negated captions c'.

    With distractor images I':  L = 1/3 [CE(I -> [c; c']) + CE(c -> [I; I']) + CE(I' -> [c'; c])].
    Without them (two-term form): L = 1/2 [CE(I -> [c; c']) + CE(c -> I)].
    `terms` picks which of the three terms are used (averaged over the picked ones). Without
    distractors term 2 is CE(c -> I) and term 3, which needs I', is left out.
    """
    check_features(image=image, caption=caption, negated=negated, distractor=distractor)
    picked = set(terms)
    if not picked or not picked <= {1, 2, 3}:
        raise ValueError(f"terms must be a non-empty subset of (1, 2, 3), got {terms!r}")
    if distractor is None:
        picked.discard(3)
        if not picked:
            raise ValueError("CoN-CLIP term 3 is CE(I' -> [c'; c]) and needs distractor image features")
    values = []
    if 1 in picked:
        values.append(cross_entropy(image, torch.cat([caption, negated]), scale))
    if 2 in picked:
        images = image if distractor is None else torch.cat([image, distractor])
        values.append(cross_entropy(caption, images, scale))
    if 3 in picked:
        values.append(cross_entropy(distractor, torch.cat([negated, caption]), scale))
    return torch.stack(values).mean()


def omni_presence_loss(image: Tensor, caption: Tensor, negated: Tensor, *, scale: Tensor | float) -> Tensor:
    """Omni-NegCLIP presence loss, `negated` = presence-negated captions c'.

    L_pres = 1/3 [CE(I -> [c; c']) + CE(c -> I) + mean_i CE_2way((s(I_i, c_i), s(I_i, c'_i)), target c_i)].
    """
    check_features(image=image, caption=caption, negated=negated)
    pairwise = _pair_ce(image, caption, negated, scale)
    return (cross_entropy(image, torch.cat([caption, negated]), scale) + cross_entropy(caption, image, scale)
            + pairwise) / 3


def omni_absence_loss(
    image: Tensor,
    caption: Tensor,
    absence_negated: Tensor,
    *,
    scale: Tensor | float,
    lambda_o: float = 1.0,
    lambda_t: float = 1.0,
    margin: float = OMNI_MARGIN,
) -> Tensor:
    """Omni-NegCLIP absence loss, `absence_negated` = true captions a negating an absent object.

    L_abs = 1/2 [CE(I -> a) + CE(a -> I)] + lambda_o 1/2 [CE(I -> c) + CE(c -> I)]
            + lambda_t mean_i max(0, cos(c_i, a_i) + margin)
    The hinge pushes cos(c_i, a_i) below -margin (the cosine is not scaled by t). The default margin
    0.9 is the authors' training setting (their --margin; 0.2 is only a function default in their code).
    """
    check_features(image=image, caption=caption, absence_negated=absence_negated)
    hinge = F.relu((caption * absence_negated).sum(-1) + margin).mean()
    return infonce(image, absence_negated, scale) + lambda_o * infonce(image, caption, scale) + lambda_t * hinge


def omni_negclip_loss(
    image: Tensor,
    caption: Tensor,
    presence_negated: Tensor,
    absence_negated: Tensor,
    *,
    scale: Tensor | float,
    lam: float = 1.0,
    lambda_o: float = 1.0,
    lambda_t: float = 1.0,
    margin: float = OMNI_MARGIN,
) -> Tensor:
    """Omni-NegCLIP on one batch: L = L_pres + lam * L_abs (see omni_presence_loss / omni_absence_loss).
    The authors compute the two halves on different batches of the same step (L_pres on CC-Neg, L_abs on
    COCO): the trainer does that with `omni_presence` as the loss and `omni_absence` as the second
    source's loss, weighted lam (finetune.train.TrainConfig.second_loss)."""
    presence = omni_presence_loss(image, caption, presence_negated, scale=scale)
    absence = omni_absence_loss(
        image, caption, absence_negated, scale=scale, lambda_o=lambda_o, lambda_t=lambda_t, margin=margin
    )
    return presence + lam * absence


def negationclip_loss(image: Tensor, absence_negated: Tensor, *, scale: Tensor | float) -> Tensor:
    """NegationCLIP (Park et al.): CLIP loss on absence-negated captions, 1/2 [CE(I -> a) + CE(a -> I)]."""
    check_features(image=image, absence_negated=absence_negated)
    return infonce(image, absence_negated, scale)


def negbench_mcq_loss(image: Tensor, options: Tensor, correct: Tensor, *, scale: Tensor | float) -> Tensor:
    """NegBench's MCQ loss (Alhamoud et al.): the cross-entropy of choosing the right caption among the
    image's K options, mean_i CE(t <I_i, o_ik>_k, correct_i). options [M, K, d], correct [M] (indices)."""
    check_features(image=image)
    if options.ndim != 3 or options.shape[0] != image.shape[0] or options.shape[2] != image.shape[1]:
        raise ValueError(f"options must be [M, K, d] for image [M, d] = {tuple(image.shape)}, "
                         f"got {tuple(options.shape)}")
    check_normalized(options, "options")
    correct = torch.as_tensor(correct, dtype=torch.long, device=image.device)
    if correct.shape != (image.shape[0],) or ((correct < 0) | (correct >= options.shape[1])).any():
        raise ValueError(f"correct must hold one option index in 0..{options.shape[1] - 1} per image")
    return F.cross_entropy(scale * torch.einsum("md,mkd->mk", image, options), correct)


def tripletclip_loss(
    image: Tensor, caption: Tensor, negated: Tensor, distractor: Tensor, *, scale: Tensor | float
) -> Tensor:
    """TripletCLIP: NC(I, c, n) = 1/2 [CE(I -> [c; n]) + CE(c -> I)]; L = NC(I, c, c') + NC(I', c', c)."""
    check_features(image=image, caption=caption, negated=negated, distractor=distractor)

    def nc(images: Tensor, true: Tensor, false: Tensor) -> Tensor:
        return 0.5 * (cross_entropy(images, torch.cat([true, false]), scale) + cross_entropy(true, images, scale))

    return nc(image, caption, negated) + nc(distractor, negated, caption)


def negation_mix_loss(
    image: Tensor,
    caption: Tensor,
    presence_negated: Tensor,
    absence_negated: Tensor,
    distractor: Tensor | None = None,
    *,
    scale: Tensor | float,
    conclip: float = 1.0,
    negationclip: float = 1.0,
    clip: float = 1.0,
    tripletclip: float = 0.0,
    omni: float = 0.0,
    absence_vs_presence: float = 0.0,
    scope_pair: float = 0.0,
    terms: Sequence[int] = (1, 2, 3),
    omni_lam: float = 1.0,
    omni_lambda_o: float = 1.0,
    omni_lambda_t: float = 1.0,
    omni_margin: float = OMNI_MARGIN,
) -> Tensor:
    """A weighted sum of the losses above on one batch; a weight of 0 leaves that loss out.

    Why a mix: CoN-CLIP alone can be won by the shortcut "a negation word lowers the score"
    (REFERENCE.md). With distractor images its third term rewards the negated caption where the
    negated object is really absent, NegationCLIP rewards true absence-negated captions, and the
    plain CLIP term on affirmative captions holds retrieval. `absence_vs_presence` weights
    CoN-CLIP's first term with the absence-negated caption as the true caption and the
    presence-negated one as its hard negative, CE(I -> [a; c']): the two captions share frame
    and cue and differ only in which object is negated, so only reading the scope wins it.
    `scope_pair` weights the same contrast alone, the 2-way cross-entropy over (s(I, a), s(I, c'))
    with target a: no other caption of the batch dilutes it. `terms` picks CoN-CLIP's terms; the
    omni part takes Omni-NegCLIP's lam, lambda_o, lambda_t and margin as omni_lam, omni_lambda_o,
    omni_lambda_t and omni_margin.
    """
    weighted = [
        (conclip, lambda: conclip_loss(image, caption, presence_negated, distractor, scale=scale, terms=terms)),
        (negationclip, lambda: negationclip_loss(image, absence_negated, scale=scale)),
        (clip, lambda: clip_loss(image, caption, scale=scale)),
        (tripletclip, lambda: tripletclip_loss(image, caption, presence_negated, distractor, scale=scale)),
        (omni, lambda: omni_negclip_loss(image, caption, presence_negated, absence_negated, scale=scale, lam=omni_lam,
                                         lambda_o=omni_lambda_o, lambda_t=omni_lambda_t, margin=omni_margin)),
        (absence_vs_presence, lambda: conclip_loss(image, absence_negated, presence_negated, scale=scale, terms=(1,))),
        (scope_pair, lambda: _pair_ce(image, absence_negated, presence_negated, scale)),
    ]
    parts = [weight * loss() for weight, loss in weighted if weight]
    if not parts:
        raise ValueError("negation_mix_loss: every weight is 0")
    return torch.stack(parts).sum()


def _keywords(fn: Callable) -> set[str]:
    """The keyword-only options of a loss function, the similarity scale left out."""
    return {name for name, p in inspect.signature(fn).parameters.items() if p.kind == p.KEYWORD_ONLY} - {"scale"}


# the weight names negation_mix_loss takes, one per part, and its other options (named in
# finetune.vocabulary, checked here)
_MIX_KEYWORDS = _keywords(negation_mix_loss)
if set(MIX_PARTS) != _MIX_KEYWORDS - set(MIX_OPTIONS) or not set(MIX_OPTIONS) <= _MIX_KEYWORDS:
    raise ImportError("finetune.vocabulary.MIX_PARTS / MIX_OPTIONS drifted from negation_mix_loss's keywords")


# --- registry: which features each loss reads, and one call for all of them -------------------

FEATURE_NAMES = ("image", "caption", "presence_negated", "absence_negated", "distractor", "options", "correct")


@dataclass(frozen=True)
class LossSpec:
    """A loss and the features it reads. distractor: "no", "optional" (used when given) or "required".
    record: what a training example must be: "negation" (NegationExample: the captions in `texts`) or
    "mcq" (MCQItem: `texts` = ("options",), the K captions of each image, plus the index "correct")."""

    fn: Callable[..., Tensor]
    texts: tuple[str, ...]
    distractor: str = "no"
    record: str = "negation"

    def call(self, features: Mapping[str, Tensor | None], scale: Tensor | float, **kwargs) -> Tensor:
        inputs = ("image", *self.texts) + (("correct",) if self.record == "mcq" else ())
        missing = [name for name in inputs if features.get(name) is None]
        if self.distractor == "required" and features.get("distractor") is None:
            missing.append("distractor")
        if missing:
            raise ValueError(f"{self.fn.__name__} needs {', '.join(missing)} features")
        args = [features[name] for name in inputs]
        if self.distractor != "no":
            args.append(features.get("distractor"))
        return self.fn(*args, scale=scale, **kwargs)


LOSS_SPECS: dict[str, LossSpec] = {
    "clip": LossSpec(clip_loss, ("caption",)),
    "conclip": LossSpec(conclip_loss, ("caption", "presence_negated"), distractor="optional"),
    "omni": LossSpec(omni_negclip_loss, ("caption", "presence_negated", "absence_negated")),
    "omni_presence": LossSpec(omni_presence_loss, ("caption", "presence_negated")),
    "omni_absence": LossSpec(omni_absence_loss, ("caption", "absence_negated")),
    "negationclip": LossSpec(negationclip_loss, ("absence_negated",)),
    "tripletclip": LossSpec(tripletclip_loss, ("caption", "presence_negated"), distractor="required"),
    "negbench_mcq": LossSpec(negbench_mcq_loss, ("options",), record="mcq"),
    "mix": LossSpec(negation_mix_loss, ("caption", "presence_negated", "absence_negated"), distractor="optional"),
}
LOSSES: dict[str, Callable[..., Tensor]] = {name: spec.fn for name, spec in LOSS_SPECS.items()}
if set(LOSS_SPECS) != set(LOSS_NAMES) or {n for n, s in LOSS_SPECS.items() if s.record == "mcq"} != set(MCQ_LOSSES):
    raise ImportError("finetune.vocabulary.LOSS_NAMES / MCQ_LOSSES drifted from LOSS_SPECS")


# the keywords finetune.options checks are each loss function's own
for _name, _spec in LOSS_SPECS.items():
    if set(LOSS_KEYWORDS.get(_name, ())) != _keywords(_spec.fn):
        raise ImportError(f"finetune.vocabulary.LOSS_KEYWORDS[{_name!r}] drifted from {_spec.fn.__name__}'s keywords")

# every command-line option of a loss is a keyword of its function (the mix's omni options as omni_<name>)
for _name, _options in LOSS_OPTIONS.items():
    _wanted = {("omni_" + o if _name == "mix" and o not in ("terms", "weights") else o) for o in _options} - {"weights"}
    if not _wanted <= _keywords(LOSS_SPECS[_name].fn):
        raise ImportError(f"finetune.vocabulary.LOSS_OPTIONS[{_name!r}] names options its loss does not take")


def loss_keywords(spec: LossSpec) -> set[str]:
    """The options (keyword arguments) a registered loss takes."""
    return _keywords(spec.fn)


def loss_spec(name: str) -> LossSpec:
    if name not in LOSS_SPECS:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_SPECS)}")
    return LOSS_SPECS[name]


def compute_loss(name: str, features: Mapping[str, Tensor | None], *, scale: Tensor | float, **kwargs) -> Tensor:
    """The named loss on a batch of features.

    features: mapping with keys among FEATURE_NAMES (image, caption, presence_negated,
    absence_negated, distractor: each [M, d] and L2-normalised; options [M, K, d] and correct [M]
    for the MCQ loss); keys the loss does not read may be missing or None. kwargs go to the loss
    (terms=, lam=, margin=, ...).
    """
    return loss_spec(name).call(features, scale, **kwargs)


def make_loss_fn(name: str, **kwargs) -> Callable[[Mapping[str, Tensor | None], Tensor | float], Tensor]:
    """`loss_fn(features, scale)` for the named loss, e.g. for the gradient-norm measurement."""
    spec = loss_spec(name)

    def loss_fn(features: Mapping[str, Tensor | None], scale: Tensor | float) -> Tensor:
        return spec.call(features, scale, **kwargs)

    loss_fn.__name__ = f"{name}_loss_fn"
    loss_fn.texts = spec.texts  # type: ignore[attr-defined]  # which captions to encode
    loss_fn.distractor = spec.distractor  # type: ignore[attr-defined]
    return loss_fn


def gradnorm_loss_fns(names: Sequence[str] = GRADNORM_LOSSES) -> dict[str, Callable]:
    """Losses for the gradient-norm measurement: CLIP and CoN-CLIP as training computes them, and
    Omni-NegCLIP's presence and absence halves separately (they move different captions)."""
    known = {name: make_loss_fn(name) for name in ("clip", "conclip", "omni_presence", "omni_absence")}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"no gradient-norm loss {unknown}; known: {', '.join(known)}")
    return {name: known[name] for name in names}
