"""Wall time of the whole CC-Neg pipeline, estimated from throughput measured on this machine.

    .venv/bin/python benchmarks/bench_pipeline.py [--threads 2] [--rounds 3] [--batch-size 64]

The pipeline: image features of CC-Neg's training images (cached once, `probing.features.cache`),
`probe-layers` on CC-Neg's evaluation split at its default sizes, fine-tuning with the `conclip` recipe
(its batch size and epochs), and `evaluate-negation`'s CC-Neg accuracy on the 40,000 evaluation rows.
CC-Neg as released has 228,246 rows, the last 40,000 its evaluation split, and per row one image, a
caption and a negated caption (no absence-negated caption, no distractor image: the recipe's loss is
then CoN-CLIP's two-term form).

What is measured, on `--model` (default ViT-B-32, CC-Neg's architecture, with random weights: speed
does not depend on them), float32 on CPU with pinned threads, through the toolkit's own code paths,
on real inputs: the shared COCO images (coco_mini under --data-root) and, per image, a caption and a negated caption
written by the toolkit's rule-based generator (CC-Neg's layout):

    image_features    encode_image_features (what the trainer and evaluation call): decode, preprocess,
                      image tower; the disk cache off                                    (s per image)
    train_step_front  Trainer.train_step, loss conclip, batch --batch-size, the front half of the text
                      tower trained (a plan of the kind probe-layers selects)           (s per example)
    train_step_all    the same with the whole text tower (the conclip recipe's plan)     (s per example)
    capture           capture_pooled, every layer's EOT state, batch 256 (probe-layers' capture)
                                                                                        (s per caption)
    probe_fit         probe_layers: one seed's logistic and difference-of-means probes at every layer,
                      at the size probe-layers fits by default (--max-examples examples, two captions
                      each), on captured features tiled to that size                    (s per sweep)
    evaluation        evaluate_negation_examples (CC-Neg accuracy): images, both captions, scoring
                                                                                        (s per example)

Protocol: benchmarks/harness.py (one warm-up run, interleaved rotated rounds, medians and spread);
the probe fit, which takes long, is timed in its own `--probe-rounds` after the others. The machine
is shared: its load average before and after is recorded, and every figure is an upper bound on the
time the work needs on an idle machine. `estimate` turns the measurements and the pipeline's sizes
(`pipeline_sizes`: read from the recipe and probe-layers' argument defaults) into per-phase seconds
(items x seconds per item). A GPU is not measured here: the record says so, and no GPU figure is
derived. Written to benchmarks/results/pipeline-<device>.json; scripts/bench_tables.py renders it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402
from probing.data.ccneg import split_rows  # noqa: E402

CCNEG_ROWS = 228_246  # CC-Neg as released; its evaluation split is the last 40,000 rows (split_rows)
CCNEG_FIELDS = ("caption", "presence_negated")  # per row: a caption and its negated caption
GPU_NOTE = "not measured (no GPU in this environment)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name or config JSON (random weights)")
    parser.add_argument("--images", type=int, default=48, help="COCO images per image-feature and evaluation run")
    parser.add_argument("--batch-size", type=int, default=64, help="fine-tuning batch")
    parser.add_argument("--captions", type=int, default=256, help="captions per capture run")
    parser.add_argument("--probe-rounds", type=int, default=1, help="timed runs of the probe fit")
    harness.add_common_arguments(parser)
    harness.add_data_argument(parser)
    parser.set_defaults(threads=2)
    return parser.parse_args(argv)


# --- the pipeline's sizes and the estimate ----------------------------------------------------------

def pipeline_sizes(n_layers: int) -> dict:
    """The full pipeline's sizes: CC-Neg's splits, the conclip recipe's batch and epochs, probe-layers'
    defaults (its ProbeConfig, the null gradient batches included), for a text tower of `n_layers` blocks."""
    from analysis.probe_config import ProbeConfig
    from finetune.losses import loss_spec
    from finetune.recipe import load_recipe

    recipe = load_recipe("conclip").settings
    probe = ProbeConfig()
    measure = probe.measure
    # gradient norms leave out a loss the data cannot feed (probing.measure.layers._feedable): CC-Neg has no
    # absence-negated caption and no distractor image
    fed = [name for name in probe.losses if set(loss_spec(name).texts) <= set(CCNEG_FIELDS)
           and loss_spec(name).distractor != "required"]
    return {"train_rows": len(split_rows(CCNEG_ROWS, "train")), "eval_rows": len(split_rows(CCNEG_ROWS, "eval")),
            "captions_per_row": len(CCNEG_FIELDS),
            "recipe": "conclip", "epochs": recipe["epochs"], "batch_size": recipe["batch_size"],
            "recipe_layers": recipe["layers"], "n_layers": n_layers,
            "probe": {"max_examples": probe.data.limit, "null_models": probe.null_models,
                      "seeds": len(measure.seeds), "null_seeds": len(measure.null_seeds),
                      "n_sensitivity": measure.n_sensitivity, "n_causal": measure.n_causal,
                      "grad_batches": measure.grad_batches, "null_grad_batches": measure.null_grad_batches,
                      "grad_batch_size": measure.grad_batch_size, "losses": len(fed), "losses_fed": fed,
                      "batch_size": measure.batch_size}}


def pipeline_items(sizes: dict) -> list[tuple[str, str, str, int]]:
    """(phase, what, measurement, items) for every part of the pipeline that the measurements cover."""
    p, captions = sizes["probe"], sizes["captions_per_row"]
    models = 1 + p["null_models"]
    sensitivity_lists = captions + 1  # the caption, its negated edit and the control edit
    grad_examples = (p["grad_batches"] + p["null_models"] * p["null_grad_batches"]) * p["grad_batch_size"] * p["losses"]
    trained = "train_step_all" if sizes["recipe_layers"] == "all" else "train_step_front"
    return [
        ("features", "training images encoded once (cached)", "image_features", sizes["train_rows"]),
        ("probe-layers", "probe captions captured, model and null models", "capture",
         models * p["max_examples"] * captions),
        ("probe-layers", "probe fits (one seed's sweep over every layer; task and control on the model)",
         "probe_fit", 2 * p["seeds"] + p["null_models"] * p["null_seeds"]),
        ("probe-layers", "sensitivity captions captured, model and null models", "capture",
         models * p["n_sensitivity"] * sensitivity_lists),
        ("probe-layers", "gradient-norm examples (forward and backward, every loss)", "train_step_all", grad_examples),
        ("probe-layers", "causal check: captions encoded, baseline and every layer index ablated", "capture",
         (sizes["n_layers"] + 2) * p["n_causal"] * captions),
        ("probe-layers", "images of the gradient batches and the causal check", "image_features",
         p["grad_batches"] * p["grad_batch_size"] + p["n_causal"]),
        ("fine-tuning", f"{sizes['epochs']} epochs of the training split ({sizes['recipe']} recipe)", trained,
         sizes["epochs"] * sizes["train_rows"]),
        ("evaluation", "CC-Neg accuracy on the evaluation split (images, both captions)", "evaluation",
         sizes["eval_rows"]),
    ]


def estimate(measured: dict, sizes: dict) -> dict:
    """Per phase and in total: items x measured seconds per item (`measured[name]["median_s"]` over
    `measured[name]["items"]` items), on the machine that measured."""
    def per_item(name: str) -> float:
        return measured[name]["median_s"] / measured[name]["items"]

    phases: dict[str, dict] = {}
    for phase, what, name, items in pipeline_items(sizes):
        entry = phases.setdefault(phase, {"parts": [], "seconds": 0.0})
        entry["parts"].append({"what": what, "measurement": name, "items": items, "s_per_item": per_item(name),
                               "seconds": items * per_item(name)})
        entry["seconds"] += items * per_item(name)
    epochs = sizes["epochs"] * sizes["train_rows"]
    return {"phases": phases, "total_s": sum(entry["seconds"] for entry in phases.values()),
            # fine-tuning with the front half of the text tower instead (a plan of the kind probe-layers selects)
            "front_plan_finetuning_s": epochs * per_item("train_step_front"),
            "not_covered": ["probe-layers' localisation (patching, heads and lens on --n-pairs pairs, the model only)",
                            "probe-layers' evidence, selection, report and figures",
                            "checkpoint writing and the fine-tuning's loss log"],
            "gpu": GPU_NOTE}


# --- measurements -------------------------------------------------------------------------------------

def coco_examples(n: int, seed: int, *, distinct: bool, data_root: Path = harness.SHARED_DATA) -> list:
    """`n` NegationExamples in CC-Neg's layout from the COCO images under `data_root` (by default the shared
    ones): an image file, a caption and a negated caption written by the toolkit's generator (no
    absence-negated caption, no distractor).
    distinct: one example per image (as CC-Neg's rows are); else several per image where n asks for more."""
    from probing.data import load_coco_instances
    from probing.data.generator import generate_negations

    coco = harness.data_file(data_root, "coco_mini")
    images = load_coco_instances(coco / "annotations" / "instances_val2017.json", coco / "val2017", strict=False)
    per_image, examples = 0, []
    while len(examples) < n and per_image < (1 if distinct else n):
        per_image += 1
        examples = list(generate_negations(images, seed=seed, per_image=per_image, distractors=False))
    if len(examples) < n:
        what = "distinct images" if distinct else "examples"
        raise SystemExit(f"{coco} gives {len(examples)} {what}, fewer than {n}")
    return [dataclasses.replace(e, absence_negated=None) for e in examples[:n]]


def measure(args, device) -> tuple[dict, dict]:
    """The measurements (module docstring) and the model's description."""
    import torch

    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower

    examples = coco_examples(args.batch_size * 2, args.seed, distinct=False, data_root=args.data_root)  # cycled
    distinct = coco_examples(args.images, args.seed, distinct=True, data_root=args.data_root)
    captions = [c for e in examples for c in (e.caption, e.presence_negated)][:args.captions]
    torch.manual_seed(args.seed)
    model, preprocess, tokenizer = load_clip(args.model, device=device)
    tower = TextTower.from_model(model)
    info = {"name": args.model, "layers": tower.n_layers, "width": tower.d_model, "heads": tower.n_heads,
            "context": tower.n_ctx, "image_tower": type(model.visual).__name__, "weights": "random", "dtype": "float32"}
    scratch = tempfile.TemporaryDirectory()
    with _environment(CLIP_NEGATION_CACHE=scratch.name):  # the trainers' feature cache: here, not the user's
        measured = _measure(model, preprocess, tokenizer, examples, distinct, captions, scratch.name, args, device)
    scratch.cleanup()
    return measured, info


@contextlib.contextmanager
def _environment(**variables: str):
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _measure(model, preprocess, tokenizer, examples, distinct, captions, scratch: str, args, device) -> dict:
    """Time every part (module docstring); `scratch`: a folder for the trainers' runs."""
    import torch

    from analysis.evaluation.evaluate import evaluate_negation_examples
    from finetune.plan import LayerPlan
    from finetune.train import TrainConfig, Trainer
    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower
    from probing.features.cache import encode_image_features
    from probing.measure.capture import capture_pooled

    n_layers = TextTower.from_model(model).n_layers
    images = [e.image for e in distinct]

    def trainer(name: str, plan) -> Trainer:
        torch.manual_seed(args.seed)
        fresh, fresh_preprocess, fresh_tokenizer = load_clip(args.model, device=device)
        config = TrainConfig(loss="conclip", lr=1e-6, warmup_steps=1, steps=10 ** 6, batch_size=args.batch_size,
                             device=str(device), out_dir=str(Path(scratch) / name), progress=False,
                             tensorboard=False)
        with contextlib.redirect_stdout(sys.stderr):  # the layer plan's table
            return Trainer(fresh, fresh_tokenizer, fresh_preprocess, examples, plan, config)

    front = trainer("front", LayerPlan.front(n_layers // 2))
    whole = trainer("all", LayerPlan.whole_text_tower(n_layers))
    variants = {
        "image_features": lambda: encode_image_features(model, preprocess, images, device=device, cache=False),
        "train_step_front": front.train_step,
        "train_step_all": whole.train_step,
        "capture": lambda: capture_pooled(model, tokenizer, captions, batch_size=256, token_budget=None,
                                          progress=False),
        "evaluation": lambda: evaluate_negation_examples(model, preprocess, tokenizer, distinct),
    }
    items = {"image_features": len(images), "train_step_front": args.batch_size, "train_step_all": args.batch_size,
             "capture": len(captions), "evaluation": args.images}
    units = {"image_features": "image", "train_step_front": "example", "train_step_all": "example",
             "capture": "caption", "evaluation": "example", "probe_fit": "sweep"}
    times = harness.interleaved(variants, args.rounds, device)
    times["probe_fit"], items["probe_fit"] = probe_fit_times(model, tokenizer, captions, args), 1
    measured = {}
    for name, seconds in times.items():
        entry = measured[name] = harness.spread(seconds)
        entry.update(items=items[name], unit=units[name], items_per_s=items[name] / entry["median_s"],
                     s_per_item=entry["median_s"] / items[name])
    return measured


def probe_fit_times(model, tokenizer, captions: list[str], args) -> list[float]:
    """Seconds of one seed's probe sweep (logistic and difference of means at every layer) at the size
    probe-layers fits by default: the captured features of `captions`, tiled with small noise to
    --max-examples x 2 captions, labelled affirmative / negated, 75 % train."""
    from probing.measure.capture import capture_pooled
    from probing.measure.probes import probe_layers

    sizes = pipeline_sizes(0)["probe"]
    n = sizes["max_examples"] * len(CCNEG_FIELDS)
    features = capture_pooled(model, tokenizer, captions, batch_size=256, token_budget=None, progress=False)
    rng = np.random.default_rng(args.seed)
    index = np.resize(np.arange(features.shape[1]), n)
    tiled = features[:, index] + 0.01 * features.std() * rng.standard_normal((features.shape[0], n, features.shape[2]),
                                                                              dtype=np.float32)
    labels = index % 2  # caption, negated caption alternate
    order = rng.permutation(n)
    train, test = order[: 3 * n // 4], order[3 * n // 4:]
    seconds = []
    for _ in range(args.probe_rounds):
        started = time.perf_counter()
        probe_layers(tiled, labels, train, {"test": test}, seeds=(0,))
        seconds.append(time.perf_counter() - started)
    return seconds


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def main(argv=None) -> Path:
    args = parse_args(argv)
    args.device = "cpu" if args.device == "auto" else args.device
    device = harness.setup(args)
    load_before = load_average()
    started = time.perf_counter()
    measured, model = measure(args, device)
    sizes = pipeline_sizes(model["layers"])
    record = {"model": model, "load_average": {"before": load_before, "after": load_average(),
                                               "cpu_count": os.cpu_count()},
              "benchmark_s": time.perf_counter() - started, "measured": measured, "sizes": sizes,
              "estimate": estimate(measured, sizes)}
    path = harness.write_record(args, "pipeline", device, record)
    print_summary(record)
    print(f"wrote {path}")
    return path


def print_summary(record: dict) -> None:
    for name, entry in record["measured"].items():
        print(f"{name:<18}{entry['items_per_s']:>10.2f} {entry['unit']}s/s  ({entry['median_s']:.2f} s for "
              f"{entry['items']}, spread {entry['relative_spread']:.0%})")
    for phase, entry in record["estimate"]["phases"].items():
        print(f"{phase:<14}{entry['seconds'] / 3600:>8.2f} h")
    print(f"{'total':<14}{record['estimate']['total_s'] / 3600:>8.2f} h on this CPU; GPU: {record['estimate']['gpu']}")


if __name__ == "__main__":
    main()
