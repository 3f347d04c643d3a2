"""The synthetic negation world: correct by construction, held-out splits, determinism, rendering."""
from __future__ import annotations

import collections
import re
from dataclasses import replace

import numpy as np
import pytest

from probing.captions import CUES, Mention, caption_truth
from probing.synthetic.scenes import Scene, SceneObject
from probing.synthetic.world import SyntheticWorld, WorldConfig

WORLD = SyntheticWorld(seed=0)
CFG = WORLD.config


def same_mentions(parsed, spec_mentions) -> bool:
    return collections.Counter(parsed) == collections.Counter(spec_mentions)


def same_article(text: str) -> str:
    """'an orange circle' -> 'a orange circle', to compare captions that differ in one object."""
    return re.sub(r"\ban\b", "a", text)


def mentioned_names(world: SyntheticWorld, text: str) -> set[str]:
    present, absent = world.parse(text)
    return {f"{m.colour} {m.shape}" for m in present + absent if m.colour and m.shape}


@pytest.fixture(scope="module")
def train_examples():
    return WORLD.examples(3000, "train", seed=1)


@pytest.fixture(scope="module")
def test_examples():
    return WORLD.examples(1000, "test", seed=1)


# ---------------------------------------------------------------------------------------------
# correct by construction: truth re-derived from the scene, and the text read back independently


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_example_is_correct_by_construction(split, train_examples, test_examples):
    examples = train_examples if split == "train" else test_examples
    for example in examples:
        scene, specs = example.meta["scene"], example.meta["specs"]
        expected = {"caption": True, "presence_negated": False, "absence_negated": True}
        for field, truth in expected.items():
            text = getattr(example, field)
            spec = specs[field]
            assert spec.text == text
            assert caption_truth(scene, spec) is truth, (field, text, scene.names)
            # the text alone, parsed with the grammar, says the same thing and has the same truth
            present, absent = WORLD.parse(text)
            assert same_mentions(present, spec.present) and same_mentions(absent, spec.absent), text
            assert WORLD.caption_truth(scene, text) is truth
        assert len(scene.objects) == example.k
        assert scene.has(example.negated_object) and not scene.has(example.absent_object)
        assert specs["presence_negated"].absent == (Mention.of(example.negated_object),)
        assert specs["absence_negated"].absent == (Mention.of(example.absent_object),)


def test_distractor_keeps_the_subject_and_drops_the_negated_object(train_examples):
    for example in train_examples:
        distractor = example.meta["distractor_scene"]
        specs = example.meta["specs"]
        assert not distractor.has(example.negated_object)
        if example.subject is not None:
            assert distractor.has(example.subject)
            assert set(distractor.names) == set(example.meta["scene"].names) - {example.negated_object}
        else:
            assert example.k == 1 and len(distractor.objects) == 1  # the lone object redrawn as another
        # the negated caption is true of the distractor, the affirmative one false
        assert caption_truth(distractor, specs["presence_negated"])
        assert not caption_truth(distractor, specs["caption"])
        assert np.array_equal(example.distractor_image, WORLD.render(distractor))


def test_examples_cover_complexities_cues_templates_and_positions(train_examples):
    assert collections.Counter(e.k for e in train_examples).keys() == {1, 2, 3, 4}
    assert min(collections.Counter(e.k for e in train_examples).values()) > 600
    assert {e.cue for e in train_examples} == set(WORLD.train_cues) == {"no", "not", "without", "there is no"}
    assert {e.meta["template"] for e in train_examples} == {"but", "and", "photo", "front"}
    assert {e.meta["caption_template"] for e in train_examples} == {"aff_list", "aff_photo", "aff_there"}
    # negation at the start of the caption and after the subject
    starts = sum(e.presence_negated.startswith(("no ", "not ", "without ", "there is no ")) for e in train_examples)
    assert 0.1 < starts / len(train_examples) < 0.4
    for e in train_examples:
        assert re.search(rf"\b{re.escape(e.cue)}\b", e.presence_negated), (e.cue, e.presence_negated)
        assert e.image.shape == (64, 64, 3) and e.image.dtype == np.uint8


def test_presence_and_absence_negations_differ_only_in_the_negated_object(train_examples):
    for e in train_examples[:500]:
        assert same_article(e.absence_negated) == same_article(e.presence_negated).replace(
            e.negated_object, e.absent_object)


# ---------------------------------------------------------------------------------------------
# held-out splits


def test_train_split_never_sees_a_held_out_cue_template_or_object(train_examples):
    heldout_objects = set(CFG.heldout_objects)
    for e in train_examples:
        assert e.cue not in CFG.heldout_cues
        assert e.meta["template"] not in CFG.heldout_templates
        assert e.meta["caption_template"] not in CFG.heldout_templates
        for scene in (e.meta["scene"], e.meta["distractor_scene"]):
            assert not set(scene.names) & heldout_objects
        for text in (e.caption, e.presence_negated, e.absence_negated):
            assert not mentioned_names(WORLD, text) & heldout_objects
            assert "isn't" not in text and "never" not in text and "none" not in text


def test_test_split_uses_held_out_cues_templates_and_objects(test_examples):
    assert {e.cue for e in test_examples} == {"never", "none", "isn't"}
    assert {e.meta["template"] for e in test_examples} == {"while"}
    assert {e.meta["caption_template"] for e in test_examples} == {"aff_shows"}
    for e in test_examples:
        assert e.negated_object in CFG.heldout_objects and e.absent_object in CFG.heldout_objects
        assert not set(e.meta["scene"].without(e.negated_object).names) & set(CFG.heldout_objects)


@pytest.mark.parametrize("axis", ["cue", "object", "template"])
def test_one_held_out_factor_at_a_time(axis):
    examples = WORLD.examples(300, "test", seed=2, heldout=axis)
    cues = {e.cue for e in examples}
    templates = {e.meta["template"] for e in examples}
    negated = {e.negated_object for e in examples} | {e.absent_object for e in examples}
    assert (cues <= set(CFG.heldout_cues)) == (axis == "cue")
    assert (cues <= set(WORLD.train_cues)) == (axis != "cue")
    assert (templates == {"while"}) == (axis == "template")
    assert (negated <= set(CFG.heldout_objects)) == (axis == "object")
    assert (negated <= set(WORLD.train_objects)) == (axis != "object")


# ---------------------------------------------------------------------------------------------
# scope pairs, minimal pairs, probe captions


def test_scope_pairs_differ_only_in_the_negated_object_and_have_known_truth():
    for split in ("train", "test"):
        for pair in WORLD.scope_pairs(1000, split, seed=3):
            scene, specs = pair.meta["scene"], pair.meta["specs"]
            assert caption_truth(scene, specs["correct"]) and WORLD.caption_truth(scene, pair.correct)
            assert not caption_truth(scene, specs["wrong"]) and not WORLD.caption_truth(scene, pair.wrong)
            assert scene.has(pair.wrong_object) and not scene.has(pair.correct_object)
            assert same_article(pair.wrong).replace(pair.wrong_object, pair.correct_object) == same_article(
                pair.correct
            )
            assert specs["correct"].template == specs["wrong"].template == pair.template
            assert specs["correct"].cue == specs["wrong"].cue == pair.cue
            assert len(scene.objects) == pair.k
            assert np.array_equal(pair.image, WORLD.render(scene))


def test_minimal_pairs_swap_the_scope():
    pairs = WORLD.minimal_pairs(500, "train", seed=4)
    assert {p.naming for p in pairs} == {"full", "shape"}
    for p in pairs:
        present_a, absent_a = WORLD.parse(p.caption_a)
        present_b, absent_b = WORLD.parse(p.caption_b)
        assert [m.text() for m in absent_a] == [p.negated_a] and [m.text() for m in present_a] == [p.negated_b]
        assert [m.text() for m in absent_b] == [p.negated_b] and [m.text() for m in present_b] == [p.negated_a]
        # the same words, in another order: only the scope differs
        words_a, words_b = (sorted(same_article(c).replace(",", "").split()) for c in (p.caption_a, p.caption_b))
        assert words_a == words_b
    shapes = "|".join(CFG.shapes)
    shape_only = [p for p in pairs if re.fullmatch(rf"a ({shapes}) but no ({shapes})", p.caption_a)]
    assert shape_only  # the textbook form: "a circle but no square" / "a square but no circle"


def test_probe_captions_are_balanced_twins_with_correct_labels():
    captions = WORLD.probe_captions(1000, "train", seed=5)
    assert len(captions) == 1000 and sum(c.negated for c in captions) == 500
    twins = collections.defaultdict(list)
    for c in captions:
        twins[c.pair].append(c)
        present, absent = WORLD.parse(c.text)
        assert (absent == (Mention.of(c.object),)) == c.negated
        assert c.k == len(c.subjects) + 1
    for negated, affirmative in twins.values():
        assert negated.negated and not affirmative.negated
        assert (negated.cue, negated.template, negated.object) == (
            affirmative.cue,
            affirmative.template,
            affirmative.object,
        )
        negated_clause, affirmative_clause = CUES[negated.cue]
        article = "an " if negated.object[0] in "aeiou" else "a "
        x = dict(x=negated.object, a_x=article + negated.object)
        assert negated.text.replace(negated_clause.format(**x), affirmative_clause.format(**x)) == affirmative.text

    held_out = WORLD.probe_captions(400, "test", seed=5, heldout="cue")
    assert {c.cue for c in held_out} == set(CFG.heldout_cues)
    assert {c.cue for c in captions} == set(WORLD.train_cues)


# ---------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_data_other_seed_other_data():
    a, b = WORLD.examples(50, seed=7), SyntheticWorld(seed=0).examples(50, seed=7)
    assert [e.presence_negated for e in a] == [e.presence_negated for e in b]
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.distractor_image, y.distractor_image)
               for x, y in zip(a, b))
    assert [e.caption for e in WORLD.examples(50, seed=8)] != [e.caption for e in a]
    assert [e.caption for e in SyntheticWorld(seed=1).examples(50, seed=7)] != [e.caption for e in a]
    assert WORLD.scope_pairs(20, seed=7)[5].correct == SyntheticWorld().scope_pairs(20, seed=7)[5].correct


# ---------------------------------------------------------------------------------------------
# rendering, classification, pretraining


def test_every_object_is_drawn_in_its_colour_and_none_overlap():
    world = SyntheticWorld(replace(CFG, noise=0.0))
    for scene in world.scenes(300, "test", seed=9):
        image = world.render(scene).astype(int)
        boxes = [(o.x, o.y, o.x + o.size, o.y + o.size) for o in scene.objects]
        for i, obj in enumerate(scene.objects):
            centre = image[obj.y + obj.size // 2, obj.x + obj.size // 2]
            assert np.abs(centre - np.array(CFG.colours[obj.colour])).max() <= 1, (obj, centre)
            for other in boxes[i + 1:]:
                x0, y0, x1, y1 = boxes[i]
                assert x1 <= other[0] or other[2] <= x0 or y1 <= other[1] or other[3] <= y0


def test_shapes_are_drawn_differently():
    world = SyntheticWorld(replace(CFG, noise=0.0))
    masks = {}
    for shape in CFG.shapes:
        scene = Scene((SceneObject("red", shape, 30, 10, 10),), noise_seed=0)
        image = world.render(scene).astype(int)
        masks[shape] = np.abs(image - np.array(CFG.colours["red"])).max(axis=2) <= 1
    fill = {shape: mask.sum() / 30 ** 2 for shape, mask in masks.items()}
    assert 0.72 < fill["circle"] < 0.85 and 0.75 < fill["square"] < 0.9
    assert 0.4 < fill["triangle"] < 0.6 and 0.4 < fill["diamond"] < 0.6
    assert 0.2 < fill["star"] < 0.45 and 0.5 < fill["cross"] < 0.65
    assert not np.array_equal(masks["triangle"], masks["diamond"])


def test_noise_is_deterministic_and_present():
    scene = WORLD.scenes(1, seed=3)[0]
    image = WORLD.render(scene)
    assert np.array_equal(image, WORLD.render(scene))
    corner = image[:3, :3].astype(int)  # background only: no object touches the image corner
    assert corner.std() > 3


def test_class_prompts_and_classification_set():
    prompts = WORLD.class_prompts()
    assert len(prompts["classes"]) == 36 and set(CFG.heldout_objects) <= set(prompts["classes"])
    assert prompts["affirmative"][prompts["classes"].index("orange circle")] == "a photo of an orange circle"
    assert prompts["negated"][0] == "not a photo of a red circle"
    assert prompts["shape_affirmative"] == [f"a photo of a {s}" for s in CFG.shapes]

    images, labels = WORLD.classification_set(72, "test", seed=1)
    assert images.shape == (72, 64, 64, 3) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=36).tolist() == [2] * 36  # balanced over every class
    train_images, train_labels = WORLD.classification_set(64, "train", seed=1)
    heldout_ids = {prompts["classes"].index(o) for o in CFG.heldout_objects}
    assert not set(train_labels.tolist()) & heldout_ids
    _, shapes = WORLD.classification_set(60, "train", seed=1, label="shape")
    assert set(shapes.tolist()) == set(range(6))
    # a rendered image shows its label's colour
    world = SyntheticWorld(replace(CFG, noise=0.0))
    images, labels = world.classification_set(36, "test", seed=2)
    for image, label in zip(images, labels):
        colour = prompts["classes"][label].split()[0]
        distance = np.abs(image.astype(int) - np.array(CFG.colours[colour])).max(axis=2)
        assert (distance <= 1).sum() > 20


def test_pretraining_captions_are_true_and_name_shapes_alone_sometimes():
    pairs = WORLD.pretraining_specs(3000, "train", seed=6)
    kinds = collections.Counter()
    for scene, spec in pairs:
        assert caption_truth(scene, spec)
        present, absent = WORLD.parse(spec.text)
        assert same_mentions(present, spec.present) and same_mentions(absent, spec.absent)
        for mention in spec.present:
            kinds["full" if mention.colour and mention.shape else "shape" if mention.shape else "colour"] += 1
    negated = sum(spec.negated for _, spec in pairs) / len(pairs)
    assert 0.06 < negated < 0.10
    total = sum(kinds.values())
    assert 0.2 < kinds["shape"] / total < 0.3 and 0.1 < kinds["colour"] / total < 0.2
    images, captions = WORLD.pretraining_pairs(20, "train", seed=6)
    assert captions == [spec.text for _, spec in pairs[:20]]
    assert np.array_equal(images[3], WORLD.render(pairs[3][0]))


def test_config_validation():
    assert hash(WorldConfig()) == hash(WorldConfig()) and WorldConfig() == WorldConfig()
    assert hash(replace(CFG, noise=0.0)) != hash(CFG)
    with pytest.raises(ValueError, match="not a colour-shape pair"):
        WorldConfig(heldout_objects=("pink circle",))
    with pytest.raises(ValueError, match="unknown held-out cue"):
        WorldConfig(heldout_cues=("nope",))
    with pytest.raises(ValueError, match="single words"):
        WorldConfig(colours={"dark red": (120, 0, 0), **CFG.colours})
    with pytest.raises(ValueError, match="cannot draw shapes"):
        WorldConfig(shapes=("hexagon",))
    with pytest.raises(ValueError, match="split must be one of"):
        WORLD.examples(1, "validation")
    with pytest.raises(ValueError, match="heldout must be"):
        WORLD.examples(1, "test", heldout="colour")
    with pytest.raises(ValueError, match="too few held out"):
        SyntheticWorld(replace(CFG, heldout_objects=("red star",))).examples(1, "test")


def test_shape_twins_keep_colours_and_places_and_change_every_shape():
    pairs = WORLD.pretraining_specs(400, "train", seed=8, shape_twin_fraction=1.0)
    twins = 0
    for (first, _), (second, spec) in zip(pairs[0::2], pairs[1::2]):
        assert caption_truth(second, spec)
        assert all(name in WORLD.train_objects for name in second.names)
        if [(o.colour, o.x, o.y, o.size) for o in first.objects] == [
            (o.colour, o.x, o.y, o.size) for o in second.objects
        ]:
            twins += 1
            assert all(a.shape != b.shape for a, b in zip(first.objects, second.objects))
            assert len(set(second.names)) == len(second.names) and not set(first.names) & set(second.names)
    # a twin is skipped only when some colour has no other unused training shape; that is rare
    assert twins > 0.9 * len(pairs) // 2
    untwinned = WORLD.pretraining_specs(400, "train", seed=8)
    assert untwinned == WORLD.pretraining_specs(400, "train", seed=8, shape_twin_fraction=0.0)
    with pytest.raises(ValueError, match="shape_twin_fraction"):
        WORLD.pretraining_specs(4, "train", shape_twin_fraction=1.5)


def test_pretraining_can_name_every_object_but_the_train_split_does_not_by_default():
    def named(objects):
        return {
            name for scene, _ in WORLD.pretraining_specs(600, "train", seed=9, objects=objects) for name in scene.names
        }

    assert named("split") == set(WORLD.train_objects)
    assert named("all") == set(WORLD.objects)
    with pytest.raises(ValueError, match="objects must be"):
        WORLD.pretraining_specs(4, "train", objects="heldout")


def test_world_record_round_trips_through_checkpoint_metadata():
    from probing.synthetic.record import WORLD_KEY, world_from_metadata, world_metadata

    world = SyntheticWorld(WorldConfig(image_size=48, sizes=(0.3, 0.38, 0.46), heldout_cues=("never",)), seed=3)
    metadata = world_metadata(world)
    back = world_from_metadata({**metadata, "other": "x"})
    assert set(metadata) == {WORLD_KEY} and back.config == world.config and back.seed == 3
    assert hash(back.config) == hash(world.config)
    assert back.examples(2, "test", seed=1)[0].caption == world.examples(2, "test", seed=1)[0].caption
    assert world_from_metadata({"open_clip_model": "x"}) is None


def test_checkpoint_world_reports_a_corrupt_checkpoint_by_name(tmp_path):
    from probing.clip.loading import ModelLoadError
    from probing.models.factory import checkpoint_world

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="broken.safetensors is corrupt"):
        checkpoint_world(broken)
    assert checkpoint_world(tmp_path / "missing.safetensors") is None and checkpoint_world("openai") is None
