"""Write the README's and docs/'s results from the runs' JSON: no number in them is typed by hand.

    python scripts/make_results.py --collect runs/validation runs/scope   copy the runs' JSON and figures
                                                                           into docs/results and docs/figures
    python scripts/make_results.py                                        rewrite every generated block
    python scripts/make_results.py --check                                exit 1 if a block is out of date
Either way it exits 1, naming the file, when prose beside the blocks types a result by hand.

The README and the pages of docs/ (DOCUMENTS) hold generated blocks between `<!-- results:NAME -->` and
`<!-- /results:NAME -->` (each name once across them); each
is rendered below by a function of the JSON in docs/results (which the repository keeps: small
files, the figures beside them), or of the shipped models' own metadata. The prose around the blocks
states no number of its own (`typed_results`, checked on every run).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # scripts/ is not installed: its modules import as scripts.<name>
from scripts import bench_tables, validation_blocks  # noqa: E402

RESULTS = REPO / "docs" / "results"
FIGURES = REPO / "docs" / "figures"
README = REPO / "README.md"
DOCUMENTS = (README, REPO / "docs" / "VALIDATION.md", REPO / "docs" / "PERFORMANCE.md", REPO / "docs" / "GUIDE.md")
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)
# what --collect keeps of a run folder (small JSON and Markdown; the figures are copied to docs/figures)
KEEP = ("report.json", "layer_plan.json", "ablation_summary.json", "validity.json", "selectors.json",
        "comparison.json", "evaluation.json",
        "metrics.csv", "run.json", "provenance.json", "localisation.json", "pairs.csv", "patching.csv", "agreement.csv",
        "attention.csv", "ablation.csv", "lens.csv", "steering.csv")
# a study's runs files (analysis.ablation.runs: runs.jsonl, a shard's runs.shard-K-of-N.jsonl, superseded.jsonl)
RUNS_KEPT = re.compile(r"(runs(\.shard-\d+-of-\d+)?|superseded)\.jsonl")
# figures --collect copies to docs/figures: (run folder below the collected root, file name) -> README name
FIGURES_KEPT = {("validation/default/probe/figures", "evidence.png"): "evidence-default.png",
                ("validation/default/probe/figures", "patching_scope.png"): "patching-scope-default.png",
                ("validation/default/probe/figures", "patching_negation.png"): "patching-negation-default.png",
                ("validation/default/probe/figures", "heads.png"): "heads-default.png",
                ("validation/default/probe/figures", "lens.png"): "lens-default.png",
                ("validation/default/probe/figures", "steering.png"): "steering-default.png",
                ("validation/default/ablation", "ablation.png"): "ablation-default.png",
                ("validation/default/ablation", "validity.png"): "validity-default.png",
                ("validation/late/ablation", "validity.png"): "validity-late.png",
                ("validation/seed2/ablation", "validity.png"): "validity-seed2.png",
                ("validation/depth6/ablation", "validity.png"): "validity-depth6.png",
                ("validation/default/ablation", "frontier.png"): "frontier-default.png",
                ("validation/default/finetunes/compare/figures", "comparison.png"): "finetune-change-default.png"}


# a number written the way results are: signed (+0.13), with two decimals (a ratio, a rho: 0.82) or more (0.458);
# settings may stand in prose when named just before: alpha (0.05), Python 3.10, 80 %
RESULT = re.compile(r"(?<![\w.])(?:[+-]\d*\.\d+|\d*\.\d{2,})(?!\w|\.\d)")
SETTING = re.compile(r"(?:alpha \(|Python )$")


def typed_results(text: str) -> list[str]:
    """The results typed by hand in a document's text: numbers written as results are, outside the generated blocks,
    code spans and code fences."""
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", BLOCK.sub("", text), flags=re.S))
    return [match.group() for match in RESULT.finditer(prose) if not SETTING.search(prose[:match.start()])]


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# --- blocks -------------------------------------------------------------------------------------------

def embedded_models() -> str:
    """The shipped embedded models' held-out numbers, read from their own metadata."""
    from probing.models.build import HEADLINE
    from probing.models.factory import create_model

    bundles = {name: create_model(f"embedded:{name}") for name in ("default", "small")}
    lines = ["| held-out synthetic metric | " + " | ".join(f"`embedded:{n}` ({b.name})" for n, b in bundles.items())
             + " |", "|---|" + "---:|" * len(bundles)]
    for key, label in HEADLINE:
        lines.append(f"| {label.format(n=36).replace('{c}', 'c')} | "
                     + " | ".join(_fmt(b.metrics.get(key)) for b in bundles.values()) + " |")
    lines.append("| pretraining minutes when it was built | "
                 + " | ".join(_fmt(b.metrics.get("pretraining_minutes"), 1) for b in bundles.values()) + " |")
    return "\n".join(lines)


def _report(model: str) -> dict | None:
    path = RESULTS / "validation" / model / "probe" / "report.json"
    return _json(path) if path.is_file() else None


def headline_plan() -> str:
    """The default model's plan in two sentences: what it trains and why, and how stable it is."""
    report = _report("default")
    if report is None:
        return "(not run yet: `python scripts/validation_study.py --only default`)"
    return "> " + "\n> ".join(report["summary"][:2])


def evidence_default() -> str:
    """probe-layers on the default model: the report's own sentences and its per-block table."""
    report = _report("default")
    if report is None:
        return "(not run yet: `python scripts/validation_study.py --only default`)"
    localisation = set(_localisation_sentences())  # they have their own block (localisation-default)
    sentences = list(dict.fromkeys(s for s in report["summary"] if s not in localisation))
    run = report.get("run", {})
    threads = run.get("threads", run.get("arguments", {}).get("threads"))  # older reports: the arguments
    timing = (f"\n\nThis run of `probe-layers` took {run['seconds'] / 60:.1f} min "
              f"({threads or 'default'} thread(s); the localisation included)." if run.get("seconds") else "")
    return "> " + "\n> ".join(sentences) + timing + "\n\n![evidence](docs/figures/evidence-default.png)"




def evidence_table() -> str:
    """Per model: what the selector chose, its stability, and each component's strongest block."""
    rows = ["| model | rule | selected blocks | replicates agreeing | blocks the window holds in half of them | "
            "probe (max t, block) | sensitivity | gradnorm | threshold t |", "|---|---|---|---:|---|---|---|---|---:|"]
    folders = sorted(p.parent.parent.relative_to(RESULTS / "validation").as_posix()
                     for p in (RESULTS / "validation").glob("**/probe/report.json"))
    for name in folders:
        report = _report(name)
        plan = report["plan"]
        blocks = ", ".join(map(str, plan["blocks"])) or "none"
        cells = []
        for component in ("probe", "sensitivity", "gradnorm"):
            c = report["evidence"]["components"].get(component)
            if c is None:
                cells.append("–")
                continue
            best = max(range(len(c["z"])), key=lambda b: -math.inf if math.isnan(c["z"][b]) else c["z"][b])
            z = "untested" if math.isnan(c["z"][best]) else f"{c['z'][best]:.1f}"
            cells.append(f"{z} (block {best})" + (" *" if c["significant"][best] else ""))
        critical = next(iter(report["evidence"]["components"].values()), {}).get("critical")
        usual = [b for b, share in enumerate(report["stability"]) if share >= 0.5]
        rows.append(f"| {name} | {report['decision']['rule']} | {blocks} | {report['agreement']:.0%} | "
                    f"{', '.join(map(str, usual)) or 'none'} | "
                    + " | ".join(cells) + f" | {_fmt(critical, 1)} |")
    missing = [m.name for m in validation_blocks._models() if m.name not in folders]
    note = ("\n\n\\* beyond the threshold (Bonferroni over every block and component). Replicates agreeing: of the "
            "bootstrap replicates of the evidence, the share whose window holds the plan's block (`lead`), or whose "
            "plan is exactly the plan (`window`), or that select nothing (no plan). The null towers were probed "
            "again under the `lead` rule: a null tower's replicates agree when they select nothing, and a share "
            "below 100% counts the replicates that would select something.")
    if missing:
        note += (f" Not run yet: {', '.join(missing)} (`python scripts/validation_study.py --only "
                 f"{','.join(missing)}`).")
    return "\n".join(rows) + note


def validity_sentences() -> str:
    """The validity verdict per model, said again from its numbers (validity.json) by today's wording."""
    from analysis.ablation.validity import from_json, verdict

    out = []
    for path in sorted((RESULTS / "validation").glob("*/ablation/validity.json")):
        model = path.parent.parent.name
        label = (f"**{model}** (the earlier study: held-out objects and templates only, no selectors)."
                 if validation_blocks.earlier_study(model) else f"**{model}.**")
        out.append(f"{label} " + " ".join(verdict(from_json(_json(path)))))
    return "\n\n".join(out) or "(not run yet)"


def ablation_default() -> str:
    path = RESULTS / "validation" / "default" / "ablation" / "ablation_summary.json"
    if not path.is_file():
        return "(not run yet)"
    from analysis.ablation.tables import markdown_table

    table = markdown_table(_json(path), cost=True)
    return table.split("\n", 2)[2] + "\n![ablation](docs/figures/ablation-default.png)"


def scope_recipe() -> str:
    """The scope recipe on the default model, three seeds, per held-out axis (evaluate-negation's JSON)."""
    folder = RESULTS / "scope"
    if not folder.is_dir():
        return "(not run yet: `bash scripts/scope_recipe.sh`)"
    keys = ("scope_accuracy", "ccneg_accuracy", "image_to_text_R@1_among_100", "text_to_image_R@1_among_100")
    lines = ["| run | held-out axis | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys)]
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        for axis in ("object", "template", "cue"):
            path = run / axis / "evaluation.json"
            if not path.is_file():
                continue
            sections = _json(path)["sections"]
            values = {name: entry["value"] for body in sections.values() for name, entry in body["metrics"].items()}
            lines.append(f"| {run.name} | {axis} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def recipes() -> str:
    """The recipes' settings, read from the recipe files themselves."""
    from finetune.recipe import load_recipe, recipe_names

    lines = [
        "| recipe | source | loss | trains | lr | betas, eps | weight decay | batch | length | precision | clipping |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in recipe_names():
        recipe = load_recipe(name)
        s = recipe.settings
        trains = s.get("layers", "plan")
        extras = [e for e in ("embeddings", "ln_final", "projection", "logit_scale") if s.get(f"train_{e}")]
        length = f"{s['steps']} steps" if "steps" in s else f"{s.get('epochs')} epochs"
        loss = s.get("loss", "")
        if s.get("weights"):
            loss += f" ({s['weights']})"
        if s.get("second_loss"):
            loss += f" + {s['second_loss']} on a second batch"
        trained = trains + (" + " + ", ".join(extras) if extras else "")
        lines.append(
            f"| `{name}` | {recipe.source.split(';')[0].split(',')[0]} | {loss} | {trained} "
            f"| {s.get('lr')} ({s.get('warmup_steps', 0)} warm-up, {s.get('schedule', 'cosine')}) | "
            f"{s.get('betas', '')}, {s.get('eps', '')} | {s.get('weight_decay', '')} ({s.get('decay', 'matrices')}) | "
            f"{s.get('batch_size')} | {length} | {s.get('precision', '')} | {s.get('clip_grad_norm') or 'none'} |"
        )
    return "\n".join(lines)


def benchmarks() -> str:
    """Each benchmark, how to give its file, and the published CLIP ViT-B/32 value (published.json)."""
    from analysis.evaluation.published import published_table

    how = {"ccneg": "`--ccneg FILE`", "negbench_mcq": "`--negbench-mcq FILE` (COCO, VOC2007, synthetic, MSR-VTT)",
           "negbench_retrieval": "`--negbench-retrieval FILE`", "sugarcrepe": "`--sugarcrepe DIR` or a fold's JSON",
           "valse_existence": "`--valse-existence FILE`", "negrefcocog": "`--negrefcocog FILE`",
           "coco_generated": "`--coco-instances FILE`", "image_folder": "`--image-folder DIR`",
           "synthetic": "(the model's own world)"}
    lines = ["| benchmark | by path | published (metric: CLIP ViT-B/32; fixes) |", "|---|---|---|"]
    table = published_table()
    for name, option in how.items():
        cells = []
        for (section, metric), values in table.items():
            if section.split("/")[0] != name:
                continue
            reference = [f"{p.value:.3f}" for p in values if p.reference]
            others = [f"{p.model} {p.value:.3f}" for p in values if not p.reference]
            cells.append(
                f"{section} {metric}: {', '.join(reference) or '-'}" + (f"; {', '.join(others)}" if others else "")
            )
        lines.append(f"| `{name}` | {option} | {'<br>'.join(cells) or '-'} |")
    return "\n".join(lines)


def performance() -> str:
    """The benchmarks' tables, from benchmarks/results/*.json (scripts/bench_tables.py renders them)."""
    return bench_tables.render(bench_tables.load_records())


def pipeline() -> str:
    """The CC-Neg pipeline's measured throughput and estimated wall time (benchmarks/bench_pipeline.py's record)."""
    return bench_tables.render_pipeline(bench_tables.load_records())


def _localisation_sentences() -> list[str]:
    """The localisation's sentences on the default model (none before it has run)."""
    folder = RESULTS / "validation" / "default" / "probe" / "localisation"
    if not folder.is_dir():
        return []
    from analysis.report.localisation import localisation_sentences
    from probing.measure.localise import Localisation

    return localisation_sentences(Localisation.load(folder))


def localisation_default() -> str:
    """Where the default model computes negation: the localisation's own sentences (set beside Quantmeyer's
    and Sammani's findings on real CLIP) and its figures."""
    sentences = _localisation_sentences()
    if not sentences:
        return "(not run yet)"
    text = " ".join(sentences)
    figures = [name for name in ("patching-scope-default", "patching-negation-default", "heads-default",
                                 "lens-default", "steering-default") if (FIGURES / f"{name}.png").is_file()]
    return text + "\n\n" + " ".join(f"![{name}](docs/figures/{name}.png)" for name in figures)


BLOCKS = {
    "embedded-models": embedded_models,
    "headline-plan": headline_plan,
    "evidence-default": evidence_default,
    "evidence-table": evidence_table,
    "validity-sentences": validity_sentences,
    "ablation-default": ablation_default,
    "scope-recipe": scope_recipe,
    "recipes": recipes,
    "benchmarks": benchmarks,
    "localisation-default": localisation_default,
    "performance": performance,
    "pipeline": pipeline,
    **validation_blocks.BLOCKS,
}


# --- the README --------------------------------------------------------------------------------------

def render(text: str, document: Path = README) -> str:
    """The document with every generated block rendered again (figure paths relative to the document)."""
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"{document.name} block {name!r} has no renderer in scripts/make_results.py")
        body = BLOCKS[name]().rstrip()
        if document.parent != REPO:
            body = body.replace("](docs/figures/", "](figures/")
        return f"{match.group(1)}{body}\n{match.group(4)}"

    return BLOCK.sub(fill, text)


def collect(folders: list[Path]) -> None:
    """Copy each run's small JSON into docs/results (same relative layout) and the README's figures into
    docs/figures. A study's runs files (every run's per-item outcomes, from which its validity test is computed)
    are kept gzipped beside them (RUNS_KEPT), so that the intervals can be computed again without training again
    (gunzip them into a study folder)."""
    for root in folders:
        for path in root.rglob("*"):
            if path.name in KEEP:
                target = RESULTS / root.name / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            elif RUNS_KEPT.fullmatch(path.name):
                target = RESULTS / root.name / path.relative_to(root).with_name(path.name + ".gz")
                target.parent.mkdir(parents=True, exist_ok=True)
                # mtime 0: collecting the same runs again writes the same bytes
                target.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
            key = (f"{root.name}/{path.parent.relative_to(root).as_posix()}".rstrip("/."), path.name)
            if key in FIGURES_KEPT:
                FIGURES.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, FIGURES / FIGURES_KEPT[key])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collect", nargs="+", type=Path, help="run folders to copy results from")
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated block is stale")
    args = parser.parse_args()
    if args.collect:
        collect(args.collect)
    stale = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        rendered = render(text, document)
        if rendered != text:
            stale.append(document)
            if not args.check:
                document.write_text(rendered, encoding="utf-8")
    typed = {document: typed_results(document.read_text(encoding="utf-8"))
             for document in sorted({*DOCUMENTS, *(REPO / "docs").glob("*.md")})}
    for document, numbers in typed.items():
        if numbers:
            print(f"{document.relative_to(REPO)}: result(s) typed by hand outside the generated blocks: "
                  f"{', '.join(numbers)}; let a block render them", file=sys.stderr)
    if args.check and stale:
        print(f"{', '.join(d.name for d in stale)}: generated results are out of date; run python "
              "scripts/make_results.py", file=sys.stderr)
    return 1 if (args.check and stale) or any(typed.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
