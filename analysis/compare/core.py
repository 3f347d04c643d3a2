"""`compare_checkpoints`: where did a fine-tune change CLIP's text tower? Weights, computed states, probes.

    from probing.models.factory import create_model
    from analysis.compare import compare_checkpoints

    base = create_model("ViT-B-32-quickgelu", "openai.pt")
    tuned = create_model("ViT-B-32-quickgelu", "conclip.pt")
    comparison = compare_checkpoints(base, {"CoN-CLIP": tuned})
    comparison.block_table()          # blocks x models: relative weight change
    comparison.states                 # per layer: CKA and cosine, affirmative and negated captions
    comparison.probes                 # per layer: probe accuracy of every model on the same splits
    comparison.sentences              # what the report says

Three parts, each optional (CompareConfig.parts):
- weights (analysis.compare.weights): relative change per tensor, sub-module, block and outside part;
  a tuned model whose text tower is bitwise the base's gets the statement "no weight differs".
- states (analysis.compare.states): linear CKA and mean cosine between the base's and the tuned model's
  EOT states of the same captions, per layer, affirmative and negated captions separately, with bootstrap
  intervals over captions.
- probes (analysis.compare.decoding): per-layer probe accuracy of every model on the same tasks and
  held-out splits, and the paired difference tuned - base with a bootstrap interval over test items.

A tuned model whose text tower differs in shape from the base's (another depth or width) is not compared
weight by weight nor state by state: it gets a statement saying which tensor differs; its probes still run.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.compare.decoding import capture_states, paired_differences, sweep
from analysis.compare.report import sentences
from analysis.compare.result import (
    OUTPUT_LAYER,
    CompareConfig,
    Comparison,
)
from analysis.compare.states import StateSettings, compare_states
from analysis.compare.weights import (
    OUTSIDE_BLOCKS,
    compare_weights,
    shape_problem,
)
from probing.clip.loading import uses_quick_gelu
from probing.clip.text_tower import TextTower, UnsupportedTextTower
from probing.features.encode import encode_captions
from probing.measure.capture import layer_labels as resid_labels
from probing.measure.tasks import ProbeTask, synthetic_negation_task, synthetic_scope_task


def _unique_names(base_label: str, tuned: Mapping[str, Any] | Sequence[Any]) -> tuple[str, list[tuple[str, Any]]]:
    pairs = list(tuned.items()) if isinstance(tuned, Mapping) else [(getattr(b, "label", f"model {i + 1}"), b)
                                                                   for i, b in enumerate(tuned)]
    taken, named = {base_label}, []
    for name, bundle in pairs:
        unique, k = str(name), 2
        while unique in taken:
            unique, k = f"{name} ({k})", k + 1
        taken.add(unique)
        named.append((unique, bundle))
    return base_label, named


def _model_info(bundle, role: str) -> dict:
    info = dict(getattr(bundle, "info", {}) or {})
    info.update(role=role, label=getattr(bundle, "label", None),
                checkpoint=None if getattr(bundle, "checkpoint", None) is None else str(bundle.checkpoint))
    return info


def state_groups(task: ProbeTask, n_per_group: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of the negation task's affirmative (label 0) and negated (label 1) captions, at most n each
    (a seeded draw), for the state comparison."""
    rng = np.random.default_rng([seed, 0x57A7E])
    groups = {}
    for name, label in (("affirmative", 0), ("negated", 1)):
        members = np.flatnonzero(task.labels == label)
        if len(members) > n_per_group:
            members = np.sort(rng.choice(members, n_per_group, replace=False))
        if len(members):
            groups[name] = members
    return groups


def default_tasks(world, config: CompareConfig) -> list[ProbeTask]:
    """The synthetic world's negation and scope tasks at the config's sizes."""

    return [synthetic_negation_task(world, n_train=config.n_train, n_test=config.n_test, seed=config.seed),
            synthetic_scope_task(world, n_train=config.n_train, n_test=config.n_test, seed=config.seed)]


def compare_checkpoints(base_bundle, tuned_bundles: Mapping[str, Any] | Sequence[Any],
                        tasks: Sequence[ProbeTask] | None = None, *,
                        captions: Mapping[str, Sequence[str]] | None = None, config: CompareConfig = CompareConfig(),
                        progress: bool = False, say=None) -> Comparison:
    """Compare every tuned model with the base (ModelBundles of probing.models.factory, or anything with
    .model and .tokenizer and, for the default tasks, .world).

    tuned_bundles: {name: bundle}, or a list (named by their labels).
    tasks: the probing tasks (probing.measure.tasks); None: the base's synthetic world's negation and scope
        tasks (no world: no probes, said in notes). The states are compared on the first task named
        "negation" (affirmative = label 0, negated = label 1) unless `captions` gives the groups.
    captions: {group: captions} for the state comparison, e.g. {"affirmative": [...], "negated": [...]}.
    say: a function that takes progress lines (e.g. print), or None.
    """
    say = say or (lambda message: None)
    base_name, tuned = _unique_names(getattr(base_bundle, "label", None) or "base", tuned_bundles)
    if not tuned:
        raise ValueError("no tuned model to compare with the base")

    tower = TextTower.from_model(base_bundle.model)
    n_layers = tower.n_layers

    labels = resid_labels(n_layers)
    models = {base_name: _model_info(base_bundle, "base")}
    models[base_name].update(status="base", statement=None, n_layers=n_layers)
    notes: list[str] = []
    comparable = []
    for name, bundle in tuned:
        info = _model_info(bundle, "tuned")
        try:
            problem = shape_problem(base_bundle.model, bundle.model)
        except UnsupportedTextTower as error:
            problem = f"its text tower cannot be read: {error}"
        info.update(status="incomparable" if problem else "compared", statement=problem)
        try:
            info["n_layers"] = TextTower.from_model(bundle.model).n_layers
        except UnsupportedTextTower:
            info["n_layers"] = None
        models[name] = info
        if problem is None:
            comparable.append((name, bundle))

    weights, tensors = [], []
    if "weights" in config.parts:
        for name, bundle in comparable:
            say(f"weights: {name}")
            change = compare_weights(base_bundle.model, bundle.model)
            weights.append(change.parts.assign(model=name))
            tensors.append(change.tensors.assign(model=name))
            models[name]["text_identical"] = change.text_identical
            models[name]["image_identical"] = change.image_identical
            if change.statement:
                if uses_quick_gelu(base_bundle.model) != uses_quick_gelu(bundle.model):
                    models[name].update(statement=f"{change.statement}, but one of the two builds QuickGELU and the "
                                                  "other GELU, so they compute different states")
                else:
                    models[name].update(status="identical", statement=change.statement)
    identical = [name for name, _ in tuned if models[name]["status"] == "identical"]
    if identical and wants_data_parts(config):
        notes.append(f"{', '.join(identical)}: no weight differs, so states and probes are the base's and were not "
                     "computed again")
    comparable = [(name, bundle) for name, bundle in comparable if name not in identical]

    if tasks is None and wants_data_parts(config):
        world = getattr(base_bundle, "world", None)
        if world is None:
            note = getattr(base_bundle, "world_note", None) or "the base model has no synthetic world"
            notes.append(f"no states and no probes: {note}; pass tasks (or --data) to compare them")
            tasks = []
        else:
            tasks = default_tasks(world, config)
            for name, bundle in tuned:
                if getattr(bundle, "world_recorded", False) and getattr(bundle, "world", None) is not None \
                        and bundle.world.config != world.config:
                    notes.append(f"{name} records another synthetic world than the base's: every model is probed on "
                                 "the base's world's captions")
    tasks = list(tasks or [])

    features: dict[tuple[str, str], np.ndarray] = {}  # (model, task) -> [n_layers + 1, n, d]
    all_models = [(base_name, base_bundle)] + [(name, bundle) for name, bundle in tuned if name not in identical]
    probe_rows, difference_rows, sweeps = [], [], {}
    if "probes" in config.parts and tasks:
        for task in tasks:
            for name, bundle in all_models:
                say(f"probes: {task.name} on {name}")
                features[(name, task.name)] = capture_states(bundle.model, bundle.tokenizer, task.captions,
                                                             batch_size=config.batch_size, progress=progress,
                                                             desc=f"{task.name}: {name}")
                result = sweep(features[(name, task.name)], task, seeds=config.seeds, probes=config.probes)
                sweeps[(name, task.name)] = result
                if captions is not None or task.name != "negation":  # only the negation task's feed the states
                    del features[(name, task.name)]
                probe_rows += [{"model": name, "task": task.name, **row} for row in result.summary]
            for name, _ in all_models[1:]:
                if models[name]["n_layers"] == n_layers:
                    difference_rows += [{"model": name, "task": task.name, **row} for row in paired_differences(
                        sweeps[(name, task.name)], sweeps[(base_name, task.name)], n_boot=config.probe_boot,
                        confidence=config.confidence, seed=config.seed)]

    state_rows = []
    if "states" in config.parts and comparable:
        state_rows = _compare_states(base_name, base_bundle, comparable, tasks, captions, features, labels, config,
                                     notes, progress, say)

    comparison = Comparison(
        base=base_name, models=models, weights=_frame(weights), tensors=_frame(tensors),
        states=pd.DataFrame(state_rows), probes=pd.DataFrame(probe_rows),
        probe_differences=pd.DataFrame(difference_rows), sentences=[], notes=notes, config=config,
        n_layers=n_layers, layer_labels=labels + [OUTPUT_LAYER],
        meta={"tasks": [{"name": t.name, "n_captions": len(t.captions), "n_train": len(t.train),
                         "tests": {s: len(i) for s, i in t.tests.items()}, **t.meta} for t in tasks]})

    comparison.sentences = sentences(comparison)
    return comparison


def wants_data_parts(config: CompareConfig) -> bool:
    """Whether the comparison needs captions (states or probes)."""
    return bool({"states", "probes"} & set(config.parts))


def _frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    return frame[["model"] + [c for c in frame.columns if c != "model"]]


def _compare_states(base_name, base_bundle, comparable, tasks, captions, features, labels, config, notes, progress,
                    say) -> list[dict]:

    if captions is not None:
        texts = [c for group in captions.values() for c in group]
        groups, start = {}, 0
        for group, members in captions.items():
            groups[group] = np.arange(start, start + len(members))
            start += len(members)
        source = None
    else:
        task = next((t for t in tasks if t.name == "negation"), None)
        if task is None:
            notes.append("no states compared: no negation task and no captions given")
            return []
        groups = state_groups(task, config.n_states, config.seed)
        chosen = np.unique(np.concatenate(list(groups.values())))
        position = {int(i): k for k, i in enumerate(chosen)}
        groups = {g: np.array([position[int(i)] for i in members]) for g, members in groups.items()}
        texts = [task.captions[i] for i in chosen]
        source = (task.name, chosen)
    if not texts:
        notes.append("no states compared: no captions")
        return []

    def states_of(name, bundle):
        if source is not None and (name, source[0]) in features:
            resid = features[(name, source[0])][:, source[1]]
        else:
            resid = capture_states(bundle.model, bundle.tokenizer, texts, batch_size=config.batch_size,
                                   progress=progress, desc=f"states: {name}")
        output = encode_captions(bundle.model, bundle.tokenizer, texts, batch_size=config.batch_size,
                                 normalize=False).numpy()
        return list(resid) + [output]

    say(f"states: {base_name}")
    base_states = states_of(base_name, base_bundle)
    rows = []
    settings = StateSettings(n_boot=config.n_boot, confidence=config.confidence, seed=config.seed)
    for name, bundle in comparable:
        say(f"states: {name}")
        tuned_states = states_of(name, bundle)
        rows += [{"model": name, **row} for row in compare_states(base_states, tuned_states, groups,
                                                                  layer_labels=labels + [OUTPUT_LAYER],
                                                                  settings=settings)]
    return rows


__all__ = ["CompareConfig", "Comparison", "compare_checkpoints", "default_tasks", "state_groups", "OUTSIDE_BLOCKS"]
