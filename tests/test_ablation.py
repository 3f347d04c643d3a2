"""The layer ablation: variants, the resumable runs file, aggregation, a study on the small embedded
build (records, only planned blocks change, interruption and resume give the uninterrupted table),
and the `ablate-layers` command."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from analysis.ablation.aggregate import summarize_runs
from analysis.ablation.config import AblationConfig, AblationError
from analysis.ablation.runner import AblationStudy, run_ablation
from analysis.ablation.runs import RUNS_FILE, load_runs, save_runs
from analysis.ablation.tables import HEADLINE, markdown_table
from analysis.ablation.variants import block_variants, extras_flags, resolve_variants, variant_plans
from analysis.cli.ablate_layers import main
from finetune.plan import LayerPlan
from probing.measure.probes import mean_ci

# A few steps on a few examples: enough to move the weights, fast enough for the test session.
QUICK = dict(model="embedded:small", steps=3, batch_size=16, lr=1e-4, warmup_steps=1, n_train=48, eval_n=100,
             eval_n_classification=36)


# --- variants --------------------------------------------------------------------------------------

def test_front_middle_back_split_the_tower_in_halves():
    assert block_variants(12) == {"front": [0, 1, 2, 3, 4, 5], "middle": [3, 4, 5, 6, 7, 8],
                                  "back": [6, 7, 8, 9, 10, 11], "all": list(range(12))}
    assert block_variants(5) == {"front": [0, 1], "middle": [1, 2], "back": [3, 4], "all": [0, 1, 2, 3, 4]}
    with pytest.raises(AblationError, match="at least 2 text blocks"):
        block_variants(1)


def test_variants_resolve_in_display_order_and_selected_needs_a_plan():
    variants, notes = resolve_variants(None, 4, has_plan=False)
    assert variants == ["frozen", "front", "middle", "back", "all", "layer_0", "layer_1", "layer_2", "layer_3"]
    assert len(notes) == 1 and "selected" in notes[0] and "skipped" in notes[0]
    assert resolve_variants(None, 4, has_plan=True)[0][:2] == ["frozen", "selected"]
    assert resolve_variants(["layer_2", "back", "sweep", "frozen"], 3, has_plan=False) == (
        ["frozen", "back", "layer_0", "layer_1", "layer_2"], [])
    with pytest.raises(AblationError, match="needs a layer plan"):
        resolve_variants(["selected"], 4, has_plan=False)
    with pytest.raises(AblationError, match="has 4 blocks"):
        resolve_variants(["layer_4"], 4, has_plan=False)
    with pytest.raises(AblationError, match="unknown variant 'frontal'"):
        resolve_variants(["frontal"], 4, has_plan=False)


def test_variants_differ_only_in_blocks():
    selected = LayerPlan([0, 2], train_embeddings=True, train_ln_final=True, lr_weights={0: 1.0, 2: 0.5}, rule="prefix")
    names = ["frozen", "selected", "front", "middle", "back", "all", "layer_0", "layer_3"]
    for extras, expected in (("none", set()), ("ln_final,projection", {"ln_final", "projection"}),
                             ("plan", {"embeddings", "ln_final"})):
        plans = variant_plans(names, 4, extras_flags(extras, selected), selected)
        assert plans["frozen"] is None
        for name, plan in plans.items():
            if plan is None:
                continue
            on = {
                extra
                for extra in ("embeddings", "ln_final", "projection", "logit_scale")
                if getattr(plan, f"train_{extra}")
            }
            assert on == expected, (extras, name)
        assert plans["selected"].blocks == [0, 2] and plans["selected"].lr_weights == {0: 1.0, 2: 0.5}
        assert plans["layer_3"].blocks == [3] and plans["front"].blocks == [0, 1] and plans["back"].blocks == [2, 3]
    with pytest.raises(AblationError, match="no plan was given"):
        extras_flags("plan", None)
    with pytest.raises(AblationError, match="unknown extra"):
        extras_flags("ln_final,head")


def test_omni_negclip_groups_are_named_variants_with_their_extras():
    """Omni-NegCLIP's own table: front 0-5, middle 4-7, back 8-11 (and whole), each with embeddings,
    ln_final, projection and logit scale, whatever extras the other variants train."""
    variants, notes = resolve_variants(["omni", "front", "frozen"], 12, has_plan=False)
    assert variants == ["frozen", "front", "omni_front", "omni_middle", "omni_back", "omni_whole"] and notes == []
    assert resolve_variants(["omni_middle"], 12, has_plan=False)[0] == ["omni_middle"]
    assert not any(name.startswith("omni") for name in resolve_variants(None, 12, has_plan=False)[0])
    plans = variant_plans(variants, 12, extras_flags("none"))
    assert plans["omni_front"].blocks == [0, 1, 2, 3, 4, 5] and plans["omni_middle"].blocks == [4, 5, 6, 7]
    assert plans["omni_back"].blocks == [8, 9, 10, 11] and plans["omni_whole"].blocks == list(range(12))
    for name in ("omni_front", "omni_middle", "omni_back", "omni_whole"):
        plan = plans[name]
        assert plan.train_embeddings and plan.train_ln_final and plan.train_projection and plan.train_logit_scale
    assert plans["front"].blocks == [0, 1, 2, 3, 4, 5] and not plans["front"].train_embeddings  # the study's extras
    # a shallower tower: the ranges scale with its depth
    assert {
        name: plan.blocks for name, plan in variant_plans(["omni_front", "omni_back"], 6, extras_flags("none")).items()
    } == {"omni_front": [0, 1, 2], "omni_back": [4, 5]}


def test_config_refuses_inconsistent_settings():
    with pytest.raises(AblationError, match="do not go with the embedded model"):
        AblationConfig(model="embedded:small", pretrained="x.pt")
    with pytest.raises(AblationError, match="unknown embedded model 'huge'"):
        AblationConfig(model="embedded:huge")
    with pytest.raises(AblationError, match="takes no option"):
        AblationConfig(loss="conclip", loss_kwargs={"lam": 0.5})
    AblationConfig(loss="omni", loss_kwargs={"lam": 0.5})  # omni has lam
    with pytest.raises(AblationError, match="among 100"):
        AblationConfig(eval_n=50)
    with pytest.raises(AblationError, match="fewer than one batch"):
        AblationConfig(n_train=100, batch_size=128)
    with pytest.raises(AblationError, match="distinct"):
        AblationConfig(seeds=(0, 0))
    with pytest.raises(AblationError, match="the synthetic world's multiple choice"):
        AblationConfig(second_loss="conclip")
    with pytest.raises(AblationError, match="n_second 8 is fewer than one batch"):
        AblationConfig(second_loss="negbench_mcq", n_second=8, batch_size=16)
    # a study without a second source records the settings it always did (studies recorded before it continue)
    assert "second_loss" not in AblationConfig().study_settings()
    assert AblationConfig(second_loss="negbench_mcq").study_settings()["second_weight"] == 1.0


# --- the runs file and aggregation -----------------------------------------------------------------

def _record(variant: str, seed: int, scope: float) -> dict:
    return {
        "variant": variant,
        "seed": seed,
        "plan": None,
        "train_seconds": 1.0 + seed,
        "final_loss": None,
        "trained_parameters": 0,
        "metrics": {"object/scope_accuracy": scope, "cue/scope_accuracy/cue=never": scope / 2},
    }


def test_runs_file_round_trip_and_a_truncated_last_line_is_dropped(tmp_path):
    path = tmp_path / RUNS_FILE
    runs = [_record("front", 0, 0.5), _record("front", 1, 0.6)]
    save_runs(path, runs)
    assert load_runs(path) == runs
    with open(path, "a", encoding="utf-8") as handle:  # a writer killed mid-line
        handle.write('{"variant": "back", "seed": 0, "metr')
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert load_runs(path) == runs
    save_runs(path, runs + [_record("back", 0, 0.7)])  # the next save leaves only whole lines
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [run["variant"] for run in load_runs(path)] == ["front", "front", "back"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(AblationError, match="line 2 is not a run record"):
        load_runs(path)
    path.write_text("\n".join([lines[0], '{"x": 1}']) + "\n")  # a whole line, but no run: damage, not a cut
    with pytest.raises(AblationError, match="line 2 is not a run record"):
        load_runs(path)
    path.write_text("\n".join([lines[0], lines[0]]) + "\n")
    with pytest.warns(UserWarning, match="appears twice"):
        assert len(load_runs(path)) == 1


def test_summary_is_mean_and_t_interval_over_seeds():
    runs = [_record("front", seed, scope) for seed, scope in enumerate((0.50, 0.60, 0.58))] + [
        _record("frozen", 0, 0.2)
    ]
    plans = {"front": LayerPlan([0, 1]), "frozen": None}
    header = {"model": "m", "loss": "conclip", "loss_kwargs": {}, "steps": 3, "batch_size": 16, "lr": 1e-4,
              "warmup_steps": 1, "n_train": 48, "seeds": [0, 1, 2], "eval_n": 100, "extras": [], "selected_plan": None}
    summary = summarize_runs(runs, variants=["frozen", "front", "back"], plans=plans, n_layers=4, header=header)
    assert [entry["variant"] for entry in summary["variants"]] == ["frozen", "front"]  # back has no runs
    front = summary["variants"][1]
    expected = mean_ci([0.50, 0.60, 0.58])
    scope = front["metrics"]["object/scope_accuracy"]
    assert (scope["mean"], scope["low"], scope["high"], scope["n"]) == (expected.mean, expected.low, expected.high, 3)
    assert front["metrics"]["train_seconds"]["mean"] == pytest.approx(2.0)
    assert "final_loss" not in front["metrics"]  # None values are not averaged
    table = markdown_table(summary)
    assert f"| front | 0–1 | 3 | {expected.mean:.3f} ± {(expected.high - expected.low) / 2:.3f} |" in table
    assert "| frozen | none | 1 | 0.200 (1 seed) |" in table
    assert "| variant | never |" in table and "Synthetic data" in table


# --- a study on the small embedded build ----------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(small_embedded, tmp_path_factory):
    """Two variants x two seeds in one go, weights kept, for the comparisons below."""
    config = AblationConfig(**QUICK, seeds=(0, 1), variants=("front", "layer_11"), keep_models=True)
    out = tmp_path_factory.mktemp("ablation-uninterrupted")
    return run_ablation(config, out, progress=False, log=lambda line: None)


def _metric_tables(summary: dict) -> str:
    """The table without its cost section (train time differs from run to run)."""
    return markdown_table(summary, cost=False)


def test_study_records_every_run_with_heldout_and_retention_metrics(uninterrupted):
    assert uninterrupted.complete and uninterrupted.executed == [
        ("front", 0),
        ("layer_11", 0),
        ("front", 1),
        ("layer_11", 1),
    ]
    runs = load_runs(uninterrupted.out_dir / RUNS_FILE)
    assert [(run["variant"], run["seed"]) for run in runs] == uninterrupted.executed
    for run in runs:
        assert run["steps"] == QUICK["steps"] and run["train_seconds"] > 0 and np.isfinite(run["final_loss"])
        assert run["blocks"] == ([0, 1, 2, 3, 4, 5] if run["variant"] == "front" else [11])
        metrics = run["metrics"]
        for key, _ in HEADLINE:
            assert 0.0 <= metrics[key] <= 1.0, key
        assert {"cue/scope_accuracy/cue=never", "cue/scope_accuracy/cue=none", "cue/scope_accuracy/cue=isn't"} <= set(
            metrics
        )
        assert not any(
            key.startswith("object/scope_accuracy/cue=never") for key in metrics
        )  # held-out cues only in "cue"
    # the seed changes the data order, so the two seeds of a variant train differently
    front = [run for run in runs if run["variant"] == "front"]
    assert front[0]["final_loss"] != front[1]["final_loss"]
    outputs = uninterrupted.outputs
    for name in ("table", "summary_json", "summary_csv", "figure_png", "figure_pdf"):
        assert outputs[name].is_file() and outputs[name].stat().st_size > 0, name
    assert outputs["figure_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert outputs["figure_pdf"].read_bytes()[:5] == b"%PDF-"
    summary = json.loads(outputs["summary_json"].read_text())
    assert summary["complete"] and [entry["seeds"] for entry in summary["variants"]] == [[0, 1], [0, 1]]
    csv_lines = outputs["summary_csv"].read_text().splitlines()
    assert csv_lines[0] == "variant,blocks,seeds,metric,n,mean,ci_low,ci_high"
    assert any(line.startswith("layer_11,11,0 1,object/scope_accuracy,2,") for line in csv_lines)
    table = outputs["table"].read_text()
    assert "| front | 0–5 | 2 |" in table and "| layer_11 | 11 | 2 |" in table and "### Cost" in table


def test_a_run_changes_only_its_planned_blocks(uninterrupted, small_embedded):
    from probing.clip.loading import load_clip
    from probing.clip.text_tower import TextTower

    path, spec = small_embedded
    base = TextTower.from_model(load_clip(spec.model, pretrained=path)[0]).parameters_by_part()
    for variant, trained in (("layer_11", {"blocks.11"}), ("front", {f"blocks.{b}" for b in range(6)})):
        weights = uninterrupted.out_dir / "runs" / variant / "seed0" / "model.safetensors"
        tuned = TextTower.from_model(load_clip(spec.model, pretrained=weights)[0]).parameters_by_part()
        changed = {part for part in base if any(not torch.equal(a, b) for a, b in zip(base[part], tuned[part]))}
        assert changed == trained, variant  # no embeddings, ln_final, projection: only blocks differ


def test_interrupted_study_continues_and_ends_with_the_uninterrupted_table(uninterrupted, tmp_path):
    from finetune.train import train

    config = AblationConfig(**QUICK, seeds=(0, 1), variants=("front", "layer_11"))
    first = run_ablation(config, tmp_path, max_runs=2, progress=False, log=lambda line: None)
    assert first.executed == [("front", 0), ("layer_11", 0)] and not first.complete
    assert "incomplete: 2 of 4 runs" in first.outputs["table"].read_text()
    assert not (tmp_path / "runs" / "front" / "seed0" / "checkpoints").exists()  # weights dropped once recorded

    # the next run is killed in the middle of training: its trainer checkpoint is at step 1
    study = AblationStudy(config, tmp_path, progress=False, log=lambda line: None)
    killed = study.train_config("front", 1)
    killed.stop_at, killed.ckpt_every = 1, 1
    train(copy.deepcopy(study.base.model), study.base.tokenizer, study.base.preprocess, study.examples,
          study.plans["front"], killed)

    lines: list[str] = []
    second = run_ablation(config, tmp_path, progress=False, log=lines.append)
    assert second.executed == [("front", 1), ("layer_11", 1)] and second.complete
    assert any("2 of 4 runs already done" in line for line in lines)
    resumed = [run for run in load_runs(tmp_path / RUNS_FILE) if (run["variant"], run["seed"]) == ("front", 1)]
    assert resumed[0]["resumed_from_step"] == 1 and resumed[0]["steps"] == QUICK["steps"]
    assert _metric_tables(second.summary) == _metric_tables(uninterrupted.summary)


def test_restart_with_other_settings_is_refused(uninterrupted):
    changed = AblationConfig(**{**QUICK, "steps": 4}, seeds=(0, 1), variants=("front",))
    with pytest.raises(AblationError, match=r"other settings \(steps: 3 then, 4 now\)"):
        run_ablation(changed, uninterrupted.out_dir, progress=False, log=lambda line: None)


# --- the command ---------------------------------------------------------------------------------

QUICK_ARGS = [
    "--model",
    "embedded:small",
    "--steps",
    "2",
    "--batch-size",
    "16",
    "--train-examples",
    "32",
    "--warmup-steps",
    "1",
    "--lr",
    "1e-4",
    "--eval-items",
    "100",
    "--eval-zero-shot",
    "36",
    "--no-progress",
    "--threads",
    "1",
]


def test_cli_runs_a_study_and_a_second_call_has_nothing_left(small_embedded, tmp_path, capsys):
    argv = QUICK_ARGS + ["--seeds", "0", "--variants", "frozen,layer_0", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 variants x 1 seeds (12 text blocks)" in out and "2 runs done now; study complete" in out
    assert str(tmp_path / "ablation_table.md") in out and str(tmp_path / "ablation.png") in out
    runs = load_runs(tmp_path / RUNS_FILE)
    assert [(run["variant"], run["seed"]) for run in runs] == [("frozen", 0), ("layer_0", 0)]
    assert runs[0]["train_seconds"] == 0 and runs[0]["blocks"] == []
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["command"] == ["ablate-layers", *argv] and provenance["model"]["model"] == "embedded:small"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 of 2 runs already done" in out and "0 runs done now; study complete" in out


def test_cli_trains_every_run_with_the_multiple_choice_as_second_source(small_embedded, tmp_path, capsys):
    """--second-loss negbench_mcq: every trained run adds NegBench's MCQ loss on the world's multiple-choice items
    in every step (its trainer log has the second loss), the study records it in its settings, and a restart with
    another weight is refused."""
    import csv

    from probing.models.factory import create_model
    from tests.conftest import first_batch_mcq_loss

    argv = QUICK_ARGS + ["--seeds", "0", "--variants", "frozen,layer_0", "--second-loss", "negbench_mcq",
                         "--second-weight", "0.5", "--second-train-examples", "32", "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()
    with open(tmp_path / "runs" / "layer_0" / "seed0" / "metrics.csv", newline="") as handle:
        logged = list(csv.DictReader(handle))
    assert logged and all(float(row["loss_second"]) > 0 for row in logged)
    # the first step's is NegBench's MCQ loss on the batch it draws from the world's training items (32 of them,
    # drawn with the data seed + 1; the batch from the second source's stream of training seed 0), computed directly
    bundle = create_model("embedded:small", device="cpu")
    items = bundle.world.mcq_items(32, "train", seed=AblationConfig().data_seed + 1)
    batch = int(QUICK_ARGS[QUICK_ARGS.index("--batch-size") + 1])
    assert float(logged[0]["loss_second"]) == pytest.approx(first_batch_mcq_loss(bundle, items, batch, 0, 1),
                                                            rel=1e-3)
    settings = json.loads((tmp_path / "ablation_config.json").read_text())["settings"]
    assert (settings["second_loss"], settings["second_weight"], settings["n_second"]) == ("negbench_mcq", 0.5, 32)
    assert main([*argv[:-6], "--second-weight", "0.25", *argv[-4:]]) == 2
    assert "second_weight: 0.5 then, 0.25 now" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "0,x"], "--seeds must be a comma list"),
    (["--lam", "1"], "--lam do(es) not apply to --loss conclip"),
    (["--terms", "1,4"], "--terms must be among 1, 2, 3"),
    (["--seeds", "0,1,0"], "--seeds: 0 given twice"),
    (["--variants", "front,front"], "--variants: front given twice"),
    (["--selectors", "all"], "selectors are compared at the size of the toolkit's plan"),
    (["--selectors", "magic"], "unknown selector(s) magic"),
    (["--shard", "3/2"], "1 <= K <= N"),
    (["--eval-items", "50"], "--eval-items must be at least 100"),  # the flag, not the config's field (eval_n)
    (["--train-examples", "4"], "--train-examples 4 is fewer than one batch of"),
    (["--second-loss", "negbench_mcq", "--second-train-examples", "4"],
     "--second-train-examples 4 is fewer than one batch of"),
    (["--second-weight", "0.5"], "--second-weight goes with --second-loss"),
    (["--pretrained", "x.pt"], "--pretrained does not go with the embedded model"),
    # an old spelling beside its new one, even where the new one names its default (0: argparse's exclusive groups
    # would not see it given)
    (["--world-seed", "3", "--seed", "0"], "--world-seed is the old spelling of --seed: give one of them"),
    (["--config", "study.json"], "--config re-runs a saved study: drop --"),  # any typed study flag
    (["--variants", "frontal"], "unknown variant 'frontal'"),
    (["--variants", "layer_12"], "the text tower has 12 blocks"),
    (["--variants", "selected"], "variant 'selected' needs a layer plan"),
    (["--plan", "/nonexistent/plan.json"], "layer plan file /nonexistent/plan.json does not exist"),
])
def test_cli_bad_arguments_are_one_line_errors(small_embedded, tmp_path, capsys, extra, message):
    try:
        status = main(QUICK_ARGS + ["--out", str(tmp_path)] + extra)
    except SystemExit as exit_info:  # argparse's own errors
        status = exit_info.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_settings_messages_name_the_flag_only_when_they_are_about_that_field(small_embedded, tmp_path, capsys):
    """named_by_flag renames a message's leading config field to the flag that sets it, and leaves alone a message
    whose first word merely is a field's name, or whose field no flag of the command sets."""
    from analysis.cli.ablate_layers import FLAG_OF_FIELD, build_parser
    from analysis.cli.arguments import named_by_flag

    parser = build_parser()

    def named(message: str) -> str:
        return named_by_flag(message, AblationConfig, parser, FLAG_OF_FIELD)

    assert named("eval_n must be at least 100, got 50") == "--eval-items must be at least 100, got 50"
    assert named("n_second 4 is fewer than one batch of 16") == ("--second-train-examples 4 is fewer than one "
                                                                 "batch of 16")
    assert named("extras: plan given twice") == "--extras: plan given twice"
    assert named("warmup_steps must be >= 0, got -1") == "--warmup-steps must be >= 0, got -1"
    for kept in ("loss option lam must be a finite number",  # 'loss' is a field, but this is about an option
                 "pretrained weights do not go with the embedded model",
                 "feature_cache must be a bool",  # a field whose flag has another name (--no-feature-cache)
                 "unknown selector(s) magic"):
        assert named(kept) == kept
    # through the old --loss-kwargs JSON, a bad option reaches the config's own check and names that flag
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(QUICK_ARGS + ["--loss-kwargs", '{"foo": 1}', "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--loss-kwargs: loss 'conclip' takes no option(s) foo" in capsys.readouterr().err


def test_cli_old_flag_spellings_still_work(small_embedded, tmp_path, capsys):
    """The old spellings run for one release and say what replaced them; --loss-kwargs still takes its JSON."""
    old = [arg.replace("--train-examples", "--n-train").replace("--eval-items", "--eval-n") for arg in QUICK_ARGS]
    status = main(old + ["--seeds", "0", "--variants", "frozen", "--loss", "omni", "--loss-kwargs", '{"lam": 0.5}',
                         "--out", str(tmp_path)])
    assert status == 0
    err = capsys.readouterr().err
    assert "--n-train is now --train-examples" in err and "--eval-n is now --eval-items" in err
    assert "--loss-kwargs is now --terms" in err
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert config["n_train"] == 32 and config["loss_kwargs"] == {"lam": 0.5}


def test_cli_help_does_not_import_torch():
    code = (
        "import sys\nfrom analysis.cli.ablate_layers import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ablate-layers" in result.stdout and "--variants" in result.stdout


def test_figure_sweep_panel_shows_every_interval_and_the_frozen_level():
    from analysis.ablation.figures import ablation_figure

    rng = np.random.default_rng(0)
    runs = [
        _record(f"layer_{layer}", seed, 0.15 + 0.01 * layer + 0.02 * rng.random())
        for layer in range(12)
        for seed in range(3)
    ]
    runs += [_record(name, seed, 0.3) for name in ("frozen", "front", "back") for seed in range(3)]
    variants = ["frozen", "front", "back"] + [f"layer_{i}" for i in range(12)]
    plans = {name: None if name == "frozen" else LayerPlan([0]) for name in variants}
    header = {"loss": "conclip", "steps": 3, "seeds": [0, 1, 2]}
    summary = summarize_runs(runs, variants=variants, plans=plans, n_layers=12, header=header)
    variant_axes, sweep_axes = ablation_figure(summary).axes
    assert [tick.get_text() for tick in variant_axes.get_xticklabels()] == ["frozen", "front", "back"]
    low, high = sweep_axes.get_ylim()
    values = [
        entry["metrics"]["object/scope_accuracy"]
        for entry in summary["variants"]
        if entry["variant"].startswith("layer_")
    ]
    assert low <= min(v["low"] for v in values) and max(v["high"] for v in values) <= high and low <= 0.3 <= high
    assert len(sweep_axes.lines[0].get_xdata()) == 12  # one point per block


def test_steering_variant_trains_nothing_and_scores_the_steered_model(small_embedded, tmp_path):
    """The training-free anchor: no parameter moves, its vectors are fitted per run, and its numbers are
    the steered model's own, scored here directly on the study's suites; the base model stays unsteered."""
    from probing.measure.steering import PUBLISHED_ALPHA, steered, steering_vectors
    from probing.metrics import flatten

    config = AblationConfig(**QUICK, seeds=(0,), variants=("frozen", "steering"))
    study = AblationStudy(config, tmp_path, progress=False, log=lambda line: None)
    result = study.run()
    runs = {run["variant"]: run for run in load_runs(tmp_path / RUNS_FILE)}
    steering, frozen = runs["steering"], runs["frozen"]
    assert steering["trained_parameters"] == 0 and steering["plan"] is None and steering["train_seconds"] > 0
    assert steering["steering"] == {"alpha": PUBLISHED_ALPHA, "probe": "logistic", "layers": "every"}
    base = study.base
    vectors = steering_vectors(base.model, base.tokenizer, base.world, seed=0)
    suite = study.evaluation.suites["object"]
    with steered(base.model, vectors):
        direct = flatten(suite.evaluate(base.model, base.preprocess, base.tokenizer,
                                        image_features=study.evaluation.image_features["object"]))
    assert steering["metrics"]["object/scope_accuracy"] == pytest.approx(direct["scope_accuracy"])
    assert steering["metrics"]["object/ccneg_accuracy"] == pytest.approx(direct["ccneg_accuracy"])
    assert any(steering["metrics"][key] != frozen["metrics"][key] for key, _ in HEADLINE)
    after, _ = study.evaluation.evaluate(base.model, base)
    assert after == frozen["metrics"]  # the hooks are gone
    assert "| steering |" in result.outputs["table"].read_text()


# --- the selector study's additions: window sizes, sets, the plan as planned, shards, every target -------------

def test_variant_grammar_names_windows_of_any_size_sets_and_the_plan_as_planned():
    assert resolve_variants(["windows-3"], 5, has_plan=False)[0] == ["window_0_2", "window_1_3", "window_2_4"]
    assert resolve_variants(["windows-1"], 3, has_plan=False)[0] == ["layer_0", "layer_1", "layer_2"]
    near = resolve_variants(["windows-near"], 4, has_plan=True, selected_size=2)[0]
    assert near == ["window_0_1", "window_1_2", "window_2_3", "window_0_2", "window_1_3", "layer_0", "layer_1",
                    "layer_2", "layer_3"]
    # one name per plan: a contiguous set is its window, a one-block window its layer
    assert resolve_variants(["set_0_2", "set_1_2", "window_3_3"], 4, has_plan=False)[0] == [
        "set_0_2", "window_1_2", "layer_3"]
    with pytest.raises(AblationError, match="given twice"):
        resolve_variants(["front", "layer_1", "front"], 4, has_plan=False)
    with pytest.raises(AblationError, match="takes its size from the selected plan"):
        resolve_variants(["windows-near"], 4, has_plan=False)
    with pytest.raises(AblationError, match="windows of 1 .. 4 blocks"):
        resolve_variants(["windows-5"], 4, has_plan=False)
    with pytest.raises(AblationError, match="has 4 blocks"):
        resolve_variants(["set_1_4"], 4, has_plan=False)
    selected = LayerPlan([0, 1], train_embeddings=True, train_ln_final=True, lr_weights={0: 1.0, 1: 0.5},
                         rule="window")
    plans = variant_plans(["selected", "selected_planned", "set_0_2"], 4, extras_flags("none"), selected)
    assert plans["selected"].blocks == plans["selected_planned"].blocks == [0, 1]
    assert not plans["selected"].train_embeddings and not plans["selected"].train_ln_final  # the study's extras
    assert plans["selected_planned"].train_embeddings and plans["selected_planned"].train_ln_final  # its own
    assert not plans["selected_planned"].train_projection
    assert plans["selected_planned"].lr_weights == {0: 1.0, 1: 0.5} and plans["set_0_2"].blocks == [0, 2]


def test_every_target_is_recorded_per_item_and_its_mean_is_the_metric(uninterrupted):
    """The per-item outcomes validity resamples: their mean is the metric the suite scores by another path
    (score_* against *_outcomes), for every target."""
    for run in load_runs(uninterrupted.out_dir / RUNS_FILE):
        items, metrics = run["items"], run["metrics"]
        for suite in ("object", "template", "cue"):
            assert np.mean(items[f"{suite}/scope"]) == pytest.approx(metrics[f"{suite}/scope_accuracy"])
            assert np.mean(items[f"{suite}/absence"]) == pytest.approx(metrics[f"{suite}/absence_accuracy"])
        assert np.mean(items["object/image_to_text"]) == pytest.approx(
            metrics["object/image_to_text_R@1_among_100"])
        assert np.mean(items["object/zero_shot"]) == pytest.approx(metrics["object/zero_shot_affirmative"])
        assert len(items["object/mcq"]) == QUICK["eval_n"] == len(items["object/mcq_template"])
        assert np.mean(items["object/mcq"]) == pytest.approx(metrics["object/mcq_accuracy"])
        negative = [hit for hit, kind in zip(items["object/mcq"], items["object/mcq_template"]) if kind == "negative"]
        assert np.mean(negative) == pytest.approx(metrics["object/mcq_accuracy/template=negative"])
        assert "template/mcq" not in items  # multiple choice on the held-out-object suite only


def test_a_study_run_as_two_shards_merges_to_the_unsharded_study(uninterrupted, tmp_path):
    from analysis.ablation.runs import Shard, load_study_runs

    config = AblationConfig(**QUICK, seeds=(0, 1), variants=("front", "layer_11"))
    first = run_ablation(config, tmp_path, progress=False, log=lambda line: None, shard=Shard(1, 2))
    assert first.executed == [("front", 0), ("front", 1)] and not first.complete  # every other run
    assert (tmp_path / "runs.shard-1-of-2.jsonl").is_file() and not (tmp_path / RUNS_FILE).exists()
    second = run_ablation(config, tmp_path, progress=False, log=lambda line: None, shard=Shard(2, 2))
    assert second.executed == [("layer_11", 0), ("layer_11", 1)] and second.complete
    assert [(run["variant"], run["seed"]) for run in load_runs(tmp_path / "runs.shard-2-of-2.jsonl")] == \
        second.executed  # each shard writes its own file only
    whole = {(run["variant"], run["seed"]): run for run in load_runs(uninterrupted.out_dir / RUNS_FILE)}
    merged = {(run["variant"], run["seed"]): run for run in load_study_runs(tmp_path)}
    assert merged.keys() == whole.keys()
    for key, run in merged.items():
        assert run["metrics"] == whole[key]["metrics"] and run["items"] == whole[key]["items"], key
    assert _metric_tables(second.summary) == _metric_tables(uninterrupted.summary)
    with pytest.raises(AblationError, match="1 <= K <= N"):
        Shard.parse("3/2")


def test_a_study_with_a_plan_prints_its_verdict_frontier_and_selectors(small_embedded, tmp_path, capsys):
    """Planted run records (no training): block 0 is where fine-tuning works, the plan trains blocks 0-1, and the
    finetune_change selector (a comparison whose fine-tune changed blocks 4-5 most) picks a window that gains
    little. ablate-layers then writes validity, the frontier and the selector table, and prints the verdict."""
    from analysis.ablation.runs import save_runs
    from analysis.ablation.validity import TARGETS
    from analysis.compare.result import FORMAT

    n_layers = 12
    plan_path = LayerPlan([0, 1], rule="planted", evidence={
        "components": {"probe": {"excess": [1.0, 0.5] + [0.0] * (n_layers - 2)}},
        "combined": [1.0, 0.5] + [0.0] * (n_layers - 2)}).save(tmp_path / "probe" / "layer_plan.json")
    change = [0.01] * n_layers
    change[4], change[5] = 0.5, 0.4
    comparison = tmp_path / "comparison.json"
    comparison.write_text(json.dumps({"format": FORMAT, "block_change": {"whole": dict(enumerate(change))}}))
    variants = ("frozen", "selected", "sweep", "windows")
    study = AblationStudy(AblationConfig(model="embedded:small", seeds=(0, 1, 2), variants=variants,
                                         plan_path=str(plan_path), comparison=str(comparison)),
                          tmp_path / "unused", progress=False, log=lambda line: None)
    assert study.selector_plans["finetune_change"].blocks == (4, 5)
    keys = sorted({key for target in TARGETS.values() for key in target.items})
    runs = []
    for variant, seed in study.planned():
        plan = study.plans[variant]
        blocks = [] if plan is None else list(plan.blocks)
        rate = 0.1 + 0.6 * (0 in blocks) + 0.05 * len(blocks)  # block 0 is what works
        rng = np.random.default_rng([seed, *blocks])  # the same blocks and seed train the same model
        items = {key: (rng.random(200) < rate).astype(int).tolist() for key in keys}
        runs.append({"variant": variant, "seed": seed, "plan": None if plan is None else plan.to_dict(),
                     "blocks": blocks, "trained_parameters": 1000 * len(blocks), "train_seconds": 0.0,
                     "final_loss": None, "steps": 2, "items": items,
                     "metrics": {f"{key.split('/')[0]}/scope_accuracy": float(np.mean(values))
                                 for key, values in items.items() if key.endswith("/scope")}})
    out = tmp_path / "ablation"
    out.mkdir()
    save_runs(out / RUNS_FILE, runs)
    argv = QUICK_ARGS + ["--seeds", "0,1,2", "--variants", ",".join(variants), "--plan", str(plan_path),
                         "--comparison", str(comparison), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "0 runs done now; study complete" in printed
    assert "lies on the gain / trainable-parameter frontier" in printed
    assert "strictly better than finetune_change" in printed
    rows = {(row["target"], row["selector"]): row for row in json.loads((out / "selectors.json").read_text())["rows"]}
    mean = {v: np.mean([np.mean(r["items"]["object/scope"]) for r in runs if r["variant"] == v])
            for v in ("frozen", "selected", "window_4_5")}
    row = rows[("scope_object", "finetune_change")]
    assert row["variant"] == "window_4_5" and row["verdict"] == "better"
    assert row["toolkit_minus"] == pytest.approx(mean["selected"] - mean["window_4_5"])
    assert (out / "frontier.png").is_file() and (out / "validity.json").is_file()


def test_a_variant_that_trains_what_a_finished_run_trained_reuses_it(uninterrupted, small_embedded, tmp_path):
    plan = LayerPlan([11], train_embeddings=False, train_ln_final=False, train_projection=False,
                     train_logit_scale=False)
    plan_path = plan.save(tmp_path / "layer_plan.json")
    config = AblationConfig(**QUICK, seeds=(0,), variants=("selected", "layer_11"), plan_path=str(plan_path))
    result = run_ablation(config, tmp_path / "study", progress=False, log=lambda line: None)
    runs = {run["variant"]: run for run in load_runs(tmp_path / "study" / RUNS_FILE)}
    trained, reused = (("selected", "layer_11") if "reused_from" in runs["layer_11"] else ("layer_11", "selected"))
    assert runs[reused]["reused_from"] == trained and "reused_from" not in runs[trained]
    assert runs[reused]["items"] == runs[trained]["items"] and len(result.executed) == 2
    # the reused record is what training the same block with the same seed gives: the uninterrupted study's
    # layer_11 seed 0, trained on its own in another folder
    alone = next(run for run in load_runs(uninterrupted.out_dir / RUNS_FILE)
                 if run["variant"] == "layer_11" and run["seed"] == 0)
    assert runs[reused]["metrics"] == pytest.approx(alone["metrics"])
    # frozen and steering train nothing: never each other's twin
    from analysis.ablation.runs import twin_run
    assert twin_run([{**alone, "variant": "frozen", "plan": None}], None, 0) is None
    assert twin_run(list(runs.values()), plan, 1) is None  # another seed


def test_runs_of_a_changed_plan_are_set_aside_from_every_runs_file(tmp_path):
    from analysis.ablation.runs import SUPERSEDED_FILE, load_study_runs, supersede_runs

    save_runs(tmp_path / RUNS_FILE, [_record("selected", 0, 0.5), _record("layer_0", 0, 0.4)])
    (tmp_path / "runs" / "selected" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "selected" / "seed0" / "train.log").write_text("the earlier plan")
    save_runs(tmp_path / "runs.shard-2-of-2.jsonl", [_record("selected", 1, 0.6), _record("selected_planned", 1, 0.7)])
    assert supersede_runs(tmp_path, ("selected", "selected_planned")) == 3
    assert [(r["variant"], r["seed"]) for r in load_study_runs(tmp_path)] == [("layer_0", 0)]
    assert sorted((r["variant"], r["seed"]) for r in load_runs(tmp_path / SUPERSEDED_FILE)) == \
        [("selected", 0), ("selected", 1), ("selected_planned", 1)]
    assert not (tmp_path / "runs" / "selected").exists()
    assert (tmp_path / "superseded" / "selected" / "seed0" / "train.log").read_text() == "the earlier plan"
    assert supersede_runs(tmp_path, ("selected",)) == 0  # nothing left to move


def test_validity_reads_the_finished_windows_a_study_no_longer_plans(small_embedded, tmp_path):
    first = AblationConfig(**QUICK, seeds=(0,), variants=("layer_11", "window_10_11"))
    run_ablation(first, tmp_path, progress=False, log=lambda line: None)
    narrower = AblationStudy(AblationConfig(**QUICK, seeds=(0,), variants=("layer_11",)), tmp_path, progress=False,
                             log=lambda line: None)
    runs = load_runs(tmp_path / RUNS_FILE)
    assert [r["variant"] for r in narrower.own_runs(runs)] == ["layer_11"]
    assert sorted(r["variant"] for r in narrower.validity_runs(runs)) == ["layer_11", "window_10_11"]
    # a window trained with other extras is another plan: not read
    other = [{**r, "plan": {**r["plan"], "train_projection": True}} if r["variant"] == "window_10_11" else r
             for r in runs]
    assert [r["variant"] for r in narrower.validity_runs(other)] == ["layer_11"]
    # a study with more seeds than the window ran reads it only once every seed is there
    more = AblationStudy(AblationConfig(**QUICK, seeds=(0, 1), variants=("layer_11",)), tmp_path, progress=False,
                         log=lambda line: None)
    assert [r["variant"] for r in more.validity_runs(runs)] == ["layer_11"]


def test_a_variant_whose_finished_runs_trained_another_plan_is_stale_until_set_aside(tmp_path):
    from analysis.ablation.runs import check_finished_runs, load_study_runs, stale_variants, supersede_runs

    old, new = LayerPlan([0, 1]), LayerPlan([0])  # the plan with its extras, before and after a rule change
    runs = [{**_record("selected_planned", 0, 0.5), "plan": old.to_dict()},
            {**_record("layer_0", 0, 0.4), "plan": LayerPlan([0]).to_dict()},
            {**_record("omni_front", 0, 0.6), "plan": LayerPlan(list(range(6))).to_dict()}]
    plans = {"selected_planned": new, "layer_0": LayerPlan([0]), "omni_front": LayerPlan(list(range(6)))}
    assert stale_variants(runs, plans) == ["selected_planned"]
    assert stale_variants(runs, {**plans, "selected_planned": old}) == []
    assert stale_variants(runs, {"layer_0": LayerPlan([0])}) == []  # a variant no longer planned is not stale
    save_runs(tmp_path / RUNS_FILE, runs)
    with pytest.raises(AblationError, match="selected_planned"):
        check_finished_runs(load_study_runs(tmp_path), plans)
    assert supersede_runs(tmp_path, stale_variants(load_study_runs(tmp_path), plans)) == 1
    check_finished_runs(load_study_runs(tmp_path), plans)  # what is left trained what its variant trains now
    assert stale_variants(load_study_runs(tmp_path), plans) == []


def test_the_study_sets_aside_only_the_runs_whose_plan_changed_and_a_later_shard_waits(small_embedded, tmp_path,
                                                                                          monkeypatch):
    from analysis import validation
    from analysis.ablation.runs import SUPERSEDED_FILE, Shard, load_study_runs, supersede_runs

    config = AblationConfig(**QUICK, seeds=(0,), variants=("layer_10", "layer_11"))  # no extras
    now = variant_plans(["layer_10", "layer_11"], 12, extras_flags(config.extras))  # what each variant trains now
    earlier = LayerPlan([11], train_projection=True)  # layer_11's runs trained the block with the projection

    def finished_runs():
        save_runs(tmp_path / RUNS_FILE, [{**_record("layer_10", 0, 0.4), "plan": now["layer_10"].to_dict()},
                                         {**_record("layer_11", 0, 0.5), "plan": earlier.to_dict()}])
        (tmp_path / "runs" / "layer_11" / "seed0").mkdir(parents=True, exist_ok=True)

    finished_runs()
    lines = []
    study = validation.study_without_stale_runs(config, tmp_path, label="m", log=lines.append)
    assert study.plans["layer_11"].to_dict() == now["layer_11"].to_dict()
    assert [r["variant"] for r in load_study_runs(tmp_path)] == ["layer_10"]  # its plan is unchanged: kept
    assert [r["variant"] for r in load_runs(tmp_path / SUPERSEDED_FILE)] == ["layer_11"]
    assert (tmp_path / "superseded" / "layer_11" / "seed0").is_dir()
    assert lines == [f"m: 1 run(s) of an earlier plan set aside (layer_11; {tmp_path / SUPERSEDED_FILE})"]

    # shard 2 of 2 moves nothing itself: it waits (sleeps) until shard 1 has set the runs aside
    finished_runs()
    sleeps = []

    def shard_one_sets_aside(seconds):
        sleeps.append(seconds)
        assert [r["variant"] for r in load_study_runs(tmp_path)] == ["layer_10", "layer_11"]  # still there
        supersede_runs(tmp_path, ["layer_11"])

    monkeypatch.setattr(validation.time, "sleep", shard_one_sets_aside)
    validation.study_without_stale_runs(config, tmp_path, label="m", shard=Shard(2, 2), log=lines.append)
    assert sleeps == [validation.WAIT_SECONDS]
    assert lines[-1].startswith("m: waiting for shard 1 to set aside the runs of an earlier plan (layer_11;")
    assert [r["variant"] for r in load_study_runs(tmp_path)] == ["layer_10"]
