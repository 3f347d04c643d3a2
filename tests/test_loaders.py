"""Real benchmark readers on real files, and every kind of bad input.

The real files are the vendored subset in tests/data (tests/data/MANIFEST.md): the expected numbers are read
from the same files a second way (the csv and json modules, open_clip's BPE), not from the readers. The counts
over the full files of ../shared/data, as its MANIFEST.md gives them, are checked where that folder is there.
"""
from __future__ import annotations

import ast
import collections
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from probing.data import (
    DataError,
    guess_kind,
    load_ccneg,
    load_coco_captions,
    load_coco_instances,
    load_dataset,
    load_image,
    load_negbench_mcq,
    load_negbench_retrieval,
    load_sugarcrepe,
    load_valse_existence,
    split_rows,
)
from probing.data.reading import TokenLimit, generation_artifact

MCQ = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"
NEG_RETRIEVAL = "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv"
RETRIEVAL = "negbench/COCO_val_retrieval.csv"
MCQ_HEADER = "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
# the subset's MCQ rows that hold leftover generation text (quoted remarks, '#', '->', "ANS:", "??  (To be
# rephrased)", ...), found by reading all 78 rows; the other rows are clean captions
MCQ_LEFTOVER_ROWS = {13, 14, 42, 43, 45, 50, 51, 52, 55, 56, 66, 72, 75}


@pytest.fixture
def coco_images(test_data) -> Path:
    return test_data / "coco_mini" / "val2017"


def words(text: str) -> list[str]:
    """A cheap stand-in tokenizer: one token per word."""
    return text.split()


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def image_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------
# real files (the vendored subset): what the readers give against the rows read with csv / json


def test_negbench_mcq_all_rows_without_images(test_data):
    items = load_negbench_mcq(test_data / MCQ)
    rows = csv_rows(test_data / MCQ)
    assert len(items) == len(rows) == 78
    assert collections.Counter(item.template for item in items) == collections.Counter(
        row["correct_answer_template"] for row in rows)
    assert {item.template for item in items} == {"positive", "negative", "hybrid"}
    assert all(item.correct == 0 and len(item.captions) == 4 for item in items)
    assert [item.captions for item in items] == [[row[f"caption_{i}"] for i in range(4)] for row in rows]
    assert items[0].image == "data/coco/images/val2017/000000397133.jpg"  # as written, unchecked
    assert items[0].captions[1] == "A car is present in this image, but there is no knife."


def test_negbench_mcq_rows_with_the_real_images(test_data, coco_images):
    items = load_negbench_mcq(test_data / MCQ, coco_images, strict=False)
    rows = csv_rows(test_data / MCQ)
    available = set(os.listdir(coco_images))
    with_image = [index for index, row in enumerate(rows) if image_name(row["image_path"]) in available]
    assert [item.row for item in items] == with_image and len(with_image) == 33
    assert len({item.image for item in items}) == len({image_name(rows[i]["image_path"]) for i in with_image}) == 17
    assert all(Path(item.image).is_file() and Path(item.image).parent == coco_images for item in items)
    assert items.report.loaded == len(with_image)
    assert items.report.skip_reasons() == {"image not found": len(rows) - len(with_image)}


def test_negbench_mcq_strict_names_the_first_row_whose_image_is_missing(test_data, coco_images):
    available = set(os.listdir(coco_images))
    rows = load_negbench_mcq(test_data / MCQ)
    first_missing = next(item for item in rows if Path(item.image).name not in available)
    with pytest.raises(DataError) as info:
        load_negbench_mcq(test_data / MCQ, coco_images)
    err = info.value
    assert err.row == first_missing.row == 5
    assert "COCO_val_mcq" in str(err) and "row 5" in str(err) and "image not found" in str(err)
    assert Path(first_missing.image).name in str(err)


def test_negbench_generation_leftovers_are_flagged_or_skipped(test_data):
    rows = csv_rows(test_data / MCQ)
    placeholder = next(index for index, row in enumerate(rows) if row["caption_3"] == "??  (To be rephrased)")
    flagged = load_negbench_mcq(test_data / MCQ)
    leftover = flagged[placeholder]
    assert leftover.captions[3] == "??  (To be rephrased)"
    assert leftover.meta["artifacts"] == ["caption 3: placeholder '??'"]
    flagged_rows = {row for row, _ in flagged.report.flagged}
    assert flagged_rows == MCQ_LEFTOVER_ROWS and placeholder in flagged_rows
    assert 0 not in flagged_rows  # a clean row stays clean

    skipped = load_negbench_mcq(test_data / MCQ, artifacts="skip")
    assert len(skipped) == len(rows) - len(MCQ_LEFTOVER_ROWS)
    assert skipped.report.skip_reasons() == {"generation artifact": len(MCQ_LEFTOVER_ROWS)}
    assert placeholder not in {item.row for item in skipped}

    kept = load_negbench_mcq(test_data / MCQ, artifacts="keep")
    assert len(kept) == len(rows) and not kept.report.flagged


@pytest.mark.parametrize("text, artifact", [
    ("??  (To be rephrased)", True),
    ('"A car is not shown in this image."  # Changed to be more concise and clear.', True),
    ('This image does not include cup." -> "No cup is present in this image.', True),
    ('This image contains no person" or "There is no person in this image.', True),
    ("(Your response)", True),
    ('"A bowl is not present in this image".', False),  # one wrapping pair of quotes is fine
    ('A street sign reads "Bacchanalia" above a stop sign.', False),  # quotes inside a real caption
    ("The #41 bus parked at the curb waiting for passengers to board", False),
    ("This image features a knife, but no car is present.", False),
])
def test_generation_artifact_rules(text, artifact):
    assert (generation_artifact(text) is not None) == artifact


def test_negbench_retrieval_files(test_data, coco_images):
    negated = load_negbench_retrieval(test_data / NEG_RETRIEVAL)
    plain = load_negbench_retrieval(test_data / RETRIEVAL)
    rows = csv_rows(test_data / RETRIEVAL)
    assert len(negated) == len(plain) == len(rows) == 82
    assert [item.captions for item in plain] == [ast.literal_eval(row["captions"]) for row in rows]
    assert collections.Counter(len(item.captions) for item in plain) == {5: 79, 6: 2, 7: 1}
    first = negated[0]
    assert first.image_id == 397133 and first.negative_objects == ["chair", "fork", "car"]
    assert "oven" in first.positive_objects and first.captions[0].endswith("no chair in sight.")
    # same images and objects in both files; captions differ (negated vs affirmative)
    assert [item.positive_objects for item in negated] == [item.positive_objects for item in plain]
    assert negated[0].captions != plain[0].captions

    with_images = load_negbench_retrieval(test_data / NEG_RETRIEVAL, coco_images, strict=False)
    available = set(os.listdir(coco_images))
    expected = [index for index, row in enumerate(rows) if image_name(row["filepath"]) in available]
    assert [item.row for item in with_images] == expected and len(expected) == 18
    assert len({item.image for item in with_images}) == 18
    assert with_images.report.skip_reasons() == {"image not found": len(rows) - 18}


def test_sugarcrepe_folder_and_single_fold(test_data, coco_images):
    raw = {path.stem: json.loads(path.read_text()) for path in sorted((test_data / "sugarcrepe").glob("*.json"))}
    pairs = load_sugarcrepe(test_data / "sugarcrepe")
    assert len(pairs) == sum(len(items) for items in raw.values())
    assert collections.Counter(pair.fold for pair in pairs) == {fold: len(items) for fold, items in raw.items()}
    assert set(raw) == {"add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj"}
    one = load_sugarcrepe(test_data / "sugarcrepe" / "add_obj.json")
    assert len(one) == len(raw["add_obj"]) and one[0].row == "0"
    assert one[0].caption == "A cat and dog napping together on the couch."
    assert one[0].foil.startswith("A cat and a dog napping together under a blanket")

    with_images = load_sugarcrepe(test_data / "sugarcrepe", coco_images, strict=False)
    available = set(os.listdir(coco_images))
    expected = [item["filename"] for items in raw.values() for item in items.values() if item["filename"] in available]
    assert len(with_images) == len(expected) and len({pair.image for pair in with_images}) == len(set(expected))
    assert with_images.report.n_skipped == len(pairs) - len(expected)
    with pytest.raises(DataError, match="missing SugarCREPE fold"):
        load_sugarcrepe(test_data / "sugarcrepe", folds=("add_obj", "no_such_fold"))


def test_valse_existence_keeps_items_with_two_or_more_caption_votes(test_data):
    raw = json.loads((test_data / "valse" / "existence.json").read_text())
    votes = [item["mturk"]["caption"] for item in raw.values()]
    pairs = load_valse_existence(test_data / "valse" / "existence.json")
    assert len(pairs) == sum(v >= 2 for v in votes) and 0 < sum(v < 2 for v in votes) < len(votes)
    assert pairs.report.filtered == {"mturk.caption < 2 (VALSE protocol)": sum(v < 2 for v in votes)}
    assert all(pair.meta["mturk"]["caption"] >= 2 for pair in pairs)
    first = pairs[0]
    assert (first.caption, first.foil) == ("There are no people in the picture.", "There are people in the picture.")
    assert first.image == "v7w_2371044.jpg" and first.fold == "existence"
    assert len(load_valse_existence(test_data / "valse" / "existence.json", min_caption_votes=0)) == len(raw)


def test_coco_captions_and_instances_with_real_images(test_data, coco_images):
    annotations = test_data / "coco_mini" / "annotations"
    raw_captions = json.loads((annotations / "captions_val2017.json").read_text())
    captions = load_coco_captions(annotations / "captions_val2017.json", coco_images)
    assert len(captions) == len(raw_captions["annotations"])
    assert len({example.meta["image_id"] for example in captions}) == len(raw_captions["images"])
    # (the reader strips the white space some COCO captions end with)
    assert [example.caption for example in captions] == [entry["caption"].strip()
                                                         for entry in raw_captions["annotations"]]
    assert all(Path(example.image).is_file() for example in captions)
    assert all(example.presence_negated is None and example.k is None for example in captions)

    images = load_coco_instances(annotations / "instances_val2017.json", coco_images)
    raw = json.loads((annotations / "instances_val2017.json").read_text())
    assert len(images) == len(raw["images"]) == len({box["image_id"] for box in raw["annotations"]})
    kitchen = next(image for image in images if image.image_id == 397133)
    assert kitchen.objects[0] == "dining table" and {"oven", "person", "knife"} <= set(kitchen.objects)
    assert list(kitchen.areas.values()) == sorted(kitchen.areas.values(), reverse=True)
    # every category named in the raw boxes of this image, nothing more
    names = {category["id"]: category["name"] for category in raw["categories"]}
    expected = {names[box["category_id"]] for box in raw["annotations"] if box["image_id"] == 397133}
    assert set(kitchen.objects) == expected


def test_load_image_reads_a_real_jpeg(coco_images):
    array = load_image(coco_images / "000000397133.jpg")
    assert array.dtype == np.uint8 and array.shape == (427, 640, 3)


def test_guess_kind_on_real_files(test_data):
    annotations = test_data / "coco_mini" / "annotations"
    assert guess_kind(test_data / MCQ) == "negbench_mcq"
    assert guess_kind(test_data / NEG_RETRIEVAL) == "negbench_retrieval"
    assert guess_kind(test_data / "sugarcrepe") == "sugarcrepe"
    assert guess_kind(test_data / "sugarcrepe" / "swap_obj.json") == "sugarcrepe"
    assert guess_kind(test_data / "valse" / "existence.json") == "valse_existence"
    assert guess_kind(annotations / "captions_val2017.json") == "coco_captions"
    assert guess_kind(annotations / "instances_val2017.json") == "coco_instances"
    swap_obj = test_data / "sugarcrepe" / "swap_obj.json"
    assert len(load_dataset(swap_obj)) == len(json.loads(swap_obj.read_text()))


def test_guess_kind_from_content_when_the_name_says_nothing(tmp_path, test_data):
    valse = tmp_path / "renamed.json"
    valse.write_bytes((test_data / "valse" / "existence.json").read_bytes())
    assert guess_kind(valse) == "valse_existence"
    sugar = tmp_path / "pairs.json"
    sugar.write_text(json.dumps({"0": {"filename": "a.jpg", "caption": "a", "negative_caption": "b"}}))
    assert guess_kind(sugar) == "sugarcrepe"
    ccneg = tmp_path / "mine.csv"
    ccneg.write_text("image_path,caption,negative_prompt\na.jpg,a dog,no dog\n")
    assert guess_kind(ccneg) == "ccneg"
    unknown = tmp_path / "other.csv"
    unknown.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="cannot tell the dataset kind"):
        load_dataset(unknown)


def test_caption_longer_than_the_clip_context(test_data):
    """Two real negated-retrieval rows (925 and 3859 of the full file) hold LLM monologues longer than CLIP's 77
    tokens; counted a second way with open_clip's BPE (+ start and end tokens)."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    rows = csv_rows(test_data / NEG_RETRIEVAL)
    lengths = [[len(bpe.encode(caption)) + 2 for caption in ast.literal_eval(row["captions"])] for row in rows]
    too_long = [index for index, row in enumerate(lengths) if max(row) > 77]
    assert len(too_long) == 2 and lengths[too_long[0]][0] == 142
    lenient = load_negbench_retrieval(test_data / NEG_RETRIEVAL, strict=False, context_length=77)
    assert len(lenient) == len(rows) - 2
    assert [row for row, _ in lenient.report.skipped] == too_long
    assert "142 tokens" in lenient.report.skipped[0][1]
    with pytest.raises(DataError, match=rf"row {too_long[0]}: caption too long: caption 0 has 142 tokens"):
        load_negbench_retrieval(test_data / NEG_RETRIEVAL, context_length=77)


def test_the_full_files_hold_what_their_manifest_says(shared_data):
    """The same readers over the full files of ../shared/data: the counts its MANIFEST.md gives."""
    images = shared_data / "coco_mini" / "val2017"
    items = load_negbench_mcq(shared_data / MCQ)
    assert len(items) == 5914
    assert collections.Counter(item.template for item in items) == {"positive": 2032, "hybrid": 2012, "negative": 1870}
    assert all(item.correct == 0 and len(item.captions) == 4 for item in items)
    with_images = load_negbench_mcq(shared_data / MCQ, images, strict=False)
    assert len(with_images) == 251 and len({item.image for item in with_images}) == 141
    assert with_images.report.skip_reasons() == {"image not found": 5914 - 251}
    with pytest.raises(DataError, match="row 5: image not found"):
        load_negbench_mcq(shared_data / MCQ, images)
    leftover = items[5528]
    assert leftover.captions[3] == "??  (To be rephrased)"
    assert leftover.meta["artifacts"] == ["caption 3: placeholder '??'"]
    flagged_rows = {row for row, _ in items.report.flagged}
    assert len(flagged_rows) == 153 and 5528 in flagged_rows and 0 not in flagged_rows
    skipped = load_negbench_mcq(shared_data / MCQ, artifacts="skip")
    assert len(skipped) == 5914 - 153 and skipped.report.skip_reasons() == {"generation artifact": 153}

    negated = load_negbench_retrieval(shared_data / NEG_RETRIEVAL)
    plain = load_negbench_retrieval(shared_data / RETRIEVAL)
    assert len(negated) == len(plain) == 5000
    assert collections.Counter(len(item.captions) for item in plain) == {5: 4987, 6: 12, 7: 1}
    assert [item.positive_objects for item in negated] == [item.positive_objects for item in plain]
    with_images = load_negbench_retrieval(shared_data / NEG_RETRIEVAL, images, strict=False)
    assert len(with_images) == 159 and len({item.image for item in with_images}) == 159
    assert with_images.report.skip_reasons() == {"image not found": 4841}
    lenient = load_negbench_retrieval(shared_data / NEG_RETRIEVAL, strict=False, context_length=77)
    assert len(lenient) == 4998
    assert [row for row, _ in lenient.report.skipped] == [925, 3859]
    assert "142 tokens" in lenient.report.skipped[0][1]

    pairs = load_sugarcrepe(shared_data / "sugarcrepe")
    assert len(pairs) == 7511
    assert collections.Counter(pair.fold for pair in pairs) == {
        "add_att": 692, "add_obj": 2062, "replace_att": 788, "replace_obj": 1652,
        "replace_rel": 1406, "swap_att": 666, "swap_obj": 245}
    with_images = load_sugarcrepe(shared_data / "sugarcrepe", images, strict=False)
    assert len(with_images) == 211 and len({pair.image for pair in with_images}) == 47
    assert with_images.report.n_skipped == 7511 - 211
    assert len(load_dataset(shared_data / "sugarcrepe" / "swap_obj.json")) == 245

    valse = load_valse_existence(shared_data / "valse" / "existence.json")
    assert len(valse) == 505 and valse.report.filtered == {"mturk.caption < 2 (VALSE protocol)": 29}
    assert len(load_valse_existence(shared_data / "valse" / "existence.json", min_caption_votes=0)) == 534

    annotations = shared_data / "coco_mini" / "annotations"
    captions = load_coco_captions(annotations / "captions_val2017.json", images)
    assert len(captions) == 395 and len({example.meta["image_id"] for example in captions}) == 79
    assert len(load_coco_instances(annotations / "instances_val2017.json", images)) == 79
    assert len(json.loads((annotations / "instances_val2017.json").read_text())["annotations"]) == 624


def test_token_count_matches_the_clip_tokenizer():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    limit = TokenLimit(77, tokenizer)  # an object with .encode, as open_clip's SimpleTokenizer
    for text in ["a red circle", "This image features a knife, but no car is present."]:
        tokens = tokenizer([text])[0]
        assert limit.count(text) == int((tokens != 0).sum())  # start + BPE tokens + end, no padding
    padded = TokenLimit(77, lambda text: np.zeros((1, 77), dtype=np.int64))
    with pytest.raises(TypeError, match="without padding"):
        padded.count("a red circle")


# ---------------------------------------------------------------------------------------------
# CC-Neg: the released .pt layout and the same fields as CSV / JSONL, on a tiny file


def write_tiny_ccneg(folder: Path, n: int = 10) -> tuple[Path, Path]:
    """A CC-Neg-shaped .pt with n rows; images under folder/images with the authors' path prefix."""
    import torch
    from PIL import Image

    images = folder / "images" / "cc3m_subset_images_extracted_final"
    images.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(images / f"img{i}.jpg")
    cues = ["no", "not", "without"]
    data = {
        "image_paths": [f"/workspace/datasets/cc3m/cc3m_subset_images_extracted_final/img{i}.jpg" for i in range(n)],
        "annotations": [{"json": {"caption": f"a dog {i} on a couch"},
                         "sop_data": {"negative-prompt": f"a dog {i} {cues[i % 3]} on a couch"}} for i in range(n)],
        "num_ops": {1: [i for i in range(n) if i % 2 == 0], 2: [i for i in range(n) if i % 2 == 1]},
    }
    path = folder / "ccneg_preprocessed.pt"
    torch.save(data, path)
    return path, folder / "images"


def test_ccneg_split_rule_on_a_tiny_pt_file(tmp_path):
    path, root = write_tiny_ccneg(tmp_path)
    assert list(split_rows(10, "eval", eval_size=4)) == [6, 7, 8, 9]
    assert list(split_rows(10, "train", eval_size=4)) == [0, 1, 2, 3, 4, 5]
    # the default rule: the authors' last 40,000 rows of the released file, a fifth (rounded up) of a smaller
    # one, so that a small file has training rows too
    assert [example.row for example in load_ccneg(path)] == [8, 9]
    assert [example.row for example in load_ccneg(path, split="train")] == list(range(8))
    assert len(split_rows(228_246, "eval")) == 40_000 and split_rows(228_246, "train") == range(188_246)
    assert len(split_rows(199_999, "eval")) == 40_000 and len(split_rows(4, "eval")) == 1

    evaluation = load_ccneg(path, root, split="eval", eval_size=4)
    training = load_ccneg(path, root, split="train", eval_size=4)
    assert [example.row for example in evaluation] == [6, 7, 8, 9]
    assert [example.row for example in training] == [0, 1, 2, 3, 4, 5]
    example = evaluation[1]  # row 7
    assert example.caption == "a dog 7 on a couch" and example.presence_negated == "a dog 7 not on a couch"
    assert example.cue == "not" and example.k == 2
    assert Path(example.image) == root / "cc3m_subset_images_extracted_final" / "img7.jpg"
    assert example.absence_negated is None and example.distractor_image is None and example.subject is None
    assert guess_kind(path) == "ccneg"


def test_ccneg_csv_and_jsonl_match_the_pt_file(tmp_path):
    import csv

    path, root = write_tiny_ccneg(tmp_path)
    from_pt = load_ccneg(path, root, split="eval", eval_size=4)
    rows = [{"image_path": example.image, "caption": example.caption, "negative_prompt": example.presence_negated,
             "num_ops": example.k} for example in load_ccneg(path, root, split="all")]
    with open(tmp_path / "ccneg.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "ccneg.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for table in ("ccneg.csv", "ccneg.jsonl"):
        loaded = load_ccneg(tmp_path / table, root, split="eval", eval_size=4)
        assert [(e.row, e.caption, e.presence_negated, e.k, e.cue, e.image) for e in loaded] == \
               [(e.row, e.caption, e.presence_negated, e.k, e.cue, e.image) for e in from_pt]


def test_ccneg_bad_pt_files(tmp_path):
    import torch

    torch.save({"image_paths": ["a.jpg"]}, tmp_path / "no_annotations.pt")
    with pytest.raises(DataError, match=r"no_annotations.pt: missing key\(s\) \['annotations'\]"):
        load_ccneg(tmp_path / "no_annotations.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(DataError, match="garbage.pt: torch.load cannot read it"):
        load_ccneg(tmp_path / "garbage.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DataError, match="empty.pt: file is empty"):
        load_ccneg(tmp_path / "empty.pt")
    torch.save({"image_paths": ["a.jpg", "b.jpg"],
                "annotations": [{"json": {"caption": "a cat"}, "sop_data": {"negative-prompt": "no cat"}},
                                {"json": {"caption": "a dog"}, "sop_data": {}}]}, tmp_path / "bad_row.pt")
    with pytest.raises(DataError, match=r"bad_row.pt, row 1: missing field 'negative-prompt'"):
        load_ccneg(tmp_path / "bad_row.pt")
    lenient = load_ccneg(tmp_path / "bad_row.pt", strict=False, split="all")
    assert [e.caption for e in lenient] == ["a cat"] and lenient.report.skipped[0][0] == 1


# ---------------------------------------------------------------------------------------------
# bad input: clear errors in strict mode, counted skips in lenient mode


def mcq_row(image: str = "img.jpg", caption: str = "a cat", template: str = "negative") -> str:
    return f"{image},0,{caption},b,c,d,{template}\n"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "img.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def test_empty_files(tmp_path):
    for name, reader in [("empty.csv", load_negbench_mcq), ("empty.json", load_sugarcrepe),
                         ("empty.jsonl", load_ccneg), ("blank.csv", load_negbench_retrieval)]:
        (tmp_path / name).write_text("" if name != "blank.csv" else "\n  \n")
        with pytest.raises(DataError, match=f"{name}: file is empty"):
            reader(tmp_path / name, strict=False)  # nothing to skip: even lenient mode says so


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        load_negbench_mcq(tmp_path / "nope.csv")
    path = tmp_path / "mcq.csv"
    path.write_text("image_path,correct_answer,caption_0,caption_1,caption_2,caption_3\n" + "a.jpg,0,a,b,c,d\n")
    with pytest.raises(DataError, match=r"mcq.csv: missing column\(s\) \['correct_answer_template'\]"):
        load_negbench_mcq(path, strict=False)


def test_malformed_csv_rows(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_text(MCQ_HEADER + mcq_row() + "img.jpg,0,a,b,c,d,negative,EXTRA\n" + mcq_row(template="sideways")
                    + "img.jpg,zero,a,b,c,d,negative\n" + mcq_row(caption="the last good one"))
    with pytest.raises(DataError) as info:
        load_negbench_mcq(path)
    assert str(info.value) == f"{path}, row 1: malformed row (line 3): expected 7 fields, found 8"
    assert info.value.__suppress_context__  # no chained traceback from the parser

    lenient = load_negbench_mcq(path, strict=False)
    assert [item.row for item in lenient] == [0, 4]
    assert lenient[1].captions[0] == "the last good one"
    reasons = dict(lenient.report.skipped)
    assert "expected 7 fields, found 8" in reasons[1]
    assert "'sideways' is not one of" in reasons[2]
    assert "should be an integer, found 'zero'" in reasons[3]
    assert "loaded 2, skipped 3" in lenient.report.summary()


def test_unclosed_quote_is_reported_not_swallowed(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_text(MCQ_HEADER + mcq_row() + 'img.jpg,0,"a cat,b,c,d,negative\n' + mcq_row())
    with pytest.raises(DataError, match=r"row 1: malformed row \(line 3\): unexpected end of data \(a quote left open"):
        load_negbench_mcq(path)
    lenient = load_negbench_mcq(path, strict=False)
    assert len(lenient) == 1 and lenient.report.n_skipped == 1


def test_non_utf8_rows_are_named(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_bytes((MCQ_HEADER + mcq_row()).encode() + "img.jpg,0,caf\xe9 au lait,b,c,d,negative\n".encode("latin-1")
                     + mcq_row(caption="fine").encode())
    with pytest.raises(DataError, match=r"mcq.csv, row 1: not valid UTF-8: field 'caption_0' holds undecodable bytes"):
        load_negbench_mcq(path)
    lenient = load_negbench_mcq(path, strict=False)
    assert [item.captions[0] for item in lenient] == ["a cat", "fine"]
    assert lenient.report.skip_reasons() == {"not valid UTF-8": 1}
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes((MCQ_HEADER + mcq_row()).encode("utf-16"))
    with pytest.raises(DataError, match="utf16.csv: the header is not valid UTF-8"):
        load_negbench_mcq(utf16, strict=False)


def test_missing_and_unreadable_images(tmp_path, image_folder):
    path = tmp_path / "mcq.csv"
    path.write_text(MCQ_HEADER + mcq_row("data/coco/img.jpg") + mcq_row("gone.jpg") + mcq_row("broken.jpg")
                    + mcq_row("C:\\coco\\img.jpg"))
    with pytest.raises(DataError, match=r"row 1: image not found: 'gone.jpg' under"):
        load_negbench_mcq(path, image_folder)
    lenient = load_negbench_mcq(path, image_folder, strict=False)
    assert [item.image for item in lenient] == [str(image_folder / "img.jpg")] * 2  # resolved by its tail
    assert lenient.report.skip_reasons() == {"image not found": 1, "image unreadable": 1}
    assert "broken.jpg" in dict(lenient.report.skipped)[2]
    with pytest.raises(DataError, match="broken.jpg.*image unreadable: .*broken.jpg"):
        load_image(image_folder / "broken.jpg", source=str(image_folder / "broken.jpg"))
    with pytest.raises(DataError, match="image root is not a folder"):
        load_negbench_mcq(path, tmp_path / "no_such_folder")


def test_caption_too_long_with_a_given_tokenizer(tmp_path):
    path = tmp_path / "mcq.csv"
    path.write_text(MCQ_HEADER + mcq_row(caption="one two three four five six") + mcq_row())
    with pytest.raises(DataError, match=r"row 0: caption too long: caption_0 has 8 tokens, more than the context of 7"):
        load_negbench_mcq(path, context_length=7, tokenizer=words)
    assert len(load_negbench_mcq(path, context_length=8, tokenizer=words)) == 2  # 6 words + start + end fit


def test_malformed_json_files_and_rows(tmp_path):
    broken = tmp_path / "add_obj.json"
    broken.write_text('{"0": {"filename": "a.jpg", "caption": "a", }')
    with pytest.raises(DataError, match=r"add_obj.json: invalid JSON at line 1, column"):
        load_sugarcrepe(broken)
    listed = tmp_path / "swap_obj.json"
    listed.write_text('[1, 2]')
    with pytest.raises(DataError, match="expected a JSON object of id -> item, found list"):
        load_sugarcrepe(listed)
    rows = tmp_path / "replace_obj.json"
    rows.write_text(json.dumps({"a": {"filename": "x.jpg", "caption": "c", "negative_caption": "n"},
                                "b": {"filename": "x.jpg", "caption": "c"},
                                "c": "not an object",
                                "d": {"filename": "x.jpg", "caption": "", "negative_caption": "n"}}))
    with pytest.raises(DataError, match=r"replace_obj.json, row b: missing field 'negative_caption'"):
        load_sugarcrepe(rows)
    lenient = load_sugarcrepe(rows, strict=False)
    assert [pair.row for pair in lenient] == ["a"]
    assert dict(lenient.report.skipped) == {"b": "missing field 'negative_caption'",
                                            "c": "expected an object, found str",
                                            "d": "empty field 'caption'"}


def test_malformed_jsonl_line_and_python_literal_cells(tmp_path):
    path = tmp_path / "ccneg.jsonl"
    good = {"image_path": "a.jpg", "caption": "a cat", "negative_prompt": "no cat"}
    path.write_text(json.dumps(good) + "\n{broken\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"ccneg.jsonl, row 1: invalid JSON line"):
        load_ccneg(path)
    assert [e.row for e in load_ccneg(path, strict=False, split="all")] == [0, 2]

    retrieval = tmp_path / "retrieval.csv"
    retrieval.write_text('positive_objects,negative_objects,filepath,image_id,captions\n'
                         '"[\'cat\']","[\'dog\']",a.jpg,1,"[\'a cat\']"\n'
                         '"[\'cat\'","[\'dog\']",a.jpg,2,"[\'a cat\']"\n')
    with pytest.raises(DataError, match=r"row 1: field 'positive_objects' is not a Python list literal"):
        load_negbench_retrieval(retrieval)
    # a caption list of empty strings only (a plain empty cell is caught as an empty field): refused, or skipped;
    # an empty caption or object name beside others is left out (NegBench writes "['']" for no objects listed)
    retrieval.write_text('positive_objects,negative_objects,filepath,image_id,captions\n'
                         '"[\'cat\']","[\'dog\']",a.jpg,1,"[\'a cat\']"\n'
                         '"[\'cat\']","[\'dog\']",b.jpg,2,"[\'\']"\n'
                         '"[\'\']","[\'dog\', \' \']",c.jpg,3,"[\'\', \'a cat\']"\n')
    with pytest.raises(DataError, match=r"row 1: field 'captions' holds no caption \(an empty list, or empty strings"):
        load_negbench_retrieval(retrieval)
    lenient = load_negbench_retrieval(retrieval, strict=False)
    assert [item.row for item in lenient] == [0, 2] and list(lenient.report.skipped)[0][0] == 1
    assert (lenient[1].captions, lenient[1].positive_objects, lenient[1].negative_objects) == (["a cat"], [], ["dog"])


def test_coco_rows_that_point_nowhere(tmp_path):
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}],
                                "annotations": [{"image_id": 1, "caption": "a cat"},
                                                {"image_id": 2, "caption": "a dog"}]}))
    with pytest.raises(DataError, match=r"row 1: image_id 2 is not in 'images'"):
        load_coco_captions(path)
    assert len(load_coco_captions(path, strict=False)) == 1
    (tmp_path / "instances_x.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="no list 'categories'"):
        load_coco_instances(tmp_path / "instances_x.json")


# ---------------------------------------------------------------------------------------------
# fidelity to the anchors: commas, every NegBench file by path, NegRefCOCOg, video frames


def test_ccneg_strips_commas_from_the_negated_caption_by_default(tmp_path):
    csv = tmp_path / "ccneg.csv"
    csv.write_text('image_path,caption,negative_prompt\n'
                   'a.jpg,"a dog, a ball and a sofa","a dog, a ball, but no sofa"\n')
    stripped, kept = load_ccneg(csv), load_ccneg(csv, strip_commas=False)
    # the authors: negative_prompt.replace(",", ""), in fine-tuning and in evaluation; the true caption stays
    assert stripped[0].presence_negated == "a dog a ball but no sofa" == "a dog, a ball, but no sofa".replace(",", "")
    assert stripped[0].caption == kept[0].caption == "a dog, a ball and a sofa"
    assert kept[0].presence_negated == "a dog, a ball, but no sofa"
    assert stripped[0].meta["commas_stripped"] is True and kept[0].meta["commas_stripped"] is False


def test_every_negbench_layout_reads_by_path(tmp_path, coco_images):
    image = sorted(coco_images.glob("*.jpg"))[0].name
    # a synthetic-style MCQ file: the right answer is not option 0, the image column is 'filepath'
    mcq = tmp_path / "synthetic_mcq_llama3.1_rephrased.csv"
    mcq.write_text("filepath,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
                   f"imgs/{image},2,a cat,a dog,a dog and no cat,no dog,hybrid\n")
    items = load_negbench_mcq(mcq, coco_images)
    assert items[0].correct == 2 and items[0].template == "hybrid" and Path(items[0].image).name == image
    assert guess_kind(mcq) == "negbench_mcq"
    # an MSR-VTT-style MCQ row names a video: a frame saved under the video's name stands for it
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "video7010.jpg").write_bytes((coco_images / image).read_bytes())
    video = tmp_path / "msr_vtt_mcq_rephrased_llama.csv"
    video.write_text(MCQ_HEADER + "data/videos/video7010.mp4,0,a man cooking,a man not cooking,no man,a dog,positive\n")
    assert Path(load_negbench_mcq(video, frames)[0].image) == frames / "video7010.jpg"
    # a retrieval file with only an image column and captions (one caption per cell, no object lists)
    retrieval = tmp_path / "msr_vtt_retrieval.csv"
    retrieval.write_text("image_path,captions\n"
                         f"{image},a man is cooking\n"
                         f"{image},\"['a man is cooking', 'someone cooks but no one eats']\"\n")
    rows = load_negbench_retrieval(retrieval, coco_images)
    assert [row.captions for row in rows] == [
        ["a man is cooking"],
        ["a man is cooking", "someone cooks but no one eats"],
    ]
    assert rows[0].positive_objects == [] and rows[0].image_id is None
    assert guess_kind(retrieval) == "negbench_retrieval"


def test_negrefcocog_loader_reads_the_released_layout_and_names_bad_entries(tmp_path, coco_images):
    from probing.data import load_negrefcocog

    # laid out as parkquasar/NegationCLIP NegRefCOCOg/NegRefCOCOg.json: a list of
    # {"image", "phrase", "ref_bbox": [x, y, w, h], "bbox_list": [[x, y, w, h], ...]}
    image = sorted(coco_images.glob("*.jpg"))[0].name
    good = {"image": image, "phrase": "a pizza with mushrooms and no greens", "ref_bbox": [298.84, 0, 341.16, 479],
            "bbox_list": [[0, 0, 341.22, 479], [298.84, 0, 341.16, 479]]}
    path = tmp_path / "NegRefCOCOg.json"
    path.write_text(json.dumps([good, {**good, "ref_bbox": [1, 2, 3, 4]}, {**good, "bbox_list": [good["ref_bbox"]]},
                                {**good, "bbox_list": [[0, 0, 0, 5], good["ref_bbox"]]},
                                {**good, "image": "COCO_train2014_000000000001.jpg"}]))
    assert guess_kind(path) == "negrefcocog"
    items = load_negrefcocog(path, coco_images, strict=False)
    assert len(items) == 1 and items[0].correct == 1 and items[0].boxes[1] == [298.84, 0.0, 341.16, 479.0]
    reasons = dict(items.report.skipped)
    assert "not one of bbox_list" in reasons[1] and "at least two" in reasons[2] and "no area" in reasons[3]
    assert "image not found" in reasons[4]
    with pytest.raises(DataError, match="row 1: ref_bbox"):
        load_negrefcocog(path, coco_images)
    (tmp_path / "dict.json").write_text(json.dumps({"a": good}))
    with pytest.raises(DataError, match="JSON list"):
        load_negrefcocog(tmp_path / "dict.json")


def test_a_bad_caption_beside_the_instances_file_is_an_error_or_counted(tmp_path, test_data):
    """COCO captions read beside their instances file (the rule-based generator's input): a caption that is not
    text is a DataError naming the captions file and row, or (lenient) skipped and counted in the report."""
    from probing.data.negations import load_negation_examples

    source = test_data / "coco_mini" / "annotations"
    shutil.copy(source / "instances_val2017.json", tmp_path / "instances_val2017.json")
    captions = json.loads((source / "captions_val2017.json").read_text())
    captions["annotations"][3]["caption"] = 7
    (tmp_path / "captions_val2017.json").write_text(json.dumps(captions))
    with pytest.raises(DataError, match=r"captions_val2017.json, row 3: .*caption"):
        load_negation_examples(tmp_path / "captions_val2017.json")
    lenient = load_negation_examples(tmp_path / "captions_val2017.json", strict=False)
    assert [row for row, _ in lenient.report.skipped] == [3]
    assert lenient.report.skipped[0][1].startswith("captions_val2017.json: ")
