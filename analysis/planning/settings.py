"""The evidence test's settings (`EvidenceConfig`), in a module that imports no torch (a command builds them from its
flags before anything heavy loads; analysis.planning.evidence has the formulas)."""
from __future__ import annotations

from dataclasses import dataclass, field

COMPONENTS = ("probe", "sensitivity", "gradnorm", "patching")


@dataclass
class EvidenceConfig:
    tasks: tuple[str, ...] = ("negation", "scope")
    sensitivity_edit: str = "presence"  # the negation edit compared with the control edit
    grad_losses: tuple[str, ...] | None = None  # None: every measured loss
    weights: dict[str, float] = field(default_factory=lambda: {"probe": 0.5, "sensitivity": 0.25, "gradnorm": 0.25,
                                                               "patching": 0.25})
    alpha: float = (
        0.05  # chance that a model that learnt nothing shows any evidence (Bonferroni over blocks and components)
    )
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        unknown = set(self.weights) - set(COMPONENTS)
        if unknown or min(self.weights.values(), default=0) < 0 or sum(self.weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative over {COMPONENTS}, not all 0; got {self.weights}")
        if self.sensitivity_edit not in ("presence", "absence"):
            raise ValueError(f"sensitivity_edit must be 'presence' or 'absence', got {self.sensitivity_edit!r}")


