"""Real files end to end: make-negations writes what the generator gives and finetune-layers trains on it;
finetune-layers on COCO instances, on a NegBench retrieval CSV with a missing image and on a small CC-Neg
file; delta checkpoints; provenance.json of finetune-layers and probe-layers (checked against hashlib)."""
from __future__ import annotations

import ast
import collections
import csv
import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from analysis.cli import finetune_layers, make_negations, probe_layers
from probing.data.ccneg import default_eval_size, load_ccneg, write_ccneg
from probing.data.negations import load_negation_examples
from tests.conftest import tiny_config

FIELDS = ("caption", "presence_negated", "absence_negated", "cue", "negated_object", "absent_object", "subject")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny-real.json"
    path.write_text(json.dumps(tiny_config(layers=2)))
    return path


@pytest.fixture
def coco(test_data) -> tuple[Path, Path]:
    return test_data / "coco_mini/annotations/instances_val2017.json", test_data / "coco_mini/val2017"


def images_with_two_visible_objects(instances: Path) -> int:
    """Images of a COCO instances file with two categories covering >= 1 % of the image each, from the raw JSON:
    the images the negation generator can use."""
    raw = json.loads(instances.read_text())
    images = {image["id"]: image for image in raw["images"]}
    areas = collections.defaultdict(lambda: collections.defaultdict(float))
    for box in raw["annotations"]:
        image = images[box["image_id"]]
        share = box["bbox"][2] * box["bbox"][3] / (image["width"] * image["height"])
        areas[box["image_id"]][box["category_id"]] += share
    return sum(sum(area >= 0.01 for area in categories.values()) >= 2 for categories in areas.values())


def train_args(tiny: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(tiny),
        "--layers",
        "0",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--warmup-steps",
        "1",
        "--lr",
        "1e-4",
        "--log-every",
        "1",
        "--no-progress",
        "--no-tensorboard",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--out",
        str(out),
        *extra,
    ]


def metric_steps(out: Path) -> list[int]:
    with open(out / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


# --- make-negations ----------------------------------------------------------------------------------

def test_make_negations_writes_the_generators_examples_and_finetune_trains_on_them(coco, tiny, tmp_path, capsys):
    instances, root = coco
    out = tmp_path / "negations.csv"
    assert make_negations.main(["--data", str(instances), "--image-root", str(root), "--per-image", "2",
                                "--seed", "3", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    direct = load_negation_examples(instances, image_root=root, seed=3, per_image=2)
    back = load_ccneg(out, root, split="all", strip_commas=False)
    assert len(back) == len(direct) == 2 * images_with_two_visible_objects(instances) == 2 * 15  # --per-image 2
    for made, read in zip(direct, back):
        assert Path(read.image) == Path(made.image).resolve()
        assert {f: getattr(read, f) for f in FIELDS} == {f: getattr(made, f) for f in FIELDS}
        assert (read.distractor_image is None) == (made.distractor_image is None)
        assert read.distractor_image is None or Path(read.distractor_image) == Path(made.distractor_image).resolve()
        assert read.meta["generated"] == made.meta["generated"] == ["presence_negated", "absence_negated"]
    assert 0 < sum(e.distractor_image is not None for e in back) < len(back)  # mined where the annotations allow
    assert all(not Path(row["image_path"]).is_absolute() for row in csv.DictReader(out.open()))  # relative to root
    # split by image: no image on both sides, a fifth of the images for evaluation
    train, held = load_ccneg(out, root, split="train"), load_ccneg(out, root, split="eval")
    assert len(train) + len(held) == len(direct) and train and held
    images = {str(e.image) for e in direct}
    assert {str(e.image) for e in train}.isdisjoint(str(e.image) for e in held)
    assert len({str(e.image) for e in held}) == default_eval_size(len(images))
    # what was written and what the generator could not use are printed
    filtered = direct.report.filtered["fewer than two visible objects"]
    assert f"filtered {filtered}: fewer than two visible objects" in printed
    assert f"wrote {out}: {len(direct)} examples ({len(train)} train, {len(held)} eval); skipped 0 rows" in printed

    # --limit writes the first N
    limited = tmp_path / "limited.jsonl"
    assert make_negations.main(["--data", str(instances), "--image-root", str(root), "--seed", "3", "--per-image", "2",
                                "--limit", "10", "--no-progress", "--out", str(limited)]) == 0
    assert [e.caption for e in load_ccneg(limited, root, split="all")] == [e.caption for e in direct[:10]]
    assert "every example is in the eval split" not in capsys.readouterr().err
    # --eval-images as many as there are images: an evaluation-only file, said so
    assert make_negations.main(["--data", str(instances), "--image-root", str(root), "--eval-images", "1000",
                                "--no-progress", "--out", str(tmp_path / "eval_only.csv")]) == 0
    assert "make-negations: note: every example is in the eval split (--eval-images 1000)" in capsys.readouterr().err

    # finetune-layers trains on the written file (the absence-negated captions feed Omni-NegCLIP's loss)
    run = tmp_path / "ft"
    assert finetune_layers.main(train_args(tiny, run, "--data", str(out), "--image-root", str(root),
                                           "--loss", "omni")) == 0
    assert metric_steps(run) == [1, 2] and (run / "model.safetensors").is_file()
    assert f"loaded {len(train)}, skipped 0" in capsys.readouterr().out  # the train split, read back


def test_make_negations_on_negbench_reports_skipped_rows(test_data, tmp_path, capsys):
    retrieval = test_data / "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
    root = test_data / "coco_mini/val2017"
    with retrieval.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with_image = [row for row in rows if (root / Path(row["filepath"]).name).is_file()]
    usable = [row for row in with_image if len(ast.literal_eval(row["positive_objects"])) >= 2]
    assert (len(rows), len(with_image)) == (82, 18) and usable
    out = tmp_path / "negbench.jsonl"
    assert make_negations.main(["--data", str(retrieval), "--image-root", str(root), "--out", str(out)]) == 2
    assert "image not found" in capsys.readouterr().err and not out.exists()  # strict: the first missing image
    assert make_negations.main(["--data", str(retrieval), "--image-root", str(root), "--skip-missing",
                                "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    back = load_ccneg(out, root, split="all", strip_commas=False)
    assert len(back) == len(usable)  # the rows whose image is there and names two objects, once per image
    missing = len(rows) - len(with_image)
    assert f"skipped {missing} rows" in printed and f"skipped {missing}: image not found" in printed
    # the file's own negated captions are the absence-negated ones (true); the rules wrote the affirmative ones
    assert all(e.meta["generated"] == ["caption", "presence_negated"] for e in back)


# --- finetune-layers on real sources ------------------------------------------------------------------

def test_finetune_on_coco_instances_and_provenance(coco, tiny, tmp_path, capsys):
    instances, root = coco
    run = tmp_path / "coco"
    argv = train_args(tiny, run, "--data", str(instances), "--image-root", str(root))
    assert finetune_layers.main(argv) == 0
    assert metric_steps(run) == [1, 2]
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["command"] == ["finetune-layers", *argv]
    assert provenance["data"]["--data"] == {"path": str(instances.resolve()),
                                            "sha256": hashlib.sha256(instances.read_bytes()).hexdigest()}
    assert provenance["data"]["--second-data"] is None
    assert provenance["image_roots"]["--image-root"] == str(root.resolve())
    assert provenance["toolkit"]["version"] == metadata.version("clip-negation-probe")
    assert provenance["model"]["architecture"] == "tiny-real" and provenance["versions"]["torch"] == torch.__version__


def test_probe_layers_writes_provenance(coco, tiny, tmp_path, capsys):
    instances, root = coco
    out = tmp_path / "probe"
    argv = [
        "--model",
        str(tiny),
        "--data",
        str(instances),
        "--image-root",
        str(root),
        "--measurements",
        "probes",
        "--null-models",
        "0",
        "--rule",
        "topk",
        "--k",
        "1",
        "--probe-train",
        "40",
        "--probe-test",
        "20",
        "--probe-seeds",
        "0",
        "--threads",
        "1",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert probe_layers.main(argv) in (0, 1)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["command"] == ["probe-layers", *argv]
    assert provenance["data"]["--data"]["sha256"] == hashlib.sha256(instances.read_bytes()).hexdigest()
    assert provenance["image_roots"] == {"--image-root": str(root.resolve())}
    assert provenance["toolkit"]["version"] == metadata.version("clip-negation-probe")


def test_finetune_on_negbench_with_a_missing_image_strict_and_skipping(test_data, tiny, tmp_path, capsys):
    source = test_data / "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
    root = test_data / "coco_mini/val2017"
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = [row for row in reader if (root / Path(row["filepath"]).name).is_file()][:24]
    rows[5]["filepath"] = "data/coco/images/val2017/000000999999.jpg"  # not among the vendored images
    small = tmp_path / "retrieval.csv"
    with small.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "strict"
    assert finetune_layers.main(train_args(tiny, run, "--data", str(small), "--image-root", str(root))) == 2
    err = capsys.readouterr().err
    assert "retrieval.csv, row " in err and "000000999999.jpg" in err and "Traceback" not in err
    assert not (run / "model.safetensors").exists()
    run = tmp_path / "skipping"
    assert (
        finetune_layers.main(train_args(tiny, run, "--data", str(small), "--image-root", str(root), "--skip-missing"))
        == 0
    )
    printed = capsys.readouterr().out
    assert f"{small}: loaded " in printed and ", skipped 1," in printed and "skipped 1: image not found" in printed
    assert metric_steps(run) == [1, 2]


def test_a_small_ccneg_file_has_train_and_eval_rows_and_trains(coco, tiny, tmp_path, capsys):
    instances, root = coco
    examples = load_negation_examples(instances, image_root=root, per_image=2)[:30]  # 15 usable images, 2 each
    small = write_ccneg(examples, tmp_path / "ccneg30.csv", image_root=root)  # no split column: the split rule
    train, held = load_ccneg(small, root, split="train"), load_ccneg(small, root, split="eval")
    assert (len(train), len(held)) == (24, 6)  # the last fifth for evaluation, not all 30 (CC-Neg's 40,000)
    assert [e.row for e in held] == list(range(24, 30))
    run = tmp_path / "ccneg"
    assert finetune_layers.main(train_args(tiny, run, "--data", str(small), "--image-root", str(root))) == 0
    assert metric_steps(run) == [1, 2]


# --- delta checkpoints ---------------------------------------------------------------------------------


def test_delta_checkpoint_holds_the_trained_tensors_and_needs_its_base(tiny, tmp_path):
    from safetensors.torch import load_file

    from finetune.plan import LayerPlan
    from finetune.train import TrainConfig, train
    from probing.clip.compact import DIGEST_KEY
    from probing.clip.loading import (
        BASE_DIGEST_KEY,
        BASE_PATH_KEY,
        ModelLoadError,
        checkpoint_metadata,
        load_clip,
        save_clip_checkpoint,
    )
    from probing.synthetic.world import SyntheticWorld, WorldConfig

    torch.manual_seed(7)
    model, _, _ = load_clip(str(tiny))
    base = save_clip_checkpoint(model, tmp_path / "base" / "base.safetensors", model_name="tiny-real")
    model, preprocess, tokenizer = load_clip(str(tiny), str(base))
    examples = SyntheticWorld(WorldConfig(image_size=32), seed=0).examples(16, "train", seed=0)
    config = TrainConfig(
        loss="conclip",
        lr=1e-3,
        warmup_steps=1,
        steps=2,
        batch_size=8,
        out_dir=str(tmp_path / "run"),
        model_name="tiny-real",
        progress=False,
        tensorboard=False,
        feature_cache=False,
        base={"path": str(base), "reference": ""},
    )
    result = train(model, tokenizer, preprocess, examples, LayerPlan(blocks=[1]), config)
    delta = Path(result.model_path)
    stored = load_file(str(delta))
    assert set(stored) == {
        name for name, _ in model.named_parameters() if name.startswith("transformer.resblocks.1.")
    } | {"logit_scale"}
    assert delta.stat().st_size < base.stat().st_size / 10
    recorded = checkpoint_metadata(delta)
    assert recorded[BASE_PATH_KEY] == str(base.resolve())
    assert recorded[BASE_DIGEST_KEY] == checkpoint_metadata(base)[DIGEST_KEY]  # the base's own recorded SHA-256
    reloaded, _, _ = load_clip(str(tiny), str(delta))
    trained = model.state_dict()
    assert all(torch.equal(value, trained[key].cpu()) for key, value in reloaded.state_dict().items())
    assert not torch.equal(
        reloaded.transformer.resblocks[1].attn.in_proj_weight,
        load_clip(str(tiny), str(base))[0].transformer.resblocks[1].attn.in_proj_weight,
    )
    # a base with other weights, then no base at all: a clear error naming it
    torch.manual_seed(8)
    save_clip_checkpoint(load_clip(str(tiny))[0], base, model_name="tiny-real")
    with pytest.raises(ModelLoadError, match="has other weights: restore the original base checkpoint"):
        load_clip(str(tiny), str(delta))
    base.unlink()
    with pytest.raises(ModelLoadError, match=f"base checkpoint {base.resolve()} .* is missing"):
        load_clip(str(tiny), str(delta))


# --- captions longer than the context ------------------------------------------------------------------

def test_finetune_counts_captions_cut_and_refuses_pairs_the_cut_makes_identical(coco, tiny, tmp_path, capsys):
    """A CC-Neg file whose captions run past the tiny model's 32-token context: 8 rows whose caption and negated
    caption differ only past the cut (the same tokens after it), 4 cut but different within it, 12 short. Strict:
    exit 2 naming the file and the first such row. --skip-bad-rows: the 8 are skipped and counted, and the counts
    in the log, run.json and provenance.json equal those recomputed here with open_clip's BPE."""
    from open_clip.tokenizer import SimpleTokenizer

    _, root = coco
    captions = json.loads((root.parent / "annotations/captions_val2017.json").read_text())["annotations"]
    text = [" ".join(c["caption"].replace(",", "").split()).rstrip(".") for c in captions[:40]]
    image = sorted(p.name for p in root.glob("*.jpg"))[0]
    rows = []
    for i in range(24):
        long = " and ".join(text[i:i + 3])  # three real captions: well past 30 tokens
        if i < 8:
            rows.append([image, f"{long} and a dog", f"{long} and no dog"])  # differ only past the cut
        elif i < 12:
            rows.append([image, f"a dog and {long}", f"no dog and {long}"])  # cut, different within the context
        else:
            rows.append([image, text[i], f"{text[i]} but no dog"])
    data = tmp_path / "ccneg_long.csv"
    with data.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "caption", "negative_prompt"])
        writer.writerows(rows)
    bpe = SimpleTokenizer()
    seen = 32 - 2  # what the text tower sees of a caption: start, 30 BPE tokens, end
    cut = sum(len(bpe.encode(t)) > seen for row in rows for t in row[1:])
    same = [i for i, row in enumerate(rows) if bpe.encode(row[1])[:seen] == bpe.encode(row[2])[:seen]]
    with_cut = sum(any(len(bpe.encode(t)) > seen for t in row[1:]) for row in rows)
    assert (cut, same, with_cut) == (24, list(range(8)), 12)

    args = ["--data", str(data), "--image-root", str(root), "--split", "all"]
    assert finetune_layers.main(train_args(tiny, tmp_path / "strict", *args)) == 2
    err = capsys.readouterr().err
    assert f"{data}, row 0: captions identical after the cut: caption and presence-negated caption become the same " \
           "32 tokens" in err and "8 such examples" in err and "Traceback" not in err
    run = tmp_path / "lenient"
    assert finetune_layers.main(train_args(tiny, run, *args, "--skip-bad-rows")) == 0
    out = capsys.readouterr().out
    assert (f"{data}: {cut} of 48 captions are longer than the 32-token context and were cut ({with_cut} of 24 "
            f"examples); {len(same)} examples skipped") in out
    expected = {"examples": 24, "captions": 48, "captions_cut": cut, "examples_with_a_cut_caption": with_cut,
                "identical_skipped": len(same), "identical_after_the_cut": len(same), "identical_in_the_file": 0}
    for record in (json.loads((run / "run.json").read_text()), json.loads((run / "provenance.json").read_text())):
        captions = record["captions"]["first"]
        assert captions["context_length"] == 32 and captions["counted"]
        counts = captions["files"][str(data)]
        assert {key: counts[key] for key in expected} == expected
        assert [row for row, _ in counts["skipped"]] == same
    assert metric_steps(run) == [1, 2]


def test_screen_captions_reads_the_pairs_each_loss_compares(test_data):
    """MCQ items: the right option against each other option; Omni-NegCLIP's loss: every two of its three
    captions (the absence- against the presence-negated one among them). Real NegBench MCQ rows, one item
    changed so that its right option and option 2 differ only past the 32-token cut."""
    from open_clip.tokenizer import SimpleTokenizer

    from finetune.data import screen_captions
    from finetune.losses import loss_spec
    from probing.data import load_negbench_mcq
    from probing.data.records import DataError, NegationExample

    tokenizer = SimpleTokenizer(context_length=32)
    items = load_negbench_mcq(test_data / "negbench/COCO_val_mcq_llama3.1_rephrased.csv")[:3]
    padding = " ".join(["with a big red bus"] * 8)
    items[1].captions[items[1].correct] = f"a cat {padding} and a dog"
    items[1].captions[2] = f"a cat {padding} and no dog"
    with pytest.raises(DataError, match=r"captions identical after the cut: the right option \(0\) and option 2 "
                                        r"become the same 32 tokens"):
        screen_captions(items, tokenizer, loss_spec("negbench_mcq"))
    kept, screen = screen_captions(items, tokenizer, loss_spec("negbench_mcq"), strict=False)
    assert kept == [items[0], items[2]]
    (counts,) = screen.files.values()
    assert counts["identical_skipped"] == 1 and counts["captions_cut"] == 2 and counts["captions"] == 12
    examples = [NegationExample(None, "a cat", presence_negated="a cat and no dog", absence_negated="a cat and no dog",
                                source="made.csv", row=0),
                NegationExample(None, "a cat", presence_negated="a cat and no dog", absence_negated="a cat and no bus",
                                source="made.csv", row=1)]
    kept, screen = screen_captions(examples, tokenizer, loss_spec("omni"), strict=False)
    assert kept == [examples[1]]
    assert screen.files["made.csv"]["skipped"] == [[0, "captions identical: presence-negated caption and "
                                                       "absence-negated caption are the same text"]]
