"""What a probe-layers run depends on, as typed settings (`ProbeConfig`: `ModelSpec`, `DataSpec`, and the settings of
the measurements, the evidence, the selection and the localisation), saved as the run folder's config.json and
read back from it. Nothing here imports torch: the command builds the configuration from its flags, checked,
before anything heavy loads; analysis.pipeline runs it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis.planning.selection import SelectionConfig
from analysis.planning.settings import EvidenceConfig
from finetune.vocabulary import GRADNORM_LOSSES
from probing.io import atomic_write_json, dataclass_from_dict
from probing.measure.settings import LocaliseConfig, MeasureConfig
from probing.models.embedded import EMBEDDED

CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """What was asked cannot run on this model or data (one line: which setting, which file, why)."""


# The least value of each count of a run: what probe-layers' flags accept (its count flags take their floors from
# here; --memory-budget, in GiB, must be positive), so that a config.json read back is held to the same (the
# fractions, the rule and k are checked by SelectionConfig and EvidenceConfig themselves).
CAUSAL_MINIMUM = 100  # the causal check scores R@1 among 100
MINIMUM = {"null_models": 0, "data.limit": 10, "data.per_image": 1, "data.n_train": 20, "data.n_test": 10,
           "measure.n_patching_pairs": 1, "measure.batch_size": 1, "measure.token_budget": 1,
           "measure.memory_budget": 1, "measure.n_sensitivity": 2, "measure.n_causal": CAUSAL_MINIMUM,
           "measure.grad_batches": 1, "measure.grad_batch_size": 2, "localise.n_pairs": 1}


NULL_MODELS_ONE = ("null_models must be 0 (measurements only: no evidence, no plan) or at least 2 (the evidence test "
                   "needs the spread of the null towers), got 1")


def check_ranges(config: "ProbeConfig") -> None:
    """A ConfigError naming the first count below its floor (MINIMUM); a section that is off (None) is skipped."""
    for path, low in MINIMUM.items():
        value = config
        for name in path.split("."):
            value = None if value is None else getattr(value, name)
        if value is not None and value < low:
            raise ConfigError(f"setting {path} must be at least {low}, got {value}")
    if config.null_models == 1:  # the evidence test needs the spread of the null towers: a whole run for no plan
        raise ConfigError(NULL_MODELS_ONE)


# --- the configuration ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """Which model: any name probing.models.factory.create_model takes."""

    name: str = EMBEDDED
    pretrained: str | None = None
    device: str = "auto"

    @property
    def label(self) -> str:
        return Path(self.name).stem if self.name.endswith(".json") else self.name


@dataclass(frozen=True)
class DataSpec:
    """What the measurements run on: the synthetic world (no file) or real data files (probing.data.benchmarks)."""

    file: str | None = None
    kind: str | None = None  # the loader's kind when it cannot be guessed from the file (every file of a mix)
    image_root: str | None = None  # without it, image-grounded measurements are skipped on real data
    split: str = "eval"  # a CC-Neg file's split
    limit: int = 4000  # real data: rows (examples, items) used at most per file (a seeded draw)
    files: tuple[str, ...] = ()  # a benchmark mix: several files (`file` then stays None)
    skip_missing: bool = False  # skip (and count) rows whose image is missing, instead of stopping at the first
    train_cues: tuple[str, ...] = ("no", "not")  # real data: the probes' training cues; the others are held out
    per_image: int = 3  # COCO / NegBench retrieval: generated negation examples per image
    n_train: int = 2000  # synthetic probe training captions
    n_test: int = 600  # synthetic captions per test split

    @property
    def paths(self) -> tuple[str, ...]:
        """The real data files (none: the synthetic world)."""
        return tuple(self.files) or ((self.file,) if self.file is not None else ())


@dataclass
class ProbeConfig:
    """Everything a probe-layers run depends on (saved as config.json in its folder)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    seed: int = 0  # data draws, the synthetic world of a model that records none, random weights
    null_models: int = 10
    losses: tuple[str, ...] = GRADNORM_LOSSES  # the losses of the gradient norms
    losses_given: bool = False  # the user named the losses: one the data cannot feed is an error, not a note
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    localise: LocaliseConfig | None = field(default_factory=LocaliseConfig)  # None: no localisation
    threads: int | None = None
    save_activations: bool = False  # write the captured states (activations.safetensors + manifest)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def save(self, folder: str | Path) -> Path:
        return atomic_write_json(Path(folder) / CONFIG_FILE, {"command": "probe-layers", "config": self.to_dict()})

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeConfig":
        """The config of its JSON form, every value of its annotated type and within the flags' ranges."""
        config = dataclass_from_dict(cls, data)
        check_ranges(config)
        return config

    @classmethod
    def load(cls, path: str | Path) -> "ProbeConfig":
        """The config of a run folder's config.json (a ConfigError naming the file when it is not one)."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("command") != "probe-layers":
                raise ValueError(f"it was written by {record.get('command')!r}, not probe-layers")
            return cls.from_dict(record["config"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
                AttributeError) as error:
            raise ConfigError(f"{path} is not a probe-layers config.json: {error}") from None


