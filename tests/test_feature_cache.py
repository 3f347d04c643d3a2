"""The disk cache of image features (probing.features.cache): what its key depends on, that a second
pass encodes nothing, that DataLoader workers give the in-process numbers, and that an ablation study
encodes each image once over all its runs. Image-tower work is counted with a forward hook."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from probing.clip.loading import load_clip
from probing.features.cache import FeatureCache, encode_image_features, image_key, tower_key
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
