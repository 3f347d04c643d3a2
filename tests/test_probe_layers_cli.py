"""`probe-layers` end to end on the small embedded build, its one-line errors, and an instant --help.

The plan is checked against the saved numbers with an independent recomputation of the rule
(pandas, straight from the formulas in analysis/selection.py's docstring).
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

QUICK = ["--model", "embedded:small", "--n-train", "200", "--n-test", "60", "--seeds", "0,1", "--n-sensitivity", "60",
         "--n-causal", "100", "--grad-batches", "2", "--grad-batch-size", "16", "--threads", "1", "--no-progress"]


def test_named_choices_are_the_librarys_own():
    from finetune.embedded import SPECS
    from finetune.losses import gradnorm_loss_fns
    from probing.measure.layers import MEASUREMENTS, measure_layers  # noqa: F401  (imports check the names)
    from probing.vocabulary import EMBEDDED_VARIANTS

    assert set(EMBEDDED_VARIANTS) == set(SPECS) and cli.MEASUREMENTS is MEASUREMENTS
    assert set(gradnorm_loss_fns()) == set(cli.GRADNORM_LOSSES)


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); from analysis.cli.probe_layers import build_parser, check_args; "
            "p = build_parser(); check_args(p.parse_args(['--out', 'x', '--rule', 'topk']), p); "
            "assert 'torch' not in sys.modules, 'heavy import'; "
            "print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 1.0
    start = time.perf_counter()
    shown = subprocess.run([sys.executable, "-m", "analysis.cli.probe_layers", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--rule" in shown.stdout and "embedded:small" in shown.stdout
    assert time.perf_counter() - start < 10  # interpreter start-up included; torch alone takes longer


@pytest.mark.parametrize("argv, message", [
    (["--share", "1.5"], "--share"),
    (["--k", "0"], "--k"),
    (["--n-test", "3"], "must be >= 10"),
    (["--seeds", "a,b"], "--seeds"),
    (["--measurements", "probes,magic"], "unknown magic"),
    (["--measurements", "causal,sensitivity"], "needs probes"),
    (["--measurements", "causal"], "needs probes"),
    (["--rule", "auto_rgn", "--measurements", "probes"], "need gradnorms"),
    (["--lr-weights", "--measurements", "probes,sensitivity"], "need gradnorms"),
    (["--pretrained", "x.pt"], "does not go with the embedded model"),
    (["--model", "embedded:huge"], "unknown embedded model 'huge'"),
    (["--data", "/no/such/file.csv"], "no such file"),
    (["--score-weights", "1,2"], "--score-weights"),
    (["--grad-loss", "omni_absence", "--losses", "clip"], "not among --losses"),
    (["--rule", "middle"], "invalid choice"),
    (["--memory-budget", "0"], "--memory-budget: must be > 0"),
    (["--token-budget", "0"], "--token-budget: must be >= 1"),
])
def test_bad_arguments_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe-layers: error:") and "\n" not in err and message in err


def test_loader_and_model_errors_are_one_line(tmp_path, shared_data, capsys):
    broken = tmp_path / "broken.csv"
    broken.write_text("colour,shape\nred,circle\n")
    assert cli.main(["--data", str(broken), "--no-progress", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe-layers: error:") and "broken.csv" in err and "\n" not in err

    assert cli.main(["--data", str(shared_data / "sugarcrepe"), "--no-progress",
                                  "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "FoilPair records" in err and "\n" not in err

    assert cli.main(["--data", str(broken), "--data-kind", "magic", "--no-progress",
                                  "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown dataset kind 'magic'" in err and "\n" not in err

    assert cli.main(["--model", "no-such-architecture", "--no-progress", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probe-layers: error:") and "no-such-architecture" in err and "\n" not in err


def recompute_prefix(measured: dict, share: float, margin_floor: float = 0.03, weights=(0.5, 0.25, 0.25)):
    """The prefix rule recomputed from measurements.json with pandas (no analysis.selection code)."""
    n = measured["n_layers"]
    probes = pd.DataFrame(measured["probes"])
    held = probes[(probes.labels == "task") & (probes.probe == "logistic") & probes.split.str.startswith("heldout")]
    accuracy = held.groupby(["task", "model", "layer"]).accuracy.mean().unstack("model")
    margin = accuracy.trained - accuracy.random
    margin[margin < margin_floor] = 0.0
    probe_gain = np.maximum(0, np.diff(margin.groupby("layer").mean().to_numpy()))
    sens = pd.DataFrame(measured["sensitivity"]).pivot(index="layer", columns="edit", values="sensitivity")
    excess = np.maximum(0, (sens.presence - sens.control).to_numpy())
    excess[0] = 0.0
    sens_gain = np.maximum(0, np.diff(excess))
    grads = pd.DataFrame(measured["gradnorms"])
    table = grads[grads.component == "all"].pivot(index="layer", columns="loss", values="relative_norm")
    grad_profile = (table / table.sum()).mean(axis=1).to_numpy()
    parts = [(w, x / x.sum()) for w, x in zip(weights, (probe_gain, grad_profile, sens_gain)) if x.sum() > 0 and w > 0]
    combined = sum(w * x for w, x in parts) / sum(w for w, _ in parts)
    assert len(combined) == n
    k = int(np.argmax(np.cumsum(combined) >= share - 1e-9)) + 1
    return list(range(k)), combined


def test_end_to_end_on_the_small_build(small_embedded, tmp_path, capsys):
    out = tmp_path / "run"
    start = time.perf_counter()
    assert cli.main(QUICK + ["--share", "0.7", "--out", str(out)]) == 0
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert f"wrote {out}/" in printed and "selected blocks:" in printed

    expected = ["causal.csv", "gradnorms.csv", "layer_plan.json", "measurements.json", "probes.csv", "report.json",
                "report.md", "selectivity.csv", "sensitivity.csv"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == expected
    figures = {p.name for p in (out / "figures").iterdir()}
    for name in ("probe_accuracy", "selectivity", "sensitivity", "gradnorms", "block_scores"):
        assert {f"{name}.png", f"{name}.pdf"} <= figures

    plan = LayerPlan.load(out / "layer_plan.json")
    plan.validate(12)
    measured = json.loads((out / "measurements.json").read_text())
    assert measured["n_layers"] == 12 and measured["meta"]["model"]["model"] == "embedded:small"
    assert {r["loss"] for r in measured["gradnorms"]} == set(cli.GRADNORM_LOSSES)
    assert {r["model"] for r in measured["probes"]} == {"trained", "random"}

    blocks, combined = recompute_prefix(measured, share=0.7)
    assert plan.blocks == blocks
    assert [row["combined"] for row in plan.evidence["per_block"]] == pytest.approx(combined.tolist())
    assert plan.evidence["config"]["share"] == 0.7 and plan.rule == "front-prefix(share=0.7)"
    assert f"selected blocks: {cli_blocks(blocks)}" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["plan"] == json.loads((out / "layer_plan.json").read_text())
    assert report["embedded_metrics"]["scope_accuracy"] >= 0 and report["model"]["n_layers"] == 12
    md = (out / "report.md").read_text()
    assert report["summary"][0] in md and "](figures/probe_accuracy.png)" in md
    print(f"probe-layers end to end: {elapsed:.1f} s")


def cli_blocks(blocks):
    from analysis.selection import describe_blocks

    return describe_blocks(blocks)


def test_real_data_mode_probes_real_captions(small_embedded, shared_data, tmp_path, capsys):
    out = tmp_path / "real"
    argv = QUICK + ["--data", str(shared_data / "coco_mini/annotations/instances_val2017.json"),
                    "--image-root", str(shared_data / "coco_mini/val2017"), "--measurements", "probes,gradnorms",
                    "--rule", "auto_rgn", "--rgn-floor", "0.3", "--out", str(out)]
    assert cli.main(argv) == 0
    measured = json.loads((out / "measurements.json").read_text())
    assert measured["meta"]["tasks"]["negation"]["source"] == "real"
    assert {r["split"] for r in measured["probes"]} == {"in_distribution", "heldout_cue"}
    assert not measured["sensitivity"] and measured["gradnorms"]  # gradient norms from the synthetic world
    plan = LayerPlan.load(out / "layer_plan.json")
    grads = pd.DataFrame(measured["gradnorms"])
    table = grads[grads.component == "all"].pivot(index="layer", columns="loss", values="relative_norm")
    profile = (table / table.sum()).mean(axis=1)
    weights = profile / profile.max()
    assert plan.blocks == [b for b in range(12) if weights[b] >= 0.3]
    assert plan.lr_weights == pytest.approx({b: weights[b] for b in plan.blocks})
    assert (out / "figures" / "gradnorms.png").is_file() and not (out / "figures" / "sensitivity.png").exists()


def test_open_clip_config_with_a_checkpoint_file(write_config, tmp_path, capsys):
    import torch

    from probing.models.loading import load_clip, save_clip_checkpoint

    config = write_config("tiny-probe", layers=3)
    torch.manual_seed(123)  # weights unlike the seeded random baseline
    model, _, _ = load_clip(config)
    checkpoint = save_clip_checkpoint(model, tmp_path / "tiny.safetensors", model_name="tiny-probe")
    out = tmp_path / "tiny"
    argv = ["--model", str(config), "--pretrained", str(checkpoint), "--n-train", "100", "--n-test", "40",
            "--seeds", "0", "--measurements", "probes,sensitivity,gradnorms", "--grad-batches", "1",
            "--grad-batch-size", "8", "--n-sensitivity", "30", "--rule", "topk", "--k", "2", "--lr-weights",
            "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    plan = LayerPlan.load(out / "layer_plan.json")
    assert len(plan.blocks) == 2 and set(plan.lr_weights) == set(plan.blocks) and max(plan.lr_weights.values()) == 1.0
    scores = [row["combined"] for row in plan.evidence["per_block"]]
    assert min(scores[b] for b in plan.blocks) >= max(s for b, s in enumerate(scores) if b not in plan.blocks)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["pretrained"] == str(checkpoint) and report["model"]["n_layers"] == 3
    assert "selected blocks:" in capsys.readouterr().out
