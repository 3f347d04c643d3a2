"""What every command shares: its parser, the model and run arguments, argument types, and how
errors end a run.

Exit status (every command):
    0  done
    2  bad usage, bad data or a model that cannot be loaded: one line on stderr naming the
       argument, file, row and problem (argparse errors included), never a traceback
    1  the run itself cannot support what was asked (e.g. probe-layers' measurements support no
       layer plan); what was measured is saved first

Nothing here imports torch: `--help` and argument errors stay instant. Commands import their heavy
modules after `parse_args`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from probing.vocabulary import EMBEDDED, EMBEDDED_VARIANTS

EXIT_UNSUPPORTED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A problem with what was asked for, found after parsing (one line, exit 2)."""


class Unsupported(Exception):
    """The run cannot support what was asked; its measurements are saved (one line, exit 1)."""


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the module docstring's examples keep their line breaks."""


class CommandParser(argparse.ArgumentParser):
    """argparse with errors as one line (no usage block), exit status 2, and the command's module
    docstring as description (first paragraph) and epilog (the rest)."""

    def __init__(self, prog: str, doc: str | None = None, **kwargs):
        paragraphs = (doc or "").strip().split("\n\n", 1)
        kwargs.setdefault("description", paragraphs[0])
        if len(paragraphs) > 1:
            kwargs.setdefault("epilog", paragraphs[1])
        super().__init__(prog=prog, formatter_class=Formatter, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --- argument types ----------------------------------------------------------------------------

def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer type with a floor."""
    def parse(text: str) -> int:
        value = _number(text, int, "an integer")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def names(text: str, known: tuple[str, ...], option: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """A comma list of names among `known` (repeats dropped, order kept)."""
    chosen = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in chosen if n not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if not chosen:
        parser.error(f"{option} is empty")
    return chosen


def int_list(text: str, option: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    """A comma list of integers such as '0,1,2' (repeats dropped, order kept)."""
    try:
        values = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        parser.error(f"{option} takes a comma list of integers such as '0,1,2', got {text!r}")
    if not values:
        parser.error(f"{option} is empty")
    return values


# --- shared arguments ----------------------------------------------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("model")
    variants = ", ".join(f"'{EMBEDDED}:{v}'" for v in EMBEDDED_VARIANTS if v != "default")
    group.add_argument("--model", default=EMBEDDED,
                       help=f"open_clip model name or config JSON; '{EMBEDDED}' = the small CLIP pretrained on the "
                            f"synthetic negation world that ships with this package; {variants} = its smoke-test build")
    group.add_argument("--pretrained", help="open_clip pretrained tag (needs internet) or local checkpoint file "
                                            "(not with the embedded model)")
    if device:
        group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return group


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("run")
    group.add_argument("--threads", type=positive_int,
                       help="CPU threads of torch and of the BLAS/OpenMP pools (default: the libraries' choice)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    return group


def check_model_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The model arguments make sense together (checked before anything heavy is imported)."""
    from probing.models.factory import embedded_variant, is_embedded

    if is_embedded(args.model):
        if args.pretrained:
            parser.error(f"--pretrained does not go with the embedded model ({args.model}): it ships its own weights")
        try:
            embedded_variant(args.model)
        except ValueError as error:
            parser.error(str(error))


def load_model(args: argparse.Namespace, *, seed: int = 0):
    """The `ModelBundle` of the model arguments (probing.models.factory.create_model)."""
    from probing.models.factory import create_model

    return create_model(args.model, args.pretrained, device=getattr(args, "device", "cpu"), seed=seed)


def apply_threads(args: argparse.Namespace) -> None:
    """--threads N: torch's threads and the BLAS / OpenMP pools numpy, scipy and scikit-learn use.

    The pools matter: on a machine shared with other jobs, a 2-thread OpenBLAS made every step of
    the probes' L-BFGS about 10x slower than one thread (the threads wait on each other). Pools
    already loaded are limited through threadpoolctl; scipy loads its own OpenBLAS only when first
    used, and reads the environment then.
    """
    if getattr(args, "threads", None):
        import torch
        from threadpoolctl import threadpool_limits

        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)


def say(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (silenced by --no-progress)."""
    if not getattr(args, "no_progress", False):
        print(message, file=sys.stderr, flush=True)


def run(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`body(args)`, with the errors a user can cause turned into one line and an exit status."""
    from probing.data.records import DataError
    from probing.models.loading import ModelLoadError

    from finetune.plan import PlanError

    try:
        return body(args)
    except (DataError, ModelLoadError, PlanError, UsageError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Unsupported as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_UNSUPPORTED
