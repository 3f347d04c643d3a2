"""How a command's run ends: the exit status of every command, errors as one line, SIGTERM as a clean exit,
the CPU threads, progress lines.

Exit status (every command):
    0  done
    2  bad usage, bad data or a model that cannot be loaded: one line on stderr naming the
       argument, file, row and problem (argparse errors included), never a traceback
    1  the run itself cannot support what was asked (e.g. probe-layers' measurements support no
       layer plan); what was measured is saved first

An error message is cut to one line of at most `MESSAGE_LIMIT` characters, and so is a warning while a command
runs ("<command>: warning: ...", its category named unless it is a plain UserWarning), instead of Python's
two-line form with the source line that raised it. Nothing here imports torch at import time: `--help` and
argument errors stay instant.
"""
from __future__ import annotations

import signal
import sys
import warnings
from typing import Callable

EXIT_UNSUPPORTED = 1
EXIT_USAGE = 2
MESSAGE_LIMIT = 500  # characters of an error line; a longer message is cut (a list of a million blocks is not news)


class UsageError(Exception):
    """A problem with what was asked for, found after parsing (one line, exit 2)."""


class Unsupported(Exception):
    """The run cannot support what was asked; its measurements are saved (one line, exit 1)."""


def one_line(message: object, limit: int = MESSAGE_LIMIT) -> str:
    """`message` on one line, cut to `limit` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 30] + f"... ({len(text)} characters in all)"


def run(prog: str, body: Callable[[], int]) -> int:
    """`body()`, with the errors a user can cause turned into one line and an exit status.

    SIGTERM becomes SystemExit(143) while the body runs, so that `finally` blocks (the temporary files of
    atomic writes, probing.io) clean up as on Ctrl-C; after SIGKILL the next run sweeps them
    (probing.io.sweep_temporaries)."""
    # the library's error types: importing them loads torch, which --help must not wait for
    from analysis.ablation.config import AblationError
    from analysis.planning.selection import SelectionError
    from analysis.probe_config import ConfigError
    from finetune.checkpoint import ResumeError
    from finetune.plan import PlanError
    from probing.clip.loading import ModelLoadError
    from probing.data.records import DataError

    with _sigterm_as_exit(), _one_line_warnings(prog):
        try:
            return body()
        except (DataError, ModelLoadError, PlanError, ResumeError, UsageError, ConfigError, AblationError) as error:
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        except (Unsupported, SelectionError) as error:
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            return EXIT_UNSUPPORTED


class _one_line_warnings:
    """Within the block, a warning that is shown prints as one line naming the command (which warnings show, and
    how often, is still Python's filters' choice, and a recorder such as pytest.warns still records them)."""

    def __init__(self, prog: str):
        self.prog = prog

    def __enter__(self):
        self.previous = warnings.formatwarning

        def one_line_warning(message, category, filename, lineno, line=None) -> str:
            kind = "" if category is UserWarning else f" ({category.__name__})"
            return f"{self.prog}: warning{kind}: {one_line(message)}\n"

        warnings.formatwarning = one_line_warning
        return self

    def __exit__(self, *exc):
        warnings.formatwarning = self.previous
        return False


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


def say(message: str, *, quiet: bool = False) -> None:
    """A progress line on stderr (silenced by --no-progress)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
