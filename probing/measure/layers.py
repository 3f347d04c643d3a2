"""Per-layer measurement of negation: probes with controls, sensitivity, gradient norms, causal check.

`measure_layers` runs everything on one model and returns a `LayerMeasurements` of plain rows
(JSON and CSV ready). Layer index 0 is the embedding output, index l + 1 is block l's output.
Gradient norms need the fine-tuning losses; they come in as `loss_fns` (name -> function of a
feature dict and the logit scale), so this module does not depend on `finetune`.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from probing.measure.capture import capture_pooled, layer_labels
from probing.measure.causal import projection_ablation
from probing.measure.encode import encode_images
from probing.measure.gradnorms import relative_gradient_norms
from probing.io import atomic_path, atomic_write_json
from probing.measure.probes import probe_layers
from probing.measure.sensitivity import edit_sensitivity
from probing.synthetic.suite import SyntheticSuite
from probing.measure.tasks import ProbeTask
from probing.vocabulary import MEASUREMENTS  # named there, so that --help needs no torch
from probing.models.text_tower import TextTower

CAUSAL_METRICS = ("ccneg_accuracy", "scope_accuracy", "image_to_text_R@1_among_100", "zero_shot_affirmative")
LossFn = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


@dataclass
class MeasureConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    measurements: tuple[str, ...] = MEASUREMENTS
    n_sensitivity: int = 400
    n_causal: int = 400
    grad_batches: int = 4
    grad_batch_size: int = 64
    batch_size: int = 256
    seed: int = 0  # data draws for sensitivity, gradient batches and the causal suite
    # bytes captured features may take in memory; larger captures stream to memory-mapped files in
    # the temporary folder ($TMPDIR), deleted as soon as they are mapped (probing.measure.capture)
    memory_budget: int | None = 2 * 2**30
    # None: captures run in length-sorted batches of batch_size, as every recorded measurement did. A
    # token budget saves padding on captions of varied lengths, but its other batches change features
    # at float rounding, and probe fits with them (a test item here and there)
    token_budget: int | None = None

    def __post_init__(self):
        unknown = set(self.measurements) - set(MEASUREMENTS)
        if unknown:
            raise ValueError(f"unknown measurements {sorted(unknown)}; choose from {', '.join(MEASUREMENTS)}")
        if len(self.seeds) < 1:
            raise ValueError("at least one seed is needed")


@dataclass
class LayerMeasurements:
    """Every number of a measurement run, as lists of flat rows."""

    n_layers: int
    layer_labels: list[str]
    probes: list[dict] = field(default_factory=list)  # task, model, labels, split, layer, probe, accuracy, ci_*
    selectivity: list[dict] = field(default_factory=list)  # task, layer, probe, task/control accuracy
    sensitivity: list[dict] = field(default_factory=list)  # layer, edit, sensitivity, ci_*
    gradnorms: list[dict] = field(default_factory=list)  # loss, layer (block), component, relative_norm
    causal: list[dict] = field(default_factory=list)  # layer, metric, ablated, baseline, change
    meta: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """measurements.json plus one CSV per table, each written atomically."""
        folder = Path(folder)
        atomic_write_json(folder / "measurements.json", asdict(self))
        for table in ("probes", "selectivity", "sensitivity", "gradnorms", "causal"):
            rows = getattr(self, table)
            if rows:
                _write_csv(folder / f"{table}.csv", rows)
        return folder / "measurements.json"

    @classmethod
    def load(cls, path: str | Path) -> "LayerMeasurements":
        return cls(**json.loads(Path(path).read_text()))


def measure_layers(
    model: torch.nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    tasks: Sequence[ProbeTask],
    *,
    world=None,
    random_model: torch.nn.Module | None = None,
    loss_fns: Mapping[str, LossFn] | None = None,
    config: MeasureConfig = MeasureConfig(),
    progress: bool = True,
) -> LayerMeasurements:
    """Run the configured measurements; those needing images (sensitivity, gradient norms, causal)
    need the synthetic `world` (real data gives the text-side probes)."""
    n_layers = TextTower.from_model(model).n_layers
    result = LayerMeasurements(n_layers, layer_labels(n_layers), meta={
        "seeds": list(config.seeds), "measurements": list(config.measurements),
        "tasks": {task.name: {"n_captions": len(task.captions), "n_train": len(task.train),
                              "tests": {k: len(v) for k, v in task.tests.items()}, **task.meta} for task in tasks}})
    directions = {}
    if "probes" in config.measurements:
        directions = _run_probes(result, model, tokenizer, tasks, random_model, config, progress)
    needs_world = [m for m in ("sensitivity", "gradnorms", "causal") if m in config.measurements]
    if needs_world and world is None:
        result.meta["skipped"] = {m: "needs the synthetic world (images)" for m in needs_world}
        return result
    if "sensitivity" in config.measurements:
        result.sensitivity = sensitivity_rows(model, tokenizer, world, config, progress)
    if "gradnorms" in config.measurements:
        if not loss_fns:
            raise ValueError("gradient norms need loss_fns (name -> loss function of features and scale)")
        result.gradnorms = gradnorm_rows(model, preprocess, tokenizer, world, loss_fns, config, progress)
    if "causal" in config.measurements and "negation" in directions:
        result.causal = causal_rows(model, preprocess, tokenizer, world, directions["negation"], config)
    return result


def _run_probes(result, model, tokenizer, tasks, random_model, config, progress) -> dict[str, np.ndarray]:
    """Probe sweeps for every task on the model (task + control labels) and the random baseline."""
    directions = {}
    models = {"trained": model, **({"random": random_model} if random_model is not None else {})}
    for task in tasks:
        for model_name, subject in models.items():
            features = capture_pooled(subject, tokenizer, task.captions, batch_size=config.batch_size,
                                      token_budget=config.token_budget, memory_budget=config.memory_budget,
                                      progress=progress)
            sweep = probe_layers(features, task.labels, task.train, task.tests, seeds=config.seeds)
            result.probes += [{"task": task.name, "model": model_name, "labels": "task", **row} for row in sweep.summary]
            if model_name == "trained":
                directions[task.name] = sweep.directions["logistic"]
                control = probe_layers(features, task.control_labels, task.train, task.control_tests(), seeds=config.seeds)
                result.probes += [{"task": task.name, "model": model_name, "labels": "control", **row}
                                  for row in control.summary]
                result.selectivity += _selectivity(task.name, sweep.summary, control.summary)
    return directions


def _selectivity(task: str, task_rows: list[dict], control_rows: list[dict]) -> list[dict]:
    control = {(r["layer"], r["probe"]): r["accuracy"] for r in control_rows}
    return [{"task": task, "layer": r["layer"], "probe": r["probe"], "task_accuracy": r["accuracy"],
             "control_accuracy": control[(r["layer"], r["probe"])],
             "selectivity": r["accuracy"] - control[(r["layer"], r["probe"])]}
            for r in task_rows if r["split"] == "in_distribution" and (r["layer"], r["probe"]) in control]


def sensitivity_rows(model, tokenizer, world, config: MeasureConfig, progress: bool) -> list[dict]:
    """Presence negation, absence negation, and a same-size control edit (one colour word swapped)."""
    examples = world.examples(config.n_sensitivity, "test", config.seed + 101)
    colours = list(world.config.colours)
    edits = {
        "presence": [e.presence_negated for e in examples],
        "absence": [e.absence_negated for e in examples],
        "control": [swap_first_colour(e.caption, colours) for e in examples],
    }
    capture = lambda captions: capture_pooled(model, tokenizer, captions, batch_size=config.batch_size,
                                              token_budget=config.token_budget, memory_budget=config.memory_budget,
                                              progress=progress)
    base = capture([e.caption for e in examples])
    return edit_sensitivity(base, {name: capture(captions) for name, captions in edits.items()}, seed=config.seed)


def swap_first_colour(caption: str, colours: Sequence[str]) -> str:
    """The caption with its first colour word replaced by the next colour: a one-word, non-negating edit."""
    words = caption.split(" ")
    for i, word in enumerate(words):
        bare = word.rstrip(",")
        if bare in colours:
            words[i] = word.replace(bare, colours[(colours.index(bare) + 1) % len(colours)])
            return " ".join(words)
    raise ValueError(f"caption has no colour word to swap: {caption!r}")


def gradnorm_rows(model, preprocess, tokenizer, world, loss_fns: Mapping[str, LossFn], config: MeasureConfig,
                  progress: bool) -> list[dict]:
    """Relative gradient norms per block and component under each loss, on the same batches."""
    tower = TextTower.from_model(model)
    batches = []
    for b in range(config.grad_batches):
        examples = world.examples(config.grad_batch_size, "train", config.seed + 1000 + b)
        with torch.no_grad():
            images = {"image": encode_images(model, preprocess, [e.image for e in examples]),
                      "distractor": encode_images(model, preprocess, [e.distractor_image for e in examples])}
        tokens = {key: tokenizer([getattr(e, key) for e in examples])
                  for key in ("caption", "presence_negated", "absence_negated")}
        batches.append((images, tokens))
    device = tower.positional_embedding.device
    rows = []
    for name, loss_fn in loss_fns.items():
        def batch_loss(images, tokens, loss_fn=loss_fn):
            def loss(m):
                features = dict(images)
                features.update({key: tower.encode(t.to(device), normalize=True) for key, t in tokens.items()})
                features = {key: value.to(device) for key, value in features.items()}
                return loss_fn(features, m.logit_scale.exp().clamp(max=100))
            return loss
        rows += relative_gradient_norms(model, [batch_loss(*b) for b in batches], loss_name=name, progress=progress)
    return rows


def causal_rows(model, preprocess, tokenizer, world, directions: np.ndarray, config: MeasureConfig) -> list[dict]:
    """Project the negation probe direction out at each layer; report the negation and retrieval metrics."""
    from probing.models.hooked import HookedCLIPText

    suite = SyntheticSuite.build(world, n=config.n_causal, n_classification=min(360, config.n_causal),
                                 split="test", heldout="all", seed=config.seed + 202)
    image_features = suite.image_features(model, preprocess)
    hooked = HookedCLIPText(model)

    def evaluate(encode):
        metrics = suite.scores(model, preprocess, tokenizer, encode_text=encode, image_features=image_features)
        return {key: metrics[key] for key in CAUSAL_METRICS}

    return projection_ablation(hooked, tokenizer, dict(enumerate(directions)), evaluate)


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
