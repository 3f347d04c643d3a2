"""The fine-tuning loop: train the text-tower parts a layer plan names with a negation loss.

One optimizer step = `grad_accum` micro-batches of `batch_size` examples each. The contrastive
negatives of a loss come from its micro-batch, so `batch_size` is the contrastive batch; under
torchrun it is the GLOBAL micro-batch, split over the ranks (see finetune.distributed).

A second data source (optional, `TrainConfig.second_loss` and `train(..., second_examples=)`): each
step also draws a batch from other examples and adds `second_weight` x `second_loss` on it. That is
how the anchors pair data: Omni-NegCLIP computes its presence loss on a CC-Neg batch and its absence
loss on a separate COCO batch in the same step; NegBench adds its MCQ loss on an MCQ batch to the
contrastive loss on a caption batch. The second source has its own data order (its own epochs);
the run's length in epochs counts the first source's.

Precision and optimiser follow the recipes of the anchors (finetune/recipes): bf16 autocast (this
toolkit's default), fp16 autocast with a gradient scaler (the authors' "amp": a step whose scaled
gradient overflowed is skipped and the scale lowered, as torch.amp.GradScaler does), or float32;
weight decay on every parameter (plain torch AdamW, as CoN-CLIP, Omni-NegCLIP, NegationCLIP and
TripletCLIP do) or on weight matrices only (open_clip's rule: no decay on gains, biases, logit
scale); cosine or constant learning rate after the warm-up.

What makes it fast: the image tower is frozen, so image features are computed once and cached (on
disk too, shared with resumes, other runs and evaluations: probing.features.cache);
captions are tokenised once, and each text batch runs only up to its longest caption
(TextTower.encode(trim=True), exact because of the causal mask). The contrastive batch itself is
fixed by the loss, but its captions can be encoded in length-sorted chunks of at most
`text_token_budget` tokens (less padding when caption lengths vary); the loss then sees the same
features up to float rounding, not bit for bit, so this is off by default.

What makes it reproducible: the data order of epoch e is a permutation seeded by (seed, e), so
the batch of any step is a function of the step; checkpoints carry optimizer, scheduler and RNG
state; an interrupted run resumed from its checkpoint ends with the same weights as an
uninterrupted one (bit-for-bit on CPU), SIGKILL at any moment included (tests/test_kill_resume.py).
Optimizer state is written only for resumable runs (`resumable`, the default here; the command asks
for it with --resumable); otherwise only the final weights are.

What the files hold: with a base checkpoint (`base`: the file the model was loaded from), every
model file holds only the tensors training changes (the planned parameters and the logit scale,
which the temperature cap may move), with the base recorded by path and SHA-256; load_clip rebuilds
the whole model from the base (probing.clip.loading, "Delta checkpoints"). A model without a base
file (random weights) is saved whole.

What keeps a bad run from passing for a good one: the settings are checked before anything runs
(`check_config`: finite numbers, positive where they must be); captions longer than the text tower's
context are counted per data file, and examples whose compared captions the cut makes identical are
refused (`strict_data`: an error; else skipped and counted), both reported in the log, run.json and
provenance.json (finetune.data.screen_captions); the loss and gradient norm must be
finite before a step, and after it every trained weight must be finite and at most `MAX_WEIGHT` in
size: otherwise the run stops (NonFiniteLossError) before that step is saved, and the last
checkpoint, whose weights passed the same check, stays the one to resume from.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from finetune.checkpoint import (
    Checkpoint,
    ResumeError,
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    sweep,
)
from finetune.data import TrainingData, prepare_data, screen_captions
from finetune.distributed import DistContext, rank_device, setup_distributed
from finetune.freezing import apply_plan, planned_parts
from finetune.losses import LossSpec, loss_keywords, loss_spec
from finetune.metrics_log import MetricsLog
from finetune.options import LossOptionError, check_loss_options
from finetune.plan import LayerPlan
from finetune.vocabulary import MAX_LEARNING_RATE, MAX_SEED
from probing.clip.loading import base_record, resolve_device, save_clip_checkpoint
from probing.clip.text_tower import TextTower
from probing.contrastive import MAX_LOGIT_SCALE, lr_factor
from probing.features.encode import encode_tokens
from probing.io import atomic_write_json

# A trained weight larger than this has exploded: no CLIP weight comes near it (the largest are LayerNorm
# gains of a few units; the logit scale is clamped to 4.6), and `--lr 1e30` puts weights at 1e28 in one step.
MAX_WEIGHT = 1e3
# settings that change the trajectory: a resumed run must use the same ones
_RESUME_MUST_MATCH = ("loss", "loss_kwargs", "loss_weight", "lr", "weight_decay", "decay", "schedule", "warmup_steps",
                      "batch_size", "grad_accum", "clip_grad_norm", "seed", "betas", "eps", "precision", "second_loss",
                      "second_loss_kwargs", "second_weight", "second_batch_size", "total_steps", "plan",
                      "text_token_budget")
# settings added after checkpoints were first written: a checkpoint without one ran with its default
_ADDED_SETTINGS = (
    "loss_weight",
    "decay",
    "schedule",
    "precision",
    "second_loss",
    "second_loss_kwargs",
    "second_weight",
    "second_batch_size",
    "text_token_budget",
)
PRECISIONS = ("bf16", "fp16", "fp32")
DECAY_RULES = ("matrices", "all")
SCHEDULES = ("cosine", "constant")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss, its gradient or the weights after a step stopped being finite
    (or the weights exploded past MAX_WEIGHT)."""


@dataclass
class TrainConfig:
    loss: str = "conclip"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"terms": [1]}, {"lam": 0.5}
    loss_weight: float = 1.0  # weight of `loss` in the step's total (NegBench: 0.99 beside its MCQ loss)
    lr: float = 1e-5
    weight_decay: float = 0.2
    decay: str = "matrices"  # which parameters decay: "matrices" (not gains, biases, logit scale) or "all"
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    schedule: str = "cosine"  # after the warm-up: "cosine" decay to 0, or "constant"
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 128  # contrastive (global) micro-batch
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0  # None or 0: no clipping
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"  # on CUDA: "bf16" autocast, "fp16" autocast + gradient scaler, "fp32"; CPU: float32
    # a second data source (train(..., second_examples=)): each step adds second_weight x second_loss
    # on a batch of second_batch_size of its examples (default: batch_size)
    second_loss: str | None = None
    second_loss_kwargs: dict[str, Any] = field(default_factory=dict)
    second_weight: float = 1.0
    second_batch_size: int | None = None
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 1
    out_dir: str = "runs/finetune"
    resume: bool = False
    stop_at: int | None = None  # stop after this step as if interrupted (time-limited jobs, tests)
    # checkpoints with optimizer state every ckpt_every steps, so that an interrupted run can resume
    resumable: bool = True
    image_batch_size: int = 256
    # None: each micro-batch's captions in one trimmed pass. A number: in length-sorted chunks of at
    # most this many tokens (captions x trimmed length); features equal to float rounding (see above)
    text_token_budget: int | None = None
    image_workers: int = 0  # DataLoader processes that decode images for the image features
    # examples whose compared captions are the same tokens after the cut to the context (finetune.data.
    # screen_captions): True, a DataError naming the first; False, skipped and counted in run.json
    strict_data: bool = True
    feature_cache: bool = True  # read and write the disk cache of image features (probing.features.cache)
    # the checkpoint the model was loaded from: {"path": file, "reference": "embedded:default" or ""}; model
    # files then hold only the trained tensors. None: the model has no base file and is saved whole
    base: dict[str, str] | None = None
    model_name: str = "unknown"  # stored in checkpoint metadata, so load_clip can rebuild the model
    # more checkpoint metadata, e.g. the synthetic world the data came from (probing.synthetic.record)
    checkpoint_metadata: dict[str, str] = field(default_factory=dict)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainResult:
    step: int
    loss: float | None
    out_dir: Path
    checkpoint: Checkpoint | None
    model_path: Path | None  # the final weights (None when stopped early with stop_at)
    history: list[dict[str, float]]


# --- schedule, optimizer, data order ---------------------------------------------------------------

def build_optimizer(model: nn.Module, plan: LayerPlan, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one group per planned part (per-block lr weights). decay "matrices": no decay on
    gains, biases and the logit scale (open_clip's rule); "all": every parameter decays."""
    groups = []
    for part, params in planned_parts(model, plan).items():
        weight = plan.lr_weight(int(part.split(".")[1])) if part.startswith("blocks.") else 1.0
        decay = [p for p in params if p.ndim >= 2 or config.decay == "all"]
        no_decay = [p for p in params if p.ndim < 2 and config.decay != "all"]  # LayerNorm gains, biases, logit scale
        for params_, weight_decay, suffix in ((decay, config.weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if params_:
                groups.append({"params": params_, "lr": config.lr * weight, "weight_decay": weight_decay,
                               "name": part + suffix})
    if not groups:
        raise ValueError("the layer plan trains nothing: list some blocks or extras")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


class DataOrder:
    """Global micro-batch k -> example indices; epoch e is a permutation seeded by (seed, e, stream)
    (stream 1: the second data source, so that its order is not the first source's)."""

    def __init__(self, n_examples: int, batch_size: int, seed: int, stream: int = 0):
        self.n, self.batch_size, self.seed, self.stream = n_examples, batch_size, seed, stream
        self.batches_per_epoch = n_examples // batch_size  # drop the ragged last batch
        self._epoch, self._perm = -1, None

    def batch(self, k: int) -> tuple[int, torch.Tensor]:
        epoch, position = divmod(k, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + self.stream * 7_919_000_003)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return epoch, self._perm[position * self.batch_size:(position + 1) * self.batch_size]


def total_steps_of(config: TrainConfig, n_examples: int) -> int:
    if (config.steps is None) == (config.epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if config.steps is not None:
        return int(config.steps)
    return max(1, math.ceil(config.epochs * (n_examples // config.batch_size) / config.grad_accum))


def check_config(config: TrainConfig) -> None:
    """Refuse settings that cannot train (ValueError naming the setting): numbers must be finite, positive
    where they must be (a negative gradient-norm limit would run gradient ascent), seeds in numpy's range."""
    for value, allowed, name in ((config.precision, PRECISIONS, "precision"), (config.decay, DECAY_RULES, "decay"),
                                 (config.schedule, SCHEDULES, "schedule")):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    numbers = {"lr": (config.lr, 0, MAX_LEARNING_RATE, False), "eps": (config.eps, 0, 1, False),
               "weight_decay": (config.weight_decay, 0, math.inf, True),
               "loss_weight": (config.loss_weight, 0, math.inf, False),
               "second_weight": (config.second_weight, 0, math.inf, False),
               "clip_grad_norm": (config.clip_grad_norm or 0, 0, math.inf, True),
               "epochs": (config.epochs if config.epochs is not None else 1, 0, math.inf, False)}
    for name, (value, low, high, low_allowed) in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if value < low or (value == low and not low_allowed) or value > high:
            bound = f">= {low}" if low_allowed else f"> {low}"
            raise ValueError(f"{name} must be {bound}" + (f" and <= {high:g}" if high < math.inf else "")
                             + f", got {value!r}")
    betas = tuple(config.betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {config.betas!r}")
    integers = {"grad_accum": (config.grad_accum, 1), "warmup_steps": (config.warmup_steps, 0),
                "batch_size": (config.batch_size, 2), "log_every": (config.log_every, 1),
                "ckpt_every": (config.ckpt_every, 1), "keep_checkpoints": (config.keep_checkpoints, 1),
                "image_batch_size": (config.image_batch_size, 1), "seed": (config.seed, 0),
                "image_workers": (config.image_workers, 0)}
    integers.update({name: (value, 1) for name, value in (("steps", config.steps), ("stop_at", config.stop_at),
                                                         ("second_batch_size", config.second_batch_size))
                     if value is not None})
    for name, (value, low) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if config.seed > MAX_SEED:
        raise ValueError(f"seed must be at most {MAX_SEED}, got {config.seed}")
    if config.stop_at is not None and not config.resumable:
        raise ValueError("stop_at stops a run to be resumed later: it needs resumable checkpoints")
    if config.base is not None and not (isinstance(config.base, dict) and config.base.get("path")):
        raise ValueError(f"base must be {{'path': checkpoint file, 'reference': ...}}, got {config.base!r}")
    for loss, options, what in ((config.loss, config.loss_kwargs, "loss_kwargs"),
                                (config.second_loss, config.second_loss_kwargs, "second_loss_kwargs")):
        if loss is None:
            continue
        spec = loss_spec(loss)  # an unknown loss is a ValueError naming the known ones
        try:
            check_loss_options(loss, options, loss_keywords(spec))
        except LossOptionError as error:
            raise ValueError(f"{what}: {error}") from None


def _check_sizes(config: TrainConfig, n_examples: int, n_second: int | None, dist: DistContext,
                 skipped: dict[str, int] | None = None) -> None:
    skipped = skipped or {}
    sources = [("", n_examples, config.batch_size)]
    if (config.second_loss is None) != (n_second is None):
        raise ValueError("a second loss needs second examples and second examples need a second loss")
    if config.second_loss is not None:
        sources.append(("second ", n_second, config.second_batch_size or config.batch_size))
    for what, n, batch_size in sources:
        if batch_size < 2:
            raise ValueError(f"{what.replace(' ', '_')}batch_size must be at least 2: contrastive losses need "
                             "negatives")
        if n < batch_size:
            left_out = skipped.get("second" if what else "first", 0)
            why = (f" ({left_out} examples whose compared captions are the same tokens after the cut were skipped)"
                   if left_out else "")
            raise ValueError(f"{n} {what}examples are fewer than one batch of {batch_size}{why}")
        if batch_size % dist.world_size:
            raise ValueError(f"{what.replace(' ', '_')}batch_size {batch_size} must divide by the number of "
                             f"processes {dist.world_size}")


def trained_weights_problem(params: Sequence[torch.Tensor], names: Sequence[str] | None = None) -> str | None:
    """Why the trained weights are no longer usable (a NaN or an infinity, or a weight past MAX_WEIGHT), or None.
    One reduction and one synchronisation for all of them."""
    if not params:
        return None
    largest = torch.stack([p.detach().abs().max().float() if p.numel() else p.new_zeros((), dtype=torch.float32)
                           for p in params])  # NaN propagates through max
    worst = float(largest.max()) if bool(torch.isfinite(largest).all()) else math.nan
    if math.isfinite(worst) and worst <= MAX_WEIGHT:
        return None
    bad = [i for i, value in enumerate(largest.tolist()) if not math.isfinite(value) or value > MAX_WEIGHT]
    named = [names[i] if names else f"parameter {i}" for i in bad]
    if not math.isfinite(worst):
        return f"{len(bad)} of {len(params)} trained tensors hold non-finite weights (e.g. {named[0]})"
    return (f"the weights exploded: {named[0]} reaches {worst:.3g}, beyond {MAX_WEIGHT:g} "
            f"({len(bad)} of {len(params)} trained tensors)")


# --- the loss of one batch -----------------------------------------------------------------------

def batch_loss(model: nn.Module, data: TrainingData, spec: LossSpec, indices: torch.Tensor, *,
               device: torch.device, dist: DistContext | None = None, autocast: torch.dtype | None = None,
               loss_kwargs: dict[str, Any] | None = None, text_token_budget: int | None = None) -> torch.Tensor:
    """The loss of the global batch `indices`: this rank's captions encoded (trimmed; see `encode_tokens`),
    gathered over ranks, against the cached image features. autocast: the CUDA autocast dtype, or None."""
    dist = dist or DistContext()
    local = dist.shard(indices)
    chosen = [data.tokens[name][local] for name in spec.texts]  # [b, context] or, for MCQ options, [b, K, context]
    tokens = torch.cat([part.reshape(-1, part.shape[-1]) for part in chosen]).to(device)
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        text = encode_tokens(TextTower.from_model(model), tokens, text_token_budget)
    text = F.normalize(text.float(), dim=-1)
    if not torch.isfinite(text).all():
        raise NonFiniteLossError("text features are not finite")
    parts = text.split([part[..., 0].numel() for part in chosen])
    features = {name: dist.gather_with_grad(feature.view(*part.shape[:-1], -1))
                for name, part, feature in zip(spec.texts, chosen, parts)}
    device_indices = indices.to(device)
    features["image"] = data.image[device_indices]
    if data.distractor is not None:
        features["distractor"] = data.distractor[device_indices]
    if data.correct is not None:
        features["correct"] = data.correct[device_indices]
    return spec.call(features, model.logit_scale.exp(), **(loss_kwargs or {}))


def batch_losses(model: nn.Module, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any], loss: str, *,
                 n_batches: int, batch_size: int, seed: int = 0, loss_kwargs: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu", strict: bool = True) -> list[Callable[[nn.Module], torch.Tensor]]:
    """One callable per batch, `fn(model) -> loss`, computing `loss` exactly as training does
    (cached image features, trimmed captions, the examples whose compared captions are the same tokens after the
    cut refused as training refuses them: strict, a DataError naming file and row; else left out): what
    probing.measure.gradnorms measures gradients with."""
    device = resolve_device(device)
    spec = loss_spec(loss)
    examples, _ = screen_captions(examples, tokenizer, spec, strict=strict)
    data = prepare_data(model, tokenizer, preprocess, examples, spec, device=device, dist=DistContext())
    order = DataOrder(len(data), batch_size, seed)
    if order.batches_per_epoch < 1:
        raise ValueError(f"{len(examples)} examples are fewer than one batch of {batch_size}")

    def make(k: int) -> Callable[[nn.Module], torch.Tensor]:
        indices = order.batch(k)[1]
        return lambda model: batch_loss(model, data, spec, indices, device=device, loss_kwargs=loss_kwargs)

    return [make(k) for k in range(n_batches)]


# --- the loop ----------------------------------------------------------------------------------------

@dataclass
class Source:
    """One data source of a run: its loss, its cached data and its data order."""

    spec: LossSpec
    data: TrainingData
    order: DataOrder
    weight: float
    loss_kwargs: dict[str, Any]


class Trainer:
    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any],
                 plan: LayerPlan, config: TrainConfig, second_examples: Sequence[Any] | None = None,
                 provenance: dict | None = None):
        self.config, self.plan, self.model, self.provenance = config, plan, model, provenance
        self.device = rank_device(resolve_device(config.device))
        self.dist = setup_distributed(self.device)
        self.spec: LossSpec = loss_spec(config.loss)
        check_config(config)
        # captions cut to the context: counted per data file; pairs the cut made identical refused (finetune.data)
        examples, screen = screen_captions(examples, tokenizer, self.spec, strict=config.strict_data)
        self.caption_screens = {"first": screen}
        if second_examples is not None and config.second_loss is not None:
            second_examples, screen = screen_captions(second_examples, tokenizer, loss_spec(config.second_loss),
                                                      strict=config.strict_data)
            self.caption_screens["second"] = screen
        if self.dist.is_main:
            for screen in self.caption_screens.values():
                for line in screen.lines():
                    print(line, flush=True)
        if provenance is not None:
            self.provenance = {**provenance, "captions": self.caption_record()}
        _check_sizes(config, len(examples), None if second_examples is None else len(second_examples), self.dist,
                     skipped={key: screen.skipped for key, screen in self.caption_screens.items()})
        on_cuda = self.device.type == "cuda"
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision) if on_cuda else None
        # fp16 needs loss scaling (the authors' "amp"); a disabled scaler is a no-op
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        self.out_dir = Path(config.out_dir)
        self.total_steps = total_steps_of(config, len(examples))
        self._refuse_to_overwrite()  # before the slow part (caching image features)

        torch.manual_seed(config.seed)
        model.to(self.device)
        self.dist.broadcast_from_main(model)
        self.base = base_record(model, config.base["path"], config.base.get("reference")) if config.base else None
        self.summary = apply_plan(model, plan, verbose=self.dist.is_main)
        self.sources = [self._source(tokenizer, preprocess, examples, self.spec, config.batch_size, config.loss_weight,
                                     config.loss_kwargs, stream=0)]
        if second_examples is not None:
            self.sources.append(self._source(tokenizer, preprocess, second_examples, loss_spec(config.second_loss),
                                             config.second_batch_size or config.batch_size, config.second_weight,
                                             config.second_loss_kwargs, stream=1))
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_names = [name for name, p in model.named_parameters() if p.requires_grad]
        # what the model files of a run with a base hold: the trained tensors, and the logit scale, which the
        # temperature cap clamps in place whether it trains or not
        self.changed = sorted(set(self.param_names) | ({"logit_scale"} if hasattr(model, "logit_scale") else set()))
        self.optimizer = build_optimizer(model, plan, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup_steps=config.warmup_steps, total_steps=self.total_steps,
                                                schedule=config.schedule))
        self.step = 0
        self.last_checkpoint: Checkpoint | None = None
        self.history: list[dict[str, float]] = []

    def _source(self, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any], spec: LossSpec,
                batch_size: int, weight: float, loss_kwargs: dict[str, Any], *, stream: int) -> Source:
        # image features are cached once; under fp16 they are computed in float32 (the image tower is
        # frozen, so precision there changes only rounding) and under bf16 in bfloat16 as before
        data = prepare_data(self.model, tokenizer, preprocess, examples, spec, device=self.device, dist=self.dist,
                            image_batch_size=self.config.image_batch_size, autocast=self.autocast == torch.bfloat16,
                            feature_cache=self.config.feature_cache, num_workers=self.config.image_workers,
                            progress=self.config.progress)
        return Source(spec, data, DataOrder(len(data), batch_size, self.config.seed, stream), weight, dict(loss_kwargs))

    def caption_record(self) -> dict[str, Any]:
        """Per data source and file: captions cut to the context and examples skipped for it (run.json)."""
        return {key: screen.record() for key, screen in self.caption_screens.items()}

    # -- state --
    def run_settings(self) -> dict[str, Any]:
        settings = {key: value for key, value in asdict(self.config).items() if key in _RESUME_MUST_MATCH}
        settings["betas"] = list(settings["betas"])
        settings.update(total_steps=self.total_steps, plan=self.plan.to_dict(), world_size=self.dist.world_size)
        return json.loads(json.dumps(settings))  # plain JSON types, comparable after a round trip

    def save(self) -> Checkpoint:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "settings": json.dumps(self.run_settings())}
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(self.out_dir, self.step, self.model, state,
                                                   model_name=self.config.model_name,
                                                   keep_last=self.config.keep_checkpoints,
                                                   metadata=self.config.checkpoint_metadata, base=self.base,
                                                   trained=self.changed if self.base else None)
        else:  # the other ranks only need to know where it is
            self.last_checkpoint = Checkpoint(self.step, checkpoint_root(self.out_dir) / f"step_{self.step:07d}")
        self.dist.barrier()
        return self.last_checkpoint

    def _refuse_to_overwrite(self) -> None:
        checkpoint = latest_checkpoint(self.out_dir)
        if checkpoint is not None and not self.config.resume:
            raise ResumeError(f"{self.out_dir} already holds a checkpoint (step {checkpoint.step}); "
                              "pass --resume to continue it, or choose another output folder")

    def resume_or_start(self) -> None:
        self._refuse_to_overwrite()
        if self.dist.is_main:
            sweep(self.out_dir)  # temporary files of a writer that was killed
        checkpoint = latest_checkpoint(self.out_dir)
        if checkpoint is None:
            if self.config.resume and self.dist.is_main:
                print(f"no checkpoint in {self.out_dir}: starting from step 0", flush=True)
            return
        state = load_checkpoint(checkpoint, self.model, device=self.device)
        try:
            saved = json.loads(state["settings"])
        except (TypeError, json.JSONDecodeError) as error:
            raise ResumeError(f"training state {checkpoint.state_path} is damaged: its settings are not JSON "
                              f"({error})") from None
        if not isinstance(saved, dict):
            raise ResumeError(f"training state {checkpoint.state_path} is damaged: its settings are not an object")
        now = self.run_settings()
        defaults = json.loads(json.dumps({key: getattr(TrainConfig(), key) for key in _ADDED_SETTINGS}))
        changed = sorted(key for key in set(saved) | set(now)
                         if key != "world_size" and saved.get(key, defaults.get(key)) != now.get(key))
        if changed:
            raise ResumeError(f"cannot resume {checkpoint.folder}: settings differ from the checkpoint's "
                              f"({', '.join(changed)}); use the original settings or a new output folder")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.last_checkpoint = int(state["step"]), checkpoint
        if self.dist.is_main:
            print(f"resumed from {checkpoint.folder} (step {self.step})", flush=True)

    # -- one step --
    def micro_batch_loss(self, k: int) -> tuple[int, list[torch.Tensor]]:
        """The epoch of the first source and each source's (unweighted) loss on micro-batch k."""
        losses, epoch = [], 0
        for index, source in enumerate(self.sources):
            source_epoch, indices = source.order.batch(k)
            epoch = source_epoch if index == 0 else epoch
            losses.append(batch_loss(self.model, source.data, source.spec, indices, device=self.device, dist=self.dist,
                                     autocast=self.autocast, loss_kwargs=source.loss_kwargs,
                                     text_token_budget=self.config.text_token_budget))
        return epoch, losses

    def train_step(self) -> dict[str, float]:
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(len(self.sources), device=self.device)
        for micro in range(config.grad_accum):
            epoch, losses = self.micro_batch_loss(self.step * config.grad_accum + micro)
            loss = sum(source.weight * part for source, part in zip(self.sources, losses))
            self.scaler.scale(loss / config.grad_accum).backward()
            totals += torch.stack([part.detach() for part in losses]) / config.grad_accum
        parts = totals.tolist()
        loss_value = sum(source.weight * part for source, part in zip(self.sources, parts))
        self.dist.average_gradients(self.params)
        self.scaler.unscale_(self.optimizer)
        max_norm = config.clip_grad_norm if config.clip_grad_norm else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
        # under fp16 an overflowing gradient is the scaler's business: it skips the step and lowers the scale
        if not math.isfinite(loss_value) or (not math.isfinite(grad_norm) and not self.scaler.is_enabled()):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise NonFiniteLossError(f"{what} is {loss_value if what == 'loss' else grad_norm}")
        lr = config.lr * lr_factor(self.step, warmup_steps=config.warmup_steps, total_steps=self.total_steps,
                                   schedule=config.schedule)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        problem = trained_weights_problem(self.params, self.param_names)
        if problem:  # this step broke the weights: stop before it is counted or saved
            raise NonFiniteLossError(f"after the step, {problem}")
        with warnings.catch_warnings():  # a step the scaler skipped still advances the schedule, as the authors' does
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        with torch.no_grad():  # CLIP's temperature cap: t = exp(logit_scale) <= 100
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.step += 1
        metrics = {"step": self.step, "epoch": epoch, "loss": loss_value, "lr": lr,
                   "logit_scale": self.model.logit_scale.exp().item(), "grad_norm": grad_norm}
        if len(parts) > 1:
            metrics["loss_second"] = parts[1]
        return metrics

    # -- the run --
    def fit(self) -> TrainResult:
        config = self.config
        self.resume_or_start()
        stop = min(self.total_steps, config.stop_at) if config.stop_at else self.total_steps
        log = (
            MetricsLog(self.out_dir, start_step=self.step, tensorboard=config.tensorboard)
            if self.dist.is_main
            else None
        )
        if self.dist.is_main:
            atomic_write_json(self.out_dir / "run.json", {"config": asdict(config), "plan": self.plan.to_dict(),
                                                         "total_steps": self.total_steps,
                                                         "world_size": self.dist.world_size,
                                                         "captions": self.caption_record()})
            if self.provenance is not None:
                atomic_write_json(self.out_dir / "provenance.json", self.provenance)
        progress = _progress_bar(self.total_steps, self.step, enabled=config.progress and self.dist.is_main)
        samples_per_step = config.batch_size * config.grad_accum
        started = window_start = time.perf_counter()
        window_steps, metrics = 0, {}
        try:
            while self.step < stop:
                try:
                    metrics = self.train_step()
                except NonFiniteLossError as error:
                    raise NonFiniteLossError(self._nan_message(error)) from None
                window_steps += 1
                now = time.perf_counter()
                metrics["samples_per_s"] = window_steps * samples_per_step / max(now - window_start, 1e-9)
                metrics["elapsed_s"] = now - started
                progress.update(1)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}", samples_s=f"{metrics['samples_per_s']:.1f}")
                if self.step % config.log_every == 0 or self.step == stop:
                    self.history.append(metrics)
                    if log is not None:
                        log.log(metrics)
                    window_start, window_steps = now, 0
                if config.resumable and (self.step % config.ckpt_every == 0 or self.step == stop):
                    self.save()
        finally:
            progress.close()
            if log is not None:
                log.close()
        model_path = self._save_final() if self.step == self.total_steps else None
        return TrainResult(self.step, metrics.get("loss"), self.out_dir, self.last_checkpoint, model_path, self.history)

    def _save_final(self) -> Path:
        path = self.out_dir / "model.safetensors"
        if self.dist.is_main:
            save_clip_checkpoint(self.model, path, model_name=self.config.model_name, loss=self.config.loss,
                                 plan=self.plan.to_dict(), steps=self.step, base=self.base,
                                 trained=self.changed if self.base else None, **self.config.checkpoint_metadata)
        self.dist.barrier()
        return path

    def _nan_message(self, error: Exception) -> str:
        kept = (f"the last good checkpoint is {self.last_checkpoint.folder} (step {self.last_checkpoint.step})"
                if self.last_checkpoint else "no checkpoint had been written yet")
        return (f"training stopped at step {self.step + 1}: {error}. Nothing was saved for this step; {kept}. "
                "Try a lower learning rate, or check the data.")


def _progress_bar(total: int, initial: int, *, enabled: bool):

    return tqdm(total=total, initial=initial, disable=not enabled, desc="fine-tuning", unit="step", dynamic_ncols=True)


def train(model: nn.Module, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any],
          plan: LayerPlan, config: TrainConfig, second_examples: Sequence[Any] | None = None, *,
          provenance: dict | None = None) -> TrainResult:
    """Fine-tune `model` in place on `examples` with the parts `plan` names; see TrainConfig.
    second_examples: the second data source, trained with `config.second_loss` (module docstring).
    provenance: written to <out_dir>/provenance.json beside run.json, once every check has passed."""
    trainer = Trainer(model, tokenizer, preprocess, examples, plan, config, second_examples, provenance)
    try:
        return trainer.fit()
    finally:
        trainer.dist.close()
