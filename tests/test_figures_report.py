"""Figures (PNG + PDF at column width, selected blocks marked) and the report's sentences and files."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from analysis.report.figures import (COLUMN_WIDTH, plot_all, plot_block_scores, plot_gradnorm_heatmap, plot_probe_accuracy,
                              plot_selectivity, plot_sensitivity)
from analysis.report.report import summary_sentences, write_report
from analysis.selection import SelectionConfig, select_layers
from tests.test_selection import gradnorm_rows, measurements, probe_rows, sensitivity_rows

N_LAYERS = 6


def full_measurements(trained, random=None):
    """Every table, with probe evidence shaped by `trained` / `random` held-out curves."""
    random = random or [0.5] * (N_LAYERS + 1)
    probes = probe_rows(trained, random) + probe_rows([a - 0.02 for a in trained], random, task="scope")
    probes += [dict(r, labels="control", accuracy=0.55) for r in probe_rows(trained) if r["split"] == "in_distribution"]
    selectivity = [{"task": r["task"], "layer": r["layer"], "probe": r["probe"], "task_accuracy": r["accuracy"],
                    "control_accuracy": 0.55, "selectivity": r["accuracy"] - 0.55}
                   for r in probes if r["model"] == "trained" and r["labels"] == "task" and r["split"] == "in_distribution"]
    grads = gradnorm_rows({"clip": [0.06, 0.04, 0.02, 0.01, 0.01, 0.01], "conclip": [0.05, 0.05, 0.02, 0.01, 0.01, 0.01]})
    grads += [dict(r, component=c, relative_norm=r["relative_norm"] * f)
              for r in list(grads) for c, f in (("attention", 1.2), ("mlp", 0.9), ("layernorms", 0.1))]
    m = measurements(N_LAYERS, probes=probes, gradnorms=grads,
                     sensitivity=sensitivity_rows([1.2, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6], [0.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]))
    m["selectivity"] = selectivity
    m["causal"] = [{"layer": l, "metric": metric, "ablated": 0.6, "baseline": 0.65, "change": -0.05 if l == 2 else 0.0}
                   for l in range(N_LAYERS + 1) for metric in ("ccneg_accuracy", "scope_accuracy")]
    return m


FRONT = [0.5, 0.62, 0.74, 0.86, 0.86, 0.86, 0.86]  # held-out evidence added by blocks 0-2
BACK = [0.5, 0.5, 0.5, 0.5, 0.62, 0.74, 0.86]  # added by blocks 3-5


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    m = full_measurements(FRONT)
    plan = select_layers(m, SelectionConfig(rule="prefix", share=0.8))
    return m, plan, tmp_path_factory.mktemp("figures")


@pytest.mark.parametrize("draw, name", [
    (lambda m, p, out: plot_probe_accuracy(m, p, out), "probe_accuracy"),
    (lambda m, p, out: plot_selectivity(m, p, out), "selectivity"),
    (lambda m, p, out: plot_sensitivity(m, p, out), "sensitivity"),
    (lambda m, p, out: plot_gradnorm_heatmap(m, p, out), "gradnorms"),
    (lambda m, p, out: plot_block_scores(p, out), "block_scores")])
def test_each_figure_is_written_as_png_and_pdf_at_column_width(front, draw, name):
    m, plan, out = front
    png, pdf = draw(m, plan, out)
    assert (png.name, pdf.name) == (f"{name}.png", f"{name}.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        width_in = image.size[0] / 300
    # tight bounding box: about a column wide (legend and labels may add a little), never two columns
    assert 0.7 * COLUMN_WIDTH < width_in < 1.35 * COLUMN_WIDTH


def test_figures_refuse_missing_data(tmp_path):
    empty = measurements(3)
    for draw in (plot_probe_accuracy, plot_selectivity, plot_sensitivity, plot_gradnorm_heatmap):
        with pytest.raises(ValueError, match="no .* rows"):
            draw(empty, None, tmp_path)
    only_grads = measurements(3, gradnorms=gradnorm_rows({"clip": [0.3, 0.2, 0.1]}))
    assert set(plot_all(only_grads, None, tmp_path)) == {"gradnorms"}


def test_report_states_front_layers_and_the_deciding_numbers(front, tmp_path):
    m, plan, _ = front
    assert plan.blocks == [0, 1, 2]
    text = " ".join(summary_sentences(m, plan))
    assert "trains text blocks 0-2 of 6" in text
    share = plan.evidence["decision"]["share_of_prefix"]
    assert f"they hold {100 * share:.1f}%" in text and "blocks 0-1 held only" in text
    assert "negation probe beats the random-weights model by up to 36.0 points" in text
    assert "the evidence favours front layers" in text
    assert "by at most -0.050 (layer 2)" in text  # the causal check


def test_report_says_so_when_the_evidence_does_not_favour_front_layers():
    m = full_measurements(BACK)
    plan = select_layers(m, SelectionConfig(rule="topk", k=2, w_gradnorm=0, w_sensitivity=0))
    # gains (negation, scope averaged): block 3 +0.11 (scope starts 2 points lower), blocks 4 and 5 +0.12
    assert plan.blocks == [4, 5]
    text = " ".join(summary_sentences(m, plan))
    assert "does NOT favour front layers" in text
    assert "held-out probes only" in text
    assert "Blocks 4-5 have the 2 highest combined scores" in text


def test_report_files_hold_every_number_and_link_existing_figures(front):
    m, plan, out = front
    figures = plot_all(m, plan, out / "figures")
    paths = write_report(out, m, plan, figures=figures, model_info={"model": "hand-made"},
                         embedded_metrics={"scope_accuracy": 0.3}, run_info={"notes": ["a note"]})
    report = json.loads(paths["json"].read_text())
    assert report["plan"] == json.loads(json.dumps(plan.to_dict()))
    assert report["measurements"]["probes"] == m["probes"] and report["measurements"]["gradnorms"] == m["gradnorms"]
    assert report["summary"] == summary_sentences(m, plan) and report["embedded_metrics"] == {"scope_accuracy": 0.3}
    md = paths["markdown"].read_text()
    for name, files in report["figures"].items():
        assert all((out / f).is_file() for f in files)
        assert f"]({files[0]})" in md
    assert "| 0 | yes |" in md and "| 3 |  |" in md  # per-block table marks the selected blocks
    assert "- a note" in md and report["summary"][0] in md
