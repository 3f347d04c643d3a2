#!/usr/bin/env bash
# The scope recipe on the embedded default model, three training and data seeds, each evaluated on the
# synthetic test split with one held-out axis at a time (objects, templates, cue words never seen in
# fine-tuning); the frozen model beside it. Results: runs/scope/<run>/<axis>/evaluation.json, which
# scripts/make_results.py puts in the README. Usage: bash scripts/scope_recipe.sh [out folder]
set -euo pipefail
out=${1:-runs/scope}
for axis in object template cue; do
  [ -f "$out/frozen/$axis/evaluation.json" ] || evaluate-negation --model embedded --benchmarks synthetic \
      --synthetic-heldout "$axis" --threads 1 --no-progress --out "$out/frozen/$axis"
done
for seed in 0 1 2; do
  run="$out/seed$seed"
  [ -f "$run/model.safetensors" ] || finetune-layers --recipe scope --seed "$seed" --data-seed "$seed" \
      --threads 1 --no-progress --no-tensorboard --out "$run"
  for axis in object template cue; do
    [ -f "$run/$axis/evaluation.json" ] || evaluate-negation --model negclip-tiny --pretrained "$run/model.safetensors" \
        --benchmarks synthetic --synthetic-heldout "$axis" --threads 1 --no-progress --out "$run/$axis"
  done
done
