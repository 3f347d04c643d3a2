"""The README's results are written by scripts/make_results.py from the runs' JSON: none stale, none typed by hand."""
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
    from scripts.make_results import BLOCK, BLOCKS, DOCUMENTS, typed_results

    names = [match["name"] for document in DOCUMENTS for match in BLOCK.finditer(document.read_text())]
    assert names and set(names) <= set(BLOCKS)
    # the documents themselves are checked by --check (the test above); here, what counts as typed
    assert typed_results("ahead by 0.002, and +0.13 [-0.01, +0.2]; ratio 0.82; alpha (0.05), Python 3.10, 80 %; "
                         "+0.13.") == ["0.002", "+0.13", "-0.01", "+0.2", "0.82", "+0.13"]
    # a block's body, a code span and a fence are the script's, not typed
    assert typed_results("<!-- results:x -->\n+0.5\n<!-- /results:x -->\nsee `0.25` and\n```\n-0.75\n```\n"
                         "but 0.33") == ["0.33"]


def test_check_fails_on_a_result_typed_by_hand(tmp_path, monkeypatch):
    """make_results --check exits 1 and names the file when prose beside the blocks types a result."""
    sys.path.insert(0, str(REPO))
    from scripts import make_results

    page = tmp_path / "docs" / "PAGE.md"
    page.parent.mkdir()
    page.write_text("The plan gains +0.458 on held-out objects.\n")
    monkeypatch.setattr(make_results, "REPO", tmp_path)
    monkeypatch.setattr(make_results, "DOCUMENTS", (page,))
    monkeypatch.setattr(sys, "argv", ["make_results.py", "--check"])
    assert make_results.main() == 1
    page.write_text("The plan gains most on held-out objects.\n")
    assert make_results.main() == 0


def test_the_verdicts_reachable_line_names_the_plan_the_smallest_plan_or_the_blocking_target(monkeypatch):
    """scripts/validation_blocks.reachable_line on planted validity results: a model whose plan is on every target's
    frontier within the noise, one where only a larger plan is, and one where none is because of one target."""
    sys.path.insert(0, str(REPO))
    from analysis.ablation.validity import Validity
    from scripts import validation_blocks

    def validity(target: str, undominated: list[str]) -> Validity:
        plans = {"selected": {"blocks": [0], "trainable": 10}, "layer_0": {"blocks": [0], "trainable": 10},
                 "layer_1": {"blocks": [1], "trainable": 10}, "window_0_1": {"blocks": [0, 1], "trainable": 20}}
        return Validity(target, [], [], [], {}, {}, {}, [0], 0.0, "selected", [0], 0.0, 0.0, 1.0, plans=plans,
                        undominated=undominated)

    planted = {
        "plan": {"scope": validity("scope", ["selected", "layer_0", "window_0_1"]),
                 "mcq": validity("mcq", ["selected", "layer_0", "layer_1"])},
        "larger": {"scope": validity("scope", ["layer_1", "window_0_1"]),
                   "mcq": validity("mcq", ["selected", "window_0_1"])},
        "split": {"scope": validity("scope", ["selected"]), "absence": validity("absence", ["selected"]),
                  "mcq": validity("mcq", ["layer_1"])},
    }
    monkeypatch.setattr(validation_blocks, "_validity", planted.get)
    line = validation_blocks.reachable_line(["plan", "larger"])
    assert "plan (the plan itself)" in line and "larger (not the plan; smallest: window_0_1, 20 parameters" in line
    assert "on every model some plan meets it" in line
    line = validation_blocks.reachable_line(["plan", "split"])
    assert "on split (leaving out mcq, some would) none does" in line


def test_criterion_one_counts_each_plan_compared_once(monkeypatch):
    """scripts/validation_blocks.comparisons_made on planted selector rows: three selectors that pick one block are
    one comparison, the toolkit's own row and 'same plan' rows are none; the chance count is 2.5 % of them."""
    sys.path.insert(0, str(REPO))
    from scripts import validation_blocks

    def row(target, selector, variant, verdict):
        return {"target": target, "selector": selector, "variant": variant, "verdict": verdict}

    planted = {"a": [row("scope", "toolkit", "selected", "-"), row("scope", "auto_rgn", "layer_0", "worse"),
                     row("scope", "front", "layer_0", "worse"), row("scope", "fisher", "layer_0", "worse"),
                     row("scope", "last", "layer_5", "better"), row("mcq", "auto_rgn", "layer_0", "worse"),
                     row("mcq", "last", "layer_5", "as good"), row("mcq", "cosine", "selected", "same plan")],
               "b": [row("mcq", "auto_rgn", "layer_0", "worse")] + [row("mcq", f"s{i}", f"layer_{i}", "better")
                                                                     for i in range(1, 36)]}
    monkeypatch.setattr(validation_blocks, "_rows", planted.get)
    # distinct: a/scope layer_0 (worse), layer_5; a/mcq layer_0 (worse), layer_5; b/mcq layer_0 (worse), 35 others
    assert validation_blocks.comparisons_made(["a", "b"]) == (
        "(Distinct plans: 3 worse of 40 compared, 2 of them on mcq; were every plan as good as the toolkit's, about 1 "
        "of 40 would read worse by chance at this level, more if the intervals hold less than 95 %, as percentile "
        "intervals over three seeds tend to. The comparisons share runs, so this is a guide to the count, not a test.)")


def test_the_multiple_choice_breakdown_block_counts_the_trade_off_beyond_the_noise(monkeypatch):
    """scripts/validation_blocks.mcq_breakdown on planted validity records: a model whose hybrid answers' gains run
    opposite to scope's beyond the noise (and negated answers' with them), one within the noise, one whose negated
    answers move on one block only (a point interval the ties make: not counted), and one whose record predates the
    breakdown (left out)."""
    sys.path.insert(0, str(REPO))
    from analysis.ablation.validity import BREAKDOWN, Validity
    from scripts import validation_blocks

    def part(name: str, gain: float, rho: tuple[float, float, float], gains: list[float]) -> dict:
        plans = {"selected": {"blocks": [2], "trainable": 10, "gain": gain, "low": gain - 0.1, "high": gain + 0.1}}
        return Validity(name, gains, [], [], {}, {}, {}, [2], gain, "selected", [2], gain, 0.0, 1.0, plans=plans,
                        rho_headline=rho[0], rho_headline_low=rho[1], rho_headline_high=rho[2]).to_dict()

    def record(hybrid, negative, negative_gains=(0.1, 0.2, 0.0)) -> dict:
        rhos = {"mcq_positive": (0.0, -0.5, 0.5), "mcq_negative": negative, "mcq_hybrid": hybrid}
        gains = {"mcq_positive": [0.0, 0.0, 0.1], "mcq_negative": list(negative_gains), "mcq_hybrid": [-0.1, 0.0, -0.3]}
        return {"targets": {}, "breakdown": {name: part(name, -0.3 if name == "mcq_hybrid" else 0.1, rhos[name],
                                                        gains[name]) for name in BREAKDOWN}}

    planted = {"traded": record((-0.8, -0.9, -0.6), (0.7, 0.4, 0.9)),
               "noisy": record((-0.3, -0.7, 0.2), (0.2, -0.3, 0.6)),
               "floor": record((-0.3, -0.7, 0.2), (0.48, 0.48, 0.48), negative_gains=(0.2, 0.0, 0.0)),
               "old": {"targets": {}}}
    monkeypatch.setattr(validation_blocks, "_ablated", lambda: list(planted))
    monkeypatch.setattr(validation_blocks, "_load", lambda model, name, where="ablation": planted[model])
    block = validation_blocks.mcq_breakdown()
    assert "| traded | 2 | +0.100 [+0.000, +0.200] |" in block
    assert "-0.300 [-0.400, -0.200] | -0.80 [-0.90, -0.60] |" in block
    assert "| noisy |" in block and "| floor |" in block and "| old |" not in block
    assert "On 1 of 3 models (traded) the hybrid answers' gains run opposite" in block
    assert "on 1 (traded) the negated answers' run with them" in block


def test_the_multiple_choice_arm_block_sets_each_recipe_s_row_from_its_own_folder(monkeypatch):
    """scripts/validation_blocks.mcq_arm on planted records: per model, a row for the scope recipe (ablation/) and one
    for the arm (ablation_mcq/), each with its own gains, and the baselines the plan trails ("worse": the plan is
    worse) or beats ("better") on the multiple choice; a model whose arm has not run is left out."""
    sys.path.insert(0, str(REPO))
    from analysis.ablation.validity import BREAKDOWN, Validity
    from analysis.validation import MCQ_ARM, MCQ_ARM_FOLDER
    from scripts import validation_blocks

    def validity(name: str, gain: float) -> dict:
        plans = {"selected": {"blocks": [6], "trainable": 10, "gain": gain, "low": gain - 0.05, "high": gain + 0.05}}
        return Validity(name, [], [], [], {}, {}, {}, [6], gain, "selected", [6], gain, 0.0, 1.0, plans=plans,
                        rho_headline=-0.5, rho_headline_low=-0.7, rho_headline_high=-0.1).to_dict()

    def folder(mcq: float, verdict: str) -> dict:
        return {"validity.json": {"targets": {"scope": validity("scope", 0.5), "mcq": validity("mcq", mcq)},
                                  "breakdown": {name: validity(name, mcq / 2) for name in BREAKDOWN}},
                "selectors.json": {"rows": [{"target": "mcq", "selector": "front", "verdict": verdict},
                                            {"target": "mcq", "selector": "last", "verdict": "as good"},
                                            {"target": "scope", "selector": "last", "verdict": "worse"}]}}

    first, second = MCQ_ARM[:2]
    planted = {(first, "ablation"): folder(-0.2, "worse"), (first, MCQ_ARM_FOLDER): folder(0.1, "better"),
               (second, "ablation"): folder(-0.1, "worse")}  # the second model's arm has not run
    monkeypatch.setattr(validation_blocks, "_load",
                        lambda model, name, where="ablation": planted.get((model, where), {}).get(name))
    block = validation_blocks.mcq_arm()
    rows = [line for line in block.splitlines() if line.startswith(f"| {first} |")]
    assert len(rows) == 2 and not any(line.startswith(f"| {second} |") for line in block.splitlines())
    assert "| the scope recipe | +0.500 [+0.450, +0.550] | -0.200 [-0.250, -0.150] |" in rows[0]
    assert rows[0].endswith("| front / none |")  # the plan trails the front block there
    assert "+ NegBench's MCQ loss" in rows[1] and "| +0.100 [+0.050, +0.150] |" in rows[1]
    assert rows[1].endswith("| none / front |")  # and beats it when the multiple choice is trained


def test_collect_keeps_a_studys_runs_files_gzipped_and_the_same_bytes_each_time(tmp_path, monkeypatch):
    """The runs files hold every run's per-item outcomes, from which the intervals are computed: --collect keeps
    them (gzipped, reproducibly) beside the small JSON, and nothing else of the folder that KEEP does not name."""
    import gzip

    from scripts import make_results

    monkeypatch.setattr(make_results, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(make_results, "FIGURES", tmp_path / "figures")
    study = tmp_path / "runs" / "validation" / "m" / "ablation"
    study.mkdir(parents=True)
    files = {"runs.jsonl": '{"variant": "selected", "seed": 0}\n', "runs.shard-2-of-2.jsonl": '{"seed": 1}\n',
             "superseded.jsonl": '{"seed": 2}\n', "validity.json": "{}", "notes.jsonl": "{}\n",
             "runs.jsonl.tmp": "partial"}
    for name, text in files.items():
        (study / name).write_text(text, encoding="utf-8")
    make_results.collect([tmp_path / "runs" / "validation"])
    kept = tmp_path / "results" / "validation" / "m" / "ablation"
    assert sorted(p.name for p in kept.iterdir()) == ["runs.jsonl.gz", "runs.shard-2-of-2.jsonl.gz",
                                                      "superseded.jsonl.gz", "validity.json"]
    for name in ("runs.jsonl", "runs.shard-2-of-2.jsonl", "superseded.jsonl"):
        assert gzip.decompress((kept / f"{name}.gz").read_bytes()).decode() == files[name]
    first = (kept / "runs.jsonl.gz").read_bytes()
    make_results.collect([tmp_path / "runs" / "validation"])
    assert (kept / "runs.jsonl.gz").read_bytes() == first

