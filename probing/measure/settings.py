"""The settings of the measurements (`MeasureConfig`, `LocaliseConfig`) and the names they take, in a module that
imports no torch: a command builds its typed configuration from its flags before anything heavy loads, and a
run's config.json reads back into the same classes.
"""
from __future__ import annotations

from dataclasses import dataclass

from probing.vocabulary import LAYER_MEASUREMENTS, LOCALISATION_MEASUREMENTS

# patching: what is patched -> the hook it is read at (probing.measure.patching)
PATCH_COMPONENTS: dict[str, str] = {"resid": "resid_pre", "attn": "attn_out", "mlp": "mlp_out", "head": "z"}
PATCH_METHODS = ("exact", "attribution")
# token roles of a caption pair (probing.measure.roles); ALL: every aligned position at once (head patching)
ROLES = ("cue", "negated", "subject", "other", "eot")
ALL = "all"
LENSES = ("plain", "tuned")  # probing.measure.lens


@dataclass
class MeasureConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # probe seeds on the model
    # On each null model: one probe seed, the logistic probe only, and the first `null_grad_batches` gradient
    # batches. Their spread across null models is what the test needs; a noisier null is a more lenient
    # comparison for nobody: it widens the null's spread, so the test only gets stricter.
    null_seeds: tuple[int, ...] = (0,)
    null_grad_batches: int = 2
    measurements: tuple[str, ...] = LAYER_MEASUREMENTS
    # patching as evidence: each block's exact denoising effect on the model AND its null models
    # (probing.measure.patching.block_effects, in similarity units), for analysis.planning.evidence
    patching_evidence: bool = False
    n_patching_pairs: int = 32
    n_sensitivity: int = 400
    n_causal: int = 400
    grad_batches: int = 4
    grad_batch_size: int = 64
    # the Fisher information of each block (the FIM-score baseline selector, analysis.planning.selectors), on the model
    # only: the gradient batches cut into micro-batches of this many examples (0: not measured)
    fisher_micro_batch: int = 8
    batch_size: int = 256
    seed: int = 0  # data draws for sensitivity, gradient batches and the causal suite
    # bytes captured features may take in memory; larger captures stream to memory-mapped files in
    # the temporary folder ($TMPDIR), deleted as soon as they are mapped (probing.measure.capture)
    memory_budget: int | None = 2 * 2**30
    # None: captures run in length-sorted batches of batch_size, as every recorded measurement did. A
    # token budget saves padding on captions of varied lengths, but its other batches change features
    # at float rounding, and probe fits with them (a test item here and there)
    token_budget: int | None = None
    feature_cache: bool = True  # image features through the disk cache (probing.features.cache)
    num_workers: int = 0  # processes that decode real images

    def __post_init__(self):
        unknown = set(self.measurements) - set(LAYER_MEASUREMENTS)
        if unknown:
            raise ValueError(f"unknown measurements {sorted(unknown)}; choose from {', '.join(LAYER_MEASUREMENTS)}")
        if len(self.seeds) < 1 or len(self.null_seeds) < 1:
            raise ValueError("at least one probe seed is needed")



@dataclass(frozen=True)
class LocaliseConfig:
    """Sizes and seeds; the defaults fit about two minutes on one thread for a 12 x 128 tower."""

    measurements: tuple[str, ...] = LOCALISATION_MEASUREMENTS
    n_pairs: int = 64  # per kind of pair
    methods: tuple[str, ...] = PATCH_METHODS
    components: tuple[str, ...] = tuple(PATCH_COMPONENTS)
    roles: tuple[str, ...] = ROLES
    head_roles: tuple[str, ...] = (ALL,)
    patch_layers: tuple[int, ...] | None = None  # blocks to patch; None: all (a full-size model may take a few)
    n_eval: int = 200  # held-out scenes and scope pairs (retrieval among 100 needs at least 100)
    n_steer: int = 100  # the first n_steer of them score each steering setting (there are many settings)
    retrieval_group: int = 100  # R@1 among this many scenes
    steer_layers: tuple[int, ...] | None = None  # None: every layer, one at a time (and all at once)
    n_train: int = 400  # training scenes / scope pairs for the tuned lens and mean-ablation (x5 captions)
    n_train_probe: int = 1000  # training captions of the negation task for the steering directions
    probes: tuple[str, ...] = ("logistic", "diffmeans")
    alphas: tuple[float, ...] = (0.13, 0.5, 1.0)
    lenses: tuple[str, ...] = LENSES
    n_top_heads: int = 3
    n_boot: int = 1000
    batch_size: int = 64
    split: str = "test"
    heldout: str = "all"
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.measurements) - set(LOCALISATION_MEASUREMENTS)
        if unknown:
            raise ValueError(f"unknown measurements {sorted(unknown)}; "
                             f"choose from {', '.join(LOCALISATION_MEASUREMENTS)}")
        if "heads" in self.measurements and not ("patching" in self.measurements and "head" in self.components):
            raise ValueError("heads ranks heads by their patching effect: "
                             "it needs 'patching' with the 'head' component")


