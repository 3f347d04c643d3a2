"""Negation benchmarks for any open_clip model (REFERENCE.md, "Evaluation protocols").

One function per benchmark, each `(model, preprocess, tokenizer, items, batch_size=...)` ->

    {"metrics": {name: {"value": float, "n": rows behind the value}},
     "counts":  {"rows_read", "n_evaluated", "n_skipped", "skip_reasons", "skipped_examples", ...}}

Each is an encoding step (every row, batched, L2-normalised) and a scoring step on the features
(`score_*`, plain tensor code that refuses unnormalised features through `probing.metrics`). The
anchors' evaluation bugs this guards against (REFERENCE.md, "Pitfalls"):

- similarities on unnormalised features: every score function checks the norms;
- scoring only the last batch: features are assembled for every row and their count checked
  against the number of rows (`_check_rows`), and `n` in the output is the number scored;
- rows silently dropped: rows the loaders skip (missing images, duplicates) and rows the evaluation
  cannot use (an image that does not decode, e.g. a truncated JPEG) are counted with their reason in
  `counts`; a benchmark left with nothing to evaluate is a failure (`evaluate_all`), not an empty table;
- captions silently cut: the text tower sees at most its context (77 tokens for CLIP, 32 for the
  embedded models); captions longer than that are counted per benchmark (`counts["cut"]`), and an
  item whose compared captions become the same tokens after the cut (a SugarCREPE pair that differs
  only past the cut would score a tie, i.e. wrong) is left out and counted (`CaptionCut`).

Ties count as failures everywhere and every metric reports how many items a tie decided
(`probing.metrics`: a pair is won only with a strictly larger similarity, an MCQ item or a
NegRefCOCOg phrase only when the correct option strictly beats every other): NegBench's and
NegRefCOCOg's correct answer is always option 0, so breaking ties towards the first option, as the
authors' argmax does, would reward a model that gives every option the same score.

`evaluate_all` runs the benchmarks whose files exist (see `analysis.evaluation.benchmarks`) and
`markdown_table` renders its result, with the published value of each metric beside it where the
literature gives one (`analysis.evaluation.published`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from analysis.evaluation.benchmarks import (
    BENCHMARKS,
    ImageFolder,
    Job,
    Sources,
    load_counts,
    load_image_folder,
    plan_benchmarks,
    report_of,
)
from analysis.evaluation.published import published_for, published_of
from probing import data
from probing.captions import with_article
from probing.data.ccneg import find_negation_cue
from probing.data.negrefcocog import crop_regions
from probing.data.reading import NO_IMAGE, CaptionCut, distinct_pairs
from probing.data.records import (
    DataError,
    FoilPair,
    Loaded,
    LoadReport,
    MCQItem,
    NegationExample,
    RegionItem,
    RetrievalItem,
)
from probing.features.cache import FeatureCache
from probing.features.encode import encode_captions, encode_images
from probing.metrics import (
    Metrics,
    metric,
    score_mcq,
    score_negation,
    score_pairs,
    score_prompt_gap,
    score_regions,
    score_retrieval,
)
from probing.synthetic.suite import SyntheticSuite
from probing.synthetic.world import SyntheticWorld, WorldConfig

AFFIRMATIVE_PROMPT = "a photo of {a_c}"
NEGATED_PROMPT = "not a photo of {a_c}"


# ---------------------------------------------------------------------------------------------
# encoding: every row, normalised


def _check_rows(features: torch.Tensor, expected: int, what: str) -> None:
    # The "scores only the last batch" bug shows up as fewer feature rows than inputs.
    if features.shape[0] != expected:
        raise RuntimeError(f"{what}: got {features.shape[0]} feature rows for {expected} inputs")


def _image_key(image: Any) -> str | None:
    """Cache key of an image: its path; None (never cached) for arrays and PIL images."""
    return str(image) if isinstance(image, (str, Path)) else None


def image_features(model, preprocess, images: Sequence, *, batch_size: int = 256, cache=True,
                   failed: dict[str, str] | None = None, progress: bool = False, num_workers: int = 0) -> torch.Tensor:
    """Normalised image features [len(images), d], one row per entry, in order, through the toolkit's one
    image-feature path (probing.features.encode.encode_images): a path is encoded once however often it appears
    (NegBench's MCQ has several rows per image); `cache` (a probing.features.cache.FeatureCache shared by the
    benchmarks, True for the user's disk cache, False for none) carries features between benchmarks and runs that
    share images. An image file that cannot be decoded (a truncated JPEG, a file that is no image) gets a row of
    NaN, and its path -> the reason goes to `failed` (kept across benchmarks like `cache`): one bad file costs its
    rows, not the benchmark.
    """
    if not images:
        raise ValueError("no images to encode")
    problems: dict = {}
    features = encode_images(model, preprocess, list(images), batch_size=batch_size, cache=cache, failed=problems,
                             progress=progress, num_workers=num_workers)
    if failed is not None:
        failed.update({path: problem[2] for path, problem in problems.items()})
    _check_rows(features, len(images), "image features")
    return features


def _readable(items: Sequence, images: Sequence, failed: dict[str, str]) -> tuple[list[int], list[tuple]]:
    """(indices of the items whose image decoded, (row, reason) of the others)."""
    kept, skipped = [], []
    for index, (item, image) in enumerate(zip(items, images)):
        key = _image_key(image)
        if key is not None and key in failed:
            skipped.append((getattr(item, "row", index), f"image unreadable: {key} ({failed[key]})"))
        else:
            kept.append(index)
    return kept, skipped


def _encode_item_images(model, preprocess, items: Sequence, *, batch_size: int, cache, failed: dict | None,
                        progress: bool, num_workers: int = 0):
    """(the items whose image decoded, their image features, (row, reason) of the others)."""
    failed = {} if failed is None else failed
    images = [item.image for item in items]
    features = image_features(model, preprocess, images, batch_size=batch_size, cache=cache, failed=failed,
                              progress=progress, num_workers=num_workers)
    kept, skipped = _readable(items, images, failed)
    return [items[i] for i in kept], features[torch.tensor(kept, dtype=torch.long)], skipped


def text_features(model, tokenizer, texts: Sequence[str], *, batch_size: int = 256,
                  progress: bool = False) -> torch.Tensor:
    """Normalised text features [len(texts), d]; each distinct text is encoded once (exact trimming)."""
    if not texts:
        raise ValueError("no texts to encode")
    unique = list(dict.fromkeys(texts))
    encoded = encode_captions(model, tokenizer, unique, batch_size=batch_size, normalize=True, progress=progress)
    _check_rows(encoded, len(unique), "text features")
    position = {text: i for i, text in enumerate(unique)}
    features = encoded[torch.tensor([position[text] for text in texts])]
    _check_rows(features, len(texts), "text features")
    return features


# ---------------------------------------------------------------------------------------------
# scoring on features


# ---------------------------------------------------------------------------------------------
# one function per benchmark


def _result(metrics: Metrics, items, n_evaluated: int, extra_skipped: Sequence[tuple] = (), **extra) -> dict:
    counts = load_counts(report_of(items), n_evaluated, extra_skipped=extra_skipped)
    counts.update(extra)
    return {"metrics": metrics, "counts": counts}


def _distinct(items: Sequence, pairs: Callable, cut: CaptionCut, what: str) -> tuple[list, list[tuple]]:
    """(the items whose compared captions differ as tokens, (row, reason) of the others): probing.data.reading.
    distinct_pairs, the rule training applies too."""
    return distinct_pairs(items, pairs, cut, what)


def evaluate_negation_examples(model, preprocess, tokenizer, examples: Sequence[NegationExample], *,
                               batch_size: int = 256, image_cache=True,
                               image_failures: dict | None = None, progress: bool = False,
                               num_workers: int = 0) -> dict:
    """CC-Neg-style and absence accuracy over NegationExamples, broken down by cue word and K.

    ccneg_accuracy    s(I, caption) > s(I, presence_negated)          (CC-Neg; REFERENCE.md)
    absence_accuracy  s(I, absence_negated) > s(I, presence_negated)  (the true negation beats the
                      false one; for the synthetic world and the rule-based generator both come from
                      the same frame, cue and subjects, so this is also a scope test)
    Examples without an image or a presence-negated caption, whose image does not decode, or whose
    caption and presence-negated caption are the same tokens (after the cut) are skipped and counted;
    examples without an absence-negated caption (or with one that is the same tokens as the
    presence-negated one) count for ccneg_accuracy only.
    """
    usable, skipped = [], []
    for example in examples:
        if example.image is None:
            skipped.append((example.row, "no image"))
        elif not example.presence_negated:
            skipped.append((example.row, "no presence-negated caption"))
        elif not example.caption:
            skipped.append((example.row, "no affirmative caption"))
        else:
            usable.append(example)
    cut = CaptionCut(tokenizer)
    usable, identical = _distinct(usable, lambda e: [(e.caption, e.presence_negated)], cut,
                                  "caption and presence-negated caption")
    skipped += identical
    if not usable:
        return _result({}, examples, 0, skipped)
    usable, image, unreadable = _encode_item_images(model, preprocess, usable, batch_size=batch_size, cache=image_cache,
                                                    failed=image_failures, progress=progress, num_workers=num_workers)
    skipped += unreadable
    if not usable:
        return _result({}, examples, 0, skipped)
    caption = text_features(model, tokenizer, [e.caption for e in usable], batch_size=batch_size, progress=progress)
    presence = text_features(model, tokenizer, [e.presence_negated for e in usable], batch_size=batch_size,
                             progress=progress)
    candidates = [i for i, e in enumerate(usable) if e.absence_negated]
    same = cut.same([usable[i].absence_negated for i in candidates], [usable[i].presence_negated for i in candidates])
    with_absence = [i for i, identical in zip(candidates, same) if not identical]
    absence = text_features(model, tokenizer, [usable[i].absence_negated for i in with_absence],
                            batch_size=batch_size, progress=progress) if with_absence else None
    metrics = score_negation(image, caption, presence, {"cue": [e.cue for e in usable], "k": [e.k for e in usable]},
                             absence=absence, absence_rows=with_absence)
    cut_counts = cut.counts([[e.caption, e.presence_negated] + ([e.absence_negated] if e.absence_negated else [])
                             for e in usable])
    cut_counts["absence_pairs_identical"] = len(candidates) - len(with_absence)
    return _result(metrics, examples, len(usable), skipped, cut=cut_counts)


def evaluate_mcq(model, preprocess, tokenizer, items: Sequence[MCQItem], *, batch_size: int = 256,
                 image_cache=True, image_failures: dict | None = None, progress: bool = False,
                 num_workers: int = 0) -> dict:
    """NegBench MCQ (REFERENCE.md): pick the correct caption among the options; overall and by the
    template type of the correct answer (positive / negative / hybrid). Ties count as wrong. An item
    whose correct option is the same tokens as another option (after the cut) can only tie: it is
    left out and counted, as is one whose image does not decode."""
    if not items:
        return _result({}, items, 0)
    n_options = {len(item.captions) for item in items}
    if len(n_options) != 1:
        raise ValueError(f"MCQ items have different numbers of options: {sorted(n_options)}")
    k = n_options.pop()
    cut = CaptionCut(tokenizer)
    usable, skipped = _distinct(list(items), lambda item: [(item.captions[item.correct], other) for j, other in
                                                           enumerate(item.captions) if j != item.correct],
                                cut, "the correct option and another option")
    if not usable:
        return _result({}, items, 0, skipped)
    usable, image, unreadable = _encode_item_images(model, preprocess, usable, batch_size=batch_size, cache=image_cache,
                                                    failed=image_failures, progress=progress, num_workers=num_workers)
    skipped += unreadable
    if not usable:
        return _result({}, items, 0, skipped)
    options = text_features(model, tokenizer, [c for item in usable for c in item.captions], batch_size=batch_size,
                            progress=progress).reshape(len(usable), k, -1)
    metrics = score_mcq(image, options, torch.tensor([item.correct for item in usable]),
                        [item.template for item in usable])
    return _result(metrics, items, len(usable), skipped, cut=cut.counts([item.captions for item in usable]))


def evaluate_retrieval(model, preprocess, tokenizer, items: Sequence[RetrievalItem], *, batch_size: int = 256,
                       ks: Sequence[int] = (1, 5, 10), image_cache=True,
                       image_failures: dict | None = None, progress: bool = False, num_workers: int = 0) -> dict:
    """Zero-shot retrieval R@k both ways over the items' images and all their captions.

    With NegBench's negated file the captions are negated queries ("... but no chair"): its
    text_to_image R@k is retrieval with negated queries. Rows naming the same image are merged
    into one gallery image, so a caption's own image is never duplicated among the candidates, and a
    caption written word for word for several images is right for each of them. Rows whose image
    does not decode are left out and counted.
    """
    if not items:
        return _result({}, items, 0)
    cache = image_cache
    usable, _, skipped = _encode_item_images(model, preprocess, list(items), batch_size=batch_size, cache=cache,
                                             failed=image_failures, progress=progress)
    if not usable:
        return _result({}, items, 0, skipped)
    gallery: dict[str, int] = {}
    images, owners, captions = [], [], []
    for row, item in enumerate(usable):
        key = _image_key(item.image) or f"row {row}"
        if key not in gallery:
            gallery[key] = len(images)
            images.append(item.image)
        owners += [gallery[key]] * len(item.captions)
        captions += list(item.captions)
    image = image_features(model, preprocess, images, batch_size=batch_size, cache=cache, progress=progress,
                           num_workers=num_workers)
    text = text_features(model, tokenizer, captions, batch_size=batch_size, progress=progress)
    metrics = score_retrieval(image, text, owners, ks, texts=captions)
    cut = CaptionCut(tokenizer)
    return _result(metrics, items, len(usable), skipped, n_images=len(images), n_captions=len(captions),
                   cut=cut.counts([item.captions for item in usable]))


def evaluate_foils(model, preprocess, tokenizer, pairs: Sequence[FoilPair], *, batch_size: int = 256,
                   image_cache=True, image_failures: dict | None = None,
                   progress: bool = False, num_workers: int = 0) -> dict:
    """Caption vs foil (SugarCREPE, VALSE existence; REFERENCE.md): s(I, caption) > s(I, foil),
    overall, per fold, and (with several folds) the mean over folds, SugarCREPE's headline number.
    A pair whose caption and foil are the same tokens (after the cut) can only tie: it is left out and
    counted, as is one whose image does not decode."""
    if not pairs:
        return _result({}, pairs, 0)
    cut = CaptionCut(tokenizer)
    usable, skipped = _distinct(list(pairs), lambda pair: [(pair.caption, pair.foil)], cut, "caption and foil")
    if not usable:
        return _result({}, pairs, 0, skipped)
    usable, image, unreadable = _encode_item_images(model, preprocess, usable, batch_size=batch_size, cache=image_cache,
                                                    failed=image_failures, progress=progress, num_workers=num_workers)
    skipped += unreadable
    if not usable:
        return _result({}, pairs, 0, skipped)
    caption = text_features(model, tokenizer, [p.caption for p in usable], batch_size=batch_size, progress=progress)
    foil = text_features(model, tokenizer, [p.foil for p in usable], batch_size=batch_size, progress=progress)
    metrics = score_pairs("accuracy", image, caption, foil, {"fold": [p.fold for p in usable]})
    folds = [key for key in metrics if key.startswith("accuracy/fold=")]
    if len(folds) > 1:
        metrics["mean_over_folds"] = metric(sum(metrics[key]["value"] for key in folds) / len(folds),
                                             sum(metrics[key]["n"] for key in folds),
                                             sum(metrics[key]["ties"] for key in folds))
    return _result(metrics, pairs, len(usable), skipped, cut=cut.counts([[p.caption, p.foil] for p in usable]))


def evaluate_regions(model, preprocess, tokenizer, items: Sequence[RegionItem], *, batch_size: int = 256,
                     progress: bool = False) -> dict:
    """NegRefCOCOg (NegationCLIP): the phrase against a crop of each candidate box, as the authors score
    it (`image.crop((x, y, x + w, y + h))`, then the model's preprocessing); right when the referred
    box's crop strictly beats every other crop, by the cue word of the phrase. An item whose image does
    not decode is left out and counted."""

    if not items:
        return _result({}, items, 0)
    usable, skipped, crops = [], [], []
    for item in items:
        try:
            item_crops = crop_regions(item)
        except DataError as error:
            skipped.append((item.row, f"image unreadable: {item.image} ({error.problem})"))
            continue
        usable.append(item)
        crops += item_crops
    if not usable:
        return _result({}, items, 0, skipped)
    features = encode_images(model, preprocess, crops, batch_size=batch_size, progress=progress)
    _check_rows(features, len(crops), "region features")
    regions = list(features.split([len(item.boxes) for item in usable]))
    phrase = text_features(model, tokenizer, [item.phrase for item in usable], batch_size=batch_size,
                           progress=progress)
    metrics = score_regions(phrase, regions, [item.correct for item in usable],
                            {"cue": [find_negation_cue(item.phrase) for item in usable]})
    return _result(metrics, items, len(usable), skipped, n_regions=len(crops),
                   cut=CaptionCut(tokenizer).counts([[item.phrase] for item in usable]))


def class_prompts(classes: Sequence[str], template: str) -> list[str]:
    """One prompt per class: `{c}` is the class name, `{a_c}` the name with "a" / "an"."""

    return [template.format(c=name, a_c=with_article(name)) for name in classes]


def evaluate_prompt_gap(
    model,
    preprocess,
    tokenizer,
    images: Sequence,
    labels: Sequence[int],
    classes: Sequence[str],
    *,
    batch_size: int = 256,
    affirmative: str = AFFIRMATIVE_PROMPT,
    negated: str = NEGATED_PROMPT,
    image_cache=True,
    report: LoadReport | None = None,
    progress: bool = False,
) -> dict:
    """Negated class prompt gap (REFERENCE.md): zero-shot top-1 with "a photo of a {c}" minus top-1
    with "not a photo of a {c}" over the same images."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not images:
        return {"metrics": {}, "counts": load_counts(report, 0)}
    failed: dict[str, str] = {}
    image = image_features(model, preprocess, images, batch_size=batch_size, cache=image_cache, failed=failed,
                           progress=progress)
    bad = {i for i, path in enumerate(images) if _image_key(path) in failed}
    kept = [i for i in range(len(images)) if i not in bad]
    skipped = [(str(images[i]), f"image unreadable: {failed[_image_key(images[i])]}") for i in sorted(bad)]
    counts = load_counts(report, len(kept), extra_skipped=skipped)
    if not kept:
        return {"metrics": {}, "counts": counts}
    positive = text_features(model, tokenizer, class_prompts(classes, affirmative), batch_size=batch_size)
    negative = text_features(model, tokenizer, class_prompts(classes, negated), batch_size=batch_size)
    counts.update(n_classes=len(classes), prompts=[affirmative, negated])
    chosen = torch.tensor(kept, dtype=torch.long)
    return {"metrics": score_prompt_gap(image[chosen], positive, negative, [labels[i] for i in kept]),
            "counts": counts}


def evaluate_image_folder(model, preprocess, tokenizer, folder: ImageFolder | str | Path, *,
                          batch_size: int = 256, progress: bool = False, **prompts) -> dict:
    """The negated class prompt gap on a folder of class-named subfolders (`load_image_folder`)."""
    if not isinstance(folder, ImageFolder):
        folder = load_image_folder(folder)
    return evaluate_prompt_gap(model, preprocess, tokenizer, folder.paths, folder.labels, folder.classes,
                               batch_size=batch_size, report=folder.report, progress=progress, **prompts)


def evaluate_synthetic(model, preprocess, tokenizer, *, world=None, n: int = 1000, n_classification: int = 360,
                       split: str = "test", heldout: str = "all", seed: int = 0, batch_size: int = 256,
                       progress: bool = False) -> dict[str, dict]:
    """The synthetic world (built by construction, so every caption's truth is known), scored by its
    one evaluator, `probing.synthetic.SyntheticSuite`: sections synthetic/negation (CC-Neg-style and
    absence accuracy by cue and K), synthetic/retrieval (affirmative R@1 among 100), synthetic/scope
    (scope accuracy by cue and K) and synthetic/prompt_gap (negated class prompts over the world's
    classes, shapes and colours). The test split with heldout="all" uses held-out cues, templates and
    negated objects.
    """

    world = world or SyntheticWorld(WorldConfig(), seed=seed)
    suite = SyntheticSuite.build(world, n=n, n_classification=n_classification, split=split, heldout=heldout,
                                 seed=seed)
    scored = suite.evaluate(model, preprocess, tokenizer, batch_size=batch_size, progress=progress)
    counts = {"rows_read": n, "n_evaluated": n, "n_skipped": 0, "skip_reasons": {}, "skipped_examples": [],
              "split": split, "heldout": heldout, "seed": seed, "world_seed": world.seed,
              "image_size": world.config.image_size}
    return {f"synthetic/{section}": {"metrics": metrics, "counts": dict(counts)} for section, metrics in scored.items()}


# ---------------------------------------------------------------------------------------------
# every benchmark whose files exist


def _per(section: dict, group: str, limit: int | None) -> dict:
    """A section whose rows `_limited` counted per `group` (a SugarCREPE fold, an image folder's class): with a
    limit, its counts say so beside `limited_to`."""
    if limit is not None:
        section["counts"]["limited_per"] = group
    return section


def _limited(items, limit: int | None, key: Callable | None = None):
    """The first `limit` rows (per value of `key`, e.g. per SugarCREPE fold), keeping the load report."""
    if limit is None:
        return items
    kept: list = []
    seen: dict[Any, int] = defaultdict(int)
    for item in items:
        group = key(item) if key else None
        if seen[group] < limit:
            seen[group] += 1
            kept.append(item)
    return Loaded(kept, report_of(items))


def _run_job(name: str, job: Job, model, preprocess, tokenizer, *, options: dict, limit: int | None,
             settings: dict, cache, unreadable: dict | None = None, workers: int = 0,
             ccneg_strip_commas: bool = True) -> dict[str, dict]:
    """Load one file of a benchmark leniently and evaluate it; returns its output sections."""

    run = dict(options, image_cache=cache, image_failures=unreadable, num_workers=workers)
    root = job.image_root
    if name == "synthetic":
        return evaluate_synthetic(model, preprocess, tokenizer, **settings, **options)
    if name == "image_folder":
        folder = load_image_folder(job.path)
        if limit is not None:
            keep = _limited(list(range(len(folder))), limit, key=lambda i: folder.labels[i])
            folder = ImageFolder(folder.root, [folder.paths[i] for i in keep], [folder.labels[i] for i in keep],
                                 folder.classes, folder.report)
        return {job.section: _per(evaluate_image_folder(model, preprocess, tokenizer, folder, **options), "class",
                                  limit)}
    if name == "coco_generated":
        instances = data.load_coco_instances(job.path, root, strict=False)
        generated = data.generate_negations(instances, seed=settings["seed"], max_subjects=3)
        # the images skipped by the instances loader (missing files) are this benchmark's skipped rows
        report = LoadReport(path=instances.report.path, loaded=len(generated), skipped=list(instances.report.skipped),
                            filtered={**instances.report.filtered, **generated.report.filtered})
        examples = _limited(Loaded(generated, report), limit)
        return {job.section: evaluate_negation_examples(model, preprocess, tokenizer, examples, **run)}
    if name == "ccneg":
        examples = _limited(data.load_ccneg(job.path, root, strict=False, strip_commas=ccneg_strip_commas),
                            limit)
        return {job.section: evaluate_negation_examples(model, preprocess, tokenizer, examples, **run)}
    if name == "negbench_mcq":
        items = _limited(data.load_negbench_mcq(job.path, root, strict=False), limit)
        return {job.section: evaluate_mcq(model, preprocess, tokenizer, items, **run)}
    if name == "negbench_retrieval":
        items = _limited(data.load_negbench_retrieval(job.path, root, strict=False), limit)
        return {job.section: evaluate_retrieval(model, preprocess, tokenizer, items, **run)}
    if name == "sugarcrepe":
        pairs = _limited(data.load_sugarcrepe(job.path, root, strict=False), limit, key=lambda p: p.fold)
        return {job.section: _per(evaluate_foils(model, preprocess, tokenizer, pairs, **run), "fold", limit)}
    if name == "valse_existence":
        pairs = _limited(data.load_valse_existence(job.path, root, strict=False), limit)
        return {job.section: evaluate_foils(model, preprocess, tokenizer, pairs, **run)}
    if name == "negrefcocog":
        items = _limited(data.load_negrefcocog(job.path, root, strict=False), limit)
        return {job.section: evaluate_regions(model, preprocess, tokenizer, items, **options)}
    raise ValueError(f"unknown benchmark {name!r}; known: {BENCHMARKS}")


def evaluate_all(model, preprocess, tokenizer, *, data_root: str | Path | None = None,
                 image_root: str | Path | None = None, which: Sequence[str] | None = None, batch_size: int = 256,
                 image_roots: dict[str, str | Path] | None = None, files: dict[str, Sequence[str | Path]] | None = None,
                 image_folder: str | Path | None = None, limit: int | None = None, ccneg_strip_commas: bool = True,
                 synthetic_n: int = 1000, synthetic_classification: int = 360, synthetic_split: str = "test",
                 synthetic_heldout: str = "all", synthetic_world=None, seed: int = 0, progress: bool = False,
                 feature_cache: bool = True, num_workers: int = 0, asked: Sequence[str] | None = None) -> dict:
    """Run the benchmarks in `which` (default: every one whose files exist) and collect their output.

    Returns {"sections": {section: {"metrics", "counts"}}, "not_run": {benchmark: why},
    "failed": {section: data error}, "summary": {...}, "published": {section: {metric: [rows]}},
    "settings": {...}}. `files`: benchmark -> the user's files (see `analysis.evaluation.benchmarks`;
    a benchmark without files looks in `data_root`). `asked`: the benchmarks the user named (default: `which`); a
    benchmark neither asked for nor given files, none of whose images exist (e.g. VALSE, whose images no data root
    ships), is not run, with the reason; asked for, it fails. `limit`: evaluate at most that many loaded rows
    per file (per fold for SugarCREPE, per class for an image folder; for the synthetic suite, at most
    that many examples, scope pairs and prompt-gap images), for quick runs; the counts record it. A data
    error in one file is recorded in "failed" and the others still run.
    ccneg_strip_commas: remove the commas of CC-Neg's negated captions, as the authors do.
    feature_cache: image features through the user's disk cache (probing.features.cache); num_workers: DataLoader
    processes that decode image files.
    synthetic_world: the SyntheticWorld to evaluate on (default: `WorldConfig()` seeded with `seed`;
    pass the world a model was pretrained on, e.g. `probing.models.build.world_for(spec)`).
    """

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    sources = Sources(data_root=data_root, image_root=image_root, image_roots=image_roots or {},
                      files={name: list(paths) for name, paths in (files or {}).items()}, image_folder=image_folder)
    plan = plan_benchmarks(sources, which)
    named = set(asked if asked is not None else which or ())
    if limit is not None:  # the synthetic suite too: at most `limit` examples, scope pairs and prompt-gap images
        synthetic_n, synthetic_classification = min(synthetic_n, limit), min(synthetic_classification, limit)
    settings = {"n": synthetic_n, "n_classification": synthetic_classification, "split": synthetic_split,
                "heldout": synthetic_heldout, "seed": seed, "world": synthetic_world}
    sections: dict[str, dict] = {}
    failed: dict[str, str] = {}
    not_run = dict(plan.not_run)
    # one store for every benchmark: COCO images are shared by NegBench, SugarCREPE and the generator
    cache = FeatureCache.for_model(model, preprocess) if feature_cache else False
    unreadable: dict[str, str] = {}  # image files that do not decode, and why (shared the same way)
    jobs = [(name, job) for name, planned in plan.runnable.items() for job in planned]
    bar = tqdm(jobs, desc="benchmarks", disable=not progress)
    for name, job in bar:
        bar.set_postfix_str(job.section)
        try:
            produced = _run_job(name, job, model, preprocess, tokenizer,
                                options={"batch_size": batch_size, "progress": False},
                                workers=num_workers,
                                limit=limit, settings=settings, cache=cache,
                                unreadable=unreadable, ccneg_strip_commas=ccneg_strip_commas)
        except DataError as error:
            failed[job.section] = str(error)
            continue
        for section, result in produced.items():
            counts = result["counts"]
            if limit is not None:
                counts["limited_to"] = limit  # and "limited_per" where _run_job counted it per group
            if name == "ccneg":
                counts["commas_stripped"] = ccneg_strip_commas
            if counts["n_evaluated"] == 0:  # an empty table would read as a result
                why = "; ".join(f"{reason} ({n})" for reason, n in counts["skip_reasons"].items()) or "no rows"
                problem = (f"{counts.get('source', job.path)}: nothing to evaluate: {counts['rows_read']} rows read, "
                           f"none usable ({why})")
                if name not in named and name not in sources.files and set(counts["skip_reasons"]) == {NO_IMAGE}:
                    not_run[section] = problem  # found by the default search, without its images: not asked for
                else:
                    failed[section] = problem
                continue
            sections[section] = result
    summary = summarise(sections)
    return {"sections": sections, "not_run": not_run, "failed": failed, "summary": summary,
            "published": published_of(sections, summary),
            "settings": {"batch_size": batch_size, "limit": limit, "data_root": sources.data_root,
                         "image_root": sources.image_root, "files": sources.files,
                         "synthetic": _world_settings(settings)}}


def _world_settings(settings: dict) -> dict:
    """The synthetic settings as JSON can hold them: the world by its image size and seed."""
    world = settings.get("world")
    shown = {key: value for key, value in settings.items() if key != "world"}
    if world is not None:
        shown.update(world_seed=world.seed, image_size=world.config.image_size)
    return shown


def summarise(sections: dict[str, dict]) -> dict:
    """Headline numbers: the mean negated-prompt gap over the datasets that have one (REFERENCE.md's Delta)."""
    gaps = [section["metrics"]["negated_prompt_gap"] for section in sections.values()
            if "negated_prompt_gap" in section["metrics"]]
    if not gaps:
        return {}
    return {"negated_prompt_gap_mean": metric(sum(gap["value"] for gap in gaps) / len(gaps), len(gaps),
                                              sum(gap["ties"] for gap in gaps))}


# ---------------------------------------------------------------------------------------------
# Markdown


def _number(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def _published_cells(section: str, metric: str) -> tuple[str, str]:
    """(the CLIP ViT-B/32 reference value, the other models' values) published for a metric, or "-"."""
    rows = published_for(section, metric)
    reference = "; ".join(_number(row.value) for row in rows if row.reference) or "-"
    others = "; ".join(f"{row.model} {_number(row.value)}" for row in rows if not row.reference) or "-"
    return reference, others


def markdown_table(result: dict, *, title: str = "Negation evaluation", model: str | None = None) -> str:
    """The metrics as one Markdown table (value, items, ties, and the published values beside them),
    then the sources of the published values, the rows not evaluated, and the benchmarks not run."""
    lines = [f"# {title}", ""]
    if model:
        lines += [f"Model: `{model}`", ""]
    lines += ["Ties count as wrong; `ties` is the number of items a tie decided (the authors' argmax would count "
              "them as right). Published values are the authors' (argmax rule).", "",
              "| benchmark | metric | value | n | ties | published CLIP ViT-B/32 | published, other models |",
              "|---|---|---:|---:|---:|---:|---|"]
    rows = _measured(result)
    for section, key, entry in rows:
        reference, others = _published_cells(section, key)
        lines.append(f"| {section} | {key} | {_number(entry['value'])} | {entry['n']} | {entry['ties']} "
                     f"| {reference} | {_escape(others)} |")
    sources = sorted({row.source for section, key, _ in rows for row in published_for(section, key)})
    if sources:
        lines += ["", "Published values from: " + "; ".join(_escape(source) for source in sources) + "."]
    lines += ["", "## Rows evaluated and skipped", "",
              "| benchmark | rows read | evaluated | skipped | why skipped | flagged | filtered by protocol "
              "| captions cut to the context |",
              "|---|---:|---:|---:|---|---:|---|---:|"]
    for section, body in result["sections"].items():
        counts = body["counts"]
        why = "; ".join(f"{reason} ({count})" for reason, count in counts["skip_reasons"].items()) or "-"
        filtered = "; ".join(f"{reason} ({count})" for reason, count in counts.get("filtered", {}).items()) or "-"
        evaluated = f"{counts['n_evaluated']}" + (f" (limit {counts['limited_to']})" if "limited_to" in counts else "")
        lines.append(f"| {section} | {counts['rows_read']} | {evaluated} | {counts['n_skipped']} | {_escape(why)} "
                     f"| {counts.get('n_flagged', 0)} | {_escape(filtered)} | {_cut_cell(counts.get('cut'))} |")
    if result.get("not_run") or result.get("failed"):
        lines += ["", "## Not run", ""]
        lines += [f"- {name}: {_escape(why)}" for name, why in result.get("not_run", {}).items()]
        lines += [f"- {name}: FAILED: {_escape(why)}" for name, why in result.get("failed", {}).items()]
    return "\n".join(lines) + "\n"


def _cut_cell(cut: dict | None) -> str:
    if not cut:
        return "-"
    if not cut["counted"]:
        return f"not counted ({cut['context_length']} tokens)"
    return f"{cut['captions_cut']} ({cut['context_length']} tokens)"


def section_notes(result: dict, n_reasons: int = 3) -> list[str]:
    """One line per benchmark that left rows out (missing images, malformed rows, captions identical after the
    context's cut ...) or whose captions the context cut: how many of the rows read were evaluated, the most
    frequent reasons (the JSON lists them all with examples), what --limit kept of the rest, and the cut captions."""
    lines = []
    for section, body in result["sections"].items():
        counts = body["counts"]
        cut = counts.get("cut") or {}
        parts = []
        if counts.get("n_skipped"):
            reasons = list(counts["skip_reasons"].items())
            shown = "; ".join(f"{reason}: {n}" for reason, n in reasons[:n_reasons])
            more = f"; and {len(reasons) - n_reasons} more reason(s)" if len(reasons) > n_reasons else ""
            parts.append(f"{counts['n_skipped']} left out ({shown}{more})")
        usable = counts["rows_read"] - counts.get("n_skipped", 0)
        if "limited_to" in counts and usable > counts["n_evaluated"]:
            per = f" per {counts['limited_per']}" if "limited_per" in counts else ""
            other = "the other " if counts.get("n_skipped") else ""
            parts.append(f"--limit {counts['limited_to']}{per} kept {counts['n_evaluated']} of {other}{usable}")
        if cut.get("captions_cut"):
            parts.append(f"{cut['captions_cut']} captions longer than the {cut.get('context_length')}-token context "
                         f"were cut ({cut.get('items_with_a_cut_caption', 0)} items)")
        if parts:
            lines.append(f"{section}: evaluated {counts['n_evaluated']} of {counts['rows_read']} rows read; "
                         + "; ".join(parts))
    return lines


def published_comparison(result: dict) -> list[str]:
    """One line per measured metric that has published values: measured beside published."""
    lines = []
    for section, key, entry in _measured(result):
        rows = published_for(section, key)
        if rows:
            published = "; ".join(f"{row.model} {_number(row.value)}" for row in rows)
            lines.append(f"{section} {key}: measured {_number(entry['value'])} (n {entry['n']}, "
                         f"ties {entry['ties']}) | published {published}")
    return lines


def _measured(result: dict) -> list[tuple[str, str, dict]]:
    """(section, metric key, entry) of every measured metric, the summary's last."""
    rows = [(section, key, entry) for section, body in result["sections"].items()
            for key, entry in body["metrics"].items()]
    return rows + [("summary", key, entry) for key, entry in result.get("summary", {}).items()]


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def flat_metrics(result: dict) -> dict[str, float]:
    """`section:metric` -> value, for scripts that compare runs."""
    return {f"{section}:{metric}": entry["value"] for section, body in result["sections"].items()
            for metric, entry in body["metrics"].items()}


__all__ = [
    "image_features", "text_features", "evaluate_negation_examples",
    "evaluate_mcq", "evaluate_retrieval", "evaluate_foils", "evaluate_regions", "evaluate_prompt_gap",
    "evaluate_image_folder", "evaluate_synthetic", "evaluate_all", "summarise", "markdown_table",
    "published_comparison", "section_notes", "flat_metrics", "class_prompts", "CaptionCut",
]
