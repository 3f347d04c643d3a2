"""Layer ablation: fine-tune with the same loss, data and budget, varying only which text blocks train.

Variants for a text tower of n blocks (h = n // 2):

    frozen     no training: the base model, evaluated once per seed (deterministic, so the same numbers)
    selected   the blocks of a layer plan written by `probe-layers` (`plan_path`; skipped with a note
               when no plan is given, an error when it is asked for by name without one)
    front      blocks 0 .. h-1
    middle     the h blocks in the centre, (n-h)//2 .. (n-h)//2 + h-1
    back       blocks n-h .. n-1
    all        blocks 0 .. n-1
    layer_i    block i alone; "sweep" names every layer_i
    omni_front, omni_middle, omni_back, omni_whole
               Omni-NegCLIP's own groups, so that its table can be reproduced ("omni" names all four;
               not in the default set): on its 12-block tower blocks 0-5, 4-7, 8-11 and 0-11 (its code's
               `freeze_text_encoder_layers`; the groups overlap and differ in size), each with the extras
               that code always trains: token/positional embeddings, final LayerNorm, text projection and
               logit scale. On a tower of another depth the block ranges scale with it. omni_whole is
               also CoN-CLIP's setup: the whole text tower, logit scale included.
    window_a_b blocks a .. b; "windows" names every contiguous window with as many blocks as the
               selected plan (for analysis.ablation.validity: the best plan of that size)
    openclip_last
               what open_clip's own `lock_text_tower(unlocked_layers=h + 1)` unlocks: the last h blocks,
               the final LayerNorm and the text projection (read off the function, not re-implemented)
    norm_only  only the LayerNorms of every block and the final one: the cheapest trainable baseline
    steering   no training at all: Sammani et al.'s training-free steering (every layer moved along its
               logistic negation-probe direction, alpha 0.13 of the layer's residual norm; the probe is
               fitted on the negation task's training captions, drawn with the run's seed), evaluated
               like every other variant (probing.measure.steering.steered)
    "anchors" names omni_front, omni_whole, openclip_last, norm_only and steering: the anchors' choices
    at the study's budget.

Only the blocks differ (except in the omni_* variants, which keep their authors' extras). Every
other trained variant gets the same extras (token/positional embeddings, final LayerNorm, text
projection, logit scale): none by default, so a single-layer run really trains one block;
`extras="plan"` gives every variant the selected plan's extras, or name them ("ln_final,projection").
The selected plan's own extras are replaced by the study's for the same reason; its per-block
learning-rate weights are kept, because the selector's Auto-RGN rule is defined by them.

Same budget and data: every run trains on the same examples (the synthetic world's train split,
`n_train` of them, seeded by `data_seed`) for the same number of steps with the same optimiser
settings. The run's seed is the trainer's seed (data order, torch RNG), so the spread over seeds
is the spread of the optimisation, not of the data. The trainer caches image features of the
frozen image tower per run; the evaluation suites and their image features are built once per
study and shared by every run (the image tower never trains, so they are the same for all).

Evaluation, after every run: three suites of the world's test split, each holding out one thing
(heldout = "object", "template", "cue"); every metric of `SyntheticSuite.evaluate` is recorded
as "<suite>/<metric>", e.g. "object/scope_accuracy", "cue/scope_accuracy/cue=never". Retention
(R@1 among 100, zero-shot) is read from the object suite, whose affirmative captions use the
training templates.

Resumable: each finished (variant, seed) run is one JSON line of `<out>/runs.jsonl`, written by
replacing the whole file atomically, so an interrupted study never leaves half a line (a
truncated last line from other writers is dropped with a warning). A restarted study skips the
finished runs; a run interrupted mid-training continues from its last trainer checkpoint. The
settings that change results are kept in `<out>/ablation_config.json`, and a restart with other
settings is refused; more seeds or more variants extend the study.

Outputs: ablation_table.md, ablation_summary.json / .csv (per variant and metric: mean and 95 %
Student-t interval over seeds, probing.measure.probes.mean_ci), ablation.png / .pdf (see
analysis.ablation.figures).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

RUNS_FILE = "runs.jsonl"
CONFIG_FILE = "ablation_config.json"
TABLE_FILE = "ablation_table.md"
SUMMARY_JSON = "ablation_summary.json"
SUMMARY_CSV = "ablation_summary.csv"
FIGURE_STEM = "ablation"

GROUP_VARIANTS = ("frozen", "selected", "front", "middle", "back", "all")
WINDOWS = "windows"
WINDOW_PREFIX = "window_"
ANCHORS = "anchors"
STEERING = "steering"  # training-free: no plan, its vectors fitted per run
OTHER_ANCHORS = ("openclip_last", "norm_only", STEERING)  # the anchors that are not Omni-NegCLIP's groups
ANCHOR_VARIANTS = ("omni_front", "omni_whole", *OTHER_ANCHORS)
SWEEP = "sweep"
SWEEP_PREFIX = "layer_"
# Omni-NegCLIP's groups as [start, stop) of its 12 blocks (Jingqi-Xu/Omni-NegCLIP src/training_omni_negclip.py.py,
# freeze_text_encoder_layers: front range(0, 6), middle range(4, 8), back range(8, 12), whole range(0, 12))
OMNI = "omni"
OMNI_DEPTH = 12
OMNI_VARIANTS: dict[str, tuple[int, int]] = {"omni_front": (0, 6), "omni_middle": (4, 8), "omni_back": (8, 12),
                                             "omni_whole": (0, 12)}
EXTRAS = ("embeddings", "ln_final", "projection", "logit_scale")
EVAL_SUITES = ("object", "template", "cue")
RETENTION_SUITE = "object"

# (metric key, column label): the table's and the figure's headline numbers
HEADLINE: tuple[tuple[str, str], ...] = (
    ("object/scope_accuracy", "scope, held-out objects"),
    ("template/scope_accuracy", "scope, held-out templates"),
    ("cue/scope_accuracy", "scope, held-out cues"),
    ("object/ccneg_accuracy", "CC-Neg-style"),
    ("object/absence_accuracy", "absence"),
    ("object/image_to_text_R@1_among_100", "I→T R@1/100"),
    ("object/text_to_image_R@1_among_100", "T→I R@1/100"),
    ("object/zero_shot_affirmative", "zero-shot objects"),
)
COST_METRICS = ("train_seconds", "final_loss")

# AblationConfig fields that change results: a restarted study must keep them
_STUDY_FIELDS = ("model", "pretrained", "world_seed", "loss", "loss_kwargs", "steps", "batch_size", "lr",
                 "warmup_steps", "weight_decay", "n_train", "data_seed", "eval_n", "eval_n_classification", "eval_seed")


class AblationError(ValueError):
    """A study that cannot run as asked; the message says what to change."""


@dataclass
class AblationConfig:
    model: str = "embedded"  # any name probing.models.factory.create_model takes ("embedded:small", "ViT-B-32", ...)
    pretrained: str | None = None
    world_seed: int = 0  # random init and synthetic world of a model whose checkpoint records no world
    loss: str = "conclip"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
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
    variants: tuple[str, ...] | None = None  # None: every variant, single-layer sweep included
    plan_path: str | None = None  # the "selected" variant's layer plan
    extras: str = "none"  # "none", "plan" or a comma list among EXTRAS; the same for every trained variant
    device: str = "auto"
    ckpt_every: int = 100  # trainer checkpoints, so that a run interrupted mid-training continues
    keep_models: bool = False  # keep each run's weights and checkpoints (disk: one model per run)

    def __post_init__(self) -> None:
        self.seeds = tuple(self.seeds)
        if self.variants is not None:
            self.variants = tuple(self.variants)
        self.loss_kwargs = dict(self.loss_kwargs)
        _check_config(self)

    def study_settings(self) -> dict[str, Any]:
        """The settings every run of a study shares (JSON types, comparable after a round trip)."""
        return json.loads(json.dumps({name: getattr(self, name) for name in _STUDY_FIELDS}))


def _check_config(config: AblationConfig) -> None:
    from finetune.options import LossOptionError, check_loss_options
    from finetune.train import MAX_LEARNING_RATE, MAX_SEED
    from probing.models.embedded import embedded_model, is_embedded

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
        raise AblationError(str(error)) from None
    for name, low in (("steps", 1), ("batch_size", 2), ("n_train", 2), ("eval_n", 100), ("eval_n_classification", 1),
                      ("ckpt_every", 1)):
        if getattr(config, name) < low:
            raise AblationError(f"{name} must be at least {low}, got {getattr(config, name)}"
                                + (" (R@1 is measured among 100 scenes)" if name == "eval_n" else ""))
    if config.n_train < config.batch_size:
        raise AblationError(f"n_train {config.n_train} is fewer than one batch of {config.batch_size}")
    if not (math.isfinite(config.lr) and 0 < config.lr <= MAX_LEARNING_RATE) or config.warmup_steps < 0:
        raise AblationError(f"lr must be > 0 and <= {MAX_LEARNING_RATE:g}, and warmup_steps >= 0")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise AblationError(f"weight_decay must be a finite number >= 0, got {config.weight_decay}")
    parse_extras(config.extras)


# --- variants -----------------------------------------------------------------------------------

def block_variants(n_layers: int) -> dict[str, list[int]]:
    """front / middle / back (half the tower each) and all, as block lists."""
    if n_layers < 2:
        raise AblationError(f"a layer ablation needs at least 2 text blocks, the model has {n_layers}")
    half = n_layers // 2
    middle_start = (n_layers - half) // 2
    return {"front": list(range(half)), "middle": list(range(middle_start, middle_start + half)),
            "back": list(range(n_layers - half, n_layers)), "all": list(range(n_layers))}


def omni_variants(n_layers: int) -> dict[str, list[int]]:
    """Omni-NegCLIP's groups as block lists; ranges scale with a tower that is not 12 blocks deep."""
    return {name: list(range(start * n_layers // OMNI_DEPTH, stop * n_layers // OMNI_DEPTH))
            for name, (start, stop) in OMNI_VARIANTS.items()}


def sweep_variants(n_layers: int) -> list[str]:
    return [f"{SWEEP_PREFIX}{i}" for i in range(n_layers)]


def sweep_layer(variant: str) -> int | None:
    """The block of a single-layer variant ("layer_3" -> 3), None for other variants."""
    if variant.startswith(SWEEP_PREFIX) and variant[len(SWEEP_PREFIX):].isdigit():
        return int(variant[len(SWEEP_PREFIX):])
    return None


def window_name(first: int, last: int) -> str:
    return f"{WINDOW_PREFIX}{first}_{last}"


def window_blocks(variant: str) -> list[int] | None:
    """window_2_4 -> [2, 3, 4]; None for other variants."""
    if not variant.startswith(WINDOW_PREFIX):
        return None
    first, _, last = variant[len(WINDOW_PREFIX):].partition("_")
    if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
        return None
    return list(range(int(first), int(last) + 1))


def windows_of(size: int, n_layers: int) -> list[str]:
    return [window_name(first, first + size - 1) for first in range(n_layers - size + 1)]


def resolve_variants(names: Sequence[str] | None, n_layers: int, *, has_plan: bool,
                     selected_size: int | None = None) -> tuple[list[str], list[str]]:
    """The variants to run in display order, and notes on what was left out.

    None means the groups and the sweep; "sweep" expands to every layer_i, "omni" to Omni-NegCLIP's
    groups. "selected" without a plan is an error when asked for by name and a note when it only came
    with the default list.
    """
    notes: list[str] = []
    asked = list(GROUP_VARIANTS) + [SWEEP] if names is None else [n.strip() for n in names if n.strip()]
    if not asked:
        raise AblationError("no variants given")
    chosen: set[str] = set()
    for name in asked:
        layer = sweep_layer(name)
        if name == SWEEP:
            chosen.update(sweep_variants(n_layers))
        elif name == WINDOWS:
            if not selected_size:
                raise AblationError("variant 'windows' takes its size from the selected plan: pass a plan with blocks")
            chosen.update(windows_of(selected_size, n_layers))
        elif window_blocks(name) is not None:
            if window_blocks(name)[-1] >= n_layers:
                raise AblationError(f"variant {name}: the text tower has {n_layers} blocks")
            chosen.add(name)
        elif name == ANCHORS:
            chosen.update(ANCHOR_VARIANTS)
        elif name in OTHER_ANCHORS:
            chosen.add(name)
        elif name == OMNI:
            chosen.update(OMNI_VARIANTS)
        elif name in OMNI_VARIANTS:
            chosen.add(name)
        elif layer is not None:
            if layer >= n_layers:
                raise AblationError(
                    f"variant {name}: the text tower has {n_layers} blocks (layer_0 .. layer_{n_layers - 1})"
                )
            chosen.add(name)
        elif name in GROUP_VARIANTS:
            chosen.add(name)
        else:
            raise AblationError(f"unknown variant {name!r}; choose among {', '.join(GROUP_VARIANTS)}, {OMNI} "
                                f"({', '.join(OMNI_VARIANTS)}), {ANCHORS} ({', '.join(ANCHOR_VARIANTS)}), {SWEEP}, "
                                f"layer_0 .. layer_{n_layers - 1}, {WINDOWS}, window_<a>_<b>")
    if "selected" in chosen and not has_plan:
        if names is not None:
            raise AblationError("variant 'selected' needs a layer plan: pass the plan JSON that probe-layers wrote")
        chosen.discard("selected")
        notes.append(
            "variant 'selected' skipped: no layer plan given (write one with probe-layers and pass it as the plan)"
        )
    windows = sorted((name for name in chosen if window_blocks(name) is not None), key=window_blocks)
    order = (
        list(GROUP_VARIANTS) + list(OMNI_VARIANTS) + list(OTHER_ANCHORS) + windows + sweep_variants(n_layers)
    )
    return [name for name in order if name in chosen], notes


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
    return names


def extras_flags(extras: str, selected=None) -> dict[str, bool]:
    """The LayerPlan flags train_<extra> that every trained variant shares."""
    names = parse_extras(extras)
    if names is None:
        if selected is None:
            raise AblationError("extras 'plan' takes the extras from the selected layer plan, but no plan was given")
        return {f"train_{name}": bool(getattr(selected, f"train_{name}")) for name in EXTRAS}
    return {f"train_{name}": name in names for name in EXTRAS}


def variant_plans(variants: Iterable[str], n_layers: int, flags: dict[str, bool], selected=None) -> dict[str, Any]:
    """Variant -> LayerPlan (None for frozen and steering, which train nothing). Every plan carries the same
    extras `flags`, except Omni-NegCLIP's groups, which train the extras their authors' code trains with every
    group."""
    from finetune.plan import LayerPlan

    groups = block_variants(n_layers)
    omni = omni_variants(n_layers)
    plans: dict[str, Any] = {}
    for name in variants:
        if name in ("frozen", STEERING):
            plans[name] = None
        elif name == "selected":
            plans[name] = LayerPlan(list(selected.blocks), lr_weights=selected.lr_weights,
                                    rule=f"selected ({selected.rule})", evidence={}, **flags)
        elif name in groups:
            plans[name] = LayerPlan(groups[name], rule=name, **flags)
        elif name in omni:
            plans[name] = LayerPlan(omni[name], train_embeddings=True, train_ln_final=True, train_projection=True,
                                    train_logit_scale=True, rule=f"{name} (Omni-NegCLIP's group, with its extras)")
        elif name == "openclip_last":
            plans[name] = openclip_last_plan(n_layers)
        elif name == "norm_only":
            plans[name] = LayerPlan(list(range(n_layers)), train_ln_final=True, block_parts="layernorm",
                                    rule="norm_only (every LayerNorm)")
        elif window_blocks(name) is not None:
            plans[name] = LayerPlan(window_blocks(name), rule=name, **flags)
        else:
            plans[name] = LayerPlan([sweep_layer(name)], rule=name, **flags)
    return plans


def openclip_last_plan(n_layers: int):
    """The plan of open_clip's `lock_text_tower(unlocked_layers=h + 1)`, h = n_layers // 2, read off what
    the function unlocks on a tower of that depth (its groups: embeddings, one per block, the last block
    with ln_final, the projection; the last h + 1 groups are unlocked)."""
    import torch
    from open_clip.transformer import lock_text_tower
    from torch import nn

    from finetune.plan import LayerPlan

    class Tower(nn.Module):  # the attributes lock_text_tower reads, one parameter each
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(1, 1)
            self.positional_embedding = nn.Parameter(torch.zeros(1))
            self.transformer = nn.Module()
            self.transformer.resblocks = nn.ModuleList(nn.Linear(1, 1) for _ in range(n_layers))
            self.ln_final = nn.LayerNorm(1)
            self.text_projection = nn.Parameter(torch.zeros(1))

    tower = Tower()
    lock_text_tower(tower, unlocked_layers=n_layers // 2 + 1)
    blocks = [b for b, block in enumerate(tower.transformer.resblocks) if block.weight.requires_grad]
    return LayerPlan(blocks, train_embeddings=tower.token_embedding.weight.requires_grad,
                     train_ln_final=tower.ln_final.weight.requires_grad,
                     train_projection=tower.text_projection.requires_grad, train_logit_scale=False,
                     rule=f"openclip_last (open_clip lock_text_tower(unlocked_layers={n_layers // 2 + 1}))")


def load_selected_plan(path: str | Path | None, n_layers: int):
    """The selected variant's LayerPlan from a plan file, checked against the model's depth."""
    if path is None:
        return None
    from finetune.plan import LayerPlan, PlanError

    try:
        plan = LayerPlan.load(path)
        plan.validate(n_layers)
    except PlanError as error:
        raise AblationError(str(error)) from None
    if not plan.blocks:
        raise AblationError(f"layer plan {path} trains no text block; the ablation compares blocks")
    return plan


# --- the runs file --------------------------------------------------------------------------------

def load_runs(path: str | Path) -> list[dict[str, Any]]:
    """Finished runs from runs.jsonl. A truncated last line (an interrupted writer) is dropped with a
    warning; a broken line elsewhere means the file was damaged, and is an error."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AblationError(f"{path} cannot be read ({error}); restore it, or remove it to redo every run") from None
    runs, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (record["variant"], int(record["seed"]))
            metrics = record.get("metrics")
            if (not isinstance(key[0], str) or not isinstance(metrics, dict)
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())):
                raise ValueError("not a run record")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if number == len(lines):
                warnings.warn(
                    f"{path}: ignoring an incomplete last line (an interrupted write); that run will be redone",
                    stacklevel=2,
                )
                continue
            raise AblationError(f"{path}: line {number} is not a run record; fix or remove that line") from None
        if key in seen:
            warnings.warn(f"{path}: run {key[0]} seed {key[1]} appears twice; keeping the first", stacklevel=2)
            continue
        seen.add(key)
        runs.append(record)
    return runs


def save_runs(path: str | Path, runs: Sequence[dict[str, Any]]) -> Path:
    """Replace runs.jsonl with `runs`, atomically: a reader sees the old file or the new one."""
    from probing.io import atomic_write_text

    text = "".join(json.dumps(run, sort_keys=True) + "\n" for run in runs)
    return atomic_write_text(path, text)


def check_study_settings(out_dir: Path, config: AblationConfig) -> None:
    """Write the study's settings on the first start; refuse a restart with different ones."""
    from probing.io import atomic_write_json

    path = out_dir / CONFIG_FILE
    settings = config.study_settings()
    if path.exists():
        saved = _saved_settings(path)
        changed = sorted(key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key))
        if changed:
            details = ", ".join(f"{key}: {saved.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
            raise AblationError(f"{out_dir} holds a study with other settings ({details}); "
                                "use the same settings to continue it, or another output folder")
        return
    atomic_write_json(path, {"settings": settings, "config": asdict(config)})


def _saved_settings(path: Path) -> dict[str, Any]:
    """The settings a study recorded in ablation_config.json; an AblationError naming the file if it is damaged."""
    fix = "restore it, or remove it together with runs.jsonl to start the study again"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AblationError(f"{path} is damaged: not JSON ({error}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise AblationError(f"{path} is damaged: it holds no 'settings' object; {fix}")
    return record["settings"]


def check_finished_runs(runs: Sequence[dict[str, Any]], plans: dict[str, Any]) -> None:
    """A finished run must have trained what its variant trains now (e.g. the same selected plan)."""
    for run in runs:
        if run["variant"] not in plans:
            continue
        now = _plan_parts(plans[run["variant"]])
        if _plan_parts(run.get("plan")) != now:
            raise AblationError(
                f"finished run {run['variant']} seed {run['seed']} trained {_plan_parts(run.get('plan'))}, "
                f"but that variant now trains {now} (another plan file or extras?); "
                "use the original ones, or another output folder"
            )


def _plan_parts(plan) -> dict[str, Any] | None:
    """What a plan trains (blocks, extras, lr weights), without its free-form rule and evidence."""
    if plan is None:
        return None
    data = plan if isinstance(plan, dict) else plan.to_dict()
    return {key: value for key, value in data.items() if key not in ("rule", "evidence")}


# --- one study ----------------------------------------------------------------------------------

@dataclass
class Base:
    """The base model and what every run shares."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    world: Any
    model_name: str
    label: str  # for titles: "embedded default model", "ViT-B-32 + openai"

    @property
    def n_layers(self) -> int:
        from probing.clip.text_tower import TextTower

        return TextTower.from_model(self.model).n_layers


def load_base(config: AblationConfig, *, progress: bool = True) -> Base:
    """The model on CPU (each run trains a copy) and the synthetic world that goes with it."""
    from probing.models.factory import create_model

    bundle = create_model(config.model, config.pretrained, device="cpu", seed=config.world_seed)
    if bundle.world is None:
        raise AblationError(f"the ablation trains and evaluates on the synthetic world, but {bundle.world_note}")
    return Base(bundle.model, bundle.preprocess, bundle.tokenizer, bundle.world, bundle.name, bundle.label)


@dataclass
class Evaluation:
    """The held-out suites and their image features, built once per study."""

    suites: dict[str, Any]
    image_features: dict[str, dict[str, Any]]

    @classmethod
    def build(cls, base: Base, config: AblationConfig) -> "Evaluation":
        from probing.synthetic.suite import SyntheticSuite

        suites = {
            heldout: SyntheticSuite.build(
                base.world,
                n=config.eval_n,
                n_classification=config.eval_n_classification,
                split="test",
                heldout=heldout,
                seed=config.eval_seed,
            )
            for heldout in EVAL_SUITES
        }
        base.model.eval()
        features = {heldout: suite.image_features(base.model, base.preprocess) for heldout, suite in suites.items()}
        return cls(suites, features)

    def evaluate(self, model, base: Base) -> tuple[dict[str, float], dict[str, list[int]]]:
        """({"<suite>/<metric>": value}, {"<suite>/scope": per-item outcomes}) of a model."""
        from probing.metrics import flatten

        model.eval()
        metrics: dict[str, float] = {}
        items: dict[str, list[int]] = {}
        for heldout, suite in self.suites.items():
            outcomes: dict[str, list[int]] = {}
            sections = suite.evaluate(
                model, base.preprocess, base.tokenizer, image_features=self.image_features[heldout], outcomes=outcomes
            )
            metrics.update({f"{heldout}/{key}": value for key, value in flatten(sections).items()})
            items[f"{heldout}/scope"] = outcomes["scope"]
        return metrics, items


@dataclass
class AblationResult:
    out_dir: Path
    executed: list[tuple[str, int]]  # runs done by this call, in order
    complete: bool
    summary: dict[str, Any]
    outputs: dict[str, Path]


class AblationStudy:
    """One study in one output folder: what to run, what is done, and running the rest."""

    def __init__(self, config: AblationConfig, out_dir: str | Path, *, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.config, self.out_dir, self.progress, self.log = config, Path(out_dir), progress, log
        self.base = load_base(config, progress=progress)
        self.n_layers = self.base.n_layers
        self.selected = load_selected_plan(config.plan_path, self.n_layers)
        self.variants, self.notes = resolve_variants(config.variants, self.n_layers, has_plan=self.selected is not None,
                                                     selected_size=len(self.selected.blocks) if self.selected else None)
        self.extras = extras_flags(config.extras, self.selected)
        self.plans = variant_plans(self.variants, self.n_layers, self.extras, self.selected)
        self.runs_path = self.out_dir / RUNS_FILE
        self._examples = None
        self._evaluation: Evaluation | None = None

    # -- bookkeeping --
    def planned(self) -> list[tuple[str, int]]:
        """Every (variant, seed) of the study; seed-major, so that a partial study covers every variant early."""
        return [(variant, seed) for seed in self.config.seeds for variant in self.variants]

    def pending(self, runs: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
        done = {(run["variant"], int(run["seed"])) for run in runs}
        return [key for key in self.planned() if key not in done]

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out_dir / "runs" / variant / f"seed{seed}"

    # -- shared data, built on first need --
    @property
    def examples(self) -> list:
        if self._examples is None:
            self._examples = self.base.world.examples(self.config.n_train, "train", seed=self.config.data_seed)
        return self._examples

    @property
    def evaluation(self) -> Evaluation:
        if self._evaluation is None:
            self._evaluation = Evaluation.build(self.base, self.config)
        return self._evaluation

    # -- one run --
    def train_config(self, variant: str, seed: int):
        from finetune.train import TrainConfig

        config = self.config
        return TrainConfig(loss=config.loss, loss_kwargs=dict(config.loss_kwargs), lr=config.lr,
                           weight_decay=config.weight_decay, warmup_steps=config.warmup_steps, steps=config.steps,
                           batch_size=config.batch_size, seed=seed, device=config.device,
                           log_every=max(1, config.steps // 20), ckpt_every=config.ckpt_every,
                           out_dir=str(self.run_dir(variant, seed)), resume=True, model_name=self.base.model_name,
                           tensorboard=False, progress=False)

    def run_one(self, variant: str, seed: int) -> dict[str, Any]:
        """Train a fresh copy of the base model as `variant` with `seed`, evaluate it, return its record."""
        import torch

        from finetune.checkpoint import latest_checkpoint
        from finetune.freezing import planned_parts
        from finetune.train import train
        from probing.clip.loading import resolve_device

        plan = self.plans[variant]
        model = copy.deepcopy(self.base.model)
        record: dict[str, Any] = {"variant": variant, "seed": seed, "plan": None if plan is None else plan.to_dict(),
                                  "blocks": [] if plan is None else list(plan.blocks), "steps": 0,
                                  "trained_parameters": 0, "train_seconds": 0.0, "final_loss": None,
                                  "resumed_from_step": None}
        steering = None
        if plan is None:
            model.to(resolve_device(self.config.device))
            if variant == STEERING:
                from probing.measure.steering import PUBLISHED_ALPHA, steered, steering_vectors

                started = time.perf_counter()
                vectors = steering_vectors(model, self.base.tokenizer, self.base.world, seed=seed)
                record.update(train_seconds=time.perf_counter() - started,
                              steering={"alpha": PUBLISHED_ALPHA, "probe": "logistic", "layers": "every"})
                steering = steered(model, vectors)
        else:
            train_config = self.train_config(variant, seed)
            run_dir = Path(train_config.out_dir)
            checkpoint = latest_checkpoint(run_dir)
            record["resumed_from_step"] = None if checkpoint is None else checkpoint.step
            record["trained_parameters"] = sum(
                p.numel() for params in planned_parts(model, plan).values() for p in params
            )
            run_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            with _output_to(run_dir / "train.log"):  # the trainer's freeze table, once per run, goes to the log
                result = train(model, self.base.tokenizer, self.base.preprocess, self.examples, plan, train_config)
            record.update(steps=result.step, train_seconds=time.perf_counter() - started, final_loss=result.loss)
        started = time.perf_counter()
        with steering or contextlib.nullcontext():
            record["metrics"], record["items"] = self.evaluation.evaluate(model, self.base)
        record["eval_seconds"] = time.perf_counter() - started
        record["device"] = str(next(model.parameters()).device)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return record

    def _tidy(self, variant: str, seed: int) -> None:
        """Drop a recorded run's weights and checkpoints (tens of MB each); its logs stay."""
        if self.config.keep_models:
            return
        run_dir = self.run_dir(variant, seed)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "model.safetensors").unlink(missing_ok=True)

    # -- the study --
    def run(self, *, max_runs: int | None = None) -> AblationResult:
        """Run what is not done yet (at most `max_runs` of it), then write table, summary and figure."""
        from tqdm.auto import tqdm

        from probing.io import sweep_temporaries

        self.out_dir.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(self.out_dir)  # the runs file or a table a killed study was writing
        check_study_settings(self.out_dir, self.config)
        runs = load_runs(self.runs_path)
        check_finished_runs(runs, self.plans)
        for note in self.notes:
            self.log(f"note: {note}")
        todo = self.pending(runs)
        skipped = len(self.planned()) - len(todo)
        if skipped:
            self.log(f"{skipped} of {len(self.planned())} runs already done in {self.runs_path}: skipping them")
        batch = todo if max_runs is None else todo[:max_runs]
        executed = []
        bar = tqdm(batch, desc="ablation runs", unit="run", disable=not self.progress, dynamic_ncols=True)
        for variant, seed in bar:
            bar.set_postfix_str(f"{variant} seed {seed}")
            record = self.run_one(variant, seed)
            runs.append(record)
            save_runs(self.runs_path, runs)
            self._tidy(variant, seed)
            executed.append((variant, seed))
        bar.close()
        complete = len(executed) == len(todo)
        summary = self.summarize(runs, complete=complete)
        outputs = write_outputs(self.out_dir, summary)
        outputs.update(self.write_validity(runs))
        return AblationResult(self.out_dir, executed, complete, summary, outputs)

    def write_validity(self, runs: Sequence[dict[str, Any]]) -> dict[str, Path]:
        """validity.json / .md / figure when the study holds what the validity test needs: the frozen
        model, the whole sweep, the selected plan (with the evidence it was chosen from) and the
        windows of its size (analysis.ablation.validity); nothing otherwise, with a note in the log."""
        from analysis.ablation.figures import validity_figure
        from analysis.ablation.validity import assess, verdict
        from probing.io import atomic_path, atomic_write_json, atomic_write_text

        if self.selected is None or not self.selected.evidence.get("components"):
            return {}
        wanted = set(self.planned())
        chosen = [run for run in runs if (run["variant"], int(run["seed"])) in wanted]
        groups = {name: plan.blocks for name, plan in self.plans.items() if plan is not None}
        try:
            results = assess(
                chosen, self.selected.evidence, self.selected.blocks, n_layers=self.n_layers, groups=groups
            )
        except (ValueError, KeyError) as error:
            self.log(f"note: no predictive-validity test: {error}")
            return {}
        sentences = verdict(results)
        payload = {"sentences": sentences, "selected": self.selected.blocks,
                   "axes": {axis: result.to_dict() for axis, result in results.items()}}
        outputs = {
            "validity_json": atomic_write_json(self.out_dir / "validity.json", payload),
            "validity_md": atomic_write_text(self.out_dir / "validity.md", validity_markdown(results, sentences)),
        }
        figure = validity_figure(results, self.selected.evidence)
        for suffix in ("png", "pdf"):
            path = self.out_dir / f"validity.{suffix}"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format=suffix, dpi=300, bbox_inches="tight")
            outputs[f"validity_{suffix}"] = path
        return outputs

    def summarize(self, runs: Sequence[dict[str, Any]], *, complete: bool) -> dict[str, Any]:
        wanted = set(self.planned())
        chosen = [run for run in runs if (run["variant"], int(run["seed"])) in wanted]
        done = len(chosen)
        notes = list(self.notes)
        if not complete:
            notes.append(f"incomplete: {done} of {len(wanted)} runs done; run the same command again to continue")
        return summarize_runs(chosen, variants=self.variants, plans=self.plans, n_layers=self.n_layers,
                              header=self.header(), notes=notes, complete=complete)

    def header(self) -> dict[str, Any]:
        config = self.config
        extras = [name for name in EXTRAS if self.extras[f"train_{name}"]]
        return {"model": self.base.label, "n_layers": self.n_layers, "synthetic": True, "loss": config.loss,
                "loss_kwargs": config.loss_kwargs, "steps": config.steps, "batch_size": config.batch_size,
                "lr": config.lr, "warmup_steps": config.warmup_steps, "n_train": config.n_train,
                "seeds": list(config.seeds), "eval_n": config.eval_n, "extras": extras,
                "selected_plan": None if self.selected is None else self.selected.describe()}


@contextlib.contextmanager
def _output_to(path: Path):
    with open(path, "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        yield


def run_ablation(config: AblationConfig, out_dir: str | Path, *, max_runs: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> AblationResult:
    """Run (or continue) the ablation study of `config` in `out_dir`; see the module docstring."""
    return AblationStudy(config, out_dir, progress=progress, log=log).run(max_runs=max_runs)


# --- aggregation ---------------------------------------------------------------------------------

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
    from probing.measure.probes import mean_ci

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


# --- the table -----------------------------------------------------------------------------------

def _cell(value: dict[str, float] | None, digits: int = 3) -> str:
    """"0.512 ± 0.031" (half-width of the 95 % t-interval); a single seed has no interval."""
    if value is None:
        return "–"
    if value["n"] < 2:
        return f"{value['mean']:.{digits}f} (1 seed)"
    return f"{value['mean']:.{digits}f} ± {(value['high'] - value['low']) / 2:.{digits}f}"


def _blocks_text(blocks: Sequence[int]) -> str:
    """[0, 1, 2, 7] -> "0–2,7"."""
    if not blocks:
        return "none"
    pieces = []
    start = previous = blocks[0]
    for block in list(blocks[1:]) + [None]:
        if block is not None and block == previous + 1:
            previous = block
            continue
        pieces.append(str(start) if start == previous else f"{start}–{previous}")
        if block is not None:
            start = previous = block
    return ",".join(pieces)


def heldout_cues(summary: dict[str, Any]) -> list[str]:
    """The held-out cue words that have a per-cue scope accuracy in the summary."""
    cues = set()
    for entry in summary["variants"]:
        for key in entry["metrics"]:
            if key.startswith("cue/scope_accuracy/cue="):
                cues.add(key[len("cue/scope_accuracy/cue="):])
    return sorted(cues)


def markdown_table(summary: dict[str, Any], *, cost: bool = True) -> str:
    """The ablation as Markdown: headline metrics, scope per held-out cue, and (with `cost`) train time."""
    header = summary["header"]
    loss = header["loss"] + (f" {json.dumps(header['loss_kwargs'])}" if header["loss_kwargs"] else "")
    lines = [
        f"## Layer ablation (synthetic world; {header['model']})",
        "",
        f"Synthetic data, not a real benchmark. Loss {loss}; {header['steps']} steps, batch {header['batch_size']}, "
        f"lr {header['lr']:g} ({header['warmup_steps']} warm-up steps, then cosine); the same "
        f"{header['n_train']} training examples for every run. Extras trained in every variant: "
        f"{', '.join(header['extras']) or 'none'} (variants differ only in blocks). Each cell: mean ± half-width "
        f"of the 95 % t-interval over seeds {', '.join(map(str, header['seeds']))}; {header['eval_n']} test "
        "items per held-out suite. Scope accuracy is the shortcut-proof negation metric (chance 0.50).",
        "",
    ]
    if header.get("selected_plan"):
        lines += [f"Selected plan (probe-layers): {header['selected_plan']}; the variant 'selected' trains its blocks "
                  "(with its learning-rate weights, if any) and the extras above, like every other variant.", ""]
    lines += [f"- {note}" for note in summary["notes"]] + ([""] if summary["notes"] else [])
    columns = ["variant", "blocks", "seeds"] + [label for _, label in HEADLINE]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in summary["variants"]:
        cells = [entry["variant"], _blocks_text(entry["blocks"]), str(len(entry["seeds"]))]
        cells += [_cell(entry["metrics"].get(key)) for key, _ in HEADLINE]
        lines.append("| " + " | ".join(cells) + " |")
    cues = heldout_cues(summary)
    if cues:
        lines += ["", "### Scope accuracy per held-out cue (cues never seen in fine-tuning)", "",
                  "| variant | " + " | ".join(cues) + " |", "|" + "---|" * (len(cues) + 1)]
        for entry in summary["variants"]:
            cells = [_cell(entry["metrics"].get(f"cue/scope_accuracy/cue={cue}")) for cue in cues]
            lines.append(f"| {entry['variant']} | " + " | ".join(cells) + " |")
    if cost:
        lines += [
            "",
            "### Cost",
            "",
            "| variant | trained parameters | train seconds | final loss |",
            "|---|---|---|---|",
        ]
        for entry in summary["variants"]:
            metrics = entry["metrics"]
            lines.append(f"| {entry['variant']} | {entry['trained_parameters']:,} | "
                         f"{_cell(metrics.get('train_seconds'), 1)} | {_cell(metrics.get('final_loss'), 4)} |")
    return "\n".join(lines) + "\n"


def validity_markdown(results: dict, sentences: list[str]) -> str:
    """The predictive-validity table: per held-out axis, rho of each kind of evidence and the plan's regret."""
    from analysis.ablation.validity import format_ratio

    mean = results["mean"]
    names = list(mean.rho)
    lines = ["## Did the evidence predict the ablation?", "", " ".join(sentences), "",
             "| held-out axis | " + " | ".join(f"rho {n}" for n in names) + " | selected gain | best equal-size plan "
             "| best gain | regret | ratio |", "|" + "---|" * (len(names) + 6)]
    for axis, v in results.items():
        cells = [f"{v.rho[n]:+.2f} [{v.rho_low[n]:+.2f}, {v.rho_high[n]:+.2f}]" for n in names]
        lines.append(f"| {axis} | " + " | ".join(cells) + f" | {v.selected_gain:+.3f} | {v.best_plan} "
                     f"| {v.best_gain:+.3f} | {v.regret:+.3f} | {format_ratio(v)} |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str | Path, summary: dict[str, Any]) -> dict[str, Path]:
    """ablation_table.md, ablation_summary.json / .csv and the figure (PNG + PDF)."""
    from analysis.ablation.figures import ablation_figure
    from probing.io import atomic_path, atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    outputs = {"table": atomic_write_text(out_dir / TABLE_FILE, markdown_table(summary)),
               "summary_json": atomic_write_json(out_dir / SUMMARY_JSON, summary)}
    rows = summary_rows(summary)
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["variant", "blocks", "seeds", "metric", "n", "mean", "ci_low", "ci_high"]
    )
    writer.writeheader()
    writer.writerows(rows)
    outputs["summary_csv"] = atomic_write_text(out_dir / SUMMARY_CSV, buffer.getvalue())
    if summary["variants"]:
        figure = ablation_figure(summary)
        for suffix in ("png", "pdf"):
            path = out_dir / f"{FIGURE_STEM}.{suffix}"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format=suffix, dpi=300, bbox_inches="tight")
            outputs[f"figure_{suffix}"] = path
    return outputs
