"""The tutorial notebooks: each runs top to bottom on a fresh kernel (small build), and the committed
ones carry the outputs of a real run, with no absolute paths or machine names in them.

Execution: every notebook is copied alone into its own temporary folder and run there with
NOTEBOOK_SMALL=1 and the session's small embedded build (CLIP_NEGATION_CACHE, set by the
`small_embedded` fixture), so each must stand on its own; notebook 3 then writes its layer plan
itself, through probe-layers, instead of reading notebook 2's.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NAMES = ("01_activations", "02_layer_evidence", "03_finetune_compare")
FINDINGS_TITLE = "## What this run showed"
# Seconds per notebook on the small build (they take about 20-60 s on one thread of a busy 2-core machine).
NOTEBOOK_TIMEOUT = 300
PACKAGES = ("probing", "finetune", "analysis")


def _notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _output_texts(cell: dict) -> list[str]:
    """Every text an output shows (streams, text/plain, markdown, html, errors), images left out."""
    texts = []
    for output in cell.get("outputs", []):
        if "text" in output:
            texts.append(_source({"source": output["text"]}))
        for mime, value in output.get("data", {}).items():
            if mime.startswith("text/") or mime == "application/json":
                texts.append(value if isinstance(value, str) else "".join(value) if isinstance(value, list)
                             else json.dumps(value))
        if output.get("output_type") == "error":
            texts.append(" ".join(output.get("traceback", [])))
    return texts


def _images(notebook: dict) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook["cells"] if cell["cell_type"] == "code"
               for output in cell.get("outputs", []))


def _forbidden_strings() -> list[str]:
    """Absolute-path prefixes and this machine's names, none of which may show in a committed notebook."""
    strings = ["/root", "/home/", "/tmp/", "/Users/", "C:\\", str(REPO), str(Path.home())]
    host = socket.gethostname()
    if len(host) >= 4:
        strings.append(host)
    return [s for s in strings if s and s != "/"]


# --- the committed notebooks (no kernel) ------------------------------------------------------------

def test_the_three_notebooks_are_there():
    present = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert set(NAMES) <= set(present), f"missing notebooks: {sorted(set(NAMES) - set(present))}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_opens_with_its_question_and_ends_with_its_findings(name):
    cells = _notebook(NOTEBOOK_DIR / f"{name}.ipynb")["cells"]
    first, last = cells[0], cells[-1]
    assert first["cell_type"] == "markdown" and _source(first).startswith("# "), "first cell: a Markdown title"
    assert "?" in _source(first), "the intro should state the question the notebook answers"
    assert last["cell_type"] == "markdown" and _source(last).startswith(FINDINGS_TITLE), \
        f"last cell: Markdown starting with {FINDINGS_TITLE!r}"
    findings = _source(last)[len(FINDINGS_TITLE):]
    assert "filled in" not in findings and re.search(r"\d\.\d", findings), "the findings should state the run's numbers"
    before = cells[-2]
    assert before["cell_type"] == "code" and "print(" in _source(before), "a code cell that prints the key numbers"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_outputs_and_no_absolute_paths(name):
    notebook = _notebook(NOTEBOOK_DIR / f"{name}.ipynb")
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    unexecuted = [i for i, cell in enumerate(code_cells) if cell.get("execution_count") is None]
    assert not unexecuted, f"code cells {unexecuted} were not executed: commit the notebook with its outputs"
    assert _images(notebook) >= 1, "no figure among the outputs"
    errors = [output.get("ename") for cell in code_cells for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors, f"the committed run has errors: {errors}"
    for index, cell in enumerate(notebook["cells"]):
        for text in _output_texts(cell) + [_source(cell)]:
            for forbidden in _forbidden_strings():
                assert forbidden not in text, f"cell {index} shows {forbidden!r}: {text[:200]!r}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_uses_only_the_public_api(name):
    for cell in _notebook(NOTEBOOK_DIR / f"{name}.ipynb")["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        for module, names in re.findall(r"^\s*from\s+([\w.]+)\s+import\s+\(?([^)\n]+)", source, flags=re.M):
            if module.split(".")[0] in PACKAGES:
                private = [n.strip() for n in names.split(",") if n.strip().startswith("_")]
                assert not private and "._" not in module, f"private import: from {module} import {names}"
        assert not re.search(r"\b(?:%s)\.[\w.]*\b_[a-z]\w*" % "|".join(PACKAGES), source), "private attribute access"


# --- execution on the small build --------------------------------------------------------------------

def _execute(path: Path, env: dict[str, str], budget: float) -> tuple[dict, float]:
    """Run the notebook in its own folder; the whole notebook (not each cell) gets `budget` seconds."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=int(budget), kernel_name="python3", record_timing=False,
                            startup_timeout=120, resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    with client.setup_kernel(env=env):
        for index, cell in enumerate(notebook.cells):
            remaining = budget - (time.perf_counter() - started)
            if remaining <= 0:
                raise TimeoutError(f"{path.name}: over {budget:.0f} s before cell {index}")
            client.timeout = max(1, int(remaining))
            client.execute_cell(cell, index)
    nbformat.write(notebook, path)
    return notebook, time.perf_counter() - started


@pytest.fixture(scope="module")
def small_env(small_embedded) -> dict[str, str]:
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**os.environ, **threads, "NOTEBOOK_SMALL": "1", "CLIP_NEGATION_CACHE": os.environ["CLIP_NEGATION_CACHE"]}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_on_the_small_build(name, small_env, tmp_path):
    folder = tmp_path / "notebooks"  # a fresh checkout's layout: outputs go to ../runs/notebooks/
    folder.mkdir()
    path = folder / f"{name}.ipynb"
    shutil.copy(NOTEBOOK_DIR / path.name, path)
    notebook, seconds = _execute(path, small_env, NOTEBOOK_TIMEOUT)  # raises CellExecutionError on any error
    assert _images(notebook) >= 1, "the run drew no figure"
    printed = "".join(text for cell in notebook.cells[-3:] for text in _output_texts(cell))
    assert "small build" in printed, "the key-numbers cell should say which build it ran on"
    assert (tmp_path / "runs" / "notebooks" / name / "small").is_dir(), "outputs go to runs/notebooks/<name>/<build>"
    assert not list(folder.glob("runs")), "nothing may be written beside the notebooks"
