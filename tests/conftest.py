"""Shared fixtures: tiny open_clip configs written to disk, and the real data the tests read.

The real data comes in two sizes. `test_data` (tests/data, tracked) is a small subset of the real benchmark
files and COCO images, made by scripts/vendor_test_data.py: tests read it by default, so a fresh clone passes
its tests anywhere. `shared_data` is the full set (../shared/data beside the repository, or the folder named by
CLIP_NEGATION_SHARED_DATA): the few tests that need the full files (counts over every row, all 159 images) use
it and are SKIPPED, with the reason, where it is absent. Both folders have the same layout."""
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
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA_VARIABLE = "CLIP_NEGATION_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(SHARED_DATA_VARIABLE) or REPO.parent / "shared" / "data")


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


def first_batch_mcq_loss(bundle, items, batch_size: int, seed: int, stream: int) -> float:
    """NegBench's MCQ loss of the first batch a run with this training seed and data stream draws from the
    synthetic world's multiple-choice `items`, on the model before any step (the value the trainer logs for its
    first step), computed here from the items directly."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from finetune.losses import negbench_mcq_loss
    from finetune.train import DataOrder

    model = bundle.model.eval()
    chosen = [items[i] for i in DataOrder(len(items), batch_size, seed, stream=stream).batch(0)[1].tolist()]
    with torch.no_grad():
        texts = F.normalize(model.encode_text(bundle.tokenizer([c for item in chosen for c in item.captions])),
                            dim=-1).view(batch_size, 4, -1)
        images = F.normalize(model.encode_image(torch.stack([bundle.preprocess(Image.fromarray(item.image))
                                                             for item in chosen])), dim=-1)
        return negbench_mcq_loss(images, texts, torch.tensor([item.correct for item in chosen]),
                                 scale=model.logit_scale.exp()).item()


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
def test_data() -> Path:
    """The vendored subset of the real data (tests/data/MANIFEST.md), laid out as the shared folder."""
    if not (TEST_DATA / "MANIFEST.md").is_file():
        pytest.fail(f"{TEST_DATA} is missing: it is tracked; rebuild it with python scripts/vendor_test_data.py")
    return TEST_DATA


def needs_shared_data() -> Path:
    """The full shared data, or a skip that names the folder it looked for."""
    if not SHARED_DATA.is_dir():
        if os.environ.get(SHARED_DATA_VARIABLE):
            pytest.skip(f"needs ${SHARED_DATA_VARIABLE} (the full benchmark files, {SHARED_DATA}): not a folder")
        pytest.skip(f"needs ../shared/data (the full benchmark files, {SHARED_DATA}): not beside this checkout")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """The full shared data (../shared/data or $CLIP_NEGATION_SHARED_DATA); the test is skipped without it."""
    return needs_shared_data()


@pytest.fixture(scope="session")
def small_embedded():
    """The shipped smoke-test build ("embedded:small"): (checkpoint path, its spec)."""
    from probing.models.embedded import REGISTRY
    from probing.models.factory import embedded_checkpoint

    return embedded_checkpoint("embedded:small"), REGISTRY["small"].spec
