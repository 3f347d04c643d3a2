"""The names measurements are filed under: which tower a number belongs to, and the key of each per-item array.

Every per-layer signal is measured on the model ("trained") and on its null models ("null:<seed>"):
`null_name` is the one constructor of a null tower's name and `null_seed` its one parser. Per-item values
(what analysis.planning.evidence resamples) are kept in `LayerMeasurements.items` under an `ItemKey`, whose text form
("probes/scope/heldout_cue/trained", "sensitivity/presence/null:1001", "gradnorms/clip/trained",
"patching/trained") is what items.npz stores. The code that writes an item and the code that reads it build
the key the same way, through the constructors below; nothing parses these strings by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

TRAINED = "trained"
NULL_PREFIX = "null:"
LABELS = "labels"  # the tower slot of a probe split's labels (shared by every tower)
KINDS = ("probes", "sensitivity", "gradnorms", "patching")


def null_name(seed: int) -> str:
    """The name of the null tower initialised with `seed`."""
    return f"{NULL_PREFIX}{int(seed)}"


def null_seed(name: str) -> int | None:
    """The seed of a null tower's name ("null:1001" -> 1001); None for the model and anything else."""
    if name.startswith(NULL_PREFIX) and name[len(NULL_PREFIX):].isdigit():
        return int(name[len(NULL_PREFIX):])
    return None


def is_null(name: str) -> bool:
    return null_seed(name) is not None


@dataclass(frozen=True)
class ItemKey:
    """The key of one per-item array: its kind and tower, and the task / split, edit or loss it is about."""

    kind: str
    tower: str
    detail: tuple[str, ...] = ()  # probes: (task, split); sensitivity: (edit,); gradnorms: (loss,); patching: ()

    @classmethod
    def probe(cls, task: str, split: str, tower: str) -> "ItemKey":
        """Per test item: probe correctness on a split, mean over probe seeds, at every layer [n_layers + 1, n]."""
        return cls("probes", tower, (task, split))

    @classmethod
    def probe_labels(cls, task: str, split: str) -> "ItemKey":
        """The labels of a probe split's test items [n] (the same for every tower)."""
        return cls("probes", LABELS, (task, split))

    @classmethod
    def sensitivity(cls, edit: str, tower: str) -> "ItemKey":
        """Per caption: the standardised distance an edit moves its state, at every layer [n_layers + 1, n]."""
        return cls("sensitivity", tower, (edit,))

    @classmethod
    def gradnorms(cls, loss: str, tower: str) -> "ItemKey":
        """Per gradient batch: each block's relative gradient norm under a loss [n_batches, n_blocks]."""
        return cls("gradnorms", tower, (loss,))

    @classmethod
    def patching(cls, tower: str) -> "ItemKey":
        """Per block: the largest exact patching effect [n_blocks]."""
        return cls("patching", tower)

    @property
    def text(self) -> str:
        return "/".join((self.kind, *self.detail, self.tower))

    @classmethod
    def parse(cls, text: str) -> "ItemKey":
        """The key of a stored name (the inverse of `text`); a ValueError for a name no constructor makes."""
        parts = text.split("/")
        sizes = {"probes": 4, "sensitivity": 3, "gradnorms": 3, "patching": 2}
        if not parts or parts[0] not in sizes or len(parts) != sizes[parts[0]]:
            raise ValueError(f"not a measurement item key: {text!r}")
        return cls(parts[0], parts[-1], tuple(parts[1:-1]))
