"""Shared fixtures: tiny open_clip configs written to disk, and the path of the shared real data."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Tiny test models run fastest on one thread; more threads only add OpenMP/BLAS overhead and,
# when several processes share the cores, oversubscription that slows everything many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(text_width: int = 64, *, quick_gelu: bool = False, layers: int = 4, heads: int = 2,
                context_length: int = 32, embed_dim: int = 32, **text_extra) -> dict:
    """An open_clip config small enough to build in milliseconds."""
    return {
        "embed_dim": embed_dim,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                     "heads": heads, "layers": layers, **text_extra},
    }


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory):
    """No test reads or writes the user's model cache (or builds the full default model there)."""
    previous = os.environ.get("CLIP_NEGATION_CACHE")
    os.environ["CLIP_NEGATION_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    if previous is None:
        os.environ.pop("CLIP_NEGATION_CACHE", None)
    else:
        os.environ["CLIP_NEGATION_CACHE"] = previous


@pytest.fixture
def write_config(tmp_path):
    """Write a tiny config as `<tmp>/<name>.json` and return its path (load it with load_clip)."""
    def write(name: str, **kwargs) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(tiny_config(**kwargs)))
        return path
    return write


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder {SHARED_DATA} is not beside the repository (see README)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_embedded():
    """The shipped smoke-test build ("embedded:small"): (checkpoint path, its spec)."""
    from probing.models.embedded import REGISTRY
    from probing.models.factory import embedded_checkpoint

    return embedded_checkpoint("embedded:small"), REGISTRY["small"].spec
