"""The study's files: finished runs (one JSON line each) and the settings they share.

Resumable: each finished (variant, seed) run is one JSON line of `<out>/runs.jsonl`, written by
replacing the whole file atomically, so an interrupted study never leaves half a line (a
truncated last line from other writers is dropped with a warning). A restarted study skips the
finished runs; a run interrupted mid-training continues from its last trainer checkpoint. The
settings that change results are kept in `<out>/ablation_config.json`, and a restart with other
settings is refused; more seeds or more variants extend the study.

Shards: a study of hundreds of runs can be split over N processes (a job array, one per GPU): shard K of N
(`Shard(K, N)`) runs every N-th pending run and writes only its own file, `runs.shard-K-of-N.jsonl`, so no
two processes ever write one file. Every reader merges all the runs files of the folder (`load_study_runs`),
so the tables, the validity test and the selector table of a sharded study are those of the whole study.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from analysis.ablation.config import AblationConfig, AblationError
from probing.io import atomic_write_json, atomic_write_text

RUNS_FILE = "runs.jsonl"
CONFIG_FILE = "ablation_config.json"


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`: which pending runs a process takes, and its own runs file."""

    index: int
    count: int

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise AblationError(f"a shard is K/N with 1 <= K <= N (e.g. 2/4), got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'2/4' -> Shard(2, 4)."""
        index, _, count = str(text).partition("/")
        if not (index.strip().isdigit() and count.strip().isdigit()) or int(count) < 1:
            raise AblationError(f"a shard is K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
        return cls(int(index), int(count))

    def takes(self, position: int) -> bool:
        """Whether the run at this position of the study's run list is this shard's."""
        return position % self.count == self.index - 1

    @property
    def runs_file(self) -> str:
        return f"runs.shard-{self.index}-of-{self.count}.jsonl"


def runs_path(out_dir: str | Path, shard: Shard | None = None) -> Path:
    """The runs file a process writes: runs.jsonl, or its shard's own file."""
    return Path(out_dir) / (RUNS_FILE if shard is None else shard.runs_file)


def load_study_runs(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished run of a study folder: runs.jsonl and every shard's file, merged (a run recorded in two
    files, e.g. after the study was re-sharded, is kept once, from the first file in name order)."""
    files = sorted(Path(out_dir).glob("runs*.jsonl"), key=lambda path: (path.name != RUNS_FILE, path.name))
    runs, seen = [], set()
    for path in files:
        for record in load_runs(path):
            key = (record["variant"], int(record["seed"]))
            if key not in seen:
                seen.add(key)
                runs.append(record)
    return runs


def load_runs(path: str | Path) -> list[dict[str, Any]]:
    """Finished runs from runs.jsonl. A truncated last line (an interrupted writer: not JSON) is dropped with a
    warning; a broken line elsewhere, or a complete line that is not a run record, means the file was damaged, and
    is an error."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise AblationError(f"{path} cannot be read ({error}); restore it, or remove it to redo every run") from None
    runs, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (record["variant"], int(record["seed"]))
            metrics = record.get("metrics")
            if (not isinstance(key[0], str) or not isinstance(metrics, dict)
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())):
                raise ValueError("not a run record")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if number == len(lines) and isinstance(error, json.JSONDecodeError):
                warnings.warn(
                    f"{path}: ignoring an incomplete last line (an interrupted write); that run will be redone",
                    stacklevel=2,
                )
                continue
            raise AblationError(f"{path}: line {number} is not a run record; fix or remove that line") from None
        if key in seen:
            warnings.warn(f"{path}: run {key[0]} seed {key[1]} appears twice; keeping the first", stacklevel=2)
            continue
        seen.add(key)
        runs.append(record)
    return runs


def save_runs(path: str | Path, runs: Sequence[dict[str, Any]]) -> Path:
    """Replace runs.jsonl with `runs`, atomically: a reader sees the old file or the new one."""

    text = "".join(json.dumps(run, sort_keys=True) + "\n" for run in runs)
    return atomic_write_text(path, text)


def check_study_settings(out_dir: Path, config: AblationConfig) -> None:
    """Write the study's settings on the first start; refuse a restart with different ones."""

    path = out_dir / CONFIG_FILE
    settings = config.study_settings()
    if path.exists():
        saved = _saved_settings(path)
        changed = sorted(key for key in set(saved) | set(settings) if saved.get(key) != settings.get(key))
        if changed:
            details = ", ".join(f"{key}: {saved.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
            raise AblationError(f"{out_dir} holds a study with other settings ({details}); "
                                "use the same settings to continue it, or another output folder")
        return
    atomic_write_json(path, {"settings": settings, "config": asdict(config)})


def _saved_settings(path: Path) -> dict[str, Any]:
    """The settings a study recorded in ablation_config.json; an AblationError naming the file if it is damaged."""
    fix = "restore it, or remove it together with runs.jsonl to start the study again"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AblationError(f"{path} is damaged: not JSON ({error}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise AblationError(f"{path} is damaged: it holds no 'settings' object; {fix}")
    return record["settings"]


def _stale_runs(runs: Sequence[dict[str, Any]], plans: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished runs of a planned variant that trained something other than what the variant trains now."""
    return [run for run in runs if run["variant"] in plans
            and plan_parts(run.get("plan")) != plan_parts(plans[run["variant"]])]


def stale_variants(runs: Sequence[dict[str, Any]], plans: dict[str, Any]) -> list[str]:
    """The variants with a finished run that trained something other than what the variant trains now (e.g. the
    plan with its extras, after the selection rule changed): the runs to set aside (supersede_runs) before the study
    trains them again."""
    return sorted({run["variant"] for run in _stale_runs(runs, plans)})


def check_finished_runs(runs: Sequence[dict[str, Any]], plans: dict[str, Any]) -> None:
    """A finished run must have trained what its variant trains now (e.g. the same selected plan)."""
    stale = _stale_runs(runs, plans)
    if stale:
        run = stale[0]
        raise AblationError(
            f"finished run {run['variant']} seed {run['seed']} trained {plan_parts(run.get('plan'))}, "
            f"but that variant now trains {plan_parts(plans[run['variant']])} (another plan file or extras?); "
            "use the original ones, or another output folder"
        )


SUPERSEDED_FILE = "superseded.jsonl"  # runs of a plan the study no longer trains (not read as the study's runs)
SUPERSEDED_DIR = "superseded"  # and their run folders


def twin_run(runs: Sequence[dict[str, Any]], plan, seed: int) -> dict[str, Any] | None:
    """A finished run of another variant that trained exactly what `plan` trains (blocks, extras, lr weights) with
    this seed: the same training in the same study, so its record serves (e.g. a one-block plan and its layer_<b>
    variant). None when there is none, or when `plan` trains nothing (frozen, steering)."""
    parts = plan_parts(plan)
    if parts is None:
        return None
    return next((run for run in runs if int(run["seed"]) == seed and plan_parts(run.get("plan")) == parts), None)


def supersede_runs(out_dir: str | Path, variants: Sequence[str]) -> int:
    """Move the finished runs of `variants` out of every runs file of the study into SUPERSEDED_FILE, and their run
    folders into SUPERSEDED_DIR (kept for the record, read by no table): for a variant whose plan changed, e.g.
    `selected` after the selection rule changed. Returns how many runs moved."""
    out_dir, moved = Path(out_dir), []
    for path in sorted(out_dir.glob("runs*.jsonl")):
        runs = load_runs(path)
        keep = [run for run in runs if run["variant"] not in variants]
        if len(keep) < len(runs):
            moved += [run for run in runs if run["variant"] in variants]
            save_runs(path, keep)
    if moved:
        save_runs(out_dir / SUPERSEDED_FILE, load_runs(out_dir / SUPERSEDED_FILE) + moved)
    for variant in variants:  # their logs and per-run files go with them
        folder = out_dir / "runs" / variant
        if folder.is_dir():
            target = out_dir / SUPERSEDED_DIR / variant
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(target)
    return len(moved)


def plan_parts(plan) -> dict[str, Any] | None:
    """What a plan trains (blocks, extras, lr weights), without its free-form rule and evidence."""
    if plan is None:
        return None
    data = plan if isinstance(plan, dict) else plan.to_dict()
    return {key: value for key, value in data.items() if key not in ("rule", "evidence")}
