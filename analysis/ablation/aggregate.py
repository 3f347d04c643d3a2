"""Aggregating an ablation's runs: per variant and metric, the mean and 95 % Student-t interval over seeds
(probing.measure.probes.mean_ci)."""
from __future__ import annotations

from typing import Any, Sequence

from probing.measure.probes import mean_ci

COST_METRICS = ("train_seconds", "final_loss")


def summarize_runs(runs: Sequence[dict[str, Any]], *, variants: Sequence[str], plans: dict[str, Any], n_layers: int,
                   header: dict[str, Any], notes: Sequence[str] = (), complete: bool = True) -> dict[str, Any]:
    """Per variant and metric: mean and 95 % t-interval over seeds (variants without runs are left out)."""
    rows = []
    for variant in variants:
        mine = sorted((run for run in runs if run["variant"] == variant), key=lambda run: int(run["seed"]))
        if not mine:
            continue
        plan = plans.get(variant)
        rows.append({"variant": variant, "blocks": [] if plan is None else list(plan.blocks),
                     "trained_parameters": int(mine[0].get("trained_parameters") or 0),
                     "seeds": [int(run["seed"]) for run in mine], "metrics": _intervals(mine)})
    return {"header": header, "n_layers": n_layers, "complete": complete, "notes": list(notes), "variants": rows}


def _intervals(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:

    columns: dict[str, list[float]] = {}
    for run in runs:
        values = dict(run["metrics"])
        values.update({name: run.get(name) for name in COST_METRICS})
        for key, value in values.items():
            if value is not None:
                columns.setdefault(key, []).append(float(value))
    out = {}
    for key, values in columns.items():
        interval = mean_ci(values)
        out[key] = {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": len(values)}
    return out


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per (variant, metric), for the CSV."""
    rows = []
    for entry in summary["variants"]:
        for metric, value in sorted(entry["metrics"].items()):
            rows.append({"variant": entry["variant"], "blocks": " ".join(map(str, entry["blocks"])),
                         "seeds": " ".join(map(str, entry["seeds"])), "metric": metric, "n": value["n"],
                         "mean": value["mean"], "ci_low": value["low"], "ci_high": value["high"]})
    return rows
