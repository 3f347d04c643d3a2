"""The embedded models: shipped files that match their specs, compact storage rebuilt bit for bit,
a damaged file named as damaged, and builds that go to the cache, never over the shipped file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from probing.clip.compact import COMPACT_KEY, DIGEST_KEY, ROWS_SUFFIX, portable_uniform, state_digest
from probing.clip.loading import ModelLoadError, checkpoint_metadata, load_clip, read_checkpoint
from probing.models import build as embedded
from probing.models.build import checkpoint_path, ensure_embedded_model
from probing.models.embedded import REGISTRY
from probing.models.factory import create_model, embedded_checkpoint

SMALL_SPEC = REGISTRY["small"].spec


@pytest.mark.parametrize("variant", [name for name, model in REGISTRY.items() if model.shipped])
def test_every_variant_ships_and_records_the_spec_that_builds_it(variant):
    path = embedded_checkpoint(variant)
    metadata = checkpoint_metadata(path)
    assert json.loads(metadata["spec"]) == json.loads(json.dumps(REGISTRY[variant].spec.recorded()))
    assert path.stat().st_size < 36e6  # "at most about 35 MB per model version"
    assert COMPACT_KEY in metadata and DIGEST_KEY in metadata
    checkpoint = read_checkpoint(path)  # rebuilds the compact embedding and checks the SHA-256
    assert state_digest(checkpoint.state_dict) == metadata[DIGEST_KEY]


def test_small_shipped_numbers_are_above_chance():
    metrics = create_model("embedded:small").metrics
    # smoke level (REFERENCE.md: a 60-second build reaches R@1 ~0.05): clearly above chance, no more
    assert metrics["image_to_text_R@1_among_100"] > 0.04  # chance 0.01
    assert metrics["zero_shot_affirmative/classes=colour"] > 0.5  # chance 1/6
    assert metrics["pretraining_minutes"] > 0
    for key in ("ccneg_accuracy", "scope_accuracy", "absence_accuracy", "zero_shot_negated"):
        assert 0.0 <= metrics[key] <= 1.0


def test_recorded_numbers_belong_to_the_shipped_weights():
    from probing.synthetic.suite import SyntheticSuite

    bundle = create_model("embedded:small")
    again, _, _ = load_clip(SMALL_SPEC.model, pretrained=bundle.checkpoint)
    tokens = bundle.tokenizer(["a red circle and no blue square"])
    assert torch.equal(bundle.model.encode_text(tokens), again.encode_text(tokens))
    world = embedded.world_for(SMALL_SPEC)
    assert bundle.world.config == world.config and bundle.world.seed == world.seed and bundle.world_recorded
    suite = SyntheticSuite.build(world, n=SMALL_SPEC.eval_scenes, n_classification=min(720, SMALL_SPEC.eval_scenes),
                                 split="test", heldout="all", seed=SMALL_SPEC.seed + 1)
    fresh = suite.scores(bundle.model, bundle.preprocess, bundle.tokenizer)
    # same weights; another CPU may flip a pair whose two scores agree to ~1e-7, hence one item of slack
    for key in ("scope_accuracy", "ccneg_accuracy", "image_to_text_R@1_among_100"):
        assert fresh[key] == pytest.approx(bundle.metrics[key], abs=1.01 / SMALL_SPEC.eval_scenes)


def _splitmix64_reference(seed: int, n: int) -> list[int]:
    """SplitMix64 in plain Python integers (the published algorithm), to check the numpy version."""
    mask, state, out = 2**64 - 1, seed, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_portable_init_is_splitmix64_scaled_exactly():
    values = portable_uniform(7, (4, 5), std=0.02)
    expected = []
    for z in _splitmix64_reference(7, 20):
        unit = ((z >> 40) + 0.5) / 2.0**24 * 2.0 - 1.0
        expected.append(np.float32(unit * (0.02 * 3.0**0.5)))
    assert values.dtype == torch.float32 and values.shape == (4, 5)
    assert values.flatten().numpy().tobytes() == np.array(expected, dtype=np.float32).tobytes()
    big = portable_uniform(0, (2000, 64))
    assert abs(float(big.std()) - 0.02) < 2e-4 and float(big.abs().max()) < 0.02 * 3**0.5
    assert torch.equal(big, portable_uniform(0, (2000, 64))) and not torch.equal(big, portable_uniform(1, (2000, 64)))


@pytest.fixture(scope="module")
def short_build(tmp_path_factory):
    """A 6-step build of the small spec into a fresh cache: (path, trained model, spec)."""
    import os

    previous = os.environ.get("CLIP_NEGATION_CACHE")
    os.environ["CLIP_NEGATION_CACHE"] = str(tmp_path_factory.mktemp("build-cache"))
    spec = embedded.with_overrides(SMALL_SPEC, steps=6, eval_scenes=100)
    model, metrics = embedded.pretrain(spec, progress=False)
    path = ensure_embedded_model(spec, progress=False)
    yield path, model, spec
    if previous is None:
        os.environ.pop("CLIP_NEGATION_CACHE", None)
    else:
        os.environ["CLIP_NEGATION_CACHE"] = previous


def test_compact_checkpoint_rebuilds_the_trained_tensors_bit_for_bit(short_build):
    from safetensors.torch import load_file

    path, trained, spec = short_build
    stored = load_file(str(path))
    key = "token_embedding.weight"
    rows = stored[key + ROWS_SUFFIX]
    assert key not in stored and 0 < len(rows) < 200  # a few dozen rows of 49408 are stored
    rebuilt = read_checkpoint(path).state_dict
    expected = trained.state_dict()
    assert set(rebuilt) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(rebuilt[name], tensor), name  # bit for bit, the rows never stored included
    # the rows not stored are exactly the portable init: pretraining never moved them
    untouched = torch.ones(tensor_rows := expected[key].shape[0], dtype=torch.bool)
    untouched[rows] = False
    init = portable_uniform(spec.seed, (tensor_rows, expected[key].shape[1]))
    assert torch.equal(expected[key][untouched], init[untouched])


def test_builds_go_to_the_cache_and_are_reused(short_build, monkeypatch):
    path, _, spec = short_build
    shipped = embedded_checkpoint("small")
    assert path == checkpoint_path(spec) and path.parent != shipped.parent
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(
        embedded, "pretrain", lambda *a, **k: pytest.fail("pretrained again instead of using the cache")
    )
    assert ensure_embedded_model(spec, progress=False) == path and path.stat().st_mtime_ns == mtime


def test_damaged_files_are_named_as_damaged(tmp_path):
    shipped = embedded_checkpoint("small")
    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(shipped.read_bytes())
    data[-100] ^= 0xFF  # one byte of the last tensor's data
    flipped.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"flipped.safetensors is damaged: .*SHA-256"):
        read_checkpoint(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(shipped.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match="truncated.safetensors"):
        load_clip("negclip-micro", pretrained=truncated)
    # the rows tensor of the compact embedding renamed away: the file cannot be rebuilt
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(shipped))
    tensors["something_else"] = tensors.pop("token_embedding.weight" + ROWS_SUFFIX)
    save_file(tensors, str(tmp_path / "norows.safetensors"), metadata=checkpoint_metadata(shipped))
    with pytest.raises(ModelLoadError, match="norows.safetensors is damaged"):
        read_checkpoint(tmp_path / "norows.safetensors")


def test_spec_key_changes_with_settings():
    assert SMALL_SPEC.key() != embedded.with_overrides(SMALL_SPEC, seed=1).key()
    assert checkpoint_path(SMALL_SPEC) != checkpoint_path(embedded.with_overrides(SMALL_SPEC, steps=61))


def test_build_runs_at_the_specs_thread_count_and_restores_the_callers(monkeypatch):
    seen = []
    monkeypatch.setattr(embedded, "_pretrain", lambda spec, progress: (seen.append(torch.get_num_threads()), {})[1])
    before = torch.get_num_threads()
    embedded.pretrain(embedded.with_overrides(SMALL_SPEC, threads=3), progress=False)
    assert seen == [3] and torch.get_num_threads() == before
    # another thread count gives other weights, so it is another cached model
    assert SMALL_SPEC.key() != embedded.with_overrides(SMALL_SPEC, threads=2).key()


def test_build_command_prints_the_shipped_numbers_and_compares_a_build(short_build, capsys):
    from analysis.cli.build_embedded import main

    shipped = create_model("embedded:small")
    assert main(["--model", "embedded:small", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(shipped.checkpoint) in printed and f"{shipped.metrics['scope_accuracy']:.3f}" in printed
    assert main(["--model", "embedded:small", "--steps", "6", "--no-progress"]) == 0  # another build: into the cache
    printed = capsys.readouterr().out
    assert "pretraining negclip-micro from scratch: 0 image-tower warm-up and 6 contrastive steps" in printed
    assert "shipped" in printed and "diff" in printed
    with pytest.raises(SystemExit):
        main(["--model", "embedded:small", "--threads", "0"])
    assert "--threads: must be >= 1" in capsys.readouterr().err


_LOCK_PROBE = """
import json, os, sys, time
from pathlib import Path
go, ready, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
from probing.models import build as embedded
from probing.models.embedded import REGISTRY
spec = embedded.with_overrides(REGISTRY["small"].spec, steps=6, eval_scenes=100)
real = embedded.pretrain
def counted(*args, **kwargs):
    with log.open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    return real(*args, **kwargs)
embedded.pretrain = counted
ready.write_text("ready")
while not go.exists():
    time.sleep(0.01)
start = time.perf_counter()
path = embedded.ensure_embedded_model(spec, progress=False, lock_timeout=300)
print(json.dumps({"pid": os.getpid(), "path": str(path), "seconds": time.perf_counter() - start}))
"""


def test_two_processes_asking_for_one_build_pretrain_it_once(tmp_path):
    """The build lock: both processes reach ensure_embedded_model together (a barrier file); one pretrains,
    the other waits for it and returns the same file."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    env = dict(os.environ, CLIP_NEGATION_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    go, log = tmp_path / "go", tmp_path / "pretrained.log"
    processes = [subprocess.Popen([sys.executable, "-c", _LOCK_PROBE, str(go), str(tmp_path / f"ready{i}"), str(log)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "probes did not start"
        time.sleep(0.05)
    go.write_text("go")
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    builders = log.read_text().split()
    assert len(builders) == 1  # pretrained once
    waiter = next(result for result in results if str(result["pid"]) != builders[0])
    builder = next(result for result in results if str(result["pid"]) == builders[0])
    assert results[0]["path"] == results[1]["path"] and Path(results[0]["path"]).is_file()
    assert waiter["seconds"] >= 0.5 * builder["seconds"]  # it waited for the build instead of doing its own
    assert Path(results[0]["path"]).with_suffix(".json").is_file()
    assert not list(Path(results[0]["path"]).parent.glob("*.tmp"))


def test_metrics_file_is_written_before_the_weights(tmp_path, monkeypatch):
    """A checkpoint that exists always has its metrics file beside it: the metrics go first."""
    monkeypatch.setenv("CLIP_NEGATION_CACHE", str(tmp_path))
    written = []
    monkeypatch.setattr(embedded, "pretrain", lambda spec, progress=True: (create_model("embedded:small").model,
                                                                           {"scope_accuracy": 0.5}))
    real_json, real_weights = embedded.atomic_write_json, embedded.save_clip_checkpoint
    monkeypatch.setattr(embedded, "atomic_write_json", lambda path, obj: written.append(Path(path).suffix)
                        or real_json(path, obj))
    monkeypatch.setattr(embedded, "save_clip_checkpoint", lambda model, path, **kw: written.append(Path(path).suffix)
                        or real_weights(model, path, **kw))
    spec = embedded.with_overrides(SMALL_SPEC, steps=7)
    path = ensure_embedded_model(spec, progress=False)
    assert written == [".json", ".safetensors"] and embedded.embedded_metrics(spec) == {"scope_accuracy": 0.5}
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_a_cache_that_is_a_file_is_named_before_any_pretraining(tmp_path, monkeypatch):
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    monkeypatch.setenv("CLIP_NEGATION_CACHE", str(cache))
    monkeypatch.setattr(embedded, "pretrain", lambda *a, **k: pytest.fail("pretrained into an unusable cache"))
    with pytest.raises(embedded.CacheError, match="model cache folder .*cache-file/embedded cannot be used"):
        ensure_embedded_model(embedded.with_overrides(SMALL_SPEC, steps=5), progress=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
