"""`probe-layers` end to end on the small embedded build, its one-line errors, and an instant --help.

The plan is checked against the saved numbers with an independent recomputation of the rule
(pandas, straight from the formulas in analysis/planning/selection.py's docstring).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from analysis.cli import probe_layers as cli
from finetune.plan import LayerPlan

QUICK = [
    "--model",
    "embedded:small",
    "--probe-train",
    "200",
    "--probe-test",
    "60",
    "--probe-seeds",
    "0,1",
    "--sensitivity-captions",
    "60",
    "--causal-items",
    "100",
    "--grad-batches",
    "2",
    "--grad-batch-size",
    "16",
    "--threads",
    "1",
    "--no-progress",
]


def test_named_choices_are_the_librarys_own():
    from finetune.losses import gradnorm_loss_fns
    from probing.measure.settings import LocaliseConfig, MeasureConfig
    from probing.vocabulary import LAYER_MEASUREMENTS, LOCALISATION_MEASUREMENTS

    assert cli.MEASUREMENTS == MeasureConfig().measurements + LocaliseConfig().measurements
    assert cli.MEASUREMENTS == LAYER_MEASUREMENTS + LOCALISATION_MEASUREMENTS
    assert set(gradnorm_loss_fns()) == set(cli.GRADNORM_LOSSES)


def test_help_is_instant_and_imports_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); from analysis.cli.probe_layers import build_parser, check_args; "
        "p = build_parser(); check_args(p.parse_args(['--out', 'x', '--rule', 'topk']), p); "
        "assert 'torch' not in sys.modules, 'heavy import'; "
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.0
    start = time.perf_counter()
    shown = subprocess.run(
        [sys.executable, "-m", "analysis.cli.probe_layers", "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "--rule" in shown.stdout and "embedded:small" in shown.stdout
    assert time.perf_counter() - start < 10  # interpreter start-up included; torch alone takes longer


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--share", "1.5"], "--share"),
        (["--k", "0"], "--k"),
        (["--probe-test", "3"], "must be >= 10"),
        (["--probe-seeds", "a,b"], "--probe-seeds"),
        (["--measurements", "probes,magic"], "unknown magic"),
        (["--measurements", "causal,sensitivity"], "needs probes"),
        (["--measurements", "causal"], "needs probes"),
        (["--rule", "auto_rgn", "--measurements", "probes"], "needs gradnorms"),
        (["--alpha", "0"], "--alpha"),
        (["--pretrained", "x.pt"], "does not go with the embedded model"),
        (["--model", "embedded:huge"], "unknown embedded model 'huge'"),
        (["--data", "/no/such/file.csv"], "no such file"),
        (["--score-weights", "1,2"], "--score-weights"),
        (["--grad-loss", "omni_absence", "--losses", "clip"], "not among --losses"),
        (["--rule", "middle"], "invalid choice"),
        (["--memory-budget", "0"], "--memory-budget: must be > 0"),
        (["--token-budget", "0"], "--token-budget: must be >= 1"),
    ],
)
def test_bad_arguments_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe-layers: error:") and "\n" not in err and message in err


def test_loader_and_model_errors_are_one_line(tmp_path, test_data, capsys):
    broken = tmp_path / "broken.csv"
    broken.write_text("colour,shape\nred,circle\n")
    assert cli.main(["--data", str(broken), "--no-progress", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe-layers: error:") and "broken.csv" in err and "\n" not in err

    assert cli.main(["--data", str(test_data / "sugarcrepe"), "--no-progress", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing usable" in err and "none of them negates" in err and "\n" not in err  # not negation data

    assert cli.main(["--data", str(broken), "--data-kind", "magic", "--no-progress", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown dataset kind 'magic'" in err and "\n" not in err

    assert cli.main(["--model", "no-such-architecture", "--no-progress", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe-layers: error:") and "no-such-architecture" in err and "\n" not in err


def recompute_t(measured: dict, items: dict, component: str) -> np.ndarray:
    """The prediction t statistic per block, from measurements.json and items.npz with pandas / numpy
    (no analysis.planning.evidence code): probes from per-item correctness, gradnorms from the table."""
    nulls = measured["meta"]["null_models"]
    if component == "probe":
        curves = {}
        for model in ["trained"] + nulls:
            parts = []
            for task in ("negation", "scope"):
                for split in ("heldout_cue", "heldout_object", "heldout_template"):
                    labels = items[f"probes/{task}/{split}/labels"]
                    hits = items[f"probes/{task}/{split}/{model}"].astype(float)
                    parts.append(np.mean([hits[:, labels == c].mean(axis=1) for c in np.unique(labels)], axis=0))
            curves[model] = np.diff(np.mean(parts, axis=0))
    else:
        grads = pd.DataFrame(measured["gradnorms"])
        grads = grads[grads.component == "all"]
        curves = {}
        for model, rows in grads.groupby("model"):
            table = rows.pivot(index="layer", columns="loss", values="relative_norm")
            curves[model] = (table / table.sum()).mean(axis=1).to_numpy()
    null = np.stack([curves[m] for m in nulls])
    return (curves["trained"] - null.mean(0)) / (null.std(0, ddof=1) * np.sqrt(1 + 1 / len(nulls)))


def test_end_to_end_on_the_small_build(small_embedded, tmp_path, capsys):
    out = tmp_path / "run"
    start = time.perf_counter()
    # 3 null models: the t quantile (2 degrees of freedom, Bonferroni over 36 tests) is far out of reach,
    # so the run must end without a plan: exit 1, a plan file with no blocks, and the report saying why
    assert cli.main(QUICK + ["--null-models", "3", "--out", str(out)]) == 1
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert f"wrote {out}/" in printed and "selected blocks: none: no block carries negation evidence" in printed

    expected = [
        "causal.csv",
        "config.json",
        "fisher.csv",
        "gradnorms.csv",
        "items.npz",
        "layer_plan.json",
        "measurements.json",
        "measurements_long.csv",
        "probes.csv",
        "provenance.json",
        "report.json",
        "report.md",
        "selectivity.csv",
        "sensitivity.csv",
    ]
    found = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "measurements_long.parquet")
    assert found == expected
    figures = {p.name for p in (out / "figures").iterdir()}
    for name in ("probe_accuracy", "selectivity", "sensitivity", "gradnorms", "evidence"):
        assert {f"{name}.png", f"{name}.pdf"} <= figures

    plan = LayerPlan.load(out / "layer_plan.json")
    assert plan.blocks == [] and not plan.train_ln_final
    measured = json.loads((out / "measurements.json").read_text())
    items = dict(np.load(out / "items.npz"))
    assert measured["n_layers"] == 12 and measured["meta"]["model"]["model"] == "embedded:small"
    assert {r["loss"] for r in measured["gradnorms"]} == set(cli.GRADNORM_LOSSES)
    assert {r["model"] for r in measured["probes"]} == {"trained", "null:1", "null:2", "null:3"}
    report = json.loads((out / "report.json").read_text())
    for component in ("probe", "gradnorm"):
        assert report["evidence"]["components"][component]["z"] == pytest.approx(
            recompute_t(measured, items, component)
        )
    assert report["plan"] == json.loads((out / "layer_plan.json").read_text())
    assert report["embedded_metrics"]["scope_accuracy"] >= 0 and report["model"]["n_layers"] == 12
    md = (out / "report.md").read_text()
    assert report["summary"][0] in md and "](figures/probe_accuracy.png)" in md and "No blocks:" in md
    # the long table holds every wide table's numbers: each probe accuracy, read back through pandas
    long = pd.read_csv(out / "measurements_long.csv")
    probes = pd.DataFrame(measured["probes"])
    task_rows = probes[probes["labels"] == "task"]
    for _, row in task_rows.sample(20, random_state=0).iterrows():
        match = long[
            (long["tower"] == row["model"])
            & (long["layer"] == row["layer"])
            & (long["metric"] == f"probe_accuracy/{row['task']}/{row['split']}/{row['probe']}")
        ]
        assert match["value"].tolist() == pytest.approx([row["accuracy"]])
    fisher = pd.DataFrame(measured["fisher"])
    assert len(long[long["metric"].str.startswith("fisher/")]) == len(fisher) == 12 * len(cli.GRADNORM_LOSSES)
    assert set(long["tower"]) == {"trained", "null:1", "null:2", "null:3"}
    print(f"probe-layers end to end: {elapsed:.1f} s")


def test_a_run_re_runs_from_its_config_json_and_saves_activations(small_embedded, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    quick = QUICK + ["--measurements", "probes", "--null-models", "2", "--rule", "topk", "--k", "1"]
    cli.main(quick + ["--save-activations", "--out", str(first)])
    config = json.loads((first / "config.json").read_text())
    assert config["command"] == "probe-layers" and config["config"]["measure"]["seeds"] == [0, 1]
    cli.main(["--config", str(first / "config.json"), "--no-progress", "--out", str(second)])
    again = json.loads((second / "config.json").read_text())
    assert again == config  # the same run, described the same way
    a, b = (json.loads((folder / "measurements.json").read_text()) for folder in (first, second))
    assert a["probes"] == b["probes"] and a["meta"]["tasks"] == b["meta"]["tasks"]
    with pytest.raises(SystemExit):
        cli.main(["--config", str(first / "config.json"), "--probe-train", "100", "--out", str(tmp_path / "x")])
    assert "drop --probe-train" in capsys.readouterr().err
    # the activations: one file per task, keyed by hook name, the captions in the manifest
    from safetensors.numpy import load_file

    manifest = json.loads((first / "activations" / "manifest.json").read_text())
    assert manifest["hooks"][0] == "blocks.0.hook_resid_pre" and manifest["hooks"][-1] == "blocks.11.hook_resid_post"
    states = load_file(str(first / "activations" / manifest["sets"]["negation"]["file"]))
    assert set(states) == set(manifest["hooks"])
    assert states["blocks.11.hook_resid_post"].shape == (manifest["sets"]["negation"]["n"], manifest["d_model"])


def test_old_flag_spellings_still_work_and_say_what_replaced_them(capsys):
    args = cli.build_parser().parse_args(["--n-train", "300", "--seeds", "0,1", "--out", "x"])
    assert args.probe_train == 300 and args.probe_seeds == "0,1"
    err = capsys.readouterr().err
    assert "--n-train is now --probe-train" in err and "--seeds is now --probe-seeds" in err
    # both spellings of one setting: a usage error, whichever comes first and however abbreviated
    default = cli.build_parser().get_default("probe_train")
    for argv in (["--n-train", "300", "--probe-train", "200"], ["--probe-tr", "200", "--n-train", "300"],
                 ["--n-train", "300", f"--probe-train={default}"], ["--probe-train", str(default), "--n-tr", "300"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.build_parser().parse_args(argv + ["--out", "x"])
        assert exit_info.value.code == 2
        assert "--n-train is the old spelling of --probe-train: give one of them" in capsys.readouterr().err
    assert "--n-train" not in cli.build_parser().format_help()  # the old spelling stays out of --help


def test_config_refuses_any_typed_flag_even_at_its_default_value(tmp_path, capsys):
    """--config re-runs a saved run exactly: a flag typed beside it would be ignored, so it is refused, also when
    its value happens to be the default (which comparing values with the defaults did not see)."""
    parser = cli.build_parser()
    default = parser.get_default("probe_train")
    config = tmp_path / "config.json"
    for flag in ([f"--probe-train={default}"], ["--probe-tr", str(default)], ["--n-train", str(default)]):
        with pytest.raises(SystemExit) as exit_info:
            cli.check_args(parser.parse_args(["--config", str(config), *flag]), parser)
        assert exit_info.value.code == 2 and "drop --probe-train" in capsys.readouterr().err
    args = parser.parse_args(["--config", str(config), "--out", str(tmp_path / "o"), "--no-progress"])
    with pytest.raises(SystemExit):
        cli.check_args(args, parser)
    assert f"--config {config}: no such file" in capsys.readouterr().err  # run-level flags pass


def test_real_data_mode_probes_real_captions(small_embedded, test_data, tmp_path, capsys):
    out = tmp_path / "real"
    argv = QUICK + [
        "--data",
        str(test_data / "coco_mini/annotations/instances_val2017.json"),
        "--image-root",
        str(test_data / "coco_mini/val2017"),
        "--measurements",
        "probes,gradnorms",
        "--null-models",
        "2",
        "--rule",
        "auto_rgn",
        "--rgn-floor",
        "0.3",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 1  # 2 null models: 1 degree of freedom, no evidence can pass
    measured = json.loads((out / "measurements.json").read_text())
    assert measured["meta"]["tasks"]["negation"]["source"] == "real"
    # 15 usable images: a quarter of them hold the test splits, and on so few only the held-out cues keep both classes
    task = measured["meta"]["tasks"]["negation"]
    assert {r["split"] for r in measured["probes"]} == {"heldout_cue"} == set(task["tests"])
    assert task["split_by"] == "image" and task["images"] == {"train": 11, "test": 4}
    assert not measured["sensitivity"] and measured["gradnorms"]
    assert {r["model"] for r in measured["gradnorms"]} == {"trained", "null:1", "null:2"}
    # the gradient norms ran on the file's images and captions, and the record says so
    data = measured["meta"]["data"]
    assert set(data) == {"probes", "gradnorms"} and {d["kind"] for d in data.values()} == {"real"}
    assert data["gradnorms"]["source"].endswith("instances_val2017.json") and data["gradnorms"]["batch_size"] == 16
    assert measured["meta"]["completed"] == [
        "probes/trained",
        "gradnorms/trained",
        "fisher/trained",
        "probes/null:1",
        "gradnorms/null:1",
        "probes/null:2",
        "gradnorms/null:2",
    ]
    assert "instances_val2017.json" in " ".join(json.loads((out / "report.json").read_text())["summary"])
    assert LayerPlan.load(out / "layer_plan.json").blocks == []
    assert (out / "figures" / "gradnorms.png").is_file() and not (out / "figures" / "sensitivity.png").exists()


def test_open_clip_config_with_a_checkpoint_file(write_config, tmp_path, capsys):
    import torch

    from probing.clip.loading import load_clip, save_clip_checkpoint

    config = write_config("tiny-probe", layers=3)
    torch.manual_seed(123)  # weights unlike the null models' seeded inits
    model, _, _ = load_clip(config)
    checkpoint = save_clip_checkpoint(model, tmp_path / "tiny.safetensors", model_name="tiny-probe")
    out = tmp_path / "tiny"
    argv = [
        "--model",
        str(config),
        "--pretrained",
        str(checkpoint),
        "--probe-train",
        "100",
        "--probe-test",
        "40",
        "--probe-seeds",
        "0",
        "--null-probe-seeds",
        "0",
        "--null-models",
        "2",
        "--measurements",
        "probes,sensitivity,gradnorms",
        "--grad-batches",
        "1",
        "--grad-batch-size",
        "8",
        "--sensitivity-captions",
        "30",
        "--rule",
        "topk",
        "--k",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(argv) in (0, 1)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["pretrained"] == str(checkpoint) and report["model"]["n_layers"] == 3
    assert set(report["evidence"]["components"]) == {"probe", "sensitivity", "gradnorm"}
    assert "selected blocks:" in capsys.readouterr().out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_random_tower_gets_no_plan_against_ten_null_models(write_config, tmp_path, capsys, seed):
    """The null of the whole method: a randomly initialised text tower (weights from another seed than
    the null models') is itself a draw from the null, so against 10 null models no block may carry
    evidence, the run ends without a plan (exit 1), and every t stays under the family-wise bound."""
    import torch

    from probing.clip.loading import load_clip, save_clip_checkpoint

    config = write_config("tiny-random", layers=4)
    torch.manual_seed(1000 + seed)
    model, _, _ = load_clip(config)
    checkpoint = save_clip_checkpoint(model, tmp_path / "random.safetensors", model_name="tiny-random")
    out = tmp_path / "random"
    argv = [
        "--model",
        str(config),
        "--pretrained",
        str(checkpoint),
        "--probe-train",
        "160",
        "--probe-test",
        "60",
        "--probe-seeds",
        "0,1",
        "--null-models",
        "10",
        "--measurements",
        "probes,sensitivity,gradnorms",
        "--grad-batches",
        "2",
        "--grad-batch-size",
        "16",
        "--sensitivity-captions",
        "60",
        "--seed",
        str(seed),
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 1
    report = json.loads((out / "report.json").read_text())
    assert LayerPlan.load(out / "layer_plan.json").blocks == []
    components = report["evidence"]["components"]
    assert set(components) == {"probe", "sensitivity", "gradnorm"}
    for name, component in components.items():
        assert component["n_null"] == 10 and not any(component["significant"])
        assert max(component["z"]) < component["critical"], (name, component["z"], component["critical"])
    # the t statistics of the gradient norms, recomputed from the tables without analysis.planning.evidence
    measured = json.loads((out / "measurements.json").read_text())
    t = recompute_t(measured, {}, "gradnorm")
    assert t == pytest.approx(components["gradnorm"]["z"], abs=1e-6)
    assert "no block carries negation evidence" in capsys.readouterr().out


def test_a_finished_run_selects_again_from_its_measurements(small_embedded, tmp_path, capsys):
    from analysis.pipeline import reselect
    from analysis.planning.selection import SelectionConfig

    out = tmp_path / "run"
    assert cli.main(QUICK + ["--null-models", "3", "--out", str(out)]) == 1  # no plan at the run's own alpha
    kept = {name: (out / name).read_bytes() for name in ("measurements.json", "items.npz", "probes.csv")}
    # the run's own evidence settings, loosened in its config.json, so that evidence survives and a rule has blocks
    record = json.loads((out / "config.json").read_text())
    record["config"]["evidence"]["alpha"] = 0.999
    (out / "config.json").write_text(json.dumps(record))
    window = reselect(out, SelectionConfig(rule="window"))
    assert window.plan.blocks, "a family-wise alpha of 0.999 lets some block's evidence through"
    saved = json.loads((out / "layer_plan.json").read_text())
    assert saved["blocks"] == window.plan.blocks and saved["rule"].startswith("window")
    stability = saved["evidence"]["stability"]
    lead = reselect(out, SelectionConfig(rule="lead"))
    # the same evidence (the run's bootstrap seed), so the lead is the first block of the window's consensus
    held = [b for b, share in enumerate(stability) if share >= 0.5] or window.plan.blocks
    assert lead.plan.blocks == [held[0]] and lead.evidence.combined == window.evidence.combined
    assert json.loads((out / "config.json").read_text())["config"]["selection"]["rule"] == "lead"
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["blocks"] == [held[0]] and f"block {held[0]} of 12" in report["summary"][0]
    assert {name: (out / name).read_bytes() for name in kept} == kept  # nothing measured again


@pytest.mark.parametrize("path, value, message", [
    ("null_models", "ten", "ProbeConfig.null_models must be an integer, got 'ten'"),
    ("seed", None, "ProbeConfig.seed must be an integer, got None"),
    ("measure.seeds", "0", "MeasureConfig.seeds must be a list of integers, got '0'"),
    ("save_activations", 1, "ProbeConfig.save_activations must be true or false, got 1"),
    ("measure", None, "ProbeConfig.measure must be a JSON object, got None"),
    ("measure.batch_size", 0, "setting measure.batch_size must be at least 1, got 0"),
    ("null_models", -4, "setting null_models must be at least 0, got -4"),
    ("null_models", 1, "null_models must be 0 (measurements only: no evidence, no plan) or at least 2"),
    ("measure.n_causal", 5, "setting measure.n_causal must be at least 100, got 5"),
    ("selection.share", 1.5, "config.json is not a probe-layers config.json: share must be in (0, 1], got 1.5"),
])
def test_a_config_json_is_held_to_the_types_and_ranges_the_flags_are(tmp_path, capsys, path, value, message):
    """--config: a value of the wrong type or below the floor its flag has is one line and exit 2, before the model
    loads (the same floors: analysis.probe_config.MINIMUM, which the flags read)."""
    from analysis.probe_config import ProbeConfig

    file = ProbeConfig().save(tmp_path)
    record = json.loads(file.read_text())
    *parents, name = path.split(".")
    node = record["config"]
    for parent in parents:
        node = node[parent]
    node[name] = value
    file.write_text(json.dumps(record))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--config", str(file), "--no-progress", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_config_json_that_fits_its_types_reads_back_equal(tmp_path):
    """The type check refuses no valid config: optional sections off (localise null), a flag-or-string union
    (train_embeddings true), integers where numbers are due (share 1)."""
    from analysis.planning.selection import SelectionConfig
    from analysis.probe_config import ProbeConfig

    config = ProbeConfig(localise=None, threads=2, save_activations=True,
                         selection=SelectionConfig(train_embeddings=True, share=1))
    record = json.loads(config.save(tmp_path).read_text())
    assert record["config"]["selection"]["share"] == 1 and isinstance(record["config"]["selection"]["share"], int)
    assert ProbeConfig.load(tmp_path / "config.json") == config
