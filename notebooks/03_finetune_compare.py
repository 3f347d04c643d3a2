# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3 · Fine-tune and compare: does training only the planned blocks work?
#
# Notebook 2 asked which text blocks the layer-wise evidence supports fine-tuning. This notebook tests the
# answer: it fine-tunes the planned blocks with a negation-aware loss (the scope pair "A and no X" against
# "A and no B" for the same image, half a CoN-CLIP term, and a plain CLIP term that holds retrieval) and compares
# them with the frozen model and with training every block. When the evidence supports no plan, it says so and
# fine-tunes a named anchor instead: Omni-NegCLIP's front half, against CoN-CLIP's whole text tower. A small
# layer ablation (the same data and budget for every variant, several seeds) then compares more choices of
# blocks with confidence intervals.
#
# Metrics (held-out test suites of the synthetic world): **scope accuracy**, the shortcut-proof negation metric
# (s(I, "A and no X") > s(I, "A and no B") with X absent and B present; chance 0.5), the CC-Neg-style accuracy the
# papers report (which a "negation word lowers the score" shortcut already wins), and retrieval / zero-shot
# retention. The budgets are small (several minutes on 2 CPU cores for the whole notebook), so this is a
# tutorial-scale study, not a converged one. `NOTEBOOK_SMALL=1`: the smoke-test build `"embedded:small"`, a few
# training steps, about a minute; its numbers say nothing about negation.

# %%
import io
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from analysis.report.notebook import show, start

run = start("03_finetune_compare")  # threads, logging, the output folder: analysis/report/notebook.py
SMALL, MODEL, BUILD, OUT, STARTED = run.small, run.model, run.build, run.out, run.started
# The README's scope recipe (finetune/recipes/scope.json): the scope pair, CLIP to hold retrieval, half a CoN-CLIP
# first term; a short budget here, so scope moves only part of the way
LOSS, LOSS_KWARGS = "mix", {"scope_pair": 1.0, "clip": 1.0, "conclip": 0.5, "negationclip": 0.0, "terms": [1]}
if SMALL:
    TRAIN = dict(steps=10, batch_size=16, lr=3e-3, warmup_steps=2)
    N_TRAIN, EVAL_N, EVAL_N_CLASSIFICATION, SEEDS = 64, 100, 36, (0,)
else:
    TRAIN = dict(steps=40, batch_size=32, lr=3e-3, warmup_steps=4)
    N_TRAIN, EVAL_N, EVAL_N_CLASSIFICATION, SEEDS = 1024, 300, 180, (0, 1)
# notebook 2's sizes, for the layer plan when notebook 2 has not run (the causal check does not enter the plan)
from analysis.probe_config import DataSpec, ModelSpec, ProbeConfig
from probing.measure.settings import MeasureConfig

SMALL_MEASURE = dict(seeds=(0,), null_seeds=(0,), n_sensitivity=60, grad_batches=1, grad_batch_size=16)
PLAN_CONFIG = ProbeConfig(
    model=ModelSpec(MODEL),
    data=DataSpec(n_train=200, n_test=60) if SMALL else DataSpec(),
    null_models=3 if SMALL else 10,
    measure=MeasureConfig(measurements=("probes", "sensitivity", "gradnorms"), **(SMALL_MEASURE if SMALL else {})),
    localise=None,
    threads=1,
)

print(f"model {MODEL}; outputs in {OUT}")

# %%
from probing.models.build import format_metrics
from probing.models.factory import create_model

bundle = create_model(MODEL)  # the embedded models ship with the package
model, preprocess, tokenizer, world = bundle.model, bundle.preprocess, bundle.tokenizer, bundle.world
print(f"{bundle.label} ({bundle.name}); held-out metrics recorded when it was built:")
print(format_metrics(bundle.metrics))

# %% [markdown]
# ## The layer plan
#
# The plan notebook 2 wrote, if it ran on this build; otherwise the same measurement through `probe-layers`'
# pipeline (`analysis.pipeline.run`, a few minutes on the default build). When the evidence supports no plan, the
# plan file names no blocks and says why. In that case the comparison trains two named anchors
# instead: Omni-NegCLIP's front half (`LayerPlan.front`) and CoN-CLIP's whole text tower
# (`LayerPlan.whole_text_tower`), both with the embeddings, final LayerNorm, projection and logit scale.
# Otherwise it trains the plan against every block with the plan's extras, so that only the blocks differ.

# %%
from analysis.pipeline import run as probe_layers
from finetune.plan import LayerPlan
from probing import TextTower

plan_path = OUT.parent.parent / "02_layer_evidence" / BUILD / "layer_plan.json"  # where notebook 2 writes it
if not plan_path.exists():
    plan_path = OUT / "probe-layers" / "layer_plan.json"
    probe_layers(PLAN_CONFIG, plan_path.parent, progress=False)  # what probe-layers runs; no blocks: no plan
plan = LayerPlan.load(plan_path)
n_layers = TextTower.from_model(model).n_layers
plan.validate(n_layers)
print(f"plan from {plan_path}: {plan.describe()}")
if plan.blocks:
    plans = {
        "selected": plan,
        "all": LayerPlan(
            list(range(n_layers)),
            plan.train_embeddings,
            plan.train_ln_final,
            plan.train_projection,
            plan.train_logit_scale,
            rule="all blocks, the plan's extras",
        ),
    }
else:
    print(f"no plan: {plan.evidence['decision']['reason']}")
    plans = {"omni_front": LayerPlan.front(n_layers // 2), "omni_whole": LayerPlan.whole_text_tower(n_layers)}
TRAINED = list(plans)  # the planned (or anchor) run first, the comparison second
for name, run_plan in plans.items():
    print(f"{name:>10}: {run_plan.describe()}")

# %% [markdown]
# ## Fine-tune both plans
#
# Both runs use the same examples, loss, optimiser settings and seed; `train` fine-tunes the parts a `LayerPlan`
# names and freezes the rest. The image tower stays frozen, so its features are computed once per run and cached.

# %%
import contextlib
import copy

from finetune.train import TrainConfig, train

examples = world.examples(N_TRAIN, "train", seed=0)
e = examples[0]
print(
    f"{len(examples)} training examples, e.g.\n  caption: {e.caption}\n  presence-negated (false): "
    f"{e.presence_negated}\n  absence-negated (true): {e.absence_negated}\n"
)

tuned, results = {}, {}
for name, run_plan in plans.items():
    config = TrainConfig(
        loss=LOSS,
        loss_kwargs=LOSS_KWARGS,
        **TRAIN,
        seed=0,
        device="cpu",
        out_dir=str(OUT / name),
        log_every=max(1, TRAIN["steps"] // 20),
        ckpt_every=TRAIN["steps"],
        model_name=bundle.name,
        tensorboard=False,
        progress=False,
    )
    tuned[name] = copy.deepcopy(model)
    started = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the trainer prints which parts train; show the first run's table only
        results[name] = train(tuned[name], tokenizer, preprocess, examples, run_plan, config)
    if name == TRAINED[0]:
        print(log.getvalue())
    print(
        f"{name}: {results[name].step} steps in {time.perf_counter() - started:.0f} s, final loss "
        f"{results[name].loss:.3f}, weights in {results[name].model_path}"
    )

# %% [markdown]
# ## Evaluate against the frozen model
#
# `SyntheticSuite` renders a held-out test set once and scores any model on it. Three suites, each holding out one
# thing the fine-tuning never saw: objects, caption templates, or cue words (*never, none, isn't*); retention (R@1
# among 100, zero-shot) comes from the held-out-object suite. `evaluate` returns the metrics by section (below:
# the frozen model on the held-out-object suite); `scores` returns them as one flat dict.

# %%
from probing.synthetic import SyntheticSuite

suites = {
    heldout: SyntheticSuite.build(
        world, n=EVAL_N, n_classification=EVAL_N_CLASSIFICATION, split="test", heldout=heldout, seed=1
    )
    for heldout in ("object", "template", "cue")
}
image_features = {heldout: suite.image_features(model, preprocess) for heldout, suite in suites.items()}
model.eval()
sections = suites["object"].evaluate(model, preprocess, tokenizer, image_features=image_features["object"])
pd.DataFrame(
    [
        {"section": section, "metric": metric, **entry}
        for section, metrics in sections.items()
        for metric, entry in metrics.items()
        if "/" not in metric
    ]
).set_index(["section", "metric"])

# %%
COLUMNS = {
    "object/scope_accuracy": "scope, held-out objects",
    "template/scope_accuracy": "scope, held-out templates",
    "cue/scope_accuracy": "scope, held-out cues",
    "object/ccneg_accuracy": "CC-Neg-style",
    "object/absence_accuracy": "absence",
    "object/image_to_text_R@1_among_100": "I→T R@1/100",
    "object/zero_shot_affirmative": "zero-shot objects",
}
SCOPE = [key for key in COLUMNS if key.endswith("/scope_accuracy")]


def evaluate(m):
    m.eval()
    metrics = {}
    for heldout, suite in suites.items():
        values = suite.scores(m, preprocess, tokenizer, image_features=image_features[heldout])
        metrics.update({f"{heldout}/{k}": v for k, v in values.items()})
    return metrics


evaluated = {"frozen": evaluate(model), **{name: evaluate(m) for name, m in tuned.items()}}
comparison = pd.DataFrame(
    {name: {label: metrics[key] for key, label in COLUMNS.items()} for name, metrics in evaluated.items()}
).T
comparison

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 2]})
for name, result in results.items():
    left.plot([h["step"] for h in result.history], [h["loss"] for h in result.history], marker="o", ms=2, label=name)
left.set_xlabel("step")
left.set_ylabel("training loss (mix)")
left.set_title("training loss")
left.legend()
comparison.T.plot.bar(ax=right, width=0.8, color=["#7f8c8d", "#e67e22", "#2471a3"])
right.axhline(0.5, color="black", lw=0.8, ls=":")
right.set_ylim(0, 1)
right.set_title(f"held-out metrics after {TRAIN['steps']} steps (seed 0); dotted: chance for scope")
right.tick_params(axis="x", labelrotation=30)
for label in right.get_xticklabels():
    label.set_ha("right")
right.legend(fontsize=7)
fig.tight_layout()
show(fig)

# %% [markdown]
# ## Where did each fine-tune change the text tower?
#
# `compare_checkpoints` (the `compare-checkpoints` command's library function) compares each fine-tuned model
# with the base: the relative weight change of every block and part, and how much each layer's states on
# affirmative and negated captions moved (linear CKA, cosine of the EOT state). A frozen block shows exactly 0;
# where the change sits should match the plan that was trained. `plan_from_comparison` turns a fine-tune's change
# into a plan (the blocks it changed most), the validation study's *finetune_change* selector.

# %%
import dataclasses

from analysis.compare import CompareConfig, compare_checkpoints, plan_from_comparison
from analysis.compare.figures import plot_comparison
from analysis.planning.selection import describe_blocks

compared = compare_checkpoints(
    bundle,
    {name: dataclasses.replace(bundle, model=m, label=name) for name, m in tuned.items()},
    config=CompareConfig(parts=("weights", "states"), n_states=100 if SMALL else 300, n_boot=50 if SMALL else 200),
)
display(compared.block_table().round(4))
display(Markdown("\n".join(f"* {sentence}" for sentence in compared.sentences)))
for paths in plot_comparison(compared, OUT / "compare").values():
    show(paths[0], width=640)
for name in compared.tuned:
    print(f"{name}: the {len(plans[name].blocks) or 1} block(s) it changed most:",
          describe_blocks(plan_from_comparison(compared, max(1, len(plans[name].blocks)), model=name).blocks))

# %% [markdown]
# ## The layer ablation
#
# `AblationStudy` repeats the fine-tuning for each variant and seed, with the same examples, loss and budget, and
# evaluates every run on the same three suites. With a plan: *selected* (the plan), *front* and *back* (the two
# halves of the tower) and *all*, every trained variant with the plan's extras (`extras="plan"`), so that variants
# differ only in blocks. Without one: Omni-NegCLIP's groups *omni_front*, *omni_back* and *omni_whole* (the last is
# CoN-CLIP's setup), each with the extras its authors train (all four). The seed-0 runs of the two plans above
# repeat them.

# %%
from analysis.ablation.config import AblationConfig
from analysis.ablation.figures import ablation_figure
from analysis.ablation.runner import AblationStudy
from analysis.ablation.tables import markdown_table
from analysis.ablation.variants import block_variants
from finetune.vocabulary import EXTRAS

if plan.blocks:
    groups = block_variants(n_layers)  # front / middle / back halves and all, as block lists
    variants = ["frozen", "selected"] + [v for v in ("front", "back", "all") if groups[v] != list(plan.blocks)]
else:
    variants = ["frozen", "omni_front", "omni_back", "omni_whole"]
ablation_config = AblationConfig(
    model=MODEL,
    loss=LOSS,
    loss_kwargs=LOSS_KWARGS,
    **TRAIN,
    n_train=N_TRAIN,
    seeds=SEEDS,
    eval_n=EVAL_N,
    eval_n_classification=EVAL_N_CLASSIFICATION,
    variants=tuple(variants),
    plan_path=str(plan_path) if plan.blocks else None,
    extras="plan" if plan.blocks else ",".join(EXTRAS),
    device="cpu",
)
started = time.perf_counter()
ablation = AblationStudy(ablation_config, OUT / "ablation", progress=False).run()
print(
    f"{len(ablation.executed)} runs in {(time.perf_counter() - started) / 60:.1f} min; wrote "
    + ", ".join(p.name for p in ablation.outputs.values())
    + f" in {OUT / 'ablation'}"
)
display(Markdown(markdown_table(ablation.summary, cost=False)))

# %%
figure = ablation_figure(ablation.summary)
# Panel (b) of this figure is the single-layer sweep (variants=("sweep",): one run per block and seed), left out
# here to keep the notebook to a few minutes; drop its empty axes and let panel (a) take the figure.
top, bottom = figure.axes[:2]
bottom.remove()
top.set_subplotspec(top.get_subplotspec().get_gridspec()[:, 0])
figure.set_size_inches(3.4, 3.6)
show(figure, width=520)

# %% [markdown]
# ## What this run showed
#
# Computed from this run's results above (re-running the notebook rewrites them).

# %%
from analysis.ablation.runs import load_runs

first, second = TRAINED
frozen = evaluated["frozen"]


def change(name, key):
    return f"{frozen[key]:.3f} → {evaluated[name][key]:.3f}"


def scope_gain(name):
    return float(np.mean([evaluated[name][key] - frozen[key] for key in SCOPE]))


findings = [
    (
        f"**The plan:** the evidence supports {plans[first].describe()}; it was fine-tuned against {second} "
        f"({plans[second].describe()})."
        if plan.blocks
        else f"**No plan:** the evidence supported none ({plan.evidence['decision']['reason']}), so the anchor "
        f"{first} ({plans[first].describe()}) was fine-tuned against {second} ({plans[second].describe()})."
    ),
]
for name in TRAINED:
    findings.append(
        f"**{name}** ({TRAIN['steps']} steps, seed 0): scope accuracy on held-out objects {change(name, SCOPE[0])}, "
        f"templates {change(name, SCOPE[1])}, cues {change(name, SCOPE[2])}; CC-Neg-style "
        f"{change(name, 'object/ccneg_accuracy')}; I→T R@1 {change(name, 'object/image_to_text_R@1_among_100')}, "
        f"zero-shot {change(name, 'object/zero_shot_affirmative')}."
    )
better = max(TRAINED, key=scope_gain)
findings.append(
    f"**Scope gain, mean over the three held-out suites:** {first} {scope_gain(first):+.3f}, {second} "
    f"{scope_gain(second):+.3f}: {better} gained more in this single run."
)
entries = {entry["variant"]: entry["metrics"][SCOPE[0]] for entry in ablation.summary["variants"]}
if len(SEEDS) > 1:
    trained = [v for v in entries if v != "frozen"]
    separated = [
        (a, b)
        for i, a in enumerate(trained)
        for b in trained[i + 1 :]
        if entries[a]["low"] > entries[b]["high"] or entries[b]["low"] > entries[a]["high"]
    ]
    findings.append(
        f"**The ablation** ({len(SEEDS)} seeds; scope on held-out objects, mean [95% interval]): "
        + ", ".join(f"{v} {m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" for v, m in entries.items())
        + "; "
        + (
            "intervals separate " + ", ".join(f"{a} from {b}" for a, b in separated)
            if separated
            else "every pair of trained variants overlaps, so no variant is separated from another"
        )
        + "."
    )
else:
    findings.append(
        "**The ablation** (1 seed, so no intervals; scope on held-out objects): "
        + ", ".join(f"{v} {m['mean']:.3f}" for v, m in entries.items())
        + "."
    )
runs = {(r["variant"], r["seed"]): r["metrics"] for r in load_runs(OUT / "ablation" / "runs.jsonl")}
gaps = {
    name: max(abs(runs[(name, 0)][key] - evaluated[name][key]) for key in COLUMNS)
    for name in TRAINED
    if (name, 0) in runs
}
findings.append(
    "**Reproducibility:** the ablation's seed-0 runs of " + " and ".join(gaps) + " differ from the runs "
    f"above by at most {max(gaps.values()):.1g} in any metric."
)
display(Markdown("\n".join(f"- {finding}" for finding in findings)))
print(f"notebook run time: {(time.perf_counter() - STARTED) / 60:.1f} min ({BUILD} build)")
