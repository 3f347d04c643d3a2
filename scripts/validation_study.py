"""Is the layer choice evidence, and is it the best advice? The whole validation study (analysis.validation).

    python scripts/validation_study.py --out runs/validation            (everything; resumable)
    python scripts/validation_study.py --out runs/validation --only default,random-tiny
    python scripts/validation_study.py --out runs/validation --only default --shard 1/2   (two processes)

The embedded models it needs are built into the cache on first use (probing.models.embedded).
Results are collected by `python scripts/make_results.py --collect runs/validation`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from analysis.ablation.runs import Shard
from analysis.validation import MODELS, run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/validation"))
    parser.add_argument("--only", help="comma list of models (default: all): " + ", ".join(m.name for m in MODELS))
    parser.add_argument("--shard", type=Shard.parse, help="K/N: this process's share of every ablation")
    args = parser.parse_args()
    run_study(args.out, only=set(args.only.split(",")) if args.only else None, shard=args.shard,
              log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
