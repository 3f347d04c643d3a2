"""Selection rules on per-block scores, empty plans when nothing beats the null models, and stability."""
from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.planning.evidence import block_evidence
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
