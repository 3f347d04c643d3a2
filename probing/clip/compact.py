"""Exact, compact weights: a portable token-embedding init, compact storage of what training changed,
and a checksum of the whole state.

Why: the embedded model's token embedding is 49408 x 128 (25 MB) but pretraining on the synthetic
world uses a few hundred of its rows. The rows no caption uses never move (no gradient, and
embeddings get no weight decay), so they still hold their initial values. If that init is a
function of the seed alone, the same bits on every machine, a checkpoint needs to store only the
rows training changed: the rest is rebuilt from the seed on load. A SHA-256 of the whole state
dict, recorded when saving and checked when loading, proves the rebuilt weights are the trained
ones bit for bit (and catches a damaged file).

The portable init draws integers with SplitMix64 (integer arithmetic only) and scales them with
exactly rounded IEEE operations, so it does not depend on the CPU, the thread count or the torch
build, unlike `torch.nn.init.normal_`. It is uniform on (-a, a) with the standard deviation
CLIP's init uses (0.02), a = std * sqrt(3).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Mapping

import numpy as np
import torch

INIT_SCHEME = "splitmix64-uniform"
COMPACT_KEY = "compact_rows"  # checkpoint metadata: which tensor is stored as changed rows, and its init
DIGEST_KEY = "state_sha256"  # checkpoint metadata: SHA-256 of the whole (dense) state dict
ROWS_SUFFIX, VALUES_SUFFIX = ".rows", ".values"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(seed: int, n: int) -> np.ndarray:
    """n 64-bit outputs of SplitMix64 started at `seed` (wrapping unsigned arithmetic, any machine)."""
    state = np.uint64(seed % 2**64) + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
    z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def portable_uniform(seed: int, shape: tuple[int, ...], std: float = 0.02) -> torch.Tensor:
    """float32 tensor uniform on (-a, a), a = std * sqrt(3): the same bits on every machine."""
    n = int(np.prod(shape))
    top = (_splitmix64(seed, n) >> np.uint64(40)).astype(np.float64)  # 24 bits, exact in float64
    unit = (top + 0.5) / 2.0**24 * 2.0 - 1.0  # exact: (-1, 1)
    values = (unit * (std * 3.0**0.5)).astype(np.float32)  # one rounding in float64, one to float32
    return torch.from_numpy(values.reshape(shape))


def init_record(key: str, seed: int, shape: tuple[int, ...], std: float = 0.02) -> dict:
    """What `rebuild_init` needs to recreate the init of tensor `key`."""
    return {"key": key, "scheme": INIT_SCHEME, "seed": int(seed), "shape": list(shape), "std": float(std)}


def rebuild_init(record: Mapping) -> torch.Tensor:
    if record.get("scheme") != INIT_SCHEME:
        raise ValueError(f"unknown init scheme {record.get('scheme')!r}")
    return portable_uniform(int(record["seed"]), tuple(record["shape"]), float(record["std"]))


def state_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def compact(state_dict: Mapping[str, torch.Tensor], record: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata): `record["key"]` stored as the rows that differ from its init."""
    key = record["key"]
    full = state_dict[key].detach().cpu()
    init = rebuild_init(record)
    if tuple(full.shape) != tuple(init.shape) or full.dtype != init.dtype:
        raise ValueError(f"{key}: {tuple(full.shape)} {full.dtype} does not match its init record {record}")
    rows = torch.nonzero((full != init).any(dim=1)).flatten()
    tensors = {name: value for name, value in state_dict.items() if name != key}
    tensors[key + ROWS_SUFFIX] = rows.to(torch.int64)
    tensors[key + VALUES_SUFFIX] = full[rows].contiguous()
    return tensors, {COMPACT_KEY: json.dumps(dict(record))}


MAX_COMPACT_ELEMENTS = 2**31  # a token embedding of CLIP's 49,408 rows x 1,280 is 6.3e7 elements


def _check_record(record: Mapping, rows: torch.Tensor, values: torch.Tensor) -> None:
    """A ValueError unless the record describes a tensor the stored rows fit: the scheme written here, an
    integer seed, a finite std, a shape of positive integers of at most MAX_COMPACT_ELEMENTS elements whose
    rows the stored values match, and row indices inside it (a damaged record would otherwise allocate any
    size, or index past the tensor)."""
    shape = record.get("shape")
    if record.get("scheme") != INIT_SCHEME:
        raise ValueError(f"unknown init scheme {str(record.get('scheme'))[:40]!r}")
    if not isinstance(record.get("seed"), int) or isinstance(record.get("seed"), bool) or record["seed"] < 0:
        raise ValueError(f"the seed {str(record.get('seed'))[:40]!r} is not an integer >= 0")
    std = record.get("std")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < float("inf"):
        raise ValueError(f"the std {str(std)[:40]!r} is not a positive finite number")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
            or math.prod(shape) > MAX_COMPACT_ELEMENTS):
        raise ValueError(f"the shape {str(shape)[:60]} is not positive integers of at most {MAX_COMPACT_ELEMENTS} "
                         "elements")
    if rows.ndim != 1 or rows.dtype != torch.int64 or tuple(values.shape) != (rows.shape[0], *shape[1:]):
        raise ValueError(f"{tuple(rows.shape)} row indices and values {tuple(values.shape)} do not fit the shape "
                         f"{shape}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= shape[0]):
        raise ValueError(f"row indices outside 0..{shape[0] - 1}")


def expand(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The dense state dict of a compact checkpoint (unchanged if it is not compact)."""
    if COMPACT_KEY not in metadata:
        return dict(tensors)
    record = json.loads(metadata[COMPACT_KEY])
    key = record["key"] if isinstance(record, dict) else None
    if not isinstance(key, str):
        raise ValueError(f"the compact record names no tensor: {str(record)[:80]}")
    rows, values = tensors[key + ROWS_SUFFIX], tensors[key + VALUES_SUFFIX]
    _check_record(record, rows, values)  # before rebuild_init allocates the shape it names
    full = rebuild_init(record)
    full[rows] = values
    out = {name: value for name, value in tensors.items() if name not in (key + ROWS_SUFFIX, key + VALUES_SUFFIX)}
    out[key] = full
    return out
