"""Hugging Face `transformers` CLIP checkpoints, converted exactly into open_clip's `CLIP`.

Many released CLIP fine-tunes ship in transformers' format: a folder that `CLIPModel.save_pretrained`
wrote, with config.json and model.safetensors (or pytorch_model.bin, or shards listed in a
*.index.json). This module recognises such a checkpoint, derives the open_clip model config from its
config.json and renames every tensor, so that the rest of the toolkit (TextTower, HookedCLIPText,
fine-tuning, the delta checkpoints) sees the ordinary open_clip `CLIP` it knows. Nothing is
approximated: the converted model computes what transformers' CLIPModel computes
(tests/test_huggingface.py checks text and image features and every layer's residual stream against
transformers itself).

What is recognised (`resolve(name, pretrained)`; load_clip and create_model ask it first)
    pretrained = a folder holding config.json              that folder's config and weights
    pretrained = a weights file with transformers' names   those weights, with the config.json beside them,
                 (text_model.*, vision_model.*)            else the Hugging Face config given as `name`
    pretrained = a shard index (*.index.json)              its shards, with the config.json beside it
    name = such a folder, pretrained None                  the folder's config and weights
    name = such a folder or its config.json, pretrained    the architecture from that config, the weights
           an open_clip checkpoint                         from the file (e.g. a model fine-tuned from it,
                                                           saved whole or as a delta on its weights)
    name = a config.json, pretrained None                  the architecture only, random weights
The architecture always comes from the checkpoint's config.json: a `name` that is an open_clip model
(a name or config file) and builds something else is ignored, with a warning that names the
differences (load_clip). A config.json beside the weights wins over one given as `name`.

Config (transformers' CLIPConfig -> open_clip model config; registered under `hf-clip-<hash>`)
    projection_dim                                -> embed_dim
    text_config.max_position_embeddings           -> text_cfg.context_length
    text_config.vocab_size                        -> text_cfg.vocab_size (must be 49408, see Tokenizer)
    text_config.hidden_size / num_attention_heads -> text_cfg.width / heads
    text_config.num_hidden_layers                 -> text_cfg.layers
    intermediate_size / hidden_size               -> mlp_ratio (both towers; exact: open_clip's MLP width is
                                                     int(width * mlp_ratio))
    vision_config.image_size / patch_size         -> vision_cfg.image_size / patch_size
    vision_config.hidden_size / num_hidden_layers -> vision_cfg.width / layers
    hidden_size / num_attention_heads (vision)    -> vision_cfg.head_width
    hidden_act "quick_gelu" (both towers)         -> quick_gelu true; "gelu" (both) -> open_clip's GELU;
                                                     anything else, or a different one per tower, is refused
    layer_norm_eps (each tower)                   -> {text,vision}_cfg.norm_kwargs.eps when not 1e-5
The config is read by transformers' CLIPConfig, not by hand: save_pretrained omits values equal to
transformers' defaults, which only the config class knows. That is the one use of transformers here,
and why it is an optional dependency (the `hf` extra); the weights are read with safetensors /
torch.load(weights_only=True). Image preprocessing takes image_mean / image_std from a
preprocessor_config.json beside config.json when there is one (transformers' CLIPImageProcessor,
like open_clip, otherwise uses OpenAI's).

Tensors: the tables below (TEXT_TOWER, VISION_TOWER, ENCODER_LAYER, ATTENTION_INPUTS, PROJECTIONS) map
every transformers name (transformers/models/clip/modeling_clip.py: CLIPModel, CLIPTextTransformer,
CLIPVisionTransformer, CLIPEncoderLayer, CLIPAttention, CLIPMLP) to its open_clip name (open_clip/model.py
CLIP, which holds the text tower's modules itself; transformer.py VisionTransformer and
ResidualAttentionBlock). Checkpoint tensors no rule asks for, tensors a rule asks for that the
checkpoint lacks, and shapes that do not fit the config are each one ModelLoadError naming the file.

Tokenizer: transformers' CLIPTokenizer uses the same BPE as open_clip (49408 tokens, <start_of_text>
49406, <end_of_text> 49407), so open_clip's tokenizer at the config's context length gives the ids the
checkpoint was trained with. transformers pools the text at the first <end_of_text> (or at the largest
id, for configs with the legacy eos_token_id 2), open_clip at the largest id: the same position for
these ids. A checkpoint with another vocab_size (or eos_token_id) was trained with another tokenizer,
which open_clip's does not fit: it is refused.

Only full CLIPModel checkpoints convert: open_clip's CLIP always has both towers and their
projections, so a CLIPTextModel / CLIPTextModelWithProjection / CLIPVisionModel checkpoint (model_type
"clip_text_model" / "clip_vision_model") is refused with a message that says so.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors import SafetensorError, safe_open

from probing.cache import cache_dir
from probing.clip.errors import ModelLoadError, fit_problems
from probing.clip.model_config import MAX_CONTEXT, MAX_LAYERS, MAX_MLP_RATIO, MAX_VOCAB, MAX_WIDTH, check_model_config
from probing.io import DuplicateKeyError, atomic_path, strict_json_loads

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # transformers' names, in the order it prefers them
INDEX_SUFFIX = ".index.json"  # model.safetensors.index.json / pytorch_model.bin.index.json: sharded weights
INSTALL_HINT = "pip install 'clip-negation-probe[hf]'"
NAME_PREFIX = "hf-clip-"

CLIP_VOCAB_SIZE = 49408  # open_clip's (and OpenAI's) BPE vocabulary
EOT_ID, LEGACY_EOS_ID = 49407, 2  # <end_of_text>; the eos_token_id configs saved before transformers PR #24773
OPEN_CLIP_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which open_clip builds with
TOWER_ONLY = {"clip_text_model": "text", "clip_vision_model": "image"}

# --- the tensor tables ---------------------------------------------------------------------------
# transformers' CLIPTextTransformer (text_model.*) -> open_clip's CLIP, which holds the text tower's modules
TEXT_TOWER = {
    "embeddings.token_embedding.weight": "token_embedding.weight",  # nn.Embedding [vocab, width]
    "embeddings.position_embedding.weight": "positional_embedding",  # nn.Embedding -> Parameter [context, width]
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
# transformers' CLIPVisionTransformer (vision_model.*) -> open_clip's VisionTransformer (visual.*)
VISION_TOWER = {
    "embeddings.class_embedding": "class_embedding",  # [width]
    "embeddings.patch_embedding.weight": "conv1.weight",  # Conv2d(3, width, patch, stride=patch, bias=False)
    "embeddings.position_embedding.weight": "positional_embedding",  # nn.Embedding -> Parameter [1 + patches, width]
    "pre_layrnorm.weight": "ln_pre.weight",  # (sic: transformers' spelling)
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",  # transformers applies it to the class token, open_clip to
    "post_layernorm.bias": "ln_post.bias",  # every token before taking the class token: the same numbers
}
# one CLIPEncoderLayer (encoder.layers.{i}.*) -> one ResidualAttentionBlock (transformer.resblocks.{i}.*);
# each name stands for its .weight and .bias (Linear and LayerNorm alike)
ENCODER_LAYER = {
    "layer_norm1": "ln_1",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
# CLIPAttention's three projections -> nn.MultiheadAttention's packed in_proj_weight / in_proj_bias, rows q | k | v
ATTENTION_INPUTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
# CLIPModel's projections are Linear(width, embed, bias=False), weight [embed, width], applied as x @ W.T;
# open_clip's are Parameters [width, embed], applied as x @ P: P = W.T
PROJECTIONS = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
SCALARS = {"logit_scale": "logit_scale"}  # both hold log(1 / temperature)
# index buffers (arange) that transformers saved before it made them non-persistent; nothing to convert
IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


@dataclass(frozen=True)
class Rule:
    """One open_clip tensor and the transformers tensors it is made of."""

    target: str
    sources: tuple[str, ...]
    how: str = "copy"  # "copy", "transpose" (a projection) or "concat" (q, k, v stacked along rows)


def _encoder_rules(hf_prefix: str, target_prefix: str, layers: int) -> list[Rule]:
    rules = []
    for layer in range(layers):
        hf, target = f"{hf_prefix}encoder.layers.{layer}.", f"{target_prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            rules.append(Rule(f"{target}attn.in_proj_{kind}", tuple(f"{hf}{p}.{kind}" for p in ATTENTION_INPUTS),
                              "concat"))
            rules += [Rule(f"{target}{ours}.{kind}", (f"{hf}{theirs}.{kind}",))
                      for theirs, ours in ENCODER_LAYER.items()]
    return rules


def text_tower_rules(layers: int) -> list[Rule]:
    """text_model.* -> the text tower's tensors on open_clip's CLIP itself."""
    return ([Rule(ours, (f"text_model.{theirs}",)) for theirs, ours in TEXT_TOWER.items()]
            + _encoder_rules("text_model.", "", layers))


def vision_tower_rules(layers: int) -> list[Rule]:
    """vision_model.* -> visual.*"""
    return ([Rule(f"visual.{ours}", (f"vision_model.{theirs}",)) for theirs, ours in VISION_TOWER.items()]
            + _encoder_rules("vision_model.", "visual.", layers))


def conversion_rules(config: Any) -> list[Rule]:
    """Every tensor of open_clip's CLIP for a transformers CLIPConfig, and where it comes from."""
    return (text_tower_rules(config.text_config.num_hidden_layers)
            + vision_tower_rules(config.vision_config.num_hidden_layers)
            + [Rule(ours, (theirs,), "transpose") for theirs, ours in PROJECTIONS.items()]
            + [Rule(ours, (theirs,)) for theirs, ours in SCALARS.items()])


def _checkpoint_shape(rule: Rule, target_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape each source tensor of `rule` must have for the target to get `target_shape`."""
    if rule.how == "transpose":
        return tuple(reversed(target_shape))
    if rule.how == "concat":
        return (target_shape[0] // len(rule.sources), *target_shape[1:])
    return tuple(target_shape)


def _apply(rule: Rule, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    tensors = [state[name] for name in rule.sources]
    if rule.how == "transpose":
        return tensors[0].T.contiguous()
    if rule.how == "concat":
        return torch.cat(tensors, dim=0)
    return tensors[0]


def convert(state: Mapping[str, torch.Tensor], source: "Source",
            expected: Mapping[str, Iterable[int]]) -> dict[str, torch.Tensor]:
    """The open_clip state dict of a transformers CLIPModel state dict.

    expected: the open_clip model's tensor shapes (from the model built for the config); a checkpoint
    tensor of another shape, a missing one or one no rule asks for is a ModelLoadError naming it."""
    rules = conversion_rules(read_config(source.config))
    wanted = {name for rule in rules for name in rule.sources}
    missing = sorted(wanted - set(state))
    unknown = sorted(set(state) - wanted - set(IGNORED))
    wrong = []
    for rule in rules:
        shape = _checkpoint_shape(rule, tuple(expected[rule.target]))
        wrong += [f"{name}: checkpoint {tuple(state[name].shape)} vs config {shape}"
                  for name in rule.sources if name in state and tuple(state[name].shape) != shape]
    problems = fit_problems(wrong, missing, unknown, "not part of a CLIPModel")
    if problems:
        raise ModelLoadError(f"Hugging Face checkpoint {source.checkpoint} does not fit its config "
                             f"{source.config}: " + "; ".join(problems))
    return {rule.target: _apply(rule, state) for rule in rules}


# --- the config ----------------------------------------------------------------------------------

def read_config(path: Path) -> Any:
    """transformers' CLIPConfig of a config.json (with transformers' defaults for what the file omits);
    a ModelLoadError for a config that is not a full CLIPModel's, or without transformers installed."""
    raw = _read_json(path)
    kind = _model_type(raw)
    if kind in TOWER_ONLY:
        architecture = ", ".join(raw.get("architectures") or []) or kind
        raise ModelLoadError(f"{path}: a {architecture} checkpoint (model_type {kind!r}) holds only the "
                             f"{TOWER_ONLY[kind]} tower, but the toolkit needs a full CLIPModel (both towers and "
                             "their projections): load the CLIPModel it was taken from")
    if kind != "clip":
        raise ModelLoadError(f"{path}: model_type {kind!r} is not a CLIP model (a transformers CLIPModel "
                             "checkpoint has model_type 'clip')")
    try:
        from transformers import CLIPConfig  # optional dependency (and slow to import): only for these checkpoints
    except ImportError:
        raise ModelLoadError(f"{path} belongs to a Hugging Face CLIP checkpoint, which needs the optional "
                             f"dependency transformers: {INSTALL_HINT}") from None
    for tower in HF_SIZES:  # the sizes the file gives, before transformers computes with them (a zero head count
        if tower in raw and not isinstance(raw[tower], dict):  # divides by zero inside CLIPConfig)
            raise ModelLoadError(f"{path}: {tower} must be a JSON object, got {str(raw[tower])[:40]!r}")
    written = _size_problems(raw, present_only=True)
    if written:
        raise ModelLoadError(f"{path}: " + "; ".join(written))
    try:
        return CLIPConfig.from_dict(raw)
    except Exception as error:  # transformers validates in many ways; one line says what it found
        raise ModelLoadError(f"{path}: transformers cannot read this CLIP config "
                             f"({type(error).__name__}: {_one_line(error)})") from None


def open_clip_config(config: Any, path: Path) -> dict:
    """The open_clip model config of a transformers CLIPConfig (see the module docstring); a
    ModelLoadError naming `path` for a config open_clip cannot build exactly."""
    text, vision = config.text_config, config.vision_config
    sizes = _size_problems(config)
    if sizes:  # before any arithmetic on them (a zero head count would divide by zero)
        raise ModelLoadError(f"{path}: " + "; ".join(sizes))
    problems = []
    if text.vocab_size != CLIP_VOCAB_SIZE:
        problems.append(f"vocab_size {text.vocab_size} is not CLIP's BPE vocabulary ({CLIP_VOCAB_SIZE}): the "
                        "checkpoint was trained with another tokenizer, which open_clip's does not fit")
    if getattr(text, "eos_token_id", EOT_ID) not in (EOT_ID, LEGACY_EOS_ID):
        problems.append(f"eos_token_id {text.eos_token_id} is not CLIP's <end_of_text> ({EOT_ID}): the text "
                        "would be pooled at a token open_clip's tokenizer does not write")
    activations = {text.hidden_act, vision.hidden_act}
    if len(activations) != 1 or not activations <= {"quick_gelu", "gelu"}:
        problems.append(f"hidden_act {text.hidden_act!r} (text) / {vision.hidden_act!r} (vision): open_clip builds "
                        "'quick_gelu' or 'gelu', the same in both towers")
    if getattr(vision, "num_channels", 3) != 3:
        problems.append(f"num_channels {vision.num_channels}: open_clip's image tower takes RGB images")
    for tower, cfg in (("text", text), ("vision", vision)):
        if cfg.hidden_size % cfg.num_attention_heads:
            problems.append(f"{tower} hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads "
                            f"{cfg.num_attention_heads}")
    if not isinstance(vision.image_size, int) or not isinstance(vision.patch_size, int):
        problems.append(f"image_size {vision.image_size!r} / patch_size {vision.patch_size!r}: square sizes "
                        "(one integer each) only")
    if problems:
        raise ModelLoadError(f"{path}: this CLIP config cannot be built exactly by open_clip: " + "; ".join(problems))
    text_cfg = {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size,
                "width": text.hidden_size, "heads": text.num_attention_heads, "layers": text.num_hidden_layers,
                "mlp_ratio": _mlp_ratio(text)}
    vision_cfg = {"image_size": vision.image_size, "patch_size": vision.patch_size, "width": vision.hidden_size,
                  "layers": vision.num_hidden_layers, "head_width": vision.hidden_size // vision.num_attention_heads,
                  "mlp_ratio": _mlp_ratio(vision)}
    for cfg, tower in ((text_cfg, text), (vision_cfg, vision)):
        if tower.layer_norm_eps != OPEN_CLIP_LAYER_NORM_EPS:
            cfg["norm_kwargs"] = {"eps": tower.layer_norm_eps}
    converted = {"embed_dim": config.projection_dim, "quick_gelu": activations == {"quick_gelu"},
                 "text_cfg": text_cfg, "vision_cfg": vision_cfg}
    # the same checks as every open_clip config file (sizes in range, the total a model that can be built)
    return check_model_config(converted, f"{path} (converted from this Hugging Face config)")


# transformers' size fields of each tower (and the projection), checked before anything is derived from them
HF_SIZES = {"text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                            "num_hidden_layers", "max_position_embeddings"),
            "vision_config": ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                              "patch_size")}


def _size_problems(config: Any, *, present_only: bool = False) -> list[str]:
    """'field must be ...' for each size of a CLIPConfig (or of config.json's dict, with `present_only`: the
    fields it gives) that is not a positive integer in range, and each layer_norm_eps that is not a number in
    (0, 1); fields are named as in config.json."""

    def get(holder: Any, name: str) -> Any:
        return holder.get(name, _ABSENT) if isinstance(holder, dict) else getattr(holder, name, None)

    bounds = {"vocab_size": MAX_VOCAB, "max_position_embeddings": MAX_CONTEXT, "num_hidden_layers": MAX_LAYERS,
              "intermediate_size": MAX_WIDTH * int(MAX_MLP_RATIO)}
    towers = {tower: get(config, tower) for tower in HF_SIZES}
    fields = [(f"{tower}.{name}", get(towers[tower], name), bounds.get(name, MAX_WIDTH))
              for tower, names in HF_SIZES.items() if towers[tower] is not _ABSENT for name in names]
    fields.append(("projection_dim", get(config, "projection_dim"), MAX_WIDTH))
    problems = []
    for name, value, high in fields:
        if value is _ABSENT:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            problems.append(f"{name} must be an integer in 1..{high}, got {repr(value)[:40]}")
    for tower, holder in towers.items():
        eps = _ABSENT if holder is _ABSENT else get(holder, "layer_norm_eps")
        if eps is _ABSENT or (eps is None and present_only):
            continue
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            problems.append(f"{tower}.layer_norm_eps must be a number in (0, 1), got {repr(eps)[:40]}")
    return problems


_ABSENT = object()  # a field config.json does not give (transformers' default applies)


def _mlp_ratio(tower: Any) -> float:
    """intermediate_size / hidden_size, nudged up by float ulps if needed so that open_clip's
    int(width * mlp_ratio) gives intermediate_size exactly."""
    ratio = tower.intermediate_size / tower.hidden_size
    while int(tower.hidden_size * ratio) < tower.intermediate_size:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def architecture_name(open_clip_cfg: Mapping) -> str:
    """The stable open_clip name of a converted config: the same architecture gets the same name in
    every process (it is what checkpoints of models fine-tuned from it record)."""
    canonical = json.dumps(open_clip_cfg, sort_keys=True, separators=(",", ":"))
    return NAME_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:12]


_REGISTERED: dict[str, Path] = {}  # architecture name -> the config.json it was registered from


def register(config: Path) -> str:
    """Make the architecture of a config.json known to open_clip (as <cache>/huggingface/<name>.json, an
    ordinary open_clip model config) and return its name."""


    cfg = open_clip_config(read_config(config), config)
    name = architecture_name(cfg)
    if name not in open_clip.list_models():
        path = cache_dir() / "huggingface" / f"{name}.json"
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
        open_clip.add_model_config(path)
    _REGISTERED[name] = config
    return name


def preprocess_options(source: "Source") -> dict[str, tuple[float, ...]]:
    """open_clip's image_mean / image_std from the preprocessor_config.json beside config.json, if any."""
    path = source.config.parent / PREPROCESSOR_FILE
    if not path.is_file():
        return {}
    raw = _read_json(path)
    options = {}
    for key in ("image_mean", "image_std"):
        value = raw.get(key)
        if value is None:
            continue
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
            raise ModelLoadError(f"{path}: {key} must be three numbers (one per RGB channel), got {value!r}")
        options[key] = tuple(float(v) for v in value)
    return options


def architecture_differences(requested: Mapping, built: Mapping) -> list[str]:
    """'field: requested vs built' for every setting two open_clip model configs build differently
    (open_clip's defaults filled in, so that {"mlp_ratio": 4.0} and {} agree)."""
    a, b = _normalised(requested), _normalised(built)
    return [f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def _normalised(cfg: Mapping) -> dict[str, Any]:

    flat = {key: value for key, value in cfg.items() if key not in ("text_cfg", "vision_cfg")}
    flat["quick_gelu"] = bool(flat.get("quick_gelu", False))
    for key, kind in (("text_cfg", CLIPTextCfg), ("vision_cfg", CLIPVisionCfg)):
        tower = dict(cfg.get(key) or {})
        try:
            tower = asdict(kind(**tower))
        except TypeError:  # a field this open_clip does not know: compare what is written
            pass
        flat.update({f"{key}.{field}": value for field, value in tower.items()})
    return flat


# --- recognising a checkpoint --------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where a model with a Hugging Face architecture comes from."""

    config: Path  # the config.json that defines the architecture
    weights: tuple[Path, ...]  # the files to read (several for shards); () for random weights
    convert: bool  # the weights have transformers' names (else: an open_clip checkpoint, e.g. a fine-tuned model)
    checkpoint: Path | None  # the file the weights come from, as a model records its base (a shard index for shards)
    label: str  # for titles and reports


def resolve(name: str | Path | None, pretrained: str | Path | None) -> Source | None:
    """The Hugging Face source of `load_clip(name, pretrained)`, or None when neither argument is one
    (see the module docstring for what is recognised)."""
    name_config = config_of_name(name)
    if pretrained is None:
        if name_config is None:
            return None
        if name_config.parent == Path(str(name)):  # a folder: its weights
            return _folder_source(Path(str(name)))
        return Source(name_config, (), False, None, f"{_title(name_config)} (Hugging Face config, random weights)")
    path = Path(str(pretrained))
    if path.is_dir():
        return _folder_source(path)
    if path.name.endswith(INDEX_SUFFIX) and path.is_file():
        return _sharded_source(path)
    if path.is_file() and holds_hf_names(_tensor_names(path)):
        config = path.parent / CONFIG_FILE
        if not config.is_file():
            if name_config is None:
                raise ModelLoadError(f"checkpoint file {path} holds Hugging Face CLIP weights (text_model.*, "
                                     f"vision_model.*) but no {CONFIG_FILE} is beside it: put the checkpoint's "
                                     f"{CONFIG_FILE} there, or pass it (or its folder) as the model name")
            config = name_config
        return Source(config, (path,), True, path, f"{path.parent.name}/{path.name} (Hugging Face checkpoint)")
    if name_config is not None:  # an open_clip checkpoint on the Hugging Face architecture
        return Source(name_config, (path,), False, path, f"{_title(name_config)} (Hugging Face config) + {path.name}")
    return None


def config_of_name(name: str | Path | None) -> Path | None:
    """The config.json a model name stands for: a checkpoint folder's, a Hugging Face config.json
    itself, or the one an `hf-clip-...` name was registered from in this process; None otherwise."""
    if name is None:
        return None
    path = Path(str(name))
    # a folder given as a path (an open_clip name such as "negclip-tiny" may also name a folder here)
    if path.is_dir() and (isinstance(name, Path) or "/" in str(name) or (path / CONFIG_FILE).is_file()):
        config = path / CONFIG_FILE
        if not config.is_file():
            raise ModelLoadError(f"folder {path} has no {CONFIG_FILE}, so it is not a Hugging Face "
                                 "checkpoint folder (config.json beside model.safetensors or pytorch_model.bin)")
        return config
    if path.suffix == ".json" and path.is_file() and _is_hf_config(path):
        return path
    return _REGISTERED.get(str(name))


def holds_hf_names(names: Iterable[str]) -> bool:
    """Whether tensor names are transformers' CLIP names (text_model.*, vision_model.*)."""
    return any(name.startswith(("text_model.", "vision_model.")) for name in names)


def _folder_source(folder: Path) -> Source:
    config = config_of_name(folder)
    for file in WEIGHT_FILES:
        if (folder / file).is_file():
            return Source(config, (folder / file,), True, folder / file, f"{folder.name} (Hugging Face checkpoint)")
    for file in WEIGHT_FILES:
        if (folder / f"{file}{INDEX_SUFFIX}").is_file():
            return _sharded_source(folder / f"{file}{INDEX_SUFFIX}")
    raise ModelLoadError(f"Hugging Face checkpoint folder {folder} has {CONFIG_FILE} but no weights file "
                         f"({', '.join(WEIGHT_FILES)}, or shards with a *{INDEX_SUFFIX})")


def _sharded_source(index: Path) -> Source:
    config = index.parent / CONFIG_FILE
    if not config.is_file():
        raise ModelLoadError(f"shard index {index} has no {CONFIG_FILE} beside it")
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"shard index {index} has no weight_map (tensor name -> shard file)")
    shards = tuple(index.parent / name for name in dict.fromkeys(weight_map.values()))
    absent = [shard.name for shard in shards if not shard.is_file()]
    if absent:
        raise ModelLoadError(f"shard index {index} lists {len(absent)} shard files that are missing "
                             f"({', '.join(absent[:3])})")
    return Source(config, shards, True, index, f"{index.parent.name} (Hugging Face checkpoint)")


def _tensor_names(path: Path) -> list[str]:
    """The tensor names of a weights file, without reading the tensors; [] when it cannot tell (the
    checkpoint reader reports damaged files)."""
    if path.suffix == ".safetensors":

        try:
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        except (SafetensorError, OSError, ValueError):
            return []
    try:
        with warnings.catch_warnings():  # a TorchScript archive makes torch.load warn before it fails
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file: TorchScript, legacy format, damaged, not torch at all
        return []
    return list(payload) if isinstance(payload, dict) else []


def _is_hf_config(path: Path) -> bool:
    """A config.json written by transformers (not an open_clip model config)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, OSError):
        return False  # the open_clip config reader says what is wrong with it
    return isinstance(raw, dict) and ("model_type" in raw or "architectures" in raw) and "embed_dim" not in raw


def _model_type(raw: Mapping) -> str | None:
    if raw.get("model_type"):
        return str(raw["model_type"])
    return "clip" if "CLIPModel" in (raw.get("architectures") or []) else None


def _read_json(path: Path) -> dict:

    try:
        raw = strict_json_loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ModelLoadError(f"{path} is not valid JSON ({_one_line(error)})") from None
    except DuplicateKeyError as error:
        raise ModelLoadError(f"{path}: {error}") from None
    except OSError as error:
        raise ModelLoadError(f"{path} cannot be read ({error.strerror or type(error).__name__})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return raw


def _title(config: Path) -> str:
    return config.parent.name or str(config)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]
