# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2 · Layer evidence: which blocks should fine-tuning train?
#
# Negation-aware fine-tuning (CoN-CLIP, Omni-NegCLIP, NegationCLIP) trains either the whole text tower or,
# in Omni-NegCLIP, its front half, without layer-wise evidence for that choice. This notebook collects that
# evidence on the embedded default model and asks whether it supports a layer plan at all:
#
# * **per-layer measurements** (`measure_layers`): negation and scope probes tested on held-out cues, objects and
#   templates, with control labels; how far a negation moves a caption's EOT state against a same-size
#   non-negating edit; the relative gradient norm of each block under the fine-tuning losses; a causal check;
# * **null calibration**: every measurement is repeated on *null towers*, the same model with its text tower
#   randomly initialised again. A block counts as evidence only where the model exceeds them by more than
#   random towers differ among themselves (a t-test over the null towers, `analysis.planning.evidence`);
# * the **layer plan** the evidence supports (`analysis.planning.selection`), its stability, figures and the report;
# * **localisation** (`measure_localisation`): activation patching, heads, a joint-space lens and steering: where
#   in the tower, and at which token positions, the model computes what negation it computes.
#
# This is what the `probe-layers` command does, step by step. Several minutes on 2 CPU cores
# (`NOTEBOOK_SMALL=1`: the smoke-test build `"embedded:small"` and tiny sizes, a minute or two; its numbers say
# nothing about negation).

# %%
import time

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from analysis.probe_config import DataSpec, ModelSpec, ProbeConfig
from analysis.report.notebook import show, start
from probing.measure.settings import LocaliseConfig, MeasureConfig

run = start("02_layer_evidence")  # threads, logging, the output folder: analysis/report/notebook.py
SMALL, MODEL, BUILD, OUT, STARTED = run.small, run.model, run.build, run.out, run.started
# the probe-layers command's defaults (notebook 3 measures with the same sizes when this notebook has not run)
if SMALL:
    config = ProbeConfig(model=ModelSpec(MODEL), data=DataSpec(n_train=200, n_test=60), null_models=3,
                         measure=MeasureConfig(seeds=(0,), null_seeds=(0,), n_sensitivity=60, n_causal=100,
                                               grad_batches=1, grad_batch_size=16),
                         localise=LocaliseConfig(n_pairs=16, n_eval=100, n_steer=100, n_train=50, n_train_probe=200,
                                                 probes=("logistic",), alphas=(0.13, 1.0), n_boot=200,
                                                 components=("resid", "attn", "mlp", "head")))
else:
    config = ProbeConfig(model=ModelSpec(MODEL), localise=LocaliseConfig(components=("resid", "attn", "mlp", "head")))
config.save(OUT)  # probe-layers --config OUT/config.json runs the same thing from the command line
print(f"model {MODEL}; outputs in {OUT}")

# %% [markdown]
# ## The model and its null towers
#
# `analysis.pipeline.load` resolves the model (`create_model`) and the null towers: `null_tower(model, architecture,
# seed)` copies the model and initialises its text tower again (embeddings,
# every block, final LayerNorm, projection) as the architecture initialises it, under `seed`; the image tower and
# the logit scale stay the trained ones, so image-grounded measurements see the same images. `measure_layers`
# takes them as builders (name -> function), so only one copy sits in memory at a time. Seeds 1, 2, ... as
# `probe-layers` uses them (never the model's own init seed 0).

# %%
from analysis.pipeline import load
from probing.models.build import format_metrics

subject = load(config)  # the model (create_model), its null-tower builders, the probing tasks, the data
bundle = subject.bundle
print(f"{bundle.label} ({bundle.name}); held-out metrics recorded when it was built:")
print(format_metrics(bundle.metrics))
print(f"\n{len(subject.null_models)} null towers: {', '.join(subject.null_models)}")

# %% [markdown]
# ## The probing tasks
#
# *negation*: is the caption negated (twins that differ only in the negated clause)? *scope*: which of two
# objects is negated, on minimal pairs with the same words ("a circle but no square" / "a square but no circle"),
# so that no bag-of-words feature can solve it. Each task has an in-distribution test split and three held-out
# splits, and a control labelling (a random label per caption type) for selectivity.

# %%
for task in subject.tasks:  # built by load: synthetic_negation_task and synthetic_scope_task of the model's world
    print(f"{task.name}: {len(task.train)} training captions; tests " +
          ", ".join(f"{split} {len(index)}" for split, index in task.tests.items()))
    for i in task.tests["heldout_cue"][:2]:
        print(f"    label {task.labels[i]}: {task.captions[i]}")

# %% [markdown]
# ## Measure the model and its null towers
#
# `analysis.pipeline.measure` (`measure_layers`) runs the probes, sensitivity and gradient norms on the model
# ("trained") and on every null tower, and the causal check and the Fisher information on the model. The
# gradient norms use the real fine-tuning losses (`finetune.losses.gradnorm_loss_fns`: CLIP, CoN-CLIP and the two
# halves of Omni-NegCLIP). The result holds typed tables and the per-item values the evidence test resamples.

# %%
from analysis.pipeline import measure

started = time.perf_counter()
measurements = measure(subject, config, progress=False)  # probing.measure.layers.measure_layers underneath
measurements.save(OUT)
print(f"measured in {(time.perf_counter() - started) / 60:.1f} min; tables: " +
      ", ".join(f"{name} {len(table)} rows" for name, table in measurements.tables.items()))

# %% [markdown]
# ### The model against its null towers
#
# Held-out probe accuracy per layer (logistic probe, mean of the three held-out splits): the model, the mean of
# its null towers and the range they span. Random towers are not at chance: token identity alone lets a probe
# read much of a caption, which is why the comparison is with them and not with 0.5.

# %%
probes = measurements.probes
heldout = probes[(probes.labels == "task") & (probes.probe == "logistic") & probes.split.str.startswith("heldout")]
per_model = heldout.groupby(["task", "model", "layer"]).accuracy.mean().unstack("model")
nulls = per_model[measurements.null_models]
calibration = pd.DataFrame({"trained": per_model["trained"], "null mean": nulls.mean(axis=1),
                            "null min": nulls.min(axis=1), "null max": nulls.max(axis=1)})
calibration["trained - null mean"] = calibration["trained"] - calibration["null mean"]
calibration.unstack("task").swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False).T

# %% [markdown]
# ## Null-calibrated evidence per block
#
# `block_evidence` turns each measurement into what block b *adds* (the probe accuracy gained across the block,
# the sensitivity gained, the block's share of the gradient norm), on the model and on every null tower. The
# excess E[b] is the model's value minus the null towers' mean; t[b] = E[b] / (s[b] sqrt(1 + 1/K)) asks whether
# the model could be one more random tower (s[b]: the spread of the K null towers). A block counts when t[b]
# exceeds the t quantile with K - 1 degrees of freedom at 1 - alpha / (blocks x components). With few null towers
# that threshold is high: the honest price of estimating the null spread from K towers. The formulas are in
# `analysis/planning/evidence.py`.

# %%
from analysis.pipeline import assess_evidence

evidence = assess_evidence(measurements, config)  # analysis.planning.evidence.block_evidence
for name, component in evidence.components.items():
    significant = [b for b, s in enumerate(component.significant) if s]
    print(f"{name}: {component.basis}; threshold t > {component.critical:.1f} ({component.n_null} null towers); "
          f"significant at blocks {significant or 'none'}")
for note in evidence.notes:
    print("note:", note)
per_block = pd.DataFrame(evidence.table()).set_index("block")
per_block[[c for c in per_block.columns if c == "combined" or c.endswith(("_excess", "_z"))]].T.round(3)

# %% [markdown]
# ## The layer plan
#
# `select_layers` applies a rule to the combined score and returns a `Selection`: the `LayerPlan`, the evidence,
# the decision and its stability over bootstrap replicates of the evidence. The default rule, `lead`, trains one
# block: the first that the shortest contiguous window holding 80 % of the evidence (the `window` rule) holds in at
# least half of the replicates; the selector study's size procedure chose it over the window itself
# (docs/VALIDATION.md). When nothing is significant the plan trains no block and says why: the measurements then
# give no reason to prefer any layers over others. Other rules are one argument away.

# %%
from analysis.pipeline import select
from analysis.planning.selection import SelectionConfig, describe_blocks, select_layers

selection = select(evidence, config)  # analysis.planning.selection.select_layers with the config's rule
plan = selection.plan
plan.validate(measurements.n_layers)
plan_path = plan.save(OUT / "layer_plan.json")
print(f"plan: {plan.describe()}\n  {selection.decision.reason}")
print(f"  the window holds {describe_blocks(plan.blocks)} on {selection.agreement:.0%} of "
      f"{len(evidence.replicates)} bootstrap replicates of the evidence")
for rule in ("window", "prefix", "topk", "auto_rgn"):
    other = select_layers(evidence, SelectionConfig(rule=rule))
    print(f"{rule:>9} rule: blocks {describe_blocks(other.plan.blocks)}")
print(f"written to {plan_path}")

# %% [markdown]
# ## The simple selectors at the plan's size
#
# A plan is advice only if it beats what a researcher would pick without the toolkit. `selector_plans` gives, from
# the same measurements, the plans of the baselines a reviewer names (`analysis.planning.selectors`): raw Auto-RGN
# (relative gradient norms without null models), Omni-NegCLIP's cosine change of the EOT state under negation, the
# diagonal Fisher information, the activation-norm change, the fixed front and last blocks, and a random window.
# Which of them trains the blocks where fine-tuning works is for the ablation to say: the validation study's
# selector table (read below from its JSON, `docs/results/validation/*/ablation/selectors.json`) compares every
# selector's plan with the toolkit's on held-out scope, with paired bootstrap intervals.

# %%
import json
from pathlib import Path

import analysis
from analysis.planning.selectors import selector_plans

if plan.blocks:
    baselines = selector_plans(measurements, plan.blocks)
    display(pd.DataFrame([{"selector": name, "blocks": describe_blocks(p.blocks) if p.blocks else "(expectation)",
                           "basis": p.basis} for name, p in baselines.items()]).set_index("selector"))
study = Path(analysis.__file__).resolve().parents[1] / "docs" / "results" / "validation"  # in a source checkout
tables = sorted(study.glob("*/ablation/selectors.json")) if study.is_dir() else []
for path in tables:
    rows = pd.DataFrame(json.loads(path.read_text())["rows"])
    rows = rows[rows["target"] == "scope"].set_index("selector")
    display(Markdown(f"**{path.parent.parent.name}** (validation study, held-out scope): the toolkit's plan minus "
                     "each selector's, with the paired 95 % interval"))
    display(rows[["blocks", "trainable", "gain", "toolkit_minus", "toolkit_minus_low", "toolkit_minus_high",
                  "verdict"]].round(3))
if not tables:
    print("the validation study's selector tables are not here (python scripts/validation_study.py writes them)")

# %% [markdown]
# ## Figures
#
# `plot_all` writes each figure as PNG and PDF (paper column width) and returns the paths; the selected blocks
# are shaded, the null towers drawn as their mean and range.

# %%
from analysis.report.figures import plot_all
from analysis.report.report import FIGURE_CAPTIONS

figures = plot_all(measurements, selection, OUT / "figures")
for name, paths in figures.items():
    display(Markdown(f"**{name}** ({', '.join(p.name for p in paths)}): {FIGURE_CAPTIONS[name]}"))
    show(paths[0], width=480)

# %% [markdown]
# ## Localisation: where is negation computed?
#
# The evidence above says which blocks differ from random towers; localisation asks where the model's own
# negation behaviour is computed. `measure_localisation` patches activations between the true and the false
# caption of negation and scope pairs (which positions and blocks restore the image-grounded gap), ranks heads
# and ablates the top ones, reads every layer through the final LayerNorm and projection (a joint-space lens),
# and steers along a negation direction. `analysis.report.localisation` draws the figures and writes sentences
# computed from the tables, including the comparison with published findings on real CLIP.

# %%
from analysis.pipeline import localise
from analysis.report.localisation import localisation_sentences, plot_localisation

started = time.perf_counter()
localisation = localise(subject, config, progress=False)  # probing.measure.localise.measure_localisation
localisation.save(OUT / "localisation")
print(f"localised in {(time.perf_counter() - started) / 60:.1f} min")
localisation_figures = plot_localisation(localisation, OUT / "figures")
for name, paths in localisation_figures.items():
    display(Markdown(f"**{name}**: {FIGURE_CAPTIONS[name]}"))
    show(paths[0], width=480)
display(Markdown("\n".join(f"* {sentence}" for sentence in localisation_sentences(localisation))))

# %% [markdown]
# ## Report
#
# `analysis.pipeline.write` writes what `probe-layers` writes: `report.md` and `report.json` (summary sentences
# computed from the selection and the measurements, the localisation sentences after them), the plan, the tables,
# `measurements_long.csv` (every per-layer number, one row each), the figures and `config.json`.

# %%
from analysis.pipeline import write
from analysis.report.report import summary_sentences

paths = write(OUT, config, subject, measurements, selection, localisation)
print("wrote", ", ".join(sorted(p.name for p in paths.values())))
print(pd.read_csv(OUT / "measurements_long.csv").head())
display(Markdown("\n".join(f"* {sentence}" for sentence in summary_sentences(measurements, selection))))

# %% [markdown]
# ## What this run showed
#
# Computed from this run's results above (re-running the notebook rewrites them).

# %%
from analysis.report.localisation import eot_shift_layer, residual_profile, selective_heads

n_null = len(measurements.null_models)
findings = []
if plan.blocks:
    findings.append(f"**The evidence supports a plan:** text blocks {describe_blocks(plan.blocks)} "
                    f"({plan.describe()}), chosen exactly in {selection.agreement:.0%} of the bootstrap replicates.")
else:
    findings.append(f"**The evidence supports no plan:** against {n_null} null towers no block's excess is "
                    f"significant, so the measurements give no reason to train some blocks rather than others "
                    f"(notebook 3 then fine-tunes a named anchor plan).")
for name, component in evidence.components.items():
    best = int(np.argmax(component.z))
    findings.append(f"**{name}:** the largest excess over the null towers is at block {best} "
                    f"({component.excess[best]:+.3f}, t = {component.z[best]:.1f} against a threshold of "
                    f"{component.critical:.1f}); {sum(component.significant)} of {evidence.n_layers} blocks "
                    "significant.")
for task in ("negation", "scope"):
    margin = calibration.loc[task, "trained - null mean"]
    inside = ((calibration.loc[task, "trained"] >= calibration.loc[task, "null min"])
              & (calibration.loc[task, "trained"] <= calibration.loc[task, "null max"])).sum()
    findings.append(f"**{task} probe, held out:** the model exceeds its null towers' mean by at most "
                    f"{margin.max():+.3f} (layer {margin.idxmax()}); at {inside} of {len(margin)} layers it lies "
                    f"within the range of the {n_null} null towers.")
for kind in localisation.pairs["kind"]:
    shift = eot_shift_layer(residual_profile(localisation, kind))
    pairs = localisation.pairs.set_index("kind").loc[kind]
    findings.append(f"**{kind} pairs:** the model prefers the true caption for {pairs['accuracy']:.0%} of "
                    f"{int(pairs['n_pairs'])} images; in the residual stream the EOT position carries the largest "
                    "patching effect "
                    + (f"from layer {shift} on." if shift is not None else "at no run of late layers."))
n_selective = selective_heads(localisation.attention)[["layer", "head"]].drop_duplicates().shape[0]
top_heads = ", ".join(f"L{layer}H{head}" for layer, head in localisation.meta.get("top_heads", [])) or "none"
findings.append(f"**Heads:** {n_selective} head(s) attend from EOT to the cue at twice uniform attention or more; "
                f"the top heads by patching effect: {top_heads}.")
display(Markdown("\n".join(f"- {finding}" for finding in findings)))
print(f"notebook run time: {(time.perf_counter() - STARTED) / 60:.1f} min ({BUILD} build)")
