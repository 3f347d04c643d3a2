"""Rule-based negation generator on the real COCO annotations and NegBench rows, checked against the raw JSON.

The COCO tests run on the vendored subset (tests/data, 18 images) and on the full shared data (79 annotated
images; skipped where ../shared/data is absent)."""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from probing.data import load_coco_instances, load_negbench_retrieval
from probing.data.generator import DEFAULT_CUES, generate_negations
from probing.data.records import CocoImage, RetrievalItem
from tests.conftest import TEST_DATA, needs_shared_data

NEG_RETRIEVAL = "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
# per data folder: the images of instances_val2017.json, how many of them have two categories covering >= 1 % (one
# example each), and how many examples of seed 1 can draw their absent object among those seen with the subject
EXPECTED = {"subset": {"images": 18, "eligible": 15, "plausible": 11},
            "full": {"images": 79, "eligible": 61, "plausible": 57}}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def data(request) -> tuple[str, Path]:
    """The vendored subset (tests/data) and the full shared data (skipped where it is absent)."""
    return request.param, TEST_DATA if request.param == "subset" else needs_shared_data()


@pytest.fixture(scope="module")
def expected(data) -> dict[str, int]:
    return EXPECTED[data[0]]


@pytest.fixture(scope="module")
def coco_paths(data):
    root = data[1]
    return root / "coco_mini" / "annotations" / "instances_val2017.json", root / "coco_mini" / "val2017"


@pytest.fixture(scope="module")
def raw_objects(coco_paths):
    """image file name -> (every category annotated, category -> summed box area fraction), from the raw JSON."""
    raw = json.loads(coco_paths[0].read_text())
    names = {c["id"]: c["name"] for c in raw["categories"]}
    images = {image["id"]: image for image in raw["images"]}
    areas = collections.defaultdict(lambda: collections.defaultdict(float))
    for box in raw["annotations"]:
        image = images[box["image_id"]]
        areas[image["file_name"]][names[box["category_id"]]] += box["bbox"][2] * box["bbox"][3] / (
            image["width"] * image["height"])
    return {file: (set(area), dict(area)) for file, area in areas.items()}


@pytest.fixture(scope="module")
def coco_images(coco_paths):
    return load_coco_instances(*coco_paths)


def test_generated_captions_agree_with_the_raw_annotations(coco_images, raw_objects, data, expected):
    examples = generate_negations(coco_images, seed=0, max_subjects=3)
    # every image with two categories covering >= 1 % of it gives one example; the rest are counted
    eligible = [f for f, (_, area) in raw_objects.items() if sum(a >= 0.01 for a in area.values()) >= 2]
    assert len(examples) == len(eligible) == expected["eligible"] and len(raw_objects) == expected["images"]
    assert examples.report.filtered == {"fewer than two visible objects": expected["images"] - expected["eligible"]}
    for e in examples:
        everything, area = raw_objects[Path(e.image).name]
        subjects = e.meta["subjects"]
        assert Path(e.image).is_file()
        assert e.negated_object in everything and area[e.negated_object] >= 0.01  # visible: the negation is false
        assert e.absent_object not in everything  # not annotated anywhere in the image: the negation is true
        assert all(s in everything and area[s] >= 0.01 for s in subjects) and e.negated_object not in subjects
        assert e.subject == subjects[0] and e.k == len(subjects) + 1
        assert all(name in e.caption for name in subjects + [e.negated_object])
        assert e.negated_object in e.presence_negated and e.absent_object in e.absence_negated
        assert e.negated_object not in e.absence_negated.replace(e.absent_object, "")
        assert re.search(rf"\b{re.escape(e.cue)}\b", e.presence_negated) and e.cue in DEFAULT_CUES
        if e.distractor_image is not None:
            distractor, _ = raw_objects[Path(e.distractor_image).name]
            assert set(subjects) <= distractor and e.negated_object not in distractor
            assert e.distractor_image != e.image
    distractors = sum(e.distractor_image is not None for e in examples)
    if data[0] == "full":  # the variety of 79 images; 18 need not reach every K or as many distractors
        assert {e.k for e in examples} == {2, 3, 4}
        assert distractors > len(examples) / 2
    else:
        assert {2, 3} <= {e.k for e in examples} <= {2, 3, 4} and distractors > 0


def test_absent_objects_are_plausible_when_possible(coco_images, expected):
    examples = generate_negations(coco_images, seed=1)
    seen_with = collections.defaultdict(set)
    for image in coco_images:
        for name in image.objects:
            seen_with[name] |= set(image.objects) - {name}
    objects_of = {image.image: set(image.objects) for image in coco_images}
    everything = set(seen_with)
    plausible_count = 0
    for e in examples:
        plausible = seen_with[e.subject] - objects_of[e.image]
        if plausible:  # the rule: draw among objects seen with the subject elsewhere, when there are some
            assert e.absent_object in plausible
            plausible_count += 1
        else:
            assert e.absent_object in everything - objects_of[e.image]
    assert plausible_count == expected["plausible"]


def test_seeded_and_deterministic(coco_images, expected):
    def texts(examples):
        return [(e.caption, e.presence_negated, e.absence_negated, e.distractor_image) for e in examples]

    assert texts(generate_negations(coco_images, seed=3)) == texts(generate_negations(coco_images, seed=3))
    assert texts(generate_negations(coco_images, seed=3)) != texts(generate_negations(coco_images, seed=4))
    assert len(generate_negations(coco_images, seed=3, per_image=3)) == 3 * expected["eligible"]


def test_negbench_object_lists_with_the_real_images(test_data):
    items = load_negbench_retrieval(test_data / NEG_RETRIEVAL, test_data / "coco_mini" / "val2017", strict=False)
    examples = generate_negations(items, seed=0, cues=("no", "without"), frames=("but",))
    single = sum(len(item.positive_objects) < 2 for item in items)
    assert len(examples) == len(items) - single and examples.report.filtered["fewer than two visible objects"] == single
    by_path = {item.image: item for item in items}
    for e in examples:
        item = by_path[e.image]
        assert e.negated_object in item.positive_objects and e.subject in item.positive_objects
        assert e.absent_object in item.negative_objects
        assert e.cue in ("no", "without") and e.meta["template"] == "but"
        assert e.meta["image_id"] == item.image_id and Path(e.image).is_file()


def test_small_handmade_input_and_bad_arguments():
    kitchen = CocoImage("k.jpg", 1, ["oven", "person", "cup"], {"oven": 0.3, "person": 0.2, "cup": 0.001})
    street = CocoImage("s.jpg", 2, ["car", "person"], {"car": 0.4, "person": 0.1})
    lone = CocoImage("l.jpg", 3, ["dog"], {"dog": 0.5})
    examples = generate_negations([kitchen, street, lone], seed=0, frames=("but",), cues=("no",),
                                  caption_templates=("aff_list",))
    assert len(examples) == 2 and examples.report.filtered == {"fewer than two visible objects": 1}
    first = examples[0]
    assert {first.subject, first.negated_object} == {"oven", "person"}  # the tiny cup is never negated
    assert first.absent_object in {"car", "dog"}  # annotated elsewhere, not here
    assert first.presence_negated == f"a {first.subject} but no {first.negated_object}"
    # a distractor shows the subject without the negated object: only the street image can
    if first.subject == "person":
        assert first.distractor_image == "s.jpg"
    else:
        assert first.distractor_image is None
    retrieval = RetrievalItem("r.jpg", ["x"], ["skis", "person"], ["dog"])
    only = generate_negations([retrieval], seed=0, cues=("not",), frames=("and",), caption_templates=("aff_list",))[0]
    assert "some skis" in only.caption and only.absent_object == "dog"

    with pytest.raises(ValueError, match=r"cues \['none'\] cannot be used"):
        generate_negations([kitchen], cues=("none",))
    with pytest.raises(ValueError, match="frames must be a non-empty subset"):
        generate_negations([kitchen], frames=("sideways",))
    with pytest.raises(TypeError, match="expected CocoImage or RetrievalItem"):
        generate_negations(["k.jpg"])
