"""The validation study: is the layer plan evidence, and is it the best advice? (docs/VALIDATION.md)

For each model of `MODELS`: `probe-layers` (analysis.pipeline: evidence against 10 null models, the plan), then,
for the models that are ablated, `ablate-layers` with the plan at one budget (analysis.ablation.runner): frozen,
the selected plan (with the study's extras and as finetune-layers trains it), windows of sizes around the plan's
(every size on the default model), the single-block sweep, every baseline selector's plan (analysis.planning.
selectors) and, on the default model, the anchors' choices; then predictive validity on every target, the
frontier, and the selector table. On the MCQ_ARM models, an arm outside the verdict trains the single blocks again
with the multiple choice as a second source (`run_mcq_arm`).

Pre-registration. The selection rule and its settings (analysis.planning.selection's defaults: the lead rule,
share 0.8, consensus 0.5, alpha 0.05, 10 null models) may change only by the procedures of
analysis.ablation.rule_tuning, applied to the development models (`role="development"`: default and late) and
frozen in a commit (`freeze_tuning`: the share procedure kept 0.8; the size procedure replaced the window rule by
the lead rule, RULE_COMMIT), then judged on the held-out models (seed2, depth6, middle and frontfrozen, read before
the size procedure was declared; islands and early, blind). The development models' ablations run the plan of every
candidate. Each model's reason for being in the study is written below, before its ablation ran. Randomly
initialised towers are probed only: the rule must select nothing on them. When the rule changes, a finished probe
is selected again from its measurements (analysis.pipeline.reselect) and the ablation's runs of the earlier plan
are set aside.

Every step writes its own folder and is skipped when done (the ablation is resumable run by run, and can be split
over processes with `shard`), so an interrupted study continues where it stopped. Results are collected by
scripts/make_results.py.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.ablation.config import AblationConfig
from analysis.ablation.rule_tuning import (
    DevelopmentModel,
    Tuning,
    candidate_variants,
    size_variants,
    tune_share,
    tune_size,
    tuning_from_dict,
    tuning_to_dict,
)
from analysis.ablation.runner import AblationStudy
from analysis.ablation.runs import SUPERSEDED_FILE, Shard, load_study_runs, stale_variants, supersede_runs
from analysis.ablation.validity import from_json
from analysis.pipeline import reselect, run
from analysis.planning.selection import SelectionError
from analysis.probe_config import ModelSpec, ProbeConfig
from analysis.runtime import apply_threads
from probing.io import atomic_write_json
from probing.measure.settings import LocaliseConfig, MeasureConfig

# The commit that last changed the selection rule or its evidence test (analysis.planning.{evidence,selection}:
# the null models' probes and gradient batches); later commits only moved that code, or (4001aaa) left a block
# untested where the null towers do not differ at all, which no study model's ten towers do (its largest |t| is
# about 20). The README names it.
RULE_COMMIT = "5821910"

# The budget every ablation run gets: the scope recipe's loss mix, 50 steps of batch 64 at lr 3e-3 on the same
# 2,000 synthetic training examples; 200 items per held-out suite (and 200 four-way multiple-choice items).
ABLATION = dict(loss="mix", loss_kwargs={"scope_pair": 1, "clip": 1, "conclip": 0.5, "negationclip": 0, "terms": [1]},
                steps=50, batch_size=64, lr=3e-3, warmup_steps=5, n_train=2000, eval_n=200,
                eval_n_classification=144, eval_mcq=200)
# Trained for the multiple choice: an arm added after the selector study's verdict was read, to explain it, not to
# judge the rule. On the scope recipe's runs the blocks that learn scope best cost most on the four-way multiple
# choice's hybrid answers (docs/VALIDATION.md, "The multiple choice by answer type"), and that recipe never trains
# the multiple choice, which NegBench's recipe does beside its contrastive loss. The arm trains the frozen model's
# every single block (the plan and every baseline's plan among them) with the same recipe plus NegBench's MCQ loss
# at weight 1 on the world's training items, on `late` (development: the plan's cost there was largest) and `early`
# (blind: its cost there was as large as on `islands`, the other blind model), asking whether the cost is the
# recipe's or the block's. Written, with its models and weight, before any of its runs.
# `islands` (blind, the third model whose plan trailed the baselines on the multiple choice, and the one whose plan
# lost the most hybrid answers of all) was added in its own commit after the arm on late and early had been read,
# before any of its own arm's runs, with what those two predict written first: if the cost is the recipe's, its
# plan's block (2) no longer loses hybrid answers beyond the noise and no longer trails any baseline there.
MCQ_ARM = ("late", "early", "islands")
MCQ_ARM_FOLDER = "ablation_mcq"
MCQ_TRAINING = dict(second_loss="negbench_mcq", second_weight=1.0, n_second=2000)
TUNING_FILE = "rule_tuning.json"  # the procedures' outcomes, frozen when the rule changed (freeze_tuning)
WAIT_SECONDS = 30  # how often a shard other than the first looks for the first shard's probe or setting aside
# Where did fine-tunes of the default model change it (docs/VALIDATION.md, "Where the fine-tunes changed the
# model")? The selected plan as finetune-layers trains it and the anchors' front six blocks and whole tower (each
# with its extras), at the ablation's budget, seed 0, kept on disk; scripts/validation_study.py --finetunes adds
# the scope recipe and compares them all with the base. The whole-tower fine-tune's change is the default model's
# finetune_change selector (analysis.compare.plan), judged in its ablation beside the other selectors.
FINETUNES = ("selected_planned", "omni_front", "omni_whole")
FINETUNE_SOURCE = "omni_whole"
EVERY_SIZE = "frozen,selected,selected_planned,sweep,windows-2,windows-3,windows-4,windows-6,windows-12,anchors"
NEAR_SIZE = "frozen,selected,selected_planned,sweep,windows-near"


@dataclass(frozen=True)
class StudyModel:
    """One model of the study, and why it is there."""

    name: str  # its folder: <out>/<name>/{probe,ablation}
    model: ModelSpec
    reason: str
    role: str = "held-out"  # "development" (the rule may be tuned on it), "held-out" (judges it), "null" (no plan)
    seed: int = 0  # the probe run's seed (random weights: their init)
    ablate: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)  # the ablation's training seeds
    variants: str = NEAR_SIZE
    probe: dict = field(default_factory=dict)  # ProbeConfig / MeasureConfig overrides (random ViT-B-32: smaller)
    # held-out: whether its ablation was first read after the current rule was frozen (a blind test of it); the
    # models ablated under the earlier window rule were read before the size procedure was declared
    blind: bool = False


MODELS: tuple[StudyModel, ...] = (
    StudyModel("default", ModelSpec("embedded:default"), role="development", variants=EVERY_SIZE,
               reason="the shipped model: every window size (1, 2, 3, 4, 6, 12) and the anchors with and without "
                      "their extras, so that the best plan of any size is known"),
    StudyModel("late", ModelSpec("embedded:late"), role="development",
               reason="control: attention dead in blocks 0-5, scope computable only in 6-11"),
    StudyModel("seed2", ModelSpec("embedded:seed2"), reason="the default recipe with another pretraining seed"),
    StudyModel("depth6", ModelSpec("embedded:depth6"), reason="the default recipe with a 6-block text tower"),
    StudyModel("middle", ModelSpec("embedded:middle"),
               reason="attention only in blocks 4-7: scope is computable only in the middle, and on `late` the first "
                      "live-attention block gained most alone, so the best plan should start at block 4, not 0-1, "
                      "while raw gradient norms (front-loaded on any tower) and a fixed front still point at 0-1"),
    StudyModel("frontfrozen", ModelSpec("embedded:frontfrozen"),
               reason="blocks 0-5 left at their random init through pretraining: what the model learnt sits in "
                      "6-11 and its front blocks look like a null tower's, so the evidence should sit in the back; "
                      "whether training the random front helps is what the ablation answers"),
    StudyModel("islands", ModelSpec("embedded:islands"), blind=True,
               reason="attention only in blocks 2-3 and 8-9: scope can be computed in either pair and which one "
                      "pretraining uses is not known before measuring; blocks 0-1, where raw gradient norms and a "
                      "fixed front point, cannot relate the cue to its noun. Built after every other model's "
                      "ablation was read, to judge the size rule on a model no rule was chosen or read on"),
    StudyModel("early", ModelSpec("embedded:early"), blind=True,
               reason="attention only in blocks 2-5, one contiguous span: on islands, the one blind model before it, "
                      "the plan (its first live block, 2) did no better than the front block, and whether that "
                      "comes from its two separated pairs or from live attention starting two blocks from the front "
                      "is not known; here the span starts where islands' first pair does, with no second span. "
                      "Blocks 0-1, where raw gradient norms and a fixed front point, cannot relate the cue to its "
                      "noun. Built after islands was read and the lead rule frozen (unchanged since), a second blind "
                      "test of it"),
    *(StudyModel(f"random-tiny/seed{seed}", ModelSpec("negclip-tiny"), role="null", seed=seed, ablate=False,
                 reason="a randomly initialised tower: the rule must select nothing") for seed in (1, 2, 3)),
    *(StudyModel(f"random-b32/seed{seed}", ModelSpec("ViT-B-32"), role="null", seed=seed, ablate=False,
                 probe={"n_train": 1000, "n_test": 300, "measurements": ("probes", "sensitivity", "gradnorms")},
                 reason="a randomly initialised ViT-B-32 (CLIP's real width): the rule must select nothing")
      for seed in (1, 2)),
)


def probe_config(model: StudyModel) -> ProbeConfig:
    """The probe-layers settings of the study: the defaults, 10 null models, one thread, no progress bars."""
    overrides = dict(model.probe)
    data = {key: overrides.pop(key) for key in ("n_train", "n_test") if key in overrides}
    measure = MeasureConfig(seed=model.seed, **overrides)
    config = ProbeConfig(model=model.model, seed=model.seed, null_models=10, measure=measure, threads=1,
                         localise=LocaliseConfig(seed=model.seed) if model.ablate else None)
    if data:
        config.data = dataclasses.replace(config.data, **data)
    config.evidence = dataclasses.replace(config.evidence, seed=model.seed)
    return config


def ablation_config(model: StudyModel, plan: Path, *, comparison: Path | None = None) -> AblationConfig:
    """The model's ablation: with a plan, its variants and every selector (and finetune_change, when a comparison
    of the model's fine-tunes exists); on a development model also the plan of every share the rule's tuning may
    choose (analysis.ablation.rule_tuning); without a plan, the frozen model and the sweep only."""
    record = json.loads(plan.read_text())
    blocks = record["blocks"]
    variants = model.variants if blocks else "frozen,sweep"
    if blocks and model.role == "development":  # the plan of every share and size rule the procedures may choose
        evidence = record["evidence"]
        variants = ",".join(dict.fromkeys([*variants.split(","), *candidate_variants(evidence["combined"]),
                                           *size_variants(evidence["combined"], evidence.get("stability"))]))
    follow = comparison is not None and comparison.is_file() and bool(blocks)
    return AblationConfig(model=model.model.name, pretrained=model.model.pretrained, seeds=model.seeds,
                          variants=tuple(variants.split(",")), plan_path=str(plan) if blocks else None,
                          selectors=("all",) if blocks else None, device="cpu",
                          comparison=str(comparison) if follow else None,
                          comparison_model=FINETUNE_SOURCE if follow else None, **ABLATION)


def development_models(out: str | Path) -> list[DevelopmentModel]:
    """What the rule's pre-registered procedures (analysis.ablation.rule_tuning) read of the development models'
    probe and ablation folders under `out` (a study's output or its copy in docs/results/validation)."""
    models = []
    for model in MODELS:
        if model.role != "development":
            continue
        plan = Path(out) / model.name / "probe" / "layer_plan.json"
        validity = Path(out) / model.name / "ablation" / "validity.json"
        if not plan.is_file():
            raise FileNotFoundError(f"{plan}: the development model {model.name} has not been probed")
        evidence = json.loads(plan.read_text(encoding="utf-8"))["evidence"]
        results = from_json(json.loads(validity.read_text(encoding="utf-8"))) if validity.is_file() else None
        models.append(DevelopmentModel(model.name, evidence["combined"], results, evidence.get("stability")))
    return models


def share_tuning(out: str | Path) -> Tuning:
    """Procedure 1 of analysis.ablation.rule_tuning: the window rule's share."""
    return tune_share(development_models(out))


def size_tuning(out: str | Path) -> Tuning:
    """Procedure 2 of analysis.ablation.rule_tuning: the rule's size."""
    return tune_size(development_models(out))


def freeze_tuning(out: str | Path) -> Path:
    """Apply both procedures to the development models' results under `out` and write their outcomes to
    `out`/TUNING_FILE, once: the record is what the rule's change rests on, frozen in the commit that makes it (the
    development models' validity is later computed against the new rule's plan, so the procedures cannot be
    re-applied to it)."""
    path = Path(out) / TUNING_FILE
    if path.exists():
        raise FileExistsError(f"{path}: the procedures' outcomes are frozen; delete it only to redo the procedures "
                              "on the development models, never after the held-out models were judged")
    record = {"share": tuning_to_dict(share_tuning(out)), "size": tuning_to_dict(size_tuning(out))}
    atomic_write_json(path, record)
    return path


def frozen_tuning(out: str | Path) -> dict[str, Tuning]:
    """The frozen outcomes of the procedures ("share", "size"), as freeze_tuning wrote them."""
    path = Path(out) / TUNING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the procedures' outcomes were never frozen (scripts/validation_study.py "
                                "--freeze-tuning)")
    return {name: tuning_from_dict(record) for name, record in json.loads(path.read_text(encoding="utf-8")).items()}


def finetune_folder(out: Path) -> Path:
    return Path(out) / "default" / "finetunes"


def comparison_file(out: Path) -> Path:
    return finetune_folder(out) / "compare" / "comparison.json"


def study_without_stale_runs(config: AblationConfig, folder: Path, *, label: str, shard: Shard | None = None,
                             log: Callable[[str], None] = print) -> AblationStudy:
    """The AblationStudy of `config` in `folder`, once the finished runs of every variant whose plan changed since
    they ran (e.g. `selected` after the selection rule changed; a variant whose plan stayed the same keeps its runs)
    are set aside (supersede_runs) to be trained again. Only the first shard, or an unsharded run, moves them; another
    shard waits until they are gone, so that no two processes move the same folders."""
    study = AblationStudy(config, folder, progress=False, log=log)
    stale = stale_variants(load_study_runs(folder), study.plans)
    if stale and (shard is None or shard.index == 1):
        moved = supersede_runs(folder, stale)
        log(f"{label}: {moved} run(s) of an earlier plan set aside ({', '.join(stale)}; {folder / SUPERSEDED_FILE})")
    elif stale:
        log(f"{label}: waiting for shard 1 to set aside the runs of an earlier plan ({', '.join(stale)}; {folder})")
        while stale_variants(load_study_runs(folder), study.plans):
            time.sleep(WAIT_SECONDS)
    return study


def run_finetunes(out: Path, *, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train (unless done) the FINETUNES of the default model, kept on disk; {variant: its model file}."""
    apply_threads(1)
    model = MODELS[0]
    config = dataclasses.replace(ablation_config(model, Path(out) / model.name / "probe" / "layer_plan.json"),
                                 variants=FINETUNES, seeds=(0,), selectors=None, keep_models=True)
    study = study_without_stale_runs(config, finetune_folder(out) / "ablation", label="fine-tunes", log=log)
    study.run()
    return {variant: study.run_dir(variant, 0) / "model.safetensors" for variant in FINETUNES}


def run_model(model: StudyModel, out: Path, *, shard: Shard | None = None, log: Callable[[str], None] = print) -> None:
    """Probe (unless done), then ablate (resumably; a shard's share only) one model of the study."""
    apply_threads(1)
    probe_dir = out / model.name / "probe"
    config = probe_config(model)
    if shard is not None and shard.index > 1:  # the first shard probes; the others wait for its plan
        if not model.ablate:
            return
        if not current_plan(probe_dir, config):
            log(f"{model.name}: waiting for shard 1's probe-layers run ({probe_dir})")
        while not current_plan(probe_dir, config):
            time.sleep(WAIT_SECONDS)
    if not (probe_dir / "report.json").is_file():
        log(f"{model.name}: probe-layers -> {probe_dir}")
        try:
            run(config, probe_dir)
        except SelectionError as error:
            log(f"{model.name}: no plan ({error})")
    elif not current_plan(probe_dir, config):
        # the rule changed since this probe ran: the same measurements and evidence, selected again (the ablation's
        # runs of a plan that changed with it are set aside below)
        log(f"{model.name}: the selection rule changed since {probe_dir} was probed: selecting again from its "
            "measurements")
        reselect(probe_dir, config.selection)
    if not model.ablate:
        return
    plan = probe_dir / "layer_plan.json"
    # only the default model's fine-tunes are compared: the finetune_change selector joins its ablation alone
    config = ablation_config(model, plan, comparison=comparison_file(out) if model is MODELS[0] else None)
    ablation_dir = out / model.name / "ablation"
    log(f"{model.name}: ablate-layers -> {ablation_dir}" + ("" if shard is None else f" (shard {shard.index}/"
                                                                                     f"{shard.count})"))
    study_without_stale_runs(config, ablation_dir, label=model.name, shard=shard, log=log).run(shard=shard)


def run_mcq_arm(out: Path, *, only: set[str] | None = None, shard: Shard | None = None,
                log: Callable[[str], None] = print) -> None:
    """The MCQ_ARM models' (or those of them named in `only`) single blocks trained with the multiple choice as a
    second source (resumable; a shard's share only), after their probe and ablation: in <out>/<model>/MCQ_ARM_FOLDER."""
    apply_threads(1)
    for model in (m for m in MODELS if m.name in MCQ_ARM and (only is None or m.name in only)):
        plan = Path(out) / model.name / "probe" / "layer_plan.json"
        if not current_plan(plan.parent, probe_config(model)):
            raise FileNotFoundError(f"{model.name}: the multiple-choice arm needs the study's probe of it ({plan})")
        config = dataclasses.replace(ablation_config(model, plan), variants=("frozen", "selected", "sweep"),
                                     **MCQ_TRAINING)
        folder = Path(out) / model.name / MCQ_ARM_FOLDER
        log(f"{model.name}: ablate-layers with the multiple choice trained -> {folder}"
            + ("" if shard is None else f" (shard {shard.index}/{shard.count})"))
        study_without_stale_runs(config, folder, label=model.name, shard=shard, log=log).run(shard=shard)


def current_plan(probe_dir: Path, config: ProbeConfig) -> bool:
    """Whether probe_dir holds a finished probe-layers run whose plan the study's current selection rule chose."""
    plan = probe_dir / "layer_plan.json"
    if not (probe_dir / "report.json").is_file() or not plan.is_file():
        return False
    chosen_by = json.loads(plan.read_text(encoding="utf-8"))["evidence"].get("selection_config")
    return chosen_by == dataclasses.asdict(config.selection)


def run_study(out: str | Path, *, only: set[str] | None = None, shard: Shard | None = None,
              log: Callable[[str], None] = print) -> None:
    """Every model of the study (or those named in `only`), in the order of MODELS."""
    out = Path(out)
    for model in MODELS:
        if only is None or model.name in only or model.name.split("/")[0] in only:
            run_model(model, out, shard=shard, log=log)
