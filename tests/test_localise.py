"""measure_localisation end to end: a real-size tower with random weights, real examples, modes, saving."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from analysis.report.localisation import localisation_sentences, plot_localisation
from probing.data import generate_negations, load_negbench_retrieval
from probing.measure.localise import TABLES, Localisation, LocaliseConfig, measure_localisation
from probing.models.factory import create_model

SMALL_RUN = dict(n_pairs=3, roles=("cue", "eot"), patch_layers=(0, 6, 11), n_eval=8, n_steer=8, retrieval_group=8,
                 n_train=8, n_train_probe=40, alphas=(0.5,), probes=("diffmeans",), steer_layers=(6,), n_top_heads=2,
                 n_boot=100, batch_size=8)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """ViT-B-32 with random weights (width 512, 8 heads, 12 blocks, context 77) on a handful of pairs."""
    bundle = create_model("ViT-B-32")
    result = measure_localisation(bundle.model, bundle.preprocess, bundle.tokenizer, world=bundle.world,
                                  config=LocaliseConfig(**SMALL_RUN), progress=False)
    return bundle, result, tmp_path_factory.mktemp("vit")


def test_vit_b_32_with_random_weights_runs_end_to_end(vit):
    _, result, _ = vit
    assert (result.n_layers, result.n_heads) == (12, 8)
    assert set(result.tables) == set(TABLES)
    for name, table in result.tables.items():
        assert list(table.columns) == list(TABLES[name]) and len(table), name
    patching = result.patching
    assert set(patching["layer"]) == {0, 6, 11} and set(patching["kind"]) == {"negation", "scope"}
    assert set(patching["method"]) == {"exact", "attribution"} and set(patching["direction"]) == {"denoise", "noise"}
    heads = patching[patching["component"] == "head"]
    assert heads["head"].notna().all() and patching[patching["component"] != "head"]["head"].isna().all()
    assert len(heads) == 2 * 2 * 2 * 3 * 8 and (result.pairs["n_pairs"] == 3).all()
    assert set(result.lens["layer"]) == set(range(13)) and set(result.lens["lens"]) == {"plain", "tuned"}
    assert result.steering["layer"].isna().sum() == 3  # every layer at once, one row per metric
    assert set(result.meta["seconds"]) >= {"patching", "attention", "ablation", "lens", "steering"}


def test_a_localisation_saves_loads_and_reports(vit):
    _, result, folder = vit
    result.save(folder)
    loaded = Localisation.load(folder / "localisation.json")
    assert (loaded.n_layers, loaded.n_heads) == (result.n_layers, result.n_heads)
    assert loaded.meta == json.loads(json.dumps(result.meta))  # tuples come back as lists
    for name, table in result.tables.items():
        pd.testing.assert_frame_equal(loaded.tables[name], table, check_dtype=False)
    assert loaded.patching["head"].dtype == "Int64" and loaded.steering["layer"].dtype == "Int64"
    figures = plot_localisation(loaded, folder)
    assert set(figures) == {"patching_negation", "patching_scope", "heads", "lens", "steering"}
    assert all(path.stat().st_size > 0 for paths in figures.values() for path in paths)
    sentences = localisation_sentences(loaded)
    for start in ("On 3 negation pairs", "Negation pairs, exact patching", "Attribution patching ranks",
                  "The heads with the largest", "Zero-ablating", "CC-Neg-style acc. of the final features",
                  "The best steering setting", "Quantmeyer et al."):
        assert any(s.startswith(start) for s in sentences), start


@pytest.fixture(scope="module")
def small():
    return create_model("embedded:small")


def test_real_examples_alone_give_patching_and_say_what_they_skip(small, test_data):
    items = load_negbench_retrieval(test_data / "negbench" / "COCO_val_retrieval.csv",
                                    image_root=test_data / "coco_mini" / "val2017", strict=False)
    examples = generate_negations(items[:40], seed=0)
    config = LocaliseConfig(n_pairs=6, components=("resid", "head"), n_boot=50, batch_size=6)
    result = measure_localisation(small.model, small.preprocess, small.tokenizer, examples=examples, config=config,
                                  progress=False)
    assert set(result.patching["kind"]) == {"negation"} and result.pairs["n_pairs"].iloc[0] == 6
    assert set(result.meta["skipped"]) == {"lens", "steering", "ablation"} and result.lens.empty
    assert not result.attention.empty


def test_the_model_comes_back_in_its_own_mode(small):
    model = small.model
    model.train()
    model.visual.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    config = LocaliseConfig(measurements=("patching",), n_pairs=2, components=("mlp",), roles=("eot",),
                            methods=("exact",), n_boot=10)
    measure_localisation(model, small.preprocess, small.tokenizer, world=small.world, config=config, progress=False)
    assert {name: m.training for name, m in model.named_modules()} == modes
    model.eval()


def test_config_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="unknown measurements"):
        LocaliseConfig(measurements=("patching", "probes"))
    with pytest.raises(ValueError, match="needs 'patching'"):
        LocaliseConfig(measurements=("heads",))
    with pytest.raises(ValueError, match="needs pairs"):
        measure_localisation(torch.nn.Linear(2, 2), None, None)
