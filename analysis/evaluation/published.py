"""Published numbers beside measured ones: the table `published.json` (data, with the source of every
row) and the look-up `evaluate-negation` uses to print it next to each metric it measures.

Published accuracies come from the authors' argmax rule, which counts a tie as correct; this
toolkit counts it as wrong and reports the ties, so a model with many ties reads lower here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("published.json")


@dataclass(frozen=True)
class Published:
    model: str
    value: float
    source: str
    reference: bool  # the CLIP ViT-B/32 baseline (OpenAI weights)


@lru_cache(maxsize=None)
def published_table() -> dict[tuple[str, str], tuple[Published, ...]]:
    """(section, metric) -> its published values, the CLIP ViT-B/32 reference first."""
    rows = json.loads(TABLE.read_text(encoding="utf-8"))["rows"]
    table: dict[tuple[str, str], list[Published]] = {}
    for row in rows:
        table.setdefault((row["section"], row["metric"]), []).append(
            Published(row["model"], float(row["value"]), row["source"], bool(row.get("reference", False))))
    return {key: tuple(sorted(values, key=lambda p: not p.reference)) for key, values in table.items()}


def published_for(section: str, metric: str) -> tuple[Published, ...]:
    return published_table().get((section, metric), ())


def published_of(sections: dict[str, dict], summary: dict[str, dict]) -> dict[str, dict[str, list[dict]]]:
    """section -> metric -> published rows, for the metrics of a result that have any (JSON output)."""
    measured = {section: body["metrics"] for section, body in sections.items()}
    measured["summary"] = summary
    out: dict[str, dict[str, list[dict]]] = {}
    for section, metrics in measured.items():
        for metric in metrics:
            rows = published_for(section, metric)
            if rows:
                out.setdefault(section, {})[metric] = [vars(row) for row in rows]
    return out
