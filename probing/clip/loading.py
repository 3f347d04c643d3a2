"""Load open_clip models from a name, a pretrained tag, a local checkpoint file or a config file.

Every failure a user can cause (unknown name, missing or corrupt file, shapes that do not fit the
architecture) becomes one `ModelLoadError` that says what is wrong, instead of a traceback from
inside open_clip or torch.

The QuickGELU pitfall: OpenAI's CLIP weights were trained with QuickGELU, while open_clip's plain
"ViT-B-32" config builds GELU. Loading one into the other runs without complaint and silently
loses accuracy. We detect OpenAI-style weights (pretrained tag metadata, OpenAI's checkpoint
layout, or our own checkpoint metadata) and rebuild the model with QuickGELU, with a warning.

Delta checkpoints: a fine-tuned model is saved as the tensors training changed, with its base
checkpoint recorded by path (or shipped-model name) and SHA-256 (`save_clip_checkpoint(base=...)`).
Loading one loads the base first (`resolve_base`; a missing base is a ModelLoadError naming it),
checks the base's SHA-256, applies the stored tensors and checks the whole model's SHA-256
(`apply_delta`), so `--pretrained run/model.safetensors` works like any checkpoint file.

Hugging Face checkpoints: a transformers CLIPModel folder (config.json + model.safetensors or
pytorch_model.bin), or such a weights file with its config.json beside it, given as `pretrained` or as
the model name, is converted exactly into open_clip's CLIP (probing.clip.huggingface, which says what
is recognised). Its config.json defines the architecture: a model name that builds another one is
ignored, with a warning naming the differences.
"""
from __future__ import annotations

import difflib
import json
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import open_clip
import torch
from open_clip.model import convert_to_custom_text_state_dict
from open_clip.transformer import QuickGELU
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from probing.clip import CONFIGS, huggingface
from probing.clip.compact import DIGEST_KEY, compact, expand, state_digest
from probing.clip.errors import ModelLoadError, fit_problems  # a leaf module: loading and huggingface both raise it
from probing.clip.model_config import check_model_config
from probing.io import DuplicateKeyError, atomic_path, strict_json_loads

# checkpoint metadata of a delta (save_clip_checkpoint with a base): the trained tensors only
DELTA_KEY, BASE_PATH_KEY, BASE_DIGEST_KEY, BASE_REFERENCE_KEY = "delta", "base_checkpoint", "base_sha256", "base_model"
# Keys that only OpenAI's original checkpoints carry beside the weights.
_OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str]
    openai_style: bool


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) picks CUDA when there is one; anything else must name a device this machine has
    (a ModelLoadError says why not)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelLoadError(f"unknown device {str(device)[:40]!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was asked for, but torch sees no CUDA device on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device} was asked for, but this machine has {torch.cuda.device_count()} "
                                 f"CUDA device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' was asked for, but torch sees no Apple GPU on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device} is not supported here; use auto, cpu, cuda or cuda:N")
    return device


def load_clip(
    name: str | Path,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    resolve_reference: Callable[[str], Path] | None = None,
) -> tuple[nn.Module, Callable, Callable]:
    """Return `(model, image_preprocess, tokenizer)` for an open_clip model, in eval mode.

    name: an open_clip model name ("ViT-B-32", "ViT-B-32-quickgelu", or one of this package's
        configs such as "negclip-tiny"), the path of an open_clip model config JSON file, or a Hugging
        Face CLIPModel folder (or its config.json).
    pretrained: None for random weights (a Hugging Face folder as `name`: its own weights), an
        open_clip pretrained tag (needs internet), the path of a local checkpoint (.pt/.pth/.bin or
        .safetensors), or a Hugging Face CLIPModel folder.
    resolve_reference: for a delta checkpoint whose base is named by reference ("embedded:default"), the
        function that finds that base's file (probing.models.factory passes its own); without it the base is
        looked for by its recorded path.
    """


    device = resolve_device(device)
    source = huggingface.resolve(name, pretrained)
    if source is not None:
        model, preprocess, model_name = _create_from_hugging_face(source, requested=name)
    else:
        model_name = register_model_config(name)
        if pretrained is None:
            model, preprocess = _create(model_name, quick_gelu=False)
        elif _is_file_like(pretrained):
            model, preprocess = _create_from_checkpoint(model_name, Path(pretrained), resolve_reference)
        else:
            model, preprocess = _create_from_tag(model_name, str(pretrained))
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


def register_model_config(name: str | Path) -> str:
    """Make `name` known to open_clip and return the model name to build.

    Config files (and this package's own configs) are registered under their file stem.
    """

    _register_package_configs()
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelLoadError(f"model config file {path} does not exist")
        _check_config_file(path)
        open_clip.add_model_config(path)
        return path.stem
    name = str(name)
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See open_clip.list_models()."
        if path.is_dir():  # a folder meant as a Hugging Face checkpoint, without its config
            hint = (f" A folder {name} exists here, but it has no config.json, so it is not a Hugging Face checkpoint "
                    "folder (config.json beside model.safetensors or pytorch_model.bin).")
        raise ModelLoadError(f"unknown model name {name!r}.{hint}")
    return name


_registered = False


def _register_package_configs() -> None:
    global _registered
    if not _registered:

        open_clip.add_model_config(CONFIGS)
        _registered = True


def _check_config_file(path: Path) -> None:
    """A config file open_clip can build (probing.clip.model_config says what is checked), before it is
    registered: a ModelLoadError naming the file and the field otherwise."""
    try:
        config = strict_json_loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelLoadError(f"model config file {path} is not valid JSON: {error}") from None
    except DuplicateKeyError as error:
        raise ModelLoadError(f"model config file {path}: {error}") from None
    except OSError as error:
        raise ModelLoadError(f"model config file {path} cannot be read ({error.strerror or error})") from None
    check_model_config(config, f"file {path}")


def _is_file_like(pretrained: str | Path) -> bool:
    text = str(pretrained)
    return isinstance(pretrained, Path) or "/" in text or "\\" in text or Path(text).suffix in (
        ".pt", ".pth", ".bin", ".safetensors", ".ckpt"
    )


def _create(model_name: str, *, quick_gelu: bool, **options: Any) -> tuple[nn.Module, Callable]:
    """The model with random weights; options go to open_clip (image_mean / image_std)."""

    with _quiet_random_init_warning():
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, force_quick_gelu=quick_gelu,
                                                                     **options)
    return model, preprocess


class _quiet_random_init_warning(logging.Filter):
    """Hide open_clip's "Model initialized randomly" while building a model we are about to load
    weights into (or that the user asked for without weights): it would read as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    def __enter__(self):
        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeFilter(self)


def _create_from_tag(model_name: str, tag: str) -> tuple[nn.Module, Callable]:

    tag_config = open_clip.get_pretrained_cfg(model_name, tag)
    if not tag_config:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelLoadError(
            f"{tag!r} is neither a pretrained tag of {model_name} (known: {', '.join(known) or 'none'}) "
            "nor an existing checkpoint file"
        )
    quick_gelu = bool(tag_config.get("quick_gelu", False))
    if quick_gelu and not _config_uses_quick_gelu(model_name):
        warnings.warn(
            f"pretrained tag {tag!r} was trained with QuickGELU but {model_name} builds GELU; "
            f"building {model_name} with QuickGELU instead (use '{model_name}-quickgelu' to silence this)",
            stacklevel=3,
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=tag, force_quick_gelu=quick_gelu
        )
    except Exception as error:  # download failures come as many types; say what it means here
        raise ModelLoadError(
            f"could not fetch pretrained weights {model_name}/{tag}: {error}. "
            "Without internet, pass a local checkpoint file instead."
        ) from None
    return model, preprocess


def _config_uses_quick_gelu(model_name: str) -> bool:

    return bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))


def _create_from_checkpoint(model_name: str, path: Path, resolve_reference: Callable[[str], Path] | None = None,
                            **options: Any) -> tuple[nn.Module, Callable]:
    """The model of a checkpoint file; options go to open_clip (image_mean / image_std of a Hugging Face folder)."""
    source = huggingface.resolve(model_name, path)
    if source is not None and source.convert:  # e.g. the base of a delta fine-tuned from a Hugging Face checkpoint
        model, preprocess, _ = _create_from_hugging_face(source, requested=model_name)
        return model, preprocess
    checkpoint = read_checkpoint(path)
    if checkpoint.metadata.get(DELTA_KEY) == "true":  # the trained parameters only: rebuild the base first
        base = resolve_base(path, checkpoint.metadata, resolve_reference)
        model, preprocess = _create_from_checkpoint(model_name, base, resolve_reference, **options)
        apply_delta(model, checkpoint, source=path, model_name=model_name)
        return model, preprocess
    needs_quick_gelu = checkpoint.openai_style or checkpoint.metadata.get("quick_gelu") == "true"
    if needs_quick_gelu and not _config_uses_quick_gelu(model_name):
        warnings.warn(
            f"{path} holds QuickGELU (OpenAI-style) weights but {model_name} builds GELU; "
            "building it with QuickGELU instead, which these weights need",
            stacklevel=3,
        )
    model, preprocess = _create(model_name, quick_gelu=needs_quick_gelu, **options)
    load_state_dict_checked(model, checkpoint.state_dict, source=str(path), model_name=model_name)
    return model, preprocess


def _create_from_hugging_face(source, *, requested: str | Path | None) -> tuple[nn.Module, Callable, str]:
    """The model of a probing.clip.huggingface.Source, and the open_clip name of its architecture."""

    model_name = huggingface.register(source.config)
    if requested is not None:
        _check_requested_architecture(requested, model_name, source)
    options = huggingface.preprocess_options(source)
    if source.weights and not source.convert:  # an open_clip checkpoint (whole or delta) on this architecture
        model, preprocess = _create_from_checkpoint(model_name, source.weights[0], **options)
        return model, preprocess, model_name
    model, preprocess = _create(model_name, quick_gelu=False, **options)  # the config says quick_gelu or not
    if source.weights:
        state: dict[str, torch.Tensor] = {}
        for file in source.weights:  # one file, or the shards of an index
            state.update(read_checkpoint(file).state_dict)
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        load_state_dict_checked(model, huggingface.convert(state, source, expected), source=str(source.checkpoint),
                                model_name=model_name)
    return model, preprocess, model_name


def _check_requested_architecture(requested: str | Path, model_name: str, source) -> None:
    """A Hugging Face checkpoint's config.json defines its architecture: warn when the model name the
    caller gave builds a different one (which is ignored); an unknown name is still an error."""


    config = huggingface.config_of_name(requested)
    if config is not None and config == source.config:
        return
    requested_name = huggingface.register(config) if config is not None else register_model_config(requested)
    if requested_name == model_name:
        return
    differences = huggingface.architecture_differences(open_clip.get_model_config(requested_name),
                                                       open_clip.get_model_config(model_name))
    if differences:
        warnings.warn(f"ignoring model {requested}: {source.checkpoint or source.config} is a Hugging Face "
                      f"checkpoint, whose config.json defines the architecture, and it differs from "
                      f"{requested_name} in {'; '.join(differences[:4])}"
                      + (f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""), stacklevel=4)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read weights and metadata from a .safetensors, torch.save or TorchScript file."""
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"checkpoint file {path} is empty")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if _is_torchscript(path):  # before torch.load, which would warn about the archive and then fail on it
        return _read_torchscript(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelLoadError(
            f"checkpoint file {path} is corrupt or not a PyTorch checkpoint ({type(error).__name__})"
        ) from None
    metadata: dict[str, str] = {}
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        metadata = {k: str(v) for k, v in payload.get("metadata", {}).items()}
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ModelLoadError(f"checkpoint file {path} does not hold a state dict of tensors")
    state_dict = {_strip_ddp_prefix(k): v for k, v in payload.items()}
    openai_style = any(key in state_dict for key in _OPENAI_ONLY_KEYS)
    for key in _OPENAI_ONLY_KEYS:
        state_dict.pop(key, None)
    return Checkpoint(state_dict, metadata, openai_style)


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a .safetensors checkpoint, read from its header without loading the tensors."""

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"checkpoint file {path} is corrupt or not a safetensors file ({error})") from None


def _read_safetensors(path: Path) -> Checkpoint:


    metadata = checkpoint_metadata(path)
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"checkpoint file {path} is corrupt or not a safetensors file ({error})") from None
    try:
        state_dict = expand(state_dict, metadata)  # rebuild rows stored as "unchanged since the init"
    except (KeyError, ValueError, IndexError, RuntimeError, TypeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelLoadError(f"checkpoint file {path} is damaged: its compact token embedding cannot be "
                             f"rebuilt ({type(error).__name__}: {error})") from None
    if (
        DIGEST_KEY in metadata
        and metadata.get(DELTA_KEY) != "true"
        and state_digest(state_dict) != metadata[DIGEST_KEY]
    ):
        raise ModelLoadError(f"checkpoint file {path} is damaged: its weights do not match the SHA-256 recorded "
                             "when it was saved")
    return Checkpoint(state_dict, metadata, openai_style=metadata.get("format") == "openai")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _read_torchscript(path: Path) -> Checkpoint:
    # OpenAI released CLIP as TorchScript archives; their weights need QuickGELU.
    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: these archives exist only as TorchScript
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.load.*")
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as error:
        raise ModelLoadError(f"TorchScript checkpoint {path} could not be read ({type(error).__name__})") from None
    for key in _OPENAI_ONLY_KEYS:
        state_dict.pop(key, None)
    return Checkpoint(dict(state_dict), {}, openai_style=True)


def _strip_ddp_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def load_state_dict_checked(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, model_name: str
) -> None:
    """load_state_dict(strict=True), with shape and key problems reported in one readable error."""

    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    expected = model.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and expected[key].shape != value.shape
    ]
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = fit_problems(mismatched, missing, unexpected, "not in the model")
    if problems:
        raise ModelLoadError(
            f"checkpoint {source} does not fit architecture {model_name}: " + "; ".join(problems)
        )
    check_tensor_values(state_dict, expected, source)
    model.load_state_dict(state_dict, strict=True)


def check_tensor_values(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                        source: str | Path) -> None:
    """A ModelLoadError naming `source` and the tensors when a checkpoint's tensors (already of the right
    shapes) hold NaN or infinite values, or integers where the model holds floating-point numbers:
    load_state_dict would take both without a word (casting the integers), and every feature computed from
    such weights would be NaN or wrong. A tensor the model itself holds non-finite (an attention mask) may be."""
    wrong_type = [f"{key} ({value.dtype})" for key, value in state_dict.items()
                  if key in expected and expected[key].is_floating_point() and not value.is_floating_point()]
    if wrong_type:
        raise ModelLoadError(f"checkpoint {source} holds {len(wrong_type)} tensor(s) that are not floating-point "
                             f"where the model's are: {', '.join(wrong_type[:3])}")
    non_finite = [key for key, value in state_dict.items()
                  if value.is_floating_point() and not bool(torch.isfinite(value).all())
                  and (key not in expected or bool(torch.isfinite(expected[key]).all()))]
    if non_finite:
        raise ModelLoadError(f"checkpoint {source} is damaged: {len(non_finite)} tensor(s) hold NaN or infinite "
                             f"values ({', '.join(non_finite[:3])})")


def save_clip_checkpoint(model: nn.Module, path: str | Path, *, model_name: str, compact_init: dict | None = None,
                         base: Mapping[str, str] | None = None, trained: Iterable[str] | None = None,
                         **metadata: Any) -> Path:
    """Save weights as .safetensors with metadata that `load_clip` reads back (QuickGELU included).

    The metadata records a SHA-256 of the whole state dict, checked on load. `compact_init` (a
    `probing.clip.compact.init_record`) stores that tensor as only the rows that differ from its
    portable init (see probing.clip.compact). With `base` (`base_record`: the checkpoint the model was
    loaded from, by path and SHA-256) and `trained` (the names of the tensors training changed), only
    those tensors are stored: a delta, rebuilt on load from the base (`resolve_base`, `apply_delta`).
    """


    meta = {"open_clip_model": model_name, "quick_gelu": "true" if uses_quick_gelu(model) else "false"}
    meta.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()})
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    meta[DIGEST_KEY] = state_digest(tensors)
    if base is not None:
        kept = set(trained or ())
        unknown = sorted(kept - set(tensors))
        if unknown:
            raise ValueError(f"trained tensors {unknown[:3]} are not in the model")
        tensors = {key: value for key, value in tensors.items() if key in kept}
        meta.update({DELTA_KEY: "true", BASE_PATH_KEY: str(base["path"]), BASE_DIGEST_KEY: str(base["sha256"]),
                     BASE_REFERENCE_KEY: str(base.get("reference") or "")})
    elif compact_init is not None:
        tensors, compact_meta = compact(tensors, compact_init)
        meta.update(compact_meta)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


# --- delta checkpoints: the trained tensors, and the base they apply to ----------------------------

def base_record(model: nn.Module, path: str | Path, reference: str | None = None) -> dict[str, str]:
    """What a delta checkpoint records of its base: the file's absolute path, the SHA-256 of the model's
    state as loaded from it (probing.clip.compact.state_digest), and for a shipped model its name
    ("embedded:default"), which resolves on any installation."""

    return {"path": str(Path(path).resolve()), "sha256": state_digest(model.state_dict()),
            "reference": reference or ""}


def resolve_base(delta: str | Path, metadata: Mapping[str, str],
                 resolve_reference: Callable[[str], Path] | None = None) -> Path:
    """The base checkpoint file of a delta: a model named by reference (a shipped model: "embedded:default")
    through `resolve_reference`, else the recorded path, else a file of the same name beside the delta (a run
    folder moved together with its base); a ModelLoadError naming the base and its SHA-256 when none exists."""
    reference, recorded = metadata.get(BASE_REFERENCE_KEY, ""), metadata.get(BASE_PATH_KEY, "")
    if reference and resolve_reference is not None:
        try:
            return resolve_reference(reference)
        except ModelLoadError as error:
            raise ModelLoadError(f"checkpoint file {delta} was trained from {reference!r}: {error}") from None
    candidates = [Path(recorded)] if recorded else []
    if recorded:
        candidates.append(Path(delta).parent / Path(recorded).name)
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() != Path(delta).resolve():
            return candidate
    raise ModelLoadError(f"checkpoint file {delta} holds only the tensors fine-tuning changed; its base checkpoint "
                         f"{recorded or '(not recorded)'} (SHA-256 {metadata.get(BASE_DIGEST_KEY, '?')[:16]}...) is "
                         "missing: put that file back where it was, or beside this one")


def apply_delta(model: nn.Module, checkpoint: Checkpoint, *, source: str | Path, model_name: str) -> None:
    """Load a delta's tensors into `model`, which must hold its base: the base's SHA-256 is checked before,
    the whole model's after (a ModelLoadError says which one differs)."""

    metadata = checkpoint.metadata
    if state_digest(model.state_dict()) != metadata.get(BASE_DIGEST_KEY):
        raise ModelLoadError(f"checkpoint file {source} was trained from a base whose SHA-256 is "
                             f"{metadata.get(BASE_DIGEST_KEY, '?')[:16]}..., but the base found "
                             f"({metadata.get(BASE_PATH_KEY) or metadata.get(BASE_REFERENCE_KEY)}) has other weights: "
                             "restore the original base checkpoint")
    expected = model.state_dict()
    unknown = sorted(set(checkpoint.state_dict) - set(expected))
    wrong = [f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
             for key, value in checkpoint.state_dict.items() if key in expected and expected[key].shape != value.shape]
    if unknown or wrong:
        raise ModelLoadError(f"checkpoint {source} does not fit architecture {model_name}: "
                             + "; ".join(([f"{len(unknown)} tensors are not in the model ({', '.join(unknown[:3])})"]
                                          if unknown else []) + wrong[:3]))
    check_tensor_values(checkpoint.state_dict, expected, source)
    model.load_state_dict(checkpoint.state_dict, strict=False)
    if DIGEST_KEY in metadata and state_digest(model.state_dict()) != metadata[DIGEST_KEY]:
        raise ModelLoadError(f"checkpoint file {source} is damaged: base + stored tensors do not match the SHA-256 "
                             "recorded when it was saved")


def image_size(model: nn.Module) -> int | None:
    """Side of the square images the model's image tower takes, or None if it is not square or unknown."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0] if len(set(size)) == 1 else None
    return size if isinstance(size, int) else None


def uses_quick_gelu(model: nn.Module) -> bool:

    return any(isinstance(module, QuickGELU) for module in model.modules())
