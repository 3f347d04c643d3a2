"""Data parallelism for the fine-tuning loop (torchrun, one process per GPU, or gloo on CPU).

How a step stays equal to a single-process step with the same global batch:
- every rank draws the same seeded global batch and encodes only its own contiguous slice;
- text features are all-gathered WITH gradients (`torch.distributed.nn.functional.all_gather`),
  so each rank computes the loss over the whole global batch, exactly as one process would
  (contrastive negatives come from all ranks);
- the all-gather backward sums, over ranks, the gradients that reach each slice; since every rank
  computes the same loss, rank r's gradient is W x (its slice's share of dL/dtheta), and the
  logit-scale gradient (computed from the full batch on every rank) is simply dL/dt;
- averaging all gradients over ranks (one flat all-reduce per optimizer step, after gradient
  accumulation) therefore gives exactly dL/dtheta for every parameter.
We reduce gradients by hand instead of wrapping the model in DistributedDataParallel: the text
tower is called through `TextTower.encode`, not the model's forward, and one reduction per
optimizer step is what gradient accumulation wants anyway.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (its size must divide by the world size)."""
        if not self.enabled:
            return indices
        per_rank = len(indices) // self.world_size
        return indices[self.rank * per_rank:(self.rank + 1) * per_rank]

    def gather_with_grad(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's [b, d] slice into the global [W*b, d], keeping gradients."""
        if not self.enabled:
            return local
        from torch.distributed.nn.functional import all_gather  # only under torchrun

        return torch.cat(all_gather(local.contiguous()), dim=0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average gradients over ranks with one flat all-reduce."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def map_sharded(self, items: Sequence, encode: Callable[[Sequence], torch.Tensor]) -> torch.Tensor:
        """encode(items) -> [N, d], with each rank encoding a contiguous share (no gradients)."""
        if not self.enabled:
            return encode(items)
        per_rank = math.ceil(len(items) / self.world_size)
        start, stop = min(self.rank * per_rank, len(items)), min((self.rank + 1) * per_rank, len(items))
        mine = encode(items[start:stop] if stop > start else items[:1])[: stop - start]
        padded = mine.new_zeros((per_rank, *mine.shape[1:]))
        padded[: len(mine)] = mine
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat(gathered)[: len(items)]

    def broadcast_from_main(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's weights and buffers (a randomly initialised model would differ)."""
        if self.enabled:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1 in the environment)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        initialized_here = True
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), initialized_here)


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA each process takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ and device.index is None:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device
