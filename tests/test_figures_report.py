"""Figures (PNG + PDF at column width, selected blocks marked) and the report's sentences and files,
on a real measurement of a tiny model with null models and on planted evidence."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.planning.evidence import block_evidence
from analysis.planning.selection import SelectionConfig, select_layers
from analysis.planning.settings import EvidenceConfig
from analysis.report.figures import (
    COLUMN_WIDTH,
    draw_evidence,
    draw_gradnorm_heatmap,
    draw_probe_accuracy,
    draw_selectivity,
    draw_sensitivity,
    plot_all,
    save_figures,
)
from analysis.report.report import summary_sentences, write_report
from probing.measure.layers import LayerMeasurements
from tests.test_evidence import synthetic_measurements


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A tiny model measured with 3 null models (every table filled) and its selection."""
    import json as _json

    from finetune.losses import gradnorm_loss_fns
    from probing.clip.loading import load_clip
    from probing.measure.layers import MeasureConfig, measure_layers
    from probing.measure.null import null_tower
    from probing.measure.tasks import synthetic_negation_task, synthetic_scope_task
    from probing.synthetic.world import SyntheticWorld, WorldConfig
    from tests.conftest import tiny_config

    folder = tmp_path_factory.mktemp("measured")
    config_path = folder / "tiny-figures.json"
    config_path.write_text(_json.dumps(tiny_config(layers=4)))
    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(config_path)
    world = SyntheticWorld(WorldConfig(image_size=32), seed=0)
    tasks = [
        synthetic_negation_task(world, n_train=120, n_test=40),
        synthetic_scope_task(world, n_train=120, n_test=40),
    ]
    nulls = {f"null:{s}": (lambda s=s: null_tower(model, "tiny-figures", s)) for s in (1, 2, 3)}
    m = measure_layers(model, preprocess, tokenizer, tasks, world=world, null_models=nulls,
                       loss_fns=gradnorm_loss_fns(("clip", "conclip")),
                       config=MeasureConfig(seeds=(0,), null_seeds=(0,), n_sensitivity=30, n_causal=100,
                                            grad_batches=2, grad_batch_size=8), progress=False)
    selection = select_layers(block_evidence(m, EvidenceConfig(n_boot=50)))
    return m, selection, folder


@pytest.mark.parametrize("draw, name", [
    (lambda m, s: draw_probe_accuracy(m, [1]), "probe_accuracy"),
    (lambda m, s: draw_selectivity(m, [1]), "selectivity"),
    (lambda m, s: draw_sensitivity(m, [1]), "sensitivity"),
    (lambda m, s: draw_gradnorm_heatmap(m, [1]), "gradnorms"),
    (lambda m, s: draw_evidence(s), "evidence")])
def test_each_figure_is_written_as_png_and_pdf_at_column_width(measured, draw, name):
    m, selection, out = measured
    png, pdf = save_figures({name: draw(m, selection)}, out)[name]
    assert (png.name, pdf.name) == (f"{name}.png", f"{name}.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        width_in = image.size[0] / 300
    # tight bounding box: about a column wide (legend and labels may add a little), never two columns
    assert 0.7 * COLUMN_WIDTH < width_in < 1.35 * COLUMN_WIDTH


def test_figures_refuse_missing_data(tmp_path):
    empty = LayerMeasurements(3, ["0", "1", "2", "3"])
    for draw in (draw_probe_accuracy, draw_selectivity, draw_sensitivity, draw_gradnorm_heatmap):
        with pytest.raises(ValueError, match="no .* rows"):
            draw(empty, [])
    assert plot_all(empty, None, tmp_path) == {}


def planted_selection(**planted):
    evidence = block_evidence(synthetic_measurements(np.random.default_rng(20), **planted), EvidenceConfig(n_boot=100))
    return LayerMeasurements(6, [str(i) for i in range(7)]), select_layers(evidence, SelectionConfig(rule="window"))


def test_report_names_the_evidence_and_where_it_sits():
    m, selection = planted_selection(planted_probe=4)
    assert selection.plan.blocks == [4]
    text = " ".join(summary_sentences(m, selection))
    assert "trains text block 4 of 6" in text
    probe = selection.evidence.components["probe"]
    assert (
        f"exceed the 10 null models significantly at block 4 (largest at block 4: {100 * probe.excess[4]:+.1f} points"
        in text
    )
    assert "does NOT favour front layers; it sits in the back half" in text
    assert "favours front layers." not in text


def test_report_warns_when_most_replicates_choose_other_blocks_than_the_plan():
    m, selection = planted_selection(planted_probe=4)
    assert selection.agreement > 0.5 and "unstable" not in " ".join(summary_sentences(m, selection))
    # the middle model's case: the plan 0-5 picked by no replicate, every replicate choosing blocks 4-5
    unstable = dataclasses.replace(selection, agreement=0.0, stability=[0.0, 0.0, 0.0, 0.0, 1.0, 1.0],
                                   plan=dataclasses.replace(selection.plan, blocks=[0, 1, 2, 3, 4, 5]))
    text = " ".join(summary_sentences(m, unstable))
    assert "picks exactly this plan in 0% of them; blocks chosen in at least half: 4-5." in text
    assert "The plan is unstable: most replicates choose other blocks than the plan" in text


def test_report_says_plainly_when_there_is_no_evidence():
    m, selection = planted_selection()
    text = " ".join(summary_sentences(m, selection))
    assert text.startswith("No layer plan: no block carries negation evidence beyond the null models")
    assert "The plan file names no blocks" in text
    assert "The evidence does not favour front, middle or back layers" in text
    assert "favours front layers" not in text


def test_report_files_hold_every_number_and_link_existing_figures(measured):
    m, selection, out = measured
    figures = plot_all(m, selection, out / "figures")
    paths = write_report(out, m, selection, figures=figures, model_info={"model": "tiny"},
                         embedded_metrics={"scope_accuracy": 0.3}, run_info={"notes": ["a note"]})
    report = json.loads(paths["json"].read_text())
    assert report["plan"] == json.loads(json.dumps(selection.plan.to_dict()))
    assert report["evidence"]["components"]["probe"]["z"] == pytest.approx(selection.evidence.components["probe"].z)
    assert report["summary"] == summary_sentences(m, selection) and report["embedded_metrics"] == {
        "scope_accuracy": 0.3
    }
    md = paths["markdown"].read_text()
    for files in report["figures"].values():
        assert all((out / f).is_file() for f in files)
        assert f"]({files[0]})" in md
    assert "| block | selected | stability | combined |" in md
    assert "- a note" in md and report["summary"][0] in md
