"""compare-checkpoints and analysis.compare: known answers on tiny towers with planted changes.

Weights: a tower perturbed in blocks 3-4 only (or one LayerNorm, or the token embedding only) must be
reported as changed exactly there, with the relative change computed a second way here (flattened tensors),
and 0 everywhere else; bitwise-identical files must say "no weight differs". States: CKA of a model with
itself is 1, and the library's CKA equals the HSIC formula with an explicit centring matrix; the states of
the layers before the first changed block are bitwise the base's. Probes run on the shipped smoke-test
build (embedded:small). Every bad input exits 2 with one line naming the file.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.cli import compare_checkpoints as cli
from analysis.compare import CompareConfig, compare_checkpoints, linear_cka, plan_from_comparison
from analysis.compare.decoding import paired_differences
from analysis.compare.plan import finetune_change_selector
from analysis.compare.report import write_outputs
from analysis.compare.states import _cka_from_grams, cka_interval
from analysis.compare.weights import NO_WEIGHT_DIFFERS, compare_weights, smallest_share
from finetune.plan import PlanError
from probing.models.factory import create_model

LAYERS = 6
CAPTIONS = {"affirmative": ["a red circle and a blue square", "a green star", "two yellow crosses on a table",
                            "a purple diamond next to an orange triangle", "a blue circle", "a red star and a cat"],
            "negated": ["a red circle and no blue square", "not a green star", "no yellow crosses on a table",
                        "a purple diamond without an orange triangle", "a circle that is not blue", "a star, no cat"]}


# --- tiny towers ---------------------------------------------------------------------------------

@pytest.fixture
def tiny(write_config):
    """(config path, a function that returns a fresh bundle of the same seeded random weights)."""
    config = write_config("tiny6", layers=LAYERS, text_width=32, heads=2, embed_dim=16)

    def bundle():
        return create_model(config, seed=0)
    return config, bundle


def perturb(model, where: str, scale: float = 0.05) -> None:
    """Add seeded noise to one place of the text tower."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if where == "blocks 3-4":
            params = [p for b in (3, 4) for p in model.transformer.resblocks[b].parameters()]
        elif where == "layernorm":
            params = [model.transformer.resblocks[2].ln_2.weight]
        elif where == "token embedding":
            params = [model.token_embedding.weight]
        elif where == "logit scale":
            params = [model.logit_scale]
        else:
            raise ValueError(where)
        for p in params:
            if where == "token embedding":  # a few rows only, as a fine-tune moves the tokens it sees
                p[[320, 871, 49407]] += torch.randn(3, p.shape[1], generator=generator) * scale
            else:
                p += torch.randn(p.shape, generator=generator) * scale


def relative_change(base_params, tuned_params) -> float:
    """Independent: one flattened vector for the whole group."""
    base = torch.cat([p.detach().double().flatten() for p in base_params])
    tuned = torch.cat([p.detach().double().flatten() for p in tuned_params])
    return float((tuned - base).norm() / base.norm())


@pytest.mark.parametrize("where, changed_part, changed_component", [
    ("blocks 3-4", {"block 3", "block 4"}, None),
    ("layernorm", {"block 2"}, "layernorms"),
    ("token embedding", {"token embedding"}, None),
    ("logit scale", {"logit scale"}, None),
])
def test_planted_changes_are_found_exactly_there(tiny, where, changed_part, changed_component):
    _, bundle = tiny
    base, tuned = bundle(), bundle()
    perturb(tuned.model, where)
    change = compare_weights(base.model, tuned.model)
    parts = change.parts
    whole = parts[parts["component"] == "all"].set_index("part")["relative_change"]
    assert set(whole[whole > 0].index) == changed_part
    assert (whole.drop(list(changed_part)) == 0).all()  # exactly zero elsewhere, image tower included
    assert "image tower" in whole.index and "final LayerNorm" in whole.index and "text projection" in whole.index
    towers = (base.model.transformer.resblocks, tuned.model.transformer.resblocks)
    for part in changed_part:
        if part.startswith("block "):
            b = int(part.split()[1])
            expected = relative_change(towers[0][b].parameters(), towers[1][b].parameters())
        elif part == "token embedding":
            expected = relative_change([base.model.token_embedding.weight], [tuned.model.token_embedding.weight])
        else:
            expected = abs(float(tuned.model.logit_scale.detach() - base.model.logit_scale.detach())
                           / float(base.model.logit_scale.detach()))
        assert whole[part] == pytest.approx(expected, rel=1e-9)
    if changed_component:
        block = parts[(parts["part"] == "block 2") & (parts["component"] != "all")].set_index("component")
        assert block.loc[changed_component, "relative_change"] > 0
        assert (block.drop(changed_component)["relative_change"] == 0).all()
        ln = [towers[0][2].ln_2.weight, towers[0][2].ln_1.weight, towers[0][2].ln_1.bias, towers[0][2].ln_2.bias]
        ln_tuned = [towers[1][2].ln_2.weight, towers[1][2].ln_1.weight, towers[1][2].ln_1.bias, towers[1][2].ln_2.bias]
        assert block.loc["layernorms", "relative_change"] == pytest.approx(relative_change(ln, ln_tuned), rel=1e-9)
    if where == "token embedding":
        row = change.tensors.set_index("tensor").loc["token_embedding.weight"]
        assert row["n_changed"] == 3 * tuned.model.token_embedding.weight.shape[1]
    assert not change.text_identical and change.statement is None


def test_identical_models_say_no_weight_differs(tiny):
    _, bundle = tiny
    change = compare_weights(bundle().model, bundle().model)
    assert change.text_identical and change.image_identical
    assert change.statement.startswith(NO_WEIGHT_DIFFERS)
    assert (change.parts["relative_change"] == 0).all() and (change.tensors["n_changed"] == 0).all()


def test_smallest_share_is_the_fewest_blocks_holding_the_share():
    changes = {0: 0.0, 1: 0.1, 2: 0.5, 3: 0.3, 4: 0.1}
    assert smallest_share(changes, 0.8) == [2, 3]  # 0.8 of 1.0 exactly
    assert smallest_share(changes, 0.81) == [1, 2, 3]  # ties: the lower block first
    assert smallest_share(changes, 0.5) == [2]
    assert smallest_share({0: 0.0, 1: 0.0}, 0.8) == []
    # independently: every smaller set holds less than the share
    import itertools

    for share in (0.3, 0.6, 0.85, 1.0):
        chosen = smallest_share(changes, share)
        assert sum(changes[b] for b in chosen) >= share * sum(changes.values()) - 1e-12
        for size in range(len(chosen)):
            assert all(sum(changes[b] for b in subset) < share * sum(changes.values()) - 1e-12
                       for subset in itertools.combinations(changes, size))


# --- CKA ---------------------------------------------------------------------------------------

def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Independent: HSIC with an explicit centring matrix H = I - 11^T / n, on linear kernels."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_matches_the_hsic_formula_and_is_one_with_itself():
    rng = np.random.default_rng(0)
    for n, d1, d2 in ((40, 8, 8), (30, 50, 20), (100, 16, 64)):
        x = rng.normal(size=(n, d1))
        y = x[:, :min(d1, d2)] @ rng.normal(size=(min(d1, d2), d2)) + 0.5 * rng.normal(size=(n, d2))
        assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)
        assert _cka_from_grams(x @ x.T, y @ y.T) == pytest.approx(hsic_cka(x, y), rel=1e-10)
        assert 0 < linear_cka(x, y) < 1
        assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
        q, _ = np.linalg.qr(rng.normal(size=(d1, d1)))
        assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-10)  # rotation, scale and shift
    assert np.isnan(linear_cka(np.ones((5, 3)), rng.normal(size=(5, 3))))  # no variance: nothing to compare
    interval = cka_interval(x, x, n_boot=50)
    assert (interval.mean, interval.low, interval.high) == pytest.approx((1.0, 1.0, 1.0))
    # unrelated representations: resamples repeat captions, which inflates CKA; the corrected interval still
    # holds the estimate, and the CKA of other draws of as many captions
    draws = [linear_cka(rng.normal(size=(60, 10)), rng.normal(size=(60, 10))) for _ in range(200)]
    x, y = rng.normal(size=(60, 10)), rng.normal(size=(60, 10))
    interval = cka_interval(x, y, n_boot=400)
    assert interval.low < interval.mean < interval.high
    assert interval.low < np.mean(draws) < interval.high


def test_states_change_exactly_from_the_first_changed_block(tiny):
    _, bundle = tiny
    base, tuned, same = bundle(), bundle(), bundle()
    perturb(tuned.model, "blocks 3-4", scale=0.2)
    config = CompareConfig(parts=("weights", "states"), n_boot=30)
    comparison = compare_checkpoints(base, {"planted": tuned, "same": same}, captions=CAPTIONS, config=config)
    states = comparison.states
    assert set(states["model"]) == {"planted"}  # the identical model's states are the base's: not computed again
    assert comparison.models["same"]["status"] == "identical"
    for group in CAPTIONS:
        rows = states[states["group"] == group].set_index("layer")
        assert len(rows) == LAYERS + 2  # embeddings, every block, the text feature
        # layers 0..3 = embeddings and the outputs of blocks 0-2: bitwise the base's
        assert rows.loc[0:3, "identical"].all() and np.allclose(rows.loc[0:3, "cka"], 1.0)
        assert np.allclose(rows.loc[0:3, "cosine"], 1.0) and np.allclose(rows.loc[0:3, "cka_low"], 1.0)
        assert not rows.loc[4:, "identical"].any() and (rows.loc[4:, "cosine_change"] > 0).all()
    assert any("first differ from the base's at the output of block 3" in s for s in comparison.sentences)
    assert any("same: no weight differs" in s for s in comparison.sentences)
    # the tuned model against itself: CKA 1 and cosine 1 at every layer
    itself = compare_checkpoints(tuned, {"again": tuned}, captions=CAPTIONS,
                                 config=CompareConfig(parts=("states",), n_boot=10))
    assert np.allclose(itself.states["cka"], 1.0) and np.allclose(itself.states["cosine"], 1.0)


def test_towers_of_other_shapes_get_a_statement(write_config):
    base = create_model(write_config("deep", layers=LAYERS, text_width=32, heads=2, embed_dim=16))
    shallow = create_model(write_config("shallow", layers=4, text_width=32, heads=2, embed_dim=16))
    wide = create_model(write_config("wide", layers=LAYERS, text_width=64, heads=2, embed_dim=16))
    comparison = compare_checkpoints(base, {"shallow": shallow, "wide": wide},
                                     config=CompareConfig(parts=("weights",)))
    statements = comparison.statements()
    assert "differ in depth: the base has 6 blocks, this model 4" in statements["shallow"]
    assert "differ in shape" in statements["wide"] and "token_embedding.weight" in statements["wide"]
    assert not len(comparison.weights)
    assert any("shallow was not compared" in s for s in comparison.sentences)


# --- plan --------------------------------------------------------------------------------------

def test_plan_from_comparison_takes_the_blocks_that_changed_most(tiny, tmp_path):
    _, bundle = tiny
    base, tuned = bundle(), bundle()
    with torch.no_grad():  # block 4 changes most, then 1, then 3; the rest not at all
        for block, scale in ((4, 0.3), (1, 0.1), (3, 0.02)):
            for p in tuned.model.transformer.resblocks[block].parameters():
                p += scale * p.abs().mean() * torch.randn(p.shape, generator=torch.Generator().manual_seed(block))
    comparison = compare_checkpoints(base, {"tuned": tuned}, config=CompareConfig(parts=("weights",)))
    write_outputs(comparison, tmp_path / "out", figures=False)
    path = tmp_path / "out" / "comparison.json"
    # independently: the k largest of blocks.csv
    blocks = pd.read_csv(tmp_path / "out" / "blocks.csv").set_index("part")["tuned"]
    blocks = blocks[blocks.index.str.startswith("block ")]
    for k in (1, 2, 3):
        expected = sorted(int(p.split()[1]) for p in blocks.nlargest(k).index)
        plan = plan_from_comparison(path, k)
        assert plan.blocks == expected and plan.rule == f"compare-top{k}"
    assert plan_from_comparison(path, 3).blocks == [1, 3, 4]
    plan = plan_from_comparison(tmp_path / "out", 5)  # the folder works too; only changed blocks are named
    assert plan.blocks == [1, 3, 4] and "only 3 blocks changed" in plan.evidence["note"]
    assert plan_from_comparison(comparison, 1).blocks == [4]
    with pytest.raises(PlanError, match="does not exist"):
        plan_from_comparison(tmp_path / "nothing.json", 2)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        plan_from_comparison(tmp_path / "bad.json", 2)
    (tmp_path / "other.json").write_text('{"blocks": [1]}')
    with pytest.raises(PlanError, match="not a compare-checkpoints output"):
        plan_from_comparison(tmp_path / "other.json", 2)
    with pytest.raises(PlanError, match="holds no model"):
        plan_from_comparison(path, 2, model="nope")
    two = compare_checkpoints(base, {"a": tuned, "b": bundle()}, config=CompareConfig(parts=("weights",)))
    with pytest.raises(PlanError, match="name one"):
        plan_from_comparison(two.to_dict(), 1)
    with pytest.raises(PlanError, match="no weight"):  # "b" is the base itself: it points at no block
        plan_from_comparison(two.to_dict(), 1, model="b")

    # the selector study's finetune_change: the same blocks, scored by every block's change (0 where none)
    selector = finetune_change_selector(path, 2)
    assert selector.selector == "finetune_change" and selector.blocks == (1, 4)
    n_blocks = len(base.model.transformer.resblocks)
    assert len(selector.scores) == n_blocks
    assert [b for b in range(n_blocks) if selector.scores[b] > 0] == [1, 3, 4]
    assert np.allclose([selector.scores[b] for b in (1, 3, 4)],
                       [blocks[f"block {b}"] for b in (1, 3, 4)], rtol=1e-6)


def test_ablation_config_takes_a_comparison_only_with_a_plan(tmp_path):
    from analysis.ablation.config import AblationConfig, AblationError

    with pytest.raises(AblationError, match="pass the plan"):
        AblationConfig(model="embedded", comparison=str(tmp_path / "comparison.json"))
    with pytest.raises(AblationError, match="give the comparison too"):
        AblationConfig(model="embedded", comparison_model="tuned")


# --- probes on the smoke-test build -----------------------------------------------------------

def test_probes_match_the_base_before_the_first_changed_block():
    base, tuned = create_model("embedded:small"), create_model("embedded:small")
    first_changed = 5
    with torch.no_grad():
        for block in range(first_changed, 12):
            for p in tuned.model.transformer.resblocks[block].parameters():
                p += 0.5 * p.abs().mean() * torch.randn(p.shape, generator=torch.Generator().manual_seed(block))
    config = CompareConfig(n_train=120, n_test=40, seeds=(0,), n_states=60, n_boot=20, probe_boot=200)
    comparison = compare_checkpoints(base, {"tuned": tuned}, config=config)
    probes, differences = comparison.probes, comparison.probe_differences
    assert set(probes["task"]) == {"negation", "scope"} and set(probes["model"]) == {"embedded:small", "tuned"}
    assert set(probes["split"]) == {"in_distribution", "heldout_cue", "heldout_object", "heldout_template"}
    # layers 0..first_changed hold the embeddings and blocks 0..first_changed-1: the same features, the same probes
    early = differences[differences["layer"] <= first_changed]
    assert (early["difference"] == 0).all() and (early["ci_low"] == 0).all() and (early["ci_high"] == 0).all()
    pivot = probes.pivot_table(index=["task", "split", "layer"], columns="model", values="accuracy")
    assert np.array_equal(pivot.loc[pivot.index.get_level_values("layer") <= first_changed, "tuned"],
                          pivot.loc[pivot.index.get_level_values("layer") <= first_changed, "embedded:small"])
    # the difference table is the difference of the accuracy table
    joined = differences.set_index(["task", "split", "layer"])["difference"]
    assert np.allclose(joined, (pivot["tuned"] - pivot["embedded:small"]).loc[joined.index])
    late = differences[differences["layer"] > first_changed]
    assert (late["ci_low"] <= late["difference"]).all() and (late["difference"] <= late["ci_high"]).all()
    assert any(s.startswith("Probes (logistic, negation, heldout cue split") for s in comparison.sentences)
    states = comparison.states
    assert states[states["layer"] <= first_changed]["identical"].all()
    assert not states[states["layer"] > first_changed]["identical"].any()


def test_paired_differences_equal_a_direct_balanced_accuracy():
    from probing.measure.probes import ProbeSweep

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 80)
    base_items = rng.integers(0, 2, (3, 80)).astype(np.float32)
    tuned_items = rng.integers(0, 2, (3, 80)).astype(np.float32)

    def sweep(items):
        return ProbeSweep([], [], {}, {("test", "logistic"): items}, {"test": labels})

    rows = paired_differences(sweep(tuned_items), sweep(base_items), n_boot=500)

    def balanced(items):  # independently, with pandas
        frame = pd.DataFrame({"correct": items, "label": labels})
        return frame.groupby("label")["correct"].mean().mean()

    for row in rows:
        layer = row["layer"]
        assert row["difference"] == pytest.approx(balanced(tuned_items[layer]) - balanced(base_items[layer]))
        assert row["ci_low"] < row["difference"] < row["ci_high"]
    same = paired_differences(sweep(base_items), sweep(base_items), n_boot=100)
    assert all(r["difference"] == 0 and r["ci_low"] == 0 and r["ci_high"] == 0 for r in same)


# --- the command -------------------------------------------------------------------------------

QUICK = ["--probe-train", "100", "--probe-test", "30", "--probe-seeds", "0", "--n-states", "40", "--n-boot", "20",
         "--probe-boot", "100", "--threads", "1", "--no-progress"]


def save_small(tmp_path, name: str, change=None):
    """embedded:small (changed by `change`) saved as a toolkit checkpoint (it records its architecture)."""
    from probing.clip.loading import save_clip_checkpoint

    bundle = create_model("embedded:small")
    if change is not None:
        with torch.no_grad():
            change(bundle.model)
    return save_clip_checkpoint(bundle.model, tmp_path / f"{name}.safetensors", model_name=bundle.name)


def test_command_end_to_end(tmp_path, capsys):
    def blocks_3_4(model):
        for block in (3, 4):
            for p in model.transformer.resblocks[block].parameters():
                p += 0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(block))

    planted = save_small(tmp_path, "planted", blocks_3_4)
    same = save_small(tmp_path, "same")
    out = tmp_path / "out"
    assert cli.main(["embedded:small", str(planted), str(same), "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "planted: blocks 3-4 hold 100%" in printed and "same: no weight differs" in printed
    for name in ("comparison.json", "blocks.csv", "blocks.md", "weights.csv", "tensors.csv", "states.csv",
                 "probes.csv", "probe_differences.csv", "report.md", "provenance.json",
                 "figures/comparison.png", "figures/comparison.pdf", "figures/probes.png", "figures/probes.pdf"):
        assert (out / name).is_file(), name
    record = json.loads((out / "comparison.json").read_text())
    assert record["models"]["same"]["status"] == "identical"
    assert record["concentrated_blocks"]["planted"] == [3, 4]
    changes = record["block_change"]["planted"]
    assert {b for b, c in changes.items() if c > 0} == {"3", "4"}
    assert plan_from_comparison(out / "comparison.json", 2, model="planted").blocks == [3, 4]
    report = (out / "report.md").read_text()
    assert "no weight differs" in report and "| block 3 |" in report
    assert not list(out.rglob("*.tmp"))  # atomic writes left nothing behind


def test_command_needs_no_captions_for_weights_alone(tmp_path, write_config, capsys):
    config = write_config("tiny6", layers=LAYERS, text_width=32, heads=2, embed_dim=16)
    base = create_model(config, seed=0)
    torch.save(base.model.state_dict(), tmp_path / "base.pt")
    perturb(base.model, "layernorm")
    torch.save(base.model.state_dict(), tmp_path / "tuned.pt")
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "base.pt"), str(tmp_path / "tuned.pt"), "--model", str(config),
                     "--parts", "weights", "--out", str(out), "--no-progress"]) == 0
    weights = pd.read_csv(out / "weights.csv")
    changed = weights[(weights["relative_change"] > 0)]
    assert set(zip(changed["part"], changed["component"])) == {("block 2", "layernorms"), ("block 2", "all")}


RETRIEVAL = Path(__file__).parent / "data" / "negbench" / "COCO_val_retrieval.csv"


def run_cli(argv) -> int:
    """The exit status, whether the parser exits (argument errors) or main returns."""
    try:
        return cli.main(argv)
    except SystemExit as error:
        return error.code


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_inputs_exit_2_with_one_line_naming_the_file(tmp_path, write_config, capsys):
    config = write_config("tiny6", layers=LAYERS, text_width=32, heads=2, embed_dim=16)
    narrow = write_config("narrow", layers=LAYERS, text_width=16, heads=2, embed_dim=16)
    model = create_model(config, seed=0).model
    torch.save(model.state_dict(), tmp_path / "base.pt")
    torch.save(create_model(narrow, seed=0).model.state_dict(), tmp_path / "narrow.pt")
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "notclip.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "folder").mkdir()
    out = ["--out", str(tmp_path / "out"), "--parts", "weights", "--no-progress"]
    base = [str(tmp_path / "base.pt"), "--model", str(config)]
    cases = [
        ([*base[:1], str(tmp_path / "missing.pt"), *base[1:]], "missing.pt: no such file"),
        ([*base[:1], str(tmp_path / "text.pt"), *base[1:]], "text.pt is corrupt or not a PyTorch checkpoint"),
        ([*base[:1], str(tmp_path / "garbage.safetensors"), *base[1:]], "garbage.safetensors is corrupt"),
        ([*base[:1], str(tmp_path / "narrow.pt"), *base[1:]], "narrow.pt does not fit architecture tiny6"),
        ([*base[:1], str(tmp_path / "notclip.pt"), *base[1:]], "notclip.pt does not hold a CLIP state dict"),
        ([*base[:1], str(tmp_path / "folder"), *base[1:]], "has no config.json"),
        ([str(tmp_path / "base.pt"), str(tmp_path / "base.pt")], "base.pt: a checkpoint file needs --model"),
        (["embedded:nope", str(tmp_path / "base.pt")], "unknown embedded model"),
    ]
    for argv, message in cases:
        assert run_cli(argv + out) == 2, (argv, message)
        line = _error_line(capsys)
        assert message in line, line
    capsys.readouterr()
    assert not (tmp_path / "out" / "comparison.json").exists()


def test_a_tower_of_other_depth_is_a_statement_and_exit_2(tmp_path, write_config, capsys):
    from probing.clip.loading import save_clip_checkpoint

    deep = write_config("deep6", layers=LAYERS, text_width=32, heads=2, embed_dim=16)
    shallow = write_config("shallow4", layers=4, text_width=32, heads=2, embed_dim=16)
    base = create_model(deep, seed=0)
    save_clip_checkpoint(base.model, tmp_path / "base.safetensors", model_name="deep6")
    other = create_model(shallow, seed=0)
    save_clip_checkpoint(other.model, tmp_path / "shallow.safetensors", model_name="shallow4")  # records its own
    assert cli.main([str(tmp_path / "base.safetensors"), str(tmp_path / "shallow.safetensors"), "--parts", "weights",
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "shallow.safetensors" in line and "differ in depth: the base has 6 blocks, this model 4" in line


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys; from analysis.cli.compare_checkpoints import build_parser, check_args; p = build_parser(); "
            "check_args(p.parse_args(['embedded:small', 'embedded:small', '--out', 'x']), p); "
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    start = time.perf_counter()
    shown = subprocess.run([sys.executable, "-m", "analysis.cli.compare_checkpoints", "--help"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "--parts" in shown.stdout and "BASE" in shown.stdout
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("argv, message", [
    (["--parts", "weights,magic"], "unknown magic"),
    (["--names", "a,b"], "--names gives 2 names for 1 tuned models"),
    (["--names", "a,a"], "--names: a given twice"),
    (["--train-cues", "no,not,no"], "--train-cues: no given twice"),
    (["--train-cues", " , "], "--train-cues is empty"),
    (["--probes", "svm"], "unknown svm"),
    (["--share", "0"], "--share"),
    (["--confidence", "1"], "--confidence: must be in (0, 1), got 1.0"),
    (["--confidence", "1.5"], "--confidence: must be in (0, 1), got 1.5"),
    (["--data", "/no/such/file.csv"], "no such file"),
    (["--data", "synthetic", "--data", str(RETRIEVAL)], "does not mix with files"),
    (["--data", str(RETRIEVAL), "--data", str(RETRIEVAL)], "a file is given twice"),
])
def test_argument_errors_are_one_line(argv, message, tmp_path, capsys):
    assert run_cli(["embedded:small", "embedded:small", "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in _error_line(capsys)


def _heldout_tests(paths, name: str) -> dict[str, int]:
    """The test splits probe-layers' task `name` has on these files, built directly from their captions."""
    from probing.data.benchmarks import read_benchmark
    from probing.measure.tasks import heldout_task

    benchmarks = [read_benchmark(path, seed=0, limit=4000) for path in paths]
    captions = [c for b in benchmarks for c in (b.captions if name == "negation" else b.scope)]
    task = heldout_task(name, captions, train_cues=("no", "not"), seed=0)
    return {"n_captions": len(task.captions), "n_train": len(task.train),
            "tests": {split: len(index) for split, index in task.tests.items()}}


def test_command_on_a_real_data_file(tmp_path, test_data, capsys):
    def block_7(model):
        model.transformer.resblocks[7].mlp.c_fc.weight.mul_(1.1)

    tuned = save_small(tmp_path, "mlp7", block_7)
    data = test_data / "negbench" / "COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
    out = tmp_path / "out"
    assert cli.main(["embedded:small", str(tuned), "--data", str(data), "--out", str(out), *QUICK]) == 0
    record = json.loads((out / "comparison.json").read_text())
    (task,) = record["meta"]["tasks"]  # the file gives no scope pairs
    assert task["name"] == "negation" and task["source"] == "real"
    # the task probe-layers builds: test splits held out by image, cue, object (and template where one holds both
    # classes), so a probe cannot pass by remembering an image or an object
    assert {key: task[key] for key in ("n_captions", "n_train", "tests")} == _heldout_tests([data], "negation")
    assert {"heldout_cue", "heldout_object"} <= set(task["tests"])
    states = pd.read_csv(out / "states.csv")
    assert set(states["group"]) == {"affirmative", "negated"} and (states["n_captions"] == 40).all()
    first = states[~states["identical"]].groupby("group")["layer"].min()
    assert (first == 8).all()  # layer 8 = the output of block 7, the first changed block
    probes = pd.read_csv(out / "probes.csv")
    assert set(probes["model"]) == {"embedded:small", "mlp7"} and set(probes["task"]) == {"negation"}
    assert "mlp7: block 7 holds 100%" in capsys.readouterr().out


def test_command_on_a_mix_of_benchmark_files(tmp_path, test_data):
    """--data twice, as in probe-layers: NegBench's retrieval CSV and its multiple choice (whose hybrid answers give
    scope pairs) pooled into one negation task and a scope task; both files recorded in the provenance."""
    tuned = save_small(tmp_path, "mlp7", lambda model: model.transformer.resblocks[7].mlp.c_fc.weight.mul_(1.1))
    files = [test_data / "negbench" / "COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv",
             test_data / "negbench" / "COCO_val_mcq_llama3.1_rephrased.csv"]
    out = tmp_path / "out"
    argv = ["embedded:small", str(tuned), "--data", str(files[0]), "--data", str(files[1]), "--parts", "probes"]
    assert cli.main([*argv, "--out", str(out), *QUICK]) == 0
    tasks = {task["name"]: task for task in json.loads((out / "comparison.json").read_text())["meta"]["tasks"]}
    assert set(tasks) == {"negation", "scope"}
    for name, task in tasks.items():
        assert {key: task[key] for key in ("n_captions", "n_train", "tests")} == _heldout_tests(files, name)
    alone = _heldout_tests(files[:1], "negation")["n_captions"]
    assert tasks["negation"]["n_captions"] > alone  # the multiple choice's captions are in it too
    assert set(pd.read_csv(out / "probes.csv")["task"]) == {"negation", "scope"}
    data = json.loads((out / "provenance.json").read_text())["data"]
    assert [Path(data[key]["path"]).name for key in ("--data", "--data#2")] == [f.name for f in files]


def test_data_synthetic_names_the_default(tmp_path):
    parser = cli.build_parser()
    for given in ([], ["--data", "synthetic"]):
        args = cli.check_args(parser.parse_args(["embedded:small", "embedded:small", *given,
                                                 "--out", str(tmp_path / "o")]), parser)
        assert args.files == []


def test_a_file_that_gives_no_probing_data_is_one_line(tmp_path, test_data, capsys):
    sugarcrepe = test_data / "sugarcrepe" / "swap_att.json"  # foils, refused as probing data (as by probe-layers)
    assert run_cli(["embedded:small", "embedded:small", "--data", str(sugarcrepe), "--out", str(tmp_path / "o"),
                    *QUICK]) == 2
    line = _error_line(capsys)
    assert "--data: nothing usable" in line and "swap_att" in line


def test_hugging_face_folders_compare_block_by_block(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        projection_dim=16,
        text_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=3, intermediate_size=64,
                         max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64,
                           image_size=32, patch_size=16, hidden_act="quick_gelu"))
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():  # transformers' layer 1 query projection: open_clip's packed in_proj of block 1
        model.text_model.encoder.layers[1].self_attn.q_proj.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "tuned")
    out = tmp_path / "out"
    assert cli.main([str(tmp_path / "base"), str(tmp_path / "tuned"), "--parts", "weights", "--out", str(out),
                     "--no-progress"]) == 0
    weights = pd.read_csv(out / "weights.csv")
    changed = weights[weights["relative_change"] > 0]
    assert set(zip(changed["part"], changed["component"])) == {("block 1", "attention"), ("block 1", "all")}
    assert "tuned: block 1 holds 100%" in capsys.readouterr().out
