"""Negation benchmarks: numbers checked against independent per-row computations on the real files (the
vendored subset in tests/data; counts of rows and images read a second way with the csv and json modules).

The independent side encodes ONE row at a time straight through open_clip (no batching, no
trimming, no de-duplication, no caching), so a batching or bookkeeping bug in the evaluation shows
up as a difference. Ties are avoided in the comparison by tolerating only rows whose margin is
within float noise.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from analysis.evaluation import evaluate as ev
from analysis.evaluation.benchmarks import BenchmarkError, Sources, load_image_folder, plan_benchmarks
from probing.clip.loading import load_clip
from probing.data import (
    DataError,
    Loaded,
    generate_negations,
    load_coco_instances,
    load_negbench_mcq,
    load_negbench_retrieval,
    load_sugarcrepe,
)
from probing.synthetic import SyntheticWorld, WorldConfig

REPO = Path(__file__).resolve().parents[1]
MCQ = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"
NOISE = 1e-5  # similarity margins below this may flip between batched and single-row encoding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: thread hand-offs cost far more than the arithmetic
    # (one text forward takes ~250 ms with 2 busy threads, ~2 ms with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import tiny_config

    path = tmp_path_factory.mktemp("tiny") / "tiny-eval.json"
    path.write_text(json.dumps(tiny_config()))
    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(str(path))
    return model, preprocess, tokenizer, path


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(WorldConfig(image_size=32), seed=0)


def coco(data: Path) -> Path:
    return data / "coco_mini" / "val2017"


def rows_and_rows_with_an_image(path: Path, column: str, images: Path) -> tuple[int, int]:
    """Rows of a NegBench CSV and those whose image file is in `images`, read with the csv module."""
    with path.open(newline="", encoding="utf-8") as handle:
        names = [row[column].rsplit("/", 1)[-1] for row in csv.DictReader(handle)]
    return len(names), sum((images / name).is_file() for name in names)


def sugarcrepe_items_and_items_with_an_image(folder: Path, images: Path) -> tuple[int, int]:
    items = [item for fold in sorted(folder.glob("*.json")) for item in json.loads(fold.read_text()).values()]
    return len(items), sum((images / item["filename"]).is_file() for item in items)


# ---- independent single-row encoders ---------------------------------------------------------


@torch.no_grad()
def one_text(model, tokenizer, text: str) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer([text])).float(), dim=-1)[0]


@torch.no_grad()
def one_image(model, preprocess, image) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        pil = Image.fromarray(image)
    else:
        with Image.open(image) as opened:
            pil = opened.convert("RGB")
    return F.normalize(model.encode_image(preprocess(pil)[None]).float(), dim=-1)[0]


def check_rate(value: float, margins: list[float]) -> None:
    """`value` equals the fraction of positive margins, up to rows whose margin is float noise."""
    margins = torch.tensor(margins)
    wins = (margins > 0).double().mean().item()
    unsure = (margins.abs() < NOISE).double().mean().item()
    assert abs(value - wins) <= unsure + 1e-9, (value, wins)


def first(items, n):
    """The first n rows of a lenient load, keeping its report (what was skipped in the whole file)."""
    return Loaded(list(items)[:n], items.report)


# ---- per-benchmark numbers against per-row loops ---------------------------------------------


def test_mcq_matches_a_brute_force_loop_and_reports_missing_images(tiny, test_data):
    model, preprocess, tokenizer, _ = tiny
    loaded = load_negbench_mcq(test_data / MCQ, coco(test_data), strict=False)
    items = first(loaded, 30)
    result = ev.evaluate_mcq(model, preprocess, tokenizer, items, batch_size=7)  # 7 < 30: several batches

    margins: dict[str, list[float]] = {"all": []}
    for item in items:
        image = one_image(model, preprocess, item.image)
        scores = [float(image @ one_text(model, tokenizer, caption)) for caption in item.captions]
        best_other = max(s for i, s in enumerate(scores) if i != item.correct)
        margin = scores[item.correct] - best_other
        margins["all"].append(margin)
        margins.setdefault(item.template, []).append(margin)
    metrics = result["metrics"]
    assert metrics["mcq_accuracy"]["n"] == len(items) == 30
    check_rate(metrics["mcq_accuracy"]["value"], margins["all"])
    for template in ("positive", "negative", "hybrid"):
        if template in margins:
            assert metrics[f"mcq_accuracy/template={template}"]["n"] == len(margins[template])
            check_rate(metrics[f"mcq_accuracy/template={template}"]["value"], margins[template])
    # the rows of the whole file without an image are counted, not dropped silently
    rows, with_image = rows_and_rows_with_an_image(test_data / MCQ, "image_path", coco(test_data))
    assert (rows, with_image) == (78, 33)
    counts = result["counts"]
    assert counts["rows_read"] == rows and len(loaded) == with_image
    assert counts["n_skipped"] == rows - with_image and counts["skip_reasons"] == {"image not found": rows - with_image}
    assert counts["n_evaluated"] == 30 and len(counts["skipped_examples"]) == 5
    assert "image not found" in counts["skipped_examples"][0]["problem"]


def test_mcq_ties_count_as_wrong():
    # NegBench's correct answer is always option 0: argmax would break this tie in its favour
    image = F.normalize(torch.randn(3, 8), dim=-1)
    same = F.normalize(torch.randn(8), dim=-1)
    options = same.expand(3, 4, 8).clone()
    metrics = ev.score_mcq(image, options, torch.zeros(3, dtype=torch.long), ["positive"] * 3)
    assert metrics["mcq_accuracy"] == {"value": 0.0, "n": 3, "ties": 3}
    options[1, 0] = image[1]  # the correct option now strictly best for item 1
    metrics = ev.score_mcq(image, options, torch.zeros(3, dtype=torch.long), ["positive"] * 3)
    assert metrics["mcq_accuracy"] == {"value": pytest.approx(1 / 3), "n": 3, "ties": 2}
    assert metrics["mcq_accuracy/template=positive"]["ties"] == 2


def negrefcocog_file(path: Path, images: list[Path]) -> Path:
    """A small NegRefCOCOg file laid out like parkquasar/NegationCLIP's NegRefCOCOg/NegRefCOCOg.json.

    Layout assumed (from that released file and its negrefcocog_eval.py): one JSON list; each entry
    {"image": COCO file name, "phrase": referring expression with a negation, "ref_bbox": [x, y, w, h],
    "bbox_list": [[x, y, w, h], ...]} in pixels, ref_bbox one of bbox_list (there always the first, with
    two candidates; here also third-of-three and a duplicated box, to exercise the tie rule)."""
    entries = [
        {"image": images[0].name, "phrase": "a zebra not eating grass",
         "ref_bbox": [0, 0, 200.5, 300], "bbox_list": [[0, 0, 200.5, 300], [150.25, 10, 250, 280.75]]},
        {"image": images[1].name, "phrase": "the vase that does not have a flower in it",
         "ref_bbox": [40, 30, 120, 160], "bbox_list": [[0, 0, 100, 100], [200, 50, 150, 200], [40, 30, 120, 160]]},
        {"image": images[2].name, "phrase": "a man without glasses",
         "ref_bbox": [10, 10, 90, 90], "bbox_list": [[10, 10, 90, 90], [10, 10, 90, 90]]},  # the same box twice: a tie
        {"image": images[3].name, "phrase": "a chair with no one sitting on it",
         "ref_bbox": [5, 5, 60, 60], "bbox_list": [[5, 5, 60, 60], [70, 70, 100, 120]]},
    ]
    path.write_text(json.dumps(entries, indent=4))
    return path


def test_negrefcocog_scores_crops_against_the_phrase_with_the_tie_rule(tiny, test_data, tmp_path):
    from probing.data import load_negrefcocog

    model, preprocess, tokenizer, _ = tiny
    images = sorted(coco(test_data).glob("*.jpg"))[:4]
    path = negrefcocog_file(tmp_path / "NegRefCOCOg.json", images)
    items = load_negrefcocog(path, coco(test_data))
    assert [item.correct for item in items] == [0, 2, 0, 0] and len(items[1].boxes) == 3
    result = ev.evaluate_regions(model, preprocess, tokenizer, items, batch_size=3)
    # the second way: crop each box with PIL as the authors do, encode one crop at a time
    outcomes = []
    for item in items:
        phrase = one_text(model, tokenizer, item.phrase)
        with Image.open(item.image) as opened:
            pil = opened.convert("RGB")
        scores = [float(one_image(model, preprocess, np.asarray(pil.crop((x, y, x + w, y + h)))) @ phrase)
                  for x, y, w, h in item.boxes]
        others = [s for i, s in enumerate(scores) if i != item.correct]
        outcomes.append(scores[item.correct] - max(others))
    metrics = result["metrics"]
    assert metrics["negrefcocog_accuracy"]["n"] == 4 and result["counts"]["n_regions"] == 9
    check_rate(metrics["negrefcocog_accuracy"]["value"], outcomes)
    assert metrics["negrefcocog_accuracy"]["ties"] == 1  # the duplicated box: argmax would count it right
    assert metrics["negrefcocog_accuracy/cue=without"] == {"value": 0.0, "n": 1, "ties": 1}
    # the benchmark by path, through evaluate_all
    out = ev.evaluate_all(model, preprocess, tokenizer, which=["negrefcocog"], files={"negrefcocog": [path]},
                          image_roots={"negrefcocog": coco(test_data)})
    assert out["sections"]["negrefcocog"]["metrics"] == metrics


def test_sugarcrepe_folds_equal_explicit_dot_products(tiny, test_data):
    model, preprocess, tokenizer, _ = tiny
    pairs = load_sugarcrepe(test_data / "sugarcrepe", coco(test_data), strict=False)
    subset = Loaded([p for fold in sorted({p.fold for p in pairs}) for p in [q for q in pairs if q.fold == fold][:4]],
                    pairs.report)
    result = ev.evaluate_foils(model, preprocess, tokenizer, subset, batch_size=5)
    margins: dict[str, list[float]] = {}
    for pair in subset:
        image = one_image(model, preprocess, pair.image)
        margin = float(image @ one_text(model, tokenizer, pair.caption) - image @ one_text(model, tokenizer, pair.foil))
        margins.setdefault(pair.fold, []).append(margin)
    metrics = result["metrics"]
    assert len(margins) == 7  # every fold has images among the vendored ones
    for fold, values in margins.items():
        assert metrics[f"accuracy/fold={fold}"]["n"] == len(values)
        check_rate(metrics[f"accuracy/fold={fold}"]["value"], values)
    fold_values = [metrics[f"accuracy/fold={fold}"]["value"] for fold in margins]
    assert metrics["mean_over_folds"]["value"] == pytest.approx(np.mean(fold_values))
    check_rate(metrics["accuracy"]["value"], [m for values in margins.values() for m in values])
    items, with_image = sugarcrepe_items_and_items_with_an_image(test_data / "sugarcrepe", coco(test_data))
    assert result["counts"]["rows_read"] == items and result["counts"]["n_skipped"] == items - with_image


def test_negated_retrieval_equals_an_explicit_ranking(tiny, test_data):
    model, preprocess, tokenizer, _ = tiny
    loaded = load_negbench_retrieval(
        test_data / "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv", coco(test_data),
        strict=False)
    items = first(loaded, 12)
    result = ev.evaluate_retrieval(model, preprocess, tokenizer, items, batch_size=4, ks=(1, 5))
    images = torch.stack([one_image(model, preprocess, item.image) for item in items])
    texts, owners = [], []
    for index, item in enumerate(items):
        for caption in item.captions:
            texts.append(one_text(model, tokenizer, caption))
            owners.append(index)
    similarity = torch.stack(texts) @ images.T  # [captions, images]
    owners = torch.tensor(owners)
    # text -> image R@1 (negated queries): own image ranked first; R@5: among the 5 best
    own = similarity[torch.arange(len(owners)), owners]
    rank = (similarity > own[:, None]).sum(dim=1)  # images strictly better than the own one
    metrics = result["metrics"]
    assert metrics["text_to_image_R@1"]["n"] == len(owners) == result["counts"]["n_captions"]
    assert metrics["text_to_image_R@1"]["value"] == pytest.approx((rank == 0).float().mean().item())
    assert metrics["text_to_image_R@5"]["value"] == pytest.approx((rank < 5).float().mean().item())
    # image -> text R@1: the best caption of each image is one of its own
    best = similarity.argmax(dim=0)
    assert metrics["image_to_text_R@1"]["n"] == 12
    assert metrics["image_to_text_R@1"]["value"] == pytest.approx(
        (owners[best] == torch.arange(12)).float().mean().item()
    )


def test_last_batch_only_regression(tiny, world, monkeypatch):
    model, preprocess, tokenizer, _ = tiny
    examples = world.examples(23, "test", seed=1)
    result = ev.evaluate_negation_examples(model, preprocess, tokenizer, examples, batch_size=4)  # 6 batches
    margins, absence = [], []
    for example in examples:
        image = one_image(model, preprocess, example.image)
        presence = image @ one_text(model, tokenizer, example.presence_negated)
        margins.append(float(image @ one_text(model, tokenizer, example.caption) - presence))
        absence.append(float(image @ one_text(model, tokenizer, example.absence_negated) - presence))
    metrics = result["metrics"]
    assert metrics["ccneg_accuracy"]["n"] == 23 and metrics["absence_accuracy"]["n"] == 23
    check_rate(metrics["ccneg_accuracy"]["value"], margins)
    check_rate(metrics["absence_accuracy"]["value"], absence)
    for group in ("cue", "k"):  # every row lands in exactly one group
        parts = [entry for key, entry in metrics.items() if key.startswith(f"ccneg_accuracy/{group}=")]
        assert sum(entry["n"] for entry in parts) == 23
        assert sum(entry["value"] * entry["n"] for entry in parts) == pytest.approx(
            metrics["ccneg_accuracy"]["value"] * 23)

    # an encoder that keeps only the last batch (the anchors' bug) is caught, not scored
    real = ev.encode_captions

    def last_batch_only(model, tokenizer, captions, *, batch_size, **kwargs):
        return real(model, tokenizer, list(captions)[-(len(captions) % batch_size or batch_size):],
                    batch_size=batch_size, **kwargs)

    monkeypatch.setattr(ev, "encode_captions", last_batch_only)
    with pytest.raises(RuntimeError, match="feature rows"):
        ev.evaluate_negation_examples(model, preprocess, tokenizer, examples, batch_size=4)


def test_unnormalised_features_are_rejected():
    unit = F.normalize(torch.randn(4, 8), dim=-1)
    raw = unit * 3
    with pytest.raises(ValueError, match="not L2-normalised"):
        ev.score_pairs("x", unit, raw, unit)
    with pytest.raises(ValueError, match="not L2-normalised"):
        ev.score_mcq(raw, unit[:, None].expand(4, 2, 8), torch.zeros(4, dtype=torch.long), [None] * 4)
    with pytest.raises(ValueError, match="not L2-normalised"):
        ev.score_retrieval(unit, raw, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="not L2-normalised"):
        ev.score_prompt_gap(raw, unit, unit, [0, 1, 2, 3])


def test_synthetic_scope_and_prompt_gap_by_cue_and_k(tiny, world):
    model, preprocess, tokenizer, _ = tiny
    sections = ev.evaluate_synthetic(model, preprocess, tokenizer, world=world, n=24, n_classification=36,
                                     batch_size=10)
    scope = sections["synthetic/scope"]["metrics"]
    pairs = world.scope_pairs(24, "test", 0)
    margins = []
    for pair in pairs:
        image = one_image(model, preprocess, pair.image)
        margins.append(
            float(image @ one_text(model, tokenizer, pair.correct) - image @ one_text(model, tokenizer, pair.wrong))
        )
    check_rate(scope["scope_accuracy"]["value"], margins)
    for cue in {p.cue for p in pairs}:  # held-out cues of the test split
        rows = [m for m, p in zip(margins, pairs) if p.cue == cue]
        assert scope[f"scope_accuracy/cue={cue}"]["n"] == len(rows)
        check_rate(scope[f"scope_accuracy/cue={cue}"]["value"], rows)
    assert sum(scope[f"scope_accuracy/k={k}"]["n"] for k in {p.k for p in pairs}) == 24
    gap = sections["synthetic/prompt_gap"]["metrics"]
    assert gap["negated_prompt_gap"]["value"] == pytest.approx(
        gap["zero_shot_affirmative"]["value"] - gap["zero_shot_negated"]["value"])
    assert gap["negated_prompt_gap"]["n"] == 36
    assert set(sections["synthetic/negation"]["metrics"]) >= {"ccneg_accuracy", "absence_accuracy"}


def test_synthetic_retrieval_is_r_at_1_among_100_over_whole_groups(tiny, world):
    model, preprocess, tokenizer, _ = tiny
    sections = ev.evaluate_synthetic(model, preprocess, tokenizer, world=world, n=230, n_classification=36,
                                     batch_size=64)
    retrieval = sections["synthetic/retrieval"]["metrics"]
    examples = world.examples(230, "test", 0)
    image = torch.stack([one_image(model, preprocess, e.image) for e in examples[:200]])
    text = torch.stack([one_text(model, tokenizer, e.caption) for e in examples[:200]])
    captions = [e.caption for e in examples[:200]]
    hits = {"image_to_text": 0, "text_to_image": 0}
    for start in (0, 100):  # the 30 rows past the last whole group are not scored
        similarity = image[start:start + 100] @ text[start:start + 100].T
        texts = captions[start:start + 100]
        # the world repeats some captions word for word: a repeated caption is right for each of its scenes
        hits["image_to_text"] += sum(texts[j] == texts[i] for i, j in enumerate(similarity.argmax(1).tolist()))
        hits["text_to_image"] += sum(texts[i] == texts[j] for j, i in enumerate(similarity.argmax(0).tolist()))
    assert len(set(captions)) < len(captions)
    for direction, count in hits.items():
        entry = retrieval[f"{direction}_R@1_among_100"]
        assert entry["n"] == 200 and entry["value"] == pytest.approx(count / 200, abs=1 / 200)


def test_image_folder_loader_and_prompt_gap(tiny, test_data, tmp_path):
    model, preprocess, tokenizer, _ = tiny
    jpgs = sorted(coco(test_data).glob("*.jpg"))[:4]
    for name, files in (("dog", jpgs[:2]), ("traffic_light", jpgs[2:])):
        (tmp_path / name / "nested").mkdir(parents=True)
        shutil.copy(files[0], tmp_path / name / files[0].name)
        shutil.copy(files[1], tmp_path / name / "nested" / files[1].name)
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty_class").mkdir()
    folder = load_image_folder(tmp_path)
    assert folder.classes == ["dog", "traffic light"] and folder.labels == [0, 0, 1, 1]
    assert folder.report.skip_reasons() == {"image unreadable": 1}
    assert folder.report.filtered == {"class folders without a usable image": 1}
    with pytest.raises(DataError, match="image unreadable"):
        load_image_folder(tmp_path, strict=True)

    result = ev.evaluate_image_folder(model, preprocess, tokenizer, folder, batch_size=3)
    hits = {"affirmative": 0, "negated": 0}
    for path, label in zip(folder.paths, folder.labels):
        image = one_image(model, preprocess, path)
        for kind, template in (("affirmative", "a photo of {}"), ("negated", "not a photo of {}")):
            scores = [
                float(image @ one_text(model, tokenizer, template.format(a))) for a in ("a dog", "a traffic light")
            ]
            hits[kind] += int(np.argmax(scores) == label)
    metrics = result["metrics"]
    assert metrics["zero_shot_affirmative"]["value"] == pytest.approx(hits["affirmative"] / 4)
    assert metrics["negated_prompt_gap"]["value"] == pytest.approx((hits["affirmative"] - hits["negated"]) / 4)
    assert result["counts"]["n_skipped"] == 1 and result["counts"]["n_evaluated"] == 4

    single = tmp_path / "single"
    shutil.copytree(tmp_path / "dog", single / "dog")
    with pytest.raises(DataError, match="at least two class folders"):
        load_image_folder(single)


def test_coco_generated_and_ccneg_file(tiny, test_data, tmp_path):
    model, preprocess, tokenizer, _ = tiny
    instances = load_coco_instances(test_data / "coco_mini/annotations/instances_val2017.json", coco(test_data),
                                    strict=False)
    examples = generate_negations(instances, seed=0, max_subjects=3)[:20]
    result = ev.evaluate_negation_examples(model, preprocess, tokenizer, examples, batch_size=6)
    margins = []
    for example in examples:
        image = one_image(model, preprocess, example.image)
        margins.append(float(image @ one_text(model, tokenizer, example.caption)
                             - image @ one_text(model, tokenizer, example.presence_negated)))
    check_rate(result["metrics"]["ccneg_accuracy"]["value"], margins)
    assert {key.split("=")[0] for key in result["metrics"] if "=" in key} == {
        "ccneg_accuracy/cue", "ccneg_accuracy/k", "absence_accuracy/cue", "absence_accuracy/k"}

    # a CC-Neg file in its CSV form: one row's image is missing, one row has no K
    images = sorted(coco(test_data).glob("*.jpg"))[:3]
    csv = tmp_path / "ccneg.csv"
    # (a `split` column decides each row's split: without it, a 4-row file would keep a fifth for evaluation)
    csv.write_text("image_path,caption,negative_prompt,num_ops,split\n"
                   f"cc3m/{images[0].name},a dog on a sofa,a dog not on a sofa,1,eval\n"
                   f"cc3m/{images[1].name},two cups and a plate,two cups but no plate,2,eval\n"
                   "cc3m/missing.jpg,a cat,no cat,1,eval\n"
                   f"cc3m/{images[2].name},a bus on a road,a bus without a road,,eval\n")
    out = ev.evaluate_all(model, preprocess, tokenizer, which=["ccneg"], files={"ccneg": [csv]},
                          image_root=coco(test_data), batch_size=2)
    section = out["sections"]["ccneg"]
    assert section["metrics"]["ccneg_accuracy"]["n"] == 3
    assert section["metrics"]["ccneg_accuracy/cue=not"]["n"] == 1
    assert section["metrics"]["ccneg_accuracy/k=unknown"]["n"] == 1
    assert section["counts"]["skip_reasons"] == {"image not found": 1} and section["counts"]["rows_read"] == 4
    assert section["counts"]["commas_stripped"] is True

    # every row in the train split: the evaluation fails, saying so (not "0 rows read" as if the file were empty)
    train = tmp_path / "ccneg_train.csv"
    train.write_text(csv.read_text().replace(",eval\n", ",train\n"))
    out = ev.evaluate_all(model, preprocess, tokenizer, which=["ccneg"], files={"ccneg": [train]},
                          image_root=coco(test_data), batch_size=2)
    assert not out["sections"] and list(out["failed"].values()) == [
        f"{train}: its 'split' column puts none of its 4 readable rows in the eval split (all are train): ask for "
        "the train split or all (--split where the command has it)"]


def test_evaluate_all_reports_missing_images_and_plan(tiny, test_data, tmp_path):
    model, preprocess, tokenizer, _ = tiny
    # VALSE's images are Visual7W, none in the real data: give three of them (COCO pixels, VALSE names)
    valse = json.loads((test_data / "valse/existence.json").read_text())
    kept = [item["image_file"] for item in valse.values() if item["mturk"]["caption"] >= 2]
    dropped = len(valse) - len(kept)
    kept = kept[:3]
    source = sorted(coco(test_data).glob("*.jpg"))[0]
    for name in kept:
        shutil.copy(source, tmp_path / name)
    out = ev.evaluate_all(model, preprocess, tokenizer, data_root=test_data, which=["valse_existence", "sugarcrepe"],
                          image_roots={"valse_existence": tmp_path}, limit=2, batch_size=16)
    valse_counts = out["sections"]["valse_existence"]["counts"]
    assert out["sections"]["valse_existence"]["metrics"]["accuracy"]["n"] == 2  # limit 2 of the 3 found
    read = len(valse) - dropped
    assert valse_counts["rows_read"] == read and valse_counts["n_skipped"] == read - 3
    assert valse_counts["filtered"] == {"mturk.caption < 2 (VALSE protocol)": dropped} and dropped > 0
    sugarcrepe = out["sections"]["sugarcrepe"]
    assert sugarcrepe["metrics"]["accuracy"]["n"] == 14 and sugarcrepe["counts"]["limited_to"] == 2  # 2 per fold
    assert sugarcrepe["counts"]["limited_per"] == "fold" and "limited_per" not in valse_counts
    table = ev.markdown_table(out, model="tiny")
    assert f"| valse_existence | {read} | 2 (limit 2) | {read - 3} | image not found ({read - 3}) |" in table

    # found by the default search without a single image of its own (VALSE: Visual7W images, shipped with no data
    # root), a benchmark is not run, with the reason; asked for by name, it fails (the user expects a result)
    runs = {which: ev.evaluate_all(model, preprocess, tokenizer, data_root=test_data, which=which and [which],
                                   limit=2, batch_size=16) for which in (None, "valse_existence")}
    for which, where in ((None, "not_run"), ("valse_existence", "failed")):
        assert runs[which][where]["valse_existence"].endswith(
            f"nothing to evaluate: {read} rows read, none usable (image not found ({read}))")
        assert "valse_existence" not in runs[which]["sections"]
    assert runs[None]["failed"] == {} and "sugarcrepe" in runs[None]["sections"]  # the default run: nothing failed

    # the default plan runs what exists and says why the rest does not run; NegBench's files are sections by dataset
    plan = plan_benchmarks(Sources(data_root=test_data))
    assert set(plan.runnable) == {"synthetic", "coco_generated", "negbench_mcq", "negbench_retrieval", "sugarcrepe",
                                  "valse_existence"}
    assert [job.section for job in plan.runnable["negbench_retrieval"]] == ["negbench_retrieval/coco",
                                                                            "negbench_retrieval/coco_negated"]
    assert [job.section for job in plan.runnable["negbench_mcq"]] == ["negbench_mcq/coco"]
    assert "--ccneg" in plan.not_run["ccneg"] and "--image-folder" in plan.not_run["image_folder"]
    assert "--negrefcocog" in plan.not_run["negrefcocog"]
    with pytest.raises(BenchmarkError, match="'ccneg' cannot run"):
        plan_benchmarks(Sources(data_root=test_data), ["ccneg"])
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        plan_benchmarks(Sources(data_root=test_data), ["negbench"])
    (tmp_path / "x.csv").write_text("image_path,caption,negative_prompt\n")
    with pytest.raises(BenchmarkError, match="no image root"):
        plan_benchmarks(Sources(data_root=tmp_path / "nowhere", image_root=None, files={"ccneg": [tmp_path / "x.csv"]}),
                        ["ccneg"])
    # files by path replace the data root's for their benchmark, one section per file
    voc = tmp_path / "VOC2007_mcq_llama3.1_rephrased.csv"
    shutil.copy(test_data / MCQ, voc)
    plan = plan_benchmarks(Sources(data_root=test_data, files={"negbench_mcq": [voc, tmp_path / "x.csv"]}),
                           ["negbench_mcq"])
    assert [job.section for job in plan.runnable["negbench_mcq"]] == ["negbench_mcq/voc2007", "negbench_mcq/x"]


# ---- the command -----------------------------------------------------------------------------


def test_cli_writes_json_and_markdown(tiny, test_data, tmp_path, monkeypatch, capsys):
    from analysis.cli.evaluate_negation import main

    _, _, _, config = tiny
    folder = tmp_path / "classes"
    for name, image in zip(("cat", "bus"), sorted(coco(test_data).glob("*.jpg"))[:2]):
        (folder / name).mkdir(parents=True)
        shutil.copy(image, folder / name / image.name)
    monkeypatch.chdir(REPO)  # where the default data root, ../shared/data, would be found: --data-root replaces it
    out = tmp_path / "out"
    # a second MCQ file by path, laid out as NegBench's VOC2007 file (there the right answer is not always option 0)
    voc = tmp_path / "VOC2007_mcq_llama3.1_rephrased.csv"
    rows = (test_data / MCQ).read_text().splitlines()
    voc.write_text(
        "\n".join(rows[:1] + [row for row in rows[1:] if "000000397133" in row or "000000037777" in row]) + "\n"
    )
    code = main(["--model", str(config), "--benchmarks", "synthetic,negbench_mcq,image_folder", "--limit", "6",
                 "--data-root", str(test_data), "--negbench-mcq", str(test_data / MCQ),
                 "--negbench-mcq", str(voc), "--image-folder", str(folder), "--synthetic-items", "12",
                 "--synthetic-zero-shot", "36", "--synthetic-image-size", "32", "--batch-size", "5",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"wrote {out / 'evaluation.json'}" in printed
    result = json.loads((out / "evaluation.json").read_text())
    assert result["model"]["architecture"] == config.stem and result["model"]["pretrained"] is None
    # the rows left out are said on the console too, not only in the JSON
    counts = result["sections"]["negbench_mcq/coco"]["counts"]
    _, with_an_image = rows_and_rows_with_an_image(test_data / MCQ, "image_path", coco(test_data))
    assert (f"evaluate-negation: note: negbench_mcq/coco: evaluated 6 of {counts['rows_read']} rows read; "
            f"{counts['n_skipped']} left out (image not found: {counts['n_skipped']}); --limit 6 kept 6 of the other "
            f"{with_an_image}") in captured.err.splitlines()
    assert set(result["sections"]) == {"synthetic/negation", "synthetic/retrieval", "synthetic/scope",
                                       "synthetic/prompt_gap", "negbench_mcq/coco", "negbench_mcq/voc2007",
                                       "image_folder/prompt_gap"}
    mcq = result["sections"]["negbench_mcq/coco"]
    total, with_image = rows_and_rows_with_an_image(test_data / MCQ, "image_path", coco(test_data))
    assert mcq["metrics"]["mcq_accuracy"]["n"] == 6 and mcq["counts"]["n_skipped"] == total - with_image
    assert result["sections"]["synthetic/negation"]["metrics"]["ccneg_accuracy"]["n"] == 6  # --limit 6 of 12
    assert result["sections"]["negbench_mcq/voc2007"]["counts"]["source"] == str(voc)
    # --limit counts per class in an image folder (both of its two classes kept whole), per file elsewhere
    assert result["sections"]["image_folder/prompt_gap"]["counts"]["limited_per"] == "class"
    assert "limited_per" not in counts and counts["limited_to"] == 6
    # provenance.json: the command, and each file evaluated by its SHA-256 (computed here a second way)
    import hashlib

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["command"][:3] == ["evaluate-negation", "--model", str(config)]
    assert provenance["data"]["negbench_mcq/voc2007"] == {"path": str(voc.resolve()),
                                                          "sha256": hashlib.sha256(voc.read_bytes()).hexdigest()}
    assert set(provenance["data"]) == {"negbench_mcq/coco", "negbench_mcq/voc2007"}  # the folder is a root, not a file
    assert provenance["image_roots"]["--image-folder"] == str(folder.resolve())
    markdown = (out / "evaluation.md").read_text()
    assert "| benchmark | metric | value | n | ties | published CLIP ViT-B/32 | published, other models |" in markdown
    entry = mcq["metrics"]["mcq_accuracy"]
    # measured beside published: CLIP ViT-B/32 0.393 on COCO, 0.387 on VOC2007, and the fixed models
    assert (f"| negbench_mcq/coco | mcq_accuracy | {entry['value']:.4f} | 6 | {entry['ties']} | 0.3930 | "
            "NegBench-tuned NegCLIP 0.5624; NegBench-tuned CLIP 0.5443; NegCLIP 0.2868; CoN-CLIP 0.2390 |") in markdown
    assert "| negbench_mcq/voc2007 | mcq_accuracy |" in markdown and "| 0.3872 |" in markdown
    assert f"negbench_mcq/coco mcq_accuracy: measured {entry['value']:.4f}" in printed
    assert result["published"]["negbench_mcq/coco"]["mcq_accuracy"][0]["model"] == "CLIP ViT-B/32"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("argv, message", [
    (["--benchmarks", "synthetic,bogus"], "unknown benchmark"),
    (["--benchmarks", "ccneg"], "'ccneg' cannot run"),
    (["--batch-size", "0"], "must be >= 1"),
    (["--data-root", "/nonexistent/folder"], "is not a folder"),
    (["--model", "no-such-model"], "unknown model name"),
    (["--image-root-for", "valse_existence"], "BENCHMARK=DIR"),
    (["--benchmarks", "negbench_mcq", "--negbench-mcq", "/nonexistent/mcq.csv"], "do(es) not exist"),
    # a file named for a benchmark that would otherwise be skipped, or is not asked for, is still an error
    (["--negbench-mcq", "/nonexistent/mcq.csv"], "--negbench-mcq: /nonexistent/mcq.csv do(es) not exist"),
    (["--benchmarks", "synthetic", "--sugarcrepe", "/nonexistent/swap.json"], "--sugarcrepe: /nonexistent/swap"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, tmp_path, monkeypatch, capsys):
    from analysis.cli.evaluate_negation import main

    monkeypatch.chdir(REPO)
    try:
        status = main(["--out", str(tmp_path / "o"), "--model", "RN50", *argv] if "--model" not in argv
                      else ["--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit_info:  # argparse's own errors
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("evaluate-negation: error:") and message in err[-1]
    assert not any(line.startswith("Traceback") for line in err)
    assert not (tmp_path / "o").exists()


def test_cli_help_does_not_import_torch():
    code = ("import sys; from analysis.cli.evaluate_negation import build_parser; build_parser().format_help(); "
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_cli_embedded_model_comes_with_its_synthetic_world(small_embedded, tmp_path, capsys):
    from analysis.cli.evaluate_negation import main
    from probing.models.build import world_for

    _, spec = small_embedded
    out = tmp_path / "out"
    assert main(["--model", "embedded:small", "--benchmarks", "synthetic", "--synthetic-items", "8",
                 "--synthetic-zero-shot", "36", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["model"]["model"] == "embedded:small"
    world = world_for(spec)  # the world the build pretrained on, which the shipped file records
    assert result["sections"]["synthetic/scope"]["counts"]["image_size"] == world.config.image_size
    assert result["sections"]["synthetic/scope"]["counts"]["world_seed"] == world.seed
    for argv in (["--model", "embedded", "--pretrained", "w.safetensors"], ["--model", "embedded:huge"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--benchmarks", "synthetic", "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2
    assert "unknown embedded model 'huge'" in capsys.readouterr().err


def test_published_table_rows_name_real_sections_and_metrics():
    """Every published value sits where evaluate-negation writes the metric it compares with."""
    from analysis.evaluation.benchmarks import BENCHMARKS, NEGBENCH_LABELS
    from analysis.evaluation.published import published_table

    sections = {"ccneg", "summary"} | {f"{kind}/{label}" for kind, label in NEGBENCH_LABELS.values()}
    table = published_table()
    assert table and all(section in sections for section, _ in table)
    for (_section, metric), rows in table.items():
        assert metric.split("/")[0] in {
            "ccneg_accuracy",
            "mcq_accuracy",
            "text_to_image_R@5",
            "negated_prompt_gap_mean",
        }
        assert all(0 <= row.value <= 1 and row.source for row in rows)
        assert sum(row.reference for row in rows) <= 1 and (not rows[0].reference or rows[0].model == "CLIP ViT-B/32")
    assert table[("ccneg", "ccneg_accuracy")][0].value == 0.657  # REFERENCE.md: CLIP ViT-B/32 65.70
    assert {row.model: row.value for row in table[("negbench_mcq/coco", "mcq_accuracy/template=negative")]} == {
        "CLIP ViT-B/32": 0.068}
    assert set(BENCHMARKS) >= {section.split("/")[0] for section in sections if section != "summary"}


# ---- no silently wrong number: unreadable images, captions cut by the context, duplicates, nothing left ----


def test_a_truncated_jpeg_costs_its_rows_not_the_benchmark(tiny, test_data, tmp_path):
    model, preprocess, tokenizer, _ = tiny
    images = sorted(coco(test_data).glob("*.jpg"))[:3]
    root = tmp_path / "images"
    root.mkdir()
    for image in images[:2]:
        shutil.copy(image, root / image.name)
    data = images[2].read_bytes()
    (root / images[2].name).write_bytes(data[:len(data) // 2])  # a download cut half-way
    mcq = tmp_path / "mcq.csv"
    mcq.write_text("image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n" +
                   "".join(f"val2017/{image.name},0,a photo,no photo,a cat,no cat,positive\n" for image in images) +
                   f"val2017/{images[2].name},1,a dog,no dog,a bus,no bus,negative\n")
    out = ev.evaluate_all(model, preprocess, tokenizer, which=["negbench_mcq", "sugarcrepe"], image_root=root,
                          files={"negbench_mcq": [mcq], "sugarcrepe": [_sugarcrepe_fold(tmp_path, images)]})
    assert not out["failed"]
    for section, rows in (("negbench_mcq/mcq", 4), ("sugarcrepe", 3)):
        counts = out["sections"][section]["counts"]
        assert counts["rows_read"] == rows and counts["n_evaluated"] == 2  # the two good images' rows
        assert counts["skip_reasons"] == {"image unreadable": rows - 2}
        assert images[2].name in counts["skipped_examples"][0]["problem"]
    # the good rows score as they would alone: the same numbers without the broken image's rows
    alone = ev.evaluate_mcq(model, preprocess, tokenizer, [item for item in
                                                           _load(mcq, root) if images[2].name not in item.image])
    assert out["sections"]["negbench_mcq/mcq"]["metrics"] == alone["metrics"]


def _sugarcrepe_fold(tmp_path: Path, images) -> Path:
    fold = tmp_path / "sugar" / "add_obj.json"
    fold.parent.mkdir()
    fold.write_text(json.dumps({str(i): {"filename": image.name, "caption": "a cat on a mat",
                                         "negative_caption": "a dog on a mat"} for i, image in enumerate(images)}))
    return fold


def _load(path, root):
    from probing.data import load_negbench_mcq as load

    return load(path, root, strict=False)


def test_captions_cut_by_the_context_are_counted_and_pairs_the_cut_makes_equal_are_left_out(tiny, test_data,
                                                                                             tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    model, preprocess, tokenizer, _ = tiny  # a 32-token context
    image = sorted(coco(test_data).glob("*.jpg"))[0].name
    long = "a big red bus parked next to a small green tree " * 4
    pairs = {"past_the_cut": (long + "and a cat", long + "and a dog"),  # differ after token 32 only
             "early": ("a cat " + long, "a dog " + long),  # both cut, different from the start
             "short": ("a cat on a sofa", "a dog on a sofa")}
    fold = tmp_path / "folds" / "add_obj.json"
    fold.parent.mkdir()
    fold.write_text(json.dumps({key: {"filename": image, "caption": caption, "negative_caption": foil}
                                for key, (caption, foil) in pairs.items()}))
    pairs_loaded = load_sugarcrepe(fold, coco(test_data), strict=False)
    result = ev.evaluate_foils(model, preprocess, tokenizer, pairs_loaded)
    # counted a second way: open_clip's BPE, plus start and end tokens, against the 32-token context
    bpe = SimpleTokenizer()
    too_long = {key: [len(bpe.encode(text)) + 2 > 32 for text in pair] for key, pair in pairs.items()}
    assert too_long == {"past_the_cut": [True, True], "early": [True, True], "short": [False, False]}
    counts = result["counts"]
    assert counts["n_evaluated"] == 2 and counts["skip_reasons"] == {"captions identical after the cut": 1}
    assert counts["skipped_examples"][0]["row"] == "past_the_cut"
    assert counts["cut"] == {"context_length": 32, "captions_cut": 2, "items_with_a_cut_caption": 1, "counted": True}
    assert result["metrics"]["accuracy"]["n"] == 2
    table = ev.markdown_table({"sections": {"sugarcrepe": result}})
    assert "| 2 (32 tokens) |" in table
    assert ev.section_notes({"sections": {"sugarcrepe": result}}) == [
        "sugarcrepe: evaluated 2 of 3 rows read; 1 left out (captions identical after the cut: 1); 2 captions longer "
        "than the 32-token context were cut (1 items)"]


def test_section_notes_account_for_every_row_read():
    """One line per section that lost rows: evaluated + left out + dropped by --limit = rows read (here 20 + 0 +
    5894 = 5914 and 140 + 100 + 260 = 500), the cut captions on the same line."""
    cut = {"context_length": 32, "captions_cut": 3, "items_with_a_cut_caption": 2, "counted": True}
    sections = {
        "ccneg": {"counts": {"rows_read": 5914, "n_evaluated": 20, "n_skipped": 0, "skip_reasons": {},
                             "limited_to": 20, "cut": cut}},
        "sugarcrepe": {"counts": {"rows_read": 500, "n_evaluated": 140, "n_skipped": 100,
                                  "skip_reasons": {"image not found": 100}, "limited_to": 20, "limited_per": "fold"}},
        "whole": {"counts": {"rows_read": 30, "n_evaluated": 30, "n_skipped": 0, "skip_reasons": {}}},
    }
    assert ev.section_notes({"sections": sections}) == [
        "ccneg: evaluated 20 of 5914 rows read; --limit 20 kept 20 of 5914; 3 captions longer than the 32-token "
        "context were cut (2 items)",
        "sugarcrepe: evaluated 140 of 500 rows read; 100 left out (image not found: 100); --limit 20 per fold kept "
        "140 of the other 400"]


def test_duplicated_rows_are_counted_and_leave_the_numbers_unchanged(tiny, test_data, tmp_path):
    model, preprocess, tokenizer, _ = tiny
    source = test_data / "negbench/COCO_val_retrieval.csv"
    lines = source.read_text(encoding="utf-8").splitlines()
    present = {path.name for path in coco(test_data).glob("*.jpg")}
    rows = [line for line in lines[1:] if any(name in line for name in present)][:15]
    once, twice = tmp_path / "once.csv", tmp_path / "twice.csv"
    once.write_text("\n".join([lines[0]] + rows) + "\n")
    twice.write_text("\n".join([lines[0]] + rows + rows[:10]) + "\n")  # 10 rows repeated word for word
    results = [ev.evaluate_retrieval(model, preprocess, tokenizer,
                                     load_negbench_retrieval(path, coco(test_data), strict=False))
               for path in (once, twice)]
    assert results[1]["metrics"] == results[0]["metrics"]
    assert results[1]["counts"]["skip_reasons"] == {"duplicate": 10} and results[1]["counts"]["rows_read"] == 25
    assert results[1]["counts"]["n_evaluated"] == results[0]["counts"]["n_evaluated"] == 15
    mcq_lines = (test_data / MCQ).read_text(encoding="utf-8").splitlines()
    mcq_rows = [line for line in mcq_lines[1:] if any(name in line for name in present)][:8]
    doubled = tmp_path / "mcq.csv"
    doubled.write_text("\n".join([mcq_lines[0]] + mcq_rows * 2) + "\n")
    result = ev.evaluate_mcq(model, preprocess, tokenizer, load_negbench_mcq(doubled, coco(test_data), strict=False))
    assert result["metrics"]["mcq_accuracy"]["n"] == 8 and result["counts"]["skip_reasons"] == {"duplicate": 8}


def test_a_benchmark_left_with_nothing_to_evaluate_is_a_failure_not_an_empty_table(tiny, test_data, tmp_path):
    model, preprocess, tokenizer, _ = tiny
    mcq = tmp_path / "mcq.csv"
    mcq.write_text("image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
                   "nowhere/a.jpg,0,a,b,c,d,positive\nnowhere/b.jpg,9,a,b,c,d,positive\n")
    out = ev.evaluate_all(model, preprocess, tokenizer, which=["negbench_mcq"], files={"negbench_mcq": [mcq]},
                          image_root=coco(test_data))
    assert out["sections"] == {}
    assert out["failed"] == {"negbench_mcq/mcq": f"{mcq}: nothing to evaluate: 2 rows read, none usable (image not "
                                                 "found (1); correct_answer 9 is not a caption index 0..3 (1))"}


def test_limit_caps_the_synthetic_suite_too(tiny, world):
    model, preprocess, tokenizer, _ = tiny
    out = ev.evaluate_all(model, preprocess, tokenizer, which=["synthetic"], synthetic_world=world, limit=7,
                          synthetic_n=40, synthetic_classification=30, batch_size=16)
    sections = out["sections"]
    assert sections["synthetic/negation"]["metrics"]["ccneg_accuracy"]["n"] == 7
    assert sections["synthetic/scope"]["metrics"]["scope_accuracy"]["n"] == 7
    assert sections["synthetic/prompt_gap"]["metrics"]["zero_shot_affirmative"]["n"] == 7
    assert all(section["counts"]["limited_to"] == 7 for section in sections.values())
    assert out["settings"]["synthetic"]["n"] == 7 and out["settings"]["synthetic"]["n_classification"] == 7
    unlimited = ev.evaluate_all(model, preprocess, tokenizer, which=["synthetic"], synthetic_world=world,
                                synthetic_n=40, synthetic_classification=30, batch_size=16)["sections"]
    assert unlimited["synthetic/negation"]["metrics"]["ccneg_accuracy"]["n"] == 40
    assert unlimited["synthetic/prompt_gap"]["metrics"]["zero_shot_affirmative"]["n"] == 30


def test_cli_default_run_on_a_data_root_without_valse_images_exits_0(tiny, test_data, tmp_path, monkeypatch, capsys):
    """The README's `evaluate-negation --out runs/eval` on the benchmark files: VALSE's images (Visual7W) are not
    there, so VALSE is a note, not a failure, and the run exits 0; named with --benchmarks it fails (exit 2)."""
    from analysis.cli.evaluate_negation import main

    _, _, _, config = tiny
    monkeypatch.chdir(REPO)
    base = ["--model", str(config), "--data-root", str(test_data), "--limit", "2", "--synthetic-items", "8",
            "--synthetic-zero-shot", "36", "--synthetic-image-size", "32", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "all")]) == 0
    err = capsys.readouterr().err
    assert any(line.startswith("evaluate-negation: note: not run: valse_existence: ") and "image not found" in line
               for line in err.splitlines())
    result = json.loads((tmp_path / "all" / "evaluation.json").read_text())
    assert result["failed"] == {} and "valse_existence" in result["not_run"] and "sugarcrepe" in result["sections"]
    assert main([*base, "--benchmarks", "valse_existence", "--out", str(tmp_path / "named")]) == 2
    assert "evaluate-negation: error: valse_existence failed" in capsys.readouterr().err
