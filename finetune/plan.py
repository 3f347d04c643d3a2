"""The layer plan: which parts of the text tower fine-tuning trains.

The layer selector (analysis) writes a plan as JSON; fine-tuning only reads it. Example:

    {"blocks": [0, 1, 2, 3, 4, 5], "train_embeddings": true, "train_ln_final": true,
     "train_projection": true, "train_logit_scale": true, "lr_weights": {"0": 1.0, "5": 0.5},
     "rule": "front-6", "evidence": {}}

Block indices are checked against the model's depth when the plan is applied (`validate`).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from probing.io import DuplicateKeyError, atomic_write_json, strict_json_loads

BLOCK_PARTS = ("all", "layernorm")
MAX_BLOCK = 9_999  # the largest block index a layer list may name (ViT-bigG's text tower has 32 blocks)


class PlanError(ValueError):
    """A layer plan that cannot be used; the message says which file and what is wrong."""


@dataclass
class LayerPlan:
    blocks: list[int]
    train_embeddings: bool = False
    train_ln_final: bool = False
    train_projection: bool = False
    train_logit_scale: bool = False
    lr_weights: dict[int, float] | None = None  # block index -> learning-rate multiplier
    # "all": every parameter of a listed block trains; "layernorm": only its LayerNorms (norm-only tuning)
    block_parts: str = "all"
    rule: str = "manual"
    evidence: dict[str, Any] = field(default_factory=dict)  # free-form, written by the selector

    def __post_init__(self) -> None:
        self.source: str | None = None  # the file it was read from (named in errors); not part of the plan itself
        self.blocks, self.lr_weights = _clean_blocks(self.blocks, self.lr_weights)
        for name in ("train_embeddings", "train_ln_final", "train_projection", "train_logit_scale"):
            if not isinstance(getattr(self, name), bool):
                raise PlanError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.block_parts not in BLOCK_PARTS:
            raise PlanError(f"block_parts must be one of {', '.join(BLOCK_PARTS)}, got {self.block_parts!r}")
        if not isinstance(self.rule, str):
            raise PlanError(f"rule must be a string, got {self.rule!r}")
        if not isinstance(self.evidence, dict):
            raise PlanError(f"evidence must be a JSON object, got {type(self.evidence).__name__}")

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def front(cls, n: int, *, train_embeddings: bool = True, train_ln_final: bool = True,
              train_projection: bool = True, train_logit_scale: bool = True) -> "LayerPlan":
        """Blocks 0..n-1; the extras default to what Omni-NegCLIP's "front" setting trains."""
        if n < 1:
            raise PlanError(f"front(n) needs n >= 1, got {n}")
        return cls(list(range(n)), train_embeddings, train_ln_final, train_projection, train_logit_scale,
                   rule=f"front-{n}")

    @classmethod
    def whole_text_tower(cls, n_layers: int) -> "LayerPlan":
        """Every text block plus embeddings, final LayerNorm, projection and logit scale: CoN-CLIP's setup
        (its optimiser takes every parameter of the model outside the locked image tower, the logit
        scale included: src/conclip_fine_tuning.py)."""
        return cls(list(range(n_layers)), True, True, True, True, rule="whole-text-tower")

    @classmethod
    def from_layers(cls, spec: str, **extras: Any) -> "LayerPlan":
        """Parse a layer list such as "0-5", "0,1,2" or "0-2,7"."""
        return cls(parse_layers(spec), rule=f"layers {spec}", **extras)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "LayerPlan":
        """The plan a JSON object describes; `source` (its file) is named in every error about it."""
        plan_source, source = source, source or "<plan>"
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a layer plan must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        if "blocks" not in data:
            raise PlanError(f"{source}: missing key 'blocks' (list of text block indices to train)")
        try:
            plan = cls(**data)
        except PlanError as error:
            raise PlanError(f"{source}: {error}") from None
        plan.source = plan_source
        return plan

    @classmethod
    def load(cls, path: str | Path) -> "LayerPlan":
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"layer plan file {path} does not exist")

        try:
            data = strict_json_loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise PlanError(f"layer plan file {path} is not valid JSON: {error}") from None
        except DuplicateKeyError as error:
            raise PlanError(f"layer plan file {path}: {error}") from None
        return cls.from_dict(data, source=str(path))

    # --- use ----------------------------------------------------------------------------------
    def validate(self, n_layers: int) -> None:
        """Raise PlanError if the plan was chosen on a tower of another depth, or a block index does not exist in a
        text tower of `n_layers` blocks (naming the plan file, when the plan was read from one)."""
        chosen_on = self.evidence.get("n_layers")  # probe-layers' plans record the depth of the tower they read
        if isinstance(chosen_on, int) and not isinstance(chosen_on, bool) and chosen_on != n_layers:
            raise PlanError(f"{self._where()} was chosen on a text tower of {chosen_on} blocks (its evidence says "
                            f"so), but this one has {n_layers}: probe this model for its own plan, or name the blocks "
                            "by hand (finetune-layers --layers)")
        outside = [b for b in self.blocks if b >= n_layers]
        if outside:
            raise PlanError(
                f"{self._where()} lists block(s) {describe_indices(outside)}, but the text tower "
                f"has {n_layers} blocks (0..{n_layers - 1})"
            )

    def _where(self) -> str:
        """How an error names the plan: its file when it was read from one, else its rule."""
        return f"layer plan file {self.source}" if self.source else f"layer plan ({_shorten(self.rule)})"

    def trains_anything(self) -> bool:
        """Whether the plan names a block or an extra to train (an empty plan is a valid record: probe-layers
        writes one when the evidence supports no selection; `check_trains` refuses it for training)."""
        return bool(self.blocks) or any((self.train_embeddings, self.train_ln_final, self.train_projection,
                                         self.train_logit_scale))

    def check_trains(self) -> None:
        """Raise PlanError (naming the plan file, when it came from one) if the plan trains nothing."""
        if not self.trains_anything():
            raise PlanError(f"{self._where()} trains no text block and no extra (embeddings, ln_final, projection, "
                            "logit_scale): nothing would train")

    def lr_weight(self, block: int) -> float:
        return 1.0 if self.lr_weights is None else self.lr_weights.get(block, 1.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.lr_weights is not None:  # JSON object keys are strings
            data["lr_weights"] = {str(k): v for k, v in self.lr_weights.items()}
        return data

    def save(self, path: str | Path) -> Path:

        return atomic_write_json(path, self.to_dict())

    def describe(self) -> str:
        extras = [
            name
            for name, on in (
                ("embeddings", self.train_embeddings),
                ("ln_final", self.train_ln_final),
                ("projection", self.train_projection),
                ("logit_scale", self.train_logit_scale),
            )
            if on
        ]
        blocks = ",".join(map(str, self.blocks)) or "none"
        parts = " (LayerNorms only)" if self.block_parts == "layernorm" else ""
        return f"{self.rule}: blocks [{blocks}]{parts}" + (f" + {', '.join(extras)}" if extras else "")


def parse_layers(spec: str) -> list[int]:
    """"0-5" -> [0..5], "0,2,4" -> [0, 2, 4], "0-2,7" -> [0, 1, 2, 7]. Indices above MAX_BLOCK are refused
    here, before a range such as "0-10000000000" is ever expanded."""
    blocks: list[int] = []
    for piece in str(spec).replace(" ", "").split(","):
        try:
            if "-" in piece:
                low, high = (int(x) for x in piece.split("-", 1))
                if high < low:
                    raise ValueError
            else:
                low = high = int(piece)
        except ValueError:
            raise PlanError(f"bad layer list {_shorten(spec)}: use indices and ranges such as '0-5' or '0,1,2'") \
                from None
        if high > MAX_BLOCK:
            raise PlanError(f"layer list {_shorten(spec)} names block {_shorten(high)}; no text tower has more than "
                            f"{MAX_BLOCK + 1} blocks")
        blocks.extend(range(low, high + 1))
    return blocks


def describe_indices(indices: list[int], limit: int = 8) -> str:
    """[3, 4, 5, ..., 1000000] -> "3..1000000 (999998 blocks)"; a short list as it is."""
    indices = sorted(indices)
    if len(indices) <= limit:
        return str(indices)
    contiguous = indices[-1] - indices[0] + 1 == len(indices)
    middle = ".." if contiguous else ", ..., "
    return f"{indices[0]}{middle}{indices[-1]} ({len(indices)} blocks)"


def _shorten(value: Any, limit: int = 60) -> str:
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _clean_blocks(blocks: Any, lr_weights: Any) -> tuple[list[int], dict[int, float] | None]:
    if not isinstance(blocks, (list, tuple)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise PlanError(f"blocks must be a list of integers, got {_shorten(blocks)}")
    if any(b < 0 for b in blocks):
        raise PlanError(f"block indices must be >= 0, got {describe_indices([b for b in blocks if b < 0])}")
    if any(b > MAX_BLOCK for b in blocks):
        too_large = describe_indices([b for b in blocks if b > MAX_BLOCK])
        raise PlanError(f"block indices must be <= {MAX_BLOCK}, got {too_large}")
    if len(set(blocks)) != len(blocks):
        raise PlanError(f"blocks lists an index twice: {_shorten(list(blocks))}")
    if lr_weights is None:
        return sorted(blocks), None
    if not isinstance(lr_weights, dict):
        raise PlanError(f"lr_weights must map block index to a multiplier, got {type(lr_weights).__name__}")
    cleaned: dict[int, float] = {}
    for key, value in lr_weights.items():
        try:
            block = int(key)
        except (TypeError, ValueError):
            raise PlanError(f"lr_weights key {key!r} is not a block index") from None
        if block not in blocks:
            raise PlanError(
                f"lr_weights gives block {block} a weight, but block {block} is not trained (not in blocks)"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise PlanError(f"lr_weights[{block}] must be a positive finite number, got {_shorten(value)}")
        cleaned[block] = float(value)
    return sorted(blocks), cleaned
