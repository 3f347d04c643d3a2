"""Turn negation examples into what the training loop reads: cached image features and tokens.

The image tower is frozen, so image (and distractor image) features are computed once, in eval
mode without gradients, and kept on the device; they come from the disk cache of image features when
an earlier run (a resume, another run of an ablation, an evaluation) computed them with the same
image tower (probing.features.cache). Captions are tokenised once up front.

Captions longer than the text tower's context are cut to it (open_clip's tokenizer keeps the first
context - 1 tokens and the end token). `screen_captions` (the Trainer runs it on every data source before
anything else) counts them per data file, and refuses the examples whose compared captions become the
same tokens after the cut (or already are the same text): a caption and its negation that differ only past
the cut would train on identical pairs, a loss at chance that no one would notice. Refused examples are an
error (strict) or skipped and counted (lenient); the counts go to the run's log, run.json and
provenance.json. The rule is the evaluators' (probing.data.reading.CaptionCut, distinct_pairs). Examples
are duck-typed: anything with `image`, `caption`, `presence_negated`, `absence_negated` and
`distractor_image` attributes works (probing.data.records.NegationExample is the real one). A loss
that reads MCQ items (LossSpec.record == "mcq", NegBench's) takes anything with `image`, `captions`
(the K options, the same K for every item) and `correct` (probing.data.records.MCQItem).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Callable, Sequence

import torch
from torch import nn

from finetune.distributed import DistContext
from finetune.losses import LossSpec
from probing.data.reading import CaptionCut, distinct_pairs
from probing.data.records import DataError
from probing.features.cache import encode_image_features

# loss feature name -> example attribute holding that caption
CAPTION_FIELDS = {"caption": "caption", "presence_negated": "presence_negated", "absence_negated": "absence_negated"}
CAPTION_NAMES = {"caption": "caption", "presence_negated": "presence-negated caption",
                 "absence_negated": "absence-negated caption"}
SHOWN_SKIPS = 10  # skipped examples listed by row per data file in run.json (all are counted)


@dataclass
class CaptionScreen:
    """What the text tower's context did to one data source's captions, per data file (`screen_captions`)."""

    context_length: int
    counted: bool  # whether cut captions could be counted (the tokenizer has `encode`, as open_clip's does)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(file["identical_skipped"] for file in self.files.values())

    def record(self) -> dict[str, Any]:
        """JSON-ready: for run.json and provenance.json."""
        return {"context_length": self.context_length, "counted": self.counted, "files": self.files}

    def lines(self) -> list[str]:
        """One line per data file whose captions the cut shortened or whose examples were skipped."""
        lines = []
        for source, file in self.files.items():
            if not file["captions_cut"] and not file["identical_skipped"]:
                continue
            line = (f"{source}: {file['captions_cut']} of {file['captions']} captions are longer than the "
                    f"{self.context_length}-token context and were cut ({file['examples_with_a_cut_caption']} of "
                    f"{file['examples']} examples)")
            if file["identical_skipped"]:
                line += (f"; {file['identical_skipped']} examples skipped: their compared captions are the same "
                         f"tokens ({file['identical_after_the_cut']} after the cut, {file['identical_in_the_file']} "
                         "already in the file)")
            lines.append(line)
        return lines


def screen_captions(examples: Sequence[Any], tokenizer: Callable, spec: LossSpec, *,
                    strict: bool = True) -> tuple[list, CaptionScreen]:
    """(the examples the loss can train on, what the context did to their captions, per data file).

    An example whose compared captions are the same tokens after the cut to the context (or the same text):
    any two of the captions the loss reads (spec.texts), or an MCQ item's right option and another option,
    is refused: strict, a DataError naming its file and row; else it is left out and counted. Examples
    without one of those captions are left to prepare_data, which names them."""
    cut = CaptionCut(tokenizer)
    if spec.record == "mcq":
        def texts(item: Any) -> list[str]:
            return [text for text in getattr(item, "captions", None) or () if isinstance(text, str)]

        def pairs(item: Any) -> list[tuple]:
            options, right = getattr(item, "captions", None), getattr(item, "correct", None)
            if not isinstance(options, (list, tuple)) or not isinstance(right, int) or not 0 <= right < len(options) \
                    or not all(isinstance(text, str) for text in options):
                return []
            return [(options[right], other, f"the right option ({right}) and option {index}")
                    for index, other in enumerate(options) if index != right]
    else:
        names = [CAPTION_FIELDS[name] for name in spec.texts]

        def texts(example: Any) -> list[str]:
            return [text for text in (getattr(example, name, None) for name in names) if isinstance(text, str)]

        def pairs(example: Any) -> list[tuple]:
            return [(getattr(example, a), getattr(example, b), f"{CAPTION_NAMES[a]} and {CAPTION_NAMES[b]}")
                    for a, b in combinations(names, 2)
                    if isinstance(getattr(example, a, None), str) and isinstance(getattr(example, b, None), str)]

    groups: dict[str, list] = {}
    for example in examples:
        groups.setdefault(str(getattr(example, "source", None) or "<examples>"), []).append(example)
    screen = CaptionScreen(cut.context, cut.limit is not None)
    refused: set[int] = set()
    for source, group in groups.items():
        kept, identical = distinct_pairs(group, pairs, cut, "captions")
        kept_ids = {id(example) for example in kept}
        refused |= {id(example) for example in group if id(example) not in kept_ids}
        if identical and strict:
            row, reason = identical[0]
            raise DataError(source, row, f"{reason}, so training would compare identical captions "
                                         f"({len(identical)} such examples in this file; lenient loading skips "
                                         "and counts them: finetune-layers --skip-bad-rows)")
        counts = cut.counts([texts(example) for example in group])
        after_cut = sum(1 for _, reason in identical if "after the cut" in reason)
        screen.files[source] = {"examples": len(group), "captions": sum(len(texts(example)) for example in group),
                                "captions_cut": counts["captions_cut"],
                                "examples_with_a_cut_caption": counts["items_with_a_cut_caption"],
                                "identical_skipped": len(identical), "identical_after_the_cut": after_cut,
                                "identical_in_the_file": len(identical) - after_cut,
                                "skipped": [[row, reason] for row, reason in identical[:SHOWN_SKIPS]]}
    return [example for example in examples if id(example) not in refused], screen


@dataclass
class TrainingData:
    tokens: dict[str, torch.Tensor]  # feature name -> [N, context_length] token ids (CPU); options: [N, K, context]
    image: torch.Tensor  # [N, d] normalised float32 image features (device)
    distractor: torch.Tensor | None  # [N, d] or None
    correct: torch.Tensor | None = None  # [N] index of the right option (MCQ items, device)

    def __len__(self) -> int:
        return self.image.shape[0]


def prepare_data(
    model: nn.Module,
    tokenizer: Callable,
    preprocess: Callable,
    examples: Sequence[Any],
    spec: LossSpec,
    *,
    device: torch.device,
    dist: DistContext,
    image_batch_size: int = 256,
    autocast: bool = False,
    feature_cache: bool = True,
    num_workers: int = 0,
    progress: bool = False,
) -> TrainingData:
    """Tokens and image features of `examples` for the loss `spec`. feature_cache: read and write the disk
    cache of image features; num_workers: DataLoader processes that decode images; progress: a bar per
    image set ("image features", "distractor features")."""
    if len(examples) == 0:
        raise DataError(None, None, "no training examples")
    correct = None
    if spec.record == "mcq":
        options, correct = _mcq_options(examples)
        flat = tokenizer(options).long()
        tokens = {"options": flat.view(len(examples), -1, flat.shape[-1])}
        correct = correct.to(device)
    else:
        tokens = {name: tokenizer(_captions(examples, CAPTION_FIELDS[name])).long() for name in spec.texts}
    use_distractor = _use_distractors(examples, spec)

    def encoder(desc: str) -> Callable[[Sequence[tuple[int, Any, Any]]], torch.Tensor]:
        def encode(triples: Sequence[tuple[int, Any, Any]]) -> torch.Tensor:
            return encode_image_features(model, preprocess, [image for _, _, image in triples], device=device,
                                         batch_size=image_batch_size, autocast=autocast, cache=feature_cache,
                                         num_workers=num_workers, progress=progress and dist.is_main, desc=desc,
                                         origins=[_where(example, index) for index, example, _ in triples])
        return encode

    image = dist.map_sharded(_indexed(examples, "image"), encoder("image features"))
    distractor = (dist.map_sharded(_indexed(examples, "distractor_image"), encoder("distractor features"))
                  if use_distractor else None)
    return TrainingData(tokens, image, distractor, correct)


def _indexed(examples: Sequence[Any], attribute: str) -> list[tuple[int, Any, Any]]:
    """(index, example, image) triples, so that errors can name the example."""
    return [(index, example, getattr(example, attribute)) for index, example in enumerate(examples)]


def _where(example: Any, index: int) -> tuple[str | None, Any]:
    source = getattr(example, "source", None)
    row = getattr(example, "row", None)
    return source, row if row is not None else f"{index} (example index)"


def _captions(examples: Sequence[Any], attribute: str) -> list[str]:
    captions = []
    for index, example in enumerate(examples):
        text = getattr(example, attribute, None)
        if not isinstance(text, str) or not text.strip():
            source, row = _where(example, index)
            raise DataError(
                source, row, f"the loss needs a non-empty {attribute} caption in every example; this one has {text!r}"
            )
        captions.append(text)
    return captions


def _mcq_options(examples: Sequence[Any]) -> tuple[list[str], torch.Tensor]:
    """Every item's options in order (flat) and the index of its right one; every item needs K options."""
    options, correct = [], []
    counts: dict[int, tuple[Any, Any]] = {}  # number of options -> where the first item with that many is
    for index, item in enumerate(examples):
        captions, right = getattr(item, "captions", None), getattr(item, "correct", None)
        if not isinstance(captions, (list, tuple)) or len(captions) < 2 or not isinstance(right, int):
            source, row = _where(item, index)
            raise DataError(source, row, "the MCQ loss needs MCQ items (NegBench's MCQ files): captions and the index "
                                         f"of the right one; this example is a {type(item).__name__}")
        if not all(isinstance(text, str) and text.strip() for text in captions) or not 0 <= right < len(captions):
            source, row = _where(item, index)
            raise DataError(source, row, "an MCQ item needs non-empty options and a right index among them, "
                                         f"got {right}")
        counts.setdefault(len(captions), _where(item, index))
        options += list(captions)
        correct.append(right)
    if len(counts) != 1:
        (first, (source, _)), (other, (other_source, row)) = sorted(counts.items())[:2]
        raise DataError(other_source, row, f"MCQ items must all have the same number of options: this one has "
                                           f"{other}, others have {first} (e.g. in {source})")
    return options, torch.tensor(correct)


def _use_distractors(examples: Sequence[Any], spec: LossSpec) -> bool:
    if spec.distractor == "no":
        return False
    missing = [i for i, ex in enumerate(examples) if getattr(ex, "distractor_image", None) is None]
    if not missing:
        return True
    if spec.distractor == "optional" and len(missing) == len(examples):
        return False  # e.g. CoN-CLIP falls back to its two-term form
    source, row = _where(examples[missing[0]], missing[0])
    need = "needs" if spec.distractor == "required" else "uses them only when every example has one, and"
    raise DataError(source, row, f"{spec.fn.__name__} {need} a distractor image; {len(missing)} of "
                                 f"{len(examples)} examples have none")
