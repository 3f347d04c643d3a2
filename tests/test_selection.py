"""Selection rules on per-block scores, empty plans when nothing beats the null models, and stability."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.planning.evidence import BlockEvidence, block_evidence
from analysis.planning.selection import (
    SelectionConfig,
    SelectionError,
    choose,
    describe_blocks,
    front_prefix,
    select_layers,
    shortest_window,
    top_k,
)
from analysis.planning.settings import EvidenceConfig
from finetune.plan import LayerPlan
from tests.test_evidence import synthetic_measurements


def brute_force_window(scores, share):
    """Every contiguous window, shortest first, then most evidence, then earliest (independent of the rule's code)."""
    total = sum(scores)
    windows = [(last - first, -sum(scores[first:last + 1]), first, last)
               for first in range(len(scores)) for last in range(first, len(scores))
               if sum(scores[first:last + 1]) >= share * total - 1e-9]
    _, _, first, last = min(windows)
    return first, last


@pytest.mark.parametrize("scores, share", [
    ([0, 0, 0.5, 0.3, 0.2, 0, 0, 0], 0.8),
    ([0.1, 0, 0, 0, 0, 0.4, 0.5, 0], 0.8),
    ([0.3, 0.3, 0, 0, 0.4, 0, 0, 0], 0.5),
    ([0.2, 0.2, 0.2, 0.2, 0.2], 1.0),
    ([0, 0, 0, 1.0], 0.8),
])
def test_shortest_window_matches_a_brute_force_search(scores, share):
    first, last, held, shorter = shortest_window(scores, share)
    assert (first, last) == brute_force_window(scores, share)
    assert held == pytest.approx(sum(scores[first:last + 1]) / sum(scores))
    if last > first:
        best_shorter = max(sum(scores[a : a + last - first]) for a in range(len(scores) - (last - first) + 1)) / sum(
            scores
        )
        assert shorter == pytest.approx(best_shorter)


def test_prefix_topk_and_no_evidence():
    assert front_prefix([0.5, 0.3, 0.2, 0.0], 0.8)[0] == 2
    assert top_k([0.1, 0.0, 0.5, 0.4, 0.0], 4) == [0, 2, 3]  # only blocks that carry evidence
    with pytest.raises(SelectionError, match="all block scores are 0"):
        shortest_window([0, 0, 0], 0.8)
    assert describe_blocks([0, 1, 2, 5]) == "0-2, 5" and describe_blocks([]) == "none"


@pytest.fixture(scope="module")
def planted():
    return block_evidence(synthetic_measurements(np.random.default_rng(10), planted_probe=4, planted_grad=3),
                          EvidenceConfig(n_boot=200))


def test_rules_choose_where_the_evidence_is(planted):
    assert planted.components["probe"].significant[4] and planted.components["gradnorm"].significant[3]
    window = select_layers(planted, SelectionConfig(rule="window", share=0.8))
    assert window.plan.blocks == [3, 4] and not window.plan.train_embeddings and window.plan.train_ln_final
    prefix = select_layers(planted, SelectionConfig(rule="prefix", share=0.8))
    assert prefix.plan.blocks == [0, 1, 2, 3, 4] and prefix.plan.train_embeddings  # block 0 trains
    assert select_layers(planted, SelectionConfig(rule="topk", k=1)).plan.blocks == [4]  # probe weight 0.5 > 0.25
    rgn = select_layers(planted, SelectionConfig(rule="auto_rgn", rgn_floor=0.5))
    assert rgn.plan.blocks == [3] and rgn.plan.lr_weights == {3: 1.0}


def test_stability_is_the_rule_applied_to_every_replicate(planted):
    selection = select_layers(planted, SelectionConfig(rule="window"))
    chosen = [choose(replicate, planted, SelectionConfig(rule="window")).blocks for replicate in planted.replicates]
    assert selection.stability == pytest.approx([np.mean([b in c for c in chosen]) for b in range(6)])
    assert selection.agreement == pytest.approx(np.mean([c == [3, 4] for c in chosen]))
    assert selection.stability[3] > 0.5 and selection.stability[0] < 0.2


def test_an_empty_plan_says_why_and_round_trips(tmp_path):
    evidence = block_evidence(synthetic_measurements(np.random.default_rng(11)), EvidenceConfig(n_boot=50))
    assert not evidence.supported
    selection = select_layers(evidence)
    plan = selection.plan
    assert plan.blocks == [] and "no evidence" in plan.rule
    path = plan.save(tmp_path / "layer_plan.json")
    saved = json.loads(path.read_text())
    assert saved["blocks"] == [] and "beyond the null models" in saved["evidence"]["decision"]["reason"]
    assert LayerPlan.load(path).blocks == []


# --- the lead rule: the first block of the consensus of the bootstrap replicates' windows ---------------------------

def planted_evidence(point, replicates):
    """Evidence whose combined score and bootstrap replicates are given (no components: the window and lead rules
    read only those)."""
    return BlockEvidence(len(point), {}, {}, list(point), [], EvidenceConfig(n_boot=len(replicates or [0])),
                         None if replicates is None else np.asarray(replicates, dtype=float))


# the `middle` case: the point estimate carries a little evidence at block 0, so its 80 % window is 0-5, but in
# 9 of 10 replicates block 0 has none and the window is 4-5; block 4 leads the consensus, block 0 the point's window
MIDDLE = [0.22, 0, 0, 0, 0.12, 0.66, 0, 0]
WITHOUT_0 = [0, 0, 0, 0, 0.25, 0.75, 0, 0]


def test_lead_is_the_first_block_most_replicates_hold():
    evidence = planted_evidence(MIDDLE, [WITHOUT_0] * 9 + [MIDDLE])
    assert select_layers(evidence, SelectionConfig(rule="window")).plan.blocks == [0, 1, 2, 3, 4, 5]
    selection = select_layers(evidence, SelectionConfig(rule="lead"))
    assert selection.plan.blocks == [4] and not selection.plan.train_embeddings
    # stability is the window rule's on each replicate (brute force: 4-5 nine times, 0-5 once)
    windows = [brute_force_window(r, 0.8) for r in [WITHOUT_0] * 9 + [MIDDLE]]
    assert selection.stability == pytest.approx([np.mean([a <= b <= z for a, z in windows]) for b in range(8)])
    assert selection.stability[0] == pytest.approx(0.1) and selection.agreement == pytest.approx(1.0)
    assert "at least 50% of the bootstrap replicates" in selection.decision.reason
    assert selection.plan.rule == "lead(share=0.8, consensus=0.5)"
    # a stricter consensus than block 0's 10 % and a looser one than block 4's 100 % give the same lead
    assert select_layers(evidence, SelectionConfig(rule="lead", consensus=0.05)).plan.blocks == [0]


def test_lead_falls_back_to_the_windows_first_block():
    no_replicates = planted_evidence(MIDDLE, None)
    selection = select_layers(no_replicates, SelectionConfig(rule="lead"))
    assert selection.plan.blocks == [0] and selection.plan.train_embeddings  # block 0 trains the embeddings
    assert "no bootstrap replicates" in selection.decision.reason
    # every replicate's window elsewhere, none in half of them: the point's window leads, and the reason says so
    scattered = [[1.0 if b == k else 0.0 for b in range(8)] for k in range(8)]
    split = select_layers(planted_evidence(WITHOUT_0, scattered), SelectionConfig(rule="lead"))
    assert split.plan.blocks == [4] and "no block is held by the window of 50%" in split.decision.reason
    assert split.agreement == pytest.approx(1 / 8)
    nothing = select_layers(planted_evidence([0.0] * 8, [[0.0] * 8] * 5), SelectionConfig(rule="lead"))
    assert nothing.plan.blocks == [] and nothing.agreement == 1.0


def test_lead_on_one_score_vector_is_the_windows_first_block():
    evidence = planted_evidence(MIDDLE, None)
    assert choose(MIDDLE, evidence, SelectionConfig(rule="lead")).blocks == [0]
    with pytest.raises(ValueError, match="consensus"):
        SelectionConfig(rule="lead", consensus=0)


def test_lead_selects_nothing_exactly_when_the_window_does():
    rng = np.random.default_rng(5)
    for trial in range(40):
        point = rng.random(6) * (rng.random(6) < 0.3) * (trial % 4 != 0)  # every fourth: no evidence at all
        replicates = rng.random((20, 6)) * (rng.random((20, 6)) < 0.3)
        evidence = planted_evidence(point.tolist(), replicates.tolist())
        window = select_layers(evidence, SelectionConfig(rule="window"))
        lead = select_layers(evidence, SelectionConfig(rule="lead"))
        assert (lead.plan.blocks == []) == (window.plan.blocks == [])
        if not window.plan.blocks:  # the same agreement: the share of replicates selecting nothing
            assert lead.agreement == window.agreement
        else:  # the first block that at least half of the replicates' windows hold (brute force), else the window's
            spans = [brute_force_window(r, 0.8) if sum(r) > 0 else None for r in replicates.tolist()]
            held = [b for b in range(6) if np.mean([s is not None and s[0] <= b <= s[1] for s in spans]) >= 0.5]
            assert lead.plan.blocks == [held[0] if held else window.plan.blocks[0]]
