"""What every command shares: its parser, the model and run arguments, argument types, and how
errors end a run.

Exit status (every command):
    0  done
    2  bad usage, bad data or a model that cannot be loaded: one line on stderr naming the
       argument, file, row and problem (argparse errors included), never a traceback
    1  the run itself cannot support what was asked (e.g. probe-layers' measurements support no
       layer plan); what was measured is saved first

Every input is checked where it enters: numbers by the argument types below (finite, in range),
output and cache folders by `writable_folder_problem` before any work, data files by the loaders
(probing.data.reading). An error message is cut to one line of at most `MESSAGE_LIMIT` characters.

Nothing here imports torch: `--help` and argument errors stay instant. Commands import their heavy
modules after `parse_args`.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable

from probing.models.embedded import EMBEDDED, NAMES

EXIT_UNSUPPORTED = 1
EXIT_USAGE = 2
MESSAGE_LIMIT = 500  # characters of an error line; a longer message is cut (a list of a million blocks is not news)
MAX_COUNT = 2**31 - 1  # the largest count torch and numpy take everywhere (a C int)
MAX_SEED = 2**32 - 1  # numpy's seed range (torch's is wider)
MAX_THREADS = 1024  # torch starts as many threads as asked; more than this cannot help
MAX_LEARNING_RATE = 1.0  # AdamW moves each weight by about lr per step; CLIP's weights are about 0.02
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


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
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def one_line(message: object, limit: int = MESSAGE_LIMIT) -> str:
    """`message` on one line, cut to `limit` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 30] + f"... ({len(text)} characters in all)"


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


def names(text: str, known: tuple[str, ...], option: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """A comma list of names among `known`, in order; a name given twice is an error (it would run once, or
    count twice, where the user meant something else)."""
    chosen = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = list(dict.fromkeys(n for n in chosen if n not in known))
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if not chosen:
        parser.error(f"{option} is empty")
    twice = next((n for i, n in enumerate(chosen) if n in chosen[:i]), None)
    if twice is not None:
        parser.error(f"{option}: {twice} given twice")
    return chosen


def int_list(text: str, option: str, parser: argparse.ArgumentParser, *,
             kind: Callable[[str], int] = seed) -> tuple[int, ...]:
    """A comma list of integers such as '0,1,2', in order, each checked by `kind` (default: a seed, 0 .. 2**32 - 1);
    a value given twice is an error ('--seeds 0,0' would run seed 0 twice and report intervals over the copies)."""
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
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        parser.error(f"{option}: {twice} given twice")
    return tuple(values)


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


def image_workers(args: argparse.Namespace) -> int:
    """DataLoader processes that decode images: --workers, else --threads (else the CPU count), at most 8;
    none (decode in this process) for a single thread."""
    if getattr(args, "workers", None) is not None:
        return args.workers
    available = getattr(args, "threads", None) or os.cpu_count() or 1
    return 0 if available < 2 else min(available, 8)


def check_model_arguments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The model arguments make sense together (checked before anything heavy is imported)."""
    from probing.models.embedded import embedded_model, is_embedded

    if is_embedded(args.model):
        if args.pretrained:
            parser.error(f"--pretrained does not go with the embedded model ({args.model}): it ships its own weights")
        try:
            embedded_model(args.model)
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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what `sha256sum` prints); of a folder, over its files' names and digests."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path).as_posix()}|{file_sha256(child)}\n".encode())
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def toolkit_version() -> dict[str, str | None]:
    """The package version and, in a git checkout, the commit (with "+changes" when the tree is not clean)."""
    import subprocess
    from importlib import metadata

    try:
        version = metadata.version("clip-negation-probe")
    except metadata.PackageNotFoundError:
        version = None
    commit = None
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit = commit + "+changes" if commit and dirty else commit
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": version, "git_commit": commit}


def write_provenance(folder: str | os.PathLike, args: argparse.Namespace, *, name: str = "provenance.json",
                     **what) -> Path:
    """<folder>/provenance.json (`provenance_record`), written atomically."""
    from probing.io import atomic_write_json

    return atomic_write_json(Path(folder) / name, provenance_record(args, **what))


def provenance_record(args: argparse.Namespace, *, model=None,
                      data: dict[str, str | os.PathLike | None] | None = None,
                      image_roots: dict[str, str | os.PathLike | None] | None = None,
                      extra: dict | None = None) -> dict:
    """What a run folder's provenance.json holds: the command line, the toolkit's version, the model (its
    checkpoint by path, file SHA-256 and recorded weights SHA-256; a delta's base), each data file by path and
    SHA-256, the image roots and the library versions. Data files are hashed here (a few seconds per GB)."""
    import platform
    import time

    versions = {"python": platform.python_version()}
    for module in ("torch", "open_clip", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    record = {"command": [getattr(args, "prog", None) or Path(sys.argv[0]).name, *getattr(args, "argv", sys.argv[1:])],
              "cwd": str(Path.cwd()), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "toolkit": toolkit_version(), "versions": versions}
    if model is not None:
        record["model"] = _model_provenance(model)
    record["data"] = {option: None if path in (None, "synthetic") else
                      {"path": str(Path(path).resolve()), "sha256": file_sha256(path)} if Path(path).exists() else
                      {"path": str(path), "sha256": None}
                      for option, path in (data or {}).items()}
    record["image_roots"] = {option: None if root is None else str(Path(root).resolve())
                             for option, root in (image_roots or {}).items()}
    record.update(extra or {})
    return record


def _model_provenance(bundle) -> dict:
    """A ModelBundle's checkpoint by path and SHA-256, with the base of a delta checkpoint."""
    from probing.clip.loading import BASE_DIGEST_KEY, BASE_PATH_KEY, BASE_REFERENCE_KEY, checkpoint_metadata

    info = dict(bundle.info)
    checkpoint = bundle.checkpoint
    if checkpoint is not None and Path(checkpoint).is_file():
        info["checkpoint_file_sha256"] = file_sha256(checkpoint)
        if Path(checkpoint).suffix == ".safetensors":
            metadata = checkpoint_metadata(checkpoint)
            if BASE_DIGEST_KEY in metadata:
                info["base"] = {"checkpoint": metadata.get(BASE_PATH_KEY), "model": metadata.get(BASE_REFERENCE_KEY),
                                "weights_sha256": metadata[BASE_DIGEST_KEY]}
    return info


def model_base(bundle) -> dict[str, str] | None:
    """What a fine-tuned model's files record of its base (finetune.train.TrainConfig.base): the checkpoint
    file it was loaded from and, for a shipped model, its name; None for random weights (saved whole)."""
    if bundle.checkpoint is None:
        return None
    return {"path": str(Path(bundle.checkpoint).resolve()),
            "reference": bundle.label if str(bundle.label).startswith(EMBEDDED) else ""}


def say(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr (silenced by --no-progress)."""
    if not getattr(args, "no_progress", False):
        print(message, file=sys.stderr, flush=True)


def run(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`body(args)`, with the errors a user can cause turned into one line and an exit status.

    SIGTERM becomes SystemExit(143) while the body runs, so that `finally` blocks (the temporary files of
    atomic writes, probing.io) clean up as on Ctrl-C; after SIGKILL the next run sweeps them
    (probing.io.sweep_temporaries)."""
    from finetune.checkpoint import ResumeError
    from finetune.plan import PlanError
    from probing.clip.loading import ModelLoadError
    from probing.data.records import DataError

    with _sigterm_as_exit():
        try:
            return body(args)
        except (DataError, ModelLoadError, PlanError, ResumeError, UsageError) as error:
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        except Unsupported as error:
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_UNSUPPORTED


class _sigterm_as_exit:
    """Within the block, SIGTERM raises SystemExit(128 + 15) (main thread only; elsewhere a no-op)."""

    def __enter__(self):
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._exit)
        except ValueError:  # not the main thread
            pass
        return self

    @staticmethod
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
