"""The layer ablation's settings (`AblationConfig`): one loss, data and budget for every run.

Same budget and data: every run trains on the same examples (the synthetic world's train split,
`n_train` of them, seeded by `data_seed`) for the same number of steps with the same optimiser
settings (with `second_loss`, also on the same multiple-choice items, as a second source in every step).
The run's seed is the trainer's seed (data order, torch RNG), so the spread over seeds
is the spread of the optimisation, not of the data. The trainer caches image features of the
frozen image tower per run; the evaluation suites and their image features are built once per
study and shared by every run (the image tower never trains, so they are the same for all).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from analysis.planning.selectors import SELECTORS
from finetune.options import LossOptionError, check_loss_options
from finetune.vocabulary import EXTRAS, MAX_LEARNING_RATE, MAX_SEED, MCQ_LOSSES
from probing.models.embedded import embedded_model, is_embedded

# AblationConfig fields that change results: a restarted study must keep them
_STUDY_FIELDS = ("model", "pretrained", "world_seed", "loss", "loss_kwargs", "steps", "batch_size", "lr",
                 "warmup_steps", "weight_decay", "n_train", "data_seed", "eval_n", "eval_n_classification", "eval_seed",
                 "eval_mcq")
_SECOND_FIELDS = ("second_loss", "second_weight", "n_second")


class AblationError(ValueError):
    """A study that cannot run as asked; the message says what to change."""


@dataclass
class AblationConfig:
    model: str = "embedded"  # any name probing.models.factory.create_model takes ("embedded:small", "ViT-B-32", ...)
    pretrained: str | None = None
    world_seed: int = 0  # random init and synthetic world of a model whose checkpoint records no world
    loss: str = "conclip"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    # a second source in every step, as NegBench trains: second_weight x second_loss on a batch of the synthetic
    # world's four-way multiple-choice items (n_second of them, train split); None: the first loss alone
    second_loss: str | None = None
    second_weight: float = 1.0
    n_second: int = 2000
    steps: int = 200
    batch_size: int = 128
    lr: float = 5e-5
    warmup_steps: int = 20
    weight_decay: float = 0.2
    n_train: int = 8192
    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_n: int = 1000  # negation examples and scope pairs per held-out suite (>= 100 for R@1 among 100)
    eval_n_classification: int = 720
    eval_seed: int = 1
    eval_mcq: int | None = None  # four-way multiple-choice items on the held-out-object suite (None: eval_n; 0: none)
    variants: tuple[str, ...] | None = None  # None: every variant, single-layer sweep included
    plan_path: str | None = None  # the "selected" variant's layer plan
    # baseline selectors (analysis.planning.selectors) whose plans join the study, judged by
    # analysis.ablation.selector_table; they read the measurements probe-layers saved beside the plan file
    selectors: tuple[str, ...] | None = None
    # a compare-checkpoints comparison.json: adds the "finetune_change" selector (analysis.compare.plan), the
    # blocks that `comparison_model`'s fine-tune changed most (it may be left out when the file holds one model)
    comparison: str | None = None
    comparison_model: str | None = None
    extras: str = "none"  # "none", "plan" or a comma list among EXTRAS; the same for every trained variant
    device: str = "auto"
    ckpt_every: int = 100  # trainer checkpoints, so that a run interrupted mid-training continues
    keep_models: bool = False  # keep each run's weights and checkpoints (disk: one model per run)
    num_workers: int = 0  # DataLoader processes that decode images for the trainer's image features
    feature_cache: bool = True  # image features through the disk cache (probing.features.cache)

    def __post_init__(self) -> None:
        self.seeds = tuple(self.seeds)
        if self.variants is not None:
            self.variants = tuple(self.variants)
        if self.selectors is not None:
            self.selectors = tuple(SELECTORS) if tuple(self.selectors) == ("all",) else tuple(self.selectors)
        self.loss_kwargs = dict(self.loss_kwargs)
        if self.eval_mcq is None:
            self.eval_mcq = self.eval_n
        _check_config(self)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (config.json; probing.io.dataclass_from_dict reads it back)."""
        return json.loads(json.dumps(asdict(self)))

    def study_settings(self) -> dict[str, Any]:
        """The settings every run of a study shares (JSON types, comparable after a round trip); the second source's
        only when there is one, so that the studies recorded before it existed continue."""
        fields = _STUDY_FIELDS + (_SECOND_FIELDS if self.second_loss is not None else ())
        return json.loads(json.dumps({name: getattr(self, name) for name in fields}))


def _check_config(config: AblationConfig) -> None:

    if is_embedded(config.model):
        if config.pretrained is not None:
            raise AblationError("pretrained weights do not go with the embedded model: it ships its own")
        try:
            embedded_model(config.model)
        except ValueError as error:
            raise AblationError(str(error)) from None
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise AblationError(f"seeds must be distinct and at least one, got {list(config.seeds)}")
    for name, values in (("seeds", config.seeds), ("world_seed", [config.world_seed]),
                         ("data_seed", [config.data_seed]), ("eval_seed", [config.eval_seed])):
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED for v in values):
            raise AblationError(f"{name} must be integers in 0..{MAX_SEED}, got {list(values)}")
    try:
        check_loss_options(config.loss, config.loss_kwargs)
    except LossOptionError as error:
        raise AblationError(f"loss_kwargs: {error}") from None
    for name, low in (("steps", 1), ("batch_size", 2), ("n_train", 2), ("eval_n", 100), ("eval_n_classification", 1),
                      ("ckpt_every", 1)):
        if getattr(config, name) < low:
            raise AblationError(f"{name} must be at least {low}, got {getattr(config, name)}"
                                + (" (R@1 is measured among 100 scenes)" if name == "eval_n" else ""))
    if config.second_loss is not None:
        if config.second_loss not in MCQ_LOSSES:
            raise AblationError(f"second_loss: the study's second source is the synthetic world's multiple choice, "
                                f"read by {', '.join(MCQ_LOSSES)}; got {config.second_loss!r}")
        if not (math.isfinite(config.second_weight) and config.second_weight > 0):
            raise AblationError(f"second_weight must be a finite number > 0, got {config.second_weight}")
        if config.n_second < config.batch_size:
            raise AblationError(f"n_second {config.n_second} is fewer than one batch of {config.batch_size}")
    if config.eval_mcq < 0:
        raise AblationError(f"eval_mcq must be at least 0, got {config.eval_mcq}")
    if config.n_train < config.batch_size:
        raise AblationError(f"n_train {config.n_train} is fewer than one batch of {config.batch_size}")
    if not (math.isfinite(config.lr) and 0 < config.lr <= MAX_LEARNING_RATE):
        raise AblationError(f"lr must be > 0 and <= {MAX_LEARNING_RATE:g}, got {config.lr}")
    if config.warmup_steps < 0:
        raise AblationError(f"warmup_steps must be >= 0, got {config.warmup_steps}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise AblationError(f"weight_decay must be a finite number >= 0, got {config.weight_decay}")
    parse_extras(config.extras)
    if config.selectors is not None:
        unknown = [name for name in config.selectors if name not in SELECTORS]
        if unknown or not config.selectors:
            raise AblationError(f"unknown selector(s) {', '.join(unknown) or '(none given)'}; choose among all, "
                                + ", ".join(SELECTORS))
        if len(set(config.selectors)) != len(config.selectors):
            raise AblationError(f"selectors repeated: {', '.join(config.selectors)}")
        if config.plan_path is None:
            raise AblationError("selectors are compared at the size of the toolkit's plan: pass the plan probe-layers "
                                "wrote (its measurements are read from the same folder)")
    if config.comparison_model is not None and config.comparison is None:
        raise AblationError("comparison_model names a model of a comparison file: give the comparison too")
    if config.comparison is not None and config.plan_path is None:
        raise AblationError("the finetune_change selector is compared at the size of the toolkit's plan: pass the "
                            "plan probe-layers wrote")


def parse_extras(extras: str) -> tuple[str, ...] | None:
    """"none" -> (), "plan" -> None (taken from the selected plan), "ln_final,projection" -> names."""
    text = str(extras).strip()
    if text in ("", "none"):
        return ()
    if text == "plan":
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in EXTRAS]
    if unknown:
        raise AblationError(f"unknown extra(s) {', '.join(unknown)}; choose among none, plan, {', '.join(EXTRAS)}")
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise AblationError(f"extras: {twice} given twice")
    return names
