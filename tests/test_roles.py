"""Token roles: found from the record's words in synthetic and real captions, and pairs aligned by role."""
from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from probing.data import NegationExample, generate_negations, load_negbench_retrieval
from probing.measure.roles import ALL, ROLES, RoleFinder, example_pairs, synthetic_negation_pairs, synthetic_scope_pairs
from probing.synthetic.world import SyntheticWorld

TOKENIZER = SimpleTokenizer(context_length=32)
FINDER = RoleFinder(TOKENIZER, lambda tokens: tokens.argmax(dim=-1))


def words(tokens: torch.Tensor, positions) -> str:
    """The text of the tokens at `positions`, decoded by the tokenizer (an independent reading)."""
    return " ".join(TOKENIZER.decode([int(tokens[p])]).strip() for p in positions).replace(" 't", "'t")


def same_words(decoded: str, phrase: str) -> bool:
    return decoded.replace(" ", "") == phrase.lower().replace(" ", "")


@pytest.mark.parametrize("make", [synthetic_negation_pairs, synthetic_scope_pairs], ids=["negation", "scope"])
def test_synthetic_roles_spell_the_record_words(make):
    pairs = make(SyntheticWorld(seed=0), 60)
    aligned, skipped = FINDER.align(pairs)
    assert len(aligned) == 60 and not skipped
    for item in aligned:
        pair = item.pair
        anchor = item.true_tokens if pair.anchor == "true" else item.false_tokens
        roles = item.anchor_roles
        at = lambda role: [i for i, r in enumerate(roles) if r == role]
        assert len(roles) == len(anchor) and roles[-1] == "eot" and anchor[-1] == 49407
        assert same_words(words(anchor, at("cue")), pair.cue), (pair.anchor_caption, pair.cue)
        assert same_words(words(anchor, at("negated")), pair.negated)
        assert same_words(words(anchor, at("subject")), "".join(pair.subjects))
        if pair.kind == "scope":  # same words, swapped: the false caption negates the true one's subject
            true, false = item.positions["negated"]
            assert same_words(words(item.false_tokens, false), pair.subjects[0])
            assert list(true) == list(false) and set(item.positions) == {*ROLES, ALL}
        elif pair.cue in ("not", "isn't"):  # the twin has no token in the cue's place
            assert "cue" not in item.positions and len(item.true_tokens) < len(item.false_tokens)
        else:  # the twin's word in the cue's place ("a", "with", "always", "one")
            true, false = item.positions["cue"]
            assert words(item.true_tokens, true) != words(item.false_tokens, false)


def test_real_captions_from_negbench_objects_align_by_role(test_data):
    # captions only: every row of the vendored file, whether its image is among the vendored ones or not
    items = load_negbench_retrieval(test_data / "negbench" / "COCO_val_retrieval.csv", strict=False)
    examples = generate_negations(items[:200], seed=1, max_subjects=2)
    pairs = example_pairs(examples)
    aligned, skipped = FINDER.align(pairs)
    assert len(pairs) > 50 and not skipped
    assert len({len(a.false_tokens) for a in aligned}) > 3  # captions of many lengths, aggregated by role
    for item in aligned:
        pair = item.pair
        anchor = item.false_tokens
        at = lambda role: [i for i, r in enumerate(item.anchor_roles) if r == role]
        assert same_words(words(anchor, at("negated")), pair.negated), pair.false_caption
        assert same_words(words(anchor, at("subject")), "".join(pair.subjects)), pair.false_caption
        assert same_words(words(anchor, at("cue")), pair.cue), pair.false_caption
        true, false = item.positions["negated"]  # the twin names the same object at the same place
        assert words(item.true_tokens, true) == words(anchor, false)
        true, false = item.positions["eot"]
        assert list(true) == [len(item.true_tokens) - 1] and list(false) == [len(anchor) - 1]


def test_a_free_caption_pair_aligns_what_it_can():
    """A CC-Neg-style record: the negated caption inserts a word and names no negated object."""
    example = NegationExample(image=None, caption="a man riding a horse on a beach",
                              presence_negated="a man riding a horse not on a beach")
    (item,), _ = FINDER.align(example_pairs([example]))
    assert item.pair.cue == "not"  # found in the text
    assert "cue" not in item.positions  # "not" has no counterpart in the true caption
    assert "negated" not in item.positions  # the record names no negated object
    true, false = item.positions["eot"]
    assert list(true) == [len(item.true_tokens) - 1] and list(false) == [len(item.false_tokens) - 1]
    true, false = item.positions[ALL]
    assert len(true) == len(item.true_tokens)  # every token of the shorter caption has its partner
    assert words(item.true_tokens, true) == words(item.false_tokens, false)


def test_a_caption_cut_by_the_context_keeps_its_first_roles():
    long = "a red circle but no blue square " + " ".join(["and a green star"] * 8)
    roles = FINDER.roles(long, "no", "blue square", ["red circle"])
    assert len(roles) == 32 and roles[-1] == "eot"
    assert roles[1:6] == ["other", "subject", "subject", "other", "cue"]


def test_words_that_do_not_add_up_are_reported_not_guessed():
    # a tokenizer that drops "but" after another word: alone, "but" is one token; in the caption, none
    finder = RoleFinder(lambda texts: TOKENIZER([t.replace(" but ", " ") for t in texts]),
                        lambda tokens: tokens.argmax(dim=-1))
    assert finder.roles("a red circle but no square", "no", "square", ["red circle"]) is None
