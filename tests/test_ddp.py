"""The same `finetune-layers` command under torchrun (2 gloo processes on CPU) equals one process
with the same global batch: same losses, same gradient norms, same final weights."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config


def run(command, env):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    config = tmp_path / "tiny-ddp.json"
    config.write_text(json.dumps(tiny_config(layers=3)))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"blocks": [0, 2], "train_embeddings": True, "train_projection": True,
                                "train_logit_scale": True, "lr_weights": {"0": 1.0, "2": 0.5}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # conclip with distractor images: captions and negated captions go through the gather,
    # images and distractor images through the sharded cache
    args = ["--model", str(config), "--data", "synthetic", "--train-examples", "16", "--loss", "conclip",
            "--plan", str(plan), "--lr", "1e-3", "--warmup-steps", "1", "--steps", "3", "--batch-size", "8",
            "--grad-accum", "2", "--log-every", "1", "--device", "cpu", "--no-tensorboard", "--no-progress"]
    run([sys.executable, "-m", "analysis.cli.finetune_layers", *args, "--out", str(single)], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "analysis.cli.finetune_layers", *args, "--out", str(ddp)], env)

    assert json.loads((ddp / "run.json").read_text())["world_size"] == 2
    one, two = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert one.keys() == two.keys()
    initial = _initial_weights(config)
    changed = {key for key in one if not torch.equal(one[key], initial[key])}
    assert {"transformer.resblocks.0.attn.in_proj_weight", "logit_scale"} <= changed
    assert "transformer.resblocks.1.attn.in_proj_weight" not in changed
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=f"{key} differs")
    # AdamW and clipping hide a wrong gradient scale in the weights; the logged norm (before clipping) does not
    for column in ("loss", "grad_norm"):
        one_run, two_runs = _column(single, column), _column(ddp, column)
        assert len(one_run) == 3
        torch.testing.assert_close(torch.tensor(two_runs), torch.tensor(one_run), rtol=1e-5, atol=1e-6,
                                   msg=f"{column} differs")


def _initial_weights(config_path):
    """The untrained weights (the CLI seeds with --seed 0 before building the model)."""
    from probing.clip.loading import load_clip

    torch.manual_seed(0)
    model, _, _ = load_clip(str(config_path))
    return model.state_dict()


def _column(out_dir, column):
    with (out_dir / "metrics.csv").open() as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]
