"""The validation study's generated blocks (scripts/make_results.py renders them into the README and docs/).

Each function reads the study's JSON under docs/results/validation (copied there by `make_results.py --collect`)
and returns Markdown; none states a number of its own. Models are listed in the order of analysis.validation.MODELS,
with their role (development: the rule may be tuned on it; held-out: it judges the rule; null: no plan allowed).

The study-level verdict (`selector_verdict`) applies the acceptance test of the selector study:
  1. at equal size the toolkit's plan is at least as good as each baseline selector's, on every model and target
     (no "worse": a paired bootstrap interval of the difference entirely below 0);
  2. it is strictly better than raw Auto-RGN and than the fixed front on at least two models whose answer differs
     (models whose best plan of the toolkit's size, by held-out scope, is not the front k blocks);
  3. it lies on the gain / trainable-parameter frontier within the intervals (no plan with no more parameters
     gains more in 97.5 % of bootstrap replicates), on every model and target;
and says, per model, the next point on the frontier (what a larger budget buys).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from analysis.ablation.validity import with_interval

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "docs" / "results" / "validation"
SCOPE = "scope"
NAIVE = ("auto_rgn", "front")  # the selectors the toolkit must beat where the answer differs


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _models():
    from analysis.validation import MODELS

    return MODELS


def _load(model: str, name: str, where: str = "ablation"):
    path = STUDY / model / where / name
    return _json(path) if path.is_file() else None


def _validity(model: str):
    """{target: Validity} of a model's ablation, or None before it is complete."""
    from analysis.ablation.validity import from_json

    record = _load(model, "validity.json")
    return None if record is None else from_json(record)


def _plan_gain(v) -> str:
    """The selected plan's gain on one target, with its bootstrap interval."""
    plan = v.plans.get("selected", {})
    return with_interval(plan.get("gain"), plan.get("low"), plan.get("high"), 3)


def _with_scope(v) -> str:
    """Rho, across the single blocks, of a target's gains with scope's, with its interval."""
    return with_interval(v.rho_headline, v.rho_headline_low, v.rho_headline_high)


def _blocks(blocks) -> str:
    from analysis.planning.selection import describe_blocks

    return describe_blocks(list(blocks)) if blocks else "none"


def _ablated() -> list[str]:
    """The models whose ablation wrote its validity test, in the study's order."""
    return [m.name for m in _models() if m.ablate and (STUDY / m.name / "ablation" / "validity.json").is_file()]


def _rows(model: str) -> list[dict]:
    record = _load(model, "selectors.json")
    return [] if record is None else record["rows"]


def _front_differs(model: str) -> bool | None:
    """Whether the model's best plan of the toolkit's size (held-out scope) is not its front k blocks."""
    results = _validity(model)
    if results is None or SCOPE not in results:
        return None
    v = results[SCOPE]
    return list(v.best_blocks) != list(range(len(v.selected)))


def earlier_study(model: str) -> bool:
    """Whether the model's ablation in docs/results is the earlier study's: held-out objects and templates only,
    no baseline selectors (it wrote no selectors.json); the current study on it is still to run."""
    return (_load(model, "ablation_summary.json") is not None and _load(model, "selectors.json") is None)


def _status(model) -> str:
    report = _load(model.name, "report.json", "probe")
    if report is None:
        return "not run yet"
    plan = _blocks(report["plan"]["blocks"])
    if not model.ablate:
        return f"probed: plan {plan}"
    summary = _load(model.name, "ablation_summary.json")
    if summary is None:
        return f"probed: plan {plan}; ablation not run yet"
    runs = sum(len(v["seeds"]) for v in summary["variants"])
    done = "complete" if summary["complete"] else "incomplete"
    seeds = ", ".join(map(str, summary["header"]["seeds"]))
    if earlier_study(model.name):
        return (f"probed: plan {plan}; the earlier study's ablation ({runs} runs, seeds {seeds}; held-out objects "
                "and templates only, no selectors); this study's ablation not run yet")
    return f"probed: plan {plan}; ablation {done} ({runs} runs, seeds {seeds})"


# --- blocks ----------------------------------------------------------------------------------------------------

def study_models() -> str:
    """Every model of the study: its role, the reason it is there (written before its ablation ran), its state."""
    lines = ["| model | role | why it is in the study | state |", "|---|---|---|---|"]
    for model in _models():
        lines.append(f"| {model.name} | {model.role} | {model.reason} | {_status(model)} |")
    return "\n".join(lines)


def validity_table() -> str:
    """Per ablated model, on held-out scope: did the evidence predict the single-block gains, how the plan compares
    with the best plan of its size and of any size, and where it stands on the frontier."""
    from analysis.ablation.validity import frontier_place, next_point

    lines = ["| model | role | plan | rho combined [95% CI] | best plan of its size | ratio to it [95% CI] | "
             "best plan of any size | ratio to it [95% CI] | on the frontier | next point on the frontier |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    roles = {m.name: m.role for m in _models()}
    for model in _ablated():
        v = _validity(model).get(SCOPE)
        if v is None:
            continue
        rho, ratio, ratio_any = _validity_cells(v)
        lines.append(f"| {model} | {roles[model]} | {_blocks(v.selected)} | {rho} | {v.best_plan} ({v.best_gain:+.3f}) "
                     f"| {ratio} | {v.best_any} ({v.best_any_gain:+.3f}) | {ratio_any} | {frontier_place(v, 3)} | "
                     f"{next_point(v)} |")
    if len(lines) == 2:
        return "(no ablation has finished yet: `python scripts/validation_study.py`)"
    return "\n".join(lines)


def _validity_cells(v) -> tuple[str, str, str]:
    """rho of the combined score, the ratio to the best plan of the same size and of any size, with intervals."""
    return (with_interval(v.rho.get("combined"), v.rho_low.get("combined"), v.rho_high.get("combined")),
            with_interval(v.ratio, v.ratio_low, v.ratio_high, sign=False),
            with_interval(v.ratio_any, v.ratio_any_low, v.ratio_any_high, sign=False))


def validity_targets() -> str:
    """Per ablated model and target: rho of the combined score, the ratios, the frontier."""
    from analysis.ablation.validity import TARGETS, frontier_place

    lines = ["| model | target | plan's gain [95% CI] | rho combined | ratio, same size | ratio, any size | "
             "on the frontier | rho with scope's gains |", "|---|---|---|---|---|---|---|---|"]
    for model in _ablated():
        for name, v in _validity(model).items():
            if name not in TARGETS:
                continue
            rho, ratio, ratio_any = _validity_cells(v)
            lines.append(f"| {model} | {TARGETS[name].label} | {_plan_gain(v)} | {rho} | {ratio} | {ratio_any} | "
                         f"{frontier_place(v, 3)} | {_with_scope(v)} |")
    if len(lines) == 2:
        return "(no ablation has finished yet)"
    return "\n".join(lines) + ("\n\nRho with scope's gains: the Spearman correlation, across the single blocks, of the "
                               "target's gains with held-out scope's (below 0: the blocks that learn scope best "
                               "cost most on the target; for the scope targets, which share its items, positive by "
                               "construction).")


def mcq_breakdown() -> str:
    """The multiple choice by its correct answer's type, per ablated model: the plan's gain on each type, and how
    each type's single-block gains go with scope's (validity.json's breakdown)."""
    from analysis.ablation.validity import BREAKDOWN, from_json

    kinds = list(BREAKDOWN)
    lines = ["| model | plan | " + " | ".join(f"{BREAKDOWN[k].label.split(', ')[1].split(' correct')[0]} answers: "
                                               "plan's gain | rho with scope's gains" for k in kinds) + " |",
             "|---|---|" + "---|---|" * len(kinds)]
    against, along, models = [], [], []
    for model in _ablated():
        parts = from_json(_load(model, "validity.json"), breakdown=True)
        if set(parts) != set(kinds):
            continue
        models.append(model)
        cells = [cell for kind in kinds for cell in (_plan_gain(parts[kind]), _with_scope(parts[kind]))]
        lines.append(f"| {model} | {_blocks(parts[kinds[0]].selected)} | " + " | ".join(cells) + " |")
        # a rank correlation needs blocks that move: where one block alone gains any (the rest tied at the frozen
        # model's floor), its interval collapses to a point that ties make, and it is not counted
        moving = {kind: sum(g != 0 for g in parts[kind].gains) >= 2 for kind in kinds}
        if moving["mcq_hybrid"] and parts["mcq_hybrid"].rho_headline_high < 0:
            against.append(model)
        if moving["mcq_negative"] and parts["mcq_negative"].rho_headline_low > 0:
            along.append(model)
    if not models:
        return "(no ablation has recorded the multiple choice by answer type yet)"
    return "\n".join(lines) + (
        f"\n\nGain: the plan's change of the share of items answered right, with its 95 % bootstrap interval over "
        f"seeds and items. Rho: across the single blocks, the Spearman correlation of the answer type's gains with "
        f"held-out scope's. On {len(against)} of {len(models)} models ({', '.join(against) or 'none'}) the hybrid "
        f"answers' gains run opposite to scope's beyond the noise (rho's interval below 0); on {len(along)} "
        f"({', '.join(along) or 'none'}) the negated answers' run with them (counted only where at least two blocks "
        f"change the answer type at all: where one block alone does, the others tied at the frozen model's level, "
        f"the interval is a point that the ties make).")


def mcq_arm() -> str:
    """The models of analysis.validation.MCQ_ARM trained twice: with the scope recipe (the study's ablation) and with
    NegBench's MCQ loss beside it (the arm); per recipe, the plan's gain on scope, on the multiple choice and its
    hybrid and negated answers, how the multiple choice's single-block gains go with scope's, and the baselines the
    plan trails or beats there beyond the noise."""
    from analysis.ablation.validity import from_json
    from analysis.validation import MCQ_ARM, MCQ_ARM_FOLDER

    lines = ["| model | plan | trained with | scope: plan's gain | multiple choice: plan's gain | hybrid answers | "
             "negated answers | rho of the multiple choice's gains with scope's | baselines the plan trails / beats "
             "on the multiple choice |", "|---|---|---|---|---|---|---|---|---|"]
    recipes = (("the scope recipe", "ablation"), ("+ NegBench's MCQ loss (weight 1)", MCQ_ARM_FOLDER))
    shown, paired = 0, []  # the records' paired_seeds
    for model in MCQ_ARM:
        records = {where: _load(model, "validity.json", where) for _, where in recipes}
        if None in records.values():
            continue
        shown += 1
        paired += [v.paired_seeds for record in records.values() for v in from_json(record).values()]
        for label, where in recipes:
            results, parts = from_json(records[where]), from_json(records[where], breakdown=True)
            rows = [r for r in (_load(model, "selectors.json", where) or {"rows": []})["rows"] if r["target"] == "mcq"]
            worse = sorted({r["selector"] for r in rows if r["verdict"] == "worse"})
            better = sorted({r["selector"] for r in rows if r["verdict"] == "better"})
            mcq = results["mcq"]
            lines.append(f"| {model} | {_blocks(mcq.selected)} | {label} | {_plan_gain(results[SCOPE])} | "
                         f"{_plan_gain(mcq)} | {_plan_gain(parts['mcq_hybrid'])} | {_plan_gain(parts['mcq_negative'])} "
                         f"| {_with_scope(mcq)} | {', '.join(worse) or 'none'} / {', '.join(better) or 'none'} |")
    if not shown:
        return "(the multiple-choice arm has not finished yet: scripts/validation_study.py --mcq-arm)"
    pairing = ("paired over seeds and items" if all(paired) else
               "paired over the items only in records written before the validity test drew the same seeds for "
               "every plan: the note on pairing above says which")
    return "\n".join(lines) + ("\n\nGains with their 95 % bootstrap intervals over seeds and items; trails / beats: "
                               "the baseline selectors whose plan of the plan's size is better / worse than the plan's "
                               f"on the multiple choice by the interval of the difference ({pairing}).")


def selector_summary() -> str:
    """Per ablated model, on held-out scope: the toolkit plan's verdict against each selector (paired intervals)."""
    models = [m for m in _ablated() if _rows(m)]
    if not models:
        return "(no selector table yet: the ablations with `--selectors all` have not finished)"
    selectors = list(dict.fromkeys(r["selector"] for m in models for r in _rows(m) if r["selector"] != "toolkit"))
    lines = ["| model | toolkit plan | best plan of its size | " + " | ".join(selectors) + " |",
             "|---|---|---|" + "---|" * len(selectors)]
    for model in models:
        rows = {r["selector"]: r for r in _rows(model) if r["target"] == SCOPE}
        v = _validity(model)[SCOPE]
        cells = []
        for name in selectors:
            row = rows.get(name)
            if row is None:
                cells.append("–")
            elif row["verdict"] in ("not run", "same plan"):
                cells.append(f"{row['verdict']} ({row['blocks']})" if row["verdict"] == "same plan" else "not run")
            else:
                cells.append(f"{row['verdict']} ({row['blocks']}; {row['toolkit_minus']:+.3f})")
        lines.append(f"| {model} | {rows['toolkit']['blocks']} ({rows['toolkit']['gain']:+.3f}) | "
                     f"{_blocks(v.best_blocks)} ({v.best_gain:+.3f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nEach cell: the toolkit plan against that selector's plan of the same size on "
                               "held-out scope (better / as good / worse by the 95 % bootstrap interval of the "
                               "difference), the selector's blocks and the toolkit plan's gain minus the selector's. "
                               + bootstrap_pairing())


def bootstrap_pairing() -> str:
    """How the ablated models' validity records paired two plans in the bootstrap: over the items only (each plan's
    seeds drawn on its own, in records written before the validity test drew the same seeds for every plan) or
    over the seeds and the items."""
    from analysis.ablation.validity import from_json
    from analysis.validation import MCQ_ARM, MCQ_ARM_FOLDER

    records = {model: _validity(model) for model in _ablated()}
    records.update({f"the multiple-choice arm of {model}": from_json(arm) for model in MCQ_ARM
                    if (arm := _load(model, "validity.json", MCQ_ARM_FOLDER)) is not None})
    paired = {name: all(v.paired_seeds for v in results.values()) for name, results in records.items()}
    new, old = [m for m, p in paired.items() if p], [m for m, p in paired.items() if not p]
    text = ""
    if new:
        text = f"On {', '.join(new)} the interval is paired over seeds and items. "
    if old:
        text += ((f"On {', '.join(old)}, the" if new else "The") + " records were written before the validity test "
                 "drew the same seeds for every plan: a difference's interval is paired over the test items only, each "
                 "plan's seeds resampled on their own (two identical plans get an interval around 0 instead of "
                 "exactly 0). Paired over seeds too, an interval is narrower where a seed moves two plans alike and "
                 "wider where it moves them apart, so a verdict near the edge in these records might read "
                 "otherwise paired. Their per-item run records were not kept in the repository, so the intervals "
                 "cannot be computed again without training the runs again.")
    return text.strip()


def selector_tables() -> str:
    """The full selector table of every ablated model on held-out scope (selectors.json), and per target the count
    of each verdict."""
    from analysis.ablation.selector_table import SelectorRow, markdown

    out = []
    for model in _ablated():
        rows = [SelectorRow(**r) for r in _rows(model)]
        if not rows:
            continue
        table = markdown([r for r in rows if r.target == SCOPE], [SCOPE])
        table = table[table.index("| selector |"):]  # the table and its sentence, under this model's heading
        counts = []
        for target in dict.fromkeys(r.target for r in rows):
            verdicts = [r.verdict for r in rows if r.target == target and r.selector != "toolkit"]
            counts.append(f"{target}: " + ", ".join(f"{verdicts.count(x)} {x}" for x in
                                                   ("better", "as good", "same plan", "worse", "not run")
                                                   if verdicts.count(x)))
        out.append(f"#### {model}\n\n{table.strip()}\n\nVerdicts per target: " + "; ".join(counts) + ".")
    return "\n\n".join(out) or "(no selector table yet)"


def selector_verdict() -> str:
    """The acceptance test of the module docstring, computed from every ablated model's selector table."""
    models = [m for m in _ablated() if _rows(m)]
    if not models:
        return "(not decided yet: no ablation with the selectors has finished)"
    worse = [(m, r["target"], r["selector"]) for m in models for r in _rows(m) if r["verdict"] == "worse"]
    differs = [m for m in models if _front_differs(m)]
    beats = [m for m in differs
             if all(any(r["selector"] == s and r["target"] == SCOPE and r["verdict"] == "better" for r in _rows(m))
                    for s in NAIVE)]
    off = [(m, name) for m in models for name, v in _validity(m).items()
           if "selected" not in v.frontier and v.dominated_by]
    pending = [m.name for m in _models() if m.ablate and m.name not in models]
    lines = [f"Judged on {len(models)} ablated model(s): {', '.join(models)}"
             + (f"; still to run: {', '.join(pending)}." if pending else ".")]
    lines.append(("1. At equal size the toolkit's plan is at least as good as every baseline selector on every model "
                  "and target: **yes**." if not worse else
                  f"1. At equal size the toolkit's plan is **worse** than a baseline beyond the noise in "
                  f"{len(worse)} case(s): " + "; ".join(f"{m} / {t} / {s}" for m, t, s in worse) + ". "
                  + comparisons_made(models)))
    lines.append(f"2. Models whose best plan of the toolkit's size is not the front: {', '.join(differs) or 'none'}; "
                 f"on {len(beats)} of them ({', '.join(beats) or 'none'}) the toolkit's plan is strictly better than "
                 f"both raw Auto-RGN and the fixed front on held-out scope: "
                 + ("**yes** (at least two)." if len(beats) >= 2 else "**no** (at least two are required)."))
    lines.append("3. The toolkit's plan lies on the gain / trainable-parameter frontier within the intervals on every "
                 "model and target: " + ("**yes**." if not off else
                                         "**no**: " + "; ".join(f"{m} / {t}" for m, t in off) + "."))
    lines.append(reachable_line(models))
    passed = not worse and len(beats) >= 2 and not off and not pending
    lines.append("Verdict: " + ("the rule passes the selector study." if passed else
                                "the rule does **not** (yet) pass the selector study" +
                                (" (models still to run)" if pending and not worse and not off else "") + "."))
    return "\n".join(lines)


def comparisons_made(models: list[str]) -> str:
    """How many distinct comparisons criterion 1 made, and how many would read worse by chance alone: several
    selectors often pick one plan, so a plan compared with the toolkit's on one model and target counts once. With
    two-sided 95 % intervals that hold what they claim, a plan that gains exactly as much reads worse 2.5 % of the
    time (more often where they are too narrow). Context for the count, not a correction: the comparisons share the
    toolkit's runs, so they are not independent (the expected count holds all the same; its spread does not)."""
    compared = {(m, r["target"], r["variant"]): r["verdict"] for m in models for r in _rows(m)
                if r["selector"] != "toolkit" and r["verdict"] in ("better", "as good", "worse")}
    worse = [key for key, verdict in compared.items() if verdict == "worse"]
    by_target = Counter(target for _, target, _ in worse).most_common(1)
    where = f", {by_target[0][1]} of them on {by_target[0][0]}" if by_target else ""
    return (f"(Distinct plans: {len(worse)} worse of {len(compared)} compared{where}; were every plan as good as the "
            f"toolkit's, about {0.025 * len(compared):.0f} of {len(compared)} would read worse by chance at this "
            "level, more if the intervals hold less than 95 %, as percentile intervals over three seeds tend to. The "
            "comparisons share runs, so this is a guide to the count, not a test.)")


def reachable_line(models: list[str]) -> str:
    """Whether any plan a model's study ran could have met criterion 3, read off each target's frontier within the
    noise (analysis.ablation.validity.within_noise_everywhere). It is necessary for criterion 1 too, against the
    baselines whose plans were trained: a plan that one of them beats beyond the noise at its size is off the
    frontier within the noise."""
    from analysis.ablation.validity import TARGETS, within_noise_everywhere

    some, none = [], []
    for model in models:
        results = _validity(model)
        everywhere, blocking = within_noise_everywhere(results)
        plans = results[SCOPE].plans
        if "selected" in everywhere:
            some.append(f"{model} (the plan itself)")
        elif everywhere:
            smallest = plans[everywhere[0]]["trainable"]
            size = ("the plan's size" if smallest <= plans["selected"]["trainable"] else
                    f"{smallest:,} parameters against the plan's {plans['selected']['trainable']:,}")
            some.append(f"{model} (not the plan; smallest: {everywhere[0]}, {size})")
        elif any(v.undominated for v in results.values()):
            none.append(f"{model}" + (f" (leaving out {' or '.join(TARGETS[t].name for t in blocking)}, some would)"
                                      if blocking else ""))
    if not some and not none:
        return ("Could any plan have met criterion 3? Not computed (validity records written before the frontier "
                "within the noise was kept).")
    text = ("Could any plan have met criterion 3? A plan the study ran lies on the frontier within the noise on every "
            "target at once on " + (", ".join(some) or "no model"))
    if none:
        return text + "; on " + ", ".join(none) + " none does, so there no rule that picks one plan could meet it."
    return text + ": on every model some plan meets it, so where the toolkit's plan misses it the shortfall is the " \
                  "rule's, not an unreachable criterion's."


def frontier_default() -> str:
    """The default model's frontier on every target (the figure) and the next point on it."""
    results = _validity("default")
    if results is None or SCOPE not in results:
        return "(not run yet)"
    from analysis.ablation.validity import frontier_sentence

    text = " ".join(frontier_sentence(v) for name, v in results.items() if name in (SCOPE, "absence", "mcq"))
    return text + "\n\n![frontier](docs/figures/frontier-default.png)"


def finetune_comparison() -> str:
    """Where the default model's fine-tunes changed its text tower (compare-checkpoints' comparison.json), against
    where probe-layers put the evidence."""
    path = STUDY / "default" / "finetunes" / "compare" / "comparison.json"
    report = _load("default", "report.json", "probe")
    if not path.is_file() or report is None:
        return "(not run yet: `python scripts/validation_study.py --finetunes`)"
    comparison = _json(path)
    plan = report["plan"]["blocks"]
    lines = ["| fine-tune | blocks holding 80 % of the change | largest change (block: relative change) | "
             "overlap with the plan |", "|---|---|---|---|"]
    for name, changes in comparison["block_change"].items():
        top = max(changes, key=lambda b: (changes[b], -int(b)))
        held = comparison["concentrated_blocks"][name]
        overlap = sorted(set(held) & set(plan))
        share = "all" if len(overlap) == len(plan) else f"{len(overlap)} of {len(plan)}" if overlap else "none"
        lines.append(f"| {name} | {_blocks(held)} | {top}: {changes[top]:.3f} | {share} of the plan's blocks "
                     f"({_blocks(plan)}) |")
    sentences = [s for s in comparison["sentences"] if not s.startswith("Probes")][:len(comparison["block_change"])]
    return ("\n".join(lines) + "\n\n" + "\n\n".join(f"> {s}" for s in sentences)
            + "\n\n![where the fine-tunes changed the text tower](docs/figures/finetune-change-default.png)")


def preregistration() -> str:
    """The rule's frozen commit, the procedure that chose it and which models judge it (analysis.validation)."""
    from analysis.validation import RULE_COMMIT, frozen_tuning

    development = [m.name for m in _models() if m.role == "development"]
    seen = [m.name for m in _models() if m.role == "held-out" and not m.blind]
    blind = [m.name for m in _models() if m.role == "held-out" and m.blind]
    null = [m.name for m in _models() if m.role == "null"]
    size = frozen_tuning(STUDY)["size"]
    return (f"The selection rule is the `{size.chosen}` rule of commit `{RULE_COMMIT}`, unchanged since, chosen by "
            f"the size procedure (`analysis/ablation/rule_tuning.py`, declared in its own commit before it was "
            f"applied) on the development models only ({', '.join(development)}). It is judged on the held-out "
            f"models: {', '.join(blind)} blind (built and ablated after the rule was frozen), and "
            f"{', '.join(seen)}, whose ablations under the earlier window rule had been read before the procedure "
            f"was declared (so they are not blind to it). It must select nothing on the null towers "
            f"({', '.join(null)}).")


def _tuning_table(tuning, head: str) -> str:
    cells_head = " | ".join(f"{m}: plan | {m}: trainable | {m}: minus the plan then current" for m in tuning.models)
    lines = [f"| {head} | {cells_head} | worse beyond the noise on | verdict |",
             "|---|" + "---|---:|---|" * len(tuning.models) + "---|---|"]
    for c in tuning.candidates:
        cells = []
        for m in tuning.models:
            diff = c.diff[m]
            cells += [c.describe(m), "not run" if c.trainable[m] is None else f"{c.trainable[m]:,}",
                      "–" if diff is None else with_interval(*diff, 3)]
        worse = "; ".join(f"{m}: {', '.join(targets)}" for m, targets in c.worse_on.items()) or "–"
        lines.append(f"| {c.label} | {' | '.join(cells)} | {worse} | {c.verdict} |")
    return "\n".join(lines) + "\n\n" + tuning.sentence


def rule_tuning() -> str:
    """Procedure 1, the share (analysis.ablation.rule_tuning), as frozen: each share's plan per development model,
    its cost, its headline difference from the then current plan, where it is worse."""
    from analysis.validation import frozen_tuning

    return _tuning_table(frozen_tuning(STUDY)["share"], "share")


def size_tuning() -> str:
    """Procedure 2, the size, as frozen: each size rule's plan per development model, and so on."""
    from analysis.validation import frozen_tuning

    return _tuning_table(frozen_tuning(STUDY)["size"], "size rule")


def rule_tuning_sentence() -> str:
    """Both procedures' outcomes (the README's; the tables are in docs/VALIDATION.md)."""
    from analysis.validation import frozen_tuning

    tunings = frozen_tuning(STUDY)
    return tunings["share"].sentence + " " + tunings["size"].sentence


BLOCKS = {
    "study-models": study_models,
    "validity-table": validity_table,
    "validity-targets": validity_targets,
    "mcq-breakdown": mcq_breakdown,
    "mcq-arm": mcq_arm,
    "selector-summary": selector_summary,
    "bootstrap-pairing": bootstrap_pairing,
    "selector-tables": selector_tables,
    "selector-verdict": selector_verdict,
    "frontier-default": frontier_default,
    "finetune-comparison": finetune_comparison,
    "preregistration": preregistration,
    "rule-tuning": rule_tuning,
    "size-tuning": size_tuning,
    "rule-tuning-sentence": rule_tuning_sentence,
}
