"""The typed result of compare-checkpoints: its settings (CompareConfig) and every number of one comparison
(Comparison, tables as DataFrames), with the JSON layout that plan_from_comparison reads back. core.py fills it,
report.py and figures.py render it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.compare.weights import IMAGE_TOWER, block_changes, smallest_share

PARTS = ("weights", "states", "probes")
FORMAT = "compare-checkpoints/1"  # the JSON layout plan_from_comparison reads
OUTPUT_LAYER = "text feature"  # the state after ln_final and the projection (what CLIP scores with)


@dataclass(frozen=True)
class CompareConfig:
    parts: tuple[str, ...] = PARTS
    share: float = 0.8  # the sentence names the smallest set of blocks holding this share of the summed change
    n_states: int = 500  # captions per group (affirmative, negated) for CKA and cosine: a seeded draw
    n_boot: int = 200  # bootstrap resamples of captions (CKA, cosine)
    probe_boot: int = 1000  # bootstrap resamples of test items (paired probe differences)
    confidence: float = 0.95
    seeds: tuple[int, ...] = (0, 1, 2)  # probe seeds
    probes: tuple[str, ...] = ("logistic",)
    n_train: int = 2000  # synthetic tasks: probe training captions
    n_test: int = 600  # synthetic tasks: captions per test split
    decodable: float = 0.9  # the sentences name the first layer whose probe accuracy reaches this
    batch_size: int = 256
    seed: int = 0  # data draws and bootstrap

    def __post_init__(self):
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass
class Comparison:
    """Every number of one comparison; tables as DataFrames (each row names its model)."""

    base: str  # the base model's name in the tables
    models: dict[str, dict]  # name -> {"role": base/tuned, "label", "checkpoint", "status", "statement", ...}
    weights: pd.DataFrame  # (model, part, block, component): norms, relative_change, changed elements
    tensors: pd.DataFrame  # (model, tensor): the same per tensor
    states: pd.DataFrame  # (model, group, layer): CKA and cosine with intervals
    probes: pd.DataFrame  # (model, task, split, layer, probe): balanced accuracy with interval
    probe_differences: pd.DataFrame  # (model, task, split, layer, probe): tuned - base, paired interval
    sentences: list[str]
    notes: list[str]
    config: CompareConfig
    n_layers: int
    layer_labels: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tuned(self) -> list[str]:
        return [name for name, info in self.models.items() if info["role"] == "tuned"]

    def statements(self) -> dict[str, str]:
        """Tuned model -> its statement ("no weight differs ...", "the text towers differ in shape ...")."""
        return {name: self.models[name]["statement"] for name in self.tuned if self.models[name].get("statement")}

    def block_changes(self, model: str) -> dict[int, float]:
        """{block: relative change of the whole block} of one tuned model ({} when it was not compared)."""
        return block_changes(self.weights[self.weights["model"] == model]) if len(self.weights) else {}

    def concentrated_blocks(self, model: str, share: float | None = None) -> list[int]:
        """The smallest set of blocks holding `share` (default: the config's) of the summed relative change."""
        return smallest_share(self.block_changes(model), self.config.share if share is None else share)

    def block_table(self) -> pd.DataFrame:
        """Parts (token embedding, positional embedding, block 0..L-1, final LayerNorm, text projection, logit
        scale, image tower) x tuned models: relative change of the whole part."""
        if not len(self.weights):
            return pd.DataFrame()
        whole = self.weights[self.weights["component"] == "all"]
        table = whole.pivot(index="part", columns="model", values="relative_change")
        order = [p for p in part_order(self.n_layers) if p in table.index]
        return table.loc[order + [p for p in table.index if p not in order], [m for m in self.tuned
                                                                                 if m in table.columns]]

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN as null): what compare-checkpoints writes as comparison.json."""
        return _json_ready({
            "format": FORMAT, "base": self.base, "models": self.models, "n_layers": self.n_layers,
            "layer_labels": self.layer_labels, "config": asdict(self.config),
            "block_change": {m: {str(b): c for b, c in self.block_changes(m).items()} for m in self.tuned
                             if self.models[m]["status"] != "incomparable"},
            "concentrated_blocks": {m: self.concentrated_blocks(m) for m in self.tuned
                                    if self.models[m]["status"] != "incomparable"},
            "sentences": self.sentences, "notes": self.notes, "meta": self.meta,
            "weights": _records(self.weights), "tensors": _records(self.tensors), "states": _records(self.states),
            "probes": _records(self.probes), "probe_differences": _records(self.probe_differences),
        })


def part_order(n_layers: int) -> list[str]:
    return ["token embedding", "positional embedding", *[f"block {b}" for b in range(n_layers)], "final LayerNorm",
            "text projection", "logit scale", "other text-tower tensors", IMAGE_TOWER]


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records")) if len(frame) else []


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
