"""What the tutorial notebooks (notebooks/*.py) share: their settings, a fresh output folder, and
figures shown at screen size.

    from analysis.report.notebook import start, show
    run = start("02_layer_evidence")   # run.small, run.model, run.build, run.out, run.started

`NOTEBOOK_SMALL=1` (the test suite's switch) selects the smoke-test build "embedded:small" and tiny
sizes; otherwise the notebooks run on the embedded default model. Outputs go to the repository's
runs/notebooks/<name>/<build> (git ignores runs/), emptied at the start of every run, and are named
relative to the notebook's folder so that no machine's paths end up in a committed notebook.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display
from PIL import Image


@dataclass(frozen=True)
class NotebookRun:
    small: bool  # the smoke-test build and tiny sizes (NOTEBOOK_SMALL=1)
    model: str  # "embedded:small" or "embedded"
    build: str  # "small" or "default": the output subfolder
    out: Path  # this run's output folder, relative to the working directory
    started: float  # time.perf_counter() at the start


def start(name: str, *, threads: int = 1) -> NotebookRun:
    """Settings every notebook uses, and an empty output folder for notebook `name`."""

    torch.set_num_threads(threads)  # the machine is shared; these small models are also fastest on one thread
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs that it built an architecture before loading weights
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets; bars are off
    pd.set_option("display.precision", 3)
    small = os.environ.get("NOTEBOOK_SMALL") == "1"
    build = "small" if small else "default"
    root = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
    out = Path(os.path.relpath(root / "runs" / "notebooks" / name / build))
    shutil.rmtree(out, ignore_errors=True)  # every run of the notebook starts from scratch
    out.mkdir(parents=True)
    return NotebookRun(small, "embedded:small" if small else "embedded", build, out, time.perf_counter())


def show(figure, width: int = 720) -> None:
    """Display a matplotlib figure or a saved image at screen size, as a 64-colour palette PNG (a fraction
    of the bytes of a full-colour one in the notebook file; plots need no more colours)."""
    import matplotlib.pyplot as plt  # after the notebook's inline backend is set up, never before

    if isinstance(figure, (str, Path)):
        image = Image.open(figure)
    else:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
        plt.close(figure)
        image = Image.open(buffer)
    image = image.convert("RGB")
    image.thumbnail((width, 10 * width))
    display(image.quantize(colors=64))
