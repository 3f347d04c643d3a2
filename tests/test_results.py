"""The README's results are written by scripts/make_results.py from the runs' JSON: none is stale."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_results_are_the_ones_the_json_gives():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_results.py"), "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_every_generated_block_has_a_renderer_and_no_number_is_typed_beside_the_blocks():
    sys.path.insert(0, str(REPO))
    from scripts.make_results import BLOCK, BLOCKS, DOCUMENTS

    names = [match["name"] for document in DOCUMENTS for match in BLOCK.finditer(document.read_text())]
    assert names and set(names) <= set(BLOCKS)
