"""Image features computed once per (image tower, preprocessing, image), kept on disk and shared.

The image tower is frozen everywhere in this toolkit, so an image's features never change for a
given tower: fine-tuning, a resumed run, every run of an ablation study and every evaluation of a
fine-tuned model need the same numbers. `encode_image_features` computes the ones not cached yet
(decoding images in parallel DataLoader workers, a named progress bar) and reads the others back.

Key of a tower (`tower_key`): SHA-256 over the image tower's structure (its repr: layer sizes,
activation functions, so GELU and QuickGELU differ), its weights and buffers
(`probing.clip.compact.state_digest` of `model.visual`), the preprocessing (the transform's repr,
input size and normalisation), the precision (float32, or bfloat16 autocast on CUDA) and the device
type (CPU and GPU kernels round differently). The image tower's own weights rather than the whole
checkpoint's: a fine-tuned model, whose text tower changed, shares its base model's features.

Key of an image (`image_key`): a file by the SHA-256 of its bytes, so that a file rewritten in place
is a new image even when its size and modification time are restored, and two copies of one image
share their features; an array by its bytes, shape and dtype (the synthetic world's scenes); a PIL
image is encoded each time (no key). A file's digest is computed once per process and remembered by
its path, size, modification time, inode and change time (ctime, which the system sets on every write
and on every change of the modification time, and which no program can set back). It is remembered only
once the file has been left alone for `SETTLED_SECONDS`: file times tick in steps of a few milliseconds,
so a file written again within the step of its last change would otherwise look unchanged (git's
"racily clean" entries; such a file is hashed again on every use instead).

Layout: <cache>/image-features/<tower key>/chunk-*.safetensors, each chunk holding `keys` (uint8
[n, 32]) and `features` (float32 [n, d], L2-normalised), with the SHA-256 of both in its metadata.
A writer only adds chunks, each written atomically (probing.io: a temporary file, then a rename) under
a name of its own. So
- a reader never sees half a chunk: a writer killed while writing (SIGKILL included) leaves only its
  temporary file, which readers never read and the next writer or reader removes
  (probing.io.sweep_temporaries); the images it was writing are encoded again;
- concurrent writers (the ranks of a distributed run, two commands encoding the same images at once)
  never touch each other's files: an image two of them encoded is kept twice and read once;
- a chunk damaged on disk afterwards (a truncated copy, a flipped bit, a file that is no safetensors)
  fails its SHA-256 or cannot be read: it is reported once per process (a warning naming the file),
  removed, never served, and its images are encoded again. A chunk without the SHA-256 (written before
  it was recorded) cannot be verified and is not read.
An encode writes a chunk every `flush_every` new images, so an interrupted encode keeps what it did.
The cache folder is probing.cache.cache_dir() ($CLIP_NEGATION_CACHE); `cache=False` turns the disk
cache off.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from probing.cache import cache_dir
from probing.clip.compact import state_digest
from probing.data.reading import load_image
from probing.data.records import DataError
from probing.features.pixels import _input_size, _normalisation, as_pil, eval_mode
from probing.io import atomic_path, sweep_temporaries

FEATURES_DIR = "image-features"
FLUSH_EVERY = 4096
CHECKSUM_KEY = "sha256"  # chunk metadata: SHA-256 of the keys' bytes, then the features' bytes
SETTLED_SECONDS = 2.0  # a file unchanged for this long has a digest worth remembering (module docstring)
_BLOCK = 1 << 20
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # "<function _convert_to_rgb at 0x7f...>" differs per process


# --- keys ------------------------------------------------------------------------------------------

_FILE_KEYS: dict[tuple, bytes] = {}  # (path, size, mtime, inode, device, ctime) -> key, for settled files


def image_key(image: Any) -> bytes | None:
    """32-byte key of an image: a file by the SHA-256 of its bytes (remembered per file, module docstring);
    an array by its bytes. None: no key (a PIL image, or a path that cannot be read: its encoding reports
    the problem)."""
    digest = hashlib.sha256()
    if isinstance(image, (str, Path)):
        try:
            path = Path(image).resolve()
            stat = path.stat()
        except (OSError, ValueError):
            return None
        known = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev, stat.st_ctime_ns)
        if known in _FILE_KEYS:
            return _FILE_KEYS[known]
        digest.update(b"file-bytes|")
        try:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(_BLOCK), b""):
                    digest.update(block)
        except OSError:
            return None
        key = digest.digest()
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_SECONDS * 1e9:
            _FILE_KEYS[known] = key
        return key
    if isinstance(image, np.ndarray):
        array = np.ascontiguousarray(image)
        digest.update(f"array|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
        return digest.digest()
    return None


def tower_key(model: torch.nn.Module, preprocess: Callable, *, autocast: bool = False,
              device: torch.device | str | None = None) -> str:
    """Hex key of what determines an image's features: the image tower (structure and weights), the
    preprocessing, the precision and the device type (module docstring)."""

    visual = model.visual
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = _input_size(model)
    mean, std = _normalisation(model)
    parts = [_ADDRESS.sub("", repr(visual)), state_digest(visual.state_dict()), _ADDRESS.sub("", repr(preprocess)),
             f"size={size}", f"mean={mean.tolist()}", f"std={std.tolist()}",
             f"precision={'bf16' if autocast and device.type == 'cuda' else 'fp32'}", f"device={device.type}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


# --- the store -------------------------------------------------------------------------------------

class FeatureCache:
    """The chunks of one tower key: `lookup` what is there, `add` new features (module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._rows: dict[bytes, torch.Tensor] = {}
        self._read: set[str] = set()
        self._swept = False

    @classmethod
    def for_model(cls, model: torch.nn.Module, preprocess: Callable, *, autocast: bool = False,
                  device: torch.device | str | None = None, root: str | os.PathLike | None = None) -> "FeatureCache":
        root = Path(root) if root is not None else cache_dir()
        return cls(root / FEATURES_DIR / tower_key(model, preprocess, autocast=autocast, device=device))

    def _refresh(self) -> None:
        """Read the chunks written since the last look (by this process or another); a damaged one is
        reported, removed and not read (module docstring)."""
        if not self.folder.is_dir():
            return
        if not self._swept:
            sweep_temporaries(self.folder)  # what a writer killed mid-chunk left: never a chunk
            self._swept = True
        for path in sorted(self.folder.glob("chunk-*.safetensors")):
            if path.name in self._read:
                continue
            self._read.add(path.name)
            chunk = read_chunk(path)
            if chunk is None:
                continue
            keys, features = chunk
            for key, row in zip(keys.numpy(), features):
                self._rows.setdefault(key.tobytes(), row)

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, torch.Tensor]:
        """The cached features of those keys that have them."""
        if any(key not in self._rows for key in keys):
            self._refresh()
        return {key: self._rows[key] for key in keys if key in self._rows}

    def add(self, keys: Sequence[bytes], features: torch.Tensor) -> Path | None:
        """Write one chunk (atomically, under a name of its own) and remember its rows."""

        if not keys:
            return None
        features = features.detach().float().cpu().contiguous()
        path = self.folder / f"chunk-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        keys_tensor = torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32).copy())
        try:
            with atomic_path(path) as tmp:
                save_file({"keys": keys_tensor, "features": features}, str(tmp),
                          metadata={CHECKSUM_KEY: chunk_digest(keys_tensor, features)})
        except OSError:  # a full or read-only cache folder: the features are still returned, only not kept
            return None
        self._read.add(path.name)
        for key, row in zip(keys, features):
            self._rows.setdefault(key, row)
        return path


def chunk_digest(keys: torch.Tensor, features: torch.Tensor) -> str:
    """SHA-256 of a chunk's keys and features (their bytes, in that order), as its metadata records it."""
    digest = hashlib.sha256()
    digest.update(keys.contiguous().numpy().tobytes())
    digest.update(features.contiguous().numpy().tobytes())
    return digest.hexdigest()


_REPORTED: set[str] = set()  # damaged chunks already reported by this process


def read_chunk(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(keys uint8 [n, 32], features float32 [n, d]) of a chunk whose SHA-256 checks; None for a chunk that
    cannot be read, does not hold what a chunk holds or fails its SHA-256 (reported once, then removed, so
    that the images are encoded again), and for one that records no SHA-256 (written before it was)."""

    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get(CHECKSUM_KEY)
        if recorded is None:
            return None
        tensors = load_file(str(path))
        keys, features = tensors["keys"], tensors["features"]
        problem = _chunk_problem(keys, features, recorded)
    except FileNotFoundError:  # removed meanwhile (another process found it damaged)
        return None
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        problem = f"not a readable chunk ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
    if problem is None:
        return keys, features
    if str(path) not in _REPORTED:
        _REPORTED.add(str(path))
        warnings.warn(f"image-feature cache: {path} is damaged ({problem}); it is removed and its images are "
                      "encoded again", RuntimeWarning, stacklevel=4)
    path.unlink(missing_ok=True)  # chunks are never rewritten in place: a damaged one stays damaged
    return None


def _chunk_problem(keys: torch.Tensor, features: torch.Tensor, recorded: str) -> str | None:
    if keys.dtype != torch.uint8 or keys.ndim != 2 or keys.shape[1] != 32:
        return f"keys should be uint8 [n, 32], found {keys.dtype} {tuple(keys.shape)}"
    if features.dtype != torch.float32 or features.ndim != 2 or features.shape[0] != keys.shape[0]:
        return f"features should be float32 [{keys.shape[0]}, d], found {features.dtype} {tuple(features.shape)}"
    if chunk_digest(keys, features) != recorded:
        return "its SHA-256 does not match the one recorded when it was written"
    if not bool(torch.isfinite(features).all()):
        return "it holds non-finite features"
    return None


# --- encoding --------------------------------------------------------------------------------------

@dataclass
class EncodeStats:
    """What one call did: images asked for, distinct ones, read from the cache, encoded, failed."""

    requested: int = 0
    distinct: int = 0
    cached: int = 0
    encoded: int = 0
    failed: int = 0
    seconds: float = 0.0
    workers: int = 0

    def add(self, other: "EncodeStats") -> None:
        for name in ("requested", "distinct", "cached", "encoded", "failed", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _Pixels(Dataset):
    """Decoded, preprocessed images (what a DataLoader worker does): (index, pixels or None, problem)."""

    images: Sequence[Any]
    preprocess: Callable
    fast: tuple[int, torch.Tensor, torch.Tensor] | None  # (size, mean, std): arrays at the input size
    origins: Sequence[tuple[str | None, Any]] | None = None
    indices: Sequence[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        image = self.images[index]
        if isinstance(image, (str, Path)):
            source, row = self.origins[index] if self.origins is not None else (None, None)
            try:
                image = load_image(image, source=source, row=row)
            except DataError as error:  # an exception does not cross processes well: its parts do
                return index, None, (error.path, error.row, error.problem)
        return index, self._tensor(image), None

    def _tensor(self, image) -> torch.Tensor:
        """The pixels `probing.features.encode.images_to_tensor` makes for this image (the same numbers)."""
        if self.fast is not None and isinstance(image, np.ndarray) and image.dtype == np.uint8 \
                and image.shape == (self.fast[0], self.fast[0], 3):
            _, mean, std = self.fast
            pixels = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1).float() / 255.0
            return (pixels - mean[:, None, None]) / std[:, None, None]
        return self.preprocess(as_pil(image))


def _batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def encode_image_features(
    model: torch.nn.Module,
    preprocess: Callable,
    images: Sequence[Any],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    autocast: bool = False,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "image features",
    origins: Sequence[tuple[str | None, Any]] | None = None,
    cache: bool | FeatureCache = True,
    failed: dict[str, str] | None = None,
    stats: EncodeStats | None = None,
    flush_every: int = FLUSH_EVERY,
) -> torch.Tensor:
    """L2-normalised image features [len(images), d], float32, on `device` (default: the CPU).

    images: paths, uint8 arrays [H, W, 3] or PIL images; each distinct image is encoded at most once,
    and not at all when the disk cache has it (`cache`: True = the user's cache for this tower, a
    FeatureCache, or False). num_workers: DataLoader processes that decode and preprocess images
    (0: in this process). An image that is missing or does not decode is a DataError naming it and
    `origins[i] = (source, row)`; with `failed` (a dict, kept across calls) its row is NaN instead and
    path -> reason goes to `failed`. `stats`, if given, is filled with what the call did.
    autocast: run the tower in bfloat16 on CUDA.
    """

    if not images:
        raise ValueError("no images to encode")
    started = time.perf_counter()
    stats = stats if stats is not None else EncodeStats()
    model_device = next(model.parameters()).device
    failed_here: dict[int, tuple] = {}
    keys = [image_key(image) for image in images]
    first: dict[bytes, int] = {}
    for index, key in enumerate(keys):
        if key is not None:
            first.setdefault(key, index)
    store = (cache if isinstance(cache, FeatureCache) else
             FeatureCache.for_model(model, preprocess, autocast=autocast, device=model_device) if cache else None)
    hits = store.lookup(list(first)) if store is not None else {}
    todo = [index for key, index in first.items() if key not in hits] + [i for i, k in enumerate(keys) if k is None]
    found: dict[int, torch.Tensor] = {}
    size = _input_size(model)
    fast = (size, *_normalisation(model)) if size else None
    # one image per loader item, so that every worker decodes whatever the batch size; batches of `batch_size`
    # are put together here, in order (the same batches as probing.features.encode.encode_images runs)
    loader = DataLoader(_Pixels(images, preprocess, fast, origins, sorted(todo)), batch_size=None,
                        num_workers=num_workers, worker_init_fn=_one_thread if num_workers else None,
                        prefetch_factor=4 if num_workers else None)
    pending_keys: list[bytes] = []
    pending_rows: list[torch.Tensor] = []
    bar = tqdm(total=len(todo), desc=desc, unit="image", disable=not progress or not todo, dynamic_ncols=True)
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in _batched(loader, batch_size):
                good = [(index, pixels) for index, pixels, problem in batch if problem is None]
                for index, _, problem in batch:
                    if problem is not None:
                        if failed is None:
                            raise DataError(*problem)
                        failed_here[index] = problem
                if good:
                    pixels = torch.stack([p for _, p in good]).to(model_device)
                    with torch.autocast(model_device.type, dtype=torch.bfloat16,
                                        enabled=autocast and model_device.type == "cuda"):
                        features = model.encode_image(pixels)
                    features = F.normalize(features.float(), dim=-1).cpu()
                    for (index, _), row in zip(good, features):
                        found[index] = row
                        if keys[index] is not None:
                            pending_keys.append(keys[index])
                            pending_rows.append(row)
                if store is not None and len(pending_keys) >= flush_every:
                    store.add(pending_keys, torch.stack(pending_rows))
                    pending_keys, pending_rows = [], []
                bar.update(len(batch))
    finally:
        bar.close()
        if store is not None and pending_keys:  # what was encoded is kept, even when a later image failed
            store.add(pending_keys, torch.stack(pending_rows))
    for index, (_, _, problem) in failed_here.items():
        failed[str(images[index])] = problem
    rows: list[torch.Tensor | None] = []
    for index, key in enumerate(keys):
        source = first.get(key, index) if key is not None else index
        rows.append(hits[key] if key in hits else found.get(source))
    stats.requested += len(images)
    stats.distinct += len(first) + sum(key is None for key in keys)
    stats.cached += len(hits)
    stats.encoded += len(found)
    stats.failed += len(failed_here)
    stats.seconds += time.perf_counter() - started
    stats.workers = num_workers
    shape = next((row.shape for row in rows if row is not None), (1,))
    out = torch.stack([row if row is not None else torch.full(shape, float("nan")) for row in rows])
    return out.to(device) if device is not None else out
