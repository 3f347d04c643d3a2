"""Where negation is computed: patching, heads, a joint-space lens and steering on one model.

`measure_localisation(model, preprocess, tokenizer, world=..., examples=...)` runs the configured
measurements and returns a `Localisation` of typed tables (pandas DataFrames, columns below),
saved as one CSV per table plus localisation.json (atomic writes).

    pairs      kind, n_pairs, n_skipped, accuracy (m(T) > m(F)), mean_gap, mean_clean, mean_corrupted
    patching   kind, method (exact / attribution), direction (denoise / noise), component (resid / attn /
               mlp / head), layer (resid: the stream entering block l, 0 = embeddings; else block l),
               role (cue / negated / subject / other / eot; heads: all), head (<NA> but for heads),
               effect, ci_low, ci_high, score, n_pairs                                 (patching.py)
    agreement  kind, direction, component (all or one), spearman, n_cells: attribution vs exact
    attention  kind, layer, head, query (eot / negated), attention, ci_low, ci_high, uniform, n (heads.py)
    ablation   heads ("L4H1" or "L4H1+L5H0"), ablation (zero / mean), metric, value, baseline, change,
               ci_low, ci_high, n                                                         (heads.py)
    lens       lens (plain / tuned), layer (0 = embeddings, l + 1 = block l), metric, value, ci_low,
               ci_high, n                                                                  (lens.py)
    steering   probe (logistic / diffmeans), layer (as lens; <NA> = every layer at once), alpha, metric,
               value, baseline, change, ci_low, ci_high, n                             (steering.py)

Pairs come from the synthetic `world` (negation and scope pairs of the test split) and/or real
`examples` (NegationExamples: kind "negation", or "real" beside a world) and/or real `pairs` (kind -> PatchPairs
a file gives itself, e.g. NegBench MCQ's scope pairs: probing.measure.roles.benchmark_scope_pairs; "real_<kind>"
beside a world). The lens, steering and
head ablation score a held-out synthetic set, so they need the world; without it they are
skipped and meta["skipped"] says why. Everything runs batched, in eval mode (restored after), and
keeps only what a batch needs.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from probing.clip.hooked import HookedCLIPText
from probing.features.encode import encode_images
from probing.features.pixels import eval_mode
from probing.io import atomic_path, atomic_write_json
from probing.measure.heads import (
    ABLATION_COLUMNS,
    ATTENTION_COLUMNS,
    ablation_rows,
    attention_to_cue,
    mean_head_outputs,
)
from probing.measure.lens import LENS_COLUMNS, lens_rows
from probing.measure.patching import (
    METHODS,
    PATCHING_COLUMNS,
    PairBatch,
    PatchRuns,
    agreement,
    pair_summary,
    patch_batch,
    patch_cells,
    summarise,
    top_heads,
)
from probing.measure.roles import RoleFinder, example_pairs, synthetic_negation_pairs, synthetic_scope_pairs
from probing.measure.scoring import HeldOutSet, training_captions
from probing.measure.settings import LocaliseConfig
from probing.measure.steering import STEERING_COLUMNS, negation_directions, steering_rows

TABLES = {
    "pairs": ("kind", "n_pairs", "n_skipped", "accuracy", "mean_gap", "mean_clean", "mean_corrupted"),
    "patching": PATCHING_COLUMNS,
    "agreement": ("kind", "direction", "component", "spearman", "n_cells"),
    "attention": ATTENTION_COLUMNS,
    "ablation": ABLATION_COLUMNS,
    "lens": LENS_COLUMNS,
    "steering": STEERING_COLUMNS,
}
_NULLABLE_INT = {"patching": ("head",), "steering": ("layer",)}


@dataclass
class Localisation:
    """Every table of a localisation run (see the module docstring for the columns)."""

    n_layers: int
    n_heads: int
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name in TABLES:
            return self.tables.get(name, pd.DataFrame(columns=list(TABLES[name])))
        raise AttributeError(name)

    def save(self, folder: str | Path) -> Path:
        """localisation.json (shapes, meta, table names) and one CSV per table, each written atomically."""
        folder = Path(folder)
        for name, table in self.tables.items():
            with atomic_path(folder / f"{name}.csv") as tmp:
                table.to_csv(tmp, index=False)
        return atomic_write_json(folder / "localisation.json", {"n_layers": self.n_layers, "n_heads": self.n_heads,
                                                                "tables": sorted(self.tables), "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path) -> "Localisation":
        """From the folder (or its localisation.json) that `save` wrote."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        record = json.loads((folder / "localisation.json").read_text())
        tables = {}
        for name in record["tables"]:
            dtypes = {column: "Int64" for column in _NULLABLE_INT.get(name, ())}
            tables[name] = pd.read_csv(folder / f"{name}.csv", dtype=dtypes, keep_default_na=False,
                                       na_values=[""])
        return cls(record["n_layers"], record["n_heads"], tables, record["meta"])


def measure_localisation(model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, *, world=None,
                         examples: Sequence | None = None, pairs: dict[str, Sequence] | None = None,
                         config: LocaliseConfig = LocaliseConfig(), progress: bool = True) -> Localisation:
    """Run the configured measurements on `model` (any open_clip text tower HookedCLIPText wraps)."""

    if world is None and not examples and not any((pairs or {}).values()):
        raise ValueError("localisation needs pairs: pass the synthetic world, real examples or pairs")
    hooked = HookedCLIPText(model, tokenizer)
    result = Localisation(hooked.cfg.n_layers, hooked.cfg.n_heads,
                          meta={"config": asdict(config), "seconds": {}, "skipped": {}})
    timer = lambda name: _timed(result.meta["seconds"], name)
    with eval_mode(model), eval_mode(hooked):
        with timer("pairs"):
            aligned = _aligned_pairs(hooked, tokenizer, world, examples, config, result.meta, pairs)
        if "patching" in config.measurements:
            with timer("patching"):
                _patching(hooked, model, preprocess, aligned, config, result, progress)
        if "heads" in config.measurements:
            with timer("attention"):
                result.tables["attention"] = pd.concat(
                    [attention_to_cue(hooked, pairs, kind, batch_size=config.batch_size)
                     for kind, pairs in aligned.items()], ignore_index=True)
        if world is None:
            result.meta["skipped"] = {part: "needs the synthetic world (held-out images, training captions)"
                                      for part, measurement in (("ablation", "heads"), ("lens", "lens"),
                                                                ("steering", "steering"))
                                      if measurement in config.measurements}
            return result
        with timer("held_out_set"):
            held_out = HeldOutSet.build(model, preprocess, world, n=config.n_eval, split=config.split,
                                        heldout=config.heldout, seed=config.seed + 202, group=config.retrieval_group)
            train = training_captions(world, config.n_train, config.seed)
        if "heads" in config.measurements:
            with timer("ablation"):
                heads = top_heads(result.tables["patching"], config.n_top_heads)
                result.meta["top_heads"] = [list(head) for head in heads]
                means = mean_head_outputs(hooked, tokenizer, train, batch_size=2 * config.batch_size)
                result.tables["ablation"] = ablation_rows(hooked, tokenizer, held_out, heads, means,
                                                          batch_size=2 * config.batch_size)
        if "lens" in config.measurements:
            with timer("lens"):
                result.tables["lens"] = lens_rows(hooked, tokenizer, held_out, train, lenses=config.lenses,
                                                  batch_size=2 * config.batch_size)
        if "steering" in config.measurements:
            with timer("steering"):
                directions, scales = negation_directions(hooked, tokenizer, world, n_train=config.n_train_probe,
                                                         probes=config.probes, seed=config.seed,
                                                         batch_size=2 * config.batch_size)
                result.tables["steering"] = steering_rows(hooked, tokenizer, held_out.head(config.n_steer), directions,
                                                          scales, config.alphas, layers=config.steer_layers,
                                                          batch_size=2 * config.batch_size, progress=progress)
    return result


def _aligned_pairs(hooked, tokenizer, world, examples, config: LocaliseConfig, meta: dict,
                   pairs: dict[str, Sequence] | None = None) -> dict[str, list]:
    """Aligned pairs per kind; what alignment left out is counted in meta["pairs_skipped"]."""
    sources = {}
    if world is not None:
        sources["negation"] = synthetic_negation_pairs(world, config.n_pairs, config.split, config.seed, config.heldout)
        sources["scope"] = synthetic_scope_pairs(world, config.n_pairs, config.split, config.seed, config.heldout)
    if examples:
        sources["real" if world is not None else "negation"] = example_pairs(examples)[:config.n_pairs]
    for kind, given in (pairs or {}).items():
        if given:
            sources[kind if world is None else f"real_{kind}"] = list(given)[:config.n_pairs]
    finder = RoleFinder(tokenizer, hooked.eot_positions)
    aligned, meta["pairs_skipped"] = {}, {}
    for kind, pairs in sources.items():
        aligned[kind], skipped = finder.align(pairs)
        meta["pairs_skipped"][kind] = dict(Counter(reason for _, reason in skipped))
        if not aligned[kind]:
            raise ValueError(f"no {kind} pair could be aligned: {meta['pairs_skipped'][kind]}")
    return aligned


def _patching(hooked, model, preprocess, aligned: dict[str, list], config: LocaliseConfig, result: Localisation,
              progress: bool) -> None:
    cells = patch_cells(hooked.cfg.n_layers, hooked.cfg.n_heads, config.components, config.roles, config.head_roles,
                        config.patch_layers)
    device = hooked.positional_embedding.device
    tables, pairs = [], []
    for kind, items in aligned.items():
        items = sorted(items, key=lambda item: max(len(item.true_tokens), len(item.false_tokens)))  # less padding
        images = encode_images(model, preprocess, [item.pair.image for item in items])
        parts = []
        for start in tqdm(range(0, len(items), config.batch_size), desc=f"patching {kind}", disable=not progress):
            chunk = slice(start, start + config.batch_size)
            batch = PairBatch.build(items[chunk], images[chunk], device)
            parts.append(patch_batch(hooked, batch, cells, config.methods))
        runs = PatchRuns.concat(parts)
        tables.append(summarise(runs, kind, n_boot=config.n_boot, seed=config.seed))
        n_skipped = sum(result.meta["pairs_skipped"][kind].values())
        pairs.append(pair_summary(runs, kind, n_skipped))
    result.tables["patching"] = pd.concat(tables, ignore_index=True)
    result.tables["pairs"] = pd.DataFrame(pairs, columns=list(TABLES["pairs"]))
    if set(config.methods) == set(METHODS):
        result.tables["agreement"] = agreement(result.tables["patching"])


@contextlib.contextmanager
def _timed(seconds: dict, name: str):
    """Adds the seconds spent inside to `seconds[name]`."""
    start = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 2)
