"""Resumable checkpoints: model weights in safetensors, optimizer / scheduler / RNG / step in a torch file.

Layout under the run folder:
    checkpoints/step_0000300/model.safetensors   the CLIP model (load_clip reads it): with a base checkpoint,
                                                 only the trained tensors (a delta, probing.clip.loading)
    checkpoints/step_0000300/state.pt            optimizer, scheduler, step, RNG, run settings
    checkpoints/latest.json                      {"step": 300, "folder": "step_0000300"}
Each file is written atomically and `latest.json` is switched only after both files of a step
exist, so an interrupted save leaves the previous checkpoint in place. Older step folders are
deleted only after the new one is complete; the temporary files a killed save leaves behind are
removed by the next run (`sweep`).

A damaged checkpoint (a `latest.json` that is not the pointer above, a `state.pt` torch cannot read or
that lacks a part, weights that are not finite) is a `ResumeError` naming the file and what to do.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probing.clip.loading import (
    DELTA_KEY,
    ModelLoadError,
    apply_delta,
    load_state_dict_checked,
    read_checkpoint,
    save_clip_checkpoint,
)
from probing.io import atomic_torch_save, atomic_write_json, sweep_temporaries

LATEST = "latest.json"
STATE_KEYS = ("optimizer", "scheduler", "settings", "step", "rng")


class ResumeError(RuntimeError):
    """--resume asked for something the checkpoint cannot give (other settings, a damaged file)."""


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
    """The checkpoint `latest.json` points at, None without one; a ResumeError if the pointer is damaged."""
    pointer = checkpoint_root(out_dir) / LATEST
    if pointer.exists() and not pointer.is_file():
        raise ResumeError(f"{pointer} is a folder, not the checkpoint pointer file")
    if not pointer.is_file():
        return None
    fix = ('it should read {"step": N, "folder": "step_000000N"}; remove the checkpoints folder to start again, '
           "or choose another output folder")
    try:
        record = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ResumeError(f"{pointer} is damaged: not JSON ({error}); {fix}") from None
    if (not isinstance(record, dict) or not isinstance(record.get("step"), int) or isinstance(record["step"], bool)
            or record["step"] < 0 or not isinstance(record.get("folder"), str)
            or Path(record["folder"]).name != record["folder"] or not record["folder"].startswith("step_")):
        raise ResumeError(f"{pointer} is damaged: found {str(record)[:80]}; {fix}")
    checkpoint = Checkpoint(record["step"], checkpoint_root(out_dir) / record["folder"])
    missing = [path.name for path in (checkpoint.model_path, checkpoint.state_path) if not path.is_file()]
    if missing:
        raise ResumeError(f"{pointer} points at {checkpoint.folder}, which lacks {', '.join(missing)}; remove the "
                          "checkpoints folder to start again, or choose another output folder")
    return checkpoint


def sweep(out_dir: str | Path) -> list[Path]:
    """Remove the temporary files that killed writers left in a run folder and its checkpoints."""
    return sweep_temporaries(out_dir, recursive=True)


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, state: dict[str, Any], *,
                    model_name: str, keep_last: int = 1, metadata: dict[str, str] | None = None,
                    base: dict[str, str] | None = None, trained: list[str] | None = None) -> Checkpoint:
    """Write model + training state for `step`, point latest.json at it, prune older folders. With `base`
    (probing.clip.loading.base_record) the model file holds only the `trained` tensors."""
    root = checkpoint_root(out_dir)
    checkpoint = Checkpoint(step, root / f"step_{step:07d}")
    save_clip_checkpoint(model, checkpoint.model_path, model_name=model_name, base=base, trained=trained, step=step,
                         **(metadata or {}))
    atomic_torch_save(checkpoint.state_path, {**state, "step": step, "rng": rng_state()})
    atomic_write_json(root / LATEST, {"step": step, "folder": checkpoint.folder.name})
    folders = sorted(p for p in root.glob("step_*") if p.is_dir() and p != checkpoint.folder)
    for old in folders[: max(0, len(folders) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return checkpoint


def load_checkpoint(checkpoint: Checkpoint, model: nn.Module, *, device: torch.device) -> dict[str, Any]:
    """Load the weights into `model` (strict) and return the training state (RNG restored).

    Weights that are not finite (a checkpoint written before training checked them) and a training state
    that torch cannot read or that lacks a part are ResumeErrors naming the file."""

    weights = read_checkpoint(checkpoint.model_path)
    bad = non_finite_tensors(weights.state_dict)
    if bad:
        raise ResumeError(f"checkpoint {checkpoint.model_path} holds non-finite weights ({len(bad)} tensors, e.g. "
                          f"{bad[0]}); it cannot be resumed: remove {checkpoint.folder.parent} and start again")
    state = _read_state(checkpoint.state_path, device)
    model_name = weights.metadata.get("open_clip_model", "?")
    if weights.metadata.get(DELTA_KEY) == "true":  # the model holds the base: the stored tensors go on top
        try:
            apply_delta(model, weights, source=checkpoint.model_path, model_name=model_name)
        except ModelLoadError as error:
            raise ResumeError(f"cannot resume {checkpoint.folder}: {error}") from None
    else:
        load_state_dict_checked(model, weights.state_dict, source=str(checkpoint.model_path), model_name=model_name)
    set_rng_state(state["rng"])
    return state


def _read_state(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a damaged pickle fails in many ways (EOFError, RuntimeError, UnpicklingError, ...)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ResumeError(f"training state {path} is damaged ({type(error).__name__}: {first}); remove the "
                          "checkpoints folder to start again, or choose another output folder") from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing or not isinstance(state["rng"], dict) or not isinstance(state["rng"].get("torch"), torch.Tensor):
        raise ResumeError(f"training state {path} is damaged: it lacks {', '.join(missing) or 'the RNG state'}")
    return state


def non_finite_tensors(tensors: dict[str, torch.Tensor] | Any) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [name for name, value in dict(tensors).items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
