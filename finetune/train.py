"""The fine-tuning loop: train the text-tower parts a layer plan names with a negation loss.

One optimizer step = `grad_accum` micro-batches of `batch_size` examples each. The contrastive
negatives of a loss come from its micro-batch, so `batch_size` is the contrastive batch; under
torchrun it is the GLOBAL micro-batch, split over the ranks (see finetune.distributed).

What makes it fast: the image tower is frozen, so image features are computed once and cached;
captions are tokenised once, and each text batch runs only up to its longest caption
(TextTower.encode(trim=True), exact because of the causal mask). The contrastive batch itself is
fixed by the loss, but its captions can be encoded in length-sorted chunks of at most
`text_token_budget` tokens (less padding when caption lengths vary); the loss then sees the same
features up to float rounding, not bit for bit, so this is off by default.

What makes it reproducible: the data order of epoch e is a permutation seeded by (seed, e), so
the batch of any step is a function of the step; checkpoints carry optimizer, scheduler and RNG
state; an interrupted run resumed from its checkpoint ends with the same weights as an
uninterrupted one (bit-for-bit on CPU).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from finetune.checkpoint import Checkpoint, checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint
from finetune.data import TrainingData, prepare_data
from finetune.distributed import DistContext, rank_device, setup_distributed
from finetune.freezing import apply_plan, planned_parts
from finetune.losses import LossSpec, loss_spec
from finetune.metrics_log import MetricsLog
from finetune.plan import LayerPlan
from probing.io import atomic_write_json
from probing.measure.batching import token_batches
from probing.models.loading import resolve_device, save_clip_checkpoint
from probing.models.text_tower import TextTower

MAX_LOGIT_SCALE = math.log(100.0)  # t = exp(logit_scale) is clamped to at most 100
# settings that change the trajectory: a resumed run must use the same ones
_RESUME_MUST_MATCH = ("loss", "loss_kwargs", "lr", "weight_decay", "warmup_steps", "batch_size", "grad_accum",
                      "clip_grad_norm", "seed", "betas", "eps", "total_steps", "plan", "text_token_budget")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss (or its gradient) stopped being a finite number."""


class ResumeError(RuntimeError):
    """--resume asked for something the checkpoint cannot give."""


@dataclass
class TrainConfig:
    loss: str = "conclip"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"terms": [1]}, {"lam": 0.5}
    lr: float = 1e-5
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 128  # contrastive (global) micro-batch
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0  # None or 0: no clipping
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 1
    out_dir: str = "runs/finetune"
    resume: bool = False
    stop_at: int | None = None  # stop after this step as if interrupted (time-limited jobs, tests)
    image_batch_size: int = 256
    # None: each micro-batch's captions in one trimmed pass. A number: in length-sorted chunks of at
    # most this many tokens (captions x trimmed length); features equal to float rounding (see above)
    text_token_budget: int | None = None
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

def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, plan: LayerPlan, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with one group per planned part (per-block lr weights); no decay on gains and biases."""
    groups = []
    for part, params in planned_parts(model, plan).items():
        weight = plan.lr_weight(int(part.split(".")[1])) if part.startswith("blocks.") else 1.0
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # LayerNorm gains, biases, logit scale
        for params_, weight_decay, suffix in ((decay, config.weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if params_:
                groups.append({"params": params_, "lr": config.lr * weight, "weight_decay": weight_decay,
                               "name": part + suffix})
    if not groups:
        raise ValueError("the layer plan trains nothing: list some blocks or extras")
    return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)


class DataOrder:
    """Global micro-batch k -> example indices; epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n_examples, batch_size, seed
        self.batches_per_epoch = n_examples // batch_size  # drop the ragged last batch
        self._epoch, self._perm = -1, None

    def batch(self, k: int) -> tuple[int, torch.Tensor]:
        epoch, position = divmod(k, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return epoch, self._perm[position * self.batch_size:(position + 1) * self.batch_size]


def total_steps_of(config: TrainConfig, n_examples: int) -> int:
    if (config.steps is None) == (config.epochs is None):
        raise ValueError("give exactly one of steps and epochs")
    if config.steps is not None:
        return int(config.steps)
    return max(1, math.ceil(config.epochs * (n_examples // config.batch_size) / config.grad_accum))


def _check_config(config: TrainConfig, n_examples: int, dist: DistContext) -> None:
    if config.batch_size < 2:
        raise ValueError("batch_size must be at least 2: contrastive losses need negatives")
    if n_examples < config.batch_size:
        raise ValueError(f"{n_examples} examples are fewer than one batch of {config.batch_size}")
    if config.batch_size % dist.world_size:
        raise ValueError(f"batch_size {config.batch_size} must divide by the number of processes {dist.world_size}")
    if config.grad_accum < 1 or config.lr <= 0 or config.warmup_steps < 0:
        raise ValueError("grad_accum must be >= 1, lr > 0 and warmup_steps >= 0")


# --- the loss of one batch -----------------------------------------------------------------------

def encode_tokens(tower: TextTower, tokens: torch.Tensor, token_budget: int | None = None) -> torch.Tensor:
    """Text features of `tokens` [n, context] in their order, gradients included: one pass trimmed to
    the longest caption, or length-sorted chunks of at most `token_budget` tokens, each trimmed."""
    if token_budget is None:
        return tower.encode(tokens, trim=True)
    chunks = [torch.from_numpy(chunk).to(tokens.device)
              for chunk in token_batches(tower.eot_positions(tokens).cpu() + 1, token_budget)]
    features = torch.cat([tower.encode(tokens[chunk], trim=True) for chunk in chunks])
    return features[torch.argsort(torch.cat(chunks))]


def batch_loss(model: nn.Module, data: TrainingData, spec: LossSpec, indices: torch.Tensor, *,
               device: torch.device, dist: DistContext | None = None, autocast: bool = False,
               loss_kwargs: dict[str, Any] | None = None, text_token_budget: int | None = None) -> torch.Tensor:
    """The loss of the global batch `indices`: this rank's captions encoded (trimmed; see
    `encode_tokens`), gathered over ranks, against the cached image features."""
    dist = dist or DistContext()
    local = dist.shard(indices)
    tokens = torch.cat([data.tokens[name][local] for name in spec.texts]).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        text = encode_tokens(TextTower.from_model(model), tokens, text_token_budget)
    text = F.normalize(text.float(), dim=-1)
    if not torch.isfinite(text).all():
        raise NonFiniteLossError("text features are not finite")
    features = {name: dist.gather_with_grad(part) for name, part in zip(spec.texts, text.split(len(local)))}
    device_indices = indices.to(device)
    features["image"] = data.image[device_indices]
    if data.distractor is not None:
        features["distractor"] = data.distractor[device_indices]
    return spec.call(features, model.logit_scale.exp(), **(loss_kwargs or {}))


def batch_losses(model: nn.Module, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any], loss: str, *,
                 n_batches: int, batch_size: int, seed: int = 0, loss_kwargs: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> list[Callable[[nn.Module], torch.Tensor]]:
    """One callable per batch, `fn(model) -> loss`, computing `loss` exactly as training does
    (cached image features, trimmed captions): what probing.measure.gradnorms measures gradients with."""
    device = resolve_device(device)
    spec = loss_spec(loss)
    data = prepare_data(model, tokenizer, preprocess, examples, spec, device=device, dist=DistContext())
    order = DataOrder(len(data), batch_size, seed)
    if order.batches_per_epoch < 1:
        raise ValueError(f"{len(examples)} examples are fewer than one batch of {batch_size}")

    def make(k: int) -> Callable[[nn.Module], torch.Tensor]:
        indices = order.batch(k)[1]
        return lambda model: batch_loss(model, data, spec, indices, device=device, loss_kwargs=loss_kwargs)

    return [make(k) for k in range(n_batches)]


# --- the loop ----------------------------------------------------------------------------------------

class Trainer:
    def __init__(self, model: nn.Module, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any],
                 plan: LayerPlan, config: TrainConfig):
        self.config, self.plan, self.model = config, plan, model
        self.device = rank_device(resolve_device(config.device))
        self.dist = setup_distributed(self.device)
        self.spec: LossSpec = loss_spec(config.loss)
        _check_config(config, len(examples), self.dist)
        self.autocast = config.bf16 and self.device.type == "cuda"
        self.out_dir = Path(config.out_dir)
        self.total_steps = total_steps_of(config, len(examples))
        self._refuse_to_overwrite()  # before the slow part (caching image features)

        torch.manual_seed(config.seed)
        model.to(self.device)
        self.dist.broadcast_from_main(model)
        self.summary = apply_plan(model, plan, verbose=self.dist.is_main)
        self.data: TrainingData = prepare_data(
            model, tokenizer, preprocess, examples, self.spec, device=self.device, dist=self.dist,
            image_batch_size=config.image_batch_size, autocast=self.autocast)
        self.order = DataOrder(len(self.data), config.batch_size, config.seed)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(model, plan, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup_steps=config.warmup_steps, total_steps=self.total_steps))
        self.step = 0
        self.last_checkpoint: Checkpoint | None = None
        self.history: list[dict[str, float]] = []

    # -- state --
    def run_settings(self) -> dict[str, Any]:
        settings = {key: value for key, value in asdict(self.config).items() if key in _RESUME_MUST_MATCH}
        settings["betas"] = list(settings["betas"])
        settings.update(total_steps=self.total_steps, plan=self.plan.to_dict(), world_size=self.dist.world_size)
        return json.loads(json.dumps(settings))  # plain JSON types, comparable after a round trip

    def save(self) -> Checkpoint:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "settings": json.dumps(self.run_settings())}
        if self.dist.is_main:
            self.last_checkpoint = save_checkpoint(self.out_dir, self.step, self.model, state,
                                                   model_name=self.config.model_name,
                                                   keep_last=self.config.keep_checkpoints,
                                                   metadata=self.config.checkpoint_metadata)
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
        checkpoint = latest_checkpoint(self.out_dir)
        if checkpoint is None:
            if self.config.resume and self.dist.is_main:
                print(f"no checkpoint in {self.out_dir}: starting from step 0", flush=True)
            return
        state = load_checkpoint(checkpoint, self.model, device=self.device)
        saved, now = json.loads(state["settings"]), self.run_settings()
        changed = sorted(key for key in set(saved) | set(now) if key != "world_size" and saved.get(key) != now.get(key))
        if changed:
            raise ResumeError(f"cannot resume {checkpoint.folder}: settings differ from the checkpoint's "
                              f"({', '.join(changed)}); use the original settings or a new output folder")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.last_checkpoint = int(state["step"]), checkpoint
        if self.dist.is_main:
            print(f"resumed from {checkpoint.folder} (step {self.step})", flush=True)

    # -- one step --
    def micro_batch_loss(self, k: int) -> tuple[int, torch.Tensor]:
        epoch, indices = self.order.batch(k)
        loss = batch_loss(self.model, self.data, self.spec, indices, device=self.device, dist=self.dist,
                          autocast=self.autocast, loss_kwargs=self.config.loss_kwargs,
                          text_token_budget=self.config.text_token_budget)
        return epoch, loss

    def train_step(self) -> dict[str, float]:
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum):
            epoch, loss = self.micro_batch_loss(self.step * config.grad_accum + micro)
            (loss / config.grad_accum).backward()
            total += loss.detach() / config.grad_accum
        loss_value = total.item()
        self.dist.average_gradients(self.params)
        max_norm = config.clip_grad_norm if config.clip_grad_norm else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm).item()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise NonFiniteLossError(f"{what} is {loss_value if what == 'loss' else grad_norm}")
        lr = config.lr * lr_factor(self.step, warmup_steps=config.warmup_steps, total_steps=self.total_steps)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():  # CLIP's temperature cap: t = exp(logit_scale) <= 100
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        self.step += 1
        return {"step": self.step, "epoch": epoch, "loss": loss_value, "lr": lr,
                "logit_scale": self.model.logit_scale.exp().item(), "grad_norm": grad_norm}

    # -- the run --
    def fit(self) -> TrainResult:
        config = self.config
        self.resume_or_start()
        stop = min(self.total_steps, config.stop_at) if config.stop_at else self.total_steps
        log = MetricsLog(self.out_dir, start_step=self.step, tensorboard=config.tensorboard) if self.dist.is_main else None
        if self.dist.is_main:
            atomic_write_json(self.out_dir / "run.json", {"config": asdict(config), "plan": self.plan.to_dict(),
                                                         "total_steps": self.total_steps,
                                                         "world_size": self.dist.world_size})
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
                if self.step % config.ckpt_every == 0 or self.step == stop:
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
                                 plan=self.plan.to_dict(), steps=self.step, **self.config.checkpoint_metadata)
        self.dist.barrier()
        return path

    def _nan_message(self, error: Exception) -> str:
        kept = (f"the last good checkpoint is {self.last_checkpoint.folder} (step {self.last_checkpoint.step})"
                if self.last_checkpoint else "no checkpoint had been written yet")
        return (f"training stopped at step {self.step + 1}: {error}. Nothing was saved for this step; {kept}. "
                "Try a lower learning rate, or check the data.")


def _progress_bar(total: int, initial: int, *, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def train(model: nn.Module, tokenizer: Callable, preprocess: Callable, examples: Sequence[Any],
          plan: LayerPlan, config: TrainConfig) -> TrainResult:
    """Fine-tune `model` in place on `examples` with the parts `plan` names; see TrainConfig."""
    trainer = Trainer(model, tokenizer, preprocess, examples, plan, config)
    try:
        return trainer.fit()
    finally:
        trainer.dist.close()
