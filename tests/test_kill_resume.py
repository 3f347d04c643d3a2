"""Fine-tuning killed with SIGKILL at seeded random moments, then resumed, ends with the same weights, bit
for bit, as a run that was never interrupted, and leaves no temporary file behind.

The run checkpoints after every step, so most kills land while a checkpoint is being written (the
safetensors file, the training state, the `latest.json` pointer): the atomic writes must leave either
the previous checkpoint or the new one, and the next start must sweep the killed writer's temporary
files. A tiny model and 40 steps keep the whole test well under a minute.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import REPO, tiny_config

STEPS = 40
KILLS = 3
TIMING = ("samples_per_s", "elapsed_s")


def arguments(config: Path) -> list[str]:
    return ["--model", str(config), "--data", "synthetic", "--train-examples", "24", "--batch-size", "4",
            "--steps", str(STEPS), "--layers", "0-1", "--extras", "ln_final", "--resumable", "--ckpt-every", "1",
            "--log-every", "1",
            "--warmup-steps", "2", "--lr", "1e-3", "--seed", "3", "--no-progress", "--no-tensorboard",
            "--threads", "1", "--device", "cpu"]


def start(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "analysis.cli.finetune_layers", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(process: subprocess.Popen, metrics: Path, step: int, timeout: float = 60) -> bool:
    """True once the process has logged `step` (it logs every step), False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(metrics.read_text().rsplit("\n", 2)[-2].split(",")[0]) >= step:
                return True
        time.sleep(0.005)
    raise AssertionError(f"the fine-tuning process did not reach step {step} within a minute")


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def logged(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def test_sigkill_at_random_moments_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    from analysis.cli.finetune_layers import main
    from finetune.checkpoint import latest_checkpoint

    config = tmp_path / "tiny-kill.json"
    config.write_text(json.dumps(tiny_config(layers=2)))
    whole = tmp_path / "whole"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(arguments(config) + ["--out", str(whole)]) == 0

    out = tmp_path / "killed"
    rng = random.Random(20240518)
    # seeded random moments: after a random step is logged, a random fraction of a step later (a step here
    # is mostly its checkpoint write)
    targets = sorted(rng.sample(range(2, STEPS - 2), KILLS))
    killed_at = []
    for target in targets:
        process = start(arguments(config) + ["--resume", "--out", str(out)])
        if wait_for_step(process, out / "metrics.csv", target):
            time.sleep(rng.uniform(0.0, 0.05))
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL, f"ended before the kill at step {target}: {process.stderr.read()}"
        checkpoint = latest_checkpoint(out)  # never damaged by a kill: a complete checkpoint
        killed_at.append(checkpoint.step)
    assert killed_at == sorted(killed_at) and killed_at[-1] < STEPS, killed_at

    final = start(arguments(config) + ["--resume", "--out", str(out)])
    assert final.wait(timeout=120) == 0, final.stderr.read()
    expected, resumed = weights(whole / "model.safetensors"), weights(out / "model.safetensors")
    assert set(expected) == set(resumed)
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed[name]), f"{name} differs after {len(killed_at)} kills at {killed_at}"
    assert logged(out) == logged(whole)  # the same losses, learning rates and norms at every step
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.partial"))  # the killed writers' files swept


def test_sweep_removes_only_the_files_of_writers_that_are_gone(tmp_path):
    from probing.io import atomic_path, sweep_temporaries

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f".model.safetensors.{dead_pid}.abc123.tmp"
    stale.write_text("half a file")
    alive = tmp_path / f".state.pt.{os.getppid()}.def456.tmp"  # a writer that still runs
    alive.write_text("being written")
    other = tmp_path / ".notes.tmp"  # not ours
    other.write_text("x")
    with atomic_path(tmp_path / "mine.txt") as tmp:
        tmp.write_text("in progress")
        assert sweep_temporaries(tmp_path) == [stale]  # this process's own temporary file stays too
        assert tmp.exists()
    assert alive.exists() and other.exists() and not stale.exists()
    assert (tmp_path / "mine.txt").read_text() == "in progress"
    assert oct((tmp_path / "mine.txt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_SIGTERM_PROBE = """
import sys, time
from pathlib import Path
from analysis.cli.execution import run
from probing.io import atomic_path

def body():
    with atomic_path(Path(sys.argv[1]) / "result.json") as tmp:
        tmp.write_text("half")
        Path(sys.argv[1], "writing").write_text("now")
        time.sleep(60)
    return 0

sys.exit(run("probe", body))
"""


def test_sigterm_during_a_command_removes_its_temporary_files(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen([sys.executable, "-c", _SIGTERM_PROBE, str(tmp_path)], cwd=REPO, env=env,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "writing").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.01)
    assert list(tmp_path.glob(".result.json.*.tmp"))
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "result.json").exists()
