"""Pooled capture: equals the full cache at EOT, streams to disk, mean pools only real tokens."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.clip.hooked import HookedCLIPText
from probing.clip.loading import load_clip
from probing.measure.capture import capture_pooled, resid_hook_names

CAPTIONS = [f"a {c} {s} but no {c2} {s}" for c in ("red", "blue", "green") for c2 in ("purple", "black")
            for s in ("circle", "square")] + ["a dog", "there is no cat on the mat next to the small brown dog"]


@pytest.fixture
def tiny(write_config):
    torch.manual_seed(0)
    model, _, tokenizer = load_clip(write_config("tiny-capture"))
    return HookedCLIPText(model), tokenizer


def _reference(hooked, tokenizer, captions):
    """Pooled states read from a full, untrimmed ActivationCache, one caption at a time."""
    eot_rows, mean_rows = [], []
    for caption in captions:
        tokens = tokenizer([caption])
        _, cache = hooked.run_with_cache(tokens, trim=False)
        eot = int(hooked.eot_positions(tokens)[0])
        layers = torch.stack([cache[name][0] for name in resid_hook_names(hooked.cfg.n_layers)])
        eot_rows.append(layers[:, eot])
        mean_rows.append(layers[:, : eot + 1].mean(1))
    return torch.stack(eot_rows, 1).numpy(), torch.stack(mean_rows, 1).numpy()


def test_capture_matches_full_cache(tiny):
    hooked, tokenizer = tiny
    pooled = capture_pooled(hooked, tokenizer, CAPTIONS, pools=("eot", "mean"), batch_size=5, progress=False)
    eot, mean = _reference(hooked, tokenizer, CAPTIONS)
    assert pooled["eot"].shape == (hooked.cfg.n_layers + 1, len(CAPTIONS), hooked.cfg.d_model)
    np.testing.assert_allclose(pooled["eot"], eot, atol=1e-5)
    np.testing.assert_allclose(pooled["mean"], mean, atol=1e-5)
    # the last layer at EOT, through ln_final and the projection, is the model's text feature
    final = hooked.tower.project(hooked.ln_final(torch.from_numpy(pooled["eot"][-1])))
    assert torch.allclose(final, hooked.encode_text(tokenizer(CAPTIONS)), atol=1e-5)


def test_streaming_to_disk_equals_memory(tiny, tmp_path):
    hooked, tokenizer = tiny
    in_memory = capture_pooled(hooked, tokenizer, CAPTIONS, batch_size=4, progress=False)
    on_disk = capture_pooled(hooked, tokenizer, CAPTIONS, batch_size=4, out_dir=tmp_path / "acts", progress=False)
    assert isinstance(on_disk, np.memmap) or on_disk.base is not None
    np.testing.assert_array_equal(np.asarray(on_disk), in_memory)
    assert sorted(p.name for p in (tmp_path / "acts").iterdir()) == ["eot.npy"]  # no partial file left behind


def test_an_interrupted_capture_leaves_no_partial_memory_map(tiny, tmp_path, monkeypatch):
    import probing.measure.capture as capture

    hooked, tokenizer = tiny
    real, calls = capture._pooled_batch, {"n": 0}

    def fail_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C half-way through
        return real(*args, **kwargs)

    monkeypatch.setattr(capture, "_pooled_batch", fail_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        capture_pooled(hooked, tokenizer, CAPTIONS, pools=("eot", "mean"), batch_size=4, out_dir=tmp_path / "acts",
                       progress=False)
    assert calls["n"] == 3 and (tmp_path / "acts").is_dir() and not list((tmp_path / "acts").iterdir())
@pytest.mark.parametrize("budget, batch_size", [(40, None), (100, 3), (None, 1), (None, 7)])
def test_token_budget_batching_gives_the_unbatched_capture(tiny, monkeypatch, budget, batch_size):
    """Length-sorted token-budget batches: the same numbers as one caption at a time, untrimmed."""
    import probing.measure.capture as capture

    hooked, tokenizer = tiny
    shapes = []
    real = capture._pooled_batch
    monkeypatch.setattr(capture, "_pooled_batch", lambda h, tokens, *a: (shapes.append(
        (tokens.shape[0], int(h.eot_positions(tokens).max()) + 1)), real(h, tokens, *a))[1])
    pooled = capture_pooled(hooked, tokenizer, CAPTIONS, pools=("eot", "mean"), token_budget=budget,
                            batch_size=batch_size, progress=False)
    eot, mean = _reference(hooked, tokenizer, CAPTIONS)
    np.testing.assert_allclose(pooled["eot"], eot, atol=1e-5)
    np.testing.assert_allclose(pooled["mean"], mean, atol=1e-5)
    assert sum(size for size, _ in shapes) == len(CAPTIONS)
    assert all(size == 1 or budget is None or size * length <= budget for size, length in shapes)
    assert all(batch_size is None or size <= batch_size for size, _ in shapes)
    assert [length for _, length in shapes] == sorted(length for _, length in shapes)


def test_over_the_memory_budget_capture_streams_to_deleted_files(tiny, tmp_path):
    hooked, tokenizer = tiny
    in_memory = capture_pooled(hooked, tokenizer, CAPTIONS, pools=("eot", "mean"), progress=False)
    nbytes = sum(array.nbytes for array in in_memory.values())
    kept = capture_pooled(hooked, tokenizer, CAPTIONS, pools=("eot", "mean"), memory_budget=nbytes, progress=False)
    assert not any(isinstance(array, np.memmap) for array in kept.values())
    spill = tmp_path / "spill"
    spill.mkdir()
    spilled = capture_pooled(hooked, tokenizer, CAPTIONS, pools=("eot", "mean"), memory_budget=nbytes - 1,
                             spill_dir=spill, progress=False)
    for name in ("eot", "mean"):
        assert isinstance(spilled[name], np.memmap)
        np.testing.assert_array_equal(spilled[name], in_memory[name])
    assert list(spill.iterdir()) == []  # nothing left on disk; the maps stay readable


def test_capture_accepts_plain_model_and_rejects_bad_pool(write_config):
    model, _, tokenizer = load_clip(write_config("tiny-capture2"))
    assert capture_pooled(model, tokenizer, ["a dog"], progress=False).shape[:2] == (5, 1)
    with pytest.raises(ValueError, match="unknown pooling"):
        capture_pooled(model, tokenizer, ["a dog"], pools="cls", progress=False)
    with pytest.raises(ValueError, match="no captions"):
        capture_pooled(model, tokenizer, [], progress=False)


def test_encode_images_runs_a_resnet_image_tower_in_eval_mode(tmp_path):
    """BatchNorm in train mode would use batch statistics and overwrite its running ones."""
    import json

    from probing.features.encode import encode_images
    from tests.conftest import tiny_config

    config = tiny_config()
    config["vision_cfg"] = {"image_size": 48, "layers": [1, 1, 1, 1], "width": 8}
    path = tmp_path / "tiny-rn.json"
    path.write_text(json.dumps(config))
    model, preprocess, _ = load_clip(str(path))
    images = list(np.random.default_rng(0).integers(0, 256, size=(6, 48, 48, 3), dtype=np.uint8))
    expected = encode_images(model, preprocess, images)
    running_mean = model.visual.bn1.running_mean.clone()
    model.train()
    got = encode_images(model, preprocess, images[:3])
    assert model.training  # put back as it was
    torch.testing.assert_close(got, expected[:3])
    assert torch.equal(model.visual.bn1.running_mean, running_mean)
