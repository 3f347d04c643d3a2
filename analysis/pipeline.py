"""The `probe-layers` pipeline as library functions, one per stage, with typed inputs and results.

    config = ProbeConfig(model=ModelSpec("embedded"))          # or ProbeConfig.load("runs/x/config.json")
    subject = load(config)                                      # the model, its null models, tasks and data
    measurements = measure(subject, config)                     # probes, sensitivity, gradient norms, causal check
    evidence = assess_evidence(measurements, config)            # each block's excess over the null models
    selection = select(evidence, config)                        # the layer plan (no blocks when nothing beats null)
    localisation = localise(subject, config)                    # where negation is computed (or None)
    paths = write(out, config, subject, measurements, selection, localisation)

`run(config, out)` does all of it, saving the measurements after every phase; the `probe-layers` command is a
shell that turns its flags into a `ProbeConfig` and calls `run`, and a notebook calls the stages in the same
order. Every run folder holds `config.json`, from which `probe-layers --config` re-runs it exactly.

Data: the synthetic world that goes with the model, or a real file (`DataSpec.file`): its negation examples
(probing.data.negations) become the probe task, the sensitivity edits, the gradient batches, the causal check's
items and the localisation's pairs; the report says which measurement ran on which data.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from analysis.planning.evidence import BlockEvidence, block_evidence
from analysis.planning.selection import Selection, select_layers
from analysis.probe_config import ConfigError, DataSpec, ProbeConfig
from analysis.report.figures import draw_all, save_figures
from analysis.report.localisation import draw_localisation, localisation_sentences
from analysis.report.report import write_report
from finetune.losses import gradnorm_loss_fns, loss_spec
from probing.clip.text_tower import TextTower
from probing.data import load_negation_examples
from probing.data.negations import describe_examples, describe_sentence
from probing.data.records import DataError
from probing.measure.layers import LayerMeasurements, measure_layers
from probing.measure.localise import Localisation, measure_localisation
from probing.measure.null import null_builders
from probing.measure.sources import RealData
from probing.measure.tasks import ProbeTask, real_negation_task, synthetic_negation_task, synthetic_scope_task
from probing.measure.tidy import long_table, write_long_table
from probing.models.factory import ModelBundle, create_model
from probing.vocabulary import NEEDS_IMAGES

# --- load ----------------------------------------------------------------------------------------------------

@dataclass
class Subject:
    """What the measurements run on, loaded once: the model, its null models, the probe tasks and the data."""

    bundle: ModelBundle
    null_models: dict[str, Callable]  # name (probing.measure.keys.null_name) -> a builder of that null model
    tasks: list[ProbeTask]
    data: RealData | None  # a real file's negation examples; None: the synthetic world of the bundle
    losses: tuple[str, ...]  # the gradient-norm losses the data can feed
    notes: list[str] = field(default_factory=list)

    @property
    def world(self):
        """The synthetic world the measurements use (None with real data: the file replaces it)."""
        return self.bundle.world if self.data is None else None


def load(config: ProbeConfig, *, log: Callable[[str], None] = lambda message: None) -> Subject:
    """The data first (a broken file fails before any model loads), then the model and its null models."""
    notes: list[str] = []
    data, task, losses = None, None, tuple(config.losses)
    if config.data.file is not None:
        log(f"reading {config.data.file}")
        task, data, losses = _real_data(config, notes)
    log(f"loading {config.model.label} on {config.model.device}")
    bundle = create_model(config.model.name, config.model.pretrained, device=config.model.device, seed=config.seed)
    if bundle.world is None:
        notes.append(bundle.world_note)
        if data is None:
            raise ConfigError(f"{bundle.world_note}; pass a real data file (--data)")
    if config.model.pretrained is None and not bundle.checkpoint:
        notes.append("the model has random weights (no pretrained weights given)")
    bundle.info["n_layers"] = TextTower.from_model(bundle.model).n_layers
    seeds = [config.seed * 1000 + 1 + k for k in range(config.null_models)]  # never the model's own init seed
    nulls = null_builders(bundle.model, bundle.name, seeds)
    if task is not None:
        tasks = [task]
    elif "probes" in config.measure.measurements:
        tasks = [synthetic_negation_task(bundle.world, n_train=config.data.n_train, n_test=config.data.n_test,
                                         seed=config.seed),
                 synthetic_scope_task(bundle.world, n_train=config.data.n_train, n_test=config.data.n_test,
                                      seed=config.seed)]
    else:
        tasks = []
    return Subject(bundle, nulls, tasks, data, losses, notes)


def read_examples(spec: DataSpec, seed: int, notes: list[str]) -> list:
    """The negation examples of a real data file (probing.data.negations), at most `spec.limit` of them (a seeded
    draw); what was skipped or left out goes to `notes`. A ConfigError names the file when nothing usable is left."""
    file = spec.file
    try:
        records = load_negation_examples(file, kind=spec.kind, image_root=spec.image_root, strict=False, seed=seed,
                                         per_image=spec.per_image, split=spec.split)
    except DataError:  # names its file and row already
        raise
    except ValueError as error:  # e.g. an unknown kind
        raise ConfigError(f"--data {file}: {error}") from None
    if records.report.n_skipped:
        notes.append(f"{file}: skipped {records.report.n_skipped} unreadable rows "
                     f"({', '.join(f'{k} x{n}' for k, n in records.report.skip_reasons().most_common(3))})")
    if not records:
        raise ConfigError(f"--data {file}: no negation examples ({records.report.summary()})")
    if not any(r.presence_negated or r.absence_negated for r in records):
        raise ConfigError(f"--data {file}: no negated captions to probe (captions only?)")
    records = list(records)
    if len(records) > spec.limit:
        keep = np.sort(np.random.default_rng([seed, 0xDA7A]).choice(len(records), spec.limit, replace=False))
        notes.append(f"{file}: {spec.limit} of {len(records)} negation examples used (--limit)")
        records = [records[i] for i in keep]
    return records


def probe_task(records, spec: DataSpec, seed: int, notes: list[str]) -> ProbeTask:
    """The negation probing task of a file's examples: affirmative captions label 0, negated ones 1, the cues not
    among `spec.train_cues` a held-out split (probing.measure.tasks.real_negation_task)."""
    try:
        task = real_negation_task(records, train_cues=spec.train_cues, seed=seed)
    except ValueError as error:
        raise ConfigError(f"--data {spec.file}: {error}") from None
    if len(task.tests) == 1:
        notes.append(f"{spec.file}: every caption uses the training cues {list(spec.train_cues)}, so there is no "
                     "held-out cue split")
    return task


def _real_data(config: ProbeConfig, notes: list[str]) -> tuple[ProbeTask, RealData, tuple[str, ...]]:
    """The probing task, the measurements' data and the losses it can feed, from a real data file, checked against
    the configuration before any model loads."""
    spec, file = config.data, config.data.file
    records = read_examples(spec, config.seed, notes)
    task = probe_task(records, spec, config.seed, notes)
    try:
        data = RealData(records, source=str(file), with_images=spec.image_root is not None)
    except ValueError as error:
        raise ConfigError(f"--data {file}: {error}") from None
    notes.append("data: " + describe_sentence(describe_examples(records, file)))
    return task, data, _check_real_data(config, data, notes)


def _check_real_data(config: ProbeConfig, data: RealData, notes: list[str]) -> tuple[str, ...]:
    """What the measurements will ask of the file; returns the losses it can feed."""
    wanted, file, losses = config.measure.measurements, config.data.file, tuple(config.losses)
    if config.data.image_root is None:
        skipped = [m for m in ("gradnorms", "causal") if m in wanted]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: no image root given, so the file's images cannot be read")
    if "sensitivity" in wanted and config.evidence.sensitivity_edit == "absence" and not data.has_absence:
        raise ConfigError(f"--sensitivity-edit absence: {file} has no absence-negated captions for most examples; "
                          "use --sensitivity-edit presence")
    if "gradnorms" in wanted and config.data.image_root is not None:
        if config.measure.grad_batch_size > len(data.examples):
            raise ConfigError(f"--grad-batch-size {config.measure.grad_batch_size} is more than the "
                              f"{len(data.examples)} examples of {file}")
        lacking = [name for name in losses if "absence_negated" in loss_spec(name).texts
                   and not all(e.absence_negated for e in data.examples)]
        if lacking and config.losses_given:
            raise ConfigError(f"--losses {', '.join(lacking)}: {file} has no absence-negated caption for every "
                              "example (released CC-Neg has none)")
        if lacking:
            losses = tuple(name for name in losses if name not in lacking)
            notes.append(f"gradient norms without {', '.join(lacking)}: {file} has no absence-negated captions")
            if config.evidence.grad_losses and set(config.evidence.grad_losses) & set(lacking):
                raise ConfigError(f"--grad-loss {', '.join(config.evidence.grad_losses)} needs absence-negated "
                                  f"captions, which {file} does not have")
    return losses


# --- the stages ----------------------------------------------------------------------------------------------

def measure(subject: Subject, config: ProbeConfig, *,
            on_phase: Callable[[LayerMeasurements, str], None] | None = None, progress: bool = True
            ) -> LayerMeasurements:
    """Every per-layer measurement on the model and its null models (probing.measure.layers.measure_layers)."""
    wanted = tuple(config.measure.measurements)
    if subject.data is None and subject.world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        if skipped:
            subject.notes.append(f"skipped {', '.join(skipped)}: they need the synthetic world's images")
            wanted = tuple(m for m in wanted if m not in skipped)
    patching = config.measure.patching_evidence and subject.world is not None
    if subject.data is not None and config.measure.patching_evidence:
        subject.notes.append("no patching evidence: it patches synthetic scope pairs, and --data replaces the "
                             "synthetic world")
    settings = dataclasses.replace(config.measure, measurements=wanted, patching_evidence=patching)
    measurements = measure_layers(
        subject.bundle.model, subject.bundle.preprocess, subject.bundle.tokenizer, subject.tasks,
        world=subject.world, data=subject.data, null_models=subject.null_models,
        loss_fns=gradnorm_loss_fns(subject.losses) if subject.losses else None, config=settings, progress=progress,
        on_phase=on_phase)
    measurements.meta["model"] = subject.bundle.info
    return measurements


def assess_evidence(measurements: LayerMeasurements, config: ProbeConfig) -> BlockEvidence:
    """Each block's null-calibrated evidence (analysis.planning.evidence)."""
    return block_evidence(measurements, config.evidence)


def select(evidence: BlockEvidence, config: ProbeConfig) -> Selection:
    """The layer plan (analysis.planning.selection); a SelectionError when the rule cannot run on this evidence."""
    return select_layers(evidence, config.selection)


def localise(subject: Subject, config: ProbeConfig, *, progress: bool = True) -> Localisation | None:
    """Patching, heads, lens and steering on the model (probing.measure.localise), on the synthetic world or the
    file's own caption pairs; None when nothing of it was asked for or can run."""
    if config.localise is None or not config.localise.measurements:
        return None
    wanted = list(config.localise.measurements)
    examples = list(subject.data.examples) if subject.data is not None else None
    if subject.world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        wanted = [m for m in wanted if m not in skipped]
        if skipped:
            subject.notes.append(f"skipped {', '.join(skipped)}: they score held-out synthetic scenes")
    if not wanted or (subject.world is None and not examples):
        return None
    settings = dataclasses.replace(config.localise, measurements=tuple(wanted))
    return measure_localisation(subject.bundle.model, subject.bundle.preprocess, subject.bundle.tokenizer,
                                world=subject.world, examples=examples, config=settings, progress=progress)


def write(out: str | Path, config: ProbeConfig, subject: Subject, measurements: LayerMeasurements,
          selection: Selection, localisation: Localisation | None = None, *, seconds: float | None = None
          ) -> dict[str, Path]:
    """The run's files: layer_plan.json, figures/, report.md / .json, measurements (JSON, CSV tables, the long
    table), localisation/, config.json."""
    out = Path(out)
    measurements.save(out)
    paths = {"measurements": out / "measurements.json", "config": config.save(out)}
    paths.update(write_long_table(out / "measurements_long", long_table(measurements, localisation)))
    paths["plan"] = selection.plan.save(out / "layer_plan.json")
    drawn = draw_all(measurements, selection)
    extra = []
    if localisation is not None:
        localisation.save(out / "localisation")
        drawn.update(draw_localisation(localisation))
        extra = localisation_sentences(localisation)
    figures = save_figures(drawn, out / "figures")
    run_info = {"config": config.to_dict(), "threads": config.threads, "seconds": seconds, "notes": subject.notes}
    paths.update(write_report(out, measurements, selection, figures=figures, model_info=subject.bundle.info,
                              embedded_metrics=subject.bundle.metrics, run_info=run_info, extra_sentences=extra))
    paths["figures"] = out / "figures"
    return paths


@dataclass
class ProbeResult:
    subject: Subject
    measurements: LayerMeasurements
    evidence: BlockEvidence
    selection: Selection
    localisation: Localisation | None
    paths: dict[str, Path]
    seconds: float


def run(config: ProbeConfig, out: str | Path, *, log: Callable[[str], None] = lambda message: None,
        progress: bool = True, before_measuring: Callable[[Subject], None] | None = None) -> ProbeResult:
    """The whole pipeline into `out`, the measurements saved after every phase (a late failure keeps what was
    measured). A SelectionError (no plan can be chosen) propagates after the measurements are saved."""
    started = time.perf_counter()
    out = Path(out)
    subject = load(config, log=log)
    if before_measuring is not None:
        before_measuring(subject)
    config.save(out)
    log(f"measuring {', '.join(config.measure.measurements)} on the model and {len(subject.null_models)} null models")
    measurements = measure(subject, config, progress=progress,
                           on_phase=lambda result, phase: (result.meta.update(model=subject.bundle.info),
                                                           result.save(out)))
    measurements.save(out)
    if config.save_activations:
        from probing.measure.capture import save_activations  # only when asked: it captures every task again

        save_activations(subject.bundle.model, subject.bundle.tokenizer,
                         {task.name: task.captions for task in subject.tasks}, out / "activations",
                         batch_size=config.measure.batch_size)
    log("localising" if config.localise is not None and config.localise.measurements else "no localisation asked")
    localisation = localise(subject, config, progress=progress)
    log(f"testing the evidence against {len(measurements.null_models)} null models")
    evidence = assess_evidence(measurements, config)
    selection = select(evidence, config)
    selection.plan.validate(measurements.n_layers)
    log("drawing figures")
    paths = write(out, config, subject, measurements, selection, localisation, seconds=time.perf_counter() - started)
    return ProbeResult(subject, measurements, evidence, selection, localisation, paths,
                       time.perf_counter() - started)
