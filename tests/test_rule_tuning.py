"""The pre-registered tuning of the rule's share (analysis.ablation.rule_tuning) on planted development models
whose candidate plans, costs and paired differences are known, so the chosen share is known."""
import json

import pytest

from analysis.ablation.rule_tuning import (
    SIZE_RULES,
    DevelopmentModel,
    candidate_variants,
    plan_at,
    size_plans,
    size_variants,
    tune_share,
    tune_size,
)
from analysis.ablation.validity import Validity
from analysis.validation import MODELS, ablation_config

# a: evidence 0.35 / 0.65 on blocks 0 / 1: shares up to 0.65 pick block 1 alone, every larger share blocks 0-1.
# b: 0.1 / 0.75 / 0.15 on blocks 1 / 2 / 3: up to 0.75 block 2 alone, 0.8-0.9 blocks 2-3, 0.95 and 1 blocks 1-3.
A = [0.35, 0.65, 0.0, 0.0]
B = [0.0, 0.1, 0.75, 0.15]
PER_BLOCK = 1000  # trainable parameters of one block


def record(blocks, diff, low, high, gain=0.3):
    return {"blocks": blocks, "trainable": PER_BLOCK * len(blocks), "gain": gain + diff, "diff": diff,
            "diff_low": low, "diff_high": high}


def validity(plans, selected) -> Validity:
    return Validity("scope", [], [], [], {}, {}, {}, selected, 0.3, "selected", selected, 0.3, 0.0, 1.0,
                    plans=plans)


def models(b_layer_2=(-0.01, -0.05, 0.03), b_wide=(0.05, -0.02, 0.1), retrieval_layer_2=(0.0, -0.01, 0.01)):
    a_plans = {"selected": record([0, 1], 0, 0, 0), "layer_1": record([1], -0.2, -0.3, -0.1)}
    b_plans = {"selected": record([2, 3], 0, 0, 0), "window_1_3": record([1, 2, 3], *b_wide)}
    if b_layer_2 is not None:
        b_plans["layer_2"] = record([2], *b_layer_2)
    b_retrieval = {name: record(r["blocks"], 0, -0.01, 0.01) for name, r in b_plans.items()}
    if b_layer_2 is not None:
        b_retrieval["layer_2"] = record([2], *retrieval_layer_2)
    return [DevelopmentModel("a", A, {"scope": validity(a_plans, [0, 1])}),
            DevelopmentModel("b", B, {"scope": validity(b_plans, [2, 3]),
                                      "retrieval": validity(b_retrieval, [2, 3])})]


def test_plans_and_the_variants_a_development_model_must_run():
    assert [plan_at(A, s) for s in (0.5, 0.65, 0.66, 0.8, 1.0)] == [[1], [1], [0, 1], [0, 1], [0, 1]]
    assert [plan_at(B, s) for s in (0.75, 0.8, 0.9, 0.95, 1.0)] == [[2], [2, 3], [2, 3], [1, 2, 3], [1, 2, 3]]
    assert candidate_variants(A) == ["layer_1", "window_0_1"]
    assert candidate_variants(B) == ["layer_2", "window_2_3", "window_1_3"]


def test_a_cheaper_plan_never_worse_replaces_the_share():
    tuning = tune_share(models())
    verdicts = {c.share: c.verdict for c in tuning.candidates}
    # 0.5 / 0.6: block 1 alone on a loses beyond the noise; 0.7 / 0.75: a keeps 0-1, b trains block 2 alone,
    # as good within the noise and cheaper; 0.85 / 0.9: the same plans as 0.8; 0.95 / 1: b's 1-3 costs more and
    # its gain is within the noise
    assert verdicts == {0.5: "worse", 0.6: "worse", 0.7: "better", 0.75: "better", 0.8: "current",
                        0.85: "as good", 0.9: "as good", 0.95: "as good", 1.0: "as good"}
    assert tuning.decided and tuning.chosen == "0.75"  # 0.7 and 0.75 tie on cost and gain: the nearer to 0.8
    assert "b: 2 instead of 2-3" in tuning.sentence
    worse = next(c for c in tuning.candidates if c.share == 0.5)
    assert worse.worse_on == {"a": ["scope"]}


def test_a_loss_on_any_target_rules_a_share_out():
    tuning = tune_share(models(retrieval_layer_2=(-0.05, -0.08, -0.02)))
    assert {c.share: c.verdict for c in tuning.candidates}[0.75] == "worse"
    assert tuning.chosen == "0.8" and tuning.decided
    assert "No share beats 0.8" in tuning.sentence and "the rule keeps it" in tuning.sentence


def test_a_larger_plan_must_gain_beyond_the_noise():
    tuning = tune_share(models(b_layer_2=(-0.05, -0.1, -0.01), b_wide=(0.08, 0.02, 0.14)))
    verdicts = {c.share: c.verdict for c in tuning.candidates}
    assert verdicts[0.75] == "worse" and verdicts[0.95] == "better" and verdicts[1.0] == "better"
    assert tuning.chosen == "0.95"  # the two cost and gain the same: the one nearer the current share


def test_nothing_is_decided_while_a_candidate_plan_is_not_run():
    tuning = tune_share(models(b_layer_2=None))
    assert not tuning.decided and tuning.chosen == "0.8"
    assert "b layer_2" in tuning.sentence
    assert {c.share: c.verdict for c in tuning.candidates}[0.75] == "untested"


def test_a_development_model_runs_every_candidate_plan(tmp_path):
    late = next(m for m in MODELS if m.name == "late")
    plan = tmp_path / "layer_plan.json"
    combined = [0.172, 0, 0, 0, 0, 0, 0.061, 0.727, 0, 0, 0, 0.04]
    plan.write_text(json.dumps({"blocks": list(range(6, 12)), "evidence": {"combined": combined}}))
    variants = ablation_config(late, plan).variants
    assert {"layer_7", "window_6_7", "window_0_7", "window_0_11"} <= set(variants)
    held_out = next(m for m in MODELS if m.role == "held-out")
    assert "window_0_7" not in ablation_config(held_out, plan).variants


def test_the_grid_must_hold_the_current_share():
    with pytest.raises(ValueError, match="current share"):
        tune_share(models(), shares=(0.5, 0.9))


# --- procedure 2: the rule's size -----------------------------------------------------------------------------------
# a: the window 0-1 held by every replicate; b: the window 2-3, block 1 in 30 % of the replicates' windows
A_STABILITY = [1.0, 1.0, 0.0, 0.0]
B_STABILITY = [0.0, 0.3, 1.0, 0.9]


def size_models(a_layer_0=(0.02, -0.05, 0.09), a_retrieval_layer_0=(0.0, -0.01, 0.01)):
    a_plans = {"selected": record([0, 1], 0, 0, 0), "layer_0": record([0], *a_layer_0),
               "layer_1": record([1], -0.2, -0.3, -0.1)}
    b_plans = {"selected": record([2, 3], 0, 0, 0), "layer_2": record([2], -0.01, -0.05, 0.03)}
    a_retrieval = {name: record(r["blocks"], 0, -0.01, 0.01) for name, r in a_plans.items()}
    a_retrieval["layer_0"] = record([0], *a_retrieval_layer_0)
    return [DevelopmentModel("a", A, {"scope": validity(a_plans, [0, 1]), "retrieval": validity(a_retrieval, [0, 1])},
                             A_STABILITY),
            DevelopmentModel("b", B, {"scope": validity(b_plans, [2, 3])}, B_STABILITY)]


def test_every_size_rule_reads_its_plan_off_the_evidence():
    assert size_plans(A, A_STABILITY) == {"window": [0, 1], "consensus": [0, 1], "lead": [0], "window_lead": [0],
                                          "lead2": [0, 1], "peak": [1]}
    assert size_plans(B, B_STABILITY) == {"window": [2, 3], "consensus": [2, 3], "lead": [2], "window_lead": [2],
                                          "lead2": [2, 3], "peak": [2]}
    # the middle case: the point's window starts at a block few replicates hold; the consensus starts later
    middle = [0.22, 0, 0, 0, 0.12, 0.66]
    plans = size_plans(middle, [0.1, 0.1, 0.1, 0.1, 1.0, 1.0])
    assert plans["window"] == [0, 1, 2, 3, 4, 5] and plans["window_lead"] == [0]
    assert plans["consensus"] == [4, 5] and plans["lead"] == [4] and plans["lead2"] == [4, 5]
    assert size_variants(B, B_STABILITY) == ["window_2_3", "layer_2"]


def test_the_cheapest_size_rule_never_worse_replaces_the_window():
    tuning = tune_size(size_models())
    verdicts = {c.label: c.verdict for c in tuning.candidates}
    # consensus and lead2: the window's plans; lead and window_lead: one block, within the noise and cheaper on
    # both; peak: block 1 alone on a loses beyond the noise
    assert verdicts == {"window": "current", "consensus": "as good", "lead": "better", "window_lead": "better",
                        "lead2": "as good", "peak": "worse"}
    assert tuning.decided and tuning.chosen == "lead"  # lead and window_lead tie: the declared order decides
    assert SIZE_RULES.index("lead") < SIZE_RULES.index("window_lead")
    assert "a: 0 instead of 0-1; b: 2 instead of 2-3" in tuning.sentence


def test_a_single_block_that_loses_anywhere_keeps_the_window():
    tuning = tune_size(size_models(a_retrieval_layer_0=(-0.03, -0.05, -0.01)))
    verdicts = {c.label: c.verdict for c in tuning.candidates}
    assert verdicts["lead"] == verdicts["window_lead"] == "worse" and tuning.chosen == "window"
    assert "No size rule beats window" in tuning.sentence


def test_a_procedure_is_not_applied_again_after_the_rule_changed():
    a, b = size_models()
    changed = DevelopmentModel("a", A, {"scope": validity(a.validity["scope"].plans, [0])}, A_STABILITY)
    with pytest.raises(ValueError, match="applied once"):
        tune_size([changed, b])
