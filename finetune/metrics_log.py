"""Training metrics to a CSV file and TensorBoard (rank 0 only).

On resume the CSV keeps the rows up to the resumed step and drops later ones (which belonged to
the interrupted attempt), so a resumed run's CSV reads like an uninterrupted run's.
"""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

from probing.io import atomic_write_text

# loss is the step's total; loss_second the second source's part of it, unweighted (empty without one)
COLUMNS = ("step", "epoch", "loss", "loss_second", "lr", "logit_scale", "grad_norm", "samples_per_s", "elapsed_s")


class MetricsLog:
    def __init__(self, out_dir: str | Path, *, start_step: int = 0, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.csv"
        self._truncate_after(start_step)
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # optional and slow: only when TensorBoard logs are asked

            # purge_step hides the interrupted attempt's events past the resume point
            self._writer = SummaryWriter(
                str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None
            )

    def _truncate_after(self, step: int) -> None:
        """Keep the rows up to `step`. A row that a killed writer left half-written (fewer fields than the
        header, a step that is not a number) or bytes that are not UTF-8 are dropped, with a warning."""
        rows, dropped = [], 0
        if self.path.is_file() and step > 0:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
            for row in csv.DictReader(io.StringIO(text, newline="")):
                row_step = _complete_row_step(row)
                if row_step is None:
                    dropped += 1
                elif row_step <= step:
                    rows.append(row)
        if dropped:
            warnings.warn(f"{self.path}: dropped {dropped} damaged row(s) (a write the run's interruption cut short)",
                          stacklevel=2)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def log(self, metrics: dict[str, float]) -> None:
        self._csv.writerow([_fmt(metrics.get(column)) for column in COLUMNS])
        self._file.flush()
        if self._writer is not None:
            for name, value in metrics.items():
                if name != "step" and value is not None:
                    self._writer.add_scalar(f"train/{name}", value, int(metrics["step"]))

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _complete_row_step(row: dict) -> int | None:
    """The step of a complete row; None for a damaged one (cut short, or holding undecodable bytes)."""
    values = list(row.values())
    if None in values or any("\ufffd" in str(value) for value in values):
        return None
    try:
        return int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
