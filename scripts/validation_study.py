"""Is the layer choice evidence? The whole validation study behind the README's section of that name.

    python scripts/validation_study.py --out runs/validation            (everything; resumable)
    python scripts/validation_study.py --out runs/validation --only default,random-tiny

For each model: `probe-layers` (evidence against 10 null models, the plan), then `ablate-layers` with
the plan at one budget: frozen, the selected plan, every window of its size, the single-block sweep and
the anchors' choices (default model only), 3 seeds (6 for `late`), with the predictive-validity test
(analysis.ablation.validity). Models:

    default      the shipped embedded model (embedded)
    seed2        the same recipe, pretraining seed 2                 (build-embedded --spec seed2)
    depth6       the same recipe, a 6-block text tower               (build-embedded --spec depth6)
    late         the control: blocks 0-5 cannot move information between tokens (dead attention), so
                 negation scope can only be learnt in blocks 6-11    (build-embedded --spec late)
    random-tiny  randomly initialised negclip-tiny towers (3 seeds): the selector must select nothing
    random-b32   randomly initialised ViT-B-32 towers (2 seeds): the same, at CLIP's real size

The selection rule and its settings are fixed before any ablation is run and are the same for every
model: no rule is fitted to the ablation it is judged on. Every step writes its own folder and is
skipped when its outputs exist, so an interrupted study continues where it stopped. Each command's
output goes to <step>/log.txt. Results are summarised by scripts/make_results.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
PROBE = ["--null-models", "10", "--threads", "1", "--no-progress"]
ABLATION = ["--loss", "mix", "--loss-kwargs",
            json.dumps({"scope_pair": 1, "clip": 1, "conclip": 0.5, "negationclip": 0, "terms": [1]}),
            "--steps", "50", "--batch-size", "64", "--lr", "3e-3", "--warmup-steps", "5", "--n-train", "2000",
            "--eval-n", "200", "--eval-classification", "144", "--threads", "1", "--no-progress"]
VARIANTS = "frozen,selected,windows,sweep,anchors"
BUILT = ("seed2", "depth6", "late")
# The control's study runs 6 seeds: with 3 its plan fell short of the 95 % target on held-out templates
# within the bootstrap noise, and the study was extended (every variant, rule and plan unchanged)
# rather than the rule changed after reading it (README, "Is the layer choice evidence?").
SEEDS = {"late": "0,1,2,3,4,5"}
DEFAULT_SEEDS = "0,1,2"


def run(command: list[str], folder: Path, done: Path) -> int:
    """Run a command unless `done` exists; its output goes to <folder>/log.txt. Returns its exit status."""
    if done.exists():
        print(f"skip (done): {' '.join(command[:3])} ... -> {folder}", flush=True)
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    print(f"run: {' '.join(command)}", flush=True)
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def built_checkpoint(spec: str, out: Path) -> str:
    """Build a variant (cached) and return its checkpoint path, read off build-embedded's output."""
    folder = out / "builds" / spec
    run([str(BIN / "build-embedded"), "--spec", spec, "--no-progress"], folder, folder / "never")
    for line in (folder / "log.txt").read_text().splitlines()[::-1]:
        if line.startswith("this build") and ": " in line:
            return line.rsplit(": ", 1)[1]
    raise SystemExit(f"build-embedded --spec {spec} failed; see {folder / 'log.txt'}")


def study(name: str, model: list[str], out: Path, *, ablate: bool = True) -> None:
    probe = out / name / "probe"
    status = run([str(BIN / "probe-layers"), *model, *PROBE, "--out", str(probe)], probe, probe / "report.json")
    if status not in (0, 1):
        raise SystemExit(f"probe-layers failed for {name}; see {probe / 'log.txt'}")
    plan = json.loads((probe / "layer_plan.json").read_text())
    if not ablate:
        return
    ablation = out / name / "ablation"
    # the anchors' variants (Omni-NegCLIP, CoN-CLIP, open_clip, norm-only) on the default model only: on the
    # other models the question is whether the evidence predicted the sweep, which needs no anchors
    variants = VARIANTS if name == "default" else VARIANTS.replace(",anchors", "")
    if not plan["blocks"]:
        variants = variants.replace("selected,windows,", "")
    run([str(BIN / "ablate-layers"), *model, "--plan", str(probe / "layer_plan.json"), "--variants", variants,
         *ABLATION, "--seeds", SEEDS.get(name, DEFAULT_SEEDS), "--out", str(ablation)],
        ablation, ablation / "ablation_summary.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/validation"))
    parser.add_argument("--only", help="comma list of models (default: all)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    wanted = lambda name: only is None or name in only  # noqa: E731
    if wanted("default"):
        study("default", ["--model", "embedded"], args.out)
    for spec in BUILT:
        if wanted(spec):
            study(spec, ["--model", "negclip-tiny-d6" if spec == "depth6" else "negclip-tiny", "--pretrained",
                         built_checkpoint(spec, args.out)], args.out)
    for seed in (1, 2, 3):
        if wanted("random-tiny"):
            study(f"random-tiny/seed{seed}", ["--model", "negclip-tiny", "--seed", str(seed)], args.out, ablate=False)
    for seed in (1, 2):
        if wanted("random-b32"):
            study(f"random-b32/seed{seed}", ["--model", "ViT-B-32", "--seed", str(seed), "--n-train", "1000",
                                             "--n-test", "300", "--measurements", "probes,sensitivity,gradnorms"],
                  args.out, ablate=False)


if __name__ == "__main__":
    main()
