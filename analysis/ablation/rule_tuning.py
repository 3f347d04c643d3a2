"""The pre-registered procedure by which the selection rule's share may change.

The window rule (analysis.planning.selection) trains the shortest contiguous run of blocks holding a `share` of
the null-calibrated evidence; 0.8 since the first study. This module is the only way that setting may change,
written down and committed before the candidate plans it needs were run:

- The grid: SHARES. For each share s and each development model m (analysis.validation: default and late),
  P_m(s) is the plan the window rule picks at s from m's recorded evidence (the combined score in its
  layer_plan.json). The current plan P_m(current) is m's ablation variant `selected`.
- Every P_m(s) is run in m's ablation (analysis.validation adds them as window variants), so its difference from
  the current plan is known on every target, with the paired bootstrap interval over seeds and items that
  analysis.ablation.validity records for every plan.
- A share is
      worse     if on some development model and some target its plan loses to the current plan beyond the
                noise (the 95 % interval of the difference entirely below 0);
      better    if it is not worse and, on some development model, either its plan gains more on the headline
                target (held-out scope) beyond the noise, or it trains fewer parameters while on no development
                model it trains more;
      as good   if it is neither (a plan that costs more without gaining beyond the noise, or the same plans);
      untested  if some development model has not run its plan yet: then nothing is decided.
- The share changes only to a better one: the better share whose plans train the fewest parameters over the
  development models, then the one with the higher mean headline gain, then the one nearer the current share.
  Otherwise it stays. A change is then frozen in a commit and judged on the held-out models only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from analysis.ablation.validity import HEADLINE_TARGET, Validity
from analysis.ablation.variants import window_name
from analysis.planning.selection import SelectionConfig, describe_blocks, shortest_window

SHARES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
CURRENT = SelectionConfig().share
VERDICTS = ("current", "better", "as good", "worse", "untested")


@dataclass
class DevelopmentModel:
    """What the procedure reads of one development model: its evidence and its ablation's validity per target."""

    name: str
    combined: Sequence[float]  # the combined evidence per block (layer_plan.json's evidence["combined"])
    validity: Mapping[str, Validity] | None  # analysis.ablation.validity.from_json of its validity.json


@dataclass
class ShareCandidate:
    """One share of the grid: its plan on each development model and how that plan compares with the current one."""

    share: float
    blocks: dict[str, list[int]]  # model -> the plan's blocks
    variant: dict[str, str]  # model -> the ablation variant that trained it
    trainable: dict[str, int | None]  # None: not run
    gain: dict[str, float | None]  # headline gain of the plan
    diff: dict[str, tuple[float, float, float] | None]  # headline difference from the current plan, with interval
    worse_on: dict[str, list[str]] = field(default_factory=dict)  # model -> targets it loses on beyond the noise
    verdict: str = "untested"

    def describe(self, model: str) -> str:
        return describe_blocks(self.blocks[model])


@dataclass
class ShareTuning:
    """The procedure's outcome: every candidate, the share it leaves the rule with, and why, in one sentence."""

    current: float
    candidates: list[ShareCandidate]
    chosen: float
    decided: bool  # False: some candidate plan is still to run
    sentence: str
    models: list[str]


def plan_at(combined: Sequence[float], share: float) -> list[int]:
    """The window rule's blocks at this share (analysis.planning.selection.shortest_window)."""
    first, last, _, _ = shortest_window(combined, share)
    return list(range(first, last + 1))


def candidate_variants(combined: Sequence[float], shares: Sequence[float] = SHARES) -> list[str]:
    """The ablation variants a development model must run so that every share of the grid can be judged."""
    return list(dict.fromkeys(window_name(b[0], b[-1]) for b in (plan_at(combined, s) for s in shares)))


def _candidate(share: float, models: Sequence[DevelopmentModel]) -> ShareCandidate:
    candidate = ShareCandidate(share, {}, {}, {}, {}, {})
    for model in models:
        blocks = plan_at(model.combined, share)
        current = plan_at(model.combined, CURRENT)
        variant = "selected" if blocks == current else window_name(blocks[0], blocks[-1])
        candidate.blocks[model.name], candidate.variant[model.name] = blocks, variant
        records = {name: v.plans.get(variant) for name, v in (model.validity or {}).items()}
        headline = records.get(HEADLINE_TARGET)
        if headline is None:
            candidate.trainable[model.name] = candidate.gain[model.name] = candidate.diff[model.name] = None
            continue
        candidate.trainable[model.name] = int(headline["trainable"])
        candidate.gain[model.name] = float(headline["gain"])
        candidate.diff[model.name] = (float(headline["diff"]), float(headline["diff_low"]),
                                      float(headline["diff_high"]))
        worse = [name for name, record in records.items() if record is not None and record["diff_high"] < 0]
        if worse:
            candidate.worse_on[model.name] = worse
    return candidate


def _judge(candidate: ShareCandidate, current: ShareCandidate) -> str:
    if candidate.share == current.share:
        return "current"
    if any(value is None for value in candidate.diff.values()):
        return "untested"
    if candidate.worse_on:
        return "worse"
    gains = any(low > 0 for _, low, _ in candidate.diff.values())
    cost = {m: (candidate.trainable[m], current.trainable[m]) for m in candidate.trainable}
    cheaper = all(mine <= theirs for mine, theirs in cost.values()) and any(mine < theirs for mine, theirs in
                                                                              cost.values())
    return "better" if gains or cheaper else "as good"


def tune_share(models: Sequence[DevelopmentModel], shares: Sequence[float] = SHARES) -> ShareTuning:
    """Apply the procedure (module docstring) to the development models' evidence and ablations."""
    if CURRENT not in shares:
        raise ValueError(f"the grid must hold the current share {CURRENT}")
    candidates = [_candidate(share, models) for share in shares]
    current = next(c for c in candidates if c.share == CURRENT)
    if any(value is None for value in current.diff.values()):
        untested = [m for m, value in current.diff.items() if value is None]
        for c in candidates:
            c.verdict = "current" if c is current else "untested"
        return ShareTuning(CURRENT, candidates, CURRENT, False, f"Nothing is decided: {', '.join(untested)} has no "
                           "finished ablation yet.", [m.name for m in models])
    for c in candidates:
        c.verdict = _judge(c, current)
    untested = [c for c in candidates if c.verdict == "untested"]
    better = [c for c in candidates if c.verdict == "better"]
    names = [m.name for m in models]
    if untested:
        missing = sorted({f"{m} {c.variant[m]}" for c in untested for m in names if c.diff[m] is None})
        return ShareTuning(CURRENT, candidates, CURRENT, False, "Nothing is decided yet: the plans of share(s) "
                           f"{', '.join(f'{c.share:g}' for c in untested)} are still to run ({', '.join(missing)}).",
                           names)
    if not better:
        return ShareTuning(CURRENT, candidates, CURRENT, True, f"No share of the grid beats {CURRENT:g} on the "
                           "development models (each is worse somewhere beyond the noise, or costs more without "
                           "gaining beyond it): the rule keeps its share.", names)
    best = min(better, key=lambda c: (sum(c.trainable.values()), -sum(c.gain.values()), abs(c.share - CURRENT)))
    plans = "; ".join(f"{m}: {best.describe(m)} instead of {current.describe(m)}" for m in names)
    how = ("trains fewer parameters" if sum(best.trainable.values()) < sum(current.trainable.values())
           else "gains more on held-out scope beyond the noise")
    return ShareTuning(CURRENT, candidates, best.share, True, f"Share {best.share:g} replaces {CURRENT:g}: on no "
                       f"development model and target is its plan worse beyond the noise, and it {how} ({plans}). "
                       "It is judged next on the held-out models.", names)
