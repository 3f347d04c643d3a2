"""The options of a loss (`TrainConfig.loss_kwargs`, `finetune-layers --terms/--lam/...`, `ablate-layers
--loss-kwargs`): which a loss takes and what values they may have, checked before anything trains.

Torch-free, so that the commands check their arguments before importing torch. Every number must be
finite: a NaN weight trains a NaN loss, an infinite one a NaN gradient. Weights (lam, lambda_o,
lambda_t, the mix's part weights) must be >= 0, since a negative weight maximises its loss; a margin
must lie in [-2, 2] (the hinge adds it to a cosine, which lies in [-1, 1]: beyond that the hinge is
constant); weights at most MAX_WEIGHT (beyond it the other terms vanish in float32); CoN-CLIP's
terms are a non-empty subset of 1, 2, 3, each named once.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from finetune.vocabulary import LOSS_KEYWORDS, MIX_PARTS

TERMS = (1, 2, 3)
MARGINS = ("margin", "omni_margin")
MAX_MARGIN = 2.0
# A loss weight past this makes its term outweigh a term of weight 1 by more than float32's ~7 significant
# digits can add up: the other terms would vanish from the sum (and its gradient) without a word.
MAX_WEIGHT = 1e6


class LossOptionError(ValueError):
    """A loss option the loss does not take, or a value it cannot use."""


def check_loss_options(loss: str, options: Mapping[str, Any], accepted: Sequence[str] | None = None) -> None:
    """Raise LossOptionError if `loss` does not take one of `options` or cannot use its value.
    accepted: the options the loss takes (default: LOSS_KEYWORDS[loss]; give them for a loss registered
    at run time)."""
    if accepted is None:
        if loss not in LOSS_KEYWORDS:
            raise LossOptionError(f"unknown loss {loss!r}; choose one of {', '.join(LOSS_KEYWORDS)}")
        accepted = LOSS_KEYWORDS[loss]
    if not isinstance(options, Mapping):
        raise LossOptionError(f"loss options must be a mapping of name to value, got {type(options).__name__}")
    unknown = sorted(str(name) for name in options if name not in accepted)
    if unknown:
        raise LossOptionError(f"loss {loss!r} takes no option(s) {', '.join(unknown)}; "
                              f"its options: {', '.join(sorted(accepted)) or 'none'}")
    for name, value in options.items():
        problem = _value_problem(name, value)
        if problem:
            raise LossOptionError(f"loss option {name} {problem}, got {str(value)[:60]!r}")
    if loss == "mix" and set(MIX_PARTS) <= set(options) and not any(options[part] for part in MIX_PARTS):
        raise LossOptionError(f"every weight of the mix is 0 ({', '.join(MIX_PARTS)}): it would train nothing")


def _value_problem(name: str, value: Any) -> str | None:
    if name == "terms":
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(t, int) and not isinstance(t, bool) and t in TERMS for t in value)):
            return "must be a non-empty list among 1, 2, 3"
        twice = sorted({t for t in value if list(value).count(t) > 1})
        if twice:  # a term listed twice would not weigh twice: the list names which terms run
            return f"lists term {twice[0]} twice (each term once)"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a finite number"
    if name in MARGINS:
        return None if abs(value) <= MAX_MARGIN else f"must lie in [-{MAX_MARGIN:g}, {MAX_MARGIN:g}]"
    if value < 0:
        return "must be >= 0 (a negative weight maximises its loss)"
    return None if value <= MAX_WEIGHT else (f"must be <= {MAX_WEIGHT:g} (beyond it the other terms of the loss "
                                             "vanish in float32)")
