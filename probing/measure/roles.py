"""Patching pairs and token roles, so that captions of different lengths aggregate into one heatmap.

A `PatchPair` is a caption true for its image (the clean run) and a caption false for it (the
corrupted run), with the words that give its positions their roles:

    cue       the negation word(s): "no", "not", "there is no", "isn't" (two tokens: isn + 't)
    negated   the negated noun phrase ("blue square")
    subject   the other objects named ("red circle"; "shape" in "a shape but no ...")
    eot       the EOT token, the state CLIP pools
    other     everything else: SOT, articles, frame words, punctuation

Two kinds of pairs (REFERENCE.md, "Two negation metrics"):
    negation  affirmative twin (true) / presence-negated caption (false): "A but a B" / "A but no B", B shown
    scope     "A but no X" (true: A shown, X absent) / "X but no A" (false), the same words swapped

Roles are found in the caption that carries the words (the anchor: the negated caption of a
negation pair, the true caption of a scope pair) by matching the record's words in the text and
counting each word's tokens (CLIP's BPE never merges across words, so counts add up; a caption
whose counts do not add up to its own token count is reported, not guessed). The partner caption
is aligned to the anchor token by token: identity when both have the same length (minimal pairs),
else difflib's matching blocks (equal tokens, and replaced runs of equal length, map one to one).
A role is patchable for a pair only when all its anchor positions have a partner; "all" is every
aligned position. Records without a negated object (CC-Neg) simply have no "negated" positions.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from probing.captions import CUES, NEGATION_FRAMES, framed_caption, framed_text
from probing.data.ccneg import find_negation_cue
from probing.data.generator import article
from probing.data.records import ImageRef, NegationExample
from probing.measure.settings import ALL, ROLES

PAIR_KINDS = ("negation", "scope")
_PIECE = re.compile(r"[\w']+|[^\w\s]+")  # what CLIP's pre-tokeniser keeps apart (words, punctuation runs)


@dataclass
class PatchPair:
    """A clean (true) and a corrupted (false) caption for one image, with the anchor's role words."""

    kind: str
    true_caption: str
    false_caption: str
    image: ImageRef
    cue: str | None
    negated: str | None
    subjects: tuple[str, ...]
    anchor: str  # "true" or "false": the caption the role words are found in
    meta: dict = field(default_factory=dict)

    @property
    def anchor_caption(self) -> str:
        return self.true_caption if self.anchor == "true" else self.false_caption


def synthetic_negation_pairs(world, n: int, split: str = "test", seed: int = 0, heldout="all") -> list[PatchPair]:
    """Affirmative twin (true: every object shown) / presence-negated caption (false), from `world.examples`."""
    pairs = []
    for example in world.examples(n, split, seed, heldout=heldout):
        spec = example.meta["specs"]["presence_negated"]
        twin = framed_caption(spec.template, spec.cue, spec.present, spec.absent[0], negated=False)
        pairs.append(PatchPair("negation", twin.text, spec.text, example.image, spec.cue, spec.absent[0].text(),
                               tuple(m.text() for m in spec.present), anchor="false", meta={"k": example.k}))
    return pairs


def synthetic_scope_pairs(world, n: int, split: str = "test", seed: int = 0, heldout="all") -> list[PatchPair]:
    """"A <frame> <cue> X" (true: A shown, X absent) / "X <frame> <cue> A" (false), from `world.scope_pairs`.

    Only pairs that name a real subject (k >= 2) can swap it with the negated object; more pairs
    are drawn until `n` have one.
    """
    pairs: list[PatchPair] = []
    draw = 0
    while len(pairs) < n:
        for scope in world.scope_pairs(2 * n, split, seed + 7919 * draw, heldout=heldout):
            if scope.k < 2 or len(pairs) == n:
                continue
            spec = scope.meta["specs"]["correct"]
            absent, subjects = spec.absent[0], spec.present
            swapped = framed_caption(spec.template, spec.cue, (absent,) + subjects[1:], subjects[0])
            pairs.append(PatchPair("scope", spec.text, swapped.text, scope.image, spec.cue, absent.text(),
                                   tuple(m.text() for m in subjects), anchor="true", meta={"k": scope.k}))
        draw += 1
    return pairs


def example_pairs(examples: Sequence[NegationExample]) -> list[PatchPair]:
    """Negation pairs from real records: true caption / presence-negated caption, anchored on the latter.

    Records of the rule-based generator (meta "template" and "subjects") get their exact affirmative
    twin as the true caption; others (CC-Neg) keep their own caption. Records without a negated
    caption are left out.
    """

    pairs = []
    for example in examples:
        if not example.presence_negated or not example.caption:
            continue
        subjects = tuple(example.meta.get("subjects") or ([example.subject] if example.subject else []))
        cue = example.cue or find_negation_cue(example.presence_negated)
        true = example.caption
        if example.meta.get("template") in NEGATION_FRAMES and cue in CUES and subjects and example.negated_object:
            true = framed_text(example.meta["template"], cue, subjects, example.negated_object, negated=False,
                               article=article)
        pairs.append(PatchPair("negation", true, example.presence_negated, example.image, cue, example.negated_object,
                               subjects, anchor="false", meta={"source": example.source, "row": example.row}))
    return pairs


def benchmark_scope_pairs(pairs: Sequence[dict]) -> list[PatchPair]:
    """Scope pairs a benchmark file gives itself (probing.data.benchmarks: NegBench MCQ's correct hybrid answer and
    its wrong hybrid option with the two objects swapped): the true caption is the anchor, as for synthetic scope
    pairs. Each dict: true, false, image, cue, negated, subjects, source, row."""
    return [PatchPair("scope", p["true"], p["false"], p["image"], p["cue"], p["negated"], tuple(p["subjects"]),
                      anchor="true", meta={"source": p.get("source"), "row": p.get("row")}) for p in pairs]


@dataclass
class AlignedPair:
    """A pair's tokens (SOT..EOT) and, per patchable role, its positions in the true and the false caption."""

    pair: PatchPair
    true_tokens: torch.Tensor
    false_tokens: torch.Tensor
    positions: dict[str, tuple[np.ndarray, np.ndarray]]  # role -> (true positions, false positions)
    anchor_roles: list[str]  # role of every anchor position


class RoleFinder:
    """Token roles and pair alignment for one tokenizer (token counts of words are cached)."""

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor],
                 eot_positions: Callable[[torch.Tensor], torch.Tensor]):
        self.tokenizer = tokenizer
        self.eot_positions = eot_positions
        self.context_length = tokenizer([""]).shape[1]
        self._counts: dict[str, int] = {}

    def tokens(self, captions: Sequence[str]) -> list[torch.Tensor]:
        """Each caption's tokens from SOT to EOT inclusive."""
        tokens = self.tokenizer(list(captions))
        return [row[:int(end) + 1] for row, end in zip(tokens, self.eot_positions(tokens))]

    def roles(self, caption: str, cue: str | None, negated: str | None, subjects: Sequence[str],
              length: int | None = None) -> list[str] | None:
        """The role of every token position (SOT..EOT) of `caption`, or None if its words do not add up.

        length: the caption's token count including SOT and EOT (tokenised here when not given).
        """
        length = length or len(self.tokens([caption])[0])
        spans = _role_spans(caption, cue, negated, subjects)
        pieces = [(match.group(), match.start(), match.end()) for match in _PIECE.finditer(caption)]
        self._count([piece for piece, _, _ in pieces])
        roles = ["other"]
        for piece, start, end in pieces:
            role = next((name for name, (s, e) in spans if s < end and start < e), "other")
            roles += [role] * self._counts[piece]
        if len(roles) + 1 != length:
            truncated = length == self.context_length and len(roles) + 1 > length
            if not truncated:
                return None
            roles = roles[:length - 1]  # the tokenizer cut the caption and put EOT in the last slot
        return roles + ["eot"]

    def align(self, pairs: Sequence[PatchPair]) -> tuple[list[AlignedPair], list[tuple[PatchPair, str]]]:
        """Aligned pairs, and the pairs left out with the reason."""
        true_tokens = self.tokens([p.true_caption for p in pairs])
        false_tokens = self.tokens([p.false_caption for p in pairs])
        aligned, skipped = [], []
        for pair, true, false in zip(pairs, true_tokens, false_tokens):
            if torch.equal(true, false):
                skipped.append((pair, "the two captions tokenise identically"))
                continue
            anchor, partner = (true, false) if pair.anchor == "true" else (false, true)
            roles = self.roles(pair.anchor_caption, pair.cue, pair.negated, pair.subjects, length=len(anchor))
            if roles is None:
                skipped.append((pair, "word token counts do not add up to the caption's tokens"))
                continue
            mapping = _token_alignment(anchor.tolist(), partner.tolist())
            positions = {}
            for role in (*ROLES, ALL):
                at = np.flatnonzero([r == role or role == ALL for r in roles])
                if role == ALL:
                    at = at[mapping[at] >= 0]
                if len(at) == 0 or (mapping[at] < 0).any():
                    continue
                ends = (at, mapping[at]) if pair.anchor == "true" else (mapping[at], at)
                positions[role] = ends
            aligned.append(AlignedPair(pair, true, false, positions, roles))
        return aligned, skipped

    def _count(self, pieces: Sequence[str]) -> None:
        new = sorted(set(pieces) - set(self._counts))
        if new:
            lengths = [len(tokens) - 2 for tokens in self.tokens(new)]
            self._counts.update(zip(new, lengths))


def _role_spans(caption: str, cue: str | None, negated: str | None,
                subjects: Sequence[str]) -> list[tuple[str, tuple[int, int]]]:
    """Character spans of the role words: the cue, the negated phrase after it, then each subject."""
    spans: list[tuple[str, tuple[int, int]]] = []
    cue_span = _find(caption, cue, 0, spans) if cue else None
    if cue_span:
        spans.append(("cue", cue_span))
    if negated:
        found = _find(caption, negated, cue_span[0] if cue_span else 0, spans)
        if found:
            spans.append(("negated", found))
    for subject in subjects:
        found = _find(caption, subject, 0, spans)
        if found:
            spans.append(("subject", found))
    return spans


def _find(text: str, phrase: str, start: int, taken) -> tuple[int, int] | None:
    """First whole-word, case-insensitive match of `phrase` at or after `start` that overlaps no taken span."""
    pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.IGNORECASE)
    for match in pattern.finditer(text, start):
        if not any(s < match.end() and match.start() < e for _, (s, e) in taken):
            return match.span()
    return None


def _token_alignment(anchor: list[int], partner: list[int]) -> np.ndarray:
    """For each anchor position, its partner position or -1."""
    if len(anchor) == len(partner):
        return np.arange(len(anchor))
    mapping = np.full(len(anchor), -1)
    matcher = difflib.SequenceMatcher(None, anchor, partner, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and a1 - a0 == b1 - b0):
            mapping[a0:a1] = np.arange(b0, b1)
    mapping[0], mapping[-1] = 0, len(partner) - 1  # SOT and EOT always correspond
    return mapping
