"""What every command's parser shares: the parser itself, argument types, comma lists, the model and run
argument groups, and old flag spellings kept one release as aliases (docs/CLI.md has the vocabulary).

Every input is checked where it enters: numbers by the argument types below (finite, in range), output and
cache folders by `writable_folder_problem` before any work, data files by the loaders
(probing.data.reading). Nothing here imports torch: `--help` and argument errors stay instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

from analysis.cli.execution import EXIT_USAGE, one_line
from finetune.options import LossOptionError, check_loss_options
from finetune.vocabulary import LOSS_OPTIONS, MAX_LEARNING_RATE, MAX_SEED, MIX_PARTS
from probing.models.embedded import EMBEDDED, NAMES, embedded_model, is_embedded, no_pretrained

MAX_COUNT = 2**31 - 1  # the largest count torch and numpy take everywhere (a C int)
MAX_THREADS = 1024  # torch starts as many threads as asked; more than this cannot help
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown once (not when the help text already says its default); the module docstring's examples
    keep their line breaks."""

    def _get_help_string(self, action):
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """argparse with errors as one line (no usage block), exit status 2, and the command's module
    docstring as description (first paragraph) and epilog (the rest)."""

    def __init__(self, prog: str, doc: str | None = None, **kwargs):
        paragraphs = (doc or "").strip().split("\n\n", 1)
        kwargs.setdefault("description", paragraphs[0])
        if len(paragraphs) > 1:
            kwargs.setdefault("epilog", paragraphs[1])
        super().__init__(prog=prog, formatter_class=Formatter, **kwargs)
        self.old_spellings: dict[str, tuple[str, ...]] = {}  # old flag -> its new flag's option strings (renamed)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, refusing an old spelling beside its new one; the namespace's `typed` holds the destinations
        the command line set (a recipe's or a flag's default is not typed, a flag typed with its default value is)."""
        typed = self.typed(sys.argv[1:] if args is None else list(args))
        self._one_spelling(typed)
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.typed = frozenset(action.dest for action in typed.values())
        return parsed, extras

    def typed(self, argv: list[str]) -> dict[str, argparse.Action]:
        """The flags typed in argv, each as the option string argparse reads it as (an abbreviation counts as the one
        flag it abbreviates), with its action: so that "given on the command line" means what argparse parsed."""
        actions = {option: action for action in self._actions for option in action.option_strings}
        typed = {}
        for token in argv:
            if token == "--":  # what follows is not flags
                break
            name = token.split("=", 1)[0]
            if not name.startswith("--"):
                continue
            if name in actions:
                matches = [name]
            else:
                matches = [option for option in actions if option.startswith(name)] if self.allow_abbrev else []
            if len(matches) == 1:
                typed[matches[0]] = actions[matches[0]]
        return typed

    def _one_spelling(self, typed: dict[str, argparse.Action]) -> None:
        """Refuse an old spelling given beside its new one, whatever their values (else the last would win unsaid)."""
        for old, new in self.old_spellings.items():
            if old in typed and typed.keys() & set(new):
                self.error(f"{old} is the old spelling of {new[0]}: give one of them")


def shown(text: object, limit: int = 60) -> str:
    """repr(text), cut: for messages that quote what the user typed."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


# --- argument types ----------------------------------------------------------------------------

def _number(text: str, kind: type, name: str):
    try:
        value = kind(text)
    except ValueError:  # int() also refuses more than 4300 digits this way
        raise argparse.ArgumentTypeError(f"must be {name}, got {shown(text)}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {shown(text)}")
    return value


def _integer(text: str, low: int, high: int) -> int:
    value = _number(text, int, "an integer")
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be <= {high}, got {shown(value, 30)}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, MAX_COUNT)


def non_negative_int(text: str) -> int:
    return _integer(text, 0, MAX_COUNT)


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer type with a floor."""
    def parse(text: str) -> int:
        return _integer(text, minimum, MAX_COUNT)
    parse.__name__ = f"integer >= {minimum}"
    return parse


def seed(text: str) -> int:
    """A random seed: 0 .. 2**32 - 1, the range every generator here takes (numpy refuses negative seeds)."""
    return _integer(text, 0, MAX_SEED)


def threads(text: str) -> int:
    """CPU threads: 1 .. MAX_THREADS."""
    return _integer(text, 1, MAX_THREADS)


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    return _number(text, float, "a number")


def learning_rate(text: str) -> float:
    value = positive_float(text)
    if value > MAX_LEARNING_RATE:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_LEARNING_RATE:g} (AdamW moves each weight by about lr per "
                                         f"step; CLIP's weights are about 0.02), got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def open_fraction(text: str) -> float:
    """A number in (0, 1), e.g. an interval's confidence level."""
    value = _number(text, float, "a number")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def device_name(text: str) -> str:
    """auto, cpu, mps, cuda or cuda:N (whether that device exists is checked when the model loads)."""
    if not DEVICE_PATTERN.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"unknown device {shown(text)}; use auto, cpu, cuda or cuda:N")
    return text.strip()


def retype(value, kind: Callable[[str], object], option: str, parser: argparse.ArgumentParser):
    """`value` (already parsed, e.g. by an older type or a recipe) checked again with the type `kind`."""
    if value is None:
        return None
    try:
        return kind(str(value))
    except argparse.ArgumentTypeError as error:
        parser.error(f"argument {option}: {error}")


def names(text: str, known: tuple[str, ...] | None, option: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """A comma list of names (among `known`, when given), in order; a name given twice is an error."""
    chosen = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in chosen if known is not None and n not in known]
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if not chosen:
        parser.error(f"{option} is empty")
    _no_repeats(chosen, option, parser)
    return chosen


def int_list(text: str, option: str, parser: argparse.ArgumentParser, *,
             kind: Callable[[str], int] = seed) -> tuple[int, ...]:
    """A comma list of integers such as '0,1,2', in order, each checked by `kind` (default: a seed,
    0 .. 2**32 - 1); a value given twice is an error (a seed run twice is not a second seed)."""
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            values.append(kind(part.strip()))
        except argparse.ArgumentTypeError as error:
            if not part.strip().lstrip("-").isdigit():
                parser.error(f"{option} must be a comma list of integers such as '0,1,2', got {shown(text)}")
            parser.error(f"{option}: each value {error}")
    if not values:
        parser.error(f"{option} is empty")
    _no_repeats(values, option, parser)
    return tuple(values)


def _no_repeats(values, option: str, parser: argparse.ArgumentParser) -> None:
    repeated = [str(v) for v in dict.fromkeys(values) if values.count(v) > 1]
    if repeated:
        parser.error(f"{option}: {', '.join(repeated)} given twice")


def add_data_files(group, *, uses: str, default: str) -> None:
    """A repeatable --data (real data files read as probing data, analysis.pipeline.read_benchmarks) and --data-kind;
    `uses`: what the command does with a file, `default`: what it runs on without one (see `data_files`)."""
    group.add_argument("--data", action="append",
                       help="a real data file (NegBench MCQ or retrieval CSV, VALSE existence.json, CC-Neg "
                            ".pt/.csv/.jsonl, COCO captions or instances JSON; SugarCREPE / NegRefCOCOg are refused as "
                            f"probing data): {uses}; give it more than once for a mix (default: {default})")
    group.add_argument("--data-kind", help="loader kind when it cannot be guessed from the file (every --data)")


def add_train_cues(group) -> None:
    """--train-cues: the negation cues a real file's probes train on (read with `names`)."""
    group.add_argument("--train-cues", default="no,not",
                       help="real data: negation cues the probes train on; the other cues are the held-out split")


def data_files(given: list[str] | None, parser: argparse.ArgumentParser) -> list[str]:
    """The real data files of a repeatable --data (none: the synthetic world, also when named "synthetic"); a usage
    error for a missing file, a file given twice, or "synthetic" mixed with files."""
    files = [] if given in (None, ["synthetic"]) else list(given)
    for path in files:
        if path == "synthetic":
            parser.error("--data synthetic does not mix with files: give the files only")
        if not Path(path).exists():
            parser.error(f"--data {path}: no such file")
    if len(set(files)) < len(files):
        parser.error("--data: a file is given twice")
    return files


def named_by_flag(message: str, config_type: type, parser: argparse.ArgumentParser,
                  renamed: dict[str, str] | None = None) -> str:
    """A settings check's message about one config field ("eval_n must be ...", "n_train 8 is fewer ...",
    "extras: ..."), with the flag that sets the field instead ("--eval-items must be ..."): `renamed` maps the
    fields whose flag is not the field's name with hyphens. Any other message (one whose first word merely is a
    field's name, or whose field no flag of `parser` sets) is returned as it is."""
    word, _, rest = message.partition(" ")
    field = word.rstrip(":")
    about_it = word.endswith(":") or rest.startswith("must ") or rest[:1].isdigit()
    flag = (renamed or {}).get(field, "--" + field.replace("_", "-"))
    if (not about_it or field not in {f.name for f in dataclasses.fields(config_type)}
            or flag not in parser._option_string_actions):  # argparse keeps its flags there, with no public view
        return message
    return f"{flag}{word[len(field):]} {rest}"


def writable_folder_problem(folder: str | os.PathLike, what: str) -> str | None:
    """Why files cannot be written into `folder` (created if missing), or None. Checked before any work,
    without leaving anything behind: a file is created and removed in the folder or in its nearest
    existing parent."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{what} {folder} is a file, not a folder"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{what} {folder} cannot be created: {existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        where = "" if existing == folder else f" (its parent {existing} is not writable)"
        return f"{what} {folder} is not writable{where}: {error.strerror or error}"
    too_long = [part for part in folder.parts if len(part.encode()) > 255]
    if too_long:
        return f"{what} {folder} has a name longer than 255 bytes: {shown(too_long[0])}"
    return None


def check_output_folder(folder: str | os.PathLike, option: str, parser: argparse.ArgumentParser) -> None:
    problem = writable_folder_problem(folder, option)
    if problem:
        parser.error(problem)


# --- shared arguments ----------------------------------------------------------------------------

def add_model_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("model")
    variants = ", ".join(f"'{EMBEDDED}:{v}'" for v in NAMES if v != "default")
    group.add_argument("--model", default=EMBEDDED,
                       help=f"open_clip model name or config JSON, or a Hugging Face CLIPModel folder; '{EMBEDDED}' = "
                            f"the small CLIP pretrained on the synthetic negation world that ships with this package; "
                            f"also {variants} ('small' ships, the others are built into the cache on first use)")
    group.add_argument("--pretrained", help="open_clip pretrained tag (needs internet), local checkpoint file or "
                                            "Hugging Face CLIPModel folder "
                                            "(not with the embedded model)")
    if device:
        group.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    return group


def add_run_arguments(parser: argparse.ArgumentParser, *, images: bool = True) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("run")
    group.add_argument("--threads", type=threads,
                       help="CPU threads of torch and of the BLAS/OpenMP pools (default: the libraries' choice)")
    if images:
        group.add_argument("--workers", type=non_negative_int,
                           help="processes that decode images for image features (default: --threads, else the "
                                "CPU count, at most 8; 0 or 1 thread: decode in this process)")
        group.add_argument("--no-feature-cache", action="store_true",
                           help="neither read nor write the disk cache of image features (<cache>/image-features: "
                                "$CLIP_NEGATION_CACHE or ~/.cache/clip-negation-probe)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    return group


def image_workers(workers: int | None, threads: int | None) -> int:
    """DataLoader processes that decode images: --workers, else --threads (else the CPU count), at most 8;
    none (decode in this process) for a single thread."""
    if workers is not None:
        return workers
    available = threads or os.cpu_count() or 1
    return 0 if available < 2 else min(available, 8)


def check_model_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The model arguments make sense together (checked before anything heavy is imported)."""
    if is_embedded(args.model):
        if args.pretrained:
            parser.error(no_pretrained(args.model))
        try:
            embedded_model(args.model)
        except ValueError as error:
            parser.error(str(error))


# --- old spellings ------------------------------------------------------------------------------------------

class _Renamed(argparse.Action):
    """An old spelling of a flag, kept one release: sets what the new flag sets and says what replaced it."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is now {self.replacement} (the old spelling goes in the next "
              "release)", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def renamed(parser: CommandParser, old: str, new: argparse.Action) -> None:
    """Accept the flag `old` as an alias of the action `new` (same destination, type and choices), hidden from
    --help, printing what replaced it when used; giving both is a usage error."""
    options = {"dest": new.dest, "help": argparse.SUPPRESS, "replacement": new.option_strings[0]}
    if new.nargs == 0:  # a switch
        options.update(nargs=0, const=new.const)
    else:
        options.update(type=new.type, choices=new.choices, metavar=new.metavar)
    parser.add_argument(old, action=_Renamed, **options)
    parser.old_spellings[old] = tuple(new.option_strings)  # both given: CommandParser refuses them


# --- loss options (finetune-layers, ablate-layers) -----------------------------------------------------------

LOSS_OPTION_FLAGS = ("terms", "weights", "lam", "lambda_o", "lambda_t", "margin")


def add_loss_options(group) -> None:
    """The loss options every training command takes (finetune.vocabulary.LOSS_OPTIONS says which loss takes which)."""
    group.add_argument("--terms", help="CoN-CLIP terms to use, e.g. '1' or '1,2,3' (default: all available)")
    group.add_argument("--weights", help="with --loss mix: weights such as 'scope_pair=1,clip=1'; parts not listed "
                                         f"get 0 (keys: {', '.join(MIX_PARTS)})")
    group.add_argument("--lam", type=non_negative_float, help="Omni-NegCLIP weight of the absence loss (default 1)")
    group.add_argument("--lambda-o", type=non_negative_float,
                       help="Omni-NegCLIP weight of the original-caption term (default 1)")
    group.add_argument("--lambda-t", type=non_negative_float, help="Omni-NegCLIP weight of the hinge (default 1)")
    group.add_argument("--margin", type=finite_float,
                       help="Omni-NegCLIP hinge margin m, in [-2, 2] (default 0.9, the authors' runs)")


def loss_options(args: argparse.Namespace, parser: argparse.ArgumentParser, losses) -> tuple[dict, ...]:
    """The options of each loss of `losses` (None entries: no such loss, options {}), refusing flags that none of
    them takes and values a loss cannot use (finetune.options.check_loss_options)."""
    given = {name: getattr(args, name) for name in LOSS_OPTION_FLAGS if getattr(args, name, None) is not None}
    named = [loss for loss in losses if loss]
    foreign = sorted(name for name in given if not any(name in LOSS_OPTIONS.get(loss, ()) for loss in named))
    if foreign:
        flags = ", ".join("--" + name.replace("_", "-") for name in foreign)
        parser.error(f"{flags} do(es) not apply to --loss {' / '.join(named)}")
    if "terms" in given:
        try:
            given["terms"] = [int(t) for t in str(given["terms"]).split(",")]
        except ValueError:
            parser.error(f"--terms must list term numbers such as '1,2,3', got {args.terms!r}")
        if not given["terms"] or not set(given["terms"]) <= {1, 2, 3}:
            parser.error(f"--terms must be among 1, 2, 3, got {args.terms!r}")
        twice = next((t for i, t in enumerate(given["terms"]) if t in given["terms"][:i]), None)
        if twice is not None:
            parser.error(f"--terms: {twice} given twice")
    if "weights" in given:
        given["weights"] = _mix_weights(given["weights"], parser)

    def options_of(loss: str | None) -> dict:
        options = {}
        for name in LOSS_OPTIONS.get(loss, ()) if loss else ():
            if name not in given:
                continue
            if name == "weights":
                options.update(given[name])
            else:  # the mix takes Omni-NegCLIP's options for its omni part
                options["omni_" + name if loss == "mix" and name != "terms" else name] = given[name]
        return options

    result = tuple(options_of(loss) for loss in losses)
    for loss, options in zip(losses, result):
        if loss:
            try:
                check_loss_options(loss, options)
            except LossOptionError as error:
                parser.error(str(error))
    return result


def _mix_weights(text: str, parser: argparse.ArgumentParser) -> dict[str, float]:
    """The mix's weights; a part not listed gets 0, so the command line says the whole mix."""
    weights = dict.fromkeys(MIX_PARTS, 0.0)
    seen = set()
    for item in str(text).split(","):
        name, _, value = item.partition("=")
        if name.strip() not in MIX_PARTS:
            parser.error(f"--weights: unknown loss {shown(name.strip())}; known: {', '.join(MIX_PARTS)}")
        if name.strip() in seen:
            parser.error(f"--weights: {name.strip()} given twice")
        seen.add(name.strip())
        try:
            weights[name.strip()] = non_negative_float(value)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--weights {name.strip()}: {error} (items look like 'conclip=1')")
    return weights
