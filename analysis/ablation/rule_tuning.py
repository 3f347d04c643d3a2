"""The pre-registered procedures by which the selection rule may change, each written down and committed before
it was applied.

Both compare candidate plans with the current rule's plan on the development models (analysis.validation: default
and late) only, from their recorded evidence (layer_plan.json: the combined score and the window rule's per-block
stability over the bootstrap replicates) and their ablations, in which every candidate plan is a variant whose
paired bootstrap difference from the current plan (variant `selected`) is recorded on every target
(analysis.ablation.validity). A candidate is
    worse     if on some development model and some target its plan loses to the current plan beyond the noise
              (the 95 % interval of the difference entirely below 0);
    better    if it is not worse and, on some development model, either its plan gains more on the headline
              target (held-out scope) beyond the noise, or it trains fewer parameters while on no development
              model it trains more;
    as good   if it is neither (a plan that costs more without gaining beyond the noise, or the same plans);
    untested  if some development model has not run its plan yet: then nothing is decided.
The rule changes only to a better candidate: the one whose plans train the fewest parameters over the development
models, then the one with the higher mean headline gain, then the earlier in the procedure's declared order. A
change is then frozen in a commit and judged on the held-out models only.

1. The share (`tune_share`, declared in 2ec9d1c): the window rule (analysis.planning.selection) trains the
   shortest contiguous run of blocks holding a `share` of the null-calibrated evidence; 0.8 since the first study.
   The grid SHARES, P_m(s) the window rule's plan at share s on model m. Outcome: 0.8 stays.
2. The size (`tune_size`, declared after the share stayed and after every model of the study, held-out ones
   included, had been ablated under the window rule, so that those held-out models are not blind to it): on
   late, middle and frontfrozen one block had gained as much as the window. The candidates, each a plan from the
   recorded evidence alone, in their declared order (the tie-break): the current window; `consensus`, the window
   from the first to the last block the window rule holds in at least half of the bootstrap replicates; `lead`,
   the first block of the consensus (analysis.planning.selection's lead rule); `window_lead`, the first block of
   the point estimate's window; `lead2`, the first two blocks from the consensus's first; `peak`, the block with
   the most combined evidence. The candidates resting on the consensus come before those resting on the point
   estimate alone (a plan every resampling of the evidence supports), then the fewer blocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from analysis.ablation.validity import HEADLINE_TARGET, Validity
from analysis.ablation.variants import set_name, window_name
from analysis.planning.selection import SelectionConfig, consensus_blocks, describe_blocks, shortest_window, top_k

SHARES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
CURRENT = SelectionConfig().share
SIZE_RULES = ("window", "consensus", "lead", "window_lead", "lead2", "peak")  # the declared order: the tie-break
CONSENSUS = 0.5  # `consensus` and `lead`: a block held by the window of at least half of the replicates
VERDICTS = ("current", "better", "as good", "worse", "untested")


@dataclass
class DevelopmentModel:
    """What the procedure reads of one development model: its evidence and its ablation's validity per target."""

    name: str
    combined: Sequence[float]  # the combined evidence per block (layer_plan.json's evidence["combined"])
    validity: Mapping[str, Validity] | None  # analysis.ablation.validity.from_json of its validity.json
    stability: Sequence[float] | None = None  # the window rule's per-block share of the bootstrap replicates


@dataclass
class Candidate:
    """One candidate (a share of the grid, or a size rule): its plan on each development model and how that plan
    compares with the current one."""

    label: str  # "0.8", "lead", ...
    blocks: dict[str, list[int]]  # model -> the plan's blocks
    variant: dict[str, str]  # model -> the ablation variant that trained it
    trainable: dict[str, int | None]  # None: not run
    gain: dict[str, float | None]  # headline gain of the plan
    diff: dict[str, tuple[float, float, float] | None]  # headline difference from the current plan, with interval
    worse_on: dict[str, list[str]] = field(default_factory=dict)  # model -> targets it loses on beyond the noise
    verdict: str = "untested"
    share: float | None = None  # the share grid's candidates

    def describe(self, model: str) -> str:
        return describe_blocks(self.blocks[model])


@dataclass
class Tuning:
    """A procedure's outcome: every candidate, the one it leaves the rule with, and why, in one sentence."""

    current: str  # the current candidate's label
    candidates: list[Candidate]
    chosen: str
    decided: bool  # False: some candidate plan is still to run
    sentence: str
    models: list[str]


def tuning_to_dict(tuning: Tuning) -> dict:
    return asdict(tuning)


def tuning_from_dict(record: dict) -> Tuning:
    """A Tuning written by tuning_to_dict (the frozen record of analysis.validation.freeze_tuning)."""
    candidates = [Candidate(**{**c, "diff": {m: None if d is None else tuple(d) for m, d in c["diff"].items()}})
                  for c in record["candidates"]]
    return Tuning(**{**record, "candidates": candidates})


def plan_at(combined: Sequence[float], share: float) -> list[int]:
    """The window rule's blocks at this share (analysis.planning.selection.shortest_window)."""
    first, last, _, _ = shortest_window(combined, share)
    return list(range(first, last + 1))


def candidate_variants(combined: Sequence[float], shares: Sequence[float] = SHARES) -> list[str]:
    """The ablation variants a development model must run so that every share of the grid can be judged."""
    return list(dict.fromkeys(window_name(b[0], b[-1]) for b in (plan_at(combined, s) for s in shares)))


def _candidate(label: str, plans: Mapping[str, list[int]], current: Mapping[str, list[int]],
               models: Sequence[DevelopmentModel]) -> Candidate:
    """The candidate whose plan on each development model is `plans[model]`, read off the model's ablation (the
    current plan is the variant `selected`; any other plan the variant that trains exactly its blocks)."""
    candidate = Candidate(label, {}, {}, {}, {}, {})
    for model in models:
        blocks = list(plans[model.name])
        variant = "selected" if blocks == list(current[model.name]) else set_name(blocks)
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


def _check_current(current: Mapping[str, list[int]], models: Sequence[DevelopmentModel]) -> None:
    """Each development model's ablation must have run `current` as its `selected` plan: a procedure is applied
    once, before the rule changes (afterwards `selected` is the new rule's plan)."""
    for model in models:
        ran = {tuple(v.selected) for v in (model.validity or {}).values()}
        if ran and ran != {tuple(current[model.name])}:
            raise ValueError(f"{model.name}: its ablation's selected plan ({', '.join(map(str, ran))}) is not the "
                             f"plan the procedure compares against ({describe_blocks(current[model.name])}): a "
                             "procedure is applied once, before the rule changes; read its frozen outcome since")


def _judge(candidate: Candidate, current: Candidate) -> str:
    if candidate.label == current.label:
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


def _decide(candidates: list[Candidate], current: Candidate, models: Sequence[DevelopmentModel], what: str,
            order: Sequence[str]) -> Tuning:
    """Judge every candidate against the current one and apply the procedure's choice (module docstring)."""
    names = [m.name for m in models]
    if any(value is None for value in current.diff.values()):
        untested = [m for m, value in current.diff.items() if value is None]
        for c in candidates:
            c.verdict = "current" if c is current else "untested"
        return Tuning(current.label, candidates, current.label, False, f"Nothing is decided: {', '.join(untested)} "
                      "has no finished ablation yet.", names)
    for c in candidates:
        c.verdict = _judge(c, current)
    untested = [c for c in candidates if c.verdict == "untested"]
    better = [c for c in candidates if c.verdict == "better"]
    if untested:
        missing = sorted({f"{m} {c.variant[m]}" for c in untested for m in names if c.diff[m] is None})
        return Tuning(current.label, candidates, current.label, False, f"Nothing is decided yet: the plans of "
                      f"{what} {', '.join(c.label for c in untested)} are still to run ({', '.join(missing)}).", names)
    if not better:
        return Tuning(current.label, candidates, current.label, True, f"No {what} beats {current.label} on the "
                      "development models (each is worse somewhere beyond the noise, or costs more without gaining "
                      "beyond it): the rule keeps it.", names)
    best = min(better, key=lambda c: (sum(c.trainable.values()), -sum(c.gain.values()), order.index(c.label)))
    plans = "; ".join(f"{m}: {best.describe(m)} instead of {current.describe(m)}" for m in names)
    how = ("trains fewer parameters" if sum(best.trainable.values()) < sum(current.trainable.values())
           else "gains more on held-out scope beyond the noise")
    return Tuning(current.label, candidates, best.label, True, f"{what.capitalize()} {best.label} replaces "
                  f"{current.label}: on no development model and target is its plan worse beyond the noise, and it "
                  f"{how} ({plans}). It is judged next on the held-out models.", names)


def tune_share(models: Sequence[DevelopmentModel], shares: Sequence[float] = SHARES) -> Tuning:
    """Procedure 1 (module docstring): the window rule's share."""
    if CURRENT not in shares:
        raise ValueError(f"the grid must hold the current share {CURRENT}")
    current_plans = {m.name: plan_at(m.combined, CURRENT) for m in models}
    _check_current(current_plans, models)
    # the grid sorted by distance from the current share: the declared order of its tie-break
    order = [f"{s:g}" for s in sorted(shares, key=lambda s: abs(s - CURRENT))]
    candidates = []
    for share in shares:
        candidate = _candidate(f"{share:g}", {m.name: plan_at(m.combined, share) for m in models}, current_plans,
                               models)
        candidate.share = share
        candidates.append(candidate)
    current = next(c for c in candidates if c.share == CURRENT)
    tuning = _decide(candidates, current, models, "share", order)
    return tuning


def size_plans(combined: Sequence[float], stability: Sequence[float] | None, *, share: float = CURRENT,
               consensus: float = CONSENSUS) -> dict[str, list[int]]:
    """Every size rule's plan (module docstring, procedure 2) from one model's recorded evidence."""
    window = plan_at(combined, share)
    held = consensus_blocks(stability, consensus) or window
    spanned = list(range(held[0], held[-1] + 1))
    first = held[0]
    lead2 = [first, first + 1] if first + 1 < len(combined) else [first - 1, first]
    return {"window": window, "consensus": spanned, "lead": [first], "window_lead": window[:1], "lead2": lead2,
            "peak": top_k(combined, 1)}


def size_variants(combined: Sequence[float], stability: Sequence[float] | None) -> list[str]:
    """The ablation variants a development model must run so that every size rule can be judged."""
    return list(dict.fromkeys(set_name(blocks) for blocks in size_plans(combined, stability).values()))


def tune_size(models: Sequence[DevelopmentModel]) -> Tuning:
    """Procedure 2 (module docstring): the rule's size, among SIZE_RULES."""
    plans = {m.name: size_plans(m.combined, m.stability) for m in models}
    current_plans = {m.name: plans[m.name]["window"] for m in models}
    _check_current(current_plans, models)
    candidates = [_candidate(rule, {m.name: plans[m.name][rule] for m in models}, current_plans, models)
                  for rule in SIZE_RULES]
    return _decide(candidates, candidates[0], models, "size rule", SIZE_RULES)
