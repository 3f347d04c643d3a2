"""Atomic file output: a run that is interrupted leaves either the old file or the new one, never half of one.

A temporary file is removed on every exit path Python sees (success, error, Ctrl-C; SIGTERM too under
the commands, which turn it into SystemExit). Only SIGKILL (or a power cut) can leave one behind; its
name carries the writer's process id (`.<name>.<pid>.<random>.tmp`), so `sweep_temporaries` can remove
the ones whose writer is gone without touching those of a writer still at work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Iterator

# a temporary file of atomic_path: .<final name>.<pid>.<random>.tmp
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    The temporary file lives in the same folder so that `os.replace` is a rename, which is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def sweep_temporaries(folder: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Remove the temporary files of atomic writes in `folder` whose writing process no longer runs
    (left by SIGKILL); return them. Files of a writer that still runs are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DuplicateKeyError(ValueError):
    """A JSON object that names a key twice: json.loads would keep the last value without a word."""


def strict_json_loads(text: str) -> Any:
    """json.loads, refusing an object that names a key twice (DuplicateKeyError): for the files a user writes
    by hand (model configs, layer plans, recipes, loss options), where `{"width": 64, ..., "width": 0}` is a
    mistake, not a choice."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DuplicateKeyError(f"key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, dataclasses and paths show up in measurement results

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch  # this module is on every command's --help path; torch is not

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def dataclass_from_dict(cls, data: Any):
    """A (nested) dataclass from its `dataclasses.asdict` form as read back from JSON: nested dataclasses rebuilt,
    lists back to tuples where the field holds a tuple. A TypeError or ValueError says what does not fit (a field
    the class does not have, an object where a value is due, a value of another type than its annotation's: a
    string where an integer is due, a number where a flag is)."""

    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
    unknown = set(data) - {item.name for item in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting(s) {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        if item.name not in data or not item.init:
            continue
        value, hint = data[item.name], hints[item.name]
        options = [hint, *typing.get_args(hint)]
        nested = next((option for option in options if dataclasses.is_dataclass(option)), None)
        if nested is not None and isinstance(value, dict):
            value = dataclass_from_dict(nested, value)
        elif nested is not None and not (value is None and type(None) in options):
            raise TypeError(f"{cls.__name__}.{item.name} must be a JSON object, got {value!r:.60}")
        elif isinstance(value, list) and any(o is tuple or typing.get_origin(o) is tuple for o in options):
            value = tuple(value)
        if nested is None and not _fits(value, hint):
            raise TypeError(f"{cls.__name__}.{item.name} must be {_described(hint)}, got {value!r:.60}")
        values[item.name] = value
    return cls(**values)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", bool: "flags", str: "strings"}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read back from JSON fits a field's annotation; annotations other than scalars, optionals and
    tuples of them (dicts, Any, ...) are not checked here."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(items) == len(value) and all(_fits(v, h) for v, h in zip(value, items))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, type(None)):
        return isinstance(value, hint)
    return True


def _described(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"a list of {_PLURALS.get(args[0], 'values')}" if len(args) == 2 and args[1] is Ellipsis else "a list"
    if args:
        return " or ".join(_described(option) for option in args)
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))
