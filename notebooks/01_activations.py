# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1 · Activations: what does the text encoder do with the word "no"?
#
# CLIP matches "a red circle and **no** blue square" to the same images as "a red circle and a blue square".
# This notebook asks where, inside the text encoder, the two captions differ: does the residual stream at the
# end-of-text (EOT) position, the one state CLIP projects into the shared space, still carry the negation, and
# does the EOT token attend to the negation cue at all? At the end, one linear probe per layer reads
# "negated or not" off the EOT state, on held-out cue words, objects and templates.
#
# It uses the toolkit's embedded default model (`create_model("embedded")`): a small CLIP pretrained offline on a
# synthetic world of coloured shapes, with a text tower as deep as ViT-B/32's (12 blocks) and the real CLIP
# tokenizer. It runs in about a minute on 2 CPU cores; `NOTEBOOK_SMALL=1` switches to the smoke-test build
# (`"embedded:small"`) and tiny sizes, whose numbers say nothing about negation.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from analysis.report.notebook import show, start

run = start("01_activations")  # threads, logging, the output folder: analysis/report/notebook.py
SMALL, MODEL, BUILD, OUT, STARTED = run.small, run.model, run.build, run.out, run.started
# probe data (captions) and probe seeds; negated captions averaged over in the attention figure
N_TRAIN, N_TEST, SEEDS, N_ATTENTION = (200, 60, (0,), 60) if SMALL else (2000, 600, (0, 1, 2, 3, 4), 600)

print(f"model {MODEL}; outputs in {OUT}")

# %% [markdown]
# ## The model and its failure on one scene
#
# `create_model` returns a `ModelBundle`: the model with its preprocessing, tokenizer, the synthetic world it was
# pretrained on, and the held-out metrics its build recorded. Below, a scene from the test split, its true
# caption, a presence-negated caption (negates something that *is* there: false) and an absence-negated caption
# (negates something that is *not* there: true). The numbers are cosine similarities between the image and each
# caption; a model that read negation would rank the false one last.

# %%
from probing.models.build import format_metrics
from probing.models.factory import create_model

bundle = create_model(MODEL)  # the embedded models ship with the package
model, preprocess, tokenizer, world = bundle.model, bundle.preprocess, bundle.tokenizer, bundle.world
print(f"{bundle.label} ({bundle.name}); held-out metrics recorded when it was built:")
print(format_metrics(bundle.metrics))

# %%
from probing import encode_captions, encode_images

example = world.examples(1, "test", seed=3, heldout="object")[0]
captions = {"true caption": example.caption,
            "presence-negated (false)": example.presence_negated,
            "absence-negated (true)": example.absence_negated}
image_features = encode_images(model, preprocess, [example.image])
text_features = encode_captions(model, tokenizer, list(captions.values()))
similarity = (image_features @ text_features.T)[0]

fig, ax = plt.subplots(figsize=(1.4, 1.4))
ax.imshow(example.image, interpolation="nearest")
ax.set_axis_off()
show(fig, width=160)
for (kind, text), value in zip(captions.items(), similarity.tolist()):
    print(f"{value:+.3f}  {kind:<26} {text}")

# %% [markdown]
# ## A negated caption and its affirmative twin, through the hooks
#
# `HookedCLIPText` is a TransformerLens view of the model's own text tower (it shares the parameters), so
# `run_with_cache` returns every intermediate activation. The two captions below have the same length and differ
# in one token: the cue "no" against the article "a".

# %%
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

# %% [markdown]
# ### Residual stream
#
# Left: how far the negated caption's residual stream is from its twin's, per layer and position
# (||r_neg - r_aff|| / ||r_aff||; layer 0 = embeddings, layer l = output of block l-1). The causal mask means
# positions before the cue cannot differ. Right: cosine similarity of the two EOT states per layer, the
# quantity that decides whether CLIP can tell the captions apart.

# %%
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
show(fig)
print("EOT cosine per layer:", np.round(eot_cosine, 3))

# %% [markdown]
# ### Attention from EOT to the cue word
#
# `blocks.{l}.attn.hook_pattern` holds the attention weights. Below: the weight the EOT query puts on the cue
# token, per layer and head, for the negated caption, for its twin (on "a", the token in the same slot), and
# averaged over many negated captions of the synthetic world (every cue word: no, not, without, there is no,
# never, none, isn't). For scale: an EOT query that spread its attention evenly over a caption's tokens would give
# each about 1 / (number of tokens), printed below the figure.

# %%
CUE_TOKEN = {"no": "no", "not": "not", "without": "without", "there is no": "no", "never": "never",
             "none": "none", "isn't": "isn"}  # the token that carries each cue


def eot_to_cue(captions, cue_words, batch_size=128):
    """Mean attention weight EOT -> cue token [layer, head] over captions (one cue each), and the mean
    weight an even spread over the caption's tokens would give (1 / number of tokens up to EOT)."""
    total, count, even = torch.zeros(n_layers, n_heads), 0, 0.0
    for first in range(0, len(captions), batch_size):
        batch = tokenizer(captions[first:first + batch_size])
        _, batch_cache = hooked.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
        ends = hooked.eot_positions(batch)
        for i, cue_word in enumerate(cue_words[first:first + batch_size]):
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

panels = [(single[:, 0], 'negated caption\nEOT -> "no"'), (single[:, 1], 'affirmative twin\nEOT -> "a" (same slot)'),
          (averaged, f"mean over {len(probe_negated)} negated\ncaptions: EOT -> cue token")]
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
show(fig)
top_layer, top_head = np.unravel_index(averaged.argmax(), averaged.shape)
print(f"EOT -> cue attention, mean over captions: strongest at block {top_layer}, head {top_head}: "
      f"{averaged.max():.3f}; mean over blocks and heads {averaged.mean():.3f}; an even spread would give "
      f"{even_share:.3f}")

# %% [markdown]
# ## One probe: is negation linearly readable at EOT?
#
# `capture_pooled` stores the EOT state of every layer for every caption: `[n_layers + 1, n_captions, d_model]`.
# The negation task's captions come in twins (negated / affirmative); the probe trains on the cues *no, not,
# without, there is no*, and is tested in distribution and on held-out cues (*never, none, isn't*), held-out
# objects and held-out templates. A probe that only detects the token "no" fails the held-out cue split.

# %%
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
print(f"\nlogistic probe at layer {layer}, balanced accuracy:")
for split, accuracy in single_probe.items():
    print(f"  {split:<18} {accuracy:.3f}")

# %% [markdown]
# The same probe at every layer, with several seeds and bootstrap 95 % intervals (`probe_layers`). Notebook 2
# puts such accuracies against the null models (the same tower with random weights) and control labels.

# %%
sweep = probe_layers(pooled, task.labels, task.train, task.tests, seeds=SEEDS, probes=("logistic",))
curves = pd.DataFrame(sweep.summary)
table = curves.pivot(index="layer", columns="split", values="accuracy")

fig, ax = plt.subplots(figsize=(6.5, 3.4))
for split, rows in curves.groupby("split", sort=False):
    ax.plot(rows["layer"], rows["accuracy"], marker="o", ms=3, label=split)
    ax.fill_between(rows["layer"], rows["ci_low"], rows["ci_high"], alpha=0.15)
ax.axhline(0.5, color="black", lw=0.8, ls=":")
ax.set_xlabel("layer (0 = embeddings, l = output of block l-1)")
ax.set_ylabel("balanced accuracy")
ax.set_title(f"negation probe at EOT ({len(SEEDS)} seed(s), 95% bootstrap CI)")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
show(fig, width=640)
table.T

# %% [markdown]
# ## What this run showed
#
# Computed from this run's results above (re-running the notebook rewrites them).

# %%
metrics = bundle.metrics or {}
order = sorted(captions, key=lambda kind: -similarity[list(captions).index(kind)])
cue_curve = curves[curves.split == "heldout_cue"].set_index("layer")
best_cue = int(cue_curve["accuracy"].idxmax())
last = curves[curves.layer == layer].set_index("split")


SPLITS = {"in_distribution": "in distribution", "heldout_cue": "on held-out cues",
          "heldout_object": "on held-out objects", "heldout_template": "on held-out templates"}


def versus_chance(row):
    """Where a probe's 95 % interval lies relative to chance (0.5)."""
    return "above chance" if row["ci_low"] > 0.5 else "below chance" if row["ci_high"] < 0.5 else "at chance"


findings = [
    f"**The scene.** The model ranks the captions {' > '.join(order)} (similarities "
    + ", ".join(f"{similarity[list(captions).index(kind)]:+.3f}" for kind in order) + "): the false "
    + ("caption comes last, as a model that read the negation would rank it." if order[-1].startswith("presence")
       else "caption does not come last; the caption that names what is in the image wins, negated or not."),
    f"**The build's own held-out metrics:** CC-Neg-style accuracy {metrics.get('ccneg_accuracy', float('nan')):.2f}, "
    f"scope accuracy {metrics.get('scope_accuracy', float('nan')):.2f} and absence-vs-presence accuracy "
    f"{metrics.get('absence_accuracy', float('nan')):.2f} (chance 0.5 for each).",
    f"**The twins' EOT states** have cosine {eot_cosine[1]:.3f} after block 0 and {eot_cosine[-1]:.3f} after the last "
    f"block (text features: {final_cosine:.3f}); the largest single drop is across block "
    f"{int(np.argmin(np.diff(eot_cosine)))} ({np.diff(eot_cosine).min():+.3f}).",
    f"**EOT -> cue attention**, averaged over {len(probe_negated)} negated captions, is strongest in block "
    f"{top_layer}, head {top_head} ({averaged.max():.3f}) against {even_share:.3f} for an even spread; over all blocks "
    f"and heads it averages {averaged.mean():.3f}, "
    + ("about the even spread." if abs(averaged.mean() - even_share) < 0.1 * even_share else
       f"{'above' if averaged.mean() > even_share else 'below'} the even spread."),
    "**The probe at the last layer** scores " + ", ".join(
        f"{last.loc[split, 'accuracy']:.3f} {SPLITS[split]} ({versus_chance(last.loc[split])})"
        for split in last.index) + f". On held-out cues its best layer is {best_cue} "
    f"({cue_curve.loc[best_cue, 'accuracy']:.3f}, {versus_chance(cue_curve.loc[best_cue])}).",
]
display(Markdown("\n".join(f"- {finding}" for finding in findings)))
print(f"notebook run time: {(time.perf_counter() - STARTED) / 60:.1f} min ({BUILD} build)")
