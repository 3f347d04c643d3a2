"""Running a layer ablation study: train a copy of the base model per (variant, seed), evaluate it,
record it, and write the tables, figures and validity test when the study is done.

Evaluation, after every run: three suites of the world's test split, each holding out one thing
(heldout = "object", "template", "cue"); every metric of `SyntheticSuite.evaluate` is recorded
as "<suite>/<metric>", e.g. "object/scope_accuracy", "cue/scope_accuracy/cue=never", and every per-item
outcome as "<suite>/<outcome>" ("object/scope", "object/mcq", ...: what analysis.ablation.validity resamples
for each target). The held-out-object suite also holds `eval_mcq` four-way multiple-choice items. Retention
(R@1 among 100, zero-shot) is read from the object suite, whose affirmative captions use the training
templates.
"""
from __future__ import annotations

import contextlib
import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from analysis.ablation.aggregate import summarize_runs
from analysis.ablation.config import AblationConfig, AblationError
from analysis.ablation.figures import frontier_figure, validity_figure
from analysis.ablation.runs import (
    Shard,
    check_finished_runs,
    check_study_settings,
    load_runs,
    load_study_runs,
    plan_parts,
    runs_path,
    save_runs,
    twin_run,
)
from analysis.ablation.selector_table import plan_variant, selector_rows, selector_sentences, write_selector_table
from analysis.ablation.tables import validity_markdown, write_outputs
from analysis.ablation.validity import BREAKDOWN, HEADLINE_TARGET, TARGETS, assess, available_targets, verdict
from analysis.ablation.variants import (
    SELECTED_PLANNED,
    STEERING,
    extras_flags,
    load_selected_plan,
    resolve_variants,
    variant_blocks,
    variant_plans,
)
from analysis.compare.plan import FINETUNE_CHANGE, finetune_change_selector
from analysis.planning.selectors import RANDOM_WINDOW, SelectorPlan, missing_selectors, selector_plans, toolkit_plan
from analysis.report.figures import save_figures
from finetune.checkpoint import latest_checkpoint
from finetune.freezing import planned_parts
from finetune.plan import PlanError
from finetune.train import TrainConfig, train
from finetune.vocabulary import EXTRAS
from probing.clip.loading import resolve_device
from probing.clip.text_tower import TextTower
from probing.io import atomic_write_json, atomic_write_text, sweep_temporaries
from probing.measure.layers import LayerMeasurements
from probing.measure.steering import PUBLISHED_ALPHA, steered, steering_vectors
from probing.metrics import flatten
from probing.models.factory import create_model
from probing.synthetic.suite import SyntheticSuite

EVAL_SUITES = ("object", "template", "cue")
RETENTION_SUITE = "object"


@dataclass
class Base:
    """The base model and what every run shares."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    world: Any
    model_name: str
    label: str  # for titles: "embedded default model", "ViT-B-32 + openai"
    bundle: Any = None  # the ModelBundle it came from (its checkpoint, for provenance.json)

    @property
    def n_layers(self) -> int:

        return TextTower.from_model(self.model).n_layers


def load_base(config: AblationConfig, *, progress: bool = True) -> Base:
    """The model on CPU (each run trains a copy) and the synthetic world that goes with it."""

    bundle = create_model(config.model, config.pretrained, device="cpu", seed=config.world_seed)
    if bundle.world is None:
        raise AblationError(f"the ablation trains and evaluates on the synthetic world, but {bundle.world_note}")
    return Base(bundle.model, bundle.preprocess, bundle.tokenizer, bundle.world, bundle.name, bundle.label, bundle)


@dataclass
class Evaluation:
    """The held-out suites and their image features, built once per study."""

    suites: dict[str, Any]
    image_features: dict[str, dict[str, Any]]

    @classmethod
    def build(cls, base: Base, config: AblationConfig) -> "Evaluation":

        suites = {
            heldout: SyntheticSuite.build(
                base.world,
                n=config.eval_n,
                n_classification=config.eval_n_classification,
                split="test",
                heldout=heldout,
                seed=config.eval_seed,
                n_mcq=config.eval_mcq if heldout == RETENTION_SUITE else 0,
            )
            for heldout in EVAL_SUITES
        }
        base.model.eval()
        features = {heldout: suite.image_features(base.model, base.preprocess) for heldout, suite in suites.items()}
        return cls(suites, features)

    def evaluate(self, model, base: Base) -> tuple[dict[str, float], dict[str, list]]:
        """({"<suite>/<metric>": value}, {"<suite>/<outcome>": per-item outcomes}) of a model."""

        model.eval()
        metrics: dict[str, float] = {}
        items: dict[str, list[int]] = {}
        for heldout, suite in self.suites.items():
            outcomes: dict[str, list[int]] = {}
            sections = suite.evaluate(
                model, base.preprocess, base.tokenizer, image_features=self.image_features[heldout], outcomes=outcomes
            )
            metrics.update({f"{heldout}/{key}": value for key, value in flatten(sections).items()})
            items.update({f"{heldout}/{key}": values for key, values in outcomes.items()})
        return metrics, items


@dataclass
class AblationResult:
    out_dir: Path
    executed: list[tuple[str, int]]  # runs done by this call, in order
    complete: bool
    summary: dict[str, Any]
    outputs: dict[str, Path]
    # what the study found, in words: the validity verdict (with the frontier and the next point on it) and the
    # selector table's sentences on held-out scope; empty until the study holds what the validity test needs
    sentences: list[str] = field(default_factory=list)


class AblationStudy:
    """One study in one output folder: what to run, what is done, and running the rest."""

    def __init__(self, config: AblationConfig, out_dir: str | Path, *, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.config, self.out_dir, self.progress, self.log = config, Path(out_dir), progress, log
        self.base = load_base(config, progress=progress)
        self.n_layers = self.base.n_layers
        self.selected = load_selected_plan(config.plan_path, self.n_layers)
        self.selector_plans = self._selector_plans()
        names = config.variants
        if self.selector_plans:  # every selector's plan, and the windows a random window is drawn from
            k = len(self.selected.blocks)
            needed = ["frozen", "selected", "windows"] + [plan_variant(plan, k) for name, plan in
                                                          self.selector_plans.items() if name not in ("toolkit",
                                                                                                      RANDOM_WINDOW)]
            names = tuple(dict.fromkeys([*(names or ()), *needed]))
        self.variants, self.notes = resolve_variants(names, self.n_layers, has_plan=self.selected is not None,
                                                     selected_size=len(self.selected.blocks) if self.selected else None)
        self.extras = extras_flags(config.extras, self.selected)
        self.plans = variant_plans(self.variants, self.n_layers, self.extras, self.selected)
        self._examples = None
        self._second = None
        self._evaluation: Evaluation | None = None

    def _selector_plans(self) -> dict[str, SelectorPlan]:
        """The asked-for selectors' plans, from the measurements probe-layers saved beside the plan file, and the
        finetune_change selector's when the study names a comparison file."""
        plans: dict[str, SelectorPlan] = {}
        if self.config.selectors:
            path = Path(self.config.plan_path).parent / "measurements.json"
            if not path.is_file():
                raise AblationError(f"the selectors read the measurements probe-layers saved beside the plan: {path} "
                                    "is missing")
            measurements = LayerMeasurements.load(path)
            plans = selector_plans(measurements, self.selected.blocks, names=self.config.selectors)
            for name, why in missing_selectors(measurements, self.config.selectors).items():
                self.log(f"note: selector {name} left out: {why} ({path})")
        if self.config.comparison is not None:
            plans.setdefault("toolkit", toolkit_plan(self.selected.blocks))  # what the selector is judged against
            try:
                plans[FINETUNE_CHANGE] = finetune_change_selector(self.config.comparison, len(self.selected.blocks),
                                                                  model=self.config.comparison_model)
            except PlanError as error:
                raise AblationError(str(error)) from None
        return plans

    # -- bookkeeping --
    def planned(self) -> list[tuple[str, int]]:
        """Every (variant, seed) of the study; seed-major, so that a partial study covers every variant early."""
        return [(variant, seed) for seed in self.config.seeds for variant in self.variants]

    def own_runs(self, runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The finished runs this study plans (a folder may hold runs of variants or seeds no longer asked for)."""
        wanted = set(self.planned())
        return [run for run in runs if (run["variant"], int(run["seed"])) in wanted]

    def validity_runs(self, runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The runs the validity test reads: this study's, and every finished run of a block-named variant (window,
        layer, set) no longer planned that trained what its name trains now, at this study's budget (e.g. the
        windows around an earlier plan's size): each is one more plan on the frontier and among the plans of any
        size. Its seeds must be this study's."""
        mine = self.own_runs(runs)
        planned = {variant for variant, _ in self.planned()}
        seeds = set(self.config.seeds)
        extra = [run for run in runs if run["variant"] not in planned and int(run["seed"]) in seeds
                 and variant_blocks(run["variant"]) is not None
                 and max(variant_blocks(run["variant"])) < self.n_layers
                 and plan_parts(run.get("plan")) == plan_parts(
                     variant_plans([run["variant"]], self.n_layers, self.extras)[run["variant"]])]
        complete = {v for v in {run["variant"] for run in extra}
                    if {int(r["seed"]) for r in extra if r["variant"] == v} == seeds}
        return mine + [run for run in extra if run["variant"] in complete]

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
    def second_examples(self) -> list | None:
        """The second source's items (the world's multiple choice, train split), or None without a second loss."""
        if self.config.second_loss is None:
            return None
        if self._second is None:
            self._second = self.base.world.mcq_items(self.config.n_second, "train", seed=self.config.data_seed + 1)
        return self._second

    @property
    def evaluation(self) -> Evaluation:
        if self._evaluation is None:
            self._evaluation = Evaluation.build(self.base, self.config)
        return self._evaluation

    # -- one run --
    def train_config(self, variant: str, seed: int):

        config = self.config
        return TrainConfig(loss=config.loss, loss_kwargs=dict(config.loss_kwargs), second_loss=config.second_loss,
                           second_weight=config.second_weight, lr=config.lr,
                           weight_decay=config.weight_decay, warmup_steps=config.warmup_steps, steps=config.steps,
                           batch_size=config.batch_size, seed=seed, device=config.device,
                           log_every=max(1, config.steps // 20), ckpt_every=config.ckpt_every,
                           out_dir=str(self.run_dir(variant, seed)), resume=True, model_name=self.base.model_name,
                           tensorboard=False, progress=False, image_workers=config.num_workers,
                           feature_cache=config.feature_cache)

    def run_one(self, variant: str, seed: int) -> dict[str, Any]:
        """Train a fresh copy of the base model as `variant` with `seed`, evaluate it, return its record."""


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
                result = train(model, self.base.tokenizer, self.base.preprocess, self.examples, plan, train_config,
                               self.second_examples)
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
    def run(self, *, max_runs: int | None = None, shard: Shard | None = None) -> AblationResult:
        """Run what is not done yet (at most `max_runs` of it; with `shard`, only that shard's share, into its
        own runs file), then write table, summary and figure from every run of the folder."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(self.out_dir)  # the runs file or a table a killed study was writing
        check_study_settings(self.out_dir, self.config)
        own_path = runs_path(self.out_dir, shard)
        own = load_runs(own_path)
        runs = load_study_runs(self.out_dir)
        check_finished_runs(runs, self.plans)
        for note in self.notes:
            self.log(f"note: {note}")
        todo = self.pending(runs)
        skipped = len(self.planned()) - len(todo)
        if skipped:
            self.log(f"{skipped} of {len(self.planned())} runs already done in {self.out_dir}: skipping them")
        mine = todo if shard is None else [key for key in todo if shard.takes(self.planned().index(key))]
        batch = mine if max_runs is None else mine[:max_runs]
        executed = []
        desc = "ablation runs" if shard is None else f"ablation runs (shard {shard.index}/{shard.count})"
        bar = tqdm(batch, desc=desc, unit="run", disable=not self.progress, dynamic_ncols=True)
        for variant, seed in bar:
            bar.set_postfix_str(f"{variant} seed {seed}")
            twin = twin_run([*runs, *own], self.plans[variant], seed)
            record = self.run_one(variant, seed) if twin is None else {**twin, "variant": variant,
                                                                       "reused_from": twin["variant"]}
            own.append(record)
            save_runs(own_path, own)
            self._tidy(variant, seed)
            executed.append((variant, seed))
        bar.close()
        runs = load_study_runs(self.out_dir)  # other shards may have finished runs meanwhile
        complete = not self.pending(runs)
        summary = self.summarize(runs, complete=complete)
        outputs = write_outputs(self.out_dir, summary, self.own_runs(runs))
        validity, sentences = self.write_validity(runs)
        outputs.update(validity)
        return AblationResult(self.out_dir, executed, complete, summary, outputs, sentences)

    def write_validity(self, runs: Sequence[dict[str, Any]]) -> tuple[dict[str, Path], list[str]]:
        """validity.json / .md / figure when the study holds what the validity test needs: the frozen
        model, the whole sweep, the selected plan (with the evidence it was chosen from) and the
        windows of its size (analysis.ablation.validity); nothing otherwise, with a note in the log."""

        if self.selected is None or not self.selected.evidence.get("components"):
            return {}, []
        chosen = self.validity_runs(runs)
        try:
            everything = assess(chosen, self.selected.evidence, self.selected.blocks, n_layers=self.n_layers,
                                groups=self.block_plans(), trainable=trainable_parameters(chosen),
                                targets=available_targets(chosen, {**TARGETS, **BREAKDOWN}))
        except (ValueError, KeyError) as error:
            self.log(f"note: no predictive-validity test: {error}")
            return {}, []
        results = {name: v for name, v in everything.items() if name in TARGETS}  # what the verdict judges
        breakdown = {name: v for name, v in everything.items() if name in BREAKDOWN}
        sentences = verdict(results)
        payload = {"sentences": sentences, "selected": self.selected.blocks,
                   "targets": {name: result.to_dict() for name, result in results.items()},
                   "breakdown": {name: result.to_dict() for name, result in breakdown.items()}}
        outputs = {
            "validity_json": atomic_write_json(self.out_dir / "validity.json", payload),
            "validity_md": atomic_write_text(self.out_dir / "validity.md",
                                             validity_markdown(results, sentences, breakdown)),
        }
        k = len(self.selected.blocks)
        figures = {"validity": validity_figure(results, self.selected.evidence),
                   "frontier": frontier_figure(results, {name: plan_variant(plan, k)
                                                         for name, plan in self.selector_plans.items()})}
        for stem, (png, pdf) in save_figures(figures, self.out_dir, dpi=300).items():
            outputs.update({f"{stem}_png": png, f"{stem}_pdf": pdf})
        if self.selector_plans:
            outputs.update(write_selector_table(self.out_dir, results, self.selector_plans))
            if HEADLINE_TARGET in results:
                sentences = sentences + selector_sentences(selector_rows(results, self.selector_plans),
                                                           HEADLINE_TARGET)
        return outputs, sentences

    def block_plans(self) -> dict[str, list[int]]:
        """The variants that train whole blocks with the study's extras (the selected plan's blocks, windows, sets,
        front / middle / back / all): the plans compared at equal size."""
        return {name: list(plan.blocks) for name, plan in self.plans.items()
                if plan is not None and plan.block_parts == "all" and name != SELECTED_PLANNED
                and all(getattr(plan, f"train_{extra}") == self.extras[f"train_{extra}"] for extra in EXTRAS)}

    def summarize(self, runs: Sequence[dict[str, Any]], *, complete: bool) -> dict[str, Any]:
        chosen = self.own_runs(runs)
        done = len(chosen)
        notes = list(self.notes)
        if not complete:
            notes.append(f"incomplete: {done} of {len(self.planned())} runs done; run the same command again to "
                         "continue")
        return summarize_runs(chosen, variants=self.variants, plans=self.plans, n_layers=self.n_layers,
                              header=self.header(), notes=notes, complete=complete)

    def header(self) -> dict[str, Any]:
        config = self.config
        extras = [name for name in EXTRAS if self.extras[f"train_{name}"]]
        second = ({} if config.second_loss is None else
                  {"second_loss": config.second_loss, "second_weight": config.second_weight})
        return {"model": self.base.label, "n_layers": self.n_layers, "synthetic": True, "loss": config.loss,
                "loss_kwargs": config.loss_kwargs, **second, "steps": config.steps, "batch_size": config.batch_size,
                "lr": config.lr, "warmup_steps": config.warmup_steps, "n_train": config.n_train,
                "seeds": list(config.seeds), "eval_n": config.eval_n, "extras": extras,
                "selected_plan": None if self.selected is None else self.selected.describe()}


@contextlib.contextmanager
def _output_to(path: Path):
    with open(path, "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        yield


def trainable_parameters(runs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Variant -> trainable parameters, as its runs recorded them (0 for frozen and steering)."""
    return {run["variant"]: int(run.get("trained_parameters") or 0) for run in runs}


def run_ablation(config: AblationConfig, out_dir: str | Path, *, max_runs: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, shard: Shard | None = None) -> AblationResult:
    """Run (or continue) the ablation study of `config` in `out_dir` (or its `shard`); see the module docstring."""
    return AblationStudy(config, out_dir, progress=progress, log=log).run(max_runs=max_runs, shard=shard)
