"""Names that command-line `--help` shows, kept free of torch. `finetune.losses` checks its
registries against them when it is imported."""
from __future__ import annotations

LOSS_NAMES: tuple[str, ...] = ("conclip", "clip", "omni", "negationclip", "tripletclip", "mix")
MIX_PARTS: tuple[str, ...] = ("conclip", "negationclip", "clip", "tripletclip", "omni", "absence_vs_presence",
                              "scope_pair")
# what a layer plan may train besides text blocks
EXTRAS: tuple[str, ...] = ("embeddings", "ln_final", "projection", "logit_scale")
# losses whose relative gradient norms probe-layers measures (finetune.losses.gradnorm_loss_fns)
GRADNORM_LOSSES: tuple[str, ...] = ("clip", "conclip", "omni_presence", "omni_absence")
