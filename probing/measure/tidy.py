"""One long-format table of every per-layer measurement of a run, loadable in one line:

    pandas.read_csv("runs/x/measurements_long.csv")

Columns (LONG_COLUMNS): tower ("trained", a null tower's name, or an ablation variant), layer (layer index
0 .. n for states, block index for gradient norms, Fisher, patching and heads), component (resid, attn, mlp, ...),
head, position (the token role or pooling the number is about), metric, value, seed (None: a mean over seeds),
ci_low, ci_high, n. Each wide table of probing.measure.layers (and of a localisation) becomes rows of it;
`metric` names what the value is ("probe_accuracy/scope/heldout_cue/logistic", "relative_grad_norm/clip", ...).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from probing.io import atomic_path
from probing.measure.keys import TRAINED

LONG_COLUMNS = ("tower", "layer", "component", "head", "position", "metric", "value", "seed", "ci_low", "ci_high", "n")


def _rows(frame: pd.DataFrame, **columns) -> pd.DataFrame:
    """The long rows of one wide table: each keyword is a long column, given as a column name of `frame`, a
    function of the frame, or a constant."""
    out = {}
    for name in LONG_COLUMNS:
        spec = columns.get(name)
        if callable(spec):
            out[name] = spec(frame)
        elif isinstance(spec, str) and spec in frame.columns and name not in ("metric", "position", "component"):
            out[name] = frame[spec]
        else:
            out[name] = spec
    return pd.DataFrame(out, index=frame.index)


def long_table(measurements, localisation=None) -> pd.DataFrame:
    """Every per-layer number of a LayerMeasurements (and of its Localisation, if given), one row each."""
    parts = []
    probes = measurements.probes
    if not probes.empty:
        parts.append(_rows(probes, tower="model", layer="layer", component="resid", position="eot",
                           metric=lambda f: "probe_accuracy/" + f["task"] + "/" + f["split"] + "/" + f["probe"]
                           + f["labels"].map({"task": "", "control": "/control"}),
                           value="accuracy", ci_low="ci_low", ci_high="ci_high", n="n_test"))
    selectivity = measurements.selectivity
    if not selectivity.empty:
        parts.append(_rows(selectivity, tower=TRAINED, layer="layer", component="resid", position="eot",
                           metric=lambda f: "selectivity/" + f["task"] + "/" + f["probe"], value="selectivity"))
    sensitivity = measurements.sensitivity
    if not sensitivity.empty:
        for metric, value, low, high in (("sensitivity", "sensitivity", "ci_low", "ci_high"),
                                         ("cosine_distance", "raw_distance", None, None),
                                         ("norm_change", "norm_change", None, None)):
            parts.append(_rows(sensitivity, tower="model", layer="layer", component="resid", position="eot",
                               metric=lambda f, metric=metric: f"{metric}/" + f["edit"], value=value, ci_low=low,
                               ci_high=high))
    gradnorms = measurements.gradnorms
    if not gradnorms.empty:
        parts.append(_rows(gradnorms, tower="model", layer="layer", component=lambda f: f["component"],
                           position="weights", metric=lambda f: "relative_grad_norm/" + f["loss"],
                           value="relative_norm", n="n_batches"))
    fisher = measurements.fisher
    if not fisher.empty:
        parts.append(_rows(fisher, tower="model", layer="layer", component="all", position="weights",
                           metric=lambda f: "fisher/" + f["loss"], value="fisher", n="n_micro_batches"))
    causal = measurements.causal
    if not causal.empty:
        parts.append(_rows(causal, tower=TRAINED, layer="layer", component="resid", position="eot",
                           metric=lambda f: "causal_change/" + f["metric"], value="change"))
    if localisation is not None:
        parts += _localisation_rows(localisation)
    if not parts:
        return pd.DataFrame(columns=list(LONG_COLUMNS))
    table = pd.concat([part for part in parts if not part.empty], ignore_index=True)
    return table[list(LONG_COLUMNS)]


def _localisation_rows(localisation) -> list[pd.DataFrame]:
    parts = []
    patching = localisation.patching
    if not patching.empty:
        parts.append(_rows(patching, tower=TRAINED, layer="layer", component=lambda f: f["component"], head="head",
                           position=lambda f: f["role"],
                           metric=lambda f: "patching/" + f["kind"] + "/" + f["method"] + "/" + f["direction"],
                           value="effect", ci_low="ci_low", ci_high="ci_high", n="n_pairs"))
    attention = localisation.attention
    if not attention.empty:
        parts.append(_rows(attention, tower=TRAINED, layer="layer", component="attn", head="head",
                           position=lambda f: f["query"], metric=lambda f: "attention_to_cue/" + f["kind"],
                           value="attention", ci_low="ci_low", ci_high="ci_high", n="n"))
    lens = localisation.lens
    if not lens.empty:
        parts.append(_rows(lens, tower=TRAINED, layer="layer", component="resid", position="eot",
                           metric=lambda f: "lens/" + f["lens"] + "/" + f["metric"], value="value",
                           ci_low="ci_low", ci_high="ci_high", n="n"))
    steering = localisation.steering
    if not steering.empty:
        parts.append(_rows(steering, tower=TRAINED, layer="layer", component="resid", position="all",
                           metric=lambda f: "steering_change/" + f["probe"] + "/alpha=" + f["alpha"].astype(str)
                           + "/" + f["metric"], value="change", ci_low="ci_low", ci_high="ci_high", n="n"))
    return parts


def write_long_table(stem: str | Path, table: pd.DataFrame) -> dict[str, Path]:
    """`<stem>.csv`, and `<stem>.parquet` when pyarrow is installed; written atomically."""
    stem = Path(stem)
    paths = {}
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    paths["long_csv"] = stem.with_suffix(".csv")
    if importlib.util.find_spec("pyarrow") is not None:
        with atomic_path(stem.with_suffix(".parquet")) as tmp:
            table.to_parquet(tmp, index=False)
        paths["long_parquet"] = stem.with_suffix(".parquet")
    return paths
