"""Names that command-line `--help` shows, kept free of torch. `finetune.losses` checks its
registries against them when it is imported."""
from __future__ import annotations

LOSS_NAMES: tuple[str, ...] = ("conclip", "clip", "omni", "omni_presence", "omni_absence", "negationclip",
                                "tripletclip", "negbench_mcq", "mix")
# losses that read NegBench MCQ items (an image, its K caption options, the index of the right one)
# instead of negation examples
MCQ_LOSSES: tuple[str, ...] = ("negbench_mcq",)
MIX_PARTS: tuple[str, ...] = ("conclip", "negationclip", "clip", "tripletclip", "omni", "absence_vs_presence",
                              "scope_pair")
# the mix's options that are not part weights: CoN-CLIP's terms and the omni part's settings
MIX_OPTIONS: tuple[str, ...] = ("terms", "omni_lam", "omni_lambda_o", "omni_lambda_t", "omni_margin")
# the command-line loss options each loss takes (finetune-layers --terms, --weights, --lam, ...); the
# mix takes Omni-NegCLIP's as the settings of its omni part (omni_lam, omni_lambda_o, ...)
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "conclip": ("terms",), "omni": ("lam", "lambda_o", "lambda_t", "margin"),
    "omni_absence": ("lambda_o", "lambda_t", "margin"),
    "mix": ("terms", "weights", "lam", "lambda_o", "lambda_t", "margin"),
}
# the keyword options of each loss function (finetune.losses checks them against the signatures); values are
# checked by finetune.options.check_loss_options
LOSS_KEYWORDS: dict[str, tuple[str, ...]] = {
    "clip": (), "conclip": ("terms",), "omni": ("lam", "lambda_o", "lambda_t", "margin"), "omni_presence": (),
    "omni_absence": ("lambda_o", "lambda_t", "margin"), "negationclip": (), "tripletclip": (), "negbench_mcq": (),
    "mix": MIX_PARTS + MIX_OPTIONS,
}
# Omni-NegCLIP's absence-loss hinge margin in the authors' training runs (their --margin default;
# 0.2 is only the default of a function signature in their code)
OMNI_MARGIN = 0.9
# what a layer plan may train besides text blocks
EXTRAS: tuple[str, ...] = ("embeddings", "ln_final", "projection", "logit_scale")
# losses whose relative gradient norms probe-layers measures (finetune.losses.gradnorm_loss_fns)
GRADNORM_LOSSES: tuple[str, ...] = ("clip", "conclip", "omni_presence", "omni_absence")
# bounds every command and the trainer check numbers against (the CLI's argument types and TrainConfig)
MAX_SEED = 2**32 - 1  # numpy's seed range (torch's is wider)
MAX_LEARNING_RATE = 1.0  # AdamW moves each weight by about lr per step; CLIP's weights are about 0.02
