"""Predictive validity of the layer evidence: per-block gains, Spearman correlations and the regret of
the selected plan against the best plan of its size, checked against a direct computation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.ablation.validity import assess, from_json, verdict
from analysis.ablation.variants import openclip_last_plan, resolve_variants, window_blocks, windows_of

N_LAYERS, N_ITEMS = 4, 60


def make_runs(rates: dict[str, float], seeds=(0, 1, 2), rng=None) -> list[dict]:
    """Run records whose per-item scope outcomes win at about `rates[variant]` (+- seed noise)."""
    rng = rng or np.random.default_rng(0)
    runs = []
    for variant, rate in rates.items():
        for seed in seeds:
            p = np.clip(rate + rng.normal(0, 0.02), 0, 1)
            runs.append({"variant": variant, "seed": seed,
                         "items": {f"{axis}/scope": (rng.random(N_ITEMS) < p).astype(int).tolist()
                                   for axis in ("object", "template")}})
    return runs


RATES = {"frozen": 0.1, "layer_0": 0.6, "layer_1": 0.3, "layer_2": 0.2, "layer_3": 0.15,
         "selected": 0.55, "window_0_1": 0.65, "window_1_2": 0.35, "window_2_3": 0.25}
EVIDENCE = {"components": {"probe": {"excess": [0.1, 0.05, 0.0, -0.02]}, "gradnorm": {"excess": [-0.1, 0.0, 0.1, 0.2]}},
            "combined": [0.6, 0.4, 0.0, 0.0]}


def test_gains_rho_and_regret_equal_a_direct_computation():
    runs = make_runs(RATES)
    results = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=200)
    by_variant = {v: np.mean([np.mean(r["items"]["object/scope"]) for r in runs if r["variant"] == v]) for v in RATES}
    gains = [by_variant[f"layer_{b}"] - by_variant["frozen"] for b in range(N_LAYERS)]
    result = results["scope_object"]
    assert result.gains == pytest.approx(gains)
    assert result.rho["probe"] == pytest.approx(
        stats.spearmanr(EVIDENCE["components"]["probe"]["excess"], gains).statistic
    )
    assert result.rho["gradnorm"] == pytest.approx(-1.0)  # ordered opposite to the gains
    candidates = {name: by_variant[name] - by_variant["frozen"] for name in ("selected", "window_0_1", "window_1_2",
                                                                              "window_2_3")}
    best = max(candidates, key=candidates.get)
    assert result.best_plan == best == "window_0_1"
    assert result.regret == pytest.approx(candidates[best] - candidates["selected"])
    assert result.ratio == pytest.approx(candidates["selected"] / candidates[best])
    assert result.rho_low["probe"] <= result.rho["probe"] <= result.rho_high["probe"]
    mean = results["scope"]
    assert mean.gains[0] == pytest.approx((results["scope_object"].gains[0] + results["scope_template"].gains[0]) / 2)


def test_verdict_says_whether_the_evidence_predicted_and_the_target_was_met():
    text = " ".join(verdict(assess(make_runs(RATES), EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=200)))
    assert "The evidence predicted where fine-tuning works" in text and "combined" in text
    assert "the point ratio misses the 95% target" in text  # 0.55 of 0.65 is below 95 %
    good = dict(RATES, selected=0.66)
    text = " ".join(verdict(assess(make_runs(good), EVIDENCE, [0, 1], n_layers=N_LAYERS)))
    assert "the point ratio meets the 95% target" in text


def test_the_ratio_interval_agrees_with_a_direct_bootstrap_and_separates_noise_from_a_miss():
    """The ratio's interval: a bootstrap written here from scratch (the same seeds and items resampled for every
    plan) gives the same quantiles within Monte Carlo error; a plan far behind the best misses in every replicate,
    a plan far ahead meets in every one, and a near tie is said to be one."""
    runs = make_runs(RATES)
    result = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=2000)["scope_object"]
    items = {v: np.array([r["items"]["object/scope"] for r in runs if r["variant"] == v], float) for v in RATES}
    plans = ["selected", "window_0_1", "window_1_2", "window_2_3"]
    rng = np.random.default_rng(123)
    ratios = []
    for _ in range(2000):
        cols, seeds = rng.integers(0, N_ITEMS, N_ITEMS), rng.integers(0, 3, 3)
        mean = {v: items[v][seeds][:, cols].mean() for v in ["frozen", *plans]}
        gains = {v: mean[v] - mean["frozen"] for v in plans}
        ratios.append(gains["selected"] / max(gains.values()))
    low, high = np.quantile(ratios, [0.025, 0.975])
    assert result.ratio_low == pytest.approx(low, abs=0.03) and result.ratio_high == pytest.approx(high, abs=0.03)
    assert result.target_share == pytest.approx(np.mean(np.array(ratios) >= 0.95), abs=0.03)
    assert result.ratio_low <= result.ratio <= result.ratio_high
    far_behind = assess(make_runs(dict(RATES, selected=0.3)), EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300)
    # (a replicate that draws one seed three times, 1 in 9, can come near: at most a few of 300)
    assert far_behind["scope_object"].target_share < 0.02 and far_behind["scope_object"].ratio_high < 0.95
    far_ahead = assess(make_runs(dict(RATES, selected=0.95)), EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300)
    assert far_ahead["scope_object"].ratio_low == far_ahead["scope_object"].ratio_high == 1.0
    assert far_ahead["scope_object"].target_share == 1.0
    tie = assess(make_runs(dict(RATES, selected=0.64)), EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300)
    text = " ".join(verdict(tie))
    assert "of replicates" in text and 0.1 < tie["scope_object"].target_share < 1.0


def test_verdict_names_the_combined_score_when_only_a_part_predicted():
    """The plan is chosen by the combined score: a part that correlates does not make the evidence predictive."""
    import dataclasses
    import json

    results = assess(make_runs(RATES), EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=200)
    mean = results["scope"]
    results["scope"] = dataclasses.replace(mean, rho_low={**mean.rho_low, "combined": -0.1, "probe": 0.05})
    text = " ".join(verdict(results))
    assert "The combined score the plan was chosen by did not predict" in text and "probe did" in text
    assert "The evidence predicted where fine-tuning works" not in text
    # the sentences come back the same from validity.json's numbers
    record = json.loads(json.dumps({"targets": {axis: v.to_dict() for axis, v in results.items()}}))
    assert verdict(from_json(record)) == verdict(results)


def test_validity_refuses_a_study_without_the_sweep_or_the_windows():
    runs = make_runs({k: v for k, v in RATES.items() if k != "layer_2"})
    with pytest.raises(ValueError, match="missing blocks \\[2\\]"):
        assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS)
    runs = make_runs({k: v for k, v in RATES.items() if k != "window_1_2"})
    with pytest.raises(ValueError, match="missing window_1_2"):
        assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS)


def test_windows_and_the_anchors_variants():
    assert windows_of(3, 5) == ["window_0_2", "window_1_3", "window_2_4"]
    assert window_blocks("window_2_4") == [2, 3, 4] and window_blocks("window_4_2") is None
    variants, _ = resolve_variants(["frozen", "windows", "anchors"], 6, has_plan=True, selected_size=2)
    assert variants == ["frozen", "omni_front", "omni_whole", "openclip_last", "norm_only", "steering", "window_0_1",
                        "window_1_2", "window_2_3", "window_3_4", "window_4_5"]
    # open_clip's own function decides: unlocked_layers = h + 1 unlocks the last h blocks, ln_final and projection
    plan = openclip_last_plan(12)
    assert plan.blocks == [6, 7, 8, 9, 10, 11] and plan.train_ln_final and plan.train_projection
    assert not plan.train_embeddings and not plan.train_logit_scale


def test_any_size_ratio_and_the_frontier_equal_a_direct_computation():
    """Plans of other sizes and costs: the best plan of any size, the ratio to it, the frontier of gain against
    trainable parameters and the next point on it, computed here from the per-item outcomes directly."""
    rates = dict(RATES, selected=0.35, window_0_2=0.75, window_1_3=0.3, all=0.7, omni_front=0.8, selected_planned=0.6)
    runs = make_runs(rates)
    params = {"layer_0": 10, "layer_1": 10, "layer_2": 10, "layer_3": 10, "selected": 20, "window_0_1": 20,
              "window_1_2": 20, "window_2_3": 20, "window_0_2": 30, "window_1_3": 30, "all": 40, "omni_front": 500,
              "selected_planned": 400}
    result = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300, trainable=params,
                    groups={"all": [0, 1, 2, 3]})["scope_object"]
    mean = {v: np.mean([np.mean(r["items"]["object/scope"]) for r in runs if r["variant"] == v]) for v in rates}
    gain = {v: mean[v] - mean["frozen"] for v in params}
    real = {v: p for v, p in result.plans.items() if not p["expected"]}
    assert real.keys() == gain.keys()
    assert {v: p["gain"] for v, p in real.items()} == pytest.approx(gain)
    # a random window's expected gain: the mean over every window of its size; its ratio to the best of that size
    windows = {2: ["window_0_1", "window_1_2", "window_2_3"], 3: ["window_0_2", "window_1_3"]}
    for size, names in windows.items():
        expected = result.plans[f"random_window_{size}"]
        assert expected["gain"] == pytest.approx(np.mean([gain[w] for w in names]))
        best_of_size = max(gain[w] for w in names + (["selected"] if size == 2 else []))
        assert expected["ratio"] == pytest.approx(expected["gain"] / best_of_size)
    assert result.plans["window_1_2"]["diff"] == pytest.approx(gain["window_1_2"] - gain["selected"])
    assert result.plans["window_0_1"]["diff_low"] > 0  # the plan that beats the selected one beyond the noise
    best = max(gain, key=gain.get)
    assert result.best_any == best and result.ratio_any == pytest.approx(gain["selected"] / gain[best])
    # the frontier by hand: no other plan gains more with no more parameters
    frontier = sorted((v for v in gain if not any(params[o] <= params[v] and gain[o] > gain[v] for o in gain)),
                      key=params.get)
    assert result.frontier == frontier
    assert "selected" not in frontier and "window_0_1" in frontier  # window_0_1 (0.65) beats selected (0.35)
    assert "window_0_1" in result.dominated_by  # by 0.30 on 60 items x 3 seeds: beyond the noise
    assert result.next_larger == min((v for v in frontier if params[v] > 20 and gain[v] > gain["selected"]),
                                     key=params.get)
    assert result.plans["selected"]["low"] <= gain["selected"] <= result.plans["selected"]["high"]
    assert result.ratio_any_low <= result.ratio_any <= result.ratio_any_high
    text = " ".join(verdict({"scope": result}))
    assert "is not on the frontier" in text and f"the next point on the frontier is {result.next_larger}" in text


def test_every_target_with_recorded_outcomes_is_assessed():
    """A target is assessed when every run recorded its items; absence and multiple choice here."""
    rng = np.random.default_rng(1)
    runs = make_runs(RATES, rng=rng)
    for run in runs:
        run["items"]["object/absence"] = (rng.random(N_ITEMS) < 0.5).astype(int).tolist()
        run["items"]["object/mcq"] = (rng.random(N_ITEMS) < 0.4).astype(int).tolist()
    results = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=100)
    assert set(results) == {"scope", "scope_object", "scope_template", "absence", "mcq"}
    direct = np.mean([np.mean(r["items"]["object/mcq"]) for r in runs if r["variant"] == "layer_2"]) - np.mean(
        [np.mean(r["items"]["object/mcq"]) for r in runs if r["variant"] == "frozen"])
    assert results["mcq"].gains[2] == pytest.approx(direct)


def test_selector_table_verdicts_follow_the_paired_differences():
    """Planted outcomes: the toolkit's plan (blocks 0-1) beats one selector's plan by far (better), ties another
    (as good), trails a third (worse); a selector that chose the same blocks says so, one whose plan was not run says
    that. The gains and differences equal the per-item means computed here."""
    from analysis.ablation.selector_table import markdown, selector_rows
    from analysis.planning.selectors import SelectorPlan

    rates = dict(RATES, selected=0.6, window_0_1=0.6, window_2_3=0.15, window_1_2=0.6, set_0_2=0.85)
    runs = make_runs(rates, seeds=(0, 1, 2, 3))
    params = {v: 20 for v in rates if v != "frozen"}
    results = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=400, trainable=params)
    plans = {"toolkit": SelectorPlan("toolkit", (0, 1), None, "toolkit"),
             "last": SelectorPlan("last", (2, 3), None, "fixed"),
             "fisher": SelectorPlan("fisher", (1, 2), (0.0, 1.0, 1.0, 0.0), "planted"),
             "front": SelectorPlan("front", (0, 1), None, "fixed"),
             "auto_rgn": SelectorPlan("auto_rgn", (0, 2), (1.0, 0.0, 0.9, 0.0), "planted"),
             "omni_cosine": SelectorPlan("omni_cosine", (1, 3), (0.0, 1.0, 0.0, 0.9), "planted")}
    rows = {(r.target, r.selector): r for r in selector_rows(results, plans)}
    verdicts = {name: rows[("scope_object", name)].verdict for name in plans}
    assert verdicts == {"toolkit": "", "last": "better", "fisher": "as good", "front": "same plan",
                        "auto_rgn": "worse", "omni_cosine": "not run"}
    mean = {v: np.mean([np.mean(r["items"]["object/scope"]) for r in runs if r["variant"] == v]) for v in rates}
    last = rows[("scope_object", "last")]
    assert last.variant == "window_2_3" and last.trainable == 20
    assert last.gain == pytest.approx(mean["window_2_3"] - mean["frozen"])
    assert last.toolkit_minus == pytest.approx(mean["selected"] - mean["window_2_3"])
    assert last.toolkit_minus_low > 0 > rows[("scope_object", "auto_rgn")].toolkit_minus_high
    text = markdown(list(rows.values()), ["scope_object"])
    assert "strictly better than last" in text and "WORSE than auto_rgn" in text and "Not run in this study: " \
        "omni_cosine" in text


def test_running_more_variants_leaves_every_other_interval_unchanged():
    """Each variant's seed draws and the shared item draws come from their own streams: a study that adds a plan
    (here one more window) reports the same intervals for every plan it already had."""
    runs = make_runs(RATES)
    extra = [dict(run, variant="window_0_2") for run in make_runs({"window_0_2": 0.7}, rng=np.random.default_rng(5))]
    params = {v: 10 * (len(window_blocks(v)) if window_blocks(v) else 2) for v in RATES if v != "frozen"}
    before = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300, trainable=params)["scope"]
    after = assess(runs + extra, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300,
                   trainable=dict(params, window_0_2=30))["scope"]
    for v in params:
        for key in ("low", "high", "diff_low", "diff_high"):
            assert after.plans[v][key] == before.plans[v][key], (v, key)
    assert after.gain_low == before.gain_low and after.ratio_low == before.ratio_low
    assert after.rho_low == before.rho_low


def test_the_plans_on_every_targets_frontier_within_the_noise_and_the_target_that_pulls_them_apart():
    """Two targets that disagree: on scope the front blocks gain, on the multiple choice they lose and block 3 gains.
    The frontier within the noise of each target is known by construction (every gap is 0.3 or more, or 0.05 or
    less on 60 items x 3 seeds); only the whole tower is on both, and without it no plan is, because of the MCQ."""
    from analysis.ablation.validity import reachability_sentence, within_noise_everywhere

    scope = dict(RATES, selected=0.65, all=0.7)
    mcq = {"frozen": 0.5, "layer_0": 0.1, "layer_1": 0.5, "layer_2": 0.5, "layer_3": 0.9, "selected": 0.1,
           "window_0_1": 0.1, "window_1_2": 0.5, "window_2_3": 0.9, "all": 0.9}
    rng = np.random.default_rng(3)
    runs = make_runs(scope, rng=rng)
    for run in runs:
        run["items"]["object/mcq"] = (rng.random(N_ITEMS) < mcq[run["variant"]]).astype(int).tolist()
    params = {**{f"layer_{b}": 10 for b in range(N_LAYERS)}, "selected": 20, "window_0_1": 20, "window_1_2": 20,
              "window_2_3": 20, "all": 40}
    results = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300, trainable=params,
                     groups={"all": [0, 1, 2, 3]})
    # MCQ: block 3 is the best single block, window_2_3 holds it, the whole tower matches it; the rest lose to them
    assert sorted(results["mcq"].undominated) == ["all", "layer_3", "window_2_3"]
    # scope: block 0 beats every other block; the plan, window_0_1 (the same blocks) and the whole tower are within
    # 0.05 of each other and of block 0; window_1_2 and window_2_3 trail window_0_1 by 0.3 and more
    for target in ("scope", "scope_object", "scope_template"):
        assert sorted(results[target].undominated) == ["all", "layer_0", "selected", "window_0_1"]
    assert within_noise_everywhere(results) == (["all"], [])
    text = reachability_sentence(results)
    assert "1 plan(s)" in text and "all (40 parameters)" in text and "is not among them (20 parameters)" in text
    # without the whole tower no plan is on every frontier; leaving out the multiple choice, some would
    narrower = assess([r for r in runs if r["variant"] != "all"], EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300,
                      trainable=params)
    assert within_noise_everywhere(narrower) == ([], ["mcq"])
    text = " ".join(verdict(narrower))
    assert "no rule that picks one plan could meet that criterion" in text and "leaving out four-way" in text
    # the selected plan's own dominators are the same computation
    assert narrower["mcq"].dominated_by == ["layer_1", "layer_2", "layer_3", "window_1_2", "window_2_3"]


def test_the_answer_type_breakdown_reads_only_its_items_and_leaves_the_targets_intervals_unchanged():
    """BREAKDOWN splits the multiple choice by answer type: each part's gain is the mean over that type's items
    only (computed here directly), and assessing the parts beside the targets changes no target's interval (their
    items are drawn from streams of their own)."""
    from analysis.ablation.validity import BREAKDOWN, TARGETS, available_targets

    rng = np.random.default_rng(3)
    runs = make_runs(RATES, rng=rng)
    kinds = np.array(["positive", "negative", "hybrid"] * (N_ITEMS // 3))
    for run in runs:  # hybrid answers won less often by the plans that train block 0
        rate = np.where(kinds == "hybrid", 0.9 - 0.5 * (run["variant"] in ("layer_0", "selected", "window_0_1")),
                        0.5)
        run["items"]["object/mcq"] = (rng.random(N_ITEMS) < rate).astype(int).tolist()
        run["items"]["object/mcq_template"] = kinds.tolist()
    assert set(available_targets(runs, BREAKDOWN)) == set(BREAKDOWN)
    # an answer type no item drew (a handful of items) has nothing to assess: left out, not a NaN
    no_hybrid = [{**run, "items": {**run["items"], "object/mcq_template": ["positive"] * N_ITEMS}} for run in runs]
    assert set(available_targets(no_hybrid, BREAKDOWN)) == set(BREAKDOWN) - {"mcq_negative", "mcq_hybrid"}
    both = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=200,
                  targets=available_targets(runs, {**TARGETS, **BREAKDOWN}))
    alone = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=200)

    def mean(variant, kind):
        return np.mean([np.mean(np.array(r["items"]["object/mcq"])[kinds == kind]) for r in runs
                        if r["variant"] == variant])

    assert both["mcq_hybrid"].gains[0] == pytest.approx(mean("layer_0", "hybrid") - mean("frozen", "hybrid"))
    assert both["mcq_negative"].gains[2] == pytest.approx(mean("layer_2", "negative") - mean("frozen", "negative"))
    assert both["mcq_hybrid"].gains[0] < -0.3  # the planted cost
    for name in alone:
        assert both[name].gain_low == alone[name].gain_low and both[name].rho_low == alone[name].rho_low, name
        assert both[name].rho_headline_low == alone[name].rho_headline_low or name == "scope", name


def test_rho_with_the_headline_target_is_paired_replicate_by_replicate():
    """Each bootstrap replicate correlates the target's resampled gains with scope's from the same replicate (the
    same seeds drawn). Planted: every item of a run has the run's one outcome, the same on scope's suites and on the
    absence suite, so the only noise is which seeds a replicate draws and the two gain vectors are equal in every
    replicate: the interval is [1, 1]. Against the point estimate of scope's gains (or another replicate's) it would
    reach below 0, since resampling the seeds reorders the blocks."""
    outcomes = {"frozen": (0, 0, 0), "layer_0": (1, 1, 0), "layer_1": (1, 0, 0), "layer_2": (0, 1, 1),
                "layer_3": (0, 0, 1), "selected": (1, 1, 0), "window_0_1": (1, 1, 1), "window_1_2": (1, 0, 1),
                "window_2_3": (0, 1, 1)}
    runs = [{"variant": v, "seed": seed, "items": {key: [outcome] * N_ITEMS for key in
                                                   ("object/scope", "template/scope", "object/absence")}}
            for v, per_seed in outcomes.items() for seed, outcome in enumerate(per_seed)]
    absence = assess(runs, EVIDENCE, [0], n_layers=N_LAYERS, n_boot=200)["absence"]
    assert absence.rho_headline == pytest.approx(1.0)
    assert absence.rho_headline_low == pytest.approx(1.0) and absence.rho_headline_high == pytest.approx(1.0)
    # while each block's gain does move from replicate to replicate: the pairing is what holds the rho at 1
    assert absence.gain_low[0] < absence.gains[0] < absence.gain_high[0]


def test_rho_with_the_headline_target_is_the_spearman_of_the_two_targets_single_block_gains():
    """A target whose single-block gains run opposite to scope's (a planted trade-off): its rho_headline is the
    Spearman correlation of the two gain vectors, computed here directly, and -1 by construction; the headline's
    own is undefined."""
    rng = np.random.default_rng(4)
    runs = make_runs(RATES, rng=rng)
    cost = {"frozen": 0.9, "layer_0": 0.2, "layer_1": 0.5, "layer_2": 0.7, "layer_3": 0.8}
    for run in runs:
        run["items"]["object/absence"] = (rng.random(N_ITEMS) < cost.get(run["variant"], 0.5)).astype(int).tolist()
    results = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=200)
    direct = stats.spearmanr(results["scope"].gains, results["absence"].gains).statistic
    assert results["absence"].rho_headline == pytest.approx(direct) == pytest.approx(-1.0)
    absence = results["absence"]
    assert absence.rho_headline_low <= absence.rho_headline <= absence.rho_headline_high
    assert absence.rho_headline_high < 0  # the trade-off is beyond the noise
    assert np.isnan(results["scope"].rho_headline)
    text = " ".join(verdict(results))
    assert "run opposite to those on scope beyond the noise" in text and "absence (true) vs presence (false)" in text
    assert "run opposite" not in " ".join(verdict(assess(make_runs(RATES), EVIDENCE, [0, 1], n_layers=N_LAYERS,
                                                        n_boot=200)))


def test_the_bootstrap_pairs_plans_over_seeds_as_well_as_items():
    """Seed s gives every plan the same data order, so a replicate draws the same seeds for every plan. Planted: each
    seed moves every plan's outcomes by the same large offset (+-0.25), and window_0_1 wins 0.1 more than the
    selected plan on every seed. Paired over seeds the difference is beyond the noise; drawn for each plan on its own
    (computed here), the seed offsets swamp it. Two plans with identical runs differ by exactly 0 in every replicate,
    and the frontier keeps the selected plan, not its twin."""
    offsets = (-0.25, 0.0, 0.25)
    rates = dict(RATES, selected=0.4, window_0_1=0.5, twin=0.4)
    rng = np.random.default_rng(3)
    base = {seed: rng.random(N_ITEMS) for seed in range(3)}  # the same items are hard or easy on every run of a seed
    runs = [{"variant": v, "seed": seed,
             "items": {f"{axis}/scope": (base[seed] < np.clip(rate + offsets[seed], 0, 1)).astype(int).tolist()
                       for axis in ("object", "template")}}
            for v, rate in rates.items() for seed in range(3)]
    runs = [dict(run, variant="selected_twin") if run["variant"] == "twin" else run for run in runs]
    # the selected plan and its twin are the cheapest plans, so both would be on the frontier
    params = {v: 10 * len(window_blocks(v)) if window_blocks(v) else 10 for v in rates if v not in ("frozen", "twin")}
    params.update(selected=5, selected_twin=5)
    result = assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=1000, trainable=params)["scope_object"]
    assert result.paired_seeds
    window = result.plans["window_0_1"]
    assert window["diff"] == pytest.approx(0.1, abs=0.03) and window["diff_low"] > 0
    twin = result.plans["selected_twin"]
    assert twin["diff"] == twin["diff_low"] == twin["diff_high"] == 0.0
    assert "selected" in result.frontier and "selected_twin" not in result.frontier
    # the same difference with each plan's seeds drawn on its own: its interval reaches below 0
    outcomes = {v: np.array([r["items"]["object/scope"] for r in runs if r["variant"] == v], float)
                for v in ("frozen", "selected", "window_0_1")}
    draws = np.random.default_rng(0)
    diffs = []
    for _ in range(1000):
        cols = draws.integers(0, N_ITEMS, N_ITEMS)
        mean = {v: outcomes[v][draws.integers(0, 3, 3)][:, cols].mean() for v in outcomes}
        diffs.append(mean["window_0_1"] - mean["selected"])
    assert np.quantile(diffs, 0.025) < 0 < window["diff_low"]


def test_validity_refuses_runs_of_other_seeds_for_some_plan():
    runs = [run for run in make_runs(RATES) if not (run["variant"] == "window_1_2" and run["seed"] == 2)]
    with pytest.raises(ValueError, match="window_1_2 has runs of seeds 0-1, the study 0-2"):
        assess(runs, EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=10)


def test_with_no_larger_plan_ahead_the_next_point_names_the_plan_of_no_more_parameters_that_beats_the_plan():
    """The selected plan (0.35) is beaten at its size by window_0_1 (0.65); the larger plan window_0_2 gains more
    than the selected plan (0.5) but less than window_0_1: it is not on the frontier, and the report says the best
    plan with no more parameters is what to train, instead of 'no larger plan gains more'."""
    from analysis.ablation.validity import frontier_place, frontier_sentence, next_point

    rates = dict(RATES, selected=0.35, window_0_2=0.5)
    params = {v: 10 * len(window_blocks(v)) if window_blocks(v) else 10 for v in rates if v != "frozen"}
    params["selected"] = 20  # blocks 0-1
    result = assess(make_runs(rates), EVIDENCE, [0, 1], n_layers=N_LAYERS, n_boot=300, trainable=params)["scope"]
    assert result.next_larger is None and result.best_no_larger == "window_0_1"
    assert next_point(result) == "none (no larger plan gains more than window_0_1, which has no more parameters)"
    assert frontier_place(result) == "no: layer_0, window_0_1 gain more with no more parameters"
    assert frontier_sentence(result).endswith("; no larger plan gains more than window_0_1, which has no more "
                                              "parameters.")
    # the frontier is read off the plans, so a record that stored its own (older records) reads the same
    import json

    record = json.loads(json.dumps({"targets": {"scope": {**result.to_dict(), "frontier": ["selected"],
                                                          "next_larger": None}}}))
    assert from_json(record)["scope"].frontier == result.frontier
