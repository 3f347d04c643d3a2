"""probe-layers on every benchmark file the evaluator reads (probing.data.benchmarks): labels read by hand from the
real rows, held-out splits disjoint by image, a benchmark mix counted per file, missing images skipped and counted,
and "nothing usable" as a one-line error. Real files: the vendored subsets (tests/data); the full files only through
the skipping `shared_data` fixture."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import probe_layers as cli
from probing.data import load_negbench_mcq
from probing.data.benchmarks import read_benchmark, wording
from probing.measure.tasks import HELDOUT_SPLITS, IN_DISTRIBUTION, heldout_task
from tests.conftest import tiny_config

MCQ = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"
VALSE = "valse/existence.json"
ROOT = "coco_mini/val2017"
QUICK = ["--null-models", "2", "--probe-seeds", "0", "--sensitivity-captions", "40", "--rule", "topk", "--k", "1",
         "--threads", "1", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny-bench.json"
    path.write_text(json.dumps(tiny_config(layers=2, context_length=77)))
    return path


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("probe-layers: error:")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


# --- labels, read by hand ---------------------------------------------------------------------------------------

def test_mcq_rows_give_the_labels_read_by_hand(test_data):
    path = test_data / MCQ
    rows = csv_rows(path)
    assert [rows[i]["correct_answer_template"] for i in (0, 1, 4)] == ["hybrid", "negative", "positive"]
    # row 0: "This image features a knife, but no car is present." (correct, hybrid) / "A car is present in this
    # image, but there is no knife." / "This image features a car" / "This image does not feature a knife."
    # row 1: "A chair is not present in this image." (correct, negative) / "This image shows a chair, but no spoon
    # is present." / "A chair is present in this image." / "A spoon is not included in this image."
    # row 4: "A sink and a spoon are included in this image." (correct, positive) / "A car is present in this image,
    # but a sink is not." / "This image features a car." / "A sink is not present in this image."
    labels = {0: [1, 1, 0, 1], 1: [1, 1, 0, 1], 4: [0, 1, 0, 1]}
    cues = {0: ["no", "no", None, "not"], 1: ["not", "no", None, "not"], 4: [None, "not", None, "not"]}
    benchmark = read_benchmark(path)
    for row in labels:
        captions = [c for c in benchmark.captions if c.row == row]
        assert [c.text for c in captions] == [rows[row][f"caption_{k}"] for k in range(4)]
        assert [c.label for c in captions] == labels[row] and [c.cue for c in captions] == cues[row]
        assert {c.image for c in captions} == {"000000397133.jpg"} == {Path(rows[row]["image_path"]).name}
    # row 5's wrong hybrid option negates without a cue word: a lexical negation, a held-out cue
    (lacks,) = [c for c in benchmark.captions if c.row == 5 and c.text == rows[5]["caption_1"]]
    assert rows[5]["caption_1"] == "This image shows a bottle but lacks an oven."
    assert (lacks.label, lacks.cue) == (1, "lacks")
    # scope: row 0's hybrid options swap which object is negated; label 1 when the negated name sorts first
    assert [(c.text, c.label, c.objects) for c in benchmark.scope if c.row == 0] == [
        (rows[0]["caption_0"], 1, ("car", "knife")), (rows[0]["caption_1"], 0, ("knife", "car"))]
    (pair,) = [p for p in benchmark.scope_pairs if p["row"] == 0]
    assert (pair["true"], pair["false"], pair["negated"], pair["subjects"]) == (
        rows[0]["caption_0"], rows[0]["caption_1"], "car", ("knife",))
    # the rows as NegationExamples: the wrong negated option negates an object that is there (presence), a true
    # negated answer one that is not (absence); only a positive row has a true affirmative caption
    examples = {e.row: e for e in benchmark.examples}
    assert (examples[0].caption, examples[0].presence_negated, examples[0].absence_negated) == (
        None, rows[0]["caption_3"], rows[0]["caption_0"])
    assert (examples[0].negated_object, examples[0].absent_object) == ("knife", "car")
    assert (examples[1].presence_negated, examples[1].absence_negated, examples[1].absent_object) == (
        rows[1]["caption_3"], rows[1]["caption_0"], "chair")
    assert (examples[4].caption, examples[4].presence_negated, examples[4].negated_object) == (
        rows[4]["caption_0"], rows[4]["caption_3"], "sink")


def test_mcq_wording_agrees_with_negbench_layout(test_data):
    """In NegBench's COCO file (correct answer first) the wrong options are hybrid, positive, negative in this order;
    the wording classifier, which does not know the order, reads every clean vendored row that way."""
    items = load_negbench_mcq(test_data / MCQ, strict=False)
    clean = [item for item in items if not item.meta.get("artifacts")]
    assert len(clean) == len(items) - len(items.report.flagged) > 60
    read = [[wording(text).type for text in item.captions[1:]] for item in clean]
    assert read == [["hybrid", "positive", "negative"]] * len(clean)
    assert [wording(item.captions[0]).type for item in clean] == [item.template for item in clean]


def test_mcq_wording_on_the_full_file(shared_data):
    items = load_negbench_mcq(shared_data / MCQ, strict=False)
    clean = [item for item in items if not item.meta.get("artifacts")]
    wrong = sum(wording(text).type != kind for item in clean
                for text, kind in zip(item.captions[1:], ("hybrid", "positive", "negative")))
    assert len(clean) == 5914 - 153 and wrong <= 40  # 0.2 %: "it is unoccupied", "empty of people", "?"


def test_valse_items_give_the_labels_read_by_hand(test_data):
    raw = json.loads((test_data / VALSE).read_text())
    kept = [key for key, item in raw.items() if item["mturk"]["caption"] >= 2]
    benchmark = read_benchmark(test_data / VALSE)
    assert benchmark.rows == len(kept) == 39 and len(benchmark.foils) == 39
    # existence_visual7w_2371044: caption "There are no people in the picture." (true), foil "There are people
    # in the picture."; existence_visual7w_150304 has mturk.caption 0 and is left out (VALSE's protocol)
    captions = [(c.text, c.label, c.cue, c.objects, c.template) for c in benchmark.captions
                if c.row == "existence_visual7w_2371044"]
    assert captions == [("There are people in the picture.", 0, None, ("people",), "there are {x} in the picture"),
                        ("There are no people in the picture.", 1, "no", ("people",), "there are {x} in the picture")]
    assert raw["existence_visual7w_2371044"]["foil"] == captions[0][0]
    assert not [c for c in benchmark.captions if c.row == "existence_visual7w_150304"]
    # every vendored caption is the negated sentence: no true affirmative caption, so no sensitivity edit
    assert not benchmark.examples and "sensitivity" in benchmark.refused


def test_valse_full_file_gives_edits_where_the_affirmative_is_true(shared_data):
    raw = json.loads((shared_data / VALSE).read_text())
    benchmark = read_benchmark(shared_data / VALSE, limit=None)
    true_affirmative = [k for k, v in raw.items() if v["mturk"]["caption"] >= 2 and " no " not in f" {v['caption']} "]
    assert {e.row for e in benchmark.examples} == set(true_affirmative) and len(true_affirmative) > 200
    (first,) = [e for e in benchmark.examples if e.row == "existence_visual7w_1"]
    assert (first.caption, first.presence_negated, first.negated_object) == (
        "There are cars parked.", "There are no cars parked.", "cars")


def test_sugarcrepe_is_refused_with_the_reason(test_data, tmp_path, capsys):
    folder = test_data / "sugarcrepe"
    n_items = sum(len(json.loads(path.read_text())) for path in folder.glob("*.json"))
    benchmark = read_benchmark(folder)
    assert benchmark.rows == n_items and not benchmark.usable
    assert set(benchmark.refused) == {"probes", "sensitivity", "gradnorms", "causal", "patching"}
    assert cli.main(["--model", "embedded:small", "--data", str(folder), *QUICK, "--out", str(tmp_path / "s")]) == 2
    line = error_line(capsys)
    assert "nothing usable" in line and "none of them negates" in line and "sugarcrepe" in line


# --- held-out splits --------------------------------------------------------------------------------------------

def check_splits(task, captions, train_cues=("no", "not")):
    images = np.array(task.groups["image"])
    train = set(images[task.train])
    assert task.tests and len(np.unique(task.labels[task.train])) == 2
    for split, index in task.tests.items():
        assert train.isdisjoint(images[index]), split  # no image on both sides
        assert len(np.unique(task.labels[index])) == 2
    held_objects = set(task.meta["heldout_objects"])
    assert not any(set(captions[i].objects) & held_objects for i in task.train)
    assert all(captions[i].cue is None or captions[i].cue in train_cues for i in task.train)
    if "heldout_object" in task.tests:
        assert all(set(captions[i].objects) & held_objects for i in task.tests["heldout_object"])
    if "heldout_cue" in task.tests:
        cues = {captions[i].cue for i in task.tests["heldout_cue"]} - {None}
        assert cues and not cues & set(train_cues)
    for split in (IN_DISTRIBUTION, "heldout_template"):
        if split in task.tests:
            assert not any(set(captions[i].objects) & held_objects for i in task.tests[split])


def test_heldout_splits_are_disjoint_by_image(test_data):
    mcq = read_benchmark(test_data / MCQ)
    valse = read_benchmark(test_data / VALSE)
    coco = read_benchmark(test_data / "coco_mini/annotations/instances_val2017.json")
    for captions in (mcq.captions, mcq.scope, mcq.captions + valse.captions + coco.captions):
        for seed in (0, 1):
            task = heldout_task("negation", captions, seed=seed)
            check_splits(task, captions)
            assert set(task.tests) <= {IN_DISTRIBUTION, *HELDOUT_SPLITS}


def test_heldout_splits_on_the_full_mcq_file(shared_data):
    benchmark = read_benchmark(shared_data / MCQ, limit=4000)  # --limit's default: a seeded draw of rows
    assert 3800 < benchmark.rows <= 4000  # less the drawn rows with leftover generation text
    for name, captions in (("negation", benchmark.captions), ("scope", benchmark.scope)):
        task = heldout_task(name, captions, seed=0)
        check_splits(task, captions)
        assert set(task.tests) == {IN_DISTRIBUTION, *HELDOUT_SPLITS}
        assert len(task.train) > 1000 and min(len(index) for index in task.tests.values()) >= 50


# --- the command ------------------------------------------------------------------------------------------------

def test_a_benchmark_mix_counts_each_file(small_embedded, test_data, tmp_path, capsys):
    mcq, valse, sugar = test_data / MCQ, test_data / VALSE, test_data / "sugarcrepe/add_obj.json"
    out = tmp_path / "mix"
    argv = ["--model", "embedded:small", "--data", str(mcq), "--data", str(valse), "--data", str(sugar),
            "--measurements", "probes,sensitivity", *QUICK, "--out", str(out)]
    assert cli.main(argv) in (0, 1)
    meta = json.loads((out / "measurements.json").read_text())["meta"]
    files = meta["data_files"]
    # rows read, counted independently: the MCQ rows the loader does not flag (and none is a bare "?"), the VALSE
    # items with mturk.caption >= 2, every SugarCREPE item
    flagged = {row for row, _ in load_negbench_mcq(mcq, strict=False).report.flagged}
    mcq_rows = [i for i, row in enumerate(csv_rows(mcq)) if i not in flagged
                and all(re.search(r"[A-Za-z]{2}", row[f"caption_{k}"]) for k in range(4))]
    valse_items = [k for k, v in json.loads(valse.read_text()).items() if v["mturk"]["caption"] >= 2]
    assert {Path(f).name: info["rows"] for f, info in files.items()} == {
        mcq.name: len(mcq_rows), valse.name: len(valse_items), sugar.name: len(json.loads(sugar.read_text()))}
    assert files[str(sugar)]["kind"] == "sugarcrepe"
    assert "none of them negates" in files[str(sugar)]["refused"]["probes"]
    probes = meta["data"]["probes"]["files"]
    assert set(probes["negation"]) == {str(mcq), str(valse)} and set(probes["scope"]) == {str(mcq)}
    assert all(0 < n["rows"] <= files[f]["rows"] for f, n in probes["negation"].items())
    task = meta["tasks"]["negation"]
    used = sum(n["captions"] for n in probes["negation"].values())  # each caption once, in training or a test split
    assert task["n_train"] < used <= task["n_train"] + sum(task["tests"].values())
    assert meta["data"]["sensitivity"]["files"] == {str(mcq): meta["data"]["sensitivity"]["n_captions"]}
    md = (out / "report.md").read_text()
    table = md[md.index("Rows of each file each measurement used"):]
    for name in (mcq.name, valse.name, sugar.name):
        assert f"| {name} |" in table
    assert f"negation {probes['negation'][str(valse)]['rows']} rows" in table
    provenance = json.loads((out / "provenance.json").read_text())
    assert [Path(d["path"]).name for d in provenance["data"].values()] == [mcq.name, valse.name, sugar.name]


def test_missing_images_stop_or_are_skipped_and_counted(tiny, test_data, tmp_path, capsys):
    mcq, root = test_data / MCQ, test_data / ROOT
    base = ["--model", str(tiny), "--data", str(mcq), "--image-root", str(root), "--measurements",
            "probes,causal,patching", "--patching-pairs", "4", "--causal-items", "100", *QUICK]
    assert cli.main(base + ["--out", str(tmp_path / "strict")]) == 2
    line = error_line(capsys)
    assert mcq.name in line and ", row " in line and "image not found" in line and "--skip-missing" in line

    out = tmp_path / "skip"
    assert cli.main(base + ["--skip-missing", "--out", str(out)]) in (0, 1)
    meta = json.loads((out / "measurements.json").read_text())["meta"]
    images = set(os.listdir(root))
    benchmark = read_benchmark(mcq)
    used_rows = {c.row for c in benchmark.captions}
    missing = {i for i, row in enumerate(csv_rows(mcq)) if i in used_rows
               and Path(row["image_path"]).name not in images}
    info = meta["data_files"][str(mcq)]
    assert info["images_skipped"] == len(missing) > 0
    assert meta["data"]["causal"]["files"][str(mcq)] == len(used_rows) - len(missing)
    causal = {r["metric"] for r in json.loads((out / "measurements.json").read_text())["causal"]}
    assert {"mcq_accuracy", "mcq_accuracy/template=negative", "mcq_absence_accuracy", "ccneg_accuracy"} <= causal
    # patching ran on the file's own pairs: its negated options and its hybrid scope pairs
    localisation = json.loads((out / "localisation" / "localisation.json").read_text())
    assert set(localisation["meta"]["files"]) == {"negation", "scope"}
    pairs = (out / "localisation" / "pairs.csv").read_text()
    assert "negation," in pairs and "scope," in pairs
    md = (out / "report.md").read_text()
    assert f"{len(missing)} rows in the image measurements (image not found)" in md


def test_nothing_usable_is_a_one_line_error(tiny, test_data, tmp_path, capsys):
    empty = tmp_path / "no-images"
    empty.mkdir()
    argv = ["--model", str(tiny), "--data", str(test_data / MCQ), "--image-root", str(empty), "--skip-missing",
            "--measurements", "gradnorms", *QUICK, "--out", str(tmp_path / "g")]
    assert cli.main(argv) == 2
    line = error_line(capsys)
    assert "nothing usable for gradnorms" in line and "image" in line
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--data", str(test_data / MCQ), "--skip-missing", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "give --image-root" in error_line(capsys)


def test_a_checkpoint_file_without_a_world_probes_an_mcq_file(write_config, test_data, tmp_path, capsys):
    import torch

    from probing.clip.loading import load_clip, save_clip_checkpoint

    config = write_config("tiny-mcq", layers=2, context_length=77)
    torch.manual_seed(5)
    model, _, _ = load_clip(config)
    checkpoint = save_clip_checkpoint(model, tmp_path / "tiny.safetensors", model_name="tiny-mcq")
    out = tmp_path / "ckpt"
    assert cli.main(["--model", str(config), "--pretrained", str(checkpoint), "--data", str(test_data / MCQ),
                     "--measurements", "probes,sensitivity", *QUICK, "--out", str(out)]) in (0, 1)
    meta = json.loads((out / "measurements.json").read_text())["meta"]
    assert set(meta["tasks"]) == {"negation", "scope"} and meta["data"]["sensitivity"]["kind"] == "real"
    assert "synthetic" not in json.dumps(meta["data"])


def test_resolving_images_keeps_every_row_whose_image_is_there(test_data):
    from probing.data.benchmarks import resolve_images

    root = test_data / ROOT
    images = set(os.listdir(root))
    retrieval = read_benchmark(test_data / "negbench/COCO_val_negated_retrieval_llama3.1_rephrased_affneg_true.csv")
    with pytest.raises(Exception, match="image not found.*--skip-missing"):
        resolve_images(retrieval, root, strict=True)
    resolved = resolve_images(retrieval, root, strict=False)
    there = [e for e in retrieval.examples if Path(e.image).name in images]
    assert len(resolved.examples) == len(there) > 0 and resolved.captions == retrieval.captions  # probes keep all
    assert resolved.images_skipped == len({e.row for e in retrieval.examples} - {e.row for e in there})
    for before, after in zip(there, resolved.examples):
        assert Path(after.image) == root / Path(before.image).name
        # a distractor image not under the root is dropped from the example, which stays
        expected = None if before.distractor_image is None or Path(before.distractor_image).name not in images \
            else root / Path(before.distractor_image).name
        assert (None if after.distractor_image is None else Path(after.distractor_image)) == expected
    kept = sum(e.distractor_image is not None for e in resolved.examples)
    assert 0 < kept < sum(e.distractor_image is not None for e in there)  # both cases happen on these rows


def test_patching_pairs_of_a_mix_take_every_file_in_turn(test_data):
    from analysis.pipeline import _interleave
    from probing.measure.roles import example_pairs

    mcq = read_benchmark(test_data / MCQ)
    retrieval = read_benchmark(test_data / "negbench/COCO_val_retrieval.csv")
    pairs = _interleave(example_pairs(mcq.examples + retrieval.examples))
    sources = [Path(p.meta["source"]).name for p in pairs]
    n_mcq = sum(1 for e in mcq.examples if e.caption and e.presence_negated)
    assert len(pairs) == n_mcq + len(retrieval.examples) and n_mcq < len(retrieval.examples)
    assert sources[:2 * n_mcq:2] == [Path(MCQ).name] * n_mcq  # alternating while both files have pairs
    assert sources[1:2 * n_mcq:2] == ["COCO_val_retrieval.csv"] * n_mcq


def test_a_malformed_row_is_skipped_by_its_number(tiny, test_data, tmp_path, capsys):
    """probe-layers reads benchmark files leniently: a row it cannot read is left out, and its note names the row
    (counted from 0 among the data rows, as the errors of the strict commands do) and the problem."""
    rows = csv_rows(test_data / "negbench/COCO_val_retrieval.csv")
    broken = [2, 6]
    for i in broken:
        rows[i]["positive_objects"] = "['unclosed"
    path = tmp_path / "broken_retrieval.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "probe"
    argv = ["--model", str(tiny), "--data", str(path), "--measurements", "probes", *QUICK, "--out", str(out)]
    assert cli.main(argv) in (0, 1)
    err = capsys.readouterr().err
    line = next(n for n in err.splitlines() if "skipped" in n)
    assert line == (f"probe-layers: note: {path}: skipped 2 rows (field 'positive_objects' is not a "
                    f"Python list literal: rows {broken[0]}, {broken[1]})")


def test_the_skipped_note_names_rows_by_problem():
    """LoadReport.skipped_note: the first rows of each of the three most common problems (rows without a number
    counted, not named), the rest of the rows counted by problem."""
    from probing.data.records import LoadReport

    skipped = ([(None, "no image: a")] * 5 + [(7, "no image: b")] + [(i, "bad list: c") for i in range(7)]
               + [("fold/3", "third: d"), (2, "fourth: e"), (5, "fifth: f")])
    assert LoadReport("f.csv", skipped=skipped).skipped_note() == (
        "f.csv: skipped 16 rows (bad list: rows 0, 1, 2, 3, 4 and 2 more; no image: row 7 and 5 more; third: row "
        "fold/3; 2 more row(s) for 2 other problem(s))")
    assert LoadReport("g.csv", skipped=[(None, "broken: x")]).skipped_note() == "g.csv: skipped 1 row (broken x1)"
