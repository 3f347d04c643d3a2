"""Automatic layer selection: null-calibrated per-block evidence (analysis.planning.evidence) -> a LayerPlan.

The evidence is the combined score c[b] of analysis.planning.evidence: zero wherever no component's excess
over the null models is significant, summing to 1 over blocks otherwise. When it is zero everywhere
the measurements carry no negation evidence beyond what randomly initialised towers show, and the
plan selects nothing: its `blocks` are empty and its evidence says why. Otherwise, rules:

    window    the shortest contiguous run of blocks holding >= `share` of sum(c) (ties: the run
              with more evidence, then the earlier one): it goes where the evidence is, front,
              middle or back, and trains a contiguous stretch as every anchor does.
    lead      one block: the first of the consensus, the blocks the window rule picks in at least
              `consensus` of the bootstrap replicates (the point estimate's window when there are no
              replicates or no block reaches the consensus). The default since the selector study's
              size procedure (analysis.ablation.rule_tuning): on its development models a single
              block where the window starts gained as much as the window with a fraction of its
              parameters; the consensus keeps a block that few resampled windows hold from leading.
    prefix    the shortest front prefix 0..k-1 holding >= `share` of sum(c) (the Omni-NegCLIP shape).
    topk      the k blocks with the largest c[b] > 0 (fewer if fewer carry evidence).
    auto_rgn  blocks whose significant gradient-norm excess is at least `rgn_floor` of the largest,
              each with that ratio as its learning-rate weight (Auto-RGN, Lee et al. 2022, on the
              null-calibrated gradient norms).

Stability: the rule is applied again to the combined score of every bootstrap replicate of the
evidence (test items, captions, gradient batches and null towers resampled); the plan records how
often each block is chosen and how often the replicate's plan equals this one.

Extras: embeddings train when block 0 trains (they feed it; Omni-NegCLIP's "front" trains both),
final LayerNorm, projection and logit scale follow the config (default on, as Omni-NegCLIP's front
setting); an empty plan trains nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from finetune.plan import LayerPlan

if TYPE_CHECKING:  # the evidence needs torch-backed measurement types; --help must not
    from analysis.planning.evidence import BlockEvidence

RULES = ("window", "lead", "prefix", "topk", "auto_rgn")
_TOLERANCE = 1e-9  # cumulative shares are sums of floats; 0.8 must reach 0.8


class SelectionError(ValueError):
    """The measurements cannot support the asked-for rule (the message says what is missing)."""


@dataclass
class SelectionConfig:
    rule: str = "lead"  # chosen by the size procedure of analysis.ablation.rule_tuning (docs/VALIDATION.md)
    share: float = 0.8  # window / prefix / lead: share of the combined evidence the window must hold
    consensus: float = 0.5  # lead: share of the bootstrap replicates whose window must hold a block
    k: int = 4  # topk: how many blocks at most
    rgn_floor: float = 0.1  # auto_rgn: blocks whose weight is below this stay frozen
    min_lr_weight: float = 1e-3
    train_embeddings: bool | str = "auto"  # "auto": when block 0 trains
    train_ln_final: bool = True
    train_projection: bool = True
    train_logit_scale: bool = True

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose from {', '.join(RULES)}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if not 0 < self.consensus <= 1:
            raise ValueError(f"consensus must be in (0, 1], got {self.consensus}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0 < self.rgn_floor <= 1:
            raise ValueError(f"rgn_floor must be in (0, 1], got {self.rgn_floor}")
        if self.train_embeddings not in (True, False, "auto"):
            raise ValueError(f"train_embeddings must be true, false or 'auto', got {self.train_embeddings!r}")


@dataclass
class Decision:
    """Why the rule chose what it chose."""

    rule: str
    blocks: list[int]
    reason: str  # one plain sentence
    share_of_chosen: float  # of the combined evidence
    share_of_next_shorter: float | None = None  # window / prefix: the best run one block shorter
    lr_weights: dict[int, float] | None = None


@dataclass
class Selection:
    """A selection: the plan, the evidence it rests on, the decision and its stability."""

    plan: LayerPlan
    evidence: BlockEvidence
    decision: Decision
    stability: list[float]  # per block: share of bootstrap replicates whose plan (lead: whose window) trains it
    agreement: float  # share of replicates whose plan is exactly this plan's blocks (lead: whose window holds it)


# --- pure rules on per-block scores ---------------------------------------------------------------

def shortest_window(scores: Sequence[float], share: float) -> tuple[int, int, float, float | None]:
    """(first, last, share held, best share of any window one block shorter) of the shortest contiguous
    window holding >= share of sum(scores); ties: more evidence, then earlier."""
    values = np.asarray(scores, dtype=float)
    total = values.sum()
    if total <= 0:
        raise SelectionError("no evidence to choose a window from (all block scores are 0)")
    cumulative = np.concatenate([[0.0], np.cumsum(values)]) / total
    for length in range(1, len(values) + 1):
        held = cumulative[length:] - cumulative[:-length]
        best = int(np.argmax(held))  # the first maximum: the earlier window on a tie
        if held[best] >= share - _TOLERANCE:
            shorter = float((cumulative[length - 1:] - cumulative[:-(length - 1)]).max()) if length > 1 else None
            return best, best + length - 1, float(held[best]), shorter
    raise AssertionError("the whole tower holds all the evidence")


def front_prefix(scores: Sequence[float], share: float) -> tuple[int, list[float]]:
    """(k, cumulative shares): the smallest k with sum(scores[:k]) >= share * sum(scores)."""
    values = np.asarray(scores, dtype=float)
    total = values.sum()
    if len(values) == 0 or total <= 0:
        raise SelectionError("no evidence to choose a prefix from (all block scores are 0)")
    cumulative = (np.cumsum(values) / total).tolist()
    k = next(i + 1 for i, c in enumerate(cumulative) if c >= share - _TOLERANCE)
    return k, cumulative


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """The (at most) k highest positive-scoring blocks, ties to the earlier block, in block order."""
    order = sorted((b for b in range(len(scores)) if scores[b] > 0), key=lambda b: (-scores[b], b))
    return sorted(order[:k])


def consensus_blocks(stability: Sequence[float] | None, consensus: float) -> list[int]:
    """The blocks the window holds in at least `consensus` of the bootstrap replicates (`stability`: per block, the
    share of replicates whose window holds it; None: no replicates, no consensus)."""
    return [b for b, share in enumerate(stability or []) if share >= consensus - _TOLERANCE]


def describe_blocks(blocks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (runs of consecutive blocks as ranges)."""
    parts, run = [], []
    for b in sorted(blocks):
        if run and b != run[-1] + 1:
            parts.append(_run_text(run))
            run = []
        run.append(b)
    if run:
        parts.append(_run_text(run))
    return ", ".join(parts) if parts else "none"


def _run_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


# --- the plan ---------------------------------------------------------------------------------------

def choose(scores: Sequence[float], evidence: BlockEvidence, config: SelectionConfig) -> Decision:
    """Apply the rule to per-block scores (the evidence's combined score, or a bootstrap replicate's)."""
    values = np.asarray(scores, dtype=float)
    if values.sum() <= 0:
        return Decision(config.rule, [], "no block carries negation evidence beyond the null models "
                        "(randomly initialised towers of the same architecture): nothing to select", 0.0)
    if config.rule == "window":
        first, last, held, shorter = shortest_window(values, config.share)
        blocks = list(range(first, last + 1))
        return Decision("window", blocks, f"the shortest contiguous run holding at least {config.share:.0%} of the "
                        "null-calibrated evidence", held, shorter)
    if config.rule == "lead":  # on one score vector there is no consensus: the window's first block
        return lead(choose(values, evidence, replace(config, rule="window")), values, None, config.consensus)
    if config.rule == "prefix":
        k, cumulative = front_prefix(values, config.share)
        return Decision("prefix", list(range(k)), f"the shortest front prefix holding at least {config.share:.0%} "
                        "of the null-calibrated evidence", cumulative[k - 1], cumulative[k - 2] if k > 1 else None)
    if config.rule == "topk":
        blocks = top_k(values, config.k)
        return Decision("topk", blocks, f"the {len(blocks)} block(s) with the most null-calibrated evidence",
                        float(values[blocks].sum() / values.sum()))
    gradnorm = evidence.components.get("gradnorm")
    if gradnorm is None:
        raise SelectionError("auto_rgn needs gradient norms measured on the model and its null models")
    excess = np.asarray(gradnorm.evidence)
    if excess.max() <= 0:
        return Decision("auto_rgn", [], "no block's gradient norm exceeds the null models' significantly", 0.0)
    weights = excess / excess.max()
    blocks = [b for b, w in enumerate(weights) if w >= config.rgn_floor - _TOLERANCE]
    return Decision("auto_rgn", blocks, f"blocks whose significant gradient-norm excess is at least "
                    f"{config.rgn_floor:.0%} of the largest", float(values[blocks].sum() / values.sum()),
                    lr_weights={b: max(config.min_lr_weight, float(weights[b])) for b in blocks})


def lead(window: Decision, scores: Sequence[float], stability: Sequence[float] | None, consensus: float) -> Decision:
    """The lead rule's decision from the window rule's decision on the point estimate's `scores` and its per-block
    stability over the bootstrap replicates (None: no replicates): the first block the window rule picks in at
    least `consensus` of them, else the first block of the point estimate's window."""
    if not window.blocks:
        return Decision("lead", [], window.reason, 0.0)
    own = np.asarray(scores, dtype=float) / float(np.sum(scores))  # the share of the evidence each block holds
    held = consensus_blocks(stability, consensus)
    if held:
        return Decision("lead", held[:1], f"the first block that the shortest contiguous run holding the evidence "
                        f"(the window rule) holds in at least {consensus:.0%} of the bootstrap replicates",
                        float(own[held[0]]))
    why = "no bootstrap replicates were drawn" if stability is None else \
        f"no block is held by the window of {consensus:.0%} of the bootstrap replicates"
    return Decision("lead", window.blocks[:1], f"the first block of the shortest contiguous run holding the evidence "
                    f"({why})", float(own[window.blocks[0]]))


def select_layers(evidence: BlockEvidence, config: SelectionConfig = SelectionConfig()) -> Selection:
    """The layer plan the rule picks from the evidence, with the decision and its stability."""
    per_score = replace(config, rule="window") if config.rule == "lead" else config  # lead reads the window's
    decision = choose(evidence.combined, evidence, per_score)
    stability, agreement, chosen = [0.0] * evidence.n_layers, 1.0, None
    if evidence.replicates is not None and len(evidence.replicates):
        chosen = [choose(replicate, evidence, per_score).blocks for replicate in evidence.replicates]
        stability = [float(np.mean([b in blocks for blocks in chosen])) for b in range(evidence.n_layers)]
        agreement = float(np.mean([blocks == decision.blocks for blocks in chosen]))
    if config.rule == "lead":
        decision = lead(decision, np.asarray(evidence.combined, dtype=float), stability if chosen is not None else None,
                        config.consensus)
        if chosen is not None and decision.blocks:  # (no plan: the share of replicates choosing none, as above)
            agreement = stability[decision.blocks[0]]
    blocks = decision.blocks
    embeddings = (0 in blocks) if config.train_embeddings == "auto" else bool(config.train_embeddings)
    extras = {"train_ln_final": config.train_ln_final, "train_projection": config.train_projection,
              "train_logit_scale": config.train_logit_scale} if blocks else {}
    rule = config.rule + (f"(share={config.share:g})" if config.rule in ("window", "prefix") else
                          f"(share={config.share:g}, consensus={config.consensus:g})" if config.rule == "lead" else
                          f"(k={config.k})" if config.rule == "topk" else f"(floor={config.rgn_floor:g})")
    record = {"decision": asdict(decision), "stability": stability, "agreement": agreement,
              "selection_config": asdict(config), **evidence.to_dict()}
    plan = LayerPlan(blocks, train_embeddings=embeddings and bool(blocks), lr_weights=decision.lr_weights,
                     rule=rule if blocks else f"{rule}: no evidence", evidence=record, **extras)
    return Selection(plan, evidence, decision, stability, agreement)
