"""Training metrics to a CSV file and TensorBoard (rank 0 only).

On resume the CSV keeps the rows up to the resumed step and drops later ones (which belonged to
the interrupted attempt), so a resumed run's CSV reads like an uninterrupted run's.
"""
from __future__ import annotations

import csv
import io
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
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the interrupted attempt's events past the resume point
            self._writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def _truncate_after(self, step: int) -> None:
        rows = []
        if self.path.is_file() and step > 0:
            with self.path.open(newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
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


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)
