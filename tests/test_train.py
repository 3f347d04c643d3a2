"""The training loop on a tiny model: resume equality, schedule, clamp, caching, trimming, accumulation, NaN stop."""
from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from finetune.checkpoint import latest_checkpoint
from finetune.losses import LOSS_SPECS, LossSpec, clip_loss
from finetune.plan import LayerPlan
from finetune.train import (
    MAX_LOGIT_SCALE,
    DataOrder,
    NonFiniteLossError,
    ResumeError,
    TrainConfig,
    Trainer,
    build_optimizer,
    lr_factor,
    train,
)
from probing.clip.loading import load_clip
from probing.data.records import DataError, NegationExample
from probing.synthetic.world import SyntheticWorld, WorldConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import tiny_config

    path = tmp_path_factory.mktemp("cfg") / "tiny-train.json"
    path.write_text(json.dumps(tiny_config(layers=3)))
    return path


def fresh(tiny):
    torch.manual_seed(0)
    return load_clip(str(tiny))


def make_examples(n: int, *, seed: int = 0, distractors: bool = True) -> list[NegationExample]:
    """Examples of the synthetic negation world (32x32 images), optionally without distractor images."""
    examples = SyntheticWorld(WorldConfig(image_size=32), seed=0).examples(n, "train", seed=seed)
    if not distractors:
        for example in examples:
            example.distractor_image = None
    return examples


def config(tmp_path, name="run", **overrides) -> TrainConfig:
    settings = dict(
        loss="omni",
        lr=1e-3,
        warmup_steps=2,
        steps=6,
        batch_size=6,
        grad_accum=2,
        out_dir=str(tmp_path / name),
        model_name="tiny-train",
        log_every=1,
        ckpt_every=100,
        progress=False,
        tensorboard=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


PLAN = LayerPlan(blocks=[0, 1], train_embeddings=True, train_projection=True, train_logit_scale=True)


def run(tiny, examples, cfg, plan=PLAN):
    model, preprocess, tokenizer = fresh(tiny)
    result = train(model, tokenizer, preprocess, examples, plan, cfg)
    return model, result


def rows(out_dir):
    with (out_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


# --- resume ---------------------------------------------------------------------------------------------

def test_interrupted_and_resumed_run_equals_uninterrupted_run(tiny, tmp_path):
    examples = make_examples(15)  # 2 batches per epoch: the 6 steps cross epochs, reshuffling each time
    whole, whole_result = run(tiny, examples, config(tmp_path, "whole", tensorboard=True))
    _, first = run(tiny, examples, config(tmp_path, "parts", stop_at=3))
    assert first.step == 3 and first.model_path is None and first.checkpoint.step == 3
    assert first.checkpoint.model_path.suffix == ".safetensors"
    resumed, result = run(tiny, examples, config(tmp_path, "parts", resume=True))
    assert result.step == 6
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    columns = ("step", "epoch", "loss", "lr", "logit_scale", "grad_norm")
    assert [[r[c] for c in columns] for r in rows(tmp_path / "parts")] == \
           [[r[c] for c in columns] for r in rows(tmp_path / "whole")]
    assert len(rows(tmp_path / "whole")) == 6 and rows(tmp_path / "whole")[-1]["epoch"] != "0"
    assert list((tmp_path / "whole" / "tensorboard").glob("events.out.tfevents.*"))
    # the exported weights load back with load_clip
    reloaded, _, _ = load_clip(str(tiny), pretrained=str(whole_result.model_path))
    for a, b in zip(whole.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_old_checkpoints(tiny, tmp_path):
    examples = make_examples(12)
    run(tiny, examples, config(tmp_path, steps=4, stop_at=2, loss="clip"))
    with pytest.raises(ResumeError, match="lr"):
        run(tiny, examples, config(tmp_path, steps=4, loss="clip", resume=True, lr=5e-4))
    with pytest.raises(ResumeError, match="--resume"):
        run(tiny, examples, config(tmp_path, steps=4, loss="clip"))


# --- schedule, clamp, lr weights --------------------------------------------------------------------

def test_warmup_then_cosine():
    factors = [lr_factor(s, warmup_steps=4, total_steps=12) for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert (
        factors[4] == 1.0
        and factors[8] == pytest.approx(0.5)
        and factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    )
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_logged_lr_follows_schedule_and_logit_scale_is_clamped(tiny, tmp_path):
    model, preprocess, tokenizer = fresh(tiny)
    with torch.no_grad():
        model.logit_scale.fill_(5.0)  # t = 148 > 100
    cfg = config(tmp_path, loss="clip", steps=4, warmup_steps=2, grad_accum=1)
    train(model, tokenizer, preprocess, make_examples(12), PLAN, cfg)
    assert model.logit_scale.item() <= MAX_LOGIT_SCALE
    logged = rows(tmp_path / "run")
    assert [float(r["lr"]) for r in logged] == pytest.approx(
        [1e-3 * lr_factor(s, warmup_steps=2, total_steps=4) for s in range(4)]
    )
    assert all(float(r["logit_scale"]) <= 100.0 + 1e-4 for r in logged)


def test_per_block_learning_rate_weights(tiny):
    model, _, _ = fresh(tiny)
    plan = LayerPlan(blocks=[0, 2], train_ln_final=True, lr_weights={0: 0.5, 2: 3.0})
    from finetune.freezing import apply_plan

    apply_plan(model, plan, verbose=False)
    optimizer = build_optimizer(model, plan, TrainConfig(lr=1e-4, weight_decay=0.2))
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["blocks.0"]["lr"] == pytest.approx(0.5e-4) and groups["blocks.0/no_decay"]["lr"] == pytest.approx(
        0.5e-4
    )
    assert groups["blocks.2"]["lr"] == pytest.approx(3e-4) and groups["ln_final/no_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["blocks.0"]["weight_decay"] == 0.2 and groups["blocks.0/no_decay"]["weight_decay"] == 0.0
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}


# --- caching, trimming, accumulation ----------------------------------------------------------------

def test_images_encoded_once_and_text_trimmed(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_NEGATION_CACHE", str(tmp_path / "cache"))  # no image features cached yet
    model, preprocess, tokenizer = fresh(tiny)
    image_batches, text_lengths = [], []
    model.visual.register_forward_hook(lambda module, args, out: image_batches.append(args[0].shape[0]))
    model.token_embedding.register_forward_hook(lambda module, args, out: text_lengths.append(args[0].shape[1]))
    examples = make_examples(12)
    examples[0].caption += " on a very big table in a very big room"  # batches without it run shorter
    cfg = config(tmp_path, loss="conclip", steps=5, image_batch_size=5)
    train(model, tokenizer, preprocess, examples, PLAN, cfg)
    # images and distractor images: 12 each, in batches of 5, once for the whole run (10 micro-batches)
    assert image_batches == [5, 5, 2, 5, 5, 2]
    texts = [e.caption for e in examples] + [e.presence_negated for e in examples]
    longest = int(tokenizer(texts).argmax(-1).max()) + 1  # up to EOT
    assert len(text_lengths) == 10 and max(text_lengths) == longest < tokenizer.context_length
    assert min(text_lengths) < longest
    # a second run with the same image tower (here: the same model, as a resume or an ablation run has) reads
    # every feature from the disk cache and encodes nothing
    image_batches.clear()
    train(model, tokenizer, preprocess, examples, PLAN, config(tmp_path, name="again", loss="conclip", steps=5))
    assert image_batches == []


def test_accumulated_gradient_equals_naive_full_length_gradient(tiny, tmp_path):
    """Cached image features + trimmed text + accumulation give the gradient of the plain formula."""
    model, preprocess, tokenizer = fresh(tiny)
    examples = make_examples(12)
    cfg = config(tmp_path, loss="clip", batch_size=4, grad_accum=3, clip_grad_norm=None)
    trainer = Trainer(model, tokenizer, preprocess, examples, PLAN, cfg)
    model.zero_grad()
    for k in range(3):  # the plain formula first, before the trainer's step changes the weights
        _, indices = trainer.sources[0].order.batch(k)
        batch = [examples[i] for i in indices.tolist()]
        pixels = torch.stack([preprocess(_pil(e.image)) for e in batch])
        with torch.no_grad():
            image = F.normalize(model.encode_image(pixels), dim=-1)
        text = F.normalize(model.encode_text(tokenizer([e.caption for e in batch])), dim=-1)  # full 32 tokens
        (clip_loss(image, text, scale=model.logit_scale.exp()) / 3).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    captured = {}
    trainer.optimizer.register_step_pre_hook(lambda *_: captured.update(
        {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    trainer.train_step()
    assert captured.keys() == expected.keys()
    for name, grad in expected.items():
        # float32 summation order differs (trimmed vs full length): ~1e-6 noise on near-cancelling sums
        torch.testing.assert_close(captured[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def _pil(array):
    from PIL import Image

    return Image.fromarray(array)


# --- failures ---------------------------------------------------------------------------------------------

def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_on_fifth_call(image, text, *, scale):
        calls["n"] += 1
        loss = clip_loss(image, text, scale=scale)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setitem(LOSS_SPECS, "nan_test", LossSpec(nan_on_fifth_call, ("caption",)))
    cfg = config(tmp_path, loss="nan_test", steps=6, grad_accum=1, ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 5: loss is nan.*step_0000004 \(step 4\)"):
        run(tiny, make_examples(12), cfg)
    assert latest_checkpoint(tmp_path / "run").step == 4
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert [r["step"] for r in rows(tmp_path / "run")] == ["1", "2", "3", "4"]


def test_bad_data_gives_the_loaders_errors(tiny, tmp_path):
    examples = make_examples(8)
    examples[3].presence_negated = None
    examples[3].row, examples[3].source = 17, "mydata.csv"
    with pytest.raises(DataError, match="mydata.csv, row 17: .*presence_negated"):
        run(tiny, examples, config(tmp_path, loss="conclip", steps=1))
    with pytest.raises(DataError, match="tripletclip_loss needs a distractor image; 8 of 8"):
        run(tiny, make_examples(8, distractors=False), config(tmp_path, loss="tripletclip", steps=1))
    broken = make_examples(8)
    broken[2].image = str(tmp_path / "missing.png")
    with pytest.raises(DataError, match="image not found"):
        run(tiny, broken, config(tmp_path, loss="clip", steps=1))
    with pytest.raises(ValueError, match="fewer than one batch"):
        run(tiny, make_examples(4), config(tmp_path, loss="clip", steps=1))


def test_conclip_without_distractors_trains_two_term_form(tiny, tmp_path, capsys):
    _, result = run(
        tiny, make_examples(12, distractors=False), config(tmp_path, loss="conclip", steps=2, progress=True)
    )
    assert result.step == 2 and math.isfinite(result.loss)
    err = capsys.readouterr().err
    assert "loss=" in err and "samples_s=" in err  # the progress bar shows loss and throughput


# --- the finetune-layers command ---------------------------------------------------------------------------

def test_cli_help_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, analysis.cli.finetune_layers as cli\n"
            "cli.build_parser().format_help()\n"
            "heavy = [m for m in ('torch', 'open_clip', 'transformer_lens') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_cli_loss_choices_are_the_registry():
    from analysis.cli.finetune_layers import LOSS_NAMES
    from finetune.losses import LOSSES

    assert set(LOSS_NAMES) == set(LOSSES)


def test_cli_mix_weights_name_every_part_and_default_the_rest_to_zero():
    import argparse
    import inspect

    from analysis.cli.arguments import _mix_weights
    from finetune.losses import MIX_PARTS as LOSS_MIX_PARTS
    from finetune.losses import negation_mix_loss
    from finetune.vocabulary import MIX_PARTS

    assert MIX_PARTS == LOSS_MIX_PARTS
    assert set(MIX_PARTS) <= set(inspect.signature(negation_mix_loss).parameters)
    weights = _mix_weights("scope_pair=2, clip=1", argparse.ArgumentParser())
    assert weights == {**dict.fromkeys(MIX_PARTS, 0.0), "scope_pair": 2.0, "clip": 1.0}


def test_cli_trains_on_the_synthetic_world(tiny, tmp_path, capsys):
    from analysis.cli.finetune_layers import main

    out = tmp_path / "cli"
    args = ["--model", str(tiny), "--data", "synthetic", "--train-examples", "24", "--loss", "omni", "--lam", "0.5",
            "--layers", "0-1", "--extras", "ln_final", "--steps", "3", "--batch-size", "8", "--warmup-steps", "1",
            "--lr", "1e-4", "--log-every", "1", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "blocks.0" in printed and "done: 3 steps" in printed
    assert (out / "model.safetensors").is_file() and len(rows(out)) == 3
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["config"]["loss_kwargs"] == {"lam": 0.5} and run_info["plan"]["blocks"] == [0, 1]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert main(args + ["--resume"]) == 0  # finished run: resume has nothing left to do
    assert "nothing left to train" in capsys.readouterr().out
    # a warm-up longer than the run: the learning rate peaks at 3/4 of --lr, said before training
    assert main([*args[:-1], str(tmp_path / "short"), "--warmup-steps", "4"]) == 0
    assert ("finetune-layers: warning: --warmup-steps 4 is more than --steps 3: the learning rate never reaches --lr "
            "(it peaks at 75% of it, on the last step)") in capsys.readouterr().err.splitlines()


def test_cli_trains_negbench_s_mcq_loss_on_the_synthetic_world_s_multiple_choice(tiny, tmp_path):
    """--data / --second-data synthetic with an MCQ loss read the world's four-way multiple-choice items
    (SyntheticWorld.mcq_items): as the second source (NegBench's recipe) or the only one. The logged loss of the
    first step is the MCQ loss of the batch that step draws, computed here from the items directly."""
    from analysis.cli.finetune_layers import main
    from probing.models.factory import create_model
    from probing.synthetic.record import default_world
    from tests.conftest import first_batch_mcq_loss

    bundle = create_model(str(tiny))
    world = bundle.world if bundle.world_recorded else default_world(bundle.world.config.image_size, seed=0)

    def mcq_loss(seed: int, stream: int) -> float:
        return first_batch_mcq_loss(bundle, world.mcq_items(8, "train", seed=seed), 4, 0, stream)

    common = ["--model", str(tiny), "--data", "synthetic", "--train-examples", "8", "--layers", "0", "--steps", "1",
              "--batch-size", "4", "--warmup-steps", "0", "--lr", "1e-4", "--log-every", "1", "--no-progress",
              "--no-tensorboard"]
    assert main(common + ["--second-data", "synthetic", "--second-loss", "negbench_mcq", "--second-train-examples",
                          "8", "--out", str(tmp_path / "second")]) == 0
    # the second source's items are drawn with --data-seed + 1, its batches from their own stream
    assert float(rows(tmp_path / "second")[0]["loss_second"]) == pytest.approx(mcq_loss(1, 1), rel=1e-3)
    assert main(common + ["--loss", "negbench_mcq", "--out", str(tmp_path / "first")]) == 0
    assert float(rows(tmp_path / "first")[0]["loss"]) == pytest.approx(mcq_loss(0, 0), rel=1e-3)


@pytest.mark.parametrize("extra, message", [
    (["--layers", "zero"], "bad layer list"),
    (["--layers", "0", "--lam", "2"], "--lam do(es) not apply to --loss conclip"),
    (["--layers", "0", "--terms", "4"], "--terms must be among"),
    (["--layers", "0", "--lr", "-1"], "must be > 0"),
    (["--layers", "0", "--batch-size", "0"], "must be >= 1"),
    ([], "give one of --plan and --layers"),
    (["--layers", "0", "--plan", "p.json"], "give one of --plan and --layers"),
    (["--recipe", "nonesuch"], "unknown recipe 'nonesuch'"),
    (["--layers", "0", "--second-loss", "omni_absence"], "--second-loss omni_absence needs --second-data"),
    (["--layers", "0", "--betas", "0.9"], "--betas takes two numbers"),
])
def test_cli_bad_arguments_are_one_line_errors(tmp_path, capsys, extra, message):
    from analysis.cli.finetune_layers import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "ViT-B-32"] + extra + ["--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_default_model_is_the_shipped_embedded_model(small_embedded, tmp_path, capsys, monkeypatch):
    from analysis.cli.finetune_layers import main
    from probing.models import factory

    asked = []
    real = factory.create_model
    monkeypatch.setattr(factory, "create_model", lambda name, pretrained=None, device="cpu", seed=0: asked.append(name)
                        or real("embedded:small", seed=seed))  # the default model, at smoke-test size
    args = [
        "--layers",
        "0",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--train-examples",
        "8",
        "--no-progress",
        "--no-tensorboard",
    ]
    assert main(args + ["--out", str(tmp_path / "run")]) == 0
    assert asked == ["embedded"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["model_name"] == small_embedded[1].model
    with pytest.raises(SystemExit):
        main(args + ["--pretrained", "x.pt", "--out", str(tmp_path / "run2")])
    hint = "a checkpoint of it (a fine-tune's weights) loads as --model negclip-tiny --pretrained FILE"
    assert "--pretrained does not go with the embedded model" in (err := capsys.readouterr().err) and hint in err
    # the hint holds (shown on the smoke-test build trained above): the fine-tune's weights load under the
    # architecture's name, block 0 trained, block 1 as shipped
    architecture = small_embedded[1].model
    tuned = real(architecture, pretrained=tmp_path / "run" / "model.safetensors").model.state_dict()
    base = real("embedded:small").model.state_dict()
    block = "transformer.resblocks.{}.mlp.c_fc.weight"
    assert not torch.equal(tuned[block.format(0)], base[block.format(0)])
    assert torch.equal(tuned[block.format(1)], base[block.format(1)])


def test_cli_runtime_errors_are_one_line(tiny, tmp_path, capsys):
    from analysis.cli.finetune_layers import main

    common = ["--model", str(tiny), "--steps", "1", "--batch-size", "4", "--no-progress", "--no-tensorboard"]
    assert main(common + ["--layers", "0-7", "--train-examples", "8", "--out", str(tmp_path / "a")]) == 2
    assert "the text tower has 3 blocks" in capsys.readouterr().err
    assert main(common + ["--layers", "0", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err  # (after the warning that one step never reaches --lr past 50 warm-up steps)
    errors = [line for line in err.splitlines() if line.startswith("finetune-layers: error:")]
    assert len(errors) == 1 and "nope.jsonl" in errors[0] and "Traceback" not in err
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text('{"blocks": [0], "layers": [1]}')
    with pytest.raises(SystemExit):
        main(common + ["--plan", str(bad_plan), "--out", str(tmp_path / "c")])
    assert "unknown key(s) layers" in capsys.readouterr().err


def test_batch_losses_feed_the_gradient_norm_measurement(tiny):
    from finetune.train import batch_losses
    from probing.measure.gradnorms import relative_gradient_norms

    model, preprocess, tokenizer = fresh(tiny)
    examples = make_examples(12)
    fns = batch_losses(model, tokenizer, preprocess, examples, "clip", n_batches=3, batch_size=6, seed=1)
    assert len(fns) == 3
    first = [examples[i] for i in DataOrder(12, 6, 1).batch(0)[1].tolist()]  # the first batch of seed 1
    pixels = torch.stack([preprocess(_pil(e.image)) for e in first])
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels), dim=-1)
        text = F.normalize(model.encode_text(tokenizer([e.caption for e in first])), dim=-1)
        expected = clip_loss(image, text, scale=model.logit_scale.exp())
    torch.testing.assert_close(fns[0](model).detach(), expected, rtol=1e-5, atol=1e-6)
    rows_ = relative_gradient_norms(model, fns, loss_name="clip", progress=False)
    assert {row["layer"] for row in rows_} == {0, 1, 2} and all(row["relative_norm"] > 0 for row in rows_)


def test_cli_fine_tunes_on_the_world_the_checkpoint_records_and_passes_the_record_on(tiny, tmp_path):
    from analysis.cli.finetune_layers import main
    from probing.clip.loading import save_clip_checkpoint
    from probing.models.factory import checkpoint_world
    from probing.synthetic.record import world_metadata

    model, _, _ = fresh(tiny)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    own = SyntheticWorld(WorldConfig(image_size=size, sizes=(0.3, 0.4, 0.5), noise=0.02), seed=7)
    source = save_clip_checkpoint(model, tmp_path / "source.safetensors", model_name=tiny.stem, **world_metadata(own))
    common = ["--model", str(tiny), "--layers", "0", "--steps", "2", "--batch-size", "4", "--train-examples", "8",
              "--resumable", "--ckpt-every", "1", "--no-progress", "--no-tensorboard"]
    assert main(common + ["--pretrained", str(source), "--out", str(tmp_path / "own")]) == 0
    for written in [tmp_path / "own" / "model.safetensors", latest_checkpoint(tmp_path / "own").model_path]:
        world = checkpoint_world(written)
        assert world.config == own.config and world.seed == 7  # a 0.30-0.50 world, not the default 0.22-0.34
    # a checkpoint without a record: the default world at the model's size, recorded in the output
    plain = save_clip_checkpoint(model, tmp_path / "plain.safetensors", model_name=tiny.stem)
    assert checkpoint_world(plain) is None
    assert main(common + ["--pretrained", str(plain), "--out", str(tmp_path / "plain")]) == 0
    assert checkpoint_world(tmp_path / "plain" / "model.safetensors").config == WorldConfig(image_size=size)


# --- guards: weights after each step, settings before any ---------------------------------------------------

def _break_weights_at(trainer, step: int, damage) -> None:
    """Make the optimizer's `step`-th update damage the first trained block's weight (as a bad lr would)."""
    target = next(p for name, p in trainer.model.named_parameters() if p.requires_grad and p.ndim == 2)
    calls = {"n": 0}

    def hook(optimizer, args, kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            with torch.no_grad():
                damage(target)

    trainer.optimizer.register_step_post_hook(hook)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.view(-1)[0].fill_(float("inf")), r"after the step, 1 of \d+ trained tensors hold non-finite weights"),
    (lambda p: p.view(-1)[3].fill_(float("nan")), r"non-finite weights"),
    (lambda p: p.mul_(1e6), r"the weights exploded: .* reaches [\d.e+]+, beyond 1000"),
])
def test_broken_weights_after_a_step_stop_the_run_and_keep_the_last_finite_checkpoint(tiny, tmp_path, damage, message):
    from finetune.checkpoint import non_finite_tensors
    from probing.clip.loading import read_checkpoint

    model, preprocess, tokenizer = fresh(tiny)
    trainer = Trainer(model, tokenizer, preprocess, make_examples(12), PLAN,
                      config(tmp_path, loss="clip", steps=8, grad_accum=1, ckpt_every=2))
    _break_weights_at(trainer, 5, damage)
    with pytest.raises(NonFiniteLossError, match=message) as stopped:
        trainer.fit()
    assert "step_0000004 (step 4)" in str(stopped.value) and "stopped at step 5" in str(stopped.value)
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert checkpoint.step == 4 and not non_finite_tensors(read_checkpoint(checkpoint.model_path).state_dict)
    assert max(float(t.abs().max()) for t in read_checkpoint(checkpoint.model_path).state_dict.values()) < 100
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert [r["step"] for r in rows(tmp_path / "run")] == ["1", "2", "3", "4"]


def test_a_run_resumed_after_the_guard_stopped_it_starts_from_the_finite_checkpoint(tiny, tmp_path):
    model, preprocess, tokenizer = fresh(tiny)
    trainer = Trainer(model, tokenizer, preprocess, make_examples(12), PLAN,
                      config(tmp_path, loss="clip", steps=6, grad_accum=1, ckpt_every=2))
    _break_weights_at(trainer, 3, lambda p: p.fill_(float("inf")))
    with pytest.raises(NonFiniteLossError):
        trainer.fit()
    resumed, result = run(tiny, make_examples(12), config(tmp_path, loss="clip", steps=6, grad_accum=1, ckpt_every=2,
                                                          resume=True))
    whole, _ = run(tiny, make_examples(12), config(tmp_path, "whole", loss="clip", steps=6, grad_accum=1))
    assert result.step == 6
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides, message", [
    ({"lr": float("inf")}, "lr must be a finite number"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"lr": 1e30}, r"lr must be > 0 and <= 1"),
    ({"lr": 0.0}, "lr must be > 0"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm must be >= 0"),
    ({"clip_grad_norm": float("inf")}, "clip_grad_norm must be a finite number"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"eps": 0.0}, "eps must be > 0"),
    ({"steps": None, "epochs": float("inf")}, "epochs must be a finite number"),
    ({"steps": None, "epochs": 0.0}, "epochs must be > 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"seed": 2**40}, "seed must be at most 4294967295"),
    ({"betas": (1.0, 0.5)}, r"betas must be two numbers in \[0, 1\)"),
    ({"grad_accum": 0}, "grad_accum must be an integer >= 1"),
    ({"loss_weight": float("nan")}, "loss_weight must be a finite number"),
    ({"loss": "omni", "loss_kwargs": {"lam": float("nan")}}, "loss_kwargs: loss option lam must be a finite number"),
    ({"loss": "omni", "loss_kwargs": {"lam": -2.0}}, "loss option lam must be >= 0"),
    ({"loss": "conclip", "loss_kwargs": {"terms": [9]}}, "loss option terms must be a non-empty list"),
    ({"loss": "clip", "loss_kwargs": {"terms": [1]}}, "loss 'clip' takes no option"),
    ({"precision": "fp8"}, "precision must be one of"),
])
def test_settings_that_cannot_train_are_refused_before_anything_runs(tmp_path, overrides, message):
    from finetune.train import check_config

    with pytest.raises(ValueError, match=message):
        check_config(config(tmp_path, **overrides))
    check_config(config(tmp_path))  # the defaults of these tests pass


def test_every_file_a_run_writes_has_the_usual_permissions(tiny, tmp_path):
    """Atomic writes start from mkstemp's 0600; what they leave must have the umask's permissions, like any file."""
    import os
    import stat

    run(tiny, make_examples(12), config(tmp_path, loss="clip", steps=2, ckpt_every=1, grad_accum=1))
    mask = os.umask(0)
    os.umask(mask)
    files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"model.safetensors", "state.pt", "latest.json", "run.json", "metrics.csv"}
    assert {oct(stat.S_IMODE(path.stat().st_mode)) for path in files} == {oct(0o666 & ~mask)}


def test_a_metrics_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    from finetune.metrics_log import MetricsLog

    header = "step,epoch,loss,loss_second,lr,logit_scale,grad_norm,samples_per_s,elapsed_s\n"
    (tmp_path / "metrics.csv").write_text(header + "1,0,0.5,,0.1,10,1,5,0.1\n2,0,0.4,,0.1,10,1,5,0.2\n3,0,0.3\n")
    with pytest.warns(UserWarning, match="dropped 1 damaged row"):
        log = MetricsLog(tmp_path, start_step=3, tensorboard=False)
    log.close()
    assert [row["step"] for row in rows(tmp_path)] == ["1", "2"]
def test_text_token_budget_chunks_give_the_one_pass_loss_and_gradients(tiny, tmp_path):
    """Encoding a contrastive batch in token-budget chunks: the same loss and gradients up to float rounding."""
    from finetune.data import prepare_data
    from finetune.distributed import DistContext
    from finetune.train import batch_loss
    from probing.clip.text_tower import TextTower
    from probing.features.encode import encode_tokens

    model, preprocess, tokenizer = fresh(tiny)
    examples = make_examples(12)
    spec = LOSS_SPECS["omni"]
    data = prepare_data(model, tokenizer, preprocess, examples, spec, device=torch.device("cpu"), dist=DistContext())
    indices = DataOrder(12, 12, 0).batch(0)[1]
    tower = TextTower.from_model(model)
    tokens = torch.cat([data.tokens[name][indices] for name in spec.texts])
    lengths = tower.eot_positions(tokens) + 1
    budget = int(lengths.max()) * 5  # several chunks, each shorter than the whole batch's trimmed length
    with torch.no_grad():
        one_by_one = torch.cat([model.encode_text(tokens[i:i + 1]) for i in range(len(tokens))])  # untrimmed, unbatched
        torch.testing.assert_close(encode_tokens(tower, tokens, budget), one_by_one, atol=1e-5, rtol=0)

    def loss_and_grads(text_token_budget):
        model.zero_grad(set_to_none=True)
        loss = batch_loss(model, data, spec, indices, device=torch.device("cpu"), text_token_budget=text_token_budget)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(None)
    chunked_loss, chunked_grads = loss_and_grads(budget)
    torch.testing.assert_close(chunked_loss, loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == chunked_grads.keys() and len(grads) > 10
    for name, grad in grads.items():  # sums over other chunkings: rounding relative to the gradient's size
        assert (chunked_grads[name] - grad).norm() <= 1e-5 * grad.norm(), name

    cfg = config(tmp_path, text_token_budget=budget, steps=2, grad_accum=1)
    chunked, _ = run(tiny, make_examples(12), cfg)
    plain, _ = run(tiny, make_examples(12), config(tmp_path, "plain", steps=2, grad_accum=1))
    start, _, _ = fresh(tiny)
    # The tolerance from the magnitudes at hand. AdamW moves every weight by about lr per step, whatever the size
    # of its gradient (lr * m / (sqrt(v) + eps), with m / sqrt(v) about +-1 in the first steps): lr x steps is
    # the scale of any difference between two runs from the same start, and a run on other features or batches
    # differs by that much. Gradients that differ by float rounding barely change that step, except where a
    # gradient is itself of rounding size, near eps (the attention's key bias, whose exact gradient is 0: softmax
    # ignores a constant added to all of a query's logits): there the step is lr * g / eps, and the two runs'
    # rounding moves it differently; on this machine by up to 1e-3 of lr. A fixed atol of 1e-6 (= 1e-3 of lr)
    # passed on one CPU and not on another; 1 % of the update scale leaves room for any CPU's rounding and
    # stays 100 times below a real difference (checked: the weights did move by about lr).
    scale = cfg.lr * cfg.steps
    moved = max(float((b - s).abs().max()) for (_, b), (_, s) in zip(plain.named_parameters(),
                                                                      start.named_parameters()))
    assert moved > 0.5 * scale, moved
    for (name, a), (_, b) in zip(chunked.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=0.01 * scale, msg=name)


def test_batch_losses_refuse_the_examples_training_refuses(tiny):
    """Two captions the loss compares that become the same tokens after the cut to the context: training refuses
    the example (finetune.data.screen_captions), so the losses that stand for training's do too; leniently, they
    are the losses of the other examples, computed as training computes them."""
    from finetune.train import batch_losses
    from probing.data.records import DataError

    model, preprocess, tokenizer = fresh(tiny)
    examples = make_examples(13)
    cut = copy.copy(examples[0])
    padding = " ".join(["with a big red bus"] * 20)  # past the 77-token context
    cut.caption, cut.presence_negated = f"a cat {padding} and a dog", f"a cat {padding} and no dog"
    cut.source, cut.row = "long.csv", 4
    with pytest.raises(DataError, match=r"long.csv.*row 4.*captions identical after the cut"):
        batch_losses(model, tokenizer, preprocess, [cut, *examples[1:]], "omni", n_batches=1, batch_size=6)
    lenient = batch_losses(model, tokenizer, preprocess, [cut, *examples[1:]], "omni", n_batches=2, batch_size=6,
                           seed=1, strict=False)
    without = batch_losses(model, tokenizer, preprocess, examples[1:], "omni", n_batches=2, batch_size=6, seed=1)
    for a, b in zip(lenient, without):
        torch.testing.assert_close(a(model).detach(), b(model).detach())
