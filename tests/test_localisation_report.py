"""Localisation figures (PNG + PDF at column width) and report sentences computed from known tables."""
from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from analysis.report.figures import COLUMN_WIDTH, save_figures
from analysis.report.localisation import (
    draw_heads,
    draw_lens,
    draw_patching,
    draw_steering,
    eot_shift_layer,
    lens_reach,
    localisation_sentences,
    residual_profile,
    selective_heads,
)
from probing.measure.localise import TABLES, Localisation
from probing.measure.roles import ROLES

N_LAYERS, N_HEADS = 6, 2
SHIFT = 3  # the EOT position carries the effect from this residual layer on
TOP = (3, 1)  # the head that matters and looks at the cue


def _patching() -> pd.DataFrame:
    rows = []
    for direction in ("denoise", "noise"):
        for layer in range(N_LAYERS):
            for role in ROLES:
                resid = 0.9 if (role == "cue" and layer < SHIFT) or (role == "eot" and layer >= SHIFT) else 0.02
                attn = 0.6 if (layer, role) == (3, "eot") else 0.01
                mlp = 0.3 if (layer, role) == (1, "cue") else 0.0
                for component, effect in (("resid", resid), ("attn", attn), ("mlp", mlp)):
                    rows.append((component, layer, role, None, direction, effect))
            for head in range(N_HEADS):
                rows.append(("head", layer, "all", head, direction, 0.8 if (layer, head) == TOP else 0.05))
    table = pd.DataFrame(rows, columns=["component", "layer", "role", "head", "direction", "effect"])
    table["kind"], table["method"], table["n_pairs"] = "negation", "exact", 40
    table["ci_low"], table["ci_high"] = table["effect"] - 0.1, table["effect"] + 0.1
    table["score"] = table["effect"].where(table["direction"] == "denoise", 1 - table["effect"])
    table["head"] = table["head"].astype("Int64")
    return table[list(TABLES["patching"])]


def _lens() -> pd.DataFrame:
    rows = []
    for lens, reach in (("plain", 4), ("tuned", 2)):
        for layer in range(N_LAYERS + 1):
            scope = 0.8 if layer >= reach else 0.5
            values = (("ccneg_accuracy", 0.9), ("scope_accuracy", scope), ("image_to_text_R@1_among_100", 0.3))
            for metric, value in values:
                rows.append((lens, layer, metric, value, value - 0.05, value + 0.05, 200))
    return pd.DataFrame(rows, columns=list(TABLES["lens"]))


def _steering() -> pd.DataFrame:
    rows = []
    for layer in [*range(N_LAYERS + 1), None]:
        for alpha in (0.13, 1.0):
            helps = layer == 2 and alpha == 1.0
            for metric, change in (("ccneg_accuracy", -0.01), ("scope_accuracy", 0.15 if helps else 0.0),
                                   ("image_to_text_R@1_among_100", 0.0)):
                rows.append(("logistic", layer, alpha, metric, 0.5 + change, 0.5, change, change - 0.05, change + 0.05,
                             100))
    table = pd.DataFrame(rows, columns=list(TABLES["steering"]))
    table["layer"] = table["layer"].astype("Int64")
    return table


@pytest.fixture(scope="module")
def known():
    attention = pd.DataFrame(
        [("negation", l, h, q, 0.6 if (l, h) == TOP and q == "eot" else 0.1, 0.55 if (l, h) == TOP else 0.05,
          0.65 if (l, h) == TOP else 0.15, 0.1, 40) for l in range(N_LAYERS) for h in range(N_HEADS)
         for q in ("eot", "negated")], columns=list(TABLES["attention"]))
    ablation = pd.DataFrame([("L3H1", kind, metric, 0.4, 0.5, -0.1, -0.15, -0.05, 200) for kind in ("zero", "mean")
                             for metric in ("ccneg_accuracy", "scope_accuracy")], columns=list(TABLES["ablation"]))
    pairs = pd.DataFrame([("negation", 40, 2, 0.75, 0.01, 0.3, 0.29)], columns=list(TABLES["pairs"]))
    agreement = pd.DataFrame([("negation", "denoise", "all", 0.91, 200), ("negation", "denoise", "resid", 0.7, 40)],
                             columns=list(TABLES["agreement"]))
    return Localisation(N_LAYERS, N_HEADS, {"patching": _patching(), "lens": _lens(), "steering": _steering(),
                                            "attention": attention, "ablation": ablation, "pairs": pairs,
                                            "agreement": agreement})


def test_sentences_say_where_the_effect_is_and_compare_with_the_papers(known):
    text = "\n".join(localisation_sentences(known))
    assert "40 negation pairs" in text and "75% of images" in text and "2 pairs could not be aligned" in text
    assert "at the cue positions in layers 0-2 and at the EOT position from layer 3 on" in text
    assert "the attention output of block 3 at the eot position(s) restores +0.60" in text
    assert "the MLP output of block 1 at the cue position(s) restores +0.30" in text
    assert "negation denoise rho = 0.91" in text and "it agrees least for resid" in text
    assert "are L3H1 (+0.80)" in text
    assert "Zero-ablating L3H1 changes scope accuracy by -0.10 [-0.15, -0.05]" in text
    assert "1 head attends from EOT to the cue at 2x uniform or more, most of them in block 3" in text
    assert "Scope acc. of the final features is 0.80; read through the plain lens it is within 0.02 of that from " \
           "layer 4, through the tuned lens from layer 2" in text
    assert "(logistic direction at layer 2, alpha 1) changes it by +0.15 [+0.10, +0.20]" in text
    assert ("1 of 16 settings raise scope accuracy with an interval above zero, "
            "1 of them without a retrieval loss") in text
    assert "(block 2.0 at this depth of 6)" in text and "carries the largest effect from layer 3" in text
    assert "here the most such heads are in block 3 (of 6)" in text
    assert "Sammani et al. steer every block at alpha 0.13" in text and "scope acc. +0.00 [-0.05, +0.05]" in text


def test_the_helpers_read_the_numbers(known):
    profile = residual_profile(known, "negation")
    assert eot_shift_layer(profile) == SHIFT
    assert list(profile["best_role"][:SHIFT]) == ["cue"] * SHIFT
    assert lens_reach(known.lens, "plain", "scope_accuracy") == 4
    assert list(selective_heads(known.attention)[["layer", "head"]].itertuples(index=False, name=None)) == [TOP]


@pytest.mark.parametrize("draw, name", [
    (lambda loc: draw_patching(loc, "negation"), "patching_negation"),
    (draw_heads, "heads"), (draw_lens, "lens"), (draw_steering, "steering")])
def test_each_figure_is_written_as_png_and_pdf_at_column_width(known, tmp_path, draw, name):
    png, pdf = save_figures({name: draw(known)}, tmp_path)[name]
    assert (png.name, pdf.name) == (f"{name}.png", f"{name}.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        assert 0.7 * COLUMN_WIDTH < image.size[0] / 300 < 1.35 * COLUMN_WIDTH


def test_figures_refuse_missing_data(tmp_path):
    empty = Localisation(N_LAYERS, N_HEADS)
    for draw in (draw_heads, draw_lens, draw_steering, lambda loc: draw_patching(loc, "negation")):
        with pytest.raises(ValueError, match="no .*rows"):
            draw(empty)
