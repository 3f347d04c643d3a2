"""finetune: train exactly the text-tower layers a layer plan names, with a negation loss.

    losses.py    CLIP, CoN-CLIP, Omni-NegCLIP, NegationCLIP, TripletCLIP (the single definition)
    plan.py      LayerPlan: the JSON file the layer selector writes
    freezing.py  apply_plan: freeze everything, unfreeze the planned parts
    train.py     TrainConfig, Trainer, train(), batch_losses (import them from finetune.train)
    recipe.py    load_recipe, recipe_names: the anchors' settings as files (finetune/recipes/*.json)
    cli.py       the `finetune-layers` command

Names are imported on first use, so that command-line `--help` stays instant.
"""
from __future__ import annotations

from probing.lazy import lazy_exports

_EXPORTS = {
    "LOSSES": "finetune.losses",
    "compute_loss": "finetune.losses",
    "make_loss_fn": "finetune.losses",
    "LayerPlan": "finetune.plan",
    "PlanError": "finetune.plan",
    "apply_plan": "finetune.freezing",
    "TrainConfig": "finetune.train",
    "Trainer": "finetune.train",
    "batch_losses": "finetune.train",
    "load_recipe": "finetune.recipe",
    "recipe_names": "finetune.recipe",
}


__getattr__, __dir__ = lazy_exports("finetune", _EXPORTS, globals())

__all__ = list(_EXPORTS)
