"""ModelLoadError and the wording of a checkpoint that does not fit its model, in a leaf module: both loading.py
and huggingface.py raise them, and loading.py imports huggingface.py, so they cannot live in either without an
import cycle."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model, file and problem."""


def fit_problems(wrong_shape: list[str], missing: list[str], extra: list[str], extra_what: str) -> list[str]:
    """What keeps a state dict from fitting a model, one phrase per kind (the first three names of each)."""
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensors have the wrong shape ({'; '.join(wrong_shape[:3])})")
    if missing:
        problems.append(f"{len(missing)} tensors are missing ({', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} tensors are {extra_what} ({', '.join(extra[:3])})")
    return problems
