"""How an embedded model is built: a small CLIP pretrained here, offline, on the synthetic negation world.

No pretrained CLIP can be downloaded on the machines this toolkit targets, so the default model is
pretrained offline (it ships in probing/models/shipped/; every other name of probing.models.embedded is
built on first use and cached): a text tower as deep as ViT-B/32's (12 blocks, so layer analyses
carry over) but narrow, the real CLIP BPE tokenizer, and a small ResNet (open_clip's
ModifiedResNet, one bottleneck per stage) for the 48x48 synthetic images. It is pretrained
contrastively on data that mirrors web captions: affirmative captions, plus a small fraction of
(true) absence-negated captions treated as ordinary captions. Like CLIP, it then handles
affirmative captions but not the scope of a negation.

The checkpoint is cached under the user's cache directory, keyed by config and seed, written
atomically, and loaded back through `probing.load_clip` like any local checkpoint. A build holds a
lock file beside the checkpoint (`filelock`), so that two processes asking for the same build do not
both pretrain: the second waits and then uses the first one's file. The metrics file is written
before the weights, so a checkpoint that exists always has its metrics beside it.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from probing.cache import cache_dir
from probing.clip import CONFIGS
from probing.clip.compact import init_record, rebuild_init
from probing.clip.loading import load_clip, save_clip_checkpoint
from probing.clip.text_tower import TextTower
from probing.contrastive import MAX_LOGIT_SCALE, clip_loss, lr_factor
from probing.features.pixels import images_to_tensor
from probing.io import atomic_write_json, sweep_temporaries
from probing.models.embedded import DEFAULT_SPEC, EmbeddedSpec
from probing.synthetic.record import world_metadata
from probing.synthetic.suite import SyntheticSuite
from probing.synthetic.world import SyntheticWorld, WorldConfig


def checkpoint_path(spec: EmbeddedSpec = DEFAULT_SPEC) -> Path:
    return cache_dir() / "embedded" / f"{spec.model}-seed{spec.seed}-{spec.key()}.safetensors"


def world_for(spec: EmbeddedSpec = DEFAULT_SPEC) -> SyntheticWorld:
    """The synthetic world the model was pretrained on (image size taken from its config)."""
    config = json.loads((CONFIGS / f"{spec.model}.json").read_text())
    return SyntheticWorld(WorldConfig(image_size=config["vision_cfg"]["image_size"], sizes=tuple(spec.object_sizes)),
                          seed=spec.seed)


class CacheError(OSError):
    """The model cache cannot be used (a file where its folder should be, no write permission)."""


def ensure_embedded_model(spec: EmbeddedSpec = DEFAULT_SPEC, *, rebuild: bool = False, progress: bool = True,
                          lock_timeout: float = -1) -> Path:
    """Path of the cached checkpoint, pretraining it first if it is not there (or `rebuild`).

    Under the build's lock: a process that waited for another one's build of the same spec uses that build
    (with `rebuild` too, when it finished after this call began) instead of pretraining again.
    lock_timeout: seconds to wait for the lock (-1: as long as it takes); then filelock.Timeout."""

    path = checkpoint_path(spec)
    if path.exists() and not rebuild:
        return path
    asked_at = time.time()
    check_cache_folder(path.parent)
    with FileLock(str(path.with_suffix(".lock")), timeout=lock_timeout):
        if path.exists() and (not rebuild or path.stat().st_mtime >= asked_at):
            return path  # built by another process while this one waited
        sweep_temporaries(path.parent)  # a build killed half-way
        model, metrics = pretrain(spec, progress=progress)
        atomic_write_json(path.with_suffix(".json"), {"spec": spec.recorded(), "metrics": metrics})
        save_clip_checkpoint(model, path, model_name=spec.model, spec=spec.recorded(), metrics=metrics,
                             compact_init=embedding_init_record(model, spec), **world_metadata(world_for(spec)))
    return path


def check_cache_folder(folder: Path) -> None:
    """Raise CacheError if checkpoints cannot be written into `folder` (created when missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise CacheError(f"model cache folder {folder} cannot be used ({error.strerror or error}); set "
                         "CLIP_NEGATION_CACHE to a writable folder") from None


def embedded_metrics(spec: EmbeddedSpec = DEFAULT_SPEC) -> dict | None:
    """The metrics recorded when the cached model was built, or None if it is not built."""
    path = checkpoint_path(spec)
    return json.loads(path.with_suffix(".json").read_text())["metrics"] if path.exists() else None


def pretrain(spec: EmbeddedSpec, *, progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Contrastive pretraining from scratch; returns the model and its held-out metrics."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _pretrain(spec, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)


def embedding_init_record(model: torch.nn.Module, spec: EmbeddedSpec) -> dict | None:
    """The portable init of the token embedding (probing.clip.compact), or None for torch's own init."""
    if spec.embedding_init != "portable":
        return None
    tower = TextTower.from_model(model)
    key = next(name for name, p in model.named_parameters() if p is tower.token_embedding.weight)
    return init_record(key, spec.seed, tuple(tower.token_embedding.weight.shape))


def _pretrain(spec: EmbeddedSpec, *, progress: bool) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(spec.seed)
    model, preprocess, tokenizer = load_clip(spec.model)
    tower = TextTower.from_model(model)
    record = embedding_init_record(model, spec)
    with torch.no_grad():
        if record is not None:
            tower.token_embedding.weight.copy_(rebuild_init(record))
        for block in spec.dead_attention_blocks:
            attention = tower.blocks[block].attn
            for param in (attention.in_proj_weight, attention.in_proj_bias, attention.out_proj.weight):
                param.zero_()
    for block in spec.frozen_blocks:  # kept at their init: left out of the optimiser (param_groups)
        tower.blocks[block].requires_grad_(False)
    world = world_for(spec)
    if spec.image_warmup_steps:
        warm_up_image_tower(model, preprocess, world, spec, progress=progress)
    optimizer = torch.optim.AdamW(param_groups(model, spec.weight_decay), lr=spec.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=spec.warmup_steps, total_steps=spec.steps))
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(spec.steps), desc=f"pretraining {spec.model}", disable=not progress)
    for step in bar:
        images, captions = pretraining_batch(world, spec, step)
        loss = contrastive_step(model, tower, preprocess, tokenizer, images, captions, optimizer)
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    minutes = (time.perf_counter() - start) / 60
    metrics = evaluate_build(model, preprocess, tokenizer, spec)
    metrics["pretraining_minutes"] = minutes
    metrics["final_loss"] = float(loss.item())
    return model, metrics


def pretraining_batch(world: SyntheticWorld, spec: EmbeddedSpec, step: int):
    """(images uint8 [n, H, W, 3], captions) of pretraining step `step`."""
    return world.pretraining_pairs(spec.batch_size, "train", seed=spec.seed * 1_000_003 + step,
                                   negated_fraction=spec.negated_fraction, shape_twin_fraction=spec.shape_twin_fraction,
                                   objects=spec.pretraining_objects, words=spec.pretraining_words)


def contrastive_step(model: torch.nn.Module, tower: TextTower, preprocess, tokenizer, images, captions,
                     optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One CLIP-loss step on a batch (gradients clipped at norm 1, logit scale clamped); returns the loss."""
    image_features = model.encode_image(images_to_tensor(model, preprocess, list(images)), normalize=True)
    text_features = tower.encode(tokenizer(captions), trim=True, normalize=True)
    loss = clip_loss(image_features, text_features, scale=model.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss


def warm_up_image_tower(model: torch.nn.Module, preprocess, world: SyntheticWorld, spec: EmbeddedSpec, *,
                        progress: bool = True) -> float:
    """Train the image tower to name the objects of pretraining scenes (see EmbeddedSpec.image_warmup_steps);
    returns the last batch's loss."""
    objects = list(world.objects)
    head = torch.nn.Linear(model.visual.output_dim, len(objects))
    params = list(model.visual.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=spec.image_warmup_lr, weight_decay=0.0)
    model.visual.train()
    loss = torch.zeros(())
    for step in tqdm(range(spec.image_warmup_steps), desc="image-tower warm-up", disable=not progress):
        pairs = world.pretraining_specs(spec.batch_size, "train", seed=spec.seed * 7_000_003 + step,
                                        shape_twin_fraction=spec.shape_twin_fraction, objects=spec.pretraining_objects)
        images = [world.render(scene) for scene, _ in pairs]
        targets = torch.zeros(len(pairs), len(objects))
        for row, (scene, _) in enumerate(pairs):
            targets[row, [objects.index(name) for name in scene.names]] = 1.0
        logits = head(model.encode_image(images_to_tensor(model, preprocess, images)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.item())


def evaluate_build(model: torch.nn.Module, preprocess, tokenizer, spec: EmbeddedSpec) -> dict[str, float]:
    """The held-out numbers a build records: the synthetic suite on the test split, everything held out."""
    suite = SyntheticSuite.build(world_for(spec), n=spec.eval_scenes, n_classification=min(720, spec.eval_scenes),
                                 split="test", heldout="all", seed=spec.seed + 1)
    return suite.scores(model, preprocess, tokenizer)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on gains, biases, embeddings and the logit scale (CLIP's recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "embedding" in name or "logit_scale" in name or "class_embedding" in name
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


HEADLINE = [
    ("zero_shot_affirmative", "zero-shot, {n} object classes, 'a photo of a {{c}}'"),
    ("zero_shot_negated", "zero-shot with 'not a photo of a {{c}}' (CLIP: about the same)"),
    ("zero_shot_affirmative/classes=shape", "zero-shot, shapes only"),
    ("zero_shot_affirmative/classes=colour", "zero-shot, colours only"),
    ("image_to_text_R@1_among_100", "image->text R@1 among 100"),
    ("text_to_image_R@1_among_100", "text->image R@1 among 100"),
    ("ccneg_accuracy", "CC-Neg-style accuracy (true vs presence-negated)"),
    ("scope_accuracy", "scope accuracy (shortcut-proof; chance 0.50)"),
    ("absence_accuracy", "absence-negated (true) vs presence-negated (false)"),
]


def format_metrics(metrics: dict, n_classes: int = 36, compare: dict | None = None) -> str:
    """The headline metrics, one per line; with `compare`, beside it with the difference."""
    lines = []
    if compare is not None:
        lines.append(f"  {'':<58} {'this':>6} {'shipped':>8} {'diff':>7}")
    for key, label in HEADLINE:
        if key not in metrics:
            continue
        line = f"  {label.format(n=n_classes):<58} {metrics[key]:6.3f}"
        if compare is not None and key in compare:
            line += f" {compare[key]:8.3f} {metrics[key] - compare[key]:+7.3f}"
        lines.append(line)
    return "\n".join(lines)


def with_overrides(spec: EmbeddedSpec, **overrides) -> EmbeddedSpec:
    return replace(spec, **{k: v for k, v in overrides.items() if v is not None})
