"""The disk cache of image features (probing.features.cache): what its key depends on, that a second
pass encodes nothing, that DataLoader workers give the in-process numbers, and that an ablation study
encodes each image once over all its runs. Image-tower work is counted with a forward hook."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from probing.clip.loading import load_clip, save_clip_checkpoint
from probing.features.cache import EncodeStats, FeatureCache, encode_image_features, image_key, tower_key
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny-cache.json"
    path.write_text(json.dumps(tiny_config(layers=2)))
    torch.manual_seed(0)
    model, preprocess, _ = load_clip(str(path))
    return model, preprocess, path


@pytest.fixture
def images(test_data):
    return sorted((test_data / "coco_mini/val2017").glob("*.jpg"))[:10]


def count_encoded(model) -> list[int]:
    """A list that collects the batch size of every image-tower forward call."""
    counted: list[int] = []
    model.visual.register_forward_hook(lambda module, inputs, output: counted.append(inputs[0].shape[0]))
    return counted


def test_tower_key_follows_the_image_tower_and_preprocessing_not_the_text_tower(tiny, tmp_path):
    import open_clip

    model, preprocess, path = tiny
    key = tower_key(model, preprocess)
    assert tower_key(model, preprocess) == key
    other, _, _ = load_clip(str(path))  # another random init: other checkpoint weights
    assert tower_key(other, preprocess) != key
    tuned, _, _ = load_clip(str(path))
    tuned.load_state_dict(model.state_dict())
    assert tower_key(tuned, preprocess) == key
    with torch.no_grad():
        tuned.transformer.resblocks[0].attn.in_proj_weight.add_(1.0)  # fine-tuning changes the text tower only
    assert tower_key(tuned, preprocess) == key
    with torch.no_grad():
        tuned.visual.conv1.weight.add_(1e-3)
    assert tower_key(tuned, preprocess) != key
    resize_only = open_clip.image_transform(32, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tower_key(model, resize_only) != key


def test_image_key_and_features_follow_the_file_content(tiny, images, tmp_path):
    model, preprocess, _ = tiny
    copy = tmp_path / "image.jpg"
    shutil.copy(images[0], copy)
    cache = FeatureCache.for_model(model, preprocess, root=tmp_path / "cache")
    before = encode_image_features(model, preprocess, [copy], cache=cache)
    key = image_key(copy)
    shutil.copy(images[1], copy)  # the same path, other bytes
    assert image_key(copy) != key
    after = encode_image_features(model, preprocess, [copy], cache=cache)
    expected = encode_image_features(model, preprocess, [images[1]], cache=False)
    assert torch.equal(after, expected) and not torch.allclose(after, before)


def test_second_pass_reads_the_disk_and_encodes_nothing(tiny, images, tmp_path):
    model, preprocess, _ = tiny
    counted = count_encoded(model)
    first = encode_image_features(model, preprocess, images + images[:3], batch_size=4,
                                  cache=FeatureCache.for_model(model, preprocess, root=tmp_path))
    assert sum(counted) == len(images)  # each distinct image once, the repeats from the first encoding
    assert torch.equal(first[len(images):], first[:3])
    counted.clear()
    fresh = FeatureCache.for_model(model, preprocess, root=tmp_path)  # what another process (a resume) sees
    stats_second = encode_image_features(model, preprocess, images, cache=fresh)
    assert counted == [] and torch.equal(stats_second, first[:len(images)])
    direct = encode_image_features(model, preprocess, images, cache=False)
    assert torch.allclose(direct, first[:len(images)], atol=1e-6)
    assert len(list((tmp_path / "image-features").rglob("chunk-*.safetensors"))) == 1


def test_dataloader_workers_give_the_in_process_features(tiny, images):
    model, preprocess, _ = tiny
    here = encode_image_features(model, preprocess, images, batch_size=3, cache=False, num_workers=0)
    workers = encode_image_features(model, preprocess, images, batch_size=3, cache=False, num_workers=2)
    assert torch.equal(here, workers)


def test_an_ablation_of_several_runs_encodes_each_image_once(small_embedded, tmp_path, monkeypatch):
    from analysis.ablation.config import AblationConfig
    from analysis.ablation.runner import EVAL_SUITES, AblationStudy

    monkeypatch.setenv("CLIP_NEGATION_CACHE", str(tmp_path / "cache"))  # no features from earlier tests
    config = AblationConfig(model="embedded:small", steps=2, batch_size=16, lr=1e-4, warmup_steps=1, n_train=32,
                            eval_n=100, eval_n_classification=36, seeds=(0, 1), variants=("front", "back"),
                            device="cpu")
    study = AblationStudy(config, tmp_path / "study", progress=False, log=lambda line: None)
    counted = count_encoded(study.base.model)  # every run trains a copy of this model: the hook goes with it
    first = study.run(max_runs=1)
    assert first.executed == [("front", 0)]
    encoded_first = sum(counted)
    rest = study.run()
    assert rest.executed == [("back", 0), ("front", 1), ("back", 1)] and rest.complete
    assert sum(counted) == encoded_first  # three more runs, nothing encoded again
    # what the first run encoded: each distinct training image (scenes and distractor images) and the suites'
    training = {image_key(image) for e in study.examples for image in (e.image, e.distractor_image)
                if image is not None}
    suites = study.evaluation.suites
    assert set(suites) == set(EVAL_SUITES)
    # the suites' images go through the same cache: each distinct one once (the three suites share their
    # zero-shot images, which are drawn with the same seed), multiple-choice scenes included
    evaluation = {image_key(image) for s in suites.values()
                  for images in (s.class_images, s.images, s.scope_images, s.mcq_images) if images is not None
                  for image in images}
    assert encoded_first == len(training) + len(evaluation)

# --- keys by content, damaged chunks, killed and concurrent writers (issue 28) ----------------------------------

def _bitmap(path, seed: int) -> None:
    """An uncompressed 24-bit image: every one of the same side has the same number of bytes."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, "BMP")


def _rewrite_keeping_size_and_times(path, seed: int) -> None:
    import os

    before = os.stat(path)
    _bitmap(path, seed)
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` or a restoring copy tool would
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("settled", [False, True], ids=["just-written", "settled"])
def test_a_file_rewritten_with_its_size_and_mtime_restored_is_not_served_stale(tiny, tmp_path, monkeypatch, settled):
    """The stale case of a key by path, size and mtime: the same path, size and modification time, other bytes.
    'settled': the first digest was remembered (the file had been left alone), so only the change time tells
    the rewrite apart; 'just-written': a file too fresh to remember is hashed on every use."""
    import time

    import probing.features.cache as cache_module

    model, preprocess, _ = tiny
    image = tmp_path / "scene.bmp"
    _bitmap(image, 0)
    monkeypatch.setattr(cache_module, "SETTLED_SECONDS", 0.2)
    if settled:
        time.sleep(0.3)
    cache = FeatureCache.for_model(model, preprocess, root=tmp_path / "cache")
    first = encode_image_features(model, preprocess, [image], cache=cache)
    remembered = any(entry[0] == str(image.resolve()) for entry in cache_module._FILE_KEYS)
    assert remembered == settled  # 'settled' exercises the remembered digest, 'just-written' the hash every time
    _rewrite_keeping_size_and_times(image, 1)
    stats = EncodeStats()
    again = encode_image_features(model, preprocess, [image], cache=cache, stats=stats)
    expected = encode_image_features(model, preprocess, [image], cache=False)
    assert stats.encoded == 1 and stats.cached == 0
    assert torch.equal(again, expected) and not torch.allclose(again, first)
    fresh = encode_image_features(model, preprocess, [image],
                                  cache=FeatureCache.for_model(model, preprocess, root=tmp_path / "cache"))
    assert torch.equal(fresh, expected)  # another process (a new cache object) reads the new features


def test_copies_of_an_image_share_one_entry(tiny, images, tmp_path):
    model, preprocess, _ = tiny
    copy = tmp_path / "renamed.jpg"
    shutil.copy(images[0], copy)
    assert image_key(copy) == image_key(images[0]) and image_key(images[1]) != image_key(images[0])
    cache = FeatureCache.for_model(model, preprocess, root=tmp_path / "cache")
    encode_image_features(model, preprocess, [images[0]], cache=cache)
    stats = EncodeStats()
    encode_image_features(model, preprocess, [copy], cache=cache, stats=stats)
    assert stats.cached == 1 and stats.encoded == 0


def _chunks(cache: FeatureCache) -> list:
    return sorted(cache.folder.glob("chunk-*.safetensors"))


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated", "not-safetensors", "features-swapped"])
def test_a_damaged_chunk_is_reported_once_removed_and_recomputed(tiny, images, tmp_path, damage):
    import warnings

    from safetensors.torch import load_file, save_file

    from probing.features.cache import CHECKSUM_KEY

    model, preprocess, _ = tiny
    root = tmp_path / "cache"
    expected = encode_image_features(model, preprocess, images[:4], cache=FeatureCache.for_model(
        model, preprocess, root=root))
    (chunk,) = _chunks(FeatureCache.for_model(model, preprocess, root=root))
    data = bytearray(chunk.read_bytes())
    if damage == "flipped-byte":  # inside the last feature: safetensors still reads it
        data[-3] ^= 0x40
        chunk.write_bytes(bytes(data))
    elif damage == "truncated":
        chunk.write_bytes(bytes(data[:len(data) // 2]))
    elif damage == "not-safetensors":
        chunk.write_bytes(b"\x00" * 64)
    else:  # a well-formed file whose rows were reordered after the SHA-256 was taken
        tensors = load_file(str(chunk))
        from probing.clip.loading import checkpoint_metadata

        recorded = checkpoint_metadata(chunk)[CHECKSUM_KEY]
        save_file({"keys": tensors["keys"], "features": tensors["features"].flip(0).contiguous()}, str(chunk),
                  metadata={CHECKSUM_KEY: recorded})
    for attempt in range(2):  # a second reader in this process: not reported again
        cache = FeatureCache.for_model(model, preprocess, root=root)
        stats = EncodeStats()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            served = encode_image_features(model, preprocess, images[:4], cache=cache, stats=stats)
        reports = [str(w.message) for w in caught if "image-feature cache" in str(w.message)]
        assert torch.equal(served, expected)
        if attempt == 0:
            assert len(reports) == 1 and str(chunk) in reports[0] and "damaged" in reports[0], reports
            assert stats.encoded == 4 and stats.cached == 0 and not chunk.exists()
        else:
            assert reports == [] and stats.cached == 4 and stats.encoded == 0


WRITER = r'''
import os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from probing.clip.loading import load_clip, save_clip_checkpoint
from probing.features.cache import FeatureCache, encode_image_features, image_key

config, weights, root, start, kill_at, mode, *images = sys.argv[1:]
model, preprocess, _ = load_clip(config, pretrained=weights)
if int(kill_at):  # SIGKILL this process in the middle of writing its chunk number kill_at
    import probing.features.cache as st  # the name the cache writes its chunks with
    real, calls = st.save_file, []
    def torn(tensors, filename, metadata=None):
        calls.append(filename)
        real(tensors, filename, metadata=metadata)
        if len(calls) == int(kill_at):
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[:len(data) // 2])  # half written, not yet renamed
            os.kill(os.getpid(), signal.SIGKILL)
    st.save_file = torn
cache = FeatureCache.for_model(model, preprocess, root=root)
if mode == "add":  # the features first, so that every writer then writes the same entries at the same moment
    features = encode_image_features(model, preprocess, images, batch_size=2, cache=False)
    keys = [image_key(image) for image in images]
Path(start + f".ready-{os.getpid()}").touch()  # waiting at the gate
while not Path(start).exists():  # every writer starts at once
    time.sleep(0.001)
if mode == "add":
    for first in range(0, len(images), 2):
        cache.add(keys[first:first + 2], features[first:first + 2])
else:
    encode_image_features(model, preprocess, images, batch_size=2, flush_every=2, cache=cache)
print("done", flush=True)
'''


@pytest.fixture
def writer(tiny, tmp_path):
    """Start writer processes on one cache: (start(kill_at, images) -> process, release(), the cache root)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    model, _, config = tiny
    weights = save_clip_checkpoint(model, tmp_path / "tiny.safetensors", model_name=config.stem)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    gate = tmp_path / "go"
    root = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    started = []

    def start(kill_at: int, paths, mode: str = "encode") -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, str(script), str(config), str(weights), str(root), str(gate),
                                    str(kill_at), mode, *map(str, paths)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield start, gate.touch, root
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_writer_processes_on_one_cache(tiny, images, writer):
    """Two processes write the same entries (the features of the same images) into one cache at the same moment,
    after both found the cache empty: every chunk either writes is whole and verifies, and a reader gets each
    image's features (equal to encoding it here) from the cache, each once."""
    import time
    import warnings

    from probing.features.cache import read_chunk

    model, preprocess, _ = tiny
    start, release, root = writer
    processes = [start(0, images[:8], "add"), start(0, images[:8], "add")]
    deadline = time.monotonic() + 300
    while (len(list(root.parent.glob("go.ready-*"))) < 2 and all(p.poll() is None for p in processes)
           and time.monotonic() < deadline):
        time.sleep(0.05)  # both have their features and wait at the gate
    release()
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0 and "done" in out, err[-2000:]
    cache = FeatureCache.for_model(model, preprocess, root=root)
    chunks = _chunks(cache)
    assert len(chunks) == 8 and len({path.name.split("-")[2] for path in chunks}) == 2  # 4 per writer (by pid)
    assert all(read_chunk(path) is not None for path in chunks)
    assert not list(cache.folder.glob(".*.tmp"))
    stats = EncodeStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        served = encode_image_features(model, preprocess, images[:8], batch_size=2, cache=cache, stats=stats)
    assert stats.cached == 8 and stats.encoded == 0
    assert torch.allclose(served, encode_image_features(model, preprocess, images[:8], batch_size=2, cache=False),
                          rtol=0, atol=1e-6)


def test_a_writer_killed_while_it_writes_leaves_no_torn_entry(tiny, images, writer):
    """SIGKILL in the middle of writing the second chunk: the first chunk is whole, the second exists only as
    the writer's temporary file; the next reader serves the first chunk's images, encodes the others again,
    reports nothing and removes the temporary file."""
    import warnings

    model, preprocess, _ = tiny
    start, release, root = writer
    process = start(2, images[:6])
    release()
    _, err = process.communicate(timeout=300)
    assert process.returncode == -9, err[-2000:]
    cache = FeatureCache.for_model(model, preprocess, root=root)
    assert len(_chunks(cache)) == 1 and len(list(cache.folder.glob(".chunk-*.tmp"))) == 1
    stats = EncodeStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        served = encode_image_features(model, preprocess, images[:6], batch_size=2, cache=cache, stats=stats)
    assert stats.cached == 2 and stats.encoded == 4
    assert torch.allclose(served, encode_image_features(model, preprocess, images[:6], batch_size=2, cache=False),
                          rtol=0, atol=1e-6)
    assert not list(cache.folder.glob(".*.tmp"))  # swept: its writer is gone


def test_a_writer_killed_at_any_moment_leaves_a_cache_the_next_reader_trusts(tiny, images, writer):
    """SIGKILL from outside, as soon as the writer's first chunk appears (wherever it then is: encoding,
    writing, renaming): whatever is on disk is either whole or ignored."""
    import os
    import signal
    import time
    import warnings

    model, preprocess, _ = tiny
    start, release, root = writer
    process = start(0, images[:10])
    release()
    folder = FeatureCache.for_model(model, preprocess, root=root).folder
    deadline = time.monotonic() + 300
    while not list(folder.glob("chunk-*.safetensors")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stats = EncodeStats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        served = encode_image_features(model, preprocess, images[:10], batch_size=2,
                                       cache=FeatureCache.for_model(model, preprocess, root=root), stats=stats)
    assert stats.cached >= 2 and stats.cached + stats.encoded == 10
    assert torch.allclose(served, encode_image_features(model, preprocess, images[:10], batch_size=2, cache=False),
                          rtol=0, atol=1e-6)
