"""The embedded default model: small build's numbers, cache reuse, loading through load_clip."""
from __future__ import annotations

import json

import pytest
import torch

from finetune import embedded
from finetune.embedded import SMALL_SPEC, checkpoint_path, embedded_metrics, ensure_embedded_model, load_embedded_model


def test_small_build_numbers_are_above_chance(small_embedded):
    metrics = embedded_metrics(SMALL_SPEC)
    # smoke level (REFERENCE.md: a 60-second build reaches R@1 ~0.05): clearly above chance, no more
    assert metrics["image_to_text_R@1_among_100"] > 0.04  # chance 0.01
    assert metrics["zero_shot_colour_affirmative"] > 0.5  # chance 1/6
    assert metrics["pretraining_minutes"] > 0
    for key in ("ccneg_accuracy", "scope_accuracy", "absence_accuracy", "zero_shot_object_negated",
                "negated_prompt_gap_object", "scope_accuracy[never]"):
        assert 0.0 <= metrics[key] <= 1.0 or key.startswith("negated_prompt_gap")


def test_cache_is_reused_not_retrained(small_embedded, monkeypatch):
    path, spec = small_embedded
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(embedded, "pretrain", lambda *a, **k: pytest.fail("pretrained again instead of using the cache"))
    assert ensure_embedded_model(spec, progress=False) == path
    assert path.stat().st_mtime_ns == mtime
    assert path == checkpoint_path(spec) and path.suffix == ".safetensors"
    assert json.loads(path.with_suffix(".json").read_text())["spec"]["model"] == "negclip-micro"


def test_loads_through_load_clip_with_recorded_metrics(small_embedded):
    from probing.synthetic.world import SyntheticWorld, WorldConfig
    from probing.models.loading import load_clip
    from probing.synthetic.suite import SyntheticSuite

    path, spec = small_embedded
    model, preprocess, tokenizer = load_embedded_model(spec, progress=False)
    again, _, _ = load_clip(spec.model, pretrained=path)
    tokens = tokenizer(["a red circle and no blue square"])
    assert torch.equal(model.encode_text(tokens), again.encode_text(tokens))
    # the recorded numbers are reproducible from the seed: re-evaluating gives the same values
    world = embedded.world_for(spec)
    suite = SyntheticSuite.build(world, n=spec.eval_scenes, n_classification=min(720, spec.eval_scenes),
                                 split="test", heldout="all", seed=spec.seed + 1)
    fresh = suite.evaluate(model, preprocess, tokenizer)
    recorded = embedded_metrics(spec)
    for key in ("scope_accuracy", "ccneg_accuracy", "image_to_text_R@1_among_100"):
        assert fresh[key] == pytest.approx(recorded[key], abs=1e-9)


def test_checkpoint_records_the_world_it_was_pretrained_on(small_embedded):
    from probing.synthetic.record import checkpoint_world

    path, spec = small_embedded
    recorded, expected = checkpoint_world(path), embedded.world_for(spec)
    assert recorded.config == expected.config and recorded.seed == expected.seed


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


def test_build_command_prints_the_cached_builds_numbers_and_rejects_bad_threads(small_embedded, capsys):
    from analysis.cli.build_embedded import main

    path, spec = small_embedded
    assert main(["--spec", "small", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(path) in printed and f"{embedded_metrics(spec)['scope_accuracy']:.3f}" in printed
    with pytest.raises(SystemExit):
        main(["--spec", "small", "--threads", "0"])
    assert "--threads must be at least 1" in capsys.readouterr().err
