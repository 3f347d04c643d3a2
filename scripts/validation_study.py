"""Is the layer choice evidence, and is it the best advice? The whole validation study (analysis.validation).

    python scripts/validation_study.py --out runs/validation            (everything; resumable)
    python scripts/validation_study.py --out runs/validation --only default,random-tiny
    python scripts/validation_study.py --out runs/validation --shard 1/2   (and --shard 2/2 beside it: shard 1 probes,
                                                                          the other waits for its plan)
    python scripts/validation_study.py --out runs/validation --finetunes   (the default model's fine-tunes, compared)
    python scripts/validation_study.py --out runs/validation --mcq-arm     (analysis.validation.MCQ_ARM trained for
                                                                          the multiple choice too; --only, --shard K/N)
    python scripts/validation_study.py --out docs/results/validation --freeze-tuning   (the rule's procedures, once)

--finetunes (after the default model's probe): the fine-tunes of analysis.validation.FINETUNES and the scope recipe
(`finetune-layers --recipe scope`), each compared with the base by `compare-checkpoints`; run it before the default
model's ablation finishes and that ablation judges the finetune_change selector too.

The embedded models it needs are built into the cache on first use (probing.models.embedded).
Results are collected by `python scripts/make_results.py --collect runs/validation`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# Before torch loads its OpenMP runtime: the study runs several processes side by side on few cores, and the
# embedded models' builds use two OpenMP threads (their weights depend on the thread count). With libgomp's
# default waiting (spinning at every barrier), a two-thread build beside one other busy process ran about 12x
# slower (0.14 against 1.7 steps a second, measured here); passive waiting changes no number, only how idle
# threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from analysis.ablation.runs import Shard
from analysis.validation import (
    MCQ_ARM,
    MODELS,
    comparison_file,
    finetune_folder,
    freeze_tuning,
    run_finetunes,
    run_mcq_arm,
    run_study,
)

# the commands a user would type: the scope recipe and the comparison run as those entry points
COMMAND = [sys.executable, "-m"]


def finetunes(out: Path) -> None:
    tuned = run_finetunes(out, log=lambda line: print(line, flush=True))
    scope = finetune_folder(out) / "scope"
    if not (scope / "model.safetensors").is_file():
        subprocess.run([*COMMAND, "analysis.cli.finetune_layers", "--recipe", "scope", "--model", "embedded:default",
                        "--seed", "0", "--device", "cpu", "--threads", "1", "--no-progress", "--no-tensorboard",
                        "--out", str(scope)], check=True)
    tuned = {"scope recipe": scope / "model.safetensors", **tuned}
    subprocess.run([*COMMAND, "analysis.cli.compare_checkpoints", "embedded:default", *map(str, tuned.values()),
                    "--names", ",".join(tuned), "--threads", "1", "--no-progress",
                    "--out", str(comparison_file(out).parent)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/validation"))
    parser.add_argument("--only", help="comma list of models (default: all): " + ", ".join(m.name for m in MODELS))
    parser.add_argument("--shard", type=Shard.parse, help="K/N: this process's share of every ablation")
    parser.add_argument("--finetunes", action="store_true", help="only the default model's fine-tunes, compared")
    parser.add_argument("--mcq-arm", action="store_true",
                        help=f"only the multiple-choice arm ({', '.join(MCQ_ARM)} trained with NegBench's MCQ loss "
                             "beside the scope recipe; analysis.validation.MCQ_ARM)")
    parser.add_argument("--freeze-tuning", action="store_true",
                        help="only apply the rule's pre-registered procedures to the development models' results "
                             "under --out and write their outcomes, once (analysis.validation.freeze_tuning)")
    args = parser.parse_args()
    if args.freeze_tuning:
        print(f"wrote {freeze_tuning(args.out)}")
        return
    if args.finetunes:
        finetunes(args.out)
        return
    only = set(args.only.split(",")) if args.only else None
    if args.mcq_arm:
        if only is not None and only - set(MCQ_ARM):
            parser.error(f"--mcq-arm --only: {', '.join(sorted(only - set(MCQ_ARM)))} not in the arm "
                         f"({', '.join(MCQ_ARM)})")
        run_mcq_arm(args.out, only=only, shard=args.shard, log=lambda line: print(line, flush=True))
        return
    run_study(args.out, only=only, shard=args.shard, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
