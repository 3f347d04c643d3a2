"""The tutorial notebooks: each is a jupytext percent-format source (notebooks/<name>.py) paired with its
.ipynb, the two hold the same cells, each runs top to bottom on a fresh kernel in small mode, and the
committed .ipynb carries the outputs of a real run, small, with no absolute paths or machine names.

Sync: the .py is read with jupytext and the .ipynb with nbformat; their cells (type and source, in order)
must be equal. Editing one without the other (or without `jupytext --sync`) fails here.

Execution: every notebook is converted from its .py source by jupytext and run alone in its own temporary
folder, with NOTEBOOK_SMALL=1 (the shipped "embedded:small" model, tiny sizes), so each must stand on its
own; notebook 3 then writes its layer plan itself, through probe-layers, instead of reading notebook 2's.
A second run of notebook 3 finds a layer plan where notebook 2 writes it, so that its other branch (a plan
with blocks, against the anchors' branch when the evidence supports none) runs too.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NAMES = ("01_activations", "02_layer_evidence", "03_finetune_compare")
FINDINGS_TITLE = "## What this run showed"
# Seconds per notebook in small mode (they take about 20-70 s on one thread of a busy 2-core machine).
NOTEBOOK_TIMEOUT = 300
SCREEN_WIDTH = 720  # widest image a notebook shows (pixels)
PACKAGES = ("probing", "finetune", "analysis")


def _source_notebook(name: str):
    """The notebook as its .py source defines it (jupytext)."""
    import jupytext

    return jupytext.read(NOTEBOOK_DIR / f"{name}.py", fmt="py:percent")


def _committed(name: str):
    import nbformat

    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def _output_texts(cell) -> list[str]:
    """Every text an output shows (streams, text/plain, markdown, html, errors), images left out."""
    texts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            texts.append(output["text"])
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/") or mime == "application/json":
                texts.append(value if isinstance(value, str) else json.dumps(value))
        if output.get("output_type") == "error":
            texts.append(" ".join(output.get("traceback", [])))
    return texts


def _images(notebook) -> list[bytes]:
    return [base64.b64decode(output["data"]["image/png"]) for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def _forbidden_strings() -> list[str]:
    """Absolute-path prefixes and this machine's names, none of which may show in a committed notebook."""
    strings = ["/root", "/home/", "/tmp/", "/Users/", "C:\\", str(REPO), str(Path.home())]
    host = socket.gethostname()
    if len(host) >= 4:
        strings.append(host)
    return [s for s in strings if s and s != "/"]


# --- sources and pairing (no kernel) ---------------------------------------------------------------

def test_every_notebook_has_its_source_and_its_ipynb():
    for suffix in (".py", ".ipynb"):
        present = {p.stem for p in NOTEBOOK_DIR.glob(f"*{suffix}")}
        assert set(NAMES) <= present, f"missing {suffix} files: {sorted(set(NAMES) - present)}"


def test_jupytext_pairs_the_notebooks_as_ipynb_and_percent_scripts():
    from jupytext.config import load_jupytext_config
    from jupytext.formats import guess_format, long_form_multiple_formats

    config = load_jupytext_config(str(NOTEBOOK_DIR))
    assert config is not None, "no jupytext configuration for notebooks/"
    for name in NAMES:
        formats = long_form_multiple_formats(config.default_formats(str(NOTEBOOK_DIR / f"{name}.ipynb")))
        assert {"extension": ".ipynb"} in formats and {"extension": ".py", "format_name": "percent"} in formats
        assert guess_format((NOTEBOOK_DIR / f"{name}.py").read_text(encoding="utf-8"), ".py")[0] == "percent"


@pytest.mark.parametrize("name", NAMES)
def test_source_and_ipynb_hold_the_same_cells(name):
    source, committed = _cells(_source_notebook(name)), _cells(_committed(name))
    assert len(source) > 5, "the .py source was not read as a percent-format notebook"
    for index, (mine, theirs) in enumerate(zip(source, committed)):
        assert mine == theirs, (f"{name}: cell {index} differs between the .py source and the .ipynb "
                                "(run `jupytext --sync notebooks/*.py`, then re-execute): "
                                f"{mine[1][:120]!r} vs {theirs[1][:120]!r}")
    assert len(source) == len(committed), \
        f"{name}: {len(source)} cells in the .py source, {len(committed)} in the .ipynb"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_opens_with_its_question_and_ends_with_computed_findings(name):
    cells = _source_notebook(name).cells
    first, heading, last = cells[0], cells[-2], cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "first cell: a Markdown title"
    assert "?" in first.source, "the intro should state the question the notebook answers"
    assert heading.cell_type == "markdown" and heading.source.startswith(FINDINGS_TITLE), \
        f"second-to-last cell: Markdown starting with {FINDINGS_TITLE!r}"
    assert not re.search(r"\d", heading.source), "the findings' numbers must be computed, not typed into Markdown"
    assert last.cell_type == "code" and "display(Markdown(" in last.source and "print(" in last.source, \
        "last cell: code that displays the findings computed from the run and prints the run time"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_uses_only_the_public_api(name):
    for cell in _source_notebook(name).cells:
        if cell.cell_type != "code":
            continue
        for module, names in re.findall(r"^\s*from\s+([\w.]+)\s+import\s+\(?([^)\n]+)", cell.source, flags=re.M):
            if module.split(".")[0] in PACKAGES:
                private = [n.strip() for n in names.split(",") if n.strip().startswith("_")]
                assert not private and "._" not in module, f"private import: from {module} import {names}"
        assert not re.search(r"\b(?:%s)\.[\w.]*\b_[a-z]\w*" % "|".join(PACKAGES), cell.source), \
            "private attribute access"


# --- the committed run --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_outputs_and_no_absolute_paths(name):
    notebook = _committed(name)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    unexecuted = [i for i, cell in enumerate(code_cells) if cell.get("execution_count") is None]
    assert not unexecuted, f"code cells {unexecuted} were not executed: commit the notebook with its outputs"
    errors = [output.get("ename") for cell in code_cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, f"the committed run has errors: {errors}"
    assert re.search(r"\d\.\d", "".join(_output_texts(code_cells[-1]))), "the findings should state the run's numbers"
    for index, cell in enumerate(notebook.cells):
        for text in _output_texts(cell) + [cell.source]:
            for forbidden in _forbidden_strings():
                assert forbidden not in text, f"cell {index} shows {forbidden!r}: {text[:200]!r}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_images_are_palette_pngs_at_screen_size(name):
    from PIL import Image

    images = _images(_committed(name))
    assert images, "no figure among the outputs"
    for data in images:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.mode == "P", f"{image.format} {image.mode}: show figures with show()"
        assert image.width <= SCREEN_WIDTH, f"an image {image.width} px wide: larger than a screen needs"


# --- execution in small mode --------------------------------------------------------------------------

def _execute(name: str, folder: Path, env: dict[str, str], budget: float):
    """Run the notebook converted from its .py source in `folder`; the whole notebook (not each cell)
    gets `budget` seconds. The executed notebook is written there too, for inspection."""
    import nbformat
    from nbclient import NotebookClient

    notebook = _source_notebook(name)
    client = NotebookClient(notebook, timeout=int(budget), kernel_name="python3", record_timing=False,
                            startup_timeout=120, resources={"metadata": {"path": str(folder)}})
    started = time.perf_counter()
    try:
        with client.setup_kernel(env=env):
            for index, cell in enumerate(notebook.cells):
                remaining = budget - (time.perf_counter() - started)
                if remaining <= 0:
                    raise TimeoutError(f"{name}: over {budget:.0f} s before cell {index}")
                client.timeout = max(1, int(remaining))
                client.execute_cell(cell, index)
    finally:
        nbformat.write(notebook, folder / f"{name}.ipynb")
    return notebook


@pytest.fixture(scope="module")
def small_env(small_embedded) -> dict[str, str]:
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**os.environ, **threads, "NOTEBOOK_SMALL": "1", "CLIP_NEGATION_CACHE": os.environ["CLIP_NEGATION_CACHE"]}


def _check_run(notebook, name: str, root: Path) -> str:
    """What every small-mode run must show; returns the findings' text."""
    assert _images(notebook), "the run drew no figure"
    findings = "".join(_output_texts(notebook.cells[-1]))
    assert re.search(r"\d\.\d", findings) and "small build" in findings, \
        "the last cell should state the run's numbers and say which build it ran on"
    assert (root / "runs" / "notebooks" / name / "small").is_dir(), "outputs go to runs/notebooks/<name>/<build>"
    assert not list((root / "notebooks").glob("runs")), "nothing may be written beside the notebooks"
    return findings


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_in_small_mode(name, small_env, tmp_path):
    folder = tmp_path / "notebooks"  # a fresh checkout's layout: outputs go to ../runs/notebooks/
    folder.mkdir()
    notebook = _execute(name, folder, small_env, NOTEBOOK_TIMEOUT)  # raises CellExecutionError on any error
    findings = _check_run(notebook, name, tmp_path)
    if name == "03_finetune_compare":  # alone, on the small build: its own probe-layers run, which finds no plan
        assert (tmp_path / "runs" / "notebooks" / name / "small" / "probe-layers" / "layer_plan.json").is_file()
        assert "No plan" in findings and "omni_front" in findings


def test_finetune_notebook_trains_the_plan_notebook_2_wrote(small_env, tmp_path):
    """With a plan where notebook 2 writes it, notebook 3 trains its blocks (not an anchor) and no
    probe-layers run of its own."""
    from finetune.plan import LayerPlan

    name = "03_finetune_compare"
    folder = tmp_path / "notebooks"
    folder.mkdir()
    LayerPlan([0, 1, 2], train_ln_final=True, train_projection=True, rule="planted").save(
        tmp_path / "runs" / "notebooks" / "02_layer_evidence" / "small" / "layer_plan.json")
    notebook = _execute(name, folder, small_env, NOTEBOOK_TIMEOUT)
    findings = _check_run(notebook, name, tmp_path)
    assert "**The plan:**" in findings and "planted: blocks [0,1,2]" in findings
    assert not (tmp_path / "runs" / "notebooks" / name / "small" / "probe-layers").exists()
    printed = "".join(text for cell in notebook.cells for text in _output_texts(cell))
    for variant in ("| selected | 0–2 |", "| front | 0–5 |", "| back | 6–11 |", "| all | 0–11 |"):
        assert variant in printed, f"the ablation table lacks {variant!r}"
