"""Layer plans: JSON schema and errors; freezing trains exactly the planned parameters."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.freezing import apply_plan, planned_parts
from finetune.plan import LayerPlan, PlanError, parse_layers
from finetune.train import TrainConfig, train
from probing.clip.loading import load_clip
from probing.data.records import NegationExample


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import tiny_config

    path = tmp_path_factory.mktemp("cfg") / "tiny-freeze.json"
    path.write_text(json.dumps(tiny_config(layers=4)))
    return path


def fresh_model(tiny):
    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(str(tiny))
    return model, preprocess, tokenizer


# --- plan files -----------------------------------------------------------------------------------

def test_plan_round_trip(tmp_path):
    plan = LayerPlan(blocks=[3, 0, 1], train_ln_final=True, lr_weights={0: 2.0, 3: 0.5}, rule="gradnorm-top3",
                     evidence={"relative_norm": [0.1, 0.2]})
    path = plan.save(tmp_path / "plan.json")
    raw = json.loads(path.read_text())
    assert raw["blocks"] == [0, 1, 3] and raw["lr_weights"] == {"0": 2.0, "3": 0.5}
    loaded = LayerPlan.load(path)
    assert loaded == plan and loaded.lr_weights == {0: 2.0, 3: 0.5} and loaded.lr_weight(1) == 1.0


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"blocks": [0], "train_mlp": true}', "unknown key.*train_mlp"),
    ('{"train_ln_final": true}', "missing key 'blocks'"),
    ('{"blocks": [0, 0]}', "twice"),
    ('{"blocks": [-1]}', ">= 0"),
    ('{"blocks": "0-5"}', "list of integers"),
    ('{"blocks": [0], "train_embeddings": "yes"}', "true or false"),
    ('{"blocks": [0], "lr_weights": {"1": 2.0}}', "not trained"),
    ('{"blocks": [0], "lr_weights": {"0": -1}}', "positive"),
])
def test_bad_plan_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=message) as error:
        LayerPlan.load(path)
    assert str(path) in str(error.value)


def test_a_plan_chosen_on_another_tower_is_refused(tmp_path):
    """A plan records the depth of the tower probe-layers read (evidence n_layers): on a tower of another depth its
    block numbers mean other blocks, so it is refused, naming the file, even when every block exists there."""
    path = LayerPlan(blocks=[1], rule="lead", evidence={"n_layers": 6}).save(tmp_path / "plan.json")
    plan = LayerPlan.load(path)
    plan.validate(6)
    with pytest.raises(PlanError, match=r"plan.json was chosen on a text tower of 6 blocks .* but this one has 12"):
        plan.validate(12)
    LayerPlan(blocks=[1], rule="manual").validate(12)  # a plan that records no tower (written by hand)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        LayerPlan.load(tmp_path / "nope.json")


def test_layer_lists_and_front():
    assert parse_layers("0-5") == [0, 1, 2, 3, 4, 5]
    assert parse_layers("0,2, 4") == [0, 2, 4]
    assert parse_layers("0-1,7") == [0, 1, 7]
    for bad in ("", "a", "3-1", "1-"):
        with pytest.raises(PlanError, match="bad layer list"):
            parse_layers(bad)
    front = LayerPlan.front(6)
    assert front.blocks == list(range(6)) and front.train_embeddings and front.train_logit_scale


def test_block_out_of_range_is_checked_against_the_model(tiny):
    model, _, _ = fresh_model(tiny)
    with pytest.raises(PlanError, match=r"block\(s\) \[4\].*has 4 blocks"):
        apply_plan(model, LayerPlan(blocks=[0, 4]), verbose=False)


# --- freezing ---------------------------------------------------------------------------------------

def planned_names(plan: LayerPlan) -> set[str]:
    names = {name for block in plan.blocks for name in _block_names(block)}
    if plan.train_embeddings:
        names |= {"token_embedding.weight", "positional_embedding"}
    if plan.train_ln_final:
        names |= {"ln_final.weight", "ln_final.bias"}
    if plan.train_projection:
        names.add("text_projection")
    if plan.train_logit_scale:
        names.add("logit_scale")
    return names


def _block_names(block: int) -> set[str]:
    stems = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    return {f"transformer.resblocks.{block}.{stem}" for stem in stems}


@pytest.mark.parametrize("plan", [
    LayerPlan.front(2),
    LayerPlan(blocks=[1, 3]),
    LayerPlan(blocks=[], train_ln_final=True, train_projection=True),
    LayerPlan(blocks=[3], train_logit_scale=True),
], ids=["front-2", "blocks-1-3", "extras-only", "last+scale"])
def test_exactly_the_planned_parameters_train(tiny, plan, capsys):
    model, _, _ = fresh_model(tiny)
    model.requires_grad_(True)  # everything trainable before: the plan must freeze the rest
    summary = apply_plan(model, plan)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == planned_names(plan)
    assert not any(p.requires_grad for p in model.visual.parameters())
    expected = sum(p.numel() for name, p in model.named_parameters() if name in trainable)
    assert summary.trainable == expected
    printed = capsys.readouterr().out
    assert "image tower" in printed and f"{expected:,}" in printed


def test_front_plan_is_not_open_clips_last_layer_lock(tiny):
    model, _, _ = fresh_model(tiny)
    apply_plan(model, LayerPlan(blocks=[0]), verbose=False)
    blocks = model.transformer.resblocks
    assert all(p.requires_grad for p in blocks[0].parameters())
    assert not any(p.requires_grad for p in blocks[-1].parameters())


def test_frozen_parameters_are_bit_identical_after_training(tiny, tmp_path):
    model, preprocess, tokenizer = fresh_model(tiny)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    plan = LayerPlan(blocks=[1, 2], train_ln_final=True, train_logit_scale=True)
    rng = np.random.default_rng(0)
    examples = [NegationExample(image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                                caption=f"a photo of thing {i}", presence_negated=f"a photo of no thing {i}")
                for i in range(8)]
    # weight decay 0.2 would move frozen weights too if they reached the optimizer
    config = TrainConfig(loss="conclip", steps=2, batch_size=8, warmup_steps=0, lr=1e-2, out_dir=str(tmp_path / "run"),
                         progress=False, tensorboard=False, model_name="tiny-freeze")
    train(model, tokenizer, preprocess, examples, plan, config)
    expected = planned_names(plan)
    for name, p in model.named_parameters():
        if name in expected:
            assert not torch.equal(p, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    parts = planned_parts(model, plan)
    assert set(parts) == {"blocks.1", "blocks.2", "ln_final", "logit_scale"}
