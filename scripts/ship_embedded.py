"""Maintainer tool: put an embedded build into the package (probing/models/shipped/).

    python scripts/ship_embedded.py small              build the 'small' spec (cache) and ship it
    python scripts/ship_embedded.py default --from F   ship an existing build F of the 'default' spec

The file must record exactly the spec `probing.models.embedded.REGISTRY[variant].spec` (tests check that every
shipped file does), so the shipped model is always what `build-embedded --rebuild` would build.
Its held-out metrics are re-evaluated here with the current evaluator and recorded in the file, so
the numbers every command prints are those of the shipped weights in the current vocabulary.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from probing.clip.loading import checkpoint_metadata, load_clip, save_clip_checkpoint
from probing.models import SHIPPED
from probing.models.build import embedding_init_record, ensure_embedded_model, evaluate_build, world_for
from probing.models.embedded import REGISTRY
from probing.synthetic.record import world_metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=[n for n, m in REGISTRY.items() if m.shipped])
    parser.add_argument("--from", dest="source", type=Path, help="an existing build of the variant's spec")
    args = parser.parse_args()
    spec = REGISTRY[args.variant].spec
    source = args.source or ensure_embedded_model(spec)
    metadata = checkpoint_metadata(source)
    recorded = {**asdict(spec.__class__()), **json.loads(metadata["spec"])}  # later fields: defaults
    if recorded != json.loads(json.dumps(asdict(spec))):
        raise SystemExit(f"{source} records another spec than REGISTRY[{args.variant!r}].spec; build that spec")
    model, preprocess, tokenizer = load_clip(spec.model, pretrained=source)
    built = json.loads(metadata["metrics"])
    metrics = evaluate_build(model, preprocess, tokenizer, spec)  # the current evaluator, same weights
    metrics.update({key: built[key] for key in ("pretraining_minutes", "final_loss")})
    target = SHIPPED / REGISTRY[args.variant].shipped
    save_clip_checkpoint(model, target, model_name=spec.model, spec=spec.recorded(), metrics=metrics,
                         compact_init=embedding_init_record(model, spec), **world_metadata(world_for(spec)))
    print(f"shipped {source} as {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
