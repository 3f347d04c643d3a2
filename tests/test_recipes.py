"""The anchors' training setups: recipes as files, a second data source in the same step, NegBench MCQ
items as training data, weight decay on every parameter, a constant schedule, CoN-CLIP's freezing set.
Losses of a step are checked against the formulas computed a second way on plainly encoded batches."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from finetune.losses import negbench_mcq_loss, omni_absence_loss, omni_presence_loss
from finetune.plan import LayerPlan
from finetune.recipe import RecipeError, load_recipe, recipe_names
from finetune.train import DataOrder, TrainConfig, Trainer, build_optimizer, lr_factor
from probing.clip.loading import load_clip
from probing.data import load_negbench_mcq
from probing.synthetic.world import SyntheticWorld, WorldConfig

RECIPES = ("conclip", "omni_negclip", "negationclip", "negbench", "tripletclip", "scope")
MCQ_FILE = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import tiny_config

    path = tmp_path_factory.mktemp("cfg") / "tiny-recipes.json"
    path.write_text(json.dumps(tiny_config(layers=3)))
    return path


def fresh(tiny):
    torch.manual_seed(0)
    return load_clip(str(tiny))


def world_examples(n: int, seed: int):
    return SyntheticWorld(WorldConfig(image_size=32), seed=0).examples(n, "train", seed=seed)


@torch.no_grad()
def images_of(model, preprocess, images):
    from PIL import Image

    pil = [Image.fromarray(i) if not isinstance(i, str) else Image.open(i).convert("RGB") for i in images]
    return F.normalize(model.encode_image(torch.stack([preprocess(p) for p in pil])), dim=-1)


def texts_of(model, tokenizer, texts):
    return F.normalize(model.encode_text(tokenizer(list(texts))), dim=-1)  # full length, no trimming


PLAN = LayerPlan(blocks=[0, 1], train_embeddings=True, train_projection=True, train_logit_scale=True)


# --- the trainer -------------------------------------------------------------------------------------

def test_second_source_adds_its_weighted_loss_on_its_own_batches(tiny, tmp_path):
    """Omni-NegCLIP's pairing: presence loss on one batch, absence loss on another batch, same step."""
    model, preprocess, tokenizer = fresh(tiny)
    first, second = world_examples(12, seed=0), world_examples(10, seed=1)
    config = TrainConfig(
        loss="omni_presence",
        second_loss="omni_absence",
        second_weight=0.5,
        second_loss_kwargs={"margin": 0.9, "lambda_t": 2.0},
        steps=2,
        batch_size=6,
        second_batch_size=5,
        warmup_steps=1,
        lr=1e-3,
        clip_grad_norm=None,
        out_dir=str(tmp_path / "run"),
        progress=False,
        tensorboard=False,
    )
    trainer = Trainer(model, tokenizer, preprocess, first, PLAN, config, second)
    # the second way: the batches of step 1 drawn by their orders (the second source has its own), encoded plainly
    one = [first[i] for i in DataOrder(12, 6, 0).batch(0)[1].tolist()]
    two = [second[i] for i in DataOrder(10, 5, 0, stream=1).batch(0)[1].tolist()]
    assert DataOrder(10, 5, 0, stream=1).batch(0)[1].tolist() != DataOrder(10, 5, 0).batch(0)[1].tolist()
    with torch.no_grad():
        scale = model.logit_scale.exp()
        presence = omni_presence_loss(images_of(model, preprocess, [e.image for e in one]),
                                      texts_of(model, tokenizer, [e.caption for e in one]),
                                      texts_of(model, tokenizer, [e.presence_negated for e in one]), scale=scale)
        absence = omni_absence_loss(images_of(model, preprocess, [e.image for e in two]),
                                    texts_of(model, tokenizer, [e.caption for e in two]),
                                    texts_of(model, tokenizer, [e.absence_negated for e in two]),
                                    scale=scale, margin=0.9, lambda_t=2.0)
    metrics = trainer.train_step()
    assert metrics["loss_second"] == pytest.approx(absence.item(), rel=1e-4)
    assert metrics["loss"] == pytest.approx(presence.item() + 0.5 * absence.item(), rel=1e-4)
    assert metrics["step"] == 1 and metrics["epoch"] == 0


def test_mcq_items_train_with_negbench_loss_as_second_source(tiny, tmp_path, test_data):
    """NegBench: 0.99 x a contrastive loss + 0.01 x the MCQ loss on a batch of MCQ items (the real CSV)."""
    model, preprocess, tokenizer = fresh(tiny)
    items = list(load_negbench_mcq(test_data / MCQ_FILE, test_data / "coco_mini/val2017", strict=False))[:8]
    examples = world_examples(8, seed=0)
    config = TrainConfig(loss="negationclip", loss_weight=0.99, second_loss="negbench_mcq", second_weight=0.01,
                         steps=1, batch_size=4, warmup_steps=0, out_dir=str(tmp_path / "run"), progress=False,
                         tensorboard=False)
    trainer = Trainer(model, tokenizer, preprocess, examples, PLAN, config, items)
    chosen = [items[i] for i in DataOrder(8, 4, 0, stream=1).batch(0)[1].tolist()]
    with torch.no_grad():
        options = texts_of(model, tokenizer, [c for item in chosen for c in item.captions]).view(4, 4, -1)
        mcq = negbench_mcq_loss(images_of(model, preprocess, [item.image for item in chosen]), options,
                                torch.tensor([item.correct for item in chosen]), scale=model.logit_scale.exp())
    metrics = trainer.train_step()
    assert metrics["loss_second"] == pytest.approx(mcq.item(), rel=1e-4)
    # MCQ items where the loss needs negation examples, and the reverse, are refused with the row named
    other, _, _ = fresh(tiny)
    with pytest.raises(ValueError, match="MCQ items"):
        Trainer(other, tokenizer, preprocess, examples, PLAN,
                TrainConfig(loss="negbench_mcq", steps=1, batch_size=4, out_dir=str(tmp_path / "bad"), progress=False,
                            tensorboard=False))


def test_decay_on_every_parameter_and_a_constant_schedule(tiny):
    from finetune.freezing import apply_plan

    model, _, _ = fresh(tiny)
    apply_plan(model, PLAN, verbose=False)
    everything = build_optimizer(model, PLAN, TrainConfig(lr=1e-4, weight_decay=0.5, decay="all"))
    assert not any(group["name"].endswith("/no_decay") for group in everything.param_groups)
    assert {group["weight_decay"] for group in everything.param_groups} == {0.5}
    logit = next(g for g in everything.param_groups if g["name"] == "logit_scale")
    assert logit["params"][0] is model.logit_scale  # the logit scale decays too, as in torch's plain AdamW
    matrices = build_optimizer(model, PLAN, TrainConfig(lr=1e-4, weight_decay=0.5))
    assert next(g for g in matrices.param_groups if g["name"] == "logit_scale/no_decay")["weight_decay"] == 0.0
    assert [lr_factor(s, warmup_steps=0, total_steps=5, schedule="constant") for s in range(5)] == [1.0] * 5
    assert [lr_factor(s, warmup_steps=2, total_steps=5, schedule="constant") for s in range(3)] == [0.5, 1.0, 1.0]


def test_precision_settings(tiny, tmp_path):
    model, preprocess, tokenizer = fresh(tiny)
    base = dict(steps=1, batch_size=4, out_dir=str(tmp_path / "run"), progress=False, tensorboard=False, device="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(model, tokenizer, preprocess, world_examples(8, 0), PLAN, TrainConfig(precision="fp8", **base))
    trainer = Trainer(model, tokenizer, preprocess, world_examples(8, 0), PLAN, TrainConfig(precision="fp16", **base))
    # on the CPU everything runs in float32: no autocast, no loss scaling (the GPU check runs fp16 with its scaler)
    assert trainer.autocast is None and not trainer.scaler.is_enabled()


def test_conclip_setup_trains_the_logit_scale():
    plan = LayerPlan.whole_text_tower(12)
    assert plan.blocks == list(range(12)) and plan.train_logit_scale
    assert plan.train_embeddings and plan.train_ln_final and plan.train_projection


# --- recipes ---------------------------------------------------------------------------------------

def test_every_recipe_is_a_file_with_its_sources_and_known_settings():
    from analysis.cli.finetune_layers import build_parser

    assert set(recipe_names()) == set(RECIPES)
    dests = set(vars(build_parser().parse_args(["--out", "x", "--layers", "0"])))
    for name in RECIPES:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.source and recipe.summary
        assert set(recipe.settings) <= dests, set(recipe.settings) - dests
        for key in (
            "lr",
            "betas",
            "eps",
            "weight_decay",
            "decay",
            "batch_size",
            "precision",
            "clip_grad_norm",
            "layers",
        ):
            assert key in recipe.settings, (name, key)
        assert "epochs" in recipe.settings or "steps" in recipe.settings
    assert load_recipe("omni_negclip").settings["margin"] == 0.9
    assert "logit_scale" in load_recipe("conclip").settings["extras"].split(",")
    assert "ln_final" not in load_recipe("negationclip").settings["extras"].split(",")
    with pytest.raises(RecipeError, match="unknown recipe"):
        load_recipe("nonesuch")


def test_recipe_files_by_path_and_their_errors(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"name": "mine", "summary": "s", "source": "me", "settings": {"lr": 0.1}}))
    assert load_recipe(mine).settings == {"lr": 0.1}
    mine.write_text(json.dumps({"name": "mine", "settings": {}}))
    with pytest.raises(RecipeError, match="missing summary, source"):
        load_recipe(mine)
    mine.write_text("{not json")
    with pytest.raises(RecipeError, match="not valid JSON"):
        load_recipe(mine)


def run_cli(argv):
    from analysis.cli.finetune_layers import main

    return main(argv)


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_trains_a_few_steps_on_the_small_model(name, small_embedded, test_data, tmp_path, capsys):
    out = tmp_path / name
    argv = ["--recipe", name, "--model", "embedded:small", "--steps", "2", "--batch-size", "8",
            "--second-batch-size", "8", "--train-examples", "24", "--warmup-steps", "1", "--log-every", "1",
            "--no-progress", "--no-tensorboard", "--device", "cpu", "--out", str(out)]
    if name == "negbench":  # its second source is MCQ items: the real NegBench file, rows with an image
        argv += ["--second-data", str(test_data / MCQ_FILE), "--second-image-root",
                 str(test_data / "coco_mini/val2017"), "--skip-bad-rows"]
    assert run_cli(argv) == 0
    assert f"recipe {name}:" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    recipe = load_recipe(name).settings
    config = run["config"]
    # the recipe's settings reached the trainer; the command line's overrode them
    assert config["lr"] == recipe["lr"] and config["precision"] == recipe["precision"]
    assert config["decay"] == recipe["decay"] and config["weight_decay"] == recipe["weight_decay"]
    assert config["betas"] == [float(b) for b in recipe["betas"].split(",")] and config["eps"] == recipe["eps"]
    assert config["steps"] == 2 and config["epochs"] is None and config["batch_size"] == 8
    assert config["clip_grad_norm"] == (recipe["clip_grad_norm"] or None)
    extras = recipe["extras"].split(",")
    assert {part: run["plan"][f"train_{part}"] for part in ("embeddings", "ln_final", "projection", "logit_scale")} \
        == {part: part in extras for part in ("embeddings", "ln_final", "projection", "logit_scale")}
    assert run["plan"]["blocks"] == (list(range(12)) if recipe["layers"] == "all" else [0, 1, 2, 3, 4, 5])
    assert config["second_loss"] == recipe.get("second_loss")
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and (out / "model.safetensors").is_file()
    if name == "omni_negclip":
        assert config["loss"] == "omni_presence" and config["second_loss_kwargs"] == {
            "lambda_o": 1.0, "lambda_t": 1.0, "margin": 0.9}
    if name == "scope":
        assert config["loss_kwargs"] == {"conclip": 0.5, "negationclip": 0.0, "clip": 1.0, "tripletclip": 0.0,
                                         "omni": 0.0, "absence_vs_presence": 0.0, "scope_pair": 1.0, "terms": [1]}


def test_command_line_overrides_the_recipe(small_embedded, tmp_path, capsys):
    out = tmp_path / "over"
    plan = tmp_path / "plan.json"
    LayerPlan([0, 1]).save(plan)
    argv = ["--recipe", "scope", "--model", "embedded:small", "--plan", str(plan), "--epochs", "0.5", "--lr", "1e-3",
            "--loss", "mix", "--weights", "omni=1,clip=1", "--margin", "0.5", "--lambda-t", "2", "--batch-size", "8",
            "--train-examples", "32", "--no-progress", "--no-tensorboard", "--device", "cpu", "--out", str(out)]
    assert run_cli(argv) == 0
    run = json.loads((out / "run.json").read_text())
    # --epochs replaces the recipe's 300 steps; --plan replaces its layers and extras; the mix's omni part
    # takes Omni-NegCLIP's options
    assert run["config"]["steps"] is None and run["config"]["epochs"] == 0.5 and run["total_steps"] == 2
    assert run["plan"]["blocks"] == [0, 1] and not run["plan"]["train_embeddings"]
    assert run["config"]["lr"] == 1e-3
    kwargs = run["config"]["loss_kwargs"]
    assert kwargs["omni"] == 1.0 and kwargs["omni_margin"] == 0.5 and kwargs["omni_lambda_t"] == 2.0
    assert kwargs["terms"] == [1] and kwargs["scope_pair"] == 0.0


def test_a_flag_counts_as_typed_however_argparse_read_it(tmp_path, capsys):
    """'The command line wins over the recipe' must hold for an abbreviated flag too: --epoch (argparse reads it as
    --epochs) used to leave the recipe's 300 steps in place, which then won silently."""
    from analysis.cli.finetune_layers import build_parser, parse, resolve_splits

    plan = tmp_path / "plan.json"
    LayerPlan([3]).save(plan)
    for epochs in (["--epochs", "0.5"], ["--epoch", "0.5"], ["--epo=0.5"]):
        args = parse(["--recipe", "scope", "--out", "x", *epochs], build_parser())
        assert args.epochs == 0.5 and args.steps is None and "epochs" in args.typed
    args = parse(["--recipe", "scope", "--out", "x", "--pla", str(plan)], build_parser())
    assert args.layers is None and args.extras is None  # the plan file says what trains, not the recipe's 0-5
    args = parse(["--recipe", "scope", "--out", "x"], build_parser())
    assert args.steps == 300 and args.layers == "0-5" and args.typed == {"recipe", "out"}
    # a recipe's split is for the recipe's own data file: with the synthetic world it is left out, with a note;
    # the same split typed on the command line is still refused
    recipe = tmp_path / "ccneg.json"
    settings = {"loss": "clip", "split": "eval", "steps": 1, "batch_size": 4}
    recipe.write_text(json.dumps({"name": "ccneg", "summary": "s", "source": "s", "settings": settings}))
    base = ["--recipe", str(recipe), "--model", "embedded:small", "--data", "synthetic", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(base + ["--split", "eval", "--layers", "0"])
    assert exit_info.value.code == 2
    assert "--split eval picks part of a data file; the synthetic world has none" in capsys.readouterr().err
    args = parse(base, build_parser())
    assert args.split == "eval" and "split" not in args.typed
    resolve_splits(args, build_parser())
    assert args.split == "train" and args.second_split == "train"
    assert f"--recipe {recipe} sets split 'eval', which --data synthetic does not have: left out" in (
        capsys.readouterr().err)
    args = parse(base[:-4] + ["--data", "ccneg.csv", "--out", "o"], build_parser())
    resolve_splits(args, build_parser())
    assert args.split == "eval"  # the recipe's split does pick part of a data file


def test_an_overflowing_fp16_step_is_skipped_by_the_scaler_not_an_error(tiny, tmp_path):
    """The authors' amp: a scaled gradient that overflows skips the optimiser step and lowers the scale.
    (On CUDA the trainer makes this scaler itself for precision fp16; here one runs on the CPU.)"""
    model, preprocess, tokenizer = fresh(tiny)
    config = TrainConfig(loss="clip", steps=3, batch_size=4, warmup_steps=0, lr=1e-3, device="cpu",
                         out_dir=str(tmp_path / "run"), progress=False, tensorboard=False)
    trainer = Trainer(model, tokenizer, preprocess, world_examples(12, 0), PLAN, config)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # the first scaled gradient is inf
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    metrics = trainer.train_step()
    assert not torch.isfinite(torch.tensor(metrics["grad_norm"])) and torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters() if p.requires_grad)  # skipped
    assert trainer.scaler.get_scale() < 2.0 ** 127
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    trainer.train_step()  # a finite scaled gradient: the step is taken on the unscaled gradient
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters() if p.requires_grad)
    trainer.save()
    assert "scaler" in torch.load(trainer.last_checkpoint.folder / "state.pt", weights_only=False)
