"""What a run folder's provenance.json holds: the command line, the toolkit's version, the model (its checkpoint by
path, file SHA-256 and recorded weights SHA-256; a delta's base), each data file by path and SHA-256, the image
roots and the library versions."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

from probing.clip.loading import BASE_DIGEST_KEY, BASE_PATH_KEY, BASE_REFERENCE_KEY, checkpoint_metadata
from probing.io import atomic_write_json
from probing.models.embedded import EMBEDDED


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what `sha256sum` prints); of a folder, over its files' names and digests."""
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
    try:
        version = metadata.version("clip-negation-probe")
    except metadata.PackageNotFoundError:
        version = None
    commit = None
    root = Path(__file__).resolve().parents[1]
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


def data_options(paths: Sequence[str | os.PathLike]) -> dict[str, str | os.PathLike | None]:
    """A repeatable --data as provenance's `data`: "--data" the first file (None: the synthetic world), "--data#2"
    and on the others."""
    return {"--data": paths[0] if paths else None, **{f"--data#{i + 1}": path for i, path in enumerate(paths) if i}}


def write_provenance(folder: str | os.PathLike, command: Sequence[str], *, name: str = "provenance.json",
                     **what) -> Path:
    """<folder>/provenance.json (`provenance_record`), written atomically."""
    return atomic_write_json(Path(folder) / name, provenance_record(command, **what))


def provenance_record(command: Sequence[str], *, model=None,
                      data: dict[str, str | os.PathLike | None] | None = None,
                      image_roots: dict[str, str | os.PathLike | None] | None = None,
                      extra: dict | None = None) -> dict:
    """What a run folder's provenance.json holds: the command line, the toolkit's version, the model (its
    checkpoint by path, file SHA-256 and recorded weights SHA-256; a delta's base), each data file by path and
    SHA-256, the image roots and the library versions. Data files are hashed here (a few seconds per GB)."""
    versions = {"python": platform.python_version()}
    for module in ("torch", "open_clip", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    record = {"command": list(command),
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


