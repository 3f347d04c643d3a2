"""Automatic layer selection: per-layer measurements -> a `finetune.plan.LayerPlan`.

Layer indices in the measurements: 0 = embedding output, l + 1 = output of block l. A plan names
BLOCKS, so every per-layer curve is turned into "what block b adds": the value at layer b + 1
minus the value at layer b (floored at 0; a block that loses evidence adds none).

Evidence per block b, three components (each normalised to sum 1 over blocks):

    probe       A[l]  = mean over tasks t of m_t[l], with
                        m_t[l] = H_t,trained[l] - H_t,baseline[l] if that is >= `min_probe_margin`, else 0
                        H = probe accuracy (task labels, `config.probe`) averaged over the held-out
                        splits (cue, object, template); baseline = the random-weights model at the
                        same layer, or chance (0.5) when no random model was measured. A probe that
                        does not beat the random baseline on held-out data detects tokens, not negation;
                        margins under `min_probe_margin` (3 points) are test-set noise (the bootstrap
                        interval of a 600-caption split is about +-4 points) and count as none.
                gain[b] = max(0, A[b+1] - A[b])
    gradnorm    r[b]  = relative gradient norm ||g|| / ||w|| of block b (`config.grad_component`)
                        under the fine-tuning loss(es); with several losses, the mean of each
                        loss's profile normalised to sum 1 (`config.grad_loss` picks one loss).
    sensitivity D[l]  = max(0, negation-edit sensitivity[l] - control-edit sensitivity[l]) for l >= 1
                        (how much further a negation moves the caption than a same-size edit; the
                        negation edit is `sensitivity_edit`, presence by default);
                        D[0] = 0: the pooled end-of-text state at the embedding output holds only the
                        EOT token at its position, so it sees the caption's length, not its content.
                gain[b] = max(0, D[b+1] - D[b])

    share_c[b] = x_c[b] / sum_b' x_c[b']          (a component whose total is 0 or that was not
                                                   measured is left out, with a note)
    combined[b] = sum_c w_c share_c[b] / sum_c w_c  (weights w_probe, w_gradnorm, w_sensitivity)

so `combined` sums to 1 over blocks. Rules:

    prefix    the smallest k such that blocks 0..k-1 hold >= `share` of sum(combined).
    topk      the k blocks with the largest combined score (ties: the earlier block).
    auto_rgn  Auto-RGN (Lee et al. 2022): lr weight w[b] = p[b] / max_b' p[b'] with p the gradnorm
              profile above; blocks with w[b] >= `rgn_floor` train, each with its weight.
    lr_weights=True attaches the same Auto-RGN weights (renormalised to a maximum of 1 over the
    chosen blocks, at least `min_lr_weight`) to a prefix or top-k plan.

Extras: embeddings train when block 0 trains (they feed it; Omni-NegCLIP's "front" setting trains
both), or as `train_embeddings` says; final LayerNorm, projection and logit scale follow the config
(default on, as in Omni-NegCLIP's front setting: they map whatever changes to the shared space).

The plan's `evidence` records the config, every per-layer and per-block number, the components
used and the numbers that decided the rule, so that a reader can see why these blocks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from finetune.plan import LayerPlan
from probing.measure.tasks import HELDOUT_SPLITS, IN_DISTRIBUTION

RULES = ("prefix", "topk", "auto_rgn")
COMPONENTS = ("probe", "gradnorm", "sensitivity")
CHANCE = 0.5  # balanced accuracy of a binary probe that guesses
_TOLERANCE = 1e-9  # cumulative shares are sums of floats; 0.8 must reach 0.8


class SelectionError(ValueError):
    """The measurements cannot support the asked-for rule (the message says what is missing)."""


@dataclass
class SelectionConfig:
    rule: str = "prefix"
    share: float = 0.8  # prefix: share of the combined evidence the prefix must hold
    k: int = 4  # topk: how many blocks
    rgn_floor: float = 0.1  # auto_rgn: blocks whose lr weight is below this stay frozen
    lr_weights: bool = False  # attach Auto-RGN lr weights to prefix / topk plans
    min_lr_weight: float = 1e-3  # plans need positive weights; a block with ~zero gradient gets this
    probe: str = "logistic"
    min_probe_margin: float = 0.03  # held-out accuracy over the baseline below this counts as no evidence
    tasks: tuple[str, ...] = ("negation", "scope")
    grad_loss: str | None = None  # None: mean of every measured loss's normalised profile
    grad_component: str = "all"
    sensitivity_edit: str = "presence"  # which negation edit is compared with the control edit
    w_probe: float = 0.5
    w_gradnorm: float = 0.25
    w_sensitivity: float = 0.25
    train_embeddings: bool | str = "auto"  # "auto": when block 0 trains
    train_ln_final: bool = True
    train_projection: bool = True
    train_logit_scale: bool = True

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose from {', '.join(RULES)}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if not 0 <= self.min_probe_margin < 1:
            raise ValueError(f"min_probe_margin must be in [0, 1), got {self.min_probe_margin}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0 < self.rgn_floor <= 1:
            raise ValueError(f"rgn_floor must be in (0, 1], got {self.rgn_floor}")
        weights = (self.w_probe, self.w_gradnorm, self.w_sensitivity)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"score weights must be >= 0 and not all 0, got {weights}")
        if self.sensitivity_edit not in ("presence", "absence"):
            raise ValueError(f"sensitivity_edit must be 'presence' or 'absence', got {self.sensitivity_edit!r}")
        if self.train_embeddings not in (True, False, "auto"):
            raise ValueError(f"train_embeddings must be true, false or 'auto', got {self.train_embeddings!r}")

    def weights(self) -> dict[str, float]:
        return {"probe": self.w_probe, "gradnorm": self.w_gradnorm, "sensitivity": self.w_sensitivity}


@dataclass
class BlockEvidence:
    """Per-block numbers behind the combined score (lists indexed by block), plus what was left out."""

    n_layers: int
    components: dict[str, list[float]] = field(default_factory=dict)  # raw x_c[b] of the used components
    shares: dict[str, list[float]] = field(default_factory=dict)
    combined: list[float] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # weights of the used components
    per_layer: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rgn_profile: list[float] | None = None  # gradnorm profile p[b] (sums to 1), None if not measured

    def table(self) -> list[dict]:
        rows = []
        for b in range(self.n_layers):
            row = {"block": b, "combined": self.combined[b]}
            for name in COMPONENTS:
                if name in self.components:
                    row[name] = self.components[name][b]
                    row[f"{name}_share"] = self.shares[name][b]
            rows.append(row)
        return rows


# --- pure rules on per-block numbers (unit-testable without measurements) ---------------------

def front_prefix(scores: Sequence[float], share: float) -> tuple[int, list[float]]:
    """(k, cumulative shares): the smallest k with sum(scores[:k]) >= share * sum(scores)."""
    values = np.asarray(scores, dtype=float)
    total = values.sum()
    if len(values) == 0 or total <= 0:
        raise SelectionError("no evidence to choose a prefix from (all block scores are 0)")
    cumulative = (np.cumsum(values) / total).tolist()
    k = next(i + 1 for i, c in enumerate(cumulative) if c >= share - _TOLERANCE)
    return k, cumulative


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """The k highest-scoring blocks, ties to the earlier block, returned in block order."""
    order = sorted(range(len(scores)), key=lambda b: (-scores[b], b))
    return sorted(order[:k])


def auto_rgn_weights(profile: Sequence[float]) -> list[float]:
    """Auto-RGN learning-rate weights: each block's relative gradient norm over the largest."""
    values = np.asarray(profile, dtype=float)
    if len(values) == 0 or values.max() <= 0:
        raise SelectionError("gradient norms are all 0: no Auto-RGN weights")
    return (values / values.max()).tolist()


def block_gains(per_layer: Sequence[float]) -> list[float]:
    """What each block adds to a per-layer curve: max(0, value[b + 1] - value[b])."""
    values = np.asarray(per_layer, dtype=float)
    return np.maximum(0.0, np.diff(values)).tolist()


# --- evidence from measurements -------------------------------------------------------------

def _table(measurements, name: str) -> list[dict]:
    """Rows of one table, from a LayerMeasurements or the dict in measurements.json."""
    if isinstance(measurements, Mapping):
        return list(measurements.get(name) or [])
    return list(getattr(measurements, name) or [])


def _n_layers(measurements) -> int:
    return int(measurements["n_layers"] if isinstance(measurements, Mapping) else measurements.n_layers)


def probe_margins(measurements, config: SelectionConfig) -> dict[str, Any] | None:
    """Per layer: trained held-out accuracy, its baseline, and the floored margin A[l]; None if no probes."""
    rows = [r for r in _table(measurements, "probes") if r["labels"] == "task" and r["probe"] == config.probe
            and r["task"] in config.tasks]
    if not rows:
        return None
    n_points = _n_layers(measurements) + 1
    per_task, notes = {}, []
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        splits = [s for s in HELDOUT_SPLITS if any(r["split"] == s for r in task_rows)]
        if not splits:
            splits = [IN_DISTRIBUTION]
            notes.append(f"{task}: no held-out split measured; the in-distribution split stands in "
                         "(it cannot tell negation from token detection)")
        trained = _mean_curve(task_rows, "trained", splits, n_points)
        random = _mean_curve(task_rows, "random", splits, n_points)
        baseline_name = "random" if random is not None else "chance"
        if random is None:
            random = [CHANCE] * n_points
            notes.append(f"{task}: no random-weights baseline measured; chance ({CHANCE}) stands in")
        margin = [t - r if t - r >= config.min_probe_margin else 0.0 for t, r in zip(trained, random)]
        per_task[task] = {"splits": splits, "baseline": baseline_name, "trained": trained,
                          "baseline_accuracy": random, "margin": margin}
    margin = np.mean([v["margin"] for v in per_task.values()], axis=0).tolist()
    return {"per_task": per_task, "margin": margin, "notes": notes}


def _mean_curve(rows: list[dict], model: str, splits: Sequence[str], n_points: int) -> list[float] | None:
    """Accuracy per layer averaged over `splits`, for one model; None if that model was not measured."""
    chosen = [r for r in rows if r["model"] == model and r["split"] in splits]
    if not chosen:
        return None
    sums, counts = np.zeros(n_points), np.zeros(n_points)
    for r in chosen:
        sums[r["layer"]] += r["accuracy"]
        counts[r["layer"]] += 1
    if (counts == 0).any():
        raise SelectionError(f"probe rows for the {model} model miss layers {np.flatnonzero(counts == 0).tolist()}")
    return (sums / counts).tolist()


def sensitivity_margins(measurements, edit: str = "presence") -> list[float] | None:
    """D[l] = max(0, edit[l] - control[l]), D[0] = 0 (length only); None if sensitivity was not measured."""
    rows = _table(measurements, "sensitivity")
    by_edit = {(r["edit"], r["layer"]): r["sensitivity"] for r in rows}
    layers = sorted({r["layer"] for r in rows})
    if not layers or not all((edit, l) in by_edit and ("control", l) in by_edit for l in layers):
        return None
    return [0.0 if l == 0 else max(0.0, by_edit[(edit, l)] - by_edit[("control", l)]) for l in layers]


def gradnorm_profile(measurements, config: SelectionConfig) -> tuple[list[float], list[str]] | None:
    """(p[b] summing to 1, losses used): mean over losses of relative norms normalised to sum 1."""
    rows = [r for r in _table(measurements, "gradnorms") if r["component"] == config.grad_component]
    losses = sorted({r["loss"] for r in rows})
    if config.grad_loss is not None:
        if config.grad_loss not in losses:
            raise SelectionError(f"no gradient norms for loss {config.grad_loss!r}; measured: {losses or 'none'}")
        losses = [config.grad_loss]
    if not losses:
        return None
    n_layers = _n_layers(measurements)
    profiles = []
    for loss in losses:
        values = np.zeros(n_layers)
        for r in rows:
            if r["loss"] == loss:
                values[r["layer"]] = r["relative_norm"]
        if values.sum() > 0:
            profiles.append(values / values.sum())
    if not profiles:
        return None
    return np.mean(profiles, axis=0).tolist(), losses


def block_evidence(measurements, config: SelectionConfig = SelectionConfig()) -> BlockEvidence:
    """The per-block components, their shares and the combined score (formulas: module docstring)."""
    n_layers = _n_layers(measurements)
    evidence = BlockEvidence(n_layers)
    raw: dict[str, list[float]] = {}
    probes = probe_margins(measurements, config)
    if probes is not None:
        raw["probe"] = block_gains(probes["margin"])
        evidence.per_layer["probe"] = probes
        evidence.notes += probes["notes"]
    sensitivity = sensitivity_margins(measurements, config.sensitivity_edit)
    if sensitivity is not None:
        raw["sensitivity"] = block_gains(sensitivity)
        evidence.per_layer["sensitivity_margin"] = sensitivity
    profile = gradnorm_profile(measurements, config)
    if profile is not None:
        raw["gradnorm"], losses = profile
        evidence.rgn_profile = raw["gradnorm"]
        evidence.per_layer["gradnorm_losses"] = losses
    for name in COMPONENTS:
        weight = config.weights()[name]
        if name not in raw:
            evidence.notes.append(f"{name}: not measured, left out of the combined score")
        elif sum(raw[name]) <= 0:
            evidence.notes.append(f"{name}: no block adds any (all gains 0), left out of the combined score")
        elif weight == 0:
            evidence.notes.append(f"{name}: weight 0 in the selection config, left out of the combined score")
        else:
            evidence.components[name] = raw[name]
            evidence.shares[name] = (np.asarray(raw[name]) / sum(raw[name])).tolist()
            evidence.weights[name] = weight
    if not evidence.weights:
        raise SelectionError("no usable evidence: measure probes (with held-out splits), sensitivity or "
                             "gradient norms, with a positive weight; " + "; ".join(evidence.notes))
    total_weight = sum(evidence.weights.values())
    evidence.combined = (sum(w * np.asarray(evidence.shares[c]) for c, w in evidence.weights.items())
                         / total_weight).tolist()
    return evidence


# --- the plan ---------------------------------------------------------------------------------

def select_layers(measurements, config: SelectionConfig = SelectionConfig()) -> LayerPlan:
    """The layer plan the rule in `config` picks from `measurements`, with its evidence recorded."""
    evidence = block_evidence(measurements, config)
    blocks, decision, rule = _apply_rule(evidence, config)
    lr_weights = None
    if config.rule == "auto_rgn":
        lr_weights = {b: decision["lr_weights_all"][b] for b in blocks}
    elif config.lr_weights:
        lr_weights = _rgn_weights_for(blocks, evidence, config)
        decision["lr_weights_note"] = "Auto-RGN weights over the chosen blocks, renormalised to a maximum of 1"
        rule += "+rgn-lr"
    embeddings = 0 in blocks if config.train_embeddings == "auto" else bool(config.train_embeddings)
    n_front = evidence.n_layers // 2
    record = {
        "rule": config.rule, "config": asdict(config), "decision": decision,
        "per_block": evidence.table(), "per_layer": evidence.per_layer,
        "components_used": evidence.weights, "notes": evidence.notes,
        "rgn_profile": evidence.rgn_profile,
        "front_half_blocks": list(range(n_front)),
        "front_half_share": float(sum(evidence.combined[:n_front])),
        "extras": _extras_reasons(config, embeddings),
    }
    return LayerPlan(blocks, train_embeddings=embeddings, train_ln_final=config.train_ln_final,
                     train_projection=config.train_projection, train_logit_scale=config.train_logit_scale,
                     lr_weights=lr_weights, rule=rule, evidence=record)


def _extras_reasons(config: SelectionConfig, embeddings: bool) -> dict[str, str]:
    """Why each extra part trains or not, in words for the report."""
    if config.train_embeddings == "auto":
        why = "block 0 trains and the embeddings feed it" if embeddings else "block 0 stays frozen"
    else:
        why = "set in the selection config"
    fixed = "set in the selection config (default on, as Omni-NegCLIP's front setting)"
    return {"train_embeddings": why, "train_ln_final": fixed, "train_projection": fixed, "train_logit_scale": fixed}


def _apply_rule(evidence: BlockEvidence, config: SelectionConfig) -> tuple[list[int], dict, str]:
    scores = evidence.combined
    if config.rule == "prefix":
        k, cumulative = front_prefix(scores, config.share)
        decision = {"share": config.share, "k": k, "cumulative_share": cumulative,
                    "share_of_prefix": cumulative[k - 1], "share_of_shorter_prefix": cumulative[k - 2] if k > 1 else 0.0}
        return list(range(k)), decision, f"front-prefix(share={config.share:g})"
    if config.rule == "topk":
        k = min(config.k, evidence.n_layers)
        blocks = top_k(scores, k)
        ranked = sorted(scores, reverse=True)
        decision = {"k": k, "scores_chosen": [scores[b] for b in blocks], "kth_score": ranked[k - 1],
                    "next_score": ranked[k] if k < len(ranked) else None, "share_of_chosen": float(sum(scores[b] for b in blocks))}
        return blocks, decision, f"top-{k}"
    if evidence.rgn_profile is None:
        raise SelectionError("auto_rgn needs gradient norms; measure them (--measurements ...,gradnorms)")
    weights = auto_rgn_weights(evidence.rgn_profile)
    blocks = [b for b, w in enumerate(weights) if w >= config.rgn_floor - _TOLERANCE]
    decision = {"floor": config.rgn_floor, "lr_weights_all": weights,
                "frozen_blocks": [b for b in range(evidence.n_layers) if b not in blocks],
                "share_of_chosen": float(sum(scores[b] for b in blocks))}
    return blocks, decision, f"auto-rgn(floor={config.rgn_floor:g})"


def _rgn_weights_for(blocks: list[int], evidence: BlockEvidence, config: SelectionConfig) -> dict[int, float]:
    if evidence.rgn_profile is None:
        raise SelectionError("lr weights need gradient norms; measure them (--measurements ...,gradnorms)")
    chosen = np.asarray([evidence.rgn_profile[b] for b in blocks])
    top = chosen.max()
    if top <= 0:
        raise SelectionError(f"gradient norms of blocks {blocks} are all 0: no lr weights")
    return {b: max(config.min_lr_weight, float(v / top)) for b, v in zip(blocks, chosen)}


def describe_blocks(blocks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (runs of consecutive blocks as ranges)."""
    parts, run = [], []
    for b in sorted(blocks):
        if run and b != run[-1] + 1:
            parts.append(_run_text(run))
            run = []
        run.append(b)
    if run:
        parts.append(_run_text(run))
    return ", ".join(parts) if parts else "none"


def _run_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
