"""Resumable checkpoints: model weights in safetensors, optimizer / scheduler / RNG / step in a torch file.

Layout under the run folder:
    checkpoints/step_0000300/model.safetensors   the whole CLIP model (load_clip reads it)
    checkpoints/step_0000300/state.pt            optimizer, scheduler, step, RNG, run settings
    checkpoints/latest.json                      {"step": 300, "folder": "step_0000300"}
Each file is written atomically and `latest.json` is switched only after both files of a step
exist, so an interrupted save leaves the previous checkpoint in place. Older step folders are
deleted only after the new one is complete.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probing.io import atomic_torch_save, atomic_write_json
from probing.models.loading import save_clip_checkpoint

LATEST = "latest.json"


@dataclass
class Checkpoint:
    step: int
    folder: Path

    @property
    def model_path(self) -> Path:
        return self.folder / "model.safetensors"

    @property
    def state_path(self) -> Path:
        return self.folder / "state.pt"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: str | Path) -> Checkpoint | None:
    pointer = checkpoint_root(out_dir) / LATEST
    if not pointer.is_file():
        return None
    record = json.loads(pointer.read_text(encoding="utf-8"))
    return Checkpoint(int(record["step"]), checkpoint_root(out_dir) / record["folder"])


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, state: dict[str, Any], *,
                    model_name: str, keep_last: int = 1, metadata: dict[str, str] | None = None) -> Checkpoint:
    """Write model + training state for `step`, point latest.json at it, prune older folders."""
    root = checkpoint_root(out_dir)
    checkpoint = Checkpoint(step, root / f"step_{step:07d}")
    save_clip_checkpoint(model, checkpoint.model_path, model_name=model_name, step=step, **(metadata or {}))
    atomic_torch_save(checkpoint.state_path, {**state, "step": step, "rng": rng_state()})
    atomic_write_json(root / LATEST, {"step": step, "folder": checkpoint.folder.name})
    folders = sorted(p for p in root.glob("step_*") if p.is_dir() and p != checkpoint.folder)
    for old in folders[: max(0, len(folders) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return checkpoint


def load_checkpoint(checkpoint: Checkpoint, model: nn.Module, *, device: torch.device) -> dict[str, Any]:
    """Load the weights into `model` (strict) and return the training state (RNG restored)."""
    from probing.models.loading import load_state_dict_checked, read_checkpoint

    weights = read_checkpoint(checkpoint.model_path)
    load_state_dict_checked(model, weights.state_dict, source=str(checkpoint.model_path),
                            model_name=weights.metadata.get("open_clip_model", "?"))
    state = torch.load(checkpoint.state_path, map_location=device, weights_only=True)
    set_rng_state(state["rng"])
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
