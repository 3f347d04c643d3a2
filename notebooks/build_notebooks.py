"""Write the tutorial notebooks from the cell sources below, and optionally execute them.

    python notebooks/build_notebooks.py                 # write the three notebooks (no outputs)
    python notebooks/build_notebooks.py --execute       # write, then run each top to bottom and keep the outputs
    python notebooks/build_notebooks.py --findings      # only refresh the closing "What this run showed" cells

The committed notebooks hold the outputs of `--execute` on the embedded default model (about 20
minutes on 2 CPU cores; NOTEBOOK_SMALL=1 runs the smoke-test build in about a minute). Their
closing Markdown cells (FINDINGS below) state what that run showed, with its numbers; `--findings`
rewrites only those cells, so the text can be updated without running everything again.

Editing the notebooks in Jupyter is fine too; then keep this file in step (or stop using it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("01_activations", "02_layer_evidence", "03_finetune_compare")
FINDINGS_TITLE = "## What this run showed"


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# --- shared cells ------------------------------------------------------------------------------------

def setup_cell(name: str, sizes: str) -> str:
    """Imports, one torch thread, the small-size switch and the output folder."""
    return f'''
%matplotlib inline
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from PIL import Image

torch.set_num_threads(1)  # the machine is shared; this small model is also fastest on one thread
# open_clip warns that it built the architecture without pretrained weights; the checkpoint is loaded right after
logging.getLogger().setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets; progress bars are off
pd.set_option("display.precision", 3)

SMALL = os.environ.get("NOTEBOOK_SMALL") == "1"  # the test suite's switch: smoke-test build and tiny sizes
SPEC = "small" if SMALL else "default"
{sizes.strip()}

# outputs go to the repository's runs/ folder (git ignores it); paths are printed relative to this notebook
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
OUT = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "{name}" / SPEC))
shutil.rmtree(OUT, ignore_errors=True)  # every run of the notebook starts from scratch
OUT.mkdir(parents=True)
STARTED = time.perf_counter()


def show(path, width=720):
    """Display a saved figure (300 dpi for print) at screen size."""
    image = Image.open(path).convert("RGB")
    image.thumbnail((width, 10 * width))
    display(image.quantize(colors=256))  # a palette PNG: a fraction of the size in the notebook file


print(f"embedded build: {{SPEC}}; outputs in {{OUT}}")
'''


LOAD_MODEL = '''
from finetune.embedded import SPECS, format_metrics
from probing.models.factory import create_model

bundle = create_model(f"embedded:{SPEC}")  # ships with the package
model, preprocess, tokenizer = bundle.model, bundle.preprocess, bundle.tokenizer
world = bundle.world  # the synthetic world it was pretrained on (its checkpoint records it)
print(f"embedded {SPEC} model ({bundle.name}); held-out metrics recorded when it was built:")
print(format_metrics(bundle.metrics))
'''

ELAPSED = '''
print(f"notebook run time: {(time.perf_counter() - STARTED) / 60:.1f} min ({SPEC} build)")
'''

# --- 1: activations ------------------------------------------------------------------------------------

SIZES_1 = '''
# probe data (captions) and probe seeds; captions averaged over in the attention figure
N_TRAIN, N_TEST, SEEDS, N_ATTENTION = (200, 60, (0,), 60) if SMALL else (2000, 600, (0, 1, 2, 3, 4), 600)
'''

NB1 = [
    md('''
# 1 · Activations: what does the text encoder do with the word "no"?

CLIP matches "a red circle and **no** blue square" to the same images as "a red circle and a blue square".
This notebook asks where, inside the text encoder, the two captions differ: does the residual stream at the
end-of-text (EOT) position, the one state CLIP projects into the shared space, still carry the negation, and
does the EOT token attend to the negation cue at all? At the end, one linear probe per layer reads
"negated or not" off the EOT state, on held-out cue words, objects and templates.

It uses the toolkit's embedded default model: a small CLIP pretrained offline on a synthetic world of
coloured shapes, with a text tower as deep as ViT-B/32's (12 blocks) and the real CLIP tokenizer.
It runs in about a minute on 2 CPU cores; `NOTEBOOK_SMALL=1` switches to the smoke-test build and tiny sizes.
'''),
    code(setup_cell("01_activations", SIZES_1)),
    md('''
## The model and its failure on one scene

A scene from the test split, its true caption, a presence-negated caption (negates something that *is* there:
false) and an absence-negated caption (negates something that is *not* there: true). The numbers are cosine
similarities between the image and each caption; a model that read negation would rank the false one last.
'''),
    code(LOAD_MODEL),
    code('''
from probing.measure.encode import encode_captions, encode_images

example = world.examples(1, "test", seed=3, heldout="object")[0]
captions = {"true caption": example.caption,
            "presence-negated (false)": example.presence_negated,
            "absence-negated (true)": example.absence_negated}
image_features = encode_images(model, preprocess, [example.image])
text_features = encode_captions(model, tokenizer, list(captions.values()))
similarity = (image_features @ text_features.T)[0]

fig, ax = plt.subplots(figsize=(2.2, 2.2))
ax.imshow(example.image, interpolation="nearest")
ax.set_axis_off()
display(fig)
plt.close(fig)
for (kind, text), value in zip(captions.items(), similarity.tolist()):
    print(f"{value:+.3f}  {kind:<26} {text}")
'''),
    md('''
## A negated caption and its affirmative twin, through the hooks

`HookedCLIPText` is a TransformerLens view of the model's own text tower (it shares the parameters), so
`run_with_cache` returns every intermediate activation. The two captions below have the same length and differ
in one token: the cue "no" against the article "a".
'''),
    code('''
from probing import HookedCLIPText

negated, affirmative = "a red circle and no blue square", "a red circle and a blue square"
tokens = tokenizer([negated, affirmative])
hooked = HookedCLIPText(model)
features, cache = hooked.run_with_cache(tokens)
n_layers, n_heads = hooked.cfg.n_layers, hooked.cfg.n_heads

eot = hooked.eot_positions(tokens)
assert eot[0] == eot[1], "the twins should have the same length"
length = int(eot[0]) + 1
def word(token_id):
    text = tokenizer.decoder[int(token_id)]
    return {"<start_of_text>": "SOT", "<end_of_text>": "EOT"}.get(text, text.replace("</w>", ""))
words = [word(t) for t in tokens[0, :length]]
cue = words.index("no")
print("tokens:", " | ".join(words), f"(cue 'no' at position {cue}, EOT at {length - 1})")
print(f"{n_layers} blocks, {n_heads} heads, d_model {hooked.cfg.d_model}")
print("same features as model.encode_text:", torch.allclose(features, model.encode_text(tokens), atol=1e-5))
print("pattern hook shape [batch, head, query, key]:", tuple(cache["blocks.0.attn.hook_pattern"].shape))
'''),
    md('''
### Residual stream

Left: how far the negated caption's residual stream is from its twin's, per layer and position
(||r_neg - r_aff|| / ||r_aff||; layer 0 = embeddings, layer l = output of block l-1). The causal mask means
positions before the cue cannot differ. Right: cosine similarity of the two EOT states per layer, the
quantity that decides whether CLIP can tell the captions apart.
'''),
    code('''
import torch.nn.functional as F

hook_names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
resid = torch.stack([cache[name][:, :length] for name in hook_names]).detach()  # [layer, caption, position, d]
relative_change = ((resid[:, 0] - resid[:, 1]).norm(dim=-1) / resid[:, 1].norm(dim=-1)).numpy()
eot_cosine = F.cosine_similarity(resid[:, 0, -1], resid[:, 1, -1], dim=-1).numpy()
final_cosine = F.cosine_similarity(features[0], features[1], dim=0).item()

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
image = left.imshow(relative_change, aspect="auto", cmap="magma", origin="lower")
left.set_xticks(range(length), words, rotation=45, ha="right")
left.set_ylabel("layer")
left.set_title("||r_neg - r_aff|| / ||r_aff||")
fig.colorbar(image, ax=left, shrink=0.9)
right.plot(range(n_layers + 1), eot_cosine, marker="o")
right.axhline(final_cosine, color="grey", ls="--", label=f"text features: {final_cosine:.3f}")
right.set_xlabel("layer")
right.set_ylabel("cosine(EOT neg, EOT aff)")
right.set_title("EOT state of the twins")
right.legend()
fig.tight_layout()
display(fig)
plt.close(fig)
print("EOT cosine per layer:", np.round(eot_cosine, 3))
'''),
    md('''
### Attention from EOT to the cue word

`blocks.{l}.attn.hook_pattern` holds the attention weights. Below: the weight the EOT query puts on the cue
token, per layer and head, for the negated caption, for its twin (on "a", the token in the same slot), and
averaged over many negated captions of the synthetic world (every cue word: no, not, without, there is no,
never, none, isn't). For scale: an EOT query that spread its attention evenly over a caption's tokens would give
each about 1 / (number of tokens), printed below the figure.
'''),
    code('''
CUE_TOKEN = {"no": "no", "not": "not", "without": "without", "there is no": "no", "never": "never",
             "none": "none", "isn't": "isn"}  # the token that carries each cue

def eot_to_cue(captions, cue_words, batch_size=128):
    """Mean attention weight EOT -> cue token [layer, head] over captions (one cue each), and the mean
    weight an even spread over the caption's tokens would give (1 / number of tokens up to EOT)."""
    total, count, even = torch.zeros(n_layers, n_heads), 0, 0.0
    for start in range(0, len(captions), batch_size):
        batch = tokenizer(captions[start:start + batch_size])
        _, batch_cache = hooked.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
        ends = hooked.eot_positions(batch)
        for i, cue_word in enumerate(cue_words[start:start + batch_size]):
            position = [word(t) for t in batch[i, :int(ends[i]) + 1]].index(CUE_TOKEN[cue_word])
            total += torch.stack([batch_cache[f"blocks.{l}.attn.hook_pattern"][i, :, ends[i], position]
                                  for l in range(n_layers)])
            count += 1
            even += 1 / (int(ends[i]) + 1)
    return (total / count).numpy(), even / count

pattern = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(n_layers)]).detach()
single = pattern[:, :, :, length - 1, cue].numpy()  # [layer, caption, head]
probe_negated = [c for split, heldout in (("train", "all"), ("test", "cue"))
                 for c in world.probe_captions(N_ATTENTION, split, seed=0, heldout=heldout) if c.negated]
averaged, even_share = eot_to_cue([c.text for c in probe_negated], [c.cue for c in probe_negated])

panels = [(single[:, 0], 'negated caption\\nEOT -> "no"'), (single[:, 1], 'affirmative twin\\nEOT -> "a" (same slot)'),
          (averaged, f"mean over {len(probe_negated)} negated\\ncaptions: EOT -> cue token")]
vmax = max(p.max() for p, _ in panels)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), sharey=True)
for ax, (values, title) in zip(axes, panels):
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, origin="lower")
    ax.set_xticks(range(n_heads), [f"h{h}" for h in range(n_heads)])
    ax.set_xlabel("head")
    ax.set_title(title, fontsize=9)
    for (layer, head), value in np.ndenumerate(values):
        ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6,
                color="white" if value < 0.6 * vmax else "black")
axes[0].set_ylabel("block")
axes[0].set_yticks(range(n_layers))
fig.colorbar(image, ax=axes, shrink=0.85, label="attention weight")
fig.suptitle("Attention from the EOT token to the negation cue, per block and head", fontsize=10, y=1.02)
display(fig)
plt.close(fig)
top_layer, top_head = np.unravel_index(averaged.argmax(), averaged.shape)
print(f"EOT -> cue attention, mean over captions: strongest at block {top_layer}, head {top_head}: {averaged.max():.3f}; "
      f"mean over blocks and heads {averaged.mean():.3f}; an even spread would give {even_share:.3f}")
'''),
    md('''
## One probe: is negation linearly readable at EOT?

`capture_pooled` stores the EOT state of every layer for every caption: `[n_layers + 1, n_captions, d_model]`.
The negation task's captions come in twins (negated / affirmative); the probe trains on the cues *no, not,
without, there is no*, and is tested in distribution and on held-out cues (*never, none, isn't*), held-out
objects and held-out templates. A probe that only detects the token "no" fails the held-out cue split.
'''),
    code('''
from probing import capture_pooled
from probing.measure.probes import LogisticProbe, probe_layers
from probing.measure.tasks import synthetic_negation_task

task = synthetic_negation_task(world, n_train=N_TRAIN, n_test=N_TEST, seed=0)
pooled = capture_pooled(hooked, tokenizer, task.captions, pools="eot", progress=False)
print(f"{len(task.captions)} captions, pooled EOT states {pooled.shape}; e.g.")
for i in task.train[:4]:
    print(f"  label {task.labels[i]}: {task.captions[i]}")

layer = n_layers  # the last block's output: what ln_final and the projection turn into the text feature
probe = LogisticProbe().fit(pooled[layer][task.train], task.labels[task.train])
single_probe = {split: probe.score(pooled[layer][index], task.labels[index]) for split, index in task.tests.items()}
print(f"\\nlogistic probe at layer {layer}, balanced accuracy:")
for split, accuracy in single_probe.items():
    print(f"  {split:<18} {accuracy:.3f}")
'''),
    md('''
The same probe at every layer, with several seeds and bootstrap 95 % intervals (`probe_layers`). Notebook 2
adds the controls that say whether these accuracies mean anything: a randomly initialised text tower and
control labels.
'''),
    code('''
sweep = probe_layers(pooled, task.labels, task.train, task.tests, seeds=SEEDS, probes=("logistic",))
table = pd.DataFrame(sweep.summary).pivot(index="layer", columns="split", values="accuracy")

fig, ax = plt.subplots(figsize=(6.5, 3.4))
for split in table.columns:
    rows = [r for r in sweep.summary if r["split"] == split]
    ax.plot([r["layer"] for r in rows], [r["accuracy"] for r in rows], marker="o", ms=3, label=split)
    ax.fill_between([r["layer"] for r in rows], [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], alpha=0.15)
ax.axhline(0.5, color="black", lw=0.8, ls=":")
ax.set_xlabel("layer (0 = embeddings, l = output of block l-1)")
ax.set_ylabel("balanced accuracy")
ax.set_title(f"negation probe at EOT ({len(SEEDS)} seed(s), 95% bootstrap CI)")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
display(fig)
plt.close(fig)
table.T
'''),
    md('''
## Key numbers of this run
'''),
    code('''
key = {
    "twins: EOT cosine after block 0 / last block": (float(eot_cosine[1]), float(eot_cosine[-1])),
    "twins: cosine of the text features": final_cosine,
    "scene: true caption minus presence-negated similarity": float(similarity[0] - similarity[1]),
    "EOT -> cue attention, strongest (block, head, weight)": (int(top_layer), int(top_head), float(averaged.max())),
    "EOT -> cue attention, mean over blocks and heads / even spread": (float(averaged.mean()), even_share),
    "EOT -> 'no' / -> 'a' in the twins, mean over blocks and heads": (float(single[:, 0].mean()), float(single[:, 1].mean())),
    f"probe at layer {layer}: in-distribution / held-out cue": (single_probe["in_distribution"], single_probe["heldout_cue"]),
    "probe, best held-out-cue layer (layer, accuracy)": (int(table["heldout_cue"].idxmax()), float(table["heldout_cue"].max())),
    "probe, layer-0 held-out-cue accuracy": float(table["heldout_cue"].iloc[0]),
}
for name, value in key.items():
    shown = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, tuple) else f"{value:.3f}"
    print(f"{name:<64} {shown}")
''' + ELAPSED),
    md(FINDINGS_TITLE + "\n\n(filled in from the committed run)"),
]

# --- 2: layer evidence ------------------------------------------------------------------------------

SIZES_2 = '''
if SMALL:
    SIZES = dict(n_train=200, n_test=60, seeds=(0,), n_sensitivity=60, n_causal=100, grad_batches=1, grad_batch_size=16)
else:  # the probe-layers command's defaults
    SIZES = dict(n_train=2000, n_test=600, seeds=(0, 1, 2, 3, 4), n_sensitivity=400, n_causal=400, grad_batches=4,
                 grad_batch_size=64)
'''

NB2 = [
    md('''
# 2 · Layer evidence: which blocks should fine-tuning train?

Negation-aware fine-tuning (CoN-CLIP, Omni-NegCLIP, NegationCLIP) trains either the whole text tower or,
in Omni-NegCLIP, its front half, without layer-wise evidence for that choice. This notebook collects that
evidence on the embedded default model and turns it into a layer plan:

* **probes with controls**: negation and negation-scope probes per layer, tested on held-out cues, objects and
  templates, against a randomly initialised text tower and control labels (selectivity);
* **sensitivity**: how far a negation moves a caption's EOT state compared with a same-size non-negating edit;
* **gradient norms**: the relative gradient norm of each block under the fine-tuning losses;
* a **causal check**: the negation metrics after projecting the probe direction out of the residual stream;
* the **automatic layer plan** (`analysis.selection`) that combines them, with the figures and the report.

This is what the `probe-layers` command does, step by step. About 5 minutes on 2 CPU cores
(`NOTEBOOK_SMALL=1`: the smoke-test build, under a minute).
'''),
    code(setup_cell("02_layer_evidence", SIZES_2)),
    code(LOAD_MODEL + '''
from probing.models.loading import load_clip

torch.manual_seed(0)  # the baseline: the same architecture with random weights
random_model = create_model(bundle.name, None).model  # same architecture, random weights
'''),
    md('''
## The probing tasks

*negation*: is the caption negated (twins that differ only in the negated clause)? *scope*: which of two
objects is negated, on minimal pairs with the same words ("a circle but no square" / "a square but no circle"),
so that no bag-of-words feature can solve it. Each task has an in-distribution test split and three held-out
splits, and a control labelling (a random label per caption type) for selectivity.
'''),
    code('''
from probing.measure.tasks import synthetic_negation_task, synthetic_scope_task

tasks = [synthetic_negation_task(world, n_train=SIZES["n_train"], n_test=SIZES["n_test"], seed=0),
         synthetic_scope_task(world, n_train=SIZES["n_train"], n_test=SIZES["n_test"], seed=0)]
for task in tasks:
    print(f"{task.name}: {len(task.train)} training captions; tests " +
          ", ".join(f"{split} {len(index)}" for split, index in task.tests.items()))
    for i in task.tests["heldout_cue"][:2]:
        print(f"    label {task.labels[i]}: {task.captions[i]}")
'''),
    md('''
## Measure

`measure_layers` runs all four measurements. The gradient norms use the real fine-tuning losses; the helper that
builds them is the one `probe-layers` uses (`analysis.cli.build_loss_fns`): CLIP, CoN-CLIP and the two halves of
Omni-NegCLIP.
'''),
    code('''
from analysis.cli.probe_layers import GRAD_LOSSES, build_loss_fns
from probing.measure.layers import MeasureConfig, measure_layers

config = MeasureConfig(seeds=SIZES["seeds"], n_sensitivity=SIZES["n_sensitivity"], n_causal=SIZES["n_causal"],
                       grad_batches=SIZES["grad_batches"], grad_batch_size=SIZES["grad_batch_size"])
started = time.perf_counter()
measurements = measure_layers(model, preprocess, tokenizer, tasks, world=world, random_model=random_model,
                              loss_fns=build_loss_fns(GRAD_LOSSES), config=config, progress=False)
measurements.meta["model"] = bundle.info
measurements.save(OUT)
print(f"measured in {(time.perf_counter() - started) / 60:.1f} min; tables: " +
      ", ".join(f"{name} {len(getattr(measurements, name))} rows"
                for name in ("probes", "selectivity", "sensitivity", "gradnorms", "causal")))
'''),
    md('''
Held-out probe accuracy per layer (logistic probe, mean of the three held-out splits), the trained model
against the random-weights baseline:
'''),
    code('''
probes = pd.DataFrame(measurements.probes)
heldout = probes[(probes.labels == "task") & (probes.probe == "logistic") & probes.split.str.startswith("heldout")]
probe_table = heldout.pivot_table(index="layer", columns=["task", "model"], values="accuracy", aggfunc="mean")
for task in ("negation", "scope"):
    probe_table[(task, "margin")] = probe_table[(task, "trained")] - probe_table[(task, "random")]
probe_table.sort_index(axis=1).T
'''),
    md('''
## The automatic layer plan

`select_layers` turns each measurement into "what block b adds" and combines the three components (weights
0.5 probe, 0.25 gradient norm, 0.25 sensitivity); the default rule picks the shortest front prefix holding 80 %
of the combined evidence. The formulas are in `analysis/selection.py`. Other rules are one argument away.
'''),
    code('''
from analysis.selection import SelectionConfig, describe_blocks, select_layers

plan = select_layers(measurements, SelectionConfig())
plan.validate(measurements.n_layers)
plan_path = plan.save(OUT / "layer_plan.json")
print("plan:", plan.describe())
print(f"front half (blocks 0-{measurements.n_layers // 2 - 1}) holds {plan.evidence['front_half_share']:.0%} "
      "of the combined evidence")
for note in plan.evidence["notes"]:
    print("note:", note)
for name, other in {"top-4": SelectionConfig(rule="topk", k=4), "Auto-RGN": SelectionConfig(rule="auto_rgn")}.items():
    print(f"{name:>9} rule would pick blocks {describe_blocks(select_layers(measurements, other).blocks)}")
pd.DataFrame(plan.evidence["per_block"]).set_index("block").T
'''),
    md('''
## Figures

`plot_all` writes each figure as PNG and PDF (paper column width) and returns the paths; the selected blocks
are shaded.
'''),
    code('''
from analysis.report.figures import plot_all
from analysis.report.report import FIGURE_CAPTIONS

figures = plot_all(measurements, plan, OUT / "figures")
for name, paths in figures.items():
    display(Markdown(f"**{name}** ({', '.join(p.name for p in paths)}): {FIGURE_CAPTIONS[name]}"))
    show(paths[0])
'''),
    md('''
## Report

`write_report` writes `report.md` and `report.json`; its summary sentences are computed from the plan's evidence.
'''),
    code('''
from analysis.report.report import summary_sentences, write_report

report = write_report(OUT, measurements, plan, figures=figures, model_info=measurements.meta["model"],
                      embedded_metrics=bundle.metrics)
print("wrote", ", ".join(str(p) for p in report.values()), "and", plan_path)
display(Markdown("\\n".join(f"* {sentence}" for sentence in summary_sentences(measurements, plan))))
'''),
    md('''
## Key numbers of this run
'''),
    code('''
sensitivity = pd.DataFrame(measurements.sensitivity).pivot(index="layer", columns="edit", values="sensitivity")
gain = sensitivity["presence"] - sensitivity["control"]
causal = pd.DataFrame(measurements.causal)
grad = pd.DataFrame(measurements.gradnorms)
grad = grad[grad.component == "all"].groupby("layer").relative_norm.mean()
key = {
    "selected blocks": describe_blocks(plan.blocks) + f"  ({plan.rule})",
    "share of the combined evidence in the front half": f"{plan.evidence['front_half_share']:.3f}",
}
for task in ("negation", "scope"):
    trained, margin = probe_table[(task, "trained")], probe_table[(task, "margin")]
    key[f"{task} probe, held-out: best layer, accuracy, random baseline there"] = (
        f"{trained.idxmax()}, {trained.max():.3f}, {probe_table[(task, 'random')][trained.idxmax()]:.3f}")
    key[f"{task} probe, held-out margin over random: max (layer)"] = f"{margin.max():+.3f} ({margin.idxmax()})"
    key[f"{task} probe, held-out: last layer"] = f"{trained.iloc[-1]:.3f}"
key["sensitivity presence - control: max (layer)"] = f"{gain[1:].max():+.3f} ({gain[1:].idxmax()})"
key["sensitivity presence / control at the last layer"] = (
    f"{sensitivity['presence'].iloc[-1]:.3f} / {sensitivity['control'].iloc[-1]:.3f}")
key["relative gradient norm, mean over losses: largest block"] = f"{grad.idxmax()} ({grad.max():.2e}; block 11: {grad.iloc[-1]:.2e})"
for metric in ("ccneg_accuracy", "scope_accuracy"):
    change = causal[causal.metric == metric].set_index("layer").change
    key[f"causal: {metric} change with the probe direction projected out, largest (layer)"] = (
        f"{change[change.abs().idxmax()]:+.3f} ({change.abs().idxmax()})")
for name, value in key.items():
    print(f"{name:<76} {value}")
''' + ELAPSED),
    md(FINDINGS_TITLE + "\n\n(filled in from the committed run)"),
]

# --- 3: fine-tune and compare ------------------------------------------------------------------------

SIZES_3 = '''
# The README's scope recipe (finetune/losses.py: negation_mix_loss): the scope pair, CLIP to hold retrieval,
# half a CoN-CLIP first term; a short budget here, so scope moves only part of the way
LOSS, LOSS_KWARGS = "mix", {"scope_pair": 1.0, "clip": 1.0, "conclip": 0.5, "negationclip": 0.0, "terms": [1]}
if SMALL:
    TRAIN = dict(steps=10, batch_size=16, lr=3e-3, warmup_steps=2)
    N_TRAIN, EVAL_N, EVAL_N_CLASSIFICATION, SEEDS = 64, 100, 36, (0,)
else:
    TRAIN = dict(steps=40, batch_size=32, lr=3e-3, warmup_steps=4)
    N_TRAIN, EVAL_N, EVAL_N_CLASSIFICATION, SEEDS = 1024, 300, 180, (0, 1)
# notebook 2's sizes, for the layer plan when notebook 2 has not run (the causal check does not enter the plan)
PLAN_ARGS = ["--measurements", "probes,sensitivity,gradnorms"] + (
    ["--n-train", "200", "--n-test", "60", "--seeds", "0", "--n-sensitivity", "60", "--grad-batches", "1",
     "--grad-batch-size", "16"] if SMALL else [])
'''

NB3 = [
    md('''
# 3 · Fine-tune and compare: does training only the planned blocks work?

Notebook 2 chose which text blocks to fine-tune from layer-wise evidence. This notebook tests the choice:
it fine-tunes exactly the planned blocks with a negation-aware loss (the scope pair "A and no X" against
"A and no B" for the same image, half a CoN-CLIP term, and a plain CLIP term that holds retrieval), evaluates against the frozen model and against training all blocks, and then runs
a small layer ablation (frozen / selected / front / back / all, several seeds, the same data and budget for
every variant) whose figure compares them with confidence intervals.

Metrics (held-out test suites of the synthetic world): **scope accuracy**, the shortcut-proof negation metric
(s(I, "A and no X") > s(I, "A and no B") with X absent and B present; chance 0.5), the CC-Neg-style accuracy the
papers report (which a "negation word lowers the score" shortcut already wins), and retrieval/zero-shot retention.
The budgets are small (about 7 minutes on 2 CPU cores for the whole notebook), so this is a tutorial-scale study,
not a converged one. `NOTEBOOK_SMALL=1`: the smoke-test build, a few training steps.
'''),
    code(setup_cell("03_finetune_compare", SIZES_3)),
    code(LOAD_MODEL),
    md('''
## The layer plan

The plan notebook 2 wrote, if it ran on this build; otherwise the same measurement, through the `probe-layers`
command's entry point (this takes a few minutes on the default build).
'''),
    code('''
from analysis.cli.probe_layers import main
from finetune.plan import LayerPlan
from probing.models.text_tower import TextTower

plan_path = Path(os.path.relpath(ROOT / "runs" / "notebooks" / "02_layer_evidence" / SPEC / "layer_plan.json"))
if not plan_path.exists():
    plan_path = OUT / "probe-layers" / "layer_plan.json"
    status = main(["--model", f"embedded:{SPEC}", "--out", str(plan_path.parent), "--threads", "1", "--no-progress",
                                *PLAN_ARGS])
    assert status == 0, f"probe-layers exited with {status}"
plan = LayerPlan.load(plan_path)
n_layers = TextTower.from_model(model).n_layers
plan.validate(n_layers)
print(f"plan from {plan_path}: {plan.describe()}")
'''),
    md('''
## Fine-tune the planned blocks, and all blocks for comparison

Both runs use the same examples, loss, optimiser settings and seed, and the plan's extras (embeddings, final
LayerNorm, projection, logit scale as the plan says); only the blocks differ. The image tower stays frozen, so
its features are computed once per run and cached.
'''),
    code('''
import copy
import contextlib
import io

from finetune.train import TrainConfig, train

examples = world.examples(N_TRAIN, "train", seed=0)
e = examples[0]
print(f"{len(examples)} training examples, e.g.\\n  caption: {e.caption}\\n  presence-negated (false): "
      f"{e.presence_negated}\\n  absence-negated (true): {e.absence_negated}\\n")

plans = {"planned": plan,
         "all": LayerPlan(list(range(n_layers)), plan.train_embeddings, plan.train_ln_final, plan.train_projection,
                          plan.train_logit_scale, rule="all blocks")}
tuned, results = {}, {}
for name, run_plan in plans.items():
    config = TrainConfig(loss=LOSS, loss_kwargs=LOSS_KWARGS, **TRAIN, seed=0, device="cpu", out_dir=str(OUT / name),
                         log_every=max(1, TRAIN["steps"] // 20), ckpt_every=TRAIN["steps"], tensorboard=False,
                         progress=False)
    tuned[name] = copy.deepcopy(model)
    started = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the trainer prints which parts train; keep the first table only
        results[name] = train(tuned[name], tokenizer, preprocess, examples, run_plan, config)
    if name == "planned":
        print(log.getvalue())
    print(f"{name}: {run_plan.describe()}\\n  {results[name].step} steps in {time.perf_counter() - started:.0f} s, "
          f"final loss {results[name].loss:.3f}, weights in {results[name].model_path}")
'''),
    md('''
## Evaluate against the frozen model

Three test suites, each holding out one thing the fine-tuning never saw: objects, caption templates, or cue words
(*never, none, isn't*). Retention (R@1 among 100, zero-shot) comes from the held-out-object suite.
'''),
    code('''
from probing.synthetic.suite import SyntheticSuite

suites = {heldout: SyntheticSuite.build(world, n=EVAL_N, n_classification=EVAL_N_CLASSIFICATION, split="test",
                                        heldout=heldout, seed=1) for heldout in ("object", "template", "cue")}
image_features = {heldout: suite.image_features(model, preprocess) for heldout, suite in suites.items()}
COLUMNS = {"object/scope_accuracy": "scope, held-out objects", "template/scope_accuracy": "scope, held-out templates",
           "cue/scope_accuracy": "scope, held-out cues", "object/ccneg_accuracy": "CC-Neg-style",
           "object/absence_accuracy": "absence", "object/image_to_text_R@1_among_100": "I→T R@1/100",
           "object/zero_shot_affirmative": "zero-shot objects"}

def evaluate(m):
    m.eval()
    metrics = {}
    for heldout, suite in suites.items():
        values = suite.scores(m, preprocess, tokenizer, image_features=image_features[heldout])
        metrics.update({f"{heldout}/{k}": v for k, v in values.items()})
    return metrics

evaluated = {"frozen": evaluate(model), **{name: evaluate(m) for name, m in tuned.items()}}
comparison = pd.DataFrame({name: {label: metrics[key] for key, label in COLUMNS.items()}
                           for name, metrics in evaluated.items()}).T
comparison
'''),
    code('''
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
display(fig)
plt.close(fig)
'''),
    md('''
## The layer ablation

`run_ablation` repeats the fine-tuning for each variant and seed, with the same examples, loss and budget, and
evaluates every run on the same three suites; *selected* is the plan above, *front* and *back* are the two halves
of the tower. Every trained variant gets the plan's extras (`extras="plan"`), so variants differ only in blocks.
Its seed-0 *selected* and *all* runs repeat the two runs above.
'''),
    code('''
from analysis.ablation.study import AblationConfig, block_variants, markdown_table, run_ablation
from analysis.ablation.figures import ablation_figure

groups = block_variants(n_layers)  # front / middle / back halves and all, as block lists
variants = ["frozen", "selected"] + [v for v in ("front", "back", "all") if groups[v] != list(plan.blocks)]
for v in ("front", "back", "all"):
    if v not in variants:
        print(f"the plan trains exactly the '{v}' blocks, so '{v}' is left out (it would repeat 'selected')")
ablation_config = AblationConfig(model=f"embedded:{SPEC}", loss=LOSS, loss_kwargs=LOSS_KWARGS, **TRAIN, n_train=N_TRAIN,
                                 seeds=SEEDS, eval_n=EVAL_N, eval_n_classification=EVAL_N_CLASSIFICATION,
                                 variants=tuple(variants), plan_path=str(plan_path), extras="plan", device="cpu")
started = time.perf_counter()
ablation = run_ablation(ablation_config, OUT / "ablation", progress=False)
print(f"{len(ablation.executed)} runs in {(time.perf_counter() - started) / 60:.1f} min; wrote " +
      ", ".join(p.name for p in ablation.outputs.values()) + f" in {OUT / 'ablation'}")
display(Markdown(markdown_table(ablation.summary, cost=False)))
'''),
    code('''
figure = ablation_figure(ablation.summary)
# Panel (b) of this figure is the single-layer sweep (variants=("sweep",): one run per block and seed), left out
# here to keep the notebook to a few minutes; drop its empty axes and let panel (a) take the figure.
top, bottom = figure.axes[:2]
bottom.remove()
top.set_subplotspec(top.get_subplotspec().get_gridspec()[:, 0])
figure.set_size_inches(3.4, 3.6)
figure.savefig(OUT / "ablation_variants.png", dpi=200, bbox_inches="tight")
show(OUT / "ablation_variants.png", width=520)
'''),
    md('''
## Key numbers of this run
'''),
    code('''
from analysis.ablation.study import load_runs

print(f"plan: {plan.describe()}")
print(f"single runs (seed 0), {TRAIN['steps']} steps of batch {TRAIN['batch_size']}:")
print(comparison.round(3).to_string())
print(f"\\nablation: mean ± 95% t-interval half-width over seeds {SEEDS}")
rows = {}
for entry in ablation.summary["variants"]:
    rows[entry["variant"]] = {label: f"{entry['metrics'][key]['mean']:.3f} ± "
                                     f"{(entry['metrics'][key]['high'] - entry['metrics'][key]['low']) / 2:.3f}"
                              for key, label in COLUMNS.items() if key in entry["metrics"]}
print(pd.DataFrame(rows).T.to_string())
runs = {(r["variant"], r["seed"]): r["metrics"] for r in load_runs(OUT / "ablation" / "runs.jsonl")}
for variant, name in (("selected", "planned"), ("all", "all")):
    if (variant, 0) in runs:
        gap = max(abs(runs[(variant, 0)][key] - evaluated[name][key]) for key in COLUMNS)
        print(f"ablation '{variant}' seed 0 against the '{name}' run above: largest metric difference {gap:.1g}")
''' + ELAPSED),
    md(FINDINGS_TITLE + "\n\n(filled in from the committed run)"),
]

CELLS = {"01_activations": NB1, "02_layer_evidence": NB2, "03_finetune_compare": NB3}
# What the committed run (embedded default model) showed; `--findings` writes these into the notebooks.
FINDINGS: dict[str, str] = {
    "01_activations": """
Committed run: the embedded default model, 0.3 min on 2 shared CPU cores (small build: about 0.3 min).

- **The model fails negation the way CLIP does.** On the example scene (a blue diamond) the true caption scores
  0.873, the false "a shape but not a blue diamond" 0.805 and the true "a shape but not a yellow triangle" only
  0.497: the caption that names what is in the image wins, negated or not. The build's own metrics over 1,000
  held-out scenes say the same: CC-Neg-style accuracy 0.94, but scope accuracy 0.05 and absence-vs-presence
  accuracy 0.05, far below chance (0.5).
- **The negation is not lost on the way to EOT.** The twins differ from the cue onwards at every layer, and their
  EOT states stay apart: cosine 0.63 after block 0 and 0.60 after the last block (text features: 0.59). The
  encoder registers *that* a caption is negated; what it fails at is *what* is negated.
- **Block 0 attends to the cue most.** Averaged over 600 negated captions, the EOT token attends to the cue token
  with weight 0.194 in block 0, head 3, against 0.073 for an even spread over the caption; averaged over all
  blocks and heads the weight is 0.052, below the even spread. The twins' EOT cosine drops from 1.00 to 0.63
  across that same block, the largest single drop.
- **A linear probe reads "negated or not" at EOT, but only for the cue words it was trained on.** At the last
  layer it scores 0.897 in distribution, 0.848 on held-out objects and 0.745 on held-out templates, but 0.498 on
  the held-out cues *never, none, isn't* (chance); no layer does better than 0.509 there. The EOT state encodes
  the training cue tokens rather than a cue-independent negation feature. Notebook 2 puts these accuracies
  against a random-weights text tower and control labels.
""",
    "02_layer_evidence": """
Committed run: the embedded default model, 5 probe seeds, 1.9 min on 2 shared CPU cores (small build: about
0.6 min).

- **The plan trains text blocks 0-5** (with the embeddings, final LayerNorm, projection and logit scale): the
  shortest front prefix holding 80 % of the combined evidence (it holds 81 %). The other rules also start at
  the front: Auto-RGN picks blocks 0-4, top-4 picks blocks 0-1, 5 and 11.
- **Probes with controls.** On held-out data (mean of the cue, object and template splits) the negation probe
  never beats the random-weights text tower (best margin -0.002, at the embeddings; after block 0: 0.727
  against 0.780), so it shows token identity, not negation. The scope probe beats it by 4 to 7 points at every
  layer from block 1's output on (largest after block 1: 0.616 against 0.546), which is why block 1 carries
  most of the probe share (0.68). The held-out mean includes the held-out-cue split, where both probes are
  near chance (notebook 1).
- **Sensitivity adds no evidence:** after the embeddings, a presence negation never moves the EOT state further
  than a same-size colour swap (last layer: 0.21 against 0.34).
- **Gradient norms** of every loss are largest in block 0 (relative norm 0.078 against 0.005 in block 11, mean
  over the four losses): they say where any loss changes the model most, not where negation lives.
- **Causal check:** projecting the negation probe direction out of the residual stream changes CC-Neg-style
  accuracy by at most 0.010 and scope accuracy by at most 0.003, so the model's negation behaviour does not run
  through the direction the probe found.
- Together: the front blocks are where the fine-tuning gradients are largest and where the scope probe first
  clears the random baseline (after block 1); the plan covers both.
""",
    "03_finetune_compare": """
Committed run: the embedded default model, 40 steps of batch 32 (lr 3e-3; about 1.25 passes over 1,024
examples) per run, seeds 0 and 1 in the ablation, 4.4 min on 2 shared CPU cores (small build: about 0.7 min).
The loss is the README's scope recipe (scope pair + CLIP + half a CoN-CLIP term) with a fifteenth of the
training samples of its 300-step run.

- **Fine-tuning the planned blocks 0-5 starts to teach scope.** Against the frozen model, scope accuracy rose
  on held-out objects (0.033 → 0.387) and templates (0.070 → 0.247) but hardly on held-out cues (0.060 →
  0.077); absence accuracy rose from 0.067 to 0.357 and CC-Neg-style accuracy from 0.957 to 1.000. The price at
  this short budget: image→text R@1 among 100 0.743 → 0.673 and zero-shot objects 0.917 → 0.711. The README's
  300-step run of the same loss on the same blocks reaches 0.97 / 0.93 on held-out objects / templates with
  R@1 0.748, so the loss of retention here is a short-run effect.
- **Training all 12 blocks gave more scope at this budget** (0.563 / 0.360 / 0.060) and lost less zero-shot
  accuracy (0.822; R@1 0.643), with the same extras and 12 trained blocks instead of 6.
- **The ablation** (frozen / selected / back / all, 2 seeds; 'front' is the plan itself) moves every trained
  variant well above the frozen model on scope, but with 2 seeds the 95 % intervals are wide (up to ±1.0) and
  overlap, so no variant is separated from the others; back (blocks 6-11) kept retrieval best (R@1 0.715) and
  gained least scope on held-out objects (0.358). The ablation's seed-0 'selected' and 'all' runs reproduced
  the two single runs exactly.
- At 40 steps this comparison is underpowered; the README's ablation (3 seeds, single-layer sweep) is the
  better-powered one.
""",
}


def build(name: str) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=[nbformat.from_dict(dict(cell)) for cell in CELLS[name]])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    if name in FINDINGS:
        set_findings(notebook, FINDINGS[name])
    return notebook


def set_findings(notebook: nbformat.NotebookNode, text: str) -> None:
    last = notebook.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith(FINDINGS_TITLE), "last cell is not the findings"
    last.source = FINDINGS_TITLE + "\n\n" + text.strip("\n")


def execute(path: Path, timeout: int = 1800) -> float:
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=dict(os.environ))
    nbformat.write(notebook, path)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebooks (default: all)")
    parser.add_argument("--execute", action="store_true", help="run each notebook and keep its outputs")
    parser.add_argument("--findings", action="store_true", help="only rewrite the closing findings cells")
    args = parser.parse_args(argv)
    for name in args.names:
        path = HERE / f"{name}.ipynb"
        if args.findings:
            notebook = nbformat.read(path, as_version=4)
            if name in FINDINGS:
                set_findings(notebook, FINDINGS[name])
            nbformat.write(notebook, path)
            continue
        nbformat.write(build(name), path)
        if args.execute:
            seconds = execute(path)
            print(f"{path.name}: executed in {seconds / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
