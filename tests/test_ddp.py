"""Data-parallel training under torchrun (2 gloo processes on CPU) equals one process with the same global batch."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config

WORKER = textwrap.dedent('''
    import sys
    import numpy as np
    import torch
    from probing.data.records import NegationExample
    from probing.models import load_clip
    from finetune.plan import LayerPlan
    from finetune.train import TrainConfig, train

    config_path, out_dir, loss = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    words = ["dog", "cat", "car", "tree", "ball", "cup", "hat", "lamp"]
    examples = []
    for i in range(16):
        a, b, c = rng.choice(words, 3, replace=False)
        examples.append(NegationExample(
            image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), caption=f"a {a} next to a {b}" + " big" * (i % 3),
            presence_negated=f"a {a} and no {b}", absence_negated=f"a {a} and a {b} but no {c}",
            distractor_image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    torch.manual_seed(0)
    model, preprocess, tokenizer = load_clip(config_path)
    plan = LayerPlan(blocks=[0, 2], train_embeddings=True, train_projection=True, train_logit_scale=True,
                     lr_weights={0: 1.0, 2: 0.5})
    config = TrainConfig(loss=loss, lr=1e-3, warmup_steps=1, steps=3, batch_size=8, grad_accum=2, out_dir=out_dir,
                         model_name="tiny-ddp", log_every=1, ckpt_every=100, progress=False, tensorboard=False)
    train(model, tokenizer, preprocess, examples, plan, config)
''')


def run(command, env):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    config = tmp_path / "tiny-ddp.json"
    config.write_text(json.dumps(tiny_config(layers=3)))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    env.pop("WORLD_SIZE", None)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # conclip with distractors: captions, negated captions and both image caches go through the gather
    run([sys.executable, str(script), str(config), str(single), "conclip"], env)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(config), str(ddp), "conclip"], env)

    assert json.loads((ddp / "run.json").read_text())["world_size"] == 2
    one, two = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert one.keys() == two.keys()
    changed = [key for key in one if not torch.equal(one[key], _initial(key, config))]
    assert "transformer.resblocks.0.attn.in_proj_weight" in changed and "logit_scale" in changed
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=f"{key} differs")
    # AdamW and clipping hide a wrong gradient scale in the weights; the logged norm (before clipping) does not
    for column in ("loss", "grad_norm"):
        one_run, two_runs = _column(single, column), _column(ddp, column)
        assert len(one_run) == 3
        torch.testing.assert_close(torch.tensor(two_runs), torch.tensor(one_run), rtol=1e-5, atol=1e-6,
                                   msg=f"{column} differs")


_initial_cache = {}


def _initial(key, config_path):
    """The untrained weights (same seed as the worker), to check that training changed something."""
    if not _initial_cache:
        from probing.models import load_clip

        torch.manual_seed(0)
        model, _, _ = load_clip(str(config_path))
        _initial_cache.update(model.state_dict())
    return _initial_cache[key]


def _column(out_dir, column):
    with (out_dir / "metrics.csv").open() as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]
