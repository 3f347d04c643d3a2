"""The simple layer selectors a reviewer will name, beside the toolkit's rule (REFERENCE.md, "Layer-selection
baselines"): each reads measurements `probe-layers` already takes and picks k blocks, k the size of the
toolkit's plan, so that the ablation can compare them at equal size.

    toolkit          the plan of analysis.planning.selection: null-calibrated evidence, a window rule, no plan when
                     nothing beats the null models (read from layer_plan.json)
    auto_rgn         raw Auto-RGN (Lee et al. 2023): the relative gradient norm ||g|| / ||w|| of each block under
                     the fine-tuning losses, without null models
    omni_cosine      Omni-NegCLIP's layer evidence: 1 - cos(EOT state of a caption, EOT state of its negation)
                     at each block's output
    fisher           the FIM score (Lodha et al. 2023): the diagonal empirical Fisher information per block
    activation_norm  the change of the activation norm under negation at each block's output (Act-LoRA-style)
    front, last      fixed choices: blocks 0 .. k-1 (Omni-NegCLIP's "front"), the last k (open_clip's
                     lock_text_tower(unlocked_layers=k))
    random_window    a contiguous window of k blocks drawn at random: its expected gain is the mean over every
                     window (no single plan; the ablation's windows give it)

Every score-based selector takes the k highest-scoring blocks (ties: the earlier block), contiguous or not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from probing.measure.keys import TRAINED
from probing.measure.layers import LayerMeasurements

RANDOM_WINDOW = "random_window"


@dataclass(frozen=True)
class SelectorPlan:
    """What one selector chose: k blocks (none for random_window, an expectation), and the scores behind them."""

    selector: str
    blocks: tuple[int, ...]
    scores: tuple[float, ...] | None  # per block, what the blocks were ranked by (None: a fixed choice)
    basis: str  # what the scores are, with the paper they come from

    def to_dict(self) -> dict:
        return {"selector": self.selector, "blocks": list(self.blocks),
                "scores": None if self.scores is None else list(self.scores), "basis": self.basis}


def top_k(scores, k: int) -> tuple[int, ...]:
    """The k highest-scoring blocks, ties to the earlier block, in block order."""
    order = sorted(range(len(scores)), key=lambda b: (-scores[b], b))
    return tuple(sorted(order[:k]))


def _trained(table, **where):
    rows = table[table["model"] == TRAINED]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows


def auto_rgn_scores(measurements: LayerMeasurements) -> np.ndarray:
    """Per block: ||g|| / ||w|| of the whole block, normalised by the largest block under each loss (Lee et al.
    2023, Auto-RGN), averaged over the measured losses. No null models: raw, as the paper uses it."""
    rows = _trained(measurements.gradnorms, component="all")
    if rows.empty:
        raise LookupError("auto_rgn needs the gradient norms of the model (probe-layers --measurements gradnorms)")
    per_loss = rows.pivot_table(index="loss", columns="layer", values="relative_norm").to_numpy(dtype=float)
    return (per_loss / per_loss.max(axis=1, keepdims=True)).mean(axis=0)


def omni_cosine_scores(measurements: LayerMeasurements) -> np.ndarray:
    """Per block: 1 - the mean cosine between the EOT state of a caption and of its presence-negated version at
    the block's output (Omni-NegCLIP's per-layer evidence; the sensitivity measurement's raw distance)."""
    rows = _trained(measurements.sensitivity, edit="presence").sort_values("layer")
    if rows.empty:
        raise LookupError("omni_cosine needs the sensitivity measurement of the model (--measurements sensitivity)")
    return rows["raw_distance"].to_numpy(dtype=float)[1:]


def fisher_scores(measurements: LayerMeasurements) -> np.ndarray:
    """Per block: the diagonal empirical Fisher information summed over its parameters (Lodha et al. 2023),
    normalised to sum 1 over blocks under each loss, averaged over the losses."""
    rows = measurements.fisher
    if rows.empty:
        raise LookupError("fisher needs the Fisher information of the model (measured with the gradient norms)")
    per_loss = rows.pivot_table(index="loss", columns="layer", values="fisher").to_numpy(dtype=float)
    return (per_loss / per_loss.sum(axis=1, keepdims=True)).mean(axis=0)


def activation_norm_scores(measurements: LayerMeasurements) -> np.ndarray:
    """Per block: the mean relative change of the EOT state's norm under presence negation at the block's output
    (|‖h(c')‖ - ‖h(c)‖| / ‖h(c)‖: activation-norm scores such as Act-LoRA's)."""
    rows = _trained(measurements.sensitivity, edit="presence").sort_values("layer")
    if rows.empty or rows["norm_change"].isna().all():
        raise LookupError("activation_norm needs the sensitivity measurement of the model with norm changes")
    return rows["norm_change"].to_numpy(dtype=float)[1:]


SCORED: dict[str, tuple[Callable[[LayerMeasurements], np.ndarray], str]] = {
    "auto_rgn": (auto_rgn_scores, "relative gradient norms, no null models (Auto-RGN, Lee et al. 2023)"),
    "omni_cosine": (omni_cosine_scores, "1 - cos(caption, negated caption) of the EOT state (Omni-NegCLIP)"),
    "fisher": (fisher_scores, "diagonal empirical Fisher information per block (FIM score, Lodha et al. 2023)"),
    "activation_norm": (activation_norm_scores, "relative change of the EOT state's norm under negation"),
}
SELECTORS: tuple[str, ...] = ("toolkit", *SCORED, "front", "last", RANDOM_WINDOW)


def toolkit_plan(blocks) -> SelectorPlan:
    """The toolkit's own plan as a selector's, for the tables that set the baselines beside it."""
    return SelectorPlan("toolkit", tuple(sorted(blocks)), None,
                        "null-calibrated evidence (analysis.planning.selection)")


def selector_plans(measurements: LayerMeasurements, toolkit_blocks, *, names=SELECTORS) -> dict[str, SelectorPlan]:
    """Each selector's plan at the size of the toolkit's plan (which must select blocks). A selector whose
    measurement is missing is left out (LookupError messages say which; see `missing_selectors`)."""
    toolkit = tuple(sorted(toolkit_blocks))
    if not toolkit:
        raise ValueError("the toolkit's plan selects no block: there is no plan size to compare the selectors at")
    k, n = len(toolkit), measurements.n_layers
    plans: dict[str, SelectorPlan] = {}
    for name in names:
        if name == "toolkit":
            plans[name] = toolkit_plan(toolkit)
        elif name == "front":
            plans[name] = SelectorPlan(name, tuple(range(k)), None, f"blocks 0-{k - 1} (Omni-NegCLIP's 'front')")
        elif name == "last":
            plans[name] = SelectorPlan(name, tuple(range(n - k, n)), None,
                                       f"the last {k} blocks (open_clip lock_text_tower)")
        elif name == RANDOM_WINDOW:
            plans[name] = SelectorPlan(name, (), None, f"the expected gain of a random window of {k} blocks")
        else:
            function, basis = SCORED[name]
            try:
                scores = function(measurements)
            except LookupError:
                continue
            plans[name] = SelectorPlan(name, top_k(scores, k), tuple(float(s) for s in scores), basis)
    return plans


def missing_selectors(measurements: LayerMeasurements, names=SELECTORS) -> dict[str, str]:
    """Selector -> why its measurement is missing."""
    missing = {}
    for name in names:
        if name in SCORED:
            try:
                SCORED[name][0](measurements)
            except LookupError as error:
                missing[name] = str(error)
    return missing
