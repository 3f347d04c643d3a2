"""Malformed and hostile inputs to every command: each ends with exit status 2, one error line that names
the problem (and the file, where there is one), and no traceback.

The inputs are made here from small fixtures (a tiny model config, a two-step fine-tuning run, files
written wrong on purpose, damaged copies of checkpoints and study folders). Every case runs the command
in this process (`main(argv)`): an exception escaping it fails the case with its traceback, so "no
traceback" is checked directly; a few cases also run the installed entry points as processes.
"""
from __future__ import annotations

import contextlib
import io as _io
import json
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from analysis.cli import ablate_layers, build_embedded, evaluate_negation, finetune_layers, make_negations, probe_layers
from analysis.cli.execution import MESSAGE_LIMIT
from tests.conftest import TEST_DATA, tiny_config

COMMANDS = {"probe-layers": probe_layers.main, "finetune-layers": finetune_layers.main,
            "evaluate-negation": evaluate_negation.main, "ablate-layers": ablate_layers.main,
            "build-embedded": build_embedded.main, "make-negations": make_negations.main}
IMAGES = TEST_DATA / "coco_mini" / "val2017"
IMAGE = "000000397133.jpg"  # one of the vendored COCO images (tests/data)


# --- the fixtures: small files, written right and wrong ----------------------------------------------

def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


MCQ_HEADER = ["image_path", "correct_answer", "caption_0", "caption_1", "caption_2", "caption_3",
              "correct_answer_template"]
RETRIEVAL_HEADER = ["positive_objects", "negative_objects", "filepath", "image_id", "captions"]


# model configs: the tiny config with one thing wrong (fixture "model_<name>")
MODEL_CONFIG_EDITS: dict[str, Callable[[dict], None]] = {
    "zero_width": lambda c: c["text_cfg"].update(width=0),
    "negative_layers": lambda c: c["text_cfg"].update(layers=-3),
    "heads": lambda c: c["text_cfg"].update(heads=3),
    "zero_heads": lambda c: c["text_cfg"].update(heads=0),
    "vision_heads": lambda c: c["vision_cfg"].update(head_width=24),
    "text_size_string": lambda c: c["text_cfg"].update(layers="2"),
    "fractional": lambda c: c["vision_cfg"].update(width=32.5),
    "embed_bool": lambda c: c.update(embed_dim=True),
    "absurd_width": lambda c: c["text_cfg"].update(width=10**12),
    "absurd_total": lambda c: c["text_cfg"].update(width=60000, heads=1, layers=1000),
    "unknown_key": lambda c: c["text_cfg"].update(widht=64),
    "unknown_top": lambda c: c.update(output_dict=True),
    "text_list": lambda c: c.update(text_cfg=[64]),
    "vocab": lambda c: c["text_cfg"].update(vocab_size=1000),
    "context": lambda c: c["text_cfg"].update(context_length=2),
    "patch": lambda c: c["vision_cfg"].update(patch_size=64),
    "resnet_stages": lambda c: c["vision_cfg"].update(layers=[1, 1, 1]),
    "resnet_small": lambda c: c["vision_cfg"].update(layers=[1, 1, 1, 1], image_size=16),
    "mlp_ratio": lambda c: c["text_cfg"].update(mlp_ratio=float("nan")),
    "flag": lambda c: c.update(quick_gelu="yes"),
    "missing_heads": lambda c: c["text_cfg"].pop("heads"),
    "missing_patch": lambda c: c["vision_cfg"].pop("patch_size"),
}
# Hugging Face config.json files (given as the model: the architecture, random weights) with one thing wrong
HF_CONFIG_EDITS: dict[str, Callable[[dict], None]] = {
    "zero_heads": lambda c: c["text_config"].update(num_attention_heads=0),
    "negative_layers": lambda c: c["vision_config"].update(num_hidden_layers=-1),
    "text_number": lambda c: c.update(text_config=5),
    "projection": lambda c: c.update(projection_dim=0),
    "heads_divide": lambda c: c["vision_config"].update(num_attention_heads=3),
}


def _with_metadata(source: Path, target: Path, **changes: str) -> Path:
    """A copy of a .safetensors checkpoint whose metadata entries are replaced (the tensors untouched)."""
    from safetensors.torch import load_file, save_file

    from probing.clip.loading import checkpoint_metadata

    save_file(load_file(str(source)), str(target), metadata={**checkpoint_metadata(source), **changes})
    return target


def _with_tensors(source: Path, target: Path, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """A copy of a whole .safetensors checkpoint with tensor `name` changed and no recorded SHA-256 (as a
    checkpoint written by another tool would have)."""
    from safetensors.torch import load_file, save_file

    from probing.clip.loading import checkpoint_metadata

    tensors = load_file(str(source))
    tensors[name] = change(tensors[name])
    metadata = checkpoint_metadata(source)
    metadata.pop("state_sha256", None)
    save_file(tensors, str(target), metadata=metadata)
    return target


def _finetune_base(root: Path, config: Path) -> tuple[Path, list[str]]:
    """A finished two-step fine-tuning run (checkpoint at step 2) and the arguments that made it."""
    out = root / "ft-base"
    args = ["--model", str(config), "--data", "synthetic", "--train-examples", "8", "--batch-size", "4", "--steps", "2",
            "--layers", "0", "--resumable", "--ckpt-every", "1", "--warmup-steps", "1", "--lr", "1e-4", "--no-progress",
            "--no-tensorboard", "--threads", "1", "--device", "cpu"]
    with contextlib.redirect_stdout(_io.StringIO()):
        assert finetune_layers.main(args + ["--out", str(out)]) == 0
    return out, args


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, str]:
    """Paths (as text) of every fixture the cases name by {key}."""
    root = tmp_path_factory.mktemp("malformed")
    paths: dict[str, Path] = {}

    def add(name: str, path: Path) -> Path:
        paths[name] = path
        return path

    add("file", root / "a_file.txt").write_text("not a folder\n")
    add("under_file", paths["file"] / "sub")
    add("missing", root / "missing" / "nothing.csv")
    add("out", root / "out")  # does not exist yet: every case that gets past the checks writes nowhere else
    add("tiny", _json(root / "tiny-mal.json", tiny_config(layers=2)))
    add("empty_csv", root / "empty.csv").write_text("")
    add("blank_csv", root / "blank.csv").write_text("\n\n  \n")
    add("binary_csv", root / "binary.csv").write_bytes(b"\xff\xfe\x00\x01image_path,caption\n\xff,\xfe\n")
    add("bad_json", root / "bad.json").write_text('{"a": [1, 2,,]}')
    add("list_json", _json(root / "list.json", [1, 2, 3]))
    add("text_file", root / "notes.txt").write_text("hello\n")
    # open_clip model configs written wrong (issue 28): each must be refused before anything is built
    tiny = tiny_config(layers=2)
    add("model_number", root / "five.json").write_text("5")
    add("model_deep", root / "deep.json").write_text("[" * 100000)  # too deep for Python's JSON reader
    add("plan_deep", root / "plan_deep.json").write_text("[" * 100000)
    # a key written twice: json.loads would keep the last value without a word
    twice = json.dumps(tiny).replace('"width": 64', '"width": 64, "width": 0')
    assert twice.count('"width"') == 3
    add("model_key_twice", root / "model_twice.json").write_text(twice)
    add("plan_key_twice", root / "plan_twice.json").write_text('{"blocks": [0], "blocks": [0, 1]}')
    add("recipe_key_twice", root / "recipe_twice.json").write_text(
        '{"name": "r", "summary": "s", "source": "t", "settings": {"lr": 1e-5, "lr": 1e-3, "layers": "0"}}')
    add("hf_key_twice", root / "hf_twice" / "config.json").parent.mkdir()
    paths["hf_key_twice"].write_text('{"model_type": "clip", "projection_dim": 16, "projection_dim": 32}')
    add("recipe_deep", root / "recipe_deep.json").write_text("[" * 100000)
    add("data_deep", root / "data_deep.json").write_text("[" * 100000)
    add("jsonl_deep", root / "deep.jsonl").write_text("[" * 100000 + "\n")
    add("model_negative", _json(root / "negative.json", {"embed_dim": -1, "vision_cfg": {"layers": -2},
                                                        "text_cfg": {"width": 0}}))
    for name, edit in MODEL_CONFIG_EDITS.items():
        config = json.loads(json.dumps(tiny))
        edit(config)
        add(f"model_{name}", _json(root / f"model_{name}.json", config))
    hf = {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": 16,
          "text_config": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
                          "intermediate_size": 64, "max_position_embeddings": 32},
          "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                            "intermediate_size": 64, "image_size": 32, "patch_size": 8}}
    for name, edit in HF_CONFIG_EDITS.items():
        config = json.loads(json.dumps(hf))
        edit(config)
        add(f"hf_{name}", _json(root / f"hf_{name}" / "config.json", config))
    # CC-Neg in its CSV layout
    add("ccneg_no_negation_column", _csv(root / "ccneg_cols.csv", ["image_path", "caption"], [[IMAGE, "a cat"]]))
    add("ccneg_without_only", _csv(root / "ccneg_without.csv", ["image_path", "caption", "negative_prompt"],
                                   [[f"img{i}.jpg", f"a dog and a cat {i}", f"a dog without a cat {i}"]
                                    for i in range(6)]))
    add("ccneg_header_only", _csv(root / "ccneg_header.csv", ["image_path", "caption", "negative_prompt"], []))
    add("ccneg_num_ops", _csv(root / "ccneg_k.csv", ["image_path", "caption", "negative_prompt", "num_ops"],
                              [[IMAGE, f"a dog and a cat {i}", f"a dog and no cat {i}", "-3" if i == 1 else "2"]
                               for i in range(8)]))
    long = " ".join(["a big red bus"] * 12)
    add("ccneg_long_same", _csv(root / "ccneg_long.csv", ["image_path", "caption", "negative_prompt"],
                                [[IMAGE, f"{long} {i} and a cat", f"{long} {i} and no cat"] for i in range(8)]))
    add("sugarcrepe_empty", _json(root / "sc_empty" / "add_obj.json", {}))
    add("ccneg_one_example", _csv(root / "ccneg_one.csv", ["image_path", "caption", "negative_prompt"],
                                  [[IMAGE, "a dog and a cat", "a dog and no cat"]]))
    add("jsonl_all_broken", root / "broken.jsonl").write_text("{broken\n[1, 2]\n\"text\"\n")
    add("ccneg_pt_garbage", root / "garbage.pt").write_bytes(b"PK\x03\x04 this is no torch file")
    add("ccneg_pt_wrong", root / "wrong.pt")
    torch.save({"image_paths": 5, "annotations": [1]}, paths["ccneg_pt_wrong"])
    # NegBench
    add("mcq_missing_column", _csv(root / "mcq_cols.csv", MCQ_HEADER[:-1], [[IMAGE, "0", "a", "b", "c", "d"]]))
    add("mcq_bad_rows", _csv(root / "mcq_bad.csv", MCQ_HEADER, [[IMAGE, "7", "a", "b", "c", "d", "positive"],
                                                                [IMAGE, "x", "a", "b", "c", "d", "positive"],
                                                                [IMAGE, "0", "a", "b", "c", "d", "sideways"]]))
    add("mcq_no_images", _csv(root / "mcq_noimg.csv", MCQ_HEADER, [[f"nowhere/{i}.jpg", "0", "a cat", "no cat",
                                                                   "a dog", "no dog", "positive"] for i in range(3)]))
    add("mcq_identical", _csv(root / "mcq_same.csv", MCQ_HEADER, [[IMAGE, "0", "a cat on a mat", "a cat on a mat",
                                                                   "a dog", "no dog", "positive"]]))
    add("retrieval_bad_lists", _csv(root / "ret_bad.csv", RETRIEVAL_HEADER,
                                    [["['cat']", "['dog']", IMAGE, "1", "['a cat', 'b'"],
                                     ["['cat']", "['dog']", IMAGE, "1", "[]"]]))
    # SugarCREPE, VALSE, COCO, NegRefCOCOg
    add("sugarcrepe_list", _json(root / "add_obj.json", [{"filename": IMAGE}]))
    add("sugarcrepe_same", _json(root / "sc_same" / "add_obj.json",
                                 {"0": {"filename": IMAGE, "caption": "a cat", "negative_caption": "a cat"},
                                  "1": {"filename": IMAGE, "caption": "a dog", "negative_caption": "a dog"}}))
    long = " ".join(["a big red bus"] * 30)
    add("sugarcrepe_cut", _json(root / "sc_cut" / "add_obj.json",
                                {"0": {"filename": IMAGE, "caption": long + " and a cat",
                                       "negative_caption": long + " and a dog"}}))
    add("sugarcrepe_bad_json", root / "swap_obj.json").write_text("{")
    add("valse_wrong_items", _json(root / "existence.json", {"0": [1, 2], "1": "text", "2": {"mturk": "x"}}))
    add("coco_no_annotations", _json(root / "instances_x.json", {"images": []}))
    add("coco_list_ids", _json(root / "instances_y.json", {"images": [{"id": [1], "file_name": IMAGE}],
                                                          "annotations": [], "categories": []}))
    add("negrefcocog_object", _json(root / "NegRefCOCOg.json", {"phrase": "x"}))
    # layer plans and recipes
    add("plan_bad_json", root / "plan_bad.json").write_text("{blocks: [0]}")
    add("plan_list", _json(root / "plan_list.json", [0, 1]))
    add("plan_huge_block", _json(root / "plan_huge.json", {"blocks": [0, 10**9]}))
    add("plan_inf_weight", root / "plan_inf.json").write_text('{"blocks": [0], "lr_weights": {"0": Infinity}}')
    add("plan_text_blocks", _json(root / "plan_text.json", {"blocks": ["0", "1"]}))
    add("plan_empty", _json(root / "plan_empty.json", {"blocks": []}))
    add("plan_block_99", _json(root / "plan_99.json", {"blocks": [0, 99]}))
    recipe = {"name": "r", "summary": "s", "source": "t"}
    add("recipe_bad_json", root / "recipe_bad.json").write_text('{"name": ')
    add("recipe_negative_lr", _json(root / "recipe_lr.json", {**recipe, "settings": {"lr": -1, "layers": "0"}}))
    add("recipe_inf_lr", _json(root / "recipe_inf.json", {**recipe, "settings": {"lr": "inf", "layers": "0"}}))
    add("recipe_bad_loss", _json(root / "recipe_loss.json", {**recipe, "settings": {"loss": "magic", "layers": "0"}}))
    add("recipe_flag_text", _json(root / "recipe_flag.json", {**recipe, "settings": {"train_embeddings": "yes",
                                                                                     "layers": "0"}}))
    add("recipe_unknown", _json(root / "recipe_unknown.json", {**recipe, "settings": {"learning_rate": 1}}))
    add("recipe_list_settings", _json(root / "recipe_list.json", {**recipe, "settings": [1, 2]}))
    # an image folder with one class only
    add("one_class", root / "one_class")
    (paths["one_class"] / "cat").mkdir(parents=True)
    shutil.copy(IMAGES / IMAGE, paths["one_class"] / "cat" / IMAGE)

    # checkpoints: a real two-step run, then damaged copies of it
    base, base_args = _finetune_base(root, paths["tiny"])
    paths["ft_base"] = base

    def damaged_run(name: str, damage: Callable[[Path], None]) -> Path:
        out = add(name, root / name)
        shutil.copytree(base, out)
        damage(out / "checkpoints")
        return out

    step = "step_0000002"
    damaged_run("ft_latest_garbage", lambda c: (c / "latest.json").write_text("{not json"))
    damaged_run("ft_latest_shape", lambda c: _json(c / "latest.json", {"step": "two", "folder": step}))
    damaged_run("ft_latest_escape", lambda c: _json(c / "latest.json", {"step": 2, "folder": "../../etc"}))
    damaged_run("ft_latest_dangling", lambda c: _json(c / "latest.json", {"step": 9, "folder": "step_0000009"}))
    damaged_run("ft_latest_folder", lambda c: ((c / "latest.json").unlink(), (c / "latest.json").mkdir()))
    damaged_run("ft_state_garbage", lambda c: (c / step / "state.pt").write_bytes(b"\x80\x04 truncated pickle"))
    damaged_run("ft_state_empty", lambda c: (c / step / "state.pt").write_bytes(b""))
    damaged_run("ft_state_keys", lambda c: torch.save({"step": 2}, c / step / "state.pt"))
    damaged_run("ft_state_settings", lambda c: torch.save({**torch.load(c / step / "state.pt", weights_only=True),
                                                           "settings": "{not json"}, c / step / "state.pt"))
    damaged_run("ft_weights_truncated", lambda c: (c / step / "model.safetensors").write_bytes(
        (c / step / "model.safetensors").read_bytes()[:300]))

    def nan_weights(checkpoints: Path) -> None:
        from safetensors.torch import load_file, save_file

        from probing.clip.loading import checkpoint_metadata

        path = checkpoints / step / "model.safetensors"
        tensors = load_file(str(path))
        name = next(key for key in tensors if key.startswith("transformer.resblocks.0") and key.endswith("weight"))
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        metadata = checkpoint_metadata(path)
        metadata.pop("state_sha256", None)  # as a checkpoint written before the weight check would be
        save_file(tensors, str(path), metadata=metadata)

    damaged_run("ft_nan_weights", nan_weights)
    model_file = base / "model.safetensors"
    add("damaged_world", _with_metadata(model_file, root / "damaged_world.safetensors", synthetic_world="{not json"))
    add("damaged_world_shape", _with_metadata(model_file, root / "world_shape.safetensors",
                                              synthetic_world=json.dumps({"config": {"image_size": 32}, "seed": 0})))
    add("damaged_metrics", _with_metadata(model_file, root / "damaged_metrics.safetensors", metrics="[1, 2"))
    add("damaged_metrics_shape", _with_metadata(model_file, root / "metrics_shape.safetensors",
                                                metrics=json.dumps(["not", "a", "table"])))
    add("damaged_digest", _with_metadata(model_file, root / "damaged_digest.safetensors", state_sha256="0" * 64))
    from probing.clip.compact import COMPACT_KEY
    from probing.clip.loading import checkpoint_metadata
    from probing.models.factory import embedded_checkpoint

    shipped = embedded_checkpoint("embedded:small")  # stored compact: its token embedding as changed rows
    record = json.loads(checkpoint_metadata(shipped)[COMPACT_KEY])
    add("compact_huge", _with_metadata(shipped, root / "compact_huge.safetensors",
                                       **{COMPACT_KEY: json.dumps({**record, "shape": [10**12, record["shape"][1]]})}))
    add("nan_model", _with_tensors(model_file, root / "nan_model.safetensors", "positional_embedding",
                                   lambda t: torch.full_like(t, float("nan"))))
    add("int_model", _with_tensors(model_file, root / "int_model.safetensors", "ln_final.weight",
                                   lambda t: torch.ones_like(t, dtype=torch.int64)))

    # ablation study folders, damaged
    add("ab_config_garbage", root / "ab_config_garbage").mkdir()
    (paths["ab_config_garbage"] / "ablation_config.json").write_text("{\"settings\": ")
    add("ab_config_shape", root / "ab_config_shape").mkdir()
    _json(paths["ab_config_shape"] / "ablation_config.json", ["settings"])
    add("ab_runs_broken", root / "ab_runs_broken").mkdir()
    (paths["ab_runs_broken"] / "runs.jsonl").write_text("{\"variant\": 3}\n{\"variant\": \"front\", \"seed\": 0, "
                                                        "\"metrics\": {}}\n")
    add("ab_runs_binary", root / "ab_runs_binary").mkdir()
    (paths["ab_runs_binary"] / "runs.jsonl").write_bytes(b"\xff\xfe\xfa\n")
    add("ab_run_checkpoint", root / "ab_run_checkpoint")
    (paths["ab_run_checkpoint"] / "runs" / "front" / "seed0" / "checkpoints").mkdir(parents=True)
    (paths["ab_run_checkpoint"] / "runs" / "front" / "seed0" / "checkpoints" / "latest.json").write_text("[")

    shown = {name: str(path) for name, path in paths.items()}
    shown["base_args"] = base_args
    return shown


# --- the cases -------------------------------------------------------------------------------------------

@dataclass
class Case:
    prog: str
    argv: list[str]  # {fixture} placeholders are filled from `fx`
    message: str  # a part of the error line that names the problem
    env: dict[str, str] = field(default_factory=dict)  # environment variables ({fixture} filled too)



def fill(text: str, values: dict[str, str]) -> str:
    """`text` with each {fixture} replaced by its path; other braces (JSON) stay."""
    return re.sub(r"\{(\w+)\}", lambda match: values.get(match.group(1), match.group(0)), text)


def case(prog: str, argv: str | list[str], message: str, **env: str) -> Case:
    return Case(prog, argv.split() if isinstance(argv, str) else argv, message, env)


# quick settings that reach the data, model and study checks without real work
PL = "--model embedded:small --probe-seeds 0 --null-models 2 --null-probe-seeds 0 --measurements probes --no-progress"
FT = ("--model {tiny} --data synthetic --train-examples 8 --batch-size 4 --steps 2 --layers 0 --no-progress "
      "--no-tensorboard")
EV = "--model {tiny} --image-root " + str(IMAGES) + " --no-progress --out {out}/ev"
AB = ("--model embedded:small --steps 1 --batch-size 16 --train-examples 32 --warmup-steps 1 --eval-items 100 "
      "--eval-zero-shot 36 --no-progress --threads 1 --seeds 0 --variants front")

PROBE_LAYERS = [
    case("probe-layers", f"{PL} --seed -1", "--seed: must be >= 0"),
    case("probe-layers", f"{PL} --null-models 1", "--null-models: must be 0 (measurements only: no evidence, no "
                                                   "plan) or at least 2"),
    case("probe-layers", f"{PL} --seed 99999999999", "must be <= 4294967295"),
    case("probe-layers", f"{PL} --seed 1.5", "--seed: must be an integer, got '1.5'"),
    case("probe-layers", "--probe-seeds 0,-1", "--probe-seeds: each value must be >= 0"),
    case("probe-layers", ["--probe-seeds", ""], "--probe-seeds is empty"),
    case("probe-layers", "--null-probe-seeds x,y", "--null-probe-seeds must be a comma list"),
    case("probe-layers", "--probe-train abc", "must be an integer, got 'abc'"),
    case("probe-layers", "--probe-train 1e3", "must be an integer"),
    case("probe-layers", "--probe-train " + "9" * 5000, "must be an integer"),
    case("probe-layers", "--probe-test 5", "must be >= 10"),
    case("probe-layers", "--batch-size 0", "must be >= 1"),
    case("probe-layers", "--batch-size 99999999999", "must be <= 2147483647"),
    case("probe-layers", "--share nan", "must be a finite number"),
    case("probe-layers", "--share inf", "must be a finite number"),
    case("probe-layers", "--share 1.5", "must be in (0, 1]"),
    case("probe-layers", "--alpha 0", "must be in (0, 1]"),
    case("probe-layers", "--k -1", "must be >= 1"),
    case("probe-layers", "--per-image 0", "must be >= 1"),
    case("probe-layers", "--score-weights nan,1,1", "--score-weights takes three or four non-negative numbers"),
    case("probe-layers", "--score-weights inf,0,0", "--score-weights takes three or four non-negative numbers"),
    case("probe-layers", "--score-weights 0,0,0", "--score-weights"),
    case("probe-layers", "--device bogus", "unknown device 'bogus'"),
    case("probe-layers", "--device cuda:x", "unknown device"),
    case("probe-layers", "--threads 0", "must be >= 1"),
    case("probe-layers", "--threads 100000", "must be <= 1024"),
    case("probe-layers", "--measurements ,,", "--measurements is empty"),
    case("probe-layers", "--losses clip,magic", "unknown magic"),
    case("probe-layers", "--rule magic", "invalid choice: 'magic'"),
    case("probe-layers", "--model embedded:nope", "unknown embedded model 'nope'"),
    case("probe-layers", "--data {missing}", "no such file"),
    case("probe-layers", "--image-root {file}", "is not a folder"),
    case("probe-layers", f"{PL} --out {{file}}", "--out {file} is a file, not a folder"),
    case("probe-layers", f"{PL} --out {{under_file}}", "cannot be created: {file} is a file"),
    case("probe-layers", f"{PL} --data {{empty_csv}} --out {{out}}/pl", "empty.csv: file is empty"),
    case("probe-layers", f"{PL} --data {{blank_csv}} --out {{out}}/pl", "blank.csv: file is empty"),
    case("probe-layers", f"{PL} --data {{bad_json}} --out {{out}}/pl", "bad.json: invalid JSON"),
    case("probe-layers", f"{PL} --data {{list_json}} --out {{out}}/pl", "list.json: cannot tell the dataset kind"),
    case("probe-layers", f"{PL} --data {{text_file}} --out {{out}}/pl", "notes.txt: cannot tell the dataset kind"),
    case("probe-layers", f"{PL} --data {{binary_csv}} --out {{out}}/pl", "binary.csv"),
    case("probe-layers", f"{PL} --data {{empty_csv}} --data-kind magic --out {{out}}/pl",
         "unknown dataset kind 'magic'"),
    case("probe-layers", f"{PL} --data {{ccneg_no_negation_column}} --data-kind ccneg --out {{out}}/pl",
         "ccneg_cols.csv: missing column(s)"),
    case("probe-layers", f"{PL} --data {{ccneg_without_only}} --out {{out}}/pl",
         "with the cues ['no', 'not']) holds no captions"),
    case("probe-layers", f"{PL} --data {{ccneg_one_example}} --out {{out}}/pl",
         "the captions show 1 image(s): a split by image needs at least two"),
    case("probe-layers", f"{PL} --data {{ccneg_pt_garbage}} --out {{out}}/pl", "garbage.pt: torch.load cannot read it"),
    case("probe-layers", f"{PL} --data {{ccneg_pt_wrong}} --out {{out}}/pl", "image_paths should be a list"),
    case("probe-layers", f"{PL} --data {{jsonl_all_broken}} --out {{out}}/pl", "broken.jsonl"),
    case("probe-layers", "--model {tiny} --pretrained {damaged_world} --probe-seeds 0 --null-models 2 --out {out}/pl",
         "damaged_world.safetensors has damaged metadata"),
    case("probe-layers", "--model {tiny} --pretrained {ccneg_pt_garbage} --out {out}/pl", "garbage.pt is corrupt"),
    case("probe-layers", "--model no-such-architecture --out {out}/pl", "unknown model name 'no-such-architecture'"),
    case("probe-layers", "--model {missing} --out {out}/pl", "unknown model name"),
]

FINETUNE_LAYERS = [
    case("finetune-layers", f"{FT} --lr inf --out {{out}}/ft", "--lr: must be a finite number"),
    case("finetune-layers", f"{FT} --lr nan --out {{out}}/ft", "--lr: must be a finite number"),
    case("finetune-layers", f"{FT} --lr 1e30 --out {{out}}/ft", "--lr: must be <= 1"),
    case("finetune-layers", f"{FT} --lr -1 --out {{out}}/ft", "--lr: must be > 0"),
    case("finetune-layers", f"{FT} --lr 0 --out {{out}}/ft", "--lr: must be > 0"),
    case("finetune-layers", f"{FT} --clip-grad-norm -1 --out {{out}}/ft", "--clip-grad-norm: must be >= 0"),
    case("finetune-layers", f"{FT} --clip-grad-norm inf --out {{out}}/ft", "--clip-grad-norm: must be a finite"),
    case("finetune-layers", "--model {tiny} --layers 0 --epochs inf --out {out}/ft", "--epochs: must be a finite"),
    case("finetune-layers", "--model {tiny} --layers 0 --epochs nan --out {out}/ft", "--epochs: must be a finite"),
    case("finetune-layers", "--model {tiny} --layers 0 --epochs 0 --out {out}/ft", "--epochs: must be > 0"),
    case("finetune-layers", "--model {tiny} --layers 0 --split eval --out {out}/ft",
         "--split eval picks part of a data file; the synthetic world has none"),
    case("finetune-layers", "--model {tiny} --layers 0 --split train --out {out}/ft",
         "--split train picks part of a data file; the synthetic world has none"),
    case("finetune-layers", "--model {tiny} --layers 0 --spl train --out {out}/ft",
         "--split train picks part of a data file; the synthetic world has none"),
    case("finetune-layers", "--model {tiny} --layers 0 --second-loss negbench_mcq --second-data synthetic "
         "--second-split all --out {out}/ft", "--second-split all picks part of a data file; the synthetic world has "
         "none"),
    case("finetune-layers",
         "--model {tiny} --layers 0 --loss negbench_mcq --data {mcq_identical} --split eval --out {out}/ft",
         "--split eval: MCQ items for --loss negbench_mcq have no split (every row trains)"),
    case("finetune-layers", "--model {tiny} --layers 0 --steps 0 --out {out}/ft", "--steps: must be >= 1"),
    case("finetune-layers", "--model {tiny} --layers 0 --steps 1e3 --out {out}/ft", "--steps: must be an integer"),
    case("finetune-layers", "--model {tiny} --layers 0 --steps 99999999999 --out {out}/ft", "must be <= 2147483647"),
    case("finetune-layers", "--model {tiny} --layers 0 --steps 2 --epochs 1 --out {out}/ft", "not allowed with"),
    case("finetune-layers", f"{FT} --seed -5 --out {{out}}/ft", "--seed: must be >= 0"),
    case("finetune-layers", f"{FT} --seed 4294967296 --out {{out}}/ft", "--seed: must be <= 4294967295"),
    case("finetune-layers", f"{FT} --data-seed -1 --out {{out}}/ft", "--data-seed: must be >= 0"),
    case("finetune-layers", f"{FT} --second-data-seed x --out {{out}}/ft", "--second-data-seed: must be an integer"),
    case("finetune-layers", f"{FT} --weight-decay -0.1 --out {{out}}/ft", "--weight-decay: must be >= 0"),
    case("finetune-layers", f"{FT} --weight-decay inf --out {{out}}/ft", "--weight-decay: must be a finite"),
    case("finetune-layers", f"{FT} --eps 0 --out {{out}}/ft", "--eps: must be > 0"),
    case("finetune-layers", f"{FT} --betas 0.9 --out {{out}}/ft", "--betas takes two numbers"),
    case("finetune-layers", f"{FT} --betas 1,0.5 --out {{out}}/ft", "--betas takes two numbers in [0, 1)"),
    case("finetune-layers", f"{FT} --betas nan,0.9 --out {{out}}/ft", "--betas takes two numbers"),
    case("finetune-layers", f"{FT} --betas a,b --out {{out}}/ft", "--betas takes two numbers"),
    case("finetune-layers", "--model {tiny} --layers 0 --batch-size 0 --out {out}/ft", "--batch-size: must be >= 1"),
    case("finetune-layers", f"{FT} --grad-accum 0 --out {{out}}/ft", "--grad-accum: must be >= 1"),
    case("finetune-layers", f"{FT} --warmup-steps -1 --out {{out}}/ft", "--warmup-steps: must be >= 0"),
    case("finetune-layers", f"{FT} --log-every 0 --out {{out}}/ft", "--log-every: must be >= 1"),
    case("finetune-layers", f"{FT} --ckpt-every 0 --out {{out}}/ft", "--ckpt-every: must be >= 1"),
    case("finetune-layers", f"{FT} --train-examples 0 --out {{out}}/ft", "--train-examples: must be >= 1"),
    case("finetune-layers", f"{FT} --device bogus --out {{out}}/ft", "unknown device 'bogus'"),
    case("finetune-layers", f"{FT} --device cuda:x --out {{out}}/ft", "unknown device 'cuda:x'"),
    case("finetune-layers", f"{FT} --threads 0 --out {{out}}/ft", "--threads: must be >= 1"),
    case("finetune-layers", f"{FT} --loss magic --out {{out}}/ft", "invalid choice: 'magic'"),
    case("finetune-layers", f"{FT} --split magic --out {{out}}/ft", "invalid choice: 'magic'"),
    case("finetune-layers", f"{FT} --data-kind magic --out {{out}}/ft", "invalid choice: 'magic'"),
    case("finetune-layers", f"{FT} --loss omni --lam -1 --out {{out}}/ft", "--lam: must be >= 0"),
    case("finetune-layers", f"{FT} --loss omni --lam nan --out {{out}}/ft", "--lam: must be a finite number"),
    case("finetune-layers", f"{FT} --loss omni --lambda-t -1 --out {{out}}/ft", "--lambda-t: must be >= 0"),
    case("finetune-layers", f"{FT} --loss omni --lambda-o inf --out {{out}}/ft", "--lambda-o: must be a finite"),
    case("finetune-layers", f"{FT} --loss omni --margin 5 --out {{out}}/ft", "margin must lie in [-2, 2]"),
    case("finetune-layers", f"{FT} --loss omni --margin inf --out {{out}}/ft", "--margin: must be a finite number"),
    case("finetune-layers", f"{FT} --lam 1 --out {{out}}/ft", "--lam do(es) not apply to --loss conclip"),
    case("finetune-layers", f"{FT} --terms 4 --out {{out}}/ft", "--terms must be among"),
    case("finetune-layers", f"{FT} --terms a --out {{out}}/ft", "--terms must list term numbers"),
    case("finetune-layers", f"{FT} --loss mix --weights conclip=-1 --out {{out}}/ft",
         "--weights conclip: must be >= 0"),
    case("finetune-layers", f"{FT} --loss mix --weights conclip=nan --out {{out}}/ft", "must be a finite number"),
    case("finetune-layers", f"{FT} --loss mix --weights magic=1 --out {{out}}/ft", "--weights: unknown loss 'magic'"),
    case("finetune-layers", f"{FT} --loss mix --weights conclip=0 --out {{out}}/ft", "every weight of the mix is 0"),
    case("finetune-layers", "--model {tiny} --layers 0-1000000 --out {out}/ft", "no text tower has more than"),
    case("finetune-layers", "--model {tiny} --layers 0-99999999999999999999 --out {out}/ft", "names block"),
    case("finetune-layers", "--model {tiny} --layers 5-2 --out {out}/ft", "bad layer list '5-2'"),
    case("finetune-layers", "--model {tiny} --layers -1 --out {out}/ft", "bad layer list '-1'"),
    case("finetune-layers", "--model {tiny} --layers zero --out {out}/ft", "bad layer list 'zero'"),
    case("finetune-layers", "--model {tiny} --out {out}/ft", "give one of --plan and --layers"),
    case("finetune-layers", "--model {tiny} --plan {plan_bad_json} --out {out}/ft", "plan_bad.json is not valid JSON"),
    case("finetune-layers", "--model {tiny} --plan {plan_list} --out {out}/ft", "must be a JSON object, got list"),
    case("finetune-layers", "--model {tiny} --plan {plan_huge_block} --out {out}/ft", "block indices must be <= 9999"),
    case("finetune-layers", "--model {tiny} --plan {plan_inf_weight} --out {out}/ft", "must be a positive finite"),
    case("finetune-layers", "--model {tiny} --plan {plan_text_blocks} --out {out}/ft", "must be a list of integers"),
    case("finetune-layers", "--model {tiny} --plan {missing} --out {out}/ft", "does not exist"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_bad_json} --out {out}/ft", "recipe_bad.json is not valid"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_negative_lr} --out {out}/ft", "setting 'lr' must be > 0"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_inf_lr} --out {out}/ft", "setting 'lr' must be a finite"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_bad_loss} --out {out}/ft", "'magic' is not one of"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_flag_text} --out {out}/ft", "must be true or false"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_unknown} --out {out}/ft",
         "unknown setting(s) learning_rate"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_list_settings} --out {out}/ft", "must be JSON objects"),
    case("finetune-layers", "--model {tiny} --recipe nonesuch --out {out}/ft", "unknown recipe 'nonesuch'"),
    case("finetune-layers", f"{FT} --second-loss omni_absence --out {{out}}/ft", "needs --second-data"),
    case("finetune-layers", f"{FT} --second-data synthetic --out {{out}}/ft", "--second-data needs --second-loss"),
    case("finetune-layers", f"{FT} --model embedded:small --pretrained x.pt --out {{out}}/ft",
         "does not go with the embedded model"),
    case("finetune-layers", f"{FT} --out {{file}}", "--out {file} is a file, not a folder"),
    case("finetune-layers", f"{FT} --out {{under_file}}", "cannot be created: {file} is a file"),
    case("finetune-layers", f"{FT} --data {{missing}} --out {{out}}/ft", "nothing.csv: file not found"),
    case("finetune-layers", f"{FT} --image-root {{file}} --data {{empty_csv}} --out {{out}}/ft",
         "image root is not a folder"),
    case("finetune-layers", f"{FT} --data {{empty_csv}} --out {{out}}/ft", "empty.csv: file is empty"),
    case("finetune-layers", f"{FT} --data {{bad_json}} --out {{out}}/ft", "bad.json: invalid JSON"),
    case("finetune-layers", f"{FT} --data {{ccneg_no_negation_column}} --data-kind ccneg --split all --out {{out}}/ft",
         "ccneg_cols.csv: missing column(s)"),
    case("finetune-layers", f"{FT} --data {{jsonl_all_broken}} --out {{out}}/ft", "broken.jsonl, row 0: invalid JSON"),
    case("finetune-layers", f"{FT} --data {{jsonl_all_broken}} --skip-bad-rows --out {{out}}/ft",
         "broken.jsonl: 0 usable examples (3 rows skipped) are fewer than one batch of 4"),
    case("finetune-layers", f"{FT} --data {{ccneg_pt_garbage}} --out {{out}}/ft", "torch.load cannot read it"),
    case("finetune-layers", f"{FT} --data {{sugarcrepe_list}} --data-kind sugarcrepe --out {{out}}/ft",
         "expected a JSON object of id -> item"),
    case("finetune-layers", "--model {tiny} --data synthetic --train-examples 3 --batch-size 4 --steps 1 --layers 0 "
                            "--out {out}/ft", "3 examples (--train-examples) are fewer than one batch of 4"),
    case("finetune-layers", "--model {tiny} --data synthetic --second-data synthetic --second-loss negbench_mcq "
                            "--second-batch-size 1 --batch-size 4 --steps 1 --layers 0 --out {out}/ft",
         "--second-batch-size must be at least 2: contrastive losses need negatives"),
    case("finetune-layers", "--model {tiny} --layers 0-7 --steps 1 --batch-size 4 --train-examples 8 --out {out}/ft",
         "the text tower has 2 blocks"),
    case("finetune-layers", "--model {tiny} --pretrained {damaged_world} --layers 0 --steps 1 --batch-size 4 "
                            "--train-examples 8 --out {out}/ft", "damaged_world.safetensors has damaged metadata"),
    case("finetune-layers", "--model {tiny} --pretrained {damaged_world_shape} --layers 0 --steps 1 --batch-size 4 "
                            "--train-examples 8 --out {out}/ft", "world_shape.safetensors has damaged metadata"),
    case("finetune-layers", "--model {tiny} --pretrained {damaged_metrics} --layers 0 --steps 1 --batch-size 4 "
                            "--train-examples 8 --out {out}/ft", "damaged_metrics.safetensors has damaged metadata"),
    case("finetune-layers", "--model {tiny} --pretrained {damaged_digest} --layers 0 --steps 1 --batch-size 4 "
                            "--train-examples 8 --out {out}/ft", "damaged_digest.safetensors is damaged"),
    case("finetune-layers", "--model {tiny} --pretrained {ccneg_pt_garbage} --layers 0 --out {out}/ft",
         "garbage.pt is corrupt"),
]
# resuming damaged runs: the arguments of the run that wrote them, with --resume
RESUME = [
    ("ft_latest_garbage", "latest.json is damaged: not JSON"),
    ("ft_latest_shape", "latest.json is damaged: found"),
    ("ft_latest_escape", "latest.json is damaged: found"),
    ("ft_latest_dangling", "which lacks model.safetensors, state.pt"),
    ("ft_latest_folder", "latest.json is a folder"),
    ("ft_state_garbage", "state.pt is damaged"),
    ("ft_state_empty", "state.pt is damaged"),
    ("ft_state_keys", "state.pt is damaged: it lacks optimizer, scheduler, settings, rng"),
    ("ft_state_settings", "state.pt is damaged: its settings are not JSON"),
    ("ft_weights_truncated", "model.safetensors is corrupt"),
    ("ft_nan_weights", "holds non-finite weights"),
]
FINETUNE_LAYERS += [case("finetune-layers", ["{base_args}", "--resume", "--out", "{%s}" % name], message)
                    for name, message in RESUME]
FINETUNE_LAYERS += [case("finetune-layers", ["{base_args}", "--out", "{ft_base}"],
                         "already holds a checkpoint (step 2)")]

EVALUATE_NEGATION = [
    case("evaluate-negation", f"{EV} --benchmarks synthetic --batch-size 0", "--batch-size: must be >= 1"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --limit -1", "--limit: must be >= 1"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --seed -1", "--seed: must be >= 0"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --synthetic-items x", "must be an integer, got 'x'"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --synthetic-image-size 0", "must be >= 1"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --synthetic-split magic", "invalid choice: 'magic'"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --device bogus", "unknown device 'bogus'"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --threads -1", "--threads: must be >= 1"),
    case("evaluate-negation", "--benchmarks synthetic --model embedded:nope --out {out}/ev", "unknown embedded model"),
    case("evaluate-negation", "--benchmarks synthetic --out {file}", "--out {file} is a file, not a folder"),
    case("evaluate-negation", "--benchmarks synthetic --out {under_file}", "cannot be created: {file} is a file"),
    case("evaluate-negation", f"{EV} --data-root {{file}}", "--data-root {file} is not a folder"),
    case("evaluate-negation", "--image-root {missing} --out {out}/ev", "is not a folder"),
    case("evaluate-negation", f"{EV} --image-root-for valse_existence", "--image-root-for takes BENCHMARK=DIR"),
    case("evaluate-negation", f"{EV} --image-root-for magic={{out}}", "is not a folder"),
    case("evaluate-negation", f"{EV} --image-root-for magic=" + str(IMAGES), "unknown benchmark(s) ['magic']"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic,bogus", "unknown benchmark(s) ['bogus']"),
    case("evaluate-negation", [*EV.split(), "--benchmarks", " , "], "--benchmarks is empty"),
    case("evaluate-negation", f"{EV} --benchmarks negbench_mcq --negbench-mcq {{missing}}", "do(es) not exist"),
    case("evaluate-negation", f"{EV} --benchmarks image_folder", "no image folder given"),
    *[case("evaluate-negation", f"{EV} --benchmarks {benchmark} --{benchmark.replace('_', '-')} {{{fixture}}}", message)
      for benchmark, fixture, message in [
          ("negbench_mcq", "empty_csv", "empty.csv: file is empty"),
          ("negbench_mcq", "blank_csv", "blank.csv: file is empty"),
          ("negbench_mcq", "binary_csv", "binary.csv: the header is not valid UTF-8"),
          ("negbench_mcq", "mcq_missing_column", "mcq_cols.csv: missing column(s)"),
          ("negbench_mcq", "mcq_bad_rows", "mcq_bad.csv: nothing to evaluate: 3 rows read"),
          ("negbench_mcq", "mcq_no_images", "nothing to evaluate: 3 rows read, none usable (image not found (3))"),
          ("negbench_mcq", "mcq_identical", "none usable (captions identical (1))"),
          ("negbench_retrieval", "retrieval_bad_lists", "ret_bad.csv: nothing to evaluate"),
          ("negbench_retrieval", "bad_json", "bad.json: missing column(s)"),
          ("sugarcrepe", "sugarcrepe_list", "expected a JSON object of id -> item"),
          ("sugarcrepe", "sugarcrepe_bad_json", "swap_obj.json: invalid JSON"),
          ("sugarcrepe", "sugarcrepe_same", "none usable (captions identical (2))"),
          ("sugarcrepe", "sugarcrepe_cut", "none usable (captions identical after the cut (1))"),
          ("sugarcrepe", "missing", "do(es) not exist"),
          ("valse_existence", "valse_wrong_items", "existence.json: nothing to evaluate"),
          ("valse_existence", "list_json", "expected a JSON object of id -> item"),
          ("ccneg", "ccneg_pt_garbage", "torch.load cannot read it"),
          ("ccneg", "ccneg_pt_wrong", "image_paths should be a list"),
          ("ccneg", "text_file", "CC-Neg files are .pt, .csv or .jsonl"),
          ("ccneg", "jsonl_all_broken", "broken.jsonl: nothing to evaluate"),
          ("ccneg", "ccneg_no_negation_column", "missing column(s)"),
          ("negrefcocog", "negrefcocog_object", "NegRefCOCOg is a JSON list"),
          ("negrefcocog", "bad_json", "bad.json: invalid JSON"),
      ]],
    case("evaluate-negation", f"{EV} --benchmarks coco_generated --coco-instances {{coco_no_annotations}}",
         "no list 'annotations'"),
    case("evaluate-negation", f"{EV} --benchmarks coco_generated --coco-instances {{coco_list_ids}}",
         "should be an integer or a string id"),
    case("evaluate-negation", f"{EV} --benchmarks image_folder --image-folder {{one_class}}",
         "need at least two class folders"),
    case("evaluate-negation", "--model {tiny} --pretrained {damaged_metrics} --benchmarks synthetic --out {out}/ev",
         "damaged_metrics.safetensors has damaged metadata: 'metrics' is not JSON"),
    case("evaluate-negation", "--model {tiny} --pretrained {damaged_metrics_shape} --benchmarks synthetic "
                              "--out {out}/ev", "'metrics' is not a table of numbers"),
    case("evaluate-negation", "--model {tiny} --pretrained {damaged_world} --benchmarks synthetic --out {out}/ev",
         "damaged_world.safetensors has damaged metadata"),
    case("evaluate-negation", "--model {tiny} --pretrained {missing} --benchmarks synthetic --out {out}/ev",
         "does not exist"),
]

ABLATE_LAYERS = [
    case("ablate-layers", f"{AB} --lr inf --out {{out}}/ab", "--lr: must be a finite number"),
    case("ablate-layers", f"{AB} --lr 1e30 --out {{out}}/ab", "--lr: must be <= 1"),
    case("ablate-layers", f"{AB} --lr 0 --out {{out}}/ab", "--lr: must be > 0"),
    case("ablate-layers", f"{AB} --weight-decay -1 --out {{out}}/ab", "--weight-decay: must be >= 0"),
    case("ablate-layers", f"{AB} --weight-decay nan --out {{out}}/ab", "--weight-decay: must be a finite"),
    case("ablate-layers", f"{AB} --seeds 0,-1 --out {{out}}/ab", "--seeds: each value must be >= 0"),
    case("ablate-layers", f"{AB} --seeds x --out {{out}}/ab", "--seeds must be a comma list"),
    case("ablate-layers", f"{AB} --seed -1 --out {{out}}/ab", "--seed: must be >= 0"),
    case("ablate-layers", f"{AB} --eval-seed 1099511627776 --out {{out}}/ab", "--eval-seed: must be <= 4294967295"),
    case("ablate-layers", f"{AB} --data-seed 1.5 --out {{out}}/ab", "--data-seed: must be an integer"),
    case("ablate-layers", f"{AB} --loss omni --lam nan --out {{out}}/ab", "--lam: must be a finite number"),
    case("ablate-layers", f"{AB} --loss omni --lam -1 --out {{out}}/ab", "--lam: must be >= 0"),
    case("ablate-layers", f"{AB} --loss omni --lam x --out {{out}}/ab", "--lam: must be a number"),
    case("ablate-layers", f"{AB} --loss omni --margin 9 --out {{out}}/ab", "loss option margin must lie in [-2, 2]"),
    case("ablate-layers", f"{AB} --terms 7 --out {{out}}/ab", "--terms must be among 1, 2, 3"),
    case("ablate-layers", f"{AB} --terms x --out {{out}}/ab", "--terms must list term numbers"),
    case("ablate-layers", f"{AB} --lam 1 --out {{out}}/ab", "--lam do(es) not apply to --loss conclip"),
    case("ablate-layers", f"{AB} --loss mix --weights conclip=0 --out {{out}}/ab", "every weight of the mix is 0"),
    case("ablate-layers", f"{AB} --loss mix --weights conclip=1,conclip=2 --out {{out}}/ab", "conclip given twice"),
    case("ablate-layers", f"{AB} --steps 0 --out {{out}}/ab", "--steps: must be >= 1"),
    case("ablate-layers", f"{AB} --eval-items 50 --out {{out}}/ab", "--eval-items must be at least 100"),
    case("ablate-layers", f"{AB} --train-examples 8 --out {{out}}/ab", "--train-examples 8 is fewer than one batch"),
    case("ablate-layers", f"{AB} --extras magic --out {{out}}/ab", "unknown extra(s) magic"),
    case("ablate-layers", f"{AB} --device bogus --out {{out}}/ab", "unknown device 'bogus'"),
    case("ablate-layers", f"{AB} --pretrained x.pt --out {{out}}/ab", "--pretrained does not go with the embedded"),
    case("ablate-layers", f"{AB} --plan {{missing}} --out {{out}}/ab", "nothing.csv does not exist"),
    case("ablate-layers", f"{AB} --out {{file}}", "--out {file} is a file, not a folder"),
    case("ablate-layers", f"{AB} --out {{under_file}}", "cannot be created: {file} is a file"),
    case("ablate-layers", [*AB.split(), "--variants", ",,", "--out", "{out}/ab"], "--variants is empty"),
    case("ablate-layers", f"{AB} --out {{ab_config_garbage}}", "ablation_config.json is damaged: not JSON"),
    case("ablate-layers", f"{AB} --out {{ab_config_shape}}", "ablation_config.json is damaged: it holds no 'settings'"),
    case("ablate-layers", f"{AB} --out {{ab_runs_broken}}", "runs.jsonl: line 1 is not a run record"),
    case("ablate-layers", f"{AB} --out {{ab_runs_binary}}", "runs.jsonl cannot be read"),
    case("ablate-layers", f"{AB} --out {{ab_run_checkpoint}}", "latest.json is damaged"),
    case("ablate-layers", f"{AB} --plan {{plan_bad_json}} --variants selected --out {{out}}/ab",
         "plan_bad.json is not valid JSON"),
    case("ablate-layers", f"{AB} --plan {{plan_empty}} --variants selected --out {{out}}/ab", "trains no text block"),
    case("ablate-layers", f"{AB} --plan {{plan_huge_block}} --variants selected --out {{out}}/ab",
         "block indices must be <= 9999"),
    case("ablate-layers", f"{AB} --out {{out}}/ab --variants frontal", "unknown variant 'frontal'"),
    case("ablate-layers", f"{AB} --out {{out}}/ab --variants layer_99", "the text tower has 12 blocks"),
    case("ablate-layers", "--model {tiny} --pretrained {damaged_world} --out {out}/ab", "has damaged metadata"),
]

BUILD_EMBEDDED = [
    case("build-embedded", "--seed -1", "--seed: must be >= 0"),
    case("build-embedded", "--seed x", "--seed: must be an integer"),
    case("build-embedded", "--steps 0", "--steps: must be >= 1"),
    case("build-embedded", "--steps 1e9", "--steps: must be an integer"),
    case("build-embedded", "--threads 0", "--threads: must be >= 1"),
    case("build-embedded", "--threads 5000", "--threads: must be <= 1024"),
    case("build-embedded", "--model magic", "unknown embedded model 'magic'"),
    case("build-embedded", "--model embedded:small --steps 3 --no-progress",
         "model cache folder {file}/embedded cannot be used",
         CLIP_NEGATION_CACHE="{file}"),
    case("build-embedded", "--model embedded:small --steps 3 --no-progress", "cannot be used",
         CLIP_NEGATION_CACHE="{under_file}"),
]

MN = f"--image-root {IMAGES} --no-progress"
MAKE_NEGATIONS = [
    case("make-negations", f"{MN} --data {{missing}} --out {{out}}/n.csv", "nothing.csv: file not found"),
    case("make-negations", f"{MN} --data {{empty_csv}} --out {{out}}/n.csv", "empty.csv: file is empty"),
    case("make-negations", f"{MN} --data {{bad_json}} --out {{out}}/n.csv", "bad.json: invalid JSON"),
    case("make-negations", f"{MN} --data {{text_file}} --out {{out}}/n.csv", "cannot tell the dataset kind"),
    case("make-negations", f"{MN} --data {{mcq_no_images}} --out {{out}}/n.csv", "not negation examples"),
    case("make-negations", f"{MN} --data {{ccneg_no_negation_column}} --out {{out}}/n.csv", "ccneg_cols.csv"),
    case("make-negations", f"{MN} --data {{retrieval_bad_lists}} --out {{out}}/n.csv", "ret_bad.csv, row"),
    case(
        "make-negations",
        f"{MN} --data {{retrieval_bad_lists}} --skip-missing --out {{out}}/n.csv",
        "no negation examples to write: 1 skipped (field 'captions' is not a Python list literal)",
    ),
    case("make-negations", f"{MN} --data {{coco_no_annotations}} --out {{out}}/n.csv", "instances_x.json"),
    case(
        "make-negations",
        f"{MN} --data {{ccneg_one_example}} --image-root {{file}} --out {{out}}/n.csv",
        "image root is not a folder",
    ),
    case(
        "make-negations", f"{MN} --data {{ccneg_one_example}} --out {{out}}/n.txt", "--out must end in .csv or .jsonl"
    ),
    case("make-negations", f"{MN} --data {{ccneg_one_example}} --out {{under_file}}/n.csv", "is a file"),
    case(
        "make-negations",
        f"{MN} --data {{ccneg_one_example}} --data-kind negbench_mcq --out {{out}}/n.csv",
        "invalid choice: 'negbench_mcq'",
    ),
    case(
        "make-negations",
        f"{MN} --data {{ccneg_one_example}} --per-image 0 --out {{out}}/n.csv",
        "--per-image: must be >= 1",
    ),
    case("make-negations", f"{MN} --data {{ccneg_one_example}} --limit 0 --out {{out}}/n.csv", "--limit: must be >= 1"),
    case("make-negations", f"{MN} --data {{ccneg_one_example}} --seed -1 --out {{out}}/n.csv", "--seed: must be >= 0"),
    case(
        "make-negations",
        f"{MN} --data {{ccneg_one_example}} --threads 0 --out {{out}}/n.csv",
        "--threads: must be >= 1",
    ),
    case("make-negations", f"{MN} --data {{ccneg_one_example}}", "the following arguments are required: --out"),
]

# model configs and checkpoints (issue 28): one line naming the file and the field, before anything is built
EVQ = "--benchmarks synthetic --no-progress --out {out}/ev"
MODELS = [
    case("probe-layers", "--model {model_number} --out {out}/pl",
         "model config file {model_number}: holds a number (5), not a JSON object"),
    case("probe-layers", "--model {model_negative} --out {out}/pl",
         "model config file {model_negative}: embed_dim must be >= 1, got -1"),
    case("evaluate-negation", f"--model {{model_deep}} {EVQ}", "deep.json is not valid JSON"),
    case("evaluate-negation", f"--model {{model_key_twice}} {EVQ}",
         "model config file {model_key_twice}: key 'width' appears twice in one object"),
    case("evaluate-negation", f"--model {{hf_key_twice}} {EVQ}", "key 'projection_dim' appears twice"),
    case("finetune-layers", "--model {tiny} --plan {plan_key_twice} --out {out}/ft",
         "layer plan file {plan_key_twice}: key 'blocks' appears twice"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_key_twice} --out {out}/ft",
         "recipe file {recipe_key_twice}: key 'lr' appears twice"),
    case("ablate-layers", [*AB.split(), "--loss", "omni", "--loss-kwargs", '{"lam": 1, "lam": 2}', "--out",
                           "{out}/ab"], "--loss-kwargs: key 'lam' appears twice"),
    case("finetune-layers", "--model {tiny} --plan {plan_deep} --out {out}/ft", "plan_deep.json is not valid JSON"),
    case("finetune-layers", "--model {tiny} --recipe {recipe_deep} --out {out}/ft", "recipe_deep.json is not valid"),
    case("finetune-layers", f"{FT} --data {{data_deep}} --out {{out}}/ft", "data_deep.json: invalid JSON: nested too"),
    case("finetune-layers", f"{FT} --data {{jsonl_deep}} --out {{out}}/ft", "deep.jsonl, row 0: invalid JSON line"),
    case("evaluate-negation", f"--model {{model_zero_width}} {EVQ}",
         "model_zero_width.json: text_cfg.width must be >= 1"),
    case("evaluate-negation", f"--model {{model_negative_layers}} {EVQ}", "text_cfg.layers must be >= 1, got -3"),
    case("evaluate-negation", f"--model {{model_heads}} {EVQ}", "text_cfg.heads 3 do not divide text_cfg.width 64"),
    case("evaluate-negation", f"--model {{model_zero_heads}} {EVQ}", "text_cfg.heads must be >= 1, got 0"),
    case("evaluate-negation", f"--model {{model_vision_heads}} {EVQ}",
         "vision_cfg.head_width 24 does not divide vision_cfg.width 32"),
    case("evaluate-negation", f"--model {{model_text_size_string}} {EVQ}",
         "text_cfg.layers must be an integer, got '2'"),
    case("evaluate-negation", f"--model {{model_fractional}} {EVQ}", "vision_cfg.width must be an integer, got 32.5"),
    case("evaluate-negation", f"--model {{model_embed_bool}} {EVQ}", "embed_dim must be an integer, got True"),
    case("evaluate-negation", f"--model {{model_absurd_width}} {EVQ}", "text_cfg.width must be <= 65536"),
    case("evaluate-negation", f"--model {{model_absurd_total}} {EVQ}", "more than 2e+10"),
    case("evaluate-negation", f"--model {{model_unknown_key}} {EVQ}",
         "unknown key(s) text_cfg.widht (did you mean width?)"),
    case("evaluate-negation", f"--model {{model_unknown_top}} {EVQ}", "unknown key(s) output_dict"),
    case("evaluate-negation", f"--model {{model_text_list}} {EVQ}", "text_cfg must be a JSON object, got a list"),
    case("evaluate-negation", f"--model {{model_vocab}} {EVQ}", "text_cfg.vocab_size 1000 is smaller than"),
    case("evaluate-negation", f"--model {{model_context}} {EVQ}", "text_cfg.context_length must be >= 3, got 2"),
    case("evaluate-negation", f"--model {{model_patch}} {EVQ}", "vision_cfg.patch_size 64 is larger than the image"),
    case("evaluate-negation", f"--model {{model_resnet_stages}} {EVQ}", "vision_cfg.layers must be one integer"),
    case("evaluate-negation", f"--model {{model_resnet_small}} {EVQ}", "vision_cfg.image_size 16 is smaller than 32"),
    case("evaluate-negation", f"--model {{model_mlp_ratio}} {EVQ}", "text_cfg.mlp_ratio must be a finite number"),
    case("evaluate-negation", f"--model {{model_flag}} {EVQ}", "quick_gelu must be true or false, got 'yes'"),
    case("evaluate-negation", f"--model {{model_missing_heads}} {EVQ}",
         "model_missing_heads.json: lacks text_cfg.heads (open_clip would build 8)"),
    case("evaluate-negation", f"--model {{model_missing_patch}} {EVQ}", "lacks vision_cfg.patch_size"),
    case("finetune-layers", "--model {model_heads} --layers 0 --out {out}/ft", "model_heads.json: text_cfg.heads 3"),
    case("ablate-layers", "--model {model_negative} --steps 1 --seeds 0 --variants front --out {out}/ab",
         "model config file {model_negative}: embed_dim must be >= 1"),
    case("evaluate-negation", f"--model {{hf_zero_heads}} {EVQ}",
         "config.json: text_config.num_attention_heads must be an integer in 1..65536, got 0"),
    case("evaluate-negation", f"--model {{hf_negative_layers}} {EVQ}",
         "vision_config.num_hidden_layers must be an integer in 1..1024, got -1"),
    case("evaluate-negation", f"--model {{hf_text_number}} {EVQ}", "text_config must be a JSON object"),
    case("evaluate-negation", f"--model {{hf_projection}} {EVQ}", "projection_dim must be an integer"),
    case("evaluate-negation", f"--model {{hf_heads_divide}} {EVQ}",
         "is not a multiple of"),  # transformers 5 refuses it itself, older ones reach our own check
    case("evaluate-negation", f"--model {{tiny}} --pretrained {{nan_model}} {EVQ}",
         "nan_model.safetensors is damaged: 1 tensor(s) hold NaN or infinite values (positional_embedding)"),
    case("probe-layers", "--model {tiny} --pretrained {nan_model} --out {out}/pl", "hold NaN or infinite values"),
    case("evaluate-negation", f"--model negclip-micro --pretrained {{compact_huge}} {EVQ}",
         "compact_huge.safetensors is damaged: its compact token embedding cannot be rebuilt (ValueError: the shape "
         "[1000000000000, 64] is not positive integers"),
    case("finetune-layers", "--model {tiny} --pretrained {int_model} --layers 0 --out {out}/ft",
         "int_model.safetensors holds 1 tensor(s) that are not floating-point where the model's are: "
         "ln_final.weight (torch.int64)"),
]

# repeated list items are errors, not silently dropped (issue 28), and plan errors name the plan file
SECOND_IMAGES = f"--image-root-for sugarcrepe={IMAGES} --image-root-for sugarcrepe={IMAGES}"
REPEATS = [
    case("probe-layers", "--seeds 0,0", "--probe-seeds: 0 given twice"),
    case("probe-layers", "--null-seeds 1,2,1", "--null-probe-seeds: 1 given twice"),
    case("probe-layers", "--measurements probes,sensitivity,probes", "--measurements: probes given twice"),
    case("probe-layers", f"{PL} --data {{ccneg_without_only}} --train-cues no,not,no --out {{out}}/pl",
         "--train-cues: no given twice"),
    case("ablate-layers", f"{AB} --seeds 0,0 --out {{out}}/ab", "--seeds: 0 given twice"),
    case("ablate-layers", f"{AB} --variants front,back,front --out {{out}}/ab", "front given twice"),
    case("ablate-layers", f"{AB} --extras ln_final,ln_final --out {{out}}/ab", "extras: ln_final given twice"),
    case("ablate-layers", [*AB.split(), "--loss-kwargs", '{"terms": [1, 1]}', "--out", "{out}/ab"],
         "loss option terms lists term 1 twice"),
    case("finetune-layers", f"{FT} --terms 1,1 --out {{out}}/ft", "--terms: 1 given twice"),
    case("finetune-layers", f"{FT} --loss omni --lam 1e30 --out {{out}}/ft", "loss option lam must be <= 1e+06"),
    case("ablate-layers", [*AB.split(), "--loss", "mix", "--loss-kwargs", '{"clip": 1e300}', "--out", "{out}/ab"],
         "loss option clip must be <= 1e+06"),
    case("finetune-layers", f"{FT} --loss mix --weights clip=1,conclip=1,clip=2 --out {{out}}/ft",
         "--weights: clip given twice"),
    case("finetune-layers", "--model {tiny} --layers 0,1,0 --out {out}/ft", "blocks lists an index twice"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic,synthetic", "--benchmarks: synthetic given twice"),
    case("evaluate-negation", f"{EV} --benchmarks sugarcrepe {SECOND_IMAGES}",
         "--image-root-for sugarcrepe given twice"),
    case("evaluate-negation", f"{EV} --benchmarks sugarcrepe --sugarcrepe {{sugarcrepe_same}} "
                              f"--sugarcrepe {{sugarcrepe_same}}", "--sugarcrepe: {sugarcrepe_same} given twice"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --synthetic-image-size 4",
         "--synthetic-image-size: image_size must be an integer in 12..4096, got 4"),
    case("evaluate-negation", f"{EV} --benchmarks synthetic --synthetic-image-size 100000", "got 100000"),
    case("finetune-layers", "--model {tiny} --plan {plan_block_99} --steps 1 --batch-size 4 --n-examples 8 "
                            "--out {out}/ft",
         "layer plan file {plan_block_99} lists block(s) [99], but the text tower has 2 blocks"),
    case("finetune-layers", "--model {tiny} --plan {plan_empty} --out {out}/ft",
         "layer plan file {plan_empty} trains no text block and no extra"),
    case("ablate-layers", f"{AB} --plan {{plan_block_99}} --variants selected --out {{out}}/ab",
         "layer plan file {plan_block_99} lists block(s) [99], but the text tower has 12 blocks"),
]

# data files that hold nothing, or numbers outside their documented range, through the commands (issue 28)
DATA = [
    case("make-negations", f"{MN} --data {{ccneg_header_only}} --out {{out}}/n.csv",
         "ccneg_header.csv: the file holds no rows: it has a header and nothing below it"),
    case("finetune-layers", f"{FT} --data {{ccneg_header_only}} --out {{out}}/ft",
         "ccneg_header.csv: the file holds no rows"),
    case("finetune-layers", f"{FT} --data {{ccneg_header_only}} --skip-bad-rows --out {{out}}/ft",
         "ccneg_header.csv: the file holds no rows"),
    case("make-negations", f"{MN} --data {{ccneg_num_ops}} --out {{out}}/n.csv",
         "ccneg_k.csv, row 1: field 'num_ops' should be in 1..75, found -3"),
    case("finetune-layers", f"{FT} --data {{ccneg_num_ops}} --split all --out {{out}}/ft",
         "ccneg_k.csv, row 1: field 'num_ops' should be in 1..75, found -3"),
    case("finetune-layers", f"{FT} --data {{ccneg_long_same}} --split all --out {{out}}/ft",
         "ccneg_long.csv, row 0: captions identical after the cut: caption and presence-negated caption become the "
         "same 32 tokens"),
    case("finetune-layers", f"{FT} --data {{ccneg_long_same}} --split all --skip-bad-rows --out {{out}}/ft",
         "0 examples are fewer than one batch of 4 (8 examples whose compared captions are the same tokens after "
         "the cut were skipped)"),
    case("evaluate-negation", f"{EV} --benchmarks sugarcrepe --sugarcrepe {{sugarcrepe_empty}}",
         "add_obj.json: the file holds no items"),
]

CASES = (PROBE_LAYERS + FINETUNE_LAYERS + EVALUATE_NEGATION + ABLATE_LAYERS + BUILD_EMBEDDED + MAKE_NEGATIONS
         + MODELS + REPEATS + DATA)


def _id(item: Case) -> str:
    return f"{item.prog}:{' '.join(item.argv)[-70:]}"


def run_command(prog: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of one command run in this process; an exception that escapes it
    (what would print a traceback) fails the test with that traceback."""
    try:
        status = COMMANDS[prog](argv)
    except SystemExit as exit_info:
        status = exit_info.code
    except BaseException:  # noqa: BLE001 - any escape is the failure this suite looks for
        pytest.fail(f"{prog} {' '.join(argv)[:300]} ended in a traceback:\n{traceback.format_exc()}")
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_error(prog: str, status: int, err: str, message: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert status == 2, f"exit {status}, stderr: {err[-800:]}"
    assert lines, f"no '{prog}: error:' line in: {err[-800:]}"
    assert any(message in line for line in lines), f"{message!r} not in {lines}"
    assert all(len(line) <= MESSAGE_LIMIT + 200 for line in lines)  # one short line, never a list of a million


def test_at_least_150_cases_over_every_command():
    assert len(CASES) >= 150
    assert {item.prog for item in CASES} == set(COMMANDS)


@pytest.mark.parametrize("item", CASES, ids=_id)
def test_malformed_input_is_one_clear_error(item: Case, fx, capsys, monkeypatch):
    values = {key: value for key, value in fx.items() if key != "base_args"}
    argv = []
    for part in item.argv:
        argv += fx["base_args"] if part == "{base_args}" else [fill(part, values)]
    for name, value in item.env.items():
        monkeypatch.setenv(name, fill(value, values))
    with contextlib.redirect_stdout(_io.StringIO()):  # progress lines and loader reports are not the point
        status, _, err = run_command(item.prog, argv, capsys)
    check_error(item.prog, status, err, fill(item.message, values))
    # nothing written (evaluate-negation writes the benchmarks that ran, then names the ones that failed)
    left = sorted(str(p) for p in Path(values["out"]).rglob("*")) if Path(values["out"]).exists() else None
    assert left is None or item.prog == "evaluate-negation", f"a malformed input left an output folder behind: {left}"
    shutil.rmtree(values["out"], ignore_errors=True)


def test_damaged_shipped_metadata_is_named(fx, capsys, monkeypatch, tmp_path):
    """build-embedded on a shipped file whose recorded metrics are damaged (e.g. a bad download)."""
    import probing.models
    from probing.models.embedded import REGISTRY

    shipped = tmp_path / REGISTRY["small"].shipped  # build-embedded reads the shipped folder itself
    shutil.copy(fx["damaged_metrics"], shipped)
    monkeypatch.setattr(probing.models, "SHIPPED", tmp_path)
    status, _, err = run_command("build-embedded", ["--model", "embedded:small", "--no-progress"], capsys)
    check_error("build-embedded", status, err, f"{shipped} has damaged metadata: 'metrics' is not JSON")


@pytest.mark.parametrize("prog, argv, message", [
    ("probe-layers", ["--seed", "-1"], "--seed: must be >= 0"),
    ("finetune-layers", ["--layers", "0", "--lr", "inf", "--out", "x"], "--lr: must be a finite number"),
    ("finetune-layers", ["--layers", "0-1000000", "--out", "x"], "no text tower has more than"),
    ("evaluate-negation", ["--batch-size", "0", "--out", "x"], "--batch-size: must be >= 1"),
    ("ablate-layers", ["--lr", "1e30", "--out", "x"], "--lr: must be <= 1"),
    ("build-embedded", ["--threads", "0"], "--threads: must be >= 1"),
    ("make-negations", ["--data", "missing.json", "--out", "x.csv"], "missing.json"),
])
def test_installed_commands_exit_2_without_a_traceback(prog, argv, message, tmp_path):
    """The same contract at the process level, through the installed entry points."""
    executable = Path(sys.executable).with_name(prog)
    done = subprocess.run([str(executable), *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{prog}: error:") and message in done.stderr and done.stderr.count("\n") == 1


def test_loaders_meet_json_of_the_wrong_shape_with_data_errors(tmp_path):
    """Every loader, fed JSON whose parts have the wrong type, raises DataError (strict) or skips and counts
    the row (lenient): never a TypeError, KeyError or ValueError from inside."""
    from probing.data import load_dataset
    from probing.data.records import DataError

    weird = [None, 1, 1.5, True, "x", [], [1], {}, {"a": 1}, [[1, 2]], -1, [None]]
    good = {
        "sugarcrepe": ("add_obj.json", {"0": {"filename": IMAGE, "caption": "a cat", "negative_caption": "a dog"}}),
        "valse_existence": ("existence.json", {"0": {"caption": "a cat", "foil": "no cat", "image_file": IMAGE,
                                                     "mturk": {"caption": 3, "foil": 0, "other": 0}}}),
        "coco_captions": ("captions_x.json", {"images": [{"id": 1, "file_name": IMAGE}],
                                              "annotations": [{"image_id": 1, "caption": "a cat"}]}),
        "coco_instances": ("instances_x.json", {"images": [{"id": 1, "file_name": IMAGE}], "categories": [
            {"id": 1, "name": "cat"}], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}),
        "negrefcocog": ("NegRefCOCOg.json", [{"image": IMAGE, "phrase": "the cat that is not black",
                                              "ref_bbox": [0, 0, 5, 5], "bbox_list": [[0, 0, 5, 5], [1, 1, 3, 3]]}]),
    }
    tried = 0
    for kind, (name, value) in good.items():
        variants = [w for w in weird] + [{"0": w} for w in weird] + [[w] for w in weird]
        items = value.values() if isinstance(value, dict) else value
        for container in items:
            if isinstance(container, list):  # COCO's lists of entries
                container = container[0]
            for key in container:
                variants += [_replace(value, key, w) for w in weird]
        for variant in variants:
            path = _json(tmp_path / name, variant)
            for strict in (True, False):
                tried += 1
                try:
                    loaded = load_dataset(path, kind=kind, image_root=IMAGES, strict=strict)
                except DataError as error:
                    assert error.path == str(path) and error.problem
                    continue
                assert loaded.report.loaded == len(loaded)
                assert all(isinstance(problem, str) and problem for _, problem in loaded.report.skipped)
    assert tried > 500


def _replace(value, key, replacement):
    """A deep copy of `value` with every dict entry named `key` set to `replacement`."""
    if isinstance(value, dict):
        return {k: replacement if k == key else _replace(v, key, replacement) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, key, replacement) for v in value]
    return value


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_command_takes_threads(prog):
    """--threads N parses on every command (its value reaches the run), and 0 is refused."""
    module = {"probe-layers": probe_layers, "finetune-layers": finetune_layers, "evaluate-negation": evaluate_negation,
              "ablate-layers": ablate_layers, "build-embedded": build_embedded, "make-negations": make_negations}[prog]
    assert module.PROG == prog
    required = {"finetune-layers": ["--layers", "0", "--out", "x"], "evaluate-negation": ["--out", "x"],
                "ablate-layers": ["--out", "x"], "probe-layers": ["--out", "x"],
                "make-negations": ["--data", "x.json", "--out", "x.csv"]}.get(prog, [])
    parser = module.build_parser()
    assert parser.parse_args(required + ["--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args(required + ["--threads", "0"])


# --- loaders: files with no rows, numbers outside their documented range (issue 28) ---------------------------

def _ccneg_pt(path: Path, rows: int, num_ops: dict) -> Path:
    annotations = [{"json": {"caption": f"a dog and a cat {i}"}, "sop_data": {"negative-prompt": f"a dog, no cat {i}"}}
                   for i in range(rows)]
    torch.save({"image_paths": [IMAGE] * rows, "annotations": annotations, "num_ops": num_ops}, path)
    return path


CCNEG_ROWS = [[IMAGE, f"a dog and a cat {i}", f"a dog and no cat {i}"] for i in range(4)]
# (name, kind, writer(tmp) -> path, row named by the error, what the error says); each file has one bad row
# (or entry) among good ones, so that the lenient load keeps the others and counts that one
OUT_OF_RANGE = [
    ("ccneg_num_ops_negative", "ccneg",
     lambda d: _csv(d / "k.csv", ["image_path", "caption", "negative_prompt", "num_ops"],
                    [CCNEG_ROWS[0] + ["-3"]] + [row + ["2"] for row in CCNEG_ROWS[1:]]),
     0, "field 'num_ops' should be in 1..75, found -3"),
    ("ccneg_num_ops_huge", "ccneg",
     lambda d: _csv(d / "k.csv", ["image_path", "caption", "negative_prompt", "num_ops"],
                    [row + ["1"] for row in CCNEG_ROWS[:3]] + [CCNEG_ROWS[3] + [str(10**30)]]),
     3, "field 'num_ops' should be in 1..75, found 1000000000000000000000000000000"),
    ("ccneg_pt_k_negative", "ccneg", lambda d: _ccneg_pt(d / "k.pt", 4, {-3: [0], 1: [1, 2, 3]}),
     0, "num_ops: K -3 (the predicate-object pairs of the caption) should be in 1..75"),
    ("ccneg_pt_k_huge", "ccneg", lambda d: _ccneg_pt(d / "k.pt", 4, {1: [0, 1, 3], 10**30: [2]}), 2,
     "should be in 1..75"),
    ("ccneg_pt_k_twice", "ccneg", lambda d: _ccneg_pt(d / "k.pt", 4, {1: [0, 1, 2], 2: [3, 1]}), 1,
     "num_ops lists this row under two K (1 and 2)"),
    ("ccneg_pt_index_outside", "ccneg", lambda d: _ccneg_pt(d / "k.pt", 4, {1: [0, 1, 2, 3], 2: [500]}), "num_ops[2]",
     "1 row index(es) that are no row of the file's 4 (0..3): 500"),
    ("valse_votes", "valse_existence",
     lambda d: _json(d / "existence.json", {str(i): {"caption": f"a cat {i}", "foil": f"no cat {i}",
                                                     "image_file": IMAGE,
                                                     "mturk": {"caption": 5 if i == 1 else 3, "foil": 0, "other": 0}}
                                            for i in range(3)}),
     "1", "field 'mturk.caption' counts the 3 annotators who judged the caption valid: it should be one of 0..3"),
    ("retrieval_image_id", "negbench_retrieval",
     lambda d: _csv(d / "ret.csv", RETRIEVAL_HEADER, [["['cat']", "['dog']", IMAGE, str(i - 1), f"['a cat {i}']"]
                                                       for i in range(3)]),
     0, "field 'image_id' should be in >= 0, found -1"),
    ("coco_negative_box", "coco_instances",
     lambda d: _json(d / "instances_x.json", {"images": [{"id": 1, "file_name": IMAGE}],
                                              "categories": [{"id": 1, "name": "cat"}],
                                              "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]},
                                                              {"image_id": 1, "category_id": 1,
                                                               "bbox": [0, 0, -5, 5]}]}),
     1, "bbox [x, y, width, height] should hold no negative value"),
    ("negrefcocog_negative_corner", "negrefcocog",
     lambda d: _json(d / "NegRefCOCOg.json", [{"image": IMAGE, "phrase": f"the cat {i} that is not black",
                                               "ref_bbox": [-4 if i else 0, 0, 5, 5],
                                               "bbox_list": [[-4 if i else 0, 0, 5, 5], [1, 1, 3, 3]]}
                                              for i in range(2)]),
     1, "bbox_list[0] starts outside the image (a negative corner)"),
]


@pytest.mark.parametrize("name, kind, write, row, message", OUT_OF_RANGE, ids=[item[0] for item in OUT_OF_RANGE])
def test_numbers_outside_their_documented_range_are_row_problems(name, kind, write, row, message, tmp_path):
    """Strict: a DataError naming the file, the row (or the num_ops entry) and the field. Lenient: that row is
    skipped and counted with the same reason, the others load."""
    from probing.data import load_dataset
    from probing.data.records import DataError

    path = write(tmp_path)
    options = {"split": "all"} if kind == "ccneg" else {}
    with pytest.raises(DataError) as error:
        load_dataset(path, kind=kind, image_root=IMAGES, strict=True, **options)
    assert error.value.path == str(path) and str(error.value.row) == str(row) and message in error.value.problem
    loaded = load_dataset(path, kind=kind, image_root=IMAGES, strict=False, **options)
    assert [(str(where), message in why) for where, why in loaded.report.skipped] == [(str(row), True)]
    assert len(loaded) >= 1 and loaded.report.loaded == len(loaded)
    if kind == "ccneg":  # the rows kept have the K the file gives them
        assert all(example.k in (1, 2) for example in loaded)


NO_ROWS = [
    ("ccneg_header_only", "ccneg", lambda d: _csv(d / "c.csv", ["image_path", "caption", "negative_prompt"], []),
     "the file holds no rows: it has a header and nothing below it"),
    ("ccneg_header_and_blank_lines", "ccneg",
     lambda d: (d / "c.csv").write_text("image_path,caption,negative_prompt\n\n \n") and d / "c.csv", "holds no rows"),
    ("ccneg_pt_empty", "ccneg", lambda d: _ccneg_pt(d / "c.pt", 0, {}), "holds no rows: image_paths and annotations"),
    ("mcq_header_only", "negbench_mcq", lambda d: _csv(d / "m.csv", MCQ_HEADER, []), "holds no rows"),
    ("retrieval_header_only", "negbench_retrieval", lambda d: _csv(d / "r.csv", RETRIEVAL_HEADER, []), "holds no rows"),
    ("sugarcrepe_empty", "sugarcrepe", lambda d: _json(d / "add_obj.json", {}), "holds no items"),
    ("valse_empty", "valse_existence", lambda d: _json(d / "existence.json", {}), "holds no items"),
    ("negrefcocog_empty", "negrefcocog", lambda d: _json(d / "NegRefCOCOg.json", []), "holds no entries"),
    ("coco_captions_empty", "coco_captions",
     lambda d: _json(d / "captions_x.json", {"images": [{"id": 1, "file_name": IMAGE}], "annotations": []}),
     "holds no rows: its list 'annotations' is empty"),
    ("coco_instances_empty", "coco_instances",
     lambda d: _json(d / "instances_x.json", {"images": [{"id": 1, "file_name": IMAGE}], "annotations": [],
                                              "categories": [{"id": 1, "name": "cat"}]}),
     "holds no rows: its list 'annotations' is empty"),
    ("coco_image_width", "coco_instances",
     lambda d: _json(d / "instances_x.json", {"images": [{"id": 1, "file_name": IMAGE, "width": 0, "height": 5}],
                                              "categories": [{"id": 1, "name": "cat"}],
                                              "annotations": [{"image_id": 1, "category_id": 1,
                                                               "bbox": [0, 0, 1, 1]}]}),
     "image 'width' should be > 0, found 0"),
]


@pytest.mark.parametrize("name, kind, write, message", NO_ROWS, ids=[item[0] for item in NO_ROWS])
def test_files_that_hold_nothing_to_load_are_file_errors(name, kind, write, message, tmp_path):
    """A header (or an empty container) with no rows is a file-level DataError in both modes, like an empty
    file: loading it as zero records would pass for a successful load."""
    from probing.data import load_dataset
    from probing.data.records import DataError

    path = write(tmp_path)
    for strict in (True, False):
        with pytest.raises(DataError) as error:
            load_dataset(path, kind=kind, image_root=IMAGES, strict=strict)
        assert error.value.path == str(path) and message in error.value.problem


def test_a_warning_while_a_command_runs_is_one_line_naming_the_command(tmp_path):
    """A warning the toolkit raises while a command runs (here: an interrupted write left a runs file's last line
    cut short) prints as one line, "<command>: warning: ...", not Python's two-line form with the source line; run
    in a fresh interpreter, where Python's default filters and printing apply (pytest records warnings instead)."""
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"variant": "frozen", "seed": 0, "metrics": {"scope": 0.5}}\n{"variant": "lay', encoding="utf-8")
    script = ("import sys\nfrom analysis.ablation.runs import load_runs\nfrom analysis.cli.execution import run\n"
              f"sys.exit(run('ablate-layers', lambda: len(load_runs({str(runs)!r})) - 1))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # the complete run was read, the cut line dropped
    lines = done.stderr.splitlines()  # (a library's own import-time warning, elsewhere, may stand beside it)
    assert (f"ablate-layers: warning: {runs}: ignoring an incomplete last line (an interrupted write); that run "
            "will be redone") in lines
    assert not any("UserWarning" in line or "warnings.warn" in line for line in lines), lines  # not the 2-line form
