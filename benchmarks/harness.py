"""What every benchmark here shares: pinned threads, warm-up, interleaved rounds, medians and spread,
the machine's matmul rate measured in the same run, FLOP counts, real and synthetic captions, and
the JSON record that scripts/bench_tables.py turns into the README's table.

Timing protocol (`interleaved`): each variant runs once untimed (warm-up: allocator, kernels, lazy
imports), then `rounds` rounds in which every variant runs once, in an order rotated from round to
round, so that all variants see the same machine load (other jobs on a shared machine make single
runs noisy) and none always runs first or last. Reported: the median over rounds, min, max and the
half-spread (max - min) / 2 / median as a relative spread.

The matmul rate (`matmul_rate`) is a square matrix product timed inside the same rounds (it is one
more variant), so "share of the matmul rate" compares each path with what the same cores did in
the same minutes: float32 on CPU, bfloat16 on CUDA.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from probing.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
# the real captions and images: the full shared data beside the repository by default; --data-root names another
# folder of the same layout (the tests give tests/data, the small vendored subset)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NEGBENCH_MCQ = "negbench/COCO_val_mcq_llama3.1_rephrased.csv"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of torch and the BLAS pools (pinned)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda runs in bfloat16 autocast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON record (default: benchmarks/results/<benchmark>-<device>.json)")


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA,
                        help=f"folder laid out like the shared data, where the real captions (and images) come from "
                             f"(default: {SHARED_DATA}, the full files)")


def data_file(data_root: Path, relative: str) -> Path:
    """`data_root / relative`, or an exit that names it and --data-root (no traceback) when it is not there."""
    path = data_root / relative
    if not path.exists():
        raise SystemExit(f"{path}: not found; --data-root names a folder laid out like ../shared/data "
                         "(tests/data holds a small subset)")
    return path


def setup(args: argparse.Namespace) -> torch.device:
    """Pin threads (torch and BLAS, as the commands' --threads do), seed, resolve the device.

    Exits with a message (status 0) when CUDA was asked for and there is none: the GPU figures are
    then simply not measured, and nothing is written.
    """
    from analysis.runtime import apply_threads

    apply_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} but torch sees no CUDA device; the GPU (bfloat16) figures "
              "are not measured on this machine", file=sys.stderr)
        raise SystemExit(0)
    return torch.device(args.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each variant in each round (see the module docstring); one warm-up run first."""
    for run in variants.values():
        run()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            started = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return times


def spread(seconds: Sequence[float]) -> dict[str, float]:
    median = statistics.median(seconds)
    return {"median_s": median, "min_s": min(seconds), "max_s": max(seconds),
            "relative_spread": (max(seconds) - min(seconds)) / 2 / median, "rounds": len(seconds)}


class MatmulRate:
    """A square matrix product whose FLOP rate stands for what the machine can do (see module docstring)."""

    def __init__(self, device: torch.device, size: int | None = None):
        self.device = device
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.size = size or (8192 if device.type == "cuda" else 1024)
        self.repeats = 20 if device.type == "cuda" else 4
        generator = torch.Generator().manual_seed(0)
        self.a, self.b = (
            torch.randn(self.size, self.size, generator=generator).to(device, self.dtype) for _ in range(2)
        )

    @property
    def flops(self) -> float:
        return 2.0 * self.size ** 3 * self.repeats

    def __call__(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self.a, self.b)

    def describe(self) -> str:
        return f"{self.size}x{self.size} @ {self.size}x{self.size} {str(self.dtype).removeprefix('torch.')}"


def rate_entry(seconds: Sequence[float], flops: float, peak_flops_per_s: float, *, useful_flops: float | None = None,
               items: int | None = None) -> dict:
    """Timing, FLOP rate and share of the measured matmul rate; useful share if the useful FLOPs are known."""
    entry = spread(seconds)
    median = entry["median_s"]
    entry.update(flops=flops, gflops_per_s=flops / median / 1e9, share_of_matmul_rate=flops / median / peak_flops_per_s)
    if useful_flops is not None:
        entry.update(useful_flops=useful_flops, useful_fraction=useful_flops / flops,
                     useful_share_of_matmul_rate=useful_flops / median / peak_flops_per_s)
    if items is not None:
        entry["items_per_s"] = items / median
    return entry


def print_variants(variants: dict[str, dict], base: str, extra: dict[str, Callable[[dict], str]] | None = None) -> None:
    """One line per variant: median, spread, speed relative to `base`, shares of the matmul rate, `extra` columns."""
    extra = extra or {}
    print(f"{'variant':<26}{'median s':>10}{'spread':>8}{'x ' + base:>24}{'of matmul':>11}{'useful':>8}"
          + "".join(f"{header:>14}" for header in extra))
    for name, entry in variants.items():
        print(f"{name:<26}{entry['median_s']:>10.3f}{entry['relative_spread']:>8.1%}"
              f"{variants[base]['median_s'] / entry['median_s']:>24.2f}{entry['share_of_matmul_rate']:>11.0%}"
              f"{entry['useful_fraction']:>8.0%}" + "".join(f"{cell(entry):>14}" for cell in extra.values()))


# --- FLOPs of the text tower -----------------------------------------------------------------------

def block_flops(tower, batch: int, length: int) -> float:
    """FLOPs of one block on `batch` captions at `length` positions, counted as torch.utils.flop_counter
    counts them (tests check the two agree): the q/k/v and output projections, the MLP, attention
    scores and weighted values over all length x length pairs (the causal mask does not skip the
    masked half)."""
    d = tower.d_model
    d_mlp = tower.blocks[0].mlp.c_fc.out_features
    return float(2 * batch * length * d * 4 * d + 2 * 2 * batch * length * d * d_mlp + 2 * 2 * batch * length ** 2 * d)


def projection_flops(tower, batch: int) -> float:
    """FLOPs of the final projection of `batch` pooled states."""
    projection = tower.text_projection
    if projection is None:
        return 0.0
    d_out = projection.out_features if hasattr(projection, "out_features") else projection.shape[1]
    return float(2 * batch * tower.d_model * d_out)


def text_forward_flops(tower, batch: int, length: int) -> float:
    """FLOPs of one text-tower forward of `batch` captions at `length` positions."""
    return tower.n_layers * block_flops(tower, batch, length) + projection_flops(tower, batch)


def batched_flops(tower, lengths: np.ndarray, batches: Sequence[np.ndarray], *, trimmed: bool = True) -> float:
    """FLOPs of running `batches` (index arrays), each trimmed to its longest caption (or at full context)."""
    return sum(text_forward_flops(tower, len(b), int(lengths[b].max()) if trimmed else tower.n_ctx) for b in batches)


def useful_flops(tower, lengths: np.ndarray) -> float:
    """FLOPs of every caption run alone at its own length: no padding (positions up to EOT only)."""
    return sum(text_forward_flops(tower, 1, int(length)) for length in lengths)


# --- captions --------------------------------------------------------------------------------------

def negbench_captions(n: int, seed: int, data_root: Path = SHARED_DATA) -> list[str]:
    """`n` captions drawn (seeded) from NegBench's COCO MCQ file under `data_root` (by default the shared
    copy beside the repository): affirmative, negated and hybrid captions as the benchmark wrote them."""
    from probing.data import load_negbench_mcq

    items = load_negbench_mcq(data_file(data_root, NEGBENCH_MCQ), strict=False, artifacts="skip")
    captions = [caption for item in items for caption in item.captions]
    if len(captions) < n:
        raise SystemExit(f"{data_root / NEGBENCH_MCQ} holds {len(captions)} captions, fewer than {n}")
    return random.Random(seed).sample(captions, n)


def synthetic_captions(n: int, seed: int) -> list[str]:
    """`n` captions of the synthetic world's probing task (short, of few lengths)."""
    from probing.synthetic import SyntheticWorld, WorldConfig

    return [c.text for c in SyntheticWorld(WorldConfig(), seed=seed).probe_captions(n)][:n]


def length_summary(lengths: np.ndarray) -> dict[str, float]:
    """Token lengths (positions up to and including EOT)."""
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max()), "n": int(len(lengths))}


# --- the record ------------------------------------------------------------------------------------

def machine(device: torch.device, threads: int) -> dict:
    info = {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "threads_asked": threads,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def write_record(args: argparse.Namespace, benchmark: str, device: torch.device, record: dict) -> Path:
    """Write `record` (with the machine and the arguments) atomically as JSON; return its path."""
    path = args.out or RESULTS / f"{benchmark}-{device.type}.json"
    arguments = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    atomic_write_json(path, {"benchmark": benchmark, "machine": machine(device, args.threads),
                             "arguments": arguments, **record})
    return path
