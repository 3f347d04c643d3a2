"""Per-layer measurement of negation on a model and on its null models: probes with controls,
sensitivity, gradient norms, and a causal check.

`measure_layers` runs everything on one model ("trained") and on its null models ("null:<seed>",
the same model with its text tower randomly initialised again: probing.measure.null), and returns
a `LayerMeasurements`: typed tables (pandas DataFrames, columns documented in TABLES) and the
per-item values behind them (`items`), which the null-calibrated tests of analysis.planning.evidence
resample. Layer index 0 is the embedding output, index l + 1 is block l's output; gradient-norm
rows are indexed by block. Gradient norms need the fine-tuning losses; they come in as `loss_fns`
(name -> function of a feature dict and the logit scale), so this module does not depend on `finetune`.

The data: probes run on the given tasks; sensitivity, gradient norms and the causal check on `data`
(probing.measure.sources): the synthetic world, or a real file's negation examples with their images,
captions and negated captions. meta["data"] records, per measurement, which data it ran on. With
`on_phase`, the caller is handed the measurements after every phase of every model (e.g. to save
them), so that a late failure keeps what was measured; meta["completed"] lists the phases done.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from probing.clip.hooked import HookedCLIPText
from probing.clip.text_tower import TextTower
from probing.features.cache import encode_image_features
from probing.io import atomic_path, atomic_write_json
from probing.measure.capture import capture_pooled, layer_labels
from probing.measure.causal import projection_ablation
from probing.measure.gradnorms import fisher_information, relative_gradient_norms
from probing.measure.keys import TRAINED, ItemKey
from probing.measure.localise import LocaliseConfig, measure_localisation
from probing.measure.patching import block_effects
from probing.measure.probes import probe_layers
from probing.measure.sensitivity import edit_sensitivity
from probing.measure.settings import MeasureConfig
from probing.measure.sources import (
    RealData,
    SyntheticData,
    rows_by_file,
    swap_first_colour,
)
from probing.measure.tasks import ProbeTask

__all__ = ["measure_layers", "MeasureConfig", "LayerMeasurements", "swap_first_colour", "TABLES"]
CAUSAL_METRICS = ("ccneg_accuracy", "scope_accuracy", "image_to_text_R@1_among_100", "zero_shot_affirmative")
IMAGE_MEASUREMENTS = ("gradnorms", "causal")  # read images (sensitivity reads captions only)
LossFn = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]

# table -> its columns (every table has exactly these, in this order)
TABLES: dict[str, tuple[str, ...]] = {
    # balanced accuracy of a probe at a layer on a split, mean over probe seeds, bootstrap interval over
    # test items; model "trained" or "null:<seed>"; labels "task" or "control" (trained model only)
    "probes": ("task", "model", "labels", "split", "layer", "probe", "accuracy", "ci_low", "ci_high", "n_seeds",
               "n_train", "n_test", "direction_cosine"),
    # in-distribution task accuracy minus control-label accuracy (Hewitt & Liang), trained model
    "selectivity": ("task", "layer", "probe", "task_accuracy", "control_accuracy", "selectivity"),
    # how far an edit moves a caption's pooled state, in units of the distance between different captions
    # (norm_change: mean |‖edited‖ - ‖original‖| / mean ‖original‖ of the pooled states)
    "sensitivity": ("model", "layer", "edit", "sensitivity", "ci_low", "ci_high", "raw_distance", "baseline_distance",
                    "norm_change"),
    # relative gradient norm ||g|| / ||w|| of a block's component under a loss, mean over batches
    "gradnorms": ("model", "loss", "layer", "component", "relative_norm", "grad_norm", "weight_norm", "n_batches"),
    # the negation probe direction projected out at a layer: metric with and without it
    "causal": ("layer", "metric", "ablated", "baseline", "change"),
    # diagonal empirical Fisher information of a block under a loss (trained model): the mean over micro-batches
    # of the summed squared gradient of the block's parameters (probing.measure.gradnorms.fisher_information)
    "fisher": ("model", "loss", "layer", "fisher", "n_micro_batches", "micro_batch_size"),
}


@dataclass
class LayerMeasurements:
    """Every number of a measurement run: the tables of TABLES, per-item values, and what was run."""

    n_layers: int
    layer_labels: list[str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    # per-item values for resampling tests, e.g. "probes/scope/heldout_cue/trained" [n_layers + 1, n_test]
    # (correctness averaged over probe seeds), "probes/scope/heldout_cue/labels" [n_test],
    # "sensitivity/presence/null:3" [n_layers + 1, n] (standardised distances), "gradnorms/clip/trained"
    # [n_batches, n_blocks] (relative norms of whole blocks), "patching/trained" [n_blocks] (block effects)
    items: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, columns in TABLES.items():
            table = self.tables.get(name)
            self.tables[name] = pd.DataFrame(columns=list(columns)) if table is None or table.empty else table
            missing = [c for c in columns if c not in self.tables[name].columns]
            if missing:
                raise ValueError(f"table {name} lacks columns {missing}")

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name in TABLES:
            return self.__dict__["tables"][name]
        raise AttributeError(name)

    def add(self, table: str, rows: Sequence[dict], **constant) -> None:
        """Append rows (dicts with the table's columns, `constant` filling the rest) to a table."""
        frame = pd.DataFrame([{**constant, **row} for row in rows], columns=list(TABLES[table]))
        # numbers with gaps (None) become floats with NaN
        for column in frame.columns[frame.dtypes == object]:  # noqa: E721 (pandas dtypes)
            if all(value is None or isinstance(value, (int, float)) for value in frame[column]):
                frame[column] = frame[column].astype(float)
        current = self.tables[table]
        self.tables[table] = frame if current.empty else pd.concat([current, frame], ignore_index=True)

    @property
    def null_models(self) -> list[str]:
        """The null models' names (probing.measure.keys.null_name), in the order they were measured."""
        return list(self.meta.get("null_models", []))

    def item(self, key: ItemKey) -> np.ndarray:
        """The per-item array filed under `key` (a KeyError naming it when it was not measured)."""
        try:
            return self.items[key.text]
        except KeyError:
            raise KeyError(f"no {key.text} in the measurements") from None

    def has(self, key: ItemKey) -> bool:
        return key.text in self.items

    def item_keys(self, kind: str) -> list[ItemKey]:
        """Every key of one kind ("gradnorms", ...) the measurements hold."""
        return [key for key in map(ItemKey.parse, self.items) if key.kind == kind]

    # --- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """measurements.json (tables as records + meta), one CSV per table and items.npz, atomically."""
        folder = Path(folder)
        payload = {"n_layers": self.n_layers, "layer_labels": self.layer_labels, "meta": self.meta,
                   **{name: json.loads(table.to_json(orient="records")) for name, table in self.tables.items()}}
        atomic_write_json(folder / "measurements.json", payload)
        for name, table in self.tables.items():
            if not table.empty:
                with atomic_path(folder / f"{name}.csv") as tmp:
                    table.to_csv(tmp, index=False)
        with atomic_path(folder / "items.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **self.items)
        return folder / "measurements.json"

    @classmethod
    def load(cls, path: str | Path) -> "LayerMeasurements":
        """From measurements.json (items.npz beside it, when there is one)."""
        path = Path(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        tables = {name: pd.DataFrame(data.get(name) or [], columns=list(columns)) for name, columns in TABLES.items()}
        items_path = path.with_name("items.npz")
        items = dict(np.load(items_path)) if items_path.is_file() else {}
        return cls(data["n_layers"], data["layer_labels"], tables, items, data.get("meta", {}))


NullModels = Mapping[str, Callable[[], torch.nn.Module]]


def measure_layers(
    model: torch.nn.Module,
    preprocess: Callable,
    tokenizer: Callable,
    tasks: Sequence[ProbeTask],
    *,
    world=None,
    data: SyntheticData | RealData | None = None,
    null_models: NullModels | None = None,
    loss_fns: Mapping[str, LossFn] | None = None,
    config: MeasureConfig = MeasureConfig(),
    progress: bool = True,
    on_phase: Callable[[LayerMeasurements, str], None] | None = None,
) -> LayerMeasurements:
    """Run the configured measurements on `model` and on each null model.

    null_models: name -> a function that builds that null model (built one at a time, measured,
    then dropped, so that several copies of a large model never sit in memory together).
    data: what sensitivity, gradient norms and the causal check run on (probing.measure.sources); default:
    the synthetic `world`. Without either they are skipped (meta["skipped"] says why); a RealData whose
    images were not found (`with_images` False) gives sensitivity (captions only) but no image measurement.
    on_phase(measurements, phase): called after each phase ("probes/trained", "sensitivity/null:1001", ...).
    """
    n_layers = TextTower.from_model(model).n_layers
    null_models = dict(null_models or {})
    if data is None and world is not None:
        data = SyntheticData(world)
    result = LayerMeasurements(n_layers, layer_labels(n_layers), meta={
        "seeds": list(config.seeds), "null_seeds": list(config.null_seeds), "measurements": list(config.measurements),
        "null_models": list(null_models),
        "tasks": {task.name: {"n_captions": len(task.captions), "n_train": len(task.train),
                              "tests": {k: len(v) for k, v in task.tests.items()}, **task.meta} for task in tasks},
        "data": {}, "completed": []})
    skipped = {}
    for measurement in ("sensitivity", "gradnorms", "causal"):
        if measurement not in config.measurements:
            continue
        if data is None:
            skipped[measurement] = "needs data: the synthetic world or a real file's negation examples"
        elif measurement in IMAGE_MEASUREMENTS and isinstance(data, RealData) and not data.with_images:
            skipped[measurement] = "needs the data's images: give the image root"
    wanted = [m for m in config.measurements if m not in skipped]
    if "gradnorms" in wanted and not loss_fns:
        raise ValueError("gradient norms need loss_fns (name -> loss function of features and scale)")
    edits = sensitivity_edits(data, config) if "sensitivity" in wanted else None
    batches = gradnorm_batches(model, preprocess, tokenizer, data, config, progress) if "gradnorms" in wanted else None
    if batches is not None:
        loss_fns, missing = _feedable(loss_fns, batches)
        skipped.update({f"gradnorms/{name}": why for name, why in missing.items()})
    if skipped:
        result.meta["skipped"] = skipped
    result.meta["data"] = _data_record(tasks, data, world, wanted, config, edits)

    def done(phase: str) -> None:
        result.meta["completed"].append(phase)
        if on_phase is not None:
            on_phase(result, phase)

    directions = {}
    for name, subject in _models(model, null_models):
        if "probes" in wanted:
            directions = _probes(result, name, subject, tokenizer, tasks, config, progress) or directions
            done(f"probes/{name}")
        if "sensitivity" in wanted:
            _sensitivity(result, name, subject, tokenizer, edits, config, progress)
            done(f"sensitivity/{name}")
        if "gradnorms" in wanted and loss_fns:
            _gradnorms(result, name, subject, batches if name == TRAINED else batches[:config.null_grad_batches],
                       loss_fns, progress)
            done(f"gradnorms/{name}")
            if name == TRAINED and config.fisher_micro_batch:
                _fisher(result, subject, batches, loss_fns, config.fisher_micro_batch, progress)
                done(f"fisher/{name}")
        if config.patching_evidence and world is not None:
            result.items[ItemKey.patching(name).text] = patching_profile(subject, preprocess, tokenizer, world,
                                                                         config, progress)
            done(f"patching/{name}")
    if "causal" in wanted and "negation" in directions:
        result.add("causal", causal_rows(model, preprocess, tokenizer, data, directions["negation"], config, progress))
        done("causal/trained")
    return result


def _data_record(tasks, data, world, wanted: Sequence[str], config: MeasureConfig, edits) -> dict:
    """Per measurement, the data it runs on (for meta["data"] and the report)."""
    record = {}
    if "probes" in wanted and tasks:
        real = [task.name for task in tasks if task.meta.get("source") == "real"]
        if real and isinstance(data, RealData):
            record["probes"] = {**data.description, "tasks": [task.name for task in tasks]}
        elif real:
            record["probes"] = {"kind": "real", "sentence": "the captions of a real data file", "tasks": real}
        else:
            record["probes"] = {**SyntheticData(world).description, "tasks": [task.name for task in tasks]} \
                if world is not None else {"kind": "synthetic", "tasks": [task.name for task in tasks]}
    if "probes" in record and any(task.meta.get("files") for task in tasks):
        record["probes"]["files"] = {task.name: task.meta["files"] for task in tasks if task.meta.get("files")}
        record["probes"]["sentence"] = "the captions of " + "; ".join(  # what the tasks read, not the examples
            f"{task.name}: " + ", ".join(f"{Path(source).name} ({n['captions']:,} captions of {n['rows']:,} rows)"
                                         for source, n in task.meta["files"].items())
            for task in tasks if task.meta.get("files"))
    for measurement in ("sensitivity", "gradnorms", "causal"):
        if measurement in wanted and data is not None:
            record[measurement] = dict(data.description)
    if "sensitivity" in record and edits is not None:
        record["sensitivity"].update(n_captions=len(edits["base"]), edits=[e for e in edits if e != "base"])
        if isinstance(data, RealData):
            record["sensitivity"]["files"] = rows_by_file(data.sensitivity_examples(config.n_sensitivity,
                                                                                    config.seed)[0])
    if "gradnorms" in record:
        record["gradnorms"].update(n_batches=config.grad_batches, batch_size=config.grad_batch_size)
        if isinstance(data, RealData):
            record["gradnorms"]["files"] = rows_by_file({id(e): e for batch in data.gradnorm_examples(
                config.grad_batches, config.grad_batch_size, config.seed) for e in batch}.values())
    if "causal" in record:
        record["causal"].update(n_items=config.n_causal)
        if isinstance(data, RealData):
            suite = data.causal_suite(config.n_causal, config.seed)
            record["causal"]["files"] = suite.rows_by_file()
            record["causal"]["metrics"] = list(suite.metric_names)
            if data.mcq or data.foils:
                record["causal"]["sentence"] += "; " + ", ".join(
                    f"{len(items):,} {what} items with images" for what, items in (("NegBench MCQ", data.mcq),
                                                                                   ("VALSE", data.foils)) if items)
    if config.patching_evidence and world is not None:
        record["patching"] = SyntheticData(world).description
    return record


def _models(model, null_models: dict[str, Callable]) -> Iterator[tuple[str, torch.nn.Module]]:
    yield TRAINED, model
    for name, build in null_models.items():
        null = build()
        yield name, null
        del null


# --- probes ---------------------------------------------------------------------------------------

def _probes(result: LayerMeasurements, name: str, subject, tokenizer, tasks, config: MeasureConfig,
            progress: bool) -> dict[str, np.ndarray] | None:
    """Probe sweeps for every task: task labels (and, on the model, control labels and selectivity).
    Returns the model's logistic probe directions per task (None for a null model)."""
    trained = name == TRAINED
    seeds = config.seeds if trained else config.null_seeds
    directions = {}
    for task in tasks:
        features = capture_pooled(subject, tokenizer, task.captions, batch_size=config.batch_size,
                                  token_budget=config.token_budget, memory_budget=config.memory_budget,
                                  progress=progress,
                                  desc=f"probes: {task.name} captions ({name})")
        sweep = probe_layers(features, task.labels, task.train, task.tests, seeds=seeds,
                             probes=("logistic", "diffmeans") if trained else ("logistic",))
        result.add("probes", sweep.summary, task=task.name, model=name, labels="task")
        for split, labels in sweep.labels.items():
            result.items[ItemKey.probe_labels(task.name, split).text] = labels
            result.items[ItemKey.probe(task.name, split, name).text] = sweep.items[(split, "logistic")]
        if trained:
            directions[task.name] = sweep.directions["logistic"]
            if not task.control_tests():  # nothing to fit: said in the run's record, so the report says it
                result.meta.setdefault("skipped", {})[f"probes/{task.name}/control"] = (
                    "no control probe, so no selectivity: the control labels (one per caption type) of the training "
                    "or in-distribution test captions hold one class")
                continue
            control = probe_layers(features, task.control_labels, task.train, task.control_tests(), seeds=seeds)
            result.add("probes", control.summary, task=task.name, model=name, labels="control")
            result.add("selectivity", _selectivity(task.name, sweep.summary, control.summary))
    return directions if trained else None


def _selectivity(task: str, task_rows: list[dict], control_rows: list[dict]) -> list[dict]:
    control = {(r["layer"], r["probe"]): r["accuracy"] for r in control_rows}
    return [{"task": task, "layer": r["layer"], "probe": r["probe"], "task_accuracy": r["accuracy"],
             "control_accuracy": control[(r["layer"], r["probe"])],
             "selectivity": r["accuracy"] - control[(r["layer"], r["probe"])]}
            for r in task_rows if r["split"] == "in_distribution" and (r["layer"], r["probe"]) in control]


# --- sensitivity ----------------------------------------------------------------------------------

def sensitivity_edits(data: SyntheticData | RealData, config: MeasureConfig) -> dict[str, list[str]]:
    """Captions and their edits from the run's data (probing.measure.sources): presence negation, absence
    negation (when the data has it) and a same-size control edit that does not negate."""
    return data.sensitivity_edits(config.n_sensitivity, config.seed)


def _sensitivity(result, name, subject, tokenizer, edits, config: MeasureConfig, progress: bool) -> None:
    def capture(captions, edit):
        return capture_pooled(
            subject,
            tokenizer,
            captions,
            batch_size=config.batch_size,
            token_budget=config.token_budget,
            memory_budget=config.memory_budget,
            progress=progress,
            desc=f"sensitivity: {edit} captions ({name})",
        )

    base = capture(edits["base"], "base")
    distances: dict[str, np.ndarray] = {}
    rows = edit_sensitivity(base, {edit: capture(captions, edit) for edit, captions in edits.items() if edit != "base"},
                            seed=config.seed, distances=distances)
    result.add("sensitivity", rows, model=name)
    result.items.update({ItemKey.sensitivity(edit, name).text: values for edit, values in distances.items()})


# --- gradient norms -------------------------------------------------------------------------------

def gradnorm_batches(model, preprocess, tokenizer, data: SyntheticData | RealData, config: MeasureConfig,
                     progress: bool = False) -> list[tuple[dict, dict]]:
    """(image features, caption tokens) of each batch of the run's data. The image tower is the model's for
    every null model too (null models re-initialise the text tower only), so images are encoded once, through
    the disk cache. Distractor features and each caption kind come only where every example of the batch has
    them (a loss that needs what is missing is left out: `_feedable`)."""
    batches = []
    for b, examples in enumerate(data.gradnorm_examples(config.grad_batches, config.grad_batch_size, config.seed)):
        def encode(images, what):
            return encode_image_features(model, preprocess, images, cache=config.feature_cache,
                                         num_workers=config.num_workers, progress=progress,
                                         desc=f"gradient norms: {what} (batch {b + 1})",
                                         origins=[(e.source, e.row) for e in examples])
        images = {"image": encode([e.image for e in examples], "image features")}
        if all(e.distractor_image is not None for e in examples):
            images["distractor"] = encode([e.distractor_image for e in examples], "distractor features")
        tokens = {
            key: tokenizer([getattr(e, key) for e in examples])
            for key in ("caption", "presence_negated", "absence_negated")
            if all(getattr(e, key) for e in examples)
        }
        batches.append((images, tokens))
    return batches


def _feedable(loss_fns: Mapping[str, LossFn], batches) -> tuple[dict[str, LossFn], dict[str, str]]:
    """The losses every batch has the captions and images for, and why the others are left out."""
    kept, missing = {}, {}
    for name, fn in loss_fns.items():
        needs = set(getattr(fn, "texts", ())) | (
            {"distractor"} if getattr(fn, "distractor", "no") == "required" else set()
        )
        lacking = sorted(
            need for need in needs for images, tokens in batches if need not in tokens and need not in images
        )
        if lacking:
            missing[name] = f"the data has no {lacking[0].replace('_', '-')} captions or images for every batch"
        else:
            kept[name] = fn
    return kept, missing


def _batch_loss(subject, images: dict, tokens: dict, loss_fn: LossFn) -> Callable[[torch.nn.Module], torch.Tensor]:
    """The loss of one batch as a function of the model (its text tower encodes the tokens each call)."""
    tower = TextTower.from_model(subject)
    device = tower.positional_embedding.device

    def loss(m):
        features = {key: value.to(device) for key, value in images.items()}
        features.update({key: tower.encode(t.to(device), normalize=True) for key, t in tokens.items()})
        return loss_fn(features, m.logit_scale.exp().clamp(max=100))
    return loss


def _gradnorms(result, name, subject, batches, loss_fns: Mapping[str, LossFn], progress: bool) -> None:
    """Relative gradient norms per block and component under each loss, on the same batches."""
    for loss_name, loss_fn in loss_fns.items():
        per_batch: dict[tuple[int, str], list[float]] = {}
        rows = relative_gradient_norms(subject, [_batch_loss(subject, *b, loss_fn) for b in batches],
                                       loss_name=loss_name, progress=progress, per_batch=per_batch,
                                       desc=f"gradient norms: {loss_name} ({name})")
        result.add("gradnorms", rows, model=name)
        blocks = sorted(block for block, component in per_batch if component == "all")
        result.items[ItemKey.gradnorms(loss_name, name).text] = np.array(
            [per_batch[(block, "all")] for block in blocks], dtype=np.float32).T


def _fisher(result, subject, batches, loss_fns: Mapping[str, LossFn], size: int, progress: bool) -> None:
    """The Fisher information per block under each loss, the gradient batches cut into micro-batches of `size` (a
    batch smaller than that is one micro-batch of its own size; the recorded micro_batch_size says which)."""
    micro = []
    for images, tokens in batches:
        n = len(next(iter(images.values())))
        step = min(size, n)
        for start in range(0, n - step + 1, step):
            part = slice(start, start + step)
            micro.append(({k: v[part] for k, v in images.items()}, {k: v[part] for k, v in tokens.items()}))
    sizes = Counter(len(next(iter(images.values()))) for images, _ in micro)
    used = sizes.most_common(1)[0][0] if sizes else size  # the size of most micro-batches
    for loss_name, loss_fn in loss_fns.items():
        rows = fisher_information(subject, [_batch_loss(subject, *m, loss_fn) for m in micro], loss_name=loss_name,
                                  progress=progress, desc=f"Fisher information: {loss_name}")
        result.add("fisher", rows, model=TRAINED, micro_batch_size=used)


# --- patching as evidence ------------------------------------------------------------------------

def patching_profile(model, preprocess, tokenizer, world, config: MeasureConfig, progress: bool) -> np.ndarray:
    """Per block: the largest exact denoising effect of its attention or MLP output over token roles,
    averaged over negation and scope pairs, in similarity units (the normalised effect times the pairs'
    mean clean-corrupted gap: random towers, whose gap is about 0, are not divided by it)."""

    localisation = measure_localisation(
        model, preprocess, tokenizer, world=world, progress=progress,
        config=LocaliseConfig(measurements=("patching",), methods=("exact",), components=("attn", "mlp"),
                              n_pairs=config.n_patching_pairs, seed=config.seed))
    gaps = localisation.pairs.set_index("kind")["mean_gap"]
    table = localisation.patching
    table = table.assign(effect=table["effect"] * table["kind"].map(gaps))
    effects = block_effects(table).set_index("block")["best"]
    return effects.reindex(range(TextTower.from_model(model).n_layers)).fillna(0.0).to_numpy(dtype=np.float32)


# --- causal check ---------------------------------------------------------------------------------

def causal_rows(model, preprocess, tokenizer, data: SyntheticData | RealData, directions: np.ndarray,
                config: MeasureConfig, progress: bool = False) -> list[dict]:
    """Project the negation probe direction out at each layer; report the negation and retrieval metrics of the
    run's data (synthetic: CAUSAL_METRICS; real: the suite's `metric_names`, those the data has: CC-Neg-style,
    absence, R@1, and the MCQ and caption-vs-foil accuracies of benchmark files)."""


    suite = data.causal_suite(config.n_causal, config.seed)
    if hasattr(suite, "metric_names"):  # real data (probing.measure.sources: RealSuite, MCQSuite, ...)
        image_features = suite.image_features(model, preprocess, progress=progress, num_workers=config.num_workers,
                                              cache=config.feature_cache)
        names = suite.metric_names
    else:
        image_features = suite.image_features(model, preprocess)
        names = CAUSAL_METRICS
    hooked = HookedCLIPText(model)
    bar = tqdm(total=len(directions) + 1, desc="causal check: layers ablated", unit="layer", disable=not progress)

    def evaluate(encode):
        metrics = suite.scores(model, preprocess, tokenizer, encode_text=encode, image_features=image_features)
        bar.update(1)
        return {key: metrics[key] for key in names if key in metrics}

    try:
        return projection_ablation(hooked, tokenizer, dict(enumerate(directions)), evaluate)
    finally:
        bar.close()
