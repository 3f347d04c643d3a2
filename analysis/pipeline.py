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

Data: the synthetic world that goes with the model, or real files (`DataSpec.file`, or several: `DataSpec.files`,
a benchmark mix): each file becomes what its kind can honestly give (probing.data.benchmarks: the negation and
scope probe tasks, the sensitivity edits, the gradient batches, the causal check's items and the localisation's
pairs; NegBench MCQ, VALSE existence, CC-Neg, NegBench retrieval and COCO files give some of each, SugarCREPE and
NegRefCOCOg none, and say why). Probe tasks hold out images (and objects, templates and cues) from training; the
image-grounded measurements (gradient norms, causal check, patching) read only rows whose image resolves under
the image root (a missing one is an error, or with `skip_missing` skipped and counted). The report says which
measurement ran on which file and how many of its rows each used.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.planning.evidence import BlockEvidence, block_evidence
from analysis.planning.selection import Selection, SelectionConfig, select_layers
from analysis.probe_config import ConfigError, DataSpec, ProbeConfig
from analysis.report.figures import draw_all, save_figures
from analysis.report.localisation import draw_localisation, localisation_sentences
from analysis.report.report import write_report
from finetune.losses import gradnorm_loss_fns, loss_spec
from probing.clip.text_tower import TextTower
from probing.data.benchmarks import Benchmark, read_benchmark, resolve_images
from probing.data.negations import describe_examples, describe_sentence
from probing.data.records import DataError
from probing.measure.layers import LayerMeasurements, measure_layers
from probing.measure.localise import Localisation, measure_localisation
from probing.measure.null import null_builders
from probing.measure.roles import benchmark_scope_pairs, example_pairs
from probing.measure.sources import RealData, rows_by_file
from probing.measure.tasks import (
    ProbeTask,
    heldout_task,
    synthetic_negation_task,
    synthetic_scope_task,
)
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
    pairs: dict[str, list] = field(default_factory=dict)  # real data: the files' patching pairs per kind (imaged)
    files: dict[str, dict] = field(default_factory=dict)  # real data: per file, its kind, rows and what it gave

    @property
    def world(self):
        """The synthetic world the measurements use (None with real data: the files replace it, even where they give
        a measurement nothing)."""
        return self.bundle.world if self.data is None and not self.files else None


def load(config: ProbeConfig, *, log: Callable[[str], None] = lambda message: None) -> Subject:
    """The data first (a broken file fails before any model loads), then the model and its null models."""
    notes: list[str] = []
    data, real_tasks, losses, real = None, None, tuple(config.losses), None
    if config.data.paths:
        log(f"reading {', '.join(config.data.paths)}")
        real = _real_data(config, notes, log)
        real_tasks, data, losses = real.tasks, real.data, real.losses
    log(f"loading {config.model.label} on {config.model.device}")
    bundle = create_model(config.model.name, config.model.pretrained, device=config.model.device, seed=config.seed)
    if bundle.world is None and real is None:
        raise ConfigError(f"{bundle.world_note}; pass a real data file (--data)")
    if config.model.pretrained is None and not bundle.checkpoint:
        notes.append("the model has random weights (no pretrained weights given)")
    bundle.info["n_layers"] = TextTower.from_model(bundle.model).n_layers
    seeds = [config.seed * 1000 + 1 + k for k in range(config.null_models)]  # never the model's own init seed
    nulls = null_builders(bundle.model, bundle.name, seeds)
    if real_tasks is not None:
        tasks = real_tasks
    elif "probes" in config.measure.measurements:
        tasks = [synthetic_negation_task(bundle.world, n_train=config.data.n_train, n_test=config.data.n_test,
                                         seed=config.seed),
                 synthetic_scope_task(bundle.world, n_train=config.data.n_train, n_test=config.data.n_test,
                                      seed=config.seed)]
    else:
        tasks = []
    subject = Subject(bundle, nulls, tasks, data, losses, notes)
    if real is not None:
        subject.pairs, subject.files = real.pairs, real.files
    return subject


def read_benchmarks(spec: DataSpec, seed: int, notes: list[str]) -> list[Benchmark]:
    """Every real data file of `spec` read as a Benchmark (probing.data.benchmarks: at most `spec.limit` rows per file,
    a seeded draw); what was skipped, drawn or refused goes to `notes`. A ConfigError when no file gives anything
    usable (probe-layers' files, and compare-checkpoints' through `real_probe_tasks`)."""
    benchmarks = []
    for path in spec.paths:
        try:
            benchmark = read_benchmark(path, kind=spec.kind, seed=seed, per_image=spec.per_image, split=spec.split,
                                       limit=spec.limit)
        except DataError:  # names its file and row already
            raise
        except ValueError as error:  # e.g. an unknown kind
            raise ConfigError(f"--data {path}: {error}") from None
        report = benchmark.report
        if report is not None and report.n_skipped:
            notes.append(report.skipped_note())
        notes.extend(benchmark.notes)
        if not benchmark.usable:
            notes.append(f"{benchmark.name}: not used: {next(iter(benchmark.refused.values()), 'nothing usable')}")
        benchmarks.append(benchmark)
    if not any(b.usable for b in benchmarks):
        raise ConfigError("--data: nothing usable: " + "; ".join(
            f"{b.name} ({b.kind}): {next(iter(b.refused.values()), 'no rows')}" for b in benchmarks))
    return benchmarks


def real_probe_tasks(spec: DataSpec, seed: int, notes: list[str]) -> list[ProbeTask]:
    """The probe tasks of real data files, built as probe-layers builds them (`probe_tasks`); a ConfigError when the
    files give no negation task (compare-checkpoints' --data)."""
    tasks = probe_tasks(spec, seed, [b for b in read_benchmarks(spec, seed, notes) if b.usable], notes)
    if not any(task.name == "negation" for task in tasks):
        raise ConfigError(f"--data {', '.join(spec.paths)}: no negation probe task: no file gives negated captions")
    return tasks


IMAGE_MEASUREMENTS = ("gradnorms", "causal", "patching", "heads")  # read the files' images


@dataclass
class RealInputs:
    """What real data files give a run (`_real_data`)."""

    tasks: list[ProbeTask]
    data: RealData | None
    losses: tuple[str, ...]
    pairs: dict[str, list]
    files: dict[str, dict]


def _real_data(config: ProbeConfig, notes: list[str], log: Callable[[str], None] = lambda message: None
               ) -> RealInputs:
    """The probe tasks, the measurements' data, the losses it can feed and the patching pairs, from real data files
    (probing.data.benchmarks), checked against the configuration before any model loads. A file whose kind gives
    nothing is noted (and, when no file gives anything the asked measurements can use, a ConfigError)."""
    spec = config.data
    wanted = tuple(config.measure.measurements) + (tuple(config.localise.measurements) if config.localise else ())
    needs_images = spec.image_root is not None and any(m in IMAGE_MEASUREMENTS for m in wanted)
    if spec.image_root is not None and not needs_images:
        notes.append(f"images not read: {', '.join(wanted)} read captions only")
    benchmarks = read_benchmarks(spec, config.seed, notes)
    imaged = []
    for benchmark in benchmarks:
        with_images = resolve_images(benchmark, spec.image_root, strict=not spec.skip_missing) if needs_images \
            else None
        if with_images is not None and with_images.images_skipped:
            notes.append(f"{benchmark.name}: {with_images.images_skipped} rows skipped by the image measurements: "
                         f"image not found under {spec.image_root} (--skip-missing)")
        imaged.append(with_images)
    usable = [b for b in benchmarks if b.usable]
    tasks = probe_tasks(spec, config.seed, usable, notes) if "probes" in config.measure.measurements else []
    examples = [e for b in usable for e in b.examples]
    image_examples = [e for b in imaged if b is not None for e in b.examples]
    mcq = [i for b in imaged if b is not None for i in b.mcq]
    foils = [i for b in imaged if b is not None for i in b.foils]
    source = str(spec.paths[0]) if len(spec.paths) == 1 else ", ".join(Path(p).name for p in spec.paths)
    try:
        data = RealData(examples, source=source, with_images=bool(image_examples or mcq or foils),
                        image_examples=image_examples, mcq=mcq, foils=foils)
    except ValueError:
        data = None
    if data is None:
        skipped = [m for m in ("sensitivity", "gradnorms", "causal") if m in config.measure.measurements]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: no file gives an example with a true affirmative and a "
                         "false negated caption, or an item with its image")
    if needs_images and data is not None and not data.with_images:
        notes.append("no row of the data has its image under the image root: the image measurements are skipped")
    for benchmark in usable:
        if benchmark.examples:
            notes.append("data: " + describe_sentence(describe_examples(
                [e for e in benchmark.examples if e.caption and e.presence_negated], benchmark.source)))
    _check_usable(config, tasks, data, [b.name for b in benchmarks])
    pairs = {}
    if needs_images and data is not None:
        pairs = {"negation": example_pairs(data.image_examples),
                 "scope": benchmark_scope_pairs([p for b in imaged if b is not None for p in b.scope_pairs])}
        pairs = {kind: _interleave(found) for kind, found in pairs.items() if found}
    files = {b.source: {"kind": b.kind, "rows": b.rows, "refused": dict(b.refused),
                        "images_skipped": None if i is None else i.images_skipped}
             for b, i in zip(benchmarks, imaged)}
    losses = _check_real_data(config, data, notes) if data is not None else ()
    return RealInputs(tasks, data, losses, pairs, files)


def _interleave(pairs: list) -> list:
    """Patching pairs taken from the files in turn (the first of each file, then the second, ...), so that the
    first n of a mix, which localisation patches, come from every file that has pairs."""
    by_file: dict[str, list] = {}
    for pair in pairs:
        by_file.setdefault(str(pair.meta.get("source")), []).append(pair)
    queues = list(by_file.values())
    return [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]


def probe_tasks(spec: DataSpec, seed: int, benchmarks: list[Benchmark], notes: list[str]) -> list[ProbeTask]:
    """The negation probe task of every file's captions, and the scope task where files give scope captions
    (probing.measure.tasks.heldout_task: test splits held out by image, cue, object and template)."""
    tasks: list[ProbeTask] = []
    captions = [c for b in benchmarks for c in b.captions]
    if captions:
        try:
            tasks.append(heldout_task("negation", captions, train_cues=spec.train_cues, seed=seed))
        except ValueError as error:
            raise ConfigError(f"--data {', '.join(b.name for b in benchmarks)}: negation task: {error}") from None
    scope = [c for b in benchmarks for c in b.scope]
    if scope:
        try:
            tasks.append(heldout_task("scope", scope, train_cues=spec.train_cues, seed=seed))
        except ValueError as error:
            notes.append(f"no scope probe task: {error}")
    for task in tasks:
        for split, why in task.meta["dropped_splits"].items():
            notes.append(f"{task.name} task: no {split} split ({why})")
    return tasks


def _check_usable(config: ProbeConfig, tasks: list[ProbeTask], data: RealData | None, names: list[str]) -> None:
    """A ConfigError when none of the asked layer measurements can run on the files."""
    wanted = config.measure.measurements
    can = {"probes": bool(tasks), "sensitivity": data is not None and len(data.examples) >= 2,
           "gradnorms": data is not None and bool(data.image_examples)}
    if not any(can.get(m) for m in wanted if m in can):
        asked = [m for m in wanted if m in can]
        raise ConfigError(f"--data {', '.join(names)}: nothing usable for {', '.join(asked)}: "
                          + ("no negation probe task, " if "probes" in asked else "")
                          + ("no examples with an affirmative and a negated caption, " if "sensitivity" in asked
                             else "")
                          + ("no example whose image resolves under the image root" if "gradnorms" in asked
                             else "").rstrip(", "))


def _check_real_data(config: ProbeConfig, data: RealData, notes: list[str]) -> tuple[str, ...]:
    """What the measurements will ask of the files; returns the losses they can feed."""
    wanted, file, losses = config.measure.measurements, ", ".join(config.data.paths), tuple(config.losses)
    if config.data.image_root is None:
        skipped = [m for m in ("gradnorms", "causal") if m in wanted]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: no image root given, so the file's images cannot be read")
    if "sensitivity" in wanted and config.evidence.sensitivity_edit == "absence" and not data.has_absence:
        raise ConfigError(f"--sensitivity-edit absence: {file} has no absence-negated captions for most examples; "
                          "use --sensitivity-edit presence")
    if "gradnorms" in wanted and data.with_images:
        pool = data.image_examples
        if config.measure.grad_batch_size > len(pool):
            raise ConfigError(f"--grad-batch-size {config.measure.grad_batch_size} is more than the "
                              f"{len(pool)} examples with images of {file}")
        lacking = [name for name in losses if "absence_negated" in loss_spec(name).texts
                   and not all(e.absence_negated for e in pool)]
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
        if skipped and not subject.files:
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
    if subject.files:
        measurements.meta["data_files"] = subject.files
    return measurements


def assess_evidence(measurements: LayerMeasurements, config: ProbeConfig) -> BlockEvidence:
    """Each block's null-calibrated evidence (analysis.planning.evidence)."""
    return block_evidence(measurements, config.evidence)


def select(evidence: BlockEvidence, config: ProbeConfig) -> Selection:
    """The layer plan (analysis.planning.selection); a SelectionError when the rule cannot run on this evidence."""
    return select_layers(evidence, config.selection)


def localise(subject: Subject, config: ProbeConfig, *, progress: bool = True) -> Localisation | None:
    """Patching, heads, lens and steering on the model (probing.measure.localise), on the synthetic world or the
    files' own caption pairs (those whose image resolved); None when nothing of it was asked for or can run."""
    if config.localise is None or not config.localise.measurements:
        return None
    wanted = list(config.localise.measurements)
    real = subject.data is not None
    if subject.world is None:
        skipped = [m for m in wanted if m in NEEDS_IMAGES]
        wanted = [m for m in wanted if m not in skipped]
        if skipped:
            subject.notes.append(f"skipped {', '.join(skipped)}: they score held-out synthetic scenes")
    if real and wanted and not subject.pairs:
        subject.notes.append(f"skipped {', '.join(wanted)}: no caption pair of the data has its image under the "
                             "image root" if config.data.image_root else
                             f"skipped {', '.join(wanted)}: no image root given, and patching scores image-grounded "
                             "pairs")
        return None
    if not wanted or subject.world is None and not subject.pairs:
        return None
    settings = dataclasses.replace(config.localise, measurements=tuple(wanted))
    localisation = measure_localisation(subject.bundle.model, subject.bundle.preprocess, subject.bundle.tokenizer,
                                        world=subject.world, pairs=subject.pairs or None, config=settings,
                                        progress=progress)
    if subject.pairs:
        used = {kind: rows_by_file(pairs[:settings.n_pairs], origin=lambda p: (p.meta.get("source"), p.meta.get("row")))
                for kind, pairs in subject.pairs.items()}
        localisation.meta["files"] = used
        for kind, counts in used.items():
            for source, n in counts.items():
                subject.files.setdefault(source, {}).setdefault("patching", {})[kind] = n
    return localisation


def write(out: str | Path, config: ProbeConfig, subject: Subject, measurements: LayerMeasurements,
          selection: Selection, localisation: Localisation | None = None, *, seconds: float | None = None
          ) -> dict[str, Path]:
    """The run's files: layer_plan.json, figures/, report.md / .json, measurements (JSON, CSV tables, the long
    table), localisation/, config.json."""
    out = Path(out)
    measurements.save(out)
    paths = {"measurements": out / "measurements.json"}
    paths.update(write_long_table(out / "measurements_long", long_table(measurements, localisation)))
    if localisation is not None:
        localisation.save(out / "localisation")
    run_info = {"config": config.to_dict(), "threads": config.threads, "seconds": seconds, "notes": subject.notes}
    paths.update(_write_selection(out, config, measurements, selection, localisation, subject.bundle.info,
                                  subject.bundle.metrics, run_info))
    return paths


def _write_selection(out: Path, config: ProbeConfig, measurements: LayerMeasurements, selection: Selection,
                     localisation: Localisation | None, model_info, embedded_metrics, run_info) -> dict[str, Path]:
    """What depends on the selection: layer_plan.json, figures/, report.md / .json, config.json."""
    paths = {"config": config.save(out), "plan": selection.plan.save(out / "layer_plan.json")}
    drawn = draw_all(measurements, selection)
    extra = []
    if localisation is not None:
        drawn.update(draw_localisation(localisation))
        extra = localisation_sentences(localisation)
    figures = save_figures(drawn, out / "figures")
    paths.update(write_report(out, measurements, selection, figures=figures, model_info=model_info,
                              embedded_metrics=embedded_metrics, run_info=run_info, extra_sentences=extra))
    paths["figures"] = out / "figures"
    return paths


def reselect(out: str | Path, selection: SelectionConfig) -> Selection:
    """Select again in a finished probe-layers folder with another rule or its settings, from the measurements it
    saved (no model is loaded and nothing is measured again): the evidence is tested again with the run's own
    evidence settings (the same bootstrap seed, so the same evidence), and layer_plan.json, the report, its
    figures and config.json are written anew; the measurements and localisation stay as they are."""
    out = Path(out)
    config = ProbeConfig.load(out / "config.json")
    config.selection = selection
    measurements = LayerMeasurements.load(out / "measurements.json")
    chosen = select(assess_evidence(measurements, config), config)
    chosen.plan.validate(measurements.n_layers)
    localisation = Localisation.load(out / "localisation") if (out / "localisation" / "localisation.json").is_file() \
        else None
    before = json.loads((out / "report.json").read_text(encoding="utf-8"))
    run_info = {**before.get("run", {}), "config": config.to_dict()}
    _write_selection(out, config, measurements, chosen, localisation, before.get("model"),
                     before.get("embedded_metrics"), run_info)
    return chosen


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
