"""Checks an open_clip model config before anything is built from it (`check_model_config`).

open_clip builds whatever a config says: a JSON number where an object should be fails with a
TypeError, a negative width with "Trying to create tensor with negative dimension", a zero head count
with a ZeroDivisionError, a text width that the heads do not divide with an assertion inside
torch.nn.MultiheadAttention, a mistyped key ("widht") is ignored and the default width silently
built, and a billion-wide layer exhausts the memory. Every config that reaches open_clip here (a
config file given as the model, the config derived from a Hugging Face config.json) is checked first,
and each problem is one ModelLoadError naming the file and the field ("text_cfg.heads").

What is checked
    the whole     a JSON object with embed_dim, vision_cfg and text_cfg, and no key that open_clip's
                  CLIP (or CoCa) does not take (a typo would otherwise be ignored)
    sizes         given (every config open_clip ships gives its towers' widths, heads, layers, context,
                  vocabulary, image and patch sizes: one left out would silently be open_clip's default),
                  integers (not booleans, not 1.5) in 1 .. their bound below; mlp_ratio a finite number
                  > 0 (<= MAX_MLP_RATIO); context_length >= 3 (start, one token, end)
    text tower    width divisible by heads (torch's MultiheadAttention needs it); vocab_size at least
                  the CLIP BPE vocabulary (49408) unless the config names its own Hugging Face
                  tokenizer, since open_clip's tokenizer writes ids up to 49407; eos_id and pad_id
                  inside the vocabulary
    ViT tower     width divisible by head_width (the tower builds width // head_width heads: any rest
                  would silently change the head size); patch_size <= image_size
    ResNet tower  (layers given as four numbers, open_clip's ModifiedResNet) image_size >= 32 (it
                  downsamples 32 times); head_width <= width * 32 and dividing it
    timm / HF     (vision_cfg.timm_model_name, text_cfg.hf_model_name) the tower's sizes come from
                  that library; only image_size and the key names are checked
    flags         booleans where open_clip takes a boolean; norm_kwargs / act_kwargs objects
    the total     the parameters the sizes describe, estimated, at most MAX_PARAMETERS
Keys are those of the installed open_clip's CLIPTextCfg / CLIPVisionCfg, so a newer open_clip's new
settings pass without a change here.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from typing import Any, Mapping

from open_clip.coca_model import CoCa
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from probing.clip.errors import ModelLoadError

CLIP_VOCAB_SIZE = 49408  # open_clip's (and OpenAI's) BPE vocabulary: token ids 0 .. 49407
MAX_WIDTH = 2**16  # embed_dim, widths, head widths (ViT-bigG: 1664 wide)
MAX_LAYERS = 1024  # blocks per tower (the deepest CLIP towers have 48)
MAX_CONTEXT = 2**16  # tokens of the text context (CLIP: 77)
MAX_VOCAB = 2**24
MAX_IMAGE_SIZE = 2**14  # pixels per side (CLIPs take 224 .. 448)
MAX_MLP_RATIO = 64.0
# The largest CLIP built so far has about 18 billion parameters; 20 billion float32 weights are 80 GB.
MAX_PARAMETERS = 20 * 10**9
RESNET_DOWNSAMPLING = 32  # open_clip's ModifiedResNet: stem /4, then three stages of /2

# keys the factory handles itself (custom_text picks the class, multimodal_cfg is CoCa's); cast_dtype and
# output_dict are the factory's own arguments, which a config must not set
_FACTORY_KEYS = ("custom_text", "multimodal_cfg")
_NOT_FROM_CONFIG = ("self", "cast_dtype", "output_dict", "vision_cfg", "text_cfg", "multimodal_cfg")


def check_model_config(config: Any, where: str) -> dict:
    """Return `config` if open_clip can build it as the module docstring says, else raise a
    ModelLoadError naming `where` (the file) and the field."""
    problem = _config_problem(config)
    if problem:
        raise ModelLoadError(f"model config {where}: {problem}")
    return config


def known_keys() -> dict[str, set[str]]:
    """The keys open_clip takes: at the top level, in text_cfg and in vision_cfg."""

    top = set(_FACTORY_KEYS) | {"embed_dim", "vision_cfg", "text_cfg"}
    for cls in (CLIP, CoCa):
        top |= set(inspect.signature(cls.__init__).parameters) - set(_NOT_FROM_CONFIG)
    return {"": top, "text_cfg": {f.name for f in dataclasses.fields(CLIPTextCfg)},
            "vision_cfg": {f.name for f in dataclasses.fields(CLIPVisionCfg)}}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _integer(config: Mapping, key: str, where: str, low: int, high: int, default: Any = None) -> str | None:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{where}{key} must be an integer, got {_shown(value)}"
    if value < low:
        return f"{where}{key} must be >= {low}, got {value}"
    if value > high:
        return f"{where}{key} must be <= {high}, got {_shown(value)}"
    return None


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return (f"holds {_kind(config)} ({_shown(config)}), not a JSON object with embed_dim, vision_cfg and "
                "text_cfg (an open_clip model config)")
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        return f"lacks {', '.join(missing)} (not an open_clip model config)"
    keys = known_keys()
    problem = _unknown(config, keys[""], "")
    if problem:
        return problem
    for key in ("text_cfg", "vision_cfg"):
        if not isinstance(config[key], dict):
            return f"{key} must be a JSON object, got {_kind(config[key])} ({_shown(config[key])})"
        problem = _unknown(config[key], keys[key], f"{key}.")
        if problem:
            return problem
    problem = _integer(config, "embed_dim", "", 1, MAX_WIDTH)
    if problem:
        return problem
    for key in ("quick_gelu", "custom_text", "nonscalar_logit_scale"):
        if key in config and not isinstance(config[key], bool):
            return f"{key} must be true or false, got {_shown(config[key])}"
    for key in ("init_logit_scale", "init_logit_bias"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            return f"{key} must be a finite number, got {_shown(value)}"
    if "multimodal_cfg" in config and not isinstance(config["multimodal_cfg"], dict):
        return f"multimodal_cfg must be a JSON object, got {_kind(config['multimodal_cfg'])}"
    problem = _text_problem(config["text_cfg"]) or _vision_problem(config["vision_cfg"])
    if problem:
        return problem
    parameters = estimated_parameters(config)
    if parameters > MAX_PARAMETERS:
        return (f"its sizes describe a model of about {parameters:.3g} parameters ({4 * parameters / 1e9:.3g} GB in "
                f"float32), more than {MAX_PARAMETERS:.3g}: check embed_dim, the widths, layers and vocab_size")
    return None


def _unknown(section: Mapping, known: set[str], where: str) -> str | None:
    unknown = sorted(str(key) for key in section if key not in known)
    if not unknown:
        return None

    hints = [f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, sorted(known), n=1))
             else key for key in unknown[:3]]
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return f"unknown key(s) {', '.join(where + hint for hint in hints)}{more}; open_clip would ignore them"


def _flags(section: Mapping, where: str) -> str | None:

    cls = CLIPTextCfg if where == "text_cfg." else CLIPVisionCfg
    for field in dataclasses.fields(cls):
        if field.name in section and isinstance(field.default, bool) and not isinstance(section[field.name], bool):
            return f"{where}{field.name} must be true or false, got {_shown(section[field.name])}"
        if field.name in ("norm_kwargs", "act_kwargs", "tokenizer_kwargs") and section.get(field.name) is not None \
                and not isinstance(section[field.name], dict):
            return f"{where}{field.name} must be a JSON object, got {_kind(section[field.name])}"
    return None


def _mlp_ratio(section: Mapping, where: str, width: int) -> str | None:
    value = section.get("mlp_ratio", 4.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{where}mlp_ratio must be a finite number, got {_shown(value)}"
    if not 0 < value <= MAX_MLP_RATIO:
        return f"{where}mlp_ratio must be > 0 and <= {MAX_MLP_RATIO:g}, got {value}"
    if int(width * value) < 1:
        return f"{where}mlp_ratio {value} gives an MLP of width 0 at width {width}"
    return None


def _text_problem(text: Mapping) -> str | None:

    where = "text_cfg."
    problem = _flags(text, where)
    if problem:
        return problem
    defaults = CLIPTextCfg()
    required = () if text.get("hf_model_name") else ("context_length", "vocab_size", "width", "heads", "layers")
    problem = _missing(text, required, defaults, where)
    if problem:
        return problem
    checks = [("context_length", 3, MAX_CONTEXT), ("vocab_size", 1, MAX_VOCAB)]
    if not text.get("hf_model_name"):
        checks += [("width", 1, MAX_WIDTH), ("heads", 1, MAX_WIDTH), ("layers", 1, MAX_LAYERS)]
    for key, low, high in checks:
        problem = _integer(text, key, where, low, high, getattr(defaults, key))
        if problem:
            return problem
    if text.get("hf_model_name"):
        return None
    width, heads = text.get("width", defaults.width), text.get("heads", defaults.heads)
    if width % heads:
        return f"{where}heads {heads} do not divide {where}width {width} (each head gets width / heads)"
    vocab = text.get("vocab_size", defaults.vocab_size)
    if not text.get("hf_tokenizer_name") and vocab < CLIP_VOCAB_SIZE:
        return (f"{where}vocab_size {vocab} is smaller than the CLIP tokenizer's {CLIP_VOCAB_SIZE} tokens: its ids "
                "would index past the token embedding (name a tokenizer with hf_tokenizer_name for another vocabulary)")
    for key in ("eos_id", "pad_id"):
        problem = _integer(text, key, where, 0, vocab - 1, getattr(defaults, key))
        if problem:
            return problem
    return _mlp_ratio(text, where, width)


def _missing(section: Mapping, required: tuple[str, ...], defaults: Any, where: str) -> str | None:
    """The sizes a config must give (every config open_clip ships gives them): one it leaves out would be
    built at open_clip's default without a word."""
    missing = [key for key in required if key not in section]
    if not missing:
        return None
    shown = ", ".join(f"{where}{key} (open_clip would build {getattr(defaults, key)!r})" for key in missing)
    return f"lacks {shown}"


def _image_side(vision: Mapping, where: str) -> tuple[int | None, str | None]:
    value = vision.get("image_size", 224)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            return None, f"{where}image_size must be one integer or two (height, width), got {_shown(value)}"
        for side in value:
            problem = _integer({"image_size": side}, "image_size", where, 1, MAX_IMAGE_SIZE)
            if problem:
                return None, problem
        return min(value), None
    problem = _integer(vision, "image_size", where, 1, MAX_IMAGE_SIZE, 224)
    return (None, problem) if problem else (value, None)


def _vision_problem(vision: Mapping) -> str | None:

    where = "vision_cfg."
    problem = _flags(vision, where)
    if problem:
        return problem
    side, problem = _image_side(vision, where)
    if problem:
        return problem
    defaults = CLIPVisionCfg()
    if vision.get("timm_model_name"):
        return _missing(vision, ("image_size",), defaults, where)
    layers = vision.get("layers", defaults.layers)
    resnet = isinstance(layers, (list, tuple))
    problem = _missing(vision, ("image_size", "layers", "width") + (() if resnet else ("patch_size",)), defaults,
                       where)
    if problem:
        return problem
    for key in ("width", "head_width"):
        problem = _integer(vision, key, where, 1, MAX_WIDTH, getattr(defaults, key))
        if problem:
            return problem
    width, head_width = vision.get("width", defaults.width), vision.get("head_width", defaults.head_width)
    if isinstance(layers, (list, tuple)):  # open_clip's ModifiedResNet: blocks per stage
        if len(layers) != 4:
            return f"{where}layers must be one integer (a ViT) or four (a ResNet's stages), got {_shown(layers)}"
        for stage in layers:
            problem = _integer({"layers": stage}, "layers", where, 1, MAX_LAYERS)
            if problem:
                return problem
        if side < RESNET_DOWNSAMPLING:
            return (f"{where}image_size {side} is smaller than {RESNET_DOWNSAMPLING}: the ResNet tower downsamples "
                    f"{RESNET_DOWNSAMPLING} times")
        embed = width * 32
        if head_width > embed or embed % (embed // head_width):
            return (f"{where}head_width {head_width} does not divide the ResNet's attention pool width {embed} "
                    f"({where}width x 32) into whole heads")
        return None
    problem = _integer(vision, "layers", where, 1, MAX_LAYERS, defaults.layers)
    if problem:
        return problem
    if width % head_width:
        return (f"{where}head_width {head_width} does not divide {where}width {width} (the tower builds width // "
                "head_width heads)")
    problem = _integer(vision, "patch_size", where, 1, MAX_IMAGE_SIZE, defaults.patch_size)
    if problem:
        return problem
    if vision.get("patch_size", defaults.patch_size) > side:
        return f"{where}patch_size {vision.get('patch_size', defaults.patch_size)} is larger than the image ({side})"
    dropout = vision.get("patch_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        return f"{where}patch_dropout must be a number in [0, 1), got {_shown(dropout)}"
    return _mlp_ratio(vision, where, width)


def estimated_parameters(config: Mapping) -> float:
    """About how many parameters the sizes of a checked config describe (the transformer blocks, the
    embeddings and projections; exact enough to refuse a model that could never be built)."""

    text, vision = config["text_cfg"], config["vision_cfg"]
    total = 0.0
    if not text.get("hf_model_name"):
        t = CLIPTextCfg()
        width, layers = text.get("width", t.width), text.get("layers", t.layers)
        total += layers * (4 + 2 * text.get("mlp_ratio", t.mlp_ratio)) * width**2
        total += (text.get("vocab_size", t.vocab_size) + text.get("context_length", t.context_length)) * width
        total += width * config["embed_dim"]
    if not vision.get("timm_model_name"):
        v = CLIPVisionCfg()
        width, layers = vision.get("width", v.width), vision.get("layers", v.layers)
        size = vision.get("image_size", v.image_size)
        side = max(size) if isinstance(size, (list, tuple)) else size
        if isinstance(layers, (list, tuple)):  # ResNet: stage widths width .. 8 x width, bottlenecks of 4x
            total += sum(n * 17 * (width * 2**stage) ** 2 for stage, n in enumerate(layers))
            total += (width * 32) ** 2 * 4 + width * 32 * config["embed_dim"]
        else:
            patch = vision.get("patch_size", v.patch_size)
            total += layers * (4 + 2 * vision.get("mlp_ratio", v.mlp_ratio)) * width**2
            total += (3 * patch**2 + (side // patch) ** 2 + config["embed_dim"]) * width
    return total
