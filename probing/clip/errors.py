"""ModelLoadError, in a leaf module: both loading.py and huggingface.py raise it, and loading.py imports
huggingface.py, so the error cannot live in either without an import cycle."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the model, file and problem."""
